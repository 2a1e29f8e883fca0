//! The token endpoint, `POST /oauth/token` (RFC 6749 §3.2, §4.1.3; RFC 7636): client
//! authentication at the edge, then the same domain exchange as gRPC's `ExchangeCode`, so single
//! use and replay revocation have one implementation. Errors are RFC 6749 §5.2's.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

use super::HttpState;
use super::form::Params;
use crate::domain::error::{Error, Reason};
use crate::domain::oauth::{Exchange, OAuthClient};

/// An RFC 6749 §5.2 error: the status, the `error` code and a description for developers.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

impl OAuthError {
    pub fn new(code: &'static str, description: impl Into<String>) -> Self {
        let status = match code {
            "invalid_client" => StatusCode::UNAUTHORIZED,
            "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            code,
            description: description.into(),
        }
    }
}

/// `error_description` may hold only printable ASCII without `"` and `\` (RFC 6749 §5.2).
pub fn describe(text: &str) -> String {
    text.chars()
        .map(|c| if c == '"' { '\'' } else { c })
        .filter(|c| (' '..='~').contains(c) && *c != '\\')
        .collect()
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "error_description": describe(&self.description) });
        let mut response = (self.status, no_store(), axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"latchkey\""),
            );
        }
        response
    }
}

/// Token responses and their errors are never cached (RFC 6749 §5.1).
pub fn no_store() -> [(header::HeaderName, &'static str); 2] {
    [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")]
}

/// The domain's refusal as the RFC 6749 error a client library understands.
fn from_domain(error: Error) -> OAuthError {
    let code = match &error {
        Error::Internal(_) => "server_error",
        Error::RateLimited { .. } | Error::OutboxFull { .. } => "temporarily_unavailable",
        Error::Rejected { reason, .. } => match *reason {
            Reason::UNSUPPORTED_GRANT_TYPE => "unsupported_grant_type",
            Reason::CODE_NOT_FOUND
            | Reason::CODE_EXPIRED
            | Reason::CODE_ALREADY_USED
            | Reason::REDIRECT_URI_MISMATCH
            | Reason::CLIENT_MISMATCH
            | Reason::PKCE_REQUIRED
            | Reason::PKCE_MISMATCH
            | Reason::USER_DISABLED => "invalid_grant",
            Reason::STORE_UNAVAILABLE | Reason::SHUTTING_DOWN => "temporarily_unavailable",
            _ => "invalid_request",
        },
    };
    // Internal details are logged where they arose, never sent.
    let description = match error {
        Error::Rejected { message, .. } => message,
        Error::Internal(_) => "the server could not answer; try again".to_string(),
        other => other.to_string(),
    };
    OAuthError::new(code, description)
}

/// The client's credentials from an `Authorization: Basic` header (RFC 6749 §2.3.1: each part
/// form-urlencoded before base64).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        OAuthError::new(
            "invalid_client",
            "the Authorization header is not valid Basic credentials",
        )
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let unescape = |part: &str| {
        url::form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

/// Authenticates the client: a confidential client by its secret (Basic or in the body, not
/// both), a public client by its id alone (PKCE then proves the rest).
pub fn authenticate_client<'d>(
    state: &'d HttpState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<&'d OAuthClient, OAuthError> {
    let basic = basic_credentials(headers)?;
    let posted_secret = params.get("client_secret");
    if basic.is_some() && posted_secret.is_some() {
        return Err(OAuthError::new(
            "invalid_request",
            "use one client authentication method: Basic or client_secret in the body, not both",
        ));
    }
    let (client_id, secret) = match &basic {
        Some((id, secret)) => {
            if params.get("client_id").is_some_and(|posted| posted != id) {
                return Err(OAuthError::new(
                    "invalid_request",
                    "client_id differs from the Basic credentials' client",
                ));
            }
            (id.as_str(), (!secret.is_empty()).then_some(secret.as_str()))
        }
        None => (params.get("client_id").unwrap_or_default(), posted_secret),
    };
    let unknown = || OAuthError::new("invalid_client", "unknown client or wrong client credentials");
    let client = state.domain.oauth_client(client_id).ok_or_else(unknown)?;
    match secret {
        _ if client.is_public() && secret.is_some() => Err(OAuthError::new(
            "invalid_client",
            "this is a public client: it has no secret",
        )),
        _ if client.is_public() => Ok(client),
        Some(secret) if client.secret_matches(secret) => Ok(client),
        Some(_) => Err(unknown()),
        None => Err(OAuthError::new(
            "invalid_client",
            "this client must authenticate with its secret",
        )),
    }
}

pub async fn exchange(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    match exchange_inner(&state, &headers, &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn exchange_inner(state: &HttpState, headers: &HeaderMap, body: &[u8]) -> Result<Response, OAuthError> {
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form_encoded {
        return Err(OAuthError::new(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let params = Params::parse(body)
        .map_err(|name| OAuthError::new("invalid_request", format!("{name} is given more than once")))?;
    if params.get("grant_type").is_none() {
        return Err(OAuthError::new("invalid_request", "grant_type is missing"));
    }
    let client = authenticate_client(state, headers, &params)?;
    let exchanged = state
        .domain
        .exchange_code(Exchange {
            grant_type: params.text("grant_type"),
            code: params.text("code"),
            code_verifier: params.text("code_verifier"),
            client_id: client.id.clone(),
            redirect_uri: params.text("redirect_uri"),
        })
        .await
        .map_err(from_domain)?;
    let mut body = json!({
        "access_token": exchanged.access_token,
        "token_type": "Bearer",
        "expires_in": exchanged.expires_in,
        "scope": exchanged.scope,
    });
    if let Some(id_token) = exchanged.id_token {
        body["id_token"] = id_token.into();
    }
    Ok((StatusCode::OK, no_store(), axum::Json(body)).into_response())
}
