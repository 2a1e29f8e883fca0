//! The OpenID Connect provider over HTTP, without a browser: the token endpoint (public and
//! confidential clients, RFC 6749 §5.2 errors with their exact bodies), discovery, every error of
//! the authorization endpoint, single sign-on with the browser session cookie (`prompt=none`,
//! `prompt=login`, `max_age`, revocation over gRPC, logout), userinfo, and CSRF refusal.

mod common;

use common::web::{HttpResponse, http_request, post_form};
use common::*;
use latchkey::config::{Config, OAuthClientConfig};
use latchkey::crypto::api_key_digest;

const CALLBACK: &str = "http://localhost:3000/oauth/callback";
const GRAFANA_CALLBACK: &str = "http://localhost:3000/login/generic_oauth";
const GRAFANA_SECRET: &str = "grafana-secret-for-tests";

fn with_confidential_client(config: &mut Config) {
    config.oauth.clients.push(OAuthClientConfig {
        client_id: "grafana".into(),
        name: "Grafana".into(),
        redirect_uris: vec![GRAFANA_CALLBACK.into()],
        scopes: vec!["openid".into(), "email".into(), "profile".into()],
        client_secret_sha256: Some(api_key_digest(GRAFANA_SECRET)),
        post_logout_redirect_uris: vec![],
    });
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(with_confidential_client).await
}

impl TestApp {
    fn http(&self) -> std::net::SocketAddr {
        self.running().http_addr().expect("the HTTP port is on")
    }

    /// A code from an OAuth login link (the gRPC side of the flow), for `client_id`.
    async fn code_for(&self, email: &str, client_id: &str, redirect_uri: &str) -> String {
        let request = pb::IssueLoginLinkRequest {
            oauth: Some(pb::OAuthParameters {
                client_id: client_id.into(),
                redirect_uri: redirect_uri.into(),
                scope: "openid email profile".into(),
                state: "st".into(),
                nonce: "nn".into(),
                code_challenge: CHALLENGE.into(),
                code_challenge_method: "S256".into(),
                response_type: "code".into(),
            }),
            ..issue_request(email)
        };
        let issued = self.issue(request).await.unwrap();
        match self.verify(&token_of(&issued.link), "").await.unwrap().result {
            Some(pb::verify_token_response::Result::Authorization(authorization)) => authorization.code,
            other => panic!("expected an authorization, got {other:?}"),
        }
    }

    async fn token(&self, headers: &[(&str, &str)], fields: &[(&str, &str)]) -> HttpResponse {
        post_form(self.http(), "/oauth/token", headers, fields).await
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> HttpResponse {
        let cookie = cookie.map(|c| format!("latchkey_session={c}"));
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
        http_request(self.http(), "GET", path, &headers, b"").await
    }
}

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

fn public_exchange(code: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code_verifier", VERIFIER),
        ("client_id", "dev"),
        ("redirect_uri", CALLBACK),
    ]
}

/// A form page's CSRF cookie and the token in its form.
fn csrf_of(page: &HttpResponse) -> (String, String) {
    let cookie = page
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("latchkey_csrf="))
        .expect("a form page sets the CSRF cookie");
    (cookie, hidden_field(page, "csrf"))
}

