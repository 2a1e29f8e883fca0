//! Wake-ups: how a committed change reaches whoever waits for it. PollSession's long-poll waits
//! for its attempt, the mail worker for the outbox. The domain owns this interface; the backend
//! supplies it (in-process for the embedded store; across replicas for a shared database). A notification may
//! be lost on the way between processes, so every waiter also reads state again at least every
//! `recheck()`: a lost notification can delay an answer, never lose it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::crypto::Digest32;

/// What a waiter waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// An email was queued.
    Outbox,
    /// The enchanted-link attempt with this pending-ref digest changed.
    Attempt(Digest32),
}

pub trait Wakeups: Send + Sync + 'static {
    /// Wakes every watch of `topic` (in every process that shares the store). Called after the
    /// change is committed.
    fn notify(&self, topic: Topic);
    /// A watch of `topic`, armed now: it completes at the first `notify` after this call. Arm it
    /// before reading the state it guards, so a change in between is not missed.
    fn watch(&self, topic: Topic) -> Watch;
    /// The longest a waiter goes without reading state again.
    fn recheck(&self) -> Duration;
}

/// An armed, one-shot watch (see `Wakeups::watch`).
pub struct Watch(Pin<Box<dyn Future<Output = ()> + Send>>);

impl Watch {
    pub fn new(fired: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Box::pin(fired))
    }
}

impl Future for Watch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}
