//! Virtual keys: one row per key (its identity survives rotation) and its SHA-256 digests in
//! `key_hashes` (the current one, plus the previous one during a rotation's grace period).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{LimitsRecord, NewAudit, SqlStore, StoreError, StoreResult, from_json, now_ms, to_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    LlmApi,
    Management,
    ReadOnly,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LlmApi => "llm_api",
            Self::Management => "management",
            Self::ReadOnly => "read_only",
        }
    }

    fn parse(s: &str) -> StoreResult<Self> {
        match s {
            "llm_api" => Ok(Self::LlmApi),
            "management" => Ok(Self::Management),
            "read_only" => Ok(Self::ReadOnly),
            other => Err(StoreError::Corrupt(format!("key_type {other:?}"))),
        }
    }
}

/// Per-model limits, keyed by model group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelLimits {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rpm: BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tpm: BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_budget_nanos: BTreeMap<String, i64>,
}

/// A key as stored: no plaintext and no digest (those live in `key_hashes` only). This is also
/// the shape written to audit rows, so it must never gain a secret field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub key_prefix: String,
    pub last4: String,
    pub key_alias: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub organization_id: Option<String>,
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: LimitsRecord,
    pub model_limits: ModelLimits,
    pub allowed_routes: Vec<String>,
    /// Client addresses (CIDRs) the key may be used from; empty: any.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    pub metadata: serde_json::Value,
    pub tags: Vec<String>,
    pub key_type: KeyType,
    pub blocked: bool,
    pub expires_at: Option<i64>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
    #[serde(skip)]
    pub version: i64,
    /// While a rotation's grace period runs: when the previous digest stops working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_key_valid_until: Option<i64>,
}

/// How a caller names a key.
#[derive(Debug, Clone)]
pub enum KeyLookup {
    Id(String),
    Alias(String),
    /// `sha256:<hex>` of the key.
    Hash(String),
}

#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub key_alias: Option<String>,
    /// Keyset pagination: keys with a larger id than this.
    pub after_key_id: Option<String>,
    pub limit: u32,
    /// A scoped caller's view (None: everything).
    pub visible_to: Option<Visibility>,
}

/// The keys a scoped caller may see: its own, its administered teams', its organization's.
#[derive(Debug, Clone, Default)]
pub struct Visibility {
    pub user_id: Option<String>,
    pub admin_teams: Vec<String>,
    pub organization_id: Option<String>,
}

