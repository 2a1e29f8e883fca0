//! The PostgreSQL store: any number of replicas over one database, each method one transaction
//! (or one statement). What makes it correct across replicas:
//! - a redemption locks its rows (`FOR UPDATE`) and runs the domain's decision on them, so one of
//!   many concurrent redemptions wins; a serialization failure or deadlock retries the whole step;
//! - the outbox is claimed with `FOR UPDATE SKIP LOCKED` plus a lease, so each email has one
//!   claimant;
//! - a rate bucket is created if missing, then locked, so the budget holds across replicas;
//! - the signing-key set is replaced by compare-and-swap on its one row;
//! - purging takes small batches with `SKIP LOCKED`, so replicas sweeping together never wait on
//!   each other or on the API.
//!
//! Every statement is prepared once per connection and kept (`prepare_cached`), as
//! `pgbench -M prepared` runs them: parsing and planning each statement on every call cost the
//! database more than twice pgbench's CPU per verification. PostgreSQL may then give a statement a
//! generic plan, so each is written to be an index lookup under one (`tests/postgres_plans.rs`):
//! the purge and the outbox claim name their rows `= ANY(ARRAY(subquery))`, since `IN (subquery)`
//! gets a hash join over the whole table.
//!
//! Wake-ups cross replicas with LISTEN/NOTIFY (`wakeups`). A call is answered only after its
//! transaction committed; a call whose COMMIT was sent but not acknowledged (the connection broke,
//! the call's deadline passed) answers `STORE_UNAVAILABLE` saying the outcome is unknown, and its
//! connection is closed rather than returned to the pool (`held`). The URL's password never
//! reaches a log line or an error.

mod connect;
mod held;
pub mod migrations;
mod rows;
mod wakeups;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

pub use self::connect::OpenError;
pub use self::wakeups::PgWakeups;
use crate::config::StoreConfig;
use crate::crypto::Digest32;
use crate::domain::error::{Error, Reason, Result};
use crate::domain::model::{
    Attempt, AttemptStatus, AuthCode, Email, HOUR, Link, Millis, RateBucket, Session, SigningKeyRecord, User,
    UserStatus,
};
use crate::domain::store::{
    Claimant, CodeRedemption, Collection, IdempotencyClaim, IdempotencyState, LinkInsert, LiveAt, NewEmail,
    OutboxClaim, OutboxDepth, RedeemCodeFn, RedeemFn, Redemption, Store, TOUCH_INTERVAL, UpdateUserFn, UserDeletion,
};

/// How often a replica checks that the database answers (health follows it).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A step that keeps meeting serialization failures or deadlocks gives up after this many tries.
const TRIES: u32 = 8;

pub struct PgStore {
    pool: Pool,
    retention: Millis,
    /// A call waits no longer than this for the database (the statement timeout, and a margin).
    deadline: Duration,
    unreachable: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// Opens the pool, migrates the schema, and starts the health probe and the wake-ups.
pub async fn open(config: &StoreConfig) -> std::result::Result<(PgStore, PgWakeups), OpenError> {
    let settings = &config.postgres;
    let connector = connect::Connector::new(settings)?;
    let pool = connector.pool(settings.pool_size)?;
    let applied = migrate_once_reachable(&connector, &pool, Duration::from_secs(settings.startup_wait_seconds)).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, target = %connector.target(), "migrated the database's schema");
    }
    let stop = CancellationToken::new();
    let unreachable = Arc::new(AtomicBool::new(false));
    tokio::spawn(probe(connector.clone(), unreachable.clone(), stop.clone()));
    let wakeups = PgWakeups::start(
        connector,
        pool.clone(),
        settings.notify,
        Duration::from_millis(settings.recheck_millis),
        stop.clone(),
    );
    let store = PgStore {
        pool,
        retention: Millis::from(config.retention_hours) * HOUR,
        deadline: Duration::from_secs(settings.statement_timeout_seconds) + Duration::from_secs(1),
        unreachable,
        stop,
    };
    Ok((store, wakeups))
}

/// Migrates the schema, waiting up to `wait` for a database that cannot be reached yet: replicas
/// started while PostgreSQL restarts or fails over, or before it is up in a new deployment, come up
/// with it instead of exiting and being restarted with growing back-off.
async fn migrate_once_reachable(
    connector: &connect::Connector,
    pool: &Pool,
    wait: Duration,
) -> std::result::Result<Vec<i32>, OpenError> {
    const FIRST_PAUSE: Duration = Duration::from_millis(250);
    const LONGEST_PAUSE: Duration = Duration::from_secs(5);
    let started = tokio::time::Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let failure = match pool.get().await {
            Ok(mut client) => return Ok(migrations::migrate(&mut client).await?),
            Err(failure) => failure,
        };
        let error = connector.unreachable(&failure);
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() || !worth_waiting_for(&failure) {
            return Err(error);
        }
        let next_try = pause.min(left);
        tracing::warn!(%error, retry_in_ms = next_try.as_millis() as u64, "cannot reach PostgreSQL yet; waiting for it (store.postgres.startup_wait_seconds)");
        tokio::time::sleep(next_try).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Whether a failed connection may succeed later. A database that answered with a refusal of its
/// own (a wrong password, no such database) will refuse again; one that is starting up, shutting
/// down or out of connections (SQLSTATE classes 57 and 53) may not, nor one that did not answer.
fn worth_waiting_for(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(refusal) = current.downcast_ref::<tokio_postgres::error::DbError>() {
            return matches!(refusal.code().code().get(..2), Some("57" | "53"));
        }
        cause = current.source();
    }
    true
}

