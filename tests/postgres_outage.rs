//! PostgreSQL stopped and started again under a running replica (a database of the test's own,
//! started with scripts/postgres): calls fail fast with `STORE_UNAVAILABLE` instead of hanging,
//! health turns `NOT_SERVING` (`/readyz` 503, while `/healthz`, liveness, stays 200), and once the
//! database is back the replica serves again without a restart, with every link it acknowledged
//! before the outage.

mod common;

use std::time::Duration;

use common::mail::eventually;
use common::process::BinaryServer;
use common::store::Database;
use common::*;
use pb::passwordless_client::PasswordlessClient;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Far longer than a call may take with a 2 s statement timeout: a bound, not a measurement.
const NO_HANG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_calls_fast_and_the_replica_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let pg_dir = tempfile::Builder::new().prefix("latchkey-pg-outage").tempdir().unwrap();
    let (database, url) = Database::start(pg_dir.path().join("cluster"), &[]);
    let env = [
        ("LATCHKEY_STORE__BACKEND", "postgres"),
        ("LATCHKEY_STORE__POSTGRES__URL", url.as_str()),
        ("LATCHKEY_STORE__POSTGRES__STATEMENT_TIMEOUT_SECONDS", "2"),
        ("LATCHKEY_STORE__POSTGRES__CONNECT_TIMEOUT_SECONDS", "2"),
    ];
    let server = BinaryServer::start(dir.path(), &[], &env);
    let channel = connect(server.addr).await;
    let mut client = PasswordlessClient::new(channel.clone());
    let mut before = Vec::new();
    for n in 0..5 {
        let issued = client
            .issue_login_link(issue_request(&format!("before{n}@example.com")))
            .await
            .unwrap()
            .into_inner();
        before.push(token_of(&issued.link));
    }

    database.stop();
    let failed = tokio::time::timeout(NO_HANG, client.issue_login_link(issue_request("during@example.com")))
        .await
        .expect("the call fails instead of hanging");
    let status = assert_error(failed, Code::Unavailable, "STORE_UNAVAILABLE");
    assert!(
        !status.message().contains("latchkey-test-password"),
        "{}",
        status.message()
    );
    eventually("health to turn NOT_SERVING", async || {
        (health(channel.clone()).await == Some(ServingStatus::NotServing)).then_some(())
    })
    .await;
    // Not ready, but alive: restarting the replica would not bring the database back.
    let http = server.http_addr.expect("the HTTP port");
    assert_eq!(http_get(http, "/readyz").await.0, 503);
    assert_eq!(http_get(http, "/healthz").await.0, 200);

    database.resume();
    eventually("health to turn SERVING again", async || {
        (health(channel.clone()).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    client
        .issue_login_link(issue_request("after@example.com"))
        .await
        .expect("served again without a restart");
    for token in before {
        client
            .verify_token(pb::VerifyTokenRequest {
                token,
                ..Default::default()
            })
            .await
            .expect("a link acknowledged before the outage verifies after it");
    }
    assert!(
        !server.log().contains("latchkey-test-password"),
        "the database password is in the log"
    );
}

/// A replica started while its database is down waits for it instead of exiting: it says so in
/// its log (without the password), and serves once the database is up. One whose wait runs out
/// exits 1 naming the database and the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_before_its_database_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let pg_dir = tempfile::Builder::new().prefix("latchkey-pg-late").tempdir().unwrap();
    let (database, url) = Database::start(pg_dir.path().join("cluster"), &[]);
    database.stop();

    let mut command = common::process::command(dir.path());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data"])
        .env("LATCHKEY_STORE__BACKEND", "postgres")
        .env("LATCHKEY_STORE__POSTGRES__URL", &url)
        .env("LATCHKEY_STORE__POSTGRES__STARTUP_WAIT_SECONDS", "1");
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach PostgreSQL yet; waiting for it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot reach PostgreSQL at latchkey@127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("latchkey-test-password"), "{stderr}");

    // The default wait (60 s), with the database started once the replica has said it waits.
    let mut command = common::process::command(dir.path());
    command
        .args(common::process::SERVE_ARGS)
        .env("LATCHKEY_STORE__BACKEND", "postgres")
        .env("LATCHKEY_STORE__POSTGRES__URL", &url);
    let (waits, waiting) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        let said_so = waiting.recv_timeout(NO_HANG).is_ok();
        database.resume();
        (database, said_so)
    });
    let server = BinaryServer::spawn_watching(command, dir.path(), "waiting for it", waits);
    let (_database, said_so) = watcher.join().unwrap();
    assert!(said_so, "the replica did not say it waits:\n{}", server.log());
    let channel = connect(server.addr).await;
    PasswordlessClient::new(channel)
        .issue_login_link(issue_request("late@example.com"))
        .await
        .expect("served once the database is up");
    assert!(
        !server.log().contains("latchkey-test-password"),
        "the password is in the log"
    );
}

