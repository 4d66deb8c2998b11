//! LiteLLM's `/model/*` endpoints on the model service: a deployment is one `model_list`
//! entry (`model_name`, `litellm_params`, `model_info`), validated by the same code the
//! gateway runs; a change reaches every Envoy over xDS.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::model_service_server::ModelService;

use super::{Body, RestError, RestResult, grpc_request, json_response, parse_body, parse_query};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new()
        .route("/model/new", post(create::<S>))
        .route("/model/update", post(update::<S>))
        .route("/model/delete", post(delete::<S>))
        .route("/model/info", get(info::<S>))
        .route("/v1/model/info", get(info::<S>))
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

/// Every deployment (the service's pages walked), or the one `litellm_model_id` names.
async fn info<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let InfoQuery { litellm_model_id } = parse_query(query.as_deref())?;
    let models = match litellm_model_id {
        Some(id) => {
            let request = pb::ModelRef { deployment_id: id };
            vec![ModelService::get_model(&*admin, grpc_request(&headers, request)?).await?.into_inner()]
        }
        None => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let request = pb::ListModelsRequest { model_name: None, page_size: 500, page_token: token };
                let page = ModelService::list_models(&*admin, grpc_request(&headers, request)?).await?.into_inner();
                all.extend(page.models);
                if page.next_page_token.is_empty() {
                    break all;
                }
                token = page.next_page_token;
            }
        }
    };
    let data: Vec<Value> = models.iter().map(model_json).collect();
    Ok(json_response(StatusCode::OK, &json!({"data": data})))
}
