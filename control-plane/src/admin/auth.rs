//! Who is calling, and what they may do.
//!
//! Callers authenticate with the master key or a management key (gRPC metadata
//! `authorization: Bearer …`). A management key acts with its owner user's role (LiteLLM's
//! roles) and team roles; a read-only key acts with the same scope but cannot change anything.
//! LLM API keys cannot call the admin API.
//!
//! Every decision is a pure function of the [`Principal`] and the [`Tenancy`] of the object it
//! touches, so the authorisation matrix is one table. Objects outside the caller's scope answer
//! NOT_FOUND rather than PERMISSION_DENIED: ids cannot be probed.

use sluice_core::keys::{self, KeyHash};

use super::error::{AdminError, AdminResult};
use crate::store::{DirectoryStore, KeyLookup, KeyRecord, KeyStore, KeyType, StoreError, UserRecord, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ProxyAdmin,
    ProxyAdminViewer,
    OrgAdmin,
    InternalUser,
    InternalUserViewer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "proxy_admin" => Self::ProxyAdmin,
            "proxy_admin_viewer" => Self::ProxyAdminViewer,
            "org_admin" => Self::OrgAdmin,
            "internal_user" => Self::InternalUser,
            "internal_user_viewer" => Self::InternalUserViewer,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProxyAdmin => "proxy_admin",
            Self::ProxyAdminViewer => "proxy_admin_viewer",
            Self::OrgAdmin => "org_admin",
            Self::InternalUser => "internal_user",
            Self::InternalUserViewer => "internal_user_viewer",
        }
    }

    /// Roles ordered by power: a caller may hand out only roles at or below its own.
    fn rank(self) -> u8 {
        match self {
            Self::InternalUserViewer => 0,
            Self::InternalUser => 1,
            Self::OrgAdmin => 2,
            Self::ProxyAdminViewer => 3,
            Self::ProxyAdmin => 4,
        }
    }
}

/// Where an object sits: the user, team and organization it belongs to (as far as known).
#[derive(Debug, Clone, Default)]
pub struct Tenancy {
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub organization_id: Option<String>,
}

/// What a caller may list: everything, its organization, or its own objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Org(String),
    Own(String),
}

#[derive(Debug, Clone)]
pub struct Principal {
    /// How audit rows name the caller: `master` or `key:<key_id>`.
    pub actor: String,
    pub role: Role,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    /// Teams the caller belongs to, and whether it is their admin.
    pub teams: Vec<(String, bool)>,
    /// Models the caller may hand out (empty: any).
    pub models: Vec<String>,
    /// Routes the caller may hand out (empty: any).
    pub routes: Vec<String>,
    /// A read-only key: reads within the role's scope, never writes.
    pub read_only: bool,
}

