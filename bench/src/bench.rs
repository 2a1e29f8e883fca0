//! The benchmark's shared state: settings, the running server, the pools of tokens and sessions
//! that one scenario leaves for the next, and the rows of the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tonic::transport::Channel;

use crate::api::Api;
use crate::load::{Measured, max_ms, ms};
use crate::postgres::Postgres;
use crate::server::{Probe, RssWatch, Server, ServerSpec};

/// Where the server keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Sled,
    Postgres,
}

/// Settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub spec: ServerSpec,
    pub api_key: String,
    pub work_dir: PathBuf,
    pub mail_dir: PathBuf,
    pub connections: usize,
    pub per_connection: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub long_poll_waiters: usize,
    pub scale_users: u64,
    pub only: Option<Vec<String>>,
    pub perf_dir: Option<PathBuf>,
    pub h2load: bool,
    pub store: Store,
    /// PostgreSQL only: the replica counts, one pass each (default 1 then 3).
    pub replicas: Vec<usize>,
    /// PostgreSQL only: `store.postgres.pool_size` of each replica, one per pass.
    pub pool_sizes: Vec<usize>,
    /// PostgreSQL only: each replica's tokio worker threads (`TOKIO_WORKER_THREADS`), per pass.
    pub worker_threads: Vec<usize>,
    /// PostgreSQL only: pgbench's clients (`-c`) and threads (`-j`).
    pub pgbench_clients: usize,
    pub pgbench_threads: usize,
}

/// One line of the report.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub name: String,
    pub calls_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: BTreeMap<String, u64>,
    pub cpu_us_per_call: f64,
    pub rss_mib: f64,
    pub note: String,
    pub extra: Map<String, Value>,
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn round(value: f64, places: i32) -> f64 {
    let factor = 10f64.powi(places);
    (value * factor).round() / factor
}

