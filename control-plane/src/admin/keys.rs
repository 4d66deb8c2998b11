//! `KeyService`: virtual keys over gRPC. Validates input, authorises the caller, and hands the
//! change to the store with its audit row (one transaction).

use sluice_core::endpoint::RouteSet;
use sluice_core::ip_rules::IpRules;
use sluice_core::keys::KeyHash;
use sluice_core::time::format_rfc3339_ms;
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::key_ref::Ref;
use tonic::{Request, Response, Status};

use super::auth::{Principal, Tenancy};
use super::error::{AdminError, AdminResult, missing};
use super::{Admin, random_id};
use crate::budget::{ScopeId, current_spend};
use crate::invalidation::Target;
use crate::key_file::generate_key;
use crate::store::{
    KeyFilter, KeyLookup, KeyRecord, KeyType, LimitsRecord, ModelLimits, NewAudit, Store, StoreError, now_ms,
};

use super::validate::{
    apply_limits, check_name, check_names, dollars, duration_ms, key_metadata, limits_record, limits_to_proto,
    next_page_token, non_negative, page_after, page_size, usd,
};

fn model_limits(m: Option<pb::ModelLimits>) -> AdminResult<ModelLimits> {
    let Some(m) = m else {
        return Ok(ModelLimits::default());
    };
    let mut out = ModelLimits::default();
    for (model, n) in m.rpm {
        check_name("model_limits.rpm", &model)?;
        out.rpm.insert(model, non_negative("model_limits.rpm", Some(n))?.unwrap_or(0));
    }
    for (model, n) in m.tpm {
        check_name("model_limits.tpm", &model)?;
        out.tpm.insert(model, non_negative("model_limits.tpm", Some(n))?.unwrap_or(0));
    }
    for (model, d) in m.max_budget {
        check_name("model_limits.max_budget", &model)?;
        out.max_budget_nanos.insert(model, dollars("model_limits.max_budget", Some(d))?.unwrap_or(0));
    }
    Ok(out)
}

fn routes(values: &[String]) -> AdminResult<Vec<String>> {
    check_names("allowed_routes", values)?;
    RouteSet::from_names(values).map_err(|e| AdminError::InvalidArgument(format!("allowed_routes: {e}")))?;
    Ok(values.to_vec())
}

fn allowed_ips(values: &[String]) -> AdminResult<Vec<String>> {
    IpRules::parse(values).map_err(|e| AdminError::InvalidArgument(format!("allowed_ips: {e}")))?;
    Ok(values.to_vec())
}

fn key_type(t: i32) -> AdminResult<KeyType> {
    match pb::KeyType::try_from(t) {
        Ok(pb::KeyType::Unspecified | pb::KeyType::LlmApi) => Ok(KeyType::LlmApi),
        Ok(pb::KeyType::Management) => Ok(KeyType::Management),
        Ok(pb::KeyType::ReadOnly) => Ok(KeyType::ReadOnly),
        Err(_) => Err(AdminError::InvalidArgument(format!("key_type {t} is not a key type"))),
    }
}

/// The display parts of a plaintext key: its first characters and last four.
fn display_parts(key: &str) -> (String, String) {
    let prefix: String = key.chars().take(14).collect();
    let tail: Vec<char> = key.chars().rev().take(4).collect();
    (format!("{prefix}…"), tail.into_iter().rev().collect())
}

fn key_hash(key: &str) -> String {
    format!("sha256:{}", KeyHash::of(key.as_bytes()).to_hex())
}

