//! The server under test: starts the release binary as a child on free loopback ports, waits for
//! SERVING, stops it with SIGTERM, and reads its CPU time and memory from /proc.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// How to start the server: the binary, its config file, where its logs go, and environment
/// variables set on top of the inherited ones (config overrides such as
/// `LATCHKEY_STORE__POSTGRES__POOL_SIZE`).
#[derive(Clone, Debug)]
pub struct ServerSpec {
    pub binary: PathBuf,
    pub config: PathBuf,
    pub log_dir: PathBuf,
    pub env: Vec<(String, String)>,
}

pub struct Server {
    child: Child,
    pub pid: u32,
    pub url: String,
    /// The HTTP port (`metrics_listen`): `/metrics` when the server has it.
    pub http_address: String,
    pub log: PathBuf,
}

/// What a stop took and how the process ended.
pub struct Stopped {
    pub took: Duration,
    pub exit_code: Option<i32>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Starts the server on `data_dir` and returns once health says SERVING, with the time from
    /// spawn to SERVING.
    pub async fn start(spec: &ServerSpec, data_dir: &Path, label: &str) -> Result<(Self, Duration), String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let http_port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let log = spec.log_dir.join(format!("server-{label}.log"));
        let log_file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let started = Instant::now();
        let child = Command::new(&spec.binary)
            .arg("serve")
            .arg("--config")
            .arg(&spec.config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", spec.binary.display()))?;
        let mut server = Server {
            pid: child.id(),
            child,
            url: format!("http://127.0.0.1:{port}"),
            http_address: format!("127.0.0.1:{http_port}"),
            log,
        };
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "the server exited ({status}) before SERVING; log:\n{}",
                    server.log_tail(20)
                ));
            }
            if server.serving().await {
                return Ok((server, started.elapsed()));
            }
            if Instant::now() > deadline {
                let _ = server.child.kill();
                return Err(format!("not SERVING after 120 s; log:\n{}", server.log_tail(20)));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn serving(&self) -> bool {
        let Ok(endpoint) = Endpoint::from_shared(self.url.clone()) else {
            return false;
        };
        let Ok(channel) = endpoint.connect_timeout(Duration::from_millis(200)).connect().await else {
            return false;
        };
        health_check(channel).await == Some(ServingStatus::Serving)
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 60 s).
    pub async fn stop(mut self) -> Stopped {
        let started = Instant::now();
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Stopped {
                    took: started.elapsed(),
                    exit_code: status.code(),
                };
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                let status = self.child.wait().ok();
                return Stopped {
                    took: started.elapsed(),
                    exit_code: status.and_then(|s| s.code()),
                };
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn probe(&self) -> Probe {
        Probe::of(self.pid)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Log lines at WARN or ERROR (text or JSON format), for the report.
    pub fn log_problems(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|line| {
                line.contains(" WARN ")
                    || line.contains(" ERROR ")
                    || line.contains("\"level\":\"WARN\"")
                    || line.contains("\"level\":\"ERROR\"")
            })
            .map(str::to_string)
            .collect()
    }
}

impl Server {
    /// Prometheus figures from `/metrics`, summed over labels, by metric name (`_total` dropped).
    /// None when the server has no such endpoint.
    pub fn metrics(&self) -> Option<HashMap<String, f64>> {
        scrape_metrics(&self.http_address)
    }
}

/// `/metrics` of the server at `http_address`, each series summed over its labels (`_total`
/// dropped from counters' names).
pub fn scrape_metrics(http_address: &str) -> Option<HashMap<String, f64>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http_address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {http_address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    let mut figures = HashMap::new();
    for line in body.lines().filter(|line| !line.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name).trim();
        let name = name.strip_suffix("_total").unwrap_or(name);
        if let Ok(value) = value.trim().parse::<f64>() {
            *figures.entry(name.to_string()).or_default() += value;
        }
    }
    Some(figures)
}