/// The value of a form page's hidden field `name`.
fn hidden_field(page: &HttpResponse, name: &str) -> String {
    page.body
        .split(&format!("name=\"{name}\" value=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("the form has no {name} field"))
        .to_string()
}

#[track_caller]
fn assert_oauth_error(response: &HttpResponse, status: u16, body: &str) {
    assert_eq!(
        (response.status, response.body.as_str()),
        (status, body),
        "{response:?}"
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    if status == 401 {
        assert_eq!(response.header("www-authenticate"), Some("Basic realm=\"latchkey\""));
    }
}

#[tokio::test]
async fn discovery_names_every_endpoint_and_capability() {
    let app = spawn().await;
    let document = app.get("/.well-known/openid-configuration", None).await.json();
    let base = "http://localhost:9464";
    assert_eq!(document["issuer"], base);
    for (key, path) in [
        ("authorization_endpoint", "/oauth/authorize"),
        ("token_endpoint", "/oauth/token"),
        ("userinfo_endpoint", "/oauth/userinfo"),
        ("end_session_endpoint", "/oauth/logout"),
        ("jwks_uri", "/.well-known/jwks.json"),
    ] {
        assert_eq!(document[key], format!("{base}{path}"), "{key}");
    }
    assert_eq!(
        document["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post", "none"])
    );
    assert_eq!(
        document["prompt_values_supported"],
        serde_json::json!(["none", "login"])
    );
    assert_eq!(document["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        document["grant_types_supported"],
        serde_json::json!(["authorization_code"])
    );
    assert_eq!(
        document["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );

    // Behind an ingress, the public URL moves the endpoints; the issuer stays as configured.
    let app = TestApp::spawn_with(|config| {
        config.issuer = "https://id.example.com".into();
        config.sign_in.public_url = Some("https://login.example.com/".into());
    })
    .await;
    let document = app.get("/.well-known/openid-configuration", None).await.json();
    assert_eq!(document["issuer"], "https://id.example.com");
    assert_eq!(document["token_endpoint"], "https://login.example.com/oauth/token");
    assert_eq!(
        document["token_endpoint_auth_methods_supported"],
        serde_json::json!(["none"]),
        "only the public dev client is configured"
    );
}

#[tokio::test]
async fn a_public_client_exchanges_a_code_with_pkce_once_and_a_replay_revokes_its_session() {
    let app = spawn().await;
    let code = app.code_for("pub@example.com", "dev", CALLBACK).await;
    let response = app.token(&[], &public_exchange(&code)).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.header("pragma"), Some("no-cache"));
    let tokens = response.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(tokens["scope"], "openid email profile");
    assert!(tokens["id_token"].as_str().is_some_and(|t| t.split('.').count() == 3));
    let access = tokens["access_token"].as_str().unwrap();

    // Userinfo with the access token: claims by scope.
    let bearer = format!("Bearer {access}");
    let info = http_request(app.http(), "GET", "/oauth/userinfo", &[("Authorization", &bearer)], b"").await;
    assert_eq!(info.status, 200, "{info:?}");
    let claims = info.json();
    assert_eq!(claims["email"], "pub@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["given_name"], "Ann");
    assert_eq!(claims["name"], "Ann Lee");
    let posted = post_form(app.http(), "/oauth/userinfo", &[], &[("access_token", access)]).await;
    assert_eq!(
        posted.json(),
        claims,
        "POST with the token in the body answers the same"
    );

    // The same code again: refused, and the session of its first use is revoked.
    let replay = app.token(&[], &public_exchange(&code)).await;
    assert_oauth_error(
        &replay,
        400,
        r#"{"error":"invalid_grant","error_description":"this authorization code was already used; its session is revoked"}"#,
    );
    let info = http_request(app.http(), "GET", "/oauth/userinfo", &[("Authorization", &bearer)], b"").await;
    assert_eq!(info.status, 401, "the revoked session's access token no longer answers");
    assert!(
        info.header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    let none = http_request(app.http(), "GET", "/oauth/userinfo", &[], b"").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer realm=\"latchkey\""));
}

#[tokio::test]
async fn token_endpoint_errors_have_the_exact_rfc_6749_bodies() {
    let app = spawn().await;
    let code = app.code_for("errors@example.com", "dev", CALLBACK).await;
    let with = |changes: &[(&'static str, &'static str)]| {
        let mut fields: Vec<(&str, String)> = public_exchange(&code)
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        for (key, value) in changes {
            fields.retain(|(k, _)| k != key);
            if !value.is_empty() {
                fields.push((key, value.to_string()));
            }
        }
        fields
    };
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unsupported grant",
            with(&[("grant_type", "password")]),
            400,
            r#"{"error":"unsupported_grant_type","error_description":"only grant_type 'authorization_code' is supported"}"#,
        ),
        (
            "no grant type",
            with(&[("grant_type", "")]),
            400,
            r#"{"error":"invalid_request","error_description":"grant_type is missing"}"#,
        ),
        (
            "no code",
            with(&[("code", "")]),
            400,
            r#"{"error":"invalid_request","error_description":"code is required"}"#,
        ),
        (
            "unknown code",
            with(&[("code", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]),
            400,
            r#"{"error":"invalid_grant","error_description":"no such authorization code"}"#,
        ),
        (
            "no verifier",
            with(&[("code_verifier", "")]),
            400,
            r#"{"error":"invalid_request","error_description":"code_verifier is required"}"#,
        ),
        (
            "wrong verifier",
            with(&[("code_verifier", "Xk-wrong-verifier-but-well-formed-0123456789abcdef")]),
            400,
            r#"{"error":"invalid_grant","error_description":"the code_verifier does not match the code_challenge"}"#,
        ),
        (
            "other redirect_uri",
            with(&[("redirect_uri", "http://localhost:3000/elsewhere")]),
            400,
            r#"{"error":"invalid_grant","error_description":"redirect_uri differs from the authorization's"}"#,
        ),
        (
            "unknown client",
            with(&[("client_id", "nobody")]),
            401,
            r#"{"error":"invalid_client","error_description":"unknown client or wrong client credentials"}"#,
        ),
        (
            "no client",
            with(&[("client_id", "")]),
            401,
            r#"{"error":"invalid_client","error_description":"unknown client or wrong client credentials"}"#,
        ),
        (
            "a secret for a public client",
            with(&[("client_secret", "guess")]),
            401,
            r#"{"error":"invalid_client","error_description":"this is a public client: it has no secret"}"#,
        ),
        (
            "another client's code",
            with(&[("client_id", "grafana"), ("client_secret", GRAFANA_SECRET)]),
            400,
            r#"{"error":"invalid_grant","error_description":"client_id differs from the authorization's"}"#,
        ),
    ];
    for (label, fields, status, body) in cases {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = app.token(&[], &fields).await;
        assert_eq!((response.status, response.body.as_str()), (status, body), "{label}");
        assert_oauth_error(&response, status, body);
    }
    // A parameter twice, and a body that is not a form.
    let twice = format!(
        "grant_type=authorization_code&code={code}&code={code}&client_id=dev&redirect_uri={CALLBACK}&code_verifier={VERIFIER}"
    );
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let response = http_request(app.http(), "POST", "/oauth/token", &form, twice.as_bytes()).await;
    assert_oauth_error(
        &response,
        400,
        r#"{"error":"invalid_request","error_description":"code is given more than once"}"#,
    );
    let json = [("Content-Type", "application/json")];
    let response = http_request(app.http(), "POST", "/oauth/token", &json, b"{}").await;
    assert_oauth_error(
        &response,
        400,
        r#"{"error":"invalid_request","error_description":"the body must be application/x-www-form-urlencoded"}"#,
    );
    // None of them used the code up.
    assert_eq!(app.token(&[], &public_exchange(&code)).await.status, 200);
}

#[tokio::test]
async fn a_confidential_client_authenticates_with_basic_or_post_and_a_wrong_secret_is_refused() {
    let app = spawn().await;
    let fields = |code: &str| -> Vec<(String, String)> {
        vec![
            ("grant_type".into(), "authorization_code".into()),
            ("code".into(), code.into()),
            ("code_verifier".into(), VERIFIER.into()),
            ("redirect_uri".into(), GRAFANA_CALLBACK.into()),
        ]
    };
    let send = |extra: Vec<(String, String)>, headers: Vec<(&'static str, String)>, code: String| {
        let app = &app;
        async move {
            let mut all = fields(&code);
            all.extend(extra);
            let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.token(&headers, &all).await
        }
    };
    let code = app.code_for("conf@example.com", "grafana", GRAFANA_CALLBACK).await;
    let wrong = send(vec![], vec![("Authorization", basic("grafana", "wrong"))], code.clone()).await;
    assert_oauth_error(
        &wrong,
        401,
        r#"{"error":"invalid_client","error_description":"unknown client or wrong client credentials"}"#,
    );
    let missing = send(vec![("client_id".into(), "grafana".into())], vec![], code.clone()).await;
    assert_oauth_error(
        &missing,
        401,
        r#"{"error":"invalid_client","error_description":"this client must authenticate with its secret"}"#,
    );
    let both = send(
        vec![("client_secret".into(), GRAFANA_SECRET.into())],
        vec![("Authorization", basic("grafana", GRAFANA_SECRET))],
        code.clone(),
    )
    .await;
    assert_oauth_error(
        &both,
        400,
        r#"{"error":"invalid_request","error_description":"use one client authentication method: Basic or client_secret in the body, not both"}"#,
    );
    let ok = send(vec![], vec![("Authorization", basic("grafana", GRAFANA_SECRET))], code).await;
    assert_eq!(ok.status, 200, "client_secret_basic: {ok:?}");
    assert!(ok.json()["id_token"].is_string());

    let code = app.code_for("conf@example.com", "grafana", GRAFANA_CALLBACK).await;
    let posted = send(
        vec![
            ("client_id".into(), "grafana".into()),
            ("client_secret".into(), GRAFANA_SECRET.into()),
        ],
        vec![],
        code,
    )
    .await;
    assert_eq!(posted.status, 200, "client_secret_post: {posted:?}");
}

fn authorize_path(params: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    format!("/oauth/authorize?{query}")
}

fn dev_authorize(extra: &[(&'static str, &'static str)], without: &[&str]) -> String {
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", "dev"),
        ("redirect_uri", CALLBACK),
        ("scope", "openid email"),
        ("state", "xyz"),
        ("nonce", "n1"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    params.retain(|(k, _)| !without.contains(k) && !extra.iter().any(|(e, _)| e == k));
    params.extend_from_slice(extra);
    authorize_path(&params)
}

/// The query of a redirect to the client's callback.
fn callback_query(response: &HttpResponse) -> std::collections::HashMap<String, String> {
    assert_eq!(response.status, 303, "{response:?}");
    let location = response.header("location").expect("a Location");
    let url = url::Url::parse(location).unwrap();
    assert_eq!(&location[..CALLBACK.len()], CALLBACK);
    url.query_pairs().into_owned().collect()
}

#[tokio::test]
async fn every_authorize_error_goes_to_the_redirect_uri_or_to_a_page_for_an_unknown_client() {
    let app = spawn().await;
    for (label, path) in [
        ("unknown client", dev_authorize(&[("client_id", "nobody")], &[])),
        ("no client", dev_authorize(&[], &["client_id"])),
        (
            "unregistered redirect_uri",
            dev_authorize(&[("redirect_uri", "http://localhost:3000/elsewhere")], &[]),
        ),
        ("no redirect_uri", dev_authorize(&[], &["redirect_uri"])),
        ("a parameter twice", format!("{}&state=again", dev_authorize(&[], &[]))),
    ] {
        let response = app.get(&path, None).await;
        assert_eq!(response.status, 400, "{label}");
        assert_eq!(response.header("location"), None, "{label}: never a redirect");
        assert!(
            response.body.contains("This sign-in request is not valid"),
            "{label}: {}",
            response.body
        );
        assert_eq!(response.header("x-frame-options"), Some("DENY"));
    }
    let cases: [(&str, String, &str); 11] = [
        (
            "no response_type",
            dev_authorize(&[], &["response_type"]),
            "invalid_request",
        ),
        (
            "token response_type",
            dev_authorize(&[("response_type", "token")], &[]),
            "unsupported_response_type",
        ),
        (
            "unknown scope",
            dev_authorize(&[("scope", "openid admin")], &[]),
            "invalid_scope",
        ),
        (
            "public client without PKCE",
            dev_authorize(&[], &["code_challenge"]),
            "invalid_request",
        ),
        (
            "plain PKCE",
            dev_authorize(&[("code_challenge_method", "plain")], &[]),
            "invalid_request",
        ),
        (
            "unknown prompt",
            dev_authorize(&[("prompt", "consent")], &[]),
            "invalid_request",
        ),
        (
            "none with login",
            dev_authorize(&[("prompt", "none login")], &[]),
            "invalid_request",
        ),
        (
            "bad max_age",
            dev_authorize(&[("max_age", "soon")], &[]),
            "invalid_request",
        ),
        (
            "request object",
            dev_authorize(&[("request", "eyJ.eyJ.sig")], &[]),
            "request_not_supported",
        ),
        (
            "fragment response mode",
            dev_authorize(&[("response_mode", "fragment")], &[]),
            "invalid_request",
        ),
        (
            "no browser session",
            dev_authorize(&[("prompt", "none")], &[]),
            "login_required",
        ),
    ];
    for (label, path, error) in cases {
        let query = callback_query(&app.get(&path, None).await);
        assert_eq!(
            query.get("error").map(String::as_str),
            Some(error),
            "{label}: {query:?}"
        );
        assert_eq!(query.get("state").map(String::as_str), Some("xyz"), "{label}");
        assert!(!query.contains_key("code"), "{label}");
    }
    // A good request without a browser session: the sign-in page, with a CSRF cookie.
    let page = app
        .get(&dev_authorize(&[("login_hint", "ann@example.com")], &[]), None)
        .await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("value=\"ann@example.com\""),
        "login_hint fills the form"
    );
    assert!(page.cookies().iter().any(|c| c.starts_with("latchkey_csrf=")));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!page.body.contains("<script>"), "no inline script");
}

#[tokio::test]
async fn a_browser_session_signs_into_clients_without_an_email_until_it_is_revoked() {
    let app = spawn().await;
    let (_, session) = app.signed_in("sso@example.com").await;
    let cookie = Some(session.session_token.as_str());

    // prompt=none and no prompt: a code at once.
    for extra in [&[("prompt", "none")][..], &[]] {
        let query = callback_query(&app.get(&dev_authorize(extra, &[]), cookie).await);
        assert_eq!(query["state"], "xyz");
        let tokens = app.token(&[], &public_exchange(&query["code"])).await;
        assert_eq!(tokens.status, 200, "{tokens:?}");
    }
    // A confidential client may leave PKCE out; its code then takes no verifier.
    let path = authorize_path(&[
        ("response_type", "code"),
        ("client_id", "grafana"),
        ("redirect_uri", GRAFANA_CALLBACK),
        ("scope", "openid email"),
        ("state", "g"),
    ]);
    let response = app.get(&path, cookie).await;
    assert_eq!(response.status, 303);
    let location = url::Url::parse(response.header("location").unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let exchange = |verifier: Option<&'static str>| {
        let mut fields = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", GRAFANA_CALLBACK),
        ];
        fields.extend(verifier.map(|v| ("code_verifier", v)));
        fields
    };
    let auth = basic("grafana", GRAFANA_SECRET);
    let downgrade = app.token(&[("Authorization", &auth)], &exchange(Some(VERIFIER))).await;
    assert_oauth_error(
        &downgrade,
        400,
        r#"{"error":"invalid_grant","error_description":"this code was issued without a code_challenge; send no code_verifier"}"#,
    );
    let tokens = app.token(&[("Authorization", &auth)], &exchange(None)).await;
    assert_eq!(tokens.status, 200, "{tokens:?}");
    let id_token = tokens.json()["id_token"].as_str().unwrap().to_string();

    // prompt=login, and a max_age the session is older than: the sign-in page, not a code.
    let login = app.get(&dev_authorize(&[("prompt", "login")], &[]), cookie).await;
    assert_eq!(login.status, 200);
    assert!(login.body.contains("Email me a sign-in link"));
    app.clock.advance_minutes(2);
    let old = app.get(&dev_authorize(&[("max_age", "60")], &[]), cookie).await;
    assert_eq!(old.status, 200, "older than max_age: sign in again");
    let fresh = app.get(&dev_authorize(&[("max_age", "600")], &[]), cookie).await;
    assert_eq!(fresh.status, 303);

    // Logout with an id_token_hint ends the browser session at once.
    let hint = format!("/oauth/logout?id_token_hint={id_token}");
    let out = app.get(&hint, cookie).await;
    assert_eq!(out.status, 200, "{out:?}");
    assert!(
        out.cookies().contains(&"latchkey_session=".to_string()),
        "the cookie is cleared"
    );
    let after = callback_query(&app.get(&dev_authorize(&[("prompt", "none")], &[]), cookie).await);
    assert_eq!(after["error"], "login_required");

    // A session revoked over gRPC ends single sign-on too.
    let (_, session) = app.signed_in("revoked@example.com").await;
    let cookie = Some(session.session_token.as_str());
    assert_eq!(
        app.get(&dev_authorize(&[("prompt", "none")], &[]), cookie).await.status,
        303
    );
    app.revoke_session_id(&session.session_id).await;
    let after = callback_query(&app.get(&dev_authorize(&[("prompt", "none")], &[]), cookie).await);
    assert_eq!(after["error"], "login_required");
}

#[tokio::test]
async fn logout_asks_first_without_a_hint_and_forms_refuse_a_missing_csrf_token() {
    let app = spawn().await;
    let (_, session) = app.signed_in("logout@example.com").await;
    let cookie = format!("latchkey_session={}", session.session_token);
    let page = http_request(
        app.http(),
        "GET",
        "/oauth/logout?client_id=dev&post_logout_redirect_uri=http%3A%2F%2Flocalhost%3A3000%2F&state=bye",
        &[("Cookie", &cookie)],
        b"",
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Sign out of latchkey in this browser?"));
    let (csrf_cookie, token) = csrf_of(&page);
    let fields = [
        ("client_id", "dev"),
        ("post_logout_redirect_uri", "http://localhost:3000/"),
        ("state", "bye"),
    ];
    // Without the token (a form on another site): refused, still signed in.
    let both = format!("{cookie}; {csrf_cookie}");
    let forged = post_form(app.http(), "/oauth/logout", &[("Cookie", &both)], &fields).await;
    assert_eq!(forged.status, 403);
    assert!(forged.body.contains("This form has expired"));
    for (path, fields) in [
        ("/oauth/sign-in/email", vec![("email", "x@example.com")]),
        ("/oauth/sign-in/continue", vec![]),
        ("/oauth/sign-in/confirm", vec![("t", "x")]),
    ] {
        let refused = post_form(app.http(), path, &[("Cookie", &both)], &fields).await;
        assert_eq!(refused.status, 403, "{path}");
    }
    assert_eq!(
        app.get(&dev_authorize(&[("prompt", "none")], &[]), Some(&session.session_token))
            .await
            .status,
        303
    );
    let mut with_token = fields.to_vec();
    with_token.push(("csrf", &token));
    let out = post_form(app.http(), "/oauth/logout", &[("Cookie", &both)], &with_token).await;
    assert_eq!(out.status, 303);
    assert_eq!(out.header("location"), Some("http://localhost:3000/?state=bye"));
    let after = callback_query(
        &app.get(&dev_authorize(&[("prompt", "none")], &[]), Some(&session.session_token))
            .await,
    );
    assert_eq!(after["error"], "login_required");
    // An unregistered return address is refused on a page.
    let bad = app
        .get(
            "/oauth/logout?client_id=dev&post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F",
            None,
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("location"), None);
}

fn oauth_link_request(email: &str, redirect_url: &str) -> pb::IssueLoginLinkRequest {
    pb::IssueLoginLinkRequest {
        redirect_url: redirect_url.into(),
        oauth: Some(pb::OAuthParameters {
            client_id: "dev".into(),
            redirect_uri: CALLBACK.into(),
            scope: "openid email".into(),
            state: "zap".into(),
            code_challenge: CHALLENGE.into(),
            code_challenge_method: "S256".into(),
            response_type: "code".into(),
            ..Default::default()
        }),
        ..issue_request(email)
    }
}

/// The Zapier flow needs no landing page of the caller's: IssueLoginLink's OAuth link opens the
/// hosted confirm page, which only looks on GET and hands the client its code on the button.
#[tokio::test]
async fn an_oauth_login_link_lands_on_the_hosted_confirm_page_unless_the_caller_names_one() {
    let app = spawn().await;
    let issued = app.issue(oauth_link_request("zap@example.com", "")).await.unwrap();
    let link = url::Url::parse(&issued.link).unwrap();
    assert_eq!(link.path(), "/oauth/sign-in/confirm", "{link}");
    let path = format!("{}?{}", link.path(), link.query().unwrap());
    // A mail scanner's GETs use nothing up.
    for _ in 0..2 {
        let page = app.get(&path, None).await;
        assert_eq!(page.status, 200, "{page:?}");
        assert!(page.body.contains("Continue as z***@example.com"), "{}", page.body);
    }
    let (csrf_cookie, csrf) = csrf_of(&app.get(&path, None).await);
    let press = async |token: &str| {
        let fields = [("csrf", csrf.as_str()), ("token", token)];
        post_form(
            app.http(),
            "/oauth/sign-in/confirm",
            &[("Cookie", &csrf_cookie)],
            &fields,
        )
        .await
    };
    let token = token_of(&issued.link);
    let pressed = press(&token).await;
    assert_eq!(pressed.status, 303, "{pressed:?}");
    let query = callback_query(&pressed);
    assert!(pressed.header("location").unwrap().starts_with(CALLBACK));
    assert_eq!(query["state"], "zap");
    let tokens = app.token(&[], &public_exchange(&query["code"])).await;
    assert_eq!(tokens.status, 200, "{tokens:?}");
    assert_eq!(tokens.json()["scope"], "openid email");
    // The link is used up: the page says so, and a second press gives no second code.
    assert!(app.get(&path, None).await.body.contains("This link was already used"));
    let again = press(&token).await;
    assert_eq!(again.status, 400);
    assert_eq!(again.header("location"), None);

    // A landing page of the caller's keeps working: the link points there.
    let own = app
        .issue(oauth_link_request(
            "own@example.com",
            "http://localhost:3000/zapier/landing",
        ))
        .await
        .unwrap();
    assert!(
        own.link.starts_with("http://localhost:3000/zapier/landing?token="),
        "{}",
        own.link
    );
    // A link the caller must finish itself (a same-device PKCE check, or a plain login link) is
    // not this page's to use: it shows a refusal and leaves the link usable.
    let same_device = app
        .issue(pb::IssueLoginLinkRequest {
            code_challenge: CHALLENGE.into(),
            ..oauth_link_request("pkce@example.com", "")
        })
        .await
        .unwrap();
    let plain = app.issue(issue_request("plain@example.com")).await.unwrap();
    for issued in [&same_device, &plain] {
        let token = token_of(&issued.link);
        let page = app.get(&format!("/oauth/sign-in/confirm?token={token}"), None).await;
        assert_eq!(page.status, 400);
        assert!(page.body.contains("This link is not for this page"), "{}", page.body);
        assert_eq!(press(&token).await.status, 400);
    }
    assert!(
        app.verify(&token_of(&same_device.link), VERIFIER).await.is_ok(),
        "still usable"
    );
    assert!(app.verify(&token_of(&plain.link), "").await.is_ok(), "still usable");
}

/// The wait page and its long poll name their attempt in the URL; one this browser does not keep,
/// or a malformed one, is a page saying so (never a panic on a cookie name).
#[tokio::test]
async fn an_unknown_or_malformed_attempt_id_says_the_sign_in_has_ended() {
    let app = spawn().await;
    for id in [
        "",
        "AAAAAAAAAAAA",
        "%3B%20Path%3D%2F",
        "a%0d%0aSet-Cookie:x=1",
        &"x".repeat(5000),
    ] {
        let page = app.get(&format!("/oauth/sign-in/wait?a={id}"), None).await;
        assert_eq!(page.status, 400, "{id}");
        assert!(page.body.contains("This sign-in has ended"), "{id}");
        let status = app.get(&format!("/oauth/sign-in/status?a={id}"), None).await;
        assert_eq!(
            (status.status, status.body.as_str()),
            (404, r#"{"status":"none"}"#),
            "{id}"
        );
    }
}

/// A browser keeps at most 4 waiting sign-ins: starting a 5th ends the oldest (its cookie is
/// cleared), so the cookies every page request carries stay small.
#[tokio::test]
async fn a_fifth_sign_in_in_one_browser_ends_the_oldest() {
    let app = spawn().await;
    let form = app.get(&dev_authorize(&[], &[]), None).await;
    let (csrf_cookie, csrf) = csrf_of(&form);
    let request = hidden_field(&form, "request");
    let mut attempts: Vec<String> = Vec::new();
    for n in 0..5 {
        let jar = std::iter::once(csrf_cookie.clone())
            .chain(attempts.iter().cloned())
            .collect::<Vec<_>>()
            .join("; ");
        let email = format!("tab{n}@example.com");
        let fields = [
            ("csrf", csrf.as_str()),
            ("request", request.as_str()),
            ("email", email.as_str()),
        ];
        let sent = post_form(app.http(), "/oauth/sign-in/email", &[("Cookie", &jar)], &fields).await;
        assert_eq!(sent.status, 303, "{sent:?}");
        let cookies = sent.cookies();
        let (set, cleared): (Vec<_>, Vec<_>) = cookies.iter().partition(|c| !c.ends_with('='));
        assert_eq!(set.len(), 1, "{cookies:?}");
        let expected_cleared: Vec<String> = match n {
            4 => vec![format!("{}=", attempts[0].split('=').next().unwrap())],
            _ => vec![],
        };
        assert_eq!(
            cleared.into_iter().cloned().collect::<Vec<_>>(),
            expected_cleared,
            "attempt {n}"
        );
        // The clock moves on, so the attempts have distinct start times.
        app.clock.advance_seconds(1);
        attempts.push(set[0].clone());
    }
}

/// The real binary reads the new keys from the environment, as every key.
#[tokio::test]
async fn the_binary_takes_the_public_url_and_branding_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::process::BinaryServer::start(
        dir.path(),
        &[],
        &[
            ("LATCHKEY_SIGN_IN__PUBLIC_URL", "https://login.example.com"),
            ("LATCHKEY_SIGN_IN__PRODUCT_NAME", "Acme Login"),
            ("LATCHKEY_SIGN_IN__ACCENT_COLOR", "#ffd400"),
        ],
    );
    let http = server.http_addr.expect("the HTTP port is on");
    let document = http_request(http, "GET", "/.well-known/openid-configuration", &[], b"")
        .await
        .json();
    assert_eq!(
        document["authorization_endpoint"],
        "https://login.example.com/oauth/authorize"
    );
    let page = http_request(http, "GET", &dev_authorize(&[], &[]), &[], b"").await;
    assert!(page.body.contains("Acme Login"), "{}", page.body);
    assert!(
        page.header("set-cookie").unwrap().contains("; Secure"),
        "cookies are Secure behind https"
    );
    let css = http_request(http, "GET", "/oauth/sign-in/assets/site.css", &[], b"").await;
    assert!(
        css.body.contains("--accent: #ffd400; --on-accent: #000000;"),
        "{}",
        css.body
    );
}
