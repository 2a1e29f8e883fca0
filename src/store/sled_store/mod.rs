//! The embedded store: sled trees, written by one writer at a time (see `writer`: atomic without
//! sled transactions), each change acknowledged after the group commit. One process opens a data
//! directory; its wake-ups are in-process (`LocalWakeups`). Closing it waits for sled to let go of
//! the directory and checkpoints it (see `checkpoint`).
//!
//! Trees (keys → values; records as in `records`, encoded as in `codec`):
//! - `users`: user id → UserRecord; `user_emails`: canonical lower-case email → user id
//! - `links`: token digest → Link. The user record notes the user's live links (`UserRecord::links`, at
//!   most `NOTED_LINKS`), so that a link for a new user writes no index entry of its own: each
//!   sled insert costs log space and start-up time (see bench/RESULTS.md). Reuse and DeleteUser
//!   look there, then in `user_links`: user id \0 token digest → the link's reuse key (empty
//!   without one), which holds the links of a user whose record is full, and every link of stores
//!   written before the notes.
//! - `sessions`: session id → Session; `session_tokens`: token digest → session id;
//!   `user_sessions`: user id \0 session id → ()
//! - `expiry`: purge time | kind | record key → () (see `codec::expiry_key`)
//! - `emails`: email id → Email; `outbox`: due time | email id → () for QUEUED emails (due at
//!   their next attempt) and SENDING ones (due when their lease runs out); `emails_sending`:
//!   email id → () for SENDING emails, so the depth of both is cheap to count
//! - `rate_limits`: recipient key → RateBucket (its expiry entry is at `full_at`, moved on each send)
//! - `attempts`: pending-ref digest → Attempt (enchanted links)
//! - `codes`: authorization-code digest → AuthCode
//! - `idempotency_keys`: digest of caller and key → IdempotencyRecord (its expiry entry at the
//!   end of its keep)
//! - `meta`: named singletons (the signing key set, markers of one-time migrations)

pub mod codec;
pub mod commit;
mod metrics;
pub mod records;
pub mod writer;

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
pub use commit::Durability;

use self::codec::{Expiring, child_key, child_prefix, decode, encode, expiry_key, outbox_key};
use self::commit::GroupCommit;
use self::records::{IdempotencyRecord, KeyRecord, LinkNote, LinkRecord, RateBucketRecord, SessionRecord, UserRecord};
use self::writer::{TxTree, Writer, storage};
use crate::crypto::Digest32;
use crate::domain::error::{Error, Reason, Result};
use crate::domain::model::{
    Attempt, AttemptStatus, AuthCode, Email, EmailStatus, Link, Millis, RateBucket, Session, SigningKeyRecord, User,
    UserStatus,
};
use crate::domain::store::{
    Claimant, CodeRedemption, Collection, IdempotencyClaim, IdempotencyState, LinkInsert, LiveAt, NewEmail,
    OutboxClaim, OutboxDepth, RedeemCodeFn, RedeemFn, Redemption, Store, TOUCH_INTERVAL, UpdateUserFn, UserDeletion,
};

const SIGNING_KEYS: &[u8] = b"signing_keys";

/// How many live links a user record notes; a user with more has the others in `user_links`.
/// Enough for every link a user normally has open, small enough to keep the record small.
const NOTED_LINKS: usize = 8;

#[derive(Clone, Debug)]
pub struct SledOptions {
    pub path: PathBuf,
    pub cache_capacity_bytes: u64,
    pub durability: Durability,
    /// See `GroupCommit::start`.
    pub commit_linger: std::time::Duration,
    /// How long expired records stay readable (to answer TOKEN_EXPIRED) before they are purged.
    pub retention: Millis,
}

impl SledOptions {
    pub fn new(config: &crate::config::StoreConfig, data_dir: &Path) -> Self {
        Self {
            path: data_dir.to_path_buf(),
            cache_capacity_bytes: config.sled.cache_capacity_mib * 1024 * 1024,
            durability: config.sled.durability,
            commit_linger: Duration::from_micros(config.sled.commit_linger_micros.into()),
            retention: Millis::from(config.retention_hours) * crate::domain::model::HOUR,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the data directory {0} is in use by another latchkey process: sled allows one process per data directory (run one replica here, or store.backend = \"postgres\" for many)"
    )]
    Locked(PathBuf),
    #[error("cannot open the store in {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
    #[error("cannot open the store's data file {path} for fdatasync: {source}")]
    DataFile { path: PathBuf, source: std::io::Error },
}

struct Trees {
    users: sled::Tree,
    user_emails: sled::Tree,
    links: sled::Tree,
    user_links: sled::Tree,
    sessions: sled::Tree,
    session_tokens: sled::Tree,
    user_sessions: sled::Tree,
    expiry: sled::Tree,
    emails: sled::Tree,
    outbox: sled::Tree,
    emails_sending: sled::Tree,
    rate_limits: sled::Tree,
    attempts: sled::Tree,
    codes: sled::Tree,
    idempotency_keys: sled::Tree,
    meta: sled::Tree,
}

/// The store: an open sled database until `close` takes it.
pub struct SledStore {
    path: PathBuf,
    open: RwLock<Option<Arc<Inner>>>,
}

/// The open database. Every handle of it must be gone before sled lets go of the directory.
struct Inner {
    db: sled::Db,
    trees: Trees,
    writer: Writer,
    commit: GroupCommit,
    retention: Millis,
}

impl SledStore {
    /// Opens (and recovers) the store; blocking.
    pub fn open(options: &SledOptions) -> std::result::Result<Self, OpenError> {
        let inner = Inner::open(options)?;
        Ok(Self {
            path: options.path.clone(),
            open: RwLock::new(Some(Arc::new(inner))),
        })
    }

    fn inner(&self) -> Result<Arc<Inner>> {
        self.open
            .read()
            .expect("store lock")
            .clone()
            .ok_or_else(|| Error::new(Reason::STORE_UNAVAILABLE, "the store is closed"))
    }
}

impl Inner {
    fn open(options: &SledOptions) -> std::result::Result<Self, OpenError> {
        let db = sled::Config::new()
            .path(&options.path)
            .cache_capacity(options.cache_capacity_bytes)
            .open()
            .map_err(|source| open_error(&options.path, source))?;
        // Before any tree is read: completes the operation a crash may have cut short.
        let writer = Writer::open(&db).map_err(|source| open_error(&options.path, source))?;
        let tree = |name: &str| db.open_tree(name).map_err(|source| open_error(&options.path, source));
        let trees = Trees {
            users: tree("users")?,
            user_emails: tree("user_emails")?,
            links: tree("links")?,
            user_links: tree("user_links")?,
            sessions: tree("sessions")?,
            session_tokens: tree("session_tokens")?,
            user_sessions: tree("user_sessions")?,
            expiry: tree("expiry")?,
            emails: tree("emails")?,
            outbox: tree("outbox")?,
            emails_sending: tree("emails_sending")?,
            rate_limits: tree("rate_limits")?,
            attempts: tree("attempts")?,
            codes: tree("codes")?,
            idempotency_keys: tree("idempotency_keys")?,
            meta: tree("meta")?,
        };
        migrate_reuse_index(&db, &trees).map_err(|source| open_error(&options.path, source))?;
        expire_old_rate_buckets(&trees).map_err(|source| open_error(&options.path, source))?;
        canonicalize_email_index(&trees).map_err(|source| open_error(&options.path, source))?;
        lease_interrupted_sends(&trees).map_err(|source| open_error(&options.path, source))?;
        let data_file = match options.durability {
            Durability::Fsync => {
                let path = options.path.join("db");
                Some(File::open(&path).map_err(|source| OpenError::DataFile { path, source })?)
            }
            Durability::Flush => None,
        };
        let commit =
            GroupCommit::start(db.clone(), data_file, options.commit_linger).map_err(|source| OpenError::DataFile {
                path: options.path.clone(),
                source,
            })?;
        Ok(Self {
            db,
            trees,
            writer,
            commit,
            retention: options.retention,
        })
    }

    async fn durable(&self) -> Result<()> {
        self.commit.wait().await.map_err(|error| {
            tracing::error!(%error, "store commit failed");
            Error::new(Reason::STORE_UNAVAILABLE, "the store is unavailable; try again")
        })
    }

    fn get<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        match tree.get(key).map_err(storage)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn child_keys(tree: &sled::Tree, parent: &str) -> Result<Vec<sled::IVec>> {
        tree.scan_prefix(child_prefix(parent))
            .keys()
            .collect::<std::result::Result<_, _>>()
            .map_err(storage)
    }

