//! LiteLLM's `/user/*` endpoints on the user service: bodies and query parameters as LiteLLM
//! documents them, answers in its shapes (`user_role` as its strings, limits at the top level,
//! no `spend`: the service holds none). `/user/new` also makes the user's key through the key
//! service, as LiteLLM does unless `auto_create_key` is false.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::key_service_server::KeyService;
use sluice_proto::admin::v1::user_service_server::UserService;

use super::limits::{LimitFields, cleared_limits, limits_json};
use super::{
    Body, RestError, RestResult, grpc_request, json_response, parse_body, parse_query, refuse_unless_off,
    refuse_unsupported,
};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new()
        .route("/user/new", post(new::<S>))
        .route("/user/update", post(update::<S>))
        .route("/user/delete", post(delete::<S>))
        .route("/user/info", get(info::<S>))
        .route("/user/list", get(list::<S>))
}

/// LiteLLM user settings the user service does not carry: refused when given (a setting silently
/// dropped would look like protection that is not there). Team memberships are made with
/// `/team/member_add`.
const UNSUPPORTED: [&str; 19] = [
    "teams",
    "team_id",
    "user_alias",
    "send_invite_email",
    "sso_user_id",
    "password",
    "agent_id",
    "allowed_cache_controls",
    "config",
    "permissions",
    "model_max_budget",
    "model_rpm_limit",
    "model_tpm_limit",
    "guardrails",
    "policies",
    "prompts",
    "blocked",
    "aliases",
    "object_permission",
];

/// `metadata` as the services store it (a JSON object in a string); unreadable is empty.
pub(super) fn metadata_value(metadata_json: &str) -> Value {
    serde_json::from_str(metadata_json).unwrap_or_else(|_| json!({}))
}

/// LiteLLM's role names (`user_role`).
pub(super) fn role_from_name(field: &str, name: &str) -> Result<pb::UserRole, RestError> {
    Ok(match name {
        "proxy_admin" => pb::UserRole::ProxyAdmin,
        "proxy_admin_viewer" => pb::UserRole::ProxyAdminViewer,
        "org_admin" => pb::UserRole::OrgAdmin,
        "internal_user" => pb::UserRole::InternalUser,
        "internal_user_viewer" => pb::UserRole::InternalUserViewer,
        other => {
            return Err(RestError::invalid(
                field,
                format!(
                    "{field}: {other:?} is not one of proxy_admin, proxy_admin_viewer, org_admin, internal_user, \
                     internal_user_viewer"
                ),
            ));
        }
    })
}

pub(super) fn role_name(role: i32) -> &'static str {
    match pb::UserRole::try_from(role).unwrap_or(pb::UserRole::Unspecified) {
        pb::UserRole::ProxyAdmin => "proxy_admin",
        pb::UserRole::ProxyAdminViewer => "proxy_admin_viewer",
        pb::UserRole::OrgAdmin => "org_admin",
        pb::UserRole::InternalUserViewer => "internal_user_viewer",
        pb::UserRole::Unspecified | pb::UserRole::InternalUser => "internal_user",
    }
}

/// A user as LiteLLM shows it (its user table's fields the service has). A Sluice user belongs
/// to at most one organization: `organization_memberships` lists it with the user's role.
pub(super) fn user_json(u: &pb::User) -> Value {
    let role = role_name(u.user_role);
    let memberships: Vec<Value> = u
        .organization_id
        .iter()
        .map(|org| json!({"user_id": u.user_id, "organization_id": org, "user_role": role}))
        .collect();
    let teams: Vec<&str> = u.teams.iter().map(|t| t.team_id.as_str()).collect();
    let mut out = json!({
        "user_id": u.user_id,
        "user_email": u.user_email,
        "user_role": role,
        "organization_id": u.organization_id,
        "organization_memberships": memberships,
        "models": u.models,
        "metadata": metadata_value(&u.metadata_json),
        "teams": teams,
        "spend": u.spend,
        "created_at": u.created_at,
        "updated_at": u.updated_at,
    });
    if let Some(obj) = out.as_object_mut() {
        obj.extend(limits_json(u.limits.as_ref()));
    }
    out
}

