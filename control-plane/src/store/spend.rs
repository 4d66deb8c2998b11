//! Spend: one row per usage record (`spend_logs`, keyed by the filter's `record_id`, so a
//! replayed record changes nothing) and the daily aggregates per dimension (`daily_spend`),
//! updated in the same transaction as the rows they count.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

use sqlx::Row;

use super::{Backend, SqlStore, StoreResult, to_json};

/// One usage record as spend (what ingestion writes; the next issue feeds it from Envoy).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpendLog {
    pub record_id: String,
    pub request_id: String,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub customer_id: Option<String>,
    pub model_group: String,
    pub deployment_id: Option<String>,
    pub tags: Vec<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanos: i64,
    pub status: i64,
    pub outcome: String,
    pub estimated: bool,
    /// The deployment had no known price (its cost of 0 is not "free").
    pub price_unknown: bool,
    /// Answered from the response cache (LiteLLM's `cache_hit`): cost 0, no provider call.
    pub cache_hit: bool,
    pub start_ms: i64,
    /// The tries before the answer, `(deployment, error class)`: billed nothing.
    pub failed_attempts: Vec<(String, String)>,
}

/// `failed_attempts` as stored: `[{"deployment": …, "error": …}]`.
fn failed_attempts_json(attempts: &[(String, String)]) -> String {
    let rows: Vec<serde_json::Value> =
        attempts.iter().map(|(d, e)| serde_json::json!({"deployment": d, "error": e})).collect();
    serde_json::Value::Array(rows).to_string()
}

/// Whose budget a window counts; the kind names the `spend_logs` column that attributes a
/// record to it (ingestion enriches each record with its key's team, user and organization).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    Key,
    Team,
    User,
    Org,
    /// A user in one team (LiteLLM's team member budget): its id is
    /// [`sluice_core::config::member_scope_id`].
    Member,
    /// An end user (LiteLLM's customer), by `spend_logs.customer_id`.
    Customer,
    /// A key on one model group (LiteLLM's `model_max_budget`): its id is
    /// [`crate::budget::key_model_scope_id`].
    KeyModel,
    /// The whole gateway (LiteLLM's proxy budget): every record; its id is `proxy`.
    Proxy,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Team => "team",
            Self::User => "user",
            Self::Org => "org",
            Self::Member => "member",
            Self::Customer => "customer",
            Self::KeyModel => "key_model",
            Self::Proxy => "proxy",
        }
    }
}

/// One budget window of one scope: the records that started in [start_ms, end_ms) (Unix ms;
/// epoch-aligned; no end for a budget without a duration, whose one window starts at 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetWindow {
    pub kind: ScopeKind,
    pub id: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
}

/// A record of a batch that counts against a budget window, and the scope's thresholds (an
/// alert is claimed for a threshold the window's total has reached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The record's position in the batch.
    pub record: usize,
    pub window: BudgetWindow,
    pub soft_nanos: Option<i64>,
    pub max_nanos: Option<i64>,
}

/// A window a batch counted against, as the batch left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowTotal {
    pub window: BudgetWindow,
    /// The window's spend across the fleet, this batch included.
    pub spend_nanos: i64,
    /// The soft and max budgets this batch was the first (on any replica) to find reached in
    /// this window: the caller alerts for these, and nobody else will.
    pub soft_claimed: Option<i64>,
    pub max_claimed: Option<i64>,
}

/// What a spend report groups by: a `spend_logs` column, the day, or each tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Key,
    Team,
    User,
    Organization,
    Model,
    Tag,
    /// The request's end user (LiteLLM's customer).
    Customer,
}