    async fn purge_link(&self, digest: &[u8], expiry_entry: &[u8]) -> Result<()> {
        let t = &self.trees;
        self.writer
            .write(|tx| {
                let (links, user_links, expiry) = (tx.on(&t.links), tx.on(&t.user_links), tx.on(&t.expiry));
                if let Some(bytes) = links.remove(digest)? {
                    let link: LinkRecord = decode(&bytes)?;
                    // Its note on the user record stays until a link is next filed for that user:
                    // reuse skips it (expired), and DeleteUser finds no link under it.
                    user_links.remove(child_key(&link.user_id, digest))?;
                }
                expiry.remove(expiry_entry)?;
                Ok(())
            })
            .await
    }

    /// Removes a bucket that is full again: it limits nothing any more. One used since has a
    /// later entry and stays.
    async fn purge_rate_bucket(&self, recipient: &[u8], expiry_entry: &[u8], now: Millis) -> Result<()> {
        let t = &self.trees;
        self.writer
            .write(|tx| {
                let (rate_limits, expiry) = (tx.on(&t.rate_limits), tx.on(&t.expiry));
                if read::<RateBucketRecord>(&rate_limits, recipient)?.is_some_and(|bucket| bucket.full_at <= now) {
                    rate_limits.remove(recipient)?;
                }
                expiry.remove(expiry_entry)?;
                Ok(())
            })
            .await
    }

    async fn purge_email(&self, email_id: &[u8], expiry_entry: &[u8]) -> Result<()> {
        let t = &self.trees;
        self.writer
            .write(|tx| {
                let (emails, outbox, sending, expiry) = (
                    tx.on(&t.emails),
                    tx.on(&t.outbox),
                    tx.on(&t.emails_sending),
                    tx.on(&t.expiry),
                );
                if let Some(bytes) = emails.remove(email_id)? {
                    let email: Email = decode(&bytes)?;
                    outbox.remove(outbox_key(email.next_attempt_at, &email.id))?;
                    sending.remove(email_id)?;
                }
                expiry.remove(expiry_entry)?;
                Ok(())
            })
            .await
    }

