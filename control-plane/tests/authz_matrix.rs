//! The authorisation matrix: the admin RPCs × every role × an object in the caller's own
//! tenant and one in another tenant, each cell asserted allowed or denied, on SQLite and on
//! Postgres. Denials must be PERMISSION_DENIED or NOT_FOUND (other tenants' objects: always
//! NOT_FOUND, so ids cannot be probed), never anything else.
//!
//! The world: organizations A and B; team TA in A (admin `ta_admin`, members `member`,
//! `viewer`), team TB in B; users of every role in A, `user_b` in B. Each actor calls with a
//! management key (read-only for `member_ro`) owned by its user (`admin_user` is a
//! `proxy_admin`); `master` uses the master key.

#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

mod common;

use common::{Db, MASTER, Plane, as_};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::key_ref::Ref;
use sluice_proto::admin::v1::spend_service_client::SpendServiceClient;
use tonic::Code;

const ACTORS: [&str; 8] =
    ["master", "admin_user", "admin_viewer", "org_admin", "ta_admin", "member", "viewer", "member_ro"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    GetKey,
    ListKeysSeesIt,
    UpdateKey,
    BlockKey,
    RegenerateKey,
    GenerateKeyForOwner,
    GetTeam,
    UpdateTeam,
    BlockTeam,
    AddMember,
    RemoveMember,
    CreateTeam,
    GetUser,
    UpdateUser,
    CreateUser,
    GetOrganization,
    UpdateOrganization,
    CreateOrganization,
    ListAudit,
    GetModel,
    UpdateModel,
    GetCustomer,
    CreateBudget,
    UnblockKey,
    DeleteKey,
    DeleteUser,
    ListUsersSeesIt,
    DeleteTeam,
    ListTeamsSeesIt,
    UnblockTeam,
    DeleteOrganization,
    ListOrganizationsSeesIt,
    CreateModel,
    DeleteModel,
    ListModels,
    QuerySpend,
    ListSpendLogs,
    UpdateBudget,
    DeleteBudget,
    GetBudget,
    ListBudgets,
    CreateCustomer,
    UpdateCustomer,
    DeleteCustomer,
    ListCustomers,
    BlockCustomer,
    UnblockCustomer,
    ImportKey,
}

/// Every RPC of the admin API (48): keys 9, users 5, teams 9, organizations 5, models 5,
/// spend 2, budgets 5, customers 7, audit 1.
const RPCS: [Rpc; 48] = [
    Rpc::GetKey,
    Rpc::ListKeysSeesIt,
    Rpc::UpdateKey,
    Rpc::BlockKey,
    Rpc::RegenerateKey,
    Rpc::GenerateKeyForOwner,
    Rpc::GetTeam,
    Rpc::UpdateTeam,
    Rpc::BlockTeam,
    Rpc::AddMember,
    Rpc::RemoveMember,
    Rpc::CreateTeam,
    Rpc::GetUser,
    Rpc::UpdateUser,
    Rpc::CreateUser,
    Rpc::GetOrganization,
    Rpc::UpdateOrganization,
    Rpc::CreateOrganization,
    Rpc::ListAudit,
    Rpc::GetModel,
    Rpc::UpdateModel,
    Rpc::GetCustomer,
    Rpc::CreateBudget,
    Rpc::UnblockKey,
    Rpc::DeleteKey,
    Rpc::DeleteUser,
    Rpc::ListUsersSeesIt,
    Rpc::DeleteTeam,
    Rpc::ListTeamsSeesIt,
    Rpc::UnblockTeam,
    Rpc::DeleteOrganization,
    Rpc::ListOrganizationsSeesIt,
    Rpc::CreateModel,
    Rpc::DeleteModel,
    Rpc::ListModels,
    Rpc::QuerySpend,
    Rpc::ListSpendLogs,
    Rpc::UpdateBudget,
    Rpc::DeleteBudget,
    Rpc::GetBudget,
    Rpc::ListBudgets,
    Rpc::CreateCustomer,
    Rpc::UpdateCustomer,
    Rpc::DeleteCustomer,
    Rpc::ListCustomers,
    Rpc::BlockCustomer,
    Rpc::UnblockCustomer,
    Rpc::ImportKey,
];

/// A SHA-256 no key of the matrix has: each import makes a new key.
fn fresh_digest() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    sluice_core::keys::KeyHash::of(format!("imported-{n}-{:?}", std::time::Instant::now()).as_bytes()).to_hex()
}

