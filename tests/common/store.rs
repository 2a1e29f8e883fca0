//! The store the suites run on. `LATCHKEY_TEST_STORE` picks the backend (`sled`, the default, or
//! `postgres`), so every end-to-end suite runs unchanged on either; an unknown name fails, never
//! falls back. On PostgreSQL (`LATCHKEY_TEST_POSTGRES_URL`, set by scripts/test with the server it
//! starts) each test directory gets a schema of its own, named after the directory, so a restart
//! on the same directory finds the same data.

use std::path::Path;
use std::sync::Arc;

use latchkey::config::{Config, Profile, StoreBackend};
use latchkey::crypto::Digest32;
use latchkey::domain::store::Store;
use latchkey::domain::wakeups::Wakeups;
use tempfile::TempDir;

/// The backend `LATCHKEY_TEST_STORE` names.
pub fn backend() -> StoreBackend {
    match std::env::var("LATCHKEY_TEST_STORE").as_deref() {
        Err(_) | Ok("" | "sled") => StoreBackend::Sled,
        Ok("postgres") => StoreBackend::Postgres,
        Ok(other) => panic!("LATCHKEY_TEST_STORE={other}: no such store backend (sled, postgres)"),
    }
}

/// The backend's name, as `LATCHKEY_STORE__BACKEND` takes it (for the binary).
pub fn backend_name() -> &'static str {
    match backend() {
        StoreBackend::Sled => "sled",
        StoreBackend::Postgres => "postgres",
    }
}

/// The database URL for the test directory `dir` (its own schema, created if new).
pub fn postgres_url(dir: &Path) -> String {
    let base = std::env::var("LATCHKEY_TEST_POSTGRES_URL")
        .expect("LATCHKEY_TEST_STORE=postgres needs LATCHKEY_TEST_POSTGRES_URL (scripts/test sets both)");
    let digest = Digest32::of(&dir.display().to_string());
    let schema = format!("t_{}", hex::encode(&digest.as_bytes()[..8]));
    let created = std::process::Command::new("psql")
        .env("PGOPTIONS", "--client-min-messages=warning")
        .args(["-q", "-v", "ON_ERROR_STOP=1", &base, "-c"])
        .arg(format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .status()
        .expect("psql runs");
    assert!(created.success(), "cannot create the test schema {schema}");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

/// Points `config` at the test backend; `dir` is the test's directory.
pub fn configure(config: &mut Config, dir: &Path) {
    config.store.backend = backend();
    if backend() == StoreBackend::Postgres {
        config.store.postgres.url = Some(postgres_url(dir).into());
        config.store.postgres.connect_timeout_seconds = PATIENT_SECONDS;
        config.store.postgres.statement_timeout_seconds = PATIENT_SECONDS;
    }
}

/// How long a test server waits for a pooled connection or a statement. The suites' races run 64
/// calls at once on a pool of 16, in a debug build (whose SCRAM handshakes alone take a while), on
/// a machine CI may share: a wait past the production bound is no failure there. The outage
/// suites set the bounds they test.
const PATIENT_SECONDS: u64 = 60;

/// The environment that points the binary at the test backend, for the test directory `dir`.
pub fn binary_env(dir: &Path) -> Vec<(&'static str, String)> {
    let mut env = vec![("LATCHKEY_STORE__BACKEND", backend_name().to_string())];
    if backend() == StoreBackend::Postgres {
        env.push(("LATCHKEY_STORE__POSTGRES__URL", postgres_url(dir)));
        env.extend(patient_env());
    }
    env
}

/// The environment of a server on PostgreSQL that waits `PATIENT_SECONDS` (see there).
pub fn patient_env() -> [(&'static str, String); 2] {
    [
        (
            "LATCHKEY_STORE__POSTGRES__CONNECT_TIMEOUT_SECONDS",
            PATIENT_SECONDS.to_string(),
        ),
        (
            "LATCHKEY_STORE__POSTGRES__STATEMENT_TIMEOUT_SECONDS",
            PATIENT_SECONDS.to_string(),
        ),
    ]
}

/// Everything the store holds for the test directory `dir`, as bytes: sled's files, or a dump of
/// the test's PostgreSQL schema (to check that no secret is stored).
pub fn stored_bytes(dir: &Path) -> Vec<u8> {
    match backend() {
        StoreBackend::Sled => all_bytes(&dir.join("data")),
        StoreBackend::Postgres => {
            let url = postgres_url(dir);
            let (base, options) = url.split_once("?options=").expect("the test URL names its schema");
            let schema = options.rsplit("%3D").next().unwrap();
            // The server's own version of pg_dump: an older one refuses a newer server.
            let pg_dump = std::env::var_os("POSTGRES_BIN_DIR")
                .map(|dir| Path::new(&dir).join("pg_dump"))
                .filter(|path| path.exists())
                .unwrap_or_else(|| "pg_dump".into());
            let dump = std::process::Command::new(pg_dump)
                .args(["--data-only", "--schema", schema, base])
                .output()
                .expect("pg_dump runs");
            assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
            dump.stdout
        }
    }
}

/// Every file under `dir`, as bytes.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            bytes.extend(all_bytes(&path));
        } else {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    bytes
}

/// A store of the test backend, empty, opened as the server opens it.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub wakeups: Arc<dyn Wakeups>,
    pub dir: TempDir,
}

pub async fn open_test_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::defaults(Profile::Development);
    configure(&mut config, dir.path());
    let opened = latchkey::store::open(&config.store, &dir.path().join("data"))
        .await
        .expect("the test store opens");
    TestStore {
        store: opened.store,
        wakeups: opened.wakeups,
        dir,
    }
}

/// A PostgreSQL of a test's own, started with scripts/postgres in `dir` (for tests that stop it or
/// start it with settings of their own); stopped when dropped.
pub struct Database {
    dir: std::path::PathBuf,
    env: Vec<(String, String)>,
    port: String,
}

impl Database {
    /// Starts it with scripts/postgres' environment `env` (e.g. `POSTGRES_TLS_CERT`); returns it
    /// and the URL of its `latchkey` database.
    pub fn start(dir: std::path::PathBuf, env: &[(&str, &Path)]) -> (Self, String) {
        let mut database = Self {
            dir,
            env: env
                .iter()
                .map(|(key, value)| (key.to_string(), value.display().to_string()))
                .collect(),
            port: String::new(),
        };
        let url = database.run("start");
        database.port = url.rsplit(':').next().unwrap().split('/').next().unwrap().to_string();
        (database, url)
    }

    pub fn stop(&self) {
        self.run("stop");
    }

    /// Runs `sql` in the `latchkey` database as the superuser (over the local socket).
    pub fn as_superuser(&self, sql: &str) {
        let status = std::process::Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c"])
            .arg(format!(
                "psql -q -v ON_ERROR_STOP=1 -h '{}' -p {} -U postgres -d latchkey -c \"{sql}\"",
                self.dir.display(),
                self.port
            ))
            .status()
            .unwrap();
        assert!(status.success(), "as the superuser: {sql}");
    }

    /// Starts it again after `stop`, on the same port.
    pub fn resume(&self) {
        self.run("resume");
    }

    fn run(&self, command: &str) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres");
        let output = std::process::Command::new("bash")
            .arg(script)
            .arg(command)
            .arg(&self.dir)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/postgres {command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.run("stop");
    }
}