/// Health: the database answers a trivial query within a few seconds, or the store refuses writes.
/// The probe has a connection of its own: under load every pooled connection is busy, which is
/// not the database being gone.
async fn probe(connector: connect::Connector, unreachable: Arc<AtomicBool>, stop: CancellationToken) {
    let mut connection: Option<tokio_postgres::Client> = None;
    loop {
        let answered = async {
            if connection.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
                // Each host of a multi-host URL may take its connect timeout.
                let connecting = tokio::time::timeout(connector.connect_budget(), connector.dedicated(None));
                connection = Some(connecting.await.ok()?.ok()?);
            }
            let query = connection.as_ref()?.simple_query("SELECT 1");
            tokio::time::timeout(Duration::from_secs(3), query).await.ok()?.ok()
        }
        .await
        .is_some();
        if !answered {
            // A connection that failed once is not trusted again.
            connection = None;
        }
        if unreachable.swap(!answered, Ordering::Relaxed) == answered {
            if answered {
                tracing::info!("PostgreSQL answers again");
            } else {
                tracing::error!("PostgreSQL does not answer; calls fail with STORE_UNAVAILABLE until it does");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// Why a step failed: the domain said no (answered as is), the database failed (retried when it
/// was a conflict, else `STORE_UNAVAILABLE`), or the connection broke while a change was being
/// committed, so whether it was is unknown.
enum Failure {
    Domain(Error),
    Database(tokio_postgres::Error),
    OutcomeUnknown(tokio_postgres::Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Domain(error)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::Database(error)
    }
}

type Step<T> = std::result::Result<T, Failure>;

fn is_conflict(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::T_R_DEADLOCK_DETECTED)
    )
}

/// A statement that changes something failed: when the server answered (an error it sent), the
/// change was not made; when the connection broke or the deadline passed with the statement sent,
/// it may have been (a commit the server made but could not acknowledge).
fn write_failure(error: tokio_postgres::Error) -> Failure {
    if error.as_db_error().is_some() {
        Failure::Database(error)
    } else {
        Failure::OutcomeUnknown(error)
    }
}

fn unavailable(error: &(dyn std::error::Error + 'static)) -> Error {
    let error = connect::with_causes(error);
    tracing::warn!(%error, "PostgreSQL call failed");
    Error::new(Reason::STORE_UNAVAILABLE, "the store is unavailable; try again")
}

/// The answer to a call whose change may or may not have been committed. Never success: a
/// failover can undo a commit that was not acknowledged.
fn outcome_unknown(error: &(dyn std::error::Error + 'static)) -> Error {
    let error = connect::with_causes(error);
    tracing::warn!(%error, "PostgreSQL failed while committing; the outcome is unknown");
    Error::new(
        Reason::STORE_UNAVAILABLE,
        "the store became unavailable while committing this call's change, so the outcome is unknown; \
         retry with the same idempotency-key to learn it",
    )
}

fn failed(failure: Failure) -> Error {
    match failure {
        Failure::Domain(error) => error,
        Failure::Database(error) => unavailable(&error),
        Failure::OutcomeUnknown(error) => outcome_unknown(&error),
    }
}

/// Runs `$body` (an async block using the transaction `$tx`) in a transaction, committed when it
/// returns Ok; retried from the start on a serialization failure or deadlock. The COMMIT is bounded
/// only by the call's deadline on this side, never by a server-side timeout or a cancel request:
/// PostgreSQL answers a cancelled wait for synchronous replication with success although the
/// commit may exist on the old primary only. (`statement_timeout` ends before the commit itself,
/// from PostgreSQL 13 on, so it does not cut that wait short.)
macro_rules! in_transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let store: &PgStore = $store;
        let committing = AtomicBool::new(false);
        let work = async {
            let mut tries = 0;
            loop {
                tries += 1;
                let mut client = held::Held::get(&store.pool)
                    .await
                    .map_err(|error| unavailable(&error))?;
                let outcome: Step<_> = async {
                    let $tx = client.transaction().await?;
                    let value = $body.await?;
                    committing.store(true, Ordering::Relaxed);
                    $tx.commit().await.map_err(write_failure)?;
                    Ok(value)
                }
                .await;
                committing.store(false, Ordering::Relaxed);
                match outcome {
                    Ok(value) => {
                        client.release();
                        return Ok(value);
                    }
                    // The transaction's ROLLBACK is queued ahead of anything the next call sends.
                    Err(Failure::Domain(error)) => {
                        client.release();
                        return Err(error);
                    }
                    Err(Failure::Database(error)) if is_conflict(&error) && tries < TRIES => {
                        client.release();
                        continue;
                    }
                    // A connection that failed otherwise is not trusted again (it may be to a
                    // server that is no longer the primary): `client` is dropped, so closed.
                    Err(failure) => return Err(failed(failure)),
                }
            }
        };
        store.bounded(work, &committing).await
    }};
}

/// One statement (or a few without a transaction) on a pooled connection. `read` statements change
/// nothing; for `write` ones (each commits by itself) a broken connection or the deadline leaves
/// the outcome unknown.
macro_rules! on_connection {
    (@run $store:expr, $writes:expr, |$client:ident| $body:expr) => {{
        let store: &PgStore = $store;
        let committing = AtomicBool::new($writes);
        // Outside the deadline: getting a connection has bounds of its own (the pool's wait and
        // connect timeouts), and a connection still being opened when the deadline fired would be
        // abandoned. With a multi-host URL, opening one can take longer than the deadline under
        // load (a standby is reached and turned down first), and then none would ever be opened.
        let held = held::Held::get(&store.pool).await.map_err(|error| unavailable(&error))?;
        let work = async {
            let outcome: Step<_> = {
                let $client = &held;
                $body.await
            };
            match outcome {
                Ok(value) => {
                    held.release();
                    Ok(value)
                }
                Err(Failure::Domain(error)) => {
                    held.release();
                    Err(error)
                }
                Err(Failure::Database(error)) if $writes => Err(failed(write_failure(error))),
                Err(failure) => Err(failed(failure)),
            }
        };
        store.bounded(work, &committing).await
    }};
    (write $store:expr, |$client:ident| $body:expr) => {
        on_connection!(@run $store, true, |$client| $body)
    };
    ($store:expr, |$client:ident| $body:expr) => {
        on_connection!(@run $store, false, |$client| $body)
    };
}

