//! LiteLLM Enterprise's audit log endpoints on the audit service: `/audit` (a page of
//! `{"audit_logs", "total", "page", "page_size", "total_pages"}`, newest first) and
//! `/audit/{id}`. Read as the CLI's `sluice audit` reads it, so the service decides who may
//! (admins only) and the rows are the ones every change wrote.
//!
//! A row in LiteLLM's `AuditLogResponse` shape: its verbs (`created`, `updated`, `deleted`,
//! `blocked`, `rotated`) and table names (`LiteLLM_VerificationToken`, …); Sluice's own action
//! (`key.generate`) and object type under `metadata`. A key's token is its key id: no row holds a
//! key, or a digest a key could be looked up by (a string that is one is redacted all the same).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::keys;
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::audit_service_server::AuditService;

use super::{RestError, RestResult, grpc_request, json_response, parse_query};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

/// LiteLLM's page size: 10 unless given, at most 100.
const DEFAULT_PAGE_SIZE: u64 = 10;
const MAX_PAGE_SIZE: u64 = 100;
/// Rows asked of the service at once while walking the log (its own maximum).
const WALK_PAGE: u32 = 500;
/// What stands in for a secret found in a row.
const REDACTED: &str = "[redacted]";

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new().route("/audit", get(list::<S>)).route("/audit/{id}", get(one::<S>))
}

/// Sluice's object types and LiteLLM's tables for them (its schema's names).
const TABLES: [(&str, &str); 7] = [
    ("key", "LiteLLM_VerificationToken"),
    ("team", "LiteLLM_TeamTable"),
    ("user", "LiteLLM_UserTable"),
    ("model", "LiteLLM_ProxyModelTable"),
    ("organization", "LiteLLM_OrganizationTable"),
    ("customer", "LiteLLM_EndUserTable"),
    ("budget", "LiteLLM_BudgetTable"),
];

fn table_name(object_type: &str) -> &str {
    TABLES.iter().find(|(t, _)| *t == object_type).map_or(object_type, |(_, table)| table)
}

/// The object type a `table_name` (LiteLLM's) or `object_type` (Sluice's) filter names.
fn object_type_of(name: &str) -> &str {
    TABLES.iter().find(|(t, table)| *table == name || *t == name).map_or(name, |(t, _)| t)
}

/// LiteLLM's verb for one of Sluice's actions (`key.generate` → `created`).
fn verb(action: &str) -> &str {
    let what = action.rsplit_once('.').map_or(action, |(_, what)| what);
    match what {
        "create" | "generate" | "sync_add" => "created",
        "update" | "unblock" | "member_add" | "member_remove" | "sync_update" => "updated",
        "delete" | "sync_remove" => "deleted",
        "block" => "blocked",
        "regenerate" => "rotated",
        other => other,
    }
}

/// Whether a string is, or holds, a Sluice key or a key's digest (`sha256:<hex>`, how keys are
/// looked up): the records audited never hold one; this makes sure no answer does either.
fn is_secret(s: &str) -> bool {
    let holds_key = s.match_indices(keys::KEY_PREFIX).any(|(at, _)| {
        s.get(at..at + keys::KEY_LEN).is_some_and(|candidate| keys::check_format(candidate.as_bytes()).is_ok())
    });
    let holds_digest = s.match_indices("sha256:").any(|(at, m)| {
        let hex = s.get(at + m.len()..).unwrap_or("");
        hex.len() >= 64 && hex.bytes().take(64).all(|b| b.is_ascii_hexdigit())
    });
    holds_key || holds_digest
}

/// `value` with every secret string (and any field named as a key's digest) replaced.
fn scrub(value: Value) -> Value {
    match value {
        Value::String(s) if is_secret(&s) => Value::String(REDACTED.into()),
        Value::Array(items) => Value::Array(items.into_iter().map(scrub).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(name, v)| {
                    let digest = matches!(name.as_str(), "key_hash" | "hashed_token" | "token_hash");
                    let v = if digest && !v.is_null() { Value::String(REDACTED.into()) } else { scrub(v) };
                    (name, v)
                })
                .collect(),
        ),
        other => other,
    }
}

