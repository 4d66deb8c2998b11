//! `sluice import litellm --from postgres://…`: brings a LiteLLM proxy's reusable budgets, end
//! users (customers), organizations, users, teams (with their members) and virtual keys into Sluice through the admin API, so that the
//! keys LiteLLM handed out keep working (imported by the SHA-256 LiteLLM stored; Sluice never
//! sees a plaintext).
//!
//! It reads LiteLLM's tables (its Prisma schema: `LiteLLM_BudgetTable`, `…EndUserTable`,
//! `…OrganizationTable`, `…UserTable`, `…TeamTable`, `…VerificationToken`) a row at a time as JSON (`row_to_json`), so a column added by a later LiteLLM is seen and reported, not
//! a decoding error. Every object is created only if Sluice does not have it (keys by digest,
//! the rest by id): a second run creates nothing. `--dry-run` reports what a run would do.
//!
//! What it cannot carry is reported, never dropped silently: a column Sluice has no field for,
//! holding anything but its default, is listed with the number of rows that set it, and each
//! deployment LiteLLM stored in its database (with its provider key: Sluice takes keys from the
//! environment only) is named for the operator to add.
//!
//! Spend: Sluice's budgets count its own spend records, so a key's LiteLLM `spend` is carried
//! as one record of that cost (an opening balance, `route: /litellm/import`, record id from the
//! key's digest, so a second run is a duplicate the control plane recognises), shipped through
//! the data-plane port as an Envoy ships usage (`--xds`, `--pki-dir`). Teams, users and
//! organizations get their keys' balances through their keys. An object with a budget whose
//! LiteLLM spend would not be carried (no `--xds`, or spend on keys that are gone) would start
//! that budget afresh, so it is skipped unless `--reset-spent-budgets` says that is intended.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::budget_service_client::BudgetServiceClient;
use sluice_proto::admin::v1::customer_service_client::CustomerServiceClient;
use sluice_proto::admin::v1::key_service_client::KeyServiceClient;
use sluice_proto::admin::v1::organization_service_client::OrganizationServiceClient;
use sluice_proto::admin::v1::team_service_client::TeamServiceClient;
use sluice_proto::admin::v1::user_service_client::UserServiceClient;
use sqlx::postgres::PgPoolOptions;
use tonic::Code;

use sluice_proto::gateway::v1::usage_service_client::UsageServiceClient;
use sluice_proto::gateway::v1::{Outcome, ReportUsageRequest, UsageRecord};

use crate::admin_cli::{Connection, authed, channel, status_message};
use crate::usage_import::{self, DataPlaneArgs};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The LiteLLM proxy's database (`DATABASE_URL`): postgres://USER:PASSWORD@HOST/DB.
    #[arg(long = "from", env = "LITELLM_DATABASE_URL", hide_env_values = true)]
    from: String,
    /// Report what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Import objects that have a budget and some LiteLLM spend: their budgets start again
    /// from $0 in Sluice (LiteLLM's spend is not carried). Without it they are skipped.
    #[arg(long)]
    reset_spent_budgets: bool,
    /// The data-plane port, to carry LiteLLM's spend as opening balances (without it, spend
    /// is not carried).
    #[command(flatten)]
    data_plane: DataPlaneArgs,
}

/// The model group and route of an opening balance's record.
const IMPORT_GROUP: &str = "litellm-import";
const IMPORT_ROUTE: &str = "/litellm/import";

/// A key's LiteLLM spend as one usage record of that cost, for its Sluice key `key_id`.
fn opening_balance(digest: &str, key_id: &str, spend: f64, now_ms: u64) -> UsageRecord {
    UsageRecord {
        record_id: format!("litellm-import-{digest}"),
        request_id: format!("litellm-import-{digest}"),
        key_id: key_id.to_owned(),
        model_group: IMPORT_GROUP.to_owned(),
        route: IMPORT_ROUTE.to_owned(),
        status: 200,
        outcome: Outcome::Completed as i32,
        cost_usd: spend,
        start_ms: now_ms,
        ..UsageRecord::default()
    }
}

