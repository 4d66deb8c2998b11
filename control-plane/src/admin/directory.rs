//! `UserService`, `TeamService`, `OrganizationService`: the directory over gRPC.

use sluice_core::time::format_rfc3339_ms;
use sluice_proto::admin::v1 as pb;
use tonic::{Request, Response, Status};

use super::Admin;
use super::auth::{Principal, Role, Scope, Tenancy};
use super::error::{AdminError, AdminResult, missing};
use super::validate::{
    check_name, check_names, dollars, id_or_new, limits_record, limits_to_proto, metadata, next_page_token, page_after,
    page_size, usd,
};
use crate::budget::{ScopeId, current_spend};
use crate::invalidation::Target;
use crate::store::{
    KeyFilter, LimitsRecord, ListFilter, MemberRecord, NewAudit, OrgRecord, Store, StoreError, TeamRecord, UserRecord,
    now_ms,
};

fn role_from_proto(r: i32) -> AdminResult<Role> {
    Ok(match pb::UserRole::try_from(r) {
        Ok(pb::UserRole::Unspecified | pb::UserRole::InternalUser) => Role::InternalUser,
        Ok(pb::UserRole::ProxyAdmin) => Role::ProxyAdmin,
        Ok(pb::UserRole::ProxyAdminViewer) => Role::ProxyAdminViewer,
        Ok(pb::UserRole::OrgAdmin) => Role::OrgAdmin,
        Ok(pb::UserRole::InternalUserViewer) => Role::InternalUserViewer,
        Err(_) => return Err(AdminError::InvalidArgument(format!("user_role {r} is not a role"))),
    })
}

fn role_to_proto(role: &str) -> i32 {
    (match Role::parse(role) {
        Some(Role::ProxyAdmin) => pb::UserRole::ProxyAdmin,
        Some(Role::ProxyAdminViewer) => pb::UserRole::ProxyAdminViewer,
        Some(Role::OrgAdmin) => pb::UserRole::OrgAdmin,
        Some(Role::InternalUserViewer) => pb::UserRole::InternalUserViewer,
        Some(Role::InternalUser) | None => pb::UserRole::InternalUser,
    }) as i32
}

fn member_role(r: i32) -> AdminResult<&'static str> {
    match pb::MemberRole::try_from(r) {
        Ok(pb::MemberRole::Admin) => Ok("admin"),
        Ok(pb::MemberRole::Unspecified | pb::MemberRole::User) => Ok("user"),
        Err(_) => Err(AdminError::InvalidArgument(format!("member role {r} is not a role"))),
    }
}

fn limits_from(l: Option<&pb::Limits>) -> AdminResult<LimitsRecord> {
    limits_record(&LimitsRecord::default(), l, &[])
}

fn opt_name(field: &str, v: &Option<String>) -> AdminResult<()> {
    v.as_deref().map_or(Ok(()), |v| check_name(field, v))
}

fn user_tenancy(u: &UserRecord) -> Tenancy {
    Tenancy { user_id: Some(u.user_id.clone()), team_id: None, organization_id: u.organization_id.clone() }
}

fn team_tenancy(t: &TeamRecord) -> Tenancy {
    Tenancy { user_id: None, team_id: Some(t.team_id.clone()), organization_id: t.organization_id.clone() }
}

fn org_tenancy(o: &OrgRecord) -> Tenancy {
    Tenancy { user_id: None, team_id: None, organization_id: Some(o.organization_id.clone()) }
}

fn member_to_proto(m: &MemberRecord) -> pb::Member {
    pb::Member {
        user_id: m.user_id.clone(),
        role: if m.role == "admin" { pb::MemberRole::Admin } else { pb::MemberRole::User } as i32,
        limits: Some(limits_to_proto(&m.limits)),
    }
}

impl<S: Store> Admin<S> {
    async fn user_proto(&self, u: &UserRecord) -> AdminResult<pb::User> {
        let teams = self.store.memberships(&u.user_id).await?;
        let spend = current_spend(&self.store, &ScopeId::User(u.user_id.clone()), &u.limits).await?;
        Ok(pb::User {
            spend,
            user_id: u.user_id.clone(),
            user_email: u.user_email.clone(),
            user_role: role_to_proto(&u.user_role),
            organization_id: u.organization_id.clone(),
            models: u.models.clone(),
            limits: Some(limits_to_proto(&u.limits)),
            metadata_json: u.metadata.to_string(),
            teams: teams
                .iter()
                .map(|m| pb::TeamMembership {
                    team_id: m.team_id.clone(),
                    role: if m.role == "admin" { pb::MemberRole::Admin } else { pb::MemberRole::User } as i32,
                })
                .collect(),
            created_at: format_rfc3339_ms(u.created_at),
            updated_at: format_rfc3339_ms(u.updated_at),
        })
    }

