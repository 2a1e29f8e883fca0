//! sled only, whatever `LATCHKEY_TEST_STORE` says: what the embedded store does with its data
//! directory. A clean stop checkpoints it, so the next start reads a snapshot instead of the whole
//! log; a second process on the same directory is refused.

mod common;

use std::path::Path;

use common::process::BinaryServer;
use common::*;

/// The environment that makes the binary use sled.
const SLED: &[(&str, &str)] = &[("LATCHKEY_STORE__BACKEND", "sled")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinaryServer::start(dir.path(), &[], SLED);
    // Even on the same address, the store's lock is what a second process reports.
    let address = server.addr.to_string();
    let second = common::process::command(dir.path())
        .args(["serve", "--listen", &address, "--data-dir", "data"])
        .envs(SLED.iter().copied())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another latchkey process"), "{stderr}");
}

/// sled writes its recovery snapshot only while it opens, so a start reads the whole log written
/// since the previous start unless shutdown checkpointed. Names of the snapshot files in `data`.
fn snapshots(data: &Path) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("snap.") && !name.ends_with(".generating"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_the_store_so_the_next_start_reads_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = BinaryServer::start(dir.path(), &[], SLED);
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(connect(server.addr).await);
    let tokens = issue_tokens(&mut passwordless, "c", 20).await;
    assert!(snapshots(&data).is_empty(), "a fresh store has no snapshot yet");
    server.sigterm();
    let exit = server.wait();
    assert!(exit.success(), "exit status {exit:?}; log:\n{}", server.log());
    assert!(server.log().contains("store checkpointed"), "{}", server.log());
    let written = snapshots(&data);
    assert_eq!(written.len(), 1, "one snapshot after a clean stop: {written:?}");

    // The checkpoint changed nothing the next start sees.
    let server = BinaryServer::start(dir.path(), &[], SLED);
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(connect(server.addr).await);
    for token in tokens {
        passwordless
            .verify_token(pb::VerifyTokenRequest {
                token,
                ..Default::default()
            })
            .await
            .expect("a link issued before the checkpoint verifies after it");
    }
}
