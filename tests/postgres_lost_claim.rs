//! PostgreSQL only, whatever `LATCHKEY_TEST_STORE` says (a database of the test's own): what an
//! idempotency key's claim does when its acknowledgement is lost, and claims from before claimants.
//! A proxy that reads the wire protocol (`common::pg_proxy`) lets the claim's INSERT reach the
//! server and commit, then drops the server's answer and closes the connection: a commit whose
//! acknowledgement was lost, as a failover or a dead network path makes one, not a simulation of
//! latchkey's side. The call fails `STORE_UNAVAILABLE` (outcome unknown) without running, and its
//! retry under the same key is answered within moments, not held for the claim's 2-minute lease,
//! and runs the call once.

mod common;

use std::time::{Duration, Instant};

use common::pg_proxy::PgProxy;
use common::store::Database;
use common::*;
use latchkey::config::StoreBackend;
use latchkey::crypto::Digest32;
use latchkey::domain::clock::Clock;
use latchkey::domain::model::{HOUR, MINUTE, Millis};
use latchkey::domain::store::{Claimant, IdempotencyClaim, IdempotencyState};
use tonic::Code;

/// Well inside the 20 s a repeat waits for a running call before `IDEMPOTENCY_KEY_IN_USE`, and
/// the 2-minute lease: a bound on a loaded machine, not a measurement (about 2 s in a debug build,
/// most of it the call's own work once the lost claim is let go of, within half a second).
const PROMPTLY: Duration = Duration::from_secs(5);

fn on(url: String) -> impl FnOnce(&mut latchkey::config::Config) {
    move |config| {
        config.store.backend = StoreBackend::Postgres;
        config.store.postgres.url = Some(url.into());
    }
}

/// A claim under a claimant of its own, with the lease and keep the API gives claims.
fn claim<'a>(key: &'a Digest32, request: &'a Digest32, now: Millis) -> IdempotencyClaim<'a> {
    IdempotencyClaim {
        key,
        request,
        claimant: Claimant::random(),
        now,
        lease: 2 * MINUTE,
        keep: 24 * HOUR,
    }
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_acknowledgement_was_lost_does_not_hold_the_retry_for_its_lease() {
    let pg_dir = tempfile::Builder::new()
        .prefix("latchkey-pg-lost-claim")
        .tempdir()
        .unwrap();
    let (_database, url) = Database::start(pg_dir.path().join("cluster"), &[]);
    let proxy = PgProxy::start(&url).await;
    let app = TestApp::spawn_with(on(proxy.url(&url))).await;
    let request = pb::LoginOrCreateRequest {
        email: "lost-claim@example.com".into(),
        ..Default::default()
    };

    proxy.lose_next_answer_to("INSERT INTO idempotency_keys");
    let first = app
        .passwordless()
        .login_or_create(keyed(request.clone(), "signup-lost"))
        .await;
    let status = assert_error(first, Code::Unavailable, "STORE_UNAVAILABLE");
    assert!(status.message().contains("outcome is unknown"), "{}", status.message());
    assert_eq!(
        proxy.lost(),
        ["INSERT 0 1"],
        "the server made the claim and committed it; only its answer was lost"
    );

    let started = Instant::now();
    let retried = app
        .passwordless()
        .login_or_create(keyed(request.clone(), "signup-lost"))
        .await
        .expect("the retry runs the call instead of waiting on the lost claim")
        .into_inner();
    let waited = started.elapsed();
    assert!(waited < PROMPTLY, "the retry was answered after {waited:?}");

    // The call ran once: the first stopped at its claim, the retry made one user and one email.
    let database = sql(&url).await;
    let count = async |query: &str| -> i64 {
        database
            .query_one(query, &[&"lost-claim@example.com"])
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(count("SELECT count(*) FROM users WHERE email_key = $1").await, 1);
    assert_eq!(count("SELECT count(*) FROM emails WHERE recipient = $1").await, 1);
    // And the key holds the retry's answer.
    let repeat = app
        .passwordless()
        .login_or_create(keyed(request, "signup-lost"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(repeat, retried);
}

/// Rows claimed before the upgrade that added claimants (migration 6) have none: no call settles
/// them, a running one waits out its lease and is then taken over, and an answered one still
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_from_before_claimants_is_settled_by_no_call_and_waits_out_its_lease() {
    let pg_dir = tempfile::Builder::new()
        .prefix("latchkey-pg-old-claims")
        .tempdir()
        .unwrap();
    let (_database, url) = Database::start(pg_dir.path().join("cluster"), &[]);
    let app = TestApp::spawn_with(on(url.clone())).await;
    let (dir, clock) = app.stop().await;

    // The schema as version 5 left it, with a claim in flight and an answered one, written as the
    // build before claimants wrote them.
    let now = clock.now();
    let (running, answered, request) = (
        Digest32::of("running before"),
        Digest32::of("answered before"),
        Digest32::of("request"),
    );
    let database = sql(&url).await;
    database
        .batch_execute(
            "ALTER TABLE idempotency_keys DROP COLUMN claimant; \
             DELETE FROM latchkey_migrations WHERE version = 6",
        )
        .await
        .unwrap();
    for (key, answer) in [(running, None), (answered, Some(&b"sealed before"[..]))] {
        database
            .execute(
                "INSERT INTO idempotency_keys (key_digest, request_digest, answer, lease_until, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &&key.0[..],
                    &&request.0[..],
                    &answer,
                    &(now + 2 * MINUTE),
                    &(now + 24 * HOUR),
                ],
            )
            .await
            .unwrap();
    }

    let mut config = test_config(&dir);
    on(url.clone())(&mut config);
    let app = TestApp::start_in(dir, config, clock).await;
    let store = app.running().domain().store.clone();
    assert_eq!(
        store
            .claim_idempotency_key(claim(&answered, &request, now + 1))
            .await
            .unwrap(),
        IdempotencyState::Answered(b"sealed before".to_vec())
    );
    // No claimant matches a row without one, whichever way it settles.
    store
        .settle_idempotency_key(&running, &Claimant::random(), Some(b"not its answer"))
        .await
        .unwrap();
    store
        .settle_idempotency_key(&running, &Claimant::random(), None)
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_idempotency_key(claim(&running, &request, now + 1))
            .await
            .unwrap(),
        IdempotencyState::Running
    );
    // Its lease runs out as it always did, and a repeat takes the key over, now with a claimant
    // that settles it.
    let takeover = claim(&running, &request, now + 2 * MINUTE);
    assert_eq!(
        store.claim_idempotency_key(takeover).await.unwrap(),
        IdempotencyState::Claimed
    );
    store
        .settle_idempotency_key(&running, &takeover.claimant, Some(b"answered now"))
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_idempotency_key(claim(&running, &request, now + 2 * MINUTE + 1))
            .await
            .unwrap(),
        IdempotencyState::Answered(b"answered now".to_vec())
    );
}
