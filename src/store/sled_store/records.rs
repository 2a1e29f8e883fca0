//! The records sled keeps, where they differ from the domain's types: the user record carries
//! this backend's private index of the user's links (`LinkNote`), and every field added after a
//! record type was first written is `#[serde(default)]` so that older records still read (see
//! `codec` for the field-order rules). Each converts to and from its domain type; the field order
//! here is the on-disk order and never changes.

use serde::{Deserialize, Serialize};

use crate::crypto::Digest32;
use crate::domain::model::{
    ClientInfo, Link, LinkKind, LinkOtp, Millis, OAuthRequest, RateBucket, Role, Session, SigningKeyRecord, User,
    UserStatus,
};
use crate::domain::store::Claimant;

/// A user as sled stores it: the user, then the notes of its links.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub status: UserStatus,
    pub role: Role,
    pub mfa_enabled: bool,
    pub email_verified: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub last_login_at: Option<Millis>,
    #[serde(default)]
    pub sessions_revoked_at: Option<Millis>,
    /// The user's links that are not yet due for purging. Kept on the user record so that a link
    /// for a new user costs no index entry of its own: reuse and DeleteUser find the links here.
    #[serde(default)]
    pub links: Vec<LinkNote>,
    #[serde(default)]
    pub locale: Option<String>,
}

/// One of a user's links, as the user record lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkNote {
    pub token_digest: Digest32,
    /// The link's reuse key, if it was issued with one.
    pub reuse_key: Option<Digest32>,
    pub expires_at: Millis,
}

impl LinkNote {
    pub fn of(link: &Link) -> Self {
        Self {
            token_digest: link.token_digest,
            reuse_key: link.reuse_key,
            expires_at: link.expires_at,
        }
    }
}

impl UserRecord {
    /// `user` with the notes `links`.
    pub fn new(user: &User, links: Vec<LinkNote>) -> Self {
        let User {
            id,
            email,
            first_name,
            last_name,
            status,
            role,
            mfa_enabled,
            email_verified,
            created_at,
            updated_at,
            last_login_at,
            sessions_revoked_at,
            locale,
        } = user.clone();
        Self {
            id,
            email,
            first_name,
            last_name,
            status,
            role,
            mfa_enabled,
            email_verified,
            created_at,
            updated_at,
            last_login_at,
            sessions_revoked_at,
            links,
            locale,
        }
    }

