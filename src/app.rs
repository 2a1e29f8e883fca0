//! Builds latchkey from a validated config, serves it, and owns shutdown: health goes
//! NOT_SERVING, the server stops accepting and finishes the calls in flight, background tasks
//! stop, the store makes everything durable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::auth::ApiKeyCheck;
use crate::api::emails::EmailsApi;
use crate::api::passwordless::PasswordlessApi;
use crate::api::pb::emails_server::EmailsServer;
use crate::api::pb::passwordless_server::PasswordlessServer;
use crate::api::pb::sessions_server::SessionsServer;
use crate::api::pb::users_server::UsersServer;
use crate::api::sessions::SessionsApi;
use crate::api::users::UsersApi;
use crate::api::{SERVICE_NAMES, pb};
use crate::config::{Scope, Validated};
use crate::domain::clock::Clock;
use crate::domain::keys::{KeyPolicy, KeyRing};
use crate::domain::model::{HOUR, MINUTE, Millis};
use crate::domain::oauth::OAuthClient;
use crate::domain::outbox_limit::OutboxLimit;
use crate::domain::rate_limit::RateLimit;
use crate::domain::store::Store;
use crate::domain::{Domain, Mail, Ports, Settings};
use crate::grpc::GrpcPort;
use crate::mail::outbox_sampler;
use crate::mail::templates::Templates;
use crate::mail::transport::{self, Transport};
use crate::mail::worker::{RetryPolicy, Worker, WorkerSettings};
use crate::metrics::Metrics;
use crate::net::{Handshake, Peer, Port};
use crate::reload::{Reloader, Shared, Targets};
use crate::store::sweeper;
use crate::supervise::supervise;

/// What the shutdown grace period keeps back, after draining, for closing the store.
const CLOSE_RESERVE: Duration = Duration::from_secs(2);
/// How often health looks at whether the store still takes writes.
const STORE_CHECK: Duration = Duration::from_secs(1);

/// How often the signing keys are checked for rotation.
const KEY_ROTATION_CHECK: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
    #[error("cannot load the signing keys: {0}")]
    Keys(String),
    #[error("cannot build server reflection: {0}")]
    Reflection(String),
    #[error("mail: {0}")]
    Mail(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("sign-in pages: {0}")]
    Pages(String),
}

