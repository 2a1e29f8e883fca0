//! The hosted sign-in pages under `/oauth/sign-in/`: the email form sends an enchanted link
//! (`SendEnchantedLink`'s domain code, links pointing at the confirm page); the "check your email"
//! page shows the right link's number and waits (a long poll by script, a button without); the
//! confirm page is scanner-safe (GET only looks, the button's POST uses the link). Whichever
//! browser collects the attempt (`PollSession`'s domain code) gets the browser session cookie and
//! goes on to the client with a code.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::authorize::{browser_session, complete, see_other};
use super::browser::{self, Attempt, CSRF_COOKIE, SESSION_COOKIE};
use super::form::Params;
use super::pages::{ASSETS, WAIT_SCRIPT};
use super::{HttpState, SIGN_IN_PREFIX};
use crate::crypto::Digest32;
use crate::domain::enchanted::{PollOutcome, SendEnchantedLink};
use crate::domain::error::{Error, Reason};
use crate::domain::links::{Inspection, VerifyOutcome};
use crate::domain::model::{LinkKind, Millis, OAuthRequest};
use crate::domain::sessions::{NewSession, SessionRef};

/// How long the script's long poll holds one request.
const POLL_SECONDS: u32 = 25;

pub fn routes() -> Router<HttpState> {
    let at = |path: &str| format!("{SIGN_IN_PREFIX}{path}");
    Router::new()
        .route(&format!("{ASSETS}/site.css"), get(stylesheet))
        .route(&format!("{ASSETS}/wait.js"), get(script))
        .route(&at("email"), post(send_link))
        .route(&at("wait"), get(wait))
        .route(&at("status"), get(status))
        .route(&at("continue"), post(continue_))
        .route(&at("confirm"), get(confirm_page).post(confirm))
}

async fn stylesheet(State(state): State<HttpState>) -> impl IntoResponse {
    let css = state.site.stylesheet().to_string();
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        css,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        WAIT_SCRIPT,
    )
}

pub fn csrf_cookie(state: &HttpState, secret: &str) -> HeaderValue {
    browser::set_cookie(CSRF_COOKIE, secret, "/oauth/", 7 * 24 * 3600, state.site.secure_cookies)
}

pub fn csrf_refused(state: &HttpState) -> Response {
    state.site.message(
        StatusCode::FORBIDDEN,
        "This form has expired",
        "The form was not sent from this sign-in page, or it is too old. Go back, reload the page and try again.",
        None,
    )
}

/// A page with forms: its CSRF token, and the cookie it is bound to when the browser has none.
fn with_forms(state: &HttpState, headers: &HeaderMap, render: impl FnOnce(String) -> Response) -> Response {
    let (secret, fresh) = browser::csrf_secret(headers);
    let mut response = render(browser::csrf_token(&state.site.server_key, &secret));
    if fresh {
        browser::add_cookie(&mut response, csrf_cookie(state, &secret));
    }
    response
}

/// The email form for an authorization request.
pub fn email_form(
    state: &HttpState,
    headers: &HeaderMap,
    request: &OAuthRequest,
    client_name: &str,
    email: &str,
    problem: Option<&str>,
) -> Response {
    let sealed = browser::seal_request(&state.site.server_key, request);
    let status = if problem.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    with_forms(state, headers, |csrf| {
        state.site.page(
            status,
            "sign_in.html",
            "Sign in",
            minijinja::context! { csrf, request => sealed, client_name, email, problem },
        )
    })
}

/// The authorization request again, as a URL that starts this sign-in over.
fn start_over_url(state: &HttpState, request: &OAuthRequest) -> String {
    let mut url = url::Url::parse(&format!("{}{}", state.site.public_url, super::AUTHORIZE_PATH))
        .expect("the public URL was validated");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &request.client_id)
        .append_pair("redirect_uri", &request.redirect_uri)
        .append_pair("scope", &request.scope);
    for (name, value) in [
        ("state", &request.state),
        ("nonce", &request.nonce),
        ("code_challenge", &request.code_challenge),
    ] {
        if !value.is_empty() {
            url.query_pairs_mut().append_pair(name, value);
        }
    }
    if !request.code_challenge.is_empty() {
        url.query_pairs_mut().append_pair("code_challenge_method", "S256");
    }
    url.into()
}

