//! The independent cross-check: nghttp2's h2load posting a prebuilt gRPC body, with the server's
//! CPU read from /proc over its measured part. h2load sees HTTP status only; a gRPC error travels
//! in trailers with HTTP 200, so the body is checked with the Rust client first.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::bench::round;
use crate::server::Probe;

pub struct Run {
    pub url: String,
    pub body_file: PathBuf,
    pub header: Option<String>,
    pub connections: usize,
    pub streams: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Debug, Default)]
pub struct H2Result {
    pub calls_per_s: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub cpu_us_per_call: f64,
    pub command: String,
}

impl H2Result {
    pub fn to_json(&self) -> Value {
        json!({
            "calls_per_s": round(self.calls_per_s, 1),
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errored": self.errored,
            "min_ms": round(self.min_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "cpu_us_per_call": round(self.cpu_us_per_call, 1),
            "command": self.command,
        })
    }
}

pub async fn run(run: Run, server: Probe) -> Result<H2Result, String> {
    let mut args: Vec<String> = vec![
        "-D".into(),
        format!("{}", run.duration.as_secs().max(1)),
        "--warm-up-time".into(),
        format!("{}", run.warmup.as_secs().max(1)),
        "-c".into(),
        run.connections.to_string(),
        "-m".into(),
        run.streams.to_string(),
        "-t".into(),
        "1".into(),
        "-H".into(),
        "content-type: application/grpc".into(),
        "-H".into(),
        "te: trailers".into(),
    ];
    if let Some(header) = &run.header {
        args.push("-H".into());
        args.push(header.clone());
    }
    args.push("-d".into());
    args.push(run.body_file.display().to_string());
    args.push(run.url.clone());
    let shown: Vec<String> = args
        .iter()
        .map(|arg| {
            if arg.starts_with("authorization:") {
                "'authorization: Bearer $KEY'".to_string()
            } else if arg.contains(' ') {
                format!("'{arg}'")
            } else {
                arg.clone()
            }
        })
        .collect();
    let command = format!("h2load {}", shown.join(" "));
    // Server CPU over the measured part only: read it when the warm-up ends and when h2load ends.
    let warmup = run.warmup.max(Duration::from_secs(1));
    let sampled = server.clone();
    let sampler = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        (sampled.cpu_seconds(), std::time::Instant::now())
    });
    let output = tokio::task::spawn_blocking(move || Command::new("h2load").args(&args).output())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot run h2load (apt-get install nghttp2-client): {e}"))?;
    let cpu_end = server.cpu_seconds();
    let (cpu_start, _) = sampler.await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "h2load failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut result = parse(&text).ok_or_else(|| format!("cannot read h2load's output:\n{text}"))?;
    let calls = result.succeeded + result.failed;
    if calls > 0 {
        result.cpu_us_per_call = (cpu_end - cpu_start) * 1e6 / calls as f64;
    }
    result.command = command;
    Ok(result)
}

/// Reads "finished in 5.00s, 123.45 req/s, ...", "requests: N total, ... N succeeded, N failed,
/// N errored, ..." and "time for request: min max mean sd +/- sd".
fn parse(text: &str) -> Option<H2Result> {
    let mut result = H2Result::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in") {
            let rate = rest.split(',').nth(1)?.trim().strip_suffix("req/s")?.trim();
            result.calls_per_s = rate.parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("requests:") {
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(count), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let count: u64 = count.parse().unwrap_or(0);
                match what {
                    "succeeded" => result.succeeded = count,
                    "failed" => result.failed = count,
                    "errored" => result.errored = count,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            let values: Vec<f64> = rest.split_whitespace().take(3).filter_map(duration_ms).collect();
            if let [min, max, mean] = values[..] {
                result.min_ms = min;
                result.max_ms = max;
                result.mean_ms = mean;
            }
        }
    }
    Some(result)
}

/// "102us", "12.34ms", "1.20s" in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    if let Some(value) = text.strip_suffix("us") {
        value.parse::<f64>().ok().map(|v| v / 1000.0)
    } else if let Some(value) = text.strip_suffix("ms") {
        value.parse().ok()
    } else if let Some(value) = text.strip_suffix('s') {
        value.parse::<f64>().ok().map(|v| v * 1000.0)
    } else {
        None
    }
}
