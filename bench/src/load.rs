//! The load generator: closed-loop (a fixed number of calls in flight on each connection, as fast
//! as answers come back) and open-loop (calls started on a fixed schedule, latency counted from
//! the scheduled start so that a slow server cannot hide its queueing). Latency goes into
//! hdrhistograms in microseconds; server CPU comes from /proc over the same window.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;

use crate::server::{Probe, RssWatch, machine_busy_seconds, others_percent};

pub type CallFuture = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// Makes call number `n` on a connection; `None` when there is nothing left to call (a pool of
/// pre-issued tokens ran out, or a batch is done).
pub type Op = Arc<dyn Fn(Channel, u64) -> Option<CallFuture> + Send + Sync>;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 300_000_000, 3).expect("histogram bounds")
}

/// Errors by gRPC code, with the first message seen for each.
#[derive(Default, Clone, Debug)]
pub struct Errors {
    pub by_code: BTreeMap<String, u64>,
    pub samples: BTreeMap<String, String>,
}

impl Errors {
    pub fn add(&mut self, status: &Status) {
        let code = format!("{:?}", status.code());
        *self.by_code.entry(code.clone()).or_default() += 1;
        self.samples
            .entry(code)
            .or_insert_with(|| status.message().chars().take(200).collect());
    }

    pub fn merge(&mut self, other: &Errors) {
        for (code, count) in &other.by_code {
            *self.by_code.entry(code.clone()).or_default() += count;
        }
        for (code, sample) in &other.samples {
            self.samples.entry(code.clone()).or_insert_with(|| sample.clone());
        }
    }

    pub fn total(&self) -> u64 {
        self.by_code.values().sum()
    }
}

/// One measured window.
#[derive(Clone, Debug)]
pub struct Measured {
    /// Calls that succeeded inside the window.
    pub calls: u64,
    pub seconds: f64,
    pub latency_us: Histogram<u64>,
    /// Open loop only: latency from the actual send, without queueing in the generator.
    pub service_us: Option<Histogram<u64>>,
    pub errors: Errors,
    /// Errors during warm-up or after the window (not in `errors`).
    pub errors_outside: u64,
    pub server_cpu_s: f64,
    /// PostgreSQL's CPU over the window, when the store is a database the benchmark started.
    pub db_cpu_s: Option<f64>,
    pub client_cpu_s: f64,
    /// Percent of the machine's cores other processes used during the window.
    pub others_cpu_percent: f64,
    pub rss_peak_kib: u64,
    /// The op ran out of work before the window ended; `seconds` is then shorter.
    pub exhausted: bool,
    /// Open loop only: calls not started because too many were in flight.
    pub dropped: u64,
    pub in_flight: usize,
}

impl Measured {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.calls as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn cpu_us_per_call(&self) -> f64 {
        let done = self.calls + self.errors.total();
        if done == 0 {
            0.0
        } else {
            self.server_cpu_s * 1e6 / done as f64
        }
    }

    pub fn db_cpu_us_per_call(&self) -> Option<f64> {
        let done = self.calls + self.errors.total();
        self.db_cpu_s
            .map(|cpu| if done == 0 { 0.0 } else { cpu * 1e6 / done as f64 })
    }

    pub fn client_cpu_us_per_call(&self) -> f64 {
        let done = self.calls + self.errors.total();
        if done == 0 {
            0.0
        } else {
            self.client_cpu_s * 1e6 / done as f64
        }
    }
}

pub fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

pub fn max_ms(histogram: &Histogram<u64>) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.max() as f64 / 1000.0
}

/// Window boundaries and the /proc readings at its start.
struct Window {
    from: Instant,
    end: Instant,
}

impl Window {
    /// (now, the window that opens after `warmup` and lasts `duration`).
    fn starting_now(warmup: Duration, duration: Duration) -> (Instant, Self) {
        let started = Instant::now();
        let from = started + warmup;
        (
            started,
            Self {
                from,
                end: from + duration,
            },
        )
    }
}

