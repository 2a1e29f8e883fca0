//! Sessions: creation at verification, session JWTs, AuthenticateSession and revocation (docs/api.md, "Session JWTs").

use serde_json::Value;

use super::error::{Error, Reason, Result};
use super::model::{ClientInfo, LinkKind, MINUTE, Millis, Session, User, UserStatus};
use super::store::{LiveAt, TOUCH_INTERVAL};
use super::users::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use super::validate;
use super::{Domain, page_token};
use crate::crypto::{Digest32, new_secret};
use crate::jwt::{RESERVED_CLAIMS, TokenType};

/// Reserved claims that latchkey itself puts in a session's claims (enchanted link options).
const SESSION_OPTION_CLAIMS: [&str; 4] = ["stepup", "mfa", "provider_id", "sso_app_id"];

/// A session as handed to a caller: the record, its bearer token (only when just created) and a
/// fresh JWT.
#[derive(Debug)]
pub struct NewSession {
    pub session: Session,
    pub token: Option<String>,
    pub jwt: String,
    pub jwt_expires_at: Millis,
}

#[derive(Clone, Debug)]
pub enum SessionCredential {
    Token(String),
    Jwt(String),
}

#[derive(Clone, Debug)]
pub enum SessionRef {
    Id(String),
    Token(String),
}

/// The longest User-Agent kept with a session, in bytes.
pub const MAX_USER_AGENT_BYTES: usize = 512;

impl ClientInfo {
    /// Trimmed; `ip_address` an IPv4 or IPv6 address (kept in canonical form) and `user_agent` at
    /// most 512 bytes of printable characters, each possibly empty (INVALID_VALUE otherwise).
    pub fn validated(self) -> Result<Self> {
        let ip_address = match self.ip_address.trim() {
            "" => String::new(),
            raw => raw
                .parse::<std::net::IpAddr>()
                .map_err(|_| {
                    Error::field(
                        Reason::INVALID_VALUE,
                        "client.ip_address",
                        "client.ip_address is an IPv4 or IPv6 address",
                    )
                })?
                .to_string(),
        };
        let user_agent = self.user_agent.trim();
        if user_agent.len() > MAX_USER_AGENT_BYTES || user_agent.chars().any(char::is_control) {
            return Err(Error::field(
                Reason::INVALID_VALUE,
                "client.user_agent",
                "client.user_agent has at most 512 bytes of printable characters",
            ));
        }
        Ok(Self {
            ip_address,
            user_agent: user_agent.to_string(),
        })
    }
}

pub struct SessionPage {
    pub sessions: Vec<Session>,
    pub next_page_token: String,
}

/// A page token remembers the user it lists and the last session id returned.
fn encode_page_token(user_id: &str, last_id: &str) -> String {
    page_token::encode(&format!("sessions of {user_id}"), last_id)
}

fn decode_page_token(token: &str, user_id: &str) -> Result<Option<String>> {
    page_token::decode(token, &format!("sessions of {user_id}"), "this user's sessions")
}

fn not_found() -> Error {
    Error::new(Reason::SESSION_NOT_FOUND, "no such session")
}

impl Domain {
    pub(crate) fn new_session_record(&self, now: Millis, minutes: u32) -> (Session, String) {
        let token = new_secret(now);
        let session = Session {
            id: super::new_id("session"),
            user_id: String::new(),
            token_digest: Digest32::of_secret(&token),
            created_at: now,
            expires_at: now + Millis::from(minutes) * MINUTE,
            revoked_at: None,
            link_kind: LinkKind::Login,
            claims: serde_json::Map::new(),
            via_otp: false,
            client: None,
            last_authenticated_at: None,
        };
        (session, token)
    }