    async fn team_proto(&self, t: &TeamRecord) -> AdminResult<pb::Team> {
        let members = self.store.members(&t.team_id).await?;
        let spend = current_spend(&self.store, &ScopeId::Team(t.team_id.clone()), &t.limits).await?;
        Ok(pb::Team {
            spend,
            team_id: t.team_id.clone(),
            team_alias: t.team_alias.clone(),
            organization_id: t.organization_id.clone(),
            models: t.models.clone(),
            limits: Some(limits_to_proto(&t.limits)),
            member_max_budget: usd(t.member_max_budget_nanos),
            metadata_json: t.metadata.to_string(),
            blocked: t.blocked,
            members: members.iter().map(member_to_proto).collect(),
            created_at: format_rfc3339_ms(t.created_at),
            updated_at: format_rfc3339_ms(t.updated_at),
        })
    }

    /// Keys must not outlive their owner unnoticed: deleting a user or team that still owns
    /// keys is refused until they are deleted or moved.
    async fn refuse_if_keys_remain(&self, mut filter: KeyFilter, what: &str) -> AdminResult<()> {
        filter.limit = 1;
        let (_, total) = self.store.list_keys(&filter).await?;
        if total > 0 {
            return Err(AdminError::FailedPrecondition(format!(
                "the {what} still owns {total} key(s); delete them or move them to another owner first"
            )));
        }
        Ok(())
    }

    /// A team the caller may see.
    async fn visible_team(&self, caller: &Principal, id: &str) -> AdminResult<TeamRecord> {
        let team: TeamRecord = self.store.get(id).await.map_err(missing("team"))?;
        caller.can_read_team(&team_tenancy(&team))?;
        Ok(team)
    }

    async fn set_team_blocked(&self, caller: &Principal, id: &str, blocked: bool) -> AdminResult<pb::Team> {
        let team = self.visible_team(caller, id).await?;
        caller.can_manage_team(&team_tenancy(&team))?;
        let action = if blocked { "team.block" } else { "team.unblock" };
        let after: TeamRecord = self
            .store
            .update(
                id,
                |t: &mut TeamRecord| {
                    t.blocked = blocked;
                    Ok(())
                },
                NewAudit::new(&caller.actor, action, "team", id),
            )
            .await?;
        self.invalidate(Target::Team(after.team_id.clone()));
        self.team_proto(&after).await
    }

    /// Members named in a request must exist as users; their limits are validated.
    async fn member_record(&self, team_id: &str, m: &pb::Member) -> AdminResult<MemberRecord> {
        check_name("user_id", &m.user_id)?;
        let _: UserRecord = self.store.get(&m.user_id).await.map_err(missing("user"))?;
        Ok(MemberRecord {
            team_id: team_id.to_owned(),
            user_id: m.user_id.clone(),
            role: member_role(m.role)?.to_owned(),
            limits: limits_from(m.limits.as_ref())?,
        })
    }
}

fn org_proto(o: &OrgRecord) -> pb::Organization {
    pb::Organization {
        organization_id: o.organization_id.clone(),
        organization_alias: o.organization_alias.clone(),
        models: o.models.clone(),
        limits: Some(limits_to_proto(&o.limits)),
        metadata_json: o.metadata.to_string(),
        blocked: o.blocked,
        created_at: format_rfc3339_ms(o.created_at),
        updated_at: format_rfc3339_ms(o.updated_at),
    }
}

#[tonic::async_trait]
impl<S: Store> pb::user_service_server::UserService for Admin<S> {
    async fn create_user(&self, request: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let now = now_ms();
        opt_name("user_email", &req.user_email)?;
        opt_name("organization_id", &req.organization_id)?;
        check_names("models", &req.models)?;
        let role = role_from_proto(req.user_role)?;
        let user = UserRecord {
            user_id: id_or_new("user_id", &req.user_id, "user")?,
            user_email: req.user_email,
            user_role: role.as_str().to_owned(),
            organization_id: req.organization_id,
            models: req.models,
            limits: limits_from(req.limits.as_ref())?,
            metadata: metadata(req.metadata_json.as_deref())?,
            created_at: now,
            updated_at: now,
        };
        caller.can_manage_user(&user_tenancy(&user), role)?;
        let audit = NewAudit::new(&caller.actor, "user.create", "user", &user.user_id);
        self.store.insert(&user, audit).await.map_err(AdminError::from)?;
        Ok(Response::new(self.user_proto(&user).await?))
    }