    async fn purge_session(&self, session_id: &[u8], expiry_entry: &[u8]) -> Result<()> {
        let t = &self.trees;
        self.writer
            .write(|tx| {
                let (sessions, tokens, user_sessions, expiry) = (
                    tx.on(&t.sessions),
                    tx.on(&t.session_tokens),
                    tx.on(&t.user_sessions),
                    tx.on(&t.expiry),
                );
                if let Some(bytes) = sessions.remove(session_id)? {
                    let session: SessionRecord = decode(&bytes)?;
                    tokens.remove(session.token_digest.as_bytes())?;
                    user_sessions.remove(child_key(&session.user_id, session_id))?;
                }
                expiry.remove(expiry_entry)?;
                Ok(())
            })
            .await
    }
}

/// Whether no handle (in this process or another) holds sled's lock on the data directory: sled
/// takes an exclusive `flock` on its `db` file, which this tries to take and gives back at once.
fn lock_is_free(data_dir: &Path) -> bool {
    match std::fs::File::open(data_dir.join("db")) {
        Ok(file) => file.try_lock().is_ok(),
        Err(_) => true,
    }
}

/// Opens the closed store once more and closes it again. sled 0.34 writes its recovery snapshot
/// only while it opens, so without this a start reads every log segment written since the
/// previous start (seconds at a million users); after it, the next start reads the snapshot. The
/// same idea as PostgreSQL's shutdown checkpoint. A crash during it costs nothing: the next start
/// recovers from the log as it would have anyway.
fn checkpoint(data_dir: &Path) -> sled::Result<()> {
    // Recovery builds the page table, not the cache; a small cache keeps this pass lean.
    let db = sled::Config::new().path(data_dir).cache_capacity(8 << 20).open()?;
    db.flush()?;
    Ok(())
}

fn open_error(path: &Path, source: sled::Error) -> OpenError {
    // sled reports a held lock as an I/O error ("could not acquire lock").
    let locked = matches!(&source, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("lock"));
    if locked {
        OpenError::Locked(path.to_path_buf())
    } else {
        OpenError::Sled {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `USER_EXISTS` unless `user`'s email is free. An index entry whose user record does not exist
/// counts as free: an unjournaled insert (see `insert_link`) cut short by a crash can leave one.
fn ensure_email_free(emails: &TxTree<'_>, users: &TxTree<'_>, user: &User) -> Result<()> {
    if let Some(user_id) = emails.get(user.email_key().as_bytes())?
        && users.get(&user_id)?.is_some()
    {
        return Err(Error::new(Reason::USER_EXISTS, "a user with this email exists"));
    }
    Ok(())
}

/// Files a new link under its user: a note on the user record (the caller writes the record), or an
/// entry in `user_links` when the record is full. Notes of links due for purging (expired more
/// than `retention` ago) go first; an expired link keeps its note until then, so that DeleteUser
/// still finds and deletes it.
fn index_link(user: &mut UserRecord, user_links: &TxTree<'_>, link: &Link, now: Millis, retention: Millis) {
    user.links.retain(|note| note.expires_at + retention > now);
    if user.links.len() < NOTED_LINKS {
        user.links.push(LinkNote::of(link));
        return;
    }
    let reuse_key = link.reuse_key.as_ref().map_or(&[][..], |key| &key.as_bytes()[..]);
    user_links.insert(child_key(&link.user_id, link.token_digest.as_bytes()), reuse_key);
}

/// The digests of every link filed under `user` (noted on the record or in `user_links`),
/// including ones that have expired or been purged since.
fn filed_links(user: &UserRecord, user_links: &sled::Tree) -> Result<Vec<Digest32>> {
    let mut digests: Vec<Digest32> = user.links.iter().map(|note| note.token_digest).collect();
    let prefix = child_prefix(&user.id);
    for key in user_links.scan_prefix(&prefix).keys() {
        let key = key.map_err(storage)?;
        if let Ok(digest) = <[u8; 32]>::try_from(&key[prefix.len()..]) {
            digests.push(Digest32(digest));
        }
    }
    Ok(digests)
}

/// The user's live link issued with `reuse_key`, if any. Reads committed state of `user_links`:
/// the caller holds the writer and has staged nothing there yet.
fn live_link_with_reuse_key(
    user: &UserRecord,
    user_links: &sled::Tree,
    links: &TxTree<'_>,
    reuse_key: &Digest32,
    now: Millis,
) -> Result<Option<Link>> {
    let live = |link: Option<Link>| link.filter(|link| link.used_at.is_none() && link.expires_at > now);
    for note in &user.links {
        if note.reuse_key.as_ref() == Some(reuse_key)
            && note.expires_at > now
            && let Some(link) = live(read_link(links, note.token_digest.as_bytes())?)
        {
            return Ok(Some(link));
        }
    }
    let prefix = child_prefix(&user.id);
    for entry in user_links.scan_prefix(&prefix) {
        let (key, value) = entry.map_err(storage)?;
        if value != reuse_key.as_bytes()[..] {
            continue;
        }
        if let Some(link) = live(read_link(links, &key[prefix.len()..])?) {
            return Ok(Some(link));
        }
    }
    Ok(None)
}

/// Stores written before `user_links` held reuse keys kept them in a `link_reuse` tree (reuse key →
/// token digest): move each key onto its link's `user_links` entry, then drop the tree. Each step
/// can be repeated, so a crash part-way is finished at the next open.
fn migrate_reuse_index(db: &sled::Db, trees: &Trees) -> sled::Result<()> {
    const OLD_TREE: &[u8] = b"link_reuse";
    if !db.tree_names().iter().any(|name| name == OLD_TREE) {
        return Ok(());
    }
    let old = db.open_tree(OLD_TREE)?;
    for entry in old.iter() {
        let (reuse_key, digest) = entry?;
        let link = trees
            .links
            .get(&digest)?
            .and_then(|bytes| decode::<LinkRecord>(&bytes).ok());
        if let Some(link) = link {
            let key = child_key(&link.user_id, &digest);
            if trees.user_links.get(&key)?.is_some() {
                trees.user_links.insert(key, reuse_key.clone())?;
            }
        }
        old.remove(reuse_key)?;
    }
    db.flush()?;
    db.drop_tree(OLD_TREE)?;
    db.flush()?;
    Ok(())
}

/// Rate buckets from before `RateBucket::full_at` have no expiry entry: each gets one a day after
/// its last use (a bucket refills within minutes at any sensible limit), once, marked in `meta`.
/// Repeating it after a crash only rewrites the same entries.
fn expire_old_rate_buckets(trees: &Trees) -> sled::Result<()> {
    const DONE: &[u8] = b"rate_buckets_expire";
    if trees.meta.contains_key(DONE)? {
        return Ok(());
    }
    for entry in trees.rate_limits.iter() {
        let (recipient, bytes) = entry?;
        if let Ok(bucket) = decode::<RateBucketRecord>(&bytes)
            && bucket.full_at == 0
        {
            let purge_at = bucket.updated_at + 24 * crate::domain::model::HOUR;
            trees
                .expiry
                .insert(expiry_key(purge_at, Expiring::RateBucket, &recipient), &[])?;
        }
    }
    trees.meta.insert(DONE, &[])?;
    trees.meta.flush()?;
    Ok(())
}

/// Email index entries of versions that matched addresses by case alone are re-keyed to the
/// canonical form (`model::email_key`), once, marked in `meta`. Inserting the new key before
/// removing the old makes a repeat after a crash harmless. When two users hold one mailbox, the
/// one met first (in key order) keeps the address; the other stays reachable by id.
fn canonicalize_email_index(trees: &Trees) -> sled::Result<()> {
    const DONE: &[u8] = b"email_index_canonical";
    if trees.meta.contains_key(DONE)? {
        return Ok(());
    }
    for entry in trees.user_emails.iter() {
        let (key, user_id) = entry?;
        let Ok(email) = std::str::from_utf8(&key) else { continue };
        let canonical = crate::domain::model::email_key(email);
        if canonical.as_bytes() == &key[..] {
            continue;
        }
        match trees.user_emails.get(canonical.as_bytes())? {
            None => {
                trees.user_emails.insert(canonical.as_bytes(), user_id)?;
            }
            Some(holder) if holder != user_id => tracing::warn!(
                user_id = %String::from_utf8_lossy(&user_id),
                holder = %String::from_utf8_lossy(&holder),
                "two users share one mailbox; the first keeps the address, the other stays reachable by id"
            ),
            Some(_) => {}
        }
        trees.user_emails.remove(&key)?;
    }
    trees.meta.insert(DONE, &[])?;
    trees.meta.flush()?;
    Ok(())
}

/// One record as the current operation sees it.
fn read<T: serde::de::DeserializeOwned>(tree: &TxTree<'_>, key: impl AsRef<[u8]>) -> Result<Option<T>> {
    tree.get(key)?.map(|bytes| decode(&bytes)).transpose()
}

fn read_link(tree: &TxTree<'_>, key: impl AsRef<[u8]>) -> Result<Option<Link>> {
    Ok(read::<LinkRecord>(tree, key)?.map(Link::from))
}

fn encode_link(link: &Link) -> Vec<u8> {
    encode(&LinkRecord::from(link))
}

/// Emails a version before leases caught SENDING were left out of `outbox` (it requeued them at
/// start): each goes back in at its old due time, which has passed, so it is due at once. Once,
/// marked in `meta`; repeating it after a crash rewrites the same entries.
fn lease_interrupted_sends(trees: &Trees) -> sled::Result<()> {
    const DONE: &[u8] = b"outbox_leases";
    if trees.meta.contains_key(DONE)? {
        return Ok(());
    }
    for email_id in trees.emails_sending.iter().keys() {
        let email_id = email_id?;
        match trees
            .emails
            .get(&email_id)?
            .and_then(|bytes| decode::<Email>(&bytes).ok())
        {
            Some(email) if email.status == EmailStatus::Sending => {
                let id = String::from_utf8_lossy(&email_id);
                trees.outbox.insert(outbox_key(email.next_attempt_at, &id), &[])?;
            }
            _ => {
                trees.emails_sending.remove(&email_id)?;
            }
        }
    }
    trees.meta.insert(DONE, &[])?;
    trees.meta.flush()?;
    Ok(())
}

/// Marks a session revoked at `at` unless it already is; with `only_live`, also leaves a session
/// that has expired by `at`. Returns the session as it now stands and whether this revoked it.
fn revoke_session_in(
    sessions: &TxTree<'_>,
    session_id: &[u8],
    at: Millis,
    only_live: bool,
) -> Result<Option<(Session, bool)>> {
    let Some(mut session) = read::<SessionRecord>(sessions, session_id)? else {
        return Ok(None);
    };
    let revocable = session.revoked_at.is_none() && (!only_live || session.expires_at > at);
    if revocable {
        session.revoked_at = Some(at);
        sessions.insert(session_id, encode(&session));
    }
    Ok(Some((session.into(), revocable)))
}

/// Revokes the live sessions named by `user_sessions` index keys; returns how many.
fn revoke_live_sessions(
    sessions: &TxTree<'_>,
    index_keys: &[sled::IVec],
    prefix_len: usize,
    now: Millis,
) -> Result<u32> {
    let mut revoked = 0;
    for key in index_keys {
        if let Some((_, true)) = revoke_session_in(sessions, &key[prefix_len..], now, true)? {
            revoked += 1;
        }
    }
    Ok(revoked)
}

/// Stores an authorization code with its purge note.
fn insert_code(codes: &TxTree<'_>, expiry: &TxTree<'_>, code: &AuthCode, retention: Millis) {
    let key = code.code_digest.as_bytes();
    codes.insert(key, encode(code));
    expiry.insert(expiry_key(code.expires_at + retention, Expiring::Code, key), &[]);
}

fn insert_session(
    sessions: &TxTree<'_>,
    tokens: &TxTree<'_>,
    user_sessions: &TxTree<'_>,
    expiry: &TxTree<'_>,
    session: &Session,
    retention: Millis,
) {
    let id = session.id.as_bytes();
    sessions.insert(id, encode(&SessionRecord::from(session)));
    tokens.insert(session.token_digest.as_bytes(), id);
    user_sessions.insert(child_key(&session.user_id, id), &[]);
    expiry.insert(expiry_key(session.expires_at + retention, Expiring::Session, id), &[]);
}

impl Inner {
    fn user(&self, user_id: &str) -> Result<Option<User>> {
        Ok(Self::get::<UserRecord>(&self.trees.users, user_id)?.map(|record| record.user()))
    }

    fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let index = &self.trees.user_emails;
        match index.get(crate::domain::model::email_key(email)).map_err(storage)? {
            Some(user_id) => Ok(Self::get::<UserRecord>(&self.trees.users, user_id)?.map(|record| record.user())),
            None => Ok(None),
        }
    }

    fn list_users(&self, after: Option<&str>, limit: usize, status: Option<UserStatus>) -> Result<Vec<User>> {
        let start = match after {
            Some(after) => Bound::Excluded(after.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut users = Vec::with_capacity(limit.min(1024));
        for entry in self.trees.users.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (_, bytes) = entry.map_err(storage)?;
            let user = decode::<UserRecord>(&bytes)?.user();
            if status.is_none_or(|status| user.status == status) {
                users.push(user);
                if users.len() == limit {
                    break;
                }
            }
        }
        Ok(users)
    }

    async fn update_user(&self, user_id: &str, update: UpdateUserFn<'_>) -> Result<User> {
        let updated = self
            .writer
            .write(|tx| {
                let users = tx.on(&self.trees.users);
                let Some(current) = read::<UserRecord>(&users, user_id)? else {
                    return Err(Error::new(Reason::USER_NOT_FOUND, "no user with this id"));
                };
                let updated = update(&current.user())?;
                users.insert(user_id, encode(&UserRecord::new(&updated, current.links)));
                Ok(updated)
            })
            .await?;
        self.durable().await?;
        Ok(updated)
    }

    async fn delete_user(&self, user_id: &str, now: Millis) -> Result<Option<UserDeletion>> {
        let t = &self.trees;
        let session_keys = Self::child_keys(&t.user_sessions, user_id)?;
        let prefix_len = child_prefix(user_id).len();
        let deletion = self
            .writer
            .write(|tx| {
                let (users, emails, links, user_links, sessions) = (
                    tx.on(&t.users),
                    tx.on(&t.user_emails),
                    tx.on(&t.links),
                    tx.on(&t.user_links),
                    tx.on(&t.sessions),
                );
                let Some(bytes) = users.remove(user_id.as_bytes())? else {
                    return Ok(None);
                };
                let user: UserRecord = decode(&bytes)?;
                if emails.get(user.email_key())?.as_deref() == Some(user_id.as_bytes()) {
                    emails.remove(user.email_key().as_bytes())?;
                }
                let mut deletion = UserDeletion::default();
                for digest in filed_links(&user, &t.user_links)? {
                    if let Some(bytes) = links.remove(digest.as_bytes())? {
                        let link: LinkRecord = decode(&bytes)?;
                        if link.used_at.is_none() && link.expires_at > now {
                            deletion.voided_links += 1;
                        }
                    }
                    user_links.remove(child_key(user_id, digest.as_bytes()))?;
                }
                deletion.revoked_sessions = revoke_live_sessions(&sessions, &session_keys, prefix_len, now)?;
                Ok(Some(deletion))
            })
            .await?;
        self.durable().await?;
        Ok(deletion)
    }

    async fn insert_link(&self, link: &Link, new_user: Option<&User>, now: Millis) -> Result<LinkInsert> {
        let t = &self.trees;
        let digest = link.token_digest.as_bytes();
        let retention = self.retention;
        let outcome = self
            .writer
            .write(|tx| {
                let (users, emails, links, user_links, expiry) = (
                    tx.on(&t.users),
                    tx.on(&t.user_emails),
                    tx.on(&t.links),
                    tx.on(&t.user_links),
                    tx.on(&t.expiry),
                );
                let mut user = match new_user {
                    Some(user) => {
                        ensure_email_free(&emails, &users, user)?;
                        UserRecord::new(user, Vec::new())
                    }
                    // Deleted while this call ran.
                    None => read::<UserRecord>(&users, link.user_id.as_bytes())?
                        .ok_or_else(|| Error::new(Reason::USER_NOT_FOUND, "no user with this user_id"))?,
                };
                // A new user has no links yet.
                if let Some(reuse_key) = &link.reuse_key
                    && new_user.is_none()
                    && let Some(existing) = live_link_with_reuse_key(&user, &t.user_links, &links, reuse_key, now)?
                {
                    return Ok(LinkInsert::Existing(Box::new(existing)));
                }
                // No journal record: in this order, a crash after any prefix leaves only what no
                // one can reach (an expiry entry for a missing link; a link not noted on its
                // user, or whose user does not exist; an email index entry whose user does not
                // exist, see `ensure_email_free`), and the user record that makes the link
                // reachable comes last. None of it was acknowledged.
                tx.in_safe_order();
                expiry.insert(expiry_key(link.expires_at + retention, Expiring::Link, digest), &[]);
                links.insert(digest, encode_link(link));
                index_link(&mut user, &user_links, link, now, retention);
                if new_user.is_some() {
                    emails.insert(user.email_key().as_bytes(), user.id.as_bytes());
                }
                users.insert(user.id.as_bytes(), encode(&user));
                Ok(LinkInsert::Inserted)
            })
            .await?;
        // Also when an existing link comes back: its own writer may not have been flushed yet.
        self.durable().await?;
        Ok(outcome)
    }

    fn link(&self, token_digest: &Digest32) -> Result<Option<Link>> {
        Ok(Self::get::<LinkRecord>(&self.trees.links, token_digest.as_bytes())?.map(Link::from))
    }

    async fn redeem_link(&self, token_digest: &Digest32, decide: RedeemFn<'_>) -> Result<Redemption> {
        let t = &self.trees;
        let retention = self.retention;
        let redemption = self
            .writer
            .write(|tx| {
                let (links, users, sessions, tokens, user_sessions, expiry, attempts, codes) = (
                    tx.on(&t.links),
                    tx.on(&t.users),
                    tx.on(&t.sessions),
                    tx.on(&t.session_tokens),
                    tx.on(&t.user_sessions),
                    tx.on(&t.expiry),
                    tx.on(&t.attempts),
                    tx.on(&t.codes),
                );
                let not_found = || Error::new(Reason::TOKEN_NOT_FOUND, "no such token");
                let Some(link) = read_link(&links, token_digest.as_bytes())? else {
                    return Err(not_found());
                };
                let Some(user) = read::<UserRecord>(&users, link.user_id.as_bytes())? else {
                    return Err(not_found());
                };
                let attempt = match &link.attempt {
                    Some(ref_digest) => Some(read::<Attempt>(&attempts, ref_digest.as_bytes())?.ok_or_else(not_found)?),
                    None => None,
                };
                let redemption = decide(&link, &user.user(), attempt.as_ref())?;
                if let Some(attempt) = &redemption.attempt {
                    attempts.insert(attempt.ref_digest.as_bytes(), encode(attempt));
                }
                if let Some(code) = &redemption.code {
                    insert_code(&codes, &expiry, code, retention);
                }
                links.insert(token_digest.as_bytes(), encode_link(&redemption.link));
                // A used link keeps its note until it expires, so that DeleteUser still removes it.
                let stored = UserRecord::new(&redemption.user, user.links);
                users.insert(stored.id.as_bytes(), encode(&stored));
                if let Some(session) = &redemption.session {
                    insert_session(&sessions, &tokens, &user_sessions, &expiry, session, retention);
                }
                Ok(redemption)
            })
            .await?;
        self.durable().await?;
        Ok(redemption)
    }

    async fn insert_code(&self, code: &AuthCode) -> Result<()> {
        let t = &self.trees;
        let retention = self.retention;
        self.writer
            .write(|tx| {
                let (codes, expiry) = (tx.on(&t.codes), tx.on(&t.expiry));
                insert_code(&codes, &expiry, code, retention);
                Ok(())
            })
            .await?;
        self.durable().await
    }

    fn session(&self, session_id: &str) -> Result<Option<Session>> {
        Ok(Self::get::<SessionRecord>(&self.trees.sessions, session_id)?.map(Session::from))
    }

    fn session_by_token(&self, token_digest: &Digest32) -> Result<Option<Session>> {
        let index = &self.trees.session_tokens;
        match index.get(token_digest.as_bytes()).map_err(storage)? {
            Some(session_id) => self.session(std::str::from_utf8(&session_id).unwrap_or_default()),
            None => Ok(None),
        }
    }

    async fn revoke_session(&self, session_id: &str, now: Millis) -> Result<Option<Session>> {
        let session = self
            .writer
            .write(|tx| {
                let sessions = tx.on(&self.trees.sessions);
                Ok(revoke_session_in(&sessions, session_id.as_bytes(), now, false)?.map(|(session, _)| session))
            })
            .await?;
        self.durable().await?;
        Ok(session)
    }

    fn list_user_sessions(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
        live: LiveAt,
    ) -> Result<Vec<Session>> {
        let prefix = child_prefix(user_id);
        let start = match after {
            Some(after) => Bound::Excluded(child_key(user_id, after.as_bytes())),
            None => Bound::Included(prefix.clone()),
        };
        let mut found = Vec::with_capacity(limit.min(1024));
        for entry in self.trees.user_sessions.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (key, _) = entry.map_err(storage)?;
            if !key.starts_with(&prefix) || found.len() == limit {
                break;
            }
            let session_id = std::str::from_utf8(&key[prefix.len()..]).unwrap_or_default();
            if let Some(session) = self.session(session_id)?
                && live.holds(&session)
            {
                found.push(session);
            }
        }
        Ok(found)
    }

    async fn touch_session(&self, session_id: &str, now: Millis) -> Result<bool> {
        let touched = self
            .writer
            .write(|tx| {
                let sessions = tx.on(&self.trees.sessions);
                let Some(mut session) = read::<SessionRecord>(&sessions, session_id.as_bytes())? else {
                    return Ok(false);
                };
                if session
                    .last_authenticated_at
                    .is_some_and(|at| at > now - TOUCH_INTERVAL)
                {
                    return Ok(false);
                }
                session.last_authenticated_at = Some(now);
                sessions.insert(session_id.as_bytes(), encode(&session));
                Ok(true)
            })
            .await?;
        // Not waited for to be durable: the time is a hint, to the minute, and AuthenticateSession
        // is the hot path. The next group commit carries it; a crash may lose the last minute's.
        Ok(touched)
    }

    async fn revoke_user_sessions(&self, user_id: &str, now: Millis) -> Result<u32> {
        let keys = Self::child_keys(&self.trees.user_sessions, user_id)?;
        let prefix_len = child_prefix(user_id).len();
        let t = &self.trees;
        let revoked = self
            .writer
            .write(|tx| {
                let (users, sessions) = (tx.on(&t.users), tx.on(&t.sessions));
                if let Some(mut user) = read::<UserRecord>(&users, user_id)? {
                    user.sessions_revoked_at = Some(now);
                    users.insert(user_id.as_bytes(), encode(&user));
                }
                revoke_live_sessions(&sessions, &keys, prefix_len, now)
            })
            .await?;
        self.durable().await?;
        Ok(revoked)
    }

    async fn insert_email(&self, new: NewEmail<'_>) -> Result<()> {
        let NewEmail {
            links,
            attempt,
            new_user,
            email,
            rate,
            now,
        } = new;
        let t = &self.trees;
        let retention = self.retention;
        self.writer
            .write(|tx| {
                let (users, emails_index, links_tree, user_links, expiry, emails, outbox, rate_limits, attempts) = (
                    tx.on(&t.users),
                    tx.on(&t.user_emails),
                    tx.on(&t.links),
                    tx.on(&t.user_links),
                    tx.on(&t.expiry),
                    tx.on(&t.emails),
                    tx.on(&t.outbox),
                    tx.on(&t.rate_limits),
                    tx.on(&t.attempts),
                );
                if let Some(charge) = rate {
                    let key = charge.key;
                    let old = read::<RateBucketRecord>(&rate_limits, key.as_bytes())?.map(RateBucket::from);
                    let new = charge
                        .limit
                        .take(old.as_ref(), now)
                        .map_err(|retry_after| Error::RateLimited { retry_after })?;
                    rate_limits.insert(key.as_bytes(), encode(&RateBucketRecord::from(new)));
                    // One expiry entry per bucket, at the time it is full again.
                    if let Some(old) = old.filter(|old| old.full_at > 0) {
                        expiry.remove(expiry_key(old.full_at, Expiring::RateBucket, key.as_bytes()))?;
                    }
                    expiry.insert(expiry_key(new.full_at, Expiring::RateBucket, key.as_bytes()), &[]);
                }
                let mut user = match new_user {
                    Some(user) => {
                        ensure_email_free(&emails_index, &users, user)?;
                        emails_index.insert(user.email_key().as_bytes(), user.id.as_bytes());
                        UserRecord::new(user, Vec::new())
                    }
                    None => read::<UserRecord>(&users, email.user_id.as_bytes())?
                        .ok_or_else(|| Error::new(Reason::USER_NOT_FOUND, "no user with this user_id"))?,
                };
                for link in links {
                    let digest = link.token_digest.as_bytes();
                    links_tree.insert(digest, encode_link(link));
                    index_link(&mut user, &user_links, link, now, retention);
                    expiry.insert(expiry_key(link.expires_at + retention, Expiring::Link, digest), &[]);
                }
                users.insert(user.id.as_bytes(), encode(&user));
                if let Some(attempt) = attempt {
                    let key = attempt.ref_digest.as_bytes();
                    attempts.insert(key, encode(attempt));
                    expiry.insert(expiry_key(attempt.expires_at + retention, Expiring::Attempt, key), &[]);
                }
                emails.insert(email.id.as_bytes(), encode(email));
                outbox.insert(outbox_key(email.next_attempt_at, &email.id), &[]);
                expiry.insert(
                    expiry_key(email.link_expires_at + retention, Expiring::Email, email.id.as_bytes()),
                    &[],
                );
                Ok(())
            })
            .await?;
        self.durable().await
    }

    fn email(&self, email_id: &str) -> Result<Option<Email>> {
        Self::get(&self.trees.emails, email_id)
    }

    async fn claim_emails(&self, claim: OutboxClaim) -> Result<Vec<Email>> {
        let t = &self.trees;
        let bound = codec::expiry_bound(claim.now + 1);
        let claimed = self
            .writer
            .write(|tx| {
                let (emails, outbox, sending) = (tx.on(&t.emails), tx.on(&t.outbox), tx.on(&t.emails_sending));
                let mut claimed = Vec::new();
                // Committed state: this operation holds the writer and stages only claimed keys,
                // which the scan has already passed.
                for key in t.outbox.range(..&bound[..]).keys() {
                    if claimed.len() == claim.limit {
                        break;
                    }
                    let key = key.map_err(storage)?;
                    let Some((_, email_id)) = codec::parse_outbox_key(&key) else {
                        outbox.remove(&key)?;
                        continue;
                    };
                    outbox.remove(&key)?;
                    let Some(mut email) = read::<Email>(&emails, email_id)? else {
                        continue;
                    };
                    if !matches!(email.status, EmailStatus::Queued | EmailStatus::Sending) {
                        continue;
                    }
                    email.status = EmailStatus::Sending;
                    email.attempts += 1;
                    email.next_attempt_at = claim.now + claim.lease;
                    emails.insert(email_id, encode(&email));
                    outbox.insert(outbox_key(email.next_attempt_at, &email.id), &[]);
                    sending.insert(email_id, &[]);
                    claimed.push(email);
                }
                Ok(claimed)
            })
            .await?;
        if !claimed.is_empty() {
            self.durable().await?;
        }
        Ok(claimed)
    }

    async fn finish_emails(&self, emails: &[Email]) -> Result<Vec<bool>> {
        let t = &self.trees;
        let recorded = self
            .writer
            .write(|tx| {
                let (stored_emails, outbox, sending) = (tx.on(&t.emails), tx.on(&t.outbox), tx.on(&t.emails_sending));
                let mut recorded = Vec::with_capacity(emails.len());
                for email in emails {
                    let Some(stored) = read::<Email>(&stored_emails, email.id.as_bytes())? else {
                        // Purged while it was being sent: nothing left to record.
                        recorded.push(false);
                        continue;
                    };
                    if stored.status != EmailStatus::Sending || stored.attempts != email.attempts {
                        recorded.push(false);
                        continue;
                    }
                    outbox.remove(outbox_key(stored.next_attempt_at, &stored.id))?;
                    stored_emails.insert(email.id.as_bytes(), encode(email));
                    match email.status {
                        EmailStatus::Queued | EmailStatus::Sending => {
                            outbox.insert(outbox_key(email.next_attempt_at, &email.id), &[]);
                        }
                        EmailStatus::Sent | EmailStatus::Failed => {}
                    }
                    if email.status != EmailStatus::Sending {
                        sending.remove(email.id.as_bytes())?;
                    }
                    recorded.push(true);
                }
                Ok(recorded)
            })
            .await?;
        if recorded.contains(&true) {
            self.durable().await?;
        }
        Ok(recorded)
    }

    fn next_email_due(&self) -> Result<Option<Millis>> {
        let first = self.trees.outbox.first().map_err(storage)?;
        Ok(first.and_then(|(key, _)| codec::parse_outbox_key(&key).map(|(due, _)| due)))
    }

    fn outbox_depth(&self) -> OutboxDepth {
        // Both trees hold only emails in flight, so this is O(emails in flight).
        let in_outbox = self.trees.outbox.len() as u64;
        let sending = self.trees.emails_sending.len() as u64;
        OutboxDepth {
            queued: in_outbox.saturating_sub(sending),
            sending,
        }
    }

    async fn redeem_code(&self, code_digest: &Digest32, decide: RedeemCodeFn<'_>) -> Result<CodeRedemption> {
        let t = &self.trees;
        let retention = self.retention;
        let redemption = self
            .writer
            .write(|tx| {
                let (codes, users, sessions, tokens, user_sessions, expiry) = (
                    tx.on(&t.codes),
                    tx.on(&t.users),
                    tx.on(&t.sessions),
                    tx.on(&t.session_tokens),
                    tx.on(&t.user_sessions),
                    tx.on(&t.expiry),
                );
                let not_found = || Error::new(Reason::CODE_NOT_FOUND, "no such authorization code");
                let Some(code) = read::<AuthCode>(&codes, code_digest.as_bytes())? else {
                    return Err(not_found());
                };
                // A deleted user's codes are void, as their links are.
                let Some(user) = read::<UserRecord>(&users, code.user_id.as_bytes())? else {
                    return Err(not_found());
                };
                let redemption = decide(&code, &user.user())?;
                codes.insert(code_digest.as_bytes(), encode(&redemption.code));
                if let Some(session) = &redemption.session {
                    insert_session(&sessions, &tokens, &user_sessions, &expiry, session, retention);
                }
                if let Some((session_id, at)) = &redemption.revoke_session {
                    revoke_session_in(&sessions, session_id.as_bytes(), *at, false)?;
                }
                Ok(redemption)
            })
            .await?;
        self.durable().await?;
        Ok(redemption)
    }

    fn attempt(&self, ref_digest: &Digest32) -> Result<Option<Attempt>> {
        Self::get(&self.trees.attempts, ref_digest.as_bytes())
    }

    async fn collect_attempt(&self, ref_digest: &Digest32, session: &Session) -> Result<Option<Collection>> {
        let t = &self.trees;
        let retention = self.retention;
        let collection = self
            .writer
            .write(|tx| {
                let (attempts, sessions, tokens, user_sessions, expiry) = (
                    tx.on(&t.attempts),
                    tx.on(&t.sessions),
                    tx.on(&t.session_tokens),
                    tx.on(&t.user_sessions),
                    tx.on(&t.expiry),
                );
                let Some(mut attempt) = read::<Attempt>(&attempts, ref_digest.as_bytes())? else {
                    return Ok(None);
                };
                if attempt.status != AttemptStatus::Verified {
                    return Ok(Some(Collection::Unchanged(attempt)));
                }
                attempt.status = AttemptStatus::Collected;
                attempt.session_id = Some(session.id.clone());
                attempts.insert(ref_digest.as_bytes(), encode(&attempt));
                insert_session(&sessions, &tokens, &user_sessions, &expiry, session, retention);
                Ok(Some(Collection::Collected(attempt)))
            })
            .await?;
        if matches!(collection, Some(Collection::Collected(_))) {
            self.durable().await?;
        }
        Ok(collection)
    }

    fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        let keys = Self::get::<Vec<KeyRecord>>(&self.trees.meta, SIGNING_KEYS)?.unwrap_or_default();
        Ok(keys.into_iter().map(SigningKeyRecord::from).collect())
    }

    async fn replace_signing_keys(&self, expected: &[SigningKeyRecord], new: &[SigningKeyRecord]) -> Result<bool> {
        let current = self.trees.meta.get(SIGNING_KEYS).map_err(storage)?;
        let current_keys: Vec<SigningKeyRecord> = match &current {
            Some(bytes) => decode::<Vec<KeyRecord>>(bytes)?
                .into_iter()
                .map(SigningKeyRecord::from)
                .collect(),
            None => Vec::new(),
        };
        if current_keys != expected {
            return Ok(false);
        }
        let swapped = self
            .trees
            .meta
            .compare_and_swap(
                SIGNING_KEYS,
                current,
                Some(encode(&new.iter().map(KeyRecord::from).collect::<Vec<_>>())),
            )
            .map_err(storage)?
            .is_ok();
        self.durable().await?;
        Ok(swapped)
    }

    async fn purge_expired(&self, now: Millis, limit: usize) -> Result<usize> {
        let bound = codec::expiry_bound(now);
        let due: Vec<sled::IVec> = self
            .trees
            .expiry
            .range(..&bound[..])
            .keys()
            .take(limit)
            .collect::<std::result::Result<_, _>>()
            .map_err(storage)?;
        for entry in &due {
            match codec::parse_expiry_key(entry) {
                Some((Expiring::Link, digest)) => self.purge_link(digest, entry).await?,
                Some((Expiring::Session, session_id)) => self.purge_session(session_id, entry).await?,
                Some((Expiring::Email, email_id)) => self.purge_email(email_id, entry).await?,
                Some((Expiring::Code, code_digest)) => {
                    let t = &self.trees;
                    self.writer
                        .write(|tx| {
                            let (codes, expiry) = (tx.on(&t.codes), tx.on(&t.expiry));
                            codes.remove(code_digest)?;
                            expiry.remove(entry.as_ref())?;
                            Ok(())
                        })
                        .await?;
                }
                Some((Expiring::RateBucket, recipient)) => self.purge_rate_bucket(recipient, entry, now).await?,
                Some((Expiring::Attempt, ref_digest)) => {
                    let t = &self.trees;
                    self.writer
                        .write(|tx| {
                            let (attempts, expiry) = (tx.on(&t.attempts), tx.on(&t.expiry));
                            attempts.remove(ref_digest)?;
                            expiry.remove(entry.as_ref())?;
                            Ok(())
                        })
                        .await?;
                }
                Some((Expiring::IdempotencyKey, key)) => {
                    let t = &self.trees;
                    self.writer
                        .write(|tx| {
                            let (keys, expiry) = (tx.on(&t.idempotency_keys), tx.on(&t.expiry));
                            keys.remove(key)?;
                            expiry.remove(entry.as_ref())?;
                            Ok(())
                        })
                        .await?;
                }
                None => {
                    self.trees.expiry.remove(entry).map_err(storage)?;
                }
            }
        }
        if !due.is_empty() {
            self.durable().await?;
        }
        Ok(due.len())
    }

    async fn claim_idempotency_key(&self, claim: IdempotencyClaim<'_>) -> Result<IdempotencyState> {
        let t = &self.trees;
        let key = &claim.key.0[..];
        let state = self
            .writer
            .write(|tx| {
                let (keys, expiry) = (tx.on(&t.idempotency_keys), tx.on(&t.expiry));
                if let Some(held) = read::<IdempotencyRecord>(&keys, key)? {
                    let taken_over = held.expires_at <= claim.now
                        || (held.answer.is_none() && held.request == *claim.request && held.lease_until <= claim.now);
                    if !taken_over {
                        return Ok(if held.request != *claim.request {
                            IdempotencyState::Reused
                        } else {
                            held.answer
                                .map_or(IdempotencyState::Running, IdempotencyState::Answered)
                        });
                    }
                    expiry.remove(expiry_key(held.expires_at, Expiring::IdempotencyKey, key))?;
                }
                let record = IdempotencyRecord {
                    request: *claim.request,
                    answer: None,
                    lease_until: claim.now + claim.lease,
                    expires_at: claim.now + claim.keep,
                    claimant: Some(claim.claimant),
                };
                keys.insert(key, encode(&record));
                expiry.insert(expiry_key(record.expires_at, Expiring::IdempotencyKey, key), &[]);
                Ok(IdempotencyState::Claimed)
            })
            .await?;
        if state == IdempotencyState::Claimed {
            self.durable().await?;
        }
        Ok(state)
    }

    async fn settle_idempotency_key(&self, key: &Digest32, claimant: &Claimant, answer: Option<&[u8]>) -> Result<()> {
        let t = &self.trees;
        let key = &key.0[..];
        self.writer
            .write(|tx| {
                let (keys, expiry) = (tx.on(&t.idempotency_keys), tx.on(&t.expiry));
                let Some(mut held) = read::<IdempotencyRecord>(&keys, key)? else {
                    return Ok(());
                };
                // A record claimed before claimants has none, so no call settles it: it waits out
                // its lease.
                if held.claimant != Some(*claimant) {
                    return Ok(());
                }
                match answer {
                    Some(answer) => {
                        held.answer = Some(answer.to_vec());
                        keys.insert(key, encode(&held));
                    }
                    None if held.answer.is_none() => {
                        keys.remove(key)?;
                        expiry.remove(expiry_key(held.expires_at, Expiring::IdempotencyKey, key))?;
                    }
                    None => {}
                }
                Ok(())
            })
            .await?;
        self.durable().await
    }

    fn refuses_writes(&self) -> bool {
        self.writer.refuses_writes() || self.commit.failing()
    }
}
#[async_trait]
impl Store for SledStore {
    async fn user(&self, user_id: &str) -> Result<Option<User>> {
        self.inner()?.user(user_id)
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        self.inner()?.user_by_email(email)
    }

    async fn list_users(&self, after: Option<&str>, limit: usize, status: Option<UserStatus>) -> Result<Vec<User>> {
        self.inner()?.list_users(after, limit, status)
    }

    async fn update_user(&self, user_id: &str, update: UpdateUserFn<'_>) -> Result<User> {
        self.inner()?.update_user(user_id, update).await
    }

    async fn delete_user(&self, user_id: &str, now: Millis) -> Result<Option<UserDeletion>> {
        self.inner()?.delete_user(user_id, now).await
    }

    async fn insert_link(&self, link: &Link, new_user: Option<&User>, now: Millis) -> Result<LinkInsert> {
        self.inner()?.insert_link(link, new_user, now).await
    }

    async fn link(&self, token_digest: &Digest32) -> Result<Option<Link>> {
        self.inner()?.link(token_digest)
    }

    async fn redeem_link(&self, token_digest: &Digest32, decide: RedeemFn<'_>) -> Result<Redemption> {
        self.inner()?.redeem_link(token_digest, decide).await
    }

    async fn session(&self, session_id: &str) -> Result<Option<Session>> {
        self.inner()?.session(session_id)
    }

    async fn session_by_token(&self, token_digest: &Digest32) -> Result<Option<Session>> {
        self.inner()?.session_by_token(token_digest)
    }

    async fn revoke_session(&self, session_id: &str, now: Millis) -> Result<Option<Session>> {
        self.inner()?.revoke_session(session_id, now).await
    }

    async fn list_user_sessions(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
        live: LiveAt,
    ) -> Result<Vec<Session>> {
        self.inner()?.list_user_sessions(user_id, after, limit, live)
    }

    async fn touch_session(&self, session_id: &str, now: Millis) -> Result<bool> {
        self.inner()?.touch_session(session_id, now).await
    }

    async fn revoke_user_sessions(&self, user_id: &str, now: Millis) -> Result<u32> {
        self.inner()?.revoke_user_sessions(user_id, now).await
    }

    async fn insert_email(&self, new: NewEmail<'_>) -> Result<()> {
        self.inner()?.insert_email(new).await
    }

    async fn email(&self, email_id: &str) -> Result<Option<Email>> {
        self.inner()?.email(email_id)
    }

    async fn claim_emails(&self, claim: OutboxClaim) -> Result<Vec<Email>> {
        self.inner()?.claim_emails(claim).await
    }

    async fn finish_emails(&self, emails: &[Email]) -> Result<Vec<bool>> {
        self.inner()?.finish_emails(emails).await
    }

    async fn next_email_due(&self) -> Result<Option<Millis>> {
        self.inner()?.next_email_due()
    }

    async fn outbox_depth(&self) -> Result<OutboxDepth> {
        // sled keeps no count: counting walks both trees, milliseconds per ten thousand emails in
        // flight, so near the outbox limit it would stall every call waiting on this runtime
        // thread once a second. It runs on the blocking pool instead.
        let inner = self.inner()?;
        tokio::task::spawn_blocking(move || inner.outbox_depth())
            .await
            .map_err(|error| {
                Error::new(
                    Reason::STORE_UNAVAILABLE,
                    format!("counting the outbox failed: {error}"),
                )
            })
    }

    async fn insert_code(&self, code: &AuthCode) -> Result<()> {
        self.inner()?.insert_code(code).await
    }

    async fn redeem_code(&self, code_digest: &Digest32, decide: RedeemCodeFn<'_>) -> Result<CodeRedemption> {
        self.inner()?.redeem_code(code_digest, decide).await
    }

    async fn attempt(&self, ref_digest: &Digest32) -> Result<Option<Attempt>> {
        self.inner()?.attempt(ref_digest)
    }

    async fn collect_attempt(&self, ref_digest: &Digest32, session: &Session) -> Result<Option<Collection>> {
        self.inner()?.collect_attempt(ref_digest, session).await
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        self.inner()?.signing_keys()
    }

    async fn replace_signing_keys(&self, expected: &[SigningKeyRecord], new: &[SigningKeyRecord]) -> Result<bool> {
        self.inner()?.replace_signing_keys(expected, new).await
    }

    async fn claim_idempotency_key(&self, claim: IdempotencyClaim<'_>) -> Result<IdempotencyState> {
        self.inner()?.claim_idempotency_key(claim).await
    }

    async fn settle_idempotency_key(&self, key: &Digest32, claimant: &Claimant, answer: Option<&[u8]>) -> Result<()> {
        self.inner()?.settle_idempotency_key(key, claimant, answer).await
    }

    async fn purge_expired(&self, now: Millis, limit: usize) -> Result<usize> {
        self.inner()?.purge_expired(now, limit).await
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(inner) = self.open.read().expect("store lock").as_ref() {
            metrics::register(registry, Arc::downgrade(inner));
        }
    }

    fn refuses_writes(&self) -> bool {
        self.inner().is_ok_and(|inner| inner.refuses_writes())
    }

    /// sled does not take writes again after a storage error.
    fn needs_restart(&self) -> bool {
        self.refuses_writes()
    }

    /// Commits, lets the calls in flight finish, waits for sled to let go of the directory, and
    /// checkpoints it, so that the next start reads a snapshot and the same process may open the
    /// directory again at once.
    async fn close(&self) -> Result<()> {
        let Some(inner) = self.open.write().expect("store lock").take() else {
            return Ok(());
        };
        let stopped = inner.commit.stop().await;
        // A call still running holds the database a moment longer (it fails at its commit).
        while Arc::strong_count(&inner) > 1 {
            tokio::time::sleep(LOCK_POLL).await;
        }
        drop(inner);
        release(&self.path).await;
        stopped.map_err(Error::internal)
    }
}

/// How often closing looks again at whether sled let go of the directory.
const LOCK_POLL: Duration = Duration::from_millis(2);

/// Waits until sled's I/O threads drop their handles (just after the last flush they served),
/// checkpoints, and waits again. The caller bounds the whole with its shutdown deadline.
async fn release(path: &Path) {
    while !lock_is_free(path) {
        tokio::time::sleep(LOCK_POLL).await;
    }
    let dir = path.to_path_buf();
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || checkpoint(&dir)).await {
        Ok(Ok(())) => tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "store checkpointed; the next start reads a snapshot instead of the whole log"
        ),
        Ok(Err(error)) => tracing::warn!(%error, "store checkpoint failed; the next start recovers from the log"),
        Err(error) => tracing::warn!(%error, "store checkpoint task failed"),
    }
    while !lock_is_free(path) {
        tokio::time::sleep(LOCK_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::fixtures;

    fn options(path: &Path) -> SledOptions {
        SledOptions {
            path: path.to_path_buf(),
            cache_capacity_bytes: 1 << 20,
            durability: Durability::Flush,
            commit_linger: std::time::Duration::ZERO,
            retention: 1,
        }
    }

    /// The user record with its notes.
    fn record(store: &SledStore, user_id: &str) -> UserRecord {
        let inner = store.inner().unwrap();
        Inner::get::<UserRecord>(&inner.trees.users, user_id).unwrap().unwrap()
    }

    /// Opens the store once sled's I/O threads have let go of an earlier handle's lock (they drop
    /// it just after their last flush; see `release`).
    fn open_when_free(path: &Path) -> SledStore {
        wait_until_free(path);
        SledStore::open(&options(path)).unwrap()
    }

    fn wait_until_free(path: &Path) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !lock_is_free(path) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
    }

    /// More live links than the user record notes: the rest go to `user_links`, and reuse, a
    /// verification and DeleteUser find links in both places.
    #[tokio::test]
    async fn links_beyond_the_noted_ones_are_filed_in_user_links_and_found_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&options(dir.path())).unwrap();
        let user = fixtures::user();
        let now = fixtures::link().created_at;
        let links: Vec<Link> = (0..NOTED_LINKS + 2)
            .map(|n| Link {
                token_digest: Digest32::of(&format!("token {n}")),
                reuse_key: Some(Digest32::of(&format!("reuse {n}"))),
                ..fixtures::link()
            })
            .collect();
        store.insert_link(&links[0], Some(&user), now).await.unwrap();
        for link in &links[1..] {
            assert!(matches!(
                store.insert_link(link, None, now).await.unwrap(),
                LinkInsert::Inserted
            ));
        }
        let stored = record(&store, &user.id);
        assert_eq!(record(&store, &user.id).links.len(), NOTED_LINKS);
        assert_eq!(
            Inner::child_keys(&store.inner().unwrap().trees.user_links, &user.id)
                .unwrap()
                .len(),
            2
        );