impl Principal {
    pub fn master() -> Self {
        Self {
            actor: "master".into(),
            role: Role::ProxyAdmin,
            user_id: None,
            organization_id: None,
            teams: Vec::new(),
            models: Vec::new(),
            routes: Vec::new(),
            read_only: false,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::ProxyAdmin && !self.read_only
    }

    pub fn is_org_admin_of(&self, org: Option<&String>) -> bool {
        self.role == Role::OrgAdmin && self.may_write() && org.is_some() && org == self.organization_id.as_ref()
    }

    pub fn list_scope(&self) -> Scope {
        if self.reads_everything() {
            Scope::All
        } else if let (Role::OrgAdmin, Some(org)) = (self.role, &self.organization_id) {
            Scope::Org(org.clone())
        } else {
            Scope::Own(self.user_id.clone().unwrap_or_default())
        }
    }

    fn reads_everything(&self) -> bool {
        matches!(self.role, Role::ProxyAdmin | Role::ProxyAdminViewer)
    }

    fn may_write(&self) -> bool {
        !self.read_only && !matches!(self.role, Role::ProxyAdminViewer | Role::InternalUserViewer)
    }

    fn in_my_org(&self, t: &Tenancy) -> bool {
        self.role == Role::OrgAdmin && self.organization_id.is_some() && t.organization_id == self.organization_id
    }

    fn is_me(&self, user: Option<&String>) -> bool {
        self.user_id.is_some() && user == self.user_id.as_ref()
    }

    fn member_of(&self, team: Option<&String>) -> bool {
        team.is_some_and(|t| self.teams.iter().any(|(id, _)| id == t))
    }

    /// Is the caller an admin of this team?
    pub fn administers(&self, team: &str) -> bool {
        self.teams.iter().any(|(id, admin)| id == team && *admin)
    }

    fn admin_of(&self, team: Option<&String>) -> bool {
        team.is_some_and(|t| self.teams.iter().any(|(id, admin)| id == t && *admin))
    }

    fn hidden<T>(&self) -> AdminResult<T> {
        Err(AdminError::NotFound("no such object".into()))
    }

    fn read_only_refusal<T>(&self) -> AdminResult<T> {
        Err(AdminError::PermissionDenied(format!(
            "{} cannot change anything",
            if self.read_only { "a read-only key" } else { self.role.as_str() }
        )))
    }

    // ---- keys ----

    /// What `ListKeys` shows this caller (None: every key).
    pub fn key_visibility(&self) -> Option<crate::store::Visibility> {
        if self.reads_everything() {
            return None;
        }
        Some(crate::store::Visibility {
            // A management key without an owner sees no user's keys (an empty id matches none).
            user_id: Some(self.user_id.clone().unwrap_or_default()),
            admin_teams: self.teams.iter().filter(|(_, admin)| *admin).map(|(t, _)| t.clone()).collect(),
            organization_id: if self.role == Role::OrgAdmin { self.organization_id.clone() } else { None },
        })
    }

    /// May this caller see the key? (its owner, its team's admin, its org's admin, admins)
    pub fn can_read_key(&self, t: &Tenancy) -> bool {
        self.reads_everything()
            || self.in_my_org(t)
            || self.is_me(t.user_id.as_ref())
            || self.admin_of(t.team_id.as_ref())
    }

    /// May this caller change, rotate, block or delete the key?
    pub fn can_manage_key(&self, t: &Tenancy) -> AdminResult<()> {
        if !self.can_read_key(t) {
            return self.hidden();
        }
        if !self.may_write() {
            return self.read_only_refusal();
        }
        Ok(())
    }

    /// May this caller create (or turn a key into) one with these fields? Never more than it
    /// holds: its own user (or, for a team or org admin, their team's or org's users), its
    /// models, LLM API keys only unless it is an admin.
    /// `explicit_org` is the organization the request itself names, if any (`t` also carries
    /// the one derived from the key's team or user).
    pub fn can_grant_key(
        &self,
        t: &Tenancy,
        explicit_org: Option<&String>,
        models: &[String],
        routes: &[String],
        key_type: KeyType,
    ) -> AdminResult<()> {
        if self.is_admin() {
            return Ok(());
        }
        if !self.may_write() {
            return self.read_only_refusal();
        }
        if key_type != KeyType::LlmApi && self.role != Role::OrgAdmin {
            return Err(AdminError::PermissionDenied("only an admin may create management or read-only keys".into()));
        }
        let owner_ok = if self.role == Role::OrgAdmin {
            self.in_my_org(t) && (t.team_id.is_some() || t.user_id.is_some())
        } else {
            match (&t.user_id, &t.team_id) {
                (Some(_), team) => self.is_me(t.user_id.as_ref()) && (team.is_none() || self.member_of(team.as_ref())),
                (None, Some(_)) => self.admin_of(t.team_id.as_ref()),
                (None, None) => false,
            }
        };
        if !owner_ok {
            return Err(AdminError::PermissionDenied(
                "a key you make must belong to you, a team you administer, or your organization".into(),
            ));
        }
        if explicit_org.is_some() && !self.is_org_admin_of(explicit_org) {
            return Err(AdminError::PermissionDenied("only an admin may set another organization".into()));
        }
        self.can_grant_models(models)?;
        self.can_grant_routes(routes)
    }

    /// A caller restricted to some routes hands out only those (and never "every route").
    pub fn can_grant_routes(&self, routes: &[String]) -> AdminResult<()> {
        if self.is_admin() || self.routes.is_empty() {
            return Ok(());
        }
        if routes.is_empty() {
            return Err(AdminError::PermissionDenied(format!(
                "name the routes: you may grant only {}",
                self.routes.join(", ")
            )));
        }
        match routes.iter().find(|r| !self.routes.contains(r)) {
            Some(r) => Err(AdminError::PermissionDenied(format!("you may not grant route {r:?}"))),
            None => Ok(()),
        }
    }

    /// A caller restricted to some models hands out only those (and never "all models").
    pub fn can_grant_models(&self, models: &[String]) -> AdminResult<()> {
        if self.is_admin() {
            return Ok(());
        }
        if !self.models.is_empty() {
            if models.is_empty() {
                return Err(AdminError::PermissionDenied(format!(
                    "name the models: you may grant only {}",
                    self.models.join(", ")
                )));
            }
            if let Some(m) = models.iter().find(|m| !self.models.contains(m)) {
                return Err(AdminError::PermissionDenied(format!("you may not grant model {m:?}")));
            }
        }
        Ok(())
    }

    // ---- teams ----

    pub fn can_read_team(&self, t: &Tenancy) -> AdminResult<()> {
        if self.reads_everything() || self.in_my_org(t) || self.member_of(t.team_id.as_ref()) {
            Ok(())
        } else {
            self.hidden()
        }
    }

    /// Create, update, block, delete: admins, and org admins inside their organization.
    pub fn can_manage_team(&self, t: &Tenancy) -> AdminResult<()> {
        self.can_read_team(t)?;
        if !self.may_write() {
            return self.read_only_refusal();
        }
        if self.is_admin() || self.in_my_org(t) {
            Ok(())
        } else {
            Err(AdminError::PermissionDenied("only an admin or the organization's admin may change a team".into()))
        }
    }

    /// Add, change or remove members: also the team's own admins.
    pub fn can_manage_members(&self, t: &Tenancy) -> AdminResult<()> {
        self.can_read_team(t)?;
        if !self.may_write() {
            return self.read_only_refusal();
        }
        if self.is_admin() || self.in_my_org(t) || self.admin_of(t.team_id.as_ref()) {
            Ok(())
        } else {
            Err(AdminError::PermissionDenied("only the team's admins may change its members".into()))
        }
    }

    // ---- users ----

    pub fn can_read_user(&self, t: &Tenancy) -> AdminResult<()> {
        if self.reads_everything() || self.in_my_org(t) || self.is_me(t.user_id.as_ref()) {
            Ok(())
        } else {
            self.hidden()
        }
    }

    /// Create, update, delete a user with `role`: admins; org admins for their organization's
    /// users and roles up to their own. Nobody raises their own role.
    pub fn can_manage_user(&self, t: &Tenancy, role: Role) -> AdminResult<()> {
        self.can_read_user(t)?;
        if !self.may_write() {
            return self.read_only_refusal();
        }
        if self.is_admin() {
            return Ok(());
        }
        if self.in_my_org(t) && role.rank() <= self.role.rank() && !self.is_me(t.user_id.as_ref()) {
            return Ok(());
        }
        Err(AdminError::PermissionDenied(format!(
            "{} may not create or change this user or give role {}",
            self.role.as_str(),
            role.as_str()
        )))
    }

    // ---- organizations ----

    pub fn can_read_org(&self, t: &Tenancy) -> AdminResult<()> {
        if self.reads_everything() || (self.organization_id.is_some() && t.organization_id == self.organization_id) {
            Ok(())
        } else {
            self.hidden()
        }
    }

    pub fn can_manage_org(&self, t: &Tenancy) -> AdminResult<()> {
        self.can_read_org(t)?;
        if self.is_admin() {
            Ok(())
        } else if !self.may_write() {
            self.read_only_refusal()
        } else {
            Err(AdminError::PermissionDenied("only an admin may create, change or delete organizations".into()))
        }
    }

    /// Budgets and customers belong to no tenant: admins change them, admin viewers read them.
    pub fn can_read_global(&self, what: &str) -> AdminResult<()> {
        if self.reads_everything() {
            Ok(())
        } else {
            Err(AdminError::PermissionDenied(format!("only an admin may read {what}")))
        }
    }

    pub fn can_write_global(&self, what: &str) -> AdminResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(AdminError::PermissionDenied(format!("only an admin may change {what}")))
        }
    }

    pub fn can_read_audit(&self) -> AdminResult<()> {
        if self.reads_everything() {
            Ok(())
        } else {
            Err(AdminError::PermissionDenied("only an admin may read the audit log".into()))
        }
    }
}