pub trait KeyStore {
    /// Inserts a key with its first digest, and the audit row, in one transaction.
    fn insert_key(
        &self,
        key: &KeyRecord,
        key_hash: &str,
        audit: NewAudit,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    fn get_key(&self, lookup: &KeyLookup) -> impl Future<Output = StoreResult<KeyRecord>> + Send;
    /// Applies `change` to the current record with the row held, so concurrent updates queue
    /// and each sees the previous one; audited with before and after.
    fn update_key<F>(
        &self,
        key_id: &str,
        change: F,
        audit: NewAudit,
    ) -> impl Future<Output = StoreResult<KeyRecord>> + Send
    where
        F: Fn(&mut KeyRecord) -> Result<(), StoreError> + Send + Sync;
    /// Replaces the key's digest with `new_hash`; the old digest keeps working until
    /// `old_valid_until` (None: it stops now).
    fn rotate_key(
        &self,
        key_id: &str,
        new_hash: &str,
        new_prefix: &str,
        new_last4: &str,
        old_valid_until: Option<i64>,
        audit: NewAudit,
    ) -> impl Future<Output = StoreResult<KeyRecord>> + Send;
    fn delete_key(&self, key_id: &str, audit: NewAudit) -> impl Future<Output = StoreResult<()>> + Send;
    /// One page, ordered by key id; and the total matching (without pagination).
    fn list_keys(&self, filter: &KeyFilter) -> impl Future<Output = StoreResult<(Vec<KeyRecord>, u64)>> + Send;
}

const KEY_COLUMNS: &str = "k.key_id, k.key_prefix, k.last4, k.key_alias, k.user_id, k.team_id, k.organization_id, \
    k.models, k.rpm_limit, k.tpm_limit, k.max_parallel_requests, k.max_budget_nanos, k.soft_budget_nanos, \
    k.budget_duration, k.model_limits, k.allowed_routes, k.metadata, k.tags, k.key_type, k.blocked, k.expires_at, \
    k.allowed_ips, k.created_by, k.created_at, k.updated_at, k.last_used_at, k.version, \
    (SELECT MAX(h.valid_until) FROM key_hashes h WHERE h.key_id = k.key_id AND h.valid_until IS NOT NULL) AS previous_valid_until";

fn record_from_row(row: &AnyRow) -> StoreResult<KeyRecord> {
    Ok(KeyRecord {
        key_id: row.try_get("key_id")?,
        key_prefix: row.try_get("key_prefix")?,
        last4: row.try_get("last4")?,
        key_alias: row.try_get("key_alias")?,
        user_id: row.try_get("user_id")?,
        team_id: row.try_get("team_id")?,
        organization_id: row.try_get("organization_id")?,
        models: from_json("models", &row.try_get::<String, _>("models")?)?,
        limits: LimitsRecord::from_row(row)?,
        model_limits: from_json("model_limits", &row.try_get::<String, _>("model_limits")?)?,
        allowed_routes: from_json("allowed_routes", &row.try_get::<String, _>("allowed_routes")?)?,
        allowed_ips: from_json("allowed_ips", &row.try_get::<String, _>("allowed_ips")?)?,
        metadata: from_json("metadata", &row.try_get::<String, _>("metadata")?)?,
        tags: from_json("tags", &row.try_get::<String, _>("tags")?)?,
        key_type: KeyType::parse(&row.try_get::<String, _>("key_type")?)?,
        blocked: row.try_get::<i64, _>("blocked")? != 0,
        expires_at: row.try_get("expires_at")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_used_at: row.try_get("last_used_at")?,
        version: row.try_get("version")?,
        previous_key_valid_until: row.try_get("previous_valid_until")?,
    })
}

/// Binds every column of a record, in the order of the INSERT and UPDATE statements below.
macro_rules! bind_key_fields {
    ($query:expr, $k:expr) => {
        bind_limits!(
            $query
                .bind($k.key_prefix.clone())
                .bind($k.last4.clone())
                .bind($k.key_alias.clone())
                .bind($k.user_id.clone())
                .bind($k.team_id.clone())
                .bind($k.organization_id.clone())
                .bind(to_json(&$k.models)),
            $k.limits
        )
        .bind(to_json(&$k.model_limits))
        .bind(to_json(&$k.allowed_routes))
        .bind(to_json(&$k.metadata))
        .bind(to_json(&$k.tags))
        .bind($k.key_type.as_str())
        .bind(i64::from($k.blocked))
        .bind($k.expires_at)
        .bind(to_json(&$k.allowed_ips))
    };
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds `$1`..`$8` of `list_keys`' conditions.
fn bind_list_conditions<'q>(q: AnyQuery<'q>, filter: &KeyFilter, scoped: i64, visible: &Visibility) -> AnyQuery<'q> {
    q.bind(filter.team_id.clone())
        .bind(filter.user_id.clone())
        .bind(filter.organization_id.clone())
        .bind(filter.key_alias.clone())
        .bind(scoped)
        .bind(visible.user_id.clone())
        .bind(to_json(&visible.admin_teams))
        .bind(visible.organization_id.clone())
}

impl SqlStore {
    /// Reads a key inside `tx`, holding its row (see `row_lock`).
    async fn locked_key(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>, key_id: &str) -> StoreResult<KeyRecord> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.key_id = $1{}", self.row_lock()))
            .bind(key_id.to_owned())
            .fetch_optional(&mut **tx)
            .await?;
        row.as_ref().map(record_from_row).transpose()?.ok_or(StoreError::NotFound)
    }
}

