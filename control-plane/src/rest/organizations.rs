//! LiteLLM's `/organization/*` endpoints on the organization service, and its organization
//! members on the user service (a Sluice user belongs to at most one organization, with one
//! role): bodies and query parameters as LiteLLM documents them, answers in its shapes (limits
//! at the top level and in `litellm_budget_table`, no `spend` or `budget_id`: the service holds
//! neither).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, patch, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::organization_service_server::OrganizationService;
use sluice_proto::admin::v1::team_service_server::TeamService;
use sluice_proto::admin::v1::user_service_server::UserService;

use super::limits::{LimitFields, cleared_limits, limits_json};
use super::users::{metadata_value, role_from_name, role_name, user_json};
use super::{
    Body, RestError, RestResult, grpc_request, json_response, parse_body, parse_query, refuse_unless_off,
    refuse_unsupported,
};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

/// LiteLLM moved `/organization/update` to PATCH and `/organization/delete` to DELETE; its older
/// clients POST them: both are taken.
pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new()
        .route("/organization/new", post(new::<S>))
        .route("/organization/update", patch(update::<S>).post(update::<S>))
        .route("/organization/delete", delete(remove::<S>).post(remove::<S>))
        .route("/organization/info", get(info::<S>).post(info_many::<S>))
        .route("/organization/list", get(list::<S>))
        .route("/organization/member_add", post(member_add::<S>))
        .route("/organization/member_update", patch(member_update::<S>).post(member_update::<S>))
        .route("/organization/member_delete", delete(member_delete::<S>).post(member_delete::<S>))
}

/// LiteLLM organization settings the organization service does not carry: refused when given.
const UNSUPPORTED: [&str; 8] = [
    "budget_id",
    "model_max_budget",
    "model_rpm_limit",
    "model_tpm_limit",
    "object_permission",
    "blocked",
    "tags",
    "model_aliases",
];

/// The fields of an organization a caller sets (LiteLLM's `NewOrganizationRequest` /
/// `LiteLLM_OrganizationTableUpdate`).
#[derive(Debug, Default, Deserialize)]
struct OrgFields {
    organization_id: Option<String>,
    organization_alias: Option<String>,
    models: Option<Vec<String>>,
    #[serde(flatten)]
    limits: LimitFields,
    metadata: Option<Map<String, Value>>,
}

impl OrgFields {
    fn metadata_json(&self) -> Option<String> {
        self.metadata.as_ref().map(|m| Value::Object(m.clone()).to_string())
    }
}

/// A body's fields, after the settings Sluice would not keep are refused.
fn org_fields(body: &Bytes) -> Result<(OrgFields, Value), RestError> {
    let value: Value = parse_body(body)?;
    refuse_unless_off(&value, &UNSUPPORTED)?;
    let fields = parse_body(body)?;
    Ok((fields, value))
}

/// An organization as LiteLLM shows it: its limits at the top level and, as LiteLLM keeps them,
/// in `litellm_budget_table`.
fn org_json(o: &pb::Organization) -> Value {
    let limits = limits_json(o.limits.as_ref());
    let mut out = json!({
        "organization_id": o.organization_id,
        "organization_alias": o.organization_alias,
        "models": o.models,
        "metadata": metadata_value(&o.metadata_json),
        "blocked": o.blocked,
        "litellm_budget_table": limits,
        "created_at": o.created_at,
        "updated_at": o.updated_at,
    });
    if let Some(obj) = out.as_object_mut() {
        obj.extend(limits);
    }
    out
}

/// A membership as LiteLLM shows one (`LiteLLM_OrganizationMembershipTable`, without the spend
/// and times Sluice does not keep for it).
fn membership_json(u: &pb::User, organization_id: &str) -> Value {
    json!({
        "user_id": u.user_id,
        "organization_id": organization_id,
        "user_role": role_name(u.user_role),
        "user_email": u.user_email,
    })
}

fn org_ref(organization_id: &str) -> pb::OrganizationRef {
    pb::OrganizationRef { organization_id: organization_id.to_owned() }
}

async fn new<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let (fields, _) = org_fields(&body)?;
    let request = pb::CreateOrganizationRequest {
        organization_id: fields.organization_id.clone().unwrap_or_default(),
        organization_alias: fields.organization_alias.clone(),
        models: fields.models.clone().unwrap_or_default(),
        limits: Some(fields.limits.limits()),
        metadata_json: fields.metadata_json(),
    };
    let made = OrganizationService::create_organization(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &org_json(&made)))
}

