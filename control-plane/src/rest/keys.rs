//! LiteLLM's `/key/*` endpoints on the key service: request bodies and query parameters as
//! LiteLLM documents them, answers in its shapes (`key` shown once, `expires` always present,
//! money in USD).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::key_service_server::KeyService;

use super::limits::{LimitFields, cleared_limits};
use super::{Body, RestError, RestResult, grpc_request, json_response, parse_body, parse_query, refuse_unless_off};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new()
        .route("/key/generate", post(generate::<S>))
        .route("/key/update", post(update::<S>))
        .route("/key/delete", post(delete::<S>))
        .route("/key/info", get(info::<S>))
        .route("/key/health", post(health::<S>))
        .route("/key/list", get(list::<S>))
        .route("/key/block", post(block::<S>))
        .route("/key/unblock", post(unblock::<S>))
        .route("/key/regenerate", post(regenerate::<S>))
        .route("/key/{key}/regenerate", post(regenerate_path::<S>))
}

/// LiteLLM key settings Sluice does not enforce: refused when given.
const UNSUPPORTED: [&str; 13] = [
    "key",
    "budget_id",
    "guardrails",
    "aliases",
    "config",
    "permissions",
    "allowed_cache_controls",
    "enforced_params",
    "object_permission",
    "prompts",
    "auto_rotate",
    "rotation_interval",
    "allowed_passthrough_routes",
];

/// The fields of a key a caller sets (LiteLLM's `GenerateKeyRequest` / `UpdateKeyRequest`).
#[derive(Debug, Default, Deserialize)]
struct KeyFields {
    key_alias: Option<String>,
    user_id: Option<String>,
    team_id: Option<String>,
    organization_id: Option<String>,
    models: Option<Vec<String>>,
    #[serde(flatten)]
    limits: LimitFields,
    metadata: Option<Map<String, Value>>,
    tags: Option<Vec<String>>,
    allowed_routes: Option<Vec<String>>,
    /// Client addresses (CIDRs) the key may be used from.
    allowed_ips: Option<Vec<String>>,
    model_rpm_limit: Option<HashMap<String, i64>>,
    model_tpm_limit: Option<HashMap<String, i64>>,
    /// `{"gpt-4o": 10.0}`, or LiteLLM's newer `{"gpt-4o": {"budget_limit": 10.0}}`.
    model_max_budget: Option<HashMap<String, Value>>,
    duration: Option<String>,
    key_type: Option<String>,
    blocked: Option<bool>,
}

impl KeyFields {
    fn limits(&self) -> pb::Limits {
        self.limits.limits()
    }

    fn has_model_limits(&self) -> bool {
        self.model_rpm_limit.is_some() || self.model_tpm_limit.is_some() || self.model_max_budget.is_some()
    }

    /// The per-model limits given, over `current` (each map given replaces its own).
    fn model_limits(&self, current: Option<pb::ModelLimits>) -> Result<pb::ModelLimits, RestError> {
        let mut limits = current.unwrap_or_default();
        if let Some(rpm) = &self.model_rpm_limit {
            limits.rpm = rpm.clone().into_iter().collect();
        }
        if let Some(tpm) = &self.model_tpm_limit {
            limits.tpm = tpm.clone().into_iter().collect();
        }
        if let Some(budgets) = &self.model_max_budget {
            let mut max_budget = std::collections::HashMap::new();
            for (model, budget) in budgets {
                let usd = match budget {
                    Value::Number(n) => n.as_f64(),
                    Value::Object(o) if o.get("time_period").is_some_and(|p| !p.is_null()) => {
                        return Err(RestError::bad_request(format!(
                            "model_max_budget.{model}.time_period: a per-model budget window is not supported by \
                             Sluice (the key's budget_duration applies)"
                        )));
                    }
                    Value::Object(o) => o.get("budget_limit").and_then(Value::as_f64),
                    _ => None,
                };
                let usd = usd.ok_or_else(|| {
                    RestError::invalid("model_max_budget", format!("model_max_budget.{model}: must be a number of USD"))
                })?;
                max_budget.insert(model.clone(), usd);
            }
            limits.max_budget = max_budget;
        }
        Ok(limits)
    }

    fn key_type(&self) -> Result<pb::KeyType, RestError> {
        Ok(match self.key_type.as_deref() {
            None | Some("default") => pb::KeyType::Unspecified,
            Some("llm_api") => pb::KeyType::LlmApi,
            Some("management") => pb::KeyType::Management,
            Some("read_only") => pb::KeyType::ReadOnly,
            Some(other) => {
                return Err(RestError::invalid(
                    "key_type",
                    format!("key_type: {other:?} is not one of llm_api, management, read_only, default"),
                ));
            }
        })
    }

