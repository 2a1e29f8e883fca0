//! latchkey-bench: drives a release `latchkey` through the scenarios of issue 8 and reports
//! calls/s, latency percentiles, errors by code, server CPU per call and RSS. `bench/run` builds
//! everything, writes the config and calls this; see bench/README.md.
//!
//! Module map: `server` (the child process and /proc), `api` (connections and stubs), `load`
//! (closed and open loops), `unary`, `flows`, `otp` and `mail_latency` (the scenarios), `mail` (.eml
//! files), `smtp_sink` (mail_latency's SMTP server), `h2load` (the cross-check), `postgres`
//! (the database passes and pgbench), `report` (table and JSON), `bench` (shared state).

mod api;
mod bench;
mod flows;
mod h2load;
mod load;
mod mail;
mod mail_latency;
#[path = "../../tests/common/mime.rs"]
mod mime;
mod otp;
mod postgres;
mod report;
mod server;
mod smtp_sink;
mod unary;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::bench::{Bench, Settings, Store, round};
use crate::postgres::Postgres;
use crate::server::{RssWatch, Server, ServerSpec};

const USAGE: &str =
    "usage: latchkey-bench --server BIN --config FILE --work-dir DIR --mail-dir DIR --out-dir DIR --repo DIR
  [--quick] [--only health,issue,verify,verify_otp,half_peak,authenticate,h2load,login_or_create,mail_latency,long_poll,scale]
  [--perf DIR] [--no-h2load] [--connections N] [--in-flight N] [--warmup S] [--duration S]
  [--waiters N] [--scale-users N] [--client-threads N (default 1)]
  [--store sled|postgres]
