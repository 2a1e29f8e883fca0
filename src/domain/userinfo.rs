//! The OpenID Connect UserInfo endpoint's answer (OIDC Core §5.3): the claims an access token's
//! scopes grant, about a user whose session still lives.

use serde_json::{Map, Value};

use super::Domain;
use super::error::{Error, Reason, Result};
use super::model::UserStatus;
use crate::jwt::TokenType;

fn invalid(message: &str) -> Error {
    Error::new(
        Reason::SESSION_NOT_FOUND,
        format!("the access token is not valid: {message}"),
    )
}

impl Domain {
    /// Checks an access token (signature, type, issuer, audience, expiry, and that its session
    /// was not revoked) and answers with `sub` and the claims of its scopes: `email` gives
    /// `email` and `email_verified`; `profile` gives the names and `updated_at`.
    pub async fn userinfo(&self, access_token: &str) -> Result<Map<String, Value>> {
        let claims = self
            .keys
            .verify(access_token.trim(), TokenType::AccessToken)
            .map_err(|error| invalid(&error.to_string()))?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
        if text("iss") != self.settings.issuer || text("aud") != self.settings.access_token_audience {
            return Err(invalid("it was issued for another resource"));
        }
        let now = self.clock.now();
        if claims
            .get("exp")
            .and_then(Value::as_i64)
            .is_none_or(|exp| exp * 1000 <= now)
        {
            return Err(invalid("it has expired"));
        }
        let session = self
            .store
            .session(text("sid"))
            .await?
            .ok_or_else(|| invalid("no session"))?;
        let user = self.store.user(&session.user_id).await?;
        let user = user
            .filter(|user| user.id == text("sub"))
            .ok_or_else(|| invalid("no such user"))?;
        let revoked =
            session.revoked_at.is_some() || user.sessions_revoked_at.is_some_and(|at| session.created_at <= at);
        if revoked || session.expires_at <= now || user.status == UserStatus::Disabled {
            return Err(invalid("its session has ended"));
        }
        let mut answer = Map::new();
        answer.insert("sub".into(), Value::from(user.id.clone()));
        for scope in text("scope").split(' ') {
            match scope {
                "email" => {
                    answer.insert("email".into(), Value::from(user.email.clone()));
                    answer.insert("email_verified".into(), Value::from(user.email_verified));
                }
                "profile" => {
                    let name = format!("{} {}", user.first_name, user.last_name);
                    if !name.trim().is_empty() {
                        answer.insert("name".into(), Value::from(name.trim()));
                    }
                    if !user.first_name.is_empty() {
                        answer.insert("given_name".into(), Value::from(user.first_name.clone()));
                    }
                    if !user.last_name.is_empty() {
                        answer.insert("family_name".into(), Value::from(user.last_name.clone()));
                    }
                    answer.insert("updated_at".into(), Value::from(user.updated_at / 1000));
                }
                _ => {}
            }
        }
        Ok(answer)
    }
}