/// A new key record from a spec (validated), owned by `spec.user_id` or the caller's user.
fn record_from_spec(spec: pb::KeySpec, caller: &Principal, plaintext: &str) -> AdminResult<KeyRecord> {
    let now = now_ms();
    for (field, value) in [
        ("key_alias", &spec.key_alias),
        ("user_id", &spec.user_id),
        ("team_id", &spec.team_id),
        ("organization_id", &spec.organization_id),
    ] {
        if let Some(v) = value {
            check_name(field, v)?;
        }
    }
    check_names("models", &spec.models)?;
    check_names("tags", &spec.tags)?;
    let (key_prefix, last4) = display_parts(plaintext);
    let mut key = KeyRecord {
        key_id: random_id("key")?,
        key_prefix,
        last4,
        key_alias: spec.key_alias,
        user_id: spec.user_id.or_else(|| caller.user_id.clone()),
        team_id: spec.team_id,
        organization_id: spec.organization_id,
        models: spec.models,
        limits: LimitsRecord::default(),
        model_limits: model_limits(spec.model_limits)?,
        allowed_routes: routes(&spec.allowed_routes)?,
        allowed_ips: allowed_ips(&spec.allowed_ips)?,
        metadata: key_metadata(spec.metadata_json.as_deref())?,
        tags: spec.tags,
        key_type: key_type(spec.key_type)?,
        blocked: spec.blocked,
        expires_at: match spec.duration.as_deref() {
            Some(d) => Some(now.saturating_add(duration_ms("duration", d)?)),
            None => None,
        },
        created_by: Some(caller.actor.clone()),
        created_at: now,
        updated_at: now,
        last_used_at: None,
        version: 1,
        previous_key_valid_until: None,
    };
    if let Some(limits) = &spec.limits {
        apply_limits(&mut key.limits, limits)?;
    }
    Ok(key)
}

fn to_proto(k: &KeyRecord) -> pb::Key {
    pb::Key {
        key_id: k.key_id.clone(),
        key_prefix: k.key_prefix.clone(),
        last4: k.last4.clone(),
        key_alias: k.key_alias.clone(),
        user_id: k.user_id.clone(),
        team_id: k.team_id.clone(),
        organization_id: k.organization_id.clone(),
        models: k.models.clone(),
        limits: Some(limits_to_proto(&k.limits)),
        model_limits: Some(pb::ModelLimits {
            rpm: k.model_limits.rpm.clone().into_iter().collect(),
            tpm: k.model_limits.tpm.clone().into_iter().collect(),
            max_budget: k
                .model_limits
                .max_budget_nanos
                .iter()
                .filter_map(|(m, n)| Some((m.clone(), usd(Some(*n))?)))
                .collect(),
        }),
        allowed_routes: k.allowed_routes.clone(),
        allowed_ips: k.allowed_ips.clone(),
        metadata_json: k.metadata.to_string(),
        tags: k.tags.clone(),
        key_type: match k.key_type {
            KeyType::LlmApi => pb::KeyType::LlmApi,
            KeyType::Management => pb::KeyType::Management,
            KeyType::ReadOnly => pb::KeyType::ReadOnly,
        } as i32,
        blocked: k.blocked,
        expires_at: k.expires_at.map(format_rfc3339_ms),
        created_at: format_rfc3339_ms(k.created_at),
        updated_at: format_rfc3339_ms(k.updated_at),
        last_used_at: k.last_used_at.map(format_rfc3339_ms),
        created_by: k.created_by.clone(),
        previous_key_valid_until: k.previous_key_valid_until.map(format_rfc3339_ms),
        spend: 0.0,
    }
}

impl<S: Store> Admin<S> {
    /// A key as the API shows it, with what it has spent in its current budget window.
    async fn key_proto(&self, key: &KeyRecord) -> AdminResult<pb::Key> {
        let spend = current_spend(&self.store, &ScopeId::Key(key.key_id.clone()), &key.limits).await?;
        Ok(pb::Key { spend, ..to_proto(key) })
    }
}

fn lookup(r: Option<pb::KeyRef>) -> AdminResult<KeyLookup> {
    match r.and_then(|r| r.r#ref) {
        Some(Ref::KeyId(id)) => Ok(KeyLookup::Id(id)),
        Some(Ref::KeyAlias(alias)) => Ok(KeyLookup::Alias(alias)),
        Some(Ref::Key(key)) => Ok(KeyLookup::Hash(key_hash(&key))),
        None => Err(AdminError::InvalidArgument("name the key: key_id, key_alias or key".into())),
    }
}

