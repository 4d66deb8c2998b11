//! LiteLLM's `config.yaml` shape → [`GatewayConfig`], plus the upstream endpoints Envoy needs.
//!
//! The YAML is parsed into a `serde_json::Value` by the caller (core stays free of YAML).
//! Every key Sluice does not enforce is an error naming it (a setting that would be silently
//! ignored is refused), as are unknown fields in Sluice's own `keys:`, `teams:` and `customers:` sections.
//! Secrets are never copied into warnings, errors or the output: `os.environ/NAME` values are
//! kept as names (provider keys) or hashed (the master key).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::cache;
use crate::config::{
    CompiledConfig, ConfigError, DEFAULT_MAX_REQUEST_BODY_BYTES, DEFAULT_MAX_RESPONSE_SCAN_BYTES, Deployment,
    GatewayConfig, GroupAlias, KeyConfig, ModelMode, Provider, ProxyBudget, RoutingStrategy, SCHEMA_VERSION,
    TeamConfig, path_segment_byte,
};
use crate::cooldown::CooldownPolicy;
use crate::cost::Pricing;
use crate::customers::CustomerConfig;
use crate::fallbacks::FallbackRule;
use crate::keys::check_master_key;
use crate::price_catalog;
use crate::providers;
use crate::retries::{self, RetryPolicy, RetryPolicyCounts};
use crate::routing::LatencySettings;
use crate::routing::shuffle_weight;
use crate::time::BudgetDuration;

pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 600;
/// LiteLLM's `health_check_interval` when `background_health_checks` is on without one.
pub const DEFAULT_HEALTH_CHECK_INTERVAL_MS: u64 = 300_000;

/// What to do with a request when the filter itself fails (a wasm trap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    FailClosed,
    FailOpen,
    FailReload,
}

/// Where a deployment's Envoy cluster connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub cluster: String,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Requests are signed by Envoy (`aws_request_signing` on the cluster) for this AWS
    /// region: Bedrock. The credentials are Envoy's own (its AWS credential chain).
    pub aws_region: Option<String>,
    /// Vertex AI: requests carry an OAuth access token minted from these credentials by the
    /// control plane and set by Envoy from SDS (so standalone mode cannot serve it).
    pub google_credentials: Option<GoogleCredentials>,
    /// Azure OpenAI with an Entra ID application instead of a key: Envoy fetches its tokens.
    pub entra_client: Option<EntraClient>,
}

/// An Azure OpenAI deployment's Entra ID application (LiteLLM's `tenant_id`, `client_id`,
/// `client_secret`, `azure_scope`): Envoy's OAuth 2 credential injector fetches access tokens
/// with the client-credentials grant (and refreshes them) and sends them as `Authorization:
/// Bearer`, the secret reaching it over SDS, so standalone mode cannot serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraClient {
    pub tenant_id: String,
    pub client_id: String,
    /// The variable holding the client secret (`os.environ/NAME`; never a literal).
    pub client_secret_env: String,
    pub scope: String,
    /// Entra ID's token service: `AZURE_AUTHORITY_HOST` (a sovereign cloud's), else Microsoft's.
    pub authority: String,
}

impl EntraClient {
    /// The token service as a cluster to reach it by, and the tenant's token endpoint.
    pub fn token_service(&self) -> Result<(Upstream, String), String> {
        let (https, host, port, path) =
            parse_api_base(&self.authority).map_err(|e| format!("AZURE_AUTHORITY_HOST {:?}: {e}", self.authority))?;
        let uri = format!("{}{path}/{}/oauth2/v2.0/token", origin_of(https, &host, port), self.tenant_id);
        let cluster = cluster_name(&format!("entra-{host}-{port}"));
        let upstream =
            Upstream { cluster, https, host, port, aws_region: None, google_credentials: None, entra_client: None };
        Ok((upstream, uri))
    }

    /// The SDS secret holding the client secret of the deployment whose cluster is `cluster`.
    pub fn secret_name(cluster: &str) -> String {
        format!("sluice-entra-{cluster}")
    }
}

/// The scope LiteLLM asks Entra ID for when `azure_scope` (or `AZURE_SCOPE`) does not say.
pub const AZURE_DEFAULT_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Entra ID's token service when `AZURE_AUTHORITY_HOST` does not name another (a sovereign
/// cloud's), as LiteLLM and Azure's SDKs read it.
pub const AZURE_DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// Where a Vertex AI deployment's access tokens come from (LiteLLM's `vertex_credentials`):
/// a service account's (or `gcloud auth application-default login`'s) JSON, by file or by
/// environment variable, else Google's application default credentials. Only names and
/// paths: the JSON holds a private key, so config.yaml never carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GoogleCredentials {
    /// The JSON's path.
    File(String),
    /// `os.environ/NAME`: the variable holds the JSON itself or its path.
    Env(String),
    /// `GOOGLE_APPLICATION_CREDENTIALS`' file, else the metadata server (GKE's workload
    /// identity, a GCE or Cloud Run service account).
    ApplicationDefault,
}

/// model_info's long-context prices, LiteLLM's names (the order `CatalogPrice`'s fields take).
const LONG_CONTEXT_PRICES: [&str; 6] = [
    "input_cost_per_token_above_200k_tokens",
    "output_cost_per_token_above_200k_tokens",
    "cache_read_input_token_cost_above_200k_tokens",
    "cache_creation_input_token_cost_above_200k_tokens",
    "input_cost_per_token_above_128k_tokens",
    "output_cost_per_token_above_128k_tokens",
];

/// Vertex AI's location when neither the entry nor the environment names one (LiteLLM's).
pub const VERTEX_DEFAULT_LOCATION: &str = "us-central1";

/// Everything standalone mode needs to generate Envoy's bootstrap.
#[derive(Debug, Clone)]
pub struct Standalone {
    pub gateway: GatewayConfig,
    /// One per deployment, in the same order.
    pub upstreams: Vec<Upstream>,
    pub request_timeout_secs: u64,
    pub failure_policy: FailurePolicy,
    /// `general_settings.master_key` is written in config.yaml itself: it cannot reach a
    /// standalone Envoy without being written into Envoy's config too, so `sluice envoy-config`
    /// refuses it (the control plane only warns: it keeps the key to itself).
    pub master_key_literal: bool,
    pub warnings: Vec<String>,
}

struct Ctx<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<String>,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    /// Every key Sluice does not enforce is an error, never a warning: a setting that is
    /// silently not applied (a budget, a fallback, a callback) is worse than a refusal.
    fn refuse_unsupported(&mut self, path: &str, map: &Map<String, Value>, supported: &[&str]) {
        for key in map.keys().filter(|k| !supported.contains(&k.as_str())) {
            let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            self.error(format!("{at}: not supported by Sluice; remove it (supported here: {})", supported.join(", ")));
        }
    }

    fn error(&mut self, message: String) {
        self.errors.push(ConfigError(message));
    }
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    v.and_then(|v| v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64)))
}

fn as_f64(v: Option<&Value>) -> Option<f64> {
    v.and_then(|v| v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())))
}

/// `https://host`, with the port only where it is not the scheme's own (IPv6 in brackets).
fn origin_of(https: bool, host: &str, port: u16) -> String {
    let scheme = if https { "https" } else { "http" };
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    if port == if https { 443 } else { 80 } {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// Parses an `api_base` URL: scheme, host (IPv6 in brackets), optional port, path.
pub fn parse_api_base(url: &str) -> Result<(bool, String, u16, String), String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("api_base must start with http:// or https://".into());
    };
    if rest.contains(['?', '#']) {
        return Err("api_base must not have a query or fragment".into());
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err("api_base must not carry credentials (user@host); use api_key".into());
    }
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unterminated IPv6 address in api_base")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("invalid port {p:?} in api_base"))?,
            None if after.is_empty() => default_port,
            None => return Err("invalid api_base authority".into()),
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, p)) => (host.to_owned(), p.parse().map_err(|_| format!("invalid port {p:?} in api_base"))?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_')) {
        return Err(format!("invalid host {host:?} in api_base"));
    }
    if port == 0 {
        return Err("api_base port must not be 0".into());
    }
    let path = path.trim_end_matches('/').to_owned();
    Ok((https, host, port, path))
}

/// `os.environ/NAME` → Some(NAME): LiteLLM's way to name a secret instead of writing it.
pub fn env_ref(value: &str) -> Option<&str> {
    value.strip_prefix("os.environ/")
}

/// A deployment's Envoy cluster: `sluice_<readable id>_<CRC32 of the exact id>`. The readable
/// part folds case and punctuation and is cut at 100 characters, so ids differing only there
/// still get different names, and no such name can be the bootstrap's own `sluice_control_plane`
/// (its last part is not 8 hex digits).
pub fn cluster_name(id: &str) -> String {
    let mut s: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    s.truncate(100);
    format!("sluice_{s}_{:08x}", crc32fast::hash(id.as_bytes()))
}

