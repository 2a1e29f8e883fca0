//! OAuth 2.0 on top of login links (the Zapier flow): a login link can carry an authorization
//! request; verifying it yields a 60-second, single-use authorization code; ExchangeCode trades
//! the code and its PKCE verifier for an EdDSA access token, a session and, with `openid`, an
//! OpenID Connect ID token (RFC 6749 §4.1, RFC 7636).

use serde_json::{Map, Value};

use super::error::{Error, Reason, Result};
use super::model::{AuthCode, MINUTE, Millis, OAuthRequest, User, UserStatus};
use super::store::CodeRedemption;
use super::{Domain, validate};
use crate::crypto::{Digest32, new_secret, pkce};
use crate::jwt::TokenType;

/// Authorization codes live 60 seconds (docs/api.md, "OAuth").
pub const CODE_LIFETIME: Millis = 60_000;
const MAX_STATE_LENGTH: usize = 512;

#[derive(Clone, Debug)]
pub struct OAuthClient {
    pub id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    /// SHA-256 of the secret of a confidential client; `None` for a public one.
    pub secret_sha256: Option<[u8; 32]>,
    pub post_logout_redirect_uris: Vec<String>,
}

impl OAuthClient {
    /// A public client has no secret, so it must prove itself with PKCE.
    pub fn is_public(&self) -> bool {
        self.secret_sha256.is_none()
    }

    /// Whether `secret` is this confidential client's, compared in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        self.secret_sha256.is_some_and(|digest| {
            let presented = Digest32::of_bytes(secret.as_bytes());
            crate::crypto::constant_time_eq(presented.as_bytes(), &digest)
        })
    }
}

/// Whether an authorization request must carry a PKCE challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pkce {
    /// Always (IssueLoginLink's `oauth`).
    Required,
    /// For public clients only (the HTTP authorization endpoint).
    PublicClients,
}

/// An authorization request as the caller sent it.
#[derive(Clone, Debug, Default)]
pub struct OAuthParams {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: String,
    pub nonce: String,
    pub code_challenge: String,
    pub code_challenge_method: String,
    pub response_type: String,
}

#[derive(Debug, Default)]
pub struct Exchange {
    pub grant_type: String,
    pub code: String,
    pub code_verifier: String,
    pub client_id: String,
    pub redirect_uri: String,
}

#[derive(Debug)]
pub struct Exchanged {
    pub access_token: String,
    pub expires_in: i64,
    pub scope: String,
    pub id_token: Option<String>,
    pub session_id: String,
}

fn printable(field: &'static str, value: &str) -> Result<String> {
    if value.len() > MAX_STATE_LENGTH || value.chars().any(char::is_control) {
        return Err(Error::field(
            Reason::INVALID_VALUE,
            field,
            format!("{field} has at most 512 printable characters"),
        ));
    }
    Ok(value.to_string())
}

/// The client's redirect URI with `code` and `state` added.
pub fn callback_url(request: &OAuthRequest, code: &str) -> String {
    let mut url = url::Url::parse(&request.redirect_uri).expect("registered redirect URIs were validated");
    url.query_pairs_mut().append_pair("code", code);
    if !request.state.is_empty() {
        url.query_pairs_mut().append_pair("state", &request.state);
    }
    url.into()
}

impl Domain {
    pub fn oauth_client(&self, client_id: &str) -> Option<&OAuthClient> {
        self.settings.oauth_clients.iter().find(|client| client.id == client_id)
    }

