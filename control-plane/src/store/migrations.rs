//! Versioned schema migrations, embedded in the binary and applied at start-up. Each version
//! has a SQLite and a Postgres twin (same tables and meanings, each database's own DDL).

use std::borrow::Cow;

use sqlx::AnyPool;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::{Backend, StoreResult};

/// (version, description, SQLite DDL, Postgres DDL), in order. Never edit a released entry:
/// add a new version (sqlx refuses a database whose applied migration changed).
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "spend indexes",
        include_str!("../../migrations/sqlite/0002_spend_indexes.sql"),
        include_str!("../../migrations/postgres/0002_spend_indexes.sql"),
    ),
    (
        3,
        "budget windows",
        include_str!("../../migrations/sqlite/0003_budget_windows.sql"),
        include_str!("../../migrations/postgres/0003_budget_windows.sql"),
    ),
    (
        4,
        "spend price_unknown",
        include_str!("../../migrations/sqlite/0004_price_unknown.sql"),
        include_str!("../../migrations/postgres/0004_price_unknown.sql"),
    ),
    (
        5,
        "spend failed attempts",
        include_str!("../../migrations/sqlite/0005_failed_attempts.sql"),
        include_str!("../../migrations/postgres/0005_failed_attempts.sql"),
    ),
    (
        6,
        "key allowed_ips",
        include_str!("../../migrations/sqlite/0006_key_allowed_ips.sql"),
        include_str!("../../migrations/postgres/0006_key_allowed_ips.sql"),
    ),
    (
        7,
        "spend cache_hit",
        include_str!("../../migrations/sqlite/0007_spend_cache_hit.sql"),
        include_str!("../../migrations/postgres/0007_spend_cache_hit.sql"),
    ),
];

/// The migrator for `backend`, with every version up to `through` (tests build older schemas).
pub fn migrator_through(backend: Backend, through: i64) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .filter(|(version, ..)| *version <= through)
        .map(|(version, description, sqlite, postgres)| {
            let sql = if backend == Backend::Sqlite { sqlite } else { postgres };
            Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, Cow::Borrowed(*sql), false)
        })
        .collect();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

pub(super) async fn apply(pool: &AnyPool, backend: Backend) -> StoreResult<()> {
    migrator_through(backend, i64::MAX).run(pool).await.map_err(|e| super::StoreError::Database(e.into()))
}
