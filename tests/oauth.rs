//! The Zapier flow end to end: a login link that creates the account and carries an OAuth
//! authorization request; VerifyToken yields a code and the client's callback; ExchangeCode with
//! PKCE yields access and ID tokens that an independent JWT library verifies with the JWKS fetched
//! over HTTP. Code replay, expiry, mismatches and every bad input.

mod common;

use common::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use latchkey::domain::clock::Clock;
use serde_json::Value;
use tonic::Code;

const CALLBACK: &str = "http://localhost:3000/oauth/callback";

fn oauth(scope: &str) -> pb::OAuthParameters {
    pb::OAuthParameters {
        client_id: "dev".into(),
        redirect_uri: CALLBACK.into(),
        scope: scope.into(),
        state: "st-123".into(),
        nonce: "n-456".into(),
        code_challenge: CHALLENGE.into(),
        code_challenge_method: "S256".into(),
        response_type: "code".into(),
    }
}

fn exchange(code: &str) -> pb::ExchangeCodeRequest {
    pb::ExchangeCodeRequest {
        grant_type: "authorization_code".into(),
        code: code.into(),
        code_verifier: VERIFIER.into(),
        client_id: "dev".into(),
        redirect_uri: CALLBACK.into(),
    }
}

impl TestApp {
    /// A verified OAuth login link for a new user: the authorization the client receives.
    async fn authorize(&self, email: &str, scope: &str) -> pb::Authorization {
        let request = pb::IssueLoginLinkRequest {
            oauth: Some(oauth(scope)),
            ..issue_request(email)
        };
        let issued = self.issue(request).await.unwrap();
        let verified = self.verify(&token_of(&issued.link), "").await.unwrap();
        match verified.result {
            Some(pb::verify_token_response::Result::Authorization(authorization)) => authorization,
            other => panic!("expected an authorization, got {other:?}"),
        }
    }

    async fn exchange(&self, request: pb::ExchangeCodeRequest) -> Result<pb::ExchangeCodeResponse, tonic::Status> {
        self.passwordless().exchange_code(request).await.map(|r| r.into_inner())
    }

    /// Whether the session an exchange created still lives, read from the store: OAuth hands
    /// out no first-party credential for it (its access token is not a session JWT).
    async fn session_revoked(&self, session_id: &str) -> bool {
        let session = self.running().domain().store.session(session_id).await.unwrap();
        session.expect("the exchange stored its session").revoked_at.is_some()
    }

    async fn authenticate_jwt(&self, jwt: &str) -> Result<(), tonic::Status> {
        let request = pb::AuthenticateSessionRequest {
            credential: Some(pb::authenticate_session_request::Credential::SessionJwt(jwt.into())),
        };
        self.sessions().authenticate_session(request).await.map(|_| ())
    }
}

fn verify_offline(token: &str, jwks: &JwkSet, audience: &str) -> serde_json::Map<String, Value> {
    let kid = decode_header(token).unwrap().kid.expect("kid");
    let jwk = jwks.find(&kid).expect("the signing key is published");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[audience]);
    validation.set_issuer(&["http://localhost:9464"]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    decode::<serde_json::Map<String, Value>>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .expect("verifies offline")
        .claims
}

