//! The report: a table on stdout, ratios, the targets of issue 8 judged met or not, and the JSON
//! files (latest.json, a dated copy) plus latest.md for bench/RESULTS.md.

use std::path::Path;
use std::process::Command;

use serde_json::{Map, Value, json};

use crate::bench::{Bench, Row, Store, round};

/// The closed-loop scenarios whose errors count as "errors at saturation".
const SATURATED: [&str; 6] = [
    "issue",
    "verify",
    "verify_otp",
    "authenticate_token",
    "authenticate_jwt",
    "login_or_create",
];

/// /proc/loadavg when the run began (main sets it).
pub static LOAD_AT_START: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Reference figures (better-auth magic links on this machine class, from issue 8).
const REFERENCE_VERIFY: f64 = 175.0;
const REFERENCE_ISSUE: f64 = 425.0;

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|out| {
            let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

pub fn machine(repo: &Path) -> Value {
    let repo_arg = repo.display().to_string();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:").map(|rest| rest.trim().to_string()))
        .unwrap_or_default();
    let dirty = !command_output(
        "git",
        &["-C", &repo_arg, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_empty();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "memory": memory,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "rustc": command_output("rustc", &["--version"]),
        "h2load": command_output("h2load", &["--version"]),
        "commit": command_output("git", &["-C", &repo_arg, "rev-parse", "HEAD"]),
        "dirty": dirty,
        "load_average_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "load_average_at_start": LOAD_AT_START.get().cloned().unwrap_or_default(),
    })
}

fn rate(bench: &Bench, name: &str) -> Option<f64> {
    bench.row(name).map(|row| row.calls_per_s)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round(a / b, 4)),
        _ => None,
    }
}

pub fn ratios(bench: &Bench) -> Value {
    let (health, issue, verify) = (rate(bench, "health"), rate(bench, "issue"), rate(bench, "verify"));
    json!({
        "verify_to_health": ratio(verify, health),
        "issue_to_health": ratio(issue, health),
        "verify_to_reference": ratio(verify, Some(REFERENCE_VERIFY)),
        "issue_to_reference": ratio(issue, Some(REFERENCE_ISSUE)),
    })
}

struct Target {
    what: String,
    value: String,
    met: Option<bool>,
}

fn extra_f64(row: Option<&Row>, key: &str) -> Option<f64> {
    row.and_then(|row| row.extra.get(key)).and_then(Value::as_f64)
}

fn targets(bench: &Bench) -> Vec<Target> {
    let ratios = ratios(bench);
    let r = |key: &str| ratios[key].as_f64();
    let mut out = Vec::new();
    let mut add = |what: &str, value: Option<f64>, unit: &str, met: &dyn Fn(f64) -> bool| {
        out.push(Target {
            what: what.to_string(),
            value: value
                .map(|v| format!("{v}{unit}"))
                .unwrap_or_else(|| "not measured".into()),
            met: value.map(met),
        });
    };
    add("verify >= 10,000/s", rate(bench, "verify"), "/s", &|v| v >= 10_000.0);
    add("verify/health >= 0.07", r("verify_to_health"), "", &|v| v >= 0.07);
    add("verify >= 57x reference (175/s)", r("verify_to_reference"), "x", &|v| {
        v >= 57.0
    });
    add("issue >= 15,000/s", rate(bench, "issue"), "/s", &|v| v >= 15_000.0);
    add("issue/health >= 0.10", r("issue_to_health"), "", &|v| v >= 0.10);
    add("issue >= 35x reference (425/s)", r("issue_to_reference"), "x", &|v| {
        v >= 35.0
    });
    for name in ["issue_half_peak", "verify_half_peak"] {
        let p99 = bench.row(name).map(|row| row.p99_ms);
        add(&format!("{name}: p99 <= 10 ms"), p99, " ms", &|v| v <= 10.0);
    }
    let saturated: Vec<&Row> = SATURATED.iter().filter_map(|name| bench.row(name)).collect();
    let errors: Option<f64> =
        (!saturated.is_empty()).then(|| saturated.iter().map(|row| row.error_total() as f64).sum());
    add("zero errors at saturation", errors, " errors", &|v| v == 0.0);
    let outbox = bench.row("login_or_create");
    add(
        "outbox drain >= 2,000 emails/s",
        extra_f64(outbox, "drain_per_s"),
        "/s",
        &|v| v >= 2000.0,
    );
    // Time from LoginOrCreate's answer to the message reaching the transport, at half and three
    // quarters of login_or_create's peak, with each transport.
    for (load, limit_ms) in [(50, 1000.0), (75, 5000.0)] {
        for sink in ["file", "smtp"] {
            let row = bench.row(&format!("mail_latency_{sink}_{load}"));
            add(
                &format!(
                    "mail delay p99 <= {} s at {load}% of login_or_create ({sink})",
                    limit_ms / 1000.0
                ),
                extra_f64(row, "mail_delay_p99_ms"),
                " ms",
                &|v| v <= limit_ms,
            );
        }
    }
    let poll = bench.row("long_poll");
    add(
        "10,000 long polls idle < 1% CPU",
        extra_f64(poll, "idle_cpu_percent"),
        "%",
        &|v| v < 1.0,
    );
    add(
        "10,000 long polls < 100 MiB extra RSS",
        extra_f64(poll, "rss_delta_mib"),
        " MiB",
        &|v| v < 100.0,
    );
    let scale = bench.row("scale_verify");
    let users = extra_f64(scale, "users").unwrap_or(0.0);
    let at = if users > 0.0 {
        format!(" (measured at {users} users)")
    } else {
        String::new()
    };
    add(
        &format!("scale: RSS <= 300 MiB{at}"),
        extra_f64(scale, "rss_after_load_mib"),
        " MiB",
        &|v| v <= 300.0,
    );
    add(
        &format!("scale: cold start <= 2 s after a clean stop{at}"),
        extra_f64(scale, "cold_start_ms"),
        " ms",
        &|v| v <= 2000.0,
    );
    add(
        &format!("scale: cold start <= 2 s after a crash{at}"),
        extra_f64(scale, "crash_start_ms"),
        " ms",
        &|v| v <= 2000.0,
    );
    add(
        &format!("scale: verify within 20% of empty{at}"),
        extra_f64(scale, "verify_to_empty"),
        "x",
        &|v| v >= 0.8,
    );
    add(
        &format!("scale: disk <= 2 GiB{at}"),
        extra_f64(scale, "disk_mib"),
        " MiB",
        &|v| v <= 2048.0,
    );
    out
}

