//! Configuration: built-in defaults (by profile), then the TOML file, then command-line flags, then
//! `LATCHKEY_*` environment variables (`__` separates levels: `LATCHKEY_STORE__DURABILITY=flush`).
//! Validated once at start-up; a bad value stops start-up with a message naming its key. Secrets
//! never appear in Debug output.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::crypto::{ServerKey, api_key_digest};
use crate::domain::links::{LINK_MAX_MINUTES, LINK_MIN_MINUTES, SESSION_MAX_MINUTES, SESSION_MIN_MINUTES};
use crate::domain::redirect::{AllowedRedirect, RedirectPolicy};
use crate::store::sled_store::Durability;

/// Where the development profile keeps its generated server key: the working directory, never
/// the data directory (a copy of the data directory must not carry the key).
pub const DEVELOPMENT_KEY_FILE: &str = "latchkey-server.key";

/// The least of the shutdown grace period left for draining after `shutdown_delay_seconds`.
const MIN_DRAIN_SECONDS: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// No config file: loopback, auth off, a generated server key, localhost redirects.
    Development,
    /// A config file was given: auth on, every secret and redirect must be configured.
    Production,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// latchkey.v1.Passwordless
    Links,
    /// latchkey.v1.Sessions
    Sessions,
    /// latchkey.v1.Users and latchkey.v1.Emails
    Admin,
}

/// A secret string: deserializes like a string, never prints.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub profile: Profile,
    /// gRPC address.
    pub listen: SocketAddr,
    /// HTTP address for `/.well-known/jwks.json`, `/.well-known/openid-configuration` (and
    /// `/metrics`); unset turns the HTTP port off.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// The server key itself (base64 or hex, 32+ bytes); usually from `LATCHKEY_SERVER_KEY`.
    pub server_key: Option<Secret>,
    /// A file holding the server key.
    pub server_key_file: Option<PathBuf>,
    /// `iss` of every JWT.
    pub issuer: String,
    /// On SIGTERM, health says NOT_SERVING this long before the server stops accepting calls, so
    /// load balancers and Kubernetes stop routing to it first.
    pub shutdown_delay_seconds: u64,
    /// SIGTERM to exit takes at most this long, whatever clients do: the delay above, then
    /// calls in flight drain, then every connection still open is closed and the store closes.
    pub shutdown_grace_seconds: u64,
    /// How often the files behind secrets (config, TLS, SMTP password) are checked for changes,
    /// which reload them as SIGHUP does; 0 turns the check off.
    pub reload_check_seconds: u64,
    /// What one peer may hold on either port.
    #[serde(default)]
    pub limits: crate::net::Limits,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub links: LinksConfig,
    /// One-time codes beside email links.
    #[serde(default)]
    pub otp: OtpConfig,
    pub sessions: SessionsConfig,
    pub store: StoreConfig,
    pub mail: MailConfig,
    pub oauth: OAuthConfig,
    pub sign_in: SignInConfig,
    pub tls: TlsConfig,
}

/// TLS for the gRPC port (PEM files); all unset means plaintext.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA certificates that client certificates must chain to: turns on mutual TLS.
    pub client_ca_file: Option<PathBuf>,
}

/// The TLS files as read at start-up (and again at each reload).
#[derive(Clone, Debug, PartialEq)]
pub struct TlsMaterial {
    pub cert_pem: String,
    pub key_pem: Secret,
    pub client_ca_pem: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    pub clients: Vec<OAuthClientConfig>,
    /// Lifetime of access and ID tokens.
    pub access_token_minutes: u32,
    /// The `aud` of access tokens: the resource they are for (RFC 9068). Default: `issuer`.
    #[serde(default)]
    pub access_token_audience: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClientConfig {
    pub client_id: String,
    /// Shown to people, e.g. on a consent or landing page.
    pub name: String,
    /// Compared exactly with the request's `redirect_uri`.
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    /// Hex SHA-256 of the client's secret (`latchkey hash-key`): a confidential client, which
    /// authenticates at the token endpoint (`client_secret_basic` or `client_secret_post`) and
    /// may leave PKCE out. Unset: a public client, which must use PKCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_sha256: Option<String>,
    /// Where the end-session endpoint may send the browser after signing out (exact match).
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
}

/// The hosted sign-in pages on the HTTP port: where browsers reach them and how they look.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInConfig {
    /// The HTTP port's address as browsers see it (behind an ingress, its https URL); the
    /// discovery document's endpoints and the links in sign-in emails start with it. Default:
    /// `issuer`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The name the pages show; default `mail.product_name`.
    #[serde(default)]
    pub product_name: Option<String>,
    /// An image shown above the form (an absolute https URL, or a path on the same host).
    #[serde(default)]
    pub logo_url: Option<String>,
    /// The colour of buttons and links, `#rrggbb`.
    pub accent_color: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `latchkey=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Off is only allowed while listening on loopback.
    pub required: bool,
    pub api_keys: Vec<ApiKeyConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    /// Hex SHA-256 of the key (`latchkey hash-key`).
    pub sha256: String,
    pub scopes: Vec<Scope>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksConfig {
    pub default_redirect_url: Option<String>,
    /// Entries like `https://app.example.com/auth/`; `:*` allows any port.
    pub redirect_allow_list: Vec<String>,
    /// LoginOrCreate's defaults; `default_redirect_url` when unset.
    pub login_magic_link_url: Option<String>,
    pub signup_magic_link_url: Option<String>,
    /// SendEnchantedLink's default link lifetime.
    pub enchanted_expiration_minutes: u32,
}

/// One-time codes in LoginOrCreate and SendEnchantedLink emails.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtpConfig {
    /// Whether an email carries a code when the request leaves `include_otp` unset.
    pub include_by_default: bool,
    /// The code's length in digits, 6-10.
    pub digits: u8,
}

