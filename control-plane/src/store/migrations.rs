//! Versioned schema migrations, embedded in the binary and applied at start-up. Each version
//! has a SQLite and a Postgres twin (same tables and meanings, each database's own DDL).

use std::borrow::Cow;

use sqlx::AnyPool;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::{Backend, StoreResult};

/// (version, description, SQLite DDL, Postgres DDL), in order. Never edit a released entry:
/// add a new version (sqlx refuses a database whose applied migration changed).
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[(
    1,
    "initial",
    include_str!("../../migrations/sqlite/0001_initial.sql"),
    include_str!("../../migrations/postgres/0001_initial.sql"),
)];

pub(super) fn migrator(backend: Backend) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sqlite, postgres)| {
            let sql = if backend == Backend::Sqlite { sqlite } else { postgres };
            Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, Cow::Borrowed(*sql), false)
        })
        .collect();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

pub(super) async fn apply(pool: &AnyPool, backend: Backend) -> StoreResult<()> {
    migrator(backend).run(pool).await.map_err(|e| super::StoreError::Database(e.into()))
}