/// A started server.
pub struct Running {
    local_addr: SocketAddr,
    domain: Arc<Domain>,
    health: HealthReporter,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    http_server: Option<JoinHandle<()>>,
    /// Cancelled when the drain is over: every connection still open on either port fails.
    close_all: CancellationToken,
    shutdown_delay: Duration,
    shutdown_grace: Duration,
    http_addr: Option<SocketAddr>,
    mail_worker: Arc<Worker>,
    /// What `/readyz` on the HTTP port answers: health's overall status, as a flag.
    ready: Arc<AtomicBool>,
    reload: tokio::sync::mpsc::Sender<crate::reload::Request>,
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the HTTP port (JWKS, discovery) listens, if it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// Reads the config again and applies its API keys, TLS material and SMTP password, as
    /// SIGHUP does; answers what changed, or why nothing did.
    pub async fn reload(&self) -> crate::reload::Outcome {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let stopped = || "the server is stopping".to_string();
        self.reload.send(Some(reply)).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Where SIGHUP sends its reload requests (answered with nothing).
    pub fn reload_requests(&self) -> tokio::sync::mpsc::Sender<crate::reload::Request> {
        self.reload.clone()
    }

    /// The mail worker (tests drain the outbox with `Worker::step`).
    pub fn mail_worker(&self) -> &Arc<Worker> {
        &self.mail_worker
    }

    /// Purges what is due now (the sweeper does this on its own schedule).
    pub async fn sweep_now(&self) -> crate::domain::error::Result<usize> {
        sweeper::sweep(self.domain.store.as_ref(), self.domain.clock.as_ref()).await
    }

    /// Drains and stops within the shutdown grace period, whatever clients do; returns once the
    /// store is durable and closed.
    pub async fn shutdown(mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        let drain_deadline = deadline - CLOSE_RESERVE.min(self.shutdown_grace / 4);
        set_health(&self.health, ServingStatus::NotServing).await;
        self.ready.store(false, Ordering::Relaxed);
        if !self.shutdown_delay.is_zero() {
            tracing::info!(delay = ?self.shutdown_delay, "NOT_SERVING; still answering while routing stops");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        // Stops accepting, stops the background tasks, and long-polls answer now with the current
        // status instead of holding the drain (the domain's `stopping` is this token).
        self.shutdown.cancel();
        // Health watchers have seen NOT_SERVING; dropping the statuses ends their streams, which
        // would otherwise hold the drain open forever.
        for service in std::iter::once("").chain(SERVICE_NAMES) {
            self.health.clear_service_status(service).await;
        }
        let drained = tokio::time::timeout_at(drain_deadline, async {
            let served = (&mut self.server).await;
            if let Some(http) = &mut self.http_server {
                let _ = http.await;
            }
            served
        })
        .await;
        // Whatever is still open (a call past the grace period, a client that never finished its
        // request or handshake) fails now, which ends its connection task and frees the services.
        self.close_all.cancel();
        let served = match drained {
            Ok(joined) => joined.map_err(|error| format!("server task failed: {error}"))?,
            Err(_) => {
                tracing::warn!(grace = ?self.shutdown_grace, "connections still open at the end of the shutdown grace period; closed them");
                self.server.abort();
                if let Some(http) = &self.http_server {
                    http.abort();
                }
                Ok(())
            }
        };
        self.tasks.close();
        if tokio::time::timeout_at(drain_deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "background tasks (mail worker, sweeper) still busy at the end of the shutdown grace period; stopping without them"
            );
        }
        // The store closes in its own way (sled: lets go of the directory and checkpoints), so the
        // same process may open it again once this returns.
        match tokio::time::timeout_at(deadline, self.domain.store.close()).await {
            Ok(closed) => {
                closed.map_err(|error| error.to_string())?;
                tracing::info!("store closed");
            }
            Err(_) => {
                return Err(
                    "the store did not close within the shutdown grace period; the next start recovers it".into(),
                );
            }
        }
        served.map_err(|error| format!("server error: {error}"))
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in SERVICE_NAMES {
        health.set_service_status(service, status).await;
    }
}

fn settings(validated: &Validated) -> Settings {
    let config = &validated.config;
    Settings {
        redirects: validated.redirects.clone(),
        default_redirect_url: config.links.default_redirect_url.clone(),
        sign_in_confirm_url: validated.sign_in_confirm_url.clone(),
        session_default_minutes: config.sessions.default_duration_minutes,
        session_jwt_minutes: config.sessions.jwt_minutes,
        issuer: config.issuer.clone(),
        audience: config.sessions.audience.clone(),
        login_magic_link_url: config.links.login_magic_link_url.clone(),
        signup_magic_link_url: config.links.signup_magic_link_url.clone(),
        enchanted_default_minutes: config.links.enchanted_expiration_minutes,
        otp_by_default: config.otp.include_by_default,
        otp_digits: config.otp.digits,
        oauth_clients: config
            .oauth
            .clients
            .iter()
            .map(|client| OAuthClient {
                id: client.client_id.trim().to_string(),
                name: client.name.clone(),
                redirect_uris: client.redirect_uris.clone(),
                scopes: client.scopes.clone(),
                secret_sha256: client
                    .client_secret_sha256
                    .as_deref()
                    .and_then(crate::config::hex_digest),
                post_logout_redirect_uris: client.post_logout_redirect_uris.clone(),
            })
            .collect(),
        access_token_minutes: config.oauth.access_token_minutes,
        access_token_audience: config.access_token_audience().to_string(),
    }
}

/// The listening sockets, bound before anything is served.
struct Listeners {
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    http: Option<(TcpListener, SocketAddr)>,
}

/// What sends mail: the worker, and the transport a reload may replace.
struct MailParts {
    worker: Arc<Worker>,
    transport: Arc<Shared<dyn Transport>>,
    file_dir: std::path::PathBuf,
}

pub async fn start(validated: Validated, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let config = &validated.config;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let shutdown = CancellationToken::new();

    let opened = crate::store::open(&config.store, &config.data_dir).await?;
    let templates = Arc::new(
        Templates::load(config.mail.templates_dir.as_deref(), &config.mail.default_locale)
            .map_err(|problem| StartError::Mail(format!("mail.templates_dir: {problem}")))?,
    );
    let ports = Ports {
        store: opened.store,
        wakeups: opened.wakeups,
        clock,
        stopping: shutdown.clone(),
    };
    let domain = build_domain(&validated, ports, templates.clone()).await?;
    let mail = build_mail(&validated, &domain, templates)?;
    // Bound after the store opened, so a second process on the same data directory reports
    // the store's lock rather than a busy port.
    let listeners = bind(config).await?;

    let api_keys = Arc::new(Shared::new(Arc::new(validated.api_keys.clone())));
    let metrics = Metrics::new(domain.clone(), mail.worker.counts());
    let routes = grpc_routes(&domain, &api_keys, config, health_service)?;
    let close_all = CancellationToken::new();
    let limits = &config.limits;
    let grpc = GrpcPort {
        port: Port::new(listeners.grpc, limits, close_all.clone(), Handshake::Http2Preface, true),
        routes,
        limits: limits.clone(),
        metrics: metrics.clone(),
    };
    let (tls_updates, tls_updates_rx) = tokio::sync::mpsc::channel(1);
    let server = grpc
        .serve(validated.tls.as_ref(), tls_updates_rx, shutdown.clone())
        .map_err(StartError::Tls)?;
    let site = Arc::new(crate::http::Site::new(config, validated.server_key.clone()).map_err(StartError::Pages)?);
    let ready = Arc::new(AtomicBool::new(false));
    let http_addr = listeners.http.as_ref().map(|(_, addr)| *addr);
    let http_server = listeners.http.map(|(listener, _)| {
        let state = crate::http::HttpState {
            domain: domain.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
            site: site.clone(),
        };
        serve_http(state, listener, config, close_all.clone(), shutdown.clone())
    });

    let tasks = spawn_background_tasks(&domain, &mail.worker, &metrics, config, &shutdown);
    set_health(&health, ServingStatus::Serving).await;
    ready.store(true, Ordering::Relaxed);
    tasks.spawn(watch_store(domain.store.clone(), health.clone(), shutdown.clone()));
    let (reload, reload_requests) = tokio::sync::mpsc::channel(4);
    let reloader = Reloader::new(
        &validated,
        Targets {
            api_keys,
            transport: mail.transport,
            mail_file_dir: mail.file_dir,
            tls_updates,
        },
    );
    tasks.spawn(reloader.run(
        reload_requests,
        Duration::from_secs(config.reload_check_seconds),
        shutdown.clone(),
    ));
    Ok(Running {
        local_addr: listeners.grpc_addr,
        domain,
        health,
        shutdown,
        tasks,
        server,
        http_server,
        close_all,
        shutdown_delay: Duration::from_secs(config.shutdown_delay_seconds),
        shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
        http_addr,
        mail_worker: mail.worker,
        ready,
        reload,
    })
}

/// The domain over the open store, with the signing keys loaded (created on first start).
async fn build_domain(
    validated: &Validated,
    ports: Ports,
    templates: Arc<Templates>,
) -> Result<Arc<Domain>, StartError> {
    let config = &validated.config;
    let policy = KeyPolicy {
        signing_lifetime: Millis::from(config.sessions.signing_key_rotation_days) * 24 * HOUR,
        max_token_lifetime: Millis::from(config.sessions.jwt_minutes.max(config.oauth.access_token_minutes)) * MINUTE,
    };
    let keys = KeyRing::load(
        validated.server_key.clone(),
        ports.store.clone(),
        policy,
        ports.clock.now(),
    )
    .await
    .map_err(|error| {
        // A start-up failure, not an internal error of a call: say it without that prefix.
        StartError::Keys(match error {
            crate::domain::error::Error::Internal(detail) => detail,
            other => other.to_string(),
        })
    })?;
    let mail = Mail {
        templates,
        rate_limit: RateLimit {
            burst: config.mail.rate_limit.burst,
            per_minute: config.mail.rate_limit.per_minute,
        },
        outbox_limit: OutboxLimit::new(config.mail.outbox_limit),
        default_locale: config.mail.default_locale.clone(),
    };
    Ok(Arc::new(Domain::new(
        ports,
        keys,
        mail,
        validated.server_key.clone(),
        settings(validated),
    )))
}

fn build_mail(validated: &Validated, domain: &Arc<Domain>, templates: Arc<Templates>) -> Result<MailParts, StartError> {
    let config = &validated.config;
    let file_dir = config
        .mail
        .file_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("mail"));
    let transport: Arc<dyn Transport> =
        transport::build(&config.mail, file_dir.clone(), validated.smtp_password.as_ref())
            .map_err(StartError::Mail)?
            .into();
    let transport = Arc::new(Shared::new(transport));
    let settings = WorkerSettings {
        from: config
            .mail
            .from
            .parse()
            .map_err(|_| StartError::Mail("mail.from is not an address".into()))?,
        product: config.mail.product_name.clone(),
        policy: RetryPolicy {
            max_attempts: config.mail.max_attempts,
            base: Duration::from_secs(config.mail.retry_base_seconds),
            max: Duration::from_secs(config.mail.retry_max_seconds),
        },
        concurrency: config.mail.concurrency,
        lease: Duration::from_secs(config.mail.lease_seconds),
    };
    let worker = Arc::new(Worker::new(domain.clone(), transport.clone(), templates, settings));
    Ok(MailParts {
        worker,
        transport,
        file_dir,
    })
}

async fn bind(config: &crate::config::Config) -> Result<Listeners, StartError> {
    let bind_error = |address| move |source| StartError::Bind { address, source };
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(bind_error(config.listen))?;
    let grpc_addr = grpc.local_addr().map_err(bind_error(config.listen))?;
    let http = match config.metrics_listen {
        Some(address) => {
            let listener = TcpListener::bind(address).await.map_err(bind_error(address))?;
            let addr = listener.local_addr().map_err(bind_error(address))?;
            Some((listener, addr))
        }
        None => None,
    };
    Ok(Listeners { grpc, grpc_addr, http })
}

/// Health, reflection and latchkey's services, each behind the API-key check of its scope.
fn grpc_routes(
    domain: &Arc<Domain>,
    api_keys: &Arc<Shared<Vec<crate::config::ApiKey>>>,
    config: &crate::config::Config,
    health_service: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) -> Result<Routes, StartError> {
    // Both versions list and describe both reflection services (and everything else): each
    // builder would otherwise add only its own, so `grpcurl list` on v1alpha missed v1.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(pb::GOOGLE_RPC_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|error| StartError::Reflection(error.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|error| StartError::Reflection(error.to_string()))?;
    let required = config.auth.required;
    let check = |scope| ApiKeyCheck::new(api_keys.clone(), required, scope);
    let max_request = config.limits.max_request_bytes;
    Ok(Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            PasswordlessServer::new(PasswordlessApi::new(domain.clone())).max_decoding_message_size(max_request),
            check(Scope::Links),
        ))
        .add_service(InterceptedService::new(
            SessionsServer::new(SessionsApi::new(domain.clone())).max_decoding_message_size(max_request),
            check(Scope::Sessions),
        ))
        .add_service(InterceptedService::new(
            UsersServer::new(UsersApi::new(domain.clone())).max_decoding_message_size(max_request),
            check(Scope::Admin),
        ))
        .add_service(InterceptedService::new(
            EmailsServer::new(EmailsApi::new(domain.clone())).max_decoding_message_size(max_request),
            check(Scope::Admin),
        )))
}