    fn metadata_json(&self) -> Option<String> {
        self.metadata.as_ref().map(|m| Value::Object(m.clone()).to_string())
    }
}

/// A body's fields, after the settings Sluice would not enforce are refused.
fn key_fields(body: &Bytes) -> Result<(KeyFields, Value), RestError> {
    let value: Value = parse_body(body)?;
    refuse_unless_off(&value, &UNSUPPORTED)?;
    let fields = parse_body(body)?;
    Ok((fields, value))
}

/// A key as LiteLLM shows it: `token` is Sluice's key id (a key's digest is never shown),
/// `key_name` its abbreviation, `key` only when it was just made.
pub(super) fn key_json(key: &pb::Key, plaintext: Option<&str>) -> Value {
    let limits = key.limits.clone().unwrap_or_default();
    let model_limits = key.model_limits.clone().unwrap_or_default();
    let metadata: Value = serde_json::from_str(&key.metadata_json).unwrap_or_else(|_| json!({}));
    let key_type = match pb::KeyType::try_from(key.key_type).unwrap_or(pb::KeyType::Unspecified) {
        pb::KeyType::Unspecified => "default",
        pb::KeyType::LlmApi => "llm_api",
        pb::KeyType::Management => "management",
        pb::KeyType::ReadOnly => "read_only",
    };
    let mut out = json!({
        "token": key.key_id,
        // LiteLLM's `sk-...abcd` (the stored prefix ends in its own ellipsis).
        "key_name": format!("{}...{}", key.key_prefix.trim_end_matches('…'), key.last4),
        "key_alias": key.key_alias,
        "expires": key.expires_at,
        "models": key.models,
        "spend": key.spend,
        "max_budget": limits.max_budget,
        "soft_budget": limits.soft_budget,
        "budget_duration": limits.budget_duration,
        "budget_reset_at": crate::budget::budget_reset_at(limits.budget_duration.as_deref()),
        "tpm_limit": limits.tpm_limit,
        "rpm_limit": limits.rpm_limit,
        "max_parallel_requests": limits.max_parallel_requests,
        "model_rpm_limit": model_limits.rpm,
        "model_tpm_limit": model_limits.tpm,
        "model_max_budget": model_limits.max_budget,
        "user_id": key.user_id,
        "team_id": key.team_id,
        "organization_id": key.organization_id,
        "metadata": metadata,
        "tags": key.tags,
        "allowed_routes": key.allowed_routes,
        "allowed_ips": key.allowed_ips,
        "key_type": key_type,
        "blocked": key.blocked,
        "created_at": key.created_at,
        "updated_at": key.updated_at,
        "created_by": key.created_by,
        "last_used_at": key.last_used_at,
    });
    if let (Some(plaintext), Some(obj)) = (plaintext, out.as_object_mut()) {
        obj.insert("key".into(), json!(plaintext));
    }
    out
}

/// The key a body or query names: the key itself (`sk-…`), or Sluice's key id (`token`).
fn key_ref(key: &str) -> pb::KeyRef {
    let r = if key.starts_with("sk-") {
        pb::key_ref::Ref::Key(key.to_owned())
    } else {
        pb::key_ref::Ref::KeyId(key.to_owned())
    };
    pb::KeyRef { r#ref: Some(r) }
}

async fn generate<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    // LiteLLM's clients may send no body at all for a key with no settings.
    let (fields, _) = if body.is_empty() { (KeyFields::default(), Value::Null) } else { key_fields(&body)? };
    let spec = pb::KeySpec {
        key_alias: fields.key_alias.clone(),
        user_id: fields.user_id.clone(),
        team_id: fields.team_id.clone(),
        organization_id: fields.organization_id.clone(),
        models: fields.models.clone().unwrap_or_default(),
        limits: Some(fields.limits()),
        model_limits: Some(fields.model_limits(None)?),
        allowed_routes: fields.allowed_routes.clone().unwrap_or_default(),
        metadata_json: fields.metadata_json(),
        tags: fields.tags.clone().unwrap_or_default(),
        key_type: fields.key_type()? as i32,
        duration: fields.duration.clone(),
        blocked: fields.blocked.unwrap_or(false),
        allowed_ips: fields.allowed_ips.clone().unwrap_or_default(),
    };
    let request = grpc_request(&headers, pb::GenerateKeyRequest { spec: Some(spec) })?;
    let made = KeyService::generate_key(&*admin, request).await?.into_inner();
    let info = made.info.unwrap_or_default();
    Ok(json_response(StatusCode::OK, &key_json(&info, Some(&made.key))))
}

