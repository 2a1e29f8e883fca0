//! Background tasks (the mail worker, the sweeper, key rotation) outlive their own bugs: a task
//! that panics, or returns before shutdown, is logged, counted and started again after a pause
//! that doubles with each failure in a row. Without this, a panic in the mail worker would stop
//! all mail while health still said SERVING.

use std::future::Future;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Pauses before a restart.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    const DEFAULT: Self = Self {
        first: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
}

/// Runs `start()`'s task until `shutdown`, starting it again whenever it ends early, after 1 s,
/// then 2, 4, … up to a minute. `restarts` counts the restarts (exported as a metric).
pub async fn supervise<F, Fut>(task: &'static str, shutdown: CancellationToken, restarts: Counter, start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    supervise_with(Backoff::DEFAULT, task, shutdown, restarts, start).await;
}

/// `supervise` with its pauses given. A task that ran longer than `backoff.max` before it ended
/// starts again after the first pause, not a grown one.
async fn supervise_with<F, Fut>(
    backoff: Backoff,
    task: &'static str,
    shutdown: CancellationToken,
    restarts: Counter,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut pause = backoff.first;
    loop {
        let started = Instant::now();
        let ended = tokio::spawn(start()).await;
        if shutdown.is_cancelled() {
            return;
        }
        if started.elapsed() > backoff.max {
            pause = backoff.first;
        }
        // The panic's message went to stderr through the panic hook; it is not repeated here,
        // where it would be structured log data.
        let how = match ended {
            Err(error) if error.is_panic() => "panicked",
            _ => "stopped before shutdown",
        };
        tracing::error!(task, how, restart_in = ?pause, "a background task ended; starting it again");
        restarts.inc();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(backoff.max);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_stops_early_is_started_again_until_shutdown() {
        let shutdown = CancellationToken::new();
        let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
        let runs = Arc::new(AtomicUsize::new(0));
        let restarts = Counter::default();
        let backoff = Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(4),
        };
        let stop = shutdown.clone();
        let supervisor = tokio::spawn(supervise_with(
            backoff,
            "test",
            shutdown.clone(),
            restarts.clone(),
            move || {
                let (run, started, stop) = (runs.fetch_add(1, Ordering::SeqCst), started.clone(), stop.clone());
                async move {
                    started.send(run).unwrap();
                    match run {
                        0 => panic!("a bug in the task"),
                        1 => {}
                        _ => stop.cancelled().await,
                    }
                }
            },
        ));
        for run in 0..3 {
            assert_eq!(starts.recv().await, Some(run));
        }
        assert_eq!(restarts.get(), 2, "one panic, one early return");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), supervisor)
            .await
            .expect("the supervisor stops at shutdown")
            .unwrap();
        assert_eq!(starts.recv().await, None, "started again after shutdown");
        assert_eq!(restarts.get(), 2);
    }
}
