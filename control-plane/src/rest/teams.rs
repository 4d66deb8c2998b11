//! LiteLLM's `/team/*` endpoints on the team service: request bodies and query parameters as
//! LiteLLM documents them, answers in its shapes (`members_with_roles`, `team_memberships`,
//! money in USD). Members are users: LiteLLM's `user_email` is looked up among the users the
//! caller may see, never made up.

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
use sluice_proto::admin::v1::key_service_server::KeyService;
use sluice_proto::admin::v1::team_service_server::TeamService;
use sluice_proto::admin::v1::user_service_server::UserService;

use super::limits::{LimitFields, limits_json};
use super::{Body, RestError, RestResult, grpc_request, json_response, parse_body, parse_query, refuse_unsupported};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new()
        .route("/team/new", post(create::<S>))
        .route("/team/update", post(update::<S>))
        .route("/team/delete", post(delete::<S>))
        .route("/team/info", get(info::<S>))
        .route("/team/list", get(list::<S>))
        .route("/v2/team/list", get(list_v2::<S>))
        .route("/team/block", post(block::<S>))
        .route("/team/unblock", post(unblock::<S>))
        .route("/team/member_add", post(member_add::<S>))
        .route("/team/member_delete", post(member_delete::<S>))
        .route("/team/member_update", post(member_update::<S>))
        .route("/team/model/add", post(model_add::<S>))
        .route("/team/model/delete", post(model_delete::<S>))
}

/// LiteLLM team settings Sluice does not enforce (a team carries no per-model limits, aliases,
/// guardrails, member defaults other than a budget, …): refused when given.
const UNSUPPORTED: [&str; 30] = [
    "model_aliases",
    "tags",
    "guardrails",
    "policies",
    "prompts",
    "object_permission",
    "allowed_passthrough_routes",
    "secret_manager_settings",
    "model_rpm_limit",
    "model_tpm_limit",
    "model_max_budget",
    "rpm_limit_type",
    "tpm_limit_type",
    "default_estimated_output_tokens",
    "default_estimated_output_tokens_per_model",
    "mcp_rpm_limit",
    "team_member_permissions",
    "team_member_rpm_limit",
    "team_member_tpm_limit",
    "team_member_budget_duration",
    "team_member_key_duration",
    "allowed_vector_store_indexes",
    "enforced_batch_output_expires_after",
    "enforced_file_expires_after",
    "router_settings",
    "access_group_ids",
    "budget_limits",
    "default_team_member_models",
    // LiteLLM's deprecated member lists: members are given with their roles.
    "admins",
    "members",
];

/// Flags whose `true` asks for something Sluice does not do (`false` is LiteLLM's default).
const UNSUPPORTED_FLAGS: [&str; 1] = ["disable_global_guardrails"];

/// The team limits a body may set to null to lift them (the service's `clear_limits`).
const LIMITS: [&str; 6] =
    ["rpm_limit", "tpm_limit", "max_parallel_requests", "max_budget", "soft_budget", "budget_duration"];

/// A member's role in a team, as LiteLLM spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    Admin,
    User,
}

impl Role {
    fn to_proto(self) -> i32 {
        match self {
            Role::Admin => pb::MemberRole::Admin as i32,
            Role::User => pb::MemberRole::User as i32,
        }
    }
}

fn role_name(role: i32) -> &'static str {
    match pb::MemberRole::try_from(role) {
        Ok(pb::MemberRole::Admin) => "admin",
        _ => "user",
    }
}

/// LiteLLM's `Member`: a role and the user, by id or by email.
#[derive(Debug, Clone, Deserialize)]
struct MemberBody {
    role: Role,
    user_id: Option<String>,
    user_email: Option<String>,
}

/// LiteLLM's `member`: one member or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Members {
    One(MemberBody),
    Many(Vec<MemberBody>),
}

impl Members {
    fn into_vec(self) -> Vec<MemberBody> {
        match self {
            Members::One(m) => vec![m],
            Members::Many(ms) => ms,
        }
    }
}

/// The fields of a team a caller sets (LiteLLM's `NewTeamRequest` / `UpdateTeamRequest`).
#[derive(Debug, Default, Deserialize)]
struct TeamFields {
    team_id: Option<String>,
    team_alias: Option<String>,
    organization_id: Option<String>,
    models: Option<Vec<String>>,
    #[serde(flatten)]
    limits: LimitFields,
    metadata: Option<Map<String, Value>>,
    members_with_roles: Option<Vec<MemberBody>>,
    /// Each member's default budget in the team (Sluice's `member_max_budget`).
    team_member_budget: Option<f64>,
    blocked: Option<bool>,
}