    async fn update_user(&self, request: Request<pb::UpdateUserRequest>) -> Result<Response<pb::User>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let current: UserRecord = self.store.get(&req.user_id).await.map_err(missing("user"))?;
        let current_role = Role::parse(&current.user_role).unwrap_or(Role::InternalUser);
        caller.can_manage_user(&user_tenancy(&current), current_role)?;
        let mut preview = current.clone();
        apply_user_update(&mut preview, &req)?;
        let new_role = Role::parse(&preview.user_role).unwrap_or(Role::InternalUser);
        // Taking a user out of its organization is its manager's to do (an org admin releasing
        // a member); the rest of the change is judged as if the user stayed where it is.
        if req.clear_organization {
            preview.organization_id.clone_from(&current.organization_id);
        }
        caller.can_manage_user(&user_tenancy(&preview), new_role)?;
        let audit = NewAudit::new(&caller.actor, "user.update", "user", &req.user_id);
        let after: UserRecord = self
            .store
            .update(
                &req.user_id,
                |u: &mut UserRecord| apply_user_update(u, &req).map_err(|e| StoreError::Refused(e.message())),
                audit,
            )
            .await
            .map_err(AdminError::from)?;
        // Cached keys carry the user's budget: a changed budget applies at once.
        self.invalidate(Target::User(after.user_id.clone()));
        Ok(Response::new(self.user_proto(&after).await?))
    }

    async fn delete_user(&self, request: Request<pb::UserRef>) -> Result<Response<pb::Deleted>, Status> {
        let caller = self.caller(&request).await?;
        let id = request.into_inner().user_id;
        let user: UserRecord = self.store.get(&id).await.map_err(missing("user"))?;
        caller.can_manage_user(&user_tenancy(&user), Role::parse(&user.user_role).unwrap_or(Role::InternalUser))?;
        self.refuse_if_keys_remain(KeyFilter { user_id: Some(id.clone()), ..KeyFilter::default() }, "user").await?;
        let audit = NewAudit::new(&caller.actor, "user.delete", "user", &id);
        self.store.delete::<UserRecord>(&id, audit).await.map_err(AdminError::from)?;
        Ok(Response::new(pb::Deleted { id }))
    }

    async fn get_user(&self, request: Request<pb::UserRef>) -> Result<Response<pb::User>, Status> {
        let caller = self.caller(&request).await?;
        let user: UserRecord = self.store.get(&request.into_inner().user_id).await.map_err(missing("user"))?;
        caller.can_read_user(&user_tenancy(&user))?;
        Ok(Response::new(self.user_proto(&user).await?))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let limit = page_size(req.page_size);
        // Scoped callers list within their organization (org admins) or see only themselves.
        let column = match (caller.list_scope(), req.organization_id, req.user_role) {
            (Scope::All, Some(org), _) => Some(("organization_id", org)),
            (Scope::All, None, Some(role)) => Some(("user_role", role_from_proto(role)?.as_str().to_owned())),
            (Scope::All, None, None) => None,
            (Scope::Org(org), _, _) => Some(("organization_id", org)),
            (Scope::Own(user), _, _) => Some(("user_id", user)),
        };
        let filter = ListFilter { column, after_id: page_after(req.page_token), limit };
        let (users, total) = self.store.list::<UserRecord>(&filter).await.map_err(AdminError::from)?;
        let mut out = Vec::with_capacity(users.len());
        for u in &users {
            out.push(self.user_proto(u).await?);
        }
        let next_page_token = next_page_token(users.last().map(|u| u.user_id.clone()), users.len(), limit);
        Ok(Response::new(pb::ListUsersResponse { users: out, next_page_token, total }))
    }
}

