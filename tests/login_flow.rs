//! The login-link flow end to end over gRPC: issue → inspect → verify → authenticate → revoke,
//! reuse, quick account creation, case-insensitive emails, PKCE, and the client-only/2FA/disabled
//! rules.

mod common;

use common::*;
use tonic::Code;

#[tokio::test]
async fn issue_inspect_verify_authenticate_revoke() {
    let app = TestApp::spawn().await;
    let issued = app.issue_for_email("ann@example.com").await;
    assert!(issued.user_created);
    assert!(!issued.reused);
    assert!(
        issued.link.starts_with("http://localhost:3000/auth/callback?token="),
        "{}",
        issued.link
    );
    let token = token_of(&issued.link);

    // Inspect describes without using up, as often as it is asked.
    for _ in 0..2 {
        let inspected = app.inspect(&token).await.unwrap();
        assert_eq!(inspected.link_kind(), pb::LinkKind::LoginLink);
        assert_eq!(inspected.masked_email, "a***@example.com");
        assert!(!inspected.pkce_required);
        assert!(!inspected.user_exists, "a new user has not signed in yet");
        assert_eq!(inspected.expires_at, issued.expires_at);
    }

    let verified = app.verify(&token, "").await.unwrap();
    assert!(verified.user_activated);
    assert_eq!(verified.link_kind(), pb::LinkKind::LoginLink);
    let user = verified.user.clone().unwrap();
    assert_eq!(user.user_id, issued.user_id);
    assert_eq!(user.status(), pb::user::Status::Active);
    assert!(user.email_verified);
    assert!(user.last_login_at.is_some());
    let session = session_of(verified);
    assert_eq!(
        session.session_token.len(),
        51,
        "a 6-byte stamp and 256 bits, base64url"
    );
    assert!(!session.session_jwt.is_empty());

    // The token is single-use; inspect now says so too.
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

    let mut sessions = app.sessions();
    let by_token = pb::AuthenticateSessionRequest {
        credential: Some(pb::authenticate_session_request::Credential::SessionToken(
            session.session_token.clone(),
        )),
    };
    let authenticated = sessions
        .authenticate_session(by_token.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(authenticated.user.unwrap().user_id, issued.user_id);
    let authenticated_session = authenticated.session.unwrap();
    assert_eq!(authenticated_session.session_id, session.session_id);
    assert!(
        authenticated_session.session_token.is_empty(),
        "the token is never handed out again"
    );
    let by_jwt = pb::AuthenticateSessionRequest {
        credential: Some(pb::authenticate_session_request::Credential::SessionJwt(
            authenticated_session.session_jwt,
        )),
    };
    sessions.authenticate_session(by_jwt.clone()).await.unwrap();

    let revoke = pb::RevokeSessionRequest {
        session: Some(pb::revoke_session_request::Session::SessionToken(
            session.session_token.clone(),
        )),
    };
    let revoked = sessions.revoke_session(revoke.clone()).await.unwrap().into_inner();
    assert_eq!(revoked.session_id, session.session_id);
    sessions.revoke_session(revoke).await.expect("revoking twice is fine");
    assert_error(
        sessions.authenticate_session(by_token).await,
        Code::FailedPrecondition,
        "SESSION_REVOKED",
    );
    assert_error(
        sessions.authenticate_session(by_jwt).await,
        Code::FailedPrecondition,
        "SESSION_REVOKED",
    );

    // A returning user: no creation, no activation.
    let again = app.issue_for_email("ann@example.com").await;
    assert!(!again.user_created);
    assert!(app.inspect(&token_of(&again.link)).await.unwrap().user_exists);
    let verified = app.verify(&token_of(&again.link), "").await.unwrap();
    assert!(!verified.user_activated);
}

#[tokio::test]
async fn an_unused_link_is_reused_with_the_same_parameters() {
    let app = TestApp::spawn().await;
    let first = app.issue_for_email("reuse@example.com").await;
    let second = app.issue(issue_for_user(&first.user_id)).await.unwrap();
    assert!(second.reused);
    assert_eq!(second.link, first.link);
    assert_eq!(second.expires_at, first.expires_at);

    // Other parameters: a new link.
    let mut other = issue_for_user(&first.user_id);
    other.redirect_url = "http://localhost:3000/other".into();
    let other = app.issue(other).await.unwrap();
    assert!(!other.reused);
    assert_ne!(other.link, first.link);

    // Once used, the next request gets a fresh link.
    app.verify(&token_of(&first.link), "").await.unwrap();
    let fresh = app.issue(issue_for_user(&first.user_id)).await.unwrap();
    assert!(!fresh.reused);
    assert_ne!(fresh.link, first.link);
}

#[tokio::test]
async fn redirect_urls_keep_their_query_and_follow_the_allow_list() {
    let app = TestApp::spawn().await;
    let mut request = issue_request("q@example.com");
    request.redirect_url = "http://127.0.0.1:8080/cb?next=%2Fhome".into();
    let issued = app.issue(request).await.unwrap();
    assert!(
        issued.link.starts_with("http://127.0.0.1:8080/cb?next=%2Fhome&token="),
        "{}",
        issued.link
    );
    let mut request = issue_request("q@example.com");
    request.redirect_url = "https://evil.example.com/cb".into();
    assert_error(app.issue(request).await, Code::InvalidArgument, "REDIRECT_NOT_ALLOWED");
}

#[tokio::test]
async fn quick_account_creation_needs_names_and_matches_emails_case_insensitively() {
    let app = TestApp::spawn().await;
    let mut nameless = issue_request("new@example.com");
    nameless.first_name.clear();
    assert_error(app.issue(nameless).await, Code::InvalidArgument, "MISSING_FIELD");
    let mut nameless = issue_request("new@example.com");
    nameless.last_name = "   ".into();
    assert_error(app.issue(nameless).await, Code::InvalidArgument, "MISSING_FIELD");

    let created = app.issue_for_email("  Ann.Case@Example.COM ").await;
    assert!(created.user_created);
    let mut users = app.users();
    let user = users
        .get_user(pb::GetUserRequest {
            user: Some(pb::get_user_request::User::UserId(created.user_id.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(
        user.email, "Ann.Case@example.com",
        "trimmed, local part's case kept, domain canonical"
    );
    assert_eq!(user.first_name, "Ann");
    assert_eq!(user.status(), pb::user::Status::Pending);

    // The same person in other cases is the same user; names are not needed any more.
    let mut lower = issue_request("ann.case@example.com");
    lower.first_name.clear();
    lower.last_name.clear();
    let again = app.issue(lower).await.unwrap();
    assert!(!again.user_created);
    assert_eq!(again.user_id, created.user_id);
    let found = users
        .get_user(pb::GetUserRequest {
            user: Some(pb::get_user_request::User::Email("ANN.CASE@EXAMPLE.COM".into())),
        })
        .await
        .unwrap();
    assert_eq!(found.into_inner().user.unwrap().user_id, created.user_id);
}

#[tokio::test]
async fn pkce_binds_the_link_to_the_device_that_asked() {
    let app = TestApp::spawn().await;
    let mut request = issue_request("pkce@example.com");
    request.code_challenge = CHALLENGE.into();
    let issued = app.issue(request).await.unwrap();
    let token = token_of(&issued.link);
    assert!(app.inspect(&token).await.unwrap().pkce_required);

    assert_error(app.verify(&token, "").await, Code::FailedPrecondition, "PKCE_REQUIRED");
    let wrong = "x".repeat(43);
    assert_error(
        app.verify(&token, &wrong).await,
        Code::FailedPrecondition,
        "PKCE_MISMATCH",
    );
    assert_error(
        app.verify(&token, "short").await,
        Code::InvalidArgument,
        "INVALID_CODE_VERIFIER",
    );
    // None of that used the link up: the right device still completes.
    let verified = app.verify(&token, VERIFIER).await.unwrap();
    assert!(verified.user_activated);
}

#[tokio::test]
async fn staff_two_factor_and_disabled_users_cannot_use_links() {
    let app = TestApp::spawn().await;
    let (user, _) = app.signed_in("rules@example.com").await;
    let id = user.user_id.clone();

    // A link sent before the user was disabled stops working too.
    let pending = app.issue(issue_for_user(&id)).await.unwrap();
    app.update_user(
        &id,
        pb::User {
            status: pb::user::Status::Disabled.into(),
            ..Default::default()
        },
        &["status"],
    )
    .await
    .unwrap();
    assert_error(
        app.issue(issue_for_user(&id)).await,
        Code::FailedPrecondition,
        "USER_DISABLED",
    );
    assert_error(
        app.verify(&token_of(&pending.link), "").await,
        Code::FailedPrecondition,
        "USER_DISABLED",
    );
    assert_error(
        app.inspect(&token_of(&pending.link)).await,
        Code::FailedPrecondition,
        "USER_DISABLED",
    );

    app.update_user(
        &id,
        pb::User {
            status: pb::user::Status::Active.into(),
            mfa_enabled: true,
            ..Default::default()
        },
        &["status", "mfa_enabled"],
    )
    .await
    .unwrap();
    assert_error(
        app.issue(issue_for_user(&id)).await,
        Code::FailedPrecondition,
        "MFA_ENABLED",
    );
    assert_error(
        app.verify(&token_of(&pending.link), "").await,
        Code::FailedPrecondition,
        "MFA_ENABLED",
    );

    app.update_user(
        &id,
        pb::User {
            role: pb::user::Role::Staff.into(),
            mfa_enabled: false,
            ..Default::default()
        },
        &["role", "mfa_enabled"],
    )
    .await
    .unwrap();
    assert_error(
        app.issue(issue_for_user(&id)).await,
        Code::PermissionDenied,
        "STAFF_USER",
    );
    assert_error(
        app.verify(&token_of(&pending.link), "").await,
        Code::PermissionDenied,
        "STAFF_USER",
    );

    // Back to a client: the link that was refused all along was never used up.
    app.update_user(
        &id,
        pb::User {
            role: pb::user::Role::Client.into(),
            ..Default::default()
        },
        &["role"],
    )
    .await
    .unwrap();
    app.verify(&token_of(&pending.link), "")
        .await
        .expect("the untouched link still works");
}

#[tokio::test]
async fn sessions_of_a_disabled_user_stop_authenticating() {
    let app = TestApp::spawn().await;
    let (user, session) = app.signed_in("off@example.com").await;
    app.update_user(
        &user.user_id,
        pb::User {
            status: pb::user::Status::Disabled.into(),
            ..Default::default()
        },
        &["status"],
    )
    .await
    .unwrap();
    let request = pb::AuthenticateSessionRequest {
        credential: Some(pb::authenticate_session_request::Credential::SessionToken(
            session.session_token,
        )),
    };
    assert_error(
        app.sessions().authenticate_session(request).await,
        Code::FailedPrecondition,
        "USER_DISABLED",
    );
}

#[tokio::test]
async fn revoke_user_sessions_counts_live_sessions() {
    let app = TestApp::spawn().await;
    let (user, first) = app.signed_in("many@example.com").await;
    let second = app.issue(issue_for_user(&user.user_id)).await.unwrap();
    app.verify(&token_of(&second.link), "").await.unwrap();
    let mut sessions = app.sessions();
    let revoked = sessions
        .revoke_user_sessions(pb::RevokeUserSessionsRequest {
            user_id: user.user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked_count, 2);
    let again = sessions
        .revoke_user_sessions(pb::RevokeUserSessionsRequest { user_id: user.user_id })
        .await
        .unwrap();
    assert_eq!(again.into_inner().revoked_count, 0);
    let request = pb::AuthenticateSessionRequest {
        credential: Some(pb::authenticate_session_request::Credential::SessionToken(
            first.session_token,
        )),
    };
    assert_error(
        sessions.authenticate_session(request).await,
        Code::FailedPrecondition,
        "SESSION_REVOKED",
    );
}

#[tokio::test]
async fn revoking_all_sessions_also_catches_one_committed_at_the_same_moment() {
    // The clock stands still: a session created at the revocation's instant, as one committed
    // while the revocation ran would be, is revoked too.
    let app = TestApp::spawn().await;
    let (user, _) = app.signed_in("moment@example.com").await;
    let racing = app.issue(issue_for_user(&user.user_id)).await.unwrap();
    let mut sessions = app.sessions();
    let request = pb::RevokeUserSessionsRequest {
        user_id: user.user_id.clone(),
    };
    assert_eq!(
        sessions
            .revoke_user_sessions(request)
            .await
            .unwrap()
            .into_inner()
            .revoked_count,
        1
    );
    let late = session_of(app.verify(&token_of(&racing.link), "").await.unwrap());
    let authenticate = |token: String| pb::AuthenticateSessionRequest {
        credential: Some(pb::authenticate_session_request::Credential::SessionToken(token)),
    };
    assert_error(
        sessions.authenticate_session(authenticate(late.session_token)).await,
        Code::FailedPrecondition,
        "SESSION_REVOKED",
    );
    // Sessions started afterwards are unaffected.
    app.clock.advance_minutes(1);
    let next = app.issue(issue_for_user(&user.user_id)).await.unwrap();
    let fresh = session_of(app.verify(&token_of(&next.link), "").await.unwrap());
    sessions
        .authenticate_session(authenticate(fresh.session_token))
        .await
        .expect("a later sign-in works");
}