/// CPU over a window, in seconds: the server's, PostgreSQL's (when probed) and this process's.
struct WindowCpu {
    server: f64,
    db: Option<f64>,
    client: f64,
    seconds: f64,
    /// Percent of the machine's cores that other processes used (another build, another test).
    others_percent: f64,
}

/// Reads CPU at the window's start and at its end (or when every worker has stopped).
async fn watch_window(window: &Window, server: Probe, rss: &RssWatch, running: Arc<AtomicUsize>) -> WindowCpu {
    tokio::time::sleep_until(window.from).await;
    let client = Probe::this_process();
    let (server0, db0, client0) = (server.cpu_seconds(), server.db_cpu_seconds(), client.cpu_seconds());
    let (busy0, started) = (machine_busy_seconds(), Instant::now());
    rss.reset(&server);
    loop {
        let now = Instant::now();
        if now >= window.end || running.load(Ordering::Relaxed) == 0 {
            let at = now.min(window.end);
            let server_cpu = server.cpu_seconds() - server0;
            let client_cpu = client.cpu_seconds() - client0;
            let db = server.db_cpu_seconds().zip(db0).map(|(end, start)| end - start);
            let busy = machine_busy_seconds() - busy0;
            let ours = server_cpu + client_cpu + db.unwrap_or(0.0);
            return WindowCpu {
                server: server_cpu,
                db,
                client: client_cpu,
                seconds: (at - window.from).as_secs_f64(),
                others_percent: others_percent(busy, ours, started.elapsed().as_secs_f64()),
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Closed loop: `connections × per_connection` workers, each making one call at a time, for
/// `warmup` then `duration`. With `duration` very long and an op that runs out, this is a batch.
pub async fn closed(
    channels: Vec<Channel>,
    per_connection: usize,
    warmup: Duration,
    duration: Duration,
    server: Probe,
    rss: &RssWatch,
    op: Op,
) -> Measured {
    let (_, window) = Window::starting_now(warmup, duration);
    let counter = Arc::new(AtomicU64::new(0));
    let exhausted = Arc::new(AtomicBool::new(false));
    let workers = channels.len() * per_connection;
    let running = Arc::new(AtomicUsize::new(workers));
    let mut handles = Vec::with_capacity(workers);
    for worker in 0..workers {
        let channel = channels[worker % channels.len()].clone();
        let (counter, exhausted, running, op) = (counter.clone(), exhausted.clone(), running.clone(), op.clone());
        let (from, end) = (window.from, window.end);
        handles.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut errors = Errors::default();
            let mut outside = 0u64;
            let mut last_done = from;
            while Instant::now() < end {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let Some(call) = op(channel.clone(), n) else {
                    exhausted.store(true, Ordering::Relaxed);
                    break;
                };
                let sent = Instant::now();
                let result = call.await;
                let done = Instant::now();
                let inside = sent >= from && done <= end;
                match result {
                    Ok(()) if inside => {
                        let _ = latency.record((done - sent).as_micros().max(1) as u64);
                        last_done = last_done.max(done);
                    }
                    Err(status) if inside => errors.add(&status),
                    Err(_) => outside += 1,
                    Ok(()) => {}
                }
            }
            running.fetch_sub(1, Ordering::Relaxed);
            (latency, errors, outside, last_done)
        }));
    }
    let cpu = watch_window(&window, server, rss, running).await;
    let mut latency_us = histogram();
    let mut errors = Errors::default();
    let mut errors_outside = 0;
    let mut last_done = window.from;
    for handle in handles {
        let (h, e, o, d) = handle.await.expect("a load worker panicked");
        latency_us.add(&h).expect("histogram merge");
        errors.merge(&e);
        errors_outside += o;
        last_done = last_done.max(d);
    }
    let exhausted = exhausted.load(Ordering::Relaxed);
    let seconds = if exhausted {
        (last_done - window.from).as_secs_f64().min(cpu.seconds.max(0.001))
    } else {
        duration.as_secs_f64()
    };
    Measured {
        calls: latency_us.len(),
        seconds,
        latency_us,
        service_us: None,
        errors,
        errors_outside,
        server_cpu_s: cpu.server,
        db_cpu_s: cpu.db,
        client_cpu_s: cpu.client,
        others_cpu_percent: cpu.others_percent,
        rss_peak_kib: rss.peak_kib(),
        exhausted,
        dropped: 0,
        in_flight: workers,
    }
}

/// Open loop at `rate` calls/s spread over the connections, for `warmup` then `duration`. Latency
/// is counted from each call's scheduled start. At most `max_in_flight` calls are outstanding;
/// calls beyond that are dropped and counted.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    channels: Vec<Channel>,
    rate: f64,
    max_in_flight: usize,
    warmup: Duration,
    duration: Duration,
    server: Probe,
    rss: &RssWatch,
    op: Op,
) -> Measured {
    let (started, window) = Window::starting_now(warmup, duration);
    let running = Arc::new(AtomicUsize::new(1));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (results, mut collected) =
        tokio::sync::mpsc::unbounded_channel::<(Instant, Instant, Instant, Result<(), Status>)>();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let scheduler = {
        let (running, in_flight, op) = (running.clone(), in_flight.clone(), op.clone());
        let (window_from, end) = (window.from, window.end);
        tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut dropped_inside = 0u64;
            let mut exhausted = false;
            'schedule: loop {
                let due = started + interval.mul_f64(n as f64);
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                // Start every call that is due by now (the timer is coarser than the interval).
                let now = Instant::now();
                loop {
                    let due = started + interval.mul_f64(n as f64);
                    if due > now || due >= end {
                        break;
                    }
                    if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                        if due >= window_from {
                            dropped_inside += 1;
                        }
                        n += 1;
                        continue;
                    }
                    let channel = channels[(n as usize) % channels.len()].clone();
                    let Some(call) = op(channel, n) else {
                        exhausted = true;
                        break 'schedule;
                    };
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let (results, in_flight) = (results.clone(), in_flight.clone());
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let result = call.await;
                        let done = Instant::now();
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                        let _ = results.send((due, sent, done, result));
                    });
                    n += 1;
                }
            }
            running.store(0, Ordering::Relaxed);
            (dropped_inside, exhausted)
        })
    };
    let cpu = watch_window(&window, server, rss, running).await;
    let (dropped, exhausted) = scheduler.await.expect("the scheduler panicked");
    // Wait for the calls still in flight (bounded by the call timeout).
    let mut latency_us = histogram();
    let mut service_us = histogram();
    let mut errors = Errors::default();
    let mut errors_outside = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout(Duration::from_millis(50), collected.recv()).await;
        match next {
            Ok(Some((due, sent, done, result))) => {
                let inside = due >= window.from && due < window.end;
                match result {
                    Ok(()) if inside => {
                        let _ = latency_us.record((done - due).as_micros().max(1) as u64);
                        let _ = service_us.record((done - sent).as_micros().max(1) as u64);
                    }
                    Err(status) if inside => errors.add(&status),
                    Err(_) => errors_outside += 1,
                    Ok(()) => {}
                }
            }
            Ok(None) => break,
            Err(_) => {
                if in_flight.load(Ordering::Relaxed) == 0 || Instant::now() > deadline {
                    break;
                }
            }
        }
    }
    Measured {
        calls: latency_us.len(),
        seconds: if exhausted { cpu.seconds } else { duration.as_secs_f64() },
        latency_us,
        service_us: Some(service_us),
        errors,
        errors_outside,
        server_cpu_s: cpu.server,
        db_cpu_s: cpu.db,
        client_cpu_s: cpu.client,
        others_cpu_percent: cpu.others_percent,
        rss_peak_kib: rss.peak_kib(),
        exhausted,
        dropped,
        in_flight: max_in_flight,
    }
}
