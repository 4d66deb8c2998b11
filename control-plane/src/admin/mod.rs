//! The admin gRPC API: authorisation, validation and audit around the stores.

pub mod auth;
mod budgets;
mod directory;
pub mod error;
mod keys;
pub mod models;
mod spend;
pub mod validate;

use std::sync::Arc;

use sluice_core::keys::KeyHash;
use sluice_core::time::format_rfc3339_ms;
use sluice_proto::admin::v1 as pb;
use tokio::sync::Notify;

use crate::invalidation::{Invalidations, Target};
use crate::provider_policy::ProviderPolicy;
use tonic::{Request, Response, Status};

use crate::store::{AuditFilter, KeyRecord, Store, TeamRecord, UserRecord};
use auth::Principal;
use auth::Tenancy;
use error::{AdminError, AdminResult};

/// The admin services' shared state: the store, the master key's digest, and the signal that
/// tells the xDS snapshot writer that what Envoys run has changed.
pub struct Admin<S> {
    pub store: S,
    pub master_key_hash: Option<KeyHash>,
    config_changes: Arc<Notify>,
    invalidations: Arc<Invalidations>,
    /// Which credentials and upstreams deployments may name (fixed at start).
    pub provider_policy: ProviderPolicy,
}

impl<S: Store> Admin<S> {
    pub fn new(store: S, master_key_hash: Option<KeyHash>) -> Arc<Self> {
        Self::with_provider_policy(store, master_key_hash, ProviderPolicy::default())
    }

    pub fn with_provider_policy(
        store: S,
        master_key_hash: Option<KeyHash>,
        provider_policy: ProviderPolicy,
    ) -> Arc<Self> {
        let mut epoch = [0u8; 8];
        // Only tells restarts apart: a clock-based epoch is as good if the OS has no entropy.
        if getrandom::fill(&mut epoch).is_err() {
            epoch = crate::store::now_ms().to_le_bytes();
        }
        let epoch = epoch.iter().map(|b| format!("{b:02x}")).collect();
        Arc::new(Self {
            store,
            master_key_hash,
            config_changes: Arc::new(Notify::new()),
            invalidations: Arc::new(Invalidations::new(epoch)),
            provider_policy,
        })
    }

    /// What Envoys must drop from their key caches, published after each committed change.
    pub fn invalidations(&self) -> Arc<Invalidations> {
        Arc::clone(&self.invalidations)
    }

    fn invalidate(&self, target: Target) {
        self.invalidations.publish(target);
    }

    /// Notified after every committed change to what Envoys run (deployments, prices).
    pub fn config_changes(&self) -> Arc<Notify> {
        Arc::clone(&self.config_changes)
    }

    fn config_changed(&self) {
        // A stored permit: a rebuild in progress still sees this change afterwards.
        self.config_changes.notify_one();
    }

    /// The authenticated caller of a request.
    async fn caller<T>(&self, request: &Request<T>) -> AdminResult<Principal> {
        let authorization = request.metadata().get("authorization").map(|v| v.as_bytes());
        auth::authenticate(&self.store, self.master_key_hash.as_ref(), authorization).await
    }

    /// Where a key sits: its owner, its team, and the organization (its own, else its team's,
    /// else its user's).
    async fn key_tenancy(&self, key: &KeyRecord) -> Tenancy {
        let mut organization_id = key.organization_id.clone();
        if organization_id.is_none()
            && let Some(team) = &key.team_id
        {
            organization_id = self.store.get::<TeamRecord>(team).await.ok().and_then(|t| t.organization_id);
        }
        if organization_id.is_none()
            && let Some(user) = &key.user_id
        {
            organization_id = self.store.get::<UserRecord>(user).await.ok().and_then(|u| u.organization_id);
        }
        Tenancy { user_id: key.user_id.clone(), team_id: key.team_id.clone(), organization_id }
    }
}

/// A random identifier with a readable prefix (`key_3f9a…`), 64 bits from the OS.
pub(crate) fn random_id(prefix: &str) -> AdminResult<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|_| AdminError::Internal)?;
    Ok(format!("{prefix}_{:016x}", u64::from_be_bytes(bytes)))
}

#[tonic::async_trait]
impl<S: Store> pb::audit_service_server::AuditService for Admin<S> {
    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_read_audit()?;
        let req = request.into_inner();
        let limit = validate::page_size(req.page_size);
        let before_id = match req.page_token.as_str() {
            "" => None,
            t => Some(t.parse::<i64>().map_err(|_| AdminError::InvalidArgument("bad page_token".into()))?),
        };
        let filter = AuditFilter { object_type: req.object_type, object_id: req.object_id, before_id, limit };
        let entries = self.store.list_audit(&filter).await.map_err(AdminError::from)?;
        let next_page_token = validate::next_page_token(entries.last().map(|e| e.id.to_string()), entries.len(), limit);
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    id: e.id,
                    at: format_rfc3339_ms(e.at),
                    actor: e.actor,
                    action: e.action,
                    object_type: e.object_type,
                    object_id: e.object_id,
                    before_json: e.before_json,
                    after_json: e.after_json,
                })
                .collect(),
            next_page_token,
        }))
    }
}
