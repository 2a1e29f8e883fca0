//! The storage interface the domain needs. `crate::store` implements it on sled; PostgreSQL
//! implements the same trait for many replicas.
//!
//! Contract for every implementation:
//! - a method that changes state returns only once its writes are durable (README "Durability": flushed and
//!   fdatasynced, group-committed);
//! - each method is atomic: it writes all of its records or none;
//! - decision closures (`RedeemFn`, `UpdateUserFn`) are pure: an implementation may run them more
//!   than once (a transaction retried on conflict), so they must not have side effects;
//! - expired links and sessions stay readable for the retention period (to answer
//!   `TOKEN_EXPIRED`), then `purge_expired` removes them and every index entry pointing at them.
//!
//! Later flows add their records the same way: enchanted-link attempts keyed by the digest of the
//! pending ref, the mail outbox keyed by email id, authorization codes keyed by digest, rate-limit
//! buckets keyed by recipient — each with an expiry-index entry and an atomic redeem step.

use async_trait::async_trait;

use super::error::Error;
use super::error::Result;
use super::model::{Attempt, AuthCode, Email, Link, Millis, Session, SigningKeyRecord, User, UserStatus};
use super::rate_limit::RateLimit;
use crate::crypto::Digest32;

/// What a verification decided: the new states of the link, user and attempt, and a session to
/// create. A `refusal` is written like any outcome (a wrong enchanted link fails its attempt),
/// then returned to the caller as the error.
#[derive(Debug)]
pub struct Redemption {
    pub link: Link,
    pub user: User,
    pub attempt: Option<Attempt>,
    /// For an OAuth login link: the authorization code to store.
    pub code: Option<AuthCode>,
    pub refusal: Option<Error>,
    /// The verification turned a PENDING user ACTIVE.
    pub user_activated: bool,
    pub session: Option<Session>,
}

/// Given the current link, its user and (for an enchanted link) its attempt, decides the
/// redemption or rejects it (then nothing is written).
pub type RedeemFn<'a> = &'a (dyn Fn(&Link, &User, Option<&Attempt>) -> Result<Redemption> + Send + Sync);

/// What an authorization-code exchange decided: the code's new state, a session to create, a
/// session to revoke (a replayed code revokes what its first use issued), or a refusal that is
/// written like any outcome and then returned as the error.
#[derive(Debug)]
pub struct CodeRedemption {
    pub code: AuthCode,
    /// The code's user as the atomic step read it.
    pub user: User,
    pub session: Option<Session>,
    /// (session id, when): the session a replayed code's first use issued.
    pub revoke_session: Option<(String, Millis)>,
    pub refusal: Option<Error>,
}

/// Given the current code and its user, decides the exchange or rejects it (then nothing is written).
pub type RedeemCodeFn<'a> = &'a (dyn Fn(&AuthCode, &User) -> Result<CodeRedemption> + Send + Sync);

/// What PollSession's collection found.
#[derive(Debug)]
pub enum Collection {
    /// The attempt was VERIFIED: it is COLLECTED now and the session stored.
    Collected(Attempt),
    /// Nothing to collect; the attempt as it is.
    Unchanged(Attempt),
}

/// Given the current user, returns the updated user or rejects the update.
pub type UpdateUserFn<'a> = &'a (dyn Fn(&User) -> Result<User> + Send + Sync);

