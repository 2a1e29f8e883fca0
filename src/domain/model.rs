//! The records latchkey keeps: users, links and sessions. Times are Unix milliseconds.

use serde::{Deserialize, Serialize};

use crate::crypto::Digest32;

/// Unix time in milliseconds.
pub type Millis = i64;

pub const MINUTE: Millis = 60_000;
pub const HOUR: Millis = 60 * MINUTE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserStatus {
    Pending,
    Active,
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Client,
    Staff,
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub id: String,
    /// Trimmed, original case; `email_key` is what matching uses.
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
    /// RevokeUserSessions: every session created up to then is revoked, including one committed
    /// while the revocation ran.
    pub sessions_revoked_at: Option<Millis>,
    /// The language the user's emails are in (a canonical BCP 47 tag), unless a request names one.
    pub locale: Option<String>,
}

impl User {
    /// The case-insensitive form of the email that the email index holds.
    pub fn email_key(&self) -> String {
        email_key(&self.email)
    }
}

/// The canonical address (see `validate::email`), lower-cased. Emails stored by versions that did
/// not canonicalise are keyed by the same form (the store re-keys its index at open).
pub fn email_key(email: &str) -> String {
    // Hot path (every write that indexes a user): an ASCII address without quotes is canonical
    // once lower-cased, since IDNA leaves an ASCII domain as it is but for case.
    if email.is_ascii() && !email.contains('"') {
        return email.trim().to_ascii_lowercase();
    }
    match super::validate::email("email", email) {
        Ok(canonical) => canonical.to_lowercase(),
        Err(_) => email.trim().to_lowercase(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkKind {
    Login,
    Magic,
    Enchanted,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    /// SHA-256 of the token: the record's key.
    pub token_digest: Digest32,
    /// Random; the token is HMAC(server key, seed), so only the server key holder can show it again.
    pub seed: [u8; 32],
    pub kind: LinkKind,
    pub user_id: String,
    /// The redirect URL the token is appended to.
    pub redirect_url: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub used_at: Option<Millis>,
    /// S256 challenge for a same-device check, if the link was issued with one.
    pub code_challenge: Option<String>,
    /// Identifies "the same parameters" for reuse of login links.
    pub reuse_key: Option<Digest32>,
    /// For an enchanted link: its attempt (the digest of the attempt's pending ref).
    pub attempt: Option<Digest32>,
    /// For an OAuth login link: the authorization request it completes.
    pub oauth: Option<OAuthRequest>,
    /// The one-time code shown beside the link in its email, if it carries one. The code and the
    /// link are one credential: using either sets `used_at`.
    pub otp: Option<LinkOtp>,
}

/// A link's one-time code. The code itself is derived again from the link's seed under the server
/// key (to render the email); only its keyed digest is kept, to check what a person types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkOtp {
    /// HMAC(server key, the link's key and the code).
    pub digest: Digest32,
    /// How many digits the code has (6-10).
    pub digits: u8,
    /// Wrong codes tried so far; at `OTP_MAX_FAILURES` the link and its code are burnt.
    pub failures: u8,
}

/// The wrong code that burns an email's links and code.
pub const OTP_MAX_FAILURES: u8 = 5;

/// A validated OAuth authorization request (response_type `code`, PKCE S256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    /// Space-separated.
    pub scope: String,
    pub state: String,
    pub nonce: String,
    pub code_challenge: String,
}

/// An authorization code, keyed by its digest; single use, 60 seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthCode {
    pub code_digest: Digest32,
    pub user_id: String,
    pub request: OAuthRequest,
    pub created_at: Millis,
    pub expires_at: Millis,
    /// When the user proved the email (OIDC `auth_time`).
    pub auth_time: Millis,
    pub used_at: Option<Millis>,
    /// The session issued by the first exchange (revoked if the code is replayed).
    pub session_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub token_digest: Digest32,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
    /// How the session was started.
    pub link_kind: LinkKind,
    /// Put into every JWT of the session (enchanted-link login options, provider ids).
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Made with the email's one-time code rather than its link (`link_kind` says which email).
    pub via_otp: bool,
    /// What the caller saw of the person's device when the session was made.
    pub client: Option<ClientInfo>,
    /// When AuthenticateSession last succeeded, to the minute (it writes at most once a minute).
    pub last_authenticated_at: Option<Millis>,
}