fn table(bench: &Bench) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | calls/s | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU us/call | RSS MiB | note |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---|---:|---:|---|\n");
    for row in &bench.rows {
        let errors = errors_text(row);
        out.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.1} | {:.0} | {} |\n",
            row.name,
            row.calls_per_s,
            row.p50_ms,
            row.p90_ms,
            row.p99_ms,
            row.max_ms,
            errors,
            row.cpu_us_per_call,
            row.rss_mib,
            row.note
        ));
    }
    if let Some(checks) = bench.extra.get("h2load").and_then(Value::as_object) {
        out.push_str("\nCross-check, same connections x streams, same server:\n\n");
        out.push_str("| call | rust generator calls/s | rust p50 ms | h2load calls/s | h2load mean ms | h2load max ms | h2load failed | h2load server CPU us/call |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for (name, check) in checks {
            out.push_str(&format!(
                "| {name} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1} | {} | {:.1} |\n",
                check["rust_calls_per_s"].as_f64().unwrap_or(0.0),
                check["rust_p50_ms"].as_f64().unwrap_or(0.0),
                check["calls_per_s"].as_f64().unwrap_or(0.0),
                check["mean_ms"].as_f64().unwrap_or(0.0),
                check["max_ms"].as_f64().unwrap_or(0.0),
                check["failed"].as_u64().unwrap_or(0) + check["errored"].as_u64().unwrap_or(0),
                check["cpu_us_per_call"].as_f64().unwrap_or(0.0),
            ));
        }
    }
    let ratios = ratios(bench);
    out.push_str("\nRatios (same run): ");
    let parts: Vec<String> = [
        "verify_to_health",
        "issue_to_health",
        "verify_to_reference",
        "issue_to_reference",
    ]
    .iter()
    .map(|key| {
        format!(
            "{key} = {}",
            ratios[*key].as_f64().map(|v| format!("{v}")).unwrap_or("-".into())
        )
    })
    .collect();
    out.push_str(&parts.join(", "));
    out.push_str("\n\nTargets (issue 8):\n\n| target | measured | met |\n|---|---:|---|\n");
    for target in targets(bench) {
        out.push_str(&target_line(&target));
    }
    out
}

