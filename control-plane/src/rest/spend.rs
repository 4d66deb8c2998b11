//! LiteLLM's spend endpoints on the spend service: `/spend/logs` (per-request rows, newest
//! first, as JSON or, with `format=csv`, as a CSV export) and `/global/spend/logs`,
//! `/spend/tags` (spend by request tag), `/spend/keys` and `/spend/users` (the keys and users
//! the caller may list, each with its spend, most spent first); the daily report is
//! `spend_report.rs`. Scoped as the gRPC services scope spend and listings: an org admin sees
//! its organization, anyone else its own.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::cost::{nanos_to_usd, usd_to_nanos};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::key_service_server::KeyService;
use sluice_proto::admin::v1::spend_service_server::SpendService;
use sluice_proto::admin::v1::user_service_server::UserService;

use super::{RestError, RestResult, grpc_request, json_response, parse_query};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new()
        .route("/spend/logs", get(logs::<S>))
        .route("/global/spend/logs", get(logs::<S>))
        .route("/spend/tags", get(tags::<S>))
        .route("/spend/keys", get(keys::<S>))
        .route("/spend/users", get(users::<S>))
}

/// The service's largest page.
pub(super) const PAGE: u32 = 500;

/// The most spend rows one CSV export or one `/global/spend/report` reads (the service pages
/// by offset: past this, a narrower date range is asked for instead of a slow scan).
pub(super) const MAX_REPORT_ROWS: u64 = 100_000;

/// The most pages of keys or users `/spend/keys` and `/spend/users` list.
const MAX_LIST_PAGES: usize = 200;

/// A refusal naming the query parameter at fault, as a 400 (LiteLLM answers a missing date so).
pub(super) fn bad_param(param: &str, message: impl Into<String>) -> RestError {
    RestError { status: StatusCode::BAD_REQUEST, message: message.into(), param: Some(param.to_owned()) }
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
    /// `json` (the default) or `csv`.
    format: Option<String>,
}

/// `start_date`/`end_date` as the service's days: LiteLLM sends `YYYY-MM-DD` (a longer
/// timestamp is cut to its day).
fn day(date: Option<String>) -> String {
    date.map(|d| d.chars().take(10).collect()).unwrap_or_default()
}

/// A key named by itself (`sk-…`) as its id (the rows name keys by id); a token is one already.
pub(super) async fn key_id_of<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    key: Option<String>,
) -> Result<Option<String>, RestError> {
    match key {
        Some(key) if key.starts_with("sk-") => {
            let r = pb::KeyRef { r#ref: Some(pb::key_ref::Ref::Key(key)) };
            Ok(Some(KeyService::get_key(admin, grpc_request(headers, r)?).await?.into_inner().key_id))
        }
        other => Ok(other),
    }
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
        // LiteLLM writes it as a string.
        "cache_hit": if l.cache_hit { "True" } else { "False" },
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
    let csv = match q.format.as_deref().map(str::trim) {
        None | Some("" | "json") => false,
        Some("csv") => true,
        Some(other) => return Err(RestError::invalid("format", format!("format must be json or csv, got {other:?}"))),
    };
    let filter = pb::SpendQuery {
        key_id: key_id_of(&admin, &headers, q.api_key).await?,
        team_id: q.team_id,
        user_id: q.user_id,
        start_day: day(q.start_date),
        end_day: day(q.end_date),
        ..pb::SpendQuery::default()
    };
    // An export without a page is every row the filters select.
    if csv && q.page.is_none() && q.page_size.is_none() {
        let mut text = csv_header();
        every_log(&admin, &headers, &filter, q.request_id, |l| text.push_str(&csv_line(&log_json(l)))).await?;
        return Ok(csv_response(text));
    }
    let page = q.page.unwrap_or(1).max(1);
    let size = q.page_size.unwrap_or(50).clamp(1, PAGE);
    let offset = u64::from(page - 1) * u64::from(size);
    let request = pb::SpendLogsQuery {
        filter: Some(filter),
        request_id: q.request_id,
        page_size: size,
        page_token: if offset == 0 { String::new() } else { offset.to_string() },
    };
    let found = SpendService::list_spend_logs(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    let rows: Vec<Value> = found.logs.iter().map(log_json).collect();
    Ok(if csv { csv_response(csv_text(&rows)) } else { json_response(StatusCode::OK, &Value::Array(rows)) })
}

/// Every row `filter` selects, page by page, each once (a row written while the pages are read
/// moves the later ones along: one seen before is not counted again). More than
/// [`MAX_REPORT_ROWS`] is refused before any is read.
pub(super) async fn every_log<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    filter: &pb::SpendQuery,
    request_id: Option<String>,
    mut each: impl FnMut(&pb::SpendLogEntry) + Send,
) -> Result<(), RestError> {
    let mut seen = HashSet::new();
    let mut token = String::new();
    loop {
        let request = pb::SpendLogsQuery {
            filter: Some(filter.clone()),
            request_id: request_id.clone(),
            page_size: PAGE,
            page_token: std::mem::take(&mut token),
        };
        let page = SpendService::list_spend_logs(admin, grpc_request(headers, request)?).await?.into_inner();
        if seen.is_empty() && page.total > MAX_REPORT_ROWS {
            return Err(too_many_rows(page.total));
        }
        for l in &page.logs {
            if seen.insert(l.record_id.clone()) {
                each(l);
            }
        }
        if seen.len() as u64 > MAX_REPORT_ROWS {
            // Rows kept coming while the pages were read: refused, never cut short.
            return Err(too_many_rows(seen.len() as u64));
        }
        if page.logs.is_empty() || page.next_page_token.is_empty() {
            return Ok(());
        }
        token = page.next_page_token;
    }
}

pub(super) fn too_many_rows(total: u64) -> RestError {
    bad_param(
        "start_date",
        format!("the range has {total} requests, more than {MAX_REPORT_ROWS}: narrow it with start_date and end_date"),
    )
}

/// The columns of a CSV export: the JSON rows' fields (without `metadata`), in their order.
const CSV_COLUMNS: [&str; 15] = [
    "request_id",
    "api_key",
    "spend",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "startTime",
    "model_group",
    "model_id",
    "user",
    "end_user",
    "team_id",
    "organization_id",
    "request_tags",
    "status",
];

/// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break, its quotes
/// doubled. Null is empty, a list its JSON, a number as written (no exponent). Text a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first: an end user's name
/// is the client's to choose) gets a leading `'`, OWASP's guard against CSV injection.
fn csv_field(value: &Value) -> String {
    let text = match value {
        Value::Null => return String::new(),
        Value::Bool(b) => return b.to_string(),
        // A float as Rust writes it (`0.00000015`, where JSON has `1.5e-7`).
        Value::Number(n) if n.is_f64() => return n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        Value::Number(n) => return n.to_string(),
        Value::String(s) => s.clone(),
        list_or_object => list_or_object.to_string(),
    };
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text };
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
}