pub async fn health_check(channel: Channel) -> Option<ServingStatus> {
    let mut client = HealthClient::new(channel);
    let request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    let response = client.check(request).await.ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// Reads CPU time and memory from /proc: of the server's processes (one, or every replica; pid 0
/// means this process), and of PostgreSQL when the store is a database this benchmark started.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub pids: Vec<u32>,
    /// The postmaster's pid: PostgreSQL's CPU is its own, its live children's (backends,
    /// checkpointer, WAL writer, autovacuum) and its reaped children's.
    pub postgres: Option<u32>,
}

pub fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn proc_path(pid: u32, file: &str) -> String {
    if pid == 0 {
        format!("/proc/self/{file}")
    } else {
        format!("/proc/{pid}/{file}")
    }
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces): `[0]` is the
/// state (field 3), `[1]` the parent pid, `[11..=14]` utime, stime, cutime, cstime in ticks.
fn stat_fields(pid: u32) -> Vec<u64> {
    let Ok(stat) = std::fs::read_to_string(proc_path(pid, "stat")) else {
        return Vec::new();
    };
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after
        .split_whitespace()
        .map(|field| field.parse::<u64>().unwrap_or(0))
        .collect()
}

fn ticks(fields: &[u64], from: usize, to: usize) -> f64 {
    fields.get(from..=to).map(|f| f.iter().sum::<u64>()).unwrap_or(0) as f64 / clock_ticks_per_second()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(proc_path(pid, "status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Probe {
    pub fn of(pid: u32) -> Self {
        Probe {
            pids: vec![pid],
            postgres: None,
        }
    }

    pub fn this_process() -> Self {
        Probe::of(0)
    }

    /// utime + stime of every thread of every process, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids.iter().map(|&pid| ticks(&stat_fields(pid), 11, 12)).sum()
    }

    /// PostgreSQL's CPU in seconds (None without a database): the postmaster's own and reaped
    /// children's time plus that of its live children.
    pub fn db_cpu_seconds(&self) -> Option<f64> {
        let postmaster = self.postgres?;
        let mut total = ticks(&stat_fields(postmaster), 11, 14);
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            let fields = stat_fields(pid);
            if fields.get(1) == Some(&u64::from(postmaster)) {
                total += ticks(&fields, 11, 12);
            }
        }
        Some(total)
    }

    /// VmRSS summed over the processes.
    pub fn rss_kib(&self) -> u64 {
        self.pids.iter().map(|&pid| status_kib(pid, "VmRSS:")).sum()
    }

    /// The peak resident set over each process's life, summed.
    pub fn hwm_kib(&self) -> u64 {
        self.pids.iter().map(|&pid| status_kib(pid, "VmHWM:")).sum()
    }
}

/// CPU time the whole machine spent busy (every core: user, nice, system, irq, softirq, steal),
/// in seconds, from /proc/stat.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return 0.0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    busy as f64 / clock_ticks_per_second()
}

/// The share of the machine (percent of all cores) that other processes used over `seconds`,
/// given the machine's busy time and the CPU of the processes under test over the same span.
pub fn others_percent(machine_busy: f64, ours: f64, seconds: f64) -> f64 {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    ((machine_busy - ours).max(0.0) / (seconds.max(0.001) * cores)) * 100.0
}

/// Samples the server's VmRSS (summed over replicas) every 20 ms and keeps the largest value since
/// the last reset.
pub struct RssWatch {
    peak: Arc<AtomicU64>,
    probe: Arc<Mutex<Probe>>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    pub fn start(probe: Probe) -> Self {
        let watch = RssWatch {
            peak: Arc::new(AtomicU64::new(probe.rss_kib())),
            probe: Arc::new(Mutex::new(probe)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (peak, probe, stop) = (watch.peak.clone(), watch.probe.clone(), watch.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let current = probe.lock().expect("probe lock").clone();
                peak.fetch_max(current.rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        watch
    }

    /// Starts a new peak for `probe`'s processes (which may be new servers).
    pub fn reset(&self, probe: &Probe) {
        *self.probe.lock().expect("probe lock") = probe.clone();
        self.peak.store(probe.rss_kib(), Ordering::Relaxed);
    }

    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// (apparent bytes, allocated bytes) of every file under `dir`.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                apparent += meta.len();
                allocated += meta.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}
