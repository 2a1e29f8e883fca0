//! The per-recipient email rate limit: a token bucket (default burst 5, then 1 a minute). The
//! store keeps the buckets, so a restart does not reset them; this module only does the arithmetic.

use std::time::Duration;

use super::model::{Millis, RateBucket};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sends allowed at once; 0 turns the limit off.
    pub burst: u32,
    /// Sends regained per minute.
    pub per_minute: u32,
}

impl RateLimit {
    pub fn is_off(&self) -> bool {
        self.burst == 0
    }

    /// Takes one send from `bucket` (a new recipient starts full), or says how long until one is
    /// available.
    pub fn take(&self, bucket: Option<&RateBucket>, now: Millis) -> Result<RateBucket, Duration> {
        let burst = f64::from(self.burst);
        let per_milli = f64::from(self.per_minute) / 60_000.0;
        let tokens = match bucket {
            None => burst,
            Some(bucket) => (bucket.tokens + (now - bucket.updated_at).max(0) as f64 * per_milli).min(burst),
        };
        if tokens >= 1.0 {
            let left = tokens - 1.0;
            return Ok(RateBucket {
                tokens: left,
                updated_at: now,
                full_at: now + ((burst - left) * 60_000.0 / f64::from(self.per_minute)).ceil() as Millis,
            });
        }
        let wait = ((1.0 - tokens) / per_milli).ceil();
        Err(Duration::from_millis(wait as u64).max(Duration::from_secs(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_a_minute() {
        let limit = RateLimit {
            burst: 5,
            per_minute: 1,
        };
        let mut bucket = None;
        for _ in 0..5 {
            bucket = Some(limit.take(bucket.as_ref(), 0).unwrap());
        }
        let wait = limit.take(bucket.as_ref(), 0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(60));
        assert_eq!(
            limit.take(bucket.as_ref(), 30_000).unwrap_err(),
            Duration::from_secs(30)
        );
        let refilled = limit.take(bucket.as_ref(), 60_000).unwrap();
        assert!(refilled.tokens < 1.0);
        assert!(limit.take(Some(&refilled), 60_000).is_err());
    }

    #[test]
    fn a_bucket_knows_when_it_is_full_again() {
        let limit = RateLimit {
            burst: 5,
            per_minute: 1,
        };
        let first = limit.take(None, 0).unwrap();
        assert_eq!(first.full_at, 60_000, "one send short of the burst: a minute");
        let mut bucket = first;
        for _ in 0..4 {
            bucket = limit.take(Some(&bucket), 0).unwrap();
        }
        assert_eq!(bucket.full_at, 5 * 60_000);
        // Just before then, the bucket holds less than the burst: four sends pass, not five.
        let mut before = Some(bucket);
        let passed = (0..5)
            .filter(|_| match limit.take(before.as_ref(), 5 * 60_000 - 1) {
                Ok(next) => {
                    before = Some(next);
                    true
                }
                Err(_) => false,
            })
            .count();
        assert_eq!(passed, 4);
        // At it, the bucket is as good as none: the whole burst passes.
        let mut at = Some(bucket);
        for _ in 0..5 {
            at = Some(limit.take(at.as_ref(), 5 * 60_000).unwrap());
        }
        assert!(limit.take(at.as_ref(), 5 * 60_000).is_err());
    }
}
