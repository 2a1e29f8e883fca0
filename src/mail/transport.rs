//! Where emails go: SMTP over pooled connections (`smtp`: STARTTLS, implicit TLS or plain;
//! optional auth), or readable `<email_id>.eml` files in a folder for development. Failures are sorted into
//! transient (retry) and permanent (give up), never carrying a secret.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use lettre::Message;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, TlsParameters};

use super::smtp::{Security, SmtpPool};
use super::worker::EMAIL_ID_HEADER;
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
    /// Whether messages are for a person to read as they are (files): bodies are then written as
    /// plain 8-bit text, so a link can be copied out of the file, rather than quoted-printable.
    fn readable(&self) -> bool {
        false
    }
}

struct Smtp {
    pool: SmtpPool,
    target: String,
}

#[async_trait]
impl Transport for Smtp {
    async fn send(&self, message: Message) -> Result<(), SendFailure> {
        self.pool.send(&message).await
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

/// `<email_id>.eml` files in a folder: one per email (a retry overwrites it), written whole under
/// another name first and then renamed, so a reader never sees half a message.
struct Files {
    dir: PathBuf,
}

#[async_trait]
impl Transport for Files {
    async fn send(&self, message: Message) -> Result<(), SendFailure> {
        let email_id = message
            .headers()
            .get_raw(EMAIL_ID_HEADER.as_ref())
            .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        let path = self.dir.join(format!("{email_id}.eml"));
        let partial = self.dir.join(format!(".{email_id}.eml.partial"));
        let written = async {
            tokio::fs::write(&partial, message.formatted()).await?;
            tokio::fs::rename(&partial, &path).await
        };
        written.await.map_err(|error| SendFailure {
            permanent: false,
            detail: format!("cannot write {}: {error}", path.display()),
        })?;
        tracing::info!(%email_id, path = %path.display(), "email written");
        Ok(())
    }

    fn describe(&self) -> String {
        format!("files in {}", self.dir.display())
    }

    fn readable(&self) -> bool {
        true
    }
}

/// Builds the configured transport. `file_dir` is the resolved folder for the file transport.
pub fn build(config: &MailConfig, file_dir: PathBuf, password: Option<&Secret>) -> Result<Box<dyn Transport>, String> {
    match config.transport {
        MailTransport::File => {
            std::fs::create_dir_all(&file_dir)
                .map_err(|error| format!("cannot create {}: {error}", file_dir.display()))?;
            Ok(Box::new(Files { dir: file_dir }))
        }
        MailTransport::Smtp => {
            let smtp = &config.smtp;
            let host = smtp.host.trim().to_string();
            let port = smtp.port.unwrap_or(match smtp.tls {
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
                SmtpTls::None => 25,
            });
            let ca_pem = smtp
                .ca_file
                .as_ref()
                .map(|ca_file| std::fs::read(ca_file).map_err(|error| format!("mail.smtp.ca_file: {error}")))
                .transpose()?;
            let security = match smtp.tls {
                SmtpTls::Starttls => {
                    let mut builder = TlsParameters::builder(host.clone());
                    if let Some(pem) = &ca_pem {
                        let certificate =
                            Certificate::from_pem(pem).map_err(|error| format!("mail.smtp.ca_file: {error}"))?;
                        builder = builder.add_root_certificate(certificate);
                    }
                    Security::Starttls(
                        builder
                            .build_rustls()
                            .map_err(|error| format!("mail.smtp TLS settings: {error}"))?,
                    )
                }
                SmtpTls::Tls => super::smtp::implicit_tls(&host, ca_pem.as_deref())?,
                SmtpTls::None => Security::Plain,
            };
            let credentials = match (&smtp.username, password) {
                (Some(username), Some(password)) => {
                    Some(Credentials::new(username.clone(), password.expose().to_string()))
                }
                _ => None,
            };
            let pool = SmtpPool::new(
                host.clone(),
                port,
                security,
                Duration::from_secs(smtp.timeout_seconds),
                credentials,
                smtp.pool_size as usize,
            );
            let target = format!("smtp://{host}:{port} ({:?})", smtp.tls).to_lowercase();
            Ok(Box::new(Smtp { pool, target }))
        }
    }
}
