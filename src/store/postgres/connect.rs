//! Connections to PostgreSQL: the URL turned into a client config (statement timeout, application
//! name), TLS when a CA file is given (the host name verified, as libpq's `sslmode=verify-full`),
//! the pool, and the one LISTEN connection of the wake-ups. The URL's password is never shown:
//! errors name the database as `user@host:port/dbname`.

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

use super::migrations::MigrateError;
use crate::config::PostgresConfig;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("store.postgres: {0}")]
    Config(String),
    #[error("cannot reach PostgreSQL at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error(transparent)]
    Settings(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// How to reach the database: the client config and its TLS.
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Connector {
    pub fn new(settings: &PostgresConfig) -> Result<Self, OpenError> {
        let mut config = settings.client_config()?;
        config.connect_timeout(Duration::from_secs(settings.connect_timeout_seconds));
        config.application_name("latchkey");
        // A statement that runs longer fails on the server too, so a call never hangs on it.
        let timeout = format!("-c statement_timeout={}", settings.statement_timeout_seconds * 1000);
        let options = match config.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {timeout}"),
            _ => timeout,
        };
        config.options(options);
        let tls = settings.ca_file.as_deref().map(tls_config).transpose()?;
        Ok(Self { config, tls })
    }

    /// `user@host:port/dbname` (every host of a multi-host URL): what errors and logs may show.
    pub fn target(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .zip(self.config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        format!(
            "{}@{}/{}",
            self.config.get_user().unwrap_or_default(),
            hosts.join(","),
            self.config.get_dbname().unwrap_or_default()
        )
    }

    /// How long opening one connection may take: `connect_timeout_seconds` for each host of the
    /// URL, since hosts are tried in turn (a standby is reached, authenticated and turned down
    /// before the primary is tried). The client's own timeout bounds each TCP connect only.
    pub fn connect_budget(&self) -> Duration {
        let per_host = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(5));
        let hosts = u32::try_from(self.config.get_hosts().len()).unwrap_or(u32::MAX);
        per_host.saturating_mul(hosts.max(1))
    }

    pub fn unreachable(&self, error: &(dyn std::error::Error + 'static)) -> OpenError {
        OpenError::Unreachable {
            target: self.target(),
            reason: with_causes(error),
        }
    }

    pub fn pool(&self, size: usize) -> Result<Pool, OpenError> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &self.tls {
            Some(tls) => Manager::from_config(self.config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(self.config.clone(), NoTls, manager_config),
        };
        let timeout = self.config.get_connect_timeout().copied();
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(Some(self.connect_budget()))
            .build()
            .map_err(|error| OpenError::Config(error.to_string()))
    }

    /// A connection of its own (not pooled), with its messages (notifications) forwarded to
    /// `messages` if given (the LISTEN connection; the health probe reads none, so a pool busy with
    /// calls is not taken for a database that does not answer). The connection ends when the
    /// returned client is dropped or the server goes.
    pub async fn dedicated(
        &self,
        messages: Option<tokio::sync::mpsc::UnboundedSender<tokio_postgres::AsyncMessage>>,
    ) -> Result<Client, tokio_postgres::Error> {
        match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                tokio::spawn(forward(connection, messages));
                Ok(client)
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(forward(connection, messages));
                Ok(client)
            }
        }
    }
}

/// An error with its causes, which carry the useful part: a TLS handshake fails because of the
/// certificate, and a statement because of what the database said, which only the inner errors
/// say (the outer ones read "error performing TLS handshake", "db error"). None holds the password.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut said = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !said.contains(&more) {
            said = format!("{said}: {more}");
        }
        cause = inner.source();
    }
    said
}

async fn forward<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    messages: Option<tokio::sync::mpsc::UnboundedSender<tokio_postgres::AsyncMessage>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Polling for messages is what drives the connection, whether or not anyone wants them.
    while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
        if let Some(messages) = &messages
            && messages.send(message).is_err()
        {
            return;
        }
    }
}