    /// Checks an authorization request against the client's registration.
    pub fn validate_oauth(&self, params: &OAuthParams, pkce: Pkce) -> Result<OAuthRequest> {
        let client_id = params.client_id.trim();
        if client_id.is_empty() {
            return Err(Error::missing("oauth.client_id"));
        }
        let client = self.oauth_client(client_id).ok_or_else(|| {
            Error::field(
                Reason::CLIENT_NOT_ALLOWED,
                "oauth.client_id",
                format!("{client_id:?} is not a configured OAuth client"),
            )
        })?;
        if !matches!(params.response_type.as_str(), "" | "code") {
            return Err(Error::field(
                Reason::INVALID_VALUE,
                "oauth.response_type",
                "only response_type \"code\" is supported",
            ));
        }
        if params.redirect_uri.is_empty() {
            return Err(Error::missing("oauth.redirect_uri"));
        }
        if !client.redirect_uris.contains(&params.redirect_uri) {
            return Err(Error::field(
                Reason::REDIRECT_NOT_ALLOWED,
                "oauth.redirect_uri",
                "redirect_uri must equal one of the client's registered redirect URIs exactly",
            ));
        }
        let mut scopes: Vec<&str> = Vec::new();
        for scope in params.scope.split_whitespace() {
            if !client.scopes.iter().any(|allowed| allowed == scope) {
                return Err(Error::field(
                    Reason::INVALID_SCOPE,
                    "oauth.scope",
                    format!("{scope:?} is not one of the client's scopes"),
                ));
            }
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        let scope = if scopes.is_empty() {
            client.scopes.join(" ")
        } else {
            scopes.join(" ")
        };
        match params.code_challenge_method.as_str() {
            "" | "S256" => {}
            "plain" => {
                return Err(Error::field(
                    Reason::INVALID_CODE_CHALLENGE,
                    "oauth.code_challenge_method",
                    "the plain method is refused; use S256",
                ));
            }
            _ => {
                return Err(Error::field(
                    Reason::INVALID_CODE_CHALLENGE,
                    "oauth.code_challenge_method",
                    "only S256 is supported",
                ));
            }
        }
        if params.code_challenge.is_empty() && (pkce == Pkce::Required || client.is_public()) {
            return Err(Error::missing("oauth.code_challenge"));
        }
        let code_challenge =
            validate::code_challenge("oauth.code_challenge", &params.code_challenge)?.unwrap_or_default();
        Ok(OAuthRequest {
            client_id: client.id.clone(),
            redirect_uri: params.redirect_uri.clone(),
            scope,
            state: printable("oauth.state", &params.state)?,
            nonce: printable("oauth.nonce", &params.nonce)?,
            code_challenge,
        })
    }

    /// A code for a person a browser session already signed in (`auth_time`: when that session
    /// began); returns the code and the client's callback URL with it.
    pub async fn issue_code(&self, user: &User, request: &OAuthRequest, auth_time: Millis) -> Result<(String, String)> {
        let now = self.clock.now();
        let code = new_secret(now);
        let record = AuthCode {
            auth_time,
            ..self.new_code(&code, user, request, now)
        };
        self.store.insert_code(&record).await?;
        let callback = callback_url(request, &code);
        Ok((code, callback))
    }

    /// The code a verified OAuth login link yields.
    pub(crate) fn new_code(&self, code: &str, user: &User, request: &OAuthRequest, now: Millis) -> AuthCode {
        AuthCode {
            code_digest: Digest32::of_secret(code),
            user_id: user.id.clone(),
            request: request.clone(),
            created_at: now,
            expires_at: now + CODE_LIFETIME,
            auth_time: now,
            used_at: None,
            session_id: None,
        }
    }

    pub async fn exchange_code(&self, request: Exchange) -> Result<Exchanged> {
        if request.grant_type != "authorization_code" {
            return Err(Error::field(
                Reason::UNSUPPORTED_GRANT_TYPE,
                "grant_type",
                "only grant_type \"authorization_code\" is supported",
            ));
        }
        let code = validate::secret("code", &request.code, Reason::CODE_NOT_FOUND)?;
        let verifier = validate::code_verifier("code_verifier", &request.code_verifier)?;
        // Only a confidential client's code may lack PKCE (its secret was checked at the edge).
        let confidential = self.oauth_client(&request.client_id).is_some_and(|c| !c.is_public());
        if verifier.is_none() && !confidential {
            return Err(Error::missing("code_verifier"));
        }
        if request.client_id.is_empty() {
            return Err(Error::missing("client_id"));
        }
        if request.redirect_uri.is_empty() {
            return Err(Error::missing("redirect_uri"));
        }
        let now = self.clock.now();
        let (session, session_token) = self.new_session_record(now, self.settings.session_default_minutes);
        let decide = |code: &AuthCode, user: &User| -> Result<CodeRedemption> {
            if code.used_at.is_some() {
                // RFC 6749 §4.1.2: a replayed code revokes what its first use issued.
                let refusal = Error::new(
                    Reason::CODE_ALREADY_USED,
                    "this authorization code was already used; its session is revoked",
                );
                let revoke_session = code.session_id.clone().map(|id| (id, now));
                return Ok(CodeRedemption {
                    code: code.clone(),
                    user: user.clone(),
                    session: None,
                    revoke_session,
                    refusal: Some(refusal),
                });
            }
            if code.expires_at <= now {
                return Err(Error::new(Reason::CODE_EXPIRED, "this authorization code has expired"));
            }
            if request.client_id != code.request.client_id {
                return Err(Error::new(
                    Reason::CLIENT_MISMATCH,
                    "client_id differs from the authorization's",
                ));
            }
            if request.redirect_uri != code.request.redirect_uri {
                return Err(Error::new(
                    Reason::REDIRECT_URI_MISMATCH,
                    "redirect_uri differs from the authorization's",
                ));
            }
            match (code.request.code_challenge.as_str(), verifier) {
                ("", None) => {}
                // A verifier for a code issued without a challenge: a downgrade, refused.
                ("", Some(_)) => {
                    return Err(Error::new(
                        Reason::PKCE_MISMATCH,
                        "this code was issued without a code_challenge; send no code_verifier",
                    ));
                }
                (_, None) => {
                    return Err(Error::new(
                        Reason::PKCE_REQUIRED,
                        "this code was issued with a code_challenge: send its code_verifier",
                    ));
                }
                (challenge, Some(verifier)) if !pkce::matches(challenge, verifier) => {
                    return Err(Error::new(
                        Reason::PKCE_MISMATCH,
                        "the code_verifier does not match the code_challenge",
                    ));
                }
                _ => {}
            }
            // Disabled between the click and the exchange: no session.
            if user.status == UserStatus::Disabled {
                return Err(Error::new(Reason::USER_DISABLED, "this user is disabled"));
            }
            let mut code = code.clone();
            code.used_at = Some(now);
            code.session_id = Some(session.id.clone());
            let session = super::model::Session {
                user_id: code.user_id.clone(),
                ..session.clone()
            };
            Ok(CodeRedemption {
                code,
                user: user.clone(),
                session: Some(session),
                revoke_session: None,
                refusal: None,
            })
        };
        let redemption = self.store.redeem_code(&Digest32::of_secret(code), &decide).await?;
        if let Some(refusal) = redemption.refusal {
            return Err(refusal);
        }
        drop(session_token);
        let code = redemption.code;
        let session = redemption.session.expect("a successful exchange creates a session");
        let user = redemption.user;
        let lifetime = Millis::from(self.settings.access_token_minutes) * MINUTE;
        let expires_at = now + lifetime;
        // RFC 9068: the audience is the resource the token is for, not the client.
        let mut access = self.token_claims(&user, &self.settings.access_token_audience, now, expires_at);
        access.insert("sid".into(), Value::from(session.id.clone()));
        access.insert("scope".into(), Value::from(code.request.scope.clone()));
        access.insert("client_id".into(), Value::from(code.request.client_id.clone()));
        access.insert("jti".into(), Value::from(uuid::Uuid::now_v7().to_string()));
        let id_token = code.request.scope.split(' ').any(|s| s == "openid").then(|| {
            let mut id = self.token_claims(&user, &code.request.client_id, now, expires_at);
            id.insert("auth_time".into(), Value::from(code.auth_time / 1000));
            id.insert("email_verified".into(), Value::from(user.email_verified));
            id.insert("sid".into(), Value::from(session.id.clone()));
            id.insert("azp".into(), Value::from(code.request.client_id.clone()));
            if !code.request.nonce.is_empty() {
                id.insert("nonce".into(), Value::from(code.request.nonce.clone()));
            }
            self.keys.sign(TokenType::IdToken, &id, now)
        });
        Ok(Exchanged {
            access_token: self.keys.sign(TokenType::AccessToken, &access, now),
            expires_in: lifetime / 1000,
            scope: code.request.scope,
            id_token,
            session_id: session.id,
        })
    }

    fn token_claims(&self, user: &User, audience: &str, now: Millis, expires_at: Millis) -> Map<String, Value> {
        let mut claims = Map::new();
        claims.insert("iss".into(), Value::from(self.settings.issuer.clone()));
        claims.insert("sub".into(), Value::from(user.id.clone()));
        claims.insert("aud".into(), Value::from(audience.to_string()));
        claims.insert("iat".into(), Value::from(now / 1000));
        claims.insert("exp".into(), Value::from(expires_at / 1000));
        claims.insert("email".into(), Value::from(user.email.clone()));
        claims
    }
}