/// A stored before/after image: an object, or null (a creation has no before, a deletion no
/// after).
fn image(json: &str) -> Value {
    match serde_json::from_str::<Value>(json) {
        Ok(v @ Value::Object(_)) => scrub(v),
        _ => Value::Null,
    }
}

/// One row in LiteLLM's `AuditLogResponse` shape. `changed_by` is who Sluice says acted
/// (`master`, or `key:<key id>`); `changed_by_api_key` that key's token (its id), never a key.
fn row_json(e: &pb::AuditEntry) -> Value {
    let key_id = e.actor.strip_prefix("key:").unwrap_or("");
    json!({
        "id": e.id.to_string(),
        "updated_at": e.at,
        "changed_by": e.actor,
        "changed_by_api_key": key_id,
        "action": verb(&e.action),
        "table_name": table_name(&e.object_type),
        "object_id": e.object_id,
        "before_value": image(&e.before_json),
        "updated_values": image(&e.after_json),
        "metadata": {"action": e.action, "object_type": e.object_type},
    })
}

#[derive(Deserialize)]
struct AuditQuery {
    page: Option<String>,
    page_size: Option<String>,
    object_type: Option<String>,
    table_name: Option<String>,
    object_id: Option<String>,
    changed_by: Option<String>,
    changed_by_api_key: Option<String>,
    action: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    object_team_id: Option<String>,
    object_key_hash: Option<String>,
    sort_by: Option<String>,
    sort_order: Option<String>,
}

/// A whole number in `[min, max]`, or a 422 naming the parameter.
fn bounded(param: &str, given: Option<&str>, default: u64, min: u64, max: u64) -> Result<u64, RestError> {
    let Some(text) = given else {
        return Ok(default);
    };
    match text.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => {
            Err(RestError::invalid(param, format!("{param}: must be a whole number from {min} to {max}, got {text:?}")))
        }
    }
}

/// A day (`YYYY-MM-DD`, or a longer timestamp cut to its day, UTC), or a 422 naming it.
fn day(param: &str, given: Option<String>) -> Result<Option<String>, RestError> {
    let Some(text) = given else {
        return Ok(None);
    };
    let d = text.get(..10).unwrap_or("");
    let b = d.as_bytes();
    let shaped = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() });
    if !shaped {
        return Err(RestError::invalid(param, format!("{param}: a date like 2025-01-31 is expected, got {text:?}")));
    }
    Ok(Some(d.to_owned()))
}

/// The filters the service does not apply, checked here on each row it returns.
#[derive(Default)]
struct RowFilter {
    changed_by: Option<String>,
    changed_by_key: Option<String>,
    action: Option<String>,
    start_day: Option<String>,
    end_day: Option<String>,
    team_id: Option<String>,
}

impl RowFilter {
    fn matches(&self, e: &pb::AuditEntry) -> bool {
        let day = e.at.get(..10).unwrap_or("");
        let in_team = |team: &str| {
            [&e.before_json, &e.after_json].iter().any(|image| {
                serde_json::from_str::<Value>(image)
                    .ok()
                    .is_some_and(|v| v.get("team_id").and_then(Value::as_str) == Some(team))
            }) || (e.object_type == "team" && e.object_id == team)
        };
        self.changed_by.as_ref().is_none_or(|who| &e.actor == who)
            && self.changed_by_key.as_ref().is_none_or(|key| e.actor.strip_prefix("key:") == Some(key.as_str()))
            && self.action.as_ref().is_none_or(|a| a == &e.action || a == verb(&e.action))
            && self.start_day.as_ref().is_none_or(|start| day >= start.as_str())
            && self.end_day.as_ref().is_none_or(|end| day <= end.as_str())
            && self.team_id.as_ref().is_none_or(|team| in_team(team))
    }
}

/// What one `/audit` call asks for, its parameters checked.
struct Listing {
    page: u64,
    page_size: u64,
    oldest_first: bool,
    object_type: Option<String>,
    object_id: Option<String>,
    rows: RowFilter,
}