/// Converts a LiteLLM config document. Errors name the entry; all are reported at once.
pub fn from_litellm(doc: &Value, env: &dyn Fn(&str) -> Option<String>) -> Result<Standalone, Vec<ConfigError>> {
    let mut cx = Ctx { env, warnings: Vec::new(), errors: Vec::new() };
    let Some(root) = doc.as_object() else {
        return Err(vec![ConfigError("the config must be a YAML mapping (model_list, router_settings, …)".into())]);
    };
    cx.refuse_unsupported(
        "",
        root,
        &["model_list", "router_settings", "litellm_settings", "general_settings", "keys", "teams", "customers"],
    );

    let mut request_timeout_secs = DEFAULT_REQUEST_TIMEOUT_SECS;
    let mut routing_strategy = RoutingStrategy::SimpleShuffle;
    let mut drop_params = false;
    let mut aliases = Vec::new();
    // Retries and the per-attempt timeout: litellm_settings first, router_settings wins.
    let mut num_retries = 0;
    let mut retry_counts = RetryPolicyCounts::default();
    let mut timeout_ms = None;
    let mut cooldown = CooldownPolicy::default();
    // Fallbacks: litellm_settings first, router_settings wins (each list whole).
    let mut fallbacks = FallbackSettings::default();
    let mut pre_call_checks = false;
    let (mut proxy_budget, mut end_user_max_budget) = (None, None);
    let mut cache = None;
    if let Some(settings) = root.get("litellm_settings").and_then(Value::as_object) {
        cx.refuse_unsupported(
            "litellm_settings",
            settings,
            &[
                "request_timeout",
                "drop_params",
                "num_retries",
                "fallbacks",
                "default_fallbacks",
                "context_window_fallbacks",
                "content_policy_fallbacks",
                "max_budget",
                "budget_duration",
                "max_end_user_budget",
                "cache",
                "cache_params",
                // Refused below with the reason (`sluice serve` sends them).
                "callbacks",
                "success_callback",
                "failure_callback",
            ],
        );
        for name in
            ["callbacks", "success_callback", "failure_callback"].into_iter().filter(|n| settings.contains_key(*n))
        {
            cx.error(format!(
                "litellm_settings.{name}: logging callbacks are sent by `sluice serve` from the usage it ingests \
                 (generic_api); a standalone Envoy has nothing to send them: run the control plane, or remove it"
            ));
        }
        match cache_settings(settings) {
            Ok(settings) => cache = settings,
            Err(errors) => errors.into_iter().for_each(|e| cx.error(e)),
        }
        match budget_settings(settings) {
            Ok(budgets) => (proxy_budget, end_user_max_budget) = budgets,
            Err(errors) => errors.into_iter().for_each(|e| cx.error(e)),
        }
        fallback_settings(&mut cx, "litellm_settings", settings, &mut fallbacks);
        if let Some(t) = seconds(&mut cx, "litellm_settings.request_timeout", settings.get("request_timeout")) {
            request_timeout_secs = t.div_ceil(1000);
            timeout_ms = Some(t);
        }
        drop_params = flag(&mut cx, "litellm_settings.drop_params", settings.get("drop_params")).unwrap_or(false);
        num_retries = retry_count(&mut cx, "litellm_settings.num_retries", settings.get("num_retries")).unwrap_or(0);
    }
    if let Some(settings) = root.get("router_settings").and_then(Value::as_object) {
        cx.refuse_unsupported(
            "router_settings",
            settings,
            &[
                "routing_strategy",
                "routing_strategy_args",
                "timeout",
                "num_retries",
                "retry_policy",
                "allowed_fails",
                "cooldown_time",
                "disable_cooldowns",
                "model_group_alias",
                "fallbacks",
                "default_fallbacks",
                "context_window_fallbacks",
                "content_policy_fallbacks",
                "enable_pre_call_checks",
                // `sluice serve`'s shared state (read there, not here).
                "redis_url",
                "redis_host",
                "redis_port",
                "redis_password",
            ],
        );
        aliases = model_group_alias(&mut cx, settings.get("model_group_alias"));
        fallback_settings(&mut cx, "router_settings", settings, &mut fallbacks);
        pre_call_checks =
            flag(&mut cx, "router_settings.enable_pre_call_checks", settings.get("enable_pre_call_checks"))
                .unwrap_or(false);
        if settings.keys().any(|k| k.starts_with("redis_")) {
            cx.warnings.push(
                "router_settings.redis_*: read by `sluice serve` (xDS mode); a standalone Envoy counts in its own shared memory"
                    .into(),
            );
        }
        if let Some(t) = seconds(&mut cx, "router_settings.timeout", settings.get("timeout")) {
            request_timeout_secs = t.div_ceil(1000);
            timeout_ms = Some(t);
        }
        if let Some(n) = retry_count(&mut cx, "router_settings.num_retries", settings.get("num_retries")) {
            num_retries = n;
        }
        retry_counts = retry_policy(&mut cx, settings.get("retry_policy"));
        if let Some(n) = whole(&mut cx, "router_settings.allowed_fails", settings.get("allowed_fails")) {
            cooldown.allowed_fails = n;
        }
        if let Some(ms) = seconds(&mut cx, "router_settings.cooldown_time", settings.get("cooldown_time")) {
            cooldown.cooldown_ms = ms;
        }
        if flag(&mut cx, "router_settings.disable_cooldowns", settings.get("disable_cooldowns")) == Some(true) {
            cooldown.enabled = false;
        }
        let args = settings.get("routing_strategy_args").filter(|v| !v.is_null());
        match settings.get("routing_strategy").and_then(Value::as_str) {
            None | Some("simple-shuffle") => routing_strategy = RoutingStrategy::SimpleShuffle,
            Some("least-busy") => routing_strategy = RoutingStrategy::LeastBusy,
            Some("cost-based-routing") => routing_strategy = RoutingStrategy::CostBased,
            Some("latency-based-routing") => {
                routing_strategy = RoutingStrategy::LatencyBased(latency_settings(&mut cx, args));
            }
            Some("usage-based-routing-v2") => routing_strategy = RoutingStrategy::UsageBasedV2,
            Some("usage-based-routing") => cx.error(
                "router_settings.routing_strategy: usage-based-routing is LiteLLM's deprecated first version; use \
                 usage-based-routing-v2"
                    .into(),
            ),
            Some(other) => cx.error(format!("router_settings.routing_strategy: unknown strategy {other:?}")),
        }
        if args.is_some() && !matches!(routing_strategy, RoutingStrategy::LatencyBased(_)) {
            cx.error("router_settings.routing_strategy_args: only latency-based-routing takes arguments".into());
        }
    }

    let mut master_key_env = None;
    let mut master_key_literal = false;
    let mut max_request_body_bytes = DEFAULT_MAX_REQUEST_BODY_BYTES;
    let mut failure_policy = FailurePolicy::FailClosed;
    let mut health_check_interval_ms = None;
    let mut allowed_ips = Vec::new();
    if let Some(settings) = root.get("general_settings").and_then(Value::as_object) {
        cx.refuse_unsupported(
            "general_settings",
            settings,
            &[
                "master_key",
                "database_url",
                "max_request_size_mb",
                "sluice_failure_policy",
                "background_health_checks",
                "health_check_interval",
                "allowed_ips",
            ],
        );
        match settings.get("allowed_ips").filter(|v| !v.is_null()) {
            None => {}
            Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
                allowed_ips = list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
            }
            Some(other) => cx.error(format!("general_settings.allowed_ips: must be a list of CIDRs, not {other}")),
        }
        // LiteLLM's default interval is 300 s; the interval alone (checks off) changes nothing.
        let interval =
            seconds(&mut cx, "general_settings.health_check_interval", settings.get("health_check_interval"));
        if interval.is_some_and(|ms| ms < 1_000) {
            cx.error("general_settings.health_check_interval: must be at least one second".into());
        }
        let background =
            flag(&mut cx, "general_settings.background_health_checks", settings.get("background_health_checks"));
        if background == Some(true) {
            health_check_interval_ms = Some(interval.unwrap_or(DEFAULT_HEALTH_CHECK_INTERVAL_MS));
        }
        if settings.contains_key("database_url") {
            cx.warnings.push("general_settings.database_url: standalone mode keeps no database; spend lives in Envoy's shared memory".into());
        }
        match settings.get("master_key") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                let value = match env_ref(s) {
                    Some(name) => (cx.env)(name).or_else(|| {
                        cx.error(format!("general_settings.master_key: environment variable {name} is not set"));
                        None
                    }),
                    None => {
                        cx.warnings.push("general_settings.master_key is written in config.yaml; read it from the environment (os.environ/NAME) or a mounted secret instead".into());
                        master_key_literal = true;
                        Some(s.clone())
                    }
                };
                let value = value.filter(|v| !v.is_empty());
                if let Some(Err(e)) = value.as_deref().map(check_master_key) {
                    // For local development only: LiteLLM's docs use `sk-1234`.
                    if (cx.env)("SLUICE_ALLOW_WEAK_MASTER_KEY")
                        .is_some_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
                    {
                        cx.warnings
                            .push(format!("general_settings.master_key: {e} (accepted: SLUICE_ALLOW_WEAK_MASTER_KEY)"));
                    } else {
                        cx.error(format!("general_settings.master_key: {e}; for local development only, set SLUICE_ALLOW_WEAK_MASTER_KEY=1"));
                    }
                }
                if value.is_some() && !master_key_literal {
                    master_key_env = env_ref(s).map(str::to_owned);
                }
            }
            Some(_) => cx.error("general_settings.master_key must be a string".into()),
        }
        if let Some(mb) = as_f64(settings.get("max_request_size_mb")) {
            if mb > 0.0 && mb.is_finite() {
                max_request_body_bytes = (mb * 1024.0 * 1024.0) as u64;
            } else {
                cx.error("general_settings.max_request_size_mb must be a positive number".into());
            }
        }
        match settings.get("sluice_failure_policy").and_then(Value::as_str) {
            None | Some("fail_closed") => {}
            Some("fail_open") => failure_policy = FailurePolicy::FailOpen,
            Some("fail_reload") => failure_policy = FailurePolicy::FailReload,
            Some(other) => cx.error(format!(
                "general_settings.sluice_failure_policy: {other:?} is not fail_closed, fail_open or fail_reload"
            )),
        }
    }

    let retries = retries::resolve(num_retries, &retry_counts).unwrap_or_else(|e| {
        cx.error(format!("router_settings.{e}"));
        RetryPolicy::default()
    });
    let (deployments, upstreams) = model_list(&mut cx, root.get("model_list"), drop_params);
    let keys: Vec<KeyConfig> = section(&mut cx, root.get("keys"), "keys");
    let teams: Vec<TeamConfig> = section(&mut cx, root.get("teams"), "teams");
    let customers: Vec<CustomerConfig> = section(&mut cx, root.get("customers"), "customers");

    let gateway = GatewayConfig {
        schema_version: SCHEMA_VERSION,
        master_key_env,
        max_request_body_bytes,
        max_response_scan_bytes: DEFAULT_MAX_RESPONSE_SCAN_BYTES,
        routing_strategy,
        deployments,
        keys,
        teams,
        customers,
        end_user_max_budget,
        proxy_budget,
        allowed_ips,
        key_lookup: None,
        model_group_aliases: aliases,
        retries,
        timeout_ms,
        route_timeout_ms: request_timeout_secs.saturating_mul(1000),
        cooldown,
        health_check_interval_ms,
        fallbacks: fallbacks.fallbacks,
        default_fallbacks: fallbacks.default_fallbacks,
        context_window_fallbacks: fallbacks.context_window_fallbacks,
        content_policy_fallbacks: fallbacks.content_policy_fallbacks,
        pre_call_checks,
        cache,
    };
    if cx.errors.is_empty() {
        // The filter's own validation: what it would refuse, refuse here.
        if let Err(errors) = CompiledConfig::compile(gateway.clone()) {
            cx.errors.extend(errors);
        }
    }
    if !cx.errors.is_empty() {
        return Err(cx.errors);
    }
    for key in &gateway.keys {
        for model in &key.models {
            let known = model == "*"
                || model == "all-proxy-models"
                || model.ends_with('*')
                || gateway.deployments.iter().any(|d| &d.model_name == model);
            if !known {
                cx.warnings.push(format!(
                    "key {:?}: model {model:?} is not in model_list",
                    key.key_alias.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    Ok(Standalone {
        gateway,
        upstreams,
        request_timeout_secs,
        failure_policy,
        master_key_literal,
        warnings: cx.warnings,
    })
}

fn section<T: serde::de::DeserializeOwned>(cx: &mut Ctx<'_>, value: Option<&Value>, name: &str) -> Vec<T> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match serde_json::from_value::<T>(item.clone()) {
                Ok(v) => Some(v),
                Err(e) => {
                    cx.error(format!("{name}[{i}]: {e}"));
                    None
                }
            })
            .collect(),
        Some(_) => {
            cx.error(format!("{name} must be a list"));
            Vec::new()
        }
    }
}

/// `litellm_settings`' budgets: the gateway's own (`max_budget` with `budget_duration`; 0 is
/// none, as in LiteLLM) and every end user's without a customer entry (`max_end_user_budget`).
/// The control plane reads them with this too (`sluice serve` counts them across the fleet).
pub fn budget_settings(settings: &Map<String, Value>) -> Result<(Option<ProxyBudget>, Option<f64>), Vec<String>> {
    let mut errors = Vec::new();
    let mut usd = |name: &str| {
        let value = settings.get(name).filter(|v| !v.is_null())?;
        match value.as_f64().filter(|v| v.is_finite() && *v >= 0.0) {
            Some(v) => Some(v),
            None => {
                errors.push(format!("litellm_settings.{name}: must be a number of USD, 0 or more, not {value}"));
                None
            }
        }
    };
    let max_budget = usd("max_budget").filter(|b| *b > 0.0);
    let end_user = usd("max_end_user_budget");
    let duration = match settings.get("budget_duration").filter(|v| !v.is_null()) {
        None => None,
        Some(value) => {
            let parsed = value.as_str().and_then(BudgetDuration::parse);
            if parsed.is_none() {
                errors.push(format!(
                    "litellm_settings.budget_duration: {value} is not a duration (30s, 10m, 1h, 1d, 7d, 30d, 1mo)"
                ));
            } else if max_budget.is_none() {
                errors.push("litellm_settings.budget_duration: needs litellm_settings.max_budget".into());
            }
            parsed
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let proxy = max_budget.map(|max_budget| ProxyBudget { max_budget, budget_duration: duration, budget_spent: false });
    Ok((proxy, end_user))
}

/// `litellm_settings.cache` and `cache_params`: the response cache, or None when off. Every
/// member is applied or refused: the cache types Sluice does not have (Redis and the semantic
/// ones for now, S3, GCS, disk) are refused with the reason, not quietly run in memory.
pub fn cache_settings(settings: &Map<String, Value>) -> Result<Option<cache::CacheConfig>, Vec<String>> {
    let mut errors = Vec::new();
    let on = match settings.get("cache").filter(|v| !v.is_null()) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            errors.push(format!("litellm_settings.cache: must be true or false, not {other}"));
            false
        }
    };
    let empty = Map::new();
    let params = match settings.get("cache_params").filter(|v| !v.is_null()) {
        None => &empty,
        Some(Value::Object(map)) => map,
        Some(other) => return Err(vec![format!("litellm_settings.cache_params: must be a mapping, not {other}")]),
    };
    const SUPPORTED: [&str; 10] = [
        "type",
        "mode",
        "ttl",
        "default_in_memory_ttl",
        "namespace",
        "supported_call_types",
        "max_messages",
        "semantic_cache_scope",
        "max_size_in_memory",
        "max_size_per_item",
    ];
    for key in params.keys().filter(|k| !SUPPORTED.contains(&k.as_str()) && k.as_str() != "scope") {
        errors.push(format!(
            "litellm_settings.cache_params.{key}: not supported by Sluice; remove it (supported here: {}, scope)",
            SUPPORTED.join(", ")
        ));
    }
    let at = |name: &str| format!("litellm_settings.cache_params.{name}");
    match params.get("type").filter(|v| !v.is_null()) {
        None => {}
        Some(Value::String(t)) if t == "local" => {}
        Some(Value::String(t))
            if ["redis", "redis-semantic", "valkey-semantic", "qdrant-semantic", "s3", "gcs", "azure-blob", "disk"]
                .contains(&t.as_str()) =>
        {
            errors.push(format!(
                "{}: {t:?} is not supported by Sluice yet; use \"local\" (each Envoy keeps answers in its own shared memory)",
                at("type")
            ));
        }
        Some(other) => errors.push(format!("{}: {other} is not a cache type (local, redis, …)", at("type"))),
    }
    let mode = match params.get("mode").filter(|v| !v.is_null()).map(|v| v.as_str()) {
        None | Some(Some("default_on")) => cache::CacheMode::DefaultOn,
        Some(Some("default_off")) => cache::CacheMode::DefaultOff,
        Some(_) => {
            errors.push(format!("{}: must be default_on or default_off", at("mode")));
            cache::CacheMode::DefaultOn
        }
    };
    let mut seconds = |name: &str| -> Option<u64> {
        let value = params.get(name).filter(|v| !v.is_null())?;
        let secs = value.as_f64().filter(|s| s.is_finite() && *s > 0.0 && *s <= 365.0 * 86_400.0);
        if secs.is_none() {
            errors.push(format!("{}: must be a number of seconds above 0 (at most a year), not {value}", at(name)));
        }
        secs.map(|s| s.ceil() as u64)
    };
    let ttl_secs = seconds("default_in_memory_ttl").or(seconds("ttl")).unwrap_or(cache::DEFAULT_TTL_SECS);
    let namespace = match params.get("namespace").filter(|v| !v.is_null()) {
        None => None,
        Some(Value::String(ns)) => {
            cache::checked_namespace(ns.clone()).map_err(|d| errors.push(format!("{}: {d}", at("namespace")))).ok()
        }
        Some(other) => {
            errors.push(format!("{}: must be a string, not {other}", at("namespace")));
            None
        }
    };
    let routes = match params.get("supported_call_types").filter(|v| !v.is_null()) {
        None => cache::default_routes(),
        Some(Value::Array(types)) => {
            let mut routes: Vec<String> = Vec::new();
            for t in types {
                match t.as_str().and_then(cache::call_type) {
                    Some(cache::CallType::Route(endpoint)) => {
                        let route = endpoint.route().to_owned();
                        if !routes.contains(&route) {
                            routes.push(route);
                        }
                    }
                    Some(cache::CallType::NotServed) => {}
                    None => errors.push(format!(
                        "{}: {t} is not a call type (completion, text_completion, embedding, responses, anthropic_messages, and their a- forms)",
                        at("supported_call_types")
                    )),
                }
            }
            routes
        }
        Some(other) => {
            errors.push(format!("{}: must be a list of call types, not {other}", at("supported_call_types")));
            Vec::new()
        }
    };
    let mut count = |name: &str, default: Option<u64>, max: u64| -> Option<u64> {
        let Some(value) = params.get(name) else { return default };
        if value.is_null() {
            return None;
        }
        let n = as_u64(Some(value)).filter(|n| *n >= 1 && *n <= max);
        if n.is_none() {
            errors.push(format!("{}: must be a whole number from 1 to {max}, not {value}", at(name)));
        }
        n
    };
    let max_messages = count("max_messages", Some(u64::from(cache::DEFAULT_MAX_MESSAGES)), 1_000_000);
    let max_entries = count("max_size_in_memory", Some(u64::from(cache::DEFAULT_MAX_ENTRIES)), 1_000_000);
    let max_item_kb = count("max_size_per_item", Some(cache::DEFAULT_MAX_ITEM_KB), 64 * 1024);
    let per_end_user = match params.get("semantic_cache_scope").filter(|v| !v.is_null()).map(Value::as_str) {
        None | Some(Some("key")) => false,
        Some(Some("end_user")) => true,
        Some(_) => {
            errors.push(format!("{}: must be key or end_user", at("semantic_cache_scope")));
            false
        }
    };
    let scope = match params.get("scope").filter(|v| !v.is_null()).map(Value::as_str) {
        None | Some(Some("key")) => cache::CacheScope::Key,
        Some(Some("team")) => cache::CacheScope::Team,
        Some(_) => {
            errors
                .push(format!("{}: must be key or team (who may read an answer another request stored)", at("scope")));
            cache::CacheScope::Key
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    if !on {
        if !params.is_empty() {
            return Err(vec!["litellm_settings.cache_params: set, but litellm_settings.cache is not true".into()]);
        }
        return Ok(None);
    }
    Ok(Some(cache::CacheConfig {
        mode,
        ttl_secs,
        namespace,
        routes,
        scope,
        per_end_user,
        max_messages: max_messages.map(|n| n as u32),
        max_entries: max_entries.map_or(cache::DEFAULT_MAX_ENTRIES, |n| n as u32),
        max_item_bytes: max_item_kb.unwrap_or(cache::DEFAULT_MAX_ITEM_KB).saturating_mul(1024),
    }))
}

/// A boolean setting; anything else is an error naming it.
fn flag(cx: &mut Ctx<'_>, path: &str, value: Option<&Value>) -> Option<bool> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            cx.error(format!("{path}: must be true or false, not {other}"));
            None
        }
    }
}

/// A timeout in seconds (fractions allowed), as milliseconds; anything else is an error naming it.
fn seconds(cx: &mut Ctx<'_>, path: &str, value: Option<&Value>) -> Option<u64> {
    let value = value.filter(|v| !v.is_null())?;
    let ms = value.as_f64().and_then(retries::timeout_ms);
    if ms.is_none() {
        cx.error(format!("{path}: must be a number of seconds above 0 and at most a day, not {value}"));
    }
    ms
}

/// The fallback settings, from either section.
#[derive(Default)]
struct FallbackSettings {
    fallbacks: Vec<FallbackRule>,
    default_fallbacks: Vec<String>,
    context_window_fallbacks: Vec<FallbackRule>,
    content_policy_fallbacks: Vec<FallbackRule>,
}

/// The settings that take a list of rules like `fallbacks`.
const FALLBACK_RULE_SETTINGS: [&str; 3] = ["fallbacks", "context_window_fallbacks", "content_policy_fallbacks"];

/// `fallbacks`, `context_window_fallbacks`, `content_policy_fallbacks` (each
/// `[{"gpt-4o": ["claude", "mini"]}, …]`) and `default_fallbacks` (`["mini"]`) of one section,
/// each replacing what an earlier section gave. The groups named are checked when the config
/// is compiled.
fn fallback_settings(
    cx: &mut Ctx<'_>,
    section: &str,
    settings: &serde_json::Map<String, Value>,
    found: &mut FallbackSettings,
) {
    let names = |cx: &mut Ctx<'_>, at: &str, value: &Value| -> Vec<String> {
        match value.as_array().map(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>()) {
            Some(Some(names)) => names,
            _ => {
                cx.error(format!("{at}: must be a list of model group names"));
                Vec::new()
            }
        }
    };
    for setting in FALLBACK_RULE_SETTINGS {
        let rules = match settings.get(setting) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(entries)) => {
                let mut rules = Vec::new();
                for entry in entries {
                    let Some(map) = entry.as_object().filter(|m| m.len() == 1) else {
                        cx.error(format!(
                            "{section}.{setting}: each entry is one group and its list, e.g. {{\"gpt-4o\": [\"claude\"]}}"
                        ));
                        continue;
                    };
                    for (group, to) in map {
                        let to = names(cx, &format!("{section}.{setting}.{group}"), to);
                        rules.push(FallbackRule { group: group.clone(), to });
                    }
                }
                rules
            }
            Some(_) => {
                cx.error(format!("{section}.{setting}: must be a list, e.g. [{{\"gpt-4o\": [\"claude\"]}}]"));
                continue;
            }
        };
        match setting {
            "fallbacks" => found.fallbacks = rules,
            "context_window_fallbacks" => found.context_window_fallbacks = rules,
            _ => found.content_policy_fallbacks = rules,
        }
    }
    if let Some(value) = settings.get("default_fallbacks").filter(|v| !v.is_null()) {
        found.default_fallbacks = names(cx, &format!("{section}.default_fallbacks"), value);
    }
}