/// The attempt `id` (from the wait page's URL or form) this browser keeps.
fn attempt_of(state: &HttpState, headers: &HeaderMap, id: &str) -> Option<Attempt> {
    let name = browser::attempt_cookie(id)?;
    browser::unseal_attempt(&state.site.server_key, browser::cookie(headers, &name)?)
}

/// The attempt of this browser that a link belongs to (its pending ref's digest), with its id.
fn attempt_with_ref(state: &HttpState, headers: &HeaderMap, ref_digest: &Digest32) -> Option<(String, Attempt)> {
    browser::attempt_cookies(headers).into_iter().find_map(|(id, sealed)| {
        let attempt = browser::unseal_attempt(&state.site.server_key, sealed)?;
        (Digest32::of_secret(&attempt.pending_ref) == *ref_digest).then(|| (id.to_string(), attempt))
    })
}

fn clear_attempt(state: &HttpState, id: &str, response: &mut Response) {
    if let Some(name) = browser::attempt_cookie(id) {
        let cleared = browser::set_cookie(&name, "", SIGN_IN_PREFIX, 0, state.site.secure_cookies);
        browser::add_cookie(response, cleared);
    }
}

/// Sign-ins one browser may wait for at once: each attempt cookie is up to about 2 KB (it holds
/// the authorization request), and every request to the pages carries them all.
const MAX_ATTEMPTS: usize = 4;

/// Makes room for a new attempt: ends this browser's oldest ones beyond `MAX_ATTEMPTS - 1`
/// (a page still waiting for one of them then says its sign-in has ended).
fn clear_oldest_attempts(state: &HttpState, headers: &HeaderMap, response: &mut Response) {
    let mut kept: Vec<(Millis, &str)> = browser::attempt_cookies(headers)
        .into_iter()
        .map(|(id, sealed)| {
            let started = browser::unseal_attempt(&state.site.server_key, sealed).map_or(0, |a| a.started_at);
            (started, id)
        })
        .collect();
    kept.sort_unstable_by(|a, b| b.cmp(a));
    for (_, id) in kept.iter().skip(MAX_ATTEMPTS - 1) {
        clear_attempt(state, id, response);
    }
}

/// The `a` parameter: which of this browser's attempts a wait page is about.
fn attempt_id(params: &Params) -> String {
    params.text("a")
}

/// Sets the browser session cookie for a session just collected, ending the one it replaces.
async fn keep_session(state: &HttpState, headers: &HeaderMap, session: &NewSession, response: &mut Response) {
    if let Some(old) = browser::cookie(headers, SESSION_COOKIE) {
        let _ = state.domain.revoke_session(SessionRef::Token(old.to_string())).await;
    }
    let token = session
        .token
        .as_deref()
        .expect("a collected session comes with its token");
    let max_age = (session.session.expires_at - state.domain.clock.now()).max(0) / 1000;
    let cookie = browser::set_cookie(SESSION_COOKIE, token, "/oauth/", max_age, state.site.secure_cookies);
    browser::add_cookie(response, cookie);
}

fn unavailable(state: &HttpState, error: &Error) -> Response {
    tracing::warn!(reason = error.reason().as_str(), "a sign-in page could not be served");
    state.site.message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Something went wrong",
        "The sign-in service could not answer just now. Wait a moment and try again.",
        None,
    )
}