        // Reuse finds a noted link and one in user_links.
        for n in [0, NOTED_LINKS + 1] {
            let again = Link {
                token_digest: Digest32::of("a new token"),
                ..links[n].clone()
            };
            match store.insert_link(&again, None, now).await.unwrap() {
                LinkInsert::Existing(existing) => assert_eq!(existing.token_digest, links[n].token_digest),
                LinkInsert::Inserted => panic!("link {n} was not reused"),
            }
        }

        // A verification keeps the notes (the domain never sees them).
        let redeem = |link: &Link, user: &User, _: Option<&Attempt>| -> Result<Redemption> {
            Ok(Redemption {
                link: Link {
                    used_at: Some(now),
                    ..link.clone()
                },
                user: user.clone(),
                attempt: None,
                code: None,
                refusal: None,
                session: None,
                user_activated: false,
            })
        };
        store.redeem_link(&links[0].token_digest, &redeem).await.unwrap();
        assert_eq!(record(&store, &user.id).links, stored.links);

        // DeleteUser removes every link, noted or not, and voids the live ones.
        let deletion = store.delete_user(&user.id, now).await.unwrap().unwrap();
        assert_eq!(deletion.voided_links as usize, NOTED_LINKS + 1, "all but the used one");
        for link in &links {
            assert!(store.link(&link.token_digest).await.unwrap().is_none());
        }
        assert!(
            Inner::child_keys(&store.inner().unwrap().trees.user_links, &user.id)
                .unwrap()
                .is_empty()
        );
    }

    /// An expired link keeps its note until it is due for purging, so DeleteUser still deletes it;
    /// after that, the next link filed for the user drops the note.
    #[tokio::test]
    async fn an_expired_link_keeps_its_note_until_it_is_due_for_purging() {
        let dir = tempfile::tempdir().unwrap();
        let retention = crate::domain::model::HOUR;
        let store = SledStore::open(&SledOptions {
            retention,
            ..options(dir.path())
        })
        .unwrap();
        let first = fixtures::link();
        let link = |n: u32, user_id: &str, created_at: Millis| Link {
            token_digest: Digest32::of(&format!("token {n}")),
            reuse_key: Some(Digest32::of(&format!("reuse {n}"))),
            user_id: user_id.into(),
            created_at,
            expires_at: created_at + crate::domain::model::HOUR,
            ..fixtures::link()
        };
        let noted = async |user_id: &str| -> Vec<Digest32> {
            let _ = &store;
            record(&store, user_id)
                .links
                .iter()
                .map(|note| note.token_digest)
                .collect()
        };

        // Expired, within retention: the note stays, and DeleteUser deletes the link.
        let user = fixtures::user();
        store.insert_link(&first, Some(&user), first.created_at).await.unwrap();
        let expired = first.expires_at + 1;
        let second = link(1, &user.id, expired);
        store.insert_link(&second, None, expired).await.unwrap();
        assert_eq!(noted(&user.id).await, [first.token_digest, second.token_digest]);
        let deletion = store.delete_user(&user.id, expired).await.unwrap().unwrap();
        assert_eq!(deletion.voided_links, 1, "the live one");
        assert!(
            store.link(&first.token_digest).await.unwrap().is_none(),
            "the expired one is gone too"
        );

        // Due for purging: the next link filed drops the note.
        let other = User {
            id: "user-01a20ed6-5bc8-762d-96c5-000000000002".into(),
            email: "other@example.com".into(),
            ..fixtures::user()
        };
        let old = link(2, &other.id, first.created_at);
        store.insert_link(&old, Some(&other), old.created_at).await.unwrap();
        let due = old.expires_at + retention;
        let new = link(3, &other.id, due);
        store.insert_link(&new, None, due).await.unwrap();
        assert_eq!(noted(&other.id).await, [new.token_digest]);
    }

    #[tokio::test]
    async fn rate_buckets_from_before_their_expiry_get_one_a_day_after_their_last_use() {
        /// Writes a bucket as versions before `full_at` did, with the store closed.
        fn write_old_bucket(path: &Path, recipient: &str, last_use: Millis) {
            #[derive(serde::Serialize)]
            struct OldBucket {
                tokens: f64,
                updated_at: Millis,
            }
            let db = sled::Config::new().path(path).open().unwrap();
            let old = OldBucket {
                tokens: 2.0,
                updated_at: last_use,
            };
            db.open_tree("rate_limits")
                .unwrap()
                .insert(recipient, encode(&old))
                .unwrap();
            db.flush().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let last_use = 1_795_545_262_253;
        write_old_bucket(dir.path(), "ann@example.com", last_use);
        let store = open_when_free(dir.path());
        let day = 24 * crate::domain::model::HOUR;
        assert_eq!(store.purge_expired(last_use + day - 1, 10).await.unwrap(), 0);
        assert!(
            store
                .inner()
                .unwrap()
                .trees
                .rate_limits
                .contains_key("ann@example.com")
                .unwrap()
        );
        assert_eq!(store.purge_expired(last_use + day + 1, 10).await.unwrap(), 1);
        assert!(
            store.inner().unwrap().trees.rate_limits.is_empty(),
            "the old bucket stayed"
        );
        assert!(store.inner().unwrap().trees.expiry.is_empty());
        // Once done, a later open does not scan the buckets again.
        store.close().await.unwrap();
        drop(store);
        wait_until_free(dir.path());
        write_old_bucket(dir.path(), "bob@example.com", last_use);
        let store = open_when_free(dir.path());
        assert!(
            store.inner().unwrap().trees.expiry.is_empty(),
            "the buckets were scanned at every open"
        );
    }

    #[tokio::test]
    async fn reuse_keys_kept_in_the_old_link_reuse_tree_move_onto_user_links_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (user, link) = (fixtures::user(), fixtures::link());
        let reuse_key = link.reuse_key.unwrap();
        let now = link.created_at;
        {
            // The layout an earlier version wrote.
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let digest = link.token_digest.as_bytes();
            db.open_tree("users")
                .unwrap()
                .insert(user.id.as_bytes(), encode(&UserRecord::new(&user, Vec::new())))
                .unwrap();
            db.open_tree("links")
                .unwrap()
                .insert(digest, encode(&LinkRecord::from(&link)))
                .unwrap();
            db.open_tree("user_links")
                .unwrap()
                .insert(child_key(&user.id, digest), &[])
                .unwrap();
            db.open_tree("link_reuse")
                .unwrap()
                .insert(reuse_key.as_bytes(), digest)
                .unwrap();
            db.flush().unwrap();
        }
        let store = open_when_free(dir.path());
        assert!(
            !store
                .inner()
                .unwrap()
                .db
                .tree_names()
                .iter()
                .any(|name| name == b"link_reuse")
        );

        let mut again = fixtures::link();
        again.token_digest = Digest32::of("another token");
        match store.insert_link(&again, None, now).await.unwrap() {
            LinkInsert::Existing(existing) => assert_eq!(*existing, link),
            LinkInsert::Inserted => panic!("the migrated reuse key was not found"),
        }
        // Once the link is used, the same parameters make a new link.
        store
            .inner()
            .unwrap()
            .trees
            .links
            .insert(
                link.token_digest.as_bytes(),
                encode(&LinkRecord::from(&Link {
                    used_at: Some(now),
                    ..link.clone()
                })),
            )
            .unwrap();
        assert!(matches!(
            store.insert_link(&again, None, now).await.unwrap(),
            LinkInsert::Inserted
        ));
        assert!(matches!(
            store.insert_link(&again, None, now).await.unwrap(),
            LinkInsert::Existing(_)
        ));
    }

    /// A crash after any prefix of a new user's first link leaves either all of it or a store in
    /// which that user does not exist and the email can be signed up again.
    #[tokio::test]
    async fn a_crash_part_way_through_an_unjournaled_link_insert_leaves_nothing_reachable() {
        let (user, link) = (fixtures::user(), fixtures::link());
        let now = link.created_at;
        let redeem = |link: &Link, user: &User, _: Option<&Attempt>| -> Result<crate::domain::store::Redemption> {
            Ok(crate::domain::store::Redemption {
                link: link.clone(),
                user: user.clone(),
                attempt: None,
                code: None,
                refusal: None,
                session: None,
                user_activated: false,
            })
        };
        // The expiry entry, the link, the email index entry, the user record (noting the link).
        const WRITES: usize = 4;
        for crash_after in 0..=WRITES {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = SledStore::open(&options(dir.path())).unwrap();
                store
                    .inner()
                    .unwrap()
                    .writer
                    .crash_after
                    .store(crash_after, std::sync::atomic::Ordering::Relaxed);
                let outcome = store.insert_link(&link, Some(&user), now).await;
                assert_eq!(outcome.is_ok(), crash_after == WRITES, "after {crash_after} writes");
                store.inner().unwrap().db.flush().unwrap();
                store.close().await.unwrap();
            }
            let store = open_when_free(dir.path());
            let whole = crash_after == WRITES;
            assert_eq!(
                store.user_by_email(&user.email).await.unwrap().is_some(),
                whole,
                "after {crash_after}"
            );
            let redeemed = store.redeem_link(&link.token_digest, &redeem).await;
            match redeemed {
                Ok(_) => assert!(whole, "after {crash_after} writes the link verified without its user"),
                Err(error) => {
                    assert!(!whole);
                    assert_eq!(error.reason(), Reason::TOKEN_NOT_FOUND, "after {crash_after}");
                }
            }
            if !whole {
                let mut again = fixtures::user();
                again.id = "user-01a20ed6-5bc8-762d-96c5-000000000002".into();
                let mut link = fixtures::link();
                link.user_id = again.id.clone();
                link.token_digest = Digest32::of("a second token");
                assert!(
                    matches!(
                        store.insert_link(&link, Some(&again), now).await,
                        Ok(LinkInsert::Inserted)
                    ),
                    "after {crash_after}"
                );
                assert_eq!(
                    store.user_by_email(&user.email).await.unwrap().map(|found| found.id),
                    Some(again.id)
                );
            }
        }
    }
}