impl Default for OtpConfig {
    fn default() -> Self {
        Self {
            include_by_default: false,
            digits: 6,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    /// `.eml` files in `mail.file_dir` (development).
    File,
    Smtp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same host or network.
    None,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    pub transport: MailTransport,
    /// The sender, e.g. `Acme <no-reply@acme.example>`.
    pub from: String,
    /// Shown in the built-in templates.
    pub product_name: String,
    /// Where the file transport writes; `<data_dir>/mail` when unset.
    pub file_dir: Option<PathBuf>,
    /// Custom templates: `<dir>/<template id>/{subject.txt, body.html, body.txt}`, and the same
    /// per language in `<dir>/<template id>/<BCP 47 tag>/`.
    pub templates_dir: Option<PathBuf>,
    /// The language of emails when neither the request nor the user names one (BCP 47).
    pub default_locale: String,
    /// Attempts before an email ends FAILED.
    pub max_attempts: u32,
    pub retry_base_seconds: u64,
    pub retry_max_seconds: u64,
    /// Emails being sent at once.
    pub concurrency: usize,
    /// How long a worker holds the emails it claimed. A send still running at 4/5 of it is cut
    /// off and retried; an email whose worker died is sent again once its lease has run out.
    pub lease_seconds: u64,
    /// Calls that would queue mail answer `OUTBOX_FULL` while more emails than this wait in the
    /// outbox (queued or being sent, on every replica); 0: no limit.
    pub outbox_limit: u64,
    pub smtp: SmtpConfig,
    pub rate_limit: RateLimitConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// 587 for starttls, 465 for tls, 25 for none when unset.
    pub port: Option<u16>,
    pub tls: SmtpTls,
    pub username: Option<String>,
    /// Usually from `LATCHKEY_MAIL__SMTP__PASSWORD`, or use `password_file`.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM) for a server with a private CA.
    pub ca_file: Option<PathBuf>,
    pub timeout_seconds: u64,
    pub pool_size: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Emails one recipient may get at once; 0 turns the limit off.
    pub burst: u32,
    /// Emails a recipient regains per minute.
    pub per_minute: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    pub default_duration_minutes: u32,
    pub jwt_minutes: u32,
    /// `aud` of session JWTs.
    pub audience: String,
    pub signing_key_rotation_days: u32,
}

/// Where the data lives: the backend, and what every backend shares (retention, sweeping).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// How long expired links and sessions are kept (to answer TOKEN_EXPIRED) before purging.
    pub retention_hours: u32,
    pub sweep_interval_seconds: u64,
    pub sled: SledConfig,
    pub postgres: PostgresConfig,
    /// `store.sled.cache_capacity_mib` before the backends had sections; still read, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_capacity_mib: Option<u64>,
    /// `store.sled.durability`, as above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// `store.sled.commit_linger_micros`, as above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_linger_micros: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// The embedded store in `data_dir`: one process.
    Sled,
    /// A PostgreSQL database: any number of replicas.
    Postgres,
}

/// The PostgreSQL store's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:5432/db`, several hosts as `h1:5432,h2:5432`; usually from
    /// `LATCHKEY_STORE__POSTGRES__URL`. Never logged.
    pub url: Option<Secret>,
    /// A file holding the URL (a Kubernetes Secret).
    pub url_file: Option<PathBuf>,
    /// Connections each replica keeps at most.
    pub pool_size: usize,
    pub connect_timeout_seconds: u64,
    /// A statement running longer fails; a call waits at most about this long for the database.
    pub statement_timeout_seconds: u64,
    /// CA certificates (PEM) the database's certificate must chain to. Turns TLS on, with the host
    /// name verified (libpq's `sslmode=verify-full`).
    pub ca_file: Option<PathBuf>,
    /// LISTEN/NOTIFY carries wake-ups between replicas; turn it off for engines or poolers
    /// without it (CockroachDB, PgBouncer in transaction mode): waiters then poll.
    pub notify: bool,
    /// How often a waiter reads again in case a wake-up was lost (with `notify` off: how soon it
    /// sees another replica's change).
    pub recheck_millis: u64,
    /// How long a start waits for a database it cannot reach (one restarting, failing over, or
    /// not up yet in a fresh deployment) before it gives up and exits; 0 gives up at once.
    pub startup_wait_seconds: u64,
}

impl PostgresConfig {
    /// The URL, from `url` or `url_file`.
    pub fn resolve_url(&self) -> Result<Secret, ConfigError> {
        match (&self.url, &self.url_file) {
            (Some(_), Some(_)) => Err(invalid("store.postgres.url_file", "set url or url_file, not both")),
            (Some(url), None) => Ok(url.clone()),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|error| {
                    invalid(
                        "store.postgres.url_file",
                        format!("cannot read {}: {error}", file.display()),
                    )
                })?;
                Ok(Secret(text.trim().to_string()))
            }
            (None, None) => Err(invalid(
                "store.postgres.url",
                "backend \"postgres\" needs url or url_file (or LATCHKEY_STORE__POSTGRES__URL)",
            )),
        }
    }

    /// The client's config from the URL, with TLS required when `ca_file` is set. libpq's
    /// `sslmode=verify-full` and `verify-ca`, which the client library does not parse, mean
    /// `require` (TLS is then verified against `ca_file`, host name included, so `verify-ca` gets
    /// the stricter check).
    pub fn client_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        use tokio_postgres::config::SslMode;

        let url = self.resolve_url()?;
        let mut url = url.expose().to_owned();
        let mut asked = "sslmode=require";
        for mode in ["sslmode=verify-full", "sslmode=verify-ca"] {
            if url.contains(mode) {
                asked = mode;
                url = url.replace(mode, "sslmode=require");
            }
        }
        // The parser's message could quote the URL, and with it the password: say only where.
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            invalid(
                "store.postgres.url",
                "is not a PostgreSQL URL (postgres://user:password@host:port/database); the value is not shown",
            )
        })?;
        // With a CA file latchkey verifies the server, so a server that offers no TLS is refused
        // rather than spoken to in plain text (the client's default, `prefer`, would fall back).
        match (&self.ca_file, config.get_ssl_mode()) {
            (Some(_), SslMode::Disable) => {
                return Err(invalid(
                    "store.postgres.ca_file",
                    "is set but the url says sslmode=disable; drop one of them",
                ));
            }
            (Some(_), _) => {
                config.ssl_mode(SslMode::Require);
            }
            (None, SslMode::Require) => {
                return Err(invalid(
                    "store.postgres.ca_file",
                    format!(
                        "is needed: the url says {asked}, and latchkey verifies the database's certificate \
                         and host name against the CA in ca_file"
                    ),
                ));
            }
            (None, _) => {}
        }
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.client_config()?;
        if !(1..=256).contains(&self.pool_size) {
            return Err(invalid("store.postgres.pool_size", "must be between 1 and 256"));
        }
        if !(1..=300).contains(&self.connect_timeout_seconds) {
            return Err(invalid(
                "store.postgres.connect_timeout_seconds",
                "must be between 1 and 300",
            ));
        }
        if !(1..=300).contains(&self.statement_timeout_seconds) {
            return Err(invalid(
                "store.postgres.statement_timeout_seconds",
                "must be between 1 and 300",
            ));
        }
        if !(100..=60_000).contains(&self.recheck_millis) {
            return Err(invalid(
                "store.postgres.recheck_millis",
                "must be between 100 and 60000",
            ));
        }
        if self.startup_wait_seconds > 3600 {
            return Err(invalid(
                "store.postgres.startup_wait_seconds",
                "must be between 0 and 3600",
            ));
        }
        if let Some(ca_file) = &self.ca_file
            && let Err(error) = std::fs::read(ca_file)
        {
            return Err(invalid(
                "store.postgres.ca_file",
                format!("cannot read {}: {error}", ca_file.display()),
            ));
        }
        Ok(())
    }
}

/// The embedded store's own settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SledConfig {
    /// sled's page cache, in MiB of the on-disk form.
    pub cache_capacity_mib: u64,
    pub durability: Durability,
    /// Under load, how long the group commit waits for more writes before it flushes (0: never).
    pub commit_linger_micros: u32,
}

