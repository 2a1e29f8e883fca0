//! EdDSA (Ed25519) JWTs in JWS compact form, and the JWK that verifies them (RFC 8037).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::crypto::base64url;

/// A published key in JWK form.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Jwk {
    pub kid: String,
    pub kty: &'static str,
    pub crv: &'static str,
    pub x: String,
    pub alg: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
}

impl Jwk {
    pub fn ed25519(kid: &str, key: &VerifyingKey) -> Self {
        Self {
            kid: kid.to_string(),
            kty: "OKP",
            crv: "Ed25519",
            x: base64url(key.as_bytes()),
            alg: "EdDSA",
            use_: "sig",
        }
    }
}

/// `{"keys":[...]}`.
pub fn jwks_document(keys: &[Jwk]) -> String {
    serde_json::json!({ "keys": keys }).to_string()
}

/// The key id of a public key: a short, stable fingerprint (RFC 7638-style, truncated).
pub fn key_id(key: &VerifyingKey) -> String {
    let thumbprint = crate::crypto::Digest32::of(&format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        base64url(key.as_bytes())
    ));
    base64url(&thumbprint.as_bytes()[..12])
}

/// The header `typ` of each kind of token latchkey signs. Session JWTs and ID tokens keep the
/// plain `JWT` that every library accepts (they differ by audience and by `azp`); access tokens
/// are `at+jwt` (RFC 9068), so no verifier of the other two accepts one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Session,
    IdToken,
    AccessToken,
}

impl TokenType {
    pub fn header_typ(self) -> &'static str {
        match self {
            Self::Session | Self::IdToken => "JWT",
            Self::AccessToken => "at+jwt",
        }
    }
}

/// Claim names a caller can never set: those of RFC 7519, OpenID Connect Core (the ID token's and
/// the standard claims of §5.1), RFC 9068 and RFC 8693 (access tokens), and latchkey's own.
pub const RESERVED_CLAIMS: &[&str] = &[
    // RFC 7519 registered claims.
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    // OpenID Connect ID token claims.
    "auth_time",
    "nonce",
    "acr",
    "amr",
    "azp",
    "at_hash",
    "c_hash",
    "s_hash",
    "sid",
    // OpenID Connect standard claims.
    "name",
    "given_name",
    "family_name",
    "middle_name",
    "nickname",
    "preferred_username",
    "profile",
    "picture",
    "website",
    "email",
    "email_verified",
    "gender",
    "birthdate",
    "zoneinfo",
    "locale",
    "phone_number",
    "phone_number_verified",
    "address",
    "updated_at",
    // Access tokens (RFC 9068) and token exchange (RFC 8693).
    "scope",
    "client_id",
    "cnf",
    "act",
    "may_act",
    // latchkey's own.
    "stepup",
    "mfa",
    "provider_id",
    "sso_app_id",
];

pub fn sign(key: &SigningKey, kid: &str, kind: TokenType, claims: &Map<String, Value>) -> String {
    let header = serde_json::json!({ "alg": "EdDSA", "typ": kind.header_typ(), "kid": kid });
    let mut token = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(&serde_json::to_vec(claims).expect("claims serialize"))
    );
    let signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&base64url(&signature.to_bytes()));
    token
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed JWT")]
    Malformed,
    #[error("JWT signed by an unknown key")]
    UnknownKey,
    #[error("bad JWT signature")]
    BadSignature,
    #[error("the JWT is another kind of token")]
    WrongType,
}

/// Checks the header's `typ` (absent counts as `JWT`, RFC 7519 §5.1) and the signature with the
/// key named by the header's `kid`; returns the claims. Time and audience claims are the caller's
/// to judge.
pub fn verify<'k>(
    token: &str,
    kind: TokenType,
    find_key: impl Fn(&str) -> Option<&'k VerifyingKey>,
) -> Result<Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed);
    let header: Map<String, Value> = serde_json::from_slice(&decode(header)?).map_err(|_| JwtError::Malformed)?;
    if header.get("alg").and_then(Value::as_str) != Some("EdDSA") {
        return Err(JwtError::Malformed);
    }
    let typ = match header.get("typ") {
        None => "JWT",
        Some(typ) => typ.as_str().ok_or(JwtError::Malformed)?,
    };
    // Media types compare case-insensitively (RFC 7515 §4.1.9).
    if !typ.eq_ignore_ascii_case(kind.header_typ()) {
        return Err(JwtError::WrongType);
    }
    let kid = header.get("kid").and_then(Value::as_str).ok_or(JwtError::Malformed)?;
    let key = find_key(kid).ok_or(JwtError::UnknownKey)?;
    let signature: [u8; 64] = decode(signature)?.try_into().map_err(|_| JwtError::Malformed)?;
    let signed_len = token.len() - signature_len(token);
    key.verify_strict(&token.as_bytes()[..signed_len], &Signature::from_bytes(&signature))
        .map_err(|_| JwtError::BadSignature)?;
    serde_json::from_slice(&decode(payload)?).map_err(|_| JwtError::Malformed)
}

/// Length of ".<signature>" at the end of a compact JWS.
fn signature_len(token: &str) -> usize {
    token.len() - token.rfind('.').expect("three parts were found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key();
        let kid = key_id(&public);
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from("user-1"));
        let token = sign(&key, &kid, TokenType::Session, &claims);
        let find = |k: &str| (k == kid).then_some(&public);
        assert_eq!(verify(&token, TokenType::Session, find).unwrap(), claims);
        let tampered = token.replacen('.', ".e", 1);
        assert!(verify(&tampered, TokenType::Session, find).is_err());
        assert_eq!(verify(&token, TokenType::Session, |_| None), Err(JwtError::UnknownKey));
        assert_eq!(verify("a.b", TokenType::Session, find), Err(JwtError::Malformed));
    }

    #[test]
    fn an_access_token_is_not_a_session_jwt() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key();
        let kid = key_id(&public);
        let find = |k: &str| (k == kid).then_some(&public);
        let access = sign(&key, &kid, TokenType::AccessToken, &Map::new());
        assert_eq!(verify(&access, TokenType::Session, find), Err(JwtError::WrongType));
        assert!(verify(&access, TokenType::AccessToken, find).is_ok());
        let session = sign(&key, &kid, TokenType::Session, &Map::new());
        assert_eq!(verify(&session, TokenType::AccessToken, find), Err(JwtError::WrongType));
    }
}