impl KeyStore for SqlStore {
    async fn insert_key(&self, key: &KeyRecord, key_hash: &str, audit: NewAudit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let insert = sqlx::query(
            "INSERT INTO keys (key_id, key_prefix, last4, key_alias, user_id, team_id, organization_id, models, \
             rpm_limit, tpm_limit, max_parallel_requests, max_budget_nanos, soft_budget_nanos, budget_duration, \
             model_limits, allowed_routes, metadata, tags, key_type, blocked, expires_at, allowed_ips, created_by, \
             created_at, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
             $22, $23, $24, $25, 1)",
        )
        .bind(key.key_id.clone());
        bind_key_fields!(insert, key)
            .bind(key.created_by.clone())
            .bind(key.created_at)
            .bind(key.updated_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO key_hashes (key_hash, key_id, valid_until) VALUES ($1, $2, NULL)")
            .bind(key_hash.to_owned())
            .bind(key.key_id.clone())
            .execute(&mut *tx)
            .await?;
        audit.with_after(key).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_key(&self, lookup: &KeyLookup) -> StoreResult<KeyRecord> {
        let now = now_ms();
        let row = match lookup {
            KeyLookup::Id(id) => {
                sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.key_id = $1"))
                    .bind(id.clone())
                    .fetch_optional(&self.pool)
                    .await?
            }
            KeyLookup::Alias(alias) => {
                sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.key_alias = $1"))
                    .bind(alias.clone())
                    .fetch_optional(&self.pool)
                    .await?
            }
            KeyLookup::Hash(hash) => {
                // A digest past its grace period no longer names the key.
                sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys k JOIN key_hashes h0 ON h0.key_id = k.key_id \
                     WHERE h0.key_hash = $1 AND (h0.valid_until IS NULL OR h0.valid_until > $2)"
                ))
                .bind(hash.clone())
                .bind(now)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.as_ref().map(record_from_row).transpose()?.ok_or(StoreError::NotFound)
    }

    async fn update_key<F>(&self, key_id: &str, change: F, audit: NewAudit) -> StoreResult<KeyRecord>
    where
        F: Fn(&mut KeyRecord) -> Result<(), StoreError> + Send + Sync,
    {
        // Concurrent updates queue on the held row, and each applies to the latest version.
        let mut tx = self.pool.begin().await?;
        let before = self.locked_key(&mut tx, key_id).await?;
        let mut after = before.clone();
        change(&mut after)?;
        after.updated_at = now_ms().max(before.updated_at);
        let update = sqlx::query(
            "UPDATE keys SET key_prefix = $1, last4 = $2, key_alias = $3, user_id = $4, team_id = $5, \
             organization_id = $6, models = $7, rpm_limit = $8, tpm_limit = $9, max_parallel_requests = $10, \
             max_budget_nanos = $11, soft_budget_nanos = $12, budget_duration = $13, model_limits = $14, \
             allowed_routes = $15, metadata = $16, tags = $17, key_type = $18, blocked = $19, expires_at = $20, \
             allowed_ips = $21, updated_at = $22, version = version + 1 WHERE key_id = $23 AND version = $24",
        );
        let done = bind_key_fields!(update, after)
            .bind(after.updated_at)
            .bind(key_id.to_owned())
            .bind(before.version)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            // Only possible if something outside Sluice wrote the row without the lock.
            return Err(StoreError::Contended);
        }
        after.version = before.version + 1;
        audit.with_before(&before).with_after(&after).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn rotate_key(
        &self,
        key_id: &str,
        new_hash: &str,
        new_prefix: &str,
        new_last4: &str,
        old_valid_until: Option<i64>,
        audit: NewAudit,
    ) -> StoreResult<KeyRecord> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let before = self.locked_key(&mut tx, key_id).await?;
        // Digests from earlier rotations stop now; the current one gets the grace period.
        sqlx::query("DELETE FROM key_hashes WHERE key_id = $1 AND valid_until IS NOT NULL")
            .bind(key_id.to_owned())
            .execute(&mut *tx)
            .await?;
        match old_valid_until.filter(|until| *until > now) {
            Some(until) => {
                sqlx::query("UPDATE key_hashes SET valid_until = $1 WHERE key_id = $2")
                    .bind(until)
                    .bind(key_id.to_owned())
                    .execute(&mut *tx)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM key_hashes WHERE key_id = $1")
                    .bind(key_id.to_owned())
                    .execute(&mut *tx)
                    .await?
            }
        };
        sqlx::query("INSERT INTO key_hashes (key_hash, key_id, valid_until) VALUES ($1, $2, NULL)")
            .bind(new_hash.to_owned())
            .bind(key_id.to_owned())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE keys SET key_prefix = $1, last4 = $2, updated_at = $3, version = version + 1 WHERE key_id = $4",
        )
        .bind(new_prefix.to_owned())
        .bind(new_last4.to_owned())
        .bind(now)
        .bind(key_id.to_owned())
        .execute(&mut *tx)
        .await?;
        let mut after = before.clone();
        after.key_prefix = new_prefix.to_owned();
        after.last4 = new_last4.to_owned();
        after.updated_at = now;
        after.version += 1;
        after.previous_key_valid_until = old_valid_until.filter(|until| *until > now);
        audit.with_before(&before).with_after(&after).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn delete_key(&self, key_id: &str, audit: NewAudit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let before = self.locked_key(&mut tx, key_id).await?;
        sqlx::query("DELETE FROM key_hashes WHERE key_id = $1").bind(key_id.to_owned()).execute(&mut *tx).await?;
        let done = sqlx::query("DELETE FROM keys WHERE key_id = $1").bind(key_id.to_owned()).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        audit.with_before(&before).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_keys(&self, filter: &KeyFilter) -> StoreResult<(Vec<KeyRecord>, u64)> {
        // Each condition is always present and switched off by a NULL parameter, so the SQL
        // text is constant and every value is bound.
        let (scoped, visible) = match &filter.visible_to {
            Some(v) => (1i64, v.clone()),
            None => (0i64, Visibility::default()),
        };
        let teams_source = match self.backend {
            super::Backend::Sqlite => "(SELECT value FROM json_each($7))",
            super::Backend::Postgres => "(SELECT jsonb_array_elements_text($7::jsonb))",
        };
        let conditions = format!(
            "($1 IS NULL OR k.team_id = $1) AND ($2 IS NULL OR k.user_id = $2) \
             AND ($3 IS NULL OR k.organization_id = $3) AND ($4 IS NULL OR k.key_alias = $4) \
             AND ($5 = 0 OR k.user_id = $6 OR k.team_id IN {teams_source} \
                  OR ($8 IS NOT NULL AND (k.organization_id = $8 \
                      OR k.team_id IN (SELECT t.team_id FROM teams t WHERE t.organization_id = $8) \
                      OR k.user_id IN (SELECT u.user_id FROM users u WHERE u.organization_id = $8))))"
        );
        let page_sql = format!(
            "SELECT {KEY_COLUMNS} FROM keys k WHERE {conditions} AND ($9 IS NULL OR k.key_id > $9) \
             ORDER BY k.key_id LIMIT $10"
        );
        let rows = bind_list_conditions(sqlx::query(&page_sql), filter, scoped, &visible)
            .bind(filter.after_key_id.clone())
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        let count_sql = format!("SELECT COUNT(*) AS n FROM keys k WHERE {conditions}");
        let total: i64 = bind_list_conditions(sqlx::query(&count_sql), filter, scoped, &visible)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let keys = rows.iter().map(record_from_row).collect::<StoreResult<Vec<_>>>()?;
        Ok((keys, u64::try_from(total).unwrap_or(0)))
    }
}