/// A field given changes, a limit set to null is lifted, the rest stays.
async fn update<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let (fields, value) = org_fields(&body)?;
    let organization_id = fields.organization_id.clone().ok_or_else(|| {
        RestError::invalid("organization_id", "organization_id: the organization to update is required")
    })?;
    let request = pb::UpdateOrganizationRequest {
        organization_id,
        organization_alias: fields.organization_alias.clone(),
        models: fields.models.clone().map(|values| pb::StringList { values }),
        limits: Some(fields.limits.limits()),
        clear_limits: cleared_limits(&value),
        metadata_json: fields.metadata_json(),
    };
    let updated =
        OrganizationService::update_organization(&*admin, grpc_request(&headers, request)?).await?.into_inner();
    Ok(json_response(StatusCode::OK, &org_json(&updated)))
}

#[derive(Deserialize)]
struct DeleteBody {
    organization_ids: Vec<String>,
}

/// Every organization named must exist, be the caller's to see and hold no user or team (the
/// store refuses to delete one that does; LiteLLM would delete its teams with it) before any is
/// deleted: a bad list changes nothing. The answer is LiteLLM's: the organizations deleted.
async fn remove<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let DeleteBody { organization_ids } = parse_body(&body)?;
    let mut found: Vec<pb::Organization> = Vec::with_capacity(organization_ids.len());
    for id in &organization_ids {
        if found.iter().any(|o| &o.organization_id == id) {
            continue;
        }
        let org = OrganizationService::get_organization(&*admin, grpc_request(&headers, org_ref(id))?).await?;
        found.push(org.into_inner());
    }
    if found.is_empty() {
        return Err(RestError::bad_request("name the organizations to delete: organization_ids"));
    }
    for org in &found {
        let id = &org.organization_id;
        let users = pb::ListUsersRequest { organization_id: Some(id.clone()), page_size: 1, ..Default::default() };
        let users = UserService::list_users(&*admin, grpc_request(&headers, users)?).await?.into_inner().total;
        let teams = pb::ListTeamsRequest { organization_id: Some(id.clone()), page_size: 1, ..Default::default() };
        let teams = TeamService::list_teams(&*admin, grpc_request(&headers, teams)?).await?.into_inner().total;
        if users > 0 || teams > 0 {
            return Err(RestError::bad_request(format!(
                "organization {id} still has {users} user(s) and {teams} team(s); move or delete them first \
                 (nothing was deleted)"
            )));
        }
    }
    for org in &found {
        OrganizationService::delete_organization(&*admin, grpc_request(&headers, org_ref(&org.organization_id))?)
            .await?;
    }
    let deleted: Vec<Value> = found.iter().map(org_json).collect();
    Ok(json_response(StatusCode::OK, &Value::Array(deleted)))
}

#[derive(Deserialize)]
struct InfoQuery {
    organization_id: Option<String>,
}

/// The most members `/organization/info` lists (pages of the service's largest size).
const MAX_MEMBER_PAGES: usize = 20;

