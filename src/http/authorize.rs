//! The authorization endpoint, `GET /oauth/authorize` (RFC 6749 §4.1.1, OIDC Core §3.1.2), and
//! the end-session endpoint (RP-initiated logout). The client and its redirect URI are checked
//! first: until both are known good, problems are shown on a page and never redirected (an open
//! redirector otherwise); after that, they go back to the client as `error` and `state`.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::HttpState;
use super::browser::{self, SESSION_COOKIE};
use super::form::Params;
use super::sign_in;
use crate::domain::error::{Error, Reason};
use crate::domain::model::{OAuthRequest, User};
use crate::domain::oauth::{OAuthParams, Pkce};
use crate::domain::sessions::{SessionCredential, SessionRef};
use crate::jwt::TokenType;

/// A redirect the browser follows (303: a GET, whatever the request was).
pub fn see_other(location: &str) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, location.to_string())]).into_response();
    browser::page_headers(response.headers_mut());
    response
}

/// `redirect_uri` with `error`, `error_description` and `state` (RFC 6749 §4.1.2.1).
fn error_redirect(redirect_uri: &str, error: &str, description: &str, state: Option<&str>) -> Response {
    let mut url = url::Url::parse(redirect_uri).expect("registered redirect URIs are URLs");
    url.query_pairs_mut()
        .append_pair("error", error)
        .append_pair("error_description", &super::token::describe(description));
    if let Some(state) = state {
        url.query_pairs_mut().append_pair("state", state);
    }
    see_other(url.as_str())
}

/// The person the browser session belongs to, and when they signed in, if it still lives.
pub async fn browser_session(state: &HttpState, headers: &HeaderMap) -> Option<(User, i64)> {
    let token = browser::cookie(headers, SESSION_COOKIE)?;
    match state
        .domain
        .authenticate_session(SessionCredential::Token(token.to_string()))
        .await
    {
        Ok((user, session)) => Some((user, session.session.created_at)),
        Err(_) => None,
    }
}

/// Issues a code for `request` to a signed-in person and sends the browser to the client.
pub async fn complete(state: &HttpState, user: &User, auth_time: i64, request: &OAuthRequest) -> Response {
    match state.domain.issue_code(user, request, auth_time).await {
        Ok((_, callback)) => see_other(&callback),
        Err(error) => {
            tracing::warn!(
                reason = error.reason().as_str(),
                "no authorization code could be issued"
            );
            let description = "the sign-in could not be completed; try again";
            error_redirect(
                &request.redirect_uri,
                "temporarily_unavailable",
                description,
                Some(&request.state).filter(|s| !s.is_empty()).map(String::as_str),
            )
        }
    }
}

pub async fn authorize(State(state): State<HttpState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let site = &state.site;
    let query = query.unwrap_or_default();
    let refuse = |message: &str| {
        site.message(
            StatusCode::BAD_REQUEST,
            "This sign-in request is not valid",
            message,
            None,
        )
    };
    let Ok(params) = Params::parse(query.as_bytes()) else {
        return refuse("A parameter of the request is given more than once.");
    };
    let Some(client) = params.get("client_id").and_then(|id| state.domain.oauth_client(id)) else {
        return refuse("The application that sent you here is not known to this sign-in service.");
    };
    let Some(redirect_uri) = params
        .get("redirect_uri")
        .filter(|uri| client.redirect_uris.iter().any(|r| r == uri))
    else {
        return refuse("The application that sent you here gave a return address that is not registered for it.");
    };
    let state_param = params.get("state");
    let fail = |error: &str, description: &str| error_redirect(redirect_uri, error, description, state_param);
    if params.get("request").is_some() {
        return fail("request_not_supported", "request objects are not supported");
    }
    if params.get("request_uri").is_some() {
        return fail("request_uri_not_supported", "request_uri is not supported");
    }
    match params.get("response_type") {
        None => return fail("invalid_request", "response_type is missing"),
        Some("code") => {}
        Some(_) => return fail("unsupported_response_type", "only response_type code is supported"),
    }
    if params.get("response_mode").is_some_and(|mode| mode != "query") {
        return fail("invalid_request", "only response_mode query is supported");
    }
    let prompts: Vec<&str> = params.get("prompt").unwrap_or_default().split_whitespace().collect();
    if let Some(unknown) = prompts.iter().find(|p| !matches!(**p, "none" | "login")) {
        return fail(
            "invalid_request",
            &format!("prompt {unknown} is not supported (none, login)"),
        );
    }
    if prompts.contains(&"none") && prompts.len() > 1 {
        return fail("invalid_request", "prompt none cannot be combined with other values");
    }
    let max_age = match params.get("max_age").map(str::parse::<u32>) {
        None => None,
        Some(Ok(seconds)) => Some(i64::from(seconds)),
        Some(Err(_)) => return fail("invalid_request", "max_age is a number of seconds"),
    };
    let validated = state.domain.validate_oauth(
        &OAuthParams {
            client_id: client.id.clone(),
            redirect_uri: redirect_uri.to_string(),
            scope: params.text("scope"),
            state: params.text("state"),
            nonce: params.text("nonce"),
            code_challenge: params.text("code_challenge"),
            code_challenge_method: params.text("code_challenge_method"),
            response_type: "code".into(),
        },
        Pkce::PublicClients,
    );
    let request = match validated {
        Ok(request) => request,
        Err(error) => {
            let code = if error.reason() == Reason::INVALID_SCOPE {
                "invalid_scope"
            } else {
                "invalid_request"
            };
            let description = match &error {
                Error::Rejected { message, .. } => message.clone(),
                other => other.to_string(),
            };
            return fail(code, &description);
        }
    };
    let now = state.domain.clock.now();
    let session = browser_session(&state, &headers)
        .await
        .filter(|(_, auth_time)| max_age.is_none_or(|max| now - auth_time <= max * 1000));
    match (session, prompts.first().copied()) {
        (Some((user, auth_time)), None | Some("none")) => complete(&state, &user, auth_time, &request).await,
        (None, Some("none")) => fail("login_required", "the person is not signed in"),
        _ => {
            let hint = params
                .get("login_hint")
                .filter(|hint| hint.contains('@') && hint.len() <= 254);
            sign_in::email_form(&state, &headers, &request, &client.name, hint.unwrap_or_default(), None)
        }
    }
}