pub enum LinkInsert {
    Inserted,
    /// A live link with the same reuse key already existed; it is returned instead.
    Existing(Box<Link>),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct UserDeletion {
    pub revoked_sessions: u32,
    pub voided_links: u32,
}

/// What the store can say about itself (metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub bytes_on_disk: u64,
    /// Emails waiting in the outbox (QUEUED, due or backing off).
    pub outbox_queued: u64,
    /// Emails being sent now.
    pub outbox_sending: u64,
    /// Group flushes made durable since start, and the writes they carried.
    pub flushes: u64,
    pub writes: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn user(&self, user_id: &str) -> Result<Option<User>>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;
    /// Users after `after` (exclusive) in user-id order, optionally only those with `status`.
    async fn list_users(&self, after: Option<&str>, limit: usize, status: Option<UserStatus>) -> Result<Vec<User>>;
    /// Read-modify-write of one user; `USER_NOT_FOUND` when it does not exist.
    async fn update_user(&self, user_id: &str, update: UpdateUserFn<'_>) -> Result<User>;
    /// Deletes the user and its email index entry, revokes its sessions and deletes its links.
    async fn delete_user(&self, user_id: &str, now: Millis) -> Result<Option<UserDeletion>>;

    /// Stores a link, creating `new_user` in the same step (`USER_EXISTS` if its email is taken).
    /// With a reuse key, a live link under the same key is returned instead of storing a new one.
    async fn insert_link(&self, link: &Link, new_user: Option<&User>, now: Millis) -> Result<LinkInsert>;
    async fn link(&self, token_digest: &Digest32) -> Result<Option<Link>>;
    /// Atomically re-reads the link and its user, lets `decide` rule, and writes the outcome.
    /// `TOKEN_NOT_FOUND` when the link (or its user) does not exist.
    async fn redeem_link(&self, token_digest: &Digest32, decide: RedeemFn<'_>) -> Result<Redemption>;

    async fn session(&self, session_id: &str) -> Result<Option<Session>>;
    async fn session_by_token(&self, token_digest: &Digest32) -> Result<Option<Session>>;
    /// Marks a session revoked (idempotent); `None` when it does not exist.
    async fn revoke_session(&self, session_id: &str, now: Millis) -> Result<Option<Session>>;
    /// Revokes every live session of a user; returns how many.
    async fn revoke_user_sessions(&self, user_id: &str, now: Millis) -> Result<u32>;

    /// Queues an email with its links (creating `new_user`, and storing an enchanted-link
    /// `attempt`, too) in one step. With a rate limit,
    /// one send is first taken from the recipient's bucket, named by `rate_key`; an empty bucket
    /// fails `RATE_LIMITED` and nothing is written.
    async fn insert_email(
        &self,
        links: &[Link],
        attempt: Option<&Attempt>,
        new_user: Option<&User>,
        email: &Email,
        rate: Option<(&str, &RateLimit)>,
        now: Millis,
    ) -> Result<()>;
    async fn email(&self, email_id: &str) -> Result<Option<Email>>;
    /// QUEUED emails due at `now`, soonest first.
    async fn due_emails(&self, now: Millis, limit: usize) -> Result<Vec<Email>>;
    /// When the next QUEUED email falls due.
    async fn next_email_due(&self) -> Result<Option<Millis>>;
    /// QUEUED → SENDING; `None` if it is no longer queued (another worker took it, or it ended).
    async fn claim_email(&self, email_id: &str, now: Millis) -> Result<Option<Email>>;
    /// Stores the outcome of an attempt: SENT, FAILED, or QUEUED again for a retry.
    async fn finish_email(&self, email: &Email) -> Result<()>;
    /// Queues again the emails a crash caught SENDING (delivery is at-least-once).
    async fn requeue_interrupted_emails(&self, now: Millis) -> Result<usize>;

    /// Atomically re-reads the code, lets `decide` rule, and writes the outcome; `CODE_NOT_FOUND`
    /// when there is no such code.
    async fn redeem_code(&self, code_digest: &Digest32, decide: RedeemCodeFn<'_>) -> Result<CodeRedemption>;

    async fn attempt(&self, ref_digest: &Digest32) -> Result<Option<Attempt>>;
    /// VERIFIED → COLLECTED with `session` stored, atomically: one caller gets the session.
    async fn collect_attempt(&self, ref_digest: &Digest32, session: &Session) -> Result<Option<Collection>>;

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Replaces the key set if it still equals `expected` (compare-and-swap); false otherwise.
    async fn replace_signing_keys(&self, expected: &[SigningKeyRecord], new: &[SigningKeyRecord]) -> Result<bool>;

    /// Removes records whose retention ended before `now`, at most `limit`; returns how many.
    async fn purge_expired(&self, now: Millis, limit: usize) -> Result<usize>;
    /// Figures for metrics, cheap enough to read at every scrape.
    fn stats(&self) -> StoreStats;
    /// Whether the store refuses writes now (its disk failed), so health reports NOT_SERVING.
    /// Cheap enough to read every second.
    fn refuses_writes(&self) -> bool;
    /// Makes everything durable and stops background work; later calls fail `STORE_UNAVAILABLE`.
    async fn close(&self) -> Result<()>;
}
