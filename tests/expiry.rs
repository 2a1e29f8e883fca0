//! Expiry on a clock the test controls: links and sessions expire, expired records answer
//! TOKEN_EXPIRED for the retention period and are then purged; signing keys rotate and old keys
//! stay published until their tokens expire; everything survives a restart.

mod common;

use common::*;
use latchkey::domain::clock::Clock;
use tonic::Code;

const DAY: i64 = 24 * 60;

fn by_token(token: &str) -> pb::AuthenticateSessionRequest {
    pb::AuthenticateSessionRequest {
        credential: Some(pb::authenticate_session_request::Credential::SessionToken(token.into())),
    }
}

fn by_jwt(jwt: &str) -> pb::AuthenticateSessionRequest {
    pb::AuthenticateSessionRequest {
        credential: Some(pb::authenticate_session_request::Credential::SessionJwt(jwt.into())),
    }
}

#[tokio::test]
async fn links_expire_then_are_purged_after_the_retention_period() {
    let app = TestApp::spawn().await;
    let default = app.issue_for_email("expire@example.com").await;
    let mut short = issue_for_user(&default.user_id);
    short.expiration_minutes = 5;
    let short = app.issue(short).await.unwrap();
    assert_eq!(
        short.expires_at.unwrap().seconds - default.expires_at.unwrap().seconds,
        (5 - 120) * 60
    );

    app.clock.advance_minutes(4);
    app.inspect(&token_of(&short.link)).await.expect("alive at 4 minutes");
    app.clock.advance_minutes(2);
    assert_error(
        app.verify(&token_of(&short.link), "").await,
        Code::FailedPrecondition,
        "TOKEN_EXPIRED",
    );
    assert_error(
        app.inspect(&token_of(&short.link)).await,
        Code::FailedPrecondition,
        "TOKEN_EXPIRED",
    );
    app.verify(&token_of(&default.link), "")
        .await
        .expect("the 120-minute link still works");

    // Within the retention period expired links still say what happened.
    app.clock.advance_minutes(DAY - 10);
    assert_eq!(app.running().sweep_now().await.unwrap(), 0);
    assert_error(
        app.inspect(&token_of(&short.link)).await,
        Code::FailedPrecondition,
        "TOKEN_EXPIRED",
    );
    assert_error(
        app.inspect(&token_of(&default.link)).await,
        Code::FailedPrecondition,
        "TOKEN_ALREADY_USED",
    );

    // After it, both are gone: the store does not grow without bound.
    app.clock.advance_minutes(3 * 60);
    assert_eq!(app.running().sweep_now().await.unwrap(), 2);
    assert_error(
        app.inspect(&token_of(&short.link)).await,
        Code::NotFound,
        "TOKEN_NOT_FOUND",
    );
    assert_error(
        app.inspect(&token_of(&default.link)).await,
        Code::NotFound,
        "TOKEN_NOT_FOUND",
    );
    // The purged link's reuse entry went with it: a new request makes a new link.
    let fresh = app.issue(issue_for_user(&default.user_id)).await.unwrap();
    assert!(!fresh.reused);
}

#[tokio::test]
async fn steady_load_keeps_the_store_bounded() {
    let app = TestApp::spawn().await;
    let (user, _) = app.signed_in("steady@example.com").await;
    let mut purged = 0;
    for _day in 0..3 {
        for n in 0..20 {
            let mut request = issue_for_user(&user.user_id);
            request.expiration_minutes = 5 + n;
            app.issue(request).await.unwrap();
        }
        app.clock.advance_minutes(2 * DAY);
        purged += app.running().sweep_now().await.unwrap();
    }
    // Every link of every day, plus the first link and session, is gone once due.
    assert_eq!(purged, 3 * 20 + 2);
    assert_eq!(app.running().sweep_now().await.unwrap(), 0);
}