/// `routing_strategy_args` of `latency-based-routing`: `lowest_latency_buffer`, `ttl` (seconds).
fn latency_settings(cx: &mut Ctx<'_>, args: Option<&Value>) -> LatencySettings {
    let mut settings = LatencySettings::default();
    let Some(args) = args else { return settings };
    let Some(map) = args.as_object() else {
        cx.error("router_settings.routing_strategy_args must be a mapping".into());
        return settings;
    };
    cx.refuse_unsupported("router_settings.routing_strategy_args", map, &["lowest_latency_buffer", "ttl"]);
    match map.get("lowest_latency_buffer").filter(|v| !v.is_null()).map(|v| v.as_f64()) {
        None => {}
        Some(Some(b)) if b.is_finite() && b >= 0.0 => settings.buffer = b,
        Some(_) => cx.error("router_settings.routing_strategy_args.lowest_latency_buffer: must be a fraction of 0 or more (0.5: within 50%)".into()),
    }
    if let Some(ms) = seconds(cx, "router_settings.routing_strategy_args.ttl", map.get("ttl")) {
        settings.ttl_ms = ms;
    }
    settings
}

/// A whole number (a count, an order); anything else is an error naming it.
fn whole(cx: &mut Ctx<'_>, path: &str, value: Option<&Value>) -> Option<u32> {
    let value = value.filter(|v| !v.is_null())?;
    let n = as_u64(Some(value)).and_then(|n| u32::try_from(n).ok());
    if n.is_none() {
        cx.error(format!("{path}: must be a whole number, not {value}"));
    }
    n
}

/// A retry count: a whole number from 0 to [`retries::MAX_RETRIES`].
fn retry_count(cx: &mut Ctx<'_>, path: &str, value: Option<&Value>) -> Option<u32> {
    let value = value.filter(|v| !v.is_null())?;
    match as_u64(Some(value)).and_then(|n| u32::try_from(n).ok()).filter(|n| *n <= retries::MAX_RETRIES) {
        Some(n) => Some(n),
        None => {
            cx.error(format!("{path}: must be a whole number from 0 to {}, not {value}", retries::MAX_RETRIES));
            None
        }
    }
}

/// `router_settings.retry_policy`: LiteLLM's error classes with a retry count each.
fn retry_policy(cx: &mut Ctx<'_>, value: Option<&Value>) -> RetryPolicyCounts {
    let mut counts = RetryPolicyCounts::default();
    let Some(value) = value.filter(|v| !v.is_null()) else { return counts };
    let Some(map) = value.as_object() else {
        cx.error("router_settings.retry_policy must be a mapping of error class to retry count".into());
        return counts;
    };
    for (class, count) in map {
        let at = format!("router_settings.retry_policy.{class}");
        if !RetryPolicyCounts::NAMES.contains(&class.as_str()) {
            cx.error(format!("{at}: not an error class (one of {})", RetryPolicyCounts::NAMES.join(", ")));
        } else if let Some(n) = retry_count(cx, &at, Some(count)) {
            counts.set(class, n);
        }
    }
    counts
}

/// `router_settings.model_group_alias`: `alias: group` or `alias: {model: group, hidden: true}`.
fn model_group_alias(cx: &mut Ctx<'_>, value: Option<&Value>) -> Vec<GroupAlias> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Vec::new() };
    let Some(map) = value.as_object() else {
        cx.error("router_settings.model_group_alias must be a mapping of alias to model group".into());
        return Vec::new();
    };
    let mut aliases = Vec::new();
    for (alias, target) in map {
        let at = format!("router_settings.model_group_alias.{alias}");
        let (group, hidden) = match target {
            Value::String(group) => (group.clone(), false),
            Value::Object(o) => {
                cx.refuse_unsupported(&at, o, &["model", "hidden"]);
                let Some(group) = o.get("model").and_then(Value::as_str) else {
                    cx.error(format!("{at}.model: the model group is required"));
                    continue;
                };
                let hidden = flag(cx, &format!("{at}.hidden"), o.get("hidden")).unwrap_or(false);
                (group.to_owned(), hidden)
            }
            _ => {
                cx.error(format!("{at}: must be a model group name or {{model, hidden}}"));
                continue;
            }
        };
        aliases.push(GroupAlias { alias: alias.clone(), group, hidden });
    }
    aliases
}

/// A string setting of a `litellm_params` entry: written there (literally or as
/// `os.environ/NAME`), else read from LiteLLM's variable for it; `None` when neither is set.
/// LiteLLM's Entra ID client credentials of an Azure deployment, if it names them: all three,
/// the secret by variable, and never beside `api_key`.
fn entra_client(cx: &mut Ctx<'_>, at: &str, params: &Map<String, Value>, provider: Provider) -> Option<EntraClient> {
    const NAMES: [&str; 4] = ["tenant_id", "client_id", "client_secret", "azure_scope"];
    let given: Vec<&str> = NAMES.into_iter().filter(|n| params.get(*n).is_some_and(|v| !v.is_null())).collect();
    if given.is_empty() {
        return None;
    }
    if provider != Provider::Azure {
        cx.error(format!("{at}: litellm_params.{} is Azure's (Entra ID); this deployment is not azure/", given[0]));
        return None;
    }
    if params.get("api_key").is_some_and(|v| !v.is_null()) {
        cx.error(format!(
            "{at}: litellm_params.api_key and Entra ID's tenant_id/client_id/client_secret: give one way to authenticate"
        ));
        return None;
    }
    if !given[..given.len().min(3)].eq(&NAMES[..3]) {
        cx.error(format!(
            "{at}: litellm_params.tenant_id, client_id and client_secret go together (Entra ID's client credentials)"
        ));
        return None;
    }
    let client_secret_env = match params.get("client_secret").and_then(Value::as_str).and_then(env_ref) {
        Some(name) => name.to_owned(),
        None => {
            // Never echo the value: it is a credential.
            cx.error(format!("{at}: litellm_params.client_secret must be os.environ/NAME; a literal secret would be visible in Envoy's config dump"));
            return None;
        }
    };
    let tenant_id = setting(cx, at, params, "tenant_id", None)?;
    let client_id = setting(cx, at, params, "client_id", None)?;
    let scope =
        setting(cx, at, params, "azure_scope", Some("AZURE_SCOPE")).unwrap_or_else(|| AZURE_DEFAULT_SCOPE.into());
    let authority = (cx.env)("AZURE_AUTHORITY_HOST").filter(|v| !v.is_empty());
    let authority = authority.as_deref().unwrap_or(AZURE_DEFAULT_AUTHORITY).trim_end_matches('/').to_owned();
    if let Err(e) = parse_api_base(&authority) {
        cx.error(format!("{at}: AZURE_AUTHORITY_HOST {authority:?}: {e}"));
        return None;
    }
    // The tenant is part of the token endpoint's path.
    if !tenant_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        cx.error(format!("{at}: litellm_params.tenant_id must be a tenant id or domain name"));
        return None;
    }
    Some(EntraClient { tenant_id, client_id, client_secret_env, scope, authority })
}

fn setting(
    cx: &mut Ctx<'_>,
    at: &str,
    params: &Map<String, Value>,
    name: &str,
    env_default: Option<&str>,
) -> Option<String> {
    match params.get(name) {
        None | Some(Value::Null) => env_default.and_then(|var| (cx.env)(var)).filter(|v| !v.is_empty()),
        Some(Value::String(s)) => match env_ref(s) {
            Some(var) => {
                let value = (cx.env)(var).filter(|v| !v.is_empty());
                if value.is_none() {
                    cx.error(format!("{at}: litellm_params.{name}: environment variable {var} is not set"));
                }
                value
            }
            None => Some(s.clone()),
        },
        Some(_) => {
            cx.error(format!("{at}: litellm_params.{name} must be a string"));
            None
        }
    }
}

/// A Vertex AI entry's particulars.
struct Vertex {
    /// Gemini's format, or Anthropic's for Claude.
    provider: Provider,
    /// `https://{location}-aiplatform.googleapis.com` (`aiplatform.googleapis.com` for `global`).
    default_base: String,
    /// `/v1/projects/{project}/locations/{location}/publishers/{google|anthropic}`.
    publisher_path: String,
    credentials: GoogleCredentials,
}

/// `vertex_ai/…`'s settings (`Some(None)` for any other provider, which may not have them;
/// `None` when the entry is refused): `vertex_project` (or `VERTEXAI_PROJECT`),
/// `vertex_location` (or `VERTEXAI_LOCATION`, else us-central1), `vertex_credentials`; the
/// model's family picks the format (Gemini, or Anthropic's for `claude-…`).
fn vertex_deployment(
    cx: &mut Ctx<'_>,
    at: &str,
    provider: Provider,
    params: &Map<String, Value>,
    info: &Map<String, Value>,
    model: &str,
) -> Option<Option<Vertex>> {
    const SETTINGS: [&str; 3] = ["vertex_project", "vertex_location", "vertex_credentials"];
    if provider != Provider::VertexGemini {
        for name in SETTINGS.iter().filter(|n| params.contains_key(**n)) {
            cx.error(format!("{at}: litellm_params.{name} is Vertex AI's; this provider has none"));
        }
        return Some(None);
    }
    let provider = if model.starts_with("claude") {
        Provider::VertexAnthropic
    } else if model.starts_with("gemini") {
        Provider::VertexGemini
    } else {
        cx.error(format!(
            "{at}: vertex_ai/{model}: Sluice serves Gemini (gemini-…) and Claude (claude-…) models on Vertex AI; \
             other Vertex model families are not supported"
        ));
        return None;
    };
    if info.get("mode").and_then(Value::as_str).is_some_and(|m| m != "chat") {
        cx.error(format!(
            "{at}: vertex_ai/ serves chat models only (model_info.mode chat); Vertex embeddings are not supported"
        ));
        return None;
    }
    // Google's names: letters, digits and '-' (project ids also take ':' and '.' for domain-scoped projects).
    let segment = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    let project = setting(cx, at, params, "vertex_project", Some("VERTEXAI_PROJECT"))
        .or_else(|| (cx.env)("VERTEX_PROJECT").filter(|v| !v.is_empty()));
    let Some(project) = project.filter(|p| segment(p)) else {
        cx.error(format!(
            "{at}: vertex_ai/ needs litellm_params.vertex_project (or VERTEXAI_PROJECT): a Google Cloud project id"
        ));
        return None;
    };
    let location = setting(cx, at, params, "vertex_location", Some("VERTEXAI_LOCATION"))
        .or_else(|| (cx.env)("VERTEX_LOCATION").filter(|v| !v.is_empty()))
        .unwrap_or_else(|| VERTEX_DEFAULT_LOCATION.to_owned());
    if !segment(&location) || location.contains([':', '.']) {
        cx.error(format!(
            "{at}: litellm_params.vertex_location is not a Google Cloud location (letters, digits and '-')"
        ));
        return None;
    }
    let credentials = match params.get("vertex_credentials") {
        None | Some(Value::Null) => GoogleCredentials::ApplicationDefault,
        Some(Value::String(s)) => match env_ref(s) {
            Some(var) => GoogleCredentials::Env(var.to_owned()),
            // A path; never JSON written into config.yaml (it holds a private key). Not echoed.
            None if s.trim_start().starts_with('{') => {
                cx.error(format!(
                    "{at}: litellm_params.vertex_credentials must be a file's path or os.environ/NAME; \
                     a service account's JSON written into config.yaml would put its private key in the config"
                ));
                return None;
            }
            None => GoogleCredentials::File(s.clone()),
        },
        Some(_) => {
            cx.error(format!("{at}: litellm_params.vertex_credentials must be a string (a path or os.environ/NAME)"));
            return None;
        }
    };
    let host = if location == "global" {
        "aiplatform.googleapis.com".to_owned()
    } else {
        format!("{location}-aiplatform.googleapis.com")
    };
    let publisher = if provider == Provider::VertexAnthropic { "anthropic" } else { "google" };
    Some(Some(Vertex {
        provider,
        default_base: format!("https://{host}"),
        publisher_path: format!("/v1/projects/{project}/locations/{location}/publishers/{publisher}"),
        credentials,
    }))
}

