//! A user's sessions (device management), end to end over gRPC: sessions made by a link, an
//! email's code and an enchanted link's poll are listed with how they were made and the device the
//! caller saw; AuthenticateSession records its time at most once a minute; pages; revoked one by
//! one with RevokeSession, each leaves the list.

mod common;

use common::mail::*;
use common::*;

fn phone() -> Option<pb::ClientMetadata> {
    Some(pb::ClientMetadata {
        ip_address: "2001:DB8:0::42".into(),
        user_agent: " Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) ".into(),
    })
}

fn laptop() -> Option<pb::ClientMetadata> {
    Some(pb::ClientMetadata {
        ip_address: "198.51.100.23".into(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0".into(),
    })
}

impl TestApp {
    async fn list(&self, user_id: &str, page_size: u32, page_token: &str) -> pb::ListUserSessionsResponse {
        self.sessions()
            .list_user_sessions(pb::ListUserSessionsRequest {
                user_id: user_id.into(),
                page_size,
                page_token: page_token.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Every live session of the user, page by page.
    async fn all_sessions(&self, user_id: &str) -> Vec<pb::UserSession> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list(user_id, 2, &token).await;
            assert!(page.sessions.len() <= 2);
            all.extend(page.sessions);
            if page.next_page_token.is_empty() {
                return all;
            }
            token = page.next_page_token;
        }
    }

    async fn authenticate(&self, session_token: &str) -> Result<pb::AuthenticateSessionResponse, tonic::Status> {
        self.sessions()
            .authenticate_session(pb::AuthenticateSessionRequest {
                credential: Some(pb::authenticate_session_request::Credential::SessionToken(
                    session_token.into(),
                )),
            })
            .await
            .map(|r| r.into_inner())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_with_their_device_and_revoked_one_by_one() {
    let app = TestApp::spawn().await;
    let mut passwordless = app.passwordless();
    let email = "devices@example.com";

    // 1. A login link, clicked on the laptop.
    let issued = app.issue_for_email(email).await;
    let user_id = issued.user_id.clone();
    let by_link = session_of(
        passwordless
            .verify_token(pb::VerifyTokenRequest {
                token: token_of(&issued.link),
                client: laptop(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
    );
    // 2. A magic link's code, typed on the phone.
    let queued = passwordless
        .login_or_create(pb::LoginOrCreateRequest {
            email: email.into(),
            include_otp: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let code = otp_in(&app.enchanted_email(&queued.email_id).await).expect("the email shows a code");
    let by_code = passwordless
        .verify_otp(pb::VerifyOtpRequest {
            email_id: queued.email_id,
            otp: code,
            client: phone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    // 3. An enchanted link, collected by the laptop's poll; no client given.
    let (sent, right, _) = app
        .enchanted(pb::SendEnchantedLinkRequest {
            login_id: email.into(),
            ..Default::default()
        })
        .await;
    app.verify(&right, "").await.unwrap();
    let by_poll = passwordless
        .poll_session(pb::PollSessionRequest {
            pending_ref: sent.pending_ref,
            wait_seconds: 0,
            client: None,
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    // Someone else's session is not listed.
    app.signed_in("someone.else@example.com").await;

    let listed = app.all_sessions(&user_id).await;
    let ids: Vec<&str> = listed.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(
        ids,
        [&by_link.session_id, &by_code.session_id, &by_poll.session_id],
        "oldest first, across pages"
    );
    use pb::user_session::Origin;
    assert_eq!(listed[0].origin(), Origin::LoginLink);
    assert!(!listed[0].via_otp);
    assert_eq!(listed[0].client, laptop());
    assert_eq!(listed[1].origin(), Origin::MagicLink);
    assert!(listed[1].via_otp);
    let stored_phone = listed[1].client.clone().unwrap();
    assert_eq!(stored_phone.ip_address, "2001:db8::42", "the address in canonical form");
    assert_eq!(
        stored_phone.user_agent, "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X)",
        "trimmed"
    );
    assert_eq!(listed[2].origin(), Origin::EnchantedLink);
    assert_eq!(listed[2].client, None);
    for session in &listed {
        assert!(session.created_at.is_some() && session.expires_at.is_some());
        assert!(session.last_authenticated_at.is_none(), "not authenticated yet");
    }

    // Authentication is recorded, but at most once a minute.
    app.authenticate(&by_code.session_token).await.unwrap();
    let first_seen = app.all_sessions(&user_id).await[1].last_authenticated_at.unwrap();
    app.clock.advance_seconds(59);
    app.authenticate(&by_code.session_token).await.unwrap();
    assert_eq!(
        app.all_sessions(&user_id).await[1].last_authenticated_at.unwrap(),
        first_seen
    );
    app.clock.advance_seconds(2);
    app.authenticate(&by_code.session_token).await.unwrap();
    let later = app.all_sessions(&user_id).await[1].last_authenticated_at.unwrap();
    assert_eq!(later.seconds - first_seen.seconds, 61);

    // "Sign out that device": one at a time, each leaves the list and stops working.
    for (revoked, session) in [&by_code, &by_link, &by_poll].into_iter().enumerate() {
        app.revoke_session_id(&session.session_id).await;
        let left = app.all_sessions(&user_id).await;
        assert_eq!(left.len(), 2 - revoked);
        assert!(left.iter().all(|s| s.session_id != session.session_id));
        assert_error(
            app.authenticate(&session.session_token).await,
            tonic::Code::FailedPrecondition,
            "SESSION_REVOKED",
        );
    }
}

#[tokio::test]
async fn expired_sessions_and_ones_revoked_together_are_not_listed() {
    let app = TestApp::spawn().await;
    let issued = app.issue_for_email("expiring@example.com").await;
    let short = session_of(
        app.passwordless()
            .verify_token(pb::VerifyTokenRequest {
                token: token_of(&issued.link),
                session_duration_minutes: 5,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
    );
    app.signed_in("expiring@example.com").await;
    assert_eq!(app.all_sessions(&issued.user_id).await.len(), 2);
    app.clock.advance_minutes(6);
    let left = app.all_sessions(&issued.user_id).await;
    assert_eq!(left.len(), 1);
    assert_ne!(left[0].session_id, short.session_id);
    app.sessions()
        .revoke_user_sessions(pb::RevokeUserSessionsRequest {
            user_id: issued.user_id.clone(),
        })
        .await
        .unwrap();
    assert!(app.all_sessions(&issued.user_id).await.is_empty());
}
