//! One-time codes beside email links, end to end over gRPC and the development mail folder: the
//! code in a LoginOrCreate or SendEnchantedLink email signs in another device (VerifyOtp) and uses
//! the link up; the link uses the code up; wrong codes are counted atomically and the 5th burns
//! the code and the links; the code is in neither the store nor the log.

mod common;

use common::mail::*;
use common::mime::header;
use common::process::BinaryServer;
use common::*;
use tonic::Code;

fn login_or_create(email: &str) -> pb::LoginOrCreateRequest {
    pb::LoginOrCreateRequest {
        email: email.into(),
        include_otp: Some(true),
        ..Default::default()
    }
}

fn verify_otp(email_id: &str, otp: &str) -> pb::VerifyOtpRequest {
    pb::VerifyOtpRequest {
        email_id: email_id.into(),
        otp: otp.into(),
        ..Default::default()
    }
}

/// A code of the same length that is not `code`.
fn wrong(code: &str, n: u64) -> String {
    let modulus = 10u64.pow(code.len() as u32);
    let value = (code.parse::<u64>().unwrap() + 1 + n) % modulus;
    format!("{value:0width$}", width = code.len())
}

impl TestApp {
    async fn queue(&self, request: pb::LoginOrCreateRequest) -> pb::LoginOrCreateResponse {
        self.passwordless().login_or_create(request).await.unwrap().into_inner()
    }

    async fn verify_otp(&self, request: pb::VerifyOtpRequest) -> Result<pb::VerifyOtpResponse, tonic::Status> {
        self.passwordless().verify_otp(request).await.map(|r| r.into_inner())
    }

    /// The wrong codes the store has counted on the email's code.
    async fn counted_failures(&self, email_id: &str) -> u8 {
        let store = &self.running().domain().store;
        let email = store.email(email_id).await.unwrap().unwrap();
        let carrier = email.links.iter().find(|link| link.otp).expect("the email has a code");
        let link = store.link(&carrier.token_digest).await.unwrap().unwrap();
        link.otp.unwrap().failures
    }
}

