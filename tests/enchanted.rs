//! Enchanted links end to end: one email with three numbered links, a long-poll in flight on the
//! starting device, the right click answering it at once, the session handed out exactly once;
//! wrong links, expiry, modes, claims and bad inputs.

mod common;

use common::mail::*;
use common::*;
use pb::poll_session_response::Status as PollStatus;
use tonic::Code;

fn send_request(email: &str) -> pb::SendEnchantedLinkRequest {
    pb::SendEnchantedLinkRequest {
        login_id: email.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_device_sign_in_with_a_long_poll_in_flight() {
    let app = TestApp::spawn().await;
    let mut claims = prost_types::Struct::default();
    claims.fields.insert(
        "plan".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("pro".into())),
        },
    );
    claims.fields.insert(
        "seats".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(5.0)),
        },
    );
    let request = pb::SendEnchantedLinkRequest {
        login_options: Some(pb::LoginOptions {
            stepup: true,
            mfa: false,
            custom_claims: Some(claims),
        }),
        provider_id: "acme-idp".into(),
        sso_app_id: "app-7".into(),
        ..send_request("cross@example.com")
    };
    let (sent, right, wrong) = app.enchanted(request).await;
    assert!(sent.user_created);
    assert_eq!(sent.masked_email, "c***@example.com");
    let number: u8 = sent.link_id.parse().unwrap();
    assert!((10..=99).contains(&number));
    assert_eq!(wrong.len(), 2);

    // Inspecting does not use anything up.
    let inspected = app.inspect(&right).await.unwrap();
    assert_eq!(inspected.link_kind(), pb::LinkKind::EnchantedLink);
    assert_eq!(inspected.masked_email, "c***@example.com");
    assert_eq!(
        app.poll(&sent.pending_ref, 0).await.unwrap().status(),
        PollStatus::Pending
    );

    // The starting device waits; the click on the other device answers it at once.
    let mut poller = app.passwordless();
    let pending_ref = sent.pending_ref.clone();
    let waiting = tokio::spawn(async move {
        let request = pb::PollSessionRequest {
            pending_ref,
            wait_seconds: 30,
            client: None,
        };
        poller.poll_session(request).await.unwrap().into_inner()
    });
    let started = std::time::Instant::now();
    let clicked = app.verify(&right, "").await.unwrap();
    assert_eq!(clicked.link_kind(), pb::LinkKind::EnchantedLink);
    assert!(clicked.user_activated);
    assert!(
        matches!(clicked.result, Some(pb::verify_token_response::Result::Enchanted(ref c)) if c.verified_at.is_some()),
        "the clicking device gets a confirmation, not a session: {:?}",
        clicked.result
    );
    let answered = waiting.await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "answered by the click, not by the timeout"
    );
    assert_eq!(answered.status(), PollStatus::Verified);
    let user = answered.user.unwrap();
    assert_eq!(user.user_id, sent.user_id);
    assert_eq!(user.status(), pb::user::Status::Active);
    let session = answered.session.unwrap();
    assert_eq!(
        session.session_token.len(),
        51,
        "a 6-byte stamp and 256 bits, base64url"
    );

    // The JWT carries the login options, ids and custom claims.
    let payload = session.session_jwt.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["plan"], "pro");
    assert_eq!(claims["seats"], 5);
    assert_eq!(claims["stepup"], true);
    assert_eq!(claims["provider_id"], "acme-idp");
    assert_eq!(claims["sso_app_id"], "app-7");
    assert_eq!(claims["sub"], sent.user_id.as_str());
    // ...and keeps them when AuthenticateSession refreshes it.
    let refreshed = app
        .sessions()
        .authenticate_session(pb::AuthenticateSessionRequest {
            credential: Some(pb::authenticate_session_request::Credential::SessionToken(
                session.session_token.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let payload = refreshed
        .session
        .unwrap()
        .session_jwt
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["plan"], "pro");

    // Handed out once.
    assert_eq!(
        app.poll(&sent.pending_ref, 0).await.unwrap().status(),
        PollStatus::Collected
    );
    assert!(app.poll(&sent.pending_ref, 0).await.unwrap().session.is_none());
    // The links are done with.
    assert_error(
        app.verify(&right, "").await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
    assert_error(
        app.verify(&wrong[0], "").await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
}

#[tokio::test]
async fn a_wrong_link_fails_the_whole_attempt() {
    let app = TestApp::spawn().await;
    let (sent, right, wrong) = app.enchanted(send_request("wrong@example.com")).await;
    assert_error(
        app.verify(&wrong[0], "").await,
        Code::FailedPrecondition,
        "WRONG_ENCHANTED_LINK",
    );
    assert_eq!(
        app.poll(&sent.pending_ref, 5).await.unwrap().status(),
        PollStatus::Failed
    );
    assert_error(
        app.verify(&right, "").await,
        Code::FailedPrecondition,
        "WRONG_ENCHANTED_LINK",
    );
    assert_error(
        app.inspect(&right).await,
        Code::FailedPrecondition,
        "WRONG_ENCHANTED_LINK",
    );
    assert_error(
        app.verify(&wrong[1], "").await,
        Code::FailedPrecondition,
        "WRONG_ENCHANTED_LINK",
    );
}

#[tokio::test]
async fn attempts_expire_and_sending_again_keeps_earlier_attempts() {
    let app = TestApp::spawn().await;
    let (first, first_right, _) = app.enchanted(send_request("again@example.com")).await;
    let (second, second_right, _) = app
        .enchanted(pb::SendEnchantedLinkRequest {
            expiration_minutes: 30,
            ..send_request("again@example.com")
        })
        .await;
    assert!(!second.user_created);
    let lifetime = |sent: &pb::SendEnchantedLinkResponse| sent.expires_at.unwrap().seconds;
    assert_eq!(
        lifetime(&second) - lifetime(&first),
        20 * 60,
        "default 10 minutes vs 30"
    );

    app.clock.advance_minutes(11);
    assert_eq!(
        app.poll(&first.pending_ref, 0).await.unwrap().status(),
        PollStatus::Expired
    );
    assert_error(
        app.verify(&first_right, "").await,
        Code::FailedPrecondition,
        "TOKEN_EXPIRED",
    );
    // The second attempt was not invalidated by the first, nor the first by the second.
    app.verify(&second_right, "")
        .await
        .expect("the later attempt still works");
    assert_eq!(
        app.poll(&second.pending_ref, 0).await.unwrap().status(),
        PollStatus::Verified
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_50_concurrent_pollers_exactly_one_gets_the_session() {
    let app = TestApp::spawn().await;
    let (sent, right, _) = app.enchanted(send_request("fifty@example.com")).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(51));
    let pollers: Vec<_> = (0..50)
        .map(|_| {
            let mut client = app.passwordless();
            let pending_ref = sent.pending_ref.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let request = pb::PollSessionRequest {
                    pending_ref,
                    wait_seconds: 30,
                    client: None,
                };
                client.poll_session(request).await.unwrap().into_inner()
            })
        })
        .collect();
    barrier.wait().await;
    app.verify(&right, "").await.unwrap();
    let mut verified = 0;
    for poller in pollers {
        let answer = poller.await.unwrap();
        match answer.status() {
            PollStatus::Verified => {
                assert!(answer.session.is_some());
                verified += 1;
            }
            PollStatus::Collected => assert!(answer.session.is_none()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(verified, 1);
}

#[tokio::test]
async fn modes_and_bad_inputs() {
    let app = TestApp::spawn().await;
    let (user, _) = app.signed_in("known@example.com").await;
    use pb::send_enchanted_link_request::Mode;
    let sign_up = pb::SendEnchantedLinkRequest {
        mode: Mode::SignUp.into(),
        ..send_request("known@example.com")
    };
    assert_error(app.send_enchanted(sign_up).await, Code::AlreadyExists, "USER_EXISTS");
    let sign_in = pb::SendEnchantedLinkRequest {
        mode: Mode::SignIn.into(),
        ..send_request("nobody@example.com")
    };
    assert_error(app.send_enchanted(sign_in).await, Code::NotFound, "USER_NOT_FOUND");
    let known = pb::SendEnchantedLinkRequest {
        mode: Mode::SignIn.into(),
        ..send_request("KNOWN@example.com")
    };
    let sent = app.send_enchanted(known).await.unwrap();
    assert_eq!(sent.user_id, user.user_id);
    assert!(!sent.user_created);

    let reserved = |name: &str| {
        let mut claims = prost_types::Struct::default();
        claims.fields.insert(
            name.into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("x".into())),
            },
        );
        pb::LoginOptions {
            custom_claims: Some(claims),
            ..Default::default()
        }
    };
    let base = || send_request("bad@example.com");
    let cases: Vec<(&str, pb::SendEnchantedLinkRequest, Code, &str)> = vec![
        (
            "no login_id",
            pb::SendEnchantedLinkRequest::default(),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            "bad login_id",
            send_request("nope"),
            Code::InvalidArgument,
            "INVALID_EMAIL",
        ),
        (
            "redirect",
            pb::SendEnchantedLinkRequest {
                redirect_url: "https://evil.example/".into(),
                ..base()
            },
            Code::InvalidArgument,
            "REDIRECT_NOT_ALLOWED",
        ),
        (
            "t param",
            pb::SendEnchantedLinkRequest {
                redirect_url: "http://localhost:3000/?t=1".into(),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_URL",
        ),
        (
            "short",
            pb::SendEnchantedLinkRequest {
                expiration_minutes: 4,
                ..base()
            },
            Code::InvalidArgument,
            "EXPIRATION_OUT_OF_RANGE",
        ),
        (
            "template",
            pb::SendEnchantedLinkRequest {
                template_id: "nope".into(),
                ..base()
            },
            Code::InvalidArgument,
            "TEMPLATE_NOT_FOUND",
        ),
        (
            "reserved claim",
            pb::SendEnchantedLinkRequest {
                login_options: Some(reserved("sub")),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "OIDC claim auth_time",
            pb::SendEnchantedLinkRequest {
                login_options: Some(reserved("auth_time")),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "OIDC claim nonce",
            pb::SendEnchantedLinkRequest {
                login_options: Some(reserved("nonce")),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "OIDC claim email_verified",
            pb::SendEnchantedLinkRequest {
                login_options: Some(reserved("email_verified")),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "access token claim scope",
            pb::SendEnchantedLinkRequest {
                login_options: Some(reserved("scope")),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "access token claim client_id",
            pb::SendEnchantedLinkRequest {
                login_options: Some(reserved("client_id")),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "long provider",
            pb::SendEnchantedLinkRequest {
                provider_id: "p".repeat(201),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "mode",
            pb::SendEnchantedLinkRequest { mode: 9, ..base() },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
    ];
    assert_refusals(cases, |request| app.send_enchanted(request)).await;
    let lookup = pb::GetUserRequest {
        user: Some(pb::get_user_request::User::Email("bad@example.com".into())),
    };
    assert_error(app.users().get_user(lookup).await, Code::NotFound, "USER_NOT_FOUND");

    let unknown = latchkey::crypto::new_secret(1_795_545_262_253);
    assert_error(app.poll(&unknown, 0).await, Code::NotFound, "PENDING_REF_NOT_FOUND");
    assert_error(app.poll("garbage", 0).await, Code::NotFound, "PENDING_REF_NOT_FOUND");
    assert_error(app.poll("", 0).await, Code::InvalidArgument, "MISSING_FIELD");
    assert_error(
        app.poll(&sent.pending_ref, 31).await,
        Code::InvalidArgument,
        "INVALID_VALUE",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_in_flight_at_shutdown_answers_promptly() {
    let app = TestApp::spawn().await;
    let sent = app.send_enchanted(send_request("bye@example.com")).await.unwrap();
    let mut poller = app.passwordless();
    let pending_ref = sent.pending_ref.clone();
    let waiting = tokio::spawn(async move {
        poller
            .poll_session(pb::PollSessionRequest {
                pending_ref,
                wait_seconds: 30,
                client: None,
            })
            .await
    });
    // The poll is parked once it counts as live.
    let domain = app.running().domain().clone();
    eventually("the poll to wait", async || {
        (domain.live_polls.load(std::sync::atomic::Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    drop(domain);
    let started = std::time::Instant::now();
    app.stop().await;
    let answer = waiting.await.unwrap().expect("answered, not cut off").into_inner();
    assert_eq!(answer.status(), PollStatus::Pending);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "shutdown did not wait out the poll"
    );
}