fn tls_config(ca_file: &std::path::Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, OpenError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let problem = |detail: String| OpenError::Config(format!("ca_file {}: {detail}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_file).map_err(|error| problem(error.to_string()))? {
        let certificate = certificate.map_err(|error| problem(error.to_string()))?;
        roots.add(certificate).map_err(|error| problem(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(problem("holds no certificate".into()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| problem(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The pool's connections, in use and idle, and the calls waiting for one.
pub fn register_metrics(registry: &mut Registry, pool: Pool) {
    registry.register_collector(Box::new(PoolFigures(pool)));
}

struct PoolFigures(Pool);

impl fmt::Debug for PoolFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PoolFigures")
    }
}

impl Collector for PoolFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let status = self.0.status();
        let figures = [
            (
                "latchkey_postgres_connections",
                "Connections to PostgreSQL this replica holds",
                status.size,
            ),
            (
                "latchkey_postgres_connections_idle",
                "Of those, the ones not in use",
                status.available,
            ),
            (
                "latchkey_postgres_waiting",
                "Calls waiting for a free connection",
                status.waiting,
            ),
        ];
        for (name, help, value) in figures {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode;

    fn settings(url: &str, ca_file: Option<&std::path::Path>) -> PostgresConfig {
        let mut settings = crate::config::Config::defaults(crate::config::Profile::Production)
            .store
            .postgres;
        settings.url = Some(url.to_owned().into());
        settings.ca_file = ca_file.map(Into::into);
        settings
    }

    fn refusal(url: &str, ca_file: Option<&std::path::Path>) -> String {
        match Connector::new(&settings(url, ca_file)) {
            Ok(_) => panic!("{url} was accepted"),
            Err(error) => error.to_string(),
        }
    }

    /// Any well-formed CA certificate will do for building the client config.
    fn ca_file() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart/fixtures/ca.crt")
    }

    #[test]
    fn a_multi_host_url_gives_each_host_its_connect_timeout() {
        let mut one = settings("postgres://u:pw@db1/app", None);
        one.connect_timeout_seconds = 2;
        assert_eq!(Connector::new(&one).unwrap().connect_budget(), Duration::from_secs(2));
        let mut three = settings("postgres://u:pw@db1:5432,db2:5432,db3:5432/app", None);
        three.connect_timeout_seconds = 2;
        assert_eq!(Connector::new(&three).unwrap().connect_budget(), Duration::from_secs(6));
    }

    #[test]
    fn a_ca_file_makes_tls_required_and_libpq_verify_modes_are_understood() {
        let ca = ca_file();
        for url in [
            "postgres://u:pw@db.internal/app",
            "postgres://u:pw@db.internal/app?sslmode=prefer",
            "postgres://u:pw@db.internal/app?sslmode=verify-full",
            "postgres://u:pw@db.internal/app?sslmode=verify-ca",
        ] {
            let connector = Connector::new(&settings(url, Some(&ca))).unwrap();
            assert_eq!(connector.config.get_ssl_mode(), SslMode::Require, "{url}");
        }
        let plain = Connector::new(&settings("postgres://u:pw@db.internal/app", None)).unwrap();
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Prefer);
    }

    #[test]
    fn contradictory_tls_settings_are_refused_without_showing_the_url() {
        let ca = ca_file();
        let message = refusal("postgres://u:hunter2@db.internal/app?sslmode=disable", Some(&ca));
        assert!(
            message.contains("ca_file`: is set but the url says sslmode=disable"),
            "{message}"
        );
        for (url, asked) in [
            (
                "postgres://u:hunter2@db.internal/app?sslmode=require",
                "sslmode=require",
            ),
            (
                "postgres://u:hunter2@db.internal/app?sslmode=verify-full",
                "sslmode=verify-full",
            ),
        ] {
            let message = refusal(url, None);
            assert!(
                message.contains(asked) && message.contains("ca_file`: is needed"),
                "{message}"
            );
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}