#[tokio::test]
async fn the_code_signs_in_another_device_and_uses_the_link_up() {
    let app = TestApp::spawn().await;
    let queued = app
        .queue(pb::LoginOrCreateRequest {
            create_user_as_pending: true,
            ..login_or_create("phone@example.com")
        })
        .await;
    let message = app.enchanted_email(&queued.email_id).await;
    let code = otp_in(&message).expect("the email shows a code");
    assert_eq!(code.len(), 6, "6 digits by default");
    let subject = header(&message, "Subject").unwrap();
    assert!(
        !subject.contains(&code),
        "the subject (shown in notifications) has no code"
    );
    let token = token_in(&part(&message, "text/plain"), "token");

    // The other device has only the code, and the email's id from the page that asked for it.
    let verified = app
        .verify_otp(pb::VerifyOtpRequest {
            client: Some(pb::ClientMetadata {
                ip_address: "203.0.113.9".into(),
                user_agent: "Mozilla/5.0 (Android 15)".into(),
            }),
            session_duration_minutes: 60,
            ..verify_otp(&queued.email_id, &format!(" {code} "))
        })
        .await
        .unwrap();
    assert_eq!(verified.link_kind(), pb::LinkKind::MagicLink);
    assert!(verified.user_activated, "a PENDING user is activated by the code");
    let user = verified.user.unwrap();
    assert_eq!(user.status(), pb::user::Status::Active);
    assert!(user.email_verified);
    let session = verified.session.unwrap();
    assert_eq!(session.user_id, queued.user_id);
    assert!(!session.session_token.is_empty() && !session.session_jwt.is_empty());
    let lifetime = session.expires_at.unwrap().seconds - session.created_at.unwrap().seconds;
    assert_eq!(lifetime, 3600);
    let authenticated = app
        .sessions()
        .authenticate_session(pb::AuthenticateSessionRequest {
            credential: Some(pb::authenticate_session_request::Credential::SessionToken(
                session.session_token.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(authenticated.session.unwrap().session_id, session.session_id);
    let stored = app
        .running()
        .domain()
        .store
        .session(&session.session_id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.via_otp);
    assert_eq!(stored.client.unwrap().ip_address, "203.0.113.9");

    // One credential: the link is used up, and so is the code.
    assert_error(
        app.verify(&token, "").await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
    assert_error(
        app.inspect(&token).await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
    assert_error(
        app.verify_otp(verify_otp(&queued.email_id, &code)).await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
}

#[tokio::test]
async fn the_link_uses_the_code_up_and_an_email_without_a_code_has_none() {
    let app = TestApp::spawn().await;
    let queued = app.queue(login_or_create("laptop@example.com")).await;
    let message = app.enchanted_email(&queued.email_id).await;
    let code = otp_in(&message).unwrap();
    let token = token_in(&part(&message, "text/plain"), "token");
    app.verify(&token, "").await.unwrap();
    assert_error(
        app.verify_otp(verify_otp(&queued.email_id, &code)).await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );

    // Off by default: no code in the email, and VerifyOtp says so without counting anything.
    let plain = app
        .queue(pb::LoginOrCreateRequest {
            include_otp: None,
            ..login_or_create("plain@example.com")
        })
        .await;
    let message = app.enchanted_email(&plain.email_id).await;
    assert_eq!(otp_in(&message), None, "{}", part(&message, "text/plain"));
    assert_error(
        app.verify_otp(verify_otp(&plain.email_id, "123456")).await,
        Code::FailedPrecondition,
        "OTP_INVALID",
    );
    assert_error(
        app.verify_otp(verify_otp("email-00000000-0000-7000-8000-000000000000", "123456"))
            .await,
        Code::NotFound,
        "EMAIL_NOT_FOUND",
    );

    // Deleting the user deletes its links: the code goes with them.
    let gone = app.queue(login_or_create("deleted@example.com")).await;
    let code = otp_in(&app.enchanted_email(&gone.email_id).await).unwrap();
    app.users()
        .delete_user(pb::DeleteUserRequest {
            user_id: gone.user_id.clone(),
        })
        .await
        .unwrap();
    assert_error(
        app.verify_otp(verify_otp(&gone.email_id, &code)).await,
        Code::NotFound,
        "TOKEN_NOT_FOUND",
    );
}

#[tokio::test]
async fn the_fifth_wrong_code_burns_the_code_and_the_link() {
    let app = TestApp::spawn().await;
    let queued = app.queue(login_or_create("guess@example.com")).await;
    let message = app.enchanted_email(&queued.email_id).await;
    let code = otp_in(&message).unwrap();
    let token = token_in(&part(&message, "text/plain"), "token");
    for n in 0..4 {
        let status = assert_error(
            app.verify_otp(verify_otp(&queued.email_id, &wrong(&code, n))).await,
            Code::FailedPrecondition,
            "OTP_INVALID",
        );
        assert!(
            status.message().contains(&format!("{} more wrong", 4 - n)),
            "{}",
            status.message()
        );
        assert!(!status.message().contains(&code), "the error does not show the code");
    }
    assert_eq!(app.counted_failures(&queued.email_id).await, 4);
    // A malformed code is a bad request, not a guess.
    assert_error(
        app.verify_otp(verify_otp(&queued.email_id, "12ab56")).await,
        Code::InvalidArgument,
        "INVALID_VALUE",
    );
    assert_error(
        app.verify_otp(verify_otp(&queued.email_id, &wrong(&code, 7))).await,
        Code::FailedPrecondition,
        "OTP_ATTEMPTS_EXCEEDED",
    );
    // Every later try, right or wrong, and the link too.
    for otp in [code.clone(), wrong(&code, 8)] {
        assert_error(
            app.verify_otp(verify_otp(&queued.email_id, &otp)).await,
            Code::FailedPrecondition,
            "OTP_ATTEMPTS_EXCEEDED",
        );
    }
    assert_eq!(app.counted_failures(&queued.email_id).await, 5);
    assert_error(
        app.verify(&token, "").await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
}

#[tokio::test]
async fn expiry_and_pkce_apply_to_the_code_as_to_the_link() {
    let app = TestApp::spawn().await;
    // A new user gets the sign-up email, with the sign-up link's lifetime.
    let queued = app
        .queue(pb::LoginOrCreateRequest {
            signup_expiration_minutes: 5,
            code_challenge: CHALLENGE.into(),
            ..login_or_create("pkce@example.com")
        })
        .await;
    let code = otp_in(&app.enchanted_email(&queued.email_id).await).unwrap();
    assert_error(
        app.verify_otp(verify_otp(&queued.email_id, &code)).await,
        Code::FailedPrecondition,
        "PKCE_REQUIRED",
    );
    assert_error(
        app.verify_otp(pb::VerifyOtpRequest {
            code_verifier: "x".repeat(43),
            ..verify_otp(&queued.email_id, &code)
        })
        .await,
        Code::FailedPrecondition,
        "PKCE_MISMATCH",
    );
    assert_eq!(
        app.counted_failures(&queued.email_id).await,
        0,
        "PKCE refusals are not wrong codes"
    );
    app.clock.advance_minutes(6);
    assert_error(
        app.verify_otp(pb::VerifyOtpRequest {
            code_verifier: VERIFIER.into(),
            ..verify_otp(&queued.email_id, &code)
        })
        .await,
        Code::FailedPrecondition,
        "TOKEN_EXPIRED",
    );
}

fn enchanted_request(email: &str) -> pb::SendEnchantedLinkRequest {
    pb::SendEnchantedLinkRequest {
        login_id: email.into(),
        include_otp: Some(true),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enchanted_code_signs_in_the_typing_device_and_the_poll_sees_collected() {
    let app = TestApp::spawn().await;
    let (sent, right, wrong_links) = app.enchanted(enchanted_request("two.screens@example.com")).await;
    let message = app.enchanted_email(&sent.email_id).await;
    let code = otp_in(&message).expect("the enchanted email shows a code");

    let poller = {
        let passwordless = app.passwordless();
        let pending_ref = sent.pending_ref.clone();
        tokio::spawn(async move {
            let mut passwordless = passwordless;
            passwordless
                .poll_session(pb::PollSessionRequest {
                    pending_ref,
                    wait_seconds: 30,
                    client: None,
                })
                .await
                .unwrap()
                .into_inner()
        })
    };
    let verified = app.verify_otp(verify_otp(&sent.email_id, &code)).await.unwrap();
    assert_eq!(verified.link_kind(), pb::LinkKind::EnchantedLink);
    assert!(verified.user_activated);
    let session = verified.session.unwrap();
    assert!(!session.session_token.is_empty());
    let polled = poller.await.unwrap();
    assert_eq!(polled.status(), pb::poll_session_response::Status::Collected);
    assert!(polled.session.is_none(), "the session went to the caller of VerifyOtp");

    // The links are used up with the code: the right one and the wrong ones.
    assert_error(
        app.verify(&right, "").await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
    assert_error(
        app.verify(&wrong_links[0], "").await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
}

#[tokio::test]
async fn wrong_enchanted_codes_fail_the_attempt_and_a_clicked_link_uses_the_code_up() {
    let app = TestApp::spawn().await;
    let (sent, right, _) = app.enchanted(enchanted_request("burn@example.com")).await;
    let code = otp_in(&app.enchanted_email(&sent.email_id).await).unwrap();
    for n in 0..5 {
        let _ = app.verify_otp(verify_otp(&sent.email_id, &wrong(&code, n))).await;
    }
    let polled = app.poll(&sent.pending_ref, 0).await.unwrap();
    assert_eq!(polled.status(), pb::poll_session_response::Status::Failed);
    assert_error(
        app.verify(&right, "").await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );

    let (sent, right, _) = app.enchanted(enchanted_request("click@example.com")).await;
    let code = otp_in(&app.enchanted_email(&sent.email_id).await).unwrap();
    app.verify(&right, "").await.unwrap();
    assert_error(
        app.verify_otp(verify_otp(&sent.email_id, &code)).await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );
    let polled = app.poll(&sent.pending_ref, 0).await.unwrap();
    assert_eq!(
        polled.status(),
        pb::poll_session_response::Status::Verified,
        "the link's session waits for the poll"
    );
}

/// 64 guesses at once, one of them right: never two sessions, never more than 5 wrong codes
/// counted, each count answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_guesses_count_exactly_and_give_at_most_one_session() {
    // 64 calls queue for one row lock on PostgreSQL: on a busy machine the last may wait longer than
    // the default statement timeout. This test is about what wins, not how fast.
    let app = TestApp::spawn_with(|config| config.store.postgres.statement_timeout_seconds = 60).await;
    for round in 0..3 {
        let queued = app.queue(login_or_create(&format!("race{round}@example.com"))).await;
        let code = otp_in(&app.enchanted_email(&queued.email_id).await).unwrap();
        // The right code at a different place in each round.
        let right_at = [0, 31, 63][round];
        let calls = (0..64u64).map(|n| {
            let otp = if n == right_at as u64 {
                code.clone()
            } else {
                wrong(&code, n)
            };
            let mut passwordless = app.passwordless();
            let request = verify_otp(&queued.email_id, &otp);
            async move { passwordless.verify_otp(request).await }
        });
        let tasks: Vec<_> = calls.map(tokio::spawn).collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let sessions = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        let mut invalid_messages: Vec<String> = outcomes
            .iter()
            .filter_map(|outcome| outcome.as_ref().err())
            .filter(|status| reason(status) == "OTP_INVALID")
            .map(|status| status.message().to_string())
            .collect();
        for status in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
            assert!(
                ["OTP_INVALID", "OTP_ATTEMPTS_EXCEEDED", "TOKEN_ALREADY_USED"].contains(&reason(status).as_str()),
                "{status:?}"
            );
        }
        assert!(sessions <= 1, "round {round}: {sessions} sessions");
        let failures = app.counted_failures(&queued.email_id).await;
        assert!(failures <= 5, "round {round}: {failures} wrong codes counted");
        invalid_messages.sort();
        let answered = invalid_messages.len();
        invalid_messages.dedup();
        assert_eq!(invalid_messages.len(), answered, "each count is answered once");
        assert!(answered <= 4);
        if sessions == 0 {
            assert_eq!(failures, 5, "the right code lost only to the burn");
        }
    }
}

/// The binary at its most talkative: the code is in no log line and not in the store, and every
/// bad request is refused on its own terms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_is_in_neither_the_log_nor_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // 10 digits: a 6-digit code could turn up in a timestamp by chance.
    let mut server = BinaryServer::start(
        dir.path(),
        &[],
        &[("RUST_LOG", "trace"), ("LATCHKEY_OTP__DIGITS", "10")],
    );
    let channel = connect(server.addr).await;
    let mut passwordless = pb::passwordless_client::PasswordlessClient::new(channel);
    let mut codes = Vec::new();
    let mut plain_request_digests = Vec::new();
    for n in 0..3 {
        let queued = passwordless
            .login_or_create(login_or_create(&format!("quiet{n}@example.com")))
            .await
            .unwrap()
            .into_inner();
        let mail_dir = dir.path().join("data/mail");
        let message = eventually("the email", async || {
            eml_files(&mail_dir)
                .into_iter()
                .find(|m| header(m, "X-Latchkey-Email-Id").as_deref() == Some(queued.email_id.as_str()))
        })
        .await;
        let code = otp_in(&message).unwrap();
        assert_eq!(code.len(), 10);
        let wrong_code = passwordless
            .verify_otp(verify_otp(&queued.email_id, &wrong(&code, 0)))
            .await
            .unwrap_err();
        assert_eq!(reason(&wrong_code), "OTP_INVALID");
        if n == 0 {
            // Under an idempotency key the request is kept as a digest: a keyed one, since a plain
            // hash of a request with a 6-10 digit code in it would give the code away.
            let request = verify_otp(&queued.email_id, &code);
            let plain = latchkey::crypto::Digest32::of_bytes(
                &[&b"VerifyOtp\0"[..], &prost::Message::encode_to_vec(&request)].concat(),
            );
            plain_request_digests.push(plain);
            let mut keyed = tonic::Request::new(request);
            keyed.metadata_mut().insert("idempotency-key", "otp-0".parse().unwrap());
            passwordless.verify_otp(keyed).await.unwrap();
        } else if n == 2 {
            passwordless
                .verify_otp(verify_otp(&queued.email_id, &code))
                .await
                .unwrap();
        }
        codes.push(code);
    }
    server.sigterm();
    assert!(server.wait().success());
    let log = server.log();
    assert!(log.lines().count() > 10, "trace logging produced output");
    // The mail folder holds the sent emails, which show the code by design; the store must not.
    std::fs::remove_dir_all(dir.path().join("data/mail")).unwrap();
    let stored = common::store::stored_bytes(dir.path());
    for digest in &plain_request_digests {
        let hex = digest.to_hex();
        assert!(
            !stored.windows(32).any(|window| window == digest.as_bytes())
                && !stored.windows(hex.len()).any(|window| window == hex.as_bytes()),
            "an unkeyed digest of a request with a code is in the store"
        );
    }
    for code in &codes {
        assert!(!log.contains(code.as_str()), "a code is in the log");
        assert!(
            !stored.windows(code.len()).any(|window| window == code.as_bytes()),
            "a code is in the store"
        );
    }
}
