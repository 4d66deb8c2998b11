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
    pub start_ms: i64,
}

/// Whose budget window a spend total is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope<'a> {
    Key(&'a str),
    Team(&'a str),
    User(&'a str),
    /// Spend recorded with this organization (ingestion enriches each record with its key's
    /// organization, else its team's).
    Org(&'a str),
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
    /// As `record_spend`, returning the positions (in `logs`) of the records that were new.
    fn record_new_spend(&self, logs: &[SpendLog]) -> impl Future<Output = StoreResult<Vec<usize>>> + Send;
    /// Spend of a key, team, user or organization since a time (Unix ms), in nano-dollars: a
    /// budget window's.
    fn spend_since(&self, scope: BudgetScope<'_>, since_ms: i64) -> impl Future<Output = StoreResult<i64>> + Send;
    fn query_spend(&self, filter: &SpendFilter, by: GroupBy)
    -> impl Future<Output = StoreResult<Vec<SpendRow>>> + Send;
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

impl SpendStore for SqlStore {
    async fn record_spend(&self, logs: &[SpendLog]) -> StoreResult<usize> {
        Ok(self.record_new_spend(logs).await?.len())
    }

    async fn spend_since(&self, scope: BudgetScope<'_>, since_ms: i64) -> StoreResult<i64> {
        // Constant SQL per scope kind; the id and time are bound.
        let sql = match scope {
            BudgetScope::Key(_) => {
                "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS n FROM spend_logs WHERE key_id = $1 AND start_ms >= $2"
            }
            BudgetScope::Team(_) => {
                "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS n FROM spend_logs WHERE team_id = $1 AND start_ms >= $2"
            }
            BudgetScope::User(_) => {
                "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS n FROM spend_logs WHERE user_id = $1 AND start_ms >= $2"
            }
            BudgetScope::Org(_) => {
                "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS n FROM spend_logs WHERE organization_id = $1 AND start_ms >= $2"
            }
        };
        let (BudgetScope::Key(id) | BudgetScope::Team(id) | BudgetScope::User(id) | BudgetScope::Org(id)) = scope;
        let row = sqlx::query(sql).bind(id.to_owned()).bind(since_ms).fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }

    async fn record_new_spend(&self, logs: &[SpendLog]) -> StoreResult<Vec<usize>> {
        let mut tx = self.pool.begin().await?;
        let mut new: Vec<&SpendLog> = Vec::with_capacity(logs.len());
        let mut new_positions: Vec<usize> = Vec::with_capacity(logs.len());
        let mut chunk_start = 0;
        for chunk in logs.chunks(LOG_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO spend_logs (record_id, request_id, key_id, team_id, user_id, organization_id, customer_id, \
                 model_group, deployment_id, tags, prompt_tokens, completion_tokens, cost_nanos, status, outcome, \
                 estimated, start_ms, day) VALUES {} ON CONFLICT (record_id) DO NOTHING RETURNING record_id",
                placeholders(chunk.len(), 18)
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
                    .bind(l.start_ms)
                    .bind(day_of(l.start_ms));
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
        tx.commit().await?;
        Ok(new_positions)
    }

    async fn query_spend(&self, filter: &SpendFilter, by: GroupBy) -> StoreResult<Vec<SpendRow>> {
        // The grouping expression is one of these constants; every value is bound.
        let (tags_of, has_tag) = match self.backend {
            Backend::Sqlite => ("json_each(s.tags) t", "EXISTS (SELECT 1 FROM json_each(s.tags) WHERE value = $6)"),
            Backend::Postgres => ("jsonb_array_elements_text(s.tags::jsonb) AS t(value)", "(s.tags::jsonb ? $6)"),
        };
        let (group, from) = match by {
            GroupBy::Day => ("s.day", "spend_logs s".to_owned()),
            GroupBy::Key => ("COALESCE(s.key_id, '-')", "spend_logs s".to_owned()),
            GroupBy::Team => ("COALESCE(s.team_id, '-')", "spend_logs s".to_owned()),
            GroupBy::User => ("COALESCE(s.user_id, '-')", "spend_logs s".to_owned()),
            GroupBy::Organization => ("COALESCE(s.organization_id, '-')", "spend_logs s".to_owned()),
            GroupBy::Model => ("s.model_group", "spend_logs s".to_owned()),
            GroupBy::Tag => ("t.value", format!("spend_logs s, {tags_of}")),
        };
        let sql = format!(
            // SUM of BIGINT is NUMERIC on Postgres: cast back so both databases return BIGINT.
            "SELECT {group} AS grp, CAST(COUNT(*) AS BIGINT) AS requests, \
             CAST(COALESCE(SUM(s.prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
             CAST(COALESCE(SUM(s.completion_tokens), 0) AS BIGINT) AS completion_tokens, \
             CAST(COALESCE(SUM(s.cost_nanos), 0) AS BIGINT) AS cost_nanos \
             FROM {from} WHERE ($1 IS NULL OR s.key_id = $1) AND ($2 IS NULL OR s.team_id = $2) \
             AND ($3 IS NULL OR s.user_id = $3) AND ($4 IS NULL OR s.organization_id = $4) \
             AND ($5 IS NULL OR s.model_group = $5) AND ($6 IS NULL OR {has_tag}) \
             AND ($7 IS NULL OR s.day >= $7) AND ($8 IS NULL OR s.day <= $8) \
             GROUP BY {group} ORDER BY {group}"
        );
        let rows = sqlx::query(&sql)
            .bind(filter.key_id.clone())
            .bind(filter.team_id.clone())
            .bind(filter.user_id.clone())
            .bind(filter.organization_id.clone())
            .bind(filter.model_group.clone())
            .bind(filter.tag.clone())
            .bind(filter.start_day.clone())
            .bind(filter.end_day.clone())
            .fetch_all(&self.pool)
            .await?;
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
