//! The audit log: one row per mutation, written in the mutation's own transaction, with the
//! object before and after (records that never hold a secret; see `KeyRecord`).

use serde::Serialize;
use sqlx::any::Any;
use sqlx::{Row, Transaction};

use super::{SqlStore, StoreResult, now_ms, to_json};

/// An audit row about to be written: who did what to which object.
#[derive(Debug, Clone)]
pub struct NewAudit {
    pub actor: String,
    pub action: &'static str,
    pub object_type: &'static str,
    pub object_id: String,
    before_json: String,
    after_json: String,
}

impl NewAudit {
    pub fn new(actor: &str, action: &'static str, object_type: &'static str, object_id: &str) -> Self {
        Self {
            actor: actor.to_owned(),
            action,
            object_type,
            object_id: object_id.to_owned(),
            before_json: "null".into(),
            after_json: "null".into(),
        }
    }

    pub fn with_before<T: Serialize>(mut self, before: &T) -> Self {
        self.before_json = to_json(before);
        self
    }

    pub fn with_after<T: Serialize>(mut self, after: &T) -> Self {
        self.after_json = to_json(after);
        self
    }

    pub(super) async fn insert(self, tx: &mut Transaction<'static, Any>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, object_type, object_id, before_json, after_json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_ms())
        .bind(self.actor)
        .bind(self.action)
        .bind(self.object_type)
        .bind(self.object_id)
        .bind(self.before_json)
        .bind(self.after_json)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub before_json: String,
    pub after_json: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub object_type: Option<String>,
    pub object_id: Option<String>,
    /// Keyset pagination, newest first: entries with a smaller id than this.
    pub before_id: Option<i64>,
    pub limit: u32,
}

pub trait AuditStore {
    fn list_audit(&self, filter: &AuditFilter) -> impl Future<Output = StoreResult<Vec<AuditEntry>>> + Send;
}

impl AuditStore for SqlStore {
    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, object_type, object_id, before_json, after_json FROM audit_log \
             WHERE ($1 IS NULL OR object_type = $1) AND ($2 IS NULL OR object_id = $2) \
             AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(filter.object_type.clone())
        .bind(filter.object_id.clone())
        .bind(filter.before_id)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    object_type: r.try_get("object_type")?,
                    object_id: r.try_get("object_id")?,
                    before_json: r.try_get("before_json")?,
                    after_json: r.try_get("after_json")?,
                })
            })
            .collect()
    }
}