/// The key `token` is (its hash `hash`), if it is a Sluice key that is known, not blocked and
/// not expired.
async fn valid_key<S: KeyStore>(store: &S, token: &[u8], hash: &KeyHash) -> AdminResult<KeyRecord> {
    if keys::check_format(token).is_err() {
        return Err(AdminError::Unauthenticated("the credential is not a Sluice key"));
    }
    let key = match store.get_key(&KeyLookup::Hash(format!("sha256:{}", hash.to_hex()))).await {
        Ok(key) => key,
        Err(StoreError::NotFound) => return Err(AdminError::Unauthenticated("unknown key")),
        Err(e) => return Err(e.into()),
    };
    if key.blocked {
        return Err(AdminError::Unauthenticated("the key is blocked"));
    }
    if key.expires_at.is_some_and(|at| at <= now_ms()) {
        return Err(AdminError::Unauthenticated("the key has expired"));
    }
    Ok(key)
}

/// The record of the LLM API key `authorization` carries, if it carries a valid one: LiteLLM
/// lets a virtual key read its own `/key/info`, and nothing else of the admin API.
pub async fn llm_key_itself<S: KeyStore>(store: &S, authorization: Option<&[u8]>) -> AdminResult<Option<KeyRecord>> {
    let Some(token) = authorization.and_then(keys::bearer_token) else { return Ok(None) };
    let key = valid_key(store, token, &KeyHash::of(token)).await?;
    Ok((key.key_type == KeyType::LlmApi).then_some(key))
}

