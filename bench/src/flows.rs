//! Scenarios with more than one step: LoginOrCreate with the outbox drain, 10,000 long polls
//! answered by clicks, and the store at scale (load, restart, verify).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::api::pb::{self, poll_session_response::Status as PollStatus};
use crate::api::{Api, PasswordlessClient};
use crate::bench::{Bench, Row, TokenPool, mib, new_email, round, store_figures};
use crate::load::{self, CallFuture, Errors, Measured, Op, histogram, max_ms, ms};
use crate::mail::{Mailbox, count_eml};
use crate::server::{Server, disk_usage};
use crate::unary::{issue_op, verify_op};

/// Runs `op` exactly `count` times (or until it runs out), as fast as the shape allows.
pub async fn batch(bench: &Bench, channels: Vec<Channel>, per_connection: usize, count: u64, op: Op) -> Measured {
    let limited: Op = Arc::new(move |channel, n| if n < count { op(channel, n) } else { None });
    let probe = bench.probe();
    load::closed(
        channels,
        per_connection,
        Duration::ZERO,
        Duration::from_secs(24 * 3600),
        probe,
        &bench.rss,
        limited,
    )
    .await
}

/// Waits until `condition` holds, checking every `every`; false after `limit`.
pub(crate) async fn wait_for(limit: Duration, every: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

impl Bench {
    /// LoginOrCreate for new emails, closed loop; then how fast the mail worker writes the
    /// `.eml` files, during the load and alone once the load stops.
    pub async fn login_or_create(&mut self) {
        self.settle();
        let mail_dir = self.settings.mail_dir.clone();
        let before = count_eml(&mail_dir);
        let accepted = Arc::new(AtomicU64::new(0));
        let op: Op = {
            let (api, accepted) = (self.api.clone(), accepted.clone());
            Arc::new(move |channel: Channel, _n| {
                let (api, accepted) = (api.clone(), accepted.clone());
                Some(Box::pin(async move {
                    let mut client = PasswordlessClient::new(channel);
                    let request = pb::LoginOrCreateRequest {
                        email: new_email("loc"),
                        ..Default::default()
                    };
                    client.login_or_create(api.request(request)).await?;
                    accepted.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }) as CallFuture)
            })
        };
        let (warmup, duration) = (self.settings.warmup, self.settings.duration);
        let counter = {
            let mail_dir = mail_dir.clone();
            tokio::spawn(async move {
                tokio::time::sleep(warmup).await;
                let start = count_eml(&mail_dir);
                tokio::time::sleep(duration).await;
                (start, count_eml(&mail_dir))
            })
        };
        let probe = self.probe();
        let metrics_before = self.server().metrics();
        let measured = load::closed(
            self.channels(),
            self.settings.per_connection,
            warmup,
            duration,
            probe,
            &self.rss,
            op,
        )
        .await;
        let metrics_after = self.server().metrics();
        let (window_start, window_end) = counter.await.unwrap_or((0, 0));
        let loop_end = Instant::now();
        let total = accepted.load(Ordering::Relaxed) as usize;
        let backlog = (before + total).saturating_sub(count_eml(&mail_dir));
        let drained = wait_for(Duration::from_secs(600), Duration::from_millis(100), || {
            count_eml(&mail_dir) >= before + total
        })
        .await;
        let drain_seconds = loop_end.elapsed().as_secs_f64();
        let mut row = Row::from_measured("login_or_create", &measured);
        row.extra.extend(store_figures(
            &metrics_before,
            &metrics_after,
            (warmup + duration).as_secs_f64(),
        ));
        let delivered_under_load = window_end.saturating_sub(window_start) as f64 / duration.as_secs_f64();
        let drain_rate = if drain_seconds > 0.05 && backlog > 0 {
            backlog as f64 / drain_seconds
        } else {
            delivered_under_load
        };
        row.extra.insert("accepted_total".into(), json!(total));
        row.extra.insert(
            "delivered_per_s_under_load".into(),
            json!(round(delivered_under_load, 1)),
        );
        row.extra.insert("backlog_at_load_end".into(), json!(backlog));
        row.extra
            .insert("outbox_empty_after_s".into(), json!(round(drain_seconds, 2)));
        row.extra.insert("drain_per_s".into(), json!(round(drain_rate, 1)));
        row.extra.insert("drained".into(), json!(drained));
        row.extra
            .insert("mail_sink".into(), json!("file transport (.eml files, counted)"));
        row.note = format!(
            "delivered {delivered_under_load:.0}/s under load; backlog {backlog} drained at {drain_rate:.0}/s, outbox empty {drain_seconds:.1} s after load"
        );
        if !drained {
            self.problems.push(format!(
                "login_or_create: outbox not empty 600 s after the load ({} of {total} delivered)",
                count_eml(&mail_dir).saturating_sub(before)
            ));
        }
        self.push(row);
    }

    /// `waiters` enchanted links sent, their emails read, one PollSession(wait 30 s) each held
    /// open, the server watched while idle, then every right link clicked.
    pub async fn long_poll(&mut self) {
        let waiters = self.settings.long_poll_waiters;
        let mail_dir = self.settings.mail_dir.clone();
        // 100 streams per connection stays under the server's limits.max_concurrent_streams (128).
        let connections = waiters.div_ceil(100).max(1);
        let api = match Api::connect(&self.api.urls, &self.settings.api_key, connections).await {
            Ok(api) => Arc::new(api),
            Err(error) => {
                self.problems.push(format!("long_poll: {error}"));
                return;
            }
        };
        let channels: Vec<Channel> = (0..connections).map(|i| api.channel(i)).collect();

        // 1. Send the enchanted links.
        let sent: Arc<Mutex<Vec<pb::SendEnchantedLinkResponse>>> = Arc::default();
        let op: Op = {
            let (api, sent) = (api.clone(), sent.clone());
            Arc::new(move |channel: Channel, _n| {
                let (api, sent) = (api.clone(), sent.clone());
                Some(Box::pin(async move {
                    let mut client = PasswordlessClient::new(channel);
                    let request = pb::SendEnchantedLinkRequest {
                        login_id: new_email("poll"),
                        ..Default::default()
                    };
                    let response = client.send_enchanted_link(api.request(request)).await?.into_inner();
                    sent.lock().expect("sent lock").push(response);
                    Ok(())
                }) as CallFuture)
            })
        };
        let sending = batch(self, self.channels(), self.settings.per_connection, waiters as u64, op).await;
        let sent = std::mem::take(&mut *sent.lock().expect("sent lock"));
        eprintln!(
            "  (sent {} enchanted links at {:.0}/s; reading their emails)",
            sent.len(),
            sending.rate()
        );

        // 2. Read the right link of each email.
        let wanted: HashMap<String, String> = sent.iter().map(|r| (r.email_id.clone(), r.link_id.clone())).collect();
        let mut tokens: HashMap<String, String> = HashMap::new();
        let mut mailbox = Mailbox::default();
        let mail_started = Instant::now();
        wait_for(Duration::from_secs(300), Duration::from_millis(200), || {
            tokens.extend(mailbox.enchanted_tokens(&mail_dir, &wanted));
            tokens.len() >= wanted.len()
        })
        .await;
        let mail_seconds = mail_started.elapsed().as_secs_f64();
        if tokens.len() < wanted.len() {
            self.problems.push(format!(
                "long_poll: only {} of {} enchanted emails found after 300 s",
                tokens.len(),
                wanted.len()
            ));
        }
        let attempts: Vec<(String, String)> = sent
            .iter()
            .filter_map(|r| tokens.get(&r.email_id).map(|t| (r.pending_ref.clone(), t.clone())))
            .collect();
        let waiting = attempts.len();

        // 3. Hold one long poll per attempt.
        let server = self.probe();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = server.rss_kib();
        let base = Instant::now();
        let mut polls = Vec::with_capacity(waiting);
        for (i, (pending_ref, _)) in attempts.iter().enumerate() {
            let channel = channels[i % channels.len()].clone();
            let (api, pending_ref) = (api.clone(), pending_ref.clone());
            polls.push(tokio::spawn(async move {
                let mut client = PasswordlessClient::new(channel);
                let request = pb::PollSessionRequest {
                    pending_ref,
                    wait_seconds: 30,
                    client: None,
                };
                let result = client.poll_session(api.request(request)).await;
                (Instant::now(), result.map(|r| r.into_inner().status))
            }));
        }
        // Let every poll reach the server and park (the server counts them in /metrics when it
        // has that endpoint), then watch the idle server.
        let server_handle = self.server.as_ref().expect("a running server");
        let has_gauge = server_handle
            .metrics()
            .is_some_and(|m| m.contains_key("latchkey_long_polls_live"));
        if has_gauge {
            wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
                server_handle
                    .metrics()
                    .and_then(|m| m.get("latchkey_long_polls_live").copied())
                    .unwrap_or(0.0) as usize
                    >= waiting
            })
            .await;
        } else {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let parked_after = base.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let live_polls = server_handle
            .metrics()
            .and_then(|m| m.get("latchkey_long_polls_live").copied());
        let idle = if self.settings.quick {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(5)
        };
        let cpu_start = server.cpu_seconds();
        tokio::time::sleep(idle).await;
        let idle_cpu_percent = (server.cpu_seconds() - cpu_start) / idle.as_secs_f64() * 100.0;
        let rss_waiting = server.rss_kib();
        let parked_for = base.elapsed();

        // 4. Click the right link of each attempt.
        let clicked: Arc<Vec<AtomicU64>> = Arc::new((0..waiting).map(|_| AtomicU64::new(0)).collect());
        let tokens: Arc<Vec<String>> = Arc::new(attempts.iter().map(|(_, token)| token.clone()).collect());
        let op: Op = {
            let (api, clicked, tokens) = (api.clone(), clicked.clone(), tokens.clone());
            Arc::new(move |channel: Channel, n| {
                let index = n as usize;
                let token = tokens.get(index)?.clone();
                let (api, clicked) = (api.clone(), clicked.clone());
                Some(Box::pin(async move {
                    let mut client = PasswordlessClient::new(channel);
                    clicked[index].store((Instant::now() - base).as_micros() as u64, Ordering::Relaxed);
                    let request = pb::VerifyTokenRequest {
                        token,
                        ..Default::default()
                    };
                    client.verify_token(api.request(request)).await.map(|_| ())
                }) as CallFuture)
            })
        };
        self.rss.reset(&server);
        let clicking = batch(
            self,
            channels.clone(),
            64usize.div_ceil(connections).max(1),
            waiting as u64,
            op,
        )
        .await;

        // 5. Each poll's answer, measured from its click.
        let mut latency = histogram();
        let mut errors = Errors::default();
        errors.merge(&clicking.errors);
        let mut statuses: HashMap<String, u64> = HashMap::new();
        for (index, poll) in polls.into_iter().enumerate() {
            let Ok((answered, result)) = poll.await else { continue };
            match result {
                Ok(status) => {
                    let status = PollStatus::try_from(status)
                        .map(|s| format!("{s:?}"))
                        .unwrap_or_default();
                    *statuses.entry(status.clone()).or_default() += 1;
                    let click = clicked[index].load(Ordering::Relaxed);
                    let answer = (answered - base).as_micros() as u64;
                    if status == "Verified" && click > 0 {
                        let _ = latency.record(answer.saturating_sub(click).max(1));
                    }
                }
                Err(status) => errors.add(&status),
            }
        }
        let row = Row {
            name: "long_poll".into(),
            calls_per_s: round(clicking.rate(), 1),
            p50_ms: round(ms(&latency, 0.5), 3),
            p90_ms: round(ms(&latency, 0.9), 3),
            p99_ms: round(ms(&latency, 0.99), 3),
            max_ms: round(max_ms(&latency), 3),
            errors: errors.by_code.clone(),
            cpu_us_per_call: round(clicking.cpu_us_per_call(), 1),
            rss_mib: round(mib(self.rss.peak_kib().max(rss_waiting)), 1),
            note: format!(
                "{waiting} waiters: idle CPU {idle_cpu_percent:.2}% of a core, RSS +{:.1} MiB; latency = click to poll answer",
                mib(rss_waiting.saturating_sub(rss_before))
            ),
            extra: serde_json::Map::from_iter([
                ("waiters".to_string(), json!(waiting)),
                ("idle_cpu_percent".to_string(), json!(round(idle_cpu_percent, 3))),
                ("idle_seconds".to_string(), json!(idle.as_secs_f64())),
                ("rss_before_mib".to_string(), json!(round(mib(rss_before), 1))),
                ("rss_waiting_mib".to_string(), json!(round(mib(rss_waiting), 1))),
                (
                    "rss_delta_mib".to_string(),
                    json!(round(mib(rss_waiting.saturating_sub(rss_before)), 1)),
                ),
                ("send_per_s".to_string(), json!(round(sending.rate(), 1))),
                ("emails_read_after_s".to_string(), json!(round(mail_seconds, 2))),
                (
                    "clicks_started_after_s".to_string(),
                    json!(round(parked_for.as_secs_f64(), 2)),
                ),
                (
                    "all_parked_after_s".to_string(),
                    json!(round(parked_after.as_secs_f64(), 2)),
                ),
                ("server_live_polls".to_string(), json!(live_polls)),
                ("poll_statuses".to_string(), json!(statuses)),
                ("error_samples".to_string(), json!(errors.samples)),
            ]),
        };
        if statuses.get("Verified").copied().unwrap_or(0) < waiting as u64 {
            self.problems
                .push(format!("long_poll: poll answers {statuses:?} for {waiting} waiters"));
        }
        self.push(row);
    }

    /// A fresh store loaded with `scale_users` users and live links (IssueLoginLink), then RSS,
    /// disk, a restart (cold start to SERVING) and verify at that size.
    pub async fn scale(&mut self) {
        let users = self.settings.scale_users;
        let data_dir = self.settings.work_dir.join("scale-data");
        let (mut server, started) = match Server::start(&self.settings.spec, &data_dir, "scale-load").await {
            Ok(started) => started,
            Err(error) => {
                self.problems.push(format!("scale: {error}"));
                return;
            }
        };
        let _ = started;
        self.server = Some(server);
        if let Err(error) = self.reconnect().await {
            self.problems.push(format!("scale: {error}"));
            return;
        }
        // Keep enough tokens to verify for a whole run at a generous rate, spread over the load.
        let keep = (60_000.0 * (self.settings.warmup + self.settings.duration).as_secs_f64()).min(users as f64) as u64;
        let keep_every = (users / keep.max(1)).max(1);
        let pool = Arc::new(TokenPool::default());
        let op = issue_op(self.api.clone(), pool.clone(), keep_every);
        let progress = {
            let probe = self.server().probe();
            let pool = pool.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(15)).await;
                    let loaded = pool.remaining() as u64 * keep_every;
                    eprintln!(
                        "  (scale: ~{loaded} users after {:.0} s, {:.0}/s, server RSS {:.0} MiB)",
                        started.elapsed().as_secs_f64(),
                        loaded as f64 / started.elapsed().as_secs_f64(),
                        mib(probe.rss_kib())
                    );
                }
            })
        };
        let before = self.server().metrics();
        let loading = batch(self, self.channels(), self.settings.per_connection, users, op).await;
        let after = self.server().metrics();
        progress.abort();
        let loaded = loading.calls;
        let mut load_row = Row::from_measured("scale_load", &loading);
        load_row.extra.extend(store_figures(&before, &after, loading.seconds));
        load_row.note = format!("{loaded} users + live links loaded in {:.0} s", loading.seconds);
        self.push(load_row);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let probe = self.server().probe();
        let rss_loaded = probe.rss_kib();
        let hwm_loaded = probe.hwm_kib();
        let (disk_apparent, disk_allocated) = disk_usage(&data_dir);

        // A crash image: the server frozen (SIGSTOP) while its data directory is copied is what
        // kill -9 at that moment would leave, and the copy keeps it for the crash start below.
        server = self.server.take().expect("scale server");
        let crash_dir = self.settings.work_dir.join("scale-crash");
        let copied = signal(server.pid, "-STOP") && copy_dir(&data_dir, &crash_dir) && signal(server.pid, "-CONT");
        if !copied {
            self.problems
                .push("scale: could not copy a crash image of the data directory".into());
        }

        // Restart after a clean stop: SIGTERM (the server checkpoints the store while it stops),
        // drop the page cache if allowed, start, time to SERVING.
        let stopped = server.stop().await;
        let dropped_caches = drop_page_cache();
        let Some(cold_start) = self.time_start(&data_dir, "scale-restart").await else {
            return;
        };
        // Restart after a crash: recovery reads every log segment written since the last start.
        let crash_start = if copied {
            drop_page_cache();
            let timed = self.time_start(&crash_dir, "scale-crash-restart").await;
            let _ = std::fs::remove_dir_all(&crash_dir);
            timed
        } else {
            None
        };
        // The server that runs verify at this size starts on a warm page cache, as one that has
        // served for a while would: a start after a checkpoint reads almost nothing, and verify
        // on a cold disk measures the disk rather than the store at this size.
        warm_page_cache(&data_dir);
        let (server, second_start) = match Server::start(&self.settings.spec, &data_dir, "scale-restart-2").await {
            Ok(started) => started,
            Err(error) => {
                self.problems.push(format!("scale second restart: {error}"));
                return;
            }
        };
        let rss_after_start = server.probe().rss_kib();
        self.server = Some(server);
        if let Err(error) = self.reconnect().await {
            self.problems.push(format!("scale: {error}"));
            return;
        }
        let probe = self.server().probe();
        let before = self.server().metrics();
        let measured = load::closed(
            self.channels(),
            self.settings.per_connection,
            self.settings.warmup,
            self.settings.duration,
            probe,
            &self.rss,
            verify_op(self.api.clone(), pool.clone(), None),
        )
        .await;
        let after = self.server().metrics();
        let (disk_after_verify, _) = disk_usage(&data_dir);
        let mut row = Row::from_measured("scale_verify", &measured);
        let window = (self.settings.warmup + self.settings.duration).as_secs_f64();
        row.extra.extend(store_figures(&before, &after, window));
        let empty_verify = self.row("verify").map(|row| row.calls_per_s);
        let extra = [
            ("users", json!(loaded)),
            ("live_links", json!(loaded)),
            ("load_per_s", json!(round(loading.rate(), 1))),
            ("rss_after_load_mib", json!(round(mib(rss_loaded), 1))),
            ("hwm_after_load_mib", json!(round(mib(hwm_loaded), 1))),
            ("disk_mib", json!(round(disk_allocated as f64 / 1048576.0, 1))),
            ("disk_apparent_mib", json!(round(disk_apparent as f64 / 1048576.0, 1))),
            (
                "disk_after_verify_mib",
                json!(round(disk_after_verify as f64 / 1048576.0, 1)),
            ),
            ("shutdown_s", json!(round(stopped.took.as_secs_f64(), 3))),
            ("shutdown_exit_code", json!(stopped.exit_code)),
            ("page_cache_dropped", json!(dropped_caches)),
            ("cold_start_ms", json!(round(cold_start.as_secs_f64() * 1000.0, 1))),
            (
                "crash_start_ms",
                json!(crash_start.map(|took| round(took.as_secs_f64() * 1000.0, 1))),
            ),
            ("second_start_ms", json!(round(second_start.as_secs_f64() * 1000.0, 1))),
            ("rss_after_restart_mib", json!(round(mib(rss_after_start), 1))),
            (
                "verify_to_empty",
                json!(empty_verify.map(|rate| round(measured.rate() / rate.max(1.0), 3))),
            ),
        ];
        for (key, value) in extra {
            row.extra.insert(key.into(), value);
        }
        row.note = format!(
            "{loaded} users: RSS {:.0} MiB after load, disk {:.0} MiB, cold start {:.0} ms after a clean stop ({:.1} s), {} after a crash, {:.0} ms on a warm page cache",
            mib(rss_loaded),
            disk_allocated as f64 / 1048576.0,
            cold_start.as_secs_f64() * 1000.0,
            stopped.took.as_secs_f64(),
            crash_start.map_or("not measured".to_string(), |took| format!(
                "{:.0} ms",
                took.as_secs_f64() * 1000.0
            )),
            second_start.as_secs_f64() * 1000.0
        );
        self.push(row);
    }

    /// New connections to the current server.
    pub async fn reconnect(&mut self) -> Result<(), String> {
        let url = self.server().url.clone();
        self.api = Arc::new(Api::connect(&[url], &self.settings.api_key, self.settings.connections).await?);
        Ok(())
    }
}

/// `echo 3 > /proc/sys/vm/drop_caches` (root only), so the restart reads the store from disk.
impl Bench {
    /// Starts a server on `data_dir`, stops it, and returns the time to SERVING (None, with the
    /// problem recorded, if it did not start).
    async fn time_start(&mut self, data_dir: &std::path::Path, label: &str) -> Option<Duration> {
        match Server::start(&self.settings.spec, data_dir, label).await {
            Ok((server, took)) => {
                let _ = server.stop().await;
                Some(took)
            }
            Err(error) => {
                self.problems.push(format!("{label}: {error}"));
                None
            }
        }
    }
}

fn signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> bool {
    let _ = std::fs::remove_dir_all(to);
    std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .is_ok_and(|status| status.success())
}

/// Reads every file under `dir` once, so it is in the page cache.
fn warm_page_cache(dir: &std::path::Path) {
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg("find \"$1\" -type f -exec cat {} + > /dev/null")
        .arg("sh")
        .arg(dir)
        .status();
}

fn drop_page_cache() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}
