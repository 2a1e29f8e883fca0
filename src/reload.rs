//! Secrets rotated without a restart: on SIGHUP, and when a watched file changes (the config file,
//! the TLS files, the SMTP password file), the config is read and validated again. Its API keys,
//! TLS material and SMTP password then answer new calls, new connections and new sends; calls in
//! flight finish with what they started with. A file that does not validate changes nothing: the
//! current material stays, and the log says why.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ApiKey, Config, Overrides, Secret, TlsMaterial, Validated};
use crate::mail::transport::{self, Transport};

/// A value that is replaced whole and read often: readers take the current `Arc`.
pub struct Shared<T: ?Sized>(RwLock<Arc<T>>);

impl<T: ?Sized> Shared<T> {
    pub fn new(value: Arc<T>) -> Self {
        Self(RwLock::new(value))
    }

    pub fn get(&self) -> Arc<T> {
        self.0.read().expect("shared value lock").clone()
    }

    pub fn set(&self, value: Arc<T>) {
        *self.0.write().expect("shared value lock") = value;
    }
}

/// Where the running config came from, so a reload reads the same file with the same flags.
#[derive(Clone, Debug)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// What a reload may change, and where the running server reads it.
pub struct Targets {
    pub api_keys: Arc<Shared<Vec<ApiKey>>>,
    pub transport: Arc<Shared<dyn Transport>>,
    pub mail_file_dir: PathBuf,
    /// A new generation of the gRPC server starts for each TLS material sent here.
    pub tls_updates: mpsc::Sender<crate::grpc::TlsUpdate>,
}

/// What a reload changed (names, never values), or why it changed nothing.
pub type Outcome = Result<Vec<&'static str>, String>;

/// A reload request; the sender is answered with the outcome when given.
pub type Request = Option<oneshot::Sender<Outcome>>;

/// (modified, length, inode) of a watched file, or None while it cannot be read.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

pub struct Reloader {
    source: Option<Source>,
    working_dir: PathBuf,
    running: Config,
    tls: Option<TlsMaterial>,
    smtp_password: Option<Secret>,
    targets: Targets,
    watched: Vec<(PathBuf, Stamp)>,
}

impl Reloader {
    pub fn new(validated: &Validated, targets: Targets) -> Self {
        let mut reloader = Self {
            source: validated.source.clone(),
            working_dir: validated.working_dir.clone(),
            running: validated.config.clone(),
            tls: validated.tls.clone(),
            smtp_password: validated.smtp_password.clone(),
            targets,
            watched: Vec::new(),
        };
        reloader.watch();
        reloader
    }

    fn watch(&mut self) {
        let config = &self.running;
        let paths = self
            .source
            .as_ref()
            .and_then(|source| source.file.clone())
            .into_iter()
            .chain(config.tls.cert_file.clone())
            .chain(config.tls.key_file.clone())
            .chain(config.tls.client_ca_file.clone())
            .chain(config.mail.smtp.password_file.clone());
        self.watched = paths.map(|path| (path.clone(), stamp(&path))).collect();
    }

    fn files_changed(&mut self) -> bool {
        let mut changed = false;
        for (path, seen) in &mut self.watched {
            let now = stamp(path);
            if now != *seen {
                *seen = now;
                changed = true;
            }
        }
        changed
    }

    /// Reloads on each request (answering it with the outcome, if it asks), and every
    /// `check_every` when a watched file changed.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        check_every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            let (why, reply) = tokio::select! {
                () = shutdown.cancelled() => return,
                request = requests.recv() => match request {
                    Some(reply) => ("SIGHUP", reply),
                    None => return,
                },
                () = checked_after(check_every) => {
                    if !self.files_changed() {
                        continue;
                    }
                    ("a watched file changed", None)
                }
            };
            let outcome = self.reload(why).await;
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    }

    /// What was reloaded, or why nothing was.
    async fn reload(&mut self, why: &str) -> Outcome {
        let validated = match &self.source {
            Some(source) => config::load(source.file.as_deref(), &source.overrides),
            None => Ok(self.running.clone()),
        }
        .and_then(|config| config.validate(&self.working_dir));
        let validated = match validated {
            Ok(validated) => validated,
            Err(error) => {
                tracing::warn!(why, %error, "reload refused; the current API keys, TLS material and SMTP password stay");
                return Err(error.to_string());
            }
        };
        let mut changed = vec!["API keys"];
        if validated.tls != self.tls {
            // First, so that material the TLS library refuses fails the whole reload.
            let (reply, applied) = oneshot::channel();
            let stopping = || "the server is stopping".to_string();
            let applied = match self.targets.tls_updates.send((validated.tls.clone(), reply)).await {
                Ok(()) => applied.await.unwrap_or_else(|_| Err(stopping())),
                Err(_) => Err(stopping()),
            };
            if let Err(error) = applied {
                tracing::warn!(why, %error, "reload refused; the current API keys, TLS material and SMTP password stay");
                return Err(error);
            }
            self.tls = validated.tls.clone();
            changed.push("TLS material");
        }
        self.targets.api_keys.set(Arc::new(validated.api_keys.clone()));
        if validated.smtp_password != self.smtp_password {
            let config = &validated.config.mail;
            match transport::build(
                config,
                self.targets.mail_file_dir.clone(),
                validated.smtp_password.as_ref(),
            ) {
                Ok(transport) => {
                    self.targets.transport.set(transport.into());
                    self.smtp_password = validated.smtp_password.clone();
                    changed.push("SMTP password");
                }
                Err(error) => tracing::warn!(%error, "the mail transport could not be rebuilt; the current one stays"),
            }
        }
        if restart_needed(&self.running, &validated.config) {
            tracing::warn!(
                "the config changed beyond API keys, TLS files and the SMTP password; those changes take effect at the next restart"
            );
        }
        self.running.auth.api_keys = validated.config.auth.api_keys.clone();
        self.running.mail.smtp.password = validated.config.mail.smtp.password.clone();
        tracing::info!(why, reloaded = ?changed, "secrets reloaded");
        Ok(changed)
    }
}

/// Ends after `interval`; never when it is zero (the file check is off).
async fn checked_after(interval: Duration) {
    if interval.is_zero() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(interval).await;
}

/// Whether `new` differs from `running` in anything a reload does not apply.
fn restart_needed(running: &Config, new: &Config) -> bool {
    let without_secrets = |config: &Config| {
        let mut config = config.clone();
        config.auth.api_keys.clear();
        config.mail.smtp.password = None;
        serde_json::to_value(&config).ok()
    };
    without_secrets(running) != without_secrets(new)
}
