//! Field rules shared by every flow: emails, names, durations, PKCE inputs, tokens.

use email_address::{EmailAddress, Options};

use super::error::{Error, Reason, Result};
use crate::crypto::{PLAIN_SECRET_CHARS, STAMPED_SECRET_CHARS, pkce};

pub const MAX_EMAIL_LENGTH: usize = 254;
pub const MAX_NAME_LENGTH: usize = 100;

/// A trimmed, syntactically valid, deliverable address in its one canonical form, so that one
/// mailbox is one user and one rate-limit bucket: quotes around a local part that needs none are
/// removed (`"ann"@example.com` is `ann@example.com`, RFC 5321 §4.1.2), and the domain is in
/// lower-case IDNA ASCII form (`exämple.com` is `xn--exmple-cua.com`). A local part that needs
/// its quotes (spaces, `"`, `<`...) is refused: SMTP servers commonly refuse it, and the mail
/// would only fail after the user was created and a rate-limit token spent. No display name, no
/// domain literal, a dotted domain.
pub fn email(field: &'static str, raw: &str) -> Result<String> {
    let email = raw.trim();
    if email.is_empty() {
        return Err(Error::missing(field));
    }
    if email.chars().count() > MAX_EMAIL_LENGTH {
        return Err(Error::field(
            Reason::INVALID_EMAIL,
            field,
            "an email address has at most 254 characters",
        ));
    }
    let invalid = |why: &str| Error::field(Reason::INVALID_EMAIL, field, why.to_string());
    const EMAIL_RULE: &str = "not a valid email address: expected name@domain with a dotted domain name, e.g. ann@example.com \
         (no display name, no IP literal)";
    let (local, domain) = email.rsplit_once('@').ok_or_else(|| invalid(EMAIL_RULE))?;
    let local = unquote(local).ok_or_else(|| {
        invalid("a quoted local part cannot be delivered by every mail server; give the address without quotes")
    })?;
    let domain = idna::domain_to_ascii(domain).map_err(|_| invalid("not a valid email domain"))?;
    let canonical = format!("{local}@{domain}");
    let options = Options::default()
        .without_display_text()
        .without_domain_literal()
        .with_required_tld();
    if canonical.len() > MAX_EMAIL_LENGTH || EmailAddress::parse_with_options(&canonical, options).is_err() {
        return Err(invalid(EMAIL_RULE));
    }
    // What the SMTP transport will be handed must parse there too.
    lettre::Address::new(local, &domain).map_err(|_| invalid("not a deliverable email address"))?;
    Ok(canonical)
}

/// The local part without quotes it does not need; None if it needs them.
fn unquote(local: &str) -> Option<String> {
    let Some(inner) = local.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) else {
        return (!local.contains('"')).then(|| local.to_string());
    };
    let mut plain = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        // A quoted pair stands for its second character.
        plain.push(if c == '\\' { chars.next()? } else { c });
    }
    let dot_atom = !plain.is_empty()
        && !plain.starts_with('.')
        && !plain.ends_with('.')
        && !plain.contains("..")
        && plain
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    dot_atom.then_some(plain)
}

/// A trimmed person's name: at most 100 characters, no control characters.
pub fn name(field: &'static str, raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.chars().count() > MAX_NAME_LENGTH {
        return Err(Error::field(
            Reason::INVALID_VALUE,
            field,
            "a name has at most 100 characters",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::field(
            Reason::INVALID_VALUE,
            field,
            "a name cannot contain control characters",
        ));
    }
    Ok(name.to_string())
}

/// `0` means `default`; anything else must lie in `min..=max`.
pub fn minutes(field: &'static str, value: u32, default: u32, min: u32, max: u32) -> Result<u32> {
    match value {
        0 => Ok(default),
        value if (min..=max).contains(&value) => Ok(value),
        _ => Err(Error::field(
            Reason::EXPIRATION_OUT_OF_RANGE,
            field,
            format!("{field} must be between {min} and {max} (or 0 for the default, {default})"),
        )),
    }
}

/// An optional S256 code challenge: empty means none.
pub fn code_challenge(field: &'static str, raw: &str) -> Result<Option<String>> {
    if raw.is_empty() {
        return Ok(None);
    }
    if !pkce::is_valid_challenge(raw) {
        return Err(Error::field(
            Reason::INVALID_CODE_CHALLENGE,
            field,
            "code_challenge must be BASE64URL(SHA-256(code_verifier)): 43 characters, S256 only",
        ));
    }
    Ok(Some(raw.to_string()))
}

/// An optional code verifier: empty means none.
pub fn code_verifier<'a>(field: &'static str, raw: &'a str) -> Result<Option<&'a str>> {
    if raw.is_empty() {
        return Ok(None);
    }
    if !pkce::is_valid_verifier(raw) {
        return Err(Error::field(
            Reason::INVALID_CODE_VERIFIER,
            field,
            "code_verifier must be 43-128 characters of A-Z a-z 0-9 - . _ ~",
        ));
    }
    Ok(Some(raw))
}

