//! The admin half of the `sluice` CLI: a gRPC client of the control plane. Human-readable tables
//! by default, `--json` for scripts; server and credential from flags or the environment.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::audit_service_client::AuditServiceClient;
use sluice_proto::admin::v1::budget_service_client::BudgetServiceClient;
use sluice_proto::admin::v1::customer_service_client::CustomerServiceClient;
use sluice_proto::admin::v1::key_ref::Ref;
use sluice_proto::admin::v1::key_service_client::KeyServiceClient;
use sluice_proto::admin::v1::model_service_client::ModelServiceClient;
use sluice_proto::admin::v1::organization_service_client::OrganizationServiceClient;
use sluice_proto::admin::v1::spend_service_client::SpendServiceClient;
use sluice_proto::admin::v1::team_service_client::TeamServiceClient;
use sluice_proto::admin::v1::user_service_client::UserServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Args, Clone)]
pub struct Connection {
    /// The control plane's admin API.
    #[arg(long, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:4001", global = true)]
    pub server: String,
    /// The master key or a management key.
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Clone, Default)]
pub struct KeyFields {
    #[arg(long)]
    pub alias: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub org: Option<String>,
    /// Models (empty: every model the owner may use) and limits.
    #[command(flatten)]
    pub limits: LimitFlags,
    /// Expiry from now (30d); with `update`, `never` removes it.
    #[arg(long)]
    pub duration: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub allowed_routes: Option<Vec<String>>,
    /// Client addresses (CIDRs, comma-separated) the key may be used from.
    #[arg(long, value_delimiter = ',')]
    pub allowed_ips: Option<Vec<String>>,
    #[arg(long, value_delimiter = ',')]
    pub tags: Option<Vec<String>>,
    /// A JSON object.
    #[arg(long)]
    pub metadata: Option<String>,
}

#[derive(Subcommand, Clone)]
pub enum KeyAdmin {
    /// Create a key through the admin API (prints it once).
    // Negative numbers reach the server, which says what is wrong with them.
    #[command(allow_negative_numbers = true)]
    Create {
        #[command(flatten)]
        fields: KeyFields,
        /// llm-api (default), management or read-only.
        #[arg(long, default_value = "llm-api")]
        r#type: String,
    },
    /// List keys (paged; --all follows every page).
    List {
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        alias: Option<String>,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
        #[arg(long)]
        all: bool,
    },
    /// Show one key (by id, alias, or the key itself).
    Info {
        key: String,
    },
    /// Change a key's fields; absent flags are left alone.
    #[command(allow_negative_numbers = true)]
    Update {
        key: String,
        #[command(flatten)]
        fields: KeyFields,
        /// Limits to remove: rpm_limit, tpm_limit, max_parallel_requests, max_budget, soft_budget, budget_duration.
        #[arg(long, value_delimiter = ',')]
        clear: Vec<String>,
    },
    /// Replace a key with a new one; the old one keeps working for the grace period.
    Regenerate {
        key: String,
        #[arg(long)]
        grace_period: Option<String>,
    },
    Block {
        key: String,
    },
    Unblock {
        key: String,
    },
    Delete {
        key: String,
    },
}