impl TeamFields {
    fn limits(&self) -> pb::Limits {
        self.limits.limits()
    }

    fn metadata_json(&self) -> Option<String> {
        self.metadata.as_ref().map(|m| Value::Object(m.clone()).to_string())
    }
}

/// A body as JSON, after the settings Sluice would not enforce are refused.
fn refuse_settings(body: &Bytes) -> Result<Value, RestError> {
    let value: Value = parse_body(body)?;
    refuse_unsupported(&value, &UNSUPPORTED)?;
    if let Some(flag) = UNSUPPORTED_FLAGS.iter().find(|name| value.get(**name) == Some(&Value::Bool(true))) {
        return Err(RestError::bad_request(format!("{flag}: not supported by Sluice")));
    }
    Ok(value)
}

/// A team as LiteLLM shows it (`LiteLLM_TeamTable`). No `spend`: the team service does not
/// report one (spend is read with the spend API).
fn team_json(team: &pb::Team) -> Value {
    let metadata: Value = serde_json::from_str(&team.metadata_json).unwrap_or_else(|_| json!({}));
    let members: Vec<Value> =
        team.members.iter().map(|m| json!({"user_id": m.user_id, "role": role_name(m.role)})).collect();
    let mut out = limits_json(team.limits.as_ref());
    out.insert("team_id".into(), json!(team.team_id));
    out.insert("team_alias".into(), json!(team.team_alias));
    out.insert("organization_id".into(), json!(team.organization_id));
    out.insert("models".into(), json!(team.models));
    out.insert("spend".into(), json!(team.spend));
    out.insert("team_member_budget".into(), json!(team.member_max_budget));
    out.insert("members_with_roles".into(), Value::Array(members));
    out.insert("metadata".into(), metadata);
    out.insert("blocked".into(), json!(team.blocked));
    out.insert("created_at".into(), json!(team.created_at));
    out.insert("updated_at".into(), json!(team.updated_at));
    Value::Object(out)
}

/// One member's row as LiteLLM shows it (`LiteLLM_TeamMembership`): its own limits in the
/// team in `litellm_budget_table` (null when it has none).
fn membership_json(team_id: &str, member: &pb::Member) -> Value {
    let limits = member.limits.clone().unwrap_or_default();
    let budget = if limits == pb::Limits::default() { Value::Null } else { Value::Object(limits_json(Some(&limits))) };
    json!({
        "team_id": team_id,
        "user_id": member.user_id,
        "role": role_name(member.role),
        "litellm_budget_table": budget,
    })
}

fn memberships_json(team: &pb::Team) -> Vec<Value> {
    team.members.iter().map(|m| membership_json(&team.team_id, m)).collect()
}

fn not_found(message: String) -> RestError {
    RestError::from(tonic::Status::not_found(message))
}

async fn get_team<S: Store>(admin: &Admin<S>, headers: &HeaderMap, team_id: &str) -> Result<pb::Team, RestError> {
    let request = grpc_request(headers, pb::TeamRef { team_id: team_id.to_owned() })?;
    Ok(TeamService::get_team(admin, request).await?.into_inner())
}

/// The team's keys the caller may see, every page of them.
async fn team_keys<S: Store>(admin: &Admin<S>, headers: &HeaderMap, team_id: &str) -> Result<Vec<Value>, RestError> {
    let mut keys = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::ListKeysRequest {
            team_id: Some(team_id.to_owned()),
            page_size: 500,
            page_token: std::mem::take(&mut token),
            ..pb::ListKeysRequest::default()
        };
        let page = KeyService::list_keys(admin, grpc_request(headers, request)?).await?.into_inner();
        let last_page = page.keys.is_empty() || page.next_page_token.is_empty();
        keys.extend(page.keys.iter().map(|k| super::keys::key_json(k, None)));
        if last_page || keys.len() as u64 >= page.total {
            return Ok(keys);
        }
        token = page.next_page_token;
    }
}