impl StoreConfig {
    /// Moves the keys that predate `[store.sled]` into it, warning about each; returns their names.
    fn adopt_legacy_keys(&mut self) -> Vec<&'static str> {
        let mut moved = Vec::new();
        if let Some(value) = self.cache_capacity_mib.take() {
            self.sled.cache_capacity_mib = value;
            moved.push("cache_capacity_mib");
        }
        if let Some(value) = self.durability.take() {
            self.sled.durability = value;
            moved.push("durability");
        }
        if let Some(value) = self.commit_linger_micros.take() {
            self.sled.commit_linger_micros = value;
            moved.push("commit_linger_micros");
        }
        for key in &moved {
            tracing::warn!("store.{key} is now store.sled.{key}; the old key still works, but rename it");
        }
        moved
    }
}

impl Config {
    pub fn defaults(profile: Profile) -> Self {
        let development = profile == Profile::Development;
        Config {
            profile,
            listen: "127.0.0.1:50051".parse().expect("valid address"),
            metrics_listen: Some("127.0.0.1:9464".parse().expect("valid address")),
            data_dir: PathBuf::from("./data"),
            server_key: None,
            server_key_file: None,
            issuer: "http://localhost:9464".into(),
            shutdown_delay_seconds: 0,
            shutdown_grace_seconds: 25,
            reload_check_seconds: 10,
            limits: crate::net::Limits::default(),
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
            auth: AuthConfig {
                required: !development,
                api_keys: Vec::new(),
            },
            links: LinksConfig {
                default_redirect_url: development.then(|| "http://localhost:3000/auth/callback".into()),
                redirect_allow_list: if development {
                    vec!["http://localhost:*/".into(), "http://127.0.0.1:*/".into()]
                } else {
                    Vec::new()
                },
                login_magic_link_url: None,
                signup_magic_link_url: None,
                enchanted_expiration_minutes: 10,
            },
            mail: MailConfig {
                transport: if development {
                    MailTransport::File
                } else {
                    MailTransport::Smtp
                },
                from: "latchkey <no-reply@localhost>".into(),
                product_name: "latchkey".into(),
                file_dir: None,
                templates_dir: None,
                default_locale: "en".into(),
                max_attempts: 8,
                retry_base_seconds: 5,
                retry_max_seconds: 1800,
                concurrency: 8,
                lease_seconds: 60,
                outbox_limit: 100_000,
                smtp: SmtpConfig {
                    host: String::new(),
                    port: None,
                    tls: SmtpTls::Starttls,
                    username: None,
                    password: None,
                    password_file: None,
                    ca_file: None,
                    timeout_seconds: 15,
                    pool_size: 8,
                },
                rate_limit: RateLimitConfig {
                    burst: 5,
                    per_minute: 1,
                },
            },
            tls: TlsConfig::default(),
            otp: OtpConfig::default(),
            oauth: OAuthConfig {
                clients: if development {
                    vec![OAuthClientConfig {
                        client_id: "dev".into(),
                        name: "Development client".into(),
                        redirect_uris: vec!["http://localhost:3000/oauth/callback".into()],
                        scopes: vec!["openid".into(), "email".into(), "profile".into()],
                        client_secret_sha256: None,
                        post_logout_redirect_uris: vec!["http://localhost:3000/".into()],
                    }]
                } else {
                    Vec::new()
                },
                access_token_minutes: 60,
                access_token_audience: None,
            },
            sign_in: SignInConfig {
                public_url: None,
                product_name: None,
                logo_url: None,
                accent_color: "#1f5fbf".into(),
            },
            sessions: SessionsConfig {
                default_duration_minutes: 1440,
                jwt_minutes: 5,
                audience: "latchkey".into(),
                signing_key_rotation_days: 30,
            },
            store: StoreConfig {
                backend: StoreBackend::Sled,
                retention_hours: 24,
                sweep_interval_seconds: 60,
                sled: SledConfig {
                    cache_capacity_mib: 64,
                    durability: Durability::Fsync,
                    commit_linger_micros: 1000,
                },
                postgres: PostgresConfig {
                    url: None,
                    url_file: None,
                    pool_size: 16,
                    connect_timeout_seconds: 5,
                    statement_timeout_seconds: 5,
                    ca_file: None,
                    notify: true,
                    recheck_millis: 2000,
                    startup_wait_seconds: 60,
                },
                cache_capacity_mib: None,
                durability: None,
                commit_linger_micros: None,
            },
        }
    }
}

/// Command-line flags that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(String),
    #[error("config key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// `LATCHKEY_*` variables, minus the ones Kubernetes injects for Services named `latchkey` or
/// `latchkey-*` (`LATCHKEY_PORT`, `LATCHKEY_SERVICE_HOST`, `LATCHKEY_HEADLESS_PORT_50051_TCP`, ...)
/// and the test harness's own `LATCHKEY_TEST_*` (which backend the suites run on).
fn environment() -> Env {
    Env::prefixed("LATCHKEY_")
        .filter(|key| !is_kubernetes_service_variable(key.as_str()) && !is_test_harness_variable(key.as_str()))
        .split("__")
}

/// `LATCHKEY_TEST_STORE`, `LATCHKEY_TEST_POSTGRES_URL`: no key of latchkey's is named `test_*`.
fn is_test_harness_variable(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("test_") && !name.contains("__")
}

/// Whether `name` (after `LATCHKEY_`) has the shape of a Kubernetes service-link variable:
/// `[NAME_]SERVICE_HOST`, `[NAME_]SERVICE_PORT[_PORTNAME]`, `[NAME_]PORT`, or
/// `[NAME_]PORT_<number>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`. latchkey's own keys nest with `__`,
/// which these never contain, and no top-level key has such a shape.
fn is_kubernetes_service_variable(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if name.contains("__") {
        return false;
    }
    let words: Vec<&str> = name.split('_').collect();
    words.iter().enumerate().any(|(at, word)| {
        let rest = &words[at + 1..];
        match *word {
            "service" => matches!(rest.first(), Some(&"host") if rest.len() == 1) || rest.first() == Some(&"port"),
            "port" => match rest {
                [] => true,
                [number, protocol, tail @ ..] => {
                    number.bytes().all(|b| b.is_ascii_digit())
                        && matches!(*protocol, "tcp" | "udp" | "sctp")
                        && matches!(tail, [] | ["proto" | "port" | "addr"])
                }
                _ => false,
            },
            _ => false,
        }
    })
}

/// Reads the layered configuration: defaults for the profile, the file, the flags, the environment.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut layers = Figment::new();
    if let Some(file) = file {
        if !file.is_file() {
            return Err(ConfigError::Parse(format!(
                "config file {} does not exist",
                file.display()
            )));
        }
        layers = layers.merge(Toml::file_exact(file));
    }
    let profile = match layers.clone().merge(environment()).extract_inner::<Profile>("profile") {
        Ok(profile) => profile,
        Err(error) if error.missing() => {
            if file.is_some() {
                Profile::Production
            } else {
                Profile::Development
            }
        }
        Err(error) => return Err(ConfigError::Parse(describe(error))),
    };
    let mut flags = serde_json::Map::new();
    if let Some(listen) = overrides.listen {
        flags.insert("listen".into(), listen.to_string().into());
    }
    if let Some(dir) = &overrides.data_dir {
        flags.insert("data_dir".into(), dir.display().to_string().into());
    }
    if let Some(listen) = overrides.metrics_listen {
        flags.insert("metrics_listen".into(), listen.to_string().into());
    }
    Figment::from(Serialized::defaults(Config::defaults(profile)))
        .merge(layers)
        .merge(Serialized::defaults(flags))
        .merge(environment())
        .extract::<Config>()
        .map_err(|error| ConfigError::Parse(describe(error)))
}

fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| format!("config error: {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A 64-character hex SHA-256 digest as config writes it.
pub fn hex_digest(text: &str) -> Option<[u8; 32]> {
    hex::decode(text.trim()).ok().and_then(|bytes| bytes.try_into().ok())
}

/// A configured API key, ready for constant-time checks.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub name: String,
    pub digest: [u8; 32],
    pub scopes: Vec<Scope>,
}

/// The config after validation, with its secrets resolved.
#[derive(Debug)]
pub struct Validated {
    pub config: Config,
    pub server_key: ServerKey,
    pub redirects: RedirectPolicy,
    /// The hosted confirm page, when the sign-in pages have an address links may point at.
    pub sign_in_confirm_url: Option<String>,
    pub api_keys: Vec<ApiKey>,
    /// Set when the development profile generated a new server key file.
    pub generated_key_file: Option<PathBuf>,
    /// `mail.smtp.password`, or the contents of `mail.smtp.password_file`.
    pub smtp_password: Option<Secret>,
    pub tls: Option<TlsMaterial>,
    /// Where relative paths and the development key are resolved.
    pub working_dir: PathBuf,
    /// The file and flags the config came from, for reloads (the CLI sets it); None reloads the
    /// running config, reading the files it names again.
    pub source: Option<crate::reload::Source>,
}

impl Config {
    /// Checks every value and resolves the server key. `working_dir` is where the development
    /// profile keeps its generated key.
    pub fn validate(mut self, working_dir: &Path) -> Result<Validated, ConfigError> {
        if let Some(http) = self.metrics_listen
            && !self.auth.required
            && !http.ip().is_loopback()
        {
            return Err(invalid(
                "metrics_listen",
                "must be a loopback address while auth is off",
            ));
        }
        if !self.auth.required && !self.listen.ip().is_loopback() {
            return Err(invalid(
                "auth.required",
                format!(
                    "auth is off, but listen = {} is not a loopback address; latchkey only serves without API keys on loopback (configure auth.api_keys and set auth.required = true)",
                    self.listen
                ),
            ));
        }
        if self.auth.required && self.auth.api_keys.is_empty() {
            return Err(invalid(
                "auth.api_keys",
                "auth is required but no API keys are configured",
            ));
        }
        let mut api_keys = Vec::new();
        for (index, key) in self.auth.api_keys.iter().enumerate() {
            let at = |field: &str| format!("auth.api_keys[{index}].{field}");
            if key.name.trim().is_empty() {
                return Err(invalid(at("name"), "every API key needs a name"));
            }
            let digest: [u8; 32] = hex_digest(&key.sha256).ok_or_else(|| {
                invalid(
                    at("sha256"),
                    "must be the 64-character hex SHA-256 of the key (latchkey hash-key)",
                )
            })?;
            if key.scopes.is_empty() {
                return Err(invalid(at("scopes"), "give at least one of links, sessions, admin"));
            }
            api_keys.push(ApiKey {
                name: key.name.clone(),
                digest,
                scopes: key.scopes.clone(),
            });
        }
        let mut allowed = Vec::new();
        for (index, pattern) in self.links.redirect_allow_list.iter().enumerate() {
            let entry = AllowedRedirect::parse(pattern)
                .map_err(|problem| invalid(format!("links.redirect_allow_list[{index}]"), problem))?;
            allowed.push(entry);
        }
        let sign_in_pages = self.validate_sign_in()?;
        let sign_in_confirm_url = sign_in_pages
            .is_some()
            .then(|| format!("{}{}confirm", self.public_url(), crate::http::SIGN_IN_PREFIX));
        allowed.extend(sign_in_pages);
        let redirects = RedirectPolicy::new(allowed);
        for (key, url) in [
            ("links.default_redirect_url", &self.links.default_redirect_url),
            ("links.login_magic_link_url", &self.links.login_magic_link_url),
            ("links.signup_magic_link_url", &self.links.signup_magic_link_url),
        ] {
            if let Some(url) = url {
                redirects
                    .check("url", url, "token")
                    .map_err(|error| invalid(key, error.to_string()))?;
            }
        }
        if !(LINK_MIN_MINUTES..=LINK_MAX_MINUTES).contains(&self.links.enchanted_expiration_minutes) {
            return Err(invalid(
                "links.enchanted_expiration_minutes",
                format!("must be between {LINK_MIN_MINUTES} and {LINK_MAX_MINUTES}"),
            ));
        }
        self.validate_oauth()?;
        let smtp_password = self.validate_mail()?;
        self.mail.default_locale = crate::domain::locale::tag("mail.default_locale", &self.mail.default_locale)
            .ok()
            .flatten()
            .ok_or_else(|| {
                invalid(
                    "mail.default_locale",
                    "must be a BCP 47 language tag, e.g. en, de or pt-BR",
                )
            })?;
        let tls = self.validate_tls()?;
        let digits = crate::domain::otp::OTP_MIN_DIGITS..=crate::domain::otp::OTP_MAX_DIGITS;
        if !digits.contains(&self.otp.digits) {
            return Err(invalid("otp.digits", "must be between 6 and 10"));
        }
        let sessions = &self.sessions;
        if !(SESSION_MIN_MINUTES..=SESSION_MAX_MINUTES).contains(&sessions.default_duration_minutes) {
            return Err(invalid(
                "sessions.default_duration_minutes",
                format!("must be between {SESSION_MIN_MINUTES} and {SESSION_MAX_MINUTES}"),
            ));
        }
        if !(1..=1440).contains(&sessions.jwt_minutes) {
            return Err(invalid("sessions.jwt_minutes", "must be between 1 and 1440"));
        }
        if sessions.signing_key_rotation_days == 0 {
            return Err(invalid("sessions.signing_key_rotation_days", "must be at least 1"));
        }
        if self.issuer.trim().is_empty() {
            return Err(invalid("issuer", "must not be empty"));
        }
        if self.shutdown_delay_seconds > 300 {
            return Err(invalid("shutdown_delay_seconds", "must be at most 300"));
        }
        if !(5..=600).contains(&self.shutdown_grace_seconds)
            || self.shutdown_grace_seconds < self.shutdown_delay_seconds + MIN_DRAIN_SECONDS
        {
            return Err(invalid(
                "shutdown_grace_seconds",
                format!("must be between 5 and 600, and at least shutdown_delay_seconds + {MIN_DRAIN_SECONDS}"),
            ));
        }
        if self.reload_check_seconds > 3600 {
            return Err(invalid(
                "reload_check_seconds",
                "must be at most 3600 (0 turns the check off)",
            ));
        }
        self.limits
            .check()
            .map_err(|(key, problem)| invalid(format!("limits.{key}"), problem))?;
        self.store.adopt_legacy_keys();
        if self.store.sled.cache_capacity_mib == 0 {
            return Err(invalid("store.sled.cache_capacity_mib", "must be at least 1"));
        }
        if self.store.sled.commit_linger_micros > 10_000 {
            return Err(invalid(
                "store.sled.commit_linger_micros",
                "must be at most 10000 (10 ms)",
            ));
        }
        if self.store.retention_hours < 24 {
            return Err(invalid(
                "store.retention_hours",
                "must be at least 24 (expired links answer TOKEN_EXPIRED that long)",
            ));
        }
        if self.store.sweep_interval_seconds == 0 {
            return Err(invalid("store.sweep_interval_seconds", "must be at least 1"));
        }
        if self.store.backend == StoreBackend::Postgres {
            self.store.postgres.check()?;
        }
        let (server_key, generated_key_file) = self.resolve_server_key(working_dir)?;
        Ok(Validated {
            config: self,
            server_key,
            redirects,
            sign_in_confirm_url,
            api_keys,
            generated_key_file,
            smtp_password,
            tls,
            working_dir: working_dir.to_path_buf(),
            source: None,
        })
    }