/// `POST /oauth/sign-in/email`: sends the enchanted link, keeps the attempt in a sealed cookie,
/// and shows "check your email" (through a redirect, so a reload does not send another email).
async fn send_link(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let site = &state.site;
    let params = Params::parse(&body).unwrap_or_default();
    if !browser::csrf_ok(&site.server_key, &headers, params.get("csrf")) {
        return csrf_refused(&state);
    }
    let Some(request) = params
        .get("request")
        .and_then(|r| browser::unseal_request(&site.server_key, r))
    else {
        return site.message(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "This sign-in form is not valid.",
            None,
        );
    };
    let client_name = state
        .domain
        .oauth_client(&request.client_id)
        .map(|client| client.name.clone())
        .unwrap_or_default();
    let email = params.text("email");
    let sent = state
        .domain
        .send_enchanted_link(SendEnchantedLink {
            login_id: email.clone(),
            redirect_url: site.confirm_url(),
            ..Default::default()
        })
        .await;
    let problem = match sent {
        Ok(sent) => {
            let attempt = Attempt {
                pending_ref: sent.pending_ref,
                number: sent.link_id,
                masked_email: sent.masked_email,
                started_at: state.domain.clock.now(),
                expires_at: sent.expires_at,
                request,
            };
            let max_age = (attempt.expires_at - attempt.started_at).max(0) / 1000;
            let sealed = browser::seal_attempt(&site.server_key, &attempt);
            let id = browser::new_attempt_id();
            let name = browser::attempt_cookie(&id).expect("a new id is valid");
            let mut response = super::authorize::see_other(&format!("{SIGN_IN_PREFIX}wait?a={id}"));
            let cookie = browser::set_cookie(&name, &sealed, SIGN_IN_PREFIX, max_age, site.secure_cookies);
            browser::add_cookie(&mut response, cookie);
            clear_oldest_attempts(&state, &headers, &mut response);
            return response;
        }
        Err(error) => match error.reason() {
            Reason::INVALID_EMAIL | Reason::MISSING_FIELD => "Enter an email address, like name@example.com.",
            Reason::RATE_LIMITED => "Several emails were sent to this address just now. Wait a minute, then try again.",
            Reason::MFA_ENABLED | Reason::USER_DISABLED | Reason::STAFF_USER => {
                "This account cannot sign in with an email link."
            }
            _ => return unavailable(&state, &error),
        },
    };
    email_form(&state, &headers, &request, &client_name, &email, Some(problem))
}

fn wait_page(state: &HttpState, headers: &HeaderMap, id: &str, attempt: &Attempt, notice: Option<&str>) -> Response {
    with_forms(state, headers, |csrf| {
        state.site.page(
            StatusCode::OK,
            "wait.html",
            "Check your email",
            minijinja::context! {
                csrf,
                attempt => id,
                number => &attempt.number,
                masked_email => &attempt.masked_email,
                notice,
            },
        )
    })
}

fn no_attempt(state: &HttpState) -> Response {
    state.site.message(
        StatusCode::BAD_REQUEST,
        "This sign-in has ended",
        "This browser has no sign-in waiting for an email. Go back to the application and sign in again.",
        None,
    )
}

async fn wait(State(state): State<HttpState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let id = attempt_id(&Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default());
    match attempt_of(&state, &headers, &id) {
        Some(attempt) => wait_page(&state, &headers, &id, &attempt, None),
        None => no_attempt(&state),
    }
}

/// `GET /oauth/sign-in/status`: the long poll of the "check your email" page. A click collects
/// the session here, so the cookie is set even before the page moves on.
async fn status(State(state): State<HttpState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let id = attempt_id(&Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default());
    let Some(attempt) = attempt_of(&state, &headers, &id) else {
        return (StatusCode::NOT_FOUND, browser_json(json!({ "status": "none" }))).into_response();
    };
    let outcome = state
        .domain
        .poll_session(&attempt.pending_ref, POLL_SECONDS, None)
        .await;
    let (label, session) = match outcome {
        Ok(PollOutcome::Pending) => ("pending", None),
        Ok(PollOutcome::Verified { session, .. }) => ("verified", Some(session)),
        Ok(PollOutcome::Collected) => ("collected", None),
        Ok(PollOutcome::Expired) => ("expired", None),
        Ok(PollOutcome::Failed) => ("failed", None),
        Err(error) if error.reason() == Reason::PENDING_REF_NOT_FOUND => ("expired", None),
        Err(_) => ("pending", None),
    };
    let mut response = (StatusCode::OK, browser_json(json!({ "status": label }))).into_response();
    if let Some(session) = session {
        keep_session(&state, &headers, &session, &mut response).await;
    }
    response
}