/// Per owner id, the LiteLLM spend of its keys (what carrying the keys' balances gives it).
fn spend_by(keys: &[Map<String, Value>], column: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for key in keys {
        if let Some(owner) = string(key, column) {
            *sums.entry(owner).or_default() += number(key, "spend").unwrap_or(0.0);
        }
    }
    sums
}

/// Columns each table's mapping reads, or that say nothing Sluice needs (ids it derives,
/// timestamps, LiteLLM's spend bookkeeping): anything else set is reported as not imported.
const ORG_COLUMNS: &[&str] = &[
    "organization_id",
    "organization_alias",
    "budget_id",
    "metadata",
    "models",
    "spend",
    "model_spend",
    "created_at",
    "created_by",
    "updated_at",
    "updated_by",
];
const BUDGET_COLUMNS: &[&str] = &[
    "budget_id",
    "max_budget",
    "soft_budget",
    "max_parallel_requests",
    "tpm_limit",
    "rpm_limit",
    "budget_duration",
    "budget_reset_at",
    "created_at",
    "created_by",
    "updated_at",
    "updated_by",
];
const CUSTOMER_COLUMNS: &[&str] = &["user_id", "alias", "spend", "budget_id", "blocked"];
const USER_COLUMNS: &[&str] = &[
    "user_id",
    "user_alias",
    "team_id",
    "organization_id",
    "teams",
    "user_role",
    "max_budget",
    "spend",
    "user_email",
    "models",
    "metadata",
    "max_parallel_requests",
    "tpm_limit",
    "rpm_limit",
    "budget_duration",
    "budget_reset_at",
    "model_spend",
    "created_at",
    "updated_at",
    "password",
    "password_reset_required",
    "last_breach_check_at",
    "sso_user_id",
];
const TEAM_COLUMNS: &[&str] = &[
    "team_id",
    "team_alias",
    "organization_id",
    "admins",
    "members",
    "members_with_roles",
    "metadata",
    "max_budget",
    "soft_budget",
    "spend",
    "models",
    "max_parallel_requests",
    "tpm_limit",
    "rpm_limit",
    "budget_duration",
    "budget_reset_at",
    "blocked",
    "created_at",
    "updated_at",
    "model_spend",
    "model_id",
];
const KEY_COLUMNS: &[&str] = &[
    "token",
    "key_name",
    "key_alias",
    "soft_budget_cooldown",
    "spend",
    "total_spend",
    "expires",
    "models",
    "user_id",
    "team_id",
    "organization_id",
    "max_parallel_requests",
    "metadata",
    "blocked",
    "tpm_limit",
    "rpm_limit",
    "max_budget",
    "budget_duration",
    "budget_reset_at",
    "allowed_routes",
    "key_type",
    "model_spend",
    "created_at",
    "created_by",
    "updated_at",
    "updated_by",
    "settings_updated_at",
    "last_active",
    "rotation_count",
    "last_rotation_at",
];

/// LiteLLM's model names that mean "whatever the owner may use": Sluice's empty list.
const ALL_MODELS: &[&str] = &["all-team-models", "all-proxy-models", "all-org-models"];

/// What a run did, or would do, per kind of object.
#[derive(Default)]
struct Report {
    /// Per kind: created (or to create), already in Sluice, and skipped with the reason.
    created: BTreeMap<&'static str, usize>,
    present: BTreeMap<&'static str, usize>,
    skipped: Vec<String>,
    /// `table.column` → rows that set it.
    not_imported: BTreeMap<String, usize>,
}

impl Report {
    fn print(&self, dry_run: bool) {
        let verb = if dry_run { "would create" } else { "created" };
        for kind in ["budgets", "customers", "organizations", "users", "teams", "keys"] {
            println!(
                "{kind}: {verb} {}, already in Sluice {}",
                self.created.get(kind).copied().unwrap_or(0),
                self.present.get(kind).copied().unwrap_or(0)
            );
        }
        for why in &self.skipped {
            println!("skipped: {why}");
        }
        if !self.not_imported.is_empty() {
            println!("not imported (Sluice has no field for these; set on the rows counted):");
            for (column, rows) in &self.not_imported {
                println!("  {column}: {rows} row(s)");
            }
        }
    }

