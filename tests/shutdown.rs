//! The real binary stops within its grace period whatever clients do: unfinished HTTP requests on
//! the metrics port, idle TCP connections and unfinished calls on the gRPC port. And a full disk:
//! health turns NOT_SERVING, readiness and liveness fail, SIGTERM still ends, and after space is
//! freed a restart serves every acknowledged write.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::h2raw::{self, RawH2};
use common::process::BinaryServer;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A bound on waits for the server, so a hang fails the test (not a synchronisation sleep).
const BOUND: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_within_the_grace_period_whatever_idle_clients_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = BinaryServer::start(
        dir.path(),
        &[],
        &[
            ("LATCHKEY_SHUTDOWN_GRACE_SECONDS", "5"),
            // Long enough that only the grace period can end these connections.
            ("LATCHKEY_LIMITS__HANDSHAKE_TIMEOUT_SECONDS", "300"),
            ("LATCHKEY_LIMITS__IDLE_TIMEOUT_SECONDS", "3600"),
        ],
    );
    let channel = connect(server.addr).await;
    let issued = pb::passwordless_client::PasswordlessClient::new(channel.clone())
        .issue_login_link(issue_request("stays@example.com"))
        .await
        .unwrap()
        .into_inner();
    let http = server.http_addr.expect("the HTTP port is on");
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(http).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        held.push(stream);
    }
    for _ in 0..10 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut unfinished = Vec::new();
    for _ in 0..3 {
        let mut raw = RawH2::connect(server.addr).await;
        raw.open_call(1, "/grpc.health.v1.Health/Check").await;
        let settings = raw.read_frame().await.expect("served");
        assert_eq!(settings.kind, h2raw::SETTINGS);
        unfinished.push(raw);
    }
    // Connections are accepted in order: once a later one is answered, the held ones are in.
    assert_eq!(http_get(http, "/healthz").await.0, 200);

    server.sigterm();
    let status = server.wait_within(BOUND).expect("SIGTERM ends the process");
    let log = server.log();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("closed them"), "the grace period ended the drain:\n{log}");
    assert!(log.contains("store closed"), "the store closed cleanly:\n{log}");
    drop(held);

    let server = BinaryServer::start(dir.path(), &[], &[]);
    let verified = pb::passwordless_client::PasswordlessClient::new(connect(server.addr).await)
        .verify_token(pb::VerifyTokenRequest {
            token: token_of(&issued.link),
            ..Default::default()
        })
        .await;
    assert!(verified.is_ok(), "{verified:?}");
}

/// A tmpfs mounted on `path`, unmounted when dropped (tests run as root, as CI does).
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(path: &'a Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root, as the test command runs"
        );
        Self(path)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// Fills the file system holding `path` with one file; returns it.
fn fill(path: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let filler = path.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    filler
}

async fn health_status(channel: tonic::transport::Channel) -> Option<ServingStatus> {
    let answer = HealthClient::new(channel).check(HealthCheckRequest::default()).await;
    answer.ok().map(|answer| answer.into_inner().status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_health_not_serving_and_shutdown_still_ends() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, "24m");
    // sled's disk (a database server's full disk is the database's to report).
    let env = [
        ("LATCHKEY_SHUTDOWN_GRACE_SECONDS", "5"),
        ("LATCHKEY_STORE__BACKEND", "sled"),
    ];
    let mut server = BinaryServer::start(dir.path(), &[], &env);
    let channel = connect(server.addr).await;
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(channel.clone());
    let before = passwordless
        .issue_login_link(issue_request("before@example.com"))
        .await
        .unwrap()
        .into_inner();
    let filler = fill(&data);

    let mut refused = None;
    for n in 0..5000 {
        let request = issue_request(&format!("full{n}@example.com"));
        if let Err(status) = passwordless.issue_login_link(request).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("a full disk refuses writes");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(reason(&refused), "STORE_UNAVAILABLE");

    // Health follows the store within its one-second check.
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    loop {
        let update = tokio::time::timeout(BOUND, watch.message())
            .await
            .expect("health stayed SERVING");
        if update.unwrap().expect("the watch goes on").status() == ServingStatus::NotServing {
            break;
        }
    }
    let http = server.http_addr.expect("the HTTP port is on");
    let (ready, body) = http_get(http, "/readyz").await;
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("free space, then restart"), "{body}");
    assert_eq!(http_get(http, "/healthz").await.0, 503, "liveness asks for the restart");

    server.sigterm();
    assert!(
        server.wait_within(BOUND).is_some(),
        "SIGTERM ends the process on a full disk"
    );

    // What docs/limits.md says to do: free space, then restart. Every acknowledged write is there.
    std::fs::remove_file(filler).unwrap();
    let server = BinaryServer::start(dir.path(), &[], &env);
    let channel = connect(server.addr).await;
    assert_eq!(health_status(channel.clone()).await, Some(ServingStatus::Serving));
    let verified = pb::passwordless_client::PasswordlessClient::new(channel)
        .verify_token(pb::VerifyTokenRequest {
            token: token_of(&before.link),
            ..Default::default()
        })
        .await;
    assert!(verified.is_ok(), "{verified:?}");
}
