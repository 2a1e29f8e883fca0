//! The PostgreSQL side of `bench/run --store postgres`: the database bench/run started (its URL
//! read from a file; the password reaches psql and pgbench only through their environment, never
//! a command line, a log or the report), the passes with 1 and 3 replicas on it, a CHECKPOINT
//! before each measured window, the tables emptied between passes, and the pgbench ceilings: the
//! SQL of one IssueLoginLink and of one VerifyToken (bench/pgbench/*.sql) run by pgbench against
//! the same database in the same run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::api::Api;
use crate::bench::{Bench, Row, Settings, round};
use crate::load::histogram;
use crate::server::{RssWatch, Server, machine_busy_seconds, others_percent};

/// The tables the server writes; `signing_keys` (one row, the JWT key set the replicas share) and
/// `latchkey_migrations` stay.
const TABLES: &str = "users, links, sessions, attempts, codes, emails, rate_buckets";

/// Key bases of the pgbench phases (a key is base + client × 1,000,000 + n, n counting from 1).
const VERIFY_WARMUP: u64 = 1_000_000_000;
const VERIFY_MEASURE: u64 = 2_000_000_000;
const ISSUE_WARMUP: u64 = 3_000_000_000;
const ISSUE_MEASURE: u64 = 4_000_000_000;
/// Times in the scripts are 1764000000000 + k (verify.sql, verify_seed.sql).
const TIME_ORIGIN: u64 = 1_764_000_000_000;

pub struct Postgres {
    host: String,
    port: String,
    user: String,
    password: String,
    dbname: String,
    bin_dir: PathBuf,
    /// The cluster's data directory (postmaster.pid).
    data_dir: PathBuf,
    /// bench/pgbench: the pgbench scripts and the seed.
    scripts: PathBuf,
    /// Where pgbench writes its per-transaction logs.
    work_dir: PathBuf,
}

impl Postgres {
    /// `url_file` holds `postgres://user:password@host:port/dbname` (scripts/postgres prints it);
    /// `cluster_dir` is the directory given to `scripts/postgres start`.
    pub fn open(
        url_file: &Path,
        bin_dir: &Path,
        cluster_dir: &Path,
        scripts: &Path,
        work_dir: &Path,
    ) -> Result<Self, String> {
        let url = std::fs::read_to_string(url_file).map_err(|e| format!("{}: {e}", url_file.display()))?;
        let shape = || {
            format!(
                "{}: not postgres://user:password@host:port/dbname (the value is not shown)",
                url_file.display()
            )
        };
        let rest = url
            .trim()
            .strip_prefix("postgres://")
            .or_else(|| url.trim().strip_prefix("postgresql://"))
            .ok_or_else(shape)?;
        let (credentials, location) = rest.rsplit_once('@').ok_or_else(shape)?;
        let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
        let (address, dbname) = location.split_once('/').ok_or_else(shape)?;
        let dbname = dbname.split('?').next().unwrap_or(dbname);
        let (host, port) = address.rsplit_once(':').unwrap_or((address, "5432"));
        if rest.contains('%') {
            // scripts/postgres writes none; decoding them is not worth a dependency.
            return Err(format!(
                "{}: percent-escapes in the URL are not supported",
                url_file.display()
            ));
        }
        Ok(Postgres {
            host: host.to_string(),
            port: port.to_string(),
            user: user.to_string(),
            password: password.to_string(),
            dbname: dbname.to_string(),
            bin_dir: bin_dir.to_path_buf(),
            data_dir: cluster_dir.join("data"),
            scripts: scripts.to_path_buf(),
            work_dir: work_dir.to_path_buf(),
        })
    }

