//! Rows ↔ domain records: the column lists each query selects, the small integers that stand for
//! enums (never renumbered: they are on disk), and the readers that turn a row into a record.

use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use crate::crypto::Digest32;
use crate::domain::error::{Error, Result};
use crate::domain::model::{
    Attempt, AttemptStatus, AuthCode, ClientInfo, Email, EmailKind, EmailLink, EmailStatus, Link, LinkKind, LinkOtp,
    OAuthRequest, Role, Session, SigningKeyRecord, User, UserStatus,
};

pub const USER: &str = "id, email, first_name, last_name, status, role, mfa_enabled, email_verified, created_at, \
     updated_at, last_login_at, sessions_revoked_at, locale";
pub const LINK: &str = "token_digest, seed, kind, user_id, redirect_url, created_at, expires_at, used_at, \
     code_challenge, reuse_key, attempt, oauth, otp_digest, otp_digits, otp_failures";
pub const SESSION: &str = "id, user_id, token_digest, created_at, expires_at, revoked_at, link_kind, claims, \
     via_otp, client_ip_address, client_user_agent, last_authenticated_at";
pub const ATTEMPT: &str =
    "ref_digest, user_id, status, right_link, created_at, expires_at, verified_at, claims, session_id";
pub const CODE: &str = "code_digest, user_id, request, created_at, expires_at, auth_time, used_at, session_id";
pub const EMAIL: &str = "id, recipient, user_id, first_name, last_name, kind, template_id, links, link_expires_at, \
     status, attempts, last_error, created_at, next_attempt_at, sent_at, locale";

/// Declares an enum's codes both ways.
macro_rules! codes {
    ($to:ident, $from:ident, $type:ty { $($variant:path = $code:literal),+ $(,)? }) => {
        pub fn $to(value: $type) -> i16 {
            match value { $($variant => $code),+ }
        }

        pub fn $from(code: i16) -> Result<$type> {
            match code {
                $($code => Ok($variant),)+
                other => Err(corrupt(format!("{} code {other}", stringify!($type)))),
            }
        }
    };
}

codes!(user_status, user_status_of, UserStatus {
    UserStatus::Pending = 0,
    UserStatus::Active = 1,
    UserStatus::Disabled = 2,
});
codes!(role, role_of, Role { Role::Client = 0, Role::Staff = 1 });
codes!(link_kind, link_kind_of, LinkKind {
    LinkKind::Login = 0,
    LinkKind::Magic = 1,
    LinkKind::Enchanted = 2,
});
codes!(attempt_status, attempt_status_of, AttemptStatus {
    AttemptStatus::Pending = 0,
    AttemptStatus::Verified = 1,
    AttemptStatus::Failed = 2,
    AttemptStatus::Collected = 3,
});
codes!(email_status, email_status_of, EmailStatus {
    EmailStatus::Queued = 0,
    EmailStatus::Sending = 1,
    EmailStatus::Sent = 2,
    EmailStatus::Failed = 3,
});
codes!(email_kind, email_kind_of, EmailKind {
    EmailKind::Login = 0,
    EmailKind::Signup = 1,
    EmailKind::Enchanted = 2,
});

fn corrupt(detail: impl std::fmt::Display) -> Error {
    Error::internal(format!("corrupt row: {detail}"))
}

fn col<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Result<T> {
    row.try_get(name).map_err(|error| corrupt(format!("{name}: {error}")))
}

fn digest(row: &Row, name: &str) -> Result<Digest32> {
    let bytes: &[u8] = col(row, name)?;
    Ok(Digest32(
        bytes
            .try_into()
            .map_err(|_| corrupt(format!("{name} is not 32 bytes")))?,
    ))
}

fn optional_digest(row: &Row, name: &str) -> Result<Option<Digest32>> {
    let bytes: Option<&[u8]> = col(row, name)?;
    bytes
        .map(|bytes| {
            bytes
                .try_into()
                .map(Digest32)
                .map_err(|_| corrupt(format!("{name} is not 32 bytes")))
        })
        .transpose()
}

fn json<T: serde::de::DeserializeOwned>(row: &Row, name: &str) -> Result<T> {
    let value: serde_json::Value = col(row, name)?;
    serde_json::from_value(value).map_err(|error| corrupt(format!("{name}: {error}")))
}

pub fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("records serialize")
}

pub fn user(row: &Row) -> Result<User> {
    Ok(User {
        id: col(row, "id")?,
        email: col(row, "email")?,
        first_name: col(row, "first_name")?,
        last_name: col(row, "last_name")?,
        status: user_status_of(col(row, "status")?)?,
        role: role_of(col(row, "role")?)?,
        mfa_enabled: col(row, "mfa_enabled")?,
        email_verified: col(row, "email_verified")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
        last_login_at: col(row, "last_login_at")?,
        sessions_revoked_at: col(row, "sessions_revoked_at")?,
        locale: col(row, "locale")?,
    })
}

