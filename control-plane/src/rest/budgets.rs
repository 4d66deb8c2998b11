//! LiteLLM's `/budget/*` endpoints on the budget service: its `BudgetNewRequest` bodies and its
//! budget-table answers, money in USD. The limit fields are shared with `/customer/*`, whose
//! customers carry the same limits.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::budget_service_server::BudgetService;

use super::limits::{LimitFields, cleared_limits, insert_limits};
use super::{Body, RestError, RestResult, grpc_request, json_response, parse_body, refuse_unsupported};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new()
        .route("/budget/new", post(new::<S>))
        .route("/budget/update", post(update::<S>))
        .route("/budget/delete", post(delete::<S>))
        .route("/budget/info", post(info::<S>))
        .route("/budget/list", get(list::<S>))
}

/// LiteLLM budget settings Sluice's budgets do not carry: refused when given. A per-model
/// budget has no place in a budget; the reset time follows from `budget_duration`.
const UNSUPPORTED: [&str; 2] = ["model_max_budget", "budget_reset_at"];

/// A budget as LiteLLM's budget table shows it (without `model_max_budget`,
/// `budget_reset_at`, `created_by`: Sluice's budgets have none of them).
pub(super) fn budget_json(budget: &pb::Budget) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("budget_id".into(), json!(budget.budget_id));
    insert_limits(&mut out, budget.limits.as_ref());
    out.insert("created_at".into(), json!(budget.created_at));
    out.insert("updated_at".into(), json!(budget.updated_at));
    Value::Object(out)
}

/// LiteLLM's `BudgetNewRequest`, the body of `/budget/new` and `/budget/update`.
#[derive(Debug, Deserialize)]
struct BudgetFields {
    budget_id: Option<String>,
    #[serde(flatten)]
    limits: LimitFields,
}

/// A body's fields, after the settings Sluice would not enforce are refused.
fn budget_fields(body: &Bytes) -> Result<(BudgetFields, Value), RestError> {
    let value: Value = parse_body(body)?;
    refuse_unsupported(&value, &UNSUPPORTED)?;
    let fields = parse_body(body)?;
    Ok((fields, value))
}

async fn new<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let (fields, _) = budget_fields(&body)?;
    let request = pb::CreateBudgetRequest {
        budget_id: fields.budget_id.unwrap_or_default(),
        limits: Some(fields.limits.limits()),
    };
    let made = BudgetService::create_budget(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &budget_json(&made)))
}

/// The fields given change; a limit set to null is lifted; the rest stay.
async fn update<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let (fields, value) = budget_fields(&body)?;
    let budget_id = fields
        .budget_id
        .ok_or_else(|| RestError::invalid("budget_id", "budget_id: the budget to update is required"))?;
    let request = pb::UpdateBudgetRequest {
        budget_id,
        limits: Some(fields.limits.limits()),
        clear_limits: cleared_limits(&value),
    };
    let updated = BudgetService::update_budget(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &budget_json(&updated)))
}

/// LiteLLM's `BudgetDeleteRequest` (`id` required; optional here so that one of the wrong type
/// is named by `parse_body`).
#[derive(Deserialize)]
struct DeleteBody {
    id: Option<String>,
}

/// Answers the deleted budget, as LiteLLM does (read before it goes).
async fn delete<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let DeleteBody { id } = parse_body(&body)?;
    let id = id.ok_or_else(|| RestError::invalid("id", "id: the budget to delete is required"))?;
    let budget_ref = || pb::BudgetRef { budget_id: id.clone() };
    let found = BudgetService::get_budget(&*admin, grpc_request(&headers, budget_ref())?).await?.into_inner();
    BudgetService::delete_budget(&*admin, grpc_request(&headers, budget_ref())?).await?;
    Ok(json_response(StatusCode::OK, &budget_json(&found)))
}

/// LiteLLM's `BudgetRequest` (`budgets` required).
#[derive(Deserialize)]
struct InfoBody {
    budgets: Option<Vec<String>>,
}

/// The budgets named, in the order named; an unknown one is a 404 naming every unknown one.
async fn info<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let InfoBody { budgets } = parse_body(&body)?;
    let budgets = budgets.ok_or_else(|| RestError::invalid("budgets", "budgets: a list of budget ids is required"))?;
    if budgets.is_empty() {
        return Err(RestError::bad_request("budgets: name the budget ids to describe"));
    }
    let mut found = Vec::with_capacity(budgets.len());
    let mut unknown = Vec::new();
    for id in budgets {
        let request = grpc_request(&headers, pb::BudgetRef { budget_id: id.clone() })?;
        match BudgetService::get_budget(&*admin, request).await {
            Ok(budget) => found.push(budget_json(&budget.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => unknown.push(id),
            Err(status) => return Err(status.into()),
        }
    }
    if !unknown.is_empty() {
        return Err(tonic::Status::not_found(format!("no such budget: {}", unknown.join(", "))).into());
    }
    Ok(json_response(StatusCode::OK, &Value::Array(found)))
}

/// Every budget, as LiteLLM lists them (one array, no pages): the service's pages walked.
async fn list<S: Store>(State(admin): AdminState<S>, headers: HeaderMap) -> RestResult {
    let mut budgets = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListBudgetsRequest { page_size: 500, page_token };
        let page = BudgetService::list_budgets(&*admin, grpc_request(&headers, request)?).await?.into_inner();
        budgets.extend(page.budgets.iter().map(budget_json));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(json_response(StatusCode::OK, &Value::Array(budgets)))
}
