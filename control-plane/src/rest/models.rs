//! LiteLLM's `/model/*` endpoints on the model service: a deployment is one `model_list`
//! entry (`model_name`, `litellm_params`, `model_info`), validated by the same code the
//! gateway runs; a change reaches every Envoy over xDS.
//!
//! And what the deployments make: LiteLLM's `/model_group/info` (one `ModelGroupInfo` per model
//! group, its prices and limits from the gateway's own conversion of the entries, so the
//! built-in price table fills what `model_info` leaves out) and OpenAI's `/models`, `/v1/models`
//! list, both limited to the groups the caller's key is restricted to.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_core::config::Deployment;
use sluice_core::litellm::from_litellm;
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::model_service_server::ModelService;

use super::{Body, RestError, RestResult, grpc_request, json_response, parse_body, parse_query};
use crate::admin::{Admin, auth};
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new()
        .route("/model/new", post(create::<S>))
        .route("/model/update", post(update::<S>))
        .route("/model/delete", post(delete::<S>))
        .route("/model/info", get(info::<S>))
        .route("/v1/model/info", get(info::<S>))
        .route("/model_group/info", get(group_info::<S>))
        .route("/models", get(list_groups::<S>))
        .route("/v1/models", get(list_groups::<S>))
}

/// A deployment as LiteLLM's `/model/info` shows it (`api_key` is `os.environ/NAME`, a name,
/// never a secret: the service keeps no other form).
fn model_json(m: &pb::ModelDeployment) -> Value {
    let object = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_else(|_| json!({}));
    let mut info = object(&m.model_info_json);
    if let Some(info) = info.as_object_mut() {
        info.insert("id".into(), json!(m.deployment_id));
        info.insert("created_at".into(), json!(m.created_at));
        info.insert("updated_at".into(), json!(m.updated_at));
        info.insert("db_model".into(), json!(m.source == "api"));
    }
    json!({"model_name": m.model_name, "litellm_params": object(&m.litellm_params_json), "model_info": info})
}

#[derive(Deserialize)]
struct NewModel {
    model_name: String,
    litellm_params: Map<String, Value>,
    #[serde(default)]
    model_info: Option<Map<String, Value>>,
}

async fn create<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let new: NewModel = parse_body(&body)?;
    let request = pb::CreateModelRequest {
        model_name: new.model_name,
        litellm_params_json: Value::Object(new.litellm_params).to_string(),
        model_info_json: Value::Object(new.model_info.unwrap_or_default()).to_string(),
    };
    let made = ModelService::create_model(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    let mut answer = model_json(&made);
    if let Some(obj) = answer.as_object_mut()
        && !made.warnings.is_empty()
    {
        obj.insert("warnings".into(), json!(made.warnings));
    }
    Ok(json_response(StatusCode::OK, &answer))
}

/// LiteLLM's `/model/update`: the deployment named by `model_info.id`; each of `model_name`,
/// `litellm_params`, `model_info` given replaces the current one.
#[derive(Deserialize)]
struct ModelUpdate {
    model_name: Option<String>,
    litellm_params: Option<Map<String, Value>>,
    model_info: Map<String, Value>,
}

async fn update<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let change: ModelUpdate = parse_body(&body)?;
    let id = change
        .model_info
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| RestError::invalid("model_info", "model_info.id: the deployment to update is required"))?
        .to_owned();
    // Only `id` given: the deployment's model_info stays as it is.
    let info = (change.model_info.len() > 1).then(|| Value::Object(change.model_info.clone()).to_string());
    let request = pb::UpdateModelRequest {
        deployment_id: id,
        model_name: change.model_name,
        litellm_params_json: change.litellm_params.map(|p| Value::Object(p).to_string()),
        model_info_json: info,
    };
    let updated = ModelService::update_model(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &model_json(&updated)))
}

#[derive(Deserialize)]
struct ModelId {
    id: String,
}

async fn delete<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let ModelId { id } = parse_body(&body)?;
    let request = pb::ModelRef { deployment_id: id };
    let deleted = ModelService::delete_model(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &json!({"message": format!("Model: {} deleted successfully", deleted.id)})))
}

#[derive(Deserialize)]
struct InfoQuery {
    litellm_model_id: Option<String>,
}

/// Every deployment (the service's pages walked).
async fn all_deployments<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
) -> Result<Vec<pb::ModelDeployment>, RestError> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::ListModelsRequest { model_name: None, page_size: 500, page_token: token };
        let page = ModelService::list_models(admin, grpc_request(headers, request)?).await?.into_inner();
        all.extend(page.models);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        token = page.next_page_token;
    }
}