impl<S: Store> Admin<S> {
    /// The key a caller names, if it may see it (others' keys look like missing ones).
    async fn visible_key(&self, caller: &Principal, r: Option<pb::KeyRef>) -> AdminResult<(KeyRecord, Tenancy)> {
        let key = self.store.get_key(&lookup(r)?).await.map_err(missing("key"))?;
        let tenancy = self.key_tenancy(&key).await;
        if caller.can_read_key(&tenancy) { Ok((key, tenancy)) } else { Err(AdminError::NotFound("no such key".into())) }
    }

    /// Checks that the caller may hand out a key like this one.
    async fn check_grant(&self, caller: &Principal, key: &KeyRecord) -> AdminResult<()> {
        let tenancy = self.key_tenancy(key).await;
        caller.can_grant_key(&tenancy, key.organization_id.as_ref(), &key.models, &key.allowed_routes, key.key_type)
    }

    async fn set_blocked(&self, caller: &Principal, r: pb::KeyRef, blocked: bool) -> AdminResult<pb::Key> {
        let (key, tenancy) = self.visible_key(caller, Some(r)).await?;
        caller.can_manage_key(&tenancy)?;
        let action = if blocked { "key.block" } else { "key.unblock" };
        let audit = NewAudit::new(&caller.actor, action, "key", &key.key_id);
        let after = self
            .store
            .update_key(
                &key.key_id,
                move |k| {
                    k.blocked = blocked;
                    Ok(())
                },
                audit,
            )
            .await?;
        self.invalidate(Target::Key(after.key_id.clone()));
        Ok(to_proto(&after))
    }
}

#[tonic::async_trait]
impl<S: Store> pb::key_service_server::KeyService for Admin<S> {
    async fn generate_key(
        &self,
        request: Request<pb::GenerateKeyRequest>,
    ) -> Result<Response<pb::GeneratedKey>, Status> {
        let caller = self.caller(&request).await?;
        let spec = request.into_inner().spec.unwrap_or_default();
        let plaintext = generate_key().map_err(|_| AdminError::Internal)?;
        let key = record_from_spec(spec, &caller, &plaintext)?;
        self.check_grant(&caller, &key).await?;
        let audit = NewAudit::new(&caller.actor, "key.generate", "key", &key.key_id);
        self.store.insert_key(&key, &key_hash(&plaintext), audit).await.map_err(AdminError::from)?;
        Ok(Response::new(pb::GeneratedKey { key: plaintext, info: Some(to_proto(&key)) }))
    }

