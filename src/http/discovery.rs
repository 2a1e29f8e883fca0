//! `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0): every endpoint and
//! capability the provider has, and nothing it lacks.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use super::{AUTHORIZE_PATH, END_SESSION_PATH, HttpState, JWKS_PATH, TOKEN_PATH, USERINFO_PATH};

/// Relying parties may cache the document for five minutes.
const CACHE: &str = "public, max-age=300";

pub async fn document(State(state): State<HttpState>) -> impl IntoResponse {
    let settings = &state.domain.settings;
    let base = state.site.public_url.as_str();
    let mut scopes: Vec<&str> = settings
        .oauth_clients
        .iter()
        .flat_map(|c| c.scopes.iter().map(String::as_str))
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    let mut auth_methods = Vec::new();
    if settings.oauth_clients.iter().any(|c| !c.is_public()) {
        auth_methods.extend(["client_secret_basic", "client_secret_post"]);
    }
    if settings.oauth_clients.iter().any(|c| c.is_public()) || auth_methods.is_empty() {
        auth_methods.push("none");
    }
    let document = json!({
        "issuer": settings.issuer,
        "authorization_endpoint": format!("{base}{AUTHORIZE_PATH}"),
        "token_endpoint": format!("{base}{TOKEN_PATH}"),
        "userinfo_endpoint": format!("{base}{USERINFO_PATH}"),
        "end_session_endpoint": format!("{base}{END_SESSION_PATH}"),
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login"],
        "scopes_supported": scopes,
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "azp", "sid",
            "email", "email_verified", "name", "given_name", "family_name", "updated_at",
        ],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
    });
    ([(header::CACHE_CONTROL, CACHE)], axum::Json(document))
}