pub fn link(row: &Row) -> Result<Link> {
    let seed: &[u8] = col(row, "seed")?;
    let oauth: Option<serde_json::Value> = col(row, "oauth")?;
    Ok(Link {
        token_digest: digest(row, "token_digest")?,
        seed: seed.try_into().map_err(|_| corrupt("seed is not 32 bytes"))?,
        kind: link_kind_of(col(row, "kind")?)?,
        user_id: col(row, "user_id")?,
        redirect_url: col(row, "redirect_url")?,
        created_at: col(row, "created_at")?,
        expires_at: col(row, "expires_at")?,
        used_at: col(row, "used_at")?,
        code_challenge: col(row, "code_challenge")?,
        reuse_key: optional_digest(row, "reuse_key")?,
        attempt: optional_digest(row, "attempt")?,
        oauth: oauth
            .map(serde_json::from_value::<OAuthRequest>)
            .transpose()
            .map_err(|error| corrupt(format!("oauth: {error}")))?,
        otp: link_otp(row)?,
    })
}

fn link_otp(row: &Row) -> Result<Option<LinkOtp>> {
    let Some(digest) = optional_digest(row, "otp_digest")? else {
        return Ok(None);
    };
    let digits: Option<i16> = col(row, "otp_digits")?;
    let failures: Option<i16> = col(row, "otp_failures")?;
    let small = |value: Option<i16>, name: &str| {
        value
            .and_then(|value| u8::try_from(value).ok())
            .ok_or_else(|| corrupt(format!("{name} is out of range")))
    };
    Ok(Some(LinkOtp {
        digest,
        digits: small(digits, "otp_digits")?,
        failures: small(failures, "otp_failures")?,
    }))
}

pub fn session(row: &Row) -> Result<Session> {
    Ok(Session {
        id: col(row, "id")?,
        user_id: col(row, "user_id")?,
        token_digest: digest(row, "token_digest")?,
        created_at: col(row, "created_at")?,
        expires_at: col(row, "expires_at")?,
        revoked_at: col(row, "revoked_at")?,
        link_kind: link_kind_of(col(row, "link_kind")?)?,
        claims: json(row, "claims")?,
        via_otp: col(row, "via_otp")?,
        client: client(row)?,
        last_authenticated_at: col(row, "last_authenticated_at")?,
    })
}

fn client(row: &Row) -> Result<Option<ClientInfo>> {
    let ip_address: Option<String> = col(row, "client_ip_address")?;
    let user_agent: Option<String> = col(row, "client_user_agent")?;
    Ok(match (ip_address, user_agent) {
        (None, None) => None,
        (ip_address, user_agent) => Some(ClientInfo {
            ip_address: ip_address.unwrap_or_default(),
            user_agent: user_agent.unwrap_or_default(),
        }),
    })
}

pub fn attempt(row: &Row) -> Result<Attempt> {
    Ok(Attempt {
        ref_digest: digest(row, "ref_digest")?,
        user_id: col(row, "user_id")?,
        status: attempt_status_of(col(row, "status")?)?,
        right_link: digest(row, "right_link")?,
        created_at: col(row, "created_at")?,
        expires_at: col(row, "expires_at")?,
        verified_at: col(row, "verified_at")?,
        claims: json(row, "claims")?,
        session_id: col(row, "session_id")?,
    })
}

pub fn code(row: &Row) -> Result<AuthCode> {
    Ok(AuthCode {
        code_digest: digest(row, "code_digest")?,
        user_id: col(row, "user_id")?,
        request: json(row, "request")?,
        created_at: col(row, "created_at")?,
        expires_at: col(row, "expires_at")?,
        auth_time: col(row, "auth_time")?,
        used_at: col(row, "used_at")?,
        session_id: col(row, "session_id")?,
    })
}

pub fn email(row: &Row) -> Result<Email> {
    let attempts: i32 = col(row, "attempts")?;
    Ok(Email {
        id: col(row, "id")?,
        recipient: col(row, "recipient")?,
        user_id: col(row, "user_id")?,
        first_name: col(row, "first_name")?,
        last_name: col(row, "last_name")?,
        kind: email_kind_of(col(row, "kind")?)?,
        template_id: col(row, "template_id")?,
        links: json::<Vec<EmailLink>>(row, "links")?,
        link_expires_at: col(row, "link_expires_at")?,
        status: email_status_of(col(row, "status")?)?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt("negative attempts"))?,
        last_error: col(row, "last_error")?,
        created_at: col(row, "created_at")?,
        next_attempt_at: col(row, "next_attempt_at")?,
        sent_at: col(row, "sent_at")?,
        locale: col(row, "locale")?,
    })
}

/// A signing key as the key-set column holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyJson {
    pub kid: String,
    #[serde(with = "crate::crypto::fixed_bytes")]
    pub salt: [u8; 32],
    pub created_at: i64,
    pub signs_from: i64,
    pub retire_at: i64,
}

pub fn keys_to_json(keys: &[SigningKeyRecord]) -> serde_json::Value {
    let keys: Vec<KeyJson> = keys
        .iter()
        .map(|key| KeyJson {
            kid: key.kid.clone(),
            salt: key.salt,
            created_at: key.created_at,
            signs_from: key.signs_from,
            retire_at: key.retire_at,
        })
        .collect();
    to_json(&keys)
}

pub fn keys_of(value: serde_json::Value) -> Result<Vec<SigningKeyRecord>> {
    let keys: Vec<KeyJson> = serde_json::from_value(value).map_err(|error| corrupt(format!("keys: {error}")))?;
    Ok(keys
        .into_iter()
        .map(|key| SigningKeyRecord {
            kid: key.kid,
            salt: key.salt,
            created_at: key.created_at,
            signs_from: key.signs_from,
            retire_at: key.retire_at,
        })
        .collect())
}