/// The device a session was made on, as the caller of VerifyToken, VerifyOtp or PollSession saw
/// it; validated at the edge (`ClientInfo::validated`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// An IPv4 or IPv6 address in its canonical form, or empty.
    pub ip_address: String,
    /// The browser's User-Agent, or empty.
    pub user_agent: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptStatus {
    /// Waiting for a click.
    Pending,
    /// The right link was clicked; the session waits for the starting device.
    Verified,
    /// A wrong link was clicked: the whole attempt is off.
    Failed,
    /// The starting device has its session.
    Collected,
}

/// An enchanted-link sign-in, keyed by the digest of its pending ref.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub ref_digest: Digest32,
    pub user_id: String,
    pub status: AttemptStatus,
    /// The one link (of three) that verifies.
    pub right_link: Digest32,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub verified_at: Option<Millis>,
    /// Claims for the session: login options, provider and SSO app ids, custom claims.
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub session_id: Option<String>,
}

/// An Ed25519 signing key, stored as the random salt its private key is derived from under the
/// server key: the data directory alone cannot sign.
#[derive(Clone, Debug, PartialEq)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub salt: [u8; 32],
    /// Published from then on.
    pub created_at: Millis,
    /// Signs from then on; later than `created_at` for a successor, so verifiers that cache the
    /// JWKS know the key before they meet it.
    pub signs_from: Millis,
    /// Stops signing then; stays published until every token it signed has expired.
    pub retire_at: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmailStatus {
    Queued,
    Sending,
    Sent,
    Failed,
}

/// Which built-in template an email uses (a custom template id may replace it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmailKind {
    Login,
    Signup,
    Enchanted,
}

/// A link an email carries: the worker re-derives its token from the link's seed when it sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmailLink {
    pub token_digest: Digest32,
    /// The number shown beside an enchanted link.
    pub number: Option<u8>,
    /// This link carries the email's one-time code (`Link::otp`).
    #[serde(default)]
    pub otp: bool,
}

/// An email in the outbox. It holds no usable token: the body is rendered when it is sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Email {
    pub id: String,
    pub recipient: String,
    pub user_id: String,
    pub first_name: String,
    pub last_name: String,
    pub kind: EmailKind,
    pub template_id: Option<String>,
    pub links: Vec<EmailLink>,
    pub link_expires_at: Millis,
    pub status: EmailStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: Millis,
    /// When a QUEUED email is due (now, or later after a failed attempt).
    pub next_attempt_at: Millis,
    pub sent_at: Option<Millis>,
    /// The language the email is rendered in (a canonical BCP 47 tag), chosen when it was queued;
    /// empty in an email queued before languages, which goes out in the default one.
    #[serde(default)]
    pub locale: String,
}

/// A recipient's token bucket for the per-recipient rate limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateBucket {
    pub tokens: f64,
    pub updated_at: Millis,
    /// When the bucket is full again: from then on it is the same as no bucket, and the sweeper
    /// removes it.
    pub full_at: Millis,
}

/// Realistic records for unit tests.
#[cfg(test)]
pub mod fixtures {
    use super::*;

    pub fn user() -> User {
        User {
            id: "user-01a20ed6-5bc8-762d-96c5-f3500e22c870".into(),
            email: "Ada@Example.com".into(),
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            status: UserStatus::Active,
            role: Role::Staff,
            mfa_enabled: false,
            email_verified: true,
            created_at: 1_795_545_258_952,
            updated_at: 1_795_545_279_176,
            last_login_at: Some(1_795_545_279_176),
            sessions_revoked_at: None,
            locale: Some("de-CH".into()),
        }
    }

    pub fn link() -> Link {
        Link {
            token_digest: Digest32::of("token"),
            seed: [7; 32],
            kind: LinkKind::Login,
            user_id: user().id,
            redirect_url: "https://app.example.com/auth/callback?x=1".into(),
            created_at: 1_795_545_262_253,
            expires_at: 1_795_552_462_253,
            used_at: None,
            code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
            reuse_key: Some(Digest32::of("reuse")),
            attempt: None,
            otp: Some(LinkOtp {
                digest: Digest32::of("otp"),
                digits: 6,
                failures: 2,
            }),
            oauth: Some(OAuthRequest {
                client_id: "zapier".into(),
                redirect_uri: "https://zapier.com/cb".into(),
                scope: "openid email".into(),
                state: "s".into(),
                nonce: "n".into(),
                code_challenge: "c".into(),
            }),
        }
    }
}