/// The user ids of the users the caller may see with these emails: LiteLLM names members by
/// email too, Sluice's members are user ids. An email no visible user has, or more than one
/// has, is refused (LiteLLM would make a user: Sluice makes users with `/user/new`).
async fn users_by_email<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    emails: &HashSet<String>,
) -> Result<HashMap<String, String>, RestError> {
    let mut found: HashMap<String, String> = HashMap::new();
    if emails.is_empty() {
        return Ok(found);
    }
    let mut token = String::new();
    let mut seen = 0u64;
    loop {
        let request =
            pb::ListUsersRequest { page_size: 500, page_token: std::mem::take(&mut token), ..Default::default() };
        let page = UserService::list_users(admin, grpc_request(headers, request)?).await?.into_inner();
        seen += page.users.len() as u64;
        for user in &page.users {
            let Some(email) = user.user_email.as_ref().filter(|e| emails.contains(*e)) else { continue };
            if let Some(other) = found.insert(email.clone(), user.user_id.clone()) {
                return Err(RestError::bad_request(format!(
                    "user_email {email:?} belongs to more than one user ({other}, {}): name the member by user_id",
                    user.user_id
                )));
            }
        }
        if page.users.is_empty() || page.next_page_token.is_empty() || seen >= page.total {
            break;
        }
        token = page.next_page_token;
    }
    match emails.iter().find(|e| !found.contains_key(*e)) {
        Some(missing) => {
            Err(not_found(format!("no user has user_email {missing:?} (create the user with /user/new first)")))
        }
        None => Ok(found),
    }
}

/// A member named in a body: its user id (looked up by email when only that is given).
#[derive(Debug, Clone)]
struct Named {
    user_id: String,
    user_email: Option<String>,
    role: Role,
}

/// The user ids of `members` (`param` is the body field they came in, for a 422 naming it).
async fn resolve_members<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    param: &str,
    members: Vec<MemberBody>,
) -> Result<Vec<Named>, RestError> {
    let emails: HashSet<String> =
        members.iter().filter(|m| m.user_id.is_none()).filter_map(|m| m.user_email.clone()).collect();
    let by_email = users_by_email(admin, headers, &emails).await?;
    let mut out: Vec<Named> = Vec::with_capacity(members.len());
    for m in members {
        let user_id = match (&m.user_id, &m.user_email) {
            (Some(id), _) => id.clone(),
            (None, Some(email)) => by_email.get(email).cloned().unwrap_or_default(),
            (None, None) => {
                return Err(RestError::invalid(param, format!("{param}: user_id or user_email is required")));
            }
        };
        if out.iter().any(|n| n.user_id == user_id) {
            return Err(RestError::bad_request(format!("{param}: user {user_id} is named twice")));
        }
        out.push(Named { user_id, user_email: m.user_email, role: m.role });
    }
    Ok(out)
}

/// The user id a member call names (`user_id`, or `user_email` looked up).
async fn resolve_one<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    user_id: Option<String>,
    user_email: Option<String>,
) -> Result<String, RestError> {
    match (user_id, user_email) {
        (Some(id), _) => Ok(id),
        (None, Some(email)) => {
            let emails = HashSet::from([email.clone()]);
            let found = users_by_email(admin, headers, &emails).await?;
            Ok(found.get(&email).cloned().unwrap_or_default())
        }
        (None, None) => Err(RestError::invalid("user_id", "user_id or user_email is required")),
    }
}

/// A member's limits in the team: LiteLLM sets only its budget there.
fn member_limits(max_budget: Option<f64>) -> pb::Limits {
    pb::Limits { max_budget, ..pb::Limits::default() }
}

async fn create<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    refuse_settings(&body)?;
    let fields: TeamFields = parse_body(&body)?;
    if fields.blocked == Some(true) {
        return Err(RestError::bad_request("blocked: a team is made unblocked; block it with /team/block"));
    }
    let members =
        resolve_members(&admin, &headers, "members_with_roles", fields.members_with_roles.clone().unwrap_or_default())
            .await?
            .into_iter()
            .map(|n| pb::Member { user_id: n.user_id, role: n.role.to_proto(), limits: None })
            .collect();
    let request = pb::CreateTeamRequest {
        team_id: fields.team_id.clone().unwrap_or_default(),
        team_alias: fields.team_alias.clone(),
        organization_id: fields.organization_id.clone(),
        models: fields.models.clone().unwrap_or_default(),
        limits: Some(fields.limits()),
        member_max_budget: fields.team_member_budget,
        metadata_json: fields.metadata_json(),
        members,
    };
    let team = TeamService::create_team(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &team_json(&team)))
}

