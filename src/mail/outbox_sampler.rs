//! Samples the outbox's depth once a second for the admission limit (`domain::outbox_limit`),
//! with this replica's send rate over the same second for the retry delay a refusal suggests. On
//! PostgreSQL the depth counts every replica's outbox; the rate is this replica's, so with many
//! replicas the suggested delay errs long.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::worker::SendCounts;
use crate::domain::Domain;

const SAMPLE_EVERY: Duration = Duration::from_secs(1);

pub async fn run(domain: Arc<Domain>, sends: Arc<SendCounts>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = (Instant::now(), sends.sent.load(Ordering::Relaxed));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // A store that does not answer keeps the last sample; the calls fail on their own.
        let Ok(depth) = domain.store.outbox_depth().await else {
            continue;
        };
        let now = (Instant::now(), sends.sent.load(Ordering::Relaxed));
        let seconds = now.0.duration_since(last.0).as_secs_f64().max(0.001);
        let rate = now.1.saturating_sub(last.1) as f64 / seconds;
        last = now;
        domain
            .mail
            .outbox_limit
            .record(depth.queued.saturating_add(depth.sending), rate);
    }
}
