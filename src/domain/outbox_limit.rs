//! The outbox's admission limit. While the outbox holds more than `mail.outbox_limit` emails, the
//! flows that queue mail answer `OUTBOX_FULL` with a retry delay instead of accepting mail that
//! would leave minutes later. The depth is sampled in the background (once a second), so a call
//! reads two atomics and never the store; the limit is therefore approximate by a second's worth
//! of calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::{Error, Result};

/// The longest and shortest retry delay the refusal suggests.
const RETRY_BOUNDS: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

#[derive(Debug)]
pub struct OutboxLimit {
    /// 0: no limit.
    limit: u64,
    depth: AtomicU64,
    retry_after_millis: AtomicU64,
}

impl OutboxLimit {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            depth: AtomicU64::new(0),
            retry_after_millis: AtomicU64::new(RETRY_BOUNDS.0.as_millis() as u64),
        }
    }

    pub fn is_off(&self) -> bool {
        self.limit == 0
    }

    /// A sample: the outbox's depth (queued and being sent) and how fast mail is leaving now
    /// (emails a second), from which the suggested delay is how long until the outbox is back
    /// at nine tenths of the limit.
    pub fn record(&self, depth: u64, sent_per_second: f64) {
        self.depth.store(depth, Ordering::Relaxed);
        let excess = depth.saturating_sub(self.limit / 10 * 9) as f64;
        let (shortest, longest) = (RETRY_BOUNDS.0.as_secs_f64(), RETRY_BOUNDS.1.as_secs_f64());
        let seconds = (excess / sent_per_second.max(1.0)).clamp(shortest, longest);
        let delay = Duration::from_secs_f64(seconds);
        self.retry_after_millis
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// `OUTBOX_FULL` while the last sample was over the limit.
    pub fn admit(&self) -> Result<()> {
        if self.is_off() || self.depth.load(Ordering::Relaxed) <= self.limit {
            return Ok(());
        }
        Err(Error::OutboxFull {
            retry_after: Duration::from_millis(self.retry_after_millis.load(Ordering::Relaxed)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(limit: &OutboxLimit) -> Option<Duration> {
        match limit.admit() {
            Ok(()) => None,
            Err(Error::OutboxFull { retry_after }) => Some(retry_after),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn admits_up_to_the_limit_and_suggests_the_time_to_drain_below_nine_tenths() {
        let limit = OutboxLimit::new(1000);
        assert_eq!(refusal(&limit), None, "nothing sampled yet");
        limit.record(1000, 50.0);
        assert_eq!(refusal(&limit), None, "at the limit");
        limit.record(1400, 50.0);
        assert_eq!(refusal(&limit), Some(Duration::from_secs(10)), "500 over 900 at 50/s");
        limit.record(100_000, 10.0);
        assert_eq!(refusal(&limit), Some(Duration::from_secs(60)), "at most a minute");
        limit.record(1001, 1000.0);
        assert_eq!(refusal(&limit), Some(Duration::from_secs(1)), "at least a second");
        limit.record(1001, 0.0);
        assert_eq!(
            refusal(&limit),
            Some(Duration::from_secs(60)),
            "nothing leaving: the longest"
        );
        limit.record(10, 0.0);
        assert_eq!(refusal(&limit), None, "drained");
    }

    #[test]
    fn zero_is_no_limit() {
        let limit = OutboxLimit::new(0);
        limit.record(u64::MAX, 0.0);
        assert_eq!(refusal(&limit), None);
    }
}
