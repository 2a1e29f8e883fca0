//! PostgreSQL only, whatever `LATCHKEY_TEST_STORE` says: every statement the store runs in every
//! flow is an index lookup on tables of realistic size. A database of the test's own logs the plan
//! of each statement latchkey runs (`auto_explain`, set on its role); every table gets
//! `LATCHKEY_TEST_PLAN_ROWS` rows (100,000 by default; docs/storage.md has the figures at
//! 10,000,000), the flows run, and no plan may scan a whole table (only the one-row signing-key
//! table is read by a sequential scan). Plans are forced generic (`plan_cache_mode`): the store's
//! statements are prepared once per connection, and PostgreSQL may give such a statement a plan
//! made without its parameters, the stricter case.

mod common;

use common::mail::{eventually, numbered_links};
use common::store::Database;
use common::*;
use latchkey::domain::clock::Clock;
use pb::emails_client::EmailsClient;
use pb::poll_session_response::Status as PollStatus;

const DEFAULT_ROWS: i32 = 100_000;

fn rows() -> i32 {
    std::env::var("LATCHKEY_TEST_PLAN_ROWS").map_or(DEFAULT_ROWS, |rows| rows.parse().expect("a row count"))
}

/// Rows in every table, as the service would have written them: spread over `$1` users, all due
/// for purging in a day (so the sweeper has nothing to do, as in a steady state), the outbox
/// empty. Times are Unix milliseconds around `$2`.
const FILL: &str = "
INSERT INTO users SELECT 'fill' || i, 'fill' || i || '@example.com', 'fill' || i || '@example.com', 'Ann',
    'Lee', 1, 0, false, true, $2::bigint, $2::bigint, $2::bigint, NULL FROM generate_series(1, $1) AS i;
INSERT INTO links SELECT sha256(('l' || i)::bytea), sha256(('s' || i)::bytea), i % 3, 'fill' || (i % $1 + 1),
    'https://app.example.com/', $2::bigint, $2::bigint + 900000, CASE WHEN i % 2 = 0 THEN $2::bigint END, NULL,
    sha256(('r' || i % 1000)::bytea), NULL, NULL, $2::bigint + 86400000 FROM generate_series(1, $1) AS i;
INSERT INTO sessions SELECT 'sfill' || i, 'fill' || (i % $1 + 1), sha256(('t' || i)::bytea), $2::bigint,
    $2::bigint + 86400000, NULL, 0, '{}', $2::bigint + 86400000 FROM generate_series(1, $1) AS i;
INSERT INTO attempts SELECT sha256(('a' || i)::bytea), 'fill' || (i % $1 + 1), 3, sha256(('l' || i)::bytea),
    $2::bigint, $2::bigint + 900000, $2::bigint, '{}', 'sfill' || i, $2::bigint + 86400000 FROM generate_series(1, $1) AS i;
INSERT INTO codes SELECT sha256(('c' || i)::bytea), 'fill' || (i % $1 + 1), '{}', $2::bigint, $2::bigint + 60000, $2::bigint, $2::bigint,
    'sfill' || i, $2::bigint + 86400000 FROM generate_series(1, $1) AS i;
INSERT INTO emails SELECT 'efill' || i, 'fill' || i || '@example.com', 'fill' || (i % $1 + 1), 'Ann', 'Lee',
    i % 3, NULL, '[]', $2::bigint + 900000, 2, 1, NULL, $2::bigint, $2::bigint, $2::bigint, $2::bigint + 86400000 FROM generate_series(1, $1) AS i;
INSERT INTO rate_buckets SELECT 'recipient:fill' || i, 1, $2::bigint, $2::bigint + 3600000 FROM generate_series(1, $1) AS i;
INSERT INTO idempotency_keys SELECT sha256(('k' || i)::bytea), sha256(('q' || i)::bytea), '\\x00', $2::bigint,
    $2::bigint + 86400000 FROM generate_series(1, $1) AS i;
";