/// Every deployment, or the one `litellm_model_id` names.
async fn info<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let InfoQuery { litellm_model_id } = parse_query(query.as_deref())?;
    let models = match litellm_model_id {
        Some(id) => {
            let request = pb::ModelRef { deployment_id: id };
            vec![ModelService::get_model(&*admin, grpc_request(&headers, request)?).await?.into_inner()]
        }
        None => all_deployments(&admin, &headers).await?,
    };
    let data: Vec<Value> = models.iter().map(model_json).collect();
    Ok(json_response(StatusCode::OK, &json!({"data": data})))
}

/// The model groups a caller may see: those its key is restricted to (`models`: exact names,
/// `prefix*`, or all when empty, `*` or `all-proxy-models`, as the gateway reads a key's
/// models); the master key sees every group.
#[derive(Debug, PartialEq)]
struct Visible(Option<Vec<String>>);

impl Visible {
    fn of(models: &[String]) -> Self {
        if models.is_empty() || models.iter().any(|m| m == "*" || m == "all-proxy-models") {
            Visible(None)
        } else {
            Visible(Some(models.to_vec()))
        }
    }

    fn allows(&self, group: &str) -> bool {
        self.0.as_ref().is_none_or(|models| {
            models.iter().any(|m| m == group || m.strip_suffix('*').is_some_and(|prefix| group.starts_with(prefix)))
        })
    }
}

/// What the caller's key may see, from the services' own authentication of it (the one the
/// `list_models` call just made): a management key's `models`, everything for the master key.
async fn visible_to_caller<S: Store>(admin: &Admin<S>, headers: &HeaderMap) -> Result<Visible, RestError> {
    let request = grpc_request(headers, ())?;
    let authorization = request.metadata().get("authorization").map(|v| v.as_bytes());
    let caller = auth::authenticate(&admin.store, admin.master_key_hash.as_ref(), authorization)
        .await
        .map_err(|e| RestError::from(tonic::Status::from(e)))?;
    Ok(Visible::of(&caller.models))
}

/// One deployment's part in its group's `ModelGroupInfo`.
#[derive(Debug, Clone, PartialEq)]
struct GroupPart {
    group: String,
    /// LiteLLM's provider name: `litellm_params.model`'s prefix (`openai` without one).
    provider: String,
    max_input_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    input_cost_per_token: Option<f64>,
    output_cost_per_token: Option<f64>,
    mode: Option<String>,
    rpm: Option<u64>,
    tpm: Option<u64>,
}

/// A deployment as the gateway converts it (`from_litellm`, with the environment the snapshot
/// is built with): its prices and limits from `model_info`, else from the built-in table. A
/// deployment whose price is unknown has none here (the gateway records it at $0, flagged).
fn converted(m: &pb::ModelDeployment, env: &dyn Fn(&str) -> Option<String>) -> Option<Deployment> {
    let object = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_else(|_| json!({}));
    let entry = json!({
        "model_name": m.model_name,
        "litellm_params": object(&m.litellm_params_json),
        "model_info": object(&m.model_info_json),
    });
    from_litellm(&json!({ "model_list": [entry] }), env).ok()?.gateway.deployments.into_iter().next()
}

fn group_part(m: &pb::ModelDeployment, env: &dyn Fn(&str) -> Option<String>) -> GroupPart {
    let params: Value = serde_json::from_str(&m.litellm_params_json).unwrap_or_else(|_| json!({}));
    let info: Value = serde_json::from_str(&m.model_info_json).unwrap_or_else(|_| json!({}));
    let model = params.get("model").and_then(Value::as_str).unwrap_or("");
    let provider = model.split_once('/').map_or("openai", |(prefix, _)| prefix).to_owned();
    let number = |v: &Value, name: &str| v.get(name).and_then(Value::as_u64);
    match converted(m, env) {
        Some(d) => {
            let priced = !d.price_unknown;
            GroupPart {
                group: m.model_name.clone(),
                provider,
                max_input_tokens: d.max_input_tokens,
                max_output_tokens: d.max_output_tokens,
                input_cost_per_token: priced.then_some(d.pricing.input_cost_per_token),
                output_cost_per_token: priced.then_some(d.pricing.output_cost_per_token),
                mode: d
                    .mode
                    .and_then(|mode| serde_json::to_value(mode).ok())
                    .and_then(|v| v.as_str().map(str::to_owned)),
                rpm: d.rpm,
                tpm: d.tpm,
            }
        }
        // An entry the conversion refuses here (the gateway would not serve it either): what
        // it says of itself.
        None => GroupPart {
            group: m.model_name.clone(),
            provider,
            max_input_tokens: number(&info, "max_input_tokens"),
            max_output_tokens: number(&info, "max_output_tokens").or_else(|| number(&info, "max_tokens")),
            input_cost_per_token: info.get("input_cost_per_token").and_then(Value::as_f64),
            output_cost_per_token: info.get("output_cost_per_token").and_then(Value::as_f64),
            mode: info.get("mode").and_then(Value::as_str).map(str::to_owned),
            rpm: number(&params, "rpm"),
            tpm: number(&params, "tpm"),
        },
    }
}

