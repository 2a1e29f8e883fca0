//! What the hosted pages keep in the browser: the CSRF token's cookie, the sealed sign-in attempt
//! and the browser session (single sign-on), and the headers every page carries.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::crypto::{ServerKey, base64url, constant_time_eq, random_bytes};
use crate::domain::model::{Millis, OAuthRequest};

pub const CSRF_COOKIE: &str = "latchkey_csrf";
/// Each waiting sign-in has a cookie of its own, `latchkey_attempt_<id>`, so sign-ins started at
/// once in several tabs of one browser (two applications asking at the same time) do not meet.
const ATTEMPT_COOKIE_PREFIX: &str = "latchkey_attempt_";
const ATTEMPT_ID_LEN: usize = 12;
pub const SESSION_COOKIE: &str = "latchkey_session";

const CSRF_LABEL: &str = "latchkey/csrf/v1";
const ATTEMPT_LABEL: &str = "latchkey/sign-in-attempt/v1";
const REQUEST_LABEL: &str = "latchkey/authorization-request/v1";

/// A sign-in waiting for its email link, kept in a sealed, HttpOnly cookie of the browser that
/// started it (nothing of it is in a URL).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attempt {
    pub pending_ref: String,
    /// The number of the right link, shown so the person presses that one.
    pub number: String,
    pub masked_email: String,
    pub started_at: Millis,
    pub expires_at: Millis,
    pub request: OAuthRequest,
}

/// The value of the cookie `name` in the request, if any.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    cookie_pairs(headers)
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// Every `name=value` the request's `Cookie` headers carry.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// A new attempt's id: random, for the cookie's name and the wait page's URL.
pub fn new_attempt_id() -> String {
    base64url(&random_bytes::<9>())
}

/// The cookie name of attempt `id`, if `id` is one (it comes from a URL or a form).
pub fn attempt_cookie(id: &str) -> Option<String> {
    let valid = id.len() == ATTEMPT_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then(|| format!("{ATTEMPT_COOKIE_PREFIX}{id}"))
}

/// The attempts this browser keeps: each id with its cookie's value.
pub fn attempt_cookies(headers: &HeaderMap) -> Vec<(&str, &str)> {
    cookie_pairs(headers)
        .filter_map(|(name, value)| Some((name.strip_prefix(ATTEMPT_COOKIE_PREFIX)?, value)))
        .filter(|(id, value)| attempt_cookie(id).is_some() && !value.is_empty())
        .collect()
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Lax always, Secure on https.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age_seconds: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path={path}; Max-Age={max_age_seconds}; HttpOnly; SameSite=Lax{secure}");
    HeaderValue::from_str(&text).expect("cookie values are base64url")
}

pub fn add_cookie(response: &mut Response, cookie: HeaderValue) {
    response.headers_mut().append(header::SET_COOKIE, cookie);
}

/// `payload.mac`: readable, but only the server key makes one that `unseal` accepts.
fn seal(key: &ServerKey, label: &str, payload: &[u8]) -> String {
    format!("{}.{}", base64url(payload), base64url(&key.derive(label, payload)))
}

fn unseal(key: &ServerKey, label: &str, sealed: &str) -> Option<Vec<u8>> {
    let (payload, mac) = sealed.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    constant_time_eq(&mac, &key.derive(label, &payload)).then_some(payload)
}

pub fn seal_attempt(key: &ServerKey, attempt: &Attempt) -> String {
    seal(key, ATTEMPT_LABEL, &serde_json::to_vec(attempt).expect("serializes"))
}

pub fn unseal_attempt(key: &ServerKey, sealed: &str) -> Option<Attempt> {
    serde_json::from_slice(&unseal(key, ATTEMPT_LABEL, sealed)?).ok()
}

/// A validated authorization request, carried through the email form.
pub fn seal_request(key: &ServerKey, request: &OAuthRequest) -> String {
    seal(key, REQUEST_LABEL, &serde_json::to_vec(request).expect("serializes"))
}

pub fn unseal_request(key: &ServerKey, sealed: &str) -> Option<OAuthRequest> {
    serde_json::from_slice(&unseal(key, REQUEST_LABEL, sealed)?).ok()
}

/// The browser's CSRF secret (a new one when it has none) and whether it is new.
pub fn csrf_secret(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, CSRF_COOKIE) {
        Some(secret) if secret.len() == 43 => (secret.to_string(), false),
        _ => (base64url(&random_bytes::<32>()), true),
    }
}

/// The token forms carry: bound to the browser's CSRF cookie by the server key (a signed double
/// submit), so a page on another site can neither read nor forge it.
pub fn csrf_token(key: &ServerKey, secret: &str) -> String {
    base64url(&key.derive(CSRF_LABEL, secret.as_bytes()))
}

pub fn csrf_ok(key: &ServerKey, headers: &HeaderMap, presented: Option<&str>) -> bool {
    match (cookie(headers, CSRF_COOKIE), presented) {
        (Some(secret), Some(token)) => constant_time_eq(token.as_bytes(), csrf_token(key, secret).as_bytes()),
        _ => false,
    }
}

/// Headers of every page: no inline script (CSP), no framing, no referrer (a confirm page's URL
/// holds its link), no caching.
pub fn page_headers(headers: &mut HeaderMap) {
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https:; connect-src 'self'; \
             base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_resists_tampering() {
        let key = ServerKey::parse(&ServerKey::generate_encoded()).unwrap();
        let request = OAuthRequest {
            client_id: "dev".into(),
            redirect_uri: "http://localhost:3000/oauth/callback".into(),
            scope: "openid".into(),
            state: "s".into(),
            nonce: String::new(),
            code_challenge: String::new(),
        };
        let sealed = seal_request(&key, &request);
        assert_eq!(unseal_request(&key, &sealed), Some(request));
        let (payload, mac) = sealed.split_once('.').unwrap();
        let forged = format!("{}.{mac}", base64url(&URL_SAFE_NO_PAD.decode(payload).unwrap()[1..]));
        assert_eq!(unseal_request(&key, &forged), None);
        let other = ServerKey::parse(&ServerKey::generate_encoded()).unwrap();
        assert_eq!(unseal_request(&other, &sealed), None);
        assert!(unseal_attempt(&key, &sealed).is_none(), "a request is no attempt");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; latchkey_csrf=x; b=2"));
        assert_eq!(cookie(&headers, CSRF_COOKIE), Some("x"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