    /// `user@host:port/dbname`: what the report may show.
    pub fn target(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// A client program of the server's version, connected by its environment.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        for name in ["PGSERVICE", "PGSERVICEFILE", "PGPASSFILE", "PGOPTIONS", "DATABASE_URL"] {
            command.env_remove(name);
        }
        command
            .env("PGHOST", &self.host)
            .env("PGPORT", &self.port)
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", &self.dbname)
            .env("PGAPPNAME", "latchkey-bench")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, mut command: Command, what: &str) -> Result<String, String> {
        let out = command.output().map_err(|e| format!("{what}: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!("{what}: {} {}", out.status, stderr.trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs SQL with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let mut command = self.command("psql");
        command.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        self.run(command, "psql")
    }

    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    pub fn checkpoint(&self) -> Result<(), String> {
        self.psql("CHECKPOINT").map(|_| ())
    }

    /// Empties the tables the server writes (a pass starts as on a new database, migrated); before
    /// the first server has migrated the schema there is nothing to empty.
    pub fn reset(&self) -> Result<(), String> {
        self.psql(&format!(
            "DO $$ BEGIN IF to_regclass('users') IS NOT NULL THEN TRUNCATE {TABLES}; END IF; END $$"
        ))
        .map(|_| ())
    }

    /// The settings the figures depend on, for the JSON.
    pub fn settings(&self) -> Value {
        let names = [
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "commit_delay",
            "shared_buffers",
            "max_wal_size",
            "checkpoint_timeout",
            "max_connections",
        ];
        let mut object = Map::new();
        for name in names {
            if let Ok(value) = self.psql(&format!("SHOW {name}")) {
                object.insert(name.into(), json!(value));
            }
        }
        object.insert("target".into(), json!(self.target()));
        Value::Object(object)
    }

    /// Links whose `column` (a time: 1764000000000 + key) falls in the keys of the phase `base`.
    fn links_of_phase(&self, column: &str, base: u64) -> Result<u64, String> {
        let (from, to) = (TIME_ORIGIN + base, TIME_ORIGIN + base + 1_000_000_000);
        let sql = format!("SELECT count(*) FROM links WHERE {column} >= {from} AND {column} < {to}");
        self.psql(&sql)?.parse().map_err(|_| format!("not a count from: {sql}"))
    }
}

/// One pgbench run.
struct PgbenchRun {
    processed: u64,
    failed: u64,
    tps: f64,
    latency_us: hdrhistogram::Histogram<u64>,
    db_cpu_s: Option<f64>,
    client_cpu_s: f64,
    others_cpu_percent: f64,
    command: String,
}

fn field<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(prefix))
        .map(|rest| rest.trim())
}

/// `--log` files of the run with `prefix` (one per thread): latency is the third field, in µs.
fn read_logs(dir: &Path, prefix: &str) -> hdrhistogram::Histogram<u64> {
    let mut latency = histogram();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{prefix}.")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|f| f.parse::<u64>().ok()) {
                let _ = latency.record(us.max(1));
            }
        }
        let _ = std::fs::remove_file(entry.path());
    }
    latency
}

/// CPU time (user + system) of this process's reaped children, in seconds: pgbench's.
fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .collect();
    // cutime and cstime are fields 16 and 17 of stat; [0] here is field 3.
    let ticks = fields.get(13).copied().unwrap_or(0) + fields.get(14).copied().unwrap_or(0);
    ticks as f64 / crate::server::clock_ticks_per_second()
}