#[derive(Deserialize)]
struct TeamOnly {
    team_id: Option<String>,
}

/// A field LiteLLM requires. Optional in the body types so that one of the wrong type is
/// named by `parse_body` (a required field it cannot find is not).
fn required<T>(value: Option<T>, name: &str) -> Result<T, RestError> {
    value.ok_or_else(|| RestError::invalid(name, format!("{name}: required")))
}

async fn update<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let team_id = required(parse_body::<TeamOnly>(&body)?.team_id, "team_id")?;
    let value = refuse_settings(&body)?;
    // What the team service changes elsewhere, or not at all after a team is made.
    let elsewhere = [
        ("blocked", "blocked: use /team/block and /team/unblock"),
        ("members_with_roles", "members_with_roles: use /team/member_add, /team/member_update, /team/member_delete"),
        ("organization_id", "organization_id: a team's organization is set when it is made"),
    ];
    // (An empty member list, as LiteLLM's clients send by default, asks for nothing.)
    let given = |name: &str| value.get(name).is_some_and(|v| !v.is_null() && v != &json!([]));
    if let Some((_, message)) = elsewhere.iter().find(|(name, _)| given(name)) {
        return Err(RestError::bad_request(*message));
    }
    if value.get("team_member_budget").is_some_and(Value::is_null) {
        return Err(RestError::bad_request(
            "team_member_budget: a member budget is changed, not removed (give a number)",
        ));
    }
    let fields: TeamFields = parse_body(&body)?;
    // A limit set to null is removed (LiteLLM's way to lift one).
    let cleared: Vec<String> =
        LIMITS.into_iter().filter(|name| value.get(*name).is_some_and(Value::is_null)).map(str::to_owned).collect();
    let request = pb::UpdateTeamRequest {
        team_id,
        team_alias: fields.team_alias.clone(),
        models: fields.models.clone().map(|values| pb::StringList { values }),
        limits: Some(fields.limits()),
        clear_limits: cleared,
        member_max_budget: fields.team_member_budget,
        metadata_json: fields.metadata_json(),
    };
    let team = TeamService::update_team(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &json!({"team_id": team.team_id, "data": team_json(&team)})))
}

#[derive(Deserialize)]
struct DeleteBody {
    team_ids: Option<Vec<String>>,
}

async fn delete<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let team_ids = required(parse_body::<DeleteBody>(&body)?.team_ids, "team_ids")?;
    if team_ids.is_empty() {
        return Err(RestError::invalid("team_ids", "team_ids: name the teams to delete"));
    }
    let mut ids: Vec<String> = Vec::with_capacity(team_ids.len());
    for id in team_ids {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    // Every team must exist, be the caller's to see and own no key it can see before any is
    // deleted: a bad list changes nothing. (LiteLLM deletes a team's keys with it; the team
    // service refuses to orphan them, so they are deleted or moved first.)
    for id in &ids {
        get_team(&admin, &headers, id).await?;
        let request = pb::ListKeysRequest { team_id: Some(id.clone()), page_size: 1, ..pb::ListKeysRequest::default() };
        let keys = KeyService::list_keys(&*admin, grpc_request(&headers, request)?).await?.into_inner();
        if keys.total > 0 {
            return Err(RestError::bad_request(format!(
                "team {id} still owns {} key(s); delete them or move them to another owner first (nothing was deleted)",
                keys.total
            )));
        }
    }
    let mut deleted = Vec::with_capacity(ids.len());
    for id in ids {
        TeamService::delete_team(&*admin, grpc_request(&headers, pb::TeamRef { team_id: id.clone() })?).await?;
        deleted.push(id);
    }
    Ok(json_response(StatusCode::OK, &json!({"deleted_teams": deleted})))
}

#[derive(Deserialize)]
struct InfoQuery {
    team_id: Option<String>,
}

async fn info<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let InfoQuery { team_id } = parse_query(query.as_deref())?;
    let team_id = team_id.ok_or_else(|| RestError::invalid("team_id", "team_id: the team to describe is required"))?;
    let team = get_team(&admin, &headers, &team_id).await?;
    let keys = team_keys(&admin, &headers, &team.team_id).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "team_id": team.team_id,
            "team_info": team_json(&team),
            "keys": keys,
            "team_memberships": memberships_json(&team),
        }),
    ))
}

#[derive(Deserialize)]
struct ListQuery {
    user_id: Option<String>,
    organization_id: Option<String>,
}

