//! LoginOrCreate end to end over the development mail path (`.eml` files): the email arrives, its
//! link verifies; login vs sign-up by user status; the per-recipient rate limit; custom
//! templates; every bad input; GetEmailStatus.

mod common;

use common::mail::*;
use common::mime::header;
use common::*;
use tonic::Code;
use tonic_types::StatusExt;

fn request(email: &str) -> pb::LoginOrCreateRequest {
    pb::LoginOrCreateRequest {
        email: email.into(),
        ..Default::default()
    }
}

impl TestApp {
    fn mail_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data/mail")
    }

    async fn login_or_create(
        &self,
        request: pb::LoginOrCreateRequest,
    ) -> Result<pb::LoginOrCreateResponse, tonic::Status> {
        self.passwordless()
            .login_or_create(request)
            .await
            .map(|r| r.into_inner())
    }

    async fn email_status(&self, email_id: &str) -> Result<pb::GetEmailStatusResponse, tonic::Status> {
        let mut emails = pb::emails_client::EmailsClient::new(self.channel.clone());
        emails
            .get_email_status(pb::GetEmailStatusRequest {
                email_id: email_id.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Waits for the email to be SENT and returns the message sent to `recipient`.
    async fn delivered(&self, email_id: &str, recipient: &str) -> String {
        eventually("the email to be sent", async || {
            let status = self.email_status(email_id).await.unwrap();
            (status.status() == pb::get_email_status_response::Status::Sent).then_some(())
        })
        .await;
        let message = eml_files(&self.mail_dir())
            .into_iter()
            .find(|m| header(m, "X-Latchkey-Email-Id").as_deref() == Some(email_id))
            .expect("the message is in the mail folder");
        assert!(header(&message, "To").unwrap().contains(recipient));
        message
    }
}

#[tokio::test]
async fn new_user_gets_a_signup_email_whose_link_signs_in() {
    let app = TestApp::spawn().await;
    let queued = app.login_or_create(request("new.person@example.com")).await.unwrap();
    assert!(queued.user_created);
    assert!(queued.email_id.starts_with("email-"));

    let message = app.delivered(&queued.email_id, "new.person@example.com").await;
    assert_eq!(
        header(&message, "Subject").as_deref(),
        Some("Confirm your email for latchkey")
    );
    let text = part(&message, "text/plain");
    let html = part(&message, "text/html");
    assert!(text.contains("expires in 7 days"), "{text}");
    let token = token_in(&text, "token");
    assert_eq!(token, token_in(&html, "token"), "both parts carry the same link");
    assert!(text.contains("http://localhost:3000/auth/callback?token="));
    // A person finds the file by its email id and copies the link out of it as it is.
    let file = app.mail_dir().join(format!("{}.eml", queued.email_id));
    let raw = std::fs::read_to_string(&file).expect("the file is named after the email id");
    assert!(raw.contains(&format!("/auth/callback?token={token}")), "{raw}");
    assert!(!raw.contains("quoted-printable"), "{raw}");

    let status = app.email_status(&queued.email_id).await.unwrap();
    assert_eq!(status.attempts, 1);
    assert!(status.sent_at.is_some());
    assert_eq!(status.masked_recipient, "n***@example.com");
    assert!(status.last_error.is_empty());

    let inspected = app.inspect(&token).await.unwrap();
    assert_eq!(inspected.link_kind(), pb::LinkKind::MagicLink);
    let verified = app.verify(&token, "").await.unwrap();
    assert_eq!(verified.link_kind(), pb::LinkKind::MagicLink);
    assert!(!verified.user_activated, "created ACTIVE, so nothing to activate");
    let user = verified.user.clone().unwrap();
    assert_eq!(user.user_id, queued.user_id);
    assert!(user.email_verified);
    session_of(verified);

    // Now ACTIVE: the next email is a login email, and the same person in other case is matched.
    let again = app.login_or_create(request("New.Person@EXAMPLE.com")).await.unwrap();
    assert!(!again.user_created);
    assert_eq!(again.user_id, queued.user_id);
    let message = app.delivered(&again.email_id, "new.person@example.com").await;
    assert_eq!(
        header(&message, "Subject").as_deref(),
        Some("Your sign-in link for latchkey")
    );
    assert!(part(&message, "text/plain").contains("expires in 1 hour"));
}

#[tokio::test]
async fn pending_users_get_signup_emails_until_they_verify() {
    let app = TestApp::spawn().await;
    let pending = pb::LoginOrCreateRequest {
        create_user_as_pending: true,
        signup_expiration_minutes: 30,
        ..request("p@example.com")
    };
    let queued = app.login_or_create(pending).await.unwrap();
    let user = app
        .users()
        .get_user(pb::GetUserRequest {
            user: Some(pb::get_user_request::User::UserId(queued.user_id.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.status(), pb::user::Status::Pending);
    let second = app.login_or_create(request("p@example.com")).await.unwrap();
    let message = app.delivered(&second.email_id, "p@example.com").await;
    assert!(
        header(&message, "Subject").unwrap().starts_with("Confirm your email"),
        "still a sign-up"
    );
    let verified = app
        .verify(&token_in(&part(&message, "text/plain"), "token"), "")
        .await
        .unwrap();
    assert!(verified.user_activated);
    assert_eq!(verified.user.unwrap().status(), pb::user::Status::Active);
}

#[tokio::test]
async fn the_sixth_email_in_a_burst_is_rate_limited_with_retry_info() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        app.login_or_create(request("burst@example.com")).await.unwrap();
    }
    let status = assert_error(
        app.login_or_create(request("BURST@example.com")).await,
        Code::ResourceExhausted,
        "RATE_LIMITED",
    );
    let retry = status
        .get_error_details()
        .retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("a delay");
    assert_eq!(retry.as_secs(), 60);
    // Other recipients are not affected.
    app.login_or_create(request("other@example.com"))
        .await
        .expect("another address passes");
    // A minute later, one more is allowed; and the limit survives a restart.
    app.clock.advance_minutes(1);
    app.login_or_create(request("burst@example.com"))
        .await
        .expect("refilled");
    let (dir, clock) = app.stop().await;
    let config = test_config(&dir);
    let app = TestApp::start_in(dir, config, clock).await;
    assert_error(
        app.login_or_create(request("burst@example.com")).await,
        Code::ResourceExhausted,
        "RATE_LIMITED",
    );
}

#[tokio::test]
async fn one_mailbox_is_one_user_and_one_rate_bucket_whatever_its_spelling() {
    let app = TestApp::spawn().await;
    for spellings in [
        ["x@example.com", "\"x\"@example.com", "X@EXAMPLE.com"],
        ["ann@exämple.com", "ann@xn--exmple-cua.com", "\"ann\"@EXÄMPLE.COM"],
    ] {
        let first = app.login_or_create(request(spellings[0])).await.unwrap();
        assert!(first.user_created);
        for spelling in &spellings[1..] {
            let again = app.login_or_create(request(spelling)).await.unwrap();
            assert_eq!(again.user_id, first.user_id, "{spelling}");
            assert!(!again.user_created, "{spelling}");
        }
        // Three sent, two left in the burst of five, whatever the spelling.
        app.login_or_create(request(spellings[1])).await.unwrap();
        app.login_or_create(request(spellings[2])).await.unwrap();
        assert_error(
            app.login_or_create(request(spellings[0])).await,
            Code::ResourceExhausted,
            "RATE_LIMITED",
        );
    }
    let user = app
        .users()
        .get_user(pb::GetUserRequest {
            user: Some(pb::get_user_request::User::Email("ANN@exämple.com".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        user.user.unwrap().email,
        "ann@xn--exmple-cua.com",
        "stored in canonical form"
    );
}

#[tokio::test]
async fn an_undeliverable_address_is_refused_before_anything_is_written() {
    let app = TestApp::spawn().await;
    for address in ["\"a<b\"@example.com", "\"a b\"@example.com", "\"a\\\"b\"@example.com"] {
        assert_error(
            app.login_or_create(request(address)).await,
            Code::InvalidArgument,
            "INVALID_EMAIL",
        );
    }
    let listed = app
        .users()
        .list_users(pb::ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.users.is_empty(), "no user was created: {:?}", listed.users);
    assert!(
        !app.mail_dir().exists() || std::fs::read_dir(app.mail_dir()).unwrap().next().is_none(),
        "nothing was queued"
    );
}

/// A recipient's bucket goes once it is full again (the store stays bounded), and not before.
#[tokio::test]
async fn a_rate_bucket_is_purged_once_full_again_and_not_before() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        app.login_or_create(request("bucket@example.com")).await.unwrap();
    }
    // Four minutes on, the bucket holds four sends: purging it now would give back five.
    app.clock.advance_minutes(4);
    assert_eq!(app.running().sweep_now().await.unwrap(), 0);
    for _ in 0..4 {
        app.login_or_create(request("bucket@example.com")).await.unwrap();
    }
    assert_error(
        app.login_or_create(request("bucket@example.com")).await,
        Code::ResourceExhausted,
        "RATE_LIMITED",
    );
    // Full again five minutes after the last send: one bucket, one expiry entry, purged after.
    app.clock.advance_minutes(6);
    assert_eq!(app.running().sweep_now().await.unwrap(), 1);
    assert_eq!(app.running().sweep_now().await.unwrap(), 0, "purged once");
}

#[tokio::test]
async fn a_rate_limit_of_zero_is_off() {
    let app = TestApp::spawn_with(|config| config.mail.rate_limit.burst = 0).await;
    for _ in 0..8 {
        app.login_or_create(request("many@example.com"))
            .await
            .expect("no limit");
    }
}

#[tokio::test]
async fn pkce_and_custom_urls_and_templates() {
    let templates = tempfile::tempdir().unwrap();
    let custom = templates.path().join("welcome");
    std::fs::create_dir(&custom).unwrap();
    std::fs::write(custom.join("subject.txt"), "Welcome aboard {{ email }}").unwrap();
    std::fs::write(
        custom.join("body.html"),
        "<p>{{ product }}: <a href=\"{{ link }}\">join</a></p>",
    )
    .unwrap();
    std::fs::write(custom.join("body.txt"), "Join: {{ link }}").unwrap();
    let dir = templates.path().to_path_buf();
    let app = TestApp::spawn_with(move |config| config.mail.templates_dir = Some(dir)).await;
    let queued = app
        .login_or_create(pb::LoginOrCreateRequest {
            signup_magic_link_url: "http://localhost:8080/signup?from=mail".into(),
            signup_template_id: "welcome".into(),
            code_challenge: CHALLENGE.into(),
            ..request("custom@example.com")
        })
        .await
        .unwrap();
    let message = app.delivered(&queued.email_id, "custom@example.com").await;
    assert_eq!(
        header(&message, "Subject").as_deref(),
        Some("Welcome aboard custom@example.com")
    );
    let text = part(&message, "text/plain");
    assert!(
        text.starts_with("Join: http://localhost:8080/signup?from=mail&token="),
        "{text}"
    );
    let token = token_in(&text, "token");
    assert!(app.inspect(&token).await.unwrap().pkce_required);
    assert_error(app.verify(&token, "").await, Code::FailedPrecondition, "PKCE_REQUIRED");
    app.verify(&token, VERIFIER)
        .await
        .expect("the device with the verifier signs in");
}

#[tokio::test]
async fn login_or_create_bad_inputs() {
    let app = TestApp::spawn().await;
    let base = || request("bad@example.com");
    let cases: Vec<(&str, pb::LoginOrCreateRequest, Code, &str)> = vec![
        (
            "no email",
            pb::LoginOrCreateRequest::default(),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        ("bad email", request("bad@"), Code::InvalidArgument, "INVALID_EMAIL"),
        (
            "long email",
            request(&format!("{}@example.com", "a".repeat(250))),
            Code::InvalidArgument,
            "INVALID_EMAIL",
        ),
        (
            "login url",
            pb::LoginOrCreateRequest {
                login_magic_link_url: "nope".into(),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_URL",
        ),
        (
            "login url over 2048 bytes",
            pb::LoginOrCreateRequest {
                login_magic_link_url: format!("http://localhost:3000/{}", "a".repeat(2030)),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_URL",
        ),
        (
            "signup url",
            pb::LoginOrCreateRequest {
                signup_magic_link_url: "https://evil.example/x".into(),
                ..base()
            },
            Code::InvalidArgument,
            "REDIRECT_NOT_ALLOWED",
        ),
        (
            "login short",
            pb::LoginOrCreateRequest {
                login_expiration_minutes: 4,
                ..base()
            },
            Code::InvalidArgument,
            "EXPIRATION_OUT_OF_RANGE",
        ),
        (
            "signup long",
            pb::LoginOrCreateRequest {
                signup_expiration_minutes: 10_081,
                ..base()
            },
            Code::InvalidArgument,
            "EXPIRATION_OUT_OF_RANGE",
        ),
        (
            "login template",
            pb::LoginOrCreateRequest {
                login_template_id: "nope".into(),
                ..base()
            },
            Code::InvalidArgument,
            "TEMPLATE_NOT_FOUND",
        ),
        (
            "signup template",
            pb::LoginOrCreateRequest {
                signup_template_id: "../etc".into(),
                ..base()
            },
            Code::InvalidArgument,
            "TEMPLATE_NOT_FOUND",
        ),
        (
            "challenge",
            pb::LoginOrCreateRequest {
                code_challenge: "plain".into(),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_CODE_CHALLENGE",
        ),
    ];
    assert_refusals(cases, |request| app.login_or_create(request)).await;
    // Nothing was written: no user, no email, and the rate limit was not touched.
    let lookup = pb::GetUserRequest {
        user: Some(pb::get_user_request::User::Email("bad@example.com".into())),
    };
    assert_error(app.users().get_user(lookup).await, Code::NotFound, "USER_NOT_FOUND");
    for _ in 0..5 {
        app.login_or_create(base())
            .await
            .expect("the full burst is still there");
    }

    // Users who cannot use links are refused before anything is queued.
    let (user, _) = app.signed_in("staff@example.com").await;
    app.update_user(
        &user.user_id,
        pb::User {
            role: pb::user::Role::Staff.into(),
            ..Default::default()
        },
        &["role"],
    )
    .await
    .unwrap();
    assert_error(
        app.login_or_create(request("staff@example.com")).await,
        Code::PermissionDenied,
        "STAFF_USER",
    );

    assert_error(app.email_status("").await, Code::InvalidArgument, "MISSING_FIELD");
    assert_error(app.email_status("email-nope").await, Code::NotFound, "EMAIL_NOT_FOUND");
}

#[tokio::test]
async fn without_any_configured_url_login_or_create_says_so() {
    let app = TestApp::spawn_with(|config| config.links.default_redirect_url = None).await;
    assert_error(
        app.login_or_create(request("nourl@example.com")).await,
        Code::FailedPrecondition,
        "NO_REDIRECT_URL",
    );
    let explicit = pb::LoginOrCreateRequest {
        signup_magic_link_url: "http://localhost:3000/s".into(),
        ..request("nourl@example.com")
    };
    app.login_or_create(explicit)
        .await
        .expect("a URL in the request is enough");
}
