//! The UserInfo endpoint, `GET`/`POST /oauth/userinfo` (OIDC Core §5.3), with the access token as
//! a Bearer token (RFC 6750 §2.1, or §2.2 in a form body).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::HttpState;
use super::form::Params;
use super::token::no_store;

fn refuse(error: &str, description: &str) -> Response {
    let challenge = format!("Bearer realm=\"latchkey\", error=\"{error}\", error_description=\"{description}\"");
    let status = if error == "invalid_request" {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::UNAUTHORIZED
    };
    let mut response = (status, no_store()).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

pub async fn answer(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_string());
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let from_body = form_encoded
        .then(|| {
            Params::parse(&body)
                .ok()
                .and_then(|params| params.get("access_token").map(str::to_string))
        })
        .flatten();
    let token = match (from_header, from_body) {
        (Some(_), Some(_)) => return refuse("invalid_request", "send the access token once"),
        (Some(token), None) | (None, Some(token)) => token,
        (None, None) => {
            let mut response = (StatusCode::UNAUTHORIZED, no_store()).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"latchkey\""),
            );
            return response;
        }
    };
    match state.domain.userinfo(&token).await {
        Ok(claims) => (StatusCode::OK, no_store(), axum::Json(claims)).into_response(),
        Err(error) if error.reason() == crate::domain::error::Reason::SESSION_NOT_FOUND => refuse(
            "invalid_token",
            "the access token is not valid or its session has ended",
        ),
        Err(error) => {
            tracing::warn!(%error, "userinfo failed");
            (StatusCode::SERVICE_UNAVAILABLE, no_store()).into_response()
        }
    }
}
