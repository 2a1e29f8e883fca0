//! The redirect allow-list (docs/api.md, "Redirect URLs"): same scheme, host and port, and a path under an allowed
//! prefix; `http` only for loopback; no userinfo, no fragment, no other schemes.

use std::net::IpAddr;

use url::{Host, Url};

use super::error::{Error, Reason, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct AllowedRedirect {
    scheme: String,
    host: String,
    /// `None` allows any port (written `:*` in config).
    port: Option<u16>,
    path_prefix: String,
}

impl AllowedRedirect {
    /// Parses an allow-list entry such as `https://app.example.com/auth/` or `http://localhost:*/`.
    pub fn parse(pattern: &str) -> std::result::Result<Self, String> {
        let any_port = pattern.contains(":*/") || pattern.ends_with(":*");
        let parsable = pattern.replacen(":*", "", 1);
        let url = Url::parse(&parsable).map_err(|error| format!("{pattern:?} is not a URL: {error}"))?;
        check_shape(&url).map_err(|problem| format!("{pattern:?}: {problem}"))?;
        if url.query().is_some() {
            return Err(format!("{pattern:?}: an allow-list entry has no query"));
        }
        Ok(Self {
            scheme: url.scheme().to_string(),
            host: url.host_str().unwrap_or_default().to_string(),
            port: if any_port { None } else { url.port_or_known_default() },
            path_prefix: url.path().to_string(),
        })
    }

    fn allows(&self, url: &Url) -> bool {
        url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && self.port.is_none_or(|port| url.port_or_known_default() == Some(port))
            && path_is_under(url.path(), &self.path_prefix)
    }
}

/// Checks a registered OAuth redirect URI: an absolute URL that requests must repeat exactly, so it
/// has no wildcard; it may have a query (RFC 6749 §3.1.2), to which `code` and `state` are added.
pub fn check_registered_uri(uri: &str) -> std::result::Result<(), String> {
    let url = Url::parse(uri).map_err(|error| format!("{uri:?} is not a URL: {error}"))?;
    check_shape(&url).map_err(|problem| format!("{uri:?}: {problem}"))?;
    if url.as_str() != uri {
        return Err(format!(
            "{uri:?} is not in normal form (it would be {:?}); register it as requests send it",
            url.as_str()
        ));
    }
    Ok(())
}

/// `/auth` allows `/auth`, `/auth/` and `/auth/x`, but not `/authx`.
fn path_is_under(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix) || path == prefix.trim_end_matches('/')
    } else {
        path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The rules every redirect URL obeys, allow-listed or not.
fn check_shape(url: &Url) -> std::result::Result<(), &'static str> {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => return Err("http is only allowed for localhost and loopback addresses"),
        _ => return Err("only http and https URLs are allowed"),
    }
    if url.host().is_none() {
        return Err("a URL needs a host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a URL cannot carry a user name or password");
    }
    if url.fragment().is_some() {
        return Err("a URL cannot have a fragment");
    }
    Ok(())
}

#[derive(Clone, Debug, Default)]
pub struct RedirectPolicy {
    allowed: Vec<AllowedRedirect>,
}

/// The longest redirect URL, in bytes (the link adds the token to it): what browsers and mail
/// clients handle everywhere.
pub const MAX_URL_BYTES: usize = 2048;

impl RedirectPolicy {
    pub fn new(allowed: Vec<AllowedRedirect>) -> Self {
        Self { allowed }
    }

    /// Parses `raw` and checks it against the allow-list. `token_parameter` must not be present
    /// already, since latchkey appends it.
    pub fn check(&self, field: &'static str, raw: &str, token_parameter: &str) -> Result<Url> {
        // Measured on what is stored and mailed: the parsed, normalised URL.
        let too_long = || {
            Error::field(
                Reason::INVALID_URL,
                field,
                format!("{field} has at most {MAX_URL_BYTES} bytes"),
            )
        };
        if raw.trim().len() > 4 * MAX_URL_BYTES {
            return Err(too_long());
        }
        let url = Url::parse(raw.trim()).map_err(|_| {
            Error::field(
                Reason::INVALID_URL,
                field,
                format!("{field} is not a valid absolute URL"),
            )
        })?;
        check_shape(&url).map_err(|problem| Error::field(Reason::REDIRECT_NOT_ALLOWED, field, problem))?;
        if url.query_pairs().any(|(name, _)| name == token_parameter) {
            return Err(Error::field(
                Reason::INVALID_URL,
                field,
                format!("{field} already has a {token_parameter:?} query parameter"),
            ));
        }
        if !self.allowed.iter().any(|allowed| allowed.allows(&url)) {
            return Err(Error::field(
                Reason::REDIRECT_NOT_ALLOWED,
                field,
                format!("{field} is not on the redirect allow-list"),
            ));
        }
        if url.as_str().len() > MAX_URL_BYTES {
            return Err(too_long());
        }
        Ok(url)
    }
}

/// The link: the redirect URL with the token appended, keeping the URL's own query parameters.
pub fn link_with_token(redirect: &str, parameter: &str, token: &str) -> String {
    let mut url = Url::parse(redirect).expect("stored redirect URLs were validated");
    url.query_pairs_mut().append_pair(parameter, token);
    url.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RedirectPolicy {
        RedirectPolicy::new(vec![
            AllowedRedirect::parse("https://app.example.com/auth").unwrap(),
            AllowedRedirect::parse("http://localhost:*/").unwrap(),
        ])
    }

    #[test]
    fn allow_list() {
        let p = policy();
        for ok in [
            "https://app.example.com/auth",
            "https://app.example.com/auth/callback?x=1",
            "https://app.example.com:443/auth/cb",
            "http://localhost:3000/anything",
            "http://localhost/",
        ] {
            assert!(p.check("redirect_url", ok, "token").is_ok(), "{ok}");
        }
        for (bad, reason) in [
            ("https://app.example.com/authx", Reason::REDIRECT_NOT_ALLOWED),
            ("https://app.example.com/other", Reason::REDIRECT_NOT_ALLOWED),
            ("https://app.example.com:8443/auth", Reason::REDIRECT_NOT_ALLOWED),
            ("http://app.example.com/auth", Reason::REDIRECT_NOT_ALLOWED),
            ("https://evil.example.com/auth", Reason::REDIRECT_NOT_ALLOWED),
            ("https://user:pw@app.example.com/auth", Reason::REDIRECT_NOT_ALLOWED),
            ("https://app.example.com/auth#frag", Reason::REDIRECT_NOT_ALLOWED),
            ("javascript:alert(1)", Reason::REDIRECT_NOT_ALLOWED),
            ("ftp://app.example.com/auth", Reason::REDIRECT_NOT_ALLOWED),
            ("https://app.example.com/auth/../admin", Reason::REDIRECT_NOT_ALLOWED),
            ("/relative", Reason::INVALID_URL),
            ("https://app.example.com/auth?token=x", Reason::INVALID_URL),
        ] {
            assert_eq!(
                p.check("redirect_url", bad, "token").unwrap_err().reason(),
                reason,
                "{bad}"
            );
        }
    }

    #[test]
    fn patterns_refuse_plain_http_off_loopback() {
        assert!(AllowedRedirect::parse("http://example.com/").is_err());
        assert!(AllowedRedirect::parse("https://example.com/#x").is_err());
    }

    #[test]
    fn links_keep_query_parameters() {
        assert_eq!(
            link_with_token("http://localhost:3000/cb?next=%2Fhome", "token", "abc"),
            "http://localhost:3000/cb?next=%2Fhome&token=abc"
        );
    }
}
