//! Idempotency keys end to end over gRPC: a repeat under the same key gets the first call's answer
//! (the same session from VerifyToken and ExchangeCode, which would otherwise answer
//! TOKEN_ALREADY_USED or take the repeat for a replayed code; the same email, sent once over real
//! SMTP, from LoginOrCreate), concurrent repeats wait for the first, the answer survives a restart
//! and is not readable in the store, a different request under a used key and malformed keys are
//! refused.

mod common;

use common::mail::*;
use common::*;
use latchkey::config::MailTransport;
use tonic::{Code, Request};

const CALLBACK: &str = "http://localhost:3000/oauth/callback";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_verification_gets_the_same_session_even_after_a_restart() {
    let app = TestApp::spawn().await;
    let token = token_of(&app.issue_for_email("again@example.com").await.link);
    let first = app
        .passwordless()
        .verify_token(keyed(verify_request(&token), "verify-1"))
        .await
        .unwrap()
        .into_inner();
    let session = session_of(first.clone());
    let repeat = app
        .passwordless()
        .verify_token(keyed(verify_request(&token), "verify-1"))
        .await
        .expect("a repeat is answered, not TOKEN_ALREADY_USED")
        .into_inner();
    assert_eq!(repeat, first);
    // Without the key it is a second use.
    assert_error(
        app.verify(&token, "").await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );

    // The answer holds the session token; the store holds it sealed.
    let (dir, clock) = app.stop().await;
    let stored = common::store::stored_bytes(dir.path());
    assert!(
        !stored
            .windows(session.session_token.len())
            .any(|window| window == session.session_token.as_bytes()),
        "the session token is readable in the store"
    );
    let config = test_config(&dir);
    let app = TestApp::start_in(dir, config, clock).await;
    let after_restart = app
        .passwordless()
        .verify_token(keyed(verify_request(&token), "verify-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after_restart, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_code_verification_gets_the_same_session_and_a_repeated_wrong_code_counts_again() {
    let app = TestApp::spawn().await;
    let queued = app
        .passwordless()
        .login_or_create(pb::LoginOrCreateRequest {
            email: "code-again@example.com".into(),
            include_otp: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let code = otp_in(&app.enchanted_email(&queued.email_id).await).unwrap();
    let request = |otp: &str| pb::VerifyOtpRequest {
        email_id: queued.email_id.clone(),
        otp: otp.into(),
        ..Default::default()
    };
    // A wrong code is a refusal, so its key is let go: the repeat is a second guess.
    let wrong = if code == "000000" { "000001" } else { "000000" };
    for tries_left in ["4 more", "3 more"] {
        let status = app
            .passwordless()
            .verify_otp(keyed(request(wrong), "wrong-1"))
            .await
            .unwrap_err();
        assert_eq!(reason(&status), "OTP_INVALID");
        assert!(status.message().contains(tries_left), "{}", status.message());
    }
    let first = app
        .passwordless()
        .verify_otp(keyed(request(&code), "otp-1"))
        .await
        .unwrap()
        .into_inner();
    let repeat = app
        .passwordless()
        .verify_otp(keyed(request(&code), "otp-1"))
        .await
        .expect("a repeat is answered, not TOKEN_ALREADY_USED")
        .into_inner();
    assert_eq!(repeat, first);
    assert_error(
        app.passwordless().verify_otp(request(&code)).await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
    assert_error(
        app.passwordless().verify_otp(keyed(request(wrong), "otp-1")).await,
        Code::InvalidArgument,
        "IDEMPOTENCY_KEY_REUSED",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_wait_for_the_first_and_get_its_answer() {
    let app = TestApp::spawn().await;
    let token = token_of(&app.issue_for_email("race@example.com").await.link);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut client = app.passwordless();
            let token = token.clone();
            tokio::spawn(async move { client.verify_token(keyed(verify_request(&token), "race")).await })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().expect("every repeat is answered").into_inner());
    }
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "one session for all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_code_exchange_is_not_a_replay() {
    let app = TestApp::spawn().await;
    let request = pb::IssueLoginLinkRequest {
        oauth: Some(pb::OAuthParameters {
            client_id: "dev".into(),
            redirect_uri: CALLBACK.into(),
            scope: "openid email".into(),
            state: "st".into(),
            nonce: "n".into(),
            code_challenge: CHALLENGE.into(),
            code_challenge_method: "S256".into(),
            response_type: "code".into(),
        }),
        ..issue_request("oauth-again@example.com")
    };
    let issued = app.issue(request).await.unwrap();
    let Some(pb::verify_token_response::Result::Authorization(authorization)) =
        app.verify(&token_of(&issued.link), "").await.unwrap().result
    else {
        panic!("an OAuth login link yields an authorization");
    };
    let exchange = pb::ExchangeCodeRequest {
        grant_type: "authorization_code".into(),
        code: authorization.code.clone(),
        code_verifier: VERIFIER.into(),
        client_id: "dev".into(),
        redirect_uri: CALLBACK.into(),
    };
    let first = app
        .passwordless()
        .exchange_code(keyed(exchange.clone(), "exchange-1"))
        .await
        .unwrap()
        .into_inner();
    let repeat = app
        .passwordless()
        .exchange_code(keyed(exchange, "exchange-1"))
        .await
        .expect("a repeat is answered, not CODE_ALREADY_USED")
        .into_inner();
    assert_eq!(repeat, first);
    // A replay would have revoked the session the exchange created.
    let session = app.running().domain().store.session(&first.session_id).await.unwrap();
    assert!(session.unwrap().revoked_at.is_none(), "the repeat revoked the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_login_or_create_queues_one_email_sent_once_over_smtp() {
    let maildir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = SmtpServer::start(maildir.path(), port, &SmtpOptions::default());
    let app = TestApp::spawn_with(|config| {
        config.mail.transport = MailTransport::Smtp;
        config.mail.smtp.host = "localhost".into();
        config.mail.smtp.port = Some(port);
        config.mail.smtp.tls = latchkey::config::SmtpTls::None;
    })
    .await;
    let request = pb::LoginOrCreateRequest {
        email: "once@example.com".into(),
        ..Default::default()
    };
    let first = app
        .passwordless()
        .login_or_create(keyed(request.clone(), "signup-1"))
        .await
        .unwrap()
        .into_inner();
    let repeat = app
        .passwordless()
        .login_or_create(keyed(request.clone(), "signup-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(repeat, first, "the same email id");
    sent(app.addr, &first.email_id).await;
    // A later email, queued after the repeat, is delivered too: by then a second copy of the
    // first would have gone out before it.
    let later = app
        .passwordless()
        .login_or_create(pb::LoginOrCreateRequest {
            email: "later@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    sent(app.addr, &later.email_id).await;
    let to_first = server
        .messages()
        .iter()
        .filter(|message| message.contains("once@example.com"))
        .count();
    assert_eq!(to_first, 1, "one email for two calls under one key");

    // The same key with a different request is refused, and changes nothing.
    let other = pb::LoginOrCreateRequest {
        email: "other@example.com".into(),
        ..Default::default()
    };
    let reused = app.passwordless().login_or_create(keyed(other, "signup-1")).await;
    assert_error(reused, Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED");
    // So is the same key on another RPC.
    let token = token_of(&app.issue_for_email("x@example.com").await.link);
    let elsewhere = app
        .passwordless()
        .verify_token(keyed(verify_request(&token), "signup-1"))
        .await;
    assert_error(elsewhere, Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED");
    app.verify(&token, "")
        .await
        .expect("the refused call did not use the link");
}

#[tokio::test]
async fn malformed_keys_are_refused_with_a_clear_reason() {
    let app = TestApp::spawn().await;
    let token = token_of(&app.issue_for_email("bad-key@example.com").await.link);
    let long = "k".repeat(256);
    let cases: [(&str, &[u8], &str); 4] = [
        ("empty", b"", "is empty"),
        ("256 characters", long.as_bytes(), "has 256 characters"),
        ("a tab", b"tab\there", "not printable ASCII"),
        ("not ASCII", "caf\u{e9}".as_bytes(), "not printable ASCII"),
    ];
    for (label, key, said) in cases {
        let mut request = Request::new(verify_request(&token));
        request.metadata_mut().insert(
            "idempotency-key",
            tonic::metadata::MetadataValue::try_from(key).unwrap(),
        );
        let status = assert_error(
            app.passwordless().verify_token(request).await,
            Code::InvalidArgument,
            "INVALID_IDEMPOTENCY_KEY",
        );
        assert!(status.message().contains(said), "{label}: {}", status.message());
    }
    let max = "k".repeat(255);
    app.passwordless()
        .verify_token(keyed(verify_request(&token), &max))
        .await
        .expect("255 characters is a key, and nothing above used the link");
}