/// The fields of a user a caller sets (LiteLLM's `NewUserRequest` / `UpdateUserRequest`).
#[derive(Debug, Default, Deserialize)]
struct UserFields {
    user_id: Option<String>,
    user_email: Option<String>,
    user_role: Option<String>,
    /// Sluice's own field; LiteLLM's is `organizations` (a list: a Sluice user has one).
    organization_id: Option<String>,
    organizations: Option<Vec<String>>,
    models: Option<Vec<String>>,
    #[serde(flatten)]
    limits: LimitFields,
    metadata: Option<Map<String, Value>>,
    /// `/user/new` only: whether to make the user's key, and that key's alias and lifetime.
    auto_create_key: Option<bool>,
    key_alias: Option<String>,
    duration: Option<String>,
}

impl UserFields {
    fn role(&self) -> Result<Option<pb::UserRole>, RestError> {
        self.user_role.as_deref().map(|r| role_from_name("user_role", r)).transpose()
    }

    fn organization(&self) -> Result<Option<String>, RestError> {
        let listed = match self.organizations.as_deref() {
            None | Some([]) => None,
            Some([one]) => Some(one.clone()),
            Some(_) => {
                return Err(RestError::bad_request(
                    "organizations: a Sluice user belongs to one organization; name one",
                ));
            }
        };
        match (&self.organization_id, listed) {
            (Some(id), Some(other)) if *id != other => {
                Err(RestError::bad_request("organization_id and organizations name different organizations"))
            }
            (id, other) => Ok(id.clone().or(other)),
        }
    }

    fn metadata_json(&self) -> Option<String> {
        self.metadata.as_ref().map(|m| Value::Object(m.clone()).to_string())
    }
}

/// A body's fields, after the settings Sluice would not keep are refused.
fn user_fields(body: &Bytes) -> Result<(UserFields, Value), RestError> {
    let value: Value = parse_body(body)?;
    refuse_unless_off(&value, &UNSUPPORTED)?;
    let fields = parse_body(body)?;
    Ok((fields, value))
}

/// Creates the user, then (unless `auto_create_key` is false) its key: owned by the user, in its
/// organization (so the organization's budget counts it), with the user's models and rate
/// limits (as LiteLLM's `/user/new` key has them); the user's budget applies through the user.
async fn new<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    // LiteLLM's clients may send no body at all: a user with a made-up id and no settings.
    let (fields, _) = if body.is_empty() { (UserFields::default(), Value::Null) } else { user_fields(&body)? };
    let request = pb::CreateUserRequest {
        user_id: fields.user_id.clone().unwrap_or_default(),
        user_email: fields.user_email.clone(),
        user_role: fields.role()?.unwrap_or(pb::UserRole::Unspecified) as i32,
        organization_id: fields.organization()?,
        models: fields.models.clone().unwrap_or_default(),
        limits: Some(fields.limits.limits()),
        metadata_json: fields.metadata_json(),
    };
    let user = UserService::create_user(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    let mut out = user_json(&user);
    if fields.auto_create_key.unwrap_or(true) {
        let limits = user.limits.clone().unwrap_or_default();
        let spec = pb::KeySpec {
            key_alias: fields.key_alias.clone(),
            user_id: Some(user.user_id.clone()),
            organization_id: user.organization_id.clone(),
            models: user.models.clone(),
            limits: Some(pb::Limits {
                rpm_limit: limits.rpm_limit,
                tpm_limit: limits.tpm_limit,
                max_parallel_requests: limits.max_parallel_requests,
                ..pb::Limits::default()
            }),
            duration: fields.duration.clone(),
            ..pb::KeySpec::default()
        };
        let made = match KeyService::generate_key(
            &*admin,
            grpc_request(&headers, pb::GenerateKeyRequest { spec: Some(spec) })?,
        )
        .await
        {
            Ok(made) => made.into_inner(),
            Err(status) => {
                // No user without the key the caller asked for: the user just made goes again.
                let undo = pb::UserRef { user_id: user.user_id.clone() };
                if let Err(e) = UserService::delete_user(&*admin, grpc_request(&headers, undo)?).await {
                    eprintln!("sluice: /user/new: could not remove user {} after its key failed: {e}", user.user_id);
                }
                return Err(status.into());
            }
        };
        let key = made.info.unwrap_or_default();
        if let Some(obj) = out.as_object_mut() {
            obj.insert("key".into(), json!(made.key));
            obj.insert("token".into(), json!(key.key_id));
            obj.insert("key_name".into(), json!(format!("{}...{}", key.key_prefix, key.last4)));
            obj.insert("key_alias".into(), json!(key.key_alias));
            obj.insert("expires".into(), json!(key.expires_at));
        }
    }
    Ok(json_response(StatusCode::OK, &out))
}

