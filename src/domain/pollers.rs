//! Long-poll waiters: one `Notify` per attempt that someone is polling, woken when the attempt
//! changes. An idle poll costs a map entry and a parked task; nothing polls the store on a timer.
//! (With many replicas, the store implementation forwards wake-ups between processes.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::crypto::Digest32;

#[derive(Default)]
pub struct Pollers {
    waiting: Mutex<HashMap<Digest32, Weak<Notify>>>,
    live: AtomicUsize,
}

/// A poll in progress: holds the attempt's `Notify` and counts as live until dropped.
pub struct Poll<'a> {
    pub notify: Arc<Notify>,
    pollers: &'a Pollers,
}

impl Drop for Poll<'_> {
    fn drop(&mut self) {
        self.pollers.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pollers {
    /// Joins the waiters of an attempt. Create the `notified()` future and `enable()` it before
    /// reading the attempt, so a change in between is not missed.
    pub fn join(&self, key: &Digest32) -> Poll<'_> {
        let mut waiting = self.waiting.lock().expect("pollers lock");
        let notify = match waiting.get(key).and_then(Weak::upgrade) {
            Some(notify) => notify,
            None => {
                // Forget attempts nobody waits on any more, now and then, so the map stays small.
                if waiting.len() >= 1024 && waiting.len().is_power_of_two() {
                    waiting.retain(|_, notify| notify.strong_count() > 0);
                }
                let notify = Arc::new(Notify::new());
                waiting.insert(*key, Arc::downgrade(&notify));
                notify
            }
        };
        self.live.fetch_add(1, Ordering::Relaxed);
        Poll { notify, pollers: self }
    }

    /// Wakes everyone polling this attempt.
    pub fn wake(&self, key: &Digest32) {
        let mut waiting = self.waiting.lock().expect("pollers lock");
        match waiting.get(key).and_then(Weak::upgrade) {
            Some(notify) => notify.notify_waiters(),
            None => {
                waiting.remove(key);
            }
        }
    }

    /// Polls waiting now (a metric).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}