fn key_ref(s: &str) -> pb::KeyRef {
    let r = if s.starts_with("sk-") {
        Ref::Key(s.to_owned())
    } else if s.starts_with("key_") {
        Ref::KeyId(s.to_owned())
    } else {
        Ref::KeyAlias(s.to_owned())
    };
    pb::KeyRef { r#ref: Some(r) }
}

pub(crate) async fn channel(c: &Connection) -> Result<Channel, String> {
    Channel::from_shared(c.server.clone())
        .map_err(|e| format!("--server {}: {e}", c.server))?
        .connect()
        .await
        .map_err(|e| format!("cannot reach the control plane at {} ({e}); is `sluice serve` running?", c.server))
}

pub(crate) fn authed<T>(c: &Connection, msg: T) -> Result<tonic::Request<T>, String> {
    let key = c.api_key.as_deref().ok_or("no credential: pass --api-key or set SLUICE_API_KEY")?;
    let mut req = tonic::Request::new(msg);
    let value: MetadataValue<_> =
        format!("Bearer {key}").parse().map_err(|_| "the API key contains characters a header cannot carry")?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

pub(crate) fn status_message(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn key_json(k: &pb::Key) -> Value {
    let l = k.limits.clone().unwrap_or_default();
    json!({
        "key_id": k.key_id, "key_prefix": k.key_prefix, "last4": k.last4, "key_alias": k.key_alias,
        "user_id": k.user_id, "team_id": k.team_id, "organization_id": k.organization_id, "models": k.models,
        "rpm_limit": l.rpm_limit, "tpm_limit": l.tpm_limit, "max_parallel_requests": l.max_parallel_requests,
        "max_budget": l.max_budget, "soft_budget": l.soft_budget, "budget_duration": l.budget_duration,
        "budget_reset_at": sluice_control_plane::budget::budget_reset_at(l.budget_duration.as_deref()),
        "allowed_routes": k.allowed_routes, "allowed_ips": k.allowed_ips, "tags": k.tags,
        "metadata": serde_json::from_str::<Value>(&k.metadata_json).unwrap_or(Value::Null),
        "key_type": pb::KeyType::try_from(k.key_type).map(|t| t.as_str_name()).unwrap_or("?"),
        "blocked": k.blocked, "expires_at": k.expires_at, "created_at": k.created_at, "updated_at": k.updated_at,
        "created_by": k.created_by, "previous_key_valid_until": k.previous_key_valid_until,
    })
}

fn opt(v: &Option<impl ToString>) -> String {
    v.as_ref().map_or_else(|| "-".into(), ToString::to_string)
}

/// Prints rows as an aligned table.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0).max(h.len()))
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn key_row(k: &pb::Key) -> Vec<String> {
    let l = k.limits.clone().unwrap_or_default();
    vec![
        k.key_id.clone(),
        opt(&k.key_alias),
        format!("{}{}", k.key_prefix, k.last4),
        opt(&k.user_id),
        opt(&k.team_id),
        if k.models.is_empty() { "all".into() } else { k.models.join(",") },
        opt(&l.rpm_limit),
        opt(&l.tpm_limit),
        opt(&l.max_budget),
        if k.blocked { "blocked".into() } else { "active".into() },
        opt(&k.expires_at),
    ]
}

const KEY_HEADERS: [&str; 11] =
    ["KEY_ID", "ALIAS", "KEY", "USER", "TEAM", "MODELS", "RPM", "TPM", "BUDGET", "STATE", "EXPIRES"];

fn print_key(c: &Connection, k: &pb::Key) {
    if c.json {
        println!("{}", key_json(k));
    } else {
        table(&KEY_HEADERS, &[key_row(k)]);
    }
}

pub async fn run_key(c: &Connection, cmd: KeyAdmin) -> Result<(), String> {
    let mut client = KeyServiceClient::new(channel(c).await?);
    match cmd {
        KeyAdmin::Create { fields, r#type } => {
            let key_type = match r#type.as_str() {
                "llm-api" | "llm_api" => pb::KeyType::LlmApi,
                "management" => pb::KeyType::Management,
                "read-only" | "read_only" => pb::KeyType::ReadOnly,
                other => return Err(format!("--type {other}: use llm-api, management or read-only")),
            };
            let spec = pb::KeySpec {
                key_alias: fields.alias.clone(),
                user_id: fields.user.clone(),
                team_id: fields.team.clone(),
                organization_id: fields.org.clone(),
                models: fields.limits.models.clone().unwrap_or_default(),
                limits: fields.limits.limits(),
                allowed_routes: fields.allowed_routes.clone().unwrap_or_default(),
                allowed_ips: fields.allowed_ips.clone().unwrap_or_default(),
                metadata_json: fields.metadata.clone(),
                tags: fields.tags.clone().unwrap_or_default(),
                key_type: key_type as i32,
                duration: fields.duration.clone(),
                ..Default::default()
            };
            let made = client
                .generate_key(authed(c, pb::GenerateKeyRequest { spec: Some(spec) })?)
                .await
                .map_err(|s| status_message(&s))?
                .into_inner();
            let info = made.info.unwrap_or_default();
            if c.json {
                let mut v = key_json(&info);
                v["key"] = Value::from(made.key);
                println!("{v}");
            } else {
                println!("{}", made.key);
                eprintln!(
                    "Created {} ({}). Store the key now: it is not shown again.",
                    info.key_id,
                    opt(&info.key_alias)
                );
            }
        }
        KeyAdmin::List { team, user, org, alias, page_size, mut page_token, all } => {
            let mut keys = Vec::new();
            loop {
                let page = client
                    .list_keys(authed(
                        c,
                        pb::ListKeysRequest {
                            team_id: team.clone(),
                            user_id: user.clone(),
                            organization_id: org.clone(),
                            key_alias: alias.clone(),
                            page_size,
                            page_token: page_token.clone(),
                        },
                    )?)
                    .await
                    .map_err(|s| status_message(&s))?
                    .into_inner();
                keys.extend(page.keys);
                page_token = page.next_page_token;
                if !all || page_token.is_empty() {
                    break;
                }
            }
            if c.json {
                println!(
                    "{}",
                    json!({"keys": keys.iter().map(key_json).collect::<Vec<_>>(), "next_page_token": page_token})
                );
            } else {
                table(&KEY_HEADERS, &keys.iter().map(key_row).collect::<Vec<_>>());
                if !page_token.is_empty() {
                    eprintln!("more: --page-token {page_token} (or --all)");
                }
            }
        }
        KeyAdmin::Info { key } => {
            let k = client.get_key(authed(c, key_ref(&key))?).await.map_err(|s| status_message(&s))?.into_inner();
            print_key(c, &k);
        }
        KeyAdmin::Update { key, fields, clear } => {
            let list = |v: &Option<Vec<String>>| v.clone().map(|values| pb::StringList { values });
            let req = pb::UpdateKeyRequest {
                r#ref: Some(key_ref(&key)),
                key_alias: fields.alias.clone(),
                user_id: fields.user.clone(),
                team_id: fields.team.clone(),
                models: list(&fields.limits.models),
                limits: fields.limits.limits(),
                clear_limits: clear,
                model_limits: None,
                allowed_routes: list(&fields.allowed_routes),
                metadata_json: fields.metadata.clone(),
                tags: list(&fields.tags),
                duration: fields.duration.clone(),
                allowed_ips: list(&fields.allowed_ips),
            };
            let k = client.update_key(authed(c, req)?).await.map_err(|s| status_message(&s))?.into_inner();
            print_key(c, &k);
        }
        KeyAdmin::Regenerate { key, grace_period } => {
            let made = client
                .regenerate_key(authed(c, pb::RegenerateKeyRequest { r#ref: Some(key_ref(&key)), grace_period })?)
                .await
                .map_err(|s| status_message(&s))?
                .into_inner();
            let info = made.info.unwrap_or_default();
            if c.json {
                let mut v = key_json(&info);
                v["key"] = Value::from(made.key);
                println!("{v}");
            } else {
                println!("{}", made.key);
                match &info.previous_key_valid_until {
                    Some(until) => eprintln!("Rotated {}; the previous key works until {until}.", info.key_id),
                    None => eprintln!("Rotated {}; the previous key no longer works.", info.key_id),
                }
            }
        }
        KeyAdmin::Block { key } => {
            let k = client.block_key(authed(c, key_ref(&key))?).await.map_err(|s| status_message(&s))?.into_inner();
            print_key(c, &k);
        }
        KeyAdmin::Unblock { key } => {
            let k = client.unblock_key(authed(c, key_ref(&key))?).await.map_err(|s| status_message(&s))?.into_inner();
            print_key(c, &k);
        }
        KeyAdmin::Delete { key } => {
            let done = client.delete_key(authed(c, key_ref(&key))?).await.map_err(|s| status_message(&s))?.into_inner();
            if c.json {
                println!("{}", json!({"deleted": done.key_id}));
            } else {
                println!("deleted {}", done.key_id);
            }
        }
    }
    Ok(())
}

pub async fn run_audit(
    c: &Connection,
    object_type: Option<String>,
    object_id: Option<String>,
    limit: u32,
) -> Result<(), String> {
    let mut client = AuditServiceClient::new(channel(c).await?);
    let page = client
        .list_audit(authed(
            c,
            pb::ListAuditRequest { object_type, object_id, page_size: limit, page_token: String::new() },
        )?)
        .await
        .map_err(|s| status_message(&s))?
        .into_inner();
    if c.json {
        let entries: Vec<Value> = page
            .entries
            .iter()
            .map(|e| json!({"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "object_type": e.object_type,
                "object_id": e.object_id, "before": serde_json::from_str::<Value>(&e.before_json).unwrap_or(Value::Null),
                "after": serde_json::from_str::<Value>(&e.after_json).unwrap_or(Value::Null)}))
            .collect();
        println!("{}", json!({"entries": entries}));
    } else {
        let rows: Vec<Vec<String>> = page
            .entries
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    e.at.clone(),
                    e.actor.clone(),
                    e.action.clone(),
                    format!("{}:{}", e.object_type, e.object_id),
                ]
            })
            .collect();
        table(&["ID", "AT", "ACTOR", "ACTION", "OBJECT"], &rows);
    }
    Ok(())
}

// ---- teams, users, organizations ---------------------------------------------------------------

/// Model and limit flags shared by keys, teams, users and organizations.
#[derive(Args, Clone, Default)]
pub struct LimitFlags {
    #[arg(long)]
    pub rpm: Option<i64>,
    #[arg(long)]
    pub tpm: Option<i64>,
    #[arg(long)]
    pub max_parallel: Option<i64>,
    /// USD.
    #[arg(long)]
    pub max_budget: Option<f64>,
    /// USD; crossing it alerts, never blocks.
    #[arg(long)]
    pub soft_budget: Option<f64>,
    /// 30s, 10m, 1h, 1d, 7d, 30d or 1mo.
    #[arg(long)]
    pub budget_duration: Option<String>,
    /// Comma-separated model groups.
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
}

impl LimitFlags {
    fn limits(&self) -> Option<pb::Limits> {
        let l = pb::Limits {
            rpm_limit: self.rpm,
            tpm_limit: self.tpm,
            max_parallel_requests: self.max_parallel,
            max_budget: self.max_budget,
            soft_budget: self.soft_budget,
            budget_duration: self.budget_duration.clone(),
        };
        (l != pb::Limits::default()).then_some(l)
    }
}

#[derive(Subcommand, Clone)]
pub enum TeamAdmin {
    #[command(allow_negative_numbers = true)]
    Create {
        /// The team id (default: one is made).
        #[arg(long, default_value = "")]
        id: String,
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
    },
    #[command(allow_negative_numbers = true)]
    Update {
        team: String,
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
        #[arg(long, value_delimiter = ',')]
        clear: Vec<String>,
    },
    List {
        #[arg(long)]
        org: Option<String>,
    },
    Info {
        team: String,
    },
    Block {
        team: String,
    },
    Unblock {
        team: String,
    },
    Delete {
        team: String,
    },
    /// Add a member (or change its role and limits).
    #[command(allow_negative_numbers = true)]
    AddMember {
        team: String,
        user: String,
        /// `admin` or `user`.
        #[arg(long, default_value = "user")]
        role: String,
        /// The member's own budget in this team, USD.
        #[arg(long)]
        max_budget: Option<f64>,
    },
    RemoveMember {
        team: String,
        user: String,
    },
}

#[derive(Subcommand, Clone)]
pub enum UserAdmin {
    #[command(allow_negative_numbers = true)]
    Create {
        #[arg(long, default_value = "")]
        id: String,
        #[arg(long)]
        email: Option<String>,
        /// proxy_admin, proxy_admin_viewer, org_admin, internal_user (default), internal_user_viewer.
        #[arg(long, default_value = "internal_user")]
        role: String,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
    },
    #[command(allow_negative_numbers = true)]
    Update {
        user: String,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
        #[arg(long, value_delimiter = ',')]
        clear: Vec<String>,
    },
    List {
        #[arg(long)]
        org: Option<String>,
    },
    Info {
        user: String,
    },
    Delete {
        user: String,
    },
}

#[derive(Subcommand, Clone)]
pub enum OrgAdmin {
    #[command(allow_negative_numbers = true)]
    Create {
        #[arg(long, default_value = "")]
        id: String,
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
    },
    List,
    Info {
        org: String,
    },
    Delete {
        org: String,
    },
}

fn user_role(s: &str) -> Result<i32, String> {
    Ok(match s {
        "proxy_admin" => pb::UserRole::ProxyAdmin,
        "proxy_admin_viewer" => pb::UserRole::ProxyAdminViewer,
        "org_admin" => pb::UserRole::OrgAdmin,
        "internal_user" => pb::UserRole::InternalUser,
        "internal_user_viewer" => pb::UserRole::InternalUserViewer,
        other => return Err(format!("unknown role {other:?}")),
    } as i32)
}

fn role_name(r: i32) -> &'static str {
    match pb::UserRole::try_from(r) {
        Ok(pb::UserRole::ProxyAdmin) => "proxy_admin",
        Ok(pb::UserRole::ProxyAdminViewer) => "proxy_admin_viewer",
        Ok(pb::UserRole::OrgAdmin) => "org_admin",
        Ok(pb::UserRole::InternalUserViewer) => "internal_user_viewer",
        _ => "internal_user",
    }
}

fn limits_json(l: &Option<pb::Limits>) -> Value {
    let l = l.clone().unwrap_or_default();
    json!({"rpm_limit": l.rpm_limit, "tpm_limit": l.tpm_limit, "max_parallel_requests": l.max_parallel_requests,
        "max_budget": l.max_budget, "soft_budget": l.soft_budget, "budget_duration": l.budget_duration})
}

fn team_json(t: &pb::Team) -> Value {
    json!({"team_id": t.team_id, "team_alias": t.team_alias, "organization_id": t.organization_id, "models": t.models,
        "limits": limits_json(&t.limits), "blocked": t.blocked,
        "members": t.members.iter().map(|m| json!({"user_id": m.user_id,
            "role": if m.role == pb::MemberRole::Admin as i32 { "admin" } else { "user" }})).collect::<Vec<_>>()})
}

fn print_teams(c: &Connection, teams: &[pb::Team]) {
    if c.json {
        println!("{}", json!({"teams": teams.iter().map(team_json).collect::<Vec<_>>()}));
        return;
    }
    let rows: Vec<Vec<String>> = teams
        .iter()
        .map(|t| {
            let l = t.limits.clone().unwrap_or_default();
            vec![
                t.team_id.clone(),
                opt(&t.team_alias),
                opt(&t.organization_id),
                t.members.len().to_string(),
                opt(&l.max_budget),
                opt(&l.rpm_limit),
                if t.blocked { "blocked".into() } else { "active".into() },
            ]
        })
        .collect();
    table(&["TEAM_ID", "ALIAS", "ORG", "MEMBERS", "BUDGET", "RPM", "STATE"], &rows);
}

fn print_users(c: &Connection, users: &[pb::User]) {
    if c.json {
        let v: Vec<Value> = users
            .iter()
            .map(|u| {
                json!({"user_id": u.user_id, "user_email": u.user_email, "user_role": role_name(u.user_role),
                "organization_id": u.organization_id, "limits": limits_json(&u.limits),
                "teams": u.teams.iter().map(|t| t.team_id.clone()).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", json!({"users": v}));
        return;
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.user_id.clone(),
                opt(&u.user_email),
                role_name(u.user_role).to_owned(),
                opt(&u.organization_id),
                u.teams.iter().map(|t| t.team_id.clone()).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    table(&["USER_ID", "EMAIL", "ROLE", "ORG", "TEAMS"], &rows);
}

fn print_orgs(c: &Connection, orgs: &[pb::Organization]) {
    if c.json {
        let v: Vec<Value> = orgs
            .iter()
            .map(|o| {
                json!({"organization_id": o.organization_id, "organization_alias": o.organization_alias,
                "models": o.models, "limits": limits_json(&o.limits), "blocked": o.blocked})
            })
            .collect();
        println!("{}", json!({"organizations": v}));
        return;
    }
    let rows: Vec<Vec<String>> = orgs
        .iter()
        .map(|o| {
            vec![
                o.organization_id.clone(),
                opt(&o.organization_alias),
                opt(&o.limits.clone().unwrap_or_default().max_budget),
            ]
        })
        .collect();
    table(&["ORG_ID", "ALIAS", "BUDGET"], &rows);
}

pub async fn run_team(c: &Connection, cmd: TeamAdmin) -> Result<(), String> {
    let mut client = TeamServiceClient::new(channel(c).await?);
    let err = |s: tonic::Status| status_message(&s);
    let team = match cmd {
        TeamAdmin::Create { id, alias, org, limits } => {
            let req = pb::CreateTeamRequest {
                team_id: id,
                team_alias: alias,
                organization_id: org,
                models: limits.models.clone().unwrap_or_default(),
                limits: limits.limits(),
                ..Default::default()
            };
            client.create_team(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        TeamAdmin::Update { team, alias, limits, clear } => {
            let req = pb::UpdateTeamRequest {
                team_id: team,
                team_alias: alias,
                models: limits.models.clone().map(|values| pb::StringList { values }),
                limits: limits.limits(),
                clear_limits: clear,
                ..Default::default()
            };
            client.update_team(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        TeamAdmin::List { org } => {
            let req = pb::ListTeamsRequest { organization_id: org, page_size: 500, page_token: String::new() };
            let teams = client.list_teams(authed(c, req)?).await.map_err(err)?.into_inner().teams;
            print_teams(c, &teams);
            return Ok(());
        }
        TeamAdmin::Info { team } => {
            client.get_team(authed(c, pb::TeamRef { team_id: team })?).await.map_err(err)?.into_inner()
        }
        TeamAdmin::Block { team } => {
            client.block_team(authed(c, pb::TeamRef { team_id: team })?).await.map_err(err)?.into_inner()
        }
        TeamAdmin::Unblock { team } => {
            client.unblock_team(authed(c, pb::TeamRef { team_id: team })?).await.map_err(err)?.into_inner()
        }
        TeamAdmin::Delete { team } => {
            let done = client.delete_team(authed(c, pb::TeamRef { team_id: team })?).await.map_err(err)?.into_inner();
            println!("deleted {}", done.id);
            return Ok(());
        }
        TeamAdmin::AddMember { team, user, role, max_budget } => {
            let role = match role.as_str() {
                "admin" => pb::MemberRole::Admin,
                "user" => pb::MemberRole::User,
                other => return Err(format!("--role {other}: use admin or user")),
            };
            let limits = max_budget.map(|b| pb::Limits { max_budget: Some(b), ..Default::default() });
            let req = pb::MemberRequest {
                team_id: team,
                member: Some(pb::Member { user_id: user, role: role as i32, limits }),
            };
            client.add_member(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        TeamAdmin::RemoveMember { team, user } => client
            .remove_member(authed(c, pb::RemoveMemberRequest { team_id: team, user_id: user })?)
            .await
            .map_err(err)?
            .into_inner(),
    };
    print_teams(c, &[team]);
    Ok(())
}

pub async fn run_user(c: &Connection, cmd: UserAdmin) -> Result<(), String> {
    let mut client = UserServiceClient::new(channel(c).await?);
    let err = |s: tonic::Status| status_message(&s);
    let user = match cmd {
        UserAdmin::Create { id, email, role, org, limits } => {
            let req = pb::CreateUserRequest {
                user_id: id,
                user_email: email,
                user_role: user_role(&role)?,
                organization_id: org,
                models: limits.models.clone().unwrap_or_default(),
                limits: limits.limits(),
                metadata_json: None,
            };
            client.create_user(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        UserAdmin::Update { user, role, email, limits, clear } => {
            let req = pb::UpdateUserRequest {
                user_id: user,
                user_email: email,
                user_role: role.as_deref().map(user_role).transpose()?,
                models: limits.models.clone().map(|values| pb::StringList { values }),
                limits: limits.limits(),
                clear_limits: clear,
                ..Default::default()
            };
            client.update_user(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        UserAdmin::List { org } => {
            let req = pb::ListUsersRequest { organization_id: org, page_size: 500, ..Default::default() };
            let users = client.list_users(authed(c, req)?).await.map_err(err)?.into_inner().users;
            print_users(c, &users);
            return Ok(());
        }
        UserAdmin::Info { user } => {
            client.get_user(authed(c, pb::UserRef { user_id: user })?).await.map_err(err)?.into_inner()
        }
        UserAdmin::Delete { user } => {
            let done = client.delete_user(authed(c, pb::UserRef { user_id: user })?).await.map_err(err)?.into_inner();
            println!("deleted {}", done.id);
            return Ok(());
        }
    };
    print_users(c, &[user]);
    Ok(())
}

pub async fn run_org(c: &Connection, cmd: OrgAdmin) -> Result<(), String> {
    let mut client = OrganizationServiceClient::new(channel(c).await?);
    let err = |s: tonic::Status| status_message(&s);
    let org = match cmd {
        OrgAdmin::Create { id, alias, limits } => {
            let req = pb::CreateOrganizationRequest {
                organization_id: id,
                organization_alias: alias,
                models: limits.models.clone().unwrap_or_default(),
                limits: limits.limits(),
                metadata_json: None,
            };
            client.create_organization(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        OrgAdmin::List => {
            let req = pb::ListOrganizationsRequest { page_size: 500, page_token: String::new() };
            let orgs = client.list_organizations(authed(c, req)?).await.map_err(err)?.into_inner().organizations;
            print_orgs(c, &orgs);
            return Ok(());
        }
        OrgAdmin::Info { org } => client
            .get_organization(authed(c, pb::OrganizationRef { organization_id: org })?)
            .await
            .map_err(err)?
            .into_inner(),
        OrgAdmin::Delete { org } => {
            let done = client
                .delete_organization(authed(c, pb::OrganizationRef { organization_id: org })?)
                .await
                .map_err(err)?
                .into_inner();
            println!("deleted {}", done.id);
            return Ok(());
        }
    };
    print_orgs(c, &[org]);
    Ok(())
}

// ---- model deployments -----------------------------------------------------------------------

#[derive(Subcommand, Clone)]
pub enum ModelAdmin {
    /// Add a deployment: LiteLLM's `litellm_params` and `model_info` as JSON.
    Create {
        /// The model group clients ask for.
        model_name: String,
        /// e.g. '{"model": "openai/gpt-4o", "api_key": "os.environ/OPENAI_API_KEY"}'
        #[arg(long)]
        params: String,
        /// e.g. '{"id": "gpt4o-east", "input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5}'
        #[arg(long, default_value = "{}")]
        info: String,
    },
    Update {
        deployment_id: String,
        #[arg(long)]
        model_name: Option<String>,
        #[arg(long)]
        params: Option<String>,
        #[arg(long)]
        info: Option<String>,
    },
    List {
        #[arg(long)]
        model_name: Option<String>,
    },
    Info {
        deployment_id: String,
    },
    Delete {
        deployment_id: String,
    },
}

fn print_models(c: &Connection, models: &[pb::ModelDeployment]) {
    let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap_or(Value::Null);
    if c.json {
        let v: Vec<Value> = models
            .iter()
            .map(|m| {
                json!({"deployment_id": m.deployment_id, "model_name": m.model_name, "source": m.source,
                "litellm_params": parse(&m.litellm_params_json), "model_info": parse(&m.model_info_json),
                "warnings": m.warnings})
            })
            .collect();
        println!("{}", json!({"models": v}));
        return;
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let p = parse(&m.litellm_params_json);
            let i = parse(&m.model_info_json);
            vec![
                m.deployment_id.clone(),
                m.model_name.clone(),
                p["model"].as_str().unwrap_or("-").to_owned(),
                i["input_cost_per_token"].as_f64().map_or("-".into(), |v| v.to_string()),
                i["output_cost_per_token"].as_f64().map_or("-".into(), |v| v.to_string()),
                m.source.clone(),
            ]
        })
        .collect();
    table(&["DEPLOYMENT", "MODEL_NAME", "MODEL", "INPUT $/TOK", "OUTPUT $/TOK", "SOURCE"], &rows);
    for m in models {
        for w in &m.warnings {
            eprintln!("warning: {w}");
        }
    }
}

pub async fn run_model(c: &Connection, cmd: ModelAdmin) -> Result<(), String> {
    let mut client = ModelServiceClient::new(channel(c).await?);
    let err = |s: tonic::Status| status_message(&s);
    let model = match cmd {
        ModelAdmin::Create { model_name, params, info } => {
            let req = pb::CreateModelRequest { model_name, litellm_params_json: params, model_info_json: info };
            client.create_model(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        ModelAdmin::Update { deployment_id, model_name, params, info } => {
            let req = pb::UpdateModelRequest {
                deployment_id,
                model_name,
                litellm_params_json: params,
                model_info_json: info,
            };
            client.update_model(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        ModelAdmin::List { model_name } => {
            let req = pb::ListModelsRequest { model_name, page_size: 500, page_token: String::new() };
            let models = client.list_models(authed(c, req)?).await.map_err(err)?.into_inner().models;
            print_models(c, &models);
            return Ok(());
        }
        ModelAdmin::Info { deployment_id } => {
            client.get_model(authed(c, pb::ModelRef { deployment_id })?).await.map_err(err)?.into_inner()
        }
        ModelAdmin::Delete { deployment_id } => {
            let done = client.delete_model(authed(c, pb::ModelRef { deployment_id })?).await.map_err(err)?.into_inner();
            println!("deleted {}", done.id);
            return Ok(());
        }
    };
    print_models(c, &[model]);
    Ok(())
}

// ---- spend ----------------------------------------------------------------------------------

#[derive(Args, Clone)]
pub struct SpendArgs {
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub org: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub tag: Option<String>,
    /// A window back from today (`7d`, `30d`, `1mo`), or a day (`2026-11-01`).
    #[arg(long)]
    pub since: Option<String>,
    /// The last day (default: today).
    #[arg(long)]
    pub until: Option<String>,
    /// day (default), key, team, user, org, model, tag or customer (the request's end user).
    #[arg(long, default_value = "day")]
    pub group_by: String,
}

fn since_day(s: &str) -> Result<String, String> {
    if s.len() == 10 && sluice_core::time::parse_rfc3339(s).is_some() {
        return Ok(s.to_owned());
    }
    let secs = match sluice_core::time::BudgetDuration::parse(s) {
        Some(sluice_core::time::BudgetDuration::Seconds(n)) => n,
        Some(sluice_core::time::BudgetDuration::CalendarMonth) => 30 * 86_400,
        None => return Err(format!("--since {s}: use a window like 7d or a day like 2026-11-01")),
    };
    let now = sluice_control_plane::store::now_ms();
    Ok(sluice_control_plane::store::day_of(now - i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)))
}

pub async fn run_spend(c: &Connection, a: SpendArgs) -> Result<(), String> {
    let mut client = SpendServiceClient::new(channel(c).await?);
    let group_by = match a.group_by.as_str() {
        "day" => pb::SpendGroupBy::Day,
        "key" => pb::SpendGroupBy::Key,
        "team" => pb::SpendGroupBy::Team,
        "user" => pb::SpendGroupBy::User,
        "org" => pb::SpendGroupBy::Organization,
        "model" => pb::SpendGroupBy::Model,
        "tag" => pb::SpendGroupBy::Tag,
        "customer" => pb::SpendGroupBy::Customer,
        other => return Err(format!("--group-by {other}: use day, key, team, user, org, model, tag or customer")),
    };
    let query = pb::SpendQuery {
        key_id: a.key,
        team_id: a.team,
        user_id: a.user,
        organization_id: a.org,
        model_group: a.model,
        tag: a.tag,
        start_day: a.since.as_deref().map(since_day).transpose()?.unwrap_or_default(),
        end_day: a.until.unwrap_or_default(),
        group_by: group_by as i32,
    };
    let report = client.query_spend(authed(c, query)?).await.map_err(|s| status_message(&s))?.into_inner();
    if c.json {
        let rows: Vec<Value> = report
            .rows
            .iter()
            .map(|r| {
                json!({"group": r.group, "requests": r.requests, "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens, "spend": r.spend})
            })
            .collect();
        println!("{}", json!({"rows": rows, "requests": report.requests, "spend": report.spend}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            vec![
                r.group.clone(),
                r.requests.to_string(),
                r.prompt_tokens.to_string(),
                r.completion_tokens.to_string(),
                format!("${:.6}", r.spend),
            ]
        })
        .collect();
    table(&[&a.group_by.to_uppercase(), "REQUESTS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "SPEND"], &rows);
    println!("total: {} requests, ${:.6}", report.requests, report.spend);
    Ok(())
}

// ---- budgets and customers -------------------------------------------------------------------

#[derive(Subcommand, Clone)]
pub enum BudgetAdmin {
    #[command(allow_negative_numbers = true)]
    Create {
        #[arg(long, default_value = "")]
        id: String,
        #[command(flatten)]
        limits: LimitFlags,
    },
    #[command(allow_negative_numbers = true)]
    Update {
        budget: String,
        #[command(flatten)]
        limits: LimitFlags,
        #[arg(long, value_delimiter = ',')]
        clear: Vec<String>,
    },
    List,
    Info {
        budget: String,
    },
    Delete {
        budget: String,
    },
}

#[derive(Subcommand, Clone)]
pub enum CustomerAdmin {
    #[command(allow_negative_numbers = true)]
    Create {
        #[arg(long, default_value = "")]
        id: String,
        #[arg(long)]
        alias: Option<String>,
        /// A budget made with `sluice budget create`.
        #[arg(long)]
        budget: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
    },
    List,
    Info {
        customer: String,
    },
    Block {
        customer: String,
    },
    Unblock {
        customer: String,
    },
    Delete {
        customer: String,
    },
}

fn print_budgets(c: &Connection, budgets: &[pb::Budget]) {
    if c.json {
        let v: Vec<Value> =
            budgets.iter().map(|b| json!({"budget_id": b.budget_id, "limits": limits_json(&b.limits)})).collect();
        println!("{}", json!({"budgets": v}));
        return;
    }
    let rows: Vec<Vec<String>> = budgets
        .iter()
        .map(|b| {
            let l = b.limits.clone().unwrap_or_default();
            vec![b.budget_id.clone(), opt(&l.max_budget), opt(&l.budget_duration), opt(&l.rpm_limit), opt(&l.tpm_limit)]
        })
        .collect();
    table(&["BUDGET_ID", "MAX_BUDGET", "DURATION", "RPM", "TPM"], &rows);
}

fn print_customers(c: &Connection, customers: &[pb::Customer]) {
    if c.json {
        let v: Vec<Value> = customers
            .iter()
            .map(|x| {
                json!({"customer_id": x.customer_id, "alias": x.alias, "budget_id": x.budget_id,
                "limits": limits_json(&x.limits), "blocked": x.blocked})
            })
            .collect();
        println!("{}", json!({"customers": v}));
        return;
    }
    let rows: Vec<Vec<String>> = customers
        .iter()
        .map(|x| {
            vec![
                x.customer_id.clone(),
                opt(&x.alias),
                opt(&x.budget_id),
                if x.blocked { "blocked".into() } else { "active".into() },
            ]
        })
        .collect();
    table(&["CUSTOMER_ID", "ALIAS", "BUDGET", "STATE"], &rows);
}

pub async fn run_budget(c: &Connection, cmd: BudgetAdmin) -> Result<(), String> {
    let mut client = BudgetServiceClient::new(channel(c).await?);
    let err = |s: tonic::Status| status_message(&s);
    let budget = match cmd {
        BudgetAdmin::Create { id, limits } => {
            let req = pb::CreateBudgetRequest { budget_id: id, limits: limits.limits() };
            client.create_budget(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        BudgetAdmin::Update { budget, limits, clear } => {
            let req = pb::UpdateBudgetRequest { budget_id: budget, limits: limits.limits(), clear_limits: clear };
            client.update_budget(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        BudgetAdmin::List => {
            let req = pb::ListBudgetsRequest { page_size: 500, page_token: String::new() };
            let budgets = client.list_budgets(authed(c, req)?).await.map_err(err)?.into_inner().budgets;
            print_budgets(c, &budgets);
            return Ok(());
        }
        BudgetAdmin::Info { budget } => {
            client.get_budget(authed(c, pb::BudgetRef { budget_id: budget })?).await.map_err(err)?.into_inner()
        }
        BudgetAdmin::Delete { budget } => {
            let done = client.delete_budget(authed(c, pb::BudgetRef { budget_id: budget })?).await.map_err(err)?;
            println!("deleted {}", done.into_inner().id);
            return Ok(());
        }
    };
    print_budgets(c, &[budget]);
    Ok(())
}

pub async fn run_customer(c: &Connection, cmd: CustomerAdmin) -> Result<(), String> {
    let mut client = CustomerServiceClient::new(channel(c).await?);
    let err = |s: tonic::Status| status_message(&s);
    let r = |id: String| pb::CustomerRef { customer_id: id };
    let customer = match cmd {
        CustomerAdmin::Create { id, alias, budget, limits } => {
            let req = pb::CreateCustomerRequest {
                customer_id: id,
                alias,
                budget_id: budget,
                limits: limits.limits(),
                blocked: false,
            };
            client.create_customer(authed(c, req)?).await.map_err(err)?.into_inner()
        }
        CustomerAdmin::List => {
            let req = pb::ListCustomersRequest { page_size: 500, page_token: String::new() };
            let customers = client.list_customers(authed(c, req)?).await.map_err(err)?.into_inner().customers;
            print_customers(c, &customers);
            return Ok(());
        }
        CustomerAdmin::Info { customer } => {
            client.get_customer(authed(c, r(customer))?).await.map_err(err)?.into_inner()
        }
        CustomerAdmin::Block { customer } => {
            client.block_customer(authed(c, r(customer))?).await.map_err(err)?.into_inner()
        }
        CustomerAdmin::Unblock { customer } => {
            client.unblock_customer(authed(c, r(customer))?).await.map_err(err)?.into_inner()
        }
        CustomerAdmin::Delete { customer } => {
            let done = client.delete_customer(authed(c, r(customer))?).await.map_err(err)?;
            println!("deleted {}", done.into_inner().id);
            return Ok(());
        }
    };
    print_customers(c, &[customer]);
    Ok(())
}