/// A secret the caller hands back: stamped, or plain (handed out before stamps). A malformed one
/// cannot exist, so it is simply not found.
pub fn secret<'a>(field: &'static str, raw: &'a str, not_found: Reason) -> Result<&'a str> {
    let secret = raw.trim();
    if secret.is_empty() {
        return Err(Error::missing(field));
    }
    let well_formed = [STAMPED_SECRET_CHARS, PLAIN_SECRET_CHARS].contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(Error::new(not_found, format!("no such {field}")));
    }
    Ok(secret)
}

/// `a***@example.com`: enough for a person to recognise their address, not enough to harvest it.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_mailbox_has_one_canonical_form() {
        let canonical = |raw: &str| super::email("email", raw).map_err(|e| e.reason());
        assert_eq!(canonical(" Ann@Example.COM ").unwrap(), "Ann@example.com");
        assert_eq!(canonical("\"ann\"@example.com").unwrap(), "ann@example.com");
        assert_eq!(canonical("\"a\\nn\"@example.com").unwrap(), "ann@example.com");
        assert_eq!(canonical("x@exämple.com").unwrap(), "x@xn--exmple-cua.com");
        assert_eq!(canonical("x@xn--exmple-cua.com").unwrap(), "x@xn--exmple-cua.com");
        assert_eq!(canonical("x@EXÄMPLE.com").unwrap(), "x@xn--exmple-cua.com");
        for undeliverable in [
            "\"a b\"@example.com",
            "\"a<b\"@example.com",
            "\"a\\\"b\"@example.com",
            "\"\"@example.com",
            "a\"b@example.com",
            "x@exa mple.com",
            "x@localhost",
            "x@[127.0.0.1]",
        ] {
            assert_eq!(canonical(undeliverable), Err(Reason::INVALID_EMAIL), "{undeliverable}");
        }
        // The email index's fast path for ASCII addresses agrees with the canonical form.
        for ascii in [" Ann@Example.COM ", "x@xn--EXMPLE-cua.com", "a.b+c@Sub.Example.org"] {
            assert_eq!(
                crate::domain::model::email_key(ascii),
                canonical(ascii).unwrap().to_lowercase(),
                "{ascii}"
            );
        }
        assert_eq!(
            crate::domain::model::email_key("\"ann\"@exämple.com"),
            "ann@xn--exmple-cua.com"
        );
        // Canonical forms are fixed points.
        for raw in ["\"ann\"@Example.com", "x@exämple.com", "Ann.Lee+tag@sub.example.org"] {
            let once = canonical(raw).unwrap();
            assert_eq!(canonical(&once).unwrap(), once);
        }
    }

    use super::*;

    #[test]
    fn emails() {
        assert_eq!(email("email", "  Ann@Example.COM ").unwrap(), "Ann@example.com");
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "Ann <ann@example.com>",
            "ann@[127.0.0.1]",
            "ann@localhost",
        ] {
            assert!(email("email", bad).is_err(), "{bad} should be refused");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(email("email", &long).unwrap_err().reason(), Reason::INVALID_EMAIL);
        // The refusal says the rule and what to send instead.
        let refusal = email("email", "ann@localhost").unwrap_err().to_string();
        assert!(
            refusal.contains("dotted domain name, e.g. ann@example.com"),
            "{refusal}"
        );
    }

    #[test]
    fn minutes_ranges() {
        assert_eq!(minutes("m", 0, 120, 5, 10080).unwrap(), 120);
        assert_eq!(minutes("m", 5, 120, 5, 10080).unwrap(), 5);
        assert_eq!(
            minutes("m", 4, 120, 5, 10080).unwrap_err().reason(),
            Reason::EXPIRATION_OUT_OF_RANGE
        );
        assert!(minutes("m", 10081, 120, 5, 10080).is_err());
    }

    #[test]
    fn secrets_are_stamped_or_plain_and_anything_else_is_not_found() {
        let stamped = crate::crypto::new_secret(1_795_545_262_253);
        assert_eq!(
            secret("token", &format!(" {stamped}\n"), Reason::TOKEN_NOT_FOUND).unwrap(),
            stamped
        );
        let plain = &stamped[8..];
        assert_eq!(secret("token", plain, Reason::TOKEN_NOT_FOUND).unwrap(), plain);
        assert_eq!(
            secret("token", " ", Reason::TOKEN_NOT_FOUND).unwrap_err().reason(),
            Reason::MISSING_FIELD
        );
        for bad in [
            &stamped[1..],
            &stamped[9..],
            &format!("{stamped}a"),
            &format!("{}+", &stamped[1..]),
        ] {
            let error = secret("token", bad, Reason::TOKEN_NOT_FOUND).unwrap_err();
            assert_eq!(error.reason(), Reason::TOKEN_NOT_FOUND, "{bad}");
            assert!(!error.to_string().contains(bad), "the error repeats the secret");
        }
    }

    #[test]
    fn masking() {
        assert_eq!(mask_email("ann@example.com"), "a***@example.com");
        assert_eq!(mask_email("Ölaf@example.com"), "Ö***@example.com");
    }
}