/// LiteLLM's answer to `/user/update`: `{"user_id", "data": <the user>}`. As LiteLLM, an empty
/// `models` or `metadata` leaves them as they are (its clients send them as defaults); a limit
/// set to null is lifted. `key_alias`, `duration` and `auto_create_key` do nothing here, as in
/// LiteLLM.
async fn update<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let (fields, value) = user_fields(&body)?;
    let user_id = fields.user_id.clone().ok_or_else(|| {
        RestError::invalid("user_id", "user_id: the user to update is required (Sluice finds users by id)")
    })?;
    let request = pb::UpdateUserRequest {
        user_id,
        user_email: fields.user_email.clone(),
        user_role: fields.role()?.map(|r| r as i32),
        organization_id: fields.organization()?,
        models: fields.models.clone().filter(|m| !m.is_empty()).map(|values| pb::StringList { values }),
        limits: Some(fields.limits.limits()),
        clear_limits: cleared_limits(&value),
        metadata_json: fields.metadata_json().filter(|_| fields.metadata.as_ref().is_some_and(|m| !m.is_empty())),
        clear_organization: false,
    };
    let updated = UserService::update_user(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &json!({"user_id": updated.user_id, "data": user_json(&updated)})))
}

#[derive(Deserialize)]
struct DeleteBody {
    user_ids: Vec<String>,
}

/// Every user named must exist, be the caller's to see and own no key before any is deleted: a
/// bad list changes nothing. (The service refuses to delete a user that owns keys; LiteLLM would
/// delete them with it.) The answer is LiteLLM's: the number of users deleted.
async fn delete<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let DeleteBody { user_ids } = parse_body(&body)?;
    let mut ids: Vec<String> = Vec::with_capacity(user_ids.len());
    for id in user_ids {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Err(RestError::bad_request("name the users to delete: user_ids"));
    }
    for id in &ids {
        UserService::get_user(&*admin, grpc_request(&headers, pb::UserRef { user_id: id.clone() })?).await?;
        let keys = pb::ListKeysRequest { user_id: Some(id.clone()), page_size: 1, ..pb::ListKeysRequest::default() };
        let owned = KeyService::list_keys(&*admin, grpc_request(&headers, keys)?).await?.into_inner().total;
        if owned > 0 {
            return Err(RestError::bad_request(format!(
                "user {id} still owns {owned} key(s); delete them (/key/delete) or move them to another owner \
                 first (nothing was deleted)"
            )));
        }
    }
    for id in &ids {
        UserService::delete_user(&*admin, grpc_request(&headers, pb::UserRef { user_id: id.clone() })?).await?;
    }
    Ok(json_response(StatusCode::OK, &json!(ids.len())))
}

#[derive(Deserialize)]
struct InfoQuery {
    user_id: Option<String>,
}

/// The most keys `/user/info` lists for a user (pages of the service's largest size).
const MAX_INFO_PAGES: usize = 20;

