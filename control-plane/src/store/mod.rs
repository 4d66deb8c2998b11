//! Storage: SQLite (embedded default) or Postgres, chosen by the database URL.
//!
//! Both go through sqlx's Any driver with one SQL text per query: `$1` placeholders work on
//! both, so every query is parameterised: SQL text is made of constants only, and every value
//! is bound. Columns are portable
//! types only (TEXT, BIGINT): money in integer nano-dollars, times in Unix milliseconds, flags
//! 0/1, lists and maps as JSON text. The test suite runs every query against both databases
//! (that is the "equally safe scheme" in place of compile-time checking, which sqlx offers for
//! one database type per query).
//!
//! Capabilities are traits ([`KeyStore`], [`AuditStore`]) so the admin service does not know
//! which database it has; [`SqlStore`] implements them for both.

/// Binds the six limit columns in `directory::LIMIT_COLUMNS` order (every table with limits
/// has these six columns).
macro_rules! bind_limits {
    ($query:expr, $l:expr) => {
        $query
            .bind($l.rpm_limit)
            .bind($l.tpm_limit)
            .bind($l.max_parallel_requests)
            .bind($l.max_budget_nanos)
            .bind($l.soft_budget_nanos)
            .bind($l.budget_duration.clone())
    };
}

mod audit;
mod directory;
mod keys;
pub mod migrations;
mod models;
mod spend;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

/// How long a query waits for a Postgres connection before it fails. sqlx's default (30 s)
/// keeps retrying a refused connection for that long, so while Postgres is down (restarting,
/// failing over) every call hung: a usage Report outlived the singleton's 10 s timeout without
/// ever being answered or counted as a failed batch, a key lookup outlived the filter's. Failing
/// within a few seconds answers UNAVAILABLE (the singleton retries the batch with backoff) and
/// shows in `sluice_usage_batches_failed_total`. SQLite keeps the default: its file does not go
/// away, so a wait there is only for its one connection.
pub const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `open` waits for the database to accept connections at start (it may be starting
/// too, as in a fresh deployment).
const STARTUP_WAIT: Duration = Duration::from_secs(30);

pub use audit::{AuditEntry, AuditFilter, AuditStore, NewAudit};
pub use directory::{
    BudgetRecord, CustomerRecord, DirectoryStore, Entity, LimitsRecord, ListFilter, MemberRecord, OrgRecord,
    TeamRecord, UserRecord,
};
pub use keys::{KeyFilter, KeyLookup, KeyRecord, KeyStore, KeyType, ModelLimits, Visibility};
pub use models::{ModelRecord, ModelStore, SyncReport};
pub use spend::{
    BudgetWindow, Charge, GroupBy, ScopeKind, SpendFilter, SpendLog, SpendRow, SpendStore, WindowTotal, day_of,
};

/// Every capability the admin API needs, in one bound.
pub trait Store: KeyStore + DirectoryStore + ModelStore + SpendStore + AuditStore + Send + Sync + 'static {}

impl<T: KeyStore + DirectoryStore + ModelStore + SpendStore + AuditStore + Send + Sync + 'static> Store for T {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug)]
pub enum StoreError {
    /// The object does not exist.
    NotFound,
    /// A unique value (an alias, an id) is taken.
    Conflict(String),
    /// Other objects still refer to this one (a team's organization, say).
    InUse(String),
    /// Another writer changed the object first, too many times in a row.
    Contended,
    /// The change function refused the current state of the object (it changed underneath).
    Refused(String),
    /// A stored value could not be read back (a bug or a hand-edited row).
    Corrupt(String),
    Database(sqlx::Error),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => write!(f, "not found"),
            Self::Conflict(what) => write!(f, "{what} already exists"),
            Self::InUse(what) => write!(f, "still referred to ({what})"),
            Self::Contended => write!(f, "the object is being changed concurrently; try again"),
            Self::Refused(why) => write!(f, "{why}"),
            Self::Corrupt(what) => write!(f, "stored data is unreadable: {what}"),
            Self::Database(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return Self::Conflict(db.constraint().unwrap_or("a unique value").to_owned());
        }
        if let sqlx::Error::Database(db) = &e
            && db.is_foreign_key_violation()
        {
            return Self::InUse(db.constraint().unwrap_or("a reference").to_owned());
        }
        if matches!(e, sqlx::Error::RowNotFound) {
            return Self::NotFound;
        }
        Self::Database(e)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The SQL implementation of every store trait.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

impl SqlStore {
    /// Connects (creating a SQLite file if it does not exist) and applies pending migrations.
    pub async fn open(database_url: &str) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let backend = if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            Backend::Postgres
        } else if database_url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Database(sqlx::Error::Configuration(
                "database_url must start with sqlite: or postgres://".into(),
            )));
        };
        let url = match backend {
            // Create the file on first start; foreign keys are on by default in sqlx's SQLite.
            Backend::Sqlite if !database_url.contains("mode=") => {
                let sep = if database_url.contains('?') { '&' } else { '?' };
                format!("{database_url}{sep}mode=rwc")
            }
            _ => database_url.to_owned(),
        };
        let pool = connect(&url, backend, STARTUP_WAIT).await?;
        let store = Self { pool, backend };
        migrations::apply(&store.pool, backend).await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The suffix that makes a SELECT inside a transaction hold the rows it read until the
    /// transaction ends: `FOR UPDATE` on Postgres; nothing on SQLite, which has one writer at
    /// a time (and this pool one connection). Mutations read their "before" this way, so
    /// concurrent ones queue and each audits exactly what it changed.
    fn row_lock(&self) -> &'static str {
        if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" }
    }
}

/// The pool for a database, once it accepts a connection: a refused connection is retried until
/// `wait` has passed (errors such as a bad password or a missing database end it at once).
async fn connect(url: &str, backend: Backend, wait: Duration) -> Result<AnyPool, sqlx::Error> {
    let options = match backend {
        Backend::Sqlite => AnyPoolOptions::new().max_connections(1),
        Backend::Postgres => AnyPoolOptions::new().max_connections(10).acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT),
    };
    let pool = options.connect_lazy(url)?;
    let deadline = Instant::now() + wait;
    loop {
        match pool.acquire().await {
            Ok(_) => return Ok(pool),
            Err(sqlx::Error::PoolTimedOut) if Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// JSON text of a value for a TEXT column (lists, maps, audit snapshots).
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Postgres refusing connections (down, restarting): each wait for a connection ends after
    /// `POSTGRES_ACQUIRE_TIMEOUT`, not sqlx's 30 s, and at start `open` keeps trying for as long
    /// as it was told to.
    #[tokio::test]
    async fn a_postgres_that_refuses_connections_fails_calls_within_the_acquire_timeout() {
        sqlx::any::install_default_drivers();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("postgres://sluice@127.0.0.1:{port}/sluice");
        let wait = Duration::from_secs(4);
        let started = Instant::now();
        let err = connect(&url, Backend::Postgres, wait).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err}");
        assert!(took >= wait, "kept trying at start: {took:?}");
        assert!(took < wait + POSTGRES_ACQUIRE_TIMEOUT + Duration::from_secs(1), "each attempt bounded: {took:?}");
    }
}