    /// A server key file that any user may read is refused in production (and warned about in
    /// development): whoever reads it can mint every secret latchkey hands out. The group may read
    /// it (Kubernetes adds the pod's fsGroup to Secret files).
    fn check_key_file_mode(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|error| invalid(key, format!("cannot read {}: {error}", path.display())))?
            .permissions()
            .mode();
        if mode & 0o007 == 0 {
            return Ok(());
        }
        let problem = format!(
            "{} is readable by every user (mode {:o}); restrict it, e.g. chmod 600 (or 640 for a group)",
            path.display(),
            mode & 0o777
        );
        match self.profile {
            Profile::Production => Err(invalid(key, problem)),
            Profile::Development => {
                tracing::warn!("{problem}");
                Ok(())
            }
        }
    }

    /// Where browsers reach the HTTP port, without a trailing slash.
    pub fn public_url(&self) -> &str {
        self.sign_in
            .public_url
            .as_deref()
            .unwrap_or(&self.issuer)
            .trim_end_matches('/')
    }

    /// The `aud` of OAuth access tokens.
    pub fn access_token_audience(&self) -> &str {
        self.oauth.access_token_audience.as_deref().unwrap_or(&self.issuer)
    }

    /// Reads the TLS files; a certificate needs its key, and mutual TLS needs both.
    fn validate_tls(&self) -> Result<Option<TlsMaterial>, ConfigError> {
        let tls = &self.tls;
        let read = |key: &str, path: &Path, marker: &str| {
            let text = std::fs::read_to_string(path)
                .map_err(|error| invalid(key, format!("cannot read {}: {error}", path.display())))?;
            if !text.contains(marker) {
                return Err(invalid(
                    key,
                    format!("{} holds no PEM {marker:?} block", path.display()),
                ));
            }
            Ok(text)
        };
        match (&tls.cert_file, &tls.key_file) {
            (None, None) if tls.client_ca_file.is_some() => Err(invalid(
                "tls.client_ca_file",
                "mutual TLS needs tls.cert_file and tls.key_file too",
            )),
            (None, None) => Ok(None),
            (Some(_), None) => Err(invalid("tls.key_file", "tls.cert_file needs its key")),
            (None, Some(_)) => Err(invalid("tls.cert_file", "tls.key_file needs its certificate")),
            (Some(cert), Some(key)) => Ok(Some(TlsMaterial {
                cert_pem: read("tls.cert_file", cert, "CERTIFICATE")?,
                key_pem: Secret(read("tls.key_file", key, "PRIVATE KEY")?),
                client_ca_pem: match &tls.client_ca_file {
                    Some(ca) => Some(read("tls.client_ca_file", ca, "CERTIFICATE")?),
                    None => None,
                },
            })),
        }
    }

    /// Checks `sign_in`; returns the allow-list entry of the hosted sign-in pages, so links may
    /// point at them. An issuer that is no URL (allowed before these pages existed), or one links
    /// may not point at (plain http off loopback), leaves them without an address: they then need
    /// `sign_in.public_url`.
    fn validate_sign_in(&self) -> Result<Option<AllowedRedirect>, ConfigError> {
        let sign_in = &self.sign_in;
        let public_url = self.public_url();
        let usable = url::Url::parse(public_url).is_ok_and(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
        });
        let pages = match (usable, sign_in.public_url.is_some()) {
            (true, true) => Some(
                AllowedRedirect::parse(&format!("{public_url}{}", crate::http::SIGN_IN_PREFIX))
                    .map_err(|problem| invalid("sign_in.public_url", problem))?,
            ),
            // From the issuer: one that links may not point at (plain http off loopback, as the
            // Helm chart's in-cluster default) still starts; the pages then need
            // `sign_in.public_url`.
            (true, false) => AllowedRedirect::parse(&format!("{public_url}{}", crate::http::SIGN_IN_PREFIX)).ok(),
            (false, true) => {
                return Err(invalid(
                    "sign_in.public_url",
                    "must be an http(s) URL without query or fragment",
                ));
            }
            (false, false) => None,
        };
        if let Some(name) = &sign_in.product_name
            && (name.trim().is_empty() || name.chars().count() > 100)
        {
            return Err(invalid("sign_in.product_name", "1-100 characters when set"));
        }
        if let Some(logo) = &sign_in.logo_url {
            let absolute = url::Url::parse(logo).is_ok_and(|url| url.scheme() == "https");
            if !(absolute || (logo.starts_with('/') && !logo.starts_with("//"))) || logo.contains(['"', '<', '>']) {
                return Err(invalid(
                    "sign_in.logo_url",
                    "an https URL, or a path on the same host starting with /",
                ));
            }
        }
        let color = sign_in.accent_color.as_bytes();
        if !(color.len() == 7 && color[0] == b'#' && color[1..].iter().all(u8::is_ascii_hexdigit)) {
            return Err(invalid("sign_in.accent_color", "a colour written #rrggbb"));
        }
        Ok(pages)
    }

    fn validate_oauth(&self) -> Result<(), ConfigError> {
        let oauth = &self.oauth;
        if !(1..=1440).contains(&oauth.access_token_minutes) {
            return Err(invalid("oauth.access_token_minutes", "must be between 1 and 1440"));
        }
        // Session JWTs are told from ID and access tokens partly by audience, so none may share it.
        let session_audience = self.sessions.audience.as_str();
        if session_audience.trim().is_empty() {
            return Err(invalid("sessions.audience", "must not be empty"));
        }
        if let Some(audience) = &oauth.access_token_audience
            && audience.trim().is_empty()
        {
            return Err(invalid("oauth.access_token_audience", "must not be empty when set"));
        }
        if self.access_token_audience() == session_audience {
            return Err(invalid(
                "oauth.access_token_audience",
                "must differ from sessions.audience (it defaults to issuer), so an access token is never taken for a session JWT",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (index, client) in oauth.clients.iter().enumerate() {
            let at = |field: &str| format!("oauth.clients[{index}].{field}");
            let id = client.client_id.trim();
            if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(invalid(at("client_id"), "1-128 printable characters without spaces"));
            }
            if id == session_audience {
                return Err(invalid(
                    at("client_id"),
                    "must differ from sessions.audience: an ID token's audience is its client",
                ));
            }
            if !seen.insert(id) {
                return Err(invalid(at("client_id"), format!("{id:?} is configured twice")));
            }
            if client.redirect_uris.is_empty() {
                return Err(invalid(at("redirect_uris"), "give at least one"));
            }
            for uri in &client.redirect_uris {
                crate::domain::redirect::check_registered_uri(uri)
                    .map_err(|problem| invalid(at("redirect_uris"), problem))?;
            }
            if let Some(digest) = &client.client_secret_sha256
                && hex_digest(digest).is_none()
            {
                return Err(invalid(
                    at("client_secret_sha256"),
                    "must be the 64-character hex SHA-256 of the secret (latchkey hash-key)",
                ));
            }
            for uri in &client.post_logout_redirect_uris {
                crate::domain::redirect::check_registered_uri(uri)
                    .map_err(|problem| invalid(at("post_logout_redirect_uris"), problem))?;
            }
            let scope_ok =
                |s: &String| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
            if client.scopes.is_empty() || !client.scopes.iter().all(scope_ok) {
                return Err(invalid(at("scopes"), "give at least one scope, each without spaces"));
            }
        }
        Ok(())
    }

    /// Checks the mail settings; returns the SMTP password, read from its file if need be.
    fn validate_mail(&self) -> Result<Option<Secret>, ConfigError> {
        let mail = &self.mail;
        if mail.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid(
                "mail.from",
                "must be an address, e.g. \"Acme <no-reply@acme.example>\"",
            ));
        }
        if !(1..=100).contains(&mail.max_attempts) {
            return Err(invalid("mail.max_attempts", "must be between 1 and 100"));
        }
        if mail.retry_base_seconds == 0 || mail.retry_max_seconds < mail.retry_base_seconds {
            return Err(invalid(
                "mail.retry_base_seconds",
                "must be at least 1 and at most mail.retry_max_seconds",
            ));
        }
        if !(1..=256).contains(&mail.concurrency) {
            return Err(invalid("mail.concurrency", "must be between 1 and 256"));
        }
        if !(2..=3600).contains(&mail.lease_seconds) {
            return Err(invalid("mail.lease_seconds", "must be between 2 and 3600"));
        }
        if mail.outbox_limit > 100_000_000 {
            return Err(invalid("mail.outbox_limit", "must be at most 100000000 (0: no limit)"));
        }
        if mail.rate_limit.burst > 0 && mail.rate_limit.per_minute == 0 {
            return Err(invalid(
                "mail.rate_limit.per_minute",
                "must be at least 1 while the limit is on (burst > 0)",
            ));
        }
        let smtp = &mail.smtp;
        if mail.transport == MailTransport::Smtp && smtp.host.trim().is_empty() {
            return Err(invalid("mail.smtp.host", "the smtp transport needs a host"));
        }
        if smtp.timeout_seconds == 0 || smtp.pool_size == 0 {
            return Err(invalid(
                "mail.smtp.timeout_seconds",
                "timeout_seconds and pool_size must be at least 1",
            ));
        }
        if let Some(ca_file) = &smtp.ca_file
            && let Err(error) = std::fs::read(ca_file)
        {
            return Err(invalid(
                "mail.smtp.ca_file",
                format!("cannot read {}: {error}", ca_file.display()),
            ));
        }
        let password = match (&smtp.password, &smtp.password_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "mail.smtp.password_file",
                    "set password or password_file, not both",
                ));
            }
            (Some(password), None) => Some(password.clone()),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|error| {
                    invalid(
                        "mail.smtp.password_file",
                        format!("cannot read {}: {error}", file.display()),
                    )
                })?;
                Some(Secret(text.trim_end_matches(['\r', '\n']).to_string()))
            }
            (None, None) => None,
        };
        if password.is_some() && smtp.username.is_none() {
            return Err(invalid("mail.smtp.username", "a password needs a username"));
        }
        Ok(password)
    }

    fn resolve_server_key(&self, working_dir: &Path) -> Result<(ServerKey, Option<PathBuf>), ConfigError> {
        if let Some(secret) = &self.server_key {
            let key = ServerKey::parse(secret.expose()).map_err(|error| invalid("server_key", error.to_string()))?;
            return Ok((key, None));
        }
        let (path, generate) = match (&self.server_key_file, self.profile) {
            (Some(path), _) => (path.clone(), false),
            (None, Profile::Development) => (working_dir.join(DEVELOPMENT_KEY_FILE), true),
            (None, Profile::Production) => {
                return Err(invalid(
                    "server_key_file",
                    "a server key is required: set server_key_file or LATCHKEY_SERVER_KEY",
                ));
            }
        };
        let key_key = if generate {
            "server_key_file (development default)"
        } else {
            "server_key_file"
        };
        if is_inside(&path, &self.data_dir, working_dir) {
            return Err(invalid(
                key_key,
                "the server key must live outside data_dir: a copy of the data directory must not carry it",
            ));
        }
        let mut generated = None;
        if generate && !path.exists() {
            write_new_key(&path)
                .map_err(|error| invalid(key_key, format!("cannot create {}: {error}", path.display())))?;
            generated = Some(path.clone());
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|error| invalid(key_key, format!("cannot read {}: {error}", path.display())))?;
        self.check_key_file_mode(key_key, &path)?;
        let key = ServerKey::parse(&text).map_err(|error| invalid(key_key, format!("{}: {error}", path.display())))?;
        Ok((key, generated))
    }
}

