//! The redirect allow-list and registered OAuth redirect URIs on arbitrary strings. An accepted URL
//! has no fragment and no userinfo, uses https (or http on loopback), and does not carry the token
//! parameter; the link made from it keeps its query, gains exactly one token and is still allowed.
#![no_main]

use std::sync::LazyLock;

use latchkey::domain::redirect::{AllowedRedirect, RedirectPolicy, check_registered_uri, link_with_token};
use libfuzzer_sys::fuzz_target;
use url::{Host, Url};

static POLICY: LazyLock<RedirectPolicy> = LazyLock::new(|| {
    RedirectPolicy::new(
        [
            "http://localhost",
            "http://localhost:*/",
            "http://127.0.0.1:3000/cb/",
            "https://app.example.com/auth",
            "https://bücher.example/login/",
        ]
        .iter()
        .map(|pattern| AllowedRedirect::parse(pattern).unwrap())
        .collect(),
    )
});

const TOKEN: &str = "AZrFjvVNaK3GP5r2hKx_LvX1mBQGmXgS9WnR8w0e2pTfCqYd7Ho";

fn loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn assert_shape(what: &str, raw: &str, url: &Url) {
    assert!(url.fragment().is_none(), "{what} {raw:?} has a fragment: {url}");
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{what} {raw:?} has userinfo: {url}"
    );
    assert!(url.host().is_some(), "{what} {raw:?} has no host: {url}");
    match url.scheme() {
        "https" => {}
        "http" => assert!(loopback(url), "{what} {raw:?} is http off loopback: {url}"),
        other => panic!("{what} {raw:?} has scheme {other:?}: {url}"),
    }
}

fuzz_target!(|raw: &str| {
    if let Ok(url) = POLICY.check("redirect_url", raw, "token") {
        assert_shape("accepted redirect", raw, &url);
        assert!(
            !url.query_pairs().any(|(name, _)| name == "token"),
            "{raw:?} was accepted with a token parameter: {url}"
        );
        // The store keeps `url.to_string()`; the emailed link is made from that.
        let link = link_with_token(url.as_str(), "token", TOKEN);
        let parsed = Url::parse(&link).unwrap_or_else(|error| panic!("link {link:?} from {raw:?}: {error}"));
        let mut pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(pairs.pop(), Some(("token".into(), TOKEN.into())), "{link:?}");
        let own: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs, own, "the link {link:?} changed the query of {url}");
        assert!(
            POLICY.check("redirect_url", &link, "other").is_ok(),
            "the link {link:?} made from {raw:?} is not on the allow-list"
        );
    }
    if check_registered_uri(raw).is_ok() {
        let url = Url::parse(raw).unwrap_or_else(|error| panic!("registered {raw:?} does not parse: {error}"));
        assert_shape("registered URI", raw, &url);
        assert_eq!(url.as_str(), raw, "a registered URI is in normal form");
    }
    // Allow-list entries come from config; whatever parses must not panic later.
    if let Ok(entry) = AllowedRedirect::parse(raw) {
        let _ = RedirectPolicy::new(vec![entry]).check("redirect_url", raw, "token");
    }
});
