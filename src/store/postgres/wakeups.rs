//! Wake-ups across replicas: a NOTIFY on the channel `latchkey` after each change, and one LISTEN
//! connection per replica that passes what it hears to the watches in this process. A
//! notification is only a hint: the waiter it wakes reads the row again, a reconnect wakes every
//! waiter, and waiters also read again every `recheck_millis`, so a lost notification delays an
//! answer, never loses it. With `notify = false` (engines or poolers without LISTEN), the recheck
//! alone carries changes between replicas.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::connect::Connector;
use crate::crypto::Digest32;
use crate::domain::wakeups::{Topic, Wakeups, Watch};
use crate::store::local_wakeups::LocalWakeups;

const CHANNEL: &str = "latchkey";
/// Notifications sent in one statement at most.
const BATCH: usize = 256;
/// The longest wait before the LISTEN connection is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct PgWakeups {
    local: Arc<LocalWakeups>,
    outgoing: Option<mpsc::UnboundedSender<String>>,
    recheck: Duration,
}

impl PgWakeups {
    pub fn start(connector: Connector, pool: Pool, notify: bool, recheck: Duration, stop: CancellationToken) -> Self {
        let local = Arc::new(LocalWakeups::default());
        if !notify {
            return Self {
                local,
                outgoing: None,
                recheck,
            };
        }
        let (outgoing, queue) = mpsc::unbounded_channel();
        tokio::spawn(send(pool, queue, stop.clone()));
        tokio::spawn(listen(connector, local.clone(), stop));
        Self {
            local,
            outgoing: Some(outgoing),
            recheck,
        }
    }
}

impl Wakeups for PgWakeups {
    fn notify(&self, topic: Topic) {
        self.local.notify(topic);
        if let Some(outgoing) = &self.outgoing {
            let _ = outgoing.send(payload(topic));
        }
    }

    fn watch(&self, topic: Topic) -> Watch {
        self.local.watch(topic)
    }

    fn recheck(&self) -> Duration {
        self.recheck
    }
}

fn payload(topic: Topic) -> String {
    match topic {
        Topic::Outbox => "outbox".into(),
        Topic::Attempt(digest) => format!("attempt:{}", URL_SAFE_NO_PAD.encode(digest.as_bytes())),
    }
}

fn topic_of(payload: &str) -> Option<Topic> {
    match payload.split_once(':') {
        None if payload == "outbox" => Some(Topic::Outbox),
        Some(("attempt", digest)) => {
            let bytes = URL_SAFE_NO_PAD.decode(digest).ok()?;
            Some(Topic::Attempt(Digest32(bytes.try_into().ok()?)))
        }
        _ => None,
    }
}

/// Sends queued notifications, many per statement.
async fn send(pool: Pool, mut queue: mpsc::UnboundedReceiver<String>, stop: CancellationToken) {
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            next = queue.recv() => match next {
                Some(payload) => payload,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Ok(payload) = queue.try_recv()
        {
            batch.push(payload);
        }
        batch.sort_unstable();
        batch.dedup();
        let sent = async {
            let client = pool.get().await.map_err(|error| error.to_string())?;
            client
                .execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                    &[&CHANNEL, &batch],
                )
                .await
                .map_err(|error| error.to_string())
        };
        if let Err(error) = sent.await {
            // The recheck timer covers it.
            tracing::debug!(%error, "cannot send wake-ups to other replicas");
        }
    }
}

/// Holds the LISTEN connection, reconnecting with backoff; every (re)connect wakes every waiter.
async fn listen(connector: Connector, local: Arc<LocalWakeups>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (messages, mut heard) = mpsc::unbounded_channel();
        match connector.dedicated(Some(messages)).await {
            Ok(client) => match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    // Whatever changed while nobody listened: every waiter reads again.
                    local.wake_all();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            message = heard.recv() => match message {
                                Some(AsyncMessage::Notification(note)) => {
                                    if let Some(topic) = topic_of(note.payload()) {
                                        local.notify(topic);
                                    }
                                }
                                Some(_) => {}
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("the LISTEN connection to PostgreSQL ended; reconnecting");
                }
                Err(error) => tracing::warn!(%error, "cannot LISTEN for wake-ups; retrying"),
            },
            Err(error) => tracing::debug!(%error, "cannot open the LISTEN connection; retrying"),
        }
        local.wake_all();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_their_topic_and_nothing_else_parses() {
        let attempt = Topic::Attempt(Digest32::of("ref"));
        assert_eq!(topic_of(&payload(attempt)), Some(attempt));
        assert_eq!(topic_of(&payload(Topic::Outbox)), Some(Topic::Outbox));
        assert!(payload(attempt).len() < 100, "far under NOTIFY's 8000-byte limit");
        for junk in ["", "attempt:", "attempt:!!", "attempt:AAAA", "other", "outbox:x"] {
            assert_eq!(topic_of(junk), None, "{junk}");
        }
    }
}
