//! The HTTP port's `/metrics` scraped after real calls: calls by service, method and code (also
//! the API-key interceptor's refusals), latency histograms, outbox depth and sends, live
//! long-polls, store figures, `latchkey_store_unavailable` (1 while a database of the test's own is
//! stopped); and `/healthz` and `/readyz`, which turns 503 as shutdown starts.

mod common;

use common::mail::eventually;
use common::*;
use latchkey::config::StoreBackend;
use tonic::Code;

impl TestApp {
    async fn scrape(&self) -> String {
        let http = self.running().http_addr().expect("the HTTP port is on");
        let (status, body) = http_get(http, "/metrics").await;
        assert_eq!(status, 200);
        body
    }
}

/// The value of the sample `name{labels}` in an exposition, if present.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().expect("a number"))
    })
}

fn calls(service: &str, method: &str, code: &str) -> String {
    format!("latchkey_grpc_calls_total{{service=\"{service}\",method=\"{method}\",code=\"{code}\"}}")
}

#[tokio::test]
async fn calls_are_counted_by_service_method_and_code_with_latency() {
    let app = TestApp::spawn().await;
    let issued = app.issue_for_email("metrics@example.com").await;
    app.issue_for_email("metrics2@example.com").await;
    assert_error(
        app.issue(issue_request("not-an-email")).await,
        Code::InvalidArgument,
        "INVALID_EMAIL",
    );
    app.verify(&token_of(&issued.link), "").await.unwrap();
    assert_error(
        app.verify(&token_of(&issued.link), "").await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect(app.addr).await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();

    let text = app.scrape().await;
    let passwordless = "latchkey.v1.Passwordless";
    assert_eq!(
        sample(&text, &calls(passwordless, "IssueLoginLink", "OK")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &calls(passwordless, "IssueLoginLink", "INVALID_ARGUMENT")),
        Some(1.0)
    );
    assert_eq!(sample(&text, &calls(passwordless, "VerifyToken", "OK")), Some(1.0));
    assert_eq!(
        sample(&text, &calls(passwordless, "VerifyToken", "FAILED_PRECONDITION")),
        Some(1.0)
    );
    assert_eq!(sample(&text, &calls("grpc.health.v1.Health", "Check", "OK")), Some(1.0));
    let histogram = "latchkey_grpc_call_duration_seconds";
    let count = format!("{histogram}_count{{service=\"{passwordless}\",method=\"IssueLoginLink\"}}");
    assert_eq!(sample(&text, &count), Some(3.0), "every call is timed, failed ones too");
    let all = format!("{histogram}_bucket{{le=\"+Inf\",service=\"{passwordless}\",method=\"IssueLoginLink\"}}");
    assert_eq!(sample(&text, &all), Some(3.0), "the +Inf bucket holds every call");
    // The backend's own series.
    match common::store::backend() {
        StoreBackend::Sled => {
            assert!(sample(&text, "latchkey_store_bytes").unwrap() > 0.0);
            let flushes = sample(&text, "latchkey_store_flushes_total").unwrap();
            let writes = sample(&text, "latchkey_store_writes_total").unwrap();
            assert!(
                flushes >= 1.0 && writes >= flushes,
                "{flushes} flushes, {writes} writes"
            );
        }
        StoreBackend::Postgres => {
            let connections = sample(&text, "latchkey_postgres_connections").unwrap();
            let idle = sample(&text, "latchkey_postgres_connections_idle").unwrap();
            assert!(
                connections >= 1.0 && idle <= connections,
                "{connections} connections, {idle} idle"
            );
            assert_eq!(sample(&text, "latchkey_postgres_waiting"), Some(0.0));
        }
    }
    assert_eq!(sample(&text, "latchkey_store_unavailable"), Some(0.0));
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text");

    // A made-up method gets no labels of its own.
    let mut raw = tonic::client::Grpc::new(connect(app.addr).await);
    raw.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/latchkey.v1.Passwordless/NoSuchMethod");
    let codec = tonic_prost::ProstCodec::<pb::GetJwksRequest, pb::GetJwksResponse>::default();
    let status = raw
        .unary(tonic::Request::new(pb::GetJwksRequest {}), path, codec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let text = app.scrape().await;
    assert_eq!(sample(&text, &calls("unknown", "unknown", "UNIMPLEMENTED")), Some(1.0));
    assert!(!text.contains("NoSuchMethod"));
}

#[tokio::test]
async fn refusals_by_the_api_key_check_are_counted() {
    let app = TestApp::spawn_with(|config| {
        config.auth.required = true;
        config.auth.api_keys = vec![latchkey::config::ApiKeyConfig {
            name: "tests".into(),
            sha256: latchkey::crypto::api_key_digest("right-key"),
            scopes: vec![latchkey::config::Scope::Admin],
        }];
    })
    .await;
    assert_error(
        app.issue(issue_request("nokey@example.com")).await,
        Code::Unauthenticated,
        "API_KEY_INVALID",
    );
    let text = app.scrape().await;
    assert_eq!(
        sample(
            &text,
            &calls("latchkey.v1.Passwordless", "IssueLoginLink", "UNAUTHENTICATED")
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn outbox_sends_and_live_long_polls_are_reported() {
    let app = TestApp::spawn().await;
    let request = pb::SendEnchantedLinkRequest {
        login_id: "poller@example.com".into(),
        ..Default::default()
    };
    let sent = app
        .passwordless()
        .send_enchanted_link(request)
        .await
        .unwrap()
        .into_inner();
    let mut poller = app.passwordless();
    let waiting = tokio::spawn(async move {
        let request = pb::PollSessionRequest {
            pending_ref: sent.pending_ref,
            wait_seconds: 30,
            client: None,
        };
        poller.poll_session(request).await
    });
    eventually("the poll to be live and the email sent", async || {
        let text = app.scrape().await;
        let live = sample(&text, "latchkey_long_polls_live")?;
        let sent = sample(&text, "latchkey_mail_sent_total")?;
        let queued = sample(&text, "latchkey_outbox_queued")?;
        // The send is counted once the transport has the message; its outcome is recorded just
        // after (in a batch), and only then is the email no longer SENDING.
        let sending = sample(&text, "latchkey_outbox_sending")?;
        (live == 1.0 && sent == 1.0 && queued == 0.0 && sending == 0.0).then_some(())
    })
    .await;
    let text = app.scrape().await;
    assert_eq!(sample(&text, "latchkey_mail_failed_total"), Some(0.0));
    assert_eq!(sample(&text, "latchkey_mail_retried_total"), Some(0.0));
    // Exported from the start, so that an alert on restarts has a series to watch.
    for task in ["mail_worker", "sweeper", "key_rotation"] {
        let series = format!("latchkey_background_task_restarts_total{{task=\"{task}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    app.stop().await;
    let answer = waiting.await.unwrap().unwrap().into_inner();
    assert_eq!(answer.status(), pb::poll_session_response::Status::Pending);
}

#[tokio::test]
async fn readiness_follows_health_and_turns_off_as_shutdown_starts() {
    let app = TestApp::spawn_with(|config| config.shutdown_delay_seconds = 2).await;
    let http = app.running().http_addr().unwrap();
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    let stopping = tokio::spawn(app.stop());
    // During the shutdown delay the port still answers, and says not ready.
    eventually("readyz to say 503", async || {
        (http_get(http, "/readyz").await.0 == 503).then_some(())
    })
    .await;
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    stopping.await.unwrap();
}

/// The series an outage alert watches: 1 while the database does not answer, 0 again once it does
/// (a PostgreSQL of the test's own, stopped and started again, whatever the suite's backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unavailable_is_one_while_the_database_does_not_answer() {
    let pg_dir = tempfile::Builder::new()
        .prefix("latchkey-pg-metrics")
        .tempdir()
        .unwrap();
    let (database, url) = common::store::Database::start(pg_dir.path().join("cluster"), &[]);
    let app = TestApp::spawn_with(|config| {
        config.store.backend = StoreBackend::Postgres;
        config.store.postgres.url = Some(url.clone().into());
        config.store.postgres.connect_timeout_seconds = 2;
        config.store.postgres.statement_timeout_seconds = 2;
    })
    .await;
    let unavailable = async |app: &TestApp| sample(&app.scrape().await, "latchkey_store_unavailable");
    assert_eq!(unavailable(&app).await, Some(0.0));

    database.stop();
    eventually("latchkey_store_unavailable to turn 1", async || {
        (unavailable(&app).await == Some(1.0)).then_some(())
    })
    .await;
    database.resume();
    eventually("latchkey_store_unavailable to turn 0 again", async || {
        (unavailable(&app).await == Some(0.0)).then_some(())
    })
    .await;
}