fn apply_user_update(u: &mut UserRecord, req: &pb::UpdateUserRequest) -> AdminResult<()> {
    if let Some(email) = &req.user_email {
        check_name("user_email", email)?;
        u.user_email = Some(email.clone());
    }
    if let Some(role) = req.user_role {
        u.user_role = role_from_proto(role)?.as_str().to_owned();
    }
    match (&req.organization_id, req.clear_organization) {
        (Some(_), true) => {
            return Err(AdminError::InvalidArgument(
                "organization_id and clear_organization: set one or take it away, not both".into(),
            ));
        }
        (Some(org), false) => {
            check_name("organization_id", org)?;
            u.organization_id = Some(org.clone());
        }
        (None, true) => u.organization_id = None,
        (None, false) => {}
    }
    if let Some(models) = &req.models {
        check_names("models", &models.values)?;
        u.models = models.values.clone();
    }
    u.limits = limits_record(&u.limits, req.limits.as_ref(), &req.clear_limits)?;
    if let Some(m) = &req.metadata_json {
        u.metadata = metadata(Some(m))?;
    }
    Ok(())
}

#[tonic::async_trait]
impl<S: Store> pb::team_service_server::TeamService for Admin<S> {
    async fn create_team(&self, request: Request<pb::CreateTeamRequest>) -> Result<Response<pb::Team>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let now = now_ms();
        opt_name("team_alias", &req.team_alias)?;
        opt_name("organization_id", &req.organization_id)?;
        check_names("models", &req.models)?;
        let team = TeamRecord {
            team_id: id_or_new("team_id", &req.team_id, "team")?,
            team_alias: req.team_alias,
            organization_id: req.organization_id,
            models: req.models,
            limits: limits_from(req.limits.as_ref())?,
            member_max_budget_nanos: dollars("member_max_budget", req.member_max_budget)?,
            metadata: metadata(req.metadata_json.as_deref())?,
            blocked: false,
            created_at: now,
            updated_at: now,
        };
        let tenancy = team_tenancy(&team);
        // Creating is managing a team that does not exist yet: admins, or the org's admin.
        if !(caller.is_admin() || caller.is_org_admin_of(tenancy.organization_id.as_ref())) {
            return Err(AdminError::PermissionDenied(
                "only an admin, or an organization's admin inside it, may create teams".into(),
            )
            .into());
        }
        let mut members = Vec::with_capacity(req.members.len());
        for m in &req.members {
            members.push(self.member_record(&team.team_id, m).await?);
        }
        let audit = NewAudit::new(&caller.actor, "team.create", "team", &team.team_id);
        self.store.insert(&team, audit).await.map_err(AdminError::from)?;
        for m in &members {
            let audit = NewAudit::new(&caller.actor, "team.member_add", "team", &team.team_id);
            self.store.put_member(m, audit).await.map_err(AdminError::from)?;
        }
        Ok(Response::new(self.team_proto(&team).await?))
    }

    async fn update_team(&self, request: Request<pb::UpdateTeamRequest>) -> Result<Response<pb::Team>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let team = self.visible_team(&caller, &req.team_id).await?;
        caller.can_manage_team(&team_tenancy(&team))?;
        let mut preview = team.clone();
        apply_team_update(&mut preview, &req)?;
        let audit = NewAudit::new(&caller.actor, "team.update", "team", &req.team_id);
        let after: TeamRecord = self
            .store
            .update(
                &req.team_id,
                |t: &mut TeamRecord| apply_team_update(t, &req).map_err(|e| StoreError::Refused(e.message())),
                audit,
            )
            .await
            .map_err(AdminError::from)?;
        self.invalidate(Target::Team(after.team_id.clone()));
        Ok(Response::new(self.team_proto(&after).await?))
    }

    async fn delete_team(&self, request: Request<pb::TeamRef>) -> Result<Response<pb::Deleted>, Status> {
        let caller = self.caller(&request).await?;
        let id = request.into_inner().team_id;
        let team = self.visible_team(&caller, &id).await?;
        caller.can_manage_team(&team_tenancy(&team))?;
        self.refuse_if_keys_remain(KeyFilter { team_id: Some(id.clone()), ..KeyFilter::default() }, "team").await?;
        let audit = NewAudit::new(&caller.actor, "team.delete", "team", &id);
        self.store.delete::<TeamRecord>(&id, audit).await.map_err(AdminError::from)?;
        self.invalidate(Target::Team(id.clone()));
        Ok(Response::new(pb::Deleted { id }))
    }

    async fn get_team(&self, request: Request<pb::TeamRef>) -> Result<Response<pb::Team>, Status> {
        let caller = self.caller(&request).await?;
        let team = self.visible_team(&caller, &request.into_inner().team_id).await?;
        Ok(Response::new(self.team_proto(&team).await?))
    }

    async fn list_teams(
        &self,
        request: Request<pb::ListTeamsRequest>,
    ) -> Result<Response<pb::ListTeamsResponse>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let limit = page_size(req.page_size);
        let after_id = page_after(req.page_token);
        let (teams, total) = match (caller.list_scope(), req.organization_id) {
            (Scope::All, org) => {
                let filter = ListFilter { column: org.map(|o| ("organization_id", o)), after_id, limit };
                self.store.list::<TeamRecord>(&filter).await.map_err(AdminError::from)?
            }
            (Scope::Org(org), _) => {
                let filter = ListFilter { column: Some(("organization_id", org)), after_id, limit };
                self.store.list::<TeamRecord>(&filter).await.map_err(AdminError::from)?
            }
            // A member sees the teams it belongs to (few: no paging needed).
            (Scope::Own(user), _) => {
                let mut teams = Vec::new();
                for m in self.store.memberships(&user).await.map_err(AdminError::from)? {
                    teams.push(self.store.get::<TeamRecord>(&m.team_id).await.map_err(AdminError::from)?);
                }
                let total = teams.len() as u64;
                (teams, total)
            }
        };
        let mut out = Vec::with_capacity(teams.len());
        for t in &teams {
            out.push(self.team_proto(t).await?);
        }
        let next_page_token = next_page_token(teams.last().map(|t| t.team_id.clone()), teams.len(), limit);
        Ok(Response::new(pb::ListTeamsResponse { teams: out, next_page_token, total }))
    }

    async fn block_team(&self, request: Request<pb::TeamRef>) -> Result<Response<pb::Team>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(self.set_team_blocked(&caller, &request.into_inner().team_id, true).await?))
    }

    async fn unblock_team(&self, request: Request<pb::TeamRef>) -> Result<Response<pb::Team>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(self.set_team_blocked(&caller, &request.into_inner().team_id, false).await?))
    }

    async fn add_member(&self, request: Request<pb::MemberRequest>) -> Result<Response<pb::Team>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let team = self.visible_team(&caller, &req.team_id).await?;
        caller.can_manage_members(&team_tenancy(&team))?;
        let member = req.member.ok_or_else(|| AdminError::InvalidArgument("member is required".into()))?;
        let record = self.member_record(&team.team_id, &member).await?;
        let audit = NewAudit::new(&caller.actor, "team.member_add", "team", &team.team_id);
        self.store.put_member(&record, audit).await.map_err(AdminError::from)?;
        // The member's budget and limits travel with its keys' lookups.
        self.invalidate(Target::User(record.user_id.clone()));
        Ok(Response::new(self.team_proto(&team).await?))
    }

    async fn remove_member(&self, request: Request<pb::RemoveMemberRequest>) -> Result<Response<pb::Team>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let team = self.visible_team(&caller, &req.team_id).await?;
        caller.can_manage_members(&team_tenancy(&team))?;
        let audit = NewAudit::new(&caller.actor, "team.member_remove", "team", &team.team_id);
        self.store.remove_member(&team.team_id, &req.user_id, audit).await.map_err(missing("member"))?;
        self.invalidate(Target::User(req.user_id.clone()));
        Ok(Response::new(self.team_proto(&team).await?))
    }
}