#[derive(Debug, Clone, Default)]
pub struct SpendFilter {
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub model_group: Option<String>,
    pub tag: Option<String>,
    /// Inclusive `YYYY-MM-DD` bounds.
    pub start_day: Option<String>,
    pub end_day: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendRow {
    pub group: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanos: i64,
}

pub trait SpendStore {
    /// Writes records not seen before (by `record_id`) and their aggregates; returns how many
    /// were new. Replaying a batch is harmless.
    fn record_spend(&self, logs: &[SpendLog]) -> impl Future<Output = StoreResult<usize>> + Send;
    /// As `record_spend`, returning the positions (in `logs`) of the records that were new, and
    /// in the same transaction adds each new record's cost to the budget windows it is charged
    /// to (`budget_windows`), returning every window charged.
    fn record_charged_spend(
        &self,
        logs: &[SpendLog],
        charges: &[Charge],
    ) -> impl Future<Output = StoreResult<(Vec<usize>, Vec<WindowTotal>)>> + Send;
    /// A budget window's spend across the fleet, in nano-dollars (for a window no batch has
    /// charged yet, what `spend_logs` has for it). Reads only.
    fn window_spend(&self, window: &BudgetWindow) -> impl Future<Output = StoreResult<i64>> + Send;
    /// Every charged window of `kind` still open at `now_ms`: (scope id, window start, spend in
    /// nano-dollars). One read for all scopes of a kind (the filter config's customers).
    fn open_windows(
        &self,
        kind: ScopeKind,
        now_ms: i64,
    ) -> impl Future<Output = StoreResult<Vec<(String, i64, i64)>>> + Send;
    /// Forgets budget windows that ended before a time (Unix ms); returns how many.
    fn prune_budget_windows(&self, ended_before_ms: i64) -> impl Future<Output = StoreResult<u64>> + Send;
    fn query_spend(&self, filter: &SpendFilter, by: GroupBy)
    -> impl Future<Output = StoreResult<Vec<SpendRow>>> + Send;
    /// The rows `filter` (and a request id) selects, newest first: `limit` of them after the
    /// first `offset`, and how many there are in all.
    fn spend_logs(
        &self,
        filter: &SpendFilter,
        request_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> impl Future<Output = StoreResult<(Vec<SpendLog>, i64)>> + Send;
}

/// The `WHERE` of a `SpendFilter` over `spend_logs s`, its values bound as `$1`–`$8` by
/// [`bind_filter`] (totals and per-request rows select the same way).
fn filter_conditions(backend: Backend) -> String {
    let has_tag = match backend {
        Backend::Sqlite => "EXISTS (SELECT 1 FROM json_each(s.tags) WHERE value = $6)",
        Backend::Postgres => "(s.tags::jsonb ? $6)",
    };
    format!(
        "($1 IS NULL OR s.key_id = $1) AND ($2 IS NULL OR s.team_id = $2) \
         AND ($3 IS NULL OR s.user_id = $3) AND ($4 IS NULL OR s.organization_id = $4) \
         AND ($5 IS NULL OR s.model_group = $5) AND ($6 IS NULL OR {has_tag}) \
         AND ($7 IS NULL OR s.day >= $7) AND ($8 IS NULL OR s.day <= $8)"
    )
}

fn bind_filter<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    filter: &SpendFilter,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(filter.key_id.clone())
        .bind(filter.team_id.clone())
        .bind(filter.user_id.clone())
        .bind(filter.organization_id.clone())
        .bind(filter.model_group.clone())
        .bind(filter.tag.clone())
        .bind(filter.start_day.clone())
        .bind(filter.end_day.clone())
}

/// Rows per multi-row INSERT: well under both databases' bound-parameter limits (SQLite
/// 32,766; Postgres 65,535) at 18 and 7 columns.
const LOG_ROWS_PER_STATEMENT: usize = 500;
const DAILY_ROWS_PER_STATEMENT: usize = 1000;

/// `($1, $2, …), ($n+1, …)` for `rows` rows of `columns` bound values.
fn placeholders(rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            let sep = if c == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}${}", r * columns + c + 1);
        }
        out.push(')');
    }
    out
}

/// UTC day of a Unix-millisecond time.
pub fn day_of(ms: i64) -> String {
    sluice_core::time::format_rfc3339_ms(ms).chars().take(10).collect()
}

/// The `spend_logs` column that attributes a record to a scope of this kind.
fn column(kind: ScopeKind) -> &'static str {
    match kind {
        ScopeKind::Key => "key_id",
        ScopeKind::Team => "team_id",
        ScopeKind::User => "user_id",
        ScopeKind::Org => "organization_id",
        // `member_scope_id` in SQL (the same `|`); NULL when either is: a record without a
        // team or a user is no member's.
        ScopeKind::Member => "(team_id || '|' || user_id)",
        ScopeKind::Customer => "customer_id",
        ScopeKind::KeyModel => "(key_id || '|' || model_group)",
        // Compared with the scope's id, `proxy`: every record.
        ScopeKind::Proxy => "'proxy'",
    }
}

