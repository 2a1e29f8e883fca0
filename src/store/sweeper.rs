//! Purges records whose retention has ended, so the store stays bounded under steady load.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::clock::Clock;
use crate::domain::error::Result;
use crate::domain::store::Store;

/// Records removed per batch: small enough that one batch never holds up other writes for long.
const BATCH: usize = 1_000;

/// Purges everything due now, batch by batch; returns how many records went.
pub async fn sweep(store: &dyn Store, clock: &dyn Clock) -> Result<usize> {
    let mut purged = 0;
    loop {
        let batch = store.purge_expired(clock.now(), BATCH).await?;
        purged += batch;
        if batch < BATCH {
            return Ok(purged);
        }
        tokio::task::yield_now().await;
    }
}

/// Sweeps every `interval` until `shutdown` is cancelled.
pub async fn run(store: Arc<dyn Store>, clock: Arc<dyn Clock>, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match sweep(store.as_ref(), clock.as_ref()).await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "purged expired records"),
            Err(error) => tracing::warn!(%error, "sweeping expired records failed; will retry"),
        }
    }
}