PostgreSQL (--store postgres; the config's store must be the same database):
  --pg-url-file FILE --pg-dir DIR (of scripts/postgres start) --pg-bin DIR (psql, pgbench)
  --pgbench-dir DIR (the scripts) [--replicas 1,3]
  [--pool-sizes N,N (pool_size of each replica, per pass; default 16 / replicas, rounded up)]
  [--worker-threads N,N (each replica's runtime threads, per pass; default cores / replicas, at least 1)]
  [--pgbench-clients N (default 16)] [--pgbench-threads N (default 2)]
The API key comes from the environment variable BENCH_API_KEY.";

/// Scenarios that do not run on PostgreSQL, and why (the report says so).
pub const SKIPPED_ON_POSTGRES: &[(&str, &str)] = &[
    (
        "scale",
        "measures sled's data directory: on-disk size, crash image, cold start and recovery",
    ),
    (
        "h2load",
        "a cross-check of the gRPC stack, which does not depend on the store: see the sled run",
    ),
    (
        "mail_latency",
        "the mail worker and its transports are the same on both stores: see the sled run",
    ),
    (
        "long_poll",
        "idle long polls: the sled run's figure; the cross-replica wake-up is covered by tests/replicas",
    ),
];

/// The server's default `store.postgres.pool_size`, shared by the replicas of a pass.
const DEFAULT_POOL_TOTAL: usize = 16;

/// Where the PostgreSQL store's database is and how to reach it.
struct PgArgs {
    url_file: PathBuf,
    cluster_dir: PathBuf,
    bin_dir: PathBuf,
    scripts: PathBuf,
}

struct Args {
    client_threads: usize,
    settings: Settings,
    out_dir: PathBuf,
    repo: PathBuf,
    postgres: Option<PgArgs>,
}

/// A comma-separated list of numbers.
fn numbers(list: &str, what: &str) -> Result<Vec<usize>, String> {
    list.split(',')
        .map(|item| {
            item.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("--{what}: not a positive number: {item}"))
        })
        .collect()
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut values: std::collections::HashMap<String, String> = Default::default();
    let mut flags: Vec<String> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" | "--no-h2load" => flags.push(arg),
            "-h" | "--help" => return Err(USAGE.into()),
            name if name.starts_with("--") => {
                let value = args.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
                values.insert(name.trim_start_matches("--").to_string(), value);
            }
            other => return Err(format!("unexpected argument {other}\n{USAGE}")),
        }
    }
    let path = |key: &str| -> Result<PathBuf, String> {
        values
            .get(key)
            .map(PathBuf::from)
            .ok_or_else(|| format!("--{key} is required\n{USAGE}"))
    };
    let number = |key: &str, default: f64| -> Result<f64, String> {
        values
            .get(key)
            .map(|v| v.parse::<f64>().map_err(|_| format!("--{key}: not a number: {v}")))
            .unwrap_or(Ok(default))
    };
    let quick = flags.iter().any(|f| f == "--quick");
    let store = match values.get("store").map(String::as_str) {
        None | Some("sled") => Store::Sled,
        Some("postgres") => Store::Postgres,
        Some(other) => return Err(format!("--store: sled or postgres, not {other}")),
    };
    let replicas = numbers(values.get("replicas").map(String::as_str).unwrap_or("1,3"), "replicas")?;
    if (1..replicas.len()).any(|i| replicas[..i].contains(&replicas[i])) {
        return Err("--replicas: each count once (passes are named by it)".into());
    }
    // By default the replicas of a pass share the connections one replica has by default (16):
    // measured on this 2-core machine, 3 replicas with 16 each (48 backends) verified at 400-922/s,
    // 3 with 5-6 each at 1,036-1,166/s (bench/RESULTS.md).
    let pool_sizes = match values.get("pool-sizes") {
        None => replicas.iter().map(|n| DEFAULT_POOL_TOTAL.div_ceil(*n)).collect(),
        Some(list) => {
            let sizes = numbers(list, "pool-sizes")?;
            if sizes.len() != replicas.len() {
                return Err("--pool-sizes needs one size per --replicas entry".into());
            }
            sizes
        }
    };
    // Like the pool, the machine's cores are shared over the replicas of a pass, as pods with CPU
    // limits would be (tokio sizes its runtime by the cores it may use, not by what else runs).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let worker_threads = match values.get("worker-threads") {
        None => replicas.iter().map(|n| (cores / n).max(1)).collect(),
        Some(list) => {
            let threads = numbers(list, "worker-threads")?;
            if threads.len() != replicas.len() {
                return Err("--worker-threads needs one count per --replicas entry".into());
            }
            threads
        }
    };
    let mut only: Option<Vec<String>> = values
        .get("only")
        .map(|list| list.split(',').map(|s| s.trim().to_string()).collect());
    let postgres = if store == Store::Postgres {
        if let Some(list) = &only
            && let Some((name, why)) = SKIPPED_ON_POSTGRES
                .iter()
                .find(|(name, _)| list.iter().any(|item| item == name))
        {
            return Err(format!("--only {name}: not run on PostgreSQL ({why})"));
        }
        only.get_or_insert_with(|| {
            [
                "health",
                "issue",
                "verify",
                "half_peak",
                "authenticate",
                "login_or_create",
            ]
            .map(String::from)
            .to_vec()
        });
        Some(PgArgs {
            url_file: path("pg-url-file")?,
            cluster_dir: path("pg-dir")?,
            bin_dir: path("pg-bin")?,
            scripts: path("pgbench-dir")?,
        })
    } else {
        None
    };
    let api_key = std::env::var("BENCH_API_KEY").map_err(|_| "BENCH_API_KEY is not set".to_string())?;
    let work_dir = path("work-dir")?;
    let settings = Settings {
        quick,
        spec: ServerSpec {
            binary: path("server")?,
            config: path("config")?,
            log_dir: work_dir.clone(),
            env: Vec::new(),
        },
        api_key,
        mail_dir: path("mail-dir")?,
        work_dir,
        connections: number("connections", 8.0)? as usize,
        per_connection: number("in-flight", 64.0)? as usize,
        warmup: Duration::from_secs_f64(number("warmup", if quick { 1.0 } else { 2.0 })?),
        duration: Duration::from_secs_f64(number("duration", if quick { 3.0 } else { 8.0 })?),
        long_poll_waiters: number("waiters", if quick { 2000.0 } else { 10_000.0 })? as usize,
        scale_users: number("scale-users", if quick { 50_000.0 } else { 1_000_000.0 })? as u64,
        only,
        perf_dir: values.get("perf").map(PathBuf::from),
        h2load: !flags.iter().any(|f| f == "--no-h2load"),
        store,
        replicas,
        pool_sizes,
        worker_threads,
        pgbench_clients: number("pgbench-clients", 16.0)? as usize,
        pgbench_threads: number("pgbench-threads", 2.0)? as usize,
    };
    Ok(Args {
        client_threads: number("client-threads", 1.0)? as usize,
        settings,
        out_dir: path("out-dir")?,
        repo: path("repo")?,
        postgres,
    })
}

