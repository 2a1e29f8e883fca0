//! The store the suites run on. `LATCHKEY_TEST_STORE` picks the backend (`sled`, the default), so
//! every end-to-end suite can run unchanged on another backend; an unknown name fails, never
//! falls back.

use std::sync::Arc;

use latchkey::config::{Config, Profile, StoreBackend};
use latchkey::domain::store::Store;
use latchkey::domain::wakeups::Wakeups;
use tempfile::TempDir;

/// The backend `LATCHKEY_TEST_STORE` names.
pub fn backend() -> StoreBackend {
    match std::env::var("LATCHKEY_TEST_STORE").as_deref() {
        Err(_) | Ok("" | "sled") => StoreBackend::Sled,
        Ok(other) => panic!("LATCHKEY_TEST_STORE={other}: no such store backend (sled)"),
    }
}

/// The backend's name, as `LATCHKEY_STORE__BACKEND` takes it (for the binary).
pub fn backend_name() -> &'static str {
    match backend() {
        StoreBackend::Sled => "sled",
    }
}

/// Points `config` at the test backend.
pub fn configure(config: &mut Config) {
    config.store.backend = backend();
}

/// A store of the test backend, empty, opened as the server opens it.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub wakeups: Arc<dyn Wakeups>,
    pub dir: TempDir,
}

pub async fn open_test_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::defaults(Profile::Development);
    configure(&mut config);
    let opened = latchkey::store::open(&config.store, &dir.path().join("data"))
        .await
        .expect("the test store opens");
    TestStore {
        store: opened.store,
        wakeups: opened.wakeups,
        dir,
    }
}