/// A CSV export's header line (lines end with CRLF, as RFC 4180 has them).
fn csv_header() -> String {
    format!("{}\r\n", CSV_COLUMNS.join(","))
}

/// A JSON row's line of a CSV export.
fn csv_line(row: &Value) -> String {
    let fields: Vec<String> = CSV_COLUMNS.iter().map(|c| csv_field(row.get(*c).unwrap_or(&Value::Null))).collect();
    format!("{}\r\n", fields.join(","))
}

/// The rows as CSV: the header line, then one line per row.
fn csv_text(rows: &[Value]) -> String {
    rows.iter().fold(csv_header(), |mut out, row| {
        out.push_str(&csv_line(row));
        out
    })
}

fn csv_response(text: String) -> Response {
    let mut response = (StatusCode::OK, text).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"spend_logs.csv\""));
    response
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

// ---- /spend/keys, /spend/users ------------------------------------------------------------

/// The rows with their `spend`, most spent first (equal spend keeps the listing's order).
fn by_spend_desc(mut rows: Vec<(Value, u64)>) -> Vec<Value> {
    rows.sort_by_key(|r| Reverse(r.1));
    rows.into_iter()
        .map(|(mut row, nanos)| {
            if let Some(obj) = row.as_object_mut() {
                obj.insert("spend".into(), json!(nanos_to_usd(nanos)));
            }
            row
        })
        .collect()
}