/// LiteLLM's `organization_id` for the teams of no organization.
const NO_ORGANIZATION: &str = "default_organization";

/// Every team the caller may see (LiteLLM's `/team/list` is not paged), with its members and
/// keys, sorted by alias as LiteLLM sorts them.
async fn list<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let q: ListQuery = parse_query(query.as_deref())?;
    let teams = visible_teams(&admin, &headers, q.organization_id.as_deref(), q.user_id.as_deref()).await?;
    let out = teams_json(&admin, &headers, &teams).await?;
    Ok(json_response(StatusCode::OK, &Value::Array(out)))
}

/// Every team the caller may see, narrowed to an organization (`default_organization`: none)
/// and a member, sorted by alias (the service scopes a member's list to its own teams).
async fn visible_teams<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    organization_id: Option<&str>,
    user_id: Option<&str>,
) -> Result<Vec<pb::Team>, RestError> {
    let org_filter = organization_id.filter(|o| *o != NO_ORGANIZATION).map(str::to_owned);
    let mut teams: Vec<pb::Team> = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::ListTeamsRequest {
            organization_id: org_filter.clone(),
            page_size: 500,
            page_token: std::mem::take(&mut token),
        };
        let page = TeamService::list_teams(admin, grpc_request(headers, request)?).await?.into_inner();
        let last_page = page.teams.is_empty() || page.next_page_token.is_empty();
        teams.extend(page.teams);
        if last_page || teams.len() as u64 >= page.total {
            break;
        }
        token = page.next_page_token;
    }
    teams.retain(|t| match organization_id {
        None => true,
        Some(NO_ORGANIZATION) => t.organization_id.is_none(),
        Some(org) => t.organization_id.as_deref() == Some(org),
    });
    if let Some(user) = user_id {
        teams.retain(|t| t.members.iter().any(|m| m.user_id == user));
    }
    teams.sort_by(|a, b| a.team_alias.as_deref().unwrap_or("").cmp(b.team_alias.as_deref().unwrap_or("")));
    Ok(teams)
}

/// Teams as `/team/list` shows them: with their memberships and keys.
async fn teams_json<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    teams: &[pb::Team],
) -> Result<Vec<Value>, RestError> {
    let mut out = Vec::with_capacity(teams.len());
    for team in teams {
        let mut item = team_json(team);
        if let Some(obj) = item.as_object_mut() {
            obj.insert("team_memberships".into(), Value::Array(memberships_json(team)));
            obj.insert("keys".into(), Value::Array(team_keys(admin, headers, &team.team_id).await?));
        }
        out.push(item);
    }
    Ok(out)
}

/// LiteLLM's `/v2/team/list` (its client's `list_v2`): the same teams, filtered by `team_id`
/// and part of `team_alias`, sorted, paged.
#[derive(Deserialize)]
struct ListV2Query {
    user_id: Option<String>,
    organization_id: Option<String>,
    team_id: Option<String>,
    team_alias: Option<String>,
    page: Option<u32>,
    page_size: Option<u32>,
    sort_by: Option<String>,
    sort_order: Option<String>,
}

async fn list_v2<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let q: ListV2Query = parse_query(query.as_deref())?;
    let mut teams = visible_teams(&admin, &headers, q.organization_id.as_deref(), q.user_id.as_deref()).await?;
    if let Some(id) = &q.team_id {
        teams.retain(|t| &t.team_id == id);
    }
    if let Some(part) = q.team_alias.as_deref().map(str::to_lowercase) {
        teams.retain(|t| t.team_alias.as_deref().is_some_and(|a| a.to_lowercase().contains(&part)));
    }
    match q.sort_by.as_deref() {
        None | Some("team_alias") => {}
        Some("team_id") => teams.sort_by(|a, b| a.team_id.cmp(&b.team_id)),
        Some("created_at") => teams.sort_by(|a, b| a.created_at.cmp(&b.created_at)),
        Some(other) => {
            return Err(RestError::invalid(
                "sort_by",
                format!("sort_by: {other:?} is not team_id, team_alias or created_at"),
            ));
        }
    }
    match q.sort_order.as_deref() {
        None | Some("asc") => {}
        Some("desc") => teams.reverse(),
        Some(other) => {
            return Err(RestError::invalid("sort_order", format!("sort_order: {other:?} is not asc or desc")));
        }
    }
    let page = q.page.unwrap_or(1).max(1);
    let size = q.page_size.unwrap_or(10).clamp(1, 100);
    let total = teams.len();
    let start = (page as usize - 1).saturating_mul(size as usize).min(total);
    let end = start.saturating_add(size as usize).min(total);
    let out = teams_json(&admin, &headers, teams.get(start..end).unwrap_or_default()).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "teams": out,
            "total": total,
            "page": page,
            "page_size": size,
            "total_pages": total.div_ceil(size as usize),
        }),
    ))
}