    /// Counts one object Sluice has already.
    fn present(&mut self, kind: &'static str) {
        *self.present.entry(kind).or_default() += 1;
    }

    /// Counts one object created (or, in a dry run, to create), unless the admin API refused
    /// it: then it is skipped with the API's words. Whether it was created.
    fn created(&mut self, kind: &'static str, id: &str, refused: Option<tonic::Status>) -> bool {
        match refused {
            None => {
                *self.created.entry(kind).or_default() += 1;
                true
            }
            Some(status) => {
                self.skipped.push(format!("{kind} {id}: {}", status_message(&status)));
                false
            }
        }
    }

    /// Whether an object is held back (the reason noted) because its budget would restart.
    fn held_back(&mut self, reset_allowed: bool, why: Option<String>) -> bool {
        match why.filter(|_| !reset_allowed) {
            Some(why) => {
                self.skipped.push(why);
                true
            }
            None => false,
        }
    }

    /// Notes each column of `row` outside `known` that holds more than its default.
    fn unmapped(&mut self, table: &str, row: &Map<String, Value>, known: &[&str]) {
        for (column, value) in row {
            if !known.contains(&column.as_str()) && !is_default(value) {
                *self.not_imported.entry(format!("{table}.{column}")).or_default() += 1;
            }
        }
    }
}