fn absolute(path: &Path, working_dir: &Path) -> PathBuf {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        working_dir.join(path)
    };
    // Canonicalize what exists so symlinks and `..` cannot hide the key inside the data dir.
    path.canonicalize().unwrap_or_else(|_| {
        path.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    })
}

fn is_inside(path: &Path, dir: &Path, working_dir: &Path) -> bool {
    let file_dir = path
        .parent()
        .map(|parent| absolute(parent, working_dir))
        .unwrap_or_default();
    file_dir.starts_with(absolute(dir, working_dir))
}

fn write_new_key(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{}", ServerKey::generate_encoded())?;
    file.sync_all()
}

/// For `latchkey hash-key`.
pub fn hash_api_key(key: &str) -> String {
    api_key_digest(key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_default_validates_and_generates_a_key_outside_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(Profile::Development);
        config.data_dir = dir.path().join("data");
        let validated = config.validate(dir.path()).unwrap();
        let key_file = dir.path().join(DEVELOPMENT_KEY_FILE);
        assert_eq!(validated.generated_key_file.as_deref(), Some(key_file.as_path()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A second start reads the same key.
        let mut again = Config::defaults(Profile::Development);
        again.data_dir = dir.path().join("data");
        let again = again.validate(dir.path()).unwrap();
        assert!(again.generated_key_file.is_none());
        assert_eq!(again.server_key.derive("x", b""), validated.server_key.derive("x", b""));
    }

    #[test]
    fn refuses_auth_off_beyond_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(Profile::Development);
        config.listen = "0.0.0.0:50051".parse().unwrap();
        let error = config.validate(dir.path()).unwrap_err().to_string();
        assert!(error.contains("auth.required"), "{error}");
    }

    #[test]
    fn production_needs_keys_and_a_server_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::defaults(Profile::Production);
        assert!(
            config
                .validate(dir.path())
                .unwrap_err()
                .to_string()
                .contains("auth.api_keys")
        );
        let mut config = Config::defaults(Profile::Production);
        config.auth.api_keys.push(ApiKeyConfig {
            name: "web".into(),
            sha256: hash_api_key("k"),
            scopes: vec![Scope::Links],
        });
        assert!(
            config
                .clone()
                .validate(dir.path())
                .unwrap_err()
                .to_string()
                .contains("mail.smtp.host")
        );
        config.mail.smtp.host = "smtp.example.com".into();
        assert!(
            config
                .validate(dir.path())
                .unwrap_err()
                .to_string()
                .contains("server_key_file")
        );
    }

    #[test]
    fn a_server_key_file_any_user_can_read_is_refused_in_production() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("server.key");
        std::fs::write(&key, ServerKey::generate_encoded()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut config = Config::defaults(Profile::Production);
        config.data_dir = dir.path().join("data");
        config.server_key_file = Some(key.clone());
        let error = config.resolve_server_key(dir.path()).unwrap_err().to_string();
        assert!(error.contains("readable by every user (mode 644)"), "{error}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(config.resolve_server_key(dir.path()).is_ok(), "group-readable is fine");
        config.profile = Profile::Development;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(config.resolve_server_key(dir.path()).is_ok(), "development warns only");
    }

    #[test]
    fn key_file_inside_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(Profile::Development);
        config.data_dir = dir.path().to_path_buf();
        config.server_key_file = Some(dir.path().join("key"));
        assert!(
            config
                .validate(dir.path())
                .unwrap_err()
                .to_string()
                .contains("outside data_dir")
        );
    }

    /// A PostgreSQL store needs exactly one URL, one that parses; a bad one is refused without
    /// being shown, and the pool and lease settings are bounded.
    #[test]
    fn postgres_and_lease_settings_are_checked_and_a_bad_url_is_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let check = |adjust: &dyn Fn(&mut Config)| {
            let mut config = Config::defaults(Profile::Development);
            config.store.backend = StoreBackend::Postgres;
            adjust(&mut config);
            config.validate(dir.path()).map(drop).map_err(|error| error.to_string())
        };
        let url = |config: &mut Config| {
            config.store.postgres.url = Some("postgres://u:hunter2@db:5432/app".to_string().into())
        };
        assert!(check(&url).is_ok());
        assert!(check(&|_| {}).unwrap_err().contains("store.postgres.url"));
        let error = check(&|config| {
            config.store.postgres.url = Some("postgres://u:hunter2@db:99999999/app".to_string().into())
        })
        .unwrap_err();
        assert!(
            error.contains("store.postgres.url") && !error.contains("hunter2"),
            "{error}"
        );
        let file = dir.path().join("url");
        std::fs::write(&file, "postgres://u:hunter2@db/app\n").unwrap();
        assert!(check(&|config| config.store.postgres.url_file = Some(file.clone())).is_ok());
        let both = check(&|config| {
            url(config);
            config.store.postgres.url_file = Some(file.clone());
        });
        assert!(both.unwrap_err().contains("store.postgres.url_file"));
        let missing = check(&|config| config.store.postgres.url_file = Some(dir.path().join("nope")));
        assert!(missing.unwrap_err().contains("store.postgres.url_file"));
        for (adjust, key) in [
            (
                &(|c: &mut Config| c.store.postgres.pool_size = 0) as &dyn Fn(&mut Config),
                "pool_size",
            ),
            (
                &|c: &mut Config| c.store.postgres.statement_timeout_seconds = 0,
                "statement_timeout_seconds",
            ),
            (&|c: &mut Config| c.store.postgres.recheck_millis = 50, "recheck_millis"),
            (
                &|c: &mut Config| c.store.postgres.startup_wait_seconds = 3601,
                "startup_wait_seconds",
            ),
            (
                &|c: &mut Config| c.store.postgres.ca_file = Some("/nonexistent/ca.pem".into()),
                "ca_file",
            ),
        ] {
            let error = check(&|config: &mut Config| {
                url(config);
                adjust(config);
            })
            .unwrap_err();
            assert!(error.contains(&format!("store.postgres.{key}")), "{error}");
        }
        let lease = check(&|config: &mut Config| {
            url(config);
            config.mail.lease_seconds = 1;
        });
        assert!(lease.unwrap_err().contains("mail.lease_seconds"));
        let outbox = check(&|config: &mut Config| {
            url(config);
            config.mail.outbox_limit = 100_000_001;
        });
        assert!(outbox.unwrap_err().contains("mail.outbox_limit"));
        for bad in ["", "english", "en_US"] {
            let locale = check(&|config: &mut Config| {
                url(config);
                config.mail.default_locale = bad.into();
            });
            assert!(locale.unwrap_err().contains("mail.default_locale"), "{bad:?}");
        }
    }

    /// Config files from before `[store.sled]` keep working: their keys move there.
    #[test]
    fn store_keys_from_before_the_sled_section_still_apply() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("latchkey.toml");
        std::fs::write(
            &file,
            "profile = \"development\"\n[store]\ndurability = \"flush\"\ncache_capacity_mib = 16\ncommit_linger_micros = 0\n",
        )
        .unwrap();
        let validated = load(Some(&file), &Overrides::default())
            .unwrap()
            .validate(dir.path())
            .unwrap();
        let store = &validated.config.store;
        assert_eq!(store.backend, StoreBackend::Sled);
        assert_eq!(store.sled.durability, Durability::Flush);
        assert_eq!(store.sled.cache_capacity_mib, 16);
        assert_eq!(store.sled.commit_linger_micros, 0);
        assert_eq!(store.durability, None, "moved, not kept twice");
        std::fs::write(
            &file,
            "profile = \"development\"\n[store]\ncommit_linger_micros = 10001\n",
        )
        .unwrap();
        let error = load(Some(&file), &Overrides::default())
            .unwrap()
            .validate(dir.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("store.sled.commit_linger_micros"), "{error}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("latchkey.toml");
        std::fs::write(&file, "[store.sled]\ndurability = \"sometimes\"\n").unwrap();
        let error = load(Some(&file), &Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("store.sled.durability"), "{error}");
        std::fs::write(&file, "[store]\nbackend = \"cassandra\"\n").unwrap();
        let error = load(Some(&file), &Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("store.backend"), "{error}");
        std::fs::write(&file, "[store]\ncache_capacity = 5\n").unwrap();
        let error = load(Some(&file), &Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("cache_capacity"), "{error}");
        std::fs::write(
            &file,
            "profile = \"development\"\n[store.sled]\ncommit_linger_micros = 10001\n",
        )
        .unwrap();
        let config = load(Some(&file), &Overrides::default()).unwrap();
        let error = config.validate(dir.path()).unwrap_err().to_string();
        assert!(error.contains("store.sled.commit_linger_micros"), "{error}");
        std::fs::write(&file, "[links]\nredirect_allow_list = [\"http://example.com/\"]\n").unwrap();
        let config = load(Some(&file), &Overrides::default()).unwrap();
        let error = config.validate(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("auth.api_keys") || error.contains("redirect_allow_list"),
            "{error}"
        );
    }

    #[test]
    fn kubernetes_service_variables_are_told_from_config_keys() {
        for injected in [
            "PORT",
            "PORT_50051_TCP",
            "PORT_50051_TCP_ADDR",
            "SERVICE_HOST",
            "SERVICE_PORT",
            "SERVICE_PORT_GRPC",
            "HEADLESS_PORT",
            "HEADLESS_SERVICE_HOST",
            "HEADLESS_PORT_9464_TCP_PROTO",
            "headless_service_port_http_metrics",
        ] {
            assert!(is_kubernetes_service_variable(injected), "{injected}");
        }
        for ours in [
            "MAIL__SMTP__PORT",
            "LISTEN",
            "METRICS_LISTEN",
            "SHUTDOWN_DELAY_SECONDS",
            "SERVER_KEY",
            "PROFILE",
            "PORTS",
            "SERVICE",
        ] {
            assert!(!is_kubernetes_service_variable(ours), "{ours}");
            assert!(!is_test_harness_variable(ours), "{ours}");
        }
        assert!(is_test_harness_variable("TEST_STORE"));
        assert!(is_test_harness_variable("test_postgres_url"));
        assert!(!is_test_harness_variable("STORE__BACKEND"));
    }

    #[test]
    fn oauth_clients_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let check = |change: &dyn Fn(&mut OAuthClientConfig)| {
            let mut config = Config::defaults(Profile::Development);
            config.data_dir = dir.path().join("data");
            change(&mut config.oauth.clients[0]);
            config.validate(dir.path()).err().map(|e| e.to_string())
        };
        assert_eq!(check(&|_| {}), None);
        type Change<'a> = &'a dyn Fn(&mut OAuthClientConfig);
        let cases: [(Change, &str); 6] = [
            (&|c| c.client_id = "has space".into(), "oauth.clients[0].client_id"),
            (&|c| c.redirect_uris.clear(), "oauth.clients[0].redirect_uris"),
            (
                &|c| c.redirect_uris = vec!["http://localhost:*/cb".into()],
                "redirect_uris",
            ),
            (
                &|c| c.redirect_uris = vec!["http://partner.example/cb".into()],
                "redirect_uris",
            ),
            (
                &|c| c.redirect_uris = vec!["https://partner.example".into()],
                "normal form",
            ),
            (&|c| c.scopes = vec!["two words".into()], "oauth.clients[0].scopes"),
        ];
        for (change, expected) in cases {
            let error = check(change).expect(expected);
            assert!(error.contains(expected), "{error}");
        }
        assert_eq!(
            check(&|c| c.redirect_uris = vec!["https://partner.example/cb?app=1".into()]),
            None,
            "a registered URI may have a query"
        );
    }

    #[test]
    fn sign_in_pages_and_client_secrets_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let check = |change: &dyn Fn(&mut Config)| {
            let mut config = Config::defaults(Profile::Development);
            config.data_dir = dir.path().join("data");
            change(&mut config);
            config
                .validate(dir.path())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        type Change<'a> = &'a dyn Fn(&mut Config);
        let cases: [(Change, &str); 6] = [
            (
                &|c| c.sign_in.public_url = Some("ftp://login.example.com".into()),
                "sign_in.public_url",
            ),
            (
                &|c| c.sign_in.public_url = Some("http://login.example.com".into()),
                "sign_in.public_url",
            ),
            (&|c| c.sign_in.accent_color = "blue".into(), "sign_in.accent_color"),
            (
                &|c| c.sign_in.logo_url = Some("http://cdn.example.com/logo.png".into()),
                "sign_in.logo_url",
            ),
            (
                &|c| c.oauth.clients[0].client_secret_sha256 = Some("not hex".into()),
                "oauth.clients[0].client_secret_sha256",
            ),
            (
                &|c| c.oauth.clients[0].post_logout_redirect_uris = vec!["not a url".into()],
                "oauth.clients[0].post_logout_redirect_uris",
            ),
        ];
        for (change, key) in cases {
            let error = check(change);
            assert!(error.contains(key), "{key}: {error:?}");
        }
        let good = |c: &mut Config| {
            c.sign_in.public_url = Some("https://login.example.com/".into());
            c.sign_in.logo_url = Some("/logo.svg".into());
            c.oauth.clients[0].client_secret_sha256 = Some(hash_api_key("s"));
        };
        assert_eq!(check(&good), "");
        let mut config = Config::defaults(Profile::Development);
        good(&mut config);
        assert_eq!(config.public_url(), "https://login.example.com");
        // The links of sign-in emails may point at the pages.
        let validated = config.validate(dir.path()).unwrap();
        let confirm = "https://login.example.com/oauth/sign-in/confirm";
        assert!(validated.redirects.check("url", confirm, "t").is_ok());
        // An in-cluster http issuer (the Helm chart's default) still starts; the pages then have
        // no address links may point at.
        let in_cluster = |c: &mut Config| c.issuer = "http://latchkey.identity.svc:9464".into();
        assert_eq!(check(&in_cluster), "");
    }

    #[test]
    fn audiences_grace_and_limits_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let check = |change: &dyn Fn(&mut Config)| {
            let mut config = Config::defaults(Profile::Development);
            config.data_dir = dir.path().join("data");
            change(&mut config);
            config
                .validate(dir.path())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(check(&|_| {}), "");
        type Change<'a> = &'a dyn Fn(&mut Config);
        let cases: [(Change, &str); 6] = [
            (
                &|c| c.oauth.clients[0].client_id = "latchkey".into(),
                "oauth.clients[0].client_id",
            ),
            (
                &|c| c.oauth.access_token_audience = Some("latchkey".into()),
                "oauth.access_token_audience",
            ),
            (&|c| c.issuer = "latchkey".into(), "oauth.access_token_audience"),
            (
                &|c| {
                    c.shutdown_delay_seconds = 10;
                    c.shutdown_grace_seconds = 12;
                },
                "shutdown_grace_seconds",
            ),
            (&|c| c.reload_check_seconds = 3601, "reload_check_seconds"),
            (
                &|c| c.limits.max_concurrent_streams = 0,
                "limits.max_concurrent_streams",
            ),
        ];
        for (change, key) in cases {
            let error = check(change);
            assert!(error.contains(key), "{key}: {error:?}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("latchkey.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\ndata_dir = \"/tmp/a\"\n").unwrap();
        let overrides = Overrides {
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Default::default()
        };
        let config = load(Some(&file), &overrides).unwrap();
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/a"));
        assert_eq!(config.profile, Profile::Production);
    }
}