async fn block<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let team_id = required(parse_body::<TeamOnly>(&body)?.team_id, "team_id")?;
    let team = TeamService::block_team(&*admin, grpc_request(&headers, pb::TeamRef { team_id })?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &team_json(&team)))
}

async fn unblock<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let team_id = required(parse_body::<TeamOnly>(&body)?.team_id, "team_id")?;
    let team = TeamService::unblock_team(&*admin, grpc_request(&headers, pb::TeamRef { team_id })?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &team_json(&team)))
}

#[derive(Deserialize)]
struct MemberAddBody {
    team_id: Option<String>,
    member: Option<Members>,
    max_budget_in_team: Option<f64>,
}

/// Adds members (LiteLLM refuses one already in the team: its role and budget change with
/// `/team/member_update`, so an add never silently resets them). All or nothing: a member the
/// service refuses takes back the ones this call added.
async fn member_add<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let MemberAddBody { team_id, member, max_budget_in_team } = parse_body(&body)?;
    let (team_id, member) = (required(team_id, "team_id")?, required(member, "member")?);
    let team = get_team(&admin, &headers, &team_id).await?;
    let named = resolve_members(&admin, &headers, "member", member.into_vec()).await?;
    if named.is_empty() {
        return Err(RestError::invalid("member", "member: name at least one member"));
    }
    if let Some(already) = named.iter().find(|n| team.members.iter().any(|m| m.user_id == n.user_id)) {
        return Err(RestError::bad_request(format!(
            "user {} is already a member of team {}; change a member with /team/member_update",
            already.user_id, team.team_id
        )));
    }
    let mut added: Vec<String> = Vec::with_capacity(named.len());
    let mut after = team;
    for n in &named {
        let member = pb::Member {
            user_id: n.user_id.clone(),
            role: n.role.to_proto(),
            limits: Some(member_limits(max_budget_in_team)),
        };
        let request = pb::MemberRequest { team_id: team_id.clone(), member: Some(member) };
        match TeamService::add_member(&*admin, grpc_request(&headers, request)?).await {
            Ok(team) => {
                after = team.into_inner();
                added.push(n.user_id.clone());
            }
            Err(status) => {
                for user_id in added {
                    let request = pb::RemoveMemberRequest { team_id: team_id.clone(), user_id };
                    // Best effort: the refusal below is the answer either way.
                    let _ = TeamService::remove_member(&*admin, grpc_request(&headers, request)?).await;
                }
                let message = format!("user {}: {}", n.user_id, status.message());
                return Err(RestError::from(tonic::Status::new(status.code(), message)));
            }
        }
    }
    let users: Vec<Value> = named
        .iter()
        .map(|n| match &n.user_email {
            Some(email) => json!({"user_id": n.user_id, "user_email": email}),
            None => json!({"user_id": n.user_id}),
        })
        .collect();
    let memberships: Vec<Value> = after
        .members
        .iter()
        .filter(|m| named.iter().any(|n| n.user_id == m.user_id))
        .map(|m| membership_json(&after.team_id, m))
        .collect();
    let mut out = team_json(&after);
    if let Some(obj) = out.as_object_mut() {
        obj.insert("updated_users".into(), Value::Array(users));
        obj.insert("updated_team_memberships".into(), Value::Array(memberships));
    }
    Ok(json_response(StatusCode::OK, &out))
}

#[derive(Deserialize)]
struct MemberDeleteBody {
    team_id: Option<String>,
    user_id: Option<String>,
    user_email: Option<String>,
}

async fn member_delete<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let MemberDeleteBody { team_id, user_id, user_email } = parse_body(&body)?;
    let team_id = required(team_id, "team_id")?;
    let user_id = resolve_one(&admin, &headers, user_id, user_email).await?;
    let request = pb::RemoveMemberRequest { team_id, user_id };
    let team = TeamService::remove_member(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &team_json(&team)))
}