impl Listing {
    fn parse(query: Option<&str>) -> Result<Self, RestError> {
        let q: AuditQuery = parse_query(query)?;
        // LiteLLM ignores a filter given empty (`?action=`).
        let given = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let page = bounded("page", given(q.page).as_deref(), 1, 1, u64::from(u32::MAX))?;
        let page_size = bounded("page_size", given(q.page_size).as_deref(), DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)?;
        let object_type = match (given(q.table_name), given(q.object_type)) {
            (Some(table), Some(kind)) if object_type_of(&table) != object_type_of(&kind) => {
                return Err(RestError::bad_request(format!(
                    "table_name {table:?} and object_type {kind:?} name different objects: give one"
                )));
            }
            (table, kind) => table.or(kind).map(|name| object_type_of(&name).to_owned()),
        };
        if given(q.object_key_hash).is_some() {
            return Err(RestError::bad_request(
                "object_key_hash: not supported by Sluice: its rows name a key by its token (key id): \
                 use table_name=LiteLLM_VerificationToken&object_id=<token>",
            ));
        }
        match given(q.sort_by).as_deref() {
            None | Some("updated_at" | "id") => {}
            Some(other) => {
                return Err(RestError::bad_request(format!(
                    "sort_by {other:?}: Sluice's audit log is ordered by time (updated_at) only"
                )));
            }
        }
        let oldest_first = match given(q.sort_order).as_deref() {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(other) => {
                return Err(RestError::invalid("sort_order", format!("sort_order: asc or desc, got {other:?}")));
            }
        };
        let rows = RowFilter {
            changed_by: given(q.changed_by),
            changed_by_key: given(q.changed_by_api_key),
            action: given(q.action),
            start_day: day("start_date", given(q.start_date))?,
            end_day: day("end_date", given(q.end_date))?,
            team_id: given(q.object_team_id),
        };
        Ok(Listing { page, page_size, oldest_first, object_type, object_id: given(q.object_id), rows })
    }

    /// The ids on the page asked for, in the order shown, of all matching ids newest first.
    fn window(&self, newest_first: &[i64]) -> Vec<i64> {
        let skip = usize::try_from((self.page - 1).saturating_mul(self.page_size)).unwrap_or(usize::MAX);
        let take = usize::try_from(self.page_size).unwrap_or(usize::MAX);
        if self.oldest_first {
            newest_first.iter().rev().skip(skip).take(take).copied().collect()
        } else {
            newest_first.iter().skip(skip).take(take).copied().collect()
        }
    }
}

/// One page of the service's log (newest first), from `page_token` on.
async fn service_page<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    listing: &Listing,
    page_token: String,
) -> Result<pb::ListAuditResponse, RestError> {
    let request = pb::ListAuditRequest {
        object_type: listing.object_type.clone(),
        object_id: listing.object_id.clone(),
        page_size: WALK_PAGE,
        page_token,
    };
    Ok(AuditService::list_audit(admin, grpc_request(headers, request)?).await?.into_inner())
}

/// LiteLLM's `GET /audit`: the log walked once for the matching rows' ids (the total), then
/// the page's rows read from the newest of them on.
async fn list<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let listing = Listing::parse(query.as_deref())?;
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = service_page(&admin, &headers, &listing, token).await?;
        ids.extend(page.entries.iter().filter(|e| listing.rows.matches(e)).map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let window = listing.window(&ids);
    let mut found: HashMap<i64, pb::AuditEntry> = HashMap::new();
    if let Some(newest) = window.iter().max() {
        let mut token = newest.saturating_add(1).to_string();
        while found.len() < window.len() {
            let page = service_page(&admin, &headers, &listing, token).await?;
            found.extend(page.entries.into_iter().filter(|e| window.contains(&e.id)).map(|e| (e.id, e)));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    }
    let rows: Vec<Value> = window.iter().filter_map(|id| found.get(id)).map(row_json).collect();
    let total = ids.len() as u64;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "audit_logs": rows,
            "total": total,
            "page": listing.page,
            "page_size": listing.page_size,
            "total_pages": total.div_ceil(listing.page_size),
        }),
    ))
}

