//! `mail_latency`: how long a person waits for a magic link. LoginOrCreate as an open loop at 25,
//! 50 and 75% of its closed-loop peak (the `login_or_create` row of the same run), first with the
//! file transport, then over SMTP to a sink in this process; for every call answered in the
//! window, the time from its answer to its message reaching the transport (the `.eml` file's
//! modification time, or the sink's end of DATA), and the outbox's depth over time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tonic::transport::Channel;

use crate::api::PasswordlessClient;
use crate::api::pb;
use crate::bench::{Bench, Row, new_email, round};
use crate::load::{self, CallFuture, Op, histogram, max_ms, ms};
use crate::server::Server;
use crate::smtp_sink::SmtpSink;

/// The loads, as fractions of the peak.
const LOADS: [f64; 3] = [0.25, 0.5, 0.75];
/// How often the outbox's depth is read from /metrics.
const DEPTH_EVERY: Duration = Duration::from_millis(250);
/// How long the messages of one load may take to arrive after it ends.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// Email id → when its LoginOrCreate was answered.
type Answers = Arc<Mutex<Vec<(String, SystemTime)>>>;

enum Sink<'a> {
    File(&'a Path),
    Smtp(&'a SmtpSink),
}

impl Sink<'_> {
    fn name(&self) -> &'static str {
        match self {
            Sink::File(_) => "file",
            Sink::Smtp(_) => "smtp",
        }
    }

    /// When the message of `email_id` reached the transport, if it has.
    fn arrival(&self, email_id: &str) -> Option<SystemTime> {
        match self {
            Sink::File(dir) => std::fs::metadata(dir.join(format!("{email_id}.eml")))
                .and_then(|meta| meta.modified())
                .ok(),
            Sink::Smtp(sink) => sink.arrivals.lock().expect("arrivals lock").get(email_id).copied(),
        }
    }
}

impl Bench {
    pub async fn mail_latency(&mut self) {
        let Some(peak) = self.row("login_or_create").map(|row| row.calls_per_s) else {
            self.problems
                .push("mail_latency: needs the login_or_create row (its peak) of the same run".into());
            return;
        };
        let mail_dir = self.settings.mail_dir.clone();
        for fraction in LOADS {
            self.mail_latency_at(peak, fraction, &Sink::File(&mail_dir)).await;
        }
        let sink = match SmtpSink::start().await {
            Ok(sink) => sink,
            Err(error) => {
                self.problems.push(format!("mail_latency: SMTP sink: {error}"));
                return;
            }
        };
        // The same server's settings, but mail over SMTP to the sink (plain, on loopback).
        let mut spec = self.settings.spec.clone();
        spec.env.extend([
            ("LATCHKEY_MAIL__TRANSPORT".to_string(), "smtp".to_string()),
            ("LATCHKEY_MAIL__SMTP__HOST".to_string(), "127.0.0.1".to_string()),
            ("LATCHKEY_MAIL__SMTP__PORT".to_string(), sink.port.to_string()),
            ("LATCHKEY_MAIL__SMTP__TLS".to_string(), "none".to_string()),
        ]);
        let data_dir = self.settings.work_dir.join("data-smtp");
        let previous = self.server.take();
        match Server::start(&spec, &data_dir, "mail-smtp").await {
            Ok((server, _)) => self.server = Some(server),
            Err(error) => {
                self.problems.push(format!("mail_latency: the SMTP server: {error}"));
                self.server = previous;
                return;
            }
        }
        if let Err(error) = self.reconnect().await {
            self.problems.push(format!("mail_latency: {error}"));
        } else {
            for fraction in LOADS {
                self.mail_latency_at(peak, fraction, &Sink::Smtp(&sink)).await;
            }
        }
        let smtp_server = self.server.take();
        for problem in smtp_server.as_ref().map(Server::log_problems).unwrap_or_default() {
            self.problems.push(format!("mail_latency (smtp server): {problem}"));
        }
        if let Some(server) = smtp_server {
            server.stop().await;
        }
        self.server = previous;
        if let Err(error) = self.reconnect().await {
            self.problems
                .push(format!("mail_latency: back to the first server: {error}"));
        }
    }