/// Under load every pooled connection can be busy, which is not the database being gone: with a
/// pool of one held by a call that waits on a row lock until its statement timeout, health stays
/// `SERVING` throughout (the probe has a connection of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_is_not_taken_for_an_unreachable_database() {
    let dir = tempfile::tempdir().unwrap();
    let pg_dir = tempfile::Builder::new().prefix("latchkey-pg-busy").tempdir().unwrap();
    let (_database, url) = Database::start(pg_dir.path().join("cluster"), &[]);
    let env = [
        ("LATCHKEY_STORE__BACKEND", "postgres"),
        ("LATCHKEY_STORE__POSTGRES__URL", url.as_str()),
        ("LATCHKEY_STORE__POSTGRES__POOL_SIZE", "1"),
        ("LATCHKEY_STORE__POSTGRES__STATEMENT_TIMEOUT_SECONDS", "6"),
    ];
    let server = BinaryServer::start(dir.path(), &[], &env);
    let channel = connect(server.addr).await;
    let mut client = PasswordlessClient::new(channel.clone());
    let issued = client
        .issue_login_link(issue_request("busy@example.com"))
        .await
        .unwrap()
        .into_inner();

    let (locker, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; SELECT 1 FROM links FOR UPDATE")
        .await
        .unwrap();
    let verify = tokio::spawn(async move {
        client
            .verify_token(pb::VerifyTokenRequest {
                token: token_of(&issued.link),
                ..Default::default()
            })
            .await
    });
    let mut checks = 0;
    while !verify.is_finished() {
        assert_eq!(
            health(channel.clone()).await,
            Some(ServingStatus::Serving),
            "health while the only pooled connection waits"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(checks > 10, "the call held the pool for a while ({checks} checks)");
    assert_error(verify.await.unwrap(), Code::Unavailable, "STORE_UNAVAILABLE");
}

/// A COMMIT that never comes back (synchronous replication to a standby that does not exist, as
/// when the only synchronous standby is gone) is not answered as a success, nor as a plain failure:
/// past the call's deadline it answers `UNAVAILABLE` saying the outcome is unknown. The connection
/// it waited on is closed, not handed to the next call (the pool holds one), so other calls are
/// served meanwhile; and `statement_timeout` does not cut the wait short (a cancelled wait for
/// synchronous replication answers success).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_waits_forever_answers_outcome_unknown_and_its_connection_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let pg_dir = tempfile::Builder::new().prefix("latchkey-pg-commit").tempdir().unwrap();
    let (database, url) = Database::start(pg_dir.path().join("cluster"), &[]);
    // scripts/postgres turns synchronous_commit off for the server; this database's sessions wait.
    database.as_superuser("ALTER DATABASE latchkey SET synchronous_commit = on");
    let env = [
        ("LATCHKEY_STORE__BACKEND", "postgres"),
        ("LATCHKEY_STORE__POSTGRES__URL", url.as_str()),
        ("LATCHKEY_STORE__POSTGRES__POOL_SIZE", "1"),
        ("LATCHKEY_STORE__POSTGRES__STATEMENT_TIMEOUT_SECONDS", "2"),
    ];
    let server = BinaryServer::start(dir.path(), &[], &env);
    let channel = connect(server.addr).await;
    let mut client = PasswordlessClient::new(channel.clone());
    let before = client
        .issue_login_link(issue_request("before@example.com"))
        .await
        .expect("served while commits need no standby")
        .into_inner();

    database.as_superuser("ALTER SYSTEM SET synchronous_standby_names = 'nowhere'");
    database.as_superuser("SELECT pg_reload_conf()");
    let started = std::time::Instant::now();
    let stuck = tokio::time::timeout(NO_HANG, client.issue_login_link(issue_request("stuck@example.com")))
        .await
        .expect("the call is bounded by its deadline");
    let waited = started.elapsed();
    let status = assert_error(stuck, Code::Unavailable, "STORE_UNAVAILABLE");
    assert!(status.message().contains("outcome is unknown"), "{}", status.message());
    // The deadline is the statement timeout and a second: the commit outlived the statement timeout.
    assert!(waited >= Duration::from_secs(2), "answered after {waited:?}");

    // Still waiting on the server, on a connection latchkey let go of.
    let waiting = waiting_for_sync_replication(&url).await;
    assert_eq!(waiting, 1, "the stuck COMMIT is still waiting on the server");
    // A call that commits nothing is served at once on a new connection; the old one, with its
    // COMMIT in flight, would have held it until the deadline.
    let started = std::time::Instant::now();
    client
        .inspect_token(pb::InspectTokenRequest {
            token: token_of(&before.link),
        })
        .await
        .expect("a read is served while a commit hangs");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(health(channel.clone()).await, Some(ServingStatus::Serving));

    database.as_superuser("ALTER SYSTEM SET synchronous_standby_names = ''");
    database.as_superuser("SELECT pg_reload_conf()");
    client
        .issue_login_link(issue_request("after@example.com"))
        .await
        .expect("served once commits are acknowledged again");
}

/// How many sessions of the `latchkey` database wait for synchronous replication.
async fn waiting_for_sync_replication(url: &str) -> i64 {
    let (observer, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'latchkey' AND wait_event = 'SyncRep'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}
