//! Where emails go: SMTP through lettre's pooled async transport (STARTTLS, implicit TLS or
//! plain; optional auth), or `.eml` files in a folder for development. Failures are sorted into
//! transient (retry) and permanent (give up), never carrying a secret.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{MailConfig, MailTransport, Secret, SmtpTls};

#[derive(Debug)]
pub struct SendFailure {
    /// A 5xx answer: retrying will not help.
    pub permanent: bool,
    pub detail: String,
}

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn send(&self, message: Message) -> Result<(), SendFailure>;
    /// For logs: where mail goes.
    fn describe(&self) -> String;
}

struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    target: String,
}

#[async_trait]
impl Transport for Smtp {
    async fn send(&self, message: Message) -> Result<(), SendFailure> {
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|error| SendFailure {
                permanent: error.is_permanent(),
                // lettre's errors name the server's answer or the I/O failure; message bodies and
                // credentials are not part of them.
                detail: error.to_string(),
            })
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

struct Files {
    transport: AsyncFileTransport<Tokio1Executor>,
    dir: PathBuf,
}

#[async_trait]
impl Transport for Files {
    async fn send(&self, message: Message) -> Result<(), SendFailure> {
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|error| SendFailure {
                permanent: false,
                detail: error.to_string(),
            })
    }

    fn describe(&self) -> String {
        format!("files in {}", self.dir.display())
    }
}

/// Builds the configured transport. `file_dir` is the resolved folder for the file transport.
pub fn build(config: &MailConfig, file_dir: PathBuf, password: Option<&Secret>) -> Result<Box<dyn Transport>, String> {
    match config.transport {
        MailTransport::File => {
            std::fs::create_dir_all(&file_dir)
                .map_err(|error| format!("cannot create {}: {error}", file_dir.display()))?;
            Ok(Box::new(Files {
                transport: AsyncFileTransport::new(&file_dir),
                dir: file_dir,
            }))
        }
        MailTransport::Smtp => {
            let smtp = &config.smtp;
            let host = smtp.host.trim().to_string();
            let port = smtp.port.unwrap_or(match smtp.tls {
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
                SmtpTls::None => 25,
            });
            let tls_parameters = || -> Result<TlsParameters, String> {
                let mut builder = TlsParameters::builder(host.clone());
                if let Some(ca_file) = &smtp.ca_file {
                    let pem = std::fs::read(ca_file).map_err(|error| format!("mail.smtp.ca_file: {error}"))?;
                    let certificate =
                        Certificate::from_pem(&pem).map_err(|error| format!("mail.smtp.ca_file: {error}"))?;
                    builder = builder.add_root_certificate(certificate);
                }
                builder
                    .build_rustls()
                    .map_err(|error| format!("mail.smtp TLS settings: {error}"))
            };
            let tls = match smtp.tls {
                SmtpTls::Starttls => Tls::Required(tls_parameters()?),
                SmtpTls::Tls => Tls::Wrapper(tls_parameters()?),
                SmtpTls::None => Tls::None,
            };
            let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
                .port(port)
                .tls(tls)
                .timeout(Some(Duration::from_secs(smtp.timeout_seconds)))
                .pool_config(PoolConfig::new().max_size(smtp.pool_size));
            if let (Some(username), Some(password)) = (&smtp.username, password) {
                builder = builder.credentials(Credentials::new(username.clone(), password.expose().to_string()));
            }
            let target = format!("smtp://{host}:{port} ({:?})", smtp.tls).to_lowercase();
            Ok(Box::new(Smtp {
                transport: builder.build(),
                target,
            }))
        }
    }
}