fn browser_json(body: serde_json::Value) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body))
}

/// Goes on from an attempt: collects it if it is verified, or uses the browser session it left
/// (collected by another page of this browser); otherwise says where things stand.
async fn go_on(state: &HttpState, headers: &HeaderMap, id: &str, attempt: &Attempt, clicked_here: bool) -> Response {
    let site = &state.site;
    let outcome = match state.domain.poll_session(&attempt.pending_ref, 0, None).await {
        Ok(outcome) => outcome,
        Err(error) if error.reason() == Reason::PENDING_REF_NOT_FOUND => PollOutcome::Expired,
        Err(error) => return unavailable(state, &error),
    };
    let start_over = start_over_url(state, &attempt.request);
    let mut response = match outcome {
        PollOutcome::Verified { user, session } => {
            let mut response = complete(state, &user, session.session.created_at, &attempt.request).await;
            keep_session(state, headers, &session, &mut response).await;
            response
        }
        PollOutcome::Collected => match browser_session(state, headers).await {
            // Collected by the other page of this browser: that page goes on to the application.
            Some(_) if clicked_here => {
                return site.message(
                    StatusCode::OK,
                    "You are signed in",
                    "Go back to the page where you started; it continues by itself. You can close this one.",
                    None,
                );
            }
            Some((user, auth_time)) if auth_time >= attempt.started_at => {
                complete(state, &user, auth_time, &attempt.request).await
            }
            _ => {
                return site.message(
                    StatusCode::OK,
                    "Signed in elsewhere",
                    "This sign-in was completed in another browser or window.",
                    Some((&start_over, "Sign in here")),
                );
            }
        },
        PollOutcome::Pending if clicked_here => {
            return site.message(
                StatusCode::OK,
                "You are signed in",
                "Go back to the device where you started; it continues by itself.",
                None,
            );
        }
        PollOutcome::Pending => {
            return wait_page(
                state,
                headers,
                id,
                attempt,
                Some(
                    "The link has not been pressed yet. Press the link with this number in the email, then try again.",
                ),
            );
        }
        PollOutcome::Expired => site.message(
            StatusCode::OK,
            "The link has expired",
            "The email's links work for a few minutes only.",
            Some((&start_over, "Send a new link")),
        ),
        PollOutcome::Failed => site.message(
            StatusCode::OK,
            "This sign-in was cancelled",
            "A link with another number was pressed, so this sign-in was cancelled to keep your account safe.",
            Some((&start_over, "Start again")),
        ),
    };
    clear_attempt(state, id, &mut response);
    response
}

/// `POST /oauth/sign-in/continue`: "I pressed the link" (the script submits it too).
async fn continue_(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let params = Params::parse(&body).unwrap_or_default();
    if !browser::csrf_ok(&state.site.server_key, &headers, params.get("csrf")) {
        return csrf_refused(&state);
    }
    let id = attempt_id(&params);
    match attempt_of(&state, &headers, &id) {
        Some(attempt) => go_on(&state, &headers, &id, &attempt, false).await,
        // The attempt ended in another tab of this browser, which went on signed in.
        None if browser_session(&state, &headers).await.is_some() => state.site.message(
            StatusCode::OK,
            "You are signed in",
            "This sign-in was completed in another tab or window. You can close this one.",
            None,
        ),
        None => no_attempt(&state),
    }
}