impl PgStore {
    /// Bounds a call by the deadline. Past it the call is dropped, and with it its connection
    /// (closed, never returned to the pool with a request in flight); the call fails
    /// `STORE_UNAVAILABLE`, saying that the outcome is unknown if it was `committing`.
    async fn bounded<T>(&self, work: impl Future<Output = Result<T>>, committing: &AtomicBool) -> Result<T> {
        match tokio::time::timeout(self.deadline, work).await {
            Ok(outcome) => outcome,
            Err(elapsed) if committing.load(Ordering::Relaxed) => Err(outcome_unknown(&elapsed)),
            Err(elapsed) => Err(unavailable(&elapsed)),
        }
    }
    fn purge_at(&self, expires_at: Millis) -> Millis {
        expires_at + self.retention
    }
}

/// A user's values in the column order of `INSERT INTO users` and `UPDATE users` below.
struct UserValues<'a> {
    user: &'a User,
    email_key: String,
    status: i16,
    role: i16,
}

impl<'a> UserValues<'a> {
    fn of(user: &'a User) -> Self {
        Self {
            user,
            email_key: user.email_key(),
            status: rows::user_status(user.status),
            role: rows::role(user.role),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        let user = self.user;
        [
            &user.id,
            &user.email,
            &self.email_key,
            &user.first_name,
            &user.last_name,
            &self.status,
            &self.role,
            &user.mfa_enabled,
            &user.email_verified,
            &user.created_at,
            &user.updated_at,
            &user.last_login_at,
            &user.sessions_revoked_at,
            &user.locale,
        ]
    }
}

async fn insert_user(tx: &impl GenericClient, user: &User) -> Step<()> {
    let inserted = tx
        .execute(
            &tx.prepare_cached(
                "INSERT INTO users (id, email, email_key, first_name, last_name, status, role, mfa_enabled, \
             email_verified, created_at, updated_at, last_login_at, sessions_revoked_at, locale) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (email_key) DO NOTHING",
            )
            .await?,
            &UserValues::of(user).params(),
        )
        .await?;
    if inserted == 0 {
        return Err(Error::new(Reason::USER_EXISTS, "a user with this email exists").into());
    }
    Ok(())
}

async fn update_user_row(tx: &impl GenericClient, user: &User) -> Step<()> {
    tx.execute(
        &tx.prepare_cached(
            "UPDATE users SET email = $2, email_key = $3, first_name = $4, last_name = $5, status = $6, role = $7, \
         mfa_enabled = $8, email_verified = $9, created_at = $10, updated_at = $11, last_login_at = $12, \
         sessions_revoked_at = $13, locale = $14 WHERE id = $1",
        )
        .await?,
        &UserValues::of(user).params(),
    )
    .await
    .map_err(|error| match error.code() {
        Some(&SqlState::UNIQUE_VIOLATION) => {
            Failure::Domain(Error::new(Reason::USER_EXISTS, "a user with this email exists"))
        }
        _ => Failure::Database(error),
    })?;
    Ok(())
}

async fn insert_link_row(tx: &impl GenericClient, link: &Link, purge_at: Millis) -> Step<()> {
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO links (token_digest, seed, kind, user_id, redirect_url, created_at, expires_at, used_at, \
         code_challenge, reuse_key, attempt, oauth, purge_at, otp_digest, otp_digits, otp_failures) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .await?,
        &[
            &&link.token_digest.0[..],
            &&link.seed[..],
            &rows::link_kind(link.kind),
            &link.user_id,
            &link.redirect_url,
            &link.created_at,
            &link.expires_at,
            &link.used_at,
            &link.code_challenge,
            &link.reuse_key.as_ref().map(|key| &key.0[..]),
            &link.attempt.as_ref().map(|key| &key.0[..]),
            &link.oauth.as_ref().map(rows::to_json),
            &purge_at,
            &link.otp.as_ref().map(|otp| &otp.digest.0[..]),
            &link.otp.map(|otp| i16::from(otp.digits)),
            &link.otp.map(|otp| i16::from(otp.failures)),
        ],
    )
    .await?;
    Ok(())
}

