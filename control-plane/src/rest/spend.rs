//! LiteLLM's spend endpoints on the spend service: `/spend/logs` (per-request rows, newest
//! first) and `/global/spend/logs`, `/spend/tags` (spend by request tag). Scoped as the gRPC
//! service scopes spend: an org admin sees its organization, anyone else its own.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::key_service_server::KeyService;
use sluice_proto::admin::v1::spend_service_server::SpendService;

use super::{RestResult, grpc_request, json_response, parse_query};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new()
        .route("/spend/logs", get(logs::<S>))
        .route("/global/spend/logs", get(logs::<S>))
        .route("/spend/tags", get(tags::<S>))
}

/// LiteLLM's filters (`api_key` is the key itself or its token, Sluice's key id).
#[derive(Deserialize)]
struct LogsQuery {
    api_key: Option<String>,
    user_id: Option<String>,
    team_id: Option<String>,
    request_id: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    page: Option<u32>,
    page_size: Option<u32>,
}

/// `start_date`/`end_date` as the service's days: LiteLLM sends `YYYY-MM-DD` (a longer
/// timestamp is cut to its day).
fn day(date: Option<String>) -> String {
    date.map(|d| d.chars().take(10).collect()).unwrap_or_default()
}

/// One row in LiteLLM's `SpendLogs` shape; Sluice's own facts under `metadata`.
fn log_json(l: &pb::SpendLogEntry) -> Value {
    let failed: Value = serde_json::from_str(&l.failed_attempts_json).unwrap_or_else(|_| json!([]));
    json!({
        "request_id": l.request_id,
        "api_key": l.key_id,
        "spend": l.spend,
        "prompt_tokens": l.prompt_tokens,
        "completion_tokens": l.completion_tokens,
        "total_tokens": l.prompt_tokens.saturating_add(l.completion_tokens),
        "startTime": l.start_time,
        "model_group": l.model_group,
        "model_id": l.deployment_id,
        "user": l.user_id,
        "end_user": l.end_user,
        "team_id": l.team_id,
        "organization_id": l.organization_id,
        "request_tags": l.tags,
        "status": if (200..400).contains(&l.status) { "success" } else { "failure" },
        "metadata": {
            "http_status": l.status,
            "outcome": l.outcome,
            "estimated": l.estimated,
            "price_unknown": l.price_unknown,
            "failed_attempts": failed,
        },
    })
}

async fn logs<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let q: LogsQuery = parse_query(query.as_deref())?;
    // A key given as itself is named by its id in the rows.
    let key_id = match q.api_key {
        Some(key) if key.starts_with("sk-") => {
            let r = pb::KeyRef { r#ref: Some(pb::key_ref::Ref::Key(key)) };
            Some(KeyService::get_key(&*admin, grpc_request(&headers, r)?).await?.into_inner().key_id)
        }
        other => other,
    };
    let filter = pb::SpendQuery {
        key_id,
        team_id: q.team_id,
        user_id: q.user_id,
        start_day: day(q.start_date),
        end_day: day(q.end_date),
        ..pb::SpendQuery::default()
    };
    let page = q.page.unwrap_or(1).max(1);
    let size = q.page_size.unwrap_or(50).clamp(1, 500);
    let offset = u64::from(page - 1) * u64::from(size);
    let request = pb::SpendLogsQuery {
        filter: Some(filter),
        request_id: q.request_id,
        page_size: size,
        page_token: if offset == 0 { String::new() } else { offset.to_string() },
    };
    let found = SpendService::list_spend_logs(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    let rows: Vec<Value> = found.logs.iter().map(log_json).collect();
    Ok(json_response(StatusCode::OK, &Value::Array(rows)))
}

#[derive(Deserialize)]
struct TagsQuery {
    start_date: Option<String>,
    end_date: Option<String>,
}

/// LiteLLM's `/spend/tags`: `[{"individual_request_tag", "log_count", "total_spend"}]`.
async fn tags<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let q: TagsQuery = parse_query(query.as_deref())?;
    let request = pb::SpendQuery {
        start_day: day(q.start_date),
        end_day: day(q.end_date),
        group_by: pb::SpendGroupBy::Tag as i32,
        ..pb::SpendQuery::default()
    };
    let report = SpendService::query_spend(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    let rows: Vec<Value> = report
        .rows
        .iter()
        .map(|r| json!({"individual_request_tag": r.group, "log_count": r.requests, "total_spend": r.spend}))
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Array(rows)))
}