/// PostgreSQL targets (the issue "PostgreSQL store and many replicas"), on a 2-core machine with
/// full durability.
const PG_CEILING_SHARE: f64 = 0.5;
const PG_HALF_PEAK_P99_MS: f64 = 20.0;
/// The closed-loop scenarios compared between 3 replicas and 1 (total calls/s); the first three are
/// judged.
const PG_COMPARED: [&str; 6] = [
    "issue",
    "verify",
    "login_or_create",
    "health",
    "authenticate_token",
    "authenticate_jwt",
];

fn pg_ratios(bench: &Bench) -> Value {
    let mut object = Map::new();
    // All the CPU one call takes: the replicas', PostgreSQL's and the load generator's (pgbench's).
    let total_cpu = |name: &str| -> Option<f64> {
        let row = bench.row(name)?;
        let db = extra_f64(Some(row), "postgres_cpu_us_per_call")?;
        let client = extra_f64(Some(row), "client_cpu_us_per_call")?;
        Some(row.cpu_us_per_call + db + client)
    };
    for call in ["verify", "issue"] {
        let ceiling = rate(bench, &format!("pgbench.{call}"));
        for replicas in &bench.settings.replicas {
            object.insert(
                format!("{call}_r{replicas}_to_pgbench"),
                json!(ratio(rate(bench, &format!("r{replicas}.{call}")), ceiling)),
            );
        }
        // The same by CPU: all the CPU one pgbench transaction takes over all one call takes. Every
        // figure here is CPU-bound on two cores, so this estimates the ratio of rates on an idle
        // machine. It is less sensitive than the rates to another process taking CPU in one window
        // and not in the other, not immune: contention raises the CPU per call too.
        for replicas in &bench.settings.replicas {
            object.insert(
                format!("{call}_r{replicas}_to_pgbench_by_cpu"),
                json!(ratio(
                    total_cpu(&format!("pgbench.{call}")),
                    total_cpu(&format!("r{replicas}.{call}"))
                )),
            );
        }
        // PostgreSQL's own CPU per call, the server's against pgbench's: what the server's way of
        // sending the same SQL costs the database.
        let db = |name: &str| extra_f64(bench.row(name), "postgres_cpu_us_per_call");
        object.insert(
            format!("{call}_r1_postgres_cpu_to_pgbench"),
            json!(ratio(db(&format!("r1.{call}")), db(&format!("pgbench.{call}")))),
        );
    }
    if let (Some(first), Some(last)) = (bench.settings.replicas.first(), bench.settings.replicas.last())
        && first != last
    {
        for name in PG_COMPARED {
            object.insert(
                format!("{name}_r{last}_to_r{first}"),
                json!(ratio(
                    rate(bench, &format!("r{last}.{name}")),
                    rate(bench, &format!("r{first}.{name}"))
                )),
            );
        }
        for name in &PG_COMPARED[..3] {
            object.insert(
                format!("{name}_r{last}_to_r{first}_by_cpu"),
                json!(ratio(
                    total_cpu(&format!("r{first}.{name}")),
                    total_cpu(&format!("r{last}.{name}"))
                )),
            );
        }
    }
    Value::Object(object)
}

/// What other processes took of the machine in the windows of `names`, when it was enough to
/// move a figure (10% or more in one of them).
fn others_note(bench: &Bench, names: &[String]) -> String {
    let most = names
        .iter()
        .filter_map(|name| extra_f64(bench.row(name), "other_processes_cpu_percent"))
        .fold(None, |most: Option<f64>, v| Some(most.map_or(v, |m| m.max(v))));
    match most {
        Some(percent) if percent >= 10.0 => {
            format!(" (other processes took up to {percent:.0}% of the machine)")
        }
        _ => String::new(),
    }
}