/// A column value LiteLLM writes when nothing was set.
fn is_default(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn string(row: &Map<String, Value>, column: &str) -> Option<String> {
    row.get(column).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn number(row: &Map<String, Value>, column: &str) -> Option<f64> {
    row.get(column).and_then(Value::as_f64)
}

fn integer(row: &Map<String, Value>, column: &str) -> Option<i64> {
    row.get(column).and_then(Value::as_i64)
}

/// A JSON array's strings (anything else in it, or no array, gives none).
fn strings(value: Option<&Value>) -> Vec<String> {
    value.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

/// A model list, with LiteLLM's "every model" names as Sluice's empty list.
fn models(row: &Map<String, Value>) -> Vec<String> {
    let names = strings(row.get("models"));
    if names.iter().any(|m| ALL_MODELS.contains(&m.as_str())) { Vec::new() } else { names }
}

fn limits(row: &Map<String, Value>) -> pb::Limits {
    pb::Limits {
        rpm_limit: integer(row, "rpm_limit"),
        tpm_limit: integer(row, "tpm_limit"),
        max_parallel_requests: integer(row, "max_parallel_requests"),
        max_budget: number(row, "max_budget"),
        soft_budget: number(row, "soft_budget"),
        budget_duration: string(row, "budget_duration"),
    }
}

fn metadata(row: &Map<String, Value>) -> Option<String> {
    row.get("metadata").filter(|m| m.as_object().is_some_and(|o| !o.is_empty())).map(Value::to_string)
}

/// Whether importing `row` would restart a budget LiteLLM has spent from (beyond the `carried`
/// dollars its keys' balances bring): say why, or None. A cent is the tolerance (LiteLLM sums
/// floats).
fn spent_budget(kind: &str, id: &str, row: &Map<String, Value>, budget: Option<f64>, carried: f64) -> Option<String> {
    let spend = number(row, "spend").unwrap_or(0.0);
    let lost = spend - carried;
    (budget.is_some() && lost > 0.01).then(|| {
        format!(
            "{kind} {id}: ${lost:.6} of its ${spend:.6} spent of a ${:.2} budget in LiteLLM would not be carried \
             (no --xds, or spent by keys that are gone), so Sluice would restart that budget short of it \
             (--reset-spent-budgets to import it anyway)",
            budget.unwrap_or(0.0)
        )
    })
}

fn user_role(role: Option<&str>) -> pb::UserRole {
    match role {
        Some("proxy_admin") => pb::UserRole::ProxyAdmin,
        Some("proxy_admin_viewer") => pb::UserRole::ProxyAdminViewer,
        Some("org_admin") => pb::UserRole::OrgAdmin,
        Some("internal_user_viewer") => pb::UserRole::InternalUserViewer,
        _ => pb::UserRole::InternalUser,
    }
}

fn key_type(kind: Option<&str>) -> pb::KeyType {
    match kind {
        Some("management") => pb::KeyType::Management,
        Some("read_only") => pb::KeyType::ReadOnly,
        _ => pb::KeyType::LlmApi,
    }
}

/// LiteLLM's `members_with_roles`: `[{"user_id": …, "role": "admin"|"user"}, …]`.
fn members(row: &Map<String, Value>) -> Vec<pb::Member> {
    let listed = row.get("members_with_roles").and_then(Value::as_array).into_iter().flatten();
    listed
        .filter_map(|m| {
            let user_id = m.get("user_id").and_then(Value::as_str).filter(|u| !u.is_empty())?;
            let role = if m.get("role").and_then(Value::as_str) == Some("admin") {
                pb::MemberRole::Admin
            } else {
                pb::MemberRole::User
            };
            Some(pb::Member { user_id: user_id.to_owned(), role: role as i32, limits: None })
        })
        .collect()
}

/// Every row of a LiteLLM table, as JSON objects, in a stable order.
async fn rows(pool: &sqlx::PgPool, table: &str, order_by: &str) -> Result<Vec<Map<String, Value>>, String> {
    let sql = format!(r#"SELECT row_to_json(t)::text FROM "{table}" t ORDER BY t."{order_by}""#);
    let texts: Vec<String> =
        sqlx::query_scalar(&sql).fetch_all(pool).await.map_err(|e| format!("reading {table}: {e}"))?;
    texts
        .iter()
        .map(|text| match serde_json::from_str(text) {
            Ok(Value::Object(row)) => Ok(row),
            _ => Err(format!("{table}: a row is not a JSON object")),
        })
        .collect()
}

/// The owners this run creates (or, dry, would create).
#[derive(Default)]
struct Planned {
    orgs: Vec<String>,
    users: Vec<String>,
    teams: Vec<String>,
}

impl Planned {
    /// Whether a key's user, team or organization is one of them.
    fn owns(&self, key: &Map<String, Value>) -> bool {
        let named = |column: &str, ids: &[String]| string(key, column).is_some_and(|id| ids.contains(&id));
        named("user_id", &self.users) || named("team_id", &self.teams) || named("organization_id", &self.orgs)
    }
}

/// LiteLLM's times are Prisma's `TIMESTAMP(3)`, UTC without a zone: RFC 3339 with its `Z`.
fn utc(time: String) -> String {
    let zoned = time.ends_with('Z') || time.rsplit_once('T').is_some_and(|(_, t)| t.contains(['+', '-']));
    if zoned { time } else { time + "Z" }
}

/// Whether an admin call's answer means "it exists" (Ok), "it does not" (NotFound), or failed.
fn exists<T>(answer: Result<T, tonic::Status>) -> Result<bool, String> {
    match answer {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(status_message(&s)),
    }
}

pub async fn run(c: &Connection, args: ImportArgs) -> Result<(), String> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&args.from)
        .await
        .map_err(|e| format!("--from: cannot open LiteLLM's database ({e})"))?;
    let channel = channel(c).await?;
    let mut orgs = OrganizationServiceClient::new(channel.clone());
    let mut users = UserServiceClient::new(channel.clone());
    let mut teams = TeamServiceClient::new(channel.clone());
    let mut keys = KeyServiceClient::new(channel.clone());
    let mut report = Report::default();
    let mut planned = Planned::default();
    let dry = args.dry_run;
    let err = |s: tonic::Status| status_message(&s);

    // Keys first: their balances are what teams, users and organizations carry.
    let key_rows = rows(&pool, "LiteLLM_VerificationToken", "token").await?;
    let carry = args.data_plane.xds.is_some();
    let (by_team, by_user, by_org) = if carry {
        (spend_by(&key_rows, "team_id"), spend_by(&key_rows, "user_id"), spend_by(&key_rows, "organization_id"))
    } else {
        Default::default()
    };
    let carried = |sums: &BTreeMap<String, f64>, id: &str| sums.get(id).copied().unwrap_or(0.0);
    let carried_key = |key: &Map<String, Value>| if carry { number(key, "spend").unwrap_or(0.0) } else { 0.0 };
    let mut balances: Vec<UsageRecord> = Vec::new();
    let now = u64::try_from(sluice_control_plane::store::now_ms()).unwrap_or(0);

    let budgets: BTreeMap<String, Map<String, Value>> = rows(&pool, "LiteLLM_BudgetTable", "budget_id")
        .await?
        .into_iter()
        .filter_map(|b| Some((string(&b, "budget_id")?, b)))
        .collect();

    // LiteLLM's reusable budgets (an organization's limits are one of them too), then the end
    // users (LiteLLM's customers) that name them.
    let mut budget_service = BudgetServiceClient::new(channel.clone());
    for (id, row) in &budgets {
        if exists(budget_service.get_budget(authed(c, pb::BudgetRef { budget_id: id.clone() })?).await)? {
            report.present("budgets");
            continue;
        }
        report.unmapped("LiteLLM_BudgetTable", row, BUDGET_COLUMNS);
        let req = pb::CreateBudgetRequest { budget_id: id.clone(), limits: Some(limits(row)) };
        let refused = if dry { None } else { budget_service.create_budget(authed(c, req)?).await.err() };
        report.created("budgets", id, refused);
    }
    let mut customers = CustomerServiceClient::new(channel.clone());
    for row in rows(&pool, "LiteLLM_EndUserTable", "user_id").await? {
        let Some(id) = string(&row, "user_id") else { continue };
        if exists(customers.get_customer(authed(c, pb::CustomerRef { customer_id: id.clone() })?).await)? {
            report.present("customers");
            continue;
        }
        // An end user's spend is also its keys' (the same requests): it is not carried twice.
        let budget_id = string(&row, "budget_id");
        let max_budget = budget_id.as_ref().and_then(|b| budgets.get(b)).and_then(|b| number(b, "max_budget"));
        if report.held_back(args.reset_spent_budgets, spent_budget("customer", &id, &row, max_budget, 0.0)) {
            continue;
        }
        report.unmapped("LiteLLM_EndUserTable", &row, CUSTOMER_COLUMNS);
        let req = pb::CreateCustomerRequest {
            customer_id: id.clone(),
            alias: string(&row, "alias"),
            budget_id,
            limits: None,
            blocked: row.get("blocked").and_then(Value::as_bool) == Some(true),
        };
        let refused = if dry { None } else { customers.create_customer(authed(c, req)?).await.err() };
        report.created("customers", &id, refused);
    }

    for row in rows(&pool, "LiteLLM_OrganizationTable", "organization_id").await? {
        let Some(id) = string(&row, "organization_id") else { continue };
        let budget = row.get("budget_id").and_then(Value::as_str).and_then(|b| budgets.get(b));
        let budget_limits = budget.map(limits).unwrap_or_default();
        if exists(orgs.get_organization(authed(c, pb::OrganizationRef { organization_id: id.clone() })?).await)? {
            report.present("organizations");
            continue;
        }
        let why = spent_budget("organization", &id, &row, budget_limits.max_budget, carried(&by_org, &id));
        if report.held_back(args.reset_spent_budgets, why) {
            continue;
        }
        report.unmapped("LiteLLM_OrganizationTable", &row, ORG_COLUMNS);
        let req = pb::CreateOrganizationRequest {
            organization_id: id.clone(),
            organization_alias: string(&row, "organization_alias"),
            models: models(&row),
            limits: Some(budget_limits),
            metadata_json: metadata(&row),
        };
        let refused = if dry { None } else { orgs.create_organization(authed(c, req)?).await.err() };
        if report.created("organizations", &id, refused) {
            planned.orgs.push(id);
        }
    }

    for row in rows(&pool, "LiteLLM_UserTable", "user_id").await? {
        let Some(id) = string(&row, "user_id") else { continue };
        if exists(users.get_user(authed(c, pb::UserRef { user_id: id.clone() })?).await)? {
            report.present("users");
            continue;
        }
        let why = spent_budget("user", &id, &row, number(&row, "max_budget"), carried(&by_user, &id));
        if report.held_back(args.reset_spent_budgets, why) {
            continue;
        }
        report.unmapped("LiteLLM_UserTable", &row, USER_COLUMNS);
        let req = pb::CreateUserRequest {
            user_id: id.clone(),
            user_email: string(&row, "user_email"),
            user_role: user_role(row.get("user_role").and_then(Value::as_str)) as i32,
            organization_id: string(&row, "organization_id"),
            models: models(&row),
            limits: Some(limits(&row)),
            metadata_json: metadata(&row),
        };
        let refused = if dry { None } else { users.create_user(authed(c, req)?).await.err() };
        if report.created("users", &id, refused) {
            planned.users.push(id);
        }
    }

    for row in rows(&pool, "LiteLLM_TeamTable", "team_id").await? {
        let Some(id) = string(&row, "team_id") else { continue };
        if exists(teams.get_team(authed(c, pb::TeamRef { team_id: id.clone() })?).await)? {
            report.present("teams");
            continue;
        }
        let why = spent_budget("team", &id, &row, number(&row, "max_budget"), carried(&by_team, &id));
        if report.held_back(args.reset_spent_budgets, why) {
            continue;
        }
        report.unmapped("LiteLLM_TeamTable", &row, TEAM_COLUMNS);
        let req = pb::CreateTeamRequest {
            team_id: id.clone(),
            team_alias: string(&row, "team_alias"),
            organization_id: string(&row, "organization_id"),
            models: models(&row),
            limits: Some(limits(&row)),
            member_max_budget: None,
            metadata_json: metadata(&row),
            members: members(&row),
        };
        let refused = if dry { None } else { teams.create_team(authed(c, req)?).await.err() };
        if !report.created("teams", &id, refused) {
            continue;
        }
        if !dry && row.get("blocked").and_then(Value::as_bool) == Some(true) {
            teams.block_team(authed(c, pb::TeamRef { team_id: id.clone() })?).await.map_err(err)?;
        }
        planned.teams.push(id);
    }

    for row in key_rows {
        let Some(token) = string(&row, "token") else { continue };
        let shown = string(&row, "key_alias").or_else(|| string(&row, "key_name")).unwrap_or_default();
        let why = spent_budget("key", &shown, &row, number(&row, "max_budget"), carried_key(&row));
        if report.held_back(args.reset_spent_budgets, why) {
            continue;
        }
        // LiteLLM keeps a key's tags in its metadata.
        let tags = strings(row.get("metadata").and_then(|m| m.get("tags")));
        let digest = token.to_ascii_lowercase();
        let spec = pb::KeySpec {
            key_alias: string(&row, "key_alias"),
            user_id: string(&row, "user_id"),
            team_id: string(&row, "team_id"),
            organization_id: string(&row, "organization_id"),
            models: models(&row),
            limits: Some(limits(&row)),
            model_limits: None,
            allowed_routes: strings(row.get("allowed_routes")),
            metadata_json: metadata(&row),
            tags,
            key_type: key_type(row.get("key_type").and_then(Value::as_str)) as i32,
            duration: None,
            blocked: row.get("blocked").and_then(Value::as_bool) == Some(true),
            allowed_ips: Vec::new(),
        };
        let req = pb::ImportKeyRequest {
            token_sha256: token,
            spec: Some(spec),
            expires_at: string(&row, "expires").map(utc),
            key_name: string(&row, "key_name"),
            dry_run: dry,
        };
        // A dry run cannot ask about a key whose owner it would create (not there yet).
        let owner_planned = planned.owns(&row);
        let spend = number(&row, "spend").unwrap_or(0.0);
        if dry && owner_planned {
            report.unmapped("LiteLLM_VerificationToken", &row, KEY_COLUMNS);
            report.created("keys", &shown, None);
            if carry && spend > 0.0 {
                balances.push(opening_balance(&digest, "", spend, now));
            }
            continue;
        }
        let imported = match keys.import_key(authed(c, req)?).await {
            Ok(answer) => answer.into_inner(),
            Err(refused) => {
                report.created("keys", &shown, Some(refused));
                continue;
            }
        };
        if imported.created {
            report.unmapped("LiteLLM_VerificationToken", &row, KEY_COLUMNS);
            report.created("keys", &shown, None);
        } else {
            report.present("keys");
        }
        // Sent for a key found imported too: a run that stopped before its balances were
        // shipped is finished by the next; the control plane counts each record once.
        if let (true, Some(key)) = (carry, imported.info.as_ref().filter(|_| spend > 0.0)) {
            balances.push(opening_balance(&digest, &key.key_id, spend, now));
        }
    }
    // Deployments LiteLLM stored (`store_model_in_db`) hold their provider keys, encrypted with
    // LiteLLM's salt key; Sluice takes keys from the environment only, so each is named for
    // the operator to add with its key in a variable.
    for row in rows(&pool, "LiteLLM_ProxyModelTable", "model_id").await? {
        let name = string(&row, "model_name").unwrap_or_default();
        let id = string(&row, "model_id").unwrap_or_default();
        report.skipped.push(format!(
            "deployment {name} ({id}): not imported: LiteLLM stored its provider key in its database; add it to \
             config.yaml (or `sluice model create`) with `api_key: os.environ/NAME`"
        ));
    }
    let (count, total) = (balances.len(), balances.iter().map(|r| r.cost_usd).sum::<f64>());
    if dry && count > 0 {
        println!("spend to carry: {count} key balance(s), ${total:.6} in all");
    } else if count > 0 {
        let mut usage = UsageServiceClient::new(usage_import::channel(&args.data_plane).await?);
        let answer = usage
            .report(ReportUsageRequest { records: balances })
            .await
            .map_err(|s| format!("the control plane refused the opening balances ({:?}): {}", s.code(), s.message()))?
            .into_inner();
        println!(
            "spend carried: {count} key balance(s), ${total:.6} in all ({} new, {} carried before)",
            answer.accepted, answer.duplicates
        );
    } else if !carry {
        println!("spend: not carried (no --xds); budgets of imported objects count from $0");
    }
    report.print(dry);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn prismas_zoneless_times_are_utc() {
        assert_eq!(utc("2024-01-01T00:00:00".into()), "2024-01-01T00:00:00Z");
        assert_eq!(utc("2024-01-01T00:00:00.123".into()), "2024-01-01T00:00:00.123Z");
        assert_eq!(utc("2024-01-01T00:00:00Z".into()), "2024-01-01T00:00:00Z");
        assert_eq!(utc("2024-01-01T01:00:00+01:00".into()), "2024-01-01T01:00:00+01:00");
    }

    #[test]
    fn litellms_every_model_names_are_sluices_empty_list() {
        assert!(models(&row(json!({"models": ["all-team-models"]}))).is_empty());
        assert_eq!(models(&row(json!({"models": ["gpt-4o", "claude"]}))), ["gpt-4o", "claude"]);
        assert!(models(&row(json!({}))).is_empty());
    }

    #[test]
    fn only_columns_set_beyond_their_default_are_reported() {
        let mut report = Report::default();
        let key = row(json!({"token": "t", "aliases": {}, "tpd_limit": null, "auto_rotate": false,
                              "permissions": {"a": 1}, "policies": ["p"], "rotation_count": 0}));
        report.unmapped("K", &key, &["token"]);
        let reported: Vec<&str> = report.not_imported.keys().map(String::as_str).collect();
        assert_eq!(reported, ["K.permissions", "K.policies"]);
    }

    #[test]
    fn a_budget_with_spend_is_not_restarted_silently() {
        let spent = row(json!({"spend": 4.5}));
        assert!(spent_budget("key", "k", &spent, Some(10.0), 0.0).is_some_and(|why| why.contains("$4.500000")));
        assert!(spent_budget("key", "k", &spent, None, 0.0).is_none(), "no budget: nothing restarts");
        assert!(spent_budget("key", "k", &row(json!({"spend": 0.0})), Some(10.0), 0.0).is_none());
        // Carried by its keys' balances, to the cent: nothing restarts.
        assert!(spent_budget("team", "t", &spent, Some(10.0), 4.495).is_none());
        assert!(spent_budget("team", "t", &spent, Some(10.0), 4.0).is_some_and(|why| why.contains("$0.500000")));
    }
}