#[derive(Deserialize)]
struct KeyOnly {
    key: String,
}

async fn update<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let value: Value = parse_body(&body)?;
    let KeyOnly { key } = parse_body(&body)?;
    let without_key: Value = match value {
        Value::Object(mut o) => {
            o.remove("key");
            Value::Object(o)
        }
        other => other,
    };
    refuse_unless_off(&without_key, &UNSUPPORTED)?;
    let fields: KeyFields = parse_body(&body)?;
    if fields.key_type.is_some() || fields.organization_id.is_some() || fields.blocked.is_some() {
        return Err(RestError::bad_request(
            "key_type, organization_id and blocked are set when a key is made (blocked: /key/block, /key/unblock)",
        ));
    }
    let model_limits = if fields.has_model_limits() {
        // Each per-model map given replaces its own; the others stay as they are.
        let current = KeyService::get_key(&*admin, grpc_request(&headers, key_ref(&key))?).await?.into_inner();
        Some(fields.model_limits(current.model_limits)?)
    } else {
        None
    };
    // A limit set to null is removed (LiteLLM's way to lift one).
    let cleared = cleared_limits(&without_key);
    let list = |values: &Option<Vec<String>>| values.clone().map(|values| pb::StringList { values });
    let request = pb::UpdateKeyRequest {
        r#ref: Some(key_ref(&key)),
        key_alias: fields.key_alias.clone(),
        user_id: fields.user_id.clone(),
        team_id: fields.team_id.clone(),
        models: list(&fields.models),
        limits: Some(fields.limits()),
        clear_limits: cleared,
        model_limits,
        allowed_routes: list(&fields.allowed_routes),
        metadata_json: fields.metadata_json(),
        tags: list(&fields.tags),
        duration: fields.duration.clone(),
        allowed_ips: list(&fields.allowed_ips),
    };
    let updated = KeyService::update_key(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &key_json(&updated, None)))
}

#[derive(Deserialize)]
struct DeleteBody {
    /// LiteLLM's client sends the list it was not given as null.
    keys: Option<Vec<String>>,
    key_aliases: Option<Vec<String>>,
}

async fn delete<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let DeleteBody { keys, key_aliases } = parse_body(&body)?;
    let (keys, key_aliases) = (keys.unwrap_or_default(), key_aliases.unwrap_or_default());
    if keys.is_empty() && key_aliases.is_empty() {
        return Err(RestError::bad_request("name the keys to delete: keys or key_aliases"));
    }
    let mut refs: Vec<(String, pb::KeyRef)> = keys
        .iter()
        .map(|k| (k.clone(), key_ref(k)))
        .chain(
            key_aliases.iter().map(|a| (a.clone(), pb::KeyRef { r#ref: Some(pb::key_ref::Ref::KeyAlias(a.clone())) })),
        )
        .collect();
    // A key named twice is deleted once.
    let mut seen = std::collections::HashSet::new();
    refs.retain(|(named, _)| seen.insert(named.clone()));
    // Every key must exist and be the caller's to see before any is deleted: a bad list
    // changes nothing.
    for (_, r) in &refs {
        KeyService::get_key(&*admin, grpc_request(&headers, r.clone())?).await?;
    }
    let mut deleted = Vec::with_capacity(refs.len());
    for (named, r) in refs {
        KeyService::delete_key(&*admin, grpc_request(&headers, r)?).await?;
        deleted.push(named);
    }
    Ok(json_response(StatusCode::OK, &json!({"deleted_keys": deleted})))
}

#[derive(Deserialize)]
struct InfoQuery {
    key: Option<String>,
}

async fn info<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let InfoQuery { key } = parse_query(query.as_deref())?;
    // No key named: the caller's own (LiteLLM's answer to a virtual key asking about itself).
    let named = key.as_deref().map_or_else(pb::KeyRef::default, key_ref);
    let found = KeyService::get_key(&*admin, grpc_request(&headers, named)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &json!({"key": found.key_id, "info": key_json(&found, None)})))
}

/// LiteLLM's `/key/health`: is the calling key healthy? LiteLLM tests the key's own logging
/// callbacks; a Sluice key has none, so a key that authenticates is healthy (an admin key, which
/// names no key of its own, included) and any other caller gets the service's refusal.
async fn health<S: Store>(State(admin): AdminState<S>, headers: HeaderMap) -> RestResult {
    match KeyService::get_key(&*admin, grpc_request(&headers, pb::KeyRef::default())?).await {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::InvalidArgument => {}
        Err(status) => return Err(status.into()),
    }
    Ok(json_response(StatusCode::OK, &json!({"key": "healthy", "logging_callbacks": null})))
}

