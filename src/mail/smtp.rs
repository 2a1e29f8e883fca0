//! SMTP over connections of our own making, pooled. lettre's own pool opens its sockets with
//! Nagle's algorithm on, and lettre writes a message and its final "." line as two writes: the
//! second then waits for the server's delayed acknowledgement of the first (40 ms on Linux), which
//! held every connection to about 25 messages a second (bench/RESULTS.md, "Mail that keeps up").
//! Here every socket has TCP_NODELAY, and lettre only speaks SMTP over it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::transport::SendFailure;

/// A connection idle longer than this is asked NOOP before it is used again (the server may
/// have closed it); one in steady use is not, which saves a round trip a message.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);
/// A connection idle longer than this is closed rather than used.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// How the conversation is protected.
pub enum Security {
    Plain,
    /// STARTTLS after the greeting, required.
    Starttls(TlsParameters),
    /// TLS from the first byte (SMTPS, usually port 465).
    Implicit {
        connector: tokio_rustls::TlsConnector,
        name: rustls::pki_types::ServerName<'static>,
    },
}

pub struct SmtpPool {
    host: String,
    port: u16,
    security: Security,
    timeout: Duration,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// Connections between messages, newest last.
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    /// At most `pool_size` conversations at once.
    slots: Semaphore,
}

impl SmtpPool {
    pub fn new(
        host: String,
        port: u16,
        security: Security,
        timeout: Duration,
        credentials: Option<Credentials>,
        pool_size: usize,
    ) -> Self {
        Self {
            host,
            port,
            security,
            timeout,
            credentials,
            hello: ClientId::default(),
            idle: Mutex::default(),
            slots: Semaphore::new(pool_size),
        }
    }

    pub async fn send(&self, message: &Message) -> Result<(), SendFailure> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        let mut connection = self.checkout().await?;
        let sent = tokio::time::timeout(self.timeout, connection.send(message.envelope(), &message.formatted())).await;
        match sent {
            Ok(Ok(_)) => {
                self.idle
                    .lock()
                    .expect("idle connections lock")
                    .push((connection, Instant::now()));
                Ok(())
            }
            // lettre has closed the connection on any error; a timed-out one is mid-conversation.
            Ok(Err(error)) => Err(failure(&error)),
            Err(_) => Err(SendFailure {
                permanent: false,
                detail: format!("the SMTP server did not answer within {} s", self.timeout.as_secs()),
            }),
        }
    }

    /// A pooled connection that still answers, or a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, SendFailure> {
        loop {
            let parked = self.idle.lock().expect("idle connections lock").pop();
            let Some((mut connection, since)) = parked else {
                return self.connect().await;
            };
            let idle = since.elapsed();
            if idle > MAX_IDLE {
                tokio::spawn(async move { connection.abort().await });
                continue;
            }
            if idle < CHECK_AFTER_IDLE
                || tokio::time::timeout(self.timeout, connection.test_connected())
                    .await
                    .unwrap_or(false)
            {
                return Ok(connection);
            }
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendFailure> {
        let unavailable = |detail: String| SendFailure {
            permanent: false,
            detail,
        };
        let conversation = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|error| unavailable(format!("cannot connect to the SMTP server: {error}")))?;
            tcp.set_nodelay(true)
                .map_err(|error| unavailable(format!("cannot set TCP_NODELAY: {error}")))?;
            let stream: Box<dyn AsyncTokioStream> = match &self.security {
                Security::Implicit { connector, name } => {
                    Box::new(TlsStream(connector.connect(name.clone(), tcp).await.map_err(
                        |error| unavailable(format!("TLS with the SMTP server failed: {error}")),
                    )?))
                }
                Security::Plain | Security::Starttls(_) => Box::new(tcp),
            };
            let mut connection = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
                .await
                .map_err(|error| failure(&error))?;
            if let Security::Starttls(parameters) = &self.security {
                connection
                    .starttls(parameters.clone(), &self.hello)
                    .await
                    .map_err(|error| failure(&error))?;
            }
            if let Some(credentials) = &self.credentials {
                connection
                    .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                    .await
                    .map_err(|error| failure(&error))?;
            }
            Ok(connection)
        };
        tokio::time::timeout(self.timeout, conversation)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "the SMTP server did not answer within {} s",
                    self.timeout.as_secs()
                )))
            })
    }
}

/// lettre's errors name the server's answer or the I/O failure; message bodies and credentials
/// are not part of them.
fn failure(error: &lettre::transport::smtp::Error) -> SendFailure {
    SendFailure {
        permanent: error.is_permanent(),
        detail: error.to_string(),
    }
}

/// A TLS stream as lettre takes one.
#[derive(Debug)]
struct TlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for TlsStream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The TLS client settings of implicit TLS: the web's roots, and the operator's CA if given.
pub fn implicit_tls(host: &str, ca_pem: Option<&[u8]>) -> Result<Security, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|error| format!("mail.smtp.ca_file: {error}"))?;
            roots
                .add(certificate)
                .map_err(|error| format!("mail.smtp.ca_file: {error}"))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("mail.smtp TLS settings: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|error| format!("mail.smtp.host is not a name TLS can verify: {error}"))?;
    Ok(Security::Implicit {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
    })
}