/// Azure OpenAI's path for a deployment: `{base}/openai/deployments/{name}` with
/// `?api-version=`, or Azure's version-less `/openai/v1` API when `api_version` is `v1`,
/// `latest` or `preview`, or `api_base` already ends in `/openai/v1`.
fn azure_path(api_path: &str, deployment: &str, version: &str) -> Result<(String, String), String> {
    let safe = |s: &str| !s.is_empty() && s.bytes().all(|b| path_segment_byte(Provider::Azure, b));
    if !safe(deployment) {
        return Err(format!("azure/{deployment:?}: a deployment name is letters, digits, '-', '_' and '.'"));
    }
    if !safe(version) {
        // Not echoed: it may have come from the environment.
        return Err("litellm_params.api_version is not an Azure API version (letters, digits, '-', '_', '.')".into());
    }
    let v1 = api_path.ends_with("/openai/v1") || matches!(version, "v1" | "latest" | "preview");
    if v1 {
        let base = if api_path.ends_with("/openai/v1") { api_path.to_owned() } else { format!("{api_path}/openai/v1") };
        let query = if version == "preview" { "?api-version=preview".to_owned() } else { String::new() };
        return Ok((base, query));
    }
    let base = api_path.strip_suffix("/openai").unwrap_or(api_path);
    Ok((format!("{base}/openai/deployments/{deployment}"), format!("?api-version={version}")))
}

