//! The store: the one port between the flows and storage. The domain owns this trait; each
//! backend in `crate::store` implements it and is checked by the same behaviour suite
//! (`tests/store_contract.rs`).
//!
//! What every backend promises:
//! - **Atomic.** Each method reads and writes as one step: it writes all of its records or none,
//!   and no other call sees part of it. Two calls that race for one thing (redeeming a link, a
//!   code, collecting an attempt, claiming an email, swapping the key set) have one winner.
//! - **Committed before it returns.** A method that changes state returns only once the change
//!   is committed as durably as the backend is configured to commit; after that, every call on
//!   any replica reads it.
//! - **Decisions may run more than once.** The decision closures (`RedeemFn`, `RedeemCodeFn`,
//!   `UpdateUserFn`) are pure: a backend may run them again on fresh state (a transaction retried
//!   on conflict), so they have no side effects. A refusal they return is an error, and nothing
//!   is written; a `refusal` inside a redemption is written like any outcome, then returned.
//! - **Retention.** Expired links, sessions, attempts, codes and emails stay readable for the
//!   configured retention (to answer `TOKEN_EXPIRED`); then `purge_expired` removes each with
//!   every index entry that points at it. A rate bucket is purged once it is full again, an
//!   idempotency key once its keep ends. Each record removed counts one.
//! - **The outbox is shared.** Several workers (in one process or many) claim due emails for a
//!   lease; an email whose lease ran out is due again. Delivery is at least once, and exactly once
//!   while no worker dies or overruns its lease.
//! - **Errors.** `STORE_UNAVAILABLE` when the backend cannot be reached or refuses writes (and
//!   after `close`); the reasons named on each method otherwise. Nothing else leaks backend
//!   details to callers.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

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

#[derive(Debug)]
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

/// Which sessions are live: not expired at `now` and created after `revoked_through`.
#[derive(Clone, Copy, Debug)]
pub struct LiveAt {
    pub now: Millis,
    pub revoked_through: Option<Millis>,
}

impl LiveAt {
    pub fn holds(&self, session: &Session) -> bool {
        session.revoked_at.is_none()
            && session.expires_at > self.now
            && self.revoked_through.is_none_or(|at| session.created_at > at)
    }
}

/// `touch_session` writes again only once the last write is this old.
pub const TOUCH_INTERVAL: Millis = super::model::MINUTE;

/// A new email and everything that enters the store with it, in one step.
#[derive(Clone, Copy, Debug)]
pub struct NewEmail<'a> {
    /// The links the email carries.
    pub links: &'a [Link],
    /// For an enchanted link: its attempt.
    pub attempt: Option<&'a Attempt>,
    /// A user to create (`USER_EXISTS` if its email is taken).
    pub new_user: Option<&'a User>,
    pub email: &'a Email,
    /// One send taken from the recipient's bucket first; an empty bucket fails `RATE_LIMITED`.
    pub rate: Option<RateCharge<'a>>,
    pub now: Millis,
}

/// One send charged to the bucket named `key`.
#[derive(Clone, Copy, Debug)]
pub struct RateCharge<'a> {
    pub key: &'a str,
    pub limit: &'a RateLimit,
}

/// A worker's claim on due emails.
#[derive(Clone, Copy, Debug)]
pub struct OutboxClaim {
    pub now: Millis,
    /// How long the claimed emails are the worker's; then they are due again.
    pub lease: Millis,
    pub limit: usize,
}

/// How many emails the outbox holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxDepth {
    /// QUEUED: due, or waiting for a retry.
    pub queued: u64,
    /// SENDING: claimed by a worker (leases that ran out included).
    pub sending: u64,
}

/// Who holds an idempotency key: 16 random bytes a call draws for its claim and that are stored
/// with it (a takeover stores its own). Settling checks them, so only the call that holds the key
/// settles it: not one whose lease ran out and whose key a repeat took over, and a release sent
/// after a claim whose outcome is unknown can touch that claim only.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimant(#[serde(with = "crate::crypto::fixed_bytes")] pub [u8; 16]);