fn apply_team_update(t: &mut TeamRecord, req: &pb::UpdateTeamRequest) -> AdminResult<()> {
    if let Some(alias) = &req.team_alias {
        check_name("team_alias", alias)?;
        t.team_alias = Some(alias.clone());
    }
    if let Some(models) = &req.models {
        check_names("models", &models.values)?;
        t.models = models.values.clone();
    }
    t.limits = limits_record(&t.limits, req.limits.as_ref(), &req.clear_limits)?;
    if req.member_max_budget.is_some() {
        t.member_max_budget_nanos = dollars("member_max_budget", req.member_max_budget)?;
    }
    if let Some(m) = &req.metadata_json {
        t.metadata = metadata(Some(m))?;
    }
    Ok(())
}

#[tonic::async_trait]
impl<S: Store> pb::organization_service_server::OrganizationService for Admin<S> {
    async fn create_organization(
        &self,
        request: Request<pb::CreateOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let now = now_ms();
        opt_name("organization_alias", &req.organization_alias)?;
        check_names("models", &req.models)?;
        let org = OrgRecord {
            organization_id: id_or_new("organization_id", &req.organization_id, "org")?,
            organization_alias: req.organization_alias,
            models: req.models,
            limits: limits_from(req.limits.as_ref())?,
            metadata: metadata(req.metadata_json.as_deref())?,
            blocked: false,
            created_at: now,
            updated_at: now,
        };
        if !caller.is_admin() {
            return Err(AdminError::PermissionDenied("only an admin may create organizations".into()).into());
        }
        let audit = NewAudit::new(&caller.actor, "organization.create", "organization", &org.organization_id);
        self.store.insert(&org, audit).await.map_err(AdminError::from)?;
        Ok(Response::new(org_proto(&org)))
    }