/// LiteLLM's `GET /audit/{id}`: one row, or 404.
async fn one<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, Path(id): Path<String>) -> RestResult {
    let not_found = || RestError {
        status: StatusCode::NOT_FOUND,
        message: format!("Audit log with ID {id} not found"),
        param: None,
    };
    // Asked for with the service's own filterless page of one from just above it (the
    // service's authorisation answers first, whatever the id).
    let wanted = id.trim().parse::<i64>().ok();
    let token = wanted.map_or_else(|| "1".to_owned(), |n| n.saturating_add(1).to_string());
    let request = pb::ListAuditRequest { object_type: None, object_id: None, page_size: 1, page_token: token };
    let page = AuditService::list_audit(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    let entry = page.entries.into_iter().find(|e| Some(e.id) == wanted).ok_or_else(not_found)?;
    Ok(json_response(StatusCode::OK, &row_json(&entry)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i64, actor: &str, action: &str, object_type: &str, before: &str, after: &str) -> pb::AuditEntry {
        pb::AuditEntry {
            id,
            at: "2025-03-04T05:06:07.890Z".into(),
            actor: actor.into(),
            action: action.into(),
            object_type: object_type.into(),
            object_id: format!("obj-{id}"),
            before_json: before.into(),
            after_json: after.into(),
        }
    }

    #[test]
    fn a_row_has_litellms_shape_with_sluices_action_under_metadata() {
        let e = entry(7, "key:key_00ab", "key.generate", "key", "null", r#"{"key_id":"key_1","team_id":"t"}"#);
        let row = row_json(&e);
        assert_eq!(row["id"], "7");
        assert_eq!(row["action"], "created");
        assert_eq!(row["table_name"], "LiteLLM_VerificationToken");
        assert_eq!(row["changed_by"], "key:key_00ab");
        assert_eq!(row["changed_by_api_key"], "key_00ab");
        assert_eq!(row["before_value"], Value::Null);
        assert_eq!(row["updated_values"]["team_id"], "t");
        assert_eq!(row["metadata"], json!({"action": "key.generate", "object_type": "key"}));
        let by_master = row_json(&entry(8, "master", "team.update", "team", "{}", "{}"));
        assert_eq!(
            (by_master["changed_by_api_key"].as_str(), by_master["action"].as_str()),
            (Some(""), Some("updated"))
        );
        assert_eq!(by_master["table_name"], "LiteLLM_TeamTable");
    }

    #[test]
    fn sluices_actions_map_onto_litellms_verbs() {
        for (action, want) in [
            ("key.generate", "created"),
            ("team.create", "created"),
            ("model.sync_add", "created"),
            ("key.update", "updated"),
            ("team.member_add", "updated"),
            ("key.unblock", "updated"),
            ("user.delete", "deleted"),
            ("model.sync_remove", "deleted"),
            ("key.block", "blocked"),
            ("key.regenerate", "rotated"),
            ("something.new_kind", "new_kind"),
        ] {
            assert_eq!(verb(action), want, "{action}");
        }
    }

    #[test]
    fn table_names_and_object_types_name_the_same_filter() {
        assert_eq!(object_type_of("LiteLLM_VerificationToken"), "key");
        assert_eq!(object_type_of("key"), "key");
        assert_eq!(object_type_of("LiteLLM_TeamTable"), "team");
        assert_eq!(object_type_of("unknown_table"), "unknown_table");
        assert_eq!(table_name("customer"), "LiteLLM_EndUserTable");
        assert_eq!(table_name("other"), "other");
    }

    #[test]
    fn keys_and_digests_never_leave_in_a_row() {
        let key = keys::key_from_random(&[7u8; 64]).expect("a key");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let after = json!({
            "metadata": {"note": format!("rotated from {key} today"), "list": [digest.clone(), "fine"]},
            "key_hash": "anything",
            "key_prefix": "sk-sluice-ab",
            "model_info": {"id": "46577d4b09b8d111c341a16bc55d5771bb3972ec28e80e48dc21bbc6261f4ca1"},
            "api_key": "os.environ/OPENAI_API_KEY",
        });
        let row = row_json(&entry(1, "master", "key.update", "key", "null", &after.to_string()));
        let text = row.to_string();
        assert!(!text.contains(&key) && !text.contains(&digest), "{text}");
        let values = &row["updated_values"];
        assert_eq!(values["metadata"]["note"], REDACTED);
        assert_eq!(values["metadata"]["list"], json!([REDACTED, "fine"]));
        assert_eq!(values["key_hash"], REDACTED);
        // What is no secret stays: a key's display prefix, a deployment id, a credential's name.
        assert_eq!(values["key_prefix"], "sk-sluice-ab");
        assert_eq!(values["model_info"]["id"], after["model_info"]["id"]);
        assert_eq!(values["api_key"], "os.environ/OPENAI_API_KEY");
    }

    #[test]
    fn page_and_page_size_are_bounded_and_named_when_wrong() {
        let listing = Listing::parse(None).expect("defaults");
        assert_eq!((listing.page, listing.page_size, listing.oldest_first), (1, 10, false));
        for (query, param) in [
            ("page_size=101", "page_size"),
            ("page_size=0", "page_size"),
            ("page_size=ten", "page_size"),
            ("page=0", "page"),
            ("page=-1", "page"),
            ("start_date=yesterday", "start_date"),
            ("sort_order=sideways", "sort_order"),
        ] {
            let e = Listing::parse(Some(query)).err().expect(query);
            assert_eq!((e.status, e.param.as_deref()), (StatusCode::UNPROCESSABLE_ENTITY, Some(param)), "{query}");
        }
        assert_eq!(Listing::parse(Some("page_size=100&page=3")).expect("in bounds").page_size, 100);
        // Empty filters are no filters, as in LiteLLM.
        assert!(Listing::parse(Some("action=&page=")).is_ok());
        let refused = |q: &str| Listing::parse(Some(q)).err().map(|e| e.status);
        assert_eq!(refused("object_key_hash=abc"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(refused("sort_by=action"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(refused("table_name=LiteLLM_TeamTable&object_type=key"), Some(StatusCode::BAD_REQUEST));
        let same = Listing::parse(Some("table_name=LiteLLM_TeamTable&object_type=team")).expect("the same");
        assert_eq!(same.object_type.as_deref(), Some("team"));
    }

    #[test]
    fn a_page_is_a_window_of_the_matching_ids_in_either_order() {
        let ids = [9, 7, 5, 3, 1];
        let listing = |q: &str| Listing::parse(Some(q)).expect(q);
        assert_eq!(listing("page_size=2").window(&ids), vec![9, 7]);
        assert_eq!(listing("page_size=2&page=3").window(&ids), vec![1]);
        assert!(listing("page_size=2&page=4").window(&ids).is_empty());
        assert_eq!(listing("page_size=2&sort_order=asc").window(&ids), vec![1, 3]);
        assert_eq!(listing("page_size=2&page=3&sort_order=asc").window(&ids), vec![9]);
    }

    #[test]
    fn row_filters_match_who_what_when_and_which_team() {
        let e = entry(3, "key:key_1", "team.update", "team", r#"{"team_id":"red"}"#, r#"{"team_id":"red"}"#);
        let listing = |q: &str| Listing::parse(Some(q)).expect(q);
        assert!(listing("changed_by=key:key_1").rows.matches(&e));
        assert!(!listing("changed_by=master").rows.matches(&e));
        assert!(listing("changed_by_api_key=key_1").rows.matches(&e));
        assert!(listing("action=updated").rows.matches(&e) && listing("action=team.update").rows.matches(&e));
        assert!(!listing("action=created").rows.matches(&e));
        assert!(listing("start_date=2025-03-04&end_date=2025-03-04").rows.matches(&e));
        assert!(!listing("start_date=2025-03-05").rows.matches(&e));
        assert!(!listing("end_date=2025-03-03T23:59:59Z").rows.matches(&e));
        assert!(listing("object_team_id=red").rows.matches(&e) && !listing("object_team_id=blue").rows.matches(&e));
    }
}
