//! Session JWTs verify offline with the published JWKS using an independent JWT library
//! (jsonwebtoken, with its own Ed25519 implementation).

mod common;

use common::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

#[tokio::test]
async fn session_jwt_verifies_with_the_jwks() {
    let app = TestApp::spawn().await;
    let (user, session) = app.signed_in("jwks@example.com").await;
    let jwks = app
        .sessions()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwks.keys.len(), 1);
    let key = &jwks.keys[0];
    assert_eq!(
        (key.kty.as_str(), key.crv.as_str(), key.alg.as_str(), key.r#use.as_str()),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );

    let set: JwkSet = serde_json::from_str(&jwks.jwks_json).expect("a JWKS document");
    let header = decode_header(&session.session_jwt).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let kid = header.kid.expect("kid");
    assert_eq!(kid, key.kid);
    let jwk = set.find(&kid).expect("the signing key is published");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["latchkey"]);
    validation.set_issuer(&["http://localhost:9464"]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let claims = decode::<Value>(&session.session_jwt, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .expect("verifies offline")
        .claims;
    assert_eq!(claims["sub"], user.user_id.as_str());
    assert_eq!(claims["sid"], session.session_id.as_str());
    assert_eq!(claims["email"], "jwks@example.com");
    assert!(claims["jti"].is_string());
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 5 * 60, "short-lived; AuthenticateSession refreshes it");
    assert_eq!(session.jwt_expires_at.unwrap().seconds, claims["exp"].as_i64().unwrap());

    // A tampered token does not verify.
    let mut parts: Vec<String> = session.session_jwt.split('.').map(String::from).collect();
    parts[1] = latchkey::crypto::base64url(
        br#"{"sub":"someone-else","exp":9999999999,"aud":"latchkey","iss":"http://localhost:9464"}"#,
    );
    assert!(decode::<Value>(&parts.join("."), &DecodingKey::from_jwk(jwk).unwrap(), &validation).is_err());
}