#[tokio::test]
async fn sessions_expire() {
    let app = TestApp::spawn().await;
    let issued = app.issue_for_email("session@example.com").await;
    let request = pb::VerifyTokenRequest {
        token: token_of(&issued.link),
        session_duration_minutes: 30,
        ..Default::default()
    };
    let session = session_of(app.passwordless().verify_token(request).await.unwrap().into_inner());
    let mut sessions = app.sessions();
    app.clock.advance_minutes(10);
    // The JWT's own exp (5 minutes) has passed; the session lives, so it still authenticates and
    // a fresh JWT comes back.
    let refreshed = sessions
        .authenticate_session(by_jwt(&session.session_jwt))
        .await
        .unwrap()
        .into_inner();
    let refreshed_jwt = refreshed.session.unwrap().session_jwt;
    assert_ne!(refreshed_jwt, session.session_jwt);
    app.clock.advance_minutes(21);
    assert_error(
        sessions.authenticate_session(by_token(&session.session_token)).await,
        Code::FailedPrecondition,
        "SESSION_EXPIRED",
    );
    assert_error(
        sessions.authenticate_session(by_jwt(&refreshed_jwt)).await,
        Code::FailedPrecondition,
        "SESSION_EXPIRED",
    );
    app.clock.advance_minutes(DAY + 60);
    app.running().sweep_now().await.unwrap();
    assert_error(
        sessions.authenticate_session(by_token(&session.session_token)).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
}

#[tokio::test]
async fn signing_keys_rotate_with_the_successor_published_first() {
    let app = TestApp::spawn_with(|config| config.sessions.signing_key_rotation_days = 30).await;
    let issued = app.issue_for_email("rotate@example.com").await;
    let request = pb::VerifyTokenRequest {
        token: token_of(&issued.link),
        session_duration_minutes: 525_600,
        ..Default::default()
    };
    let session = session_of(app.passwordless().verify_token(request).await.unwrap().into_inner());
    let mut sessions = app.sessions();
    let jwks = |mut sessions: pb::sessions_client::SessionsClient<_>| async move {
        let keys = sessions
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys;
        keys.into_iter().map(|k| k.kid).collect::<Vec<_>>()
    };
    let signing_kid = |jwt: &str| jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap();
    let refreshed = |sessions: &mut pb::sessions_client::SessionsClient<_>, jwt: String| {
        let request = by_jwt(&jwt);
        let mut sessions = sessions.clone();
        async move {
            sessions
                .authenticate_session(request)
                .await
                .map(|r| r.into_inner().session.unwrap().session_jwt)
        }
    };
    let old_kid = signing_kid(&session.session_jwt);
    assert_eq!(jwks(sessions.clone()).await, vec![old_kid.clone()]);

    let keys = &app.running().domain().keys;
    app.clock.advance_minutes(28 * DAY);
    assert!(!keys.rotate_if_due(app.clock.now()).await.unwrap(), "nothing due yet");
    // A day before the switch the successor is published, but does not sign yet.
    app.clock.advance_minutes(DAY + 1);
    assert!(keys.rotate_if_due(app.clock.now()).await.unwrap());
    let published = jwks(sessions.clone()).await;
    assert_eq!(published.len(), 2);
    let new_kid = published.iter().find(|k| **k != old_kid).unwrap().clone();
    let jwt = refreshed(&mut sessions, session.session_jwt.clone()).await.unwrap();
    assert_eq!(signing_kid(&jwt), old_kid);

    // After 30 days the successor signs; the old key stays published for the tokens it signed.
    app.clock.advance_minutes(DAY);
    assert!(!keys.rotate_if_due(app.clock.now()).await.unwrap());
    let new_jwt = refreshed(&mut sessions, jwt.clone()).await.unwrap();
    assert_eq!(signing_kid(&new_jwt), new_kid);
    refreshed(&mut sessions, session.session_jwt.clone())
        .await
        .expect("old-key JWTs still check out");

    // Once every token the old key signed has expired, it is no longer published.
    app.clock.advance_minutes(2 * 60);
    assert!(keys.rotate_if_due(app.clock.now()).await.unwrap());
    assert_eq!(jwks(sessions.clone()).await, vec![new_kid.clone()]);
    assert_error(
        sessions.authenticate_session(by_jwt(&session.session_jwt)).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    sessions
        .authenticate_session(by_jwt(&new_jwt))
        .await
        .expect("new-key JWTs work");
    sessions
        .authenticate_session(by_token(&session.session_token))
        .await
        .expect("the session itself lives on");

    // A restart keeps the keys.
    let (dir, clock) = app.stop().await;
    let config = test_config(&dir);
    let restarted = TestApp::start_in(dir, config, clock).await;
    assert_eq!(jwks(restarted.sessions()).await, vec![new_kid]);
    restarted
        .sessions()
        .authenticate_session(by_jwt(&new_jwt))
        .await
        .expect("verifies after restart");
}

#[tokio::test]
async fn a_different_server_key_cannot_open_the_data() {
    let app = TestApp::spawn().await;
    let (_, session) = app.signed_in("key@example.com").await;
    let (dir, clock) = app.stop().await;
    std::fs::write(
        dir.path().join("server.key"),
        latchkey::crypto::ServerKey::generate_encoded(),
    )
    .unwrap();
    let config = test_config(&dir);
    let validated = config.validate(dir.path()).unwrap();
    let error = match latchkey::app::start(validated, std::sync::Arc::new(clock)).await {
        Ok(_) => panic!("started with the wrong server key"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("server key does not match"), "{error}");
    assert!(
        error.contains("start with the key the store was created with"),
        "{error}"
    );
    assert!(
        !error.contains("internal"),
        "a start-up failure, not an internal error: {error}"
    );
    assert!(!error.contains(&session.session_token));
}