fn pg_targets(bench: &Bench) -> Vec<Target> {
    let ratios = pg_ratios(bench);
    let mut out = Vec::new();
    let mut add = |what: String, value: Option<f64>, unit: &str, context: String, met: &dyn Fn(f64) -> bool| {
        out.push(Target {
            what,
            value: value
                .map(|v| format!("{v}{unit}{context}"))
                .unwrap_or_else(|| "not measured".into()),
            met: value.map(met),
        });
    };
    let by_cpu = |key: String| {
        ratios[key]
            .as_f64()
            .map(|v| format!("; by CPU {v}"))
            .unwrap_or_default()
    };
    let replicas = bench.settings.replicas.clone();
    for call in ["verify", "issue"] {
        for n in &replicas {
            let names = [format!("r{n}.{call}"), format!("pgbench.{call}")];
            add(
                format!("{call} >= {PG_CEILING_SHARE} of its pgbench ceiling ({n} replica(s))"),
                ratios[format!("{call}_r{n}_to_pgbench")].as_f64(),
                "",
                by_cpu(format!("{call}_r{n}_to_pgbench_by_cpu")) + &others_note(bench, &names),
                &|v| v >= PG_CEILING_SHARE,
            );
        }
    }
    let saturated: Vec<&Row> = bench
        .rows
        .iter()
        .filter(|row| {
            SATURATED
                .iter()
                .any(|name| row.name.starts_with('r') && row.name.ends_with(&format!(".{name}")))
        })
        .collect();
    let errors: Option<f64> =
        (!saturated.is_empty()).then(|| saturated.iter().map(|row| row.error_total() as f64).sum());
    add(
        "zero errors at saturation (every pass)".into(),
        errors,
        " errors",
        String::new(),
        &|v| v == 0.0,
    );
    for n in &replicas {
        for call in ["issue", "verify"] {
            let name = format!("r{n}.{call}_half_peak");
            let p99 = bench.row(&name).map(|row| row.p99_ms);
            add(
                format!("{call} at half peak: p99 < {PG_HALF_PEAK_P99_MS} ms ({n} replica(s))"),
                p99,
                " ms",
                others_note(bench, &[name]),
                &|v| v < PG_HALF_PEAK_P99_MS,
            );
        }
    }
    if let (Some(first), Some(last)) = (replicas.first(), replicas.last())
        && first != last
    {
        for name in &PG_COMPARED[..3] {
            let names = [format!("r{first}.{name}"), format!("r{last}.{name}")];
            add(
                format!("{name}: {last} replicas no slower than {first} in total"),
                ratios[format!("{name}_r{last}_to_r{first}")].as_f64(),
                "x",
                by_cpu(format!("{name}_r{last}_to_r{first}_by_cpu")) + &others_note(bench, &names),
                &|v| v >= 1.0,
            );
        }
    }
    out
}

fn errors_text(row: &Row) -> String {
    if row.errors.is_empty() {
        "0".to_string()
    } else {
        row.errors
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn pg_table(bench: &Bench) -> String {
    let mut out = String::new();
    out.push_str("| scenario | replicas | calls/s | p50 ms | p90 ms | p99 ms | max ms | errors | latchkey CPU us/call | PostgreSQL CPU us/call | RSS MiB | other processes' CPU % | note |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|\n");
    for row in &bench.rows {
        let (name, replicas, latchkey_cpu, rss) = match row.name.split_once('.') {
            Some(("pgbench", script)) => (
                format!("pgbench {script}.sql"),
                "-".to_string(),
                "-".to_string(),
                "-".to_string(),
            ),
            Some((_, name)) => (
                name.to_string(),
                row.extra.get("replicas").map(Value::to_string).unwrap_or_default(),
                format!("{:.1}", row.cpu_us_per_call),
                format!("{:.0}", row.rss_mib),
            ),
            None => (row.name.clone(), String::new(), String::new(), String::new()),
        };
        let db = extra_f64(Some(row), "postgres_cpu_us_per_call")
            .map(|v| format!("{v:.1}"))
            .unwrap_or("-".into());
        let others = extra_f64(Some(row), "other_processes_cpu_percent")
            .map(|v| format!("{v:.0}"))
            .unwrap_or("-".into());
        out.push_str(&format!(
            "| {name} | {replicas} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {latchkey_cpu} | {db} | {rss} | {others} | {} |\n",
            row.calls_per_s,
            row.p50_ms,
            row.p90_ms,
            row.p99_ms,
            row.max_ms,
            errors_text(row),
            row.note
        ));
    }
    let ratios = pg_ratios(bench);
    out.push_str("\nRatios (same run): ");
    let parts: Vec<String> = ratios
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| {
            format!(
                "{key} = {}",
                value.as_f64().map(|v| format!("{v}")).unwrap_or("-".into())
            )
        })
        .collect();
    out.push_str(&parts.join(", "));
    if let Some(pg) = bench.extra.get("postgres") {
        let show = |key: &str| pg[key].as_str().unwrap_or("?").to_string();
        out.push_str(&format!(
            "\n\nPostgreSQL {}: fsync = {}, synchronous_commit = {}, full_page_writes = {}, shared_buffers = {}. \
             A CHECKPOINT before every measured window; the tables emptied (TRUNCATE) before each pass and each ceiling.",
            show("server_version"),
            show("fsync"),
            show("synchronous_commit"),
            show("full_page_writes"),
            show("shared_buffers"),
        ));
    }
    if let Some(passes) = bench.extra.get("passes").and_then(Value::as_object) {
        for (label, info) in passes {
            out.push_str(&format!(
                "\n{label}: {} connections x {} in flight, round-robin over the replicas; pool size per replica: {}.",
                info["connections"], info["in_flight_per_connection"], info["pool_size_per_replica"]
            ));
        }
    }
    if let Some(skipped) = bench.extra.get("skipped").and_then(Value::as_array) {
        out.push_str("\nNot run on PostgreSQL: ");
        let parts: Vec<String> = skipped
            .iter()
            .map(|s| {
                format!(
                    "{} ({})",
                    s["scenario"].as_str().unwrap_or(""),
                    s["why"].as_str().unwrap_or("")
                )
            })
            .collect();
        out.push_str(&parts.join("; "));
        out.push('.');
    }
    out.push_str("\n\nTargets (PostgreSQL store and many replicas):\n\n| target | measured | met |\n|---|---:|---|\n");
    for target in pg_targets(bench) {
        out.push_str(&target_line(&target));
    }
    out
}

fn target_line(target: &Target) -> String {
    let met = match target.met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "-",
    };
    format!("| {} | {} | {} |\n", target.what, target.value, met)
}