/// A window's records as `spend_logs` bounds: [lo, hi) on `start_ms`, and the same as an
/// inclusive range of `day`s (which is what the spend indexes are on).
fn bounds(window: &BudgetWindow) -> (i64, i64, String, String) {
    let hi = window.end_ms.unwrap_or(i64::MAX);
    let last_day = match window.end_ms {
        Some(end) => day_of(end.saturating_sub(1)),
        None => "9999-12-31".to_owned(),
    };
    (window.start_ms, hi, day_of(window.start_ms.max(0)), last_day)
}

/// Sums what `spend_logs` holds for a window into its row, which the calling transaction has
/// just created (`seeded = 0`).
///
/// Why this counts every record exactly once, whichever replicas ingest concurrently:
///
/// - A window's row is created (or charged) only inside the transaction that inserts the
///   records it charges, and creating it locks it until that transaction ends: on Postgres a
///   concurrent `INSERT … ON CONFLICT DO UPDATE` of the same key waits for this transaction and
///   then updates the committed row; on SQLite the whole transaction holds the write lock.
/// - So when this transaction created the row, no committed transaction ever charged it: every
///   committed record of the window is one that no row counts yet (ingested before the scope
///   had a budget, before this table existed, or by a replica whose tenancy cache did not know
///   the budget yet), and the sum below, which also sees this transaction's own new records,
///   is the window's whole spend so far. It replaces the batch's own increment.
/// - A batch still in flight on another replica is not in the sum (its records are not
///   committed, and this statement's snapshot cannot see them); it cannot commit before its own
///   charge of this row, which waits for this transaction and then adds exactly its records.
/// - Key lookups only read (`window_spend`: the row, or the same sum while there is none).
///
/// The sum runs once per window across the fleet, not per batch.
fn seed_sql(kind: ScopeKind) -> String {
    format!(
        "UPDATE budget_windows SET seeded = 1, spend_nanos = (SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) \
         FROM spend_logs WHERE {} = $2 AND start_ms >= $4 AND start_ms < $5 AND day >= $6 AND day <= $7) \
         WHERE scope_kind = $1 AND scope_id = $2 AND period_start = $3 AND seeded = 0 RETURNING spend_nanos",
        column(kind)
    )
}

/// A window's row as a batch's charge left it: spend, seeded, soft and max budget alerted.
type Charged = (i64, bool, Option<i64>, Option<i64>);

/// Rows per multi-row upsert of `budget_windows` (5 bound values each).
const WINDOW_ROWS_PER_STATEMENT: usize = 1000;