#[tokio::test]
async fn zapier_flow_from_login_link_to_verified_tokens() {
    let app = TestApp::spawn().await;
    let request = pb::IssueLoginLinkRequest {
        oauth: Some(oauth("openid email")),
        ..issue_request("zap@example.com")
    };
    let issued = app.issue(request).await.unwrap();
    assert!(issued.user_created, "quick account creation works with oauth too");
    let verified = app.verify(&token_of(&issued.link), "").await.unwrap();
    assert!(verified.user_activated);
    assert_eq!(verified.link_kind(), pb::LinkKind::LoginLink);
    let Some(pb::verify_token_response::Result::Authorization(authorization)) = verified.result else {
        panic!("an OAuth login link yields an authorization");
    };
    assert_eq!(authorization.code.len(), 51, "a 6-byte stamp and 256 bits, base64url");
    assert_eq!(
        authorization.redirect_url,
        format!("{CALLBACK}?code={}&state=st-123", authorization.code)
    );
    let lifetime = authorization.expires_at.unwrap().seconds - app.clock_seconds();
    assert!((59..=60).contains(&lifetime), "codes live 60 s, not {lifetime}");

    let tokens = app.exchange(exchange(&authorization.code)).await.unwrap();
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 3600);
    assert_eq!(tokens.scope, "openid email");
    assert!(tokens.session_id.starts_with("session-"));

    // Verified offline with the JWKS as any client library fetches it: over HTTP.
    let http = app.running().http_addr().expect("the HTTP port is on");
    let (status, body) = http_get(http, "/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    let grpc_jwks = app
        .sessions()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    assert_eq!(body, grpc_jwks, "the HTTP JWKS is GetJwks's");
    let jwks: JwkSet = serde_json::from_str(&body).unwrap();

    // RFC 9068: the access token's audience is the resource (by default the issuer), and it
    // names its client in client_id; the ID token's audience is the client.
    let access = verify_offline(&tokens.access_token, &jwks, "http://localhost:9464");
    assert_eq!(access["client_id"], "dev");
    assert_eq!(access["sub"], issued.user_id.as_str());
    assert_eq!(access["sid"], tokens.session_id.as_str());
    assert_eq!(access["scope"], "openid email");
    let id = verify_offline(&tokens.id_token, &jwks, "dev");
    assert_eq!(id["sub"], issued.user_id.as_str());
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["azp"], "dev");
    assert_eq!(id["email"], "zap@example.com");
    assert_eq!(id["email_verified"], true);
    assert!(id["auth_time"].as_i64().unwrap() <= id["iat"].as_i64().unwrap());

    let (status, body) = http_get(http, "/.well-known/openid-configuration").await;
    assert_eq!(status, 200);
    let discovery: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(discovery["issuer"], "http://localhost:9464");
    assert_eq!(discovery["jwks_uri"], "http://localhost:9464/.well-known/jwks.json");
    assert_eq!(discovery["id_token_signing_alg_values_supported"][0], "EdDSA");
    assert_eq!(discovery["code_challenge_methods_supported"][0], "S256");

    // Without openid there is no ID token.
    let authorization = app.authorize("plain@example.com", "email").await;
    let tokens = app.exchange(exchange(&authorization.code)).await.unwrap();
    assert!(tokens.id_token.is_empty());
    assert_eq!(tokens.scope, "email");
}

impl TestApp {
    fn clock_seconds(&self) -> i64 {
        self.clock.now() / 1000
    }
}

#[tokio::test]
async fn a_replayed_code_fails_and_revokes_the_first_session() {
    let app = TestApp::spawn().await;
    let authorization = app.authorize("replay@example.com", "openid").await;
    let first = app.exchange(exchange(&authorization.code)).await.unwrap();
    assert!(!app.session_revoked(&first.session_id).await, "the session lives");
    assert_error(
        app.exchange(exchange(&authorization.code)).await,
        Code::FailedPrecondition,
        "CODE_ALREADY_USED",
    );
    assert!(app.session_revoked(&first.session_id).await);
}

#[tokio::test]
async fn oauth_tokens_are_not_session_jwts() {
    let app = TestApp::spawn().await;
    let authorization = app.authorize("confused@example.com", "openid email").await;
    let tokens = app.exchange(exchange(&authorization.code)).await.unwrap();
    assert_eq!(
        decode_header(&tokens.access_token).unwrap().typ.as_deref(),
        Some("at+jwt")
    );
    assert_eq!(decode_header(&tokens.id_token).unwrap().typ.as_deref(), Some("JWT"));
    for (kind, token) in [("access token", &tokens.access_token), ("ID token", &tokens.id_token)] {
        let status = app.authenticate_jwt(token).await.expect_err(kind);
        assert_eq!(status.code(), Code::NotFound, "{kind}");
        assert_eq!(reason(&status), "SESSION_NOT_FOUND", "{kind}");
        assert!(
            status.message().contains("another kind of token"),
            "{kind}: {}",
            status.message()
        );
    }
    // A first-party session JWT of the same user still authenticates.
    let issued = app.issue(issue_request("confused@example.com")).await.unwrap();
    let verified = app.verify(&token_of(&issued.link), "").await.unwrap();
    let Some(pb::verify_token_response::Result::Session(session)) = verified.result else {
        panic!("a login link yields a session");
    };
    assert_eq!(decode_header(&session.session_jwt).unwrap().typ.as_deref(), Some("JWT"));
    app.authenticate_jwt(&session.session_jwt)
        .await
        .expect("a session JWT authenticates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_exchanges_of_one_code_exactly_one_succeeds() {
    let app = TestApp::spawn().await;
    for round in 0..5 {
        let authorization = app.authorize(&format!("race{round}@example.com"), "openid").await;
        let attempts: Vec<_> = (0..16)
            .map(|_| {
                let mut client = app.passwordless();
                let request = exchange(&authorization.code);
                tokio::spawn(async move { client.exchange_code(request).await })
            })
            .collect();
        let mut succeeded = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(_) => succeeded += 1,
                Err(status) => assert_eq!(reason(&status), "CODE_ALREADY_USED"),
            }
        }
        assert_eq!(succeeded, 1, "round {round}");
    }
}