fn link_problem(state: &HttpState, error: &Error) -> Response {
    let (title, message) = match error.reason() {
        Reason::TOKEN_EXPIRED => ("This link has expired", "Sign in again to get a new link."),
        Reason::TOKEN_ALREADY_USED => (
            "This link was already used",
            "Each link works once. Sign in again if you need to.",
        ),
        Reason::WRONG_ENCHANTED_LINK => (
            "This sign-in was cancelled",
            "A link with another number was pressed, so this sign-in was cancelled. Sign in again.",
        ),
        Reason::MFA_ENABLED | Reason::USER_DISABLED | Reason::STAFF_USER => (
            "This account cannot sign in here",
            "This account cannot sign in with an email link.",
        ),
        Reason::TOKEN_NOT_FOUND | Reason::MISSING_FIELD => {
            ("This link is not valid", "Check that the whole link was opened.")
        }
        _ => return unavailable(state, error),
    };
    state.site.message(StatusCode::BAD_REQUEST, title, message, None)
}

/// The links the confirm page takes: the enchanted links of the sign-in page, and
/// IssueLoginLink's OAuth links (which end in an authorization code). A link that needs the
/// caller's PKCE verifier can only be used by the caller's own landing page.
fn confirmable(inspection: &Inspection) -> bool {
    match inspection.kind {
        LinkKind::Enchanted => true,
        LinkKind::Login => inspection.oauth && !inspection.pkce_required,
        LinkKind::Magic => false,
    }
}

fn not_for_this_page(state: &HttpState) -> Response {
    state.site.message(
        StatusCode::BAD_REQUEST,
        "This link is not for this page",
        "This page completes sign-ins started on the sign-in page.",
        None,
    )
}

/// The token of a confirm request: `t` from enchanted links, `token` from login links.
fn confirm_token(params: &Params) -> String {
    match params.text("t") {
        token if token.is_empty() => params.text("token"),
        token => token,
    }
}

/// `GET /oauth/sign-in/confirm?t=...`: only looks (mail scanners open every link).
async fn confirm_page(State(state): State<HttpState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let token = confirm_token(&params);
    match state.domain.inspect_token(&token).await {
        Ok(inspection) if !confirmable(&inspection) => not_for_this_page(&state),
        Ok(inspection) => with_forms(&state, &headers, |csrf| {
            state.site.page(
                StatusCode::OK,
                "confirm.html",
                "Confirm sign-in",
                minijinja::context! { csrf, token, masked_email => inspection.masked_email },
            )
        }),
        Err(error) => link_problem(&state, &error),
    }
}

/// `POST /oauth/sign-in/confirm`: the person pressed the button; the link is used now.
async fn confirm(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let params = Params::parse(&body).unwrap_or_default();
    if !browser::csrf_ok(&state.site.server_key, &headers, params.get("csrf")) {
        return csrf_refused(&state);
    }
    let token = confirm_token(&params);
    // Only the links this page sends are used here; another kind keeps its use for its own page.
    let inspection = match state.domain.inspect_token(&token).await {
        Ok(inspection) if !confirmable(&inspection) => return not_for_this_page(&state),
        Ok(inspection) => inspection,
        Err(error) => return link_problem(&state, &error),
    };
    match state.domain.verify_token(&token, "", 0, None).await {
        Ok(verified) => match verified.outcome {
            VerifyOutcome::Enchanted { .. } => match inspection
                .attempt
                .and_then(|ref_digest| attempt_with_ref(&state, &headers, &ref_digest))
            {
                // The same browser started the sign-in: it goes on from here.
                Some((id, attempt)) => go_on(&state, &headers, &id, &attempt, true).await,
                None => state.site.message(
                    StatusCode::OK,
                    "You are signed in",
                    "Go back to the device where you started; it continues by itself.",
                    None,
                ),
            },
            // IssueLoginLink's OAuth link: on to the client with its code and state.
            VerifyOutcome::Authorization { redirect_url, .. } => see_other(&redirect_url),
            VerifyOutcome::Session(_) => not_for_this_page(&state),
        },
        Err(error) => link_problem(&state, &error),
    }
}
