//! Schema migrations, embedded in the binary and applied at start-up in one transaction under an
//! advisory lock, so replicas starting together migrate once (the others wait, then find nothing
//! to do). A database a newer binary migrated is refused: this binary does not know its tables.

use tokio_postgres::Client;

/// (version, SQL), in order. A released migration never changes; a new one goes last.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_idempotency_keys.sql")),
    (3, include_str!("migrations/0003_locales.sql")),
    (4, include_str!("migrations/0004_link_otp.sql")),
    (5, include_str!("migrations/0005_session_devices.sql")),
    (6, include_str!("migrations/0006_idempotency_claimant.sql")),
];

/// The advisory lock migrations hold ("latchkey" in ASCII); the same in every version.
const LOCK: i64 = 0x6c61_7463_686b_6579;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the database's schema is version {found}, newer than this binary knows ({known}): run a latchkey at least as new as the one that migrated it"
    )]
    Newer { found: i32, known: i32 },
    #[error("cannot migrate the database's schema: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// The newest schema this binary knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// Brings the schema to `latest()`; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    let tx = client.transaction().await?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS latchkey_migrations (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM latchkey_migrations", &[])
        .await?;
    let current: i32 = row.get(0);
    if current > latest() {
        return Err(MigrateError::Newer {
            found: current,
            known: latest(),
        });
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO latchkey_migrations (version) VALUES ($1)", &[version])
            .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}
