//! The HTTP port (`metrics_listen`): the JWKS and OpenID Connect discovery, for JWT libraries that
//! fetch keys by URL. The same keys as `Sessions/GetJwks`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::domain::Domain;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

pub fn router(domain: Arc<Domain>) -> Router {
    Router::new()
        .route(JWKS_PATH, get(jwks))
        .route(DISCOVERY_PATH, get(discovery))
        .with_state(domain)
}

/// Verifiers may cache the keys for five minutes; a successor key is published a day before use.
const CACHE: &str = "public, max-age=300";

async fn jwks(State(domain): State<Arc<Domain>>) -> impl IntoResponse {
    let (_, document) = domain.keys.jwks();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, CACHE),
        ],
        document.to_string(),
    )
}

async fn discovery(State(domain): State<Arc<Domain>>) -> impl IntoResponse {
    let issuer = domain.settings.issuer.trim_end_matches('/').to_string();
    let mut scopes: Vec<&str> = domain
        .settings
        .oauth_clients
        .iter()
        .flat_map(|c| c.scopes.iter().map(String::as_str))
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    // The authorization and token endpoints are gRPC methods (IssueLoginLink, ExchangeCode), so
    // this document names what a token verifier needs rather than browser endpoints.
    let document = json!({
        "issuer": domain.settings.issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": scopes,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "email", "email_verified", "sid"],
    });
    ([(header::CACHE_CONTROL, CACHE)], axum::Json(document))
}