/// Adds the new records' cost to the windows they are charged to, seeds windows this
/// transaction created, and claims the alerts their totals call for (in the caller's
/// transaction, so the totals move exactly with the rows they count).
async fn charge_windows(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    logs: &[SpendLog],
    new_positions: &[usize],
    charges: &[Charge],
) -> StoreResult<Vec<WindowTotal>> {
    if charges.is_empty() || new_positions.is_empty() {
        return Ok(Vec::new());
    }
    let new: HashSet<usize> = new_positions.iter().copied().collect();
    // Per window: the new records' cost and the scope's thresholds. A BTreeMap, so that every
    // batch locks the rows it charges in one order (two batches cannot deadlock on them).
    let mut per_window: BTreeMap<&BudgetWindow, (i64, Option<i64>, Option<i64>)> = BTreeMap::new();
    for c in charges.iter().filter(|c| new.contains(&c.record)) {
        let Some(log) = logs.get(c.record) else { continue };
        let entry = per_window.entry(&c.window).or_insert((0, c.soft_nanos, c.max_nanos));
        entry.0 = entry.0.saturating_add(log.cost_nanos);
        (entry.1, entry.2) = (c.soft_nanos, c.max_nanos);
    }
    let per_window: Vec<_> = per_window.into_iter().collect();
    let mut totals = Vec::with_capacity(per_window.len());
    for chunk in per_window.chunks(WINDOW_ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO budget_windows (scope_kind, scope_id, period_start, period_end, spend_nanos) VALUES {} \
             ON CONFLICT (scope_kind, scope_id, period_start) DO UPDATE SET \
             spend_nanos = budget_windows.spend_nanos + excluded.spend_nanos \
             RETURNING scope_kind, scope_id, period_start, spend_nanos, seeded, soft_alerted, max_alerted",
            placeholders(chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for (w, (nanos, ..)) in chunk {
            q = q.bind(w.kind.as_str()).bind(w.id.clone()).bind(w.start_ms).bind(w.end_ms).bind(*nanos);
        }
        let mut charged: BTreeMap<(String, String, i64), Charged> = BTreeMap::new();
        for row in q.fetch_all(&mut **tx).await? {
            let key = (row.try_get("scope_kind")?, row.try_get("scope_id")?, row.try_get("period_start")?);
            let seeded: i64 = row.try_get("seeded")?;
            charged.insert(
                key,
                (row.try_get("spend_nanos")?, seeded != 0, row.try_get("soft_alerted")?, row.try_get("max_alerted")?),
            );
        }
        for (w, (_, soft, max)) in chunk {
            let key = (w.kind.as_str().to_owned(), w.id.clone(), w.start_ms);
            let Some(&(mut spend_nanos, seeded, soft_alerted, max_alerted)) = charged.get(&key) else {
                return Err(super::StoreError::Corrupt(format!("budget window {key:?} was not charged")));
            };
            if !seeded {
                let (lo, hi, first_day, last_day) = bounds(w);
                let row = sqlx::query(&seed_sql(w.kind))
                    .bind(w.kind.as_str())
                    .bind(w.id.clone())
                    .bind(w.start_ms)
                    .bind(lo)
                    .bind(hi)
                    .bind(first_day)
                    .bind(last_day)
                    .fetch_one(&mut **tx)
                    .await?;
                spend_nanos = row.try_get("spend_nanos")?;
            }
            // The row is this transaction's until it ends (see `seed_sql`), so the flags read
            // back are current and no other replica can claim the same alert meanwhile.
            let reached = |threshold: Option<i64>, alerted: Option<i64>| {
                threshold.filter(|t| spend_nanos >= *t && alerted.is_none_or(|a| a < *t))
            };
            let (soft_claimed, max_claimed) = (reached(*soft, soft_alerted), reached(*max, max_alerted));
            if soft_claimed.is_some() || max_claimed.is_some() {
                sqlx::query(
                    "UPDATE budget_windows SET soft_alerted = COALESCE($4, soft_alerted), \
                     max_alerted = COALESCE($5, max_alerted) \
                     WHERE scope_kind = $1 AND scope_id = $2 AND period_start = $3",
                )
                .bind(w.kind.as_str())
                .bind(w.id.clone())
                .bind(w.start_ms)
                .bind(soft_claimed)
                .bind(max_claimed)
                .execute(&mut **tx)
                .await?;
            }
            totals.push(WindowTotal { window: (*w).clone(), spend_nanos, soft_claimed, max_claimed });
        }
    }
    Ok(totals)
}

impl SpendStore for SqlStore {
    async fn record_spend(&self, logs: &[SpendLog]) -> StoreResult<usize> {
        Ok(self.record_charged_spend(logs, &[]).await?.0.len())
    }

    async fn open_windows(&self, kind: ScopeKind, now_ms: i64) -> StoreResult<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT scope_id, period_start, spend_nanos FROM budget_windows \
             WHERE scope_kind = $1 AND (period_end IS NULL OR period_end > $2)",
        )
        .bind(kind.as_str())
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("scope_id")?, r.try_get("period_start")?, r.try_get("spend_nanos")?)))
            .collect()
    }

    async fn window_spend(&self, window: &BudgetWindow) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT spend_nanos FROM budget_windows WHERE scope_kind = $1 AND scope_id = $2 AND period_start = $3",
        )
        .bind(window.kind.as_str())
        .bind(window.id.clone())
        .bind(window.start_ms)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(row.try_get("spend_nanos")?);
        }
        // No batch has charged this window yet: what spend_logs has for it (spend recorded
        // before the scope had a budget, or before this table existed) is what its row will
        // start from. Only read here: a lookup never writes (no commit on the lookup path).
        let (lo, hi, first_day, last_day) = bounds(window);
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS n FROM spend_logs \
             WHERE {} = $1 AND start_ms >= $2 AND start_ms < $3 AND day >= $4 AND day <= $5",
            column(window.kind)
        );
        let row = sqlx::query(&sql)
            .bind(window.id.clone())
            .bind(lo)
            .bind(hi)
            .bind(first_day)
            .bind(last_day)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    async fn prune_budget_windows(&self, ended_before_ms: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM budget_windows WHERE period_end IS NOT NULL AND period_end < $1")
            .bind(ended_before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn record_charged_spend(
        &self,
        logs: &[SpendLog],
        charges: &[Charge],
    ) -> StoreResult<(Vec<usize>, Vec<WindowTotal>)> {
        let mut tx = self.pool.begin().await?;
        let mut new: Vec<&SpendLog> = Vec::with_capacity(logs.len());
        let mut new_positions: Vec<usize> = Vec::with_capacity(logs.len());
        let mut chunk_start = 0;
        for chunk in logs.chunks(LOG_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO spend_logs (record_id, request_id, key_id, team_id, user_id, organization_id, customer_id, \
                 model_group, deployment_id, tags, prompt_tokens, completion_tokens, cost_nanos, status, outcome, \
                 estimated, price_unknown, start_ms, day, failed_attempts, cache_hit) VALUES {} \
                 ON CONFLICT (record_id) DO NOTHING RETURNING record_id",
                placeholders(chunk.len(), 21)
            );
            let mut q = sqlx::query(&sql);
            for l in chunk {
                q = q
                    .bind(l.record_id.clone())
                    .bind(l.request_id.clone())
                    .bind(l.key_id.clone())
                    .bind(l.team_id.clone())
                    .bind(l.user_id.clone())
                    .bind(l.organization_id.clone())
                    .bind(l.customer_id.clone())
                    .bind(l.model_group.clone())
                    .bind(l.deployment_id.clone())
                    .bind(to_json(&l.tags))
                    .bind(l.prompt_tokens)
                    .bind(l.completion_tokens)
                    .bind(l.cost_nanos)
                    .bind(l.status)
                    .bind(l.outcome.clone())
                    .bind(i64::from(l.estimated))
                    .bind(i64::from(l.price_unknown))
                    .bind(l.start_ms)
                    .bind(day_of(l.start_ms))
                    .bind(failed_attempts_json(&l.failed_attempts))
                    .bind(i64::from(l.cache_hit));
            }
            // Only rows not seen before come back: those, and only those, are counted.
            let inserted: HashSet<String> =
                q.fetch_all(&mut *tx).await?.iter().map(|r| r.try_get("record_id")).collect::<Result<_, _>>()?;
            let mut first = HashSet::new();
            for (i, l) in chunk.iter().enumerate() {
                if inserted.contains(&l.record_id) && first.insert(&l.record_id) {
                    new.push(l);
                    new_positions.push(chunk_start + i);
                }
            }
            chunk_start += chunk.len();
        }
        // One increment per (day, dimension, value) for the whole batch.
        let mut totals: BTreeMap<(String, &'static str, String), [i64; 4]> = BTreeMap::new();
        for l in &new {
            let dimensions = [
                ("key", l.key_id.clone()),
                ("team", l.team_id.clone()),
                ("user", l.user_id.clone()),
                ("org", l.organization_id.clone()),
                ("customer", l.customer_id.clone()),
                ("model", Some(l.model_group.clone())),
            ]
            .into_iter()
            .filter_map(|(d, v)| Some((d, v?)))
            .chain(l.tags.iter().map(|t| ("tag", t.clone())));
            for (dimension, value) in dimensions {
                let t = totals.entry((day_of(l.start_ms), dimension, value)).or_default();
                t[0] += 1;
                t[1] += l.prompt_tokens;
                t[2] += l.completion_tokens;
                t[3] += l.cost_nanos;
            }
        }
        let totals: Vec<_> = totals.into_iter().collect();
        for chunk in totals.chunks(DAILY_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO daily_spend (day, dimension, value, requests, prompt_tokens, completion_tokens, \
                 cost_nanos) VALUES {} ON CONFLICT (day, dimension, value) DO UPDATE SET \
                 requests = daily_spend.requests + excluded.requests, \
                 prompt_tokens = daily_spend.prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = daily_spend.completion_tokens + excluded.completion_tokens, \
                 cost_nanos = daily_spend.cost_nanos + excluded.cost_nanos",
                placeholders(chunk.len(), 7)
            );
            let mut q = sqlx::query(&sql);
            for ((day, dimension, value), [requests, prompt, completion, cost]) in chunk {
                q = q
                    .bind(day.clone())
                    .bind(*dimension)
                    .bind(value.clone())
                    .bind(*requests)
                    .bind(*prompt)
                    .bind(*completion)
                    .bind(*cost);
            }
            q.execute(&mut *tx).await?;
        }
        let windows = charge_windows(&mut tx, logs, &new_positions, charges).await?;
        tx.commit().await?;
        Ok((new_positions, windows))
    }

    async fn spend_logs(
        &self,
        filter: &SpendFilter,
        request_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> StoreResult<(Vec<SpendLog>, i64)> {
        let conditions = format!("{} AND ($9 IS NULL OR s.request_id = $9)", filter_conditions(self.backend));
        let bind = |q| bind_filter(q, filter).bind(request_id.map(str::to_owned));
        let count_sql = format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM spend_logs s WHERE {conditions}");
        let total: i64 = bind(sqlx::query(&count_sql)).fetch_one(&self.pool).await?.try_get("n")?;
        let sql = format!(
            "SELECT s.record_id, s.request_id, s.key_id, s.team_id, s.user_id, s.organization_id, s.customer_id, \
             s.model_group, s.deployment_id, s.tags, s.prompt_tokens, s.completion_tokens, s.cost_nanos, s.status, \
             s.outcome, s.estimated, s.price_unknown, s.start_ms, s.failed_attempts, s.cache_hit FROM spend_logs s \
             WHERE {conditions} ORDER BY s.start_ms DESC, s.record_id LIMIT $10 OFFSET $11"
        );
        let rows = bind(sqlx::query(&sql)).bind(limit).bind(offset).fetch_all(&self.pool).await?;
        let logs = rows
            .iter()
            .map(|r| {
                let tags: String = r.try_get("tags")?;
                let failed: String = r.try_get("failed_attempts")?;
                let failed: Vec<serde_json::Value> = serde_json::from_str(&failed).unwrap_or_default();
                let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
                Ok(SpendLog {
                    record_id: r.try_get("record_id")?,
                    request_id: r.try_get("request_id")?,
                    key_id: r.try_get("key_id")?,
                    team_id: r.try_get("team_id")?,
                    user_id: r.try_get("user_id")?,
                    organization_id: r.try_get("organization_id")?,
                    customer_id: r.try_get("customer_id")?,
                    model_group: r.try_get("model_group")?,
                    deployment_id: r.try_get("deployment_id")?,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    cost_nanos: r.try_get("cost_nanos")?,
                    status: r.try_get("status")?,
                    outcome: r.try_get("outcome")?,
                    estimated: r.try_get::<i64, _>("estimated")? != 0,
                    price_unknown: r.try_get::<i64, _>("price_unknown")? != 0,
                    cache_hit: r.try_get::<i64, _>("cache_hit")? != 0,
                    start_ms: r.try_get("start_ms")?,
                    failed_attempts: failed.iter().map(|a| (text(a, "deployment"), text(a, "error"))).collect(),
                })
            })
            .collect::<StoreResult<Vec<SpendLog>>>()?;
        Ok((logs, total))
    }

    async fn query_spend(&self, filter: &SpendFilter, by: GroupBy) -> StoreResult<Vec<SpendRow>> {
        // The grouping expression is one of these constants; every value is bound.
        let tags_of = match self.backend {
            Backend::Sqlite => "json_each(s.tags) t",
            Backend::Postgres => "jsonb_array_elements_text(s.tags::jsonb) AS t(value)",
        };
        let (group, from) = match by {
            GroupBy::Day => ("s.day", "spend_logs s".to_owned()),
            GroupBy::Key => ("COALESCE(s.key_id, '-')", "spend_logs s".to_owned()),
            GroupBy::Team => ("COALESCE(s.team_id, '-')", "spend_logs s".to_owned()),
            GroupBy::User => ("COALESCE(s.user_id, '-')", "spend_logs s".to_owned()),
            GroupBy::Organization => ("COALESCE(s.organization_id, '-')", "spend_logs s".to_owned()),
            GroupBy::Model => ("s.model_group", "spend_logs s".to_owned()),
            GroupBy::Tag => ("t.value", format!("spend_logs s, {tags_of}")),
            GroupBy::Customer => ("COALESCE(s.customer_id, '-')", "spend_logs s".to_owned()),
        };
        let sql = format!(
            // SUM of BIGINT is NUMERIC on Postgres: cast back so both databases return BIGINT.
            "SELECT {group} AS grp, CAST(COUNT(*) AS BIGINT) AS requests, \
             CAST(COALESCE(SUM(s.prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
             CAST(COALESCE(SUM(s.completion_tokens), 0) AS BIGINT) AS completion_tokens, \
             CAST(COALESCE(SUM(s.cost_nanos), 0) AS BIGINT) AS cost_nanos \
             FROM {from} WHERE {conditions} GROUP BY {group} ORDER BY {group}",
            conditions = filter_conditions(self.backend),
        );
        let rows = bind_filter(sqlx::query(&sql), filter).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(SpendRow {
                    group: r.try_get("grp")?,
                    requests: r.try_get("requests")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    cost_nanos: r.try_get("cost_nanos")?,
                })
            })
            .collect()
    }
}