/// LiteLLM's `ModelGroupInfo` per group, as its router combines a group's deployments: every
/// provider once, the largest limits and prices, the summed rpm and tpm, the first one's mode
/// (`chat` unless set). Sluice knows no capability flags: they are false, as LiteLLM's
/// defaults, and `supported_openai_params` unknown (null).
fn group_infos(parts: &[GroupPart]) -> Vec<Value> {
    let mut groups: BTreeMap<&str, Vec<&GroupPart>> = BTreeMap::new();
    for part in parts {
        groups.entry(part.group.as_str()).or_default().push(part);
    }
    groups
        .into_iter()
        .map(|(group, parts)| {
            let mut providers: Vec<&str> = Vec::new();
            for p in &parts {
                if !providers.contains(&p.provider.as_str()) {
                    providers.push(&p.provider);
                }
            }
            let largest = |pick: fn(&GroupPart) -> Option<u64>| parts.iter().filter_map(|p| pick(p)).max();
            let total =
                |pick: fn(&GroupPart) -> Option<u64>| parts.iter().filter_map(|p| pick(p)).reduce(u64::saturating_add);
            let dearest = |pick: fn(&GroupPart) -> Option<f64>| parts.iter().filter_map(|p| pick(p)).reduce(f64::max);
            let mode = parts.first().and_then(|p| p.mode.clone()).unwrap_or_else(|| "chat".to_owned());
            json!({
                "model_group": group,
                "providers": providers,
                "max_input_tokens": largest(|p| p.max_input_tokens),
                "max_output_tokens": largest(|p| p.max_output_tokens),
                "input_cost_per_token": dearest(|p| p.input_cost_per_token),
                "output_cost_per_token": dearest(|p| p.output_cost_per_token),
                "mode": mode,
                "tpm": total(|p| p.tpm),
                "rpm": total(|p| p.rpm),
                "supports_parallel_function_calling": false,
                "supports_vision": false,
                "supports_web_search": false,
                "supports_url_context": false,
                "supports_reasoning": false,
                "supports_function_calling": false,
                "supported_reasoning_efforts": null,
                "supported_openai_params": null,
                "configurable_clientside_auth_params": null,
            })
        })
        .collect()
}

/// The deployments of the groups the caller may see, each as its part in its group.
async fn visible_parts<S: Store>(admin: &Admin<S>, headers: &HeaderMap) -> Result<Vec<GroupPart>, RestError> {
    let deployments = all_deployments(admin, headers).await?;
    let visible = visible_to_caller(admin, headers).await?;
    let env = |name: &str| std::env::var(name).ok();
    Ok(deployments.iter().filter(|m| visible.allows(&m.model_name)).map(|m| group_part(m, &env)).collect())
}

#[derive(Deserialize)]
struct GroupQuery {
    model_group: Option<String>,
}