/// A statement of each kind the store runs, as its text begins or contains: the flows below must
/// reach every one, or the test proves nothing about it.
const EXPECTED: &[&str] = &[
    "INSERT INTO users",
    "FROM users WHERE id = $1",
    "FROM users WHERE email_key = $1",
    "FROM users WHERE ($1::text IS NULL OR id > $1)",
    "UPDATE users SET email",
    "DELETE FROM users WHERE id = $1",
    "WITH gone AS (DELETE FROM links WHERE user_id = $1",
    "INSERT INTO links",
    "FROM links WHERE user_id = $1 AND reuse_key = $2",
    "FROM links WHERE token_digest = $1 AND used_at IS NULL FOR UPDATE",
    "UPDATE links SET used_at",
    "INSERT INTO sessions",
    "FROM sessions WHERE token_digest = $1",
    "FROM sessions WHERE id = $1",
    "UPDATE sessions SET revoked_at = coalesce",
    "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1",
    "FROM sessions WHERE user_id = $1 AND id > $2",
    "UPDATE sessions SET last_authenticated_at",
    "INSERT INTO attempts",
    "FROM attempts WHERE ref_digest = $1",
    "UPDATE attempts SET status = $2, session_id = $3",
    "INSERT INTO codes",
    "FROM codes WHERE code_digest = $1 FOR UPDATE",
    "UPDATE codes SET used_at",
    "INSERT INTO emails",
    "FROM emails WHERE id = $1",
    "UPDATE emails SET status = 1",
    "UPDATE emails AS e SET status = u.status",
    "SELECT min(next_attempt_at) FROM emails",
    "SELECT count(*) FILTER (WHERE status = 0)",
    "INSERT INTO rate_buckets",
    "FROM rate_buckets WHERE key = $1 FOR UPDATE",
    "DELETE FROM links WHERE",
    "DELETE FROM sessions WHERE",
    "DELETE FROM emails WHERE",
    "DELETE FROM attempts WHERE",
    "DELETE FROM codes WHERE",
    "DELETE FROM rate_buckets WHERE",
    "INSERT INTO idempotency_keys",
    "FROM idempotency_keys WHERE key_digest = $1",
    "UPDATE idempotency_keys SET answer",
    "DELETE FROM idempotency_keys WHERE",
];

/// Tables whose whole-table scan is fine: one row.
const TINY: &[&str] = &["signing_keys"];

