//! LiteLLM's `/customer/*` endpoints (and their older `/end_user/*` names) on the customer
//! service: a customer is an end user of the platform's own product, LiteLLM's `user_id` being
//! Sluice's `customer_id`. Answers in LiteLLM's end-user shape: the customer's own limits under
//! LiteLLM's names, the budget it refers to as `litellm_budget_table`, and `spend` (its current
//! budget window's).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::budget_service_server::BudgetService;
use sluice_proto::admin::v1::customer_service_server::CustomerService;

use super::budgets::budget_json;
use super::limits::{LimitFields, cleared_limits, insert_limits};
use super::{Body, RestError, RestResult, grpc_request, json_response, parse_body, parse_query, refuse_unsupported};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

/// Both names LiteLLM answers to: `/end_user/*` is what it called them first.
pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    let mut router = Router::new();
    for prefix in ["/customer", "/end_user"] {
        router = router
            .route(&format!("{prefix}/new"), post(new::<S>))
            .route(&format!("{prefix}/update"), post(update::<S>))
            .route(&format!("{prefix}/delete"), post(delete::<S>))
            .route(&format!("{prefix}/info"), get(info::<S>))
            .route(&format!("{prefix}/list"), get(list::<S>))
            .route(&format!("{prefix}/block"), post(block::<S>))
            .route(&format!("{prefix}/unblock"), post(unblock::<S>));
    }
    router
}

/// LiteLLM customer settings Sluice's customers do not carry: refused when given (`spend`
/// comes from usage, never from the caller).
const UNSUPPORTED: [&str; 7] = [
    "allowed_model_region",
    "default_model",
    "model_max_budget",
    "budget_reset_at",
    "spend",
    "object_permission",
    "metadata",
];

/// The fields of a customer a caller sets (LiteLLM's `NewCustomerRequest` /
/// `UpdateCustomerRequest`). Required fields are optional here so that one of the wrong type
/// is named by `parse_body` (a missing one is named below).
#[derive(Debug, Deserialize)]
struct CustomerFields {
    user_id: Option<String>,
    alias: Option<String>,
    budget_id: Option<String>,
    blocked: Option<bool>,
    #[serde(flatten)]
    limits: LimitFields,
}

/// A body's fields, after the settings Sluice would not enforce are refused.
fn customer_fields(body: &Bytes) -> Result<(CustomerFields, String, Value), RestError> {
    let value: Value = parse_body(body)?;
    refuse_unsupported(&value, &UNSUPPORTED)?;
    let mut fields: CustomerFields = parse_body(body)?;
    let user_id =
        fields.user_id.take().ok_or_else(|| RestError::invalid("user_id", "user_id: the customer's id is required"))?;
    Ok((fields, user_id, value))
}

/// A customer as LiteLLM shows an end user.
fn customer_json(customer: &pb::Customer, budget: Option<&pb::Budget>) -> Value {
    let mut out = Map::new();
    out.insert("user_id".into(), json!(customer.customer_id));
    out.insert("alias".into(), json!(customer.alias));
    out.insert("blocked".into(), json!(customer.blocked));
    out.insert("spend".into(), json!(customer.spend));
    out.insert("budget_id".into(), json!(customer.budget_id));
    insert_limits(&mut out, customer.limits.as_ref());
    out.insert("litellm_budget_table".into(), budget.map(budget_json).unwrap_or(Value::Null));
    out.insert("created_at".into(), json!(customer.created_at));
    out.insert("updated_at".into(), json!(customer.updated_at));
    Value::Object(out)
}

/// The customers as LiteLLM shows them, each with the budget it refers to (each budget read
/// once, with the caller's credential).
async fn customers_json<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    customers: &[pb::Customer],
) -> Result<Vec<Value>, RestError> {
    let mut budgets: HashMap<&str, pb::Budget> = HashMap::new();
    for id in customers.iter().filter_map(|c| c.budget_id.as_deref()) {
        if !budgets.contains_key(id) {
            let request = grpc_request(headers, pb::BudgetRef { budget_id: id.to_owned() })?;
            budgets.insert(id, BudgetService::get_budget(admin, request).await?.into_inner());
        }
    }
    Ok(customers.iter().map(|c| customer_json(c, c.budget_id.as_deref().and_then(|id| budgets.get(id)))).collect())
}

async fn one_customer_json<S: Store>(admin: &Admin<S>, headers: &HeaderMap, customer: pb::Customer) -> RestResult {
    let shown = customers_json(admin, headers, std::slice::from_ref(&customer)).await?;
    Ok(json_response(StatusCode::OK, shown.first().unwrap_or(&Value::Null)))
}

fn customer_ref(id: &str) -> pb::CustomerRef {
    pb::CustomerRef { customer_id: id.to_owned() }
}

async fn new<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let (fields, user_id, _) = customer_fields(&body)?;
    let request = pb::CreateCustomerRequest {
        customer_id: user_id,
        alias: fields.alias,
        budget_id: fields.budget_id,
        limits: Some(fields.limits.limits()),
        blocked: fields.blocked.unwrap_or(false),
    };
    let made = CustomerService::create_customer(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    one_customer_json(&admin, &headers, made).await
}