    /// Signs a session JWT living `session_jwt_minutes`, never past the session itself.
    pub(crate) fn issue_session_jwt(
        &self,
        session: Session,
        token: impl Into<Option<String>>,
        user: &User,
        now: Millis,
    ) -> NewSession {
        let expires_at = (now + Millis::from(self.settings.session_jwt_minutes) * MINUTE).min(session.expires_at);
        // The session's own claims first; the registered ones after, so they always win.
        let mut claims = session.claims.clone();
        // Sessions stored by versions that reserved fewer names may carry one a caller set.
        claims.retain(|name, _| {
            !RESERVED_CLAIMS.contains(&name.as_str()) || SESSION_OPTION_CLAIMS.contains(&name.as_str())
        });
        claims.insert("iss".into(), Value::from(self.settings.issuer.clone()));
        claims.insert("sub".into(), Value::from(user.id.clone()));
        claims.insert("aud".into(), Value::from(self.settings.audience.clone()));
        claims.insert("iat".into(), Value::from(now / 1000));
        claims.insert("nbf".into(), Value::from(now / 1000));
        claims.insert("exp".into(), Value::from(expires_at / 1000));
        claims.insert("jti".into(), Value::from(uuid::Uuid::now_v7().to_string()));
        claims.insert("sid".into(), Value::from(session.id.clone()));
        claims.insert("email".into(), Value::from(user.email.clone()));
        let jwt = self.keys.sign(TokenType::Session, &claims, now);
        NewSession {
            session,
            token: token.into(),
            jwt,
            jwt_expires_at: (expires_at / 1000) * 1000,
        }
    }

    /// Checks a session token or JWT and answers with the user, the session and a fresh JWT. A
    /// JWT past its own `exp` still authenticates while its session lives (as Stytch does), so
    /// callers can refresh short-lived JWTs.
    pub async fn authenticate_session(&self, credential: SessionCredential) -> Result<(User, NewSession)> {
        let session = match credential {
            SessionCredential::Token(raw) => {
                let token = validate::secret("session_token", &raw, Reason::SESSION_NOT_FOUND)?;
                self.store
                    .session_by_token(&Digest32::of_secret(token))
                    .await?
                    .ok_or_else(not_found)?
            }
            SessionCredential::Jwt(raw) => {
                if raw.trim().is_empty() {
                    return Err(Error::missing("session_jwt"));
                }
                let claims = self.keys.verify(raw.trim(), TokenType::Session).map_err(|error| {
                    Error::new(
                        Reason::SESSION_NOT_FOUND,
                        format!("the session JWT is not valid: {error}"),
                    )
                })?;
                self.check_session_jwt_claims(&claims)?;
                let session_id = claims.get("sid").and_then(Value::as_str).ok_or_else(not_found)?;
                let session = self.store.session(session_id).await?.ok_or_else(not_found)?;
                if claims.get("sub").and_then(Value::as_str) != Some(session.user_id.as_str()) {
                    return Err(not_found());
                }
                session
            }
        };
        let now = self.clock.now();
        let revoked = || Error::new(Reason::SESSION_REVOKED, "this session was revoked");
        if session.revoked_at.is_some() {
            return Err(revoked());
        }
        let user = self.store.user(&session.user_id).await?.ok_or_else(not_found)?;
        if user.sessions_revoked_at.is_some_and(|at| session.created_at <= at) {
            return Err(revoked());
        }
        if session.expires_at <= now {
            return Err(Error::new(Reason::SESSION_EXPIRED, "this session has expired"));
        }
        if user.status == UserStatus::Disabled {
            return Err(Error::new(Reason::USER_DISABLED, "this user is disabled"));
        }
        if session
            .last_authenticated_at
            .is_none_or(|at| at <= now - TOUCH_INTERVAL)
        {
            // Best effort: a store that refuses writes must not stop sessions from authenticating,
            // and the time is only to the minute anyway.
            if let Err(error) = self.store.touch_session(&session.id, now).await {
                tracing::warn!(session_id = %session.id, %error, "could not record the session's authentication time");
            }
        }
        let session = self.issue_session_jwt(session, None, &user, now);
        Ok((user, session))
    }

