//! User administration: GetUser, ListUsers, UpdateUser, DeleteUser.

use super::error::{Error, Reason, Result};
use super::model::{Role, User, UserStatus};
use super::store::UserDeletion;
use super::{Domain, UserRef, page_token, validate};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The fields UpdateUser may change, with their new values.
#[derive(Clone, Debug, Default)]
pub struct UserPatch {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub status: Option<Option<UserStatus>>,
    pub role: Option<Option<Role>>,
    pub mfa_enabled: Option<bool>,
    /// A BCP 47 tag; empty removes the user's language.
    pub locale: Option<String>,
}

pub struct UserPage {
    pub users: Vec<User>,
    pub next_page_token: String,
}

/// A page token remembers the filter it was made for and the last user id returned.
fn encode_page_token(status: Option<UserStatus>, last_id: &str) -> String {
    page_token::encode(&format!("{status:?}"), last_id)
}

fn decode_page_token(token: &str, status: Option<UserStatus>) -> Result<Option<String>> {
    page_token::decode(token, &format!("{status:?}"), "this filter")
}

impl Domain {
    pub async fn get_user(&self, user: Option<UserRef>) -> Result<User> {
        let found = match user {
            None => return Err(Error::missing("user_id")),
            Some(UserRef::Id(id)) if id.trim().is_empty() => return Err(Error::missing("user_id")),
            Some(UserRef::Id(id)) => self.store.user(id.trim()).await?,
            Some(UserRef::Email(email)) => self.store.user_by_email(&validate::email("email", &email)?).await?,
        };
        found.ok_or_else(|| Error::new(Reason::USER_NOT_FOUND, "no such user"))
    }

    pub async fn list_users(&self, page_size: u32, page_token: &str, status: Option<UserStatus>) -> Result<UserPage> {
        let after = decode_page_token(page_token, status)?;
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        } as usize;
        let mut users = self.store.list_users(after.as_deref(), page_size + 1, status).await?;
        let next_page_token = if users.len() > page_size {
            users.truncate(page_size);
            encode_page_token(status, &users[page_size - 1].id)
        } else {
            String::new()
        };
        Ok(UserPage { users, next_page_token })
    }

    pub async fn update_user(&self, user_id: &str, patch: UserPatch) -> Result<User> {
        let user_id = user_id.trim();
        if user_id.is_empty() {
            return Err(Error::missing("user.user_id"));
        }
        let first_name = patch
            .first_name
            .as_deref()
            .map(|n| validate::name("user.first_name", n))
            .transpose()?;
        let last_name = patch
            .last_name
            .as_deref()
            .map(|n| validate::name("user.last_name", n))
            .transpose()?;
        let status = match patch.status {
            Some(None) => {
                return Err(Error::field(
                    Reason::INVALID_VALUE,
                    "user.status",
                    "status must be PENDING, ACTIVE or DISABLED",
                ));
            }
            Some(Some(status)) => Some(status),
            None => None,
        };
        let role = match patch.role {
            Some(None) => {
                return Err(Error::field(
                    Reason::INVALID_VALUE,
                    "user.role",
                    "role must be CLIENT or STAFF",
                ));
            }
            Some(Some(role)) => Some(role),
            None => None,
        };
        let locale = patch
            .locale
            .as_deref()
            .map(|raw| super::locale::tag("user.locale", raw))
            .transpose()?;
        let now = self.clock.now();
        let update = |current: &User| -> Result<User> {
            let mut user = current.clone();
            if let Some(name) = &first_name {
                user.first_name = name.clone();
            }
            if let Some(name) = &last_name {
                user.last_name = name.clone();
            }
            if let Some(status) = status {
                // PENDING means "never verified"; a verified user's sessions would outlive it.
                if status == UserStatus::Pending && current.status != UserStatus::Pending {
                    return Err(Error::field(
                        Reason::INVALID_VALUE,
                        "user.status",
                        "a user that has signed in cannot become PENDING again; set DISABLED to stop its sign-ins and sessions",
                    ));
                }
                user.status = status;
            }
            if let Some(role) = role {
                user.role = role;
            }
            if let Some(mfa) = patch.mfa_enabled {
                user.mfa_enabled = mfa;
            }
            if let Some(locale) = &locale {
                user.locale = locale.clone();
            }
            user.updated_at = now;
            Ok(user)
        };
        self.store.update_user(user_id, &update).await
    }

    pub async fn delete_user(&self, user_id: &str) -> Result<UserDeletion> {
        let user_id = user_id.trim();
        if user_id.is_empty() {
            return Err(Error::missing("user_id"));
        }
        let deleted = self.store.delete_user(user_id, self.clock.now()).await?;
        deleted.ok_or_else(|| Error::new(Reason::USER_NOT_FOUND, "no such user"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_their_filter() {
        let token = encode_page_token(Some(UserStatus::Active), "user-1");
        assert_eq!(
            decode_page_token(&token, Some(UserStatus::Active)).unwrap().as_deref(),
            Some("user-1")
        );
        assert_eq!(
            decode_page_token(&token, None).unwrap_err().reason(),
            Reason::INVALID_PAGE_TOKEN
        );
        assert_eq!(
            decode_page_token("garbage!", None).unwrap_err().reason(),
            Reason::INVALID_PAGE_TOKEN
        );
    }
}