impl Postgres {
    /// pgbench with `script` for `seconds`, `-M prepared`, keys from `base`; `log` keeps each
    /// transaction's latency.
    fn pgbench(
        &self,
        script: &str,
        base: u64,
        clients: usize,
        threads: usize,
        seconds: u64,
        log: bool,
    ) -> Result<PgbenchRun, String> {
        let prefix = format!("pgbench-{}", script.trim_end_matches(".sql"));
        let args: Vec<String> = vec![
            "-n".into(),
            "-M".into(),
            "prepared".into(),
            "-f".into(),
            self.scripts.join(script).display().to_string(),
            "-D".into(),
            format!("base={base}"),
            "-D".into(),
            "n=0".into(),
            "-c".into(),
            clients.to_string(),
            "-j".into(),
            threads.to_string(),
            "-T".into(),
            seconds.to_string(),
        ];
        let mut command = self.command("pgbench");
        command.args(&args).current_dir(&self.work_dir);
        if log {
            command.args(["-l", "--log-prefix", &prefix]);
        }
        let shown = format!("pgbench {}", args.join(" "));
        let probe = crate::server::Probe {
            pids: Vec::new(),
            postgres: self.postmaster_pid(),
        };
        let (db0, client0) = (probe.db_cpu_seconds(), children_cpu_seconds());
        let (busy0, started) = (machine_busy_seconds(), std::time::Instant::now());
        let out = command.output().map_err(|e| format!("pgbench: {e}"))?;
        let (db1, client1) = (probe.db_cpu_seconds(), children_cpu_seconds());
        let db_cpu_s = db1.zip(db0).map(|(end, start)| end - start);
        let others_cpu_percent = others_percent(
            machine_busy_seconds() - busy0,
            db_cpu_s.unwrap_or(0.0) + client1 - client0,
            started.elapsed().as_secs_f64(),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("aborted") {
            let first: Vec<&str> = stderr.lines().take(3).collect();
            return Err(format!("{shown}: {} {}", out.status, first.join(" / ")));
        }
        let number = |prefix: &str| -> Option<f64> { field(&stdout, prefix)?.split_whitespace().next()?.parse().ok() };
        let processed = number("number of transactions actually processed:")
            .ok_or_else(|| format!("{shown}: no result in {stdout}"))?;
        Ok(PgbenchRun {
            processed: processed as u64,
            failed: number("number of failed transactions:").unwrap_or(0.0) as u64,
            tps: number("tps =").unwrap_or(0.0),
            latency_us: if log {
                read_logs(&self.work_dir, &prefix)
            } else {
                histogram()
            },
            db_cpu_s,
            client_cpu_s: client1 - client0,
            others_cpu_percent,
            command: shown,
        })
    }
}

/// The row of one pgbench ceiling.
fn ceiling_row(name: &str, run: &PgbenchRun, clients: usize, threads: usize, seconds: u64) -> Row {
    let done = (run.processed + run.failed).max(1) as f64;
    let mut extra = Map::new();
    extra.insert("transactions".into(), json!(run.processed));
    extra.insert("seconds".into(), json!(seconds));
    extra.insert("clients".into(), json!(clients));
    extra.insert("threads".into(), json!(threads));
    extra.insert("query_mode".into(), json!("prepared"));
    extra.insert("command".into(), json!(run.command));
    if let Some(db) = run.db_cpu_s {
        extra.insert("postgres_cpu_us_per_call".into(), json!(round(db * 1e6 / done, 1)));
    }
    extra.insert(
        "client_cpu_us_per_call".into(),
        json!(round(run.client_cpu_s * 1e6 / done, 1)),
    );
    extra.insert(
        "other_processes_cpu_percent".into(),
        json!(round(run.others_cpu_percent, 1)),
    );
    let mut errors = std::collections::BTreeMap::new();
    if run.failed > 0 {
        errors.insert("failed transactions".to_string(), run.failed);
    }
    let ms = |q: f64| round(crate::load::ms(&run.latency_us, q), 3);
    Row {
        name: name.to_string(),
        calls_per_s: round(run.tps, 1),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: round(crate::load::max_ms(&run.latency_us), 3),
        errors,
        cpu_us_per_call: 0.0,
        rss_mib: 0.0,
        note: format!(
            "pgbench -M prepared -c {clients} -j {threads} -T {seconds}, bench/pgbench/{}",
            name.trim_start_matches("pgbench.").to_string() + ".sql"
        ),
        extra,
    }
}

/// Whole seconds for pgbench's -T (at least 1).
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs_f64().round().max(1.0) as u64
}

