//! The HTTP port (`metrics_listen`): the JWKS and OpenID Connect discovery for JWT libraries that
//! fetch keys by URL (the same keys as `Sessions/GetJwks`), Prometheus metrics, and liveness and
//! readiness for probes that cannot speak gRPC (Kubernetes' gRPC probes do not do TLS).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::domain::Domain;
use crate::metrics::Metrics;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

#[derive(Clone)]
pub struct HttpState {
    pub domain: Arc<Domain>,
    pub metrics: Arc<Metrics>,
    /// True while health's overall status is SERVING.
    pub ready: Arc<AtomicBool>,
}

/// The routes, each answered within `request_timeout` (503 past it).
pub fn router(state: HttpState, request_timeout: Duration) -> Router {
    Router::new()
        .route(JWKS_PATH, get(jwks))
        .route(DISCOVERY_PATH, get(discovery))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| async move {
                match tokio::time::timeout(request_timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "request timeout\n").into_response(),
                }
            },
        ))
        .with_state(state)
}

/// Verifiers may cache the keys for five minutes; a successor key is published a day before use.
const CACHE: &str = "public, max-age=300";

async fn jwks(State(state): State<HttpState>) -> impl IntoResponse {
    let (_, document) = state.domain.keys.jwks();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, CACHE),
        ],
        document.to_string(),
    )
}

async fn discovery(State(state): State<HttpState>) -> impl IntoResponse {
    let settings = &state.domain.settings;
    let issuer = settings.issuer.trim_end_matches('/').to_string();
    let mut scopes: Vec<&str> = settings
        .oauth_clients
        .iter()
        .flat_map(|c| c.scopes.iter().map(String::as_str))
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    // The authorization and token endpoints are gRPC methods (IssueLoginLink, ExchangeCode), so
    // this document names what a token verifier needs rather than browser endpoints.
    let document = json!({
        "issuer": settings.issuer,
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

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render().await,
    )
}

const STORE_REFUSES: &str = "the store refuses writes\n";
const STORE_NEEDS_RESTART: &str =
    "the store refuses writes after a storage error (a full or failing disk): free space, then restart latchkey\n";

/// Liveness fails only when a restart is the way back (sled after a storage error); not while a
/// database is unreachable, which restarting every replica would not mend.
async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.domain.store.needs_restart() {
        (StatusCode::SERVICE_UNAVAILABLE, STORE_NEEDS_RESTART)
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.domain.store.needs_restart() {
        (StatusCode::SERVICE_UNAVAILABLE, STORE_NEEDS_RESTART)
    } else if state.domain.store.refuses_writes() {
        (StatusCode::SERVICE_UNAVAILABLE, STORE_REFUSES)
    } else if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}