/// Who may do `rpc` on an object of their own tenant (org A: team TA, `member`'s key, user
/// `member`, org A) and on another tenant's (org B: team TB, `user_b`'s key, user `user_b`).
fn allowed(rpc: Rpc, actor: &str, own: bool) -> bool {
    // A management key of a `proxy_admin` user may do what the master key does.
    let actor = if actor == "admin_user" { "master" } else { actor };
    let any_of = |actors: &[&str]| actors.contains(&actor);
    // Model deployments belong to no tenant: every management key reads them, admins change them.
    match rpc {
        Rpc::GetModel => return true,
        Rpc::UpdateModel => return actor == "master",
        Rpc::ListModels => return true,
        Rpc::CreateModel | Rpc::DeleteModel => return actor == "master",
        // Budgets and customers belong to no tenant either: admins change, admin viewers read.
        Rpc::GetCustomer | Rpc::ListCustomers | Rpc::GetBudget | Rpc::ListBudgets => {
            return any_of(&["master", "admin_viewer"]);
        }
        Rpc::CreateBudget
        | Rpc::UpdateBudget
        | Rpc::DeleteBudget
        | Rpc::CreateCustomer
        | Rpc::UpdateCustomer
        | Rpc::DeleteCustomer
        | Rpc::BlockCustomer
        | Rpc::UnblockCustomer => return actor == "master",
        // Deleting an organization (a throwaway one in either case) is the master's alone.
        Rpc::DeleteOrganization => return actor == "master",
        // A digest made into a working key: admins only, whoever the owner.
        Rpc::ImportKey => return actor == "master",
        _ => {}
    }
    if !own {
        // Another tenant: readers of everything read; only the master changes anything.
        return match rpc {
            Rpc::GetKey
            | Rpc::ListKeysSeesIt
            | Rpc::GetTeam
            | Rpc::ListTeamsSeesIt
            | Rpc::GetUser
            | Rpc::ListUsersSeesIt
            | Rpc::GetOrganization
            | Rpc::ListOrganizationsSeesIt
            | Rpc::QuerySpend
            | Rpc::ListSpendLogs
            | Rpc::ListAudit => any_of(&["master", "admin_viewer"]),
            _ => actor == "master",
        };
    }
    match rpc {
        // The key belongs to `member`, in team TA, in org A.
        Rpc::GetKey | Rpc::ListKeysSeesIt => {
            any_of(&["master", "admin_viewer", "org_admin", "ta_admin", "member", "member_ro"])
        }
        Rpc::UpdateKey | Rpc::BlockKey | Rpc::UnblockKey | Rpc::RegenerateKey | Rpc::DeleteKey => {
            any_of(&["master", "org_admin", "ta_admin", "member"])
        }
        // A key for `member` in team TA: the member itself, its team's admin (team keys are
        // theirs to hand out only without a user: see GenerateKeyForOwner's call), the org admin.
        Rpc::GenerateKeyForOwner => any_of(&["master", "org_admin", "member"]),
        Rpc::GetTeam => any_of(&["master", "admin_viewer", "org_admin", "ta_admin", "member", "viewer", "member_ro"]),
        Rpc::UpdateTeam | Rpc::BlockTeam | Rpc::UnblockTeam | Rpc::CreateTeam | Rpc::DeleteTeam => {
            any_of(&["master", "org_admin"])
        }
        // Listing shows a team to its members, its organization's admin and admins.
        Rpc::ListTeamsSeesIt => any_of(&ACTORS),
        Rpc::AddMember | Rpc::RemoveMember => any_of(&["master", "org_admin", "ta_admin"]),
        Rpc::GetUser => any_of(&["master", "admin_viewer", "org_admin", "member", "member_ro"]),
        Rpc::ListUsersSeesIt | Rpc::QuerySpend | Rpc::ListSpendLogs => {
            any_of(&["master", "admin_viewer", "org_admin", "member", "member_ro"])
        }
        Rpc::UpdateUser | Rpc::CreateUser | Rpc::DeleteUser => any_of(&["master", "org_admin"]),
        Rpc::GetOrganization | Rpc::ListOrganizationsSeesIt => any_of(&ACTORS),
        Rpc::UpdateOrganization | Rpc::CreateOrganization => actor == "master",
        Rpc::ListAudit => any_of(&["master", "admin_viewer"]),
        _ => unreachable!("{rpc:?} is decided above"),
    }
}