    async fn mail_latency_at(&mut self, peak: f64, fraction: f64, sink: &Sink<'_>) {
        let name = format!("mail_latency_{}_{:.0}", sink.name(), fraction * 100.0);
        let rate = (peak * fraction).max(10.0);
        let (warmup, duration) = (self.settings.warmup, self.settings.duration);
        if !self.wait_outbox_empty().await {
            self.problems
                .push(format!("{name}: the outbox was not empty before the load"));
        }
        self.settle();
        let answers = Answers::default();
        let started = SystemTime::now();
        let depth = self.watch_depth(warmup + duration);
        let probe = self.probe();
        let measured = load::open(
            self.channels(),
            rate,
            4096,
            warmup,
            duration,
            probe,
            &self.rss,
            login_or_create_op(self.api.clone(), answers.clone()),
        )
        .await;
        let depths = depth.await.unwrap_or_default();
        // The calls answered inside the window, and the time their messages took to arrive.
        let (from, to) = (started + warmup, started + warmup + duration);
        let answered: Vec<(String, SystemTime)> = answers
            .lock()
            .expect("answers lock")
            .iter()
            .filter(|(_, at)| *at >= from && *at < to)
            .cloned()
            .collect();
        let ended = tokio::time::Instant::now();
        let mut arrivals: HashMap<&str, SystemTime> = HashMap::new();
        while arrivals.len() < answered.len() && ended.elapsed() < DRAIN_LIMIT {
            for (id, _) in &answered {
                if !arrivals.contains_key(id.as_str())
                    && let Some(at) = sink.arrival(id)
                {
                    arrivals.insert(id, at);
                }
            }
            if arrivals.len() < answered.len() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut delay_us = histogram();
        let mut before_answer = 0u64;
        for (id, answered_at) in &answered {
            if let Some(arrived) = arrivals.get(id.as_str()) {
                // The message may reach the transport before the answer reaches this process.
                let us = arrived.duration_since(*answered_at).map_or_else(
                    |_| {
                        before_answer += 1;
                        1
                    },
                    |d| d.as_micros().max(1) as u64,
                );
                let _ = delay_us.record(us);
            }
        }
        let missing = answered.len() - arrivals.len();
        let mut row = Row::from_measured(&name, &measured);
        row.extra.insert("target_rate".into(), json!(round(rate, 1)));
        row.extra.insert("sink".into(), json!(sink.name()));
        row.extra.insert("emails".into(), json!(answered.len()));
        row.extra.insert("missing".into(), json!(missing));
        row.extra.insert("arrived_before_answer".into(), json!(before_answer));
        let (p50, p99, max) = (ms(&delay_us, 0.5), ms(&delay_us, 0.99), max_ms(&delay_us));
        row.extra.insert("mail_delay_p50_ms".into(), json!(round(p50, 1)));
        row.extra.insert("mail_delay_p99_ms".into(), json!(round(p99, 1)));
        row.extra.insert("mail_delay_max_ms".into(), json!(round(max, 1)));
        let depth_max = depths.iter().copied().fold(0.0, f64::max);
        row.extra.insert("outbox_depth_max".into(), json!(depth_max));
        // One reading a second, for the report's line of the depth over time.
        let per_second: Vec<f64> = depths.iter().step_by(4).copied().collect();
        row.extra.insert("outbox_depth_per_s".into(), json!(per_second));
        row.note = format!(
            "{:.0}% of peak ({rate:.0}/s), {} transport: mail delay p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms; outbox depth max {depth_max:.0}",
            fraction * 100.0,
            sink.name()
        );
        if missing > 0 {
            self.problems.push(format!(
                "{name}: {missing} of {} emails had not arrived {} s after the load",
                answered.len(),
                DRAIN_LIMIT.as_secs()
            ));
        }
        eprintln!("  {name}: {}", row.note);
        self.push(row);
    }

    /// The outbox's depth (queued + sending, from /metrics) every `DEPTH_EVERY` for `length`.
    fn watch_depth(&self, length: Duration) -> tokio::task::JoinHandle<Vec<f64>> {
        let address = self.server().http_address.clone();
        tokio::spawn(async move {
            let end = tokio::time::Instant::now() + length;
            let mut depths = Vec::new();
            while tokio::time::Instant::now() < end {
                depths.push(outbox_depth(&address).await.unwrap_or(f64::NAN));
                tokio::time::sleep(DEPTH_EVERY).await;
            }
            depths
        })
    }

    /// Waits (up to `DRAIN_LIMIT`) until the outbox is empty.
    async fn wait_outbox_empty(&self) -> bool {
        let address = self.server().http_address.clone();
        let end = tokio::time::Instant::now() + DRAIN_LIMIT;
        while tokio::time::Instant::now() < end {
            if outbox_depth(&address).await == Some(0.0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// Queued + sending, from the server's /metrics (read off the runtime: it blocks).
async fn outbox_depth(http_address: &str) -> Option<f64> {
    let address = http_address.to_string();
    let figures = tokio::task::spawn_blocking(move || crate::server::scrape_metrics(&address))
        .await
        .ok()??;
    Some(figures.get("latchkey_outbox_queued")? + figures.get("latchkey_outbox_sending")?)
}

/// LoginOrCreate for a new email, noting its email id and when the answer came.
fn login_or_create_op(api: Arc<crate::api::Api>, answers: Answers) -> Op {
    Arc::new(move |channel: Channel, _n| {
        let (api, answers) = (api.clone(), answers.clone());
        Some(Box::pin(async move {
            let mut client = PasswordlessClient::new(channel);
            let request = pb::LoginOrCreateRequest {
                email: new_email("mail"),
                ..Default::default()
            };
            let response = client.login_or_create(api.request(request)).await?.into_inner();
            answers
                .lock()
                .expect("answers lock")
                .push((response.email_id, SystemTime::now()));
            Ok(())
        }) as CallFuture)
    })
}