    /// A user's live sessions, a page at a time (page tokens as ListUsers's).
    pub async fn list_user_sessions(&self, user_id: &str, page_size: u32, page_token: &str) -> Result<SessionPage> {
        let user_id = user_id.trim();
        if user_id.is_empty() {
            return Err(Error::missing("user_id"));
        }
        let after = decode_page_token(page_token, user_id)?;
        let user = self.store.user(user_id).await?;
        let user = user.ok_or_else(|| Error::new(Reason::USER_NOT_FOUND, "no user with this user_id"))?;
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        } as usize;
        let live = LiveAt {
            now: self.clock.now(),
            revoked_through: user.sessions_revoked_at,
        };
        let mut sessions = self
            .store
            .list_user_sessions(user_id, after.as_deref(), page_size + 1, live)
            .await?;
        let next_page_token = if sessions.len() > page_size {
            sessions.truncate(page_size);
            encode_page_token(user_id, &sessions[page_size - 1].id)
        } else {
            String::new()
        };
        Ok(SessionPage {
            sessions,
            next_page_token,
        })
    }

    /// ID tokens share the session JWT's header type, so they are told apart by what only
    /// OAuth tokens carry: an audience that is an OAuth client (or the access-token resource),
    /// `azp` and `client_id`.
    fn check_session_jwt_claims(&self, claims: &serde_json::Map<String, Value>) -> Result<()> {
        let audience_ok = match claims.get("aud") {
            Some(Value::String(audience)) => *audience == self.settings.audience,
            Some(Value::Array(audiences)) => {
                audiences.len() == 1 && audiences[0].as_str() == Some(self.settings.audience.as_str())
            }
            _ => false,
        };
        if !audience_ok || claims.contains_key("azp") || claims.contains_key("client_id") {
            return Err(Error::new(
                Reason::SESSION_NOT_FOUND,
                "the session JWT is not valid: the JWT is another kind of token",
            ));
        }
        Ok(())
    }

    pub async fn revoke_session(&self, target: SessionRef) -> Result<String> {
        let session_id = match target {
            SessionRef::Id(id) if id.trim().is_empty() => return Err(Error::missing("session_id")),
            SessionRef::Id(id) => id.trim().to_string(),
            SessionRef::Token(raw) => {
                let token = validate::secret("session_token", &raw, Reason::SESSION_NOT_FOUND)?;
                self.store
                    .session_by_token(&Digest32::of_secret(token))
                    .await?
                    .ok_or_else(not_found)?
                    .id
            }
        };
        let revoked = self.store.revoke_session(&session_id, self.clock.now()).await?;
        revoked.map(|session| session.id).ok_or_else(not_found)
    }

    pub async fn revoke_user_sessions(&self, user_id: &str) -> Result<u32> {
        let user_id = user_id.trim();
        if user_id.is_empty() {
            return Err(Error::missing("user_id"));
        }
        if self.store.user(user_id).await?.is_none() {
            return Err(Error::new(Reason::USER_NOT_FOUND, "no user with this user_id"));
        }
        self.store.revoke_user_sessions(user_id, self.clock.now()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_their_user() {
        let token = encode_page_token("user-1", "session-9");
        assert_eq!(
            decode_page_token(&token, "user-1").unwrap().as_deref(),
            Some("session-9")
        );
        assert_eq!(decode_page_token("", "user-1").unwrap(), None);
        for (token, user) in [
            (token.as_str(), "user-2"),
            ("garbage!", "user-1"),
            ("djF8fHg", "user-1"),
        ] {
            assert_eq!(
                decode_page_token(token, user).unwrap_err().reason(),
                Reason::INVALID_PAGE_TOKEN,
                "{token}"
            );
        }
    }

    #[test]
    fn client_metadata_is_checked_and_canonical() {
        let client = ClientInfo {
            ip_address: " 2001:DB8::0:1 ".into(),
            user_agent: " Mozilla/5.0 ".into(),
        }
        .validated()
        .unwrap();
        assert_eq!(client.ip_address, "2001:db8::1");
        assert_eq!(client.user_agent, "Mozilla/5.0");
        for bad in [
            ClientInfo {
                ip_address: "10.0.0.300".into(),
                ..Default::default()
            },
            ClientInfo {
                user_agent: "a\nb".into(),
                ..Default::default()
            },
            ClientInfo {
                user_agent: "a".repeat(513),
                ..Default::default()
            },
        ] {
            assert_eq!(bad.validated().unwrap_err().reason(), Reason::INVALID_VALUE);
        }
    }
}