struct World {
    credentials: Vec<(&'static str, String)>,
}

async fn build_world(plane: &Plane) -> World {
    let (mut users, mut teams, mut orgs, mut keys) =
        (plane.users().await, plane.teams().await, plane.orgs().await, plane.keys().await);
    for org in ["org-a", "org-b"] {
        orgs.create_organization(as_(
            MASTER,
            pb::CreateOrganizationRequest { organization_id: org.into(), ..Default::default() },
        ))
        .await
        .unwrap();
    }
    let people = [
        ("admin_user", pb::UserRole::ProxyAdmin, None),
        ("admin_viewer", pb::UserRole::ProxyAdminViewer, None),
        ("org_admin", pb::UserRole::OrgAdmin, Some("org-a")),
        ("ta_admin", pb::UserRole::InternalUser, Some("org-a")),
        ("member", pb::UserRole::InternalUser, Some("org-a")),
        ("viewer", pb::UserRole::InternalUserViewer, Some("org-a")),
        ("newcomer", pb::UserRole::InternalUser, Some("org-a")),
        ("user_b", pb::UserRole::InternalUser, Some("org-b")),
        ("newcomer_b", pb::UserRole::InternalUser, Some("org-b")),
    ];
    for (id, role, org) in people {
        users
            .create_user(as_(
                MASTER,
                pb::CreateUserRequest {
                    user_id: id.into(),
                    user_role: role as i32,
                    organization_id: org.map(Into::into),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    let member = |id: &str, admin: bool| pb::Member {
        user_id: id.into(),
        role: if admin { pb::MemberRole::Admin } else { pb::MemberRole::User } as i32,
        limits: None,
    };
    teams
        .create_team(as_(
            MASTER,
            pb::CreateTeamRequest {
                team_id: "ta".into(),
                organization_id: Some("org-a".into()),
                members: vec![member("ta_admin", true), member("member", false), member("viewer", false)],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    teams
        .create_team(as_(
            MASTER,
            pb::CreateTeamRequest {
                team_id: "tb".into(),
                organization_id: Some("org-b".into()),
                members: vec![member("user_b", true)],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    // The objects the matrix touches: one LLM key in each tenant.
    for (alias, user, team) in [("key-a", "member", "ta"), ("key-b", "user_b", "tb")] {
        keys.generate_key(as_(
            MASTER,
            pb::GenerateKeyRequest {
                spec: Some(pb::KeySpec {
                    key_alias: Some(alias.into()),
                    user_id: Some(user.into()),
                    team_id: Some(team.into()),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap();
    }
    plane
        .models()
        .await
        .create_model(as_(
            MASTER,
            pb::CreateModelRequest {
                model_name: "gpt-4o".into(),
                litellm_params_json: r#"{"model": "openai/gpt-4o", "api_key": "os.environ/OPENAI_API_KEY"}"#.into(),
                model_info_json: r#"{"id": "shared"}"#.into(),
            },
        ))
        .await
        .unwrap();
    plane
        .budgets()
        .await
        .create_budget(as_(MASTER, pb::CreateBudgetRequest { budget_id: "shared-budget".into(), limits: None }))
        .await
        .unwrap();
    plane
        .customers()
        .await
        .create_customer(as_(
            MASTER,
            pb::CreateCustomerRequest { customer_id: "end-user".into(), ..Default::default() },
        ))
        .await
        .unwrap();
    // Each actor's credential.
    let mut credentials = vec![("master", MASTER.to_owned())];
    for (actor, user, kind) in [
        ("admin_user", "admin_user", pb::KeyType::Management),
        ("admin_viewer", "admin_viewer", pb::KeyType::Management),
        ("org_admin", "org_admin", pb::KeyType::Management),
        ("ta_admin", "ta_admin", pb::KeyType::Management),
        ("member", "member", pb::KeyType::Management),
        ("viewer", "viewer", pb::KeyType::Management),
        ("member_ro", "member", pb::KeyType::ReadOnly),
    ] {
        let made = keys
            .generate_key(as_(
                MASTER,
                pb::GenerateKeyRequest {
                    spec: Some(pb::KeySpec { user_id: Some(user.into()), key_type: kind as i32, ..Default::default() }),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        credentials.push((actor, made.key));
    }
    World { credentials }
}

/// A listing answers the question "may this caller see the object" by including it or not.
fn seen(listed: bool) -> Result<(), tonic::Status> {
    if listed { Ok(()) } else { Err(tonic::Status::not_found("not listed")) }
}

/// Calls `rpc` as `key` on the own (org A) or other (org B) tenant's object.
async fn call(plane: &Plane, rpc: Rpc, key: &str, own: bool) -> Result<(), tonic::Status> {
    let (org, team, user, key_alias, newcomer) = if own {
        ("org-a", "ta", "member", "key-a", "newcomer")
    } else {
        ("org-b", "tb", "user_b", "key-b", "newcomer_b")
    };
    let key_ref = || pb::KeyRef { r#ref: Some(Ref::KeyAlias(key_alias.into())) };
    match rpc {
        Rpc::GetKey => plane.keys().await.get_key(as_(key, key_ref())).await.map(drop),
        Rpc::ListKeysSeesIt => {
            let page = plane
                .keys()
                .await
                .list_keys(as_(key, pb::ListKeysRequest { key_alias: Some(key_alias.into()), ..Default::default() }))
                .await?
                .into_inner();
            // Listing itself is open to every management key; seeing the object is the question.
            seen(page.keys.iter().any(|k| k.key_alias.as_deref() == Some(key_alias)))
        }
        Rpc::UpdateKey => plane
            .keys()
            .await
            .update_key(as_(
                key,
                pb::UpdateKeyRequest {
                    r#ref: Some(key_ref()),
                    tags: Some(pb::StringList { values: vec!["matrix".into()] }),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Rpc::BlockKey => plane.keys().await.block_key(as_(key, key_ref())).await.map(drop),
        Rpc::RegenerateKey => plane
            .keys()
            .await
            .regenerate_key(as_(key, pb::RegenerateKeyRequest { r#ref: Some(key_ref()), grace_period: None }))
            .await
            .map(drop),
        Rpc::ImportKey => plane
            .keys()
            .await
            .import_key(as_(
                key,
                pb::ImportKeyRequest {
                    token_sha256: fresh_digest(),
                    spec: Some(pb::KeySpec {
                        user_id: Some(user.into()),
                        team_id: Some(team.into()),
                        ..Default::default()
                    }),
                    key_name: Some("sk-...abcd".into()),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Rpc::GenerateKeyForOwner => plane
            .keys()
            .await
            .generate_key(as_(
                key,
                pb::GenerateKeyRequest {
                    spec: Some(pb::KeySpec {
                        user_id: Some(user.into()),
                        team_id: Some(team.into()),
                        ..Default::default()
                    }),
                },
            ))
            .await
            .map(drop),
        Rpc::GetTeam => plane.teams().await.get_team(as_(key, pb::TeamRef { team_id: team.into() })).await.map(drop),
        Rpc::UpdateTeam => plane
            .teams()
            .await
            .update_team(as_(
                key,
                pb::UpdateTeamRequest {
                    team_id: team.into(),
                    team_alias: Some("renamed".into()),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Rpc::BlockTeam => {
            let mut teams = plane.teams().await;
            teams.block_team(as_(key, pb::TeamRef { team_id: team.into() })).await?;
            // Leave it usable for the next cells.
            teams.unblock_team(as_(MASTER, pb::TeamRef { team_id: team.into() })).await.map(drop)
        }
        Rpc::AddMember => plane
            .teams()
            .await
            .add_member(as_(
                key,
                pb::MemberRequest {
                    team_id: team.into(),
                    member: Some(pb::Member {
                        user_id: newcomer.into(),
                        role: pb::MemberRole::User as i32,
                        limits: None,
                    }),
                },
            ))
            .await
            .map(drop),
        Rpc::RemoveMember => {
            let mut teams = plane.teams().await;
            // Make sure there is a member to remove, whoever the caller is.
            teams
                .add_member(as_(
                    MASTER,
                    pb::MemberRequest {
                        team_id: team.into(),
                        member: Some(pb::Member { user_id: newcomer.into(), role: 0, limits: None }),
                    },
                ))
                .await
                .unwrap();
            teams
                .remove_member(as_(key, pb::RemoveMemberRequest { team_id: team.into(), user_id: newcomer.into() }))
                .await
                .map(drop)
        }
        Rpc::CreateTeam => plane
            .teams()
            .await
            .create_team(as_(key, pb::CreateTeamRequest { organization_id: Some(org.into()), ..Default::default() }))
            .await
            .map(drop),
        Rpc::GetUser => plane.users().await.get_user(as_(key, pb::UserRef { user_id: user.into() })).await.map(drop),
        Rpc::UpdateUser => plane
            .users()
            .await
            .update_user(as_(
                key,
                pb::UpdateUserRequest {
                    user_id: user.into(),
                    metadata_json: Some(r#"{"touched":true}"#.into()),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Rpc::CreateUser => plane
            .users()
            .await
            .create_user(as_(key, pb::CreateUserRequest { organization_id: Some(org.into()), ..Default::default() }))
            .await
            .map(drop),
        Rpc::GetOrganization => plane
            .orgs()
            .await
            .get_organization(as_(key, pb::OrganizationRef { organization_id: org.into() }))
            .await
            .map(drop),
        Rpc::UpdateOrganization => plane
            .orgs()
            .await
            .update_organization(as_(
                key,
                pb::UpdateOrganizationRequest {
                    organization_id: org.into(),
                    organization_alias: Some("renamed".into()),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Rpc::CreateOrganization => {
            plane.orgs().await.create_organization(as_(key, pb::CreateOrganizationRequest::default())).await.map(drop)
        }
        Rpc::ListAudit => plane.audit().await.list_audit(as_(key, pb::ListAuditRequest::default())).await.map(drop),
        Rpc::UnblockKey => plane.keys().await.unblock_key(as_(key, key_ref())).await.map(drop),
        Rpc::DeleteKey => {
            let mut keys = plane.keys().await;
            let alias = common::unique("doomed-");
            let spec = pb::KeySpec {
                key_alias: Some(alias.clone()),
                user_id: Some(user.into()),
                team_id: Some(team.into()),
                ..Default::default()
            };
            keys.generate_key(as_(MASTER, pb::GenerateKeyRequest { spec: Some(spec) })).await.unwrap();
            keys.delete_key(as_(key, pb::KeyRef { r#ref: Some(Ref::KeyAlias(alias)) })).await.map(drop)
        }
        Rpc::DeleteUser => {
            let mut users = plane.users().await;
            let id = common::unique("doomed-");
            let req =
                pb::CreateUserRequest { user_id: id.clone(), organization_id: Some(org.into()), ..Default::default() };
            users.create_user(as_(MASTER, req)).await.unwrap();
            users.delete_user(as_(key, pb::UserRef { user_id: id })).await.map(drop)
        }
        Rpc::ListUsersSeesIt => {
            let page = plane
                .users()
                .await
                .list_users(as_(key, pb::ListUsersRequest { page_size: 500, ..Default::default() }))
                .await?;
            seen(page.into_inner().users.iter().any(|u| u.user_id == user))
        }
        Rpc::DeleteTeam => {
            let mut teams = plane.teams().await;
            let id = common::unique("doomed-");
            let req =
                pb::CreateTeamRequest { team_id: id.clone(), organization_id: Some(org.into()), ..Default::default() };
            teams.create_team(as_(MASTER, req)).await.unwrap();
            teams.delete_team(as_(key, pb::TeamRef { team_id: id })).await.map(drop)
        }
        Rpc::ListTeamsSeesIt => {
            let page = plane
                .teams()
                .await
                .list_teams(as_(key, pb::ListTeamsRequest { page_size: 500, ..Default::default() }))
                .await?;
            seen(page.into_inner().teams.iter().any(|t| t.team_id == team))
        }
        Rpc::UnblockTeam => {
            plane.teams().await.unblock_team(as_(key, pb::TeamRef { team_id: team.into() })).await.map(drop)
        }
        Rpc::DeleteOrganization => {
            let mut orgs = plane.orgs().await;
            let id = common::unique("doomed-");
            orgs.create_organization(as_(
                MASTER,
                pb::CreateOrganizationRequest { organization_id: id.clone(), ..Default::default() },
            ))
            .await
            .unwrap();
            orgs.delete_organization(as_(key, pb::OrganizationRef { organization_id: id })).await.map(drop)
        }
        Rpc::ListOrganizationsSeesIt => {
            let page = plane
                .orgs()
                .await
                .list_organizations(as_(
                    key,
                    pb::ListOrganizationsRequest { page_size: 500, page_token: String::new() },
                ))
                .await?;
            seen(page.into_inner().organizations.iter().any(|o| o.organization_id == org))
        }
        Rpc::CreateModel => {
            let req = pb::CreateModelRequest {
                model_name: "extra".into(),
                litellm_params_json: r#"{"model": "openai/extra", "api_key": "os.environ/OPENAI_API_KEY"}"#.into(),
                model_info_json: String::new(),
            };
            plane.models().await.create_model(as_(key, req)).await.map(drop)
        }
        Rpc::DeleteModel => {
            let mut models = plane.models().await;
            let id = common::unique("doomed-");
            let req = pb::CreateModelRequest {
                model_name: "doomed".into(),
                litellm_params_json: r#"{"model": "openai/doomed", "api_key": "os.environ/OPENAI_API_KEY"}"#.into(),
                model_info_json: format!(r#"{{"id": "{id}"}}"#),
            };
            models.create_model(as_(MASTER, req)).await.unwrap();
            models.delete_model(as_(key, pb::ModelRef { deployment_id: id })).await.map(drop)
        }
        Rpc::ListModels => plane.models().await.list_models(as_(key, pb::ListModelsRequest::default())).await.map(drop),
        Rpc::QuerySpend => {
            let query = pb::SpendQuery { user_id: Some(user.into()), ..Default::default() };
            SpendServiceClient::new(plane.channel().await).query_spend(as_(key, query)).await.map(drop)
        }
        Rpc::ListSpendLogs => {
            let filter = pb::SpendQuery { user_id: Some(user.into()), ..Default::default() };
            let query = pb::SpendLogsQuery { filter: Some(filter), ..Default::default() };
            SpendServiceClient::new(plane.channel().await).list_spend_logs(as_(key, query)).await.map(drop)
        }
        Rpc::UpdateBudget => {
            let req = pb::UpdateBudgetRequest { budget_id: "shared-budget".into(), ..Default::default() };
            plane.budgets().await.update_budget(as_(key, req)).await.map(drop)
        }
        Rpc::DeleteBudget => {
            let mut budgets = plane.budgets().await;
            let id = common::unique("doomed-");
            budgets
                .create_budget(as_(MASTER, pb::CreateBudgetRequest { budget_id: id.clone(), limits: None }))
                .await
                .unwrap();
            budgets.delete_budget(as_(key, pb::BudgetRef { budget_id: id })).await.map(drop)
        }
        Rpc::GetBudget => plane
            .budgets()
            .await
            .get_budget(as_(key, pb::BudgetRef { budget_id: "shared-budget".into() }))
            .await
            .map(drop),
        Rpc::ListBudgets => {
            plane.budgets().await.list_budgets(as_(key, pb::ListBudgetsRequest::default())).await.map(drop)
        }
        Rpc::CreateCustomer => {
            plane.customers().await.create_customer(as_(key, pb::CreateCustomerRequest::default())).await.map(drop)
        }
        Rpc::UpdateCustomer => {
            let req = pb::UpdateCustomerRequest {
                customer_id: "end-user".into(),
                alias: Some("x".into()),
                ..Default::default()
            };
            plane.customers().await.update_customer(as_(key, req)).await.map(drop)
        }
        Rpc::DeleteCustomer => {
            let mut customers = plane.customers().await;
            let id = common::unique("doomed-");
            customers
                .create_customer(as_(
                    MASTER,
                    pb::CreateCustomerRequest { customer_id: id.clone(), ..Default::default() },
                ))
                .await
                .unwrap();
            customers.delete_customer(as_(key, pb::CustomerRef { customer_id: id })).await.map(drop)
        }
        Rpc::ListCustomers => {
            plane.customers().await.list_customers(as_(key, pb::ListCustomersRequest::default())).await.map(drop)
        }
        Rpc::BlockCustomer => plane
            .customers()
            .await
            .block_customer(as_(key, pb::CustomerRef { customer_id: "end-user".into() }))
            .await
            .map(drop),
        Rpc::UnblockCustomer => plane
            .customers()
            .await
            .unblock_customer(as_(key, pb::CustomerRef { customer_id: "end-user".into() }))
            .await
            .map(drop),
        Rpc::GetCustomer => {
            let req = pb::CustomerRef { customer_id: "end-user".into() };
            plane.customers().await.get_customer(as_(key, req)).await.map(drop)
        }
        Rpc::CreateBudget => {
            plane.budgets().await.create_budget(as_(key, pb::CreateBudgetRequest::default())).await.map(drop)
        }
        Rpc::GetModel => {
            plane.models().await.get_model(as_(key, pb::ModelRef { deployment_id: "shared".into() })).await.map(drop)
        }
        Rpc::UpdateModel => plane
            .models()
            .await
            .update_model(as_(
                key,
                pb::UpdateModelRequest {
                    deployment_id: "shared".into(),
                    model_info_json: Some(r#"{"input_cost_per_token": 1e-6}"#.into()),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
    }
}

async fn matrix(db: Db) {
    let plane = Plane::start(db).await;
    let world = build_world(&plane).await;
    let mut failures = Vec::new();
    let mut cells = 0;
    for rpc in RPCS {
        for own in [true, false] {
            for (actor, key) in &world.credentials {
                cells += 1;
                let expected = allowed(rpc, actor, own);
                let got = call(&plane, rpc, key, own).await;
                let tenant = if own { "own" } else { "other" };
                match (&got, expected) {
                    (Ok(()), true) => {}
                    (Err(s), false) if matches!(s.code(), Code::PermissionDenied | Code::NotFound) => {
                        // Reading another tenant's object must look like it does not exist.
                        let read = matches!(
                            rpc,
                            Rpc::GetKey
                                | Rpc::GetTeam
                                | Rpc::GetUser
                                | Rpc::GetOrganization
                                | Rpc::QuerySpend
                                | Rpc::ListSpendLogs
                        );
                        if !own && read && s.code() != Code::NotFound {
                            failures.push(format!("{rpc:?} {tenant} as {actor}: {:?} instead of NotFound", s.code()));
                        }
                    }
                    (Ok(()), false) => failures.push(format!("{rpc:?} {tenant} as {actor}: allowed, expected denied")),
                    (Err(s), _) => failures.push(format!(
                        "{rpc:?} {tenant} as {actor}: {:?} {:?}, expected {}",
                        s.code(),
                        s.message(),
                        if expected { "allowed" } else { "denied" }
                    )),
                }
            }
        }
    }
    plane.stop().await;
    assert_eq!(cells, RPCS.len() * 2 * ACTORS.len());
    assert!(failures.is_empty(), "{} of {cells} cells wrong:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorisation_matrix_sqlite() {
    matrix(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorisation_matrix_postgres() {
    matrix(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_grants_a_role_above_their_own() {
    let plane = Plane::start(Db::Sqlite).await;
    let world = build_world(&plane).await;
    let key_of = |actor: &str| world.credentials.iter().find(|(a, _)| *a == actor).unwrap().1.clone();
    let mut users = plane.users().await;
    let org_admin = key_of("org_admin");
    // An org admin makes internal users in its organization, but no admins, and cannot promote itself.
    for role in [pb::UserRole::InternalUser, pb::UserRole::InternalUserViewer] {
        let req = pb::CreateUserRequest {
            organization_id: Some("org-a".into()),
            user_role: role as i32,
            ..Default::default()
        };
        users.create_user(as_(&org_admin, req)).await.unwrap();
    }
    for role in [pb::UserRole::ProxyAdmin, pb::UserRole::ProxyAdminViewer] {
        let req = pb::CreateUserRequest {
            organization_id: Some("org-a".into()),
            user_role: role as i32,
            ..Default::default()
        };
        assert_eq!(
            users.create_user(as_(&org_admin, req)).await.unwrap_err().code(),
            Code::PermissionDenied,
            "{role:?}"
        );
    }
    let promote = |id: &str, role: pb::UserRole| pb::UpdateUserRequest {
        user_id: id.into(),
        user_role: Some(role as i32),
        ..Default::default()
    };
    let own = users.update_user(as_(&org_admin, promote("org_admin", pb::UserRole::ProxyAdmin))).await.unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied);
    let other = users.update_user(as_(&org_admin, promote("member", pb::UserRole::ProxyAdmin))).await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    // A member cannot promote itself either, and its role is unchanged.
    let member = key_of("member");
    let err = users.update_user(as_(&member, promote("member", pb::UserRole::OrgAdmin))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let now = users.get_user(as_(MASTER, pb::UserRef { user_id: "member".into() })).await.unwrap().into_inner();
    assert_eq!(now.user_role, pb::UserRole::InternalUser as i32);
    plane.stop().await;
}