/// The organization with its `members`: the users in it the caller may see.
async fn info<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let InfoQuery { organization_id } = parse_query(query.as_deref())?;
    let organization_id = organization_id.ok_or_else(|| {
        RestError::invalid("organization_id", "organization_id: the organization to describe is required")
    })?;
    let org = OrganizationService::get_organization(&*admin, grpc_request(&headers, org_ref(&organization_id))?)
        .await?
        .into_inner();
    let mut members = Vec::new();
    let mut token = String::new();
    for _ in 0..MAX_MEMBER_PAGES {
        let request = pb::ListUsersRequest {
            organization_id: Some(org.organization_id.clone()),
            user_role: None,
            page_size: 500,
            page_token: std::mem::take(&mut token),
        };
        let page = UserService::list_users(&*admin, grpc_request(&headers, request)?).await?.into_inner();
        // A caller scoped to its own user is shown itself whatever it asks: keep this org's.
        members.extend(
            page.users
                .iter()
                .filter(|u| u.organization_id.as_deref() == Some(org.organization_id.as_str()))
                .map(|u| membership_json(u, &org.organization_id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut out = org_json(&org);
    if let Some(obj) = out.as_object_mut() {
        obj.insert("members".into(), Value::Array(members));
    }
    Ok(json_response(StatusCode::OK, &out))
}

#[derive(Deserialize)]
struct InfoBody {
    organizations: Vec<String>,
}

/// LiteLLM's deprecated `POST /organization/info` (`{"organizations": [...]}`): a list.
async fn info_many<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let InfoBody { organizations } = parse_body(&body)?;
    if organizations.is_empty() {
        return Err(RestError::bad_request("name the organizations to describe: organizations"));
    }
    let mut out = Vec::with_capacity(organizations.len());
    for id in &organizations {
        let org = OrganizationService::get_organization(&*admin, grpc_request(&headers, org_ref(id))?).await?;
        out.push(org_json(&org.into_inner()));
    }
    Ok(json_response(StatusCode::OK, &Value::Array(out)))
}

/// The most organizations `/organization/list` answers (pages of the service's largest size).
const MAX_LIST_PAGES: usize = 20;

/// LiteLLM answers every organization the caller may see, unpaged (members are on
/// `/organization/info`).
async fn list<S: Store>(State(admin): AdminState<S>, headers: HeaderMap) -> RestResult {
    let mut orgs = Vec::new();
    let mut token = String::new();
    for _ in 0..MAX_LIST_PAGES {
        let request = pb::ListOrganizationsRequest { page_size: 500, page_token: std::mem::take(&mut token) };
        let page =
            OrganizationService::list_organizations(&*admin, grpc_request(&headers, request)?).await?.into_inner();
        orgs.extend(page.organizations.iter().map(org_json));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(json_response(StatusCode::OK, &Value::Array(orgs)))
}

/// LiteLLM's roles inside an organization (`OrgMember.role`).
fn org_role(field: &str, name: &str) -> Result<pb::UserRole, RestError> {
    let role = role_from_name(field, name)?;
    match role {
        pb::UserRole::OrgAdmin | pb::UserRole::InternalUser | pb::UserRole::InternalUserViewer => Ok(role),
        _ => Err(RestError::invalid(
            field,
            format!(
                "{field}: {name:?} is not a role within an organization (org_admin, internal_user, internal_user_viewer)"
            ),
        )),
    }
}

/// A member's budget within the organization: a Sluice user has one budget (`/user/update`
/// `max_budget`), not one per organization.
const UNSUPPORTED_MEMBER: [&str; 1] = ["max_budget_in_organization"];

#[derive(Deserialize)]
struct OrgMember {
    user_id: Option<String>,
    user_email: Option<String>,
    role: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Members {
    One(OrgMember),
    Many(Vec<OrgMember>),
}

#[derive(Deserialize)]
struct MemberAddBody {
    organization_id: String,
    member: Members,
}

/// What adding one member does on the user service.
enum MemberChange {
    /// A user the caller may not see or that does not exist: made in the organization, as
    /// LiteLLM makes one.
    Create(pb::CreateUserRequest),
    Update(pb::UpdateUserRequest),
}

/// Adds users to the organization with a role: an existing user is moved into it (if it is in
/// no other), a new one is made in it (no key, as LiteLLM). Every member is checked before any
/// is changed.
async fn member_add<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let value: Value = parse_body(&body)?;
    refuse_unsupported(&value, &UNSUPPORTED_MEMBER)?;
    let MemberAddBody { organization_id, member } = parse_body(&body)?;
    let members = match member {
        Members::One(m) => vec![m],
        Members::Many(ms) => ms,
    };
    if members.is_empty() {
        return Err(RestError::bad_request("name the members to add: member"));
    }
    OrganizationService::get_organization(&*admin, grpc_request(&headers, org_ref(&organization_id))?).await?;
    let mut changes = Vec::with_capacity(members.len());
    for m in members {
        let role = org_role("member.role", &m.role)?;
        let user_id = m.user_id.ok_or_else(|| {
            RestError::invalid("member", "member.user_id: required (Sluice finds users by id, not by user_email)")
        })?;
        match UserService::get_user(&*admin, grpc_request(&headers, pb::UserRef { user_id: user_id.clone() })?).await {
            Ok(user) => {
                let user = user.into_inner();
                if let Some(other) = user.organization_id.as_deref().filter(|o| *o != organization_id) {
                    return Err(RestError::bad_request(format!(
                        "user {user_id} belongs to organization {other}: a Sluice user belongs to one organization \
                         (move it with /user/update organization_id)"
                    )));
                }
                changes.push(MemberChange::Update(pb::UpdateUserRequest {
                    user_id,
                    user_role: Some(role as i32),
                    organization_id: Some(organization_id.clone()),
                    ..pb::UpdateUserRequest::default()
                }));
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                changes.push(MemberChange::Create(pb::CreateUserRequest {
                    user_id,
                    user_email: m.user_email,
                    user_role: role as i32,
                    organization_id: Some(organization_id.clone()),
                    ..pb::CreateUserRequest::default()
                }));
            }
            Err(status) => return Err(status.into()),
        }
    }
    let mut users = Vec::with_capacity(changes.len());
    for change in changes {
        let user = match change {
            MemberChange::Create(request) => {
                UserService::create_user(&*admin, grpc_request(&headers, request)?).await?
            }
            MemberChange::Update(request) => {
                UserService::update_user(&*admin, grpc_request(&headers, request)?).await?
            }
        };
        users.push(user.into_inner());
    }
    let memberships: Vec<Value> = users.iter().map(|u| membership_json(u, &organization_id)).collect();
    let users: Vec<Value> = users.iter().map(user_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "organization_id": organization_id,
            "updated_users": users,
            "updated_organization_memberships": memberships,
        }),
    ))
}

