//! Who is calling, and what they may do.
//!
//! Callers authenticate with the master key or a management key (gRPC metadata
//! `authorization: Bearer …`). The decisions are pure functions of the [`Principal`] and the
//! object, so the authorisation matrix is tested without a server.
//!
//! Roles today: the master key is `proxy_admin` (everything). A management key acts as an
//! `internal_user` scoped to its own `user_id` and `team_id`: it may create LLM API keys for
//! that user, within its own models, and manage keys that user owns. A read-only key may only
//! read within the same scope. LLM API keys cannot call the admin API.

use sluice_core::keys::{self, KeyHash};

use super::error::{AdminError, AdminResult};
use crate::store::{KeyLookup, KeyRecord, KeyStore, KeyType, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ProxyAdmin,
    InternalUser,
    InternalUserViewer,
}

#[derive(Debug, Clone)]
pub struct Principal {
    /// How audit rows name the caller: `master` or `key:<key_id>`.
    pub actor: String,
    pub role: Role,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// Models the caller may hand out (empty: any).
    pub models: Vec<String>,
}

impl Principal {
    pub fn master() -> Self {
        Self { actor: "master".into(), role: Role::ProxyAdmin, user_id: None, team_id: None, models: Vec::new() }
    }

    fn from_key(key: &KeyRecord) -> Self {
        let role = if key.key_type == KeyType::ReadOnly { Role::InternalUserViewer } else { Role::InternalUser };
        Self {
            actor: format!("key:{}", key.key_id),
            role,
            user_id: key.user_id.clone(),
            team_id: key.team_id.clone(),
            models: key.models.clone(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::ProxyAdmin
    }

    /// May this caller see the key?
    pub fn can_read_key(&self, key: &KeyRecord) -> bool {
        self.is_admin() || (self.user_id.is_some() && key.user_id == self.user_id)
    }

    /// May this caller change, rotate, block or delete the key?
    pub fn can_manage_key(&self, key: &KeyRecord) -> AdminResult<()> {
        if self.role == Role::InternalUserViewer {
            return Err(AdminError::PermissionDenied("a read-only key cannot change keys".into()));
        }
        if self.can_read_key(key) {
            Ok(())
        } else {
            // Same answer as for a key that does not exist: no probing other tenants' keys.
            Err(AdminError::NotFound("no such key".into()))
        }
    }

    /// May this caller create (or turn a key into) one with these fields? A caller never grants
    /// more than it holds.
    pub fn can_grant(&self, key: &KeyRecord) -> AdminResult<()> {
        if self.is_admin() {
            return Ok(());
        }
        if self.role == Role::InternalUserViewer {
            return Err(AdminError::PermissionDenied("a read-only key cannot create or change keys".into()));
        }
        let Some(user) = &self.user_id else {
            return Err(AdminError::PermissionDenied("this management key belongs to no user".into()));
        };
        if key.user_id.as_ref() != Some(user) {
            return Err(AdminError::PermissionDenied(format!("keys you make must belong to your user ({user})")));
        }
        if key.team_id.is_some() && key.team_id != self.team_id {
            return Err(AdminError::PermissionDenied("you may only use your own team".into()));
        }
        if key.organization_id.is_some() {
            return Err(AdminError::PermissionDenied("only an admin may set organization_id".into()));
        }
        if key.key_type != KeyType::LlmApi {
            return Err(AdminError::PermissionDenied("only an admin may create management or read-only keys".into()));
        }
        if !self.models.is_empty() {
            if key.models.is_empty() {
                return Err(AdminError::PermissionDenied(format!(
                    "name the models: you may grant only {}",
                    self.models.join(", ")
                )));
            }
            if let Some(m) = key.models.iter().find(|m| !self.models.contains(m)) {
                return Err(AdminError::PermissionDenied(format!("you may not grant model {m:?}")));
            }
        }
        Ok(())
    }

    pub fn can_read_audit(&self) -> AdminResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(AdminError::PermissionDenied("only an admin may read the audit log".into()))
        }
    }
}

/// Resolves the caller from the `authorization` metadata value.
pub async fn authenticate<S: KeyStore>(
    store: &S,
    master_key_hash: Option<&KeyHash>,
    authorization: Option<&[u8]>,
) -> AdminResult<Principal> {
    let token = authorization
        .and_then(keys::bearer_token)
        .ok_or(AdminError::Unauthenticated("send `authorization: Bearer <master key or management key>`"))?;
    let hash = KeyHash::of(token);
    if master_key_hash.is_some_and(|m| m.ct_eq(&hash)) {
        return Ok(Principal::master());
    }
    if keys::check_format(token).is_err() {
        return Err(AdminError::Unauthenticated("the credential is not a Sluice key"));
    }
    let key = match store.get_key(&KeyLookup::Hash(format!("sha256:{}", hash.to_hex()))).await {
        Ok(key) => key,
        Err(crate::store::StoreError::NotFound) => return Err(AdminError::Unauthenticated("unknown key")),
        Err(e) => return Err(e.into()),
    };
    if key.blocked {
        return Err(AdminError::Unauthenticated("the key is blocked"));
    }
    if key.expires_at.is_some_and(|at| at <= now_ms()) {
        return Err(AdminError::Unauthenticated("the key has expired"));
    }
    if key.key_type == KeyType::LlmApi {
        return Err(AdminError::PermissionDenied(
            "an LLM API key cannot call the admin API; use a management key".into(),
        ));
    }
    Ok(Principal::from_key(&key))
}