    /// The user, without the notes.
    pub fn user(&self) -> User {
        User {
            id: self.id.clone(),
            email: self.email.clone(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            status: self.status,
            role: self.role,
            mfa_enabled: self.mfa_enabled,
            email_verified: self.email_verified,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_login_at: self.last_login_at,
            sessions_revoked_at: self.sessions_revoked_at,
            locale: self.locale.clone(),
        }
    }

    /// The lower-case email the email index holds.
    pub fn email_key(&self) -> String {
        crate::domain::model::email_key(&self.email)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub token_digest: Digest32,
    #[serde(with = "crate::crypto::fixed_bytes")]
    pub seed: [u8; 32],
    pub kind: LinkKind,
    pub user_id: String,
    pub redirect_url: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub used_at: Option<Millis>,
    pub code_challenge: Option<String>,
    pub reuse_key: Option<Digest32>,
    #[serde(default)]
    pub attempt: Option<Digest32>,
    #[serde(default)]
    pub oauth: Option<OAuthRequest>,
    #[serde(default)]
    pub otp: Option<LinkOtp>,
}

impl From<&Link> for LinkRecord {
    fn from(link: &Link) -> Self {
        let Link {
            token_digest,
            seed,
            kind,
            user_id,
            redirect_url,
            created_at,
            expires_at,
            used_at,
            code_challenge,
            reuse_key,
            attempt,
            oauth,
            otp,
        } = link.clone();
        Self {
            token_digest,
            seed,
            kind,
            user_id,
            redirect_url,
            created_at,
            expires_at,
            used_at,
            code_challenge,
            reuse_key,
            attempt,
            oauth,
            otp,
        }
    }
}

impl From<LinkRecord> for Link {
    fn from(record: LinkRecord) -> Self {
        let LinkRecord {
            token_digest,
            seed,
            kind,
            user_id,
            redirect_url,
            created_at,
            expires_at,
            used_at,
            code_challenge,
            reuse_key,
            attempt,
            oauth,
            otp,
        } = record;
        Self {
            token_digest,
            seed,
            kind,
            user_id,
            redirect_url,
            created_at,
            expires_at,
            used_at,
            code_challenge,
            reuse_key,
            attempt,
            oauth,
            otp,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub token_digest: Digest32,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
    pub link_kind: LinkKind,
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub via_otp: bool,
    #[serde(default)]
    pub client: Option<ClientInfo>,
    #[serde(default)]
    pub last_authenticated_at: Option<Millis>,
}

impl From<&Session> for SessionRecord {
    fn from(session: &Session) -> Self {
        let Session {
            id,
            user_id,
            token_digest,
            created_at,
            expires_at,
            revoked_at,
            link_kind,
            claims,
            via_otp,
            client,
            last_authenticated_at,
        } = session.clone();
        Self {
            id,
            user_id,
            token_digest,
            created_at,
            expires_at,
            revoked_at,
            link_kind,
            claims,
            via_otp,
            client,
            last_authenticated_at,
        }
    }
}

impl From<SessionRecord> for Session {
    fn from(record: SessionRecord) -> Self {
        let SessionRecord {
            id,
            user_id,
            token_digest,
            created_at,
            expires_at,
            revoked_at,
            link_kind,
            claims,
            via_otp,
            client,
            last_authenticated_at,
        } = record;
        Self {
            id,
            user_id,
            token_digest,
            created_at,
            expires_at,
            revoked_at,
            link_kind,
            claims,
            via_otp,
            client,
            last_authenticated_at,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateBucketRecord {
    pub tokens: f64,
    pub updated_at: Millis,
    /// 0 in buckets from before this field (see `expire_old_rate_buckets`).
    #[serde(default)]
    pub full_at: Millis,
}

impl From<RateBucket> for RateBucketRecord {
    fn from(bucket: RateBucket) -> Self {
        let RateBucket {
            tokens,
            updated_at,
            full_at,
        } = bucket;
        Self {
            tokens,
            updated_at,
            full_at,
        }
    }
}

impl From<RateBucketRecord> for RateBucket {
    fn from(record: RateBucketRecord) -> Self {
        let RateBucketRecord {
            tokens,
            updated_at,
            full_at,
        } = record;
        Self {
            tokens,
            updated_at,
            full_at,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub kid: String,
    #[serde(with = "crate::crypto::fixed_bytes")]
    pub salt: [u8; 32],
    pub created_at: Millis,
    pub signs_from: Millis,
    pub retire_at: Millis,
}

impl From<&SigningKeyRecord> for KeyRecord {
    fn from(key: &SigningKeyRecord) -> Self {
        let SigningKeyRecord {
            kid,
            salt,
            created_at,
            signs_from,
            retire_at,
        } = key.clone();
        Self {
            kid,
            salt,
            created_at,
            signs_from,
            retire_at,
        }
    }
}

impl From<KeyRecord> for SigningKeyRecord {
    fn from(record: KeyRecord) -> Self {
        let KeyRecord {
            kid,
            salt,
            created_at,
            signs_from,
            retire_at,
        } = record;
        Self {
            kid,
            salt,
            created_at,
            signs_from,
            retire_at,
        }
    }
}

/// A call made under an idempotency key (see `Store::claim_idempotency_key`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub request: crate::crypto::Digest32,
    /// The call's answer, sealed under the server key; none while it runs.
    pub answer: Option<Vec<u8>>,
    pub lease_until: Millis,
    pub expires_at: Millis,
    /// Who holds the key (see `Claimant`); none in a record written before claimants.
    #[serde(default)]
    pub claimant: Option<Claimant>,
}