#[derive(Deserialize)]
struct MemberUpdateBody {
    team_id: Option<String>,
    user_id: Option<String>,
    user_email: Option<String>,
    role: Option<Role>,
    max_budget_in_team: Option<f64>,
    rpm_limit: Option<i64>,
    tpm_limit: Option<i64>,
}

/// Changes a member's role, budget or limits (its RPM and TPM over its keys of the team). The
/// service's AddMember replaces them all, so the member's current ones are read first and what
/// the body does not name is kept; a budget or limit set to null is lifted (as a key's are).
async fn member_update<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let value: Value = parse_body(&body)?;
    let MemberUpdateBody { team_id, user_id, user_email, role, max_budget_in_team, rpm_limit, tpm_limit } =
        parse_body(&body)?;
    let team_id = required(team_id, "team_id")?;
    let user_id = resolve_one(&admin, &headers, user_id, user_email.clone()).await?;
    let team = get_team(&admin, &headers, &team_id).await?;
    let current = team
        .members
        .iter()
        .find(|m| m.user_id == user_id)
        .ok_or_else(|| not_found(format!("user {user_id} is not a member of team {}", team.team_id)))?;
    let mut limits = current.limits.clone().unwrap_or_default();
    let named = |field: &str, given: bool| given || value.get(field).is_some_and(Value::is_null);
    if named("max_budget_in_team", max_budget_in_team.is_some()) {
        limits.max_budget = max_budget_in_team;
    }
    if named("rpm_limit", rpm_limit.is_some()) {
        limits.rpm_limit = rpm_limit;
    }
    if named("tpm_limit", tpm_limit.is_some()) {
        limits.tpm_limit = tpm_limit;
    }
    let member =
        pb::Member { user_id: user_id.clone(), role: role.map_or(current.role, Role::to_proto), limits: Some(limits) };
    let request = pb::MemberRequest { team_id: team.team_id.clone(), member: Some(member) };
    let after = TeamService::add_member(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    let now = after.members.iter().find(|m| m.user_id == user_id);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "team_id": after.team_id,
            "user_id": user_id,
            "user_email": user_email,
            "role": now.map(|m| role_name(m.role)),
            "max_budget_in_team": now.and_then(|m| m.limits.as_ref()).and_then(|l| l.max_budget),
            "rpm_limit": now.and_then(|m| m.limits.as_ref()).and_then(|l| l.rpm_limit),
            "tpm_limit": now.and_then(|m| m.limits.as_ref()).and_then(|l| l.tpm_limit),
        }),
    ))
}

#[derive(Deserialize)]
struct ModelsBody {
    team_id: Option<String>,
    models: Option<Vec<String>>,
}

/// Adds models to the team's list. A team with no list may use every model: adding to it
/// narrows the team to the models added, as in LiteLLM.
async fn model_add<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let ModelsBody { team_id, models } = parse_body(&body)?;
    let (team_id, models) = (required(team_id, "team_id")?, required(models, "models")?);
    let team = get_team(&admin, &headers, &team_id).await?;
    let mut values = team.models.clone();
    for model in models {
        if !values.contains(&model) {
            values.push(model);
        }
    }
    set_models(&admin, &headers, team.team_id, values).await
}

/// Removes models from the team's list. Refused where it would widen the team instead: an
/// empty list means every model, so the last model is not removed, and a team that may use
/// every model has no list to remove from.
async fn model_delete<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let ModelsBody { team_id, models } = parse_body(&body)?;
    let (team_id, models) = (required(team_id, "team_id")?, required(models, "models")?);
    let team = get_team(&admin, &headers, &team_id).await?;
    if team.models.is_empty() {
        return Err(RestError::bad_request(format!(
            "team {} may use every model; give it a list of models with /team/update",
            team.team_id
        )));
    }
    let values: Vec<String> = team.models.iter().filter(|m| !models.contains(m)).cloned().collect();
    if values.is_empty() {
        return Err(RestError::bad_request(
            "models: removing every model would let the team use all models; block the team with /team/block instead",
        ));
    }
    set_models(&admin, &headers, team.team_id, values).await
}

async fn set_models<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    team_id: String,
    values: Vec<String>,
) -> RestResult {
    let request =
        pb::UpdateTeamRequest { team_id, models: Some(pb::StringList { values }), ..pb::UpdateTeamRequest::default() };
    let team = TeamService::update_team(admin, grpc_request(headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &team_json(&team)))
}