    /// A key made by LiteLLM, by the digest LiteLLM stored (`sluice import litellm`). Only an
    /// admin may name a digest: it makes a credential nobody here has seen work.
    async fn import_key(&self, request: Request<pb::ImportKeyRequest>) -> Result<Response<pb::ImportedKey>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_write_global("imported keys")?;
        let req = request.into_inner();
        let digest = req.token_sha256.to_ascii_lowercase();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AdminError::InvalidArgument(
                "token_sha256: 64 hex digits (a key's SHA-256) are required".into(),
            )
            .into());
        }
        let key_hash = format!("sha256:{digest}");
        match self.store.get_key(&KeyLookup::Hash(key_hash.clone())).await {
            Ok(existing) => {
                return Ok(Response::new(pb::ImportedKey { info: Some(to_proto(&existing)), created: false }));
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(AdminError::from(e).into()),
        }
        let mut spec = req.spec.unwrap_or_default();
        if spec.duration.take().is_some() {
            return Err(AdminError::InvalidArgument("spec.duration: an imported key takes expires_at".into()).into());
        }
        // LiteLLM's display form: `sk-...AbCd`.
        let shown = req.key_name.as_deref().unwrap_or("sk-...");
        let mut key = record_from_spec(spec, &caller, shown)?;
        key.key_prefix = "sk-…".into();
        key.last4 = shown.rsplit("...").next().filter(|t| t.len() == 4 && t.is_ascii()).unwrap_or("").to_owned();
        if let Some(at) = req.expires_at.as_deref() {
            let secs = sluice_core::time::parse_rfc3339(at)
                .ok_or_else(|| AdminError::InvalidArgument(format!("expires_at: {at:?} is not an RFC 3339 time")))?;
            key.expires_at = Some(secs.saturating_mul(1000));
        }
        self.check_grant(&caller, &key).await?;
        if req.dry_run {
            return Ok(Response::new(pb::ImportedKey { info: Some(to_proto(&key)), created: true }));
        }
        let audit = NewAudit::new(&caller.actor, "key.import", "key", &key.key_id);
        self.store.insert_key(&key, &key_hash, audit).await.map_err(AdminError::from)?;
        Ok(Response::new(pb::ImportedKey { info: Some(to_proto(&key)), created: true }))
    }

    async fn update_key(&self, request: Request<pb::UpdateKeyRequest>) -> Result<Response<pb::Key>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let (key, tenancy) = self.visible_key(&caller, req.r#ref.clone()).await?;
        caller.can_manage_key(&tenancy)?;
        // Validate and authorise the result up front, so a bad request changes nothing.
        let mut preview = key.clone();
        apply_update(&mut preview, &req)?;
        // A new owner is a new grant; otherwise only widened models need the caller to hold them.
        let owner_changed = (&preview.user_id, &preview.team_id, &preview.organization_id)
            != (&key.user_id, &key.team_id, &key.organization_id);
        if owner_changed {
            self.check_grant(&caller, &preview).await?;
        } else {
            if preview.models != key.models {
                caller.can_grant_models(&preview.models)?;
            }
            if preview.allowed_routes != key.allowed_routes {
                caller.can_grant_routes(&preview.allowed_routes)?;
            }
        }
        let audit = NewAudit::new(&caller.actor, "key.update", "key", &key.key_id);
        let (owner, team) = (preview.user_id.clone(), preview.team_id.clone());
        let after = self
            .store
            .update_key(
                &key.key_id,
                // Applied to the row as it is now (another update may have landed since the
                // preview); the owner and team it grants must still be the ones authorised.
                move |k| {
                    apply_update(k, &req).map_err(|e| StoreError::Refused(e.message()))?;
                    if k.user_id != owner || k.team_id != team {
                        return Err(StoreError::Refused("the key changed owner meanwhile; try again".into()));
                    }
                    Ok(())
                },
                audit,
            )
            .await
            .map_err(AdminError::from)?;
        self.invalidate(Target::Key(after.key_id.clone()));
        Ok(Response::new(to_proto(&after)))
    }

    async fn regenerate_key(
        &self,
        request: Request<pb::RegenerateKeyRequest>,
    ) -> Result<Response<pb::GeneratedKey>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let (key, tenancy) = self.visible_key(&caller, req.r#ref).await?;
        caller.can_manage_key(&tenancy)?;
        let grace_ms = match req.grace_period.as_deref() {
            None | Some("0s" | "0" | "") => 0,
            Some(d) => duration_ms("grace_period", d)?,
        };
        let plaintext = generate_key().map_err(|_| AdminError::Internal)?;
        let (prefix, last4) = display_parts(&plaintext);
        let valid_until = (grace_ms > 0).then(|| now_ms().saturating_add(grace_ms));
        let audit = NewAudit::new(&caller.actor, "key.regenerate", "key", &key.key_id);
        let after = self
            .store
            .rotate_key(&key.key_id, &key_hash(&plaintext), &prefix, &last4, valid_until, audit)
            .await
            .map_err(AdminError::from)?;
        self.invalidate(Target::Key(after.key_id.clone()));
        if grace_ms > 0 {
            // The previous key stops working when its grace ends: drop it from caches then too.
            let invalidations = self.invalidations();
            let key_id = after.key_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(grace_ms.unsigned_abs())).await;
                invalidations.publish(Target::Key(key_id));
            });
        }
        Ok(Response::new(pb::GeneratedKey { key: plaintext, info: Some(to_proto(&after)) }))
    }

    async fn block_key(&self, request: Request<pb::KeyRef>) -> Result<Response<pb::Key>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(self.set_blocked(&caller, request.into_inner(), true).await?))
    }

    async fn unblock_key(&self, request: Request<pb::KeyRef>) -> Result<Response<pb::Key>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(self.set_blocked(&caller, request.into_inner(), false).await?))
    }

    async fn delete_key(&self, request: Request<pb::KeyRef>) -> Result<Response<pb::DeleteKeyResponse>, Status> {
        let caller = self.caller(&request).await?;
        let (key, tenancy) = self.visible_key(&caller, Some(request.into_inner())).await?;
        caller.can_manage_key(&tenancy)?;
        let audit = NewAudit::new(&caller.actor, "key.delete", "key", &key.key_id);
        self.store.delete_key(&key.key_id, audit).await.map_err(AdminError::from)?;
        self.invalidate(Target::Key(key.key_id.clone()));
        Ok(Response::new(pb::DeleteKeyResponse { key_id: key.key_id }))
    }

    async fn get_key(&self, request: Request<pb::KeyRef>) -> Result<Response<pb::Key>, Status> {
        let caller = match self.caller(&request).await {
            Ok(caller) => caller,
            // LiteLLM lets a virtual key read its own info, and nothing else of the admin API.
            Err(AdminError::PermissionDenied(why)) => {
                let authorization = request.metadata().get("authorization").map(|v| v.as_bytes());
                let Some(own) = super::auth::llm_key_itself(&self.store, authorization).await? else {
                    return Err(AdminError::PermissionDenied(why).into());
                };
                let named = request.into_inner();
                let itself = match named.r#ref {
                    None => true,
                    Some(_) => self.store.get_key(&lookup(Some(named))?).await.is_ok_and(|k| k.key_id == own.key_id),
                };
                if !itself {
                    return Err(
                        AdminError::PermissionDenied("an LLM API key may read its own key info only".into()).into()
                    );
                }
                return Ok(Response::new(self.key_proto(&own).await?));
            }
            Err(e) => return Err(e.into()),
        };
        let (key, _) = self.visible_key(&caller, Some(request.into_inner())).await?;
        Ok(Response::new(self.key_proto(&key).await?))
    }

    async fn list_keys(&self, request: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let limit = page_size(req.page_size);
        let filter = KeyFilter {
            team_id: req.team_id,
            user_id: req.user_id,
            organization_id: req.organization_id,
            key_alias: req.key_alias,
            after_key_id: page_after(req.page_token),
            limit,
            visible_to: caller.key_visibility(),
        };
        let (keys, total) = self.store.list_keys(&filter).await.map_err(AdminError::from)?;
        let next_page_token = next_page_token(keys.last().map(|k| k.key_id.clone()), keys.len(), limit);
        let mut listed = Vec::with_capacity(keys.len());
        for key in &keys {
            listed.push(self.key_proto(key).await?);
        }
        Ok(Response::new(pb::ListKeysResponse { keys: listed, next_page_token, total }))
    }
}

