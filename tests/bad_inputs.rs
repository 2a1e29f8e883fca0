//! Every implemented RPC refuses bad input with the contract's code and reason, writes nothing,
//! and the server keeps answering. API keys and scopes are checked before any RPC runs.

mod common;

use common::*;
use latchkey::config::{ApiKeyConfig, Scope};
use latchkey::crypto::api_key_digest;
use pb::issue_login_link_request::User as IssueUser;
use tonic::{Code, Request, Status};

fn drop_body<T>(result: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    result.map(|_| ())
}

#[tokio::test]
async fn issue_login_link_bad_inputs() {
    let app = TestApp::spawn().await;
    let (user, _) = app.signed_in("known@example.com").await;
    let base = || issue_request("fresh@example.com");
    let cases: Vec<(&str, pb::IssueLoginLinkRequest, Code, &str)> = vec![
        (
            "no user",
            pb::IssueLoginLinkRequest { user: None, ..base() },
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            "unknown id",
            issue_for_user("user-nobody"),
            Code::NotFound,
            "USER_NOT_FOUND",
        ),
        (
            "bad email",
            pb::IssueLoginLinkRequest {
                user: Some(IssueUser::Email("not-an-email".into())),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_EMAIL",
        ),
        (
            "empty email",
            pb::IssueLoginLinkRequest {
                user: Some(IssueUser::Email(" ".into())),
                ..base()
            },
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            "long email",
            pb::IssueLoginLinkRequest {
                user: Some(IssueUser::Email(format!("{}@example.com", "a".repeat(250)))),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_EMAIL",
        ),
        (
            "display name",
            pb::IssueLoginLinkRequest {
                user: Some(IssueUser::Email("Ann <ann@example.com>".into())),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_EMAIL",
        ),
        (
            "long name",
            pb::IssueLoginLinkRequest {
                first_name: "n".repeat(101),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "control char",
            pb::IssueLoginLinkRequest {
                last_name: "Lee\u{7}".into(),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "too short",
            pb::IssueLoginLinkRequest {
                expiration_minutes: 4,
                ..base()
            },
            Code::InvalidArgument,
            "EXPIRATION_OUT_OF_RANGE",
        ),
        (
            "too long",
            pb::IssueLoginLinkRequest {
                expiration_minutes: 10_081,
                ..base()
            },
            Code::InvalidArgument,
            "EXPIRATION_OUT_OF_RANGE",
        ),
        (
            "not a url",
            pb::IssueLoginLinkRequest {
                redirect_url: "not a url".into(),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_URL",
        ),
        (
            "relative",
            pb::IssueLoginLinkRequest {
                redirect_url: "/auth/callback".into(),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_URL",
        ),
        (
            "other host",
            pb::IssueLoginLinkRequest {
                redirect_url: "https://evil.example/cb".into(),
                ..base()
            },
            Code::InvalidArgument,
            "REDIRECT_NOT_ALLOWED",
        ),
        (
            "http off loopback",
            pb::IssueLoginLinkRequest {
                redirect_url: "http://example.com/cb".into(),
                ..base()
            },
            Code::InvalidArgument,
            "REDIRECT_NOT_ALLOWED",
        ),
        (
            "userinfo",
            pb::IssueLoginLinkRequest {
                redirect_url: "http://me:pw@localhost:3000/cb".into(),
                ..base()
            },
            Code::InvalidArgument,
            "REDIRECT_NOT_ALLOWED",
        ),
        (
            "fragment",
            pb::IssueLoginLinkRequest {
                redirect_url: "http://localhost:3000/cb#x".into(),
                ..base()
            },
            Code::InvalidArgument,
            "REDIRECT_NOT_ALLOWED",
        ),
        (
            "scheme",
            pb::IssueLoginLinkRequest {
                redirect_url: "javascript:alert(1)".into(),
                ..base()
            },
            Code::InvalidArgument,
            "REDIRECT_NOT_ALLOWED",
        ),
        (
            "token param",
            pb::IssueLoginLinkRequest {
                redirect_url: "http://localhost:3000/cb?token=x".into(),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_URL",
        ),
        (
            "plain challenge",
            pb::IssueLoginLinkRequest {
                code_challenge: "plain-text-challenge".into(),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_CODE_CHALLENGE",
        ),
        (
            "short challenge",
            pb::IssueLoginLinkRequest {
                code_challenge: CHALLENGE[..42].into(),
                ..base()
            },
            Code::InvalidArgument,
            "INVALID_CODE_CHALLENGE",
        ),
    ];
    assert_refusals(cases, |request| app.issue(request)).await;
    // Field problems carry a BadRequest violation naming the field.
    let status = app
        .issue(pb::IssueLoginLinkRequest {
            expiration_minutes: 4,
            ..base()
        })
        .await
        .unwrap_err();
    use tonic_types::StatusExt;
    let violations = status
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .clone();
    assert_eq!(violations[0].field, "expiration_minutes");

    // Nothing was written by any refused call: the fresh user does not exist.
    let lookup = pb::GetUserRequest {
        user: Some(pb::get_user_request::User::Email("fresh@example.com".into())),
    };
    assert_error(app.users().get_user(lookup).await, Code::NotFound, "USER_NOT_FOUND");
    // And the server still answers.
    app.issue(issue_for_user(&user.user_id)).await.expect("still serving");
}

#[tokio::test]
async fn inspect_and_verify_bad_inputs() {
    let app = TestApp::spawn().await;
    let issued = app.issue_for_email("v@example.com").await;
    let token = token_of(&issued.link);
    let unknown = latchkey::crypto::new_secret(1_795_545_262_253);
    for (label, bad, code, expected) in [
        ("empty", "", Code::InvalidArgument, "MISSING_FIELD"),
        ("garbage", "not a token", Code::NotFound, "TOKEN_NOT_FOUND"),
        ("unknown", unknown.as_str(), Code::NotFound, "TOKEN_NOT_FOUND"),
        (
            "unknown and unstamped",
            &unknown[8..],
            Code::NotFound,
            "TOKEN_NOT_FOUND",
        ),
        (
            "the right token without its stamp",
            &token[8..],
            Code::NotFound,
            "TOKEN_NOT_FOUND",
        ),
        (
            "the right token with another stamp",
            &format!("AAAAAAAA{}", &token[8..]),
            Code::NotFound,
            "TOKEN_NOT_FOUND",
        ),
        ("huge", &"a".repeat(60_000), Code::NotFound, "TOKEN_NOT_FOUND"),
    ] {
        assert_error(app.inspect(bad).await, code, expected);
        let status = app.verify(bad, "").await.expect_err(label);
        assert_eq!((status.code(), reason(&status).as_str()), (code, expected), "{label}");
    }
    // Past limits.max_request_bytes (64 KiB) the gRPC library refuses the message unread.
    let status = app
        .verify(&"a".repeat(100_000), "")
        .await
        .expect_err("over the size limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("65536"), "{status:?}");
    let mut passwordless = app.passwordless();
    for (minutes, ok) in [(4, false), (525_601, false), (5, true)] {
        let request = pb::VerifyTokenRequest {
            token: token.clone(),
            session_duration_minutes: minutes,
            ..Default::default()
        };
        let result = passwordless.verify_token(request).await;
        if ok {
            let session = session_of(result.unwrap().into_inner());
            let lifetime = session.expires_at.unwrap().seconds - session.created_at.unwrap().seconds;
            assert_eq!(lifetime, 5 * 60);
        } else {
            // Refused before anything happened: the token is still usable afterwards.
            assert_error(result, Code::InvalidArgument, "EXPIRATION_OUT_OF_RANGE");
        }
    }
}

#[tokio::test]
async fn verify_otp_and_client_metadata_bad_inputs() {
    let app = TestApp::spawn().await;
    let mut passwordless = app.passwordless();
    let queued = passwordless
        .login_or_create(pb::LoginOrCreateRequest {
            email: "otp@example.com".into(),
            include_otp: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let email_id = queued.email_id;
    let otp = |email_id: &str, otp: &str| pb::VerifyOtpRequest {
        email_id: email_id.into(),
        otp: otp.into(),
        ..Default::default()
    };
    let client = |ip_address: &str, user_agent: &str| {
        Some(pb::ClientMetadata {
            ip_address: ip_address.into(),
            user_agent: user_agent.into(),
        })
    };
    let cases = vec![
        ("no email id", otp("", "123456"), Code::InvalidArgument, "MISSING_FIELD"),
        (
            "blank email id",
            otp("  ", "123456"),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        ("no code", otp(&email_id, ""), Code::InvalidArgument, "MISSING_FIELD"),
        (
            "5 digits",
            otp(&email_id, "12345"),
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "11 digits",
            otp(&email_id, "12345678901"),
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "letters",
            otp(&email_id, "12e456"),
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "a sign",
            otp(&email_id, "-12345"),
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "inner space",
            otp(&email_id, "123 456"),
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "huge",
            otp(&email_id, &"1".repeat(60_000)),
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "short verifier",
            pb::VerifyOtpRequest {
                code_verifier: "x".repeat(42),
                ..otp(&email_id, "123456")
            },
            Code::InvalidArgument,
            "INVALID_CODE_VERIFIER",
        ),
        (
            "short session",
            pb::VerifyOtpRequest {
                session_duration_minutes: 4,
                ..otp(&email_id, "123456")
            },
            Code::InvalidArgument,
            "EXPIRATION_OUT_OF_RANGE",
        ),
        (
            "long session",
            pb::VerifyOtpRequest {
                session_duration_minutes: 525_601,
                ..otp(&email_id, "123456")
            },
            Code::InvalidArgument,
            "EXPIRATION_OUT_OF_RANGE",
        ),
        (
            "bad address",
            pb::VerifyOtpRequest {
                client: client("256.1.1.1", ""),
                ..otp(&email_id, "123456")
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "a host name is not an address",
            pb::VerifyOtpRequest {
                client: client("example.com", ""),
                ..otp(&email_id, "123456")
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "long user agent",
            pb::VerifyOtpRequest {
                client: client("", &"a".repeat(513)),
                ..otp(&email_id, "123456")
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "control character in the user agent",
            pb::VerifyOtpRequest {
                client: client("", "Mozilla\r\nX-Evil: 1"),
                ..otp(&email_id, "123456")
            },
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "unknown email",
            otp("email-00000000-0000-7000-8000-000000000000", "123456"),
            Code::NotFound,
            "EMAIL_NOT_FOUND",
        ),
    ];
    assert_refusals(cases, |request| {
        let mut passwordless = passwordless.clone();
        async move { passwordless.verify_otp(request).await }
    })
    .await;
    // None of them was a guess: the code still has all its tries.
    let store = &app.running().domain().store;
    let email = store.email(&email_id).await.unwrap().unwrap();
    let link = store.link(&email.links[0].token_digest).await.unwrap().unwrap();
    assert_eq!(link.otp.unwrap().failures, 0);

    // The same client checks on VerifyToken and PollSession, before anything is used.
    let issued = app.issue_for_email("client@example.com").await;
    let token = token_of(&issued.link);
    for bad in [client("1.2.3", ""), client("", "tab\there")] {
        assert_error(
            passwordless
                .verify_token(pb::VerifyTokenRequest {
                    token: token.clone(),
                    client: bad.clone(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_VALUE",
        );
        assert_error(
            passwordless
                .poll_session(pb::PollSessionRequest {
                    pending_ref: latchkey::crypto::new_secret(1_795_545_262_253),
                    wait_seconds: 0,
                    client: bad,
                })
                .await,
            Code::InvalidArgument,
            "INVALID_VALUE",
        );
    }
    app.verify(&token, "")
        .await
        .expect("the link was not used by the refusals");
}

#[tokio::test]
async fn sessions_and_users_bad_inputs() {
    use pb::authenticate_session_request::Credential;
    let app = TestApp::spawn().await;
    let mut sessions = app.sessions();
    let mut users = app.users();
    let unknown = latchkey::crypto::new_secret(1_795_545_262_253);

    let authenticate = |credential| pb::AuthenticateSessionRequest { credential };
    let status = assert_error(
        sessions.authenticate_session(authenticate(None)).await,
        Code::InvalidArgument,
        "MISSING_FIELD",
    );
    assert_eq!(status.message(), "session_token or session_jwt is required");
    assert_error(
        sessions
            .authenticate_session(authenticate(Some(Credential::SessionToken(unknown.clone()))))
            .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    assert_error(
        sessions
            .authenticate_session(authenticate(Some(Credential::SessionToken("x".into()))))
            .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    assert_error(
        sessions
            .authenticate_session(authenticate(Some(Credential::SessionJwt("a.b.c".into()))))
            .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    assert_error(
        sessions
            .authenticate_session(authenticate(Some(Credential::SessionJwt(String::new()))))
            .await,
        Code::InvalidArgument,
        "MISSING_FIELD",
    );

    // A JWT with a forged signature or swapped payload is refused.
    let (user, session) = app.signed_in("jwt@example.com").await;
    let parts: Vec<&str> = session.session_jwt.split('.').collect();
    let (_, other) = app.signed_in("other@example.com").await;
    let other_parts: Vec<&str> = other.session_jwt.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
    assert_error(
        sessions
            .authenticate_session(authenticate(Some(Credential::SessionJwt(forged))))
            .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );

    let revoke = |session| pb::RevokeSessionRequest { session };
    use pb::revoke_session_request::Session as Which;
    assert_error(
        sessions.revoke_session(revoke(None)).await,
        Code::InvalidArgument,
        "MISSING_FIELD",
    );
    assert_error(
        sessions
            .revoke_session(revoke(Some(Which::SessionId(String::new()))))
            .await,
        Code::InvalidArgument,
        "MISSING_FIELD",
    );
    assert_error(
        sessions
            .revoke_session(revoke(Some(Which::SessionId("session-nope".into()))))
            .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    assert_error(
        sessions
            .revoke_session(revoke(Some(Which::SessionToken(unknown.clone()))))
            .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    assert_error(
        sessions
            .revoke_user_sessions(pb::RevokeUserSessionsRequest::default())
            .await,
        Code::InvalidArgument,
        "MISSING_FIELD",
    );
    assert_error(
        sessions
            .revoke_user_sessions(pb::RevokeUserSessionsRequest {
                user_id: "user-nope".into(),
            })
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );

    use pb::get_user_request::User as Lookup;
    let list = |user_id: &str, page_token: &str| pb::ListUserSessionsRequest {
        user_id: user_id.into(),
        page_token: page_token.into(),
        page_size: 0,
    };
    let cases = vec![
        ("no user", list("", ""), Code::InvalidArgument, "MISSING_FIELD"),
        ("unknown user", list("user-nope", ""), Code::NotFound, "USER_NOT_FOUND"),
        (
            "garbage token",
            list(&user.user_id, "garbage!"),
            Code::InvalidArgument,
            "INVALID_PAGE_TOKEN",
        ),
        (
            "a ListUsers token",
            list(&user.user_id, "djF8Tm9uZXx1c2VyLTE"),
            Code::InvalidArgument,
            "INVALID_PAGE_TOKEN",
        ),
    ];
    assert_refusals(cases, |request| {
        let mut sessions = sessions.clone();
        async move { sessions.list_user_sessions(request).await }
    })
    .await;
    // Another user's page token (this user has two sessions now, so there is a next page).
    app.signed_in("jwt@example.com").await;
    let other_page = sessions
        .list_user_sessions(pb::ListUserSessionsRequest {
            user_id: user.user_id.clone(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other_page.sessions.len(), 1);
    assert_error(
        sessions
            .list_user_sessions(list(&other.user_id, &other_page.next_page_token))
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );

    assert_error(
        users.get_user(pb::GetUserRequest { user: None }).await,
        Code::InvalidArgument,
        "MISSING_FIELD",
    );
    assert_error(
        users
            .get_user(pb::GetUserRequest {
                user: Some(Lookup::UserId("user-nope".into())),
            })
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    assert_error(
        users
            .get_user(pb::GetUserRequest {
                user: Some(Lookup::Email("nope".into())),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_EMAIL",
    );
    assert_error(
        users
            .list_users(pb::ListUsersRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
    assert_error(
        users
            .list_users(pb::ListUsersRequest {
                status: 42,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_VALUE",
    );
    assert_error(
        users.delete_user(pb::DeleteUserRequest::default()).await,
        Code::InvalidArgument,
        "MISSING_FIELD",
    );
    assert_error(
        users
            .delete_user(pb::DeleteUserRequest {
                user_id: "user-nope".into(),
            })
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );

    let id = user.user_id.clone();
    let update = |u: pb::User, paths: &[&str]| pb::UpdateUserRequest {
        user: Some(u),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let with_id = |u: pb::User| pb::User {
        user_id: id.clone(),
        ..u
    };
    assert_error(
        users.update_user(pb::UpdateUserRequest::default()).await,
        Code::InvalidArgument,
        "MISSING_FIELD",
    );
    assert_error(
        users.update_user(update(with_id(pb::User::default()), &[])).await,
        Code::InvalidArgument,
        "MISSING_FIELD",
    );
    assert_error(
        users
            .update_user(update(with_id(pb::User::default()), &["email"]))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD_MASK",
    );
    assert_error(
        users
            .update_user(update(with_id(pb::User::default()), &["status"]))
            .await,
        Code::InvalidArgument,
        "INVALID_VALUE",
    );
    assert_error(
        users.update_user(update(with_id(pb::User::default()), &["role"])).await,
        Code::InvalidArgument,
        "INVALID_VALUE",
    );
    let back_to_pending = pb::User {
        status: pb::user::Status::Pending as i32,
        ..Default::default()
    };
    let refused = users
        .update_user(update(with_id(back_to_pending), &["status"]))
        .await
        .expect_err("a signed-in user cannot become PENDING again");
    assert_eq!(reason(&refused), "INVALID_VALUE");
    assert!(refused.message().contains("DISABLED"), "{}", refused.message());
    assert_error(
        users
            .update_user(update(
                with_id(pb::User {
                    first_name: "x".repeat(101),
                    ..Default::default()
                }),
                &["first_name"],
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_VALUE",
    );
    assert_error(
        users
            .update_user(update(
                pb::User {
                    user_id: "user-nope".into(),
                    ..Default::default()
                },
                &["mfa_enabled"],
            ))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );

    // Nothing changed, and the server still answers.
    let unchanged = users
        .get_user(pb::GetUserRequest {
            user: Some(Lookup::UserId(id)),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(unchanged, user.clone());
    sessions
        .authenticate_session(authenticate(Some(Credential::SessionToken(session.session_token))))
        .await
        .expect("still serving");
}

#[tokio::test]
async fn malformed_locales_are_refused_everywhere_and_write_nothing() {
    let app = TestApp::spawn().await;
    let (user, _) = app.signed_in("known@example.com").await;
    let malformed = [
        "de_CH",
        "german",
        "d",
        "de-",
        "de--CH",
        "de CH",
        "und",
        "x-private",
        "de-CH-x",
        "de-1996-1996",
        "é",
        "de\u{7}",
    ];
    let long = format!("de{}", "-abcdefgh".repeat(7));
    for locale in malformed.iter().copied().chain([long.as_str()]) {
        let refused = assert_error(
            app.passwordless()
                .login_or_create(pb::LoginOrCreateRequest {
                    email: "new.person@example.com".into(),
                    locale: locale.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_LOCALE",
        );
        assert!(
            refused.message().contains("locale"),
            "{locale:?}: {}",
            refused.message()
        );
        assert_error(
            app.passwordless()
                .send_enchanted_link(pb::SendEnchantedLinkRequest {
                    login_id: "new.person@example.com".into(),
                    locale: locale.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_LOCALE",
        );
        assert_error(
            app.update_user(
                &user.user_id,
                pb::User {
                    locale: locale.into(),
                    ..Default::default()
                },
                &["locale"],
            )
            .await,
            Code::InvalidArgument,
            "INVALID_LOCALE",
        );
    }
    // No user was created, the known one is unchanged, and the server still answers.
    let lookup = |email: &str| pb::GetUserRequest {
        user: Some(pb::get_user_request::User::Email(email.into())),
    };
    assert_error(
        app.users().get_user(lookup("new.person@example.com")).await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let unchanged = app
        .users()
        .get_user(lookup("known@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged.user, Some(user));
}

const LINKS_KEY: &str = "links-key-0123456789";
const ADMIN_KEY: &str = "admin-key-0123456789";

async fn app_with_keys() -> TestApp {
    TestApp::spawn_with(|config| {
        config.auth.required = true;
        config.auth.api_keys = vec![
            ApiKeyConfig {
                name: "web".into(),
                sha256: api_key_digest(LINKS_KEY),
                scopes: vec![Scope::Links, Scope::Sessions],
            },
            ApiKeyConfig {
                name: "ops".into(),
                sha256: api_key_digest(ADMIN_KEY),
                scopes: vec![Scope::Admin],
            },
        ];
    })
    .await
}

fn with_metadata<T>(message: T, name: &'static str, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(name, value.parse().unwrap());
    request
}

#[tokio::test]
async fn api_keys_and_scopes() {
    let app = app_with_keys().await;
    let mut passwordless = app.passwordless();
    let mut users = app.users();
    let issue = || issue_request("keys@example.com");

    assert_error(
        drop_body(passwordless.issue_login_link(issue()).await),
        Code::Unauthenticated,
        "API_KEY_INVALID",
    );
    assert_error(
        drop_body(
            passwordless
                .issue_login_link(with_metadata(issue(), "authorization", "Bearer wrong-key"))
                .await,
        ),
        Code::Unauthenticated,
        "API_KEY_INVALID",
    );
    assert_error(
        drop_body(
            passwordless
                .issue_login_link(with_metadata(issue(), "authorization", "Basic Zm9vOmJhcg=="))
                .await,
        ),
        Code::Unauthenticated,
        "API_KEY_INVALID",
    );
    let status = assert_error(
        drop_body(
            passwordless
                .issue_login_link(with_metadata(issue(), "x-api-key", ADMIN_KEY))
                .await,
        ),
        Code::PermissionDenied,
        "SCOPE_MISSING",
    );
    assert!(!status.message().contains(ADMIN_KEY), "no key in messages");

    let issued = passwordless
        .issue_login_link(with_metadata(issue(), "authorization", &format!("Bearer {LINKS_KEY}")))
        .await
        .expect("bearer key with the links scope")
        .into_inner();
    passwordless
        .inspect_token(with_metadata(
            pb::InspectTokenRequest {
                token: token_of(&issued.link),
            },
            "x-api-key",
            LINKS_KEY,
        ))
        .await
        .expect("x-api-key form");
    // A Basic authorization header is no key, but an x-api-key beside it is.
    let mut both = with_metadata(
        pb::InspectTokenRequest {
            token: token_of(&issued.link),
        },
        "x-api-key",
        LINKS_KEY,
    );
    both.metadata_mut()
        .insert("authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
    passwordless
        .inspect_token(both)
        .await
        .expect("x-api-key beside a Basic header");
    let get = || pb::GetUserRequest {
        user: Some(pb::get_user_request::User::UserId(issued.user_id.clone())),
    };
    assert_error(
        drop_body(users.get_user(with_metadata(get(), "x-api-key", LINKS_KEY)).await),
        Code::PermissionDenied,
        "SCOPE_MISSING",
    );
    users
        .get_user(with_metadata(get(), "x-api-key", ADMIN_KEY))
        .await
        .expect("admin scope");

    // Health and reflection need no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let checked = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap();
    assert_eq!(
        checked.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn with_auth_off_any_key_is_accepted() {
    let app = TestApp::spawn().await;
    let request = with_metadata(
        issue_request("devkey@example.com"),
        "authorization",
        "Bearer some-production-key",
    );
    app.passwordless()
        .issue_login_link(request)
        .await
        .expect("development servers do not check keys");
}

/// Bytes sent as they are, to call a method with a message that is not valid protobuf.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        use prost::bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use prost::bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[tokio::test]
async fn a_message_that_is_not_protobuf_is_invalid_argument_not_internal() {
    let app = TestApp::spawn().await;
    for (method, bytes) in [
        ("/latchkey.v1.Passwordless/VerifyToken", vec![0xff, 0xff, 0xff]),
        ("/latchkey.v1.Passwordless/IssueLoginLink", vec![0x0a, 0x40, b'x']),
        ("/latchkey.v1.Users/GetUser", vec![0x07]),
    ] {
        let mut grpc = tonic::client::Grpc::new(app.channel.clone());
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(method);
        let status = grpc.unary(Request::new(bytes), path, RawCodec).await.expect_err(method);
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
        assert_eq!(reason(&status), "MALFORMED_REQUEST", "{method}");
    }
    // The server goes on serving.
    app.issue_for_email("after@example.com").await;
}