/// `drop_params` is `litellm_settings.drop_params` unless an entry's `litellm_params` says.
fn model_list(cx: &mut Ctx<'_>, value: Option<&Value>, drop_params: bool) -> (Vec<Deployment>, Vec<Upstream>) {
    let mut deployments = Vec::new();
    let mut upstreams = Vec::new();
    let Some(items) = value.and_then(Value::as_array) else {
        if value.is_some() {
            cx.error("model_list must be a list".into());
        }
        return (deployments, upstreams);
    };
    for (i, item) in items.iter().enumerate() {
        let name = item.get("model_name").and_then(Value::as_str).unwrap_or("").to_owned();
        let at = format!("model_list[{i}] (model_name {name:?})");
        let Some(entry) = item.as_object() else {
            cx.error(format!("model_list[{i}] must be a mapping"));
            continue;
        };
        cx.refuse_unsupported(&format!("model_list[{i}]"), entry, &["model_name", "litellm_params", "model_info"]);
        if name.is_empty() {
            cx.error(format!("{at}: model_name is required"));
        }
        let empty = Map::new();
        let params = entry.get("litellm_params").and_then(Value::as_object).unwrap_or(&empty);
        let info = entry.get("model_info").and_then(Value::as_object).unwrap_or(&empty);
        cx.refuse_unsupported(
            &format!("model_list[{i}].litellm_params"),
            params,
            &[
                "model",
                "api_base",
                "api_key",
                "api_version",
                "aws_region_name",
                "vertex_project",
                "vertex_location",
                "vertex_credentials",
                "tenant_id",
                "client_id",
                "client_secret",
                "azure_scope",
                "rpm",
                "tpm",
                "weight",
                "drop_params",
                "timeout",
                "stream_timeout",
                "order",
            ],
        );
        cx.refuse_unsupported(
            &format!("model_list[{i}].model_info"),
            info,
            &[
                "id",
                "mode",
                "base_model",
                "input_cost_per_token",
                "output_cost_per_token",
                "cache_read_input_token_cost",
                "cache_creation_input_token_cost",
                LONG_CONTEXT_PRICES[0],
                LONG_CONTEXT_PRICES[1],
                LONG_CONTEXT_PRICES[2],
                LONG_CONTEXT_PRICES[3],
                LONG_CONTEXT_PRICES[4],
                LONG_CONTEXT_PRICES[5],
                "max_tokens",
                "max_input_tokens",
                "max_output_tokens",
                "disable_background_health_check",
            ],
        );
        let Some(model) = params.get("model").and_then(Value::as_str) else {
            cx.error(format!("{at}: litellm_params.model is required (e.g. openai/gpt-4o)"));
            continue;
        };
        let (provider_name, upstream_model) = model.split_once('/').unwrap_or(("openai", model));
        let Some(spec) = providers::lookup(provider_name) else {
            let known: Vec<&str> = providers::PROVIDERS.iter().map(|p| p.name).collect();
            cx.error(format!("{at}: provider {provider_name:?} is not supported (supported: {})", known.join(", ")));
            continue;
        };
        let Some(vertex) = vertex_deployment(cx, &at, spec.provider, params, info, upstream_model) else {
            continue;
        };
        let provider = vertex.as_ref().map_or(spec.provider, |v| v.provider);
        // Bedrock: signed by Envoy in the region's endpoint; the credentials are Envoy's.
        let aws_region = if spec.provider == Provider::Bedrock {
            let region = setting(cx, &at, params, "aws_region_name", Some("AWS_REGION"))
                .or_else(|| (cx.env)("AWS_DEFAULT_REGION").filter(|r| !r.is_empty()));
            match region {
                Some(r) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => Some(r),
                // Not echoed: it may have come from the environment.
                Some(_) => {
                    cx.error(format!("{at}: aws_region_name is not an AWS region (letters, digits and '-')"));
                    continue;
                }
                None => {
                    cx.error(format!("{at}: bedrock/ needs litellm_params.aws_region_name (or AWS_REGION)"));
                    continue;
                }
            }
        } else {
            if params.contains_key("aws_region_name") {
                cx.error(format!("{at}: litellm_params.aws_region_name is Bedrock's; {provider_name}/ has none"));
            }
            None
        };
        if vertex.is_some() && params.contains_key("api_key") {
            cx.error(format!(
                "{at}: vertex_ai/ takes no api_key: its requests carry an OAuth access token minted from \
                 vertex_credentials (or Google's application default credentials)"
            ));
        }
        if spec.provider == Provider::Bedrock && params.contains_key("api_key") {
            cx.error(format!(
                "{at}: bedrock/ takes no api_key: Envoy signs its requests with its own AWS credentials \
                 (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment, ~/.aws, or a web identity)"
            ));
        }
        let region_base = aws_region.as_ref().map(|r| format!("https://bedrock-runtime.{r}.amazonaws.com"));
        let vertex_base = vertex.as_ref().map(|v| v.default_base.clone());
        let Some(api_base) = setting(cx, &at, params, "api_base", spec.base_env)
            .or(region_base)
            .or(vertex_base)
            .or(spec.default_base.map(str::to_owned))
        else {
            cx.error(format!("{at}: {provider_name}/ needs litellm_params.api_base (the server's URL)"));
            continue;
        };
        let (https, host, port, api_path) = match parse_api_base(&api_base) {
            Ok(parts) => parts,
            Err(e) => {
                cx.error(format!("{at}: {e}"));
                continue;
            }
        };
        let (base_path, path_query) = match spec.provider {
            Provider::Azure => {
                let version = setting(cx, &at, params, "api_version", Some("AZURE_API_VERSION"))
                    .unwrap_or_else(|| providers::AZURE_DEFAULT_API_VERSION.to_owned());
                match azure_path(&api_path, upstream_model, &version) {
                    Ok(parts) => parts,
                    Err(e) => {
                        cx.error(format!("{at}: {e}"));
                        continue;
                    }
                }
            }
            // Google's API version is part of its path: `/v1beta` unless api_base names one.
            Provider::Gemini if api_path.is_empty() => ("/v1beta".to_owned(), String::new()),
            // Vertex: the project's publisher path, below api_base's own path (a proxy's).
            _ if vertex.is_some() => {
                let publisher = vertex.as_ref().map_or("", |v| v.publisher_path.as_str());
                (format!("{api_path}{publisher}"), String::new())
            }
            _ => {
                if params.contains_key("api_version") {
                    cx.error(format!("{at}: litellm_params.api_version is Azure's; {provider_name}/ has none"));
                }
                (api_path, String::new())
            }
        };
        let entra_client = entra_client(cx, &at, params, spec.provider);
        let api_key_env = match params.get("api_key") {
            // An Entra ID application stands in for the key (never LiteLLM's default variable too).
            None | Some(Value::Null) if entra_client.is_some() => None,
            // LiteLLM's default variable for the provider, but only to the provider's own hosts:
            // an `api_base` elsewhere (a self-hosted server, another vendor) would otherwise be
            // sent the provider's key without anyone having named it.
            None | Some(Value::Null) => {
                let default = spec.key_envs.iter().find(|name| (cx.env)(name).is_some()).or(spec.key_envs.first());
                match default {
                    Some(name) if spec.default_key_may_go_to(&host) => Some((*name).to_owned()),
                    Some(name) => {
                        cx.warnings.push(format!(
                            "{at}: no litellm_params.api_key: requests to {host} carry no provider credential \
                             (${name} is sent only to {provider_name}'s own hosts); name one with api_key: os.environ/NAME"
                        ));
                        None
                    }
                    None => None,
                }
            }
            Some(Value::String(s)) => match env_ref(s) {
                Some(name) => Some(name.to_owned()),
                None => {
                    // Never echo the value: it is a credential.
                    cx.error(format!("{at}: litellm_params.api_key must be os.environ/NAME; a literal key would be visible in Envoy's config dump"));
                    None
                }
            },
            Some(_) => {
                cx.error(format!("{at}: litellm_params.api_key must be a string os.environ/NAME"));
                None
            }
        };
        let id = info.get("id").and_then(Value::as_str).map_or_else(|| format!("{name}-{i}"), str::to_owned);
        let rpm = as_u64(params.get("rpm"));
        let tpm = as_u64(params.get("tpm"));
        let weight = as_u64(params.get("weight")).map(|w| u32::try_from(w).unwrap_or(u32::MAX));
        // Prices: model_info's own, else the built-in table's for `base_model` (LiteLLM's name
        // for what an Azure deployment runs) or the model itself.
        let price = |k: &str| as_f64(info.get(k));
        let base_model = info.get("base_model").and_then(Value::as_str);
        let catalog = base_model.and_then(price_catalog::lookup).or_else(|| price_catalog::lookup(model));
        let mut price_unknown = false;
        let mut priced_models = BTreeMap::new();
        let base_prices = info.contains_key("input_cost_per_token") || info.contains_key("output_cost_per_token");
        let long_context_prices = LONG_CONTEXT_PRICES.iter().any(|k| info.contains_key(*k));
        let priced_here = base_prices || long_context_prices;
        if long_context_prices && !base_prices {
            cx.error(format!(
                "{at}: model_info sets long-context prices without input_cost_per_token / output_cost_per_token: \
                 every shorter request would be priced at $0"
            ));
        }
        let pricing = if priced_here {
            // The table's shape, read from model_info's names (a long-context price without
            // the base ones would price every shorter request at $0: refused below).
            price_catalog::CatalogPrice {
                input: price("input_cost_per_token").unwrap_or(0.0),
                output: price("output_cost_per_token").unwrap_or(0.0),
                cache_read: price("cache_read_input_token_cost"),
                cache_write: price("cache_creation_input_token_cost"),
                max_output_tokens: None,
                max_input_tokens: None,
                input_above_200k: price(LONG_CONTEXT_PRICES[0]),
                output_above_200k: price(LONG_CONTEXT_PRICES[1]),
                cache_read_above_200k: price(LONG_CONTEXT_PRICES[2]),
                cache_write_above_200k: price(LONG_CONTEXT_PRICES[3]),
                input_above_128k: price(LONG_CONTEXT_PRICES[4]),
                output_above_128k: price(LONG_CONTEXT_PRICES[5]),
            }
            .pricing()
        } else if let Some(listed) = catalog {
            listed.pricing()
        } else if upstream_model.contains('*') {
            // A wildcard: each model it reaches at the table's price for it; the others at $0,
            // flagged price_unknown, like any model with no known price.
            priced_models = price_catalog::matching(provider_name, upstream_model)
                .into_iter()
                .map(|(name, price)| (name, price.pricing()))
                .collect();
            cx.warnings.push(format!(
                "{at}: a wildcard: the {} models of {provider_name}/ in the built-in table that {upstream_model:?} \
                 matches are priced from it; any other is recorded at $0, flagged price_unknown",
                priced_models.len()
            ));
            price_unknown = true;
            Pricing::default()
        } else {
            let named = base_model.unwrap_or(model);
            cx.warnings.push(format!(
                "{at}: no price known for {named:?} (not in the built-in table, no model_info prices): its \
                 requests are recorded at $0, flagged price_unknown (and counted in sluice_unpriced_requests), \
                 until model_info.input_cost_per_token / output_cost_per_token are set"
            ));
            price_unknown = true;
            Pricing::default()
        };
        let cluster = cluster_name(&id);
        if deployments.iter().any(|d: &Deployment| d.id == id) {
            cx.error(format!("{at}: deployment id {id:?} is used by another entry; ids must be unique"));
        } else if upstreams.iter().any(|u: &Upstream| u.cluster == cluster) {
            // Two ids whose CRC32 and readable part agree: vanishingly rare, refused all the same.
            cx.error(format!("{at}: deployment id {id:?} maps to the same Envoy cluster as another; rename it"));
        }
        let drop_params =
            flag(cx, &format!("{at}: litellm_params.drop_params"), params.get("drop_params")).unwrap_or(drop_params);
        let mode = match info.get("mode") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) => ModelMode::parse(m).or_else(|| {
                cx.error(format!(
                    "{at}: model_info.mode {m:?} is not supported by Sluice (chat, completion, embedding or responses)"
                ));
                None
            }),
            Some(_) => {
                cx.error(format!("{at}: model_info.mode must be a string"));
                None
            }
        };
        let timeout_ms = seconds(cx, &format!("{at}: litellm_params.timeout"), params.get("timeout"));
        let stream_timeout_ms =
            seconds(cx, &format!("{at}: litellm_params.stream_timeout"), params.get("stream_timeout"));
        let order = whole(cx, &format!("{at}: litellm_params.order"), params.get("order"));
        let no_background_health_check = flag(
            cx,
            &format!("{at}: model_info.disable_background_health_check"),
            info.get("disable_background_health_check"),
        )
        .unwrap_or(false);
        let origin = origin_of(https, &host, port);
        let google_credentials = vertex.map(|v| v.credentials);
        upstreams.push(Upstream {
            cluster: cluster.clone(),
            https,
            host,
            port,
            aws_region,
            google_credentials,
            entra_client,
        });
        deployments.push(Deployment {
            id,
            model_name: name,
            provider,
            upstream_model: upstream_model.to_owned(),
            cluster,
            origin,
            base_path,
            path_query,
            priced_models,
            mode,
            api_key_env,
            weight: shuffle_weight(weight, rpm, tpm),
            rpm,
            tpm,
            pricing,
            max_output_tokens: as_u64(info.get("max_output_tokens"))
                .or_else(|| as_u64(info.get("max_tokens")))
                .or_else(|| catalog.and_then(|c| c.max_output_tokens)),
            max_input_tokens: as_u64(info.get("max_input_tokens")).or_else(|| catalog.and_then(|c| c.max_input_tokens)),
            drop_params,
            price_unknown,
            timeout_ms,
            stream_timeout_ms,
            order,
            no_background_health_check,
        });
    }
    (deployments, upstreams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litellm_settings_budgets_are_read_or_refused_with_the_reason() {
        let settings = |v: Value| v.as_object().cloned().unwrap();
        let (proxy, end_user) = budget_settings(&settings(
            json!({"max_budget": 100, "budget_duration": "30d", "max_end_user_budget": 0.5}),
        ))
        .unwrap();
        let proxy = proxy.unwrap();
        assert_eq!((proxy.max_budget, proxy.budget_duration), (100.0, BudgetDuration::parse("30d")));
        assert_eq!(end_user, Some(0.5));
        // LiteLLM's default, 0, is no budget.
        assert_eq!(budget_settings(&settings(json!({"max_budget": 0}))).unwrap(), (None, None));
        for (bad, reason) in [
            (json!({"max_budget": -1}), "litellm_settings.max_budget: must be a number of USD"),
            (json!({"max_end_user_budget": "lots"}), "litellm_settings.max_end_user_budget: must be a number"),
            (json!({"max_budget": 1, "budget_duration": "fortnight"}), "is not a duration"),
            (json!({"budget_duration": "1d"}), "needs litellm_settings.max_budget"),
        ] {
            let errors = budget_settings(&settings(bad)).unwrap_err();
            assert!(errors[0].contains(reason), "{errors:?}");
        }
        // In config.yaml, through the same reader.
        let doc = json!({"model_list": [], "litellm_settings": {"max_budget": 5, "max_end_user_budget": 1}});
        let gateway = from_litellm(&doc, &|_| None).unwrap().gateway;
        assert_eq!(gateway.proxy_budget.map(|b| b.max_budget), Some(5.0));
        assert_eq!(gateway.end_user_max_budget, Some(1.0));
    }
    use serde_json::json;

    use crate::endpoint::Endpoint;
    use crate::keys::KeyHash;

    #[test]
    fn litellms_cache_settings_are_read_or_refused_with_the_reason() {
        let settings = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(cache_settings(&settings(json!({}))).unwrap(), None, "off unless asked");
        let on = cache_settings(&settings(json!({"cache": true}))).unwrap().unwrap();
        assert_eq!((on.ttl_secs, on.max_entries, on.max_messages), (600, 200, Some(4)), "LiteLLM's defaults");
        assert_eq!(on, cache::CacheConfig::default());
        assert!(
            on.caches(Endpoint::ChatCompletions) && on.caches(Endpoint::Messages) && on.caches(Endpoint::Embeddings)
        );
        let c = cache_settings(&settings(json!({"cache": true, "cache_params": {
            "type": "local", "mode": "default_off", "ttl": 30, "namespace": "prod",
            "supported_call_types": ["acompletion", "atranscription"], "max_messages": null,
            "max_size_in_memory": 10, "max_size_per_item": 64, "scope": "team", "semantic_cache_scope": "end_user"
        }})))
        .unwrap()
        .unwrap();
        assert_eq!(c.mode, cache::CacheMode::DefaultOff);
        assert_eq!((c.ttl_secs, c.namespace.as_deref(), c.max_messages), (30, Some("prod"), None));
        assert_eq!(c.routes, vec!["/v1/chat/completions".to_owned()], "transcription: nothing Sluice serves");
        assert_eq!((c.max_entries, c.max_item_bytes), (10, 64 * 1024));
        assert_eq!((c.scope, c.per_end_user), (cache::CacheScope::Team, true));
        // default_in_memory_ttl wins over ttl for the in-memory cache, as in LiteLLM.
        let c =
            cache_settings(&settings(json!({"cache": true, "cache_params": {"ttl": 30, "default_in_memory_ttl": 5}})));
        assert_eq!(c.unwrap().unwrap().ttl_secs, 5);
        for (bad, reason) in [
            (json!({"cache": "yes"}), "litellm_settings.cache: must be true or false"),
            (json!({"cache": true, "cache_params": {"type": "redis"}}), "\"redis\" is not supported by Sluice yet"),
            (json!({"cache": true, "cache_params": {"type": "memcached"}}), "is not a cache type"),
            (json!({"cache": true, "cache_params": {"ttl": -1}}), "cache_params.ttl: must be a number of seconds"),
            (json!({"cache": true, "cache_params": {"mode": "sometimes"}}), "default_on or default_off"),
            (json!({"cache": true, "cache_params": {"supported_call_types": ["speech"]}}), "is not a call type"),
            (json!({"cache": true, "cache_params": {"host": "redis"}}), "cache_params.host: not supported by Sluice"),
            (json!({"cache": true, "cache_params": {"scope": "global"}}), "must be key or team"),
            (json!({"cache_params": {"ttl": 5}}), "litellm_settings.cache is not true"),
        ] {
            let errors = cache_settings(&settings(bad.clone())).unwrap_err();
            assert!(errors.iter().any(|e| e.contains(reason)), "{bad}: {errors:?}");
        }
        // In config.yaml, through the same reader, and refused there with the same words.
        let doc = json!({"model_list": [], "litellm_settings": {"cache": true, "cache_params": {"ttl": 45}}});
        assert_eq!(from_litellm(&doc, &|_| None).unwrap().gateway.cache.map(|c| c.ttl_secs), Some(45));
        let doc = json!({"model_list": [], "litellm_settings": {"cache": true, "cache_params": {"type": "s3"}}});
        let errors = from_litellm(&doc, &|_| None).unwrap_err();
        assert!(errors.iter().any(|e| e.0.contains("\"s3\" is not supported by Sluice yet")), "{errors:?}");
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "SLUICE_MASTER_KEY" => Some("sk-master-very-secret-0123456789abcdef".into()),
            "OPENAI_API_KEY" => Some("sk-provider-secret".into()),
            _ => None,
        }
    }

    fn realistic() -> Value {
        json!({
            "model_list": [
                {"model_name": "gpt-4o", "litellm_params": {"model": "openai/gpt-4o-2024-08-06", "api_key": "os.environ/OPENAI_API_KEY", "weight": 3},
                 "model_info": {"id": "gpt4o-east", "input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5, "cache_read_input_token_cost": 1.25e-6}},
                {"model_name": "gpt-4o", "litellm_params": {"model": "openai/gpt-4o", "api_base": "http://127.0.0.1:8081/v1", "rpm": 100},
                 "model_info": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5, "max_tokens": 4096}},
                {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-3-5-sonnet-20241022", "api_key": "os.environ/ANTHROPIC_API_KEY"},
                 "model_info": {"input_cost_per_token": 3e-6, "output_cost_per_token": 1.5e-5, "cache_creation_input_token_cost": 3.75e-6}},
            ],
            "router_settings": {"routing_strategy": "simple-shuffle"},
            "litellm_settings": {"request_timeout": 120, "drop_params": true},
            "general_settings": {"master_key": "os.environ/SLUICE_MASTER_KEY", "max_request_size_mb": 2, "database_url": "postgres://x"},
            "teams": [{"team_id": "platform", "rpm_limit": 600, "max_budget": 100}],
            "keys": [{"key_hash": format!("sha256:{}", KeyHash::of(b"k").to_hex()), "key_alias": "ci", "team_id": "platform", "models": ["gpt-4o"], "rpm_limit": 60}],
        })
    }

    #[test]
    fn a_realistic_config_converts() {
        let s = from_litellm(&realistic(), &env).unwrap();
        let d = &s.gateway.deployments;
        assert_eq!(d.len(), 3);
        assert_eq!(
            (d[0].id.as_str(), d[0].upstream_model.as_str(), d[0].weight),
            ("gpt4o-east", "gpt-4o-2024-08-06", 3)
        );
        assert_eq!((d[1].id.as_str(), d[1].weight, d[1].max_output_tokens), ("gpt-4o-1", 100, Some(4096)));
        assert_eq!(d[0].base_path, "/v1");
        assert_eq!(d[2].provider, Provider::Anthropic);
        assert_eq!(d[2].api_key_env.as_deref(), Some("ANTHROPIC_API_KEY"));
        assert_eq!(d[0].pricing.cache_read_input_token_cost, Some(1.25e-6));
        assert_eq!(
            s.upstreams[0],
            Upstream {
                cluster: cluster_name("gpt4o-east"),
                https: true,
                host: "api.openai.com".into(),
                port: 443,
                aws_region: None,
                google_credentials: None,
                entra_client: None,
            }
        );
        assert_eq!(
            s.upstreams[1],
            Upstream {
                cluster: cluster_name("gpt-4o-1"),
                https: false,
                host: "127.0.0.1".into(),
                port: 8081,
                aws_region: None,
                google_credentials: None,
                entra_client: None,
            }
        );
        assert_eq!(s.upstreams[2].host, "api.anthropic.com");
        // Envoy reads the key from the same variable: the config names it and holds no digest.
        assert_eq!(s.gateway.master_key_env.as_deref(), Some("SLUICE_MASTER_KEY"));
        assert!(!s.master_key_literal);
        assert!(
            !serde_json::to_string(&s.gateway)
                .unwrap()
                .contains(&KeyHash::of(b"sk-master-very-secret-0123456789abcdef").to_hex())
        );
        assert_eq!(s.gateway.max_request_body_bytes, 2 * 1024 * 1024);
        assert_eq!(s.request_timeout_secs, 120);
        assert_eq!(s.gateway.keys.len(), 1);
        let all = s.warnings.join("\n");
        assert!(all.contains("database_url"), "{all}");
        assert!(!all.contains("sk-master-very-secret-0123456789abcdef") && !all.contains("sk-provider-secret"));
    }

    /// A setting Sluice would not apply is refused, by name, never accepted and ignored.
    #[test]
    fn settings_sluice_does_not_enforce_are_refused_by_name() {
        let mut doc = realistic();
        doc["model_list"][0]["model_info"]["supports_vision"] = json!(true);
        doc["model_list"][1]["litellm_params"]["max_retries"] = json!(3);
        doc["router_settings"] = json!({"routing_strategy": "usage-based-routing", "provider_budget_config": {"openai": {"budget_limit": 1}}});
        doc["litellm_settings"]["success_callback"] = json!(["langfuse"]);
        doc["environment_variables"] = json!({"A": "b"});
        let errors = from_litellm(&doc, &env).unwrap_err();
        let all: Vec<&str> = errors.iter().map(|e| e.0.as_str()).collect();
        for needle in [
            "model_list[0].model_info.supports_vision: not supported by Sluice",
            "model_list[1].litellm_params.max_retries: not supported by Sluice",
            "router_settings.routing_strategy: usage-based-routing is LiteLLM's deprecated first version",
            "router_settings.provider_budget_config: not supported by Sluice",
            "litellm_settings.success_callback: logging callbacks are sent by `sluice serve`",
            "environment_variables: not supported by Sluice",
        ] {
            assert!(all.iter().any(|e| e.starts_with(needle)), "no error for {needle}:\n{all:#?}");
        }
        assert_eq!(all.len(), 6, "{all:#?}");
    }

    /// Retries and timeouts reach the filter's config: the gateway's policy, each deployment's
    /// timeouts; what one retry budget cannot express is refused with the reason.
    #[test]
    fn retries_and_timeouts_are_read_and_checked() {
        let mut doc = realistic();
        doc["litellm_settings"]["num_retries"] = json!(1);
        doc["router_settings"] = json!({
            "num_retries": 3,
            "timeout": 2.5,
            "retry_policy": {"RateLimitErrorRetries": 3, "InternalServerErrorRetries": 0},
        });
        doc["model_list"][1]["litellm_params"]["timeout"] = json!(0.75);
        doc["model_list"][1]["litellm_params"]["stream_timeout"] = json!(4);
        let s = from_litellm(&doc, &env).unwrap();
        let retries = s.gateway.retries;
        assert_eq!(retries.num_retries, 3, "router_settings wins over litellm_settings");
        assert_eq!(retries.on.status_codes(), "429,408");
        assert_eq!(s.gateway.timeout_ms, Some(2500));
        assert_eq!(s.request_timeout_secs, 3);
        let d = &s.gateway.deployments[1];
        assert_eq!((d.timeout_ms, d.stream_timeout_ms), (Some(750), Some(4000)));
        assert_eq!(s.gateway.cooldown, CooldownPolicy::default(), "on by default, as in LiteLLM");
        assert_eq!(s.gateway.deployments[0].timeout_ms, None);

        let mut doc = realistic();
        doc["router_settings"] = json!({
            "num_retries": 2,
            "retry_policy": {"RateLimitErrorRetries": 4, "Teapot": 1, "TimeoutErrorRetries": -1},
        });
        doc["model_list"][0]["litellm_params"]["timeout"] = json!(-5);
        doc["model_list"][0]["litellm_params"]["order"] = json!("first");
        doc["router_settings"]["allowed_fails"] = json!(-1);
        doc["model_list"][1]["litellm_params"]["stream_timeout"] = json!("soon");
        doc["litellm_settings"]["num_retries"] = json!(11);
        let errors: Vec<String> = from_litellm(&doc, &env).unwrap_err().into_iter().map(|e| e.0).collect();
        for needle in [
            "router_settings.retry_policy.Teapot: not an error class",
            "router_settings.retry_policy.TimeoutErrorRetries: must be a whole number from 0 to 10",
            "litellm_settings.num_retries: must be a whole number from 0 to 10, not 11",
            "router_settings.retry_policy: RateLimitErrorRetries is 4 but InternalServerErrorRetries is 2",
            "litellm_params.timeout: must be a number of seconds above 0",
            "litellm_params.stream_timeout: must be a number of seconds above 0",
            "litellm_params.order: must be a whole number",
            "router_settings.allowed_fails: must be a whole number",
        ] {
            assert!(errors.iter().any(|e| e.contains(needle)), "no error for {needle}:\n{errors:#?}");
        }
    }

    #[test]
    fn routing_strategies_are_read() {
        let mut doc = realistic();
        for (name, expected) in [
            ("simple-shuffle", RoutingStrategy::SimpleShuffle),
            ("least-busy", RoutingStrategy::LeastBusy),
            ("cost-based-routing", RoutingStrategy::CostBased),
            ("usage-based-routing-v2", RoutingStrategy::UsageBasedV2),
            ("latency-based-routing", RoutingStrategy::LatencyBased(LatencySettings::default())),
        ] {
            doc["router_settings"] = json!({"routing_strategy": name});
            assert_eq!(from_litellm(&doc, &env).unwrap().gateway.routing_strategy, expected, "{name}");
        }
        doc["router_settings"] = json!({"routing_strategy": "latency-based-routing",
            "routing_strategy_args": {"lowest_latency_buffer": 0.5, "ttl": 60}});
        assert_eq!(
            from_litellm(&doc, &env).unwrap().gateway.routing_strategy,
            RoutingStrategy::LatencyBased(LatencySettings { buffer: 0.5, ttl_ms: 60_000 })
        );
        doc["router_settings"] = json!({"routing_strategy": "least-busy", "routing_strategy_args": {"ttl": 60}});
        let errors = from_litellm(&doc, &env).unwrap_err();
        assert!(errors[0].0.contains("only latency-based-routing takes arguments"), "{errors:?}");
        doc["router_settings"] = json!({"routing_strategy": "latency-based-routing",
            "routing_strategy_args": {"lowest_latency_buffer": -1, "max_latency_list_size": 5}});
        let errors: Vec<String> = from_litellm(&doc, &env).unwrap_err().into_iter().map(|e| e.0).collect();
        assert!(errors.iter().any(|e| e.contains("max_latency_list_size: not supported")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("lowest_latency_buffer: must be a fraction")), "{errors:?}");
    }

    #[test]
    fn cooldown_and_order_are_read() {
        let mut doc = realistic();
        doc["router_settings"] = json!({"allowed_fails": 1, "cooldown_time": 30});
        doc["model_list"][0]["litellm_params"]["order"] = json!(2);
        let s = from_litellm(&doc, &env).unwrap();
        assert_eq!(s.gateway.cooldown, CooldownPolicy { enabled: true, allowed_fails: 1, cooldown_ms: 30_000 });
        assert_eq!((s.gateway.deployments[0].order, s.gateway.deployments[1].order), (Some(2), None));
        doc["router_settings"] = json!({"disable_cooldowns": true});
        assert!(!from_litellm(&doc, &env).unwrap().gateway.cooldown.enabled);
    }

    /// LiteLLM's `router_settings.model_group_alias`, both spellings; an alias must name a
    /// group and must not shadow one.
    #[test]
    fn model_group_aliases_are_read_and_checked() {
        let mut doc = realistic();
        doc["router_settings"]["model_group_alias"] =
            json!({"gpt-4": "gpt-4o", "sonnet": {"model": "claude", "hidden": true}});
        let s = from_litellm(&doc, &env).unwrap();
        let aliases: Vec<(&str, &str, bool)> =
            s.gateway.model_group_aliases.iter().map(|a| (a.alias.as_str(), a.group.as_str(), a.hidden)).collect();
        assert_eq!(aliases, [("gpt-4", "gpt-4o", false), ("sonnet", "claude", true)]);
        let c = CompiledConfig::compile(s.gateway).unwrap();
        assert_eq!(c.group_index("sonnet"), c.group_index("claude"));
        let listed: Vec<&str> = c.listed_models.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(listed, ["claude", "gpt-4", "gpt-4o"], "hidden aliases are served, not listed");
        for (bad, says) in [
            (json!({"gpt-5": "nope"}), "model group \"nope\" is not in model_list"),
            (json!({"claude": "gpt-4o"}), "a model group or another alias has that name"),
            (json!({"x": {"model": "gpt-4o", "order": 1}}), "model_group_alias.x.order: not supported"),
            (json!(["gpt-4o"]), "must be a mapping"),
        ] {
            doc["router_settings"]["model_group_alias"] = bad;
            let errors = from_litellm(&doc, &env).unwrap_err();
            assert!(errors.iter().any(|e| e.0.contains(says)), "{says}: {errors:?}");
        }
    }

    /// Wildcard groups (`openai/*`, `*`): each model they reach is priced from the built-in
    /// table, a group or alias of the exact name wins, and the most specific pattern next.
    #[test]
    fn wildcard_groups_route_any_name_of_their_provider_at_its_price() {
        let doc = json!({"model_list": [
            {"model_name": "openai/*", "litellm_params": {"model": "openai/*"}},
            {"model_name": "*", "litellm_params": {"model": "anthropic/*"}},
            {"model_name": "claude-sonnet-*", "litellm_params": {"model": "anthropic/claude-sonnet-*"},
             "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}},
            {"model_name": "openai/gpt-4o", "litellm_params": {"model": "openai/gpt-4o"}},
        ]});
        let s = from_litellm(&doc, &env).unwrap();
        let d = &s.gateway.deployments;
        assert_eq!(d[0].priced_models.get("gpt-4o-mini").map(|p| p.input_cost_per_token), Some(1.5e-7));
        assert!(d[0].price_unknown, "a model the table does not know is flagged");
        assert!(d[2].priced_models.is_empty() && !d[2].price_unknown, "model_info prices every model it reaches");
        let c = CompiledConfig::compile(s.gateway.clone()).unwrap();
        let group = |name: &'static str| c.resolve_model(name).map(|(g, part)| (c.groups[g].name.clone(), part));
        assert_eq!(group("openai/gpt-4o"), Some(("openai/gpt-4o".to_owned(), None)), "the exact group wins");
        assert_eq!(group("openai/gpt-4o-mini"), Some(("openai/*".to_owned(), Some("gpt-4o-mini"))));
        assert_eq!(
            group("claude-sonnet-4-5"),
            Some(("claude-sonnet-*".to_owned(), Some("4-5"))),
            "the most specific pattern"
        );
        assert_eq!(group("claude-opus-4-5"), Some(("*".to_owned(), Some("claude-opus-4-5"))));
        let wild = &s.gateway.deployments[1];
        assert_eq!(wild.upstream_model_for(Some("claude-opus-4-5")), "claude-opus-4-5");
        assert!(!wild.pricing_for("claude-opus-4-5").1);
        assert!(wild.pricing_for("claude-made-up").1);
        // /v1/models lists the names a wildcard serves at a known price.
        assert!(c.listed_models.iter().any(|(n, _)| n == "openai/gpt-4o-mini"));
        let listed = |name: &str| c.listed_models.iter().any(|(n, _)| n == name);
        assert!(!listed("openai/*") && !listed("*"));
        assert!(listed("claude-sonnet-*"), "a wildcard without a table of its models is listed as its pattern");
        let bad = json!({"model_list": [
            {"model_name": "a", "litellm_params": {"model": "openai/*"}},
            {"model_name": "b/*/*", "litellm_params": {"model": "openai/*"}},
        ]});
        let errors: Vec<String> = from_litellm(&bad, &env).unwrap_err().into_iter().map(|e| e.0).collect();
        assert!(errors.iter().any(|e| e.contains("has a '*' but model_name has none")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("a wildcard name has one '*'")), "{errors:?}");
    }

    /// `model_info.mode` is kept (the filter routes by it); a mode Sluice has no route for is
    /// refused by name.
    #[test]
    fn model_mode_is_kept_or_refused() {
        let entry = |mode: Value| json!({"model_list": [{"model_name": "e", "litellm_params": {"model": "openai/text-embedding-3-small"}, "model_info": {"mode": mode}}]});
        let s = from_litellm(&entry(json!("embedding")), &env).unwrap();
        assert_eq!(s.gateway.deployments[0].mode, Some(ModelMode::Embedding));
        let errors = from_litellm(&entry(json!("image_generation")), &env).unwrap_err();
        assert!(errors[0].0.contains("model_info.mode \"image_generation\" is not supported by Sluice"), "{errors:?}");
    }

    /// LiteLLM's OpenAI-compatible providers: their default servers and key variables, a key
    /// only to the provider's own host, `<PROVIDER>_API_BASE`, and self-hosted servers that
    /// must be given an `api_base` and get a key only when one is named.
    #[test]
    fn openai_compatible_providers_get_their_defaults() {
        let doc = json!({"model_list": [
            {"model_name": "a", "litellm_params": {"model": "groq/llama-3.3-70b-versatile"}},
            {"model_name": "b", "litellm_params": {"model": "together_ai/meta-llama/Llama-3-8b"}},
            {"model_name": "c", "litellm_params": {"model": "deepseek/deepseek-chat"}},
            {"model_name": "d", "litellm_params": {"model": "mistral/mistral-large-latest"}},
            {"model_name": "e", "litellm_params": {"model": "hosted_vllm/llama", "api_base": "http://10.0.0.5:8000/v1"}},
            {"model_name": "f", "litellm_params": {"model": "ollama_chat/llama3"}},
            {"model_name": "g", "litellm_params": {"model": "xai/grok-2", "api_base": "os.environ/XAI_API_BASE"}},
        ]});
        let env = |name: &str| match name {
            "TOGETHER_AI_API_KEY" => Some("t".to_owned()),
            "XAI_API_BASE" => Some("https://eu.api.x.ai/v1".to_owned()),
            _ => None,
        };
        let s = from_litellm(&doc, &env).unwrap();
        let got: Vec<(&str, &str, &str, Option<&str>)> = s
            .gateway
            .deployments
            .iter()
            .zip(&s.upstreams)
            .map(|(d, u)| (d.upstream_model.as_str(), u.host.as_str(), d.base_path.as_str(), d.api_key_env.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("llama-3.3-70b-versatile", "api.groq.com", "/openai/v1", Some("GROQ_API_KEY")),
                // The first of LiteLLM's variables that is set.
                ("meta-llama/Llama-3-8b", "api.together.xyz", "/v1", Some("TOGETHER_AI_API_KEY")),
                ("deepseek-chat", "api.deepseek.com", "/beta", Some("DEEPSEEK_API_KEY")),
                ("mistral-large-latest", "api.mistral.ai", "/v1", Some("MISTRAL_API_KEY")),
                ("llama", "10.0.0.5", "/v1", None),
                ("llama3", "localhost", "/v1", None),
                // Another host than the provider's own: no default key.
                ("grok-2", "eu.api.x.ai", "/v1", None),
            ]
        );
        assert!(s.gateway.deployments.iter().all(|d| d.provider == Provider::Openai));
        let missing = json!({"model_list": [{"model_name": "v", "litellm_params": {"model": "hosted_vllm/llama"}}]});
        let errors = from_litellm(&missing, &env).unwrap_err();
        assert!(errors[0].0.contains("hosted_vllm/ needs litellm_params.api_base"), "{errors:?}");
        let unknown = json!({"model_list": [{"model_name": "v", "litellm_params": {"model": "watsonx/granite"}}]});
        let errors = from_litellm(&unknown, &env).unwrap_err();
        assert!(errors[0].0.contains("provider \"watsonx\" is not supported (supported: openai,"), "{errors:?}");
    }

    /// Vertex AI: the location's host and the project's publisher path, Gemini's format or
    /// Anthropic's for Claude, credentials by name or path (never the JSON), priced from the table.
    #[test]
    fn vertex_deployments_get_their_project_path_and_credentials() {
        let doc = json!({"model_list": [
            {"model_name": "g", "litellm_params": {"model": "vertex_ai/gemini-2.5-pro", "vertex_project": "acme-ml", "vertex_location": "europe-west4", "vertex_credentials": "os.environ/VERTEX_SA"}},
            {"model_name": "c", "litellm_params": {"model": "vertex_ai/claude-3-5-haiku@20241022", "vertex_project": "acme-ml", "vertex_location": "global", "vertex_credentials": "/etc/sluice/sa.json"}},
            {"model_name": "d", "litellm_params": {"model": "vertex_ai/gemini-2.5-flash", "api_base": "http://127.0.0.1:9000/proxy"}},
        ]});
        let env = |name: &str| (name == "VERTEXAI_PROJECT").then(|| "from-env".to_owned());
        let s = from_litellm(&doc, &env).unwrap();
        let got: Vec<_> = s
            .gateway
            .deployments
            .iter()
            .zip(&s.upstreams)
            .map(|(d, u)| (d.provider, u.host.as_str(), d.base_path.as_str(), u.google_credentials.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Provider::VertexGemini,
                    "europe-west4-aiplatform.googleapis.com",
                    "/v1/projects/acme-ml/locations/europe-west4/publishers/google",
                    Some(GoogleCredentials::Env("VERTEX_SA".into()))
                ),
                (
                    Provider::VertexAnthropic,
                    "aiplatform.googleapis.com",
                    "/v1/projects/acme-ml/locations/global/publishers/anthropic",
                    Some(GoogleCredentials::File("/etc/sluice/sa.json".into()))
                ),
                // VERTEXAI_PROJECT, us-central1 by default, below api_base's own path.
                (
                    Provider::VertexGemini,
                    "127.0.0.1",
                    "/proxy/v1/projects/from-env/locations/us-central1/publishers/google",
                    Some(GoogleCredentials::ApplicationDefault)
                ),
            ]
        );
        assert!(s.gateway.deployments.iter().all(|d| d.api_key_env.is_none() && !d.price_unknown));
        let paths: Vec<Option<String>> = s
            .gateway
            .deployments
            .iter()
            .map(|d| d.upstream_path(Endpoint::ChatCompletions, &d.upstream_model, true))
            .collect();
        assert_eq!(
            paths,
            [
                Some("/v1/projects/acme-ml/locations/europe-west4/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse".into()),
                Some("/v1/projects/acme-ml/locations/global/publishers/anthropic/models/claude-3-5-haiku@20241022:streamRawPredict".into()),
                Some("/proxy/v1/projects/from-env/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse".into()),
            ]
        );
        let claude = &s.gateway.deployments[1];
        assert_eq!(
            claude.upstream_path(Endpoint::Messages, &claude.upstream_model, false).as_deref(),
            Some(
                "/v1/projects/acme-ml/locations/global/publishers/anthropic/models/claude-3-5-haiku@20241022:rawPredict"
            )
        );
        assert_eq!(
            claude.upstream_path(Endpoint::CountTokens, &claude.upstream_model, false).as_deref(),
            Some("/v1/projects/acme-ml/locations/global/publishers/anthropic/models/count-tokens:rawPredict")
        );
    }

    /// model_info's long-context prices, LiteLLM's names; without base prices they are refused.
    #[test]
    fn model_info_long_context_prices_are_read() {
        let doc = json!({"model_list": [{"model_name": "g", "litellm_params": {"model": "gemini/gemini-2.5-pro", "api_key": "os.environ/G"},
            "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
                           "input_cost_per_token_above_128k_tokens": 3e-6, "output_cost_per_token_above_128k_tokens": 4e-6}}]});
        let s = from_litellm(&doc, &|_| None).unwrap();
        let long = s.gateway.deployments[0].pricing.long_context.unwrap();
        assert_eq!(
            (long.above_input_tokens, long.input_cost_per_token, long.output_cost_per_token),
            (128_000, 3e-6, 4e-6)
        );
        let doc = json!({"model_list": [{"model_name": "g", "litellm_params": {"model": "gemini/gemini-2.5-pro", "api_key": "os.environ/G"},
            "model_info": {"input_cost_per_token_above_200k_tokens": 3e-6}}]});
        let errors = from_litellm(&doc, &|_| None).unwrap_err();
        assert!(errors[0].0.contains("long-context prices without input_cost_per_token"), "{errors:?}");
    }

    #[test]
    fn vertex_entries_it_cannot_serve_are_refused_with_the_reason() {
        let refused = |params: Value| {
            let doc = json!({"model_list": [{"model_name": "v", "litellm_params": params}]});
            from_litellm(&doc, &|_| None).unwrap_err().into_iter().map(|e| e.0).collect::<Vec<_>>().join("; ")
        };
        let e = refused(json!({"model": "vertex_ai/gemini-2.5-pro"}));
        assert!(e.contains("needs litellm_params.vertex_project"), "{e}");
        let e = refused(json!({"model": "vertex_ai/llama-3.1-405b", "vertex_project": "p"}));
        assert!(e.contains("Gemini (gemini-…) and Claude (claude-…)"), "{e}");
        let e = refused(json!({"model": "vertex_ai/gemini-2.5-pro", "vertex_project": "p", "api_key": "os.environ/K"}));
        assert!(e.contains("takes no api_key"), "{e}");
        let e =
            refused(json!({"model": "vertex_ai/gemini-2.5-pro", "vertex_project": "p", "vertex_location": "us/../x"}));
        assert!(e.contains("not a Google Cloud location"), "{e}");
        // The JSON itself (a private key) is never taken from config.yaml, nor echoed.
        let e = refused(
            json!({"model": "vertex_ai/gemini-2.5-pro", "vertex_project": "p", "vertex_credentials": "{\"private_key\": \"SECRET\"}"}),
        );
        assert!(e.contains("must be a file's path or os.environ/NAME") && !e.contains("SECRET"), "{e}");
        let e = refused(json!({"model": "openai/gpt-4o", "vertex_project": "p"}));
        assert!(e.contains("vertex_project is Vertex AI's"), "{e}");
        let doc = json!({"model_list": [{"model_name": "v", "litellm_params": {"model": "vertex_ai/gemini-embedding-001", "vertex_project": "p"}, "model_info": {"mode": "embedding"}}]});
        let e = from_litellm(&doc, &|_| None).unwrap_err();
        assert!(e[0].0.contains("Vertex embeddings are not supported"), "{e:?}");
    }

    /// Gemini: Google's server and `/v1beta` by default, GEMINI_API_KEY only to it, the price
    /// from the table; the model goes in the path, so it must be a plain name.
    #[test]
    fn gemini_deployments_get_googles_defaults() {
        let doc = json!({"model_list": [
            {"model_name": "flash", "litellm_params": {"model": "gemini/gemini-2.5-flash"}},
            {"model_name": "local", "litellm_params": {"model": "gemini/gemini-2.5-flash", "api_base": "http://127.0.0.1:9000", "api_key": "os.environ/G"}},
        ]});
        let s = from_litellm(&doc, &env).unwrap();
        let d = &s.gateway.deployments;
        assert_eq!(
            (d[0].provider, d[0].base_path.as_str(), d[0].api_key_env.as_deref()),
            (Provider::Gemini, "/v1beta", Some("GEMINI_API_KEY"))
        );
        assert_eq!(s.upstreams[0].host, "generativelanguage.googleapis.com");
        assert_eq!(d[0].pricing.input_cost_per_token, 3e-7);
        assert_eq!((d[1].base_path.as_str(), d[1].api_key_env.as_deref()), ("/v1beta", Some("G")));
        let path = d[0].upstream_path(crate::endpoint::Endpoint::ChatCompletions, "gemini-2.5-flash", true);
        assert_eq!(path.as_deref(), Some("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"));
        assert_eq!(d[0].upstream_path(crate::endpoint::Endpoint::ChatCompletions, "../x", false), None);
        // Embeddings: one batchEmbedContents call, whether or not the client said `stream`.
        for streamed in [false, true] {
            let path = d[0].upstream_path(crate::endpoint::Endpoint::Embeddings, "gemini-embedding-001", streamed);
            assert_eq!(path.as_deref(), Some("/v1beta/models/gemini-embedding-001:batchEmbedContents"));
        }
        let bad = json!({"model_list": [{"model_name": "x", "litellm_params": {"model": "gemini/a?b"}}]});
        assert!(from_litellm(&bad, &env).unwrap_err()[0].0.contains("goes in the URL path"));
    }

    /// Bedrock: the region's endpoint, signed by Envoy in that region, no key in config; the
    /// model id (or an inference profile's ARN) escaped into the path.
    #[test]
    fn bedrock_deployments_are_signed_by_envoy_in_their_region() {
        let doc = json!({"model_list": [
            {"model_name": "claude", "litellm_params": {"model": "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", "aws_region_name": "eu-west-1"}},
            {"model_name": "mock", "litellm_params": {"model": "bedrock/us.anthropic.claude-sonnet-4-5", "api_base": "http://127.0.0.1:9000"}},
        ]});
        let env = |name: &str| (name == "AWS_REGION").then(|| "us-east-1".to_owned());
        let s = from_litellm(&doc, &env).unwrap();
        let u: Vec<(&str, Option<&str>)> =
            s.upstreams.iter().map(|u| (u.host.as_str(), u.aws_region.as_deref())).collect();
        assert_eq!(
            u,
            [("bedrock-runtime.eu-west-1.amazonaws.com", Some("eu-west-1")), ("127.0.0.1", Some("us-east-1"))]
        );
        let d = &s.gateway.deployments[0];
        assert_eq!((d.provider, d.api_key_env.as_deref()), (Provider::Bedrock, None));
        let path = d.upstream_path(crate::endpoint::Endpoint::ChatCompletions, &d.upstream_model, true);
        assert_eq!(path.as_deref(), Some("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream"));
        let path = d.upstream_path(crate::endpoint::Endpoint::Embeddings, "amazon.titan-embed-text-v2:0", false);
        assert_eq!(path.as_deref(), Some("/model/amazon.titan-embed-text-v2%3A0/invoke"));
        let bad = json!({"model_list": [
            {"model_name": "a", "litellm_params": {"model": "bedrock/x"}},
            {"model_name": "b", "litellm_params": {"model": "bedrock/x", "aws_region_name": "us-east-1", "api_key": "os.environ/K"}},
            {"model_name": "c", "litellm_params": {"model": "bedrock/x", "aws_region_name": "us-east-1", "aws_access_key_id": "os.environ/K"}},
        ]});
        let errors: Vec<String> = from_litellm(&bad, &|_| None).unwrap_err().into_iter().map(|e| e.0).collect();
        assert!(errors.iter().any(|e| e.contains("needs litellm_params.aws_region_name")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("takes no api_key")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("aws_access_key_id: not supported by Sluice")), "{errors:?}");
    }

    /// Azure OpenAI: the deployment's path with `api-version`, Azure's `/openai/v1` form, the
    /// key in `api-key` from AZURE_API_KEY only to Azure's hosts.
    #[test]
    fn azure_deployments_may_authenticate_with_an_entra_id_application_instead_of_a_key() {
        let base = "https://acme.openai.azure.com";
        let entra = json!({"model": "azure/gpt4o", "api_base": base, "tenant_id": "os.environ/AZ_TENANT",
                           "client_id": "3f2a-app", "client_secret": "os.environ/AZ_SECRET"});
        let doc = json!({"model_list": [{"model_name": "a", "litellm_params": entra}]});
        let env = |name: &str| match name {
            "AZ_TENANT" => Some("contoso.onmicrosoft.com".to_owned()),
            "AZURE_API_KEY" => Some("unused".to_owned()),
            _ => None,
        };
        let s = from_litellm(&doc, &env).unwrap();
        assert_eq!(
            s.upstreams[0].entra_client,
            Some(EntraClient {
                tenant_id: "contoso.onmicrosoft.com".into(),
                client_id: "3f2a-app".into(),
                client_secret_env: "AZ_SECRET".into(),
                scope: AZURE_DEFAULT_SCOPE.into(),
                authority: AZURE_DEFAULT_AUTHORITY.into(),
            })
        );
        assert_eq!(s.gateway.deployments[0].api_key_env, None, "no key beside the application, not even the default");
        let refused = |params: Value| {
            let doc = json!({"model_list": [{"model_name": "a", "litellm_params": params}]});
            from_litellm(&doc, &env).unwrap_err().iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        };
        let mut literal = entra.clone();
        literal["client_secret"] = json!("s3cr3t-value");
        let said = refused(literal);
        assert!(said.contains("client_secret must be os.environ/NAME") && !said.contains("s3cr3t"), "{said}");
        let mut partial = entra.clone();
        partial.as_object_mut().unwrap().remove("client_id");
        assert!(refused(partial).contains("go together"));
        let mut both = entra.clone();
        both["api_key"] = json!("os.environ/AZURE_API_KEY");
        assert!(refused(both).contains("give one way to authenticate"));
        let mut openai = entra.clone();
        openai["model"] = json!("openai/gpt-4o");
        assert!(refused(openai).contains("is Azure's"));
        let mut no_tenant = entra;
        no_tenant["tenant_id"] = json!("os.environ/NOT_SET");
        assert!(refused(no_tenant).contains("environment variable NOT_SET is not set"));
    }

    #[test]
    fn azure_deployments_get_azure_paths_and_keys() {
        let doc = json!({"model_list": [
            {"model_name": "a", "litellm_params": {"model": "azure/gpt4o-prod", "api_base": "https://acme.openai.azure.com", "api_version": "2024-08-01-preview"}},
            {"model_name": "b", "litellm_params": {"model": "azure/gpt4o-prod", "api_base": "os.environ/AZURE_API_BASE"}},
            {"model_name": "c", "litellm_params": {"model": "azure/gpt-4.1", "api_base": "https://acme.openai.azure.com/openai/v1/"}},
            {"model_name": "d", "litellm_params": {"model": "azure/gpt-4.1", "api_base": "https://acme.cognitiveservices.azure.com", "api_version": "preview"}},
            {"model_name": "e", "litellm_params": {"model": "azure/dep", "api_base": "http://127.0.0.1:9000", "api_key": "os.environ/AZ_MOCK"}},
            {"model_name": "f", "litellm_params": {"model": "azure/dep", "api_base": "http://127.0.0.1:9000"}},
        ]});
        let env = |name: &str| match name {
            "AZURE_API_BASE" => Some("https://acme-eu.openai.azure.com/".to_owned()),
            "AZURE_API_VERSION" => Some("2024-06-01".to_owned()),
            _ => None,
        };
        let s = from_litellm(&doc, &env).unwrap();
        let got: Vec<(&str, &str, &str, Option<&str>)> = s
            .gateway
            .deployments
            .iter()
            .zip(&s.upstreams)
            .map(|(d, u)| (u.host.as_str(), d.base_path.as_str(), d.path_query.as_str(), d.api_key_env.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "acme.openai.azure.com",
                    "/openai/deployments/gpt4o-prod",
                    "?api-version=2024-08-01-preview",
                    Some("AZURE_API_KEY")
                ),
                (
                    "acme-eu.openai.azure.com",
                    "/openai/deployments/gpt4o-prod",
                    "?api-version=2024-06-01",
                    Some("AZURE_API_KEY")
                ),
                ("acme.openai.azure.com", "/openai/v1", "", Some("AZURE_API_KEY")),
                ("acme.cognitiveservices.azure.com", "/openai/v1", "?api-version=preview", Some("AZURE_API_KEY")),
                ("127.0.0.1", "/openai/deployments/dep", "?api-version=2024-06-01", Some("AZ_MOCK")),
                ("127.0.0.1", "/openai/deployments/dep", "?api-version=2024-06-01", None),
            ]
        );
        assert!(s.gateway.deployments.iter().all(|d| d.provider == Provider::Azure));
        assert!(s.warnings.iter().any(|w| w.contains("127.0.0.1") && w.contains("$AZURE_API_KEY")), "{:?}", s.warnings);
        let bad = json!({"model_list": [
            {"model_name": "a", "litellm_params": {"model": "azure/x y", "api_base": "https://acme.openai.azure.com"}},
            {"model_name": "b", "litellm_params": {"model": "azure/x"}},
            {"model_name": "c", "litellm_params": {"model": "openai/x", "api_version": "2024-06-01"}},
        ]});
        let errors: Vec<String> = from_litellm(&bad, &|_| None).unwrap_err().into_iter().map(|e| e.0).collect();
        assert!(errors[0].contains("a deployment name is letters"), "{errors:?}");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[1].contains("azure/ needs litellm_params.api_base"), "{errors:?}");
        assert!(errors[2].contains("api_version is Azure's"), "{errors:?}");
    }

    /// Without `api_key`, the provider's default variable goes to the provider's own host only:
    /// an `api_base` elsewhere gets no credential (and a warning), never OPENAI_API_KEY.
    #[test]
    fn the_default_credential_goes_only_to_the_providers_own_host() {
        let doc = json!({"model_list": [
            {"model_name": "a", "litellm_params": {"model": "openai/gpt-4o"}},
            {"model_name": "b", "litellm_params": {"model": "openai/gpt-4o", "api_base": "https://api.openai.com/v1"}},
            {"model_name": "c", "litellm_params": {"model": "hosted_vllm/llama", "api_base": "http://10.0.0.5:8000/v1"}},
            {"model_name": "d", "litellm_params": {"model": "openai/gpt-4o", "api_base": "https://evil.example/v1"}},
            {"model_name": "e", "litellm_params": {"model": "anthropic/claude-sonnet-4-5"}},
            {"model_name": "f", "litellm_params": {"model": "openai/x", "api_base": "http://10.0.0.5:8000/v1", "api_key": "os.environ/VLLM_KEY"}},
        ]});
        let s = from_litellm(&doc, &env).unwrap();
        let envs: Vec<Option<&str>> = s.gateway.deployments.iter().map(|d| d.api_key_env.as_deref()).collect();
        assert_eq!(
            envs,
            [Some("OPENAI_API_KEY"), Some("OPENAI_API_KEY"), None, None, Some("ANTHROPIC_API_KEY"), Some("VLLM_KEY")]
        );
        let warned: Vec<&String> = s.warnings.iter().filter(|w| w.contains("carry no provider credential")).collect();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("evil.example") && warned[0].contains("$OPENAI_API_KEY"));
    }

    /// `litellm_settings.drop_params` is every deployment's unless its `litellm_params` says.
    #[test]
    fn drop_params_is_global_with_a_per_deployment_override() {
        let entry = |name: &str, drop: Option<bool>| {
            let mut params = json!({"model": format!("anthropic/{name}")});
            if let Some(d) = drop {
                params["drop_params"] = json!(d);
            }
            json!({"model_name": name, "litellm_params": params})
        };
        let doc = |global: Value| {
            json!({
                "model_list": [entry("a", None), entry("b", Some(false)), entry("c", Some(true))],
                "litellm_settings": {"drop_params": global},
            })
        };
        let on = from_litellm(&doc(json!(true)), &env).unwrap();
        let drops: Vec<bool> = on.gateway.deployments.iter().map(|d| d.drop_params).collect();
        assert_eq!(drops, [true, false, true]);
        assert!(!on.warnings.iter().any(|w| w.contains("drop_params")), "{:?}", on.warnings);
        let off = from_litellm(&doc(Value::Null), &env).unwrap();
        let drops: Vec<bool> = off.gateway.deployments.iter().map(|d| d.drop_params).collect();
        assert_eq!(drops, [false, false, true]);
        let errors = from_litellm(&doc(json!("yes")), &env).unwrap_err();
        assert!(errors.iter().any(|e| e.0.contains("litellm_settings.drop_params: must be true or false")));
    }

    #[test]
    fn errors_name_the_entry_and_never_echo_secrets() {
        let doc = json!({
            "model_list": [
                {"model_name": "a", "litellm_params": {"model": "openai/x", "api_key": "sk-literal-secret-123"}},
                {"model_name": "b", "litellm_params": {"model": "azure/gpt"}},
                {"model_name": "c", "litellm_params": {"model": "openai/x", "api_base": "ftp://nope"}},
                {"model_name": "d"},
            ],
            "general_settings": {"master_key": "os.environ/MISSING_VAR", "sluice_failure_policy": "sometimes"},
            "router_settings": {"routing_strategy": "random-ish"},
            "keys": [{"key_hash": "sk-sluice-plaintext", "key_alias": "x"}, {"key_hash": format!("sha256:{}", KeyHash::of(b"z").to_hex()), "max_budgte": 5}],
            "teams": "nope",
        });
        let errors = from_litellm(&doc, &env).unwrap_err();
        let all = errors.iter().map(|e| e.0.clone()).collect::<Vec<_>>().join("\n");
        for needle in [
            "model_list[0]",
            "os.environ/NAME",
            "azure/ needs litellm_params.api_base",
            "model_list[2]",
            "model_list[3]",
            "MISSING_VAR",
            "sometimes",
            "random-ish",
            "keys[0]",
            "keys[1]",
            "max_budgte",
            "teams must be a list",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("sk-literal-secret-123"));
    }

    #[test]
    fn cluster_names_are_unique_by_construction() {
        let names: Vec<String> = ["gpt-4o", "GPT-4o", "gpt_4o", "gpt.4o", "control-plane", "control_plane"]
            .iter()
            .map(|id| cluster_name(id))
            .collect();
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert!(names.iter().all(|n| n != "sluice_control_plane" && n.starts_with("sluice_")), "{names:?}");
        // Ids longer than the readable part still differ.
        let long = "x".repeat(300);
        assert_ne!(cluster_name(&format!("{long}a")), cluster_name(&format!("{long}b")));
        // The same id twice is refused, with the reason.
        let entry =
            |id: &str| json!({"model_name": "m", "litellm_params": {"model": "openai/m"}, "model_info": {"id": id}});
        let errors = from_litellm(&json!({"model_list": [entry("a"), entry("a")]}), &|_| None).unwrap_err();
        assert!(errors.iter().any(|e| e.0.contains("\"a\" is used by another entry")), "{errors:?}");
        from_litellm(&json!({"model_list": [entry("a"), entry("A")]}), &|_| None).unwrap();
    }

    #[test]
    fn a_weak_master_key_is_refused_and_a_literal_one_warned_about() {
        let doc = |key: &str| json!({"general_settings": {"master_key": key}});
        let errors = from_litellm(&doc("sk-1234"), &|_| None).unwrap_err();
        assert!(errors.iter().any(|e| e.0.contains("at least 32") && !e.0.contains("sk-1234")), "{errors:?}");
        // The development escape hatch turns the error into a warning.
        let dev = |name: &str| (name == "SLUICE_ALLOW_WEAK_MASTER_KEY").then(|| "1".to_owned());
        let s = from_litellm(&doc("sk-1234"), &dev).unwrap();
        assert!(s.warnings.iter().any(|w| w.contains("SLUICE_ALLOW_WEAK_MASTER_KEY")), "{:?}", s.warnings);
        let strong = "sk-0123456789abcdef0123456789abcdef";
        let s = from_litellm(&doc(strong), &|_| None).unwrap();
        assert!(s.warnings.iter().any(|w| w.contains("written in config.yaml")), "{:?}", s.warnings);
        assert!(s.warnings.iter().all(|w| !w.contains(strong)));
        assert!(s.master_key_literal && s.gateway.master_key_env.is_none());
    }

    #[test]
    fn filter_validation_runs_too() {
        let mut doc = realistic();
        doc["keys"][0]["team_id"] = json!("ghost");
        let errors = from_litellm(&doc, &env).unwrap_err();
        assert!(errors.iter().any(|e| e.0.contains("ghost")));
    }

    #[test]
    fn fallbacks_from_either_section_are_checked_against_the_groups() {
        let doc = |router: Value, litellm: Value| {
            json!({"model_list": [
                {"model_name": "a", "litellm_params": {"model": "openai/a"}},
                {"model_name": "b", "litellm_params": {"model": "openai/b"}},
                {"model_name": "c", "litellm_params": {"model": "openai/c"}},
            ], "router_settings": router, "litellm_settings": litellm})
        };
        let s =
            from_litellm(&doc(json!({"fallbacks": [{"a": ["b", "c"]}], "default_fallbacks": ["c"]}), json!({})), &env)
                .unwrap();
        assert_eq!(s.gateway.fallbacks, [FallbackRule { group: "a".into(), to: vec!["b".into(), "c".into()] }]);
        assert_eq!(s.gateway.default_fallbacks, ["c"]);
        // litellm_settings' list, replaced by router_settings' when both have one.
        // The refusals' chains, in either section, checked the same way and named by setting.
        let s = from_litellm(
            &doc(
                json!({"context_window_fallbacks": [{"a": ["c"]}], "enable_pre_call_checks": true}),
                json!({"content_policy_fallbacks": [{"a": ["b"]}]}),
            ),
            &env,
        )
        .unwrap();
        assert_eq!(s.gateway.context_window_fallbacks, [FallbackRule { group: "a".into(), to: vec!["c".into()] }]);
        assert_eq!(s.gateway.content_policy_fallbacks, [FallbackRule { group: "a".into(), to: vec!["b".into()] }]);
        assert!(s.gateway.pre_call_checks && s.gateway.fallbacks.is_empty());
        for (settings, error) in [
            (
                json!({"context_window_fallbacks": [{"a": ["zzz"]}]}),
                "context_window_fallbacks.a: \"zzz\" is not a model group",
            ),
            (
                json!({"content_policy_fallbacks": [{"a": ["a"]}]}),
                "content_policy_fallbacks.a: a group cannot fall back to itself",
            ),
            (
                json!({"content_policy_fallbacks": {"a": ["b"]}}),
                "router_settings.content_policy_fallbacks: must be a list",
            ),
            (json!({"enable_pre_call_checks": "yes"}), "router_settings.enable_pre_call_checks"),
        ] {
            let errors = from_litellm(&doc(settings, json!({})), &env).unwrap_err();
            assert!(errors.iter().any(|e| e.0.contains(error)), "{error}: {errors:?}");
        }
        let s = from_litellm(&doc(json!({}), json!({"fallbacks": [{"b": ["a"]}]})), &env).unwrap();
        assert_eq!(s.gateway.fallbacks[0].group, "b");
        let s = from_litellm(&doc(json!({"fallbacks": [{"c": ["a"]}]}), json!({"fallbacks": [{"b": ["a"]}]})), &env);
        assert_eq!(s.unwrap().gateway.fallbacks[0].group, "c");
        for (router, says) in [
            (json!({"fallbacks": [{"a": ["zzz"]}]}), "fallbacks.a: \"zzz\" is not a model group"),
            (json!({"fallbacks": [{"a": ["b"]}, {"b": ["a"]}]}), "fallbacks: a cycle"),
            (json!({"fallbacks": {"a": ["b"]}}), "router_settings.fallbacks: must be a list"),
            (json!({"fallbacks": [{"a": "b"}]}), "router_settings.fallbacks.a: must be a list"),
            (json!({"default_fallbacks": "b"}), "router_settings.default_fallbacks: must be a list"),
        ] {
            let errors = from_litellm(&doc(router.clone(), json!({})), &env).unwrap_err();
            assert!(errors.iter().any(|e| e.0.contains(says)), "{router}: {errors:?}");
        }
    }

    #[test]
    fn background_health_checks_and_the_deployments_origin() {
        let doc = |general: Value| {
            json!({"model_list": [
                {"model_name": "a", "litellm_params": {"model": "openai/a", "api_base": "https://api.example.com:8443/v1"}},
                {"model_name": "b", "litellm_params": {"model": "openai/b"}, "model_info": {"disable_background_health_check": true}},
                {"model_name": "c", "litellm_params": {"model": "openai/c", "api_base": "http://[::1]:80"}},
            ], "general_settings": general})
        };
        let s = from_litellm(&doc(json!({"background_health_checks": true})), &env).unwrap();
        assert_eq!(s.gateway.health_check_interval_ms, Some(DEFAULT_HEALTH_CHECK_INTERVAL_MS));
        let d = &s.gateway.deployments;
        assert_eq!((d[0].no_background_health_check, d[1].no_background_health_check), (false, true));
        assert_eq!(d[0].origin, "https://api.example.com:8443");
        assert_eq!(d[1].origin, "https://api.openai.com");
        assert_eq!(d[2].origin, "http://[::1]");
        let s = from_litellm(&doc(json!({"background_health_checks": true, "health_check_interval": 30})), &env);
        assert_eq!(s.unwrap().gateway.health_check_interval_ms, Some(30_000));
        // The interval alone: checks stay off.
        let s = from_litellm(&doc(json!({"health_check_interval": 30})), &env).unwrap();
        assert_eq!(s.gateway.health_check_interval_ms, None);
        for (bad, says) in [
            (json!({"background_health_checks": true, "health_check_interval": 0.5}), "at least one second"),
            (json!({"background_health_checks": true, "health_check_interval": -1}), "health_check_interval"),
            (json!({"background_health_checks": "yes"}), "background_health_checks"),
        ] {
            let errors = from_litellm(&doc(bad.clone()), &env).unwrap_err();
            assert!(errors.iter().any(|e| e.0.contains(says)), "{bad}: {errors:?}");
        }
    }

    #[test]
    fn api_base_parsing() {
        assert_eq!(
            parse_api_base("https://api.openai.com/v1/"),
            Ok((true, "api.openai.com".into(), 443, "/v1".into()))
        );
        assert_eq!(parse_api_base("http://localhost:8000"), Ok((false, "localhost".into(), 8000, String::new())));
        assert_eq!(parse_api_base("http://[::1]:9000/v1"), Ok((false, "::1".into(), 9000, "/v1".into())));
        assert_eq!(parse_api_base("https://[2001:db8::1]"), Ok((true, "2001:db8::1".into(), 443, String::new())));
        for bad in [
            "api.openai.com",
            "http://user:pw@host/v1",
            "http://host/v1?x=1",
            "http://host:99999",
            "http://host:0",
            "http://",
            "http://ho st/",
            "http://[::1",
        ] {
            assert!(parse_api_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_empty_config() {
        let s = from_litellm(&json!({}), &env).unwrap();
        assert!(s.gateway.deployments.is_empty());
        assert_eq!(s.request_timeout_secs, DEFAULT_REQUEST_TIMEOUT_SECS);
        assert_eq!(s.failure_policy, FailurePolicy::FailClosed);
        for (value, policy) in [
            ("fail_closed", FailurePolicy::FailClosed),
            ("fail_open", FailurePolicy::FailOpen),
            ("fail_reload", FailurePolicy::FailReload),
        ] {
            let s = from_litellm(&json!({"general_settings": {"sluice_failure_policy": value}}), &env).unwrap();
            assert_eq!(s.failure_policy, policy, "{value}");
        }
        assert!(from_litellm(&json!([1]), &env).is_err());
        let s =
            from_litellm(&json!({"model_list": [{"model_name": "m", "litellm_params": {"model": "gpt-4o"}}]}), &env)
                .unwrap();
        assert_eq!(s.gateway.deployments[0].provider, Provider::Openai);
        // gpt-4o is in the built-in table: priced, and its output limit known.
        assert_eq!(s.gateway.deployments[0].pricing.input_cost_per_token, 2.5e-6);
        assert_eq!(s.gateway.deployments[0].max_output_tokens, Some(16_384));
        assert_eq!(s.gateway.deployments[0].max_input_tokens, Some(128_000));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn prices_come_from_model_info_else_the_table_else_a_warning_naming_the_model() {
        let entry = |model: &str, info: Value| json!({"model_name": "m", "litellm_params": {"model": model, "api_base": "http://10.0.0.5:8000/v1"}, "model_info": info});
        let doc = json!({"model_list": [
            entry("openai/gpt-4o", json!({"id": "own", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6})),
            entry("hosted_vllm/prod-east", json!({"id": "proxied", "base_model": "gpt-4o-mini"})),
            entry("anthropic/claude-sonnet-4-5", json!({"id": "claude"})),
            entry("hosted_vllm/llama-3-70b", json!({"id": "vllm"})),
        ]});
        let s = from_litellm(&doc, &env).unwrap();
        let price = |i: usize| s.gateway.deployments[i].pricing;
        assert_eq!((price(0).input_cost_per_token, price(0).output_cost_per_token), (1e-6, 2e-6));
        assert_eq!((price(1).input_cost_per_token, price(1).output_cost_per_token), (1.5e-7, 6e-7));
        assert_eq!(price(2).cache_creation_input_token_cost, Some(3.75e-6));
        assert_eq!(price(3), Pricing::default());
        let flagged: Vec<bool> = s.gateway.deployments.iter().map(|d| d.price_unknown).collect();
        assert_eq!(flagged, [false, false, false, true]);
        let unpriced: Vec<&String> = s.warnings.iter().filter(|w| w.contains("no price known")).collect();
        assert_eq!(unpriced.len(), 1, "{:?}", s.warnings);
        assert!(unpriced[0].contains("hosted_vllm/llama-3-70b"), "{}", unpriced[0]);
    }
}