#[derive(Deserialize)]
struct MemberUpdateBody {
    organization_id: String,
    user_id: Option<String>,
    role: Option<String>,
}

/// The user `user_id` names (required: Sluice finds users by id), if the organization exists
/// and the user is its member (else 404, as for an unknown user).
async fn member_of<S: Store>(
    admin: &Admin<S>,
    headers: &HeaderMap,
    organization_id: &str,
    user_id: Option<String>,
) -> Result<pb::User, RestError> {
    let user_id = user_id.ok_or_else(|| {
        RestError::invalid("user_id", "user_id: required (Sluice finds users by id, not by user_email)")
    })?;
    OrganizationService::get_organization(admin, grpc_request(headers, org_ref(organization_id))?).await?;
    let user = UserService::get_user(admin, grpc_request(headers, pb::UserRef { user_id: user_id.clone() })?)
        .await?
        .into_inner();
    if user.organization_id.as_deref() != Some(organization_id) {
        return Err(RestError::from(tonic::Status::not_found(format!(
            "user {user_id} is not a member of organization {organization_id}"
        ))));
    }
    Ok(user)
}

/// Changes a member's role (the user's role: Sluice keeps one per user). The answer is the
/// membership, as LiteLLM's.
async fn member_update<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let value: Value = parse_body(&body)?;
    refuse_unsupported(&value, &UNSUPPORTED_MEMBER)?;
    let MemberUpdateBody { organization_id, user_id, role } = parse_body(&body)?;
    let role = role.as_deref().map(|r| org_role("role", r)).transpose()?;
    let user = member_of(&admin, &headers, &organization_id, user_id).await?;
    let user = match role {
        Some(role) => {
            let request = pb::UpdateUserRequest {
                user_id: user.user_id.clone(),
                user_role: Some(role as i32),
                ..pb::UpdateUserRequest::default()
            };
            UserService::update_user(&*admin, grpc_request(&headers, request)?).await?.into_inner()
        }
        None => user,
    };
    Ok(json_response(StatusCode::OK, &membership_json(&user, &organization_id)))
}

#[derive(Deserialize)]
struct MemberDeleteBody {
    organization_id: String,
    user_id: Option<String>,
}

/// Takes a member out of the organization (the user stays, in no organization; its keys follow
/// at once). The answer is the membership that ended, as `member_update` shows one.
async fn member_delete<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, body: Body) -> RestResult {
    let body = body?;
    let MemberDeleteBody { organization_id, user_id } = parse_body(&body)?;
    let user = member_of(&admin, &headers, &organization_id, user_id).await?;
    let request = pb::UpdateUserRequest {
        user_id: user.user_id.clone(),
        clear_organization: true,
        ..pb::UpdateUserRequest::default()
    };
    UserService::update_user(&*admin, grpc_request(&headers, request)?).await?;
    Ok(json_response(StatusCode::OK, &membership_json(&user, &organization_id)))
}