fn utc_stamp() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H%M%SZ"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown-time".into())
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    // One thread by default: the generator shares two cores with the server, and a single-threaded
    // runtime spends far less CPU per call (no cross-thread wake-ups) than a multi-threaded one.
    let runtime = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()
    };
    runtime.expect("a tokio runtime").block_on(run(args));
}

async fn run(args: Args) {
    let started_at = utc_stamp();
    let _ = report::LOAD_AT_START.set(
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    let clock = Instant::now();
    let bench = match &args.postgres {
        None => run_sled(&args).await,
        Some(pg) => run_postgres(&args, pg).await,
    };
    if let Err(error) = report::write(
        &bench,
        &args.repo,
        &args.out_dir,
        &started_at,
        clock.elapsed().as_secs_f64(),
    ) {
        eprintln!("latchkey-bench: cannot write the results: {error}");
        std::process::exit(1);
    }
    eprintln!(
        "wrote {}/{}.json ({:.0} s in all)",
        args.out_dir.display(),
        if args.postgres.is_some() {
            "latest-postgres"
        } else {
            "latest"
        },
        clock.elapsed().as_secs_f64()
    );
}

/// The scenarios on the running server(s), in order; `--only` (or the PostgreSQL default list)
/// picks.
async fn scenarios(bench: &mut Bench) {
    eprintln!(
        "scenarios ({} connections x {} in flight, warm-up {:?}, window {:?}):",
        bench.settings.connections, bench.settings.per_connection, bench.settings.warmup, bench.settings.duration
    );
    if bench.wants("health") {
        bench.health().await;
    }
    if bench.wants("issue") {
        bench.issue().await;
    }
    if bench.wants("verify") {
        bench.verify().await;
    }
    if bench.wants("verify_otp") {
        bench.verify_otp().await;
    }
    if bench.wants("half_peak") {
        bench.half_peak("issue").await;
        bench.half_peak("verify").await;
    }
    if bench.wants("authenticate") || bench.wants("h2load") {
        bench.ensure_sessions().await;
    }
    if bench.wants("authenticate") {
        bench.authenticate().await;
    }
    if bench.wants("h2load") && bench.settings.h2load {
        bench.cross_check().await;
    }
    if bench.wants("login_or_create") {
        bench.login_or_create().await;
    }
    if bench.wants("mail_latency") {
        bench.mail_latency().await;
    }
    if bench.wants("long_poll") {
        bench.long_poll().await;
    }
}

/// The sled store: one server, every scenario, then the `scale` restarts.
async fn run_sled(args: &Args) -> Bench {
    let settings = args.settings.clone();
    let data_dir = settings.work_dir.join("data");
    eprintln!("starting the server ({})", settings.spec.binary.display());
    let (server, to_serving) = match Server::start(&settings.spec, &data_dir, "main").await {
        Ok(started) => started,
        Err(error) => {
            eprintln!("latchkey-bench: {error}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "SERVING after {:.0} ms (empty store)",
        to_serving.as_secs_f64() * 1000.0
    );
    let api = match api::Api::connect(
        std::slice::from_ref(&server.url),
        &settings.api_key,
        settings.connections,
    )
    .await
    {
        Ok(api) => Arc::new(api),
        Err(error) => {
            eprintln!("latchkey-bench: {error}");
            std::process::exit(1);
        }
    };
    let rss = RssWatch::start(server.probe());
    let mut bench = Bench {
        settings: settings.clone(),
        server: Some(server),
        replicas: Vec::new(),
        postgres: None,
        api,
        rss,
        tokens: Arc::default(),
        sessions: Arc::default(),
        rows: Vec::new(),
        extra: Default::default(),
        problems: Vec::new(),
    };
    let mut server_info = serde_json::Map::new();
    server_info.insert(
        "start_to_serving_empty_ms".into(),
        json!(round(to_serving.as_secs_f64() * 1000.0, 1)),
    );
    scenarios(&mut bench).await;
    let main_server = bench.server.take().expect("main server");
    let hwm = main_server.probe().hwm_kib();
    let problems = main_server.log_problems();
    let stopped = main_server.stop().await;
    server_info.insert("main_peak_rss_mib".into(), json!(round(bench::mib(hwm), 1)));
    server_info.insert("main_shutdown_s".into(), json!(round(stopped.took.as_secs_f64(), 3)));
    server_info.insert("main_exit_code".into(), json!(stopped.exit_code));
    server_info.insert("main_log_warnings".into(), json!(problems.len()));
    if stopped.exit_code != Some(0) {
        bench
            .problems
            .push(format!("main server exited with {:?} after SIGTERM", stopped.exit_code));
    }
    for line in problems.iter().take(10) {
        bench.problems.push(format!("server log: {line}"));
    }
    eprintln!(
        "main server stopped by SIGTERM in {:.2} s, exit code {:?}",
        stopped.took.as_secs_f64(),
        stopped.exit_code
    );
    if bench.wants("scale") {
        bench.scale().await;
        if let Some(server) = bench.server.take() {
            let problems = server.log_problems();
            let stopped = server.stop().await;
            server_info.insert("scale_shutdown_s".into(), json!(round(stopped.took.as_secs_f64(), 3)));
            server_info.insert("scale_exit_code".into(), json!(stopped.exit_code));
            for line in problems.iter().take(10) {
                bench.problems.push(format!("scale server log: {line}"));
            }
        }
    }
    bench
        .extra
        .insert("server".into(), serde_json::Value::Object(server_info));
    bench
}

/// The PostgreSQL store: a pass per replica count (the tables emptied before each), then the
/// pgbench ceilings. Rows are named `r<replicas>.<scenario>` and `pgbench.<script>`.
async fn run_postgres(args: &Args, pg_args: &PgArgs) -> Bench {
    let fail = |error: String| -> ! {
        eprintln!("latchkey-bench: {error}");
        std::process::exit(1);
    };
    let settings = &args.settings;
    let pg = Postgres::open(
        &pg_args.url_file,
        &pg_args.bin_dir,
        &pg_args.cluster_dir,
        &pg_args.scripts,
        &settings.work_dir,
    )
    .unwrap_or_else(|error| fail(error));
    let pg = Arc::new(pg);
    let mut all: Option<Bench> = None;
    let mut passes = serde_json::Map::new();
    let mut verify_hint: f64 = 0.0;
    let passes_of = settings
        .replicas
        .iter()
        .zip(&settings.pool_sizes)
        .zip(&settings.worker_threads);
    for ((&replicas, &pool_size), &threads) in passes_of {
        pg.reset().unwrap_or_else(|error| fail(error));
        let label = format!("r{replicas}");
        eprintln!(
            "pass {label}: {replicas} replica(s) on PostgreSQL {} (per replica: pool size {pool_size}, {threads} runtime threads)",
            pg.target(),
        );
        let (mut bench, mut info) = postgres::start_pass(settings, &pg, replicas, pool_size, threads)
            .await
            .unwrap_or_else(|error| fail(error));
        eprintln!("every replica SERVING after {:?} ms", info["start_to_serving_ms"]);
        scenarios(&mut bench).await;
        postgres::end_pass(&mut bench, &mut info).await;
        for row in &mut bench.rows {
            row.extra.insert("replicas".into(), json!(replicas));
            row.name = format!("{label}.{}", row.name);
            if row.name.ends_with(".verify") {
                verify_hint = verify_hint.max(row.calls_per_s);
            }
        }
        for problem in &mut bench.problems {
            *problem = format!("{label}: {problem}");
        }
        passes.insert(label, serde_json::Value::Object(info));
        match &mut all {
            None => all = Some(bench),
            Some(first) => {
                first.rows.append(&mut bench.rows);
                first.problems.append(&mut bench.problems);
            }
        }
    }
    let mut bench = all.unwrap_or_else(|| fail("no pass ran (--replicas is empty)".into()));
    let mut problems = Vec::new();
    let ceilings = postgres::ceilings(&pg, settings, verify_hint, &mut problems);
    bench.rows.extend(ceilings);
    bench.problems.append(&mut problems);
    bench.extra.insert("passes".into(), serde_json::Value::Object(passes));
    bench.extra.insert("postgres".into(), pg.settings());
    bench.extra.insert(
        "skipped".into(),
        json!(
            SKIPPED_ON_POSTGRES
                .iter()
                .map(|(name, why)| json!({"scenario": name, "why": why}))
                .collect::<Vec<_>>()
        ),
    );
    bench
}