/// LiteLLM's `/model_group/info`: `{"data": [ModelGroupInfo…]}`, one group with `model_group`
/// (none when the caller may not see it, or it does not exist).
async fn group_info<S: Store>(
    State(admin): AdminState<S>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> RestResult {
    let GroupQuery { model_group } = parse_query(query.as_deref())?;
    let mut parts = visible_parts(&admin, &headers).await?;
    if let Some(group) = model_group.filter(|g| !g.is_empty()) {
        parts.retain(|p| p.group == group);
    }
    Ok(json_response(StatusCode::OK, &json!({"data": group_infos(&parts)})))
}

/// OpenAI's model list of the groups the caller may see, as the gateway's own `/v1/models`
/// answers it.
async fn list_groups<S: Store>(State(admin): AdminState<S>, headers: HeaderMap) -> RestResult {
    let parts = visible_parts(&admin, &headers).await?;
    let mut names: Vec<&str> = parts.iter().map(|p| p.group.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let data: Vec<Value> =
        names.iter().map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "sluice"})).collect();
    Ok(json_response(StatusCode::OK, &json!({"object": "list", "data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(group: &str, params: Value, info: Value) -> pb::ModelDeployment {
        pb::ModelDeployment {
            deployment_id: format!("{group}-dep"),
            model_name: group.to_owned(),
            litellm_params_json: params.to_string(),
            model_info_json: info.to_string(),
            ..pb::ModelDeployment::default()
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_keys_models_decide_the_groups_it_sees() {
        assert_eq!(Visible::of(&[]), Visible(None));
        assert!(Visible::of(&["all-proxy-models".into()]).allows("anything"));
        assert!(Visible::of(&["*".into(), "x".into()]).allows("anything"));
        let some = Visible::of(&["gpt-4o".into(), "claude-*".into()]);
        assert!(some.allows("gpt-4o") && some.allows("claude-sonnet"));
        assert!(!some.allows("gpt-4o-mini") && !some.allows("gemini"));
    }

    #[test]
    fn prices_and_limits_come_from_model_info_else_the_built_in_table() {
        let table = group_part(
            &deployment(
                "mini",
                json!({"model": "openai/gpt-4o-mini", "api_key": "os.environ/OPENAI_API_KEY"}),
                json!({}),
            ),
            &no_env,
        );
        let listed = sluice_core::price_catalog::lookup("gpt-4o-mini").expect("gpt-4o-mini is in the table");
        assert_eq!(table.provider, "openai");
        assert_eq!(table.input_cost_per_token, Some(listed.input));
        assert_eq!(table.output_cost_per_token, Some(listed.output));
        assert_eq!(table.max_input_tokens, listed.max_input_tokens);
        assert_eq!(table.max_output_tokens, listed.max_output_tokens);
        let configured = group_part(
            &deployment(
                "mini",
                json!({"model": "gpt-4o-mini", "rpm": 10, "tpm": 1000}),
                json!({"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "max_tokens": 99, "mode": "chat"}),
            ),
            &no_env,
        );
        assert_eq!((configured.input_cost_per_token, configured.output_cost_per_token), (Some(1e-6), Some(2e-6)));
        assert_eq!((configured.max_output_tokens, configured.rpm, configured.tpm), (Some(99), Some(10), Some(1000)));
        assert_eq!((configured.provider.as_str(), configured.mode.as_deref()), ("openai", Some("chat")));
        // No price known: none shown (the gateway records its requests at $0, flagged).
        let unknown = group_part(
            &deployment(
                "local",
                json!({"model": "hosted_vllm/my-model", "api_base": "http://127.0.0.1:8000/v1"}),
                json!({}),
            ),
            &no_env,
        );
        assert_eq!((unknown.provider.as_str(), unknown.input_cost_per_token), ("hosted_vllm", None));
    }

    #[test]
    fn a_group_combines_its_deployments_as_litellms_router_does() {
        let part = |provider: &str, input: Option<f64>, max_in: Option<u64>, rpm: Option<u64>| GroupPart {
            group: "g".into(),
            provider: provider.into(),
            max_input_tokens: max_in,
            max_output_tokens: None,
            input_cost_per_token: input,
            output_cost_per_token: input.map(|i| i * 2.0),
            mode: None,
            rpm,
            tpm: None,
        };
        let mut other = part("openai", Some(1e-6), None, None);
        other.group = "another".into();
        other.mode = Some("embedding".into());
        let infos = group_infos(&[
            part("azure", Some(2e-6), Some(1000), Some(5)),
            part("openai", Some(1e-6), Some(4000), Some(7)),
            part("azure", None, None, None),
            other,
        ]);
        let names: Vec<&str> = infos.iter().filter_map(|i| i["model_group"].as_str()).collect();
        assert_eq!(names, ["another", "g"]);
        let g = &infos[1];
        assert_eq!(g["providers"], json!(["azure", "openai"]));
        assert_eq!((g["input_cost_per_token"].as_f64(), g["output_cost_per_token"].as_f64()), (Some(2e-6), Some(4e-6)));
        assert_eq!((g["max_input_tokens"].as_u64(), g["max_output_tokens"].as_null()), (Some(4000), Some(())));
        assert_eq!((g["rpm"].as_u64(), g["tpm"].as_null()), (Some(12), Some(())));
        assert_eq!((g["mode"].as_str(), g["supports_vision"].as_bool()), (Some("chat"), Some(false)));
        assert_eq!(infos[0]["mode"], "embedding");
    }

    #[test]
    fn a_groups_info_holds_no_credential() {
        let part = group_part(
            &deployment("g", json!({"model": "openai/gpt-4o", "api_key": "os.environ/SECRET_NAME"}), json!({})),
            &no_env,
        );
        let text = serde_json::to_string(&group_infos(&[part])).unwrap_or_default();
        assert!(!text.contains("os.environ") && !text.contains("SECRET_NAME"), "{text}");
    }
}
