//! The command line: `latchkey serve`, `latchkey hash-key`, `latchkey generate-server-key`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{self, Overrides, Profile};
use crate::crypto::ServerKey;
use crate::domain::clock::SystemClock;

#[derive(Parser)]
#[command(name = "latchkey", version, about = "Passwordless identity over gRPC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the gRPC API. With no config file: the development default on 127.0.0.1:50051.
    Serve {
        /// A TOML config file (switches to the production profile).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// gRPC address, e.g. 127.0.0.1:50051.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Where the store lives.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// HTTP address for JWKS, OpenID discovery and metrics, e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
    },
    /// Prints the SHA-256 digest of an API key for `auth.api_keys[].sha256` (reads stdin when no
    /// key is given, which keeps the key out of shell history).
    HashKey { key: Option<String> },
    /// Prints a new random server key.
    GenerateServerKey,
}

pub fn run() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            data_dir,
            metrics_listen,
        } => serve(
            config,
            Overrides {
                listen,
                metrics_listen,
                data_dir,
            },
        ),
        Command::HashKey { key } => {
            let key = match key {
                Some(key) => key,
                None => {
                    let mut key = String::new();
                    if std::io::stdin().read_to_string(&mut key).is_err() {
                        eprintln!("latchkey: cannot read the key from stdin");
                        return ExitCode::from(2);
                    }
                    key
                }
            };
            if key.trim().is_empty() {
                eprintln!("latchkey: the key is empty");
                return ExitCode::from(2);
            }
            println!("{}", config::hash_api_key(&key));
            ExitCode::SUCCESS
        }
        Command::GenerateServerKey => {
            println!("{}", ServerKey::generate_encoded());
            ExitCode::SUCCESS
        }
    }
}

fn serve(file: Option<PathBuf>, overrides: Overrides) -> ExitCode {
    // Everything the server writes (the store, development mail holding working links, a generated
    // key) is for its own user only: files 0600 and directories 0700, whatever umask it inherits.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let working_dir = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("latchkey: cannot read the working directory: {error}");
            return ExitCode::from(2);
        }
    };
    let mut validated = match config::load(file.as_deref(), &overrides).and_then(|config| config.validate(&working_dir))
    {
        Ok(validated) => validated,
        Err(error) => {
            eprintln!("latchkey: {error}");
            return ExitCode::from(2);
        }
    };
    validated.source = Some(crate::reload::Source { file, overrides });
    if let Err(error) = crate::telemetry::init(validated.config.log.format, &validated.config.log.level) {
        eprintln!("latchkey: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("latchkey: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve_until_signal(validated));
    // Dropping the runtime would wait for blocking work without limit (a store flush on a disk
    // that hangs): shutdown has already had its grace period.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "latchkey stopped");
            eprintln!("latchkey: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_until_signal(validated: config::Validated) -> Result<(), String> {
    let config = validated.config.clone();
    if let Some(path) = &validated.generated_key_file {
        tracing::warn!(path = %path.display(), "generated a new server key; keep it safe and out of the data directory");
    }
    if !config.auth.required {
        tracing::warn!(
            listen = %config.listen,
            "!!! AUTH IS OFF: any local process can call latchkey without an API key. This is the development default; configure auth.api_keys for anything else. !!!"
        );
    }
    if config.profile == Profile::Development {
        tracing::warn!("development profile: localhost redirects and a generated server key");
    }
    // Handlers go in before start-up, so a SIGTERM that arrives while starting (or right after the
    // "serving" line) drains cleanly instead of killing the process.
    let shutdown_signal = shutdown_signal().map_err(|error| format!("cannot handle signals: {error}"))?;
    // Installed before start-up too: SIGHUP's default action would end the process.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|error| format!("cannot handle signals: {error}"))?;
    let running = crate::app::start(validated, Arc::new(SystemClock))
        .await
        .map_err(|error| error.to_string())?;
    tracing::info!(
        listen = %running.local_addr(),
        http = %running.http_addr().map_or("off".to_string(), |a| a.to_string()),
        data_dir = %config.data_dir.display(),
        store = ?config.store.backend,
        durability = ?config.store.sled.durability,
        tls = if config.tls.cert_file.is_some() { "on" } else { "off" },
        mutual_tls = config.tls.client_ca_file.is_some(),
        "latchkey is serving"
    );
    let reloads = reload_on_sighup(hangup, &running);
    shutdown_signal.await;
    reloads.abort();
    tracing::info!("shutting down: draining calls in flight");
    running.shutdown().await?;
    tracing::info!("latchkey stopped cleanly");
    Ok(())
}

/// SIGHUP reloads API keys, TLS material and the SMTP password (see `crate::reload`).
fn reload_on_sighup(
    mut hangup: tokio::signal::unix::Signal,
    running: &crate::app::Running,
) -> tokio::task::JoinHandle<()> {
    let reload = running.reload_requests();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading secrets");
            // A full queue already holds a reload that will read the newest files.
            let _ = reload.try_send(None);
        }
    })
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future ends at the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
