//! The HTTP port (`metrics_listen`): the JWKS and OpenID Connect discovery for JWT libraries that
//! fetch keys by URL (the same keys as `Sessions/GetJwks`), the OpenID Connect provider's
//! endpoints and hosted sign-in pages, Prometheus metrics, and liveness and readiness for probes
//! that cannot speak gRPC (Kubernetes' gRPC probes do not do TLS).

mod authorize;
mod browser;
mod discovery;
mod form;
mod pages;
mod sign_in;
mod token;
mod userinfo;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::domain::Domain;
use crate::metrics::Metrics;

pub use pages::Site;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const AUTHORIZE_PATH: &str = "/oauth/authorize";
pub const TOKEN_PATH: &str = "/oauth/token";
pub const USERINFO_PATH: &str = "/oauth/userinfo";
pub const END_SESSION_PATH: &str = "/oauth/logout";
/// The hosted sign-in pages live under this path; links in sign-in emails point into it.
pub const SIGN_IN_PREFIX: &str = "/oauth/sign-in/";

#[derive(Clone)]
pub struct HttpState {
    pub domain: Arc<Domain>,
    pub metrics: Arc<Metrics>,
    /// True while health's overall status is SERVING.
    pub ready: Arc<AtomicBool>,
    /// The sign-in pages' address, branding and templates.
    pub site: Arc<Site>,
}

/// The routes, each answered within `request_timeout` (503 past it).
pub fn router(state: HttpState, request_timeout: Duration) -> Router {
    Router::new()
        .route(JWKS_PATH, get(jwks))
        .route(DISCOVERY_PATH, get(discovery::document))
        .route(TOKEN_PATH, post(token::exchange))
        .route(USERINFO_PATH, get(userinfo::answer).post(userinfo::answer))
        .route(AUTHORIZE_PATH, get(authorize::authorize))
        .route(
            END_SESSION_PATH,
            get(authorize::end_session).post(authorize::end_session_confirmed),
        )
        .merge(sign_in::routes())
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