#[tokio::test]
async fn exchange_checks_expiry_pkce_client_and_redirect() {
    let app = TestApp::spawn().await;
    let authorization = app.authorize("checks@example.com", "openid email").await;
    let code = authorization.code.clone();
    let with = |change: fn(&mut pb::ExchangeCodeRequest)| {
        let mut request = exchange(&code);
        change(&mut request);
        request
    };
    let cases: Vec<(&str, pb::ExchangeCodeRequest, Code, &str)> = vec![
        (
            "grant",
            with(|r| r.grant_type = "password".into()),
            Code::InvalidArgument,
            "UNSUPPORTED_GRANT_TYPE",
        ),
        (
            "no code",
            with(|r| r.code.clear()),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            "unknown code",
            exchange(&latchkey::crypto::new_secret(1_795_545_262_253)),
            Code::NotFound,
            "CODE_NOT_FOUND",
        ),
        (
            "no verifier",
            with(|r| r.code_verifier.clear()),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            "bad verifier",
            with(|r| r.code_verifier = "short".into()),
            Code::InvalidArgument,
            "INVALID_CODE_VERIFIER",
        ),
        (
            "wrong verifier",
            with(|r| r.code_verifier = "x".repeat(43)),
            Code::FailedPrecondition,
            "PKCE_MISMATCH",
        ),
        (
            "client",
            with(|r| r.client_id = "other".into()),
            Code::FailedPrecondition,
            "CLIENT_MISMATCH",
        ),
        (
            "redirect",
            with(|r| r.redirect_uri = "http://localhost:3000/oauth/other".into()),
            Code::FailedPrecondition,
            "REDIRECT_URI_MISMATCH",
        ),
        (
            "no redirect",
            with(|r| r.redirect_uri.clear()),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
    ];
    assert_refusals(cases, |request| app.exchange(request)).await;
    // None of that used the code up.
    app.exchange(exchange(&code))
        .await
        .expect("the right exchange still works");

    let late = app.authorize("late@example.com", "openid").await;
    app.clock.advance_minutes(2);
    assert_error(
        app.exchange(exchange(&late.code)).await,
        Code::FailedPrecondition,
        "CODE_EXPIRED",
    );
}

#[tokio::test]
async fn oauth_login_link_bad_inputs() {
    let app = TestApp::spawn().await;
    let with = |change: fn(&mut pb::OAuthParameters)| {
        let mut params = oauth("openid");
        change(&mut params);
        pb::IssueLoginLinkRequest {
            oauth: Some(params),
            ..issue_request("oauthbad@example.com")
        }
    };
    let cases: Vec<(&str, pb::IssueLoginLinkRequest, Code, &str)> = vec![
        (
            "no client",
            with(|p| p.client_id.clear()),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            "unknown client",
            with(|p| p.client_id = "stranger".into()),
            Code::PermissionDenied,
            "CLIENT_NOT_ALLOWED",
        ),
        (
            "no redirect",
            with(|p| p.redirect_uri.clear()),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            "prefix redirect",
            with(|p| p.redirect_uri = "http://localhost:3000/oauth/callback/x".into()),
            Code::InvalidArgument,
            "REDIRECT_NOT_ALLOWED",
        ),
        (
            "scope",
            with(|p| p.scope = "openid admin".into()),
            Code::InvalidArgument,
            "INVALID_SCOPE",
        ),
        (
            "plain",
            with(|p| p.code_challenge_method = "plain".into()),
            Code::InvalidArgument,
            "INVALID_CODE_CHALLENGE",
        ),
        (
            "method",
            with(|p| p.code_challenge_method = "S512".into()),
            Code::InvalidArgument,
            "INVALID_CODE_CHALLENGE",
        ),
        (
            "no challenge",
            with(|p| p.code_challenge.clear()),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            "bad challenge",
            with(|p| p.code_challenge = "abc".into()),
            Code::InvalidArgument,
            "INVALID_CODE_CHALLENGE",
        ),
        (
            "response type",
            with(|p| p.response_type = "token".into()),
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
        (
            "state",
            with(|p| p.state = "s".repeat(513)),
            Code::InvalidArgument,
            "INVALID_VALUE",
        ),
    ];
    assert_refusals(cases, |request| app.issue(request)).await;
    let lookup = pb::GetUserRequest {
        user: Some(pb::get_user_request::User::Email("oauthbad@example.com".into())),
    };
    assert_error(app.users().get_user(lookup).await, Code::NotFound, "USER_NOT_FOUND");
    // An empty scope asks for all of the client's scopes.
    let authorization = app.authorize("allscopes@example.com", "").await;
    let tokens = app.exchange(exchange(&authorization.code)).await.unwrap();
    assert_eq!(tokens.scope, "openid email profile");
}

#[tokio::test]
async fn access_tokens_verify_across_a_key_rotation_with_the_http_jwks() {
    const DAY: i64 = 24 * 60;
    let app = TestApp::spawn_with(|config| config.sessions.signing_key_rotation_days = 30).await;
    let http = app.running().http_addr().expect("the HTTP port is on");
    let kid = |jwt: &str| decode_header(jwt).unwrap().kid.unwrap();
    let before = app.authorize("before@example.com", "openid").await;
    let before = app.exchange(exchange(&before.code)).await.unwrap();

    let keys = &app.running().domain().keys;
    app.clock.advance_minutes(29 * DAY + 1);
    assert!(
        keys.rotate_if_due(app.clock.now()).await.unwrap(),
        "successor published"
    );
    app.clock.advance_minutes(DAY);
    let after = app.authorize("after@example.com", "openid").await;
    let after = app.exchange(exchange(&after.code)).await.unwrap();
    assert_ne!(
        kid(&before.access_token),
        kid(&after.access_token),
        "the successor signs"
    );
    assert_eq!(kid(&after.access_token), kid(&after.id_token));

    let (status, body) = http_get(http, "/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    let grpc_jwks = app
        .sessions()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        body, grpc_jwks.jwks_json,
        "the HTTP JWKS is GetJwks's after a rotation too"
    );
    assert_eq!(grpc_jwks.keys.len(), 2);
    let jwks: JwkSet = serde_json::from_str(&body).unwrap();
    // The offline check uses the wall clock, which the test clock started from; both are in date.
    verify_offline(&before.access_token, &jwks, "http://localhost:9464");
    verify_offline(&before.id_token, &jwks, "dev");
    verify_offline(&after.access_token, &jwks, "http://localhost:9464");

    // Once the old key's last access token has expired, the old key is unpublished.
    app.clock.advance_minutes(2 * 60);
    assert!(keys.rotate_if_due(app.clock.now()).await.unwrap());
    let (_, body) = http_get(http, "/.well-known/jwks.json").await;
    let jwks: JwkSet = serde_json::from_str(&body).unwrap();
    assert_eq!(jwks.keys.len(), 1);
    assert!(jwks.find(&kid(&before.access_token)).is_none());
}

#[tokio::test]
async fn a_code_of_a_user_disabled_or_deleted_after_the_click_is_refused() {
    let app = TestApp::spawn().await;
    let (user, _) = app.signed_in("later-disabled@example.com").await;
    let authorization = app.authorize("later-disabled@example.com", "openid").await;
    let disable = pb::User {
        status: pb::user::Status::Disabled.into(),
        ..Default::default()
    };
    app.update_user(&user.user_id, disable, &["status"]).await.unwrap();
    assert_error(
        app.exchange(exchange(&authorization.code)).await,
        Code::FailedPrecondition,
        "USER_DISABLED",
    );
    // The refusal wrote nothing: once enabled again, the code still works, once.
    let enable = pb::User {
        status: pb::user::Status::Active.into(),
        ..Default::default()
    };
    app.update_user(&user.user_id, enable, &["status"]).await.unwrap();
    app.exchange(exchange(&authorization.code)).await.unwrap();

    let (user, _) = app.signed_in("later-deleted@example.com").await;
    let authorization = app.authorize("later-deleted@example.com", "openid").await;
    let delete = pb::DeleteUserRequest {
        user_id: user.user_id.clone(),
    };
    app.users().delete_user(delete).await.unwrap();
    assert_error(
        app.exchange(exchange(&authorization.code)).await,
        Code::NotFound,
        "CODE_NOT_FOUND",
    );
}