/// LiteLLM's `{"user_id", "user_info", "keys", "teams"}`: the user, the keys of it the caller
/// may see (never their secret), and its teams with its role in each.
async fn info<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let InfoQuery { user_id } = parse_query(query.as_deref())?;
    let user_id = user_id.ok_or_else(|| RestError::invalid("user_id", "user_id: the user to describe is required"))?;
    let user = UserService::get_user(&*admin, grpc_request(&headers, pb::UserRef { user_id: user_id.clone() })?)
        .await?
        .into_inner();
    let mut keys = Vec::new();
    let mut token = String::new();
    for _ in 0..MAX_INFO_PAGES {
        let request = pb::ListKeysRequest {
            user_id: Some(user_id.clone()),
            page_size: 500,
            page_token: std::mem::take(&mut token),
            ..pb::ListKeysRequest::default()
        };
        let page = KeyService::list_keys(&*admin, grpc_request(&headers, request)?).await?.into_inner();
        keys.extend(page.keys.iter().map(|k| super::keys::key_json(k, None)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let teams: Vec<Value> = user
        .teams
        .iter()
        .map(|t| {
            let role = if t.role == pb::MemberRole::Admin as i32 { "admin" } else { "user" };
            json!({"team_id": t.team_id, "role": role})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"user_id": user.user_id, "user_info": user_json(&user), "keys": keys, "teams": teams}),
    ))
}

/// LiteLLM `/user/list` filters the user service cannot apply: refused, not ignored (ignoring
/// one would answer with users it was asked to leave out).
const UNSUPPORTED_FILTERS: [&str; 5] = ["user_ids", "user_email", "team", "sso_user_ids", "sort_by"];

#[derive(Deserialize)]
struct ListQuery {
    page: Option<u32>,
    page_size: Option<u32>,
    role: Option<String>,
    organization_id: Option<String>,
}

/// The most users `/user/list` reads to filter by role (pages of the service's largest size).
const MAX_ROLE_SCAN_PAGES: usize = 20;

/// LiteLLM's `{"users", "total", "page", "page_size", "total_pages"}`, in user id order. The
/// service pages by token: a page is reached by walking the tokens before it. A `role` is
/// matched here on every user the caller may list (the service applies a role filter only to
/// an unscoped list without `organization_id`).
async fn list<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let given: Map<String, Value> = parse_query::<std::collections::HashMap<String, String>>(query.as_deref())?
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    refuse_unsupported(&Value::Object(given), &UNSUPPORTED_FILTERS)?;
    let q: ListQuery = parse_query(query.as_deref())?;
    let page = q.page.unwrap_or(1).max(1);
    let size = q.page_size.unwrap_or(25).clamp(1, 100);
    let role = q.role.as_deref().map(|r| role_from_name("role", r)).transpose()?;
    let (users, total) = match role {
        Some(role) => {
            let mut matching = Vec::new();
            let mut token = String::new();
            let mut complete = false;
            for _ in 0..MAX_ROLE_SCAN_PAGES {
                let request = pb::ListUsersRequest {
                    organization_id: q.organization_id.clone(),
                    user_role: Some(role as i32),
                    page_size: 500,
                    page_token: std::mem::take(&mut token),
                };
                let found = UserService::list_users(&*admin, grpc_request(&headers, request)?).await?.into_inner();
                matching.extend(found.users.into_iter().filter(|u| role_name(u.user_role) == role_name(role as i32)));
                if found.next_page_token.is_empty() {
                    complete = true;
                    break;
                }
                token = found.next_page_token;
            }
            if !complete {
                return Err(RestError::bad_request(format!(
                    "role: too many users to filter by role (more than {}); narrow the list with organization_id",
                    MAX_ROLE_SCAN_PAGES * 500
                )));
            }
            let total = matching.len() as u64;
            let start = (page as usize - 1).saturating_mul(size as usize);
            (matching.into_iter().skip(start).take(size as usize).collect(), total)
        }
        None => {
            let mut token = String::new();
            let mut total = 0;
            let mut users: Vec<pb::User> = Vec::new();
            for n in 1..=page {
                let request = pb::ListUsersRequest {
                    organization_id: q.organization_id.clone(),
                    user_role: None,
                    page_size: size,
                    page_token: std::mem::take(&mut token),
                };
                let found = UserService::list_users(&*admin, grpc_request(&headers, request)?).await?.into_inner();
                total = found.total;
                if n == page {
                    users = found.users;
                } else if found.next_page_token.is_empty() {
                    break; // past the last page: none
                }
                token = found.next_page_token;
            }
            (users, total)
        }
    };
    let users: Vec<Value> = users.iter().map(user_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "users": users,
            "total": total,
            "page": page,
            "page_size": size,
            "total_pages": total.div_ceil(u64::from(size)),
        }),
    ))
}
