//! What one peer may hold, checked by what the server refuses or closes: streams past the limit on
//! one connection are refused, connections that do not finish their handshake (half a preface,
//! nothing, an unfinished HTTP request) are closed, a peer that stops answering pings is closed,
//! and past `max_connections` a new connection waits until one closes.

mod common;

use std::time::Duration;

use common::h2raw::{self, RawH2};
use common::*;
use tokio::io::AsyncWriteExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A bound on how long a test waits for the server to act, so a broken limit fails the test
/// instead of hanging it (not a synchronisation sleep).
const BOUND: Duration = Duration::from_secs(30);

const WATCH: &str = "/grpc.health.v1.Health/Watch";

async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {BOUND:?}"))
}

async fn serving(channel: tonic::transport::Channel) -> ServingStatus {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers")
        .into_inner()
        .status()
}

#[tokio::test]
async fn streams_past_the_limit_on_one_connection_are_refused_without_a_key() {
    let app = TestApp::spawn_with(|config| config.limits.max_concurrent_streams = 8).await;
    let mut raw = RawH2::connect(app.addr).await;
    let settings = bounded("server SETTINGS", raw.read_frame()).await.expect("SETTINGS");
    assert_eq!(settings.kind, h2raw::SETTINGS);
    assert_eq!(settings.max_concurrent_streams(), Some(8), "advertised");
    // A client that ignores the advertised limit and never acknowledges the SETTINGS.
    let ids: Vec<u32> = (0..20).map(|n| 2 * n + 1).collect();
    for id in &ids {
        raw.open_call(*id, WATCH).await;
    }
    // The first 8 are held (their request bodies never finish), the other 12 refused at once.
    let mut refused = Vec::new();
    while refused.len() < 12 {
        let frame = bounded("refusals", raw.read_frame())
            .await
            .expect("the connection stays open");
        match frame.kind {
            h2raw::RST_STREAM => {
                assert_eq!(frame.error_code(), h2raw::REFUSED_STREAM, "{frame:?}");
                refused.push(frame.stream_id);
            }
            h2raw::GOAWAY => panic!("the connection was closed instead: {frame:?}"),
            _ => {}
        }
    }
    assert_eq!(
        refused,
        ids[8..],
        "every stream past the limit is refused, none before it"
    );
}

#[tokio::test]
async fn connections_that_send_no_request_are_closed_on_both_ports() {
    let app = TestApp::spawn_with(|config| config.limits.handshake_timeout_seconds = 1).await;
    let http = app.running().http_addr().expect("the HTTP port is on");
    let mut half_preface = RawH2::tcp(app.addr).await;
    half_preface.send(&h2raw::PREFACE[..12]).await;
    let mut silent = RawH2::tcp(app.addr).await;
    let mut unfinished_http = tokio::net::TcpStream::connect(http).await.unwrap();
    unfinished_http
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    bounded("half a preface", half_preface.until_closed()).await;
    bounded("nothing at all", silent.until_closed()).await;
    let mut unfinished = RawH2 {
        stream: unfinished_http,
    };
    assert!(
        bounded("an unfinished HTTP request", unfinished.until_closed())
            .await
            .is_empty(),
        "closed without an answer"
    );
    // A client that connected eagerly and has not called yet keeps its connection: it completed
    // the HTTP/2 handshake, and from then on keep-alive pings tell whether it is alive.
    assert_eq!(serving(app.channel.clone()).await, ServingStatus::Serving);
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed() {
    let app = TestApp::spawn_with(|config| {
        config.limits.keepalive_interval_seconds = 1;
        config.limits.keepalive_timeout_seconds = 1;
        config.limits.idle_timeout_seconds = 3;
    })
    .await;
    let mut raw = RawH2::connect(app.addr).await;
    raw.open_call(1, "/grpc.health.v1.Health/Check").await;
    const END_STREAM: u8 = 0x1;
    // An empty HealthCheckRequest: uncompressed, length 0.
    raw.frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]).await;
    let frames = bounded("a silent peer", raw.until_closed()).await;
    assert!(
        frames.iter().any(|f| f.kind == h2raw::HEADERS && f.stream_id == 1),
        "the call was answered first"
    );
    const PING: u8 = 0x6;
    assert!(
        frames.iter().any(|f| f.kind == PING),
        "the server pinged before closing"
    );
    // A peer that answers the pings keeps its connection well past the idle timeout (3 s).
    let mut polite = RawH2::connect(app.addr).await;
    polite.open_call(1, "/grpc.health.v1.Health/Check").await;
    polite.frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]).await;
    let mut answered_pings = 0;
    while answered_pings < 6 {
        let frame = bounded("pings", polite.read_frame())
            .await
            .expect("a live peer stays connected");
        const ACK: u8 = 0x1;
        if frame.kind == PING && frame.flags & ACK == 0 {
            polite.frame(PING, ACK, 0, &frame.payload).await;
            answered_pings += 1;
        }
    }
}

#[tokio::test]
async fn past_max_connections_a_new_connection_waits_for_a_free_slot() {
    // The test's own channel holds one of the three slots.
    let app = TestApp::spawn_with(|config| config.limits.max_connections = 3).await;
    assert_eq!(serving(app.channel.clone()).await, ServingStatus::Serving);
    let first = RawH2::connect(app.addr).await;
    let _second = RawH2::connect(app.addr).await;
    let waiting = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_lazy();
    let mut health = HealthClient::new(waiting);
    let mut call = Box::pin(health.check(HealthCheckRequest::default()));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), call.as_mut())
            .await
            .is_err(),
        "a fourth connection is not served while three are open"
    );
    drop(first);
    let answer = bounded("a freed slot", call).await.expect("served once a slot is free");
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
}

/// At the file-descriptor limit, accept fails at once: the server backs off instead of spinning,
/// the handshake deadline frees the descriptors idle clients hold, and health answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_accept_backs_off_and_idle_clients_are_shed() {
    use common::process::BinaryServer;
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new("prlimit");
    command
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env("LATCHKEY_LOG__FORMAT", "json")
        .env("LATCHKEY_LIMITS__HANDSHAKE_TIMEOUT_SECONDS", "2")
        .args(["--nofile=96:96", "--"])
        .arg(env!("CARGO_BIN_EXE_latchkey"))
        .args(common::process::SERVE_ARGS)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let server = BinaryServer::spawn(command, dir.path());
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // The first failure waits 5 ms, the next ones twice as long each time.
    let deadline = std::time::Instant::now() + BOUND;
    while !server.log().contains("\"retry_in_ms\":10") {
        assert!(std::time::Instant::now() < deadline, "no back-off:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.log().contains("accepting a connection failed"));
    // Every idle client is closed at its handshake deadline, which frees the descriptors.
    for stream in idle {
        bounded("an idle client shed", RawH2 { stream }.until_closed()).await;
    }
    let channel = bounded("a connection after the storm", connect(server.addr)).await;
    assert_eq!(serving(channel).await, ServingStatus::Serving);
}
