//! Wake-ups within one process, for a backend that only one process opens (sled): a `Notify` per
//! topic somebody watches. An idle watch costs a map entry and a parked task; nothing is lost
//! between notify and watch, so the recheck timer is only a backstop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::wakeups::{Topic, Wakeups, Watch};

/// Longer than any long-poll (30 s), so an idle poll never reads the store on a timer.
const RECHECK: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct LocalWakeups {
    outbox: Arc<Notify>,
    attempts: Mutex<HashMap<crate::crypto::Digest32, Weak<Notify>>>,
}

impl LocalWakeups {
    /// Wakes every watch (after a gap in which notifications may have been missed).
    pub fn wake_all(&self) {
        self.outbox.notify_waiters();
        let attempts = self.attempts.lock().expect("wake-ups lock");
        for notify in attempts.values().filter_map(Weak::upgrade) {
            notify.notify_waiters();
        }
    }

    fn armed(notify: Arc<Notify>) -> Watch {
        let mut notified = Box::pin(notify.notified_owned());
        notified.as_mut().enable();
        Watch::new(notified)
    }
}

impl Wakeups for LocalWakeups {
    fn notify(&self, topic: Topic) {
        match topic {
            Topic::Outbox => self.outbox.notify_waiters(),
            Topic::Attempt(key) => {
                let mut attempts = self.attempts.lock().expect("wake-ups lock");
                match attempts.get(&key).and_then(Weak::upgrade) {
                    Some(notify) => notify.notify_waiters(),
                    None => {
                        attempts.remove(&key);
                    }
                }
            }
        }
    }

    fn watch(&self, topic: Topic) -> Watch {
        let notify = match topic {
            Topic::Outbox => self.outbox.clone(),
            Topic::Attempt(key) => {
                let mut attempts = self.attempts.lock().expect("wake-ups lock");
                match attempts.get(&key).and_then(Weak::upgrade) {
                    Some(notify) => notify,
                    None => {
                        // Forget attempts nobody watches any more, now and then, so the map stays small.
                        if attempts.len() >= 1024 && attempts.len().is_power_of_two() {
                            attempts.retain(|_, notify| notify.strong_count() > 0);
                        }
                        let notify = Arc::new(Notify::new());
                        attempts.insert(key, Arc::downgrade(&notify));
                        notify
                    }
                }
            }
        };
        Self::armed(notify)
    }

    fn recheck(&self) -> Duration {
        RECHECK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Digest32;

    #[tokio::test]
    async fn a_watch_fires_on_a_notify_after_it_was_armed_and_not_before() {
        let wakeups = LocalWakeups::default();
        let topic = Topic::Attempt(Digest32::of("a"));
        wakeups.notify(topic);
        let watch = wakeups.watch(topic);
        let other = wakeups.watch(Topic::Attempt(Digest32::of("b")));
        let outbox = wakeups.watch(Topic::Outbox);
        wakeups.notify(topic);
        watch.await;
        let pending = |watch: Watch| async move {
            tokio::select! { biased; () = watch => false, () = std::future::ready(()) => true }
        };
        assert!(pending(other).await, "another attempt's watch did not fire");
        assert!(pending(outbox).await);
        let outbox = wakeups.watch(Topic::Outbox);
        wakeups.notify(Topic::Outbox);
        outbox.await;
    }
}