/// LiteLLM's `/spend/keys`: every key the caller may list (its `/key/info` fields, `token`
/// being Sluice's key id) with `spend` (USD in its current budget window), most spent first.
async fn keys<S: Store>(State(admin): AdminState<S>, headers: HeaderMap) -> RestResult {
    let mut keys: Vec<pb::Key> = Vec::new();
    let mut token = String::new();
    for n in 0.. {
        if n == MAX_LIST_PAGES {
            return Err(RestError::bad_request(format!(
                "too many keys to report (more than {}); use /key/list and /spend/logs",
                MAX_LIST_PAGES * PAGE as usize
            )));
        }
        let request = pb::ListKeysRequest { page_size: PAGE, page_token: token, ..pb::ListKeysRequest::default() };
        let page = KeyService::list_keys(&*admin, grpc_request(&headers, request)?).await?.into_inner();
        keys.extend(page.keys);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // Each key's spend is the service's (its current budget window, as on /key/info).
    let rows = keys.iter().map(|k| (super::keys::key_json(k, None), usd_to_nanos(k.spend))).collect();
    Ok(json_response(StatusCode::OK, &Value::Array(by_spend_desc(rows))))
}

#[derive(Deserialize)]
struct UsersQuery {
    user_id: Option<String>,
}

/// LiteLLM's `/spend/users`: every user the caller may list (its `/user/info` fields) with
/// `spend` (USD in its current budget window), most spent first; `[that user]` with `user_id`.
async fn users<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let UsersQuery { user_id } = parse_query(query.as_deref())?;
    let user_id = user_id.filter(|u| !u.is_empty());
    let users: Vec<pb::User> = match &user_id {
        Some(user_id) => {
            let r = pb::UserRef { user_id: user_id.clone() };
            vec![UserService::get_user(&*admin, grpc_request(&headers, r)?).await?.into_inner()]
        }
        None => {
            let mut users = Vec::new();
            let mut token = String::new();
            for n in 0.. {
                if n == MAX_LIST_PAGES {
                    return Err(RestError::bad_request(format!(
                        "too many users to report (more than {}); ask for one with user_id",
                        MAX_LIST_PAGES * PAGE as usize
                    )));
                }
                let request = pb::ListUsersRequest { page_size: PAGE, page_token: token, ..Default::default() };
                let page = UserService::list_users(&*admin, grpc_request(&headers, request)?).await?.into_inner();
                users.extend(page.users);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            users
        }
    };
    let rows = users.iter().map(|u| (super::users::user_json(u), usd_to_nanos(u.spend))).collect();
    Ok(json_response(StatusCode::OK, &Value::Array(by_spend_desc(rows))))
}

// ---- /global/spend/report ---------------------------------------------------------------------

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn entry(
        day: &str,
        team: Option<&str>,
        customer: Option<&str>,
        key: Option<&str>,
        model: &str,
    ) -> pb::SpendLogEntry {
        pb::SpendLogEntry {
            record_id: format!("{day}-{team:?}-{customer:?}-{key:?}-{model}"),
            start_time: format!("{day}T10:00:00.000Z"),
            team_id: team.map(str::to_owned),
            end_user: customer.map(str::to_owned),
            key_id: key.map(str::to_owned),
            model_group: model.to_owned(),
            prompt_tokens: 10,
            completion_tokens: 5,
            spend: 0.1,
            status: 200,
            ..pb::SpendLogEntry::default()
        }
    }

    #[test]
    fn csv_fields_are_escaped_and_guarded() {
        assert_eq!(csv_field(&json!("plain")), "plain");
        assert_eq!(csv_field(&json!("a,b")), "\"a,b\"");
        assert_eq!(csv_field(&json!("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field(&json!("two\nlines")), "\"two\nlines\"");
        assert_eq!(csv_field(&json!("cr\rhere")), "\"cr\rhere\"");
        assert_eq!(csv_field(&Value::Null), "");
        assert_eq!(csv_field(&json!(42)), "42");
        assert_eq!(csv_field(&json!(1.5e-7)), "0.00000015");
        assert_eq!(csv_field(&json!(true)), "true");
        assert_eq!(csv_field(&json!(["a", "b,c"])), "\"[\"\"a\"\",\"\"b,c\"\"]\"");
        assert_eq!(csv_field(&json!([])), "[]");
        // A formula is shown, not run.
        assert_eq!(csv_field(&json!("=HYPERLINK(\"x\")")), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field(&json!("@cmd")), "'@cmd");
        assert_eq!(csv_field(&json!("-1+1")), "'-1+1");
    }

    #[test]
    fn csv_has_a_header_and_one_line_per_row_in_the_json_columns() {
        let mut l = entry("2024-05-10", Some("t1"), Some("acme, inc"), Some("k1"), "gpt-4o");
        l.tags = vec!["a".into(), "b".into()];
        let text = csv_text(&[log_json(&l), log_json(&entry("2024-05-11", None, None, None, "m"))]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), 4, "{text:?}"); // header, two rows, and the last CRLF's empty rest
        assert_eq!(lines[0], CSV_COLUMNS.join(","));
        assert_eq!(
            lines[1],
            ",k1,0.1,10,5,15,2024-05-10T10:00:00.000Z,gpt-4o,,,\"acme, inc\",t1,,\"[\"\"a\"\",\"\"b\"\"]\",success"
        );
        assert_eq!(lines[2], ",,0.1,10,5,15,2024-05-11T10:00:00.000Z,m,,,,,,[],success");
        assert_eq!(lines[3], "");
        assert_eq!(csv_text(&[]), format!("{}\r\n", CSV_COLUMNS.join(",")));
    }

    #[test]
    fn keys_and_users_are_ordered_by_spend() {
        let rows = vec![(json!({"id": "a"}), 5), (json!({"id": "b"}), 7), (json!({"id": "c"}), 5)];
        let out = by_spend_desc(rows);
        let ids: Vec<&str> = out.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["b", "a", "c"]);
        assert_eq!(out[0]["spend"], json!(7e-9));
    }
}