/// The post-logout redirect URI, if the request names one registered for its client.
fn post_logout_target(state: &HttpState, params: &Params, hint_client: Option<&str>) -> Result<Option<String>, ()> {
    let Some(uri) = params.get("post_logout_redirect_uri") else {
        return Ok(None);
    };
    let client_id = params.get("client_id").or(hint_client).ok_or(())?;
    let client = state.domain.oauth_client(client_id).ok_or(())?;
    if !client
        .post_logout_redirect_uris
        .iter()
        .any(|registered| registered == uri)
    {
        return Err(());
    }
    let mut url = url::Url::parse(uri).map_err(|_| ())?;
    if let Some(state) = params.get("state") {
        url.query_pairs_mut().append_pair("state", state);
    }
    Ok(Some(url.into()))
}

fn unregistered_return(state: &HttpState) -> Response {
    state.site.message(
        StatusCode::BAD_REQUEST,
        "Sign-out failed",
        "The address to return to after signing out is not registered for this application.",
        None,
    )
}

/// The client an `id_token_hint` was issued to (its signature and issuer checked; an expired one
/// is still a good hint).
fn hinted_client(state: &HttpState, params: &Params) -> Option<String> {
    let claims = state
        .domain
        .keys
        .verify(params.get("id_token_hint")?, TokenType::IdToken)
        .ok()?;
    if claims.get("iss").and_then(Value::as_str) != Some(state.domain.settings.issuer.as_str()) {
        return None;
    }
    claims.get("azp").and_then(Value::as_str).map(str::to_string)
}

async fn sign_out(state: &HttpState, headers: &HeaderMap, target: Option<String>) -> Response {
    if let Some(token) = browser::cookie(headers, SESSION_COOKIE) {
        // Already gone is as good as revoked.
        let _ = state.domain.revoke_session(SessionRef::Token(token.to_string())).await;
    }
    let mut response = match target {
        Some(target) => see_other(&target),
        None => state.site.message(
            StatusCode::OK,
            "You are signed out",
            &format!("You are signed out of {} in this browser.", state.site.product()),
            None,
        ),
    };
    let cleared = browser::set_cookie(SESSION_COOKIE, "", "/oauth/", 0, state.site.secure_cookies);
    browser::add_cookie(&mut response, cleared);
    response
}

/// `GET /oauth/logout`: with a valid `id_token_hint` the client asked for it, so it happens at
/// once; otherwise the person confirms with a button (a link on another site cannot sign them out).
pub async fn end_session(State(state): State<HttpState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let site = &state.site;
    let Ok(params) = Params::parse(query.unwrap_or_default().as_bytes()) else {
        return sign_out_refused(site);
    };
    let hint = hinted_client(&state, &params);
    let Ok(target) = post_logout_target(&state, &params, hint.as_deref()) else {
        return unregistered_return(&state);
    };
    if hint.is_some() {
        return sign_out(&state, &headers, target).await;
    }
    let (secret, fresh) = browser::csrf_secret(&headers);
    let carried: Vec<(&str, &str)> = ["post_logout_redirect_uri", "state", "client_id"]
        .into_iter()
        .filter_map(|name| params.get(name).map(|value| (name, value)))
        .collect();
    let mut response = site.page(
        StatusCode::OK,
        "logout.html",
        "Sign out",
        minijinja::context! { csrf => browser::csrf_token(&site.server_key, &secret), carried },
    );
    if fresh {
        browser::add_cookie(&mut response, sign_in::csrf_cookie(&state, &secret));
    }
    response
}

/// A sign-out request with a parameter given twice: ambiguous, so refused.
fn sign_out_refused(site: &super::pages::Site) -> Response {
    site.message(
        StatusCode::BAD_REQUEST,
        "Sign-out failed",
        "A parameter is given twice.",
        None,
    )
}

/// `POST /oauth/logout`: the confirmation's button (or a client posting the same parameters with
/// an `id_token_hint`).
pub async fn end_session_confirmed(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let site = &state.site;
    let Ok(params) = Params::parse(&body) else {
        return sign_out_refused(site);
    };
    let hint = hinted_client(&state, &params);
    if hint.is_none() && !browser::csrf_ok(&site.server_key, &headers, params.get("csrf")) {
        return sign_in::csrf_refused(&state);
    }
    match post_logout_target(&state, &params, hint.as_deref()) {
        Ok(target) => sign_out(&state, &headers, target).await,
        Err(()) => unregistered_return(&state),
    }
}