/// The fields given change; a limit set to null is lifted; the rest stay (an alias or budget
/// can be replaced, not removed).
async fn update<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let (fields, user_id, value) = customer_fields(&body)?;
    if fields.blocked.is_some() {
        return Err(RestError::bad_request("blocked: set with /customer/block and /customer/unblock"));
    }
    let request = pb::UpdateCustomerRequest {
        customer_id: user_id,
        alias: fields.alias,
        budget_id: fields.budget_id,
        limits: Some(fields.limits.limits()),
        clear_limits: cleared_limits(&value),
    };
    let updated = CustomerService::update_customer(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    one_customer_json(&admin, &headers, updated).await
}

/// LiteLLM's `DeleteCustomerRequest` and `BlockUsers` (`user_ids` required).
#[derive(Deserialize)]
struct UserIds {
    user_ids: Option<Vec<String>>,
}

/// The ids a body names, each once, in order (none is a 400).
fn user_ids(body: &Bytes, what: &str) -> Result<Vec<String>, RestError> {
    let UserIds { user_ids } = parse_body(body)?;
    let user_ids =
        user_ids.ok_or_else(|| RestError::invalid("user_ids", "user_ids: a list of customer ids is required"))?;
    if user_ids.is_empty() {
        return Err(RestError::bad_request(format!("user_ids: name the customers to {what}")));
    }
    let mut seen = HashSet::new();
    Ok(user_ids.into_iter().filter(|id| seen.insert(id.clone())).collect())
}

/// Every customer named must exist and be the caller's to see before any is changed: a bad
/// list changes nothing. An unknown one is a 404 naming every unknown one.
async fn check_all_exist<S: Store>(admin: &Admin<S>, headers: &HeaderMap, ids: &[String]) -> Result<(), RestError> {
    let mut unknown = Vec::new();
    for id in ids {
        match CustomerService::get_customer(admin, grpc_request(headers, customer_ref(id))?).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => unknown.push(id.as_str()),
            Err(status) => return Err(status.into()),
        }
    }
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(tonic::Status::not_found(format!("no such customer: {}", unknown.join(", "))).into())
    }
}

async fn delete<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let ids = user_ids(&body, "delete")?;
    check_all_exist(&admin, &headers, &ids).await?;
    for id in &ids {
        CustomerService::delete_customer(&*admin, grpc_request(&headers, customer_ref(id))?).await?;
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "deleted_customers": ids.len(),
            "message": format!("Successfully deleted customers with ids: {}", ids.join(", ")),
        }),
    ))
}

#[derive(Deserialize)]
struct InfoQuery {
    end_user_id: Option<String>,
}

async fn info<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let InfoQuery { end_user_id } = parse_query(query.as_deref())?;
    let id = end_user_id
        .ok_or_else(|| RestError::invalid("end_user_id", "end_user_id: the customer to describe is required"))?;
    let found = CustomerService::get_customer(&*admin, grpc_request(&headers, customer_ref(&id))?).await?.into_inner();
    one_customer_json(&admin, &headers, found).await
}

/// Every customer: the service's pages walked.
async fn all_customers<S: Store>(admin: &Admin<S>, headers: &HeaderMap) -> Result<Vec<pb::Customer>, RestError> {
    let mut customers = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListCustomersRequest { page_size: 500, page_token };
        let page = CustomerService::list_customers(admin, grpc_request(headers, request)?).await?.into_inner();
        customers.extend(page.customers);
        if page.next_page_token.is_empty() {
            return Ok(customers);
        }
        page_token = page.next_page_token;
    }
}

/// Every customer, as LiteLLM lists them (one array, no pages).
async fn list<S: Store>(State(admin): AdminState<S>, headers: HeaderMap) -> RestResult {
    let customers = all_customers(&admin, &headers).await?;
    Ok(json_response(StatusCode::OK, &Value::Array(customers_json(&admin, &headers, &customers).await?)))
}

/// Answers the blocked customers (LiteLLM's `{"blocked_users": [...]}`).
async fn block<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let ids = user_ids(&body, "block")?;
    check_all_exist(&admin, &headers, &ids).await?;
    let mut blocked = Vec::with_capacity(ids.len());
    for id in &ids {
        blocked.push(
            CustomerService::block_customer(&*admin, grpc_request(&headers, customer_ref(id))?).await?.into_inner(),
        );
    }
    Ok(json_response(StatusCode::OK, &json!({"blocked_users": customers_json(&admin, &headers, &blocked).await?})))
}

/// Answers, as LiteLLM does, the ids of the customers that remain blocked.
async fn unblock<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let ids = user_ids(&body, "unblock")?;
    check_all_exist(&admin, &headers, &ids).await?;
    for id in &ids {
        CustomerService::unblock_customer(&*admin, grpc_request(&headers, customer_ref(id))?).await?;
    }
    let still: Vec<String> =
        all_customers(&admin, &headers).await?.into_iter().filter(|c| c.blocked).map(|c| c.customer_id).collect();
    Ok(json_response(StatusCode::OK, &json!({"blocked_users": still})))
}
