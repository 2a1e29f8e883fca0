//! Storage: the backends of the `domain::store::Store` port and what they share. `open` picks the
//! backend the config names and returns it with its wake-ups; closing the store (`Store::close`)
//! does whatever that backend needs: sled, embedded, one process (`sled_store`); PostgreSQL, any
//! number of replicas (`postgres`).

pub mod local_wakeups;
pub mod postgres;
pub mod sled_store;
pub mod sweeper;

use std::path::Path;
use std::sync::Arc;

use crate::config::{StoreBackend, StoreConfig};
use crate::domain::store::Store;
use crate::domain::wakeups::Wakeups;

/// An open store and the wake-ups that reach every process sharing it.
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub wakeups: Arc<dyn Wakeups>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Sled(#[from] sled_store::OpenError),
    #[error(transparent)]
    Postgres(#[from] postgres::OpenError),
}

/// Opens the configured backend; `data_dir` is where an embedded backend keeps its files.
pub async fn open(config: &StoreConfig, data_dir: &Path) -> Result<Opened, OpenError> {
    match config.backend {
        StoreBackend::Sled => {
            let options = sled_store::SledOptions::new(config, data_dir);
            let store = tokio::task::spawn_blocking(move || sled_store::SledStore::open(&options))
                .await
                .expect("opening the store does not panic")?;
            Ok(Opened {
                store: Arc::new(store),
                wakeups: Arc::new(local_wakeups::LocalWakeups::default()),
            })
        }
        StoreBackend::Postgres => {
            let (store, wakeups) = postgres::open(config).await?;
            Ok(Opened {
                store: Arc::new(store),
                wakeups: Arc::new(wakeups),
            })
        }
    }
}
