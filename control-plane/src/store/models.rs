//! Model deployments: `model_list` entries, stored as LiteLLM's JSON (validated by the core
//! crate before they get here), with where they came from.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{NewAudit, SqlStore, StoreError, StoreResult, from_json, now_ms, to_json};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRecord {
    pub deployment_id: String,
    pub model_name: String,
    /// `{"model_name", "litellm_params", "model_info"}` as LiteLLM writes it; secrets only as
    /// `os.environ/NAME` references (a literal key is refused before it is stored).
    pub entry: serde_json::Value,
    /// `config` or `api`.
    pub source: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub trait ModelStore {
    fn insert_model(&self, m: &ModelRecord, audit: NewAudit) -> impl Future<Output = StoreResult<()>> + Send;
    fn get_model(&self, id: &str) -> impl Future<Output = StoreResult<ModelRecord>> + Send;
    fn update_model(
        &self,
        id: &str,
        change: impl FnOnce(&mut ModelRecord) -> StoreResult<()> + Send,
        audit: NewAudit,
    ) -> impl Future<Output = StoreResult<ModelRecord>> + Send;
    fn delete_model(&self, id: &str, audit: NewAudit) -> impl Future<Output = StoreResult<()>> + Send;
    /// Every deployment, ordered by id (the whole set is validated together).
    fn all_models(&self) -> impl Future<Output = StoreResult<Vec<ModelRecord>>> + Send;
    /// Makes the `config` deployments exactly `entries` (insert, update, delete), leaving `api`
    /// ones alone; one audit row per change, as `actor`.
    fn sync_config_models(
        &self,
        entries: &[ModelRecord],
        actor: &str,
    ) -> impl Future<Output = StoreResult<SyncReport>> + Send;
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
}

const COLUMNS: &str = "deployment_id, model_name, deployment, source, created_at, updated_at";

fn from_row(row: &AnyRow) -> StoreResult<ModelRecord> {
    Ok(ModelRecord {
        deployment_id: row.try_get("deployment_id")?,
        model_name: row.try_get("model_name")?,
        entry: from_json("deployment", &row.try_get::<String, _>("deployment")?)?,
        source: row.try_get("source")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn insert(tx: &mut sqlx::Transaction<'static, sqlx::Any>, m: &ModelRecord) -> StoreResult<()> {
    sqlx::query(&format!("INSERT INTO model_deployments ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"))
        .bind(m.deployment_id.clone())
        .bind(m.model_name.clone())
        .bind(to_json(&m.entry))
        .bind(m.source.clone())
        .bind(m.created_at)
        .bind(m.updated_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn write(tx: &mut sqlx::Transaction<'static, sqlx::Any>, m: &ModelRecord) -> StoreResult<()> {
    sqlx::query(
        "UPDATE model_deployments SET model_name = $1, deployment = $2, source = $3, updated_at = $4 \
         WHERE deployment_id = $5",
    )
    .bind(m.model_name.clone())
    .bind(to_json(&m.entry))
    .bind(m.source.clone())
    .bind(m.updated_at)
    .bind(m.deployment_id.clone())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl SqlStore {
    /// Reads a deployment inside `tx`, holding its row (see `row_lock`).
    async fn locked_model(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>, id: &str) -> StoreResult<ModelRecord> {
        let sql = format!("SELECT {COLUMNS} FROM model_deployments WHERE deployment_id = $1{}", self.row_lock());
        let row = sqlx::query(&sql).bind(id.to_owned()).fetch_optional(&mut **tx).await?;
        row.as_ref().map(from_row).transpose()?.ok_or(StoreError::NotFound)
    }
}

impl ModelStore for SqlStore {
    async fn insert_model(&self, m: &ModelRecord, audit: NewAudit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        insert(&mut tx, m).await?;
        audit.with_after(m).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_model(&self, id: &str) -> StoreResult<ModelRecord> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM model_deployments WHERE deployment_id = $1"))
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()?.ok_or(StoreError::NotFound)
    }

    async fn update_model(
        &self,
        id: &str,
        change: impl FnOnce(&mut ModelRecord) -> StoreResult<()> + Send,
        audit: NewAudit,
    ) -> StoreResult<ModelRecord> {
        let mut tx = self.pool.begin().await?;
        let before = self.locked_model(&mut tx, id).await?;
        let mut after = before.clone();
        change(&mut after)?;
        after.updated_at = now_ms().max(before.updated_at);
        write(&mut tx, &after).await?;
        audit.with_before(&before).with_after(&after).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn delete_model(&self, id: &str, audit: NewAudit) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let before = self.locked_model(&mut tx, id).await?;
        sqlx::query("DELETE FROM model_deployments WHERE deployment_id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        audit.with_before(&before).insert(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn all_models(&self) -> StoreResult<Vec<ModelRecord>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM model_deployments ORDER BY deployment_id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn sync_config_models(&self, entries: &[ModelRecord], actor: &str) -> StoreResult<SyncReport> {
        let existing = self.all_models().await?;
        let mut report = SyncReport::default();
        let mut tx = self.pool.begin().await?;
        for m in entries {
            match existing.iter().find(|e| e.deployment_id == m.deployment_id) {
                None => {
                    insert(&mut tx, m).await?;
                    NewAudit::new(actor, "model.sync_add", "model", &m.deployment_id)
                        .with_after(m)
                        .insert(&mut tx)
                        .await?;
                    report.added += 1;
                }
                Some(e) if e.entry != m.entry || e.model_name != m.model_name || e.source != m.source => {
                    let after = ModelRecord { created_at: e.created_at, ..m.clone() };
                    write(&mut tx, &after).await?;
                    NewAudit::new(actor, "model.sync_update", "model", &m.deployment_id)
                        .with_before(e)
                        .with_after(&after)
                        .insert(&mut tx)
                        .await?;
                    report.updated += 1;
                }
                Some(_) => {}
            }
        }
        for e in existing.iter().filter(|e| e.source == "config") {
            if !entries.iter().any(|m| m.deployment_id == e.deployment_id) {
                sqlx::query("DELETE FROM model_deployments WHERE deployment_id = $1")
                    .bind(e.deployment_id.clone())
                    .execute(&mut *tx)
                    .await?;
                NewAudit::new(actor, "model.sync_remove", "model", &e.deployment_id)
                    .with_before(e)
                    .insert(&mut tx)
                    .await?;
                report.removed += 1;
            }
        }
        tx.commit().await?;
        Ok(report)
    }
}
