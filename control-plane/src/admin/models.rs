//! `ModelService`: model deployments, validated as a whole `model_list` by the same core code
//! the gateway runs (LiteLLM conversion, then compilation), so nothing the API accepts can be
//! refused by the filter.

use serde_json::{Value, json};
use sluice_core::config::CompiledConfig;
use sluice_core::litellm::from_litellm;
use sluice_core::time::format_rfc3339_ms;
use sluice_proto::admin::v1 as pb;
use tonic::{Request, Response, Status};

use super::error::{AdminError, AdminResult, missing};
use super::validate::{check_name, next_page_token, page_size};
use super::{Admin, random_id};
use crate::provider_policy::ProviderPolicy;
use crate::store::{ModelRecord, NewAudit, Store, now_ms};

/// Largest JSON object accepted for `litellm_params` or `model_info`.
const MAX_JSON_BYTES: usize = 16 * 1024;

/// Validates a whole `model_list`, including which credential each deployment may name and
/// where it may send it (`policy`); Ok holds the warnings (fields Sluice does not use).
pub fn validate_model_list(entries: &[Value], policy: &ProviderPolicy) -> Result<Vec<String>, Vec<String>> {
    let doc = json!({ "model_list": entries });
    // Credentials are `os.environ/NAME` references, resolved only when the snapshot is built.
    let standalone =
        from_litellm(&doc, &|_| None).map_err(|errs| errs.into_iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let refused: Vec<String> = standalone
        .gateway
        .deployments
        .iter()
        .zip(&standalone.upstreams)
        .enumerate()
        .flat_map(|(i, (deployment, upstream))| {
            let credential = match &upstream.google_credentials {
                Some(source) => Some(policy.check_google(source, &upstream.host)),
                None => deployment.api_key_env.as_deref().map(|name| policy.check_credential(name)),
            };
            let host = policy.check_upstream(&upstream.host);
            let at = format!("model_list[{i}] (model_name {:?})", deployment.model_name);
            [credential.and_then(Result::err), host.err()].into_iter().flatten().map(move |e| format!("{at}: {e}"))
        })
        .collect();
    if !refused.is_empty() {
        return Err(refused);
    }
    CompiledConfig::compile(standalone.gateway)
        .map_err(|errs| errs.into_iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok(standalone.warnings)
}

/// The deployment id LiteLLM's conversion gives an entry (its `model_info.id`, else
/// `<model_name>-<position>`).
pub fn deployment_id(entry: &Value, position: usize) -> String {
    entry.pointer("/model_info/id").and_then(Value::as_str).map_or_else(
        || format!("{}-{position}", entry.get("model_name").and_then(Value::as_str).unwrap_or("model")),
        str::to_owned,
    )
}

fn object(field: &str, text: &str) -> AdminResult<Value> {
    if text.len() > MAX_JSON_BYTES {
        return Err(AdminError::InvalidArgument(format!("{field} is over {MAX_JSON_BYTES} bytes")));
    }
    match serde_json::from_str::<Value>(if text.trim().is_empty() { "{}" } else { text }) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(AdminError::InvalidArgument(format!("{field} must be a JSON object"))),
    }
}

fn to_proto(m: &ModelRecord, warnings: Vec<String>) -> pb::ModelDeployment {
    let part = |k: &str| m.entry.get(k).cloned().unwrap_or_else(|| json!({})).to_string();
    pb::ModelDeployment {
        deployment_id: m.deployment_id.clone(),
        model_name: m.model_name.clone(),
        litellm_params_json: part("litellm_params"),
        model_info_json: part("model_info"),
        source: m.source.clone(),
        created_at: format_rfc3339_ms(m.created_at),
        updated_at: format_rfc3339_ms(m.updated_at),
        warnings,
    }
}

fn entry(model_name: &str, params: Value, mut info: Value, id: &str) -> Value {
    if let Some(obj) = info.as_object_mut() {
        obj.insert("id".into(), Value::String(id.to_owned()));
    }
    json!({ "model_name": model_name, "litellm_params": params, "model_info": info })
}

impl<S: Store> Admin<S> {
    /// Validates the stored deployments with `changed` in place of (or added to) its id, and
    /// `removed` taken out. Returns the warnings for `changed`.
    async fn validate_with(&self, changed: &ModelRecord) -> AdminResult<Vec<String>> {
        // The entry on its own (its errors and warnings read as the caller wrote it) ...
        let alone = |errs: Vec<String>| {
            errs.iter().map(|e| e.replacen("model_list[0]", "the deployment", 1)).collect::<Vec<_>>()
        };
        let warnings = validate_model_list(std::slice::from_ref(&changed.entry), &self.provider_policy)
            .map_err(|errs| AdminError::InvalidArgument(alone(errs).join("; ")))?;
        // ... and within the whole set, as the gateway will compile it.
        let mut all = self.store.all_models().await?;
        all.retain(|m| m.deployment_id != changed.deployment_id);
        all.push(changed.clone());
        let entries: Vec<Value> = all.iter().map(|m| m.entry.clone()).collect();
        validate_model_list(&entries, &self.provider_policy)
            .map_err(|errs| AdminError::InvalidArgument(errs.join("; ")))?;
        Ok(alone(warnings))
    }

    fn admin_only(caller: &super::auth::Principal) -> AdminResult<()> {
        if caller.is_admin() {
            Ok(())
        } else {
            Err(AdminError::PermissionDenied("only an admin may change model deployments".into()))
        }
    }
}

#[tonic::async_trait]
impl<S: Store> pb::model_service_server::ModelService for Admin<S> {
    async fn create_model(
        &self,
        request: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::ModelDeployment>, Status> {
        let caller = self.caller(&request).await?;
        Self::admin_only(&caller)?;
        let req = request.into_inner();
        check_name("model_name", &req.model_name)?;
        let params = object("litellm_params_json", &req.litellm_params_json)?;
        let info = object("model_info_json", &req.model_info_json)?;
        let id = match info.get("id").and_then(Value::as_str) {
            Some(id) => {
                check_name("model_info.id", id)?;
                id.to_owned()
            }
            None => random_id("deployment")?,
        };
        let now = now_ms();
        let record = ModelRecord {
            deployment_id: id.clone(),
            model_name: req.model_name.clone(),
            entry: entry(&req.model_name, params, info, &id),
            source: "api".into(),
            created_at: now,
            updated_at: now,
        };
        if self.store.get_model(&id).await.is_ok() {
            return Err(AdminError::AlreadyExists(format!("deployment {id} already exists")).into());
        }
        let warnings = self.validate_with(&record).await?;
        let audit = NewAudit::new(&caller.actor, "model.create", "model", &id);
        self.store.insert_model(&record, audit).await.map_err(AdminError::from)?;
        self.config_changed();
        Ok(Response::new(to_proto(&record, warnings)))
    }

    async fn update_model(
        &self,
        request: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::ModelDeployment>, Status> {
        let caller = self.caller(&request).await?;
        Self::admin_only(&caller)?;
        let req = request.into_inner();
        let current = self.store.get_model(&req.deployment_id).await.map_err(missing("deployment"))?;
        let name = req.model_name.clone().unwrap_or_else(|| current.model_name.clone());
        check_name("model_name", &name)?;
        let params = match &req.litellm_params_json {
            Some(t) => object("litellm_params_json", t)?,
            None => current.entry.get("litellm_params").cloned().unwrap_or_else(|| json!({})),
        };
        let info = match &req.model_info_json {
            Some(t) => object("model_info_json", t)?,
            None => current.entry.get("model_info").cloned().unwrap_or_else(|| json!({})),
        };
        let new_entry = entry(&name, params, info, &current.deployment_id);
        let mut preview = current.clone();
        preview.model_name = name.clone();
        preview.entry = new_entry.clone();
        // Changed through the API, it is the API's now: a config sync will not revert it.
        preview.source = "api".into();
        let warnings = self.validate_with(&preview).await?;
        let audit = NewAudit::new(&caller.actor, "model.update", "model", &current.deployment_id);
        let after = self
            .store
            .update_model(
                &current.deployment_id,
                move |m| {
                    m.model_name = name;
                    m.entry = new_entry;
                    m.source = "api".into();
                    Ok(())
                },
                audit,
            )
            .await
            .map_err(AdminError::from)?;
        self.config_changed();
        Ok(Response::new(to_proto(&after, warnings)))
    }

    async fn delete_model(&self, request: Request<pb::ModelRef>) -> Result<Response<pb::Deleted>, Status> {
        let caller = self.caller(&request).await?;
        Self::admin_only(&caller)?;
        let id = request.into_inner().deployment_id;
        let audit = NewAudit::new(&caller.actor, "model.delete", "model", &id);
        self.store.delete_model(&id, audit).await.map_err(missing("deployment"))?;
        self.config_changed();
        Ok(Response::new(pb::Deleted { id }))
    }

    async fn get_model(&self, request: Request<pb::ModelRef>) -> Result<Response<pb::ModelDeployment>, Status> {
        let _caller = self.caller(&request).await?;
        let m = self.store.get_model(&request.into_inner().deployment_id).await.map_err(missing("deployment"))?;
        Ok(Response::new(to_proto(&m, Vec::new())))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let _caller = self.caller(&request).await?;
        let req = request.into_inner();
        let limit = page_size(req.page_size);
        let all = self.store.all_models().await.map_err(AdminError::from)?;
        let matching: Vec<&ModelRecord> =
            all.iter().filter(|m| req.model_name.as_ref().is_none_or(|n| &m.model_name == n)).collect();
        let total = matching.len() as u64;
        let page: Vec<&ModelRecord> = matching
            .into_iter()
            .filter(|m| req.page_token.is_empty() || m.deployment_id > req.page_token)
            .take(limit as usize)
            .collect();
        let next_page_token = next_page_token(page.last().map(|m| m.deployment_id.clone()), page.len(), limit);
        Ok(Response::new(pb::ListModelsResponse {
            models: page.into_iter().map(|m| to_proto(m, Vec::new())).collect(),
            next_page_token,
            total,
        }))
    }
}
