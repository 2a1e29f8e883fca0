//! Prometheus metrics for `/metrics` on the HTTP port: gRPC calls by service, method and code with
//! latency histograms (recorded by the tower layer in `layer.rs`), figures read at scrape time
//! (outbox depth, sends by result, live long-polls, whether the store is unavailable), and the
//! store backend's own series.

mod layer;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use layer::GrpcMetricsLayer;

use crate::domain::Domain;
use crate::mail::worker::SendCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~52 s: from a cached read to a 30 s long-poll.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: LatencyFamily,
    restarts: Family<TaskLabels, Counter>,
    outbox_queued: Gauge,
    outbox_sending: Gauge,
    domain: Arc<Domain>,
}

impl Metrics {
    pub fn new(domain: Arc<Domain>, sends: Arc<SendCounts>) -> Arc<Self> {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "latchkey_grpc_calls",
            "gRPC calls answered, by service, method and status code",
            calls.clone(),
        );
        let latency = LatencyFamily::new_with_constructor(latency_histogram);
        registry.register(
            "latchkey_grpc_call_duration_seconds",
            "Time from request to final status, by service and method",
            latency.clone(),
        );
        let restarts = Family::<TaskLabels, Counter>::default();
        registry.register(
            "latchkey_background_task_restarts",
            "Background tasks (mail worker, sweeper, key rotation) started again after a panic",
            restarts.clone(),
        );
        let outbox_queued = Gauge::default();
        registry.register(
            "latchkey_outbox_queued",
            "Emails waiting in the outbox",
            outbox_queued.clone(),
        );
        let outbox_sending = Gauge::default();
        registry.register(
            "latchkey_outbox_sending",
            "Emails claimed by a mail worker",
            outbox_sending.clone(),
        );
        registry.register(
            "latchkey_mail_send_delay_seconds",
            "Time from the call that queued an email to its handover to the transport (delivered emails)",
            sends.delay.clone(),
        );
        registry.register_collector(Box::new(LiveFigures {
            domain: domain.clone(),
            sends,
        }));
        domain.store.register_metrics(&mut registry);
        Arc::new(Self {
            registry,
            calls,
            latency,
            restarts,
            outbox_queued,
            outbox_sending,
            domain,
        })
    }

    /// The restart counter of one background task (see `crate::supervise`).
    pub fn task_restarts(&self, task: &'static str) -> Counter {
        self.restarts.get_or_create(&TaskLabels { task }).clone()
    }

    fn record(&self, service: &'static str, method: &'static str, code: &'static str, seconds: f64) {
        self.calls.get_or_create(&CallLabels { service, method, code }).inc();
        self.latency
            .get_or_create(&MethodLabels { service, method })
            .observe(seconds);
    }

    /// The OpenMetrics text exposition, with the outbox depth read now.
    pub async fn render(&self) -> String {
        if let Ok(depth) = self.domain.store.outbox_depth().await {
            self.outbox_queued.set(i64::try_from(depth.queued).unwrap_or(i64::MAX));
            self.outbox_sending
                .set(i64::try_from(depth.sending).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Figures read when scraped rather than counted on the hot path.
struct LiveFigures {
    domain: Arc<Domain>,
    sends: Arc<SendCounts>,
}

impl fmt::Debug for LiveFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiveFigures")
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

impl Collector for LiveFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        let sends = &self.sends;
        counter(
            e,
            "latchkey_mail_sent",
            "Emails delivered",
            sends.sent.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "latchkey_mail_retried",
            "Delivery attempts that failed and will be retried",
            sends.retried.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "latchkey_mail_failed",
            "Emails given up on (5xx, exhausted attempts, expired links)",
            sends.failed.load(Ordering::Relaxed),
        )?;
        gauge(
            e,
            "latchkey_long_polls_live",
            "PollSession calls waiting now",
            self.domain.live_polls.load(Ordering::Relaxed) as u64,
        )?;
        // What health follows, as a series an alert can hold for a while (docs/high-availability.md).
        gauge(
            e,
            "latchkey_store_unavailable",
            "1 while the store refuses calls (its database does not answer, its disk failed), else 0",
            u64::from(self.domain.store.refuses_writes()),
        )?;
        Ok(())
    }
}