/// The pgbench ceilings of issue and verify, each on emptied tables after a CHECKPOINT, with a
/// warm-up run of the same script first (its own keys). `verify_hint` (the best verify rate of
/// the server in this run) sizes the links seeded for verify.sql; a run that used up its seed is
/// reported as a problem, not as a ceiling.
pub fn ceilings(pg: &Postgres, settings: &Settings, verify_hint: f64, problems: &mut Vec<String>) -> Vec<Row> {
    let (clients, threads) = (settings.pgbench_clients, settings.pgbench_threads);
    let (warmup, seconds) = (whole_seconds(settings.warmup), whole_seconds(settings.duration));
    let mut rows = Vec::new();

    eprintln!(
        "pgbench ceilings ({clients} clients, {threads} threads, -M prepared, warm-up {warmup} s, window {seconds} s):"
    );
    // A CHECKPOINT, the warm-up run (keys of its own), then the measured run.
    let warm_and_measure = |script: &str, warmup_base: u64, measure_base: u64| -> Result<PgbenchRun, String> {
        pg.checkpoint()?;
        pg.pgbench(script, warmup_base, clients, threads, warmup, false)?;
        pg.pgbench(script, measure_base, clients, threads, seconds, true)
    };
    let issue = (|| -> Result<Row, String> {
        pg.reset()?;
        let run = warm_and_measure("issue.sql", ISSUE_WARMUP, ISSUE_MEASURE)?;
        let links = pg.links_of_phase("created_at", ISSUE_MEASURE)?;
        if links != run.processed {
            problems.push(format!(
                "pgbench issue: {} transactions but {links} links written",
                run.processed
            ));
        }
        Ok(ceiling_row("pgbench.issue", &run, clients, threads, seconds))
    })();
    match issue {
        Ok(row) => rows.push(row),
        Err(error) => problems.push(format!("pgbench issue: {error}")),
    }

    let verify = (|| -> Result<Row, String> {
        pg.reset()?;
        // Enough links for a ceiling up to 6x the server's verify rate (at least 8,000/s), per
        // client, plus a margin for clients running ahead of the others.
        let rate = (verify_hint * 6.0).max(8000.0);
        let per_client = |secs: u64| ((rate * secs as f64 / clients as f64) * 1.3) as u64 + 200;
        for (base, secs) in [(VERIFY_WARMUP, warmup), (VERIFY_MEASURE, seconds)] {
            let mut command = pg.command("psql");
            command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
            for (name, value) in [
                ("base", base.to_string()),
                ("clients", clients.to_string()),
                ("per_client", per_client(secs).min(999_999).to_string()),
            ] {
                command.args(["-v", &format!("{name}={value}")]);
            }
            command.arg("-f").arg(pg.scripts.join("verify_seed.sql"));
            pg.run(command, "psql verify_seed.sql")?;
        }
        let run = warm_and_measure("verify.sql", VERIFY_WARMUP, VERIFY_MEASURE)?;
        // Each transaction must have redeemed a link of its own; fewer used links means a client
        // ran past its seed and its last transactions found nothing to lock.
        let used = pg.links_of_phase("used_at", VERIFY_MEASURE)?;
        if used != run.processed {
            return Err(format!(
                "{} transactions but {used} links redeemed: the seed ran out ({} links per client); not a ceiling",
                run.processed,
                per_client(seconds)
            ));
        }
        let mut row = ceiling_row("pgbench.verify", &run, clients, threads, seconds);
        row.extra
            .insert("seeded_links_per_client".into(), json!(per_client(seconds)));
        Ok(row)
    })();
    match verify {
        Ok(row) => rows.push(row),
        Err(error) => problems.push(format!("pgbench verify: {error}")),
    }
    for row in &rows {
        eprintln!(
            "  {:<22} {:>10.1}/s  p50 {:>7.2} ms  p99 {:>8.2} ms  errors {:>5}  postgres cpu {:>7.1} us/tx",
            row.name,
            row.calls_per_s,
            row.p50_ms,
            row.p99_ms,
            row.error_total(),
            row.extra
                .get("postgres_cpu_us_per_call")
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        );
    }
    rows
}