fn serve_http(
    state: crate::http::HttpState,
    listener: TcpListener,
    config: &crate::config::Config,
    close_all: CancellationToken,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let limits = &config.limits;
    let app = crate::http::router(state, limits.request_timeout())
        .layer(crate::net::MarkRequestsLayer)
        .into_make_service_with_connect_info::<Peer>();
    let listener = Port::new(listener, limits, close_all, Handshake::FirstRequest, false).acceptor();
    tokio::spawn(async move {
        let serving = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = serving {
            tracing::error!(%error, "the HTTP port stopped");
        }
    })
}

/// The sweeper, key rotation and the mail worker, each started again if it panics (see
/// `crate::supervise`), all stopping with `shutdown`.
fn spawn_background_tasks(
    domain: &Arc<Domain>,
    worker: &Arc<Worker>,
    metrics: &Arc<Metrics>,
    config: &crate::config::Config,
    shutdown: &CancellationToken,
) -> TaskTracker {
    let tasks = TaskTracker::new();
    let sweep_interval = Duration::from_secs(config.store.sweep_interval_seconds);
    let sweeps = {
        let (store, clock, stop) = (domain.store.clone(), domain.clock.clone(), shutdown.clone());
        move || sweeper::run(store.clone(), clock.clone(), sweep_interval, stop.clone())
    };
    let rotations = {
        let (domain, stop) = (domain.clone(), shutdown.clone());
        move || rotate_keys(domain.clone(), stop.clone())
    };
    let mail = {
        let (worker, stop) = (worker.clone(), shutdown.clone());
        move || worker.clone().run(stop.clone())
    };
    tasks.spawn(supervise(
        "sweeper",
        shutdown.clone(),
        metrics.task_restarts("sweeper"),
        sweeps,
    ));
    tasks.spawn(supervise(
        "key_rotation",
        shutdown.clone(),
        metrics.task_restarts("key_rotation"),
        rotations,
    ));
    if !domain.mail.outbox_limit.is_off() {
        let samples = {
            let (domain, sends, stop) = (domain.clone(), worker.counts(), shutdown.clone());
            move || outbox_sampler::run(domain.clone(), sends.clone(), stop.clone())
        };
        tasks.spawn(supervise(
            "outbox_sampler",
            shutdown.clone(),
            metrics.task_restarts("outbox_sampler"),
            samples,
        ));
    }
    tasks.spawn(supervise(
        "mail_worker",
        shutdown.clone(),
        metrics.task_restarts("mail_worker"),
        mail,
    ));
    tasks
}

/// Health follows the store: NOT_SERVING while it refuses writes (after a storage error), so
/// load balancers and readiness probes route elsewhere.
async fn watch_store(store: Arc<dyn Store>, health: HealthReporter, shutdown: CancellationToken) {
    let mut refusing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(STORE_CHECK) => {}
        }
        let now_refusing = store.refuses_writes();
        if now_refusing != refusing && !shutdown.is_cancelled() {
            refusing = now_refusing;
            if refusing {
                tracing::error!(
                    "the store refuses writes; health is NOT_SERVING while it does (PostgreSQL: until it answers \
                     again; sled: after a storage error, until a restart, with disk space freed first)"
                );
                set_health(&health, ServingStatus::NotServing).await;
            } else {
                tracing::info!("the store takes writes again; health is SERVING");
                set_health(&health, ServingStatus::Serving).await;
            }
        }
    }
}

async fn rotate_keys(domain: Arc<Domain>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(KEY_ROTATION_CHECK) => {}
        }
        match domain.keys.rotate_if_due(domain.clock.now()).await {
            Ok(true) => {
                tracing::info!(kid = %domain.keys.signing_kid(domain.clock.now()), "the JWT signing keys changed")
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "checking the signing keys failed; will retry"),
        }
    }
}