/// Prints the table and writes latest.json, a dated copy and latest.md into `dir`.
pub fn write(bench: &Bench, repo: &Path, dir: &Path, started: &str, elapsed_s: f64) -> std::io::Result<()> {
    let postgres = bench.settings.store == Store::Postgres;
    let text = if postgres { pg_table(bench) } else { table(bench) };
    println!("\n{text}");
    if !bench.problems.is_empty() {
        println!("Problems seen:");
        for problem in &bench.problems {
            println!("- {problem}");
        }
    }
    let mut scenarios = Map::new();
    for row in &bench.rows {
        scenarios.insert(row.name.clone(), row.to_json());
    }
    let s = &bench.settings;
    let targets: Vec<Value> = if postgres { pg_targets(bench) } else { targets(bench) }
        .into_iter()
        .map(|t| json!({"target": t.what, "measured": t.value, "met": t.met}))
        .collect();
    let mode = match (s.quick, postgres) {
        (true, false) => "quick",
        (false, false) => "full",
        (true, true) => "postgres-quick",
        (false, true) => "postgres-full",
    };
    let mut report = json!({
        "mode": mode,
        "started_utc": started,
        "elapsed_s": round(elapsed_s, 1),
        "machine": machine(repo),
        "settings": {
            "connections": s.connections,
            "in_flight_per_connection": s.per_connection,
            "warmup_s": s.warmup.as_secs_f64(),
            "duration_s": s.duration.as_secs_f64(),
            "long_poll_waiters": s.long_poll_waiters,
            "scale_users": s.scale_users,
            "durability": if postgres {
                "PostgreSQL: fsync, synchronous_commit and full_page_writes on (see postgres)"
            } else {
                "fsync"
            },
            "mail_sink": "file transport",
            "profiled": s.perf_dir.is_some(),
        },
        "scenarios": scenarios,
        "cross_check": bench.extra.get("h2load").cloned().unwrap_or(Value::Null),
        "server": bench.extra.get("server").cloned().unwrap_or(Value::Null),
        "ratios": if postgres { pg_ratios(bench) } else { ratios(bench) },
        "reference": {"verify_per_s": REFERENCE_VERIFY, "issue_per_s": REFERENCE_ISSUE},
        "targets": targets,
        "problems": bench.problems,
    });
    if postgres {
        report["settings"]["store"] = json!("postgres");
        report["settings"]["replicas"] = json!(s.replicas);
        report["settings"]["pgbench_clients"] = json!(s.pgbench_clients);
        report["settings"]["pgbench_threads"] = json!(s.pgbench_threads);
        for key in ["passes", "postgres", "skipped"] {
            report[key] = bench.extra.get(key).cloned().unwrap_or(Value::Null);
        }
    }
    std::fs::create_dir_all(dir)?;
    let pretty = serde_json::to_string_pretty(&report).unwrap_or_default();
    // The PostgreSQL run keeps its own latest files: latest.json and latest.md stay the sled run's.
    let latest = if postgres { "latest-postgres" } else { "latest" };
    std::fs::write(dir.join(format!("{latest}.json")), &pretty)?;
    std::fs::write(dir.join(format!("{started}-{mode}.json")), &pretty)?;
    std::fs::write(
        dir.join(format!("{latest}.md")),
        format!("Run {started} ({mode}).\n\n{text}"),
    )?;
    Ok(())
}
