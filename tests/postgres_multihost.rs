//! A multi-host database URL without a cluster manager (databases of the test's own, started with
//! scripts/postgres): with `target_session_attrs=read-write` the client skips a host that is down
//! and a read-only one (`default_transaction_read_only`, as a standby answers) and writes to the
//! read-write one; health is NOT_SERVING only while no read-write host answers; and the password
//! never shows, neither in the start-up error when no host will do nor in calls' errors or the log.

mod common;

use std::path::Path;

use common::mail::{eventually, free_port};
use common::process::BinaryServer;
use common::store::Database;
use common::*;
use pb::passwordless_client::PasswordlessClient;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const PASSWORD: &str = "latchkey-test-password";

/// `postgres://latchkey:PASSWORD@127.0.0.1:P1,127.0.0.1:P2,.../latchkey?target_session_attrs=read-write`
fn multi_host_url(ports: &[u16]) -> String {
    let hosts: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
    format!(
        "postgres://latchkey:{PASSWORD}@{}/latchkey?target_session_attrs=read-write",
        hosts.join(",")
    )
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn env(url: &str) -> [(&'static str, &str); 4] {
    [
        ("LATCHKEY_STORE__BACKEND", "postgres"),
        ("LATCHKEY_STORE__POSTGRES__URL", url),
        ("LATCHKEY_STORE__POSTGRES__CONNECT_TIMEOUT_SECONDS", "2"),
        ("LATCHKEY_STORE__POSTGRES__STATEMENT_TIMEOUT_SECONDS", "2"),
    ]
}

/// The binary, told not to wait for the database, refuses to start on `url`; its stderr.
fn refused_start(dir: &Path, url: &str) -> String {
    let mut command = common::process::command(dir);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data"])
        .envs(env(url))
        // No host will take writes during this test: give up at once rather than wait for one.
        .env("LATCHKEY_STORE__POSTGRES__STARTUP_WAIT_SECONDS", "0");
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{url} started:\n{stderr}");
    stderr
}

/// The result of a one-value query on the database at `url` (a single-host URL).
async fn query_one(url: &str, sql: &str) -> Option<i64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_host_url_skips_a_host_that_is_down_and_a_read_only_one() {
    let dir = tempfile::tempdir().unwrap();
    let pg_dir = tempfile::Builder::new()
        .prefix("latchkey-pg-multihost")
        .tempdir()
        .unwrap();
    let (read_only, read_only_url) = Database::start(pg_dir.path().join("read-only"), &[]);
    read_only.as_superuser("ALTER DATABASE latchkey SET default_transaction_read_only = on");
    let down = free_port();

    // No host will take writes: the start fails, naming every host and no password.
    let stderr = refused_start(dir.path(), &multi_host_url(&[down, port_of(&read_only_url)]));
    let target = format!(
        "cannot reach PostgreSQL at latchkey@127.0.0.1:{down},127.0.0.1:{}/latchkey",
        port_of(&read_only_url)
    );
    assert!(stderr.contains(&target), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "the password is in the error:\n{stderr}");

    let (writable, writable_url) = Database::start(pg_dir.path().join("writable"), &[]);
    let url = multi_host_url(&[down, port_of(&read_only_url), port_of(&writable_url)]);
    let server = BinaryServer::start(dir.path(), &[], &env(&url));
    let channel = connect(server.addr).await;
    let mut client = PasswordlessClient::new(channel.clone());
    let issued = client
        .issue_login_link(issue_request("multi@example.com"))
        .await
        .expect("served by the read-write host")
        .into_inner();
    assert_eq!(
        query_one(&writable_url, "SELECT count(*) FROM links").await,
        Some(1),
        "the link is on the read-write host"
    );
    assert_eq!(
        query_one(
            &read_only_url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'links'"
        )
        .await,
        Some(0),
        "the read-only host was never written to (not even migrated)"
    );

    // The read-write host gone, the read-only one still answering: that is no primary.
    writable.stop();
    let failed = client.issue_login_link(issue_request("down@example.com")).await;
    let status = assert_error(failed, Code::Unavailable, "STORE_UNAVAILABLE");
    assert!(!status.message().contains(PASSWORD), "{}", status.message());
    eventually("health to turn NOT_SERVING", async || {
        (health(channel.clone()).await == Some(ServingStatus::NotServing)).then_some(())
    })
    .await;
    writable.resume();
    eventually("health to turn SERVING again", async || {
        (health(channel.clone()).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    client
        .verify_token(pb::VerifyTokenRequest {
            token: token_of(&issued.link),
            ..Default::default()
        })
        .await
        .expect("the link verifies once the read-write host is back");
    assert!(!server.log().contains(PASSWORD), "the password is in the log");
}