/// Applies an update request to a record (validating every field it touches).
fn apply_update(k: &mut KeyRecord, req: &pb::UpdateKeyRequest) -> AdminResult<()> {
    if let Some(alias) = &req.key_alias {
        check_name("key_alias", alias)?;
        k.key_alias = Some(alias.clone());
    }
    if let Some(user) = &req.user_id {
        check_name("user_id", user)?;
        k.user_id = Some(user.clone());
    }
    if let Some(team) = &req.team_id {
        check_name("team_id", team)?;
        k.team_id = Some(team.clone());
    }
    if let Some(models) = &req.models {
        check_names("models", &models.values)?;
        k.models = models.values.clone();
    }
    k.limits = limits_record(&k.limits, req.limits.as_ref(), &req.clear_limits)?;
    if req.model_limits.is_some() {
        k.model_limits = model_limits(req.model_limits.clone())?;
    }
    if let Some(r) = &req.allowed_routes {
        k.allowed_routes = routes(&r.values)?;
    }
    if let Some(ips) = &req.allowed_ips {
        k.allowed_ips = allowed_ips(&ips.values)?;
    }
    if let Some(m) = &req.metadata_json {
        k.metadata = key_metadata(Some(m))?;
    }
    if let Some(tags) = &req.tags {
        check_names("tags", &tags.values)?;
        k.tags = tags.values.clone();
    }
    match req.duration.as_deref() {
        Some("never") => k.expires_at = None,
        Some(d) => k.expires_at = Some(now_ms().saturating_add(duration_ms("duration", d)?)),
        None => {}
    }
    Ok(())
}