impl Row {
    pub fn from_measured(name: &str, measured: &Measured) -> Row {
        let mut extra = Map::new();
        extra.insert("calls".into(), json!(measured.calls));
        extra.insert("seconds".into(), json!(round(measured.seconds, 3)));
        extra.insert("in_flight".into(), json!(measured.in_flight));
        extra.insert(
            "client_cpu_us_per_call".into(),
            json!(round(measured.client_cpu_us_per_call(), 1)),
        );
        extra.insert("errors_outside_window".into(), json!(measured.errors_outside));
        extra.insert(
            "other_processes_cpu_percent".into(),
            json!(round(measured.others_cpu_percent, 1)),
        );
        if !measured.errors.samples.is_empty() {
            extra.insert("error_samples".into(), json!(measured.errors.samples));
        }
        if measured.exhausted {
            extra.insert("pool_exhausted".into(), json!(true));
        }
        if let Some(db) = measured.db_cpu_us_per_call() {
            extra.insert("postgres_cpu_us_per_call".into(), json!(round(db, 1)));
        }
        if let Some(service) = &measured.service_us {
            extra.insert("service_p50_ms".into(), json!(round(ms(service, 0.5), 3)));
            extra.insert("service_p99_ms".into(), json!(round(ms(service, 0.99), 3)));
            extra.insert("dropped".into(), json!(measured.dropped));
        }
        Row {
            name: name.to_string(),
            calls_per_s: round(measured.rate(), 1),
            p50_ms: round(ms(&measured.latency_us, 0.5), 3),
            p90_ms: round(ms(&measured.latency_us, 0.9), 3),
            p99_ms: round(ms(&measured.latency_us, 0.99), 3),
            max_ms: round(max_ms(&measured.latency_us), 3),
            errors: measured.errors.by_code.clone(),
            cpu_us_per_call: round(measured.cpu_us_per_call(), 1),
            rss_mib: round(mib(measured.rss_peak_kib), 1),
            note: if measured.exhausted {
                format!("pool ran out after {:.1} s", measured.seconds)
            } else {
                String::new()
            },
            extra,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("calls_per_s".into(), json!(self.calls_per_s));
        object.insert("p50_ms".into(), json!(self.p50_ms));
        object.insert("p90_ms".into(), json!(self.p90_ms));
        object.insert("p99_ms".into(), json!(self.p99_ms));
        object.insert("max_ms".into(), json!(self.max_ms));
        object.insert("errors".into(), json!(self.errors));
        object.insert("cpu_us_per_call".into(), json!(self.cpu_us_per_call));
        object.insert("rss_mib".into(), json!(self.rss_mib));
        if !self.note.is_empty() {
            object.insert("note".into(), json!(self.note));
        }
        for (key, value) in &self.extra {
            object.insert(key.clone(), value.clone());
        }
        Value::Object(object)
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A session for AuthenticateSession: its bearer token and its JWT.
#[derive(Clone, Debug)]
pub struct SessionCredentials {
    pub token: String,
    pub jwt: String,
}

/// Link tokens handed out in order; each is used once.
#[derive(Default)]
pub struct TokenPool {
    tokens: Mutex<Vec<String>>,
    next: AtomicUsize,
}

impl TokenPool {
    pub fn push(&self, token: String) {
        self.tokens.lock().expect("pool lock").push(token);
    }

    /// The next unused token. Tokens are pushed only between scenarios, so the lock is
    /// uncontended while a scenario takes them.
    pub fn take(&self) -> Option<String> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        let tokens = self.tokens.lock().expect("pool lock");
        match tokens.get(index) {
            Some(token) => Some(token.clone()),
            None => {
                self.next.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn remaining(&self) -> usize {
        let tokens = self.tokens.lock().expect("pool lock");
        tokens.len().saturating_sub(self.next.load(Ordering::Relaxed))
    }
}

/// Unique email addresses across the whole run.
static NEXT_USER: AtomicU64 = AtomicU64::new(0);

pub fn new_email(kind: &str) -> String {
    let n = NEXT_USER.fetch_add(1, Ordering::Relaxed);
    format!("{kind}-{n}@bench.example.com")
}

pub struct Bench {
    pub settings: Settings,
    /// The server, or the first replica.
    pub server: Option<Server>,
    /// The other replicas (PostgreSQL store), each with its own ports and data directory.
    pub replicas: Vec<Server>,
    /// The database this benchmark started (PostgreSQL store).
    pub postgres: Option<Arc<Postgres>>,
    pub api: Arc<Api>,
    pub rss: RssWatch,
    pub tokens: Arc<TokenPool>,
    pub sessions: Arc<Mutex<Vec<SessionCredentials>>>,
    pub rows: Vec<Row>,
    /// Free-form results (cross-checks, start-up times) for the JSON file.
    pub extra: Map<String, Value>,
    pub problems: Vec<String>,
}

impl Bench {
    pub fn wants(&self, scenario: &str) -> bool {
        match &self.settings.only {
            None => true,
            Some(list) => list.iter().any(|name| name == scenario),
        }
    }

    pub fn channels(&self) -> Vec<Channel> {
        (0..self.api.connections()).map(|i| self.api.channel(i)).collect()
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("a running server")
    }

    /// Every replica's processes, and PostgreSQL's when this benchmark started it.
    pub fn probe(&self) -> Probe {
        let pids = self
            .server
            .iter()
            .chain(&self.replicas)
            .map(|server| server.pid)
            .collect();
        Probe {
            pids,
            postgres: self.postgres.as_ref().and_then(|pg| pg.postmaster_pid()),
        }
    }

    /// Before a measured window on PostgreSQL: a CHECKPOINT, so that no window pays for the
    /// writes of the one before (a time-based checkpoint landing in one window and not another
    /// would move the comparison of 1 and 3 replicas).
    pub fn settle(&mut self) {
        if let Some(pg) = &self.postgres
            && let Err(error) = pg.checkpoint()
        {
            self.problems.push(format!("CHECKPOINT before a window: {error}"));
        }
    }

    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|row| row.name == name)
    }

    pub fn push(&mut self, row: Row) {
        eprintln!(
            "  {:<22} {:>10.1}/s  p50 {:>7.2} ms  p99 {:>8.2} ms  errors {:>5}  cpu {:>7.1} us/call  {}",
            row.name,
            row.calls_per_s,
            row.p50_ms,
            row.p99_ms,
            row.error_total(),
            row.cpu_us_per_call,
            row.note
        );
        if row.error_total() > 0 {
            self.problems.push(format!(
                "{}: errors {:?} {}",
                row.name,
                row.errors,
                row.extra.get("error_samples").map(Value::to_string).unwrap_or_default()
            ));
        }
        self.rows.push(row);
    }

    /// With `--perf DIR`: after `delay` (the warm-up), records the server for `seconds` with
    /// `perf record` (DIR/NAME.perf.data) and counts context switches, thread creations and
    /// sync calls with `perf stat` (DIR/NAME.stat.txt). The caller waits with `finish_perf`.
    pub fn start_perf(
        &self,
        name: &str,
        delay: Duration,
        seconds: Duration,
    ) -> Option<std::thread::JoinHandle<Vec<Child>>> {
        let dir = self.settings.perf_dir.clone()?;
        let pid = self.server().pid.to_string();
        let name = name.to_string();
        let record_args = std::env::var("BENCH_PERF_ARGS").unwrap_or_else(|_| "-F 499 --call-graph dwarf,16384".into());
        let seconds = format!("{}", seconds.as_secs_f64());
        Some(std::thread::spawn(move || {
            std::thread::sleep(delay);
            let record = Command::new("perf")
                .arg("record")
                .args(record_args.split_whitespace())
                .args(["-p", &pid, "-o"])
                .arg(dir.join(format!("{name}.perf.data")))
                .args(["--", "sleep", &seconds])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let events = "task-clock,context-switches,sched:sched_process_fork,syscalls:sys_enter_fdatasync,\
                          syscalls:sys_enter_sync_file_range,syscalls:sys_enter_pwrite64,syscalls:sys_enter_futex";
            let stat = Command::new("perf")
                .args(["stat", "-e", events, "-p", &pid, "-o"])
                .arg(dir.join(format!("{name}.stat.txt")))
                .args(["--", "sleep", &seconds])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            [record, stat].into_iter().flatten().collect()
        }))
    }
}

/// Group-commit figures between two `/metrics` scrapes: flushes/s and writes per flush.
pub fn store_figures(
    before: &Option<std::collections::HashMap<String, f64>>,
    after: &Option<std::collections::HashMap<String, f64>>,
    seconds: f64,
) -> Map<String, Value> {
    let mut figures = Map::new();
    let (Some(before), Some(after)) = (before, after) else {
        return figures;
    };
    let delta = |name: &str| after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
    let (flushes, writes) = (delta("latchkey_store_flushes"), delta("latchkey_store_writes"));
    if flushes > 0.0 {
        figures.insert("flushes_per_s".into(), json!(round(flushes / seconds.max(0.001), 1)));
        figures.insert("writes_per_flush".into(), json!(round(writes / flushes, 2)));
    }
    figures
}

pub fn finish_perf(handle: Option<std::thread::JoinHandle<Vec<Child>>>) {
    if let Some(handle) = handle
        && let Ok(children) = handle.join()
    {
        for mut child in children {
            let _ = child.wait();
        }
    }
}