impl Claimant {
    pub fn random() -> Self {
        Self(crate::crypto::random_bytes())
    }
}

impl std::fmt::Debug for Claimant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Claimant({})", hex::encode(self.0))
    }
}

/// A call made under an idempotency key, as it asks to run.
#[derive(Clone, Copy, Debug)]
pub struct IdempotencyClaim<'a> {
    /// Digest of the caller and the key: keys are scoped to the caller.
    pub key: &'a Digest32,
    /// Digest of the method and the request (the request itself is never stored).
    pub request: &'a Digest32,
    /// The claim's own id, stored with it when the key is claimed (see `Claimant`).
    pub claimant: Claimant,
    pub now: Millis,
    /// How long the claimant may run without an answer before a repeat takes the key over.
    pub lease: Millis,
    /// How long the key and its answer are kept from now.
    pub keep: Millis,
}

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum IdempotencyState {
    /// The key is this call's now: run it, then settle the key.
    Claimed,
    /// Another call under this key, with the same request, is running.
    Running,
    /// A call under this key, with the same request, was answered: the sealed answer.
    Answered(Vec<u8>),
    /// The key was used for a different request.
    Reused,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn user(&self, user_id: &str) -> Result<Option<User>>;
    /// Matches the canonical, case-insensitive form of `email` (`model::email_key`).
    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;
    /// Users after `after` (exclusive) in user-id order, optionally only those with `status`.
    async fn list_users(&self, after: Option<&str>, limit: usize, status: Option<UserStatus>) -> Result<Vec<User>>;
    /// Read-modify-write of one user; `USER_NOT_FOUND` when it does not exist.
    async fn update_user(&self, user_id: &str, update: UpdateUserFn<'_>) -> Result<User>;
    /// Deletes the user, so its email is free again; revokes its live sessions and deletes its
    /// links (counting those still usable). `None` when there is no such user.
    async fn delete_user(&self, user_id: &str, now: Millis) -> Result<Option<UserDeletion>>;

    /// Stores a link, creating `new_user` in the same step (`USER_EXISTS` if its email is taken;
    /// `USER_NOT_FOUND` if the link's existing user is gone). With a reuse key, a live (unused,
    /// unexpired) link of the same user under the same key is returned instead of storing one.
    async fn insert_link(&self, link: &Link, new_user: Option<&User>, now: Millis) -> Result<LinkInsert>;
    async fn link(&self, token_digest: &Digest32) -> Result<Option<Link>>;
    /// Atomically re-reads the link, its user and its attempt, lets `decide` rule, and writes
    /// the outcome. `TOKEN_NOT_FOUND` when the link (or its user, or its attempt) does not exist.
    async fn redeem_link(&self, token_digest: &Digest32, decide: RedeemFn<'_>) -> Result<Redemption>;

    async fn session(&self, session_id: &str) -> Result<Option<Session>>;
    async fn session_by_token(&self, token_digest: &Digest32) -> Result<Option<Session>>;
    /// Marks a session revoked (idempotent: a revoked session keeps its first time); `None` when
    /// it does not exist.
    async fn revoke_session(&self, session_id: &str, now: Millis) -> Result<Option<Session>>;
    /// A user's live sessions after session id `after` (exclusive), in id (creation) order, at
    /// most `limit`: not revoked, not expired at `now`, and created after `revoked_through` (the
    /// user's `sessions_revoked_at`).
    async fn list_user_sessions(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
        live: LiveAt,
    ) -> Result<Vec<Session>>;
    /// Records that the session authenticated at `now`, unless it did within the minute before
    /// (so a busy session is written at most once a minute). `false` when nothing was written:
    /// too soon, or no such session.
    async fn touch_session(&self, session_id: &str, now: Millis) -> Result<bool>;
    /// Revokes every live session of a user and records the time on the user, so a session
    /// committed while this ran counts as revoked too; returns how many were revoked.
    async fn revoke_user_sessions(&self, user_id: &str, now: Millis) -> Result<u32>;

    /// Queues an email with its links, attempt and new user in one step (see `NewEmail`).
    async fn insert_email(&self, new: NewEmail<'_>) -> Result<()>;
    async fn email(&self, email_id: &str) -> Result<Option<Email>>;
    /// Claims up to `limit` due emails, soonest first: QUEUED ones whose `next_attempt_at` has
    /// come and SENDING ones whose lease ran out. Each becomes SENDING with `attempts` one higher
    /// and `next_attempt_at` at the end of its lease. An email is claimed by one caller at a time.
    async fn claim_emails(&self, claim: OutboxClaim) -> Result<Vec<Email>>;
    /// Records the outcomes of claimed emails' attempts (SENT, FAILED, or QUEUED with its retry
    /// time), in one durable write: each one if its claim still holds (the email is SENDING with
    /// the same `attempts`). Answers, in order, whether each was recorded: false, writing nothing
    /// for it, if its lease ran out and another claim took it, or it was purged. Batched so that
    /// the worker pays one commit for many sends, not one each.
    async fn finish_emails(&self, emails: &[Email]) -> Result<Vec<bool>>;
    /// When the outbox next has something due: a QUEUED email's time or a lease's end.
    async fn next_email_due(&self) -> Result<Option<Millis>>;
    async fn outbox_depth(&self) -> Result<OutboxDepth>;

    /// Stores a new authorization code (one a browser session, not a link, yields).
    async fn insert_code(&self, code: &AuthCode) -> Result<()>;
    /// Atomically re-reads the code and its user, lets `decide` rule, and writes the outcome;
    /// `CODE_NOT_FOUND` when there is no such code or its user was deleted.
    async fn redeem_code(&self, code_digest: &Digest32, decide: RedeemCodeFn<'_>) -> Result<CodeRedemption>;

    async fn attempt(&self, ref_digest: &Digest32) -> Result<Option<Attempt>>;
    /// VERIFIED → COLLECTED with `session` stored, atomically: one caller gets the session.
    async fn collect_attempt(&self, ref_digest: &Digest32, session: &Session) -> Result<Option<Collection>>;

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Replaces the key set if it still equals `expected` (compare-and-swap); false otherwise.
    async fn replace_signing_keys(&self, expected: &[SigningKeyRecord], new: &[SigningKeyRecord]) -> Result<bool>;

    /// Claims an idempotency key for a call (see `IdempotencyState`). Atomic: of several claims
    /// racing for one key, one gets `Claimed`, and the key then holds its claimant. A key past its
    /// `keep`, or claimed with the same request by a claimant whose lease ran out without an
    /// answer, is claimed anew, under the new claimant.
    async fn claim_idempotency_key(&self, claim: IdempotencyClaim<'_>) -> Result<IdempotencyState>;
    /// Settles a claimed key: records the call's sealed answer, or (`None`: the call failed, and
    /// wrote nothing, or its claim's outcome is unknown) lets go of a key that holds no answer, so
    /// that a repeat runs the call at once. Only while the key holds `claimant`; otherwise (a
    /// repeat took it over, it was purged, or it was claimed by a build that stored no claimant,
    /// which waits out its lease) nothing changes.
    async fn settle_idempotency_key(&self, key: &Digest32, claimant: &Claimant, answer: Option<&[u8]>) -> Result<()>;

    /// Removes records whose retention ended before `now`, at most `limit`; returns how many.
    async fn purge_expired(&self, now: Millis, limit: usize) -> Result<usize>;
    /// Adds the backend's own series (sizes, commits, pools) to the metrics.
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry);
    /// Whether the store refuses writes now (its disk failed, its database is unreachable), so
    /// health reports NOT_SERVING. Cheap enough to read every second.
    fn refuses_writes(&self) -> bool;
    /// Whether only a restart brings the store back (sled after a storage error), so liveness
    /// fails. A database that does not answer is not this: it comes back by itself, and
    /// restarting every replica meanwhile would only add to the outage.
    fn needs_restart(&self) -> bool;
    /// Commits everything, stops background work and lets go of the backend's resources (files,
    /// connections); later calls fail `STORE_UNAVAILABLE`. Calls still running may finish first.
    async fn close(&self) -> Result<()>;
}