/// Resolves the caller from the `authorization` metadata value.
pub async fn authenticate<S: KeyStore + DirectoryStore>(
    store: &S,
    master_key_hash: Option<&KeyHash>,
    authorization: Option<&[u8]>,
) -> AdminResult<Principal> {
    let token = authorization
        .and_then(keys::bearer_token)
        .ok_or(AdminError::Unauthenticated("send `authorization: Bearer <master key or management key>`"))?;
    let hash = KeyHash::of(token);
    if master_key_hash.is_some_and(|m| m.ct_eq(&hash)) {
        return Ok(Principal::master());
    }
    let key = valid_key(store, token, &hash).await?;
    if key.key_type == KeyType::LlmApi {
        return Err(AdminError::PermissionDenied(
            "an LLM API key cannot call the admin API; use a management key".into(),
        ));
    }
    // The key acts with its owner's role; a key without a known owner is an internal user.
    let user: Option<UserRecord> = match &key.user_id {
        Some(id) => match store.get::<UserRecord>(id).await {
            Ok(u) => Some(u),
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let role = user.as_ref().and_then(|u| Role::parse(&u.user_role)).unwrap_or(Role::InternalUser);
    let teams = match &key.user_id {
        Some(id) => store.memberships(id).await?.into_iter().map(|m| (m.team_id, m.role == "admin")).collect(),
        None => Vec::new(),
    };
    Ok(Principal {
        actor: format!("key:{}", key.key_id),
        role,
        user_id: key.user_id.clone(),
        organization_id: user.and_then(|u| u.organization_id),
        teams,
        models: key.models.clone(),
        routes: key.allowed_routes.clone(),
        read_only: key.key_type == KeyType::ReadOnly,
    })
}