    async fn update_organization(
        &self,
        request: Request<pb::UpdateOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let org: OrgRecord = self.store.get(&req.organization_id).await.map_err(missing("organization"))?;
        caller.can_manage_org(&org_tenancy(&org))?;
        let mut preview = org.clone();
        apply_org_update(&mut preview, &req)?;
        let audit = NewAudit::new(&caller.actor, "organization.update", "organization", &req.organization_id);
        let after: OrgRecord = self
            .store
            .update(
                &req.organization_id,
                |o: &mut OrgRecord| apply_org_update(o, &req).map_err(|e| StoreError::Refused(e.message())),
                audit,
            )
            .await
            .map_err(AdminError::from)?;
        // Cached keys carry the organization's budget: a changed budget applies at once.
        self.invalidate(Target::Org(after.organization_id.clone()));
        Ok(Response::new(org_proto(&after)))
    }

    async fn delete_organization(
        &self,
        request: Request<pb::OrganizationRef>,
    ) -> Result<Response<pb::Deleted>, Status> {
        let caller = self.caller(&request).await?;
        let id = request.into_inner().organization_id;
        let org: OrgRecord = self.store.get(&id).await.map_err(missing("organization"))?;
        caller.can_manage_org(&org_tenancy(&org))?;
        let audit = NewAudit::new(&caller.actor, "organization.delete", "organization", &id);
        self.store.delete::<OrgRecord>(&id, audit).await.map_err(AdminError::from)?;
        Ok(Response::new(pb::Deleted { id }))
    }

    async fn get_organization(
        &self,
        request: Request<pb::OrganizationRef>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = self.caller(&request).await?;
        let org: OrgRecord =
            self.store.get(&request.into_inner().organization_id).await.map_err(missing("organization"))?;
        caller.can_read_org(&org_tenancy(&org))?;
        Ok(Response::new(org_proto(&org)))
    }

    async fn list_organizations(
        &self,
        request: Request<pb::ListOrganizationsRequest>,
    ) -> Result<Response<pb::ListOrganizationsResponse>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let limit = page_size(req.page_size);
        let column = match caller.list_scope() {
            Scope::All => None,
            // Anyone else sees at most their own organization.
            Scope::Org(org) => Some(("organization_id", org)),
            Scope::Own(_) => Some(("organization_id", caller.organization_id.clone().unwrap_or_default())),
        };
        let filter = ListFilter { column, after_id: page_after(req.page_token), limit };
        let (orgs, total) = self.store.list::<OrgRecord>(&filter).await.map_err(AdminError::from)?;
        let next_page_token = next_page_token(orgs.last().map(|o| o.organization_id.clone()), orgs.len(), limit);
        Ok(Response::new(pb::ListOrganizationsResponse {
            organizations: orgs.iter().map(org_proto).collect(),
            next_page_token,
            total,
        }))
    }
}

fn apply_org_update(o: &mut OrgRecord, req: &pb::UpdateOrganizationRequest) -> AdminResult<()> {
    if let Some(alias) = &req.organization_alias {
        check_name("organization_alias", alias)?;
        o.organization_alias = Some(alias.clone());
    }
    if let Some(models) = &req.models {
        check_names("models", &models.values)?;
        o.models = models.values.clone();
    }
    o.limits = limits_record(&o.limits, req.limits.as_ref(), &req.clear_limits)?;
    if let Some(m) = &req.metadata_json {
        o.metadata = metadata(Some(m))?;
    }
    Ok(())
}