/// The plans auto_explain wrote into the server log after `from` (a byte offset): each statement's
/// text and its plan.
fn plans(log: &str, from: usize) -> Vec<(String, String)> {
    log[from..]
        .split("LOG:  duration:")
        .skip(1)
        .filter_map(|entry| {
            let text = entry.split_once("Query Text: ")?.1;
            let (query, plan) = text.split_once('\n').unwrap_or((text, ""));
            // The plan's lines are indented; the next log line's prefix is not.
            let plan: Vec<&str> = plan.lines().take_while(|line| line.starts_with('\t')).collect();
            Some((query.trim().to_string(), plan.join("\n")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_of_every_flow_is_an_index_lookup_on_large_tables() {
    let pg_dir = tempfile::Builder::new().prefix("latchkey-pg-plans").tempdir().unwrap();
    let (database, url) = Database::start(pg_dir.path().join("cluster"), &[]);
    database.as_superuser(
        "ALTER ROLE latchkey SET session_preload_libraries = 'auto_explain'; \
         ALTER ROLE latchkey SET auto_explain.log_min_duration = 0; \
         ALTER ROLE latchkey SET plan_cache_mode = force_generic_plan;",
    );
    let app = TestApp::spawn_with(|config| {
        config.store.backend = latchkey::config::StoreBackend::Postgres;
        config.store.postgres.url = Some(url.clone().into());
    })
    .await;

    let rows = rows();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let now = app.clock.now();
    for statement in FILL.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        client.execute(statement, &[&rows, &now]).await.unwrap();
    }
    client.batch_execute("ANALYZE").await.unwrap();
    let log_path = pg_dir.path().join("cluster/log");
    let from = std::fs::read_to_string(&log_path).unwrap().len();

    // Every flow once: sign-in with a login link (reused, inspected, verified), sessions by token,
    // by id, listed and revoked, users listed, updated and deleted, an email sent by the worker, an
    // enchanted link collected by its poll, an OAuth code exchanged, and a purge.
    let issued = app.issue_for_email("plans@example.com").await;
    app.issue_for_email("plans@example.com").await;
    app.inspect(&token_of(&issued.link)).await.unwrap();
    let verified = app.verify(&token_of(&issued.link), "").await.unwrap();
    let user = verified.user.clone().unwrap();
    let session = session_of(verified);
    use pb::authenticate_session_request::Credential;
    for credential in [
        Credential::SessionToken(session.session_token.clone()),
        Credential::SessionJwt(session.session_jwt.clone()),
    ] {
        let request = pb::AuthenticateSessionRequest {
            credential: Some(credential),
        };
        app.sessions().authenticate_session(request).await.unwrap();
    }
    app.sessions()
        .list_user_sessions(pb::ListUserSessionsRequest {
            user_id: user.user_id.clone(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap();
    app.revoke_session_id(&session.session_id).await;
    app.sessions()
        .revoke_user_sessions(pb::RevokeUserSessionsRequest {
            user_id: user.user_id.clone(),
        })
        .await
        .unwrap();
    app.users()
        .list_users(pb::ListUsersRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    // A call under an idempotency key, and its repeat.
    for _ in 0..2 {
        let mut keyed = tonic::Request::new(pb::RevokeUserSessionsRequest {
            user_id: user.user_id.clone(),
        });
        keyed
            .metadata_mut()
            .insert("idempotency-key", "plans-1".parse().unwrap());
        app.sessions().revoke_user_sessions(keyed).await.unwrap();
    }
    app.update_user(
        &user.user_id,
        pb::User {
            first_name: "Ann".into(),
            ..user.clone()
        },
        &["first_name"],
    )
    .await
    .unwrap();

    let created = app
        .passwordless()
        .login_or_create(pb::LoginOrCreateRequest {
            email: "plans-new@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    eventually("the worker to send the email", async || {
        let status = EmailsClient::new(app.channel.clone())
            .get_email_status(pb::GetEmailStatusRequest {
                email_id: created.email_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        (status.status() == pb::get_email_status_response::Status::Sent).then_some(())
    })
    .await;

    let sent = app
        .send_enchanted(pb::SendEnchantedLinkRequest {
            login_id: "plans@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let message = app.enchanted_email(&sent.email_id).await;
    let right = numbered_links(&message)
        .into_iter()
        .find(|(n, _)| *n == sent.link_id)
        .unwrap()
        .1;
    app.verify(&right, "").await.unwrap();
    let polled = app.poll(&sent.pending_ref, 0).await.unwrap();
    assert_eq!(polled.status(), PollStatus::Verified, "the poll collects the session");

    let oauth = pb::IssueLoginLinkRequest {
        oauth: Some(pb::OAuthParameters {
            client_id: "dev".into(),
            redirect_uri: "http://localhost:3000/oauth/callback".into(),
            scope: "openid".into(),
            state: "s".into(),
            nonce: "n".into(),
            code_challenge: CHALLENGE.into(),
            code_challenge_method: "S256".into(),
            response_type: "code".into(),
        }),
        ..issue_request("plans-oauth@example.com")
    };
    let issued = app.issue(oauth).await.unwrap();
    let code = match app.verify(&token_of(&issued.link), "").await.unwrap().result {
        Some(pb::verify_token_response::Result::Authorization(authorization)) => authorization.code,
        other => panic!("expected an authorization, got {other:?}"),
    };
    app.passwordless()
        .exchange_code(pb::ExchangeCodeRequest {
            grant_type: "authorization_code".into(),
            code,
            code_verifier: VERIFIER.into(),
            client_id: "dev".into(),
            redirect_uri: "http://localhost:3000/oauth/callback".into(),
        })
        .await
        .unwrap();

    app.users()
        .delete_user(pb::DeleteUserRequest {
            user_id: user.user_id.clone(),
        })
        .await
        .unwrap();
    let store = &app.running().domain().store;
    store.purge_expired(app.clock.now(), 1000).await.unwrap();

    // The outbox limit's sampler reads the depth once a second, on its own schedule.
    let log = eventually("the outbox sampler's depth query", async || {
        let log = std::fs::read_to_string(&log_path).unwrap();
        log[from..]
            .contains("SELECT count(*) FILTER (WHERE status = 0)")
            .then_some(log)
    })
    .await;
    let plans = plans(&log, from);
    let missing: Vec<_> = EXPECTED
        .iter()
        .filter(|statement| !plans.iter().any(|(query, _)| query.contains(*statement)))
        .collect();
    assert!(missing.is_empty(), "no plan logged for {missing:?}");
    let scans: Vec<_> = plans
        .iter()
        .filter(|(_, plan)| {
            plan.lines()
                .filter_map(|line| line.split("Seq Scan on ").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .any(|table| !TINY.contains(&table))
        })
        .collect();
    assert!(
        scans.is_empty(),
        "whole-table scans with {rows} rows per table:\n{}",
        scans
            .iter()
            .map(|(query, plan)| format!("{query}\n{plan}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(database);
}