/// Starts `replicas` servers on the database (each with its own data directory and ports) and
/// waits until every one says SERVING; connections are spread round-robin over them, rounded up
/// to a multiple of the replica count with about the same calls in flight in all.
pub async fn start_pass(
    settings: &Settings,
    pg: &Arc<Postgres>,
    replicas: usize,
    pool_size: usize,
    worker_threads: usize,
) -> Result<(Bench, Map<String, Value>), String> {
    let mut settings = settings.clone();
    let in_flight = settings.connections * settings.per_connection;
    settings.connections = settings.connections.div_ceil(replicas) * replicas;
    settings.per_connection = in_flight.div_ceil(settings.connections);
    settings
        .spec
        .env
        .push(("LATCHKEY_STORE__POSTGRES__POOL_SIZE".into(), pool_size.to_string()));
    settings
        .spec
        .env
        .push(("TOKIO_WORKER_THREADS".into(), worker_threads.to_string()));
    let mut servers: Vec<Server> = Vec::new();
    let mut info = Map::new();
    let mut starts = Vec::new();
    for i in 0..replicas {
        let data_dir = settings.work_dir.join(format!("data-r{replicas}-{i}"));
        let label = format!("r{replicas}-{i}");
        match Server::start(&settings.spec, &data_dir, &label).await {
            Ok((server, took)) => {
                starts.push(round(took.as_secs_f64() * 1000.0, 1));
                servers.push(server);
            }
            Err(error) => {
                for server in servers {
                    server.stop().await;
                }
                return Err(format!("replica {label}: {error}"));
            }
        }
    }
    info.insert("start_to_serving_ms".into(), json!(starts));
    let urls: Vec<String> = servers.iter().map(|server| server.url.clone()).collect();
    let api = match Api::connect(&urls, &settings.api_key, settings.connections).await {
        Ok(api) => Arc::new(api),
        Err(error) => {
            for server in servers {
                server.stop().await;
            }
            return Err(error);
        }
    };
    let mut servers = servers.into_iter();
    let first = servers.next();
    let bench = Bench {
        settings,
        server: first,
        replicas: servers.collect(),
        postgres: Some(pg.clone()),
        api,
        rss: RssWatch::start(Default::default()),
        tokens: Arc::default(),
        sessions: Arc::default(),
        rows: Vec::new(),
        extra: Default::default(),
        problems: Vec::new(),
    };
    bench.rss.reset(&bench.probe());
    info.insert("replicas".into(), json!(replicas));
    info.insert("connections".into(), json!(bench.settings.connections));
    info.insert("in_flight_per_connection".into(), json!(bench.settings.per_connection));
    info.insert("pool_size_per_replica".into(), json!(pool_size));
    info.insert("worker_threads_per_replica".into(), json!(worker_threads));
    Ok((bench, info))
}

/// Stops every replica with SIGTERM; their exit codes, stop times and WARN/ERROR lines go to
/// `info` and the problems.
pub async fn end_pass(bench: &mut Bench, info: &mut Map<String, Value>) {
    let servers: Vec<Server> = bench
        .server
        .take()
        .into_iter()
        .chain(bench.replicas.drain(..))
        .collect();
    let mut exits = Vec::new();
    let mut stops = Vec::new();
    let mut warnings = 0;
    for server in servers {
        let problems = server.log_problems();
        let label = server
            .log
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        warnings += problems.len();
        for line in problems.iter().take(5) {
            bench.problems.push(format!("{label}: {line}"));
        }
        let stopped = server.stop().await;
        if stopped.exit_code != Some(0) {
            bench
                .problems
                .push(format!("{label}: exited with {:?} after SIGTERM", stopped.exit_code));
        }
        exits.push(json!(stopped.exit_code));
        stops.push(round(stopped.took.as_secs_f64(), 3));
    }
    info.insert("exit_codes".into(), json!(exits));
    info.insert("shutdown_s".into(), json!(stops));
    info.insert("log_warnings".into(), json!(warnings));
}