async fn insert_session_row(tx: &impl GenericClient, session: &Session, purge_at: Millis) -> Step<()> {
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO sessions (id, user_id, token_digest, created_at, expires_at, revoked_at, link_kind, claims, \
         purge_at, via_otp, client_ip_address, client_user_agent, last_authenticated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .await?,
        &[
            &session.id,
            &session.user_id,
            &&session.token_digest.0[..],
            &session.created_at,
            &session.expires_at,
            &session.revoked_at,
            &rows::link_kind(session.link_kind),
            &serde_json::Value::Object(session.claims.clone()),
            &purge_at,
            &session.via_otp,
            &session.client.as_ref().map(|client| client.ip_address.as_str()),
            &session.client.as_ref().map(|client| client.user_agent.as_str()),
            &session.last_authenticated_at,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_attempt_row(tx: &impl GenericClient, attempt: &Attempt, purge_at: Millis) -> Step<()> {
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO attempts (ref_digest, user_id, status, right_link, created_at, expires_at, verified_at, \
         claims, session_id, purge_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?,
        &[
            &&attempt.ref_digest.0[..],
            &attempt.user_id,
            &rows::attempt_status(attempt.status),
            &&attempt.right_link.0[..],
            &attempt.created_at,
            &attempt.expires_at,
            &attempt.verified_at,
            &serde_json::Value::Object(attempt.claims.clone()),
            &attempt.session_id,
            &purge_at,
        ],
    )
    .await?;
    Ok(())
}

async fn update_attempt_row(tx: &impl GenericClient, attempt: &Attempt) -> Step<()> {
    tx.execute(
        &tx.prepare_cached(
            "UPDATE attempts SET status = $2, verified_at = $3, claims = $4, session_id = $5 WHERE ref_digest = $1",
        )
        .await?,
        &[
            &&attempt.ref_digest.0[..],
            &rows::attempt_status(attempt.status),
            &attempt.verified_at,
            &serde_json::Value::Object(attempt.claims.clone()),
            &attempt.session_id,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_code_row(tx: &impl GenericClient, code: &AuthCode, purge_at: Millis) -> Step<()> {
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO codes (code_digest, user_id, request, created_at, expires_at, auth_time, used_at, \
             session_id, purge_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?,
        &[
            &&code.code_digest.0[..],
            &code.user_id,
            &rows::to_json(&code.request),
            &code.created_at,
            &code.expires_at,
            &code.auth_time,
            &code.used_at,
            &code.session_id,
            &purge_at,
        ],
    )
    .await?;
    Ok(())
}

async fn write_email_row(tx: &impl GenericClient, email: &Email, purge_at: Millis) -> Step<()> {
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO emails (id, recipient, user_id, first_name, last_name, kind, template_id, links, \
         link_expires_at, status, attempts, last_error, created_at, next_attempt_at, sent_at, purge_at, locale) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .await?,
        &[
            &email.id,
            &email.recipient,
            &email.user_id,
            &email.first_name,
            &email.last_name,
            &rows::email_kind(email.kind),
            &email.template_id,
            &rows::to_json(&email.links),
            &email.link_expires_at,
            &rows::email_status(email.status),
            &(email.attempts as i32),
            &email.last_error,
            &email.created_at,
            &email.next_attempt_at,
            &email.sent_at,
            &purge_at,
            &email.locale,
        ],
    )
    .await?;
    Ok(())
}

/// Revokes the user's live sessions at `now`; returns how many.
async fn revoke_live_sessions(tx: &impl GenericClient, user_id: &str, now: Millis) -> Step<u32> {
    let revoked = tx
        .execute(
            &tx.prepare_cached(
                "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2",
            )
            .await?,
            &[&user_id, &now],
        )
        .await?;
    Ok(revoked as u32)
}

#[async_trait]
impl Store for PgStore {
    async fn user(&self, user_id: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {} FROM users WHERE id = $1", rows::USER);
        on_connection!(self, |client| async {
            let row = client
                .query_opt(&client.prepare_cached(&sql).await?, &[&user_id])
                .await?;
            Ok(row.as_ref().map(rows::user).transpose()?)
        })
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {} FROM users WHERE email_key = $1", rows::USER);
        let key = crate::domain::model::email_key(email);
        on_connection!(self, |client| async {
            let row = client.query_opt(&client.prepare_cached(&sql).await?, &[&key]).await?;
            Ok(row.as_ref().map(rows::user).transpose()?)
        })
    }

    async fn list_users(&self, after: Option<&str>, limit: usize, status: Option<UserStatus>) -> Result<Vec<User>> {
        let sql = format!(
            "SELECT {} FROM users WHERE ($1::text IS NULL OR id > $1) AND ($2::smallint IS NULL OR status = $2) \
             ORDER BY id LIMIT $3",
            rows::USER
        );
        let status = status.map(rows::user_status);
        let limit = limit as i64;
        on_connection!(self, |client| async {
            let found = client
                .query(&client.prepare_cached(&sql).await?, &[&after, &status, &limit])
                .await?;
            Ok(found.iter().map(rows::user).collect::<Result<Vec<_>>>()?)
        })
    }

    async fn update_user(&self, user_id: &str, update: UpdateUserFn<'_>) -> Result<User> {
        let sql = format!("SELECT {} FROM users WHERE id = $1 FOR NO KEY UPDATE", rows::USER);
        in_transaction!(self, |tx| async {
            let Some(row) = tx.query_opt(&tx.prepare_cached(&sql).await?, &[&user_id]).await? else {
                return Err(Error::new(Reason::USER_NOT_FOUND, "no user with this id").into());
            };
            let updated = update(&rows::user(&row)?)?;
            update_user_row(&tx, &updated).await?;
            Step::Ok(updated)
        })
    }

    async fn delete_user(&self, user_id: &str, now: Millis) -> Result<Option<UserDeletion>> {
        in_transaction!(self, |tx| async {
            if tx
                .execute(
                    &tx.prepare_cached("DELETE FROM users WHERE id = $1").await?,
                    &[&user_id],
                )
                .await?
                == 0
            {
                return Step::Ok(None);
            }
            let voided = tx
                .query_one(
                    &tx.prepare_cached(
                        "WITH gone AS (DELETE FROM links WHERE user_id = $1 RETURNING used_at, expires_at) \
                     SELECT count(*) FILTER (WHERE used_at IS NULL AND expires_at > $2) FROM gone",
                    )
                    .await?,
                    &[&user_id, &now],
                )
                .await?;
            let voided: i64 = voided.get(0);
            let revoked = revoke_live_sessions(&tx, user_id, now).await?;
            Ok(Some(UserDeletion {
                revoked_sessions: revoked,
                voided_links: voided as u32,
            }))
        })
    }

    async fn insert_link(&self, link: &Link, new_user: Option<&User>, now: Millis) -> Result<LinkInsert> {
        let reuse_sql = format!(
            "SELECT {} FROM links WHERE user_id = $1 AND reuse_key = $2 AND used_at IS NULL AND expires_at > $3 \
             LIMIT 1",
            rows::LINK
        );
        let purge_at = self.purge_at(link.expires_at);
        in_transaction!(self, |tx| async {
            match new_user {
                Some(user) => insert_user(&tx, user).await?,
                None => {
                    // Locked against a concurrent DeleteUser and, with a reuse key, against a
                    // concurrent insert under the same key.
                    let lock = if link.reuse_key.is_some() {
                        "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE"
                    } else {
                        "SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE"
                    };
                    if tx
                        .query_opt(&tx.prepare_cached(lock).await?, &[&link.user_id])
                        .await?
                        .is_none()
                    {
                        return Err(Error::new(Reason::USER_NOT_FOUND, "no user with this user_id").into());
                    }
                    if let Some(reuse_key) = &link.reuse_key
                        && let Some(row) = tx
                            .query_opt(
                                &tx.prepare_cached(&reuse_sql).await?,
                                &[&link.user_id, &&reuse_key.0[..], &now],
                            )
                            .await?
                    {
                        return Step::Ok(LinkInsert::Existing(Box::new(rows::link(&row)?)));
                    }
                }
            }
            insert_link_row(&tx, link, purge_at).await?;
            Ok(LinkInsert::Inserted)
        })
    }

    async fn link(&self, token_digest: &Digest32) -> Result<Option<Link>> {
        let sql = format!("SELECT {} FROM links WHERE token_digest = $1", rows::LINK);
        on_connection!(self, |client| async {
            let row = client
                .query_opt(&client.prepare_cached(&sql).await?, &[&&token_digest.0[..]])
                .await?;
            Ok(row.as_ref().map(rows::link).transpose()?)
        })
    }

    async fn redeem_link(&self, token_digest: &Digest32, decide: RedeemFn<'_>) -> Result<Redemption> {
        // Only an unused link is locked: calls that queued behind the one that used it find no
        // row when it commits and go on at once without a lock, rather than each taking the lock
        // in turn only to be refused (64 racing calls took seconds that way).
        let unused_sql = format!(
            "SELECT {} FROM links WHERE token_digest = $1 AND used_at IS NULL FOR UPDATE",
            rows::LINK
        );
        let link_sql = format!("SELECT {} FROM links WHERE token_digest = $1", rows::LINK);
        let locked_user_sql = format!("SELECT {} FROM users WHERE id = $1 FOR NO KEY UPDATE", rows::USER);
        let user_sql = format!("SELECT {} FROM users WHERE id = $1", rows::USER);
        let locked_attempt_sql = format!(
            "SELECT {} FROM attempts WHERE ref_digest = $1 FOR UPDATE",
            rows::ATTEMPT
        );
        let attempt_sql = format!("SELECT {} FROM attempts WHERE ref_digest = $1", rows::ATTEMPT);
        let retention = self.retention;
        in_transaction!(self, |tx| async {
            let not_found = || Failure::Domain(Error::new(Reason::TOKEN_NOT_FOUND, "no such token"));
            let digest = &&token_digest.0[..];
            let (link, locked) = match tx.query_opt(&tx.prepare_cached(&unused_sql).await?, &[digest]).await? {
                Some(row) => (rows::link(&row)?, true),
                // Used (the decision refuses it without writing), or not there at all.
                None => match tx.query_opt(&tx.prepare_cached(&link_sql).await?, &[digest]).await? {
                    Some(row) => (rows::link(&row)?, false),
                    None => return Err(not_found()),
                },
            };
            let (user_sql, attempt_sql) = match locked {
                true => (&locked_user_sql, &locked_attempt_sql),
                false => (&user_sql, &attempt_sql),
            };
            let user = match tx
                .query_opt(&tx.prepare_cached(user_sql).await?, &[&link.user_id])
                .await?
            {
                Some(row) => rows::user(&row)?,
                None => return Err(not_found()),
            };
            let attempt = match &link.attempt {
                Some(ref_digest) => match tx
                    .query_opt(&tx.prepare_cached(attempt_sql).await?, &[&&ref_digest.0[..]])
                    .await?
                {
                    Some(row) => Some(rows::attempt(&row)?),
                    None => return Err(not_found()),
                },
                None => None,
            };
            // Unlocked rows are those of a used link, which the decision refuses before anything
            // is written (an unused one is always returned by the locking read, once any call
            // that refused it has rolled back).
            let redemption = decide(&link, &user, attempt.as_ref())?;
            if let Some(attempt) = &redemption.attempt {
                update_attempt_row(&tx, attempt).await?;
            }
            if let Some(code) = &redemption.code {
                insert_code_row(&tx, code, code.expires_at + retention).await?;
            }
            tx.execute(
                &tx.prepare_cached("UPDATE links SET used_at = $2, otp_failures = $3 WHERE token_digest = $1")
                    .await?,
                &[
                    &&token_digest.0[..],
                    &redemption.link.used_at,
                    &redemption.link.otp.map(|otp| i16::from(otp.failures)),
                ],
            )
            .await?;
            update_user_row(&tx, &redemption.user).await?;
            if let Some(session) = &redemption.session {
                insert_session_row(&tx, session, session.expires_at + retention).await?;
            }
            Step::Ok(redemption)
        })
    }

    async fn session(&self, session_id: &str) -> Result<Option<Session>> {
        let sql = format!("SELECT {} FROM sessions WHERE id = $1", rows::SESSION);
        on_connection!(self, |client| async {
            let row = client
                .query_opt(&client.prepare_cached(&sql).await?, &[&session_id])
                .await?;
            Ok(row.as_ref().map(rows::session).transpose()?)
        })
    }

    async fn session_by_token(&self, token_digest: &Digest32) -> Result<Option<Session>> {
        let sql = format!("SELECT {} FROM sessions WHERE token_digest = $1", rows::SESSION);
        on_connection!(self, |client| async {
            let row = client
                .query_opt(&client.prepare_cached(&sql).await?, &[&&token_digest.0[..]])
                .await?;
            Ok(row.as_ref().map(rows::session).transpose()?)
        })
    }

    async fn revoke_session(&self, session_id: &str, now: Millis) -> Result<Option<Session>> {
        let sql = format!(
            "UPDATE sessions SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING {}",
            rows::SESSION
        );
        on_connection!(write self, |client| async {
            let row = client
                .query_opt(&client.prepare_cached(&sql).await?, &[&session_id, &now])
                .await?;
            Ok(row.as_ref().map(rows::session).transpose()?)
        })
    }

    async fn list_user_sessions(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: usize,
        live: LiveAt,
    ) -> Result<Vec<Session>> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE user_id = $1 AND id > $2 AND revoked_at IS NULL AND expires_at > $3 \
             AND created_at > $4 ORDER BY id LIMIT $5",
            rows::SESSION
        );
        let after = after.unwrap_or_default();
        let revoked_through = live.revoked_through.unwrap_or(Millis::MIN);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        on_connection!(self, |client| async {
            let found = client
                .query(
                    &client.prepare_cached(&sql).await?,
                    &[&user_id, &after, &live.now, &revoked_through, &limit],
                )
                .await?;
            Ok(found.iter().map(rows::session).collect::<Result<Vec<_>>>()?)
        })
    }

    async fn touch_session(&self, session_id: &str, now: Millis) -> Result<bool> {
        let sql = "UPDATE sessions SET last_authenticated_at = $2 WHERE id = $1 \
                   AND (last_authenticated_at IS NULL OR last_authenticated_at <= $3)";
        in_transaction!(self, |tx| async {
            // The time is a hint, to the minute, on AuthenticateSession's hot path: its commit
            // waits neither for a WAL flush nor for a synchronous standby. A crash or a failover may
            // lose the last minute's.
            tx.batch_execute("SET LOCAL synchronous_commit = off").await?;
            let touched = tx
                .execute(
                    &tx.prepare_cached(sql).await?,
                    &[&session_id, &now, &(now - TOUCH_INTERVAL)],
                )
                .await?;
            Step::Ok(touched == 1)
        })
    }

    async fn revoke_user_sessions(&self, user_id: &str, now: Millis) -> Result<u32> {
        in_transaction!(self, |tx| async {
            tx.execute(
                &tx.prepare_cached("UPDATE users SET sessions_revoked_at = $2 WHERE id = $1")
                    .await?,
                &[&user_id, &now],
            )
            .await?;
            revoke_live_sessions(&tx, user_id, now).await
        })
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
        let retention = self.retention;
        in_transaction!(self, |tx| async {
            if let Some(charge) = rate {
                // Created if missing, then locked: concurrent sends on every replica queue here.
                tx.execute(
                    &tx.prepare_cached(
                        "INSERT INTO rate_buckets (key, tokens, updated_at, full_at) VALUES ($1, $2, $3, $3) \
                     ON CONFLICT (key) DO NOTHING",
                    )
                    .await?,
                    &[&charge.key, &f64::from(charge.limit.burst), &now],
                )
                .await?;
                let row = tx
                    .query_one(
                        &tx.prepare_cached(
                            "SELECT tokens, updated_at, full_at FROM rate_buckets WHERE key = $1 FOR UPDATE",
                        )
                        .await?,
                        &[&charge.key],
                    )
                    .await?;
                let old = RateBucket {
                    tokens: row.get(0),
                    updated_at: row.get(1),
                    full_at: row.get(2),
                };
                let new = charge
                    .limit
                    .take(Some(&old), now)
                    .map_err(|retry_after| Error::RateLimited { retry_after })?;
                tx.execute(
                    &tx.prepare_cached(
                        "UPDATE rate_buckets SET tokens = $2, updated_at = $3, full_at = $4 WHERE key = $1",
                    )
                    .await?,
                    &[&charge.key, &new.tokens, &new.updated_at, &new.full_at],
                )
                .await?;
            }
            match new_user {
                Some(user) => insert_user(&tx, user).await?,
                None => {
                    let exists = tx
                        .query_opt(
                            &tx.prepare_cached("SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE")
                                .await?,
                            &[&email.user_id],
                        )
                        .await?;
                    if exists.is_none() {
                        return Err(Error::new(Reason::USER_NOT_FOUND, "no user with this user_id").into());
                    }
                }
            }
            for link in links {
                insert_link_row(&tx, link, link.expires_at + retention).await?;
            }
            if let Some(attempt) = attempt {
                insert_attempt_row(&tx, attempt, attempt.expires_at + retention).await?;
            }
            write_email_row(&tx, email, email.link_expires_at + retention).await?;
            Step::Ok(())
        })
    }

    async fn email(&self, email_id: &str) -> Result<Option<Email>> {
        let sql = format!("SELECT {} FROM emails WHERE id = $1", rows::EMAIL);
        on_connection!(self, |client| async {
            let row = client
                .query_opt(&client.prepare_cached(&sql).await?, &[&email_id])
                .await?;
            Ok(row.as_ref().map(rows::email).transpose()?)
        })
    }

    async fn claim_emails(&self, claim: OutboxClaim) -> Result<Vec<Email>> {
        let sql = format!(
            "UPDATE emails SET status = 1, attempts = attempts + 1, next_attempt_at = $2 \
             WHERE id = ANY(ARRAY(SELECT id FROM emails WHERE status IN (0, 1) AND next_attempt_at <= $1 \
                                  ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)) \
             RETURNING {}",
            rows::EMAIL
        );
        let lease_end = claim.now + claim.lease;
        let limit = claim.limit as i64;
        on_connection!(write self, |client| async {
            let claimed = client
                .query(&client.prepare_cached(&sql).await?, &[&claim.now, &lease_end, &limit])
                .await?;
            let mut claimed = claimed.iter().map(rows::email).collect::<Result<Vec<_>>>()?;
            claimed.sort_by_key(|email| (email.created_at, email.id.clone()));
            Ok(claimed)
        })
    }

    async fn finish_emails(&self, emails: &[Email]) -> Result<Vec<bool>> {
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = emails.iter().map(|email| email.id.as_str()).collect();
        let attempts: Vec<i32> = emails.iter().map(|email| email.attempts as i32).collect();
        let statuses: Vec<i16> = emails.iter().map(|email| rows::email_status(email.status)).collect();
        let errors: Vec<Option<&str>> = emails.iter().map(|email| email.last_error.as_deref()).collect();
        let next: Vec<Millis> = emails.iter().map(|email| email.next_attempt_at).collect();
        let sent: Vec<Option<Millis>> = emails.iter().map(|email| email.sent_at).collect();
        let recorded: std::collections::HashSet<String> = on_connection!(write self, |client| async {
            let rows = client
                .query(
                    &client
                        .prepare_cached(
                            "UPDATE emails AS e SET status = u.status, last_error = u.last_error, \
                             next_attempt_at = u.next_attempt_at, sent_at = u.sent_at \
                     FROM unnest($1::text[], $2::integer[], $3::smallint[], $4::text[], $5::bigint[], $6::bigint[]) \
                          AS u(id, attempts, status, last_error, next_attempt_at, sent_at) \
                     WHERE e.id = u.id AND e.status = 1 AND e.attempts = u.attempts \
                     RETURNING e.id",
                        )
                        .await?,
                    &[&ids, &attempts, &statuses, &errors, &next, &sent],
                )
                .await?;
            Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
        })?;
        Ok(emails.iter().map(|email| recorded.contains(&email.id)).collect())
    }

    async fn next_email_due(&self) -> Result<Option<Millis>> {
        on_connection!(self, |client| async {
            let row = client
                .query_one(
                    &client
                        .prepare_cached("SELECT min(next_attempt_at) FROM emails WHERE status IN (0, 1)")
                        .await?,
                    &[],
                )
                .await?;
            Ok(row.get::<_, Option<Millis>>(0))
        })
    }

    async fn outbox_depth(&self) -> Result<OutboxDepth> {
        on_connection!(self, |client| async {
            let row = client
                .query_one(
                    &client
                        .prepare_cached(
                            "SELECT count(*) FILTER (WHERE status = 0), count(*) FILTER (WHERE status = 1) \
                     FROM emails WHERE status IN (0, 1)",
                        )
                        .await?,
                    &[],
                )
                .await?;
            Ok(OutboxDepth {
                queued: row.get::<_, i64>(0) as u64,
                sending: row.get::<_, i64>(1) as u64,
            })
        })
    }

    async fn insert_code(&self, code: &AuthCode) -> Result<()> {
        let purge_at = code.expires_at + self.retention;
        in_transaction!(self, |tx| async {
            insert_code_row(&tx, code, purge_at).await?;
            Step::Ok(())
        })
    }

    async fn redeem_code(&self, code_digest: &Digest32, decide: RedeemCodeFn<'_>) -> Result<CodeRedemption> {
        let code_sql = format!("SELECT {} FROM codes WHERE code_digest = $1 FOR UPDATE", rows::CODE);
        let user_sql = format!("SELECT {} FROM users WHERE id = $1 FOR KEY SHARE", rows::USER);
        let retention = self.retention;
        in_transaction!(self, |tx| async {
            let not_found = || Failure::Domain(Error::new(Reason::CODE_NOT_FOUND, "no such authorization code"));
            let code = match tx
                .query_opt(&tx.prepare_cached(&code_sql).await?, &[&&code_digest.0[..]])
                .await?
            {
                Some(row) => rows::code(&row)?,
                None => return Err(not_found()),
            };
            // A deleted user's codes are void, as their links are.
            let user = match tx
                .query_opt(&tx.prepare_cached(&user_sql).await?, &[&code.user_id])
                .await?
            {
                Some(row) => rows::user(&row)?,
                None => return Err(not_found()),
            };
            let redemption = decide(&code, &user)?;
            tx.execute(
                &tx.prepare_cached("UPDATE codes SET used_at = $2, session_id = $3 WHERE code_digest = $1")
                    .await?,
                &[
                    &&code_digest.0[..],
                    &redemption.code.used_at,
                    &redemption.code.session_id,
                ],
            )
            .await?;
            if let Some(session) = &redemption.session {
                insert_session_row(&tx, session, session.expires_at + retention).await?;
            }
            if let Some((session_id, at)) = &redemption.revoke_session {
                tx.execute(
                    &tx.prepare_cached("UPDATE sessions SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1")
                        .await?,
                    &[session_id, at],
                )
                .await?;
            }
            Step::Ok(redemption)
        })
    }

    async fn attempt(&self, ref_digest: &Digest32) -> Result<Option<Attempt>> {
        let sql = format!("SELECT {} FROM attempts WHERE ref_digest = $1", rows::ATTEMPT);
        on_connection!(self, |client| async {
            let row = client
                .query_opt(&client.prepare_cached(&sql).await?, &[&&ref_digest.0[..]])
                .await?;
            Ok(row.as_ref().map(rows::attempt).transpose()?)
        })
    }

    async fn collect_attempt(&self, ref_digest: &Digest32, session: &Session) -> Result<Option<Collection>> {
        let collect_sql = format!(
            "UPDATE attempts SET status = $2, session_id = $3 WHERE ref_digest = $1 AND status = $4 RETURNING {}",
            rows::ATTEMPT
        );
        let read_sql = format!("SELECT {} FROM attempts WHERE ref_digest = $1", rows::ATTEMPT);
        let purge_at = self.purge_at(session.expires_at);
        in_transaction!(self, |tx| async {
            let collected = tx
                .query_opt(
                    &tx.prepare_cached(&collect_sql).await?,
                    &[
                        &&ref_digest.0[..],
                        &rows::attempt_status(AttemptStatus::Collected),
                        &session.id,
                        &rows::attempt_status(AttemptStatus::Verified),
                    ],
                )
                .await?;
            if let Some(row) = collected {
                insert_session_row(&tx, session, purge_at).await?;
                return Step::Ok(Some(Collection::Collected(rows::attempt(&row)?)));
            }
            let current = tx
                .query_opt(&tx.prepare_cached(&read_sql).await?, &[&&ref_digest.0[..]])
                .await?;
            Ok(current
                .as_ref()
                .map(rows::attempt)
                .transpose()?
                .map(Collection::Unchanged))
        })
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        on_connection!(self, |client| async {
            let row = client
                .query_one(
                    &client
                        .prepare_cached("SELECT keys FROM signing_keys WHERE id = 1")
                        .await?,
                    &[],
                )
                .await?;
            Ok(rows::keys_of(row.get(0))?)
        })
    }

    async fn replace_signing_keys(&self, expected: &[SigningKeyRecord], new: &[SigningKeyRecord]) -> Result<bool> {
        let (expected, new) = (rows::keys_to_json(expected), rows::keys_to_json(new));
        on_connection!(write self, |client| async {
            let swapped = client
                .execute(
                    &client
                        .prepare_cached("UPDATE signing_keys SET keys = $2 WHERE id = 1 AND keys = $1")
                        .await?,
                    &[&expected, &new],
                )
                .await?;
            Ok(swapped == 1)
        })
    }

    async fn claim_idempotency_key(&self, claim: IdempotencyClaim<'_>) -> Result<IdempotencyState> {
        let (key, request, claimant) = (&claim.key.0[..], &claim.request.0[..], &claim.claimant.0[..]);
        let (lease_until, expires_at) = (claim.now + claim.lease, claim.now + claim.keep);
        on_connection!(write self, |client| async {
            // New, past its keep, or left without an answer by a claimant whose lease ran out.
            let claimed = client
                .query_opt(
                    &client
                        .prepare_cached(
                            "INSERT INTO idempotency_keys \
                             (key_digest, request_digest, answer, lease_until, expires_at, claimant) \
                             VALUES ($1, $2, NULL, $3, $4, $6) ON CONFLICT (key_digest) DO UPDATE \
                             SET request_digest = $2, answer = NULL, lease_until = $3, expires_at = $4, claimant = $6 \
                             WHERE idempotency_keys.expires_at <= $5 OR (idempotency_keys.answer IS NULL \
                               AND idempotency_keys.request_digest = $2 AND idempotency_keys.lease_until <= $5) \
                             RETURNING 1",
                        )
                        .await?,
                    &[&key, &request, &lease_until, &expires_at, &claim.now, &claimant],
                )
                .await?;
            if claimed.is_some() {
                return Step::Ok(IdempotencyState::Claimed);
            }
            let held = client
                .query_opt(
                    &client
                        .prepare_cached("SELECT request_digest, answer FROM idempotency_keys WHERE key_digest = $1")
                        .await?,
                    &[&key],
                )
                .await?;
            Ok(match held {
                Some(row) if row.get::<_, &[u8]>(0) != request => IdempotencyState::Reused,
                Some(row) => match row.get::<_, Option<Vec<u8>>>(1) {
                    Some(answer) => IdempotencyState::Answered(answer),
                    None => IdempotencyState::Running,
                },
                // Purged between the two statements: the repeat claims it next time.
                None => IdempotencyState::Running,
            })
        })
    }

    async fn settle_idempotency_key(&self, key: &Digest32, claimant: &Claimant, answer: Option<&[u8]>) -> Result<()> {
        let (key, claimant) = (&key.0[..], &claimant.0[..]);
        // A NULL claimant (a row claimed before claimants) equals nothing: such a row is settled by
        // no call and waits out its lease.
        on_connection!(write self, |client| async {
            match answer {
                Some(answer) => {
                    client
                        .execute(
                            &client
                                .prepare_cached(
                                    "UPDATE idempotency_keys SET answer = $3 \
                                     WHERE key_digest = $1 AND claimant = $2",
                                )
                                .await?,
                            &[&key, &claimant, &answer],
                        )
                        .await?
                }
                None => {
                    client
                        .execute(
                            &client
                                .prepare_cached(
                                    "DELETE FROM idempotency_keys \
                                     WHERE key_digest = $1 AND claimant = $2 AND answer IS NULL",
                                )
                                .await?,
                            &[&key, &claimant],
                        )
                        .await?
                }
            };
            Step::Ok(())
        })
    }

    async fn purge_expired(&self, now: Millis, limit: usize) -> Result<usize> {
        // Each table in turn, a batch at a time; rows another replica is purging are skipped.
        const TABLES: [(&str, &str, &str); 7] = [
            ("links", "token_digest", "purge_at"),
            ("sessions", "id", "purge_at"),
            ("emails", "id", "purge_at"),
            ("attempts", "ref_digest", "purge_at"),
            ("codes", "code_digest", "purge_at"),
            ("rate_buckets", "key", "full_at"),
            ("idempotency_keys", "key_digest", "expires_at"),
        ];
        let mut purged = 0;
        for (table, key, due) in TABLES {
            if purged >= limit {
                break;
            }
            let sql = format!(
                "DELETE FROM {table} WHERE {key} = ANY(ARRAY( \
                 SELECT {key} FROM {table} WHERE {due} < $1 LIMIT $2 FOR UPDATE SKIP LOCKED))"
            );
            let batch = (limit - purged) as i64;
            let removed = on_connection!(write self, |client| async {
                let removed = client
                    .execute(&client.prepare_cached(&sql).await?, &[&now, &batch])
                    .await?;
                Step::Ok(removed as usize)
            })?;
            purged += removed;
        }
        Ok(purged)
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        connect::register_metrics(registry, self.pool.clone());
    }

    fn refuses_writes(&self) -> bool {
        self.unreachable.load(Ordering::Relaxed)
    }

    fn needs_restart(&self) -> bool {
        false
    }

    async fn close(&self) -> Result<()> {
        self.stop.cancel();
        self.pool.close();
        Ok(())
    }
}
