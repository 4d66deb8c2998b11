//! The directory: organizations, teams, users and team memberships. Each entity is a row
//! with the same limit columns; updates hold the row (see `keys.rs`), and every mutation writes
//! its audit row in the same transaction.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{NewAudit, SqlStore, StoreError, StoreResult, from_json, to_json};

/// Limits and budgets, as every governed entity stores them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LimitsRecord {
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub max_parallel_requests: Option<i64>,
    pub max_budget_nanos: Option<i64>,
    pub soft_budget_nanos: Option<i64>,
    pub budget_duration: Option<String>,
}

const LIMIT_COLUMNS: &str =
    "rpm_limit, tpm_limit, max_parallel_requests, max_budget_nanos, soft_budget_nanos, budget_duration";

impl LimitsRecord {
    pub(super) fn from_row(row: &AnyRow) -> StoreResult<Self> {
        Ok(Self {
            rpm_limit: row.try_get("rpm_limit")?,
            tpm_limit: row.try_get("tpm_limit")?,
            max_parallel_requests: row.try_get("max_parallel_requests")?,
            max_budget_nanos: row.try_get("max_budget_nanos")?,
            soft_budget_nanos: row.try_get("soft_budget_nanos")?,
            budget_duration: row.try_get("budget_duration")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrgRecord {
    pub organization_id: String,
    pub organization_alias: Option<String>,
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: LimitsRecord,
    pub metadata: serde_json::Value,
    pub blocked: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeamRecord {
    pub team_id: String,
    pub team_alias: Option<String>,
    pub organization_id: Option<String>,
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: LimitsRecord,
    pub member_max_budget_nanos: Option<i64>,
    pub metadata: serde_json::Value,
    pub blocked: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserRecord {
    pub user_id: String,
    pub user_email: Option<String>,
    /// LiteLLM's role name (`proxy_admin`, `internal_user`, …).
    pub user_role: String,
    pub organization_id: Option<String>,
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: LimitsRecord,
    pub metadata: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberRecord {
    pub team_id: String,
    pub user_id: String,
    /// `admin` or `user`.
    pub role: String,
    #[serde(flatten)]
    pub limits: LimitsRecord,
}

/// A reusable budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetRecord {
    pub budget_id: String,
    #[serde(flatten)]
    pub limits: LimitsRecord,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An end user of the platform's product.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerRecord {
    pub customer_id: String,
    pub alias: Option<String>,
    pub budget_id: Option<String>,
    #[serde(flatten)]
    pub limits: LimitsRecord,
    pub blocked: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One directory entity kind: its table, id column and row mapping. Lets one set of generic
/// functions do insert/get/update/delete/list for organizations, teams and users.
pub trait Entity: Clone + Serialize + Send + Sync + Unpin + 'static {
    const TABLE: &'static str;
    const ID: &'static str;
    /// Columns after the id, in bind order (limits excluded: they always follow these).
    const COLUMNS: &'static [&'static str];
    fn id(&self) -> &str;
    fn from_row(row: &AnyRow) -> StoreResult<Self>;
    fn limits(&self) -> &LimitsRecord;
    fn touch(&mut self, now: i64);
    fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;
}

fn strings(row: &AnyRow, column: &str) -> StoreResult<Vec<String>> {
    from_json(column, &row.try_get::<String, _>(column)?)
}

fn metadata(row: &AnyRow) -> StoreResult<serde_json::Value> {
    from_json("metadata", &row.try_get::<String, _>("metadata")?)
}

impl Entity for OrgRecord {
    const TABLE: &'static str = "organizations";
    const ID: &'static str = "organization_id";
    const COLUMNS: &'static [&'static str] =
        &["organization_alias", "models", "metadata", "blocked", "created_at", "updated_at"];
    fn id(&self) -> &str {
        &self.organization_id
    }
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        Ok(Self {
            organization_id: row.try_get("organization_id")?,
            organization_alias: row.try_get("organization_alias")?,
            models: strings(row, "models")?,
            limits: LimitsRecord::from_row(row)?,
            metadata: metadata(row)?,
            blocked: row.try_get::<i64, _>("blocked")? != 0,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
    fn limits(&self) -> &LimitsRecord {
        &self.limits
    }
    fn touch(&mut self, now: i64) {
        self.updated_at = now.max(self.updated_at);
    }
    fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        q.bind(self.organization_alias.clone())
            .bind(to_json(&self.models))
            .bind(to_json(&self.metadata))
            .bind(i64::from(self.blocked))
            .bind(self.created_at)
            .bind(self.updated_at)
    }
}

impl Entity for TeamRecord {
    const TABLE: &'static str = "teams";
    const ID: &'static str = "team_id";
    const COLUMNS: &'static [&'static str] = &[
        "team_alias",
        "organization_id",
        "models",
        "member_max_budget_nanos",
        "metadata",
        "blocked",
        "created_at",
        "updated_at",
    ];
    fn id(&self) -> &str {
        &self.team_id
    }
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        Ok(Self {
            team_id: row.try_get("team_id")?,
            team_alias: row.try_get("team_alias")?,
            organization_id: row.try_get("organization_id")?,
            models: strings(row, "models")?,
            limits: LimitsRecord::from_row(row)?,
            member_max_budget_nanos: row.try_get("member_max_budget_nanos")?,
            metadata: metadata(row)?,
            blocked: row.try_get::<i64, _>("blocked")? != 0,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
    fn limits(&self) -> &LimitsRecord {
        &self.limits
    }
    fn touch(&mut self, now: i64) {
        self.updated_at = now.max(self.updated_at);
    }
    fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        q.bind(self.team_alias.clone())
            .bind(self.organization_id.clone())
            .bind(to_json(&self.models))
            .bind(self.member_max_budget_nanos)
            .bind(to_json(&self.metadata))
            .bind(i64::from(self.blocked))
            .bind(self.created_at)
            .bind(self.updated_at)
    }
}

impl Entity for UserRecord {
    const TABLE: &'static str = "users";
    const ID: &'static str = "user_id";
    const COLUMNS: &'static [&'static str] =
        &["user_email", "user_role", "organization_id", "models", "metadata", "created_at", "updated_at"];
    fn id(&self) -> &str {
        &self.user_id
    }
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        Ok(Self {
            user_id: row.try_get("user_id")?,
            user_email: row.try_get("user_email")?,
            user_role: row.try_get("user_role")?,
            organization_id: row.try_get("organization_id")?,
            models: strings(row, "models")?,
            limits: LimitsRecord::from_row(row)?,
            metadata: metadata(row)?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
    fn limits(&self) -> &LimitsRecord {
        &self.limits
    }
    fn touch(&mut self, now: i64) {
        self.updated_at = now.max(self.updated_at);
    }
    fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        q.bind(self.user_email.clone())
            .bind(self.user_role.clone())
            .bind(self.organization_id.clone())
            .bind(to_json(&self.models))
            .bind(to_json(&self.metadata))
            .bind(self.created_at)
            .bind(self.updated_at)
    }
}

impl Entity for BudgetRecord {
    const TABLE: &'static str = "budgets";
    const ID: &'static str = "budget_id";
    const COLUMNS: &'static [&'static str] = &["created_at", "updated_at"];
    fn id(&self) -> &str {
        &self.budget_id
    }
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        Ok(Self {
            budget_id: row.try_get("budget_id")?,
            limits: LimitsRecord::from_row(row)?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
    fn limits(&self) -> &LimitsRecord {
        &self.limits
    }
    fn touch(&mut self, now: i64) {
        self.updated_at = now.max(self.updated_at);
    }
    fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        q.bind(self.created_at).bind(self.updated_at)
    }
}

impl Entity for CustomerRecord {
    const TABLE: &'static str = "customers";
    const ID: &'static str = "customer_id";
    const COLUMNS: &'static [&'static str] = &["alias", "budget_id", "blocked", "created_at", "updated_at"];
    fn id(&self) -> &str {
        &self.customer_id
    }
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        Ok(Self {
            customer_id: row.try_get("customer_id")?,
            alias: row.try_get("alias")?,
            budget_id: row.try_get("budget_id")?,
            limits: LimitsRecord::from_row(row)?,
            blocked: row.try_get::<i64, _>("blocked")? != 0,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
    fn limits(&self) -> &LimitsRecord {
        &self.limits
    }
    fn touch(&mut self, now: i64) {
        self.updated_at = now.max(self.updated_at);
    }
    fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        q.bind(self.alias.clone())
            .bind(self.budget_id.clone())
            .bind(i64::from(self.blocked))
            .bind(self.created_at)
            .bind(self.updated_at)
    }
}

/// `$first, $first+1, …` for `n` placeholders.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// A filter on one column (`organization_id`, `user_role`), or none.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub column: Option<(&'static str, String)>,
    pub after_id: Option<String>,
    pub limit: u32,
}

pub trait DirectoryStore {
    fn insert<E: Entity>(&self, e: &E, audit: NewAudit) -> impl Future<Output = StoreResult<()>> + Send;
    fn get<E: Entity>(&self, id: &str) -> impl Future<Output = StoreResult<E>> + Send;
    fn update<E: Entity, F>(&self, id: &str, change: F, audit: NewAudit) -> impl Future<Output = StoreResult<E>> + Send
    where
        F: FnOnce(&mut E) -> Result<(), StoreError> + Send;
    fn delete<E: Entity>(&self, id: &str, audit: NewAudit) -> impl Future<Output = StoreResult<()>> + Send;
    fn list<E: Entity>(&self, filter: &ListFilter) -> impl Future<Output = StoreResult<(Vec<E>, u64)>> + Send;
    fn members(&self, team_id: &str) -> impl Future<Output = StoreResult<Vec<MemberRecord>>> + Send;
    fn memberships(&self, user_id: &str) -> impl Future<Output = StoreResult<Vec<MemberRecord>>> + Send;
    /// Adds a member, or replaces its role and limits.
    fn put_member(&self, member: &MemberRecord, audit: NewAudit) -> impl Future<Output = StoreResult<()>> + Send;
    fn remove_member(
        &self,
        team_id: &str,
        user_id: &str,
        audit: NewAudit,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}

fn select<E: Entity>() -> String {
    format!("SELECT {}, {}, {LIMIT_COLUMNS} FROM {}", E::ID, E::COLUMNS.join(", "), E::TABLE)
}

fn member_from_row(row: &AnyRow) -> StoreResult<MemberRecord> {
    Ok(MemberRecord {
        team_id: row.try_get("team_id")?,
        user_id: row.try_get("user_id")?,
        role: row.try_get("role")?,
        limits: LimitsRecord::from_row(row)?,
    })
}

impl SqlStore {
    /// Reads an entity inside `tx`, holding its row (see `row_lock`).
    async fn locked<E: Entity>(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>, id: &str) -> StoreResult<E> {
        let sql = format!("{} WHERE {} = $1{}", select::<E>(), E::ID, self.row_lock());
        let row = sqlx::query(&sql).bind(id.to_owned()).fetch_optional(&mut **tx).await?;
        row.as_ref().map(E::from_row).transpose()?.ok_or(StoreError::NotFound)
    }
}

impl DirectoryStore for SqlStore {
    async fn insert<E: Entity>(&self, e: &E, audit: NewAudit) -> StoreResult<()> {
        let n = E::COLUMNS.len();
        let sql = format!(
            "INSERT INTO {} ({}, {}, {LIMIT_COLUMNS}) VALUES ($1, {}, {})",
            E::TABLE,
            E::ID,
            E::COLUMNS.join(", "),
            placeholders(2, n),
            placeholders(2 + n, 6)
        );
        let mut tx = self.pool.begin().await?;
        let q = e.bind(sqlx::query(&sql).bind(e.id().to_owned()));
        bind_limits!(q, e.limits()).execute(&mut *tx).await?;
        audit.with_after(e).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get<E: Entity>(&self, id: &str) -> StoreResult<E> {
        let sql = format!("{} WHERE {} = $1", select::<E>(), E::ID);
        let row = sqlx::query(&sql).bind(id.to_owned()).fetch_optional(&self.pool).await?;
        row.as_ref().map(E::from_row).transpose()?.ok_or(StoreError::NotFound)
    }

    async fn update<E: Entity, F>(&self, id: &str, change: F, audit: NewAudit) -> StoreResult<E>
    where
        F: FnOnce(&mut E) -> Result<(), StoreError> + Send,
    {
        let mut tx = self.pool.begin().await?;
        let before: E = self.locked(&mut tx, id).await?;
        let mut after = before.clone();
        change(&mut after)?;
        after.touch(super::now_ms());
        let n = E::COLUMNS.len();
        let sets: Vec<String> = E::COLUMNS
            .iter()
            .chain(LIMIT_COLUMNS.split(", ").collect::<Vec<_>>().iter())
            .enumerate()
            .map(|(i, c)| format!("{c} = ${}", i + 1))
            .collect();
        let sql =
            format!("UPDATE {} SET {}, version = version + 1 WHERE {} = ${}", E::TABLE, sets.join(", "), E::ID, n + 7);
        let q = after.bind(sqlx::query(&sql));
        bind_limits!(q, after.limits()).bind(id.to_owned()).execute(&mut *tx).await?;
        audit.with_before(&before).with_after(&after).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn delete<E: Entity>(&self, id: &str, audit: NewAudit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let before: E = self.locked(&mut tx, id).await?;
        let sql = format!("DELETE FROM {} WHERE {} = $1", E::TABLE, E::ID);
        let done = sqlx::query(&sql).bind(id.to_owned()).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        audit.with_before(&before).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list<E: Entity>(&self, filter: &ListFilter) -> StoreResult<(Vec<E>, u64)> {
        // The filter column is one of the entity's own constant names; its value is bound.
        let (condition, value) = match &filter.column {
            Some((column, value)) => (format!("{column} = $1"), Some(value.clone())),
            None => ("($1 IS NULL OR 1 = 1)".to_owned(), None),
        };
        let sql = format!(
            "{} WHERE {condition} AND ($2 IS NULL OR {id} > $2) ORDER BY {id} LIMIT $3",
            select::<E>(),
            id = E::ID
        );
        let rows = sqlx::query(&sql)
            .bind(value.clone())
            .bind(filter.after_id.clone())
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        let count_sql = format!("SELECT COUNT(*) AS n FROM {} WHERE {condition}", E::TABLE);
        let total: i64 = sqlx::query(&count_sql).bind(value).fetch_one(&self.pool).await?.try_get("n")?;
        let items = rows.iter().map(E::from_row).collect::<StoreResult<Vec<_>>>()?;
        Ok((items, u64::try_from(total).unwrap_or(0)))
    }

    async fn members(&self, team_id: &str) -> StoreResult<Vec<MemberRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT team_id, user_id, role, {LIMIT_COLUMNS} FROM memberships WHERE team_id = $1 ORDER BY user_id"
        ))
        .bind(team_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    async fn memberships(&self, user_id: &str) -> StoreResult<Vec<MemberRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT team_id, user_id, role, {LIMIT_COLUMNS} FROM memberships WHERE user_id = $1 ORDER BY team_id"
        ))
        .bind(user_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    async fn put_member(&self, m: &MemberRecord, audit: NewAudit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let before = sqlx::query(&format!(
            "SELECT team_id, user_id, role, {LIMIT_COLUMNS} FROM memberships WHERE team_id = $1 AND user_id = $2"
        ))
        .bind(m.team_id.clone())
        .bind(m.user_id.clone())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(member_from_row)
        .transpose()?;
        sqlx::query("DELETE FROM memberships WHERE team_id = $1 AND user_id = $2")
            .bind(m.team_id.clone())
            .bind(m.user_id.clone())
            .execute(&mut *tx)
            .await?;
        let sql = format!(
            "INSERT INTO memberships (team_id, user_id, role, {LIMIT_COLUMNS}, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        let q = sqlx::query(&sql).bind(m.team_id.clone()).bind(m.user_id.clone()).bind(m.role.clone());
        bind_limits!(q, m.limits).bind(super::now_ms()).execute(&mut *tx).await?;
        let audit = match &before {
            Some(b) => audit.with_before(b),
            None => audit,
        };
        audit.with_after(m).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_member(&self, team_id: &str, user_id: &str, audit: NewAudit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let before = sqlx::query(&format!(
            "SELECT team_id, user_id, role, {LIMIT_COLUMNS} FROM memberships WHERE team_id = $1 AND user_id = $2"
        ))
        .bind(team_id.to_owned())
        .bind(user_id.to_owned())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(member_from_row)
        .transpose()?
        .ok_or(StoreError::NotFound)?;
        sqlx::query("DELETE FROM memberships WHERE team_id = $1 AND user_id = $2")
            .bind(team_id.to_owned())
            .bind(user_id.to_owned())
            .execute(&mut *tx)
            .await?;
        audit.with_before(&before).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