#[derive(Deserialize)]
struct ListQuery {
    page: Option<u32>,
    size: Option<u32>,
    user_id: Option<String>,
    team_id: Option<String>,
    organization_id: Option<String>,
    key_alias: Option<String>,
    /// A key's token (Sluice's key id): that key alone.
    key_hash: Option<String>,
    #[serde(default)]
    return_full_object: bool,
    #[serde(default)]
    include_team_keys: bool,
}

/// LiteLLM pages by number (`page`, `size`); the service by token: a page is reached by
/// walking the tokens before it.
async fn list<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let q: ListQuery = parse_query(query.as_deref())?;
    if q.include_team_keys {
        // Another question than the filters ask: refused, not answered with fewer keys.
        return Err(RestError::bad_request("include_team_keys: not supported by Sluice (list with team_id)"));
    }
    let page = q.page.unwrap_or(1).max(1);
    let size = q.size.unwrap_or(10).clamp(1, 100);
    if let Some(token) = &q.key_hash {
        let key = KeyService::get_key(&*admin, grpc_request(&headers, key_ref(token))?).await?.into_inner();
        let keys = vec![if q.return_full_object { key_json(&key, None) } else { json!(key.key_id) }];
        return Ok(json_response(
            StatusCode::OK,
            &json!({"keys": keys, "total_count": 1, "current_page": 1, "total_pages": 1}),
        ));
    }
    let mut token = String::new();
    let mut total = 0;
    let mut keys: Vec<pb::Key> = Vec::new();
    for n in 1..=page {
        let request = pb::ListKeysRequest {
            team_id: q.team_id.clone(),
            user_id: q.user_id.clone(),
            organization_id: q.organization_id.clone(),
            key_alias: q.key_alias.clone(),
            page_size: size,
            page_token: std::mem::take(&mut token),
        };
        let found = KeyService::list_keys(&*admin, grpc_request(&headers, request)?).await?.into_inner();
        total = found.total;
        if n == page {
            keys = found.keys;
        } else if found.next_page_token.is_empty() {
            break; // past the last page: none
        }
        token = found.next_page_token;
    }
    let keys: Vec<Value> = if q.return_full_object {
        keys.iter().map(|k| key_json(k, None)).collect()
    } else {
        keys.iter().map(|k| json!(k.key_id)).collect()
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "keys": keys,
            "total_count": total,
            "current_page": page,
            "total_pages": total.div_ceil(u64::from(size)),
        }),
    ))
}

async fn block<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let KeyOnly { key } = parse_body(&body)?;
    let blocked = KeyService::block_key(&*admin, grpc_request(&headers, key_ref(&key))?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &key_json(&blocked, None)))
}

async fn unblock<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let KeyOnly { key } = parse_body(&body)?;
    let unblocked = KeyService::unblock_key(&*admin, grpc_request(&headers, key_ref(&key))?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &key_json(&unblocked, None)))
}

#[derive(Deserialize)]
struct RegenerateBody {
    key: Option<String>,
    grace_period: Option<String>,
}

async fn regenerate<S: Store>(state: AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    regenerate_key(state, headers, None, body).await
}

async fn regenerate_path<S: Store>(
    state: AdminState<S>,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: Body,
) -> RestResult {
    regenerate_key(state, headers, Some(key), body?).await
}

/// A new secret for the key (its id, settings and spend stay); the previous one works for
/// `grace_period`. LiteLLM also takes new settings here: Sluice takes them on `/key/update`.
async fn regenerate_key<S: Store>(
    State(admin): AdminState<S>,
    headers: HeaderMap,
    path_key: Option<String>,
    body: Bytes,
) -> RestResult {
    let (body_key, grace_period) = if body.is_empty() {
        (None, None)
    } else {
        let value: Value = parse_body(&body)?;
        if let Some(other) = value.as_object().and_then(|o| {
            o.iter()
                .find(|(k, v)| !matches!(k.as_str(), "key" | "grace_period") && !v.is_null())
                .map(|(k, _)| k.clone())
        }) {
            return Err(RestError::bad_request(format!(
                "{other}: settings are changed with /key/update; /key/regenerate takes key and grace_period"
            )));
        }
        let RegenerateBody { key, grace_period } = parse_body(&body)?;
        (key, grace_period)
    };
    let key =
        path_key.or(body_key).ok_or_else(|| RestError::invalid("key", "key: the key to regenerate is required"))?;
    let request = pb::RegenerateKeyRequest { r#ref: Some(key_ref(&key)), grace_period };
    let made = KeyService::regenerate_key(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    let info = made.info.unwrap_or_default();
    Ok(json_response(StatusCode::OK, &key_json(&info, Some(&made.key))))
}
