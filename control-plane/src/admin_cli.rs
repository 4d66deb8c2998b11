//! The admin half of the `sluice` CLI: a gRPC client of the control plane. Human-readable tables
//! by default, `--json` for scripts; server and credential from flags or the environment.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::audit_service_client::AuditServiceClient;
use sluice_proto::admin::v1::key_ref::Ref;
use sluice_proto::admin::v1::key_service_client::KeyServiceClient;
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
    /// Comma-separated model groups (empty: every model the owner may use).
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
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
    /// Expiry from now (30d); with `update`, `never` removes it.
    #[arg(long)]
    pub duration: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub allowed_routes: Option<Vec<String>>,
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

async fn channel(c: &Connection) -> Result<Channel, String> {
    Channel::from_shared(c.server.clone())
        .map_err(|e| format!("--server {}: {e}", c.server))?
        .connect()
        .await
        .map_err(|e| format!("cannot reach the control plane at {} ({e}); is `sluice serve` running?", c.server))
}

fn authed<T>(c: &Connection, msg: T) -> Result<tonic::Request<T>, String> {
    let key = c.api_key.as_deref().ok_or("no credential: pass --api-key or set SLUICE_API_KEY")?;
    let mut req = tonic::Request::new(msg);
    let value: MetadataValue<_> =
        format!("Bearer {key}").parse().map_err(|_| "the API key contains characters a header cannot carry")?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

fn status_message(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn limits(f: &KeyFields) -> Option<pb::Limits> {
    let l = pb::Limits {
        rpm_limit: f.rpm,
        tpm_limit: f.tpm,
        max_parallel_requests: f.max_parallel,
        max_budget: f.max_budget,
        soft_budget: f.soft_budget,
        budget_duration: f.budget_duration.clone(),
    };
    (l != pb::Limits::default()).then_some(l)
}

fn key_json(k: &pb::Key) -> Value {
    let l = k.limits.clone().unwrap_or_default();
    json!({
        "key_id": k.key_id, "key_prefix": k.key_prefix, "last4": k.last4, "key_alias": k.key_alias,
        "user_id": k.user_id, "team_id": k.team_id, "organization_id": k.organization_id, "models": k.models,
        "rpm_limit": l.rpm_limit, "tpm_limit": l.tpm_limit, "max_parallel_requests": l.max_parallel_requests,
        "max_budget": l.max_budget, "soft_budget": l.soft_budget, "budget_duration": l.budget_duration,
        "allowed_routes": k.allowed_routes, "tags": k.tags,
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
                models: fields.models.clone().unwrap_or_default(),
                limits: limits(&fields),
                allowed_routes: fields.allowed_routes.clone().unwrap_or_default(),
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
                models: list(&fields.models),
                limits: limits(&fields),
                clear_limits: clear,
                model_limits: None,
                allowed_routes: list(&fields.allowed_routes),
                metadata_json: fields.metadata.clone(),
                tags: list(&fields.tags),
                duration: fields.duration.clone(),
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
