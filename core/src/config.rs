//! The gateway config: the JSON document the filter receives (`GatewayConfig`), its validation,
//! and its compiled, indexed runtime form (`CompiledConfig`).
//!
//! The control plane (or `sluice envoy-config` in standalone mode) builds a `GatewayConfig` from
//! LiteLLM's `config.yaml` shape (see [`crate::litellm`]) and validates it with the same
//! [`CompiledConfig::compile`] the filter runs, so a config one side accepts the other accepts.
//! The document holds key hashes and the *names* of environment variables with provider
//! credentials, never a secret: it is visible in Envoy's `/config_dump`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::cooldown::CooldownPolicy;
use crate::cost::{Pricing, usd_to_nanos};
use crate::customers::{CustomerConfig, Customers};
use crate::endpoint::{Endpoint, RouteSet};
use crate::error::LimitScope;
use crate::fallbacks::FallbackRule;
use crate::ip_rules::IpRules;
use crate::keys::KeyHash;
use crate::limits::{ScopeLimits, parallel_lease_ms};
use crate::retries::RetryPolicy;
use crate::time::{BudgetDuration, Timestamp};
use crate::usage::ApiFormat;

pub const SCHEMA_VERSION: u32 = 1;
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// How much of a non-streaming response the filter copies to find `usage`.
pub const DEFAULT_MAX_RESPONSE_SCAN_BYTES: u64 = 16 * 1024 * 1024;
/// The route's timeout when the config does not set one (`litellm_settings.request_timeout`).
pub const DEFAULT_ROUTE_TIMEOUT_MS: u64 = 600_000;
/// Output tokens reserved against budgets when neither the request nor the model says.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub schema_version: u32,
    /// The environment variable holding the master key (standalone mode): Envoy hands it to
    /// the filter like a provider credential (`host_env_keys`), so neither the key nor a
    /// digest one could brute-force offline is ever in Envoy's config or `/config_dump`.
    /// None in xDS mode, where the control plane checks the master key on lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_env: Option<String>,
    #[serde(default = "default_max_body")]
    pub max_request_body_bytes: u64,
    #[serde(default = "default_max_scan")]
    pub max_response_scan_bytes: u64,
    #[serde(default)]
    pub routing_strategy: RoutingStrategy,
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    #[serde(default)]
    pub teams: Vec<TeamConfig>,
    /// End users with rules (LiteLLM's customers): in standalone mode from config.yaml's
    /// `customers:`, in xDS mode from the control plane's directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub customers: Vec<CustomerConfig>,
    /// `litellm_settings.max_end_user_budget`: what an end user without a customer entry may
    /// spend (USD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user_max_budget: Option<f64>,
    /// `litellm_settings.max_budget` and `budget_duration`: the whole gateway's budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_budget: Option<ProxyBudget>,
    /// `general_settings.allowed_ips`: the client addresses (CIDRs) the gateway serves at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<String>,
    /// Keys not in `keys` are looked up in the control plane (xDS mode); None: standalone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_lookup: Option<KeyLookupConfig>,
    /// `router_settings.model_group_alias`: names clients may ask for, served by a group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_group_aliases: Vec<GroupAlias>,
    /// `num_retries` and `retry_policy` (router_settings or litellm_settings): how Envoy's router
    /// retries a request (`crate::retries`).
    #[serde(default, skip_serializing_if = "RetryPolicy::is_off")]
    pub retries: RetryPolicy,
    /// How long one attempt may take when neither the request nor its deployment says
    /// (`router_settings.timeout`, `litellm_settings.request_timeout`), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The route's timeout (the bootstrap's, from `request_timeout`): no request is in flight
    /// longer, which bounds how long a parallel-request slot a lost worker never gave back is
    /// held (`crate::limits`).
    #[serde(default = "default_route_timeout")]
    pub route_timeout_ms: u64,
    /// `allowed_fails`, `cooldown_time`, `disable_cooldowns` (router_settings): when a failing
    /// deployment leaves its group's rotation (`crate::cooldown`).
    #[serde(default)]
    pub cooldown: CooldownPolicy,
    /// `general_settings.background_health_checks` with `health_check_interval`: every
    /// deployment is probed this often (ms) by one worker per Envoy, and one that fails is out
    /// of its group's rotation until the next round (`deployment_health`). None: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_interval_ms: Option<u64>,
    /// `fallbacks` (router_settings or litellm_settings): the groups a failing request of a
    /// group moves on to, in order (`crate::fallbacks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<FallbackRule>,
    /// `default_fallbacks`: the chain of every group without its own entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_fallbacks: Vec<String>,
    /// `context_window_fallbacks`: where a request of a group goes when the prompt does not fit
    /// (the provider refused it as too long, or the pre-send check found no deployment it fits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_window_fallbacks: Vec<FallbackRule>,
    /// `content_policy_fallbacks`: where it goes when a provider's content policy refused it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_policy_fallbacks: Vec<FallbackRule>,
    /// `router_settings.enable_pre_call_checks`: a deployment whose `max_input_tokens` the
    /// prompt's estimate exceeds is not sent the request (`crate::refusals::prompt_estimate`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pre_call_checks: bool,
    /// `litellm_settings.cache` with `cache_params`: the response cache (`crate::cache`).
    /// None: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::CacheConfig>,
}

/// The whole gateway's budget (LiteLLM's proxy budget, `litellm_settings.max_budget` with
/// `budget_duration`), counted over every request it admits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyBudget {
    /// USD.
    pub max_budget: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_duration: Option<BudgetDuration>,
    /// xDS mode: the control plane found it spent across the fleet in the current window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub budget_spent: bool,
}

/// The shared-data counter of the gateway's own budget.
pub const PROXY_COUNTER_NAME: &str = "sluice:proxy";

/// One `router_settings.model_group_alias` entry: requests for `alias` go to `group` (and are
/// metered as that group's); a `hidden` alias is served but not listed by `/v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupAlias {
    pub alias: String,
    pub group: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

/// How the filter asks the control plane for a key it has not cached
/// (`sluice.v1.KeyLookupService/Lookup`, see proto/sluice/v1/gateway.proto).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyLookupConfig {
    /// The Envoy cluster that reaches the control plane's gRPC port.
    pub cluster: String,
    /// A lookup slower than this fails like an unreachable control plane.
    #[serde(default = "default_lookup_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a found key is served from cache (revocations are pushed, so this only bounds
    /// staleness when a push is lost).
    #[serde(default = "default_key_ttl_ms")]
    pub ttl_ms: u64,
    /// How long an unknown key is remembered as unknown, so a flood of bad keys stays in Envoy.
    #[serde(default = "default_negative_ttl_ms")]
    pub negative_ttl_ms: u64,
    /// With the control plane unreachable, an uncached key is refused (503) unless this is set.
    #[serde(default)]
    pub fail_open: bool,
    /// How many lookups each worker may start (see [`crate::lookup_budget`]).
    #[serde(default)]
    pub rate: LookupRateConfig,
}

/// Token buckets on the lookups an Envoy worker starts, so a flood of made-up keys (well
/// formed: the checksum is public) cannot reach the control plane's database. A lookup one of
/// them refuses is a 429 (`key_lookup_rate_limited`), unless the key is known from before (then
/// its cached answer serves). Every bound is per worker: an Envoy with `W` workers starts at
/// most `W × (burst + per_second × seconds)` lookups.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LookupRateConfig {
    /// Lookups a worker may start per second, sustained (all clients together).
    pub per_second: u32,
    /// Lookups a worker may start at once after a quiet spell.
    pub burst: u32,
    /// Lookups one client (an IPv4 address, an IPv6 /64: Envoy's `source.address`) may start
    /// per second on a worker; 0 turns the per-client buckets off (e.g. behind a proxy whose
    /// clients Envoy cannot tell apart).
    pub per_source_per_second: u32,
    /// Lookups one client may start at once.
    pub per_source_burst: u32,
    /// Clients a worker keeps a bucket for; when full, it forgets the idle ones (or all).
    pub max_sources: u32,
}

impl GatewayConfig {
    /// The distinct chunk-gap timeouts of its deployments' streams ([`Deployment::stream_idle_ms`]),
    /// ascending: Envoy's routes have one `per_try_idle_timeout` each, and the filter names the
    /// one a stream takes (`crate::retries::STREAM_IDLE_HEADER`).
    pub fn stream_idle_timeouts(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.deployments.iter().filter_map(|d| d.stream_idle_ms(self.timeout_ms)).collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

impl Default for LookupRateConfig {
    /// Why these: a found key costs one lookup per Envoy a minute (60 s TTL, shared by the
    /// workers), so 50 a second per worker refreshes thousands of active keys per Envoy, and a
    /// key known from before is served from cache whenever the bucket is empty; the burst of
    /// 100 absorbs a cold start. A client rarely presents more than a few new keys a second,
    /// so 10 a second (20 at once) is generous for one and leaves the worker's other 40 to the
    /// rest. At the control plane's ~0.3 ms a lookup, 50 a second is under 2 % of a core.
    fn default() -> Self {
        Self { per_second: 50, burst: 100, per_source_per_second: 10, per_source_burst: 20, max_sources: 4096 }
    }
}

impl LookupRateConfig {
    fn check(&self, errors: &mut Vec<ConfigError>) {
        if self.per_second == 0 || self.burst == 0 {
            errors.push(ConfigError("key_lookup.rate: per_second and burst must be positive".into()));
        }
        if self.per_source_per_second > 0 && (self.per_source_burst == 0 || self.max_sources == 0) {
            errors.push(ConfigError(
                "key_lookup.rate: per_source_burst and max_sources must be positive (or per_source_per_second 0)"
                    .into(),
            ));
        }
    }
}

fn default_lookup_timeout_ms() -> u64 {
    1000
}
fn default_key_ttl_ms() -> u64 {
    60_000
}
fn default_negative_ttl_ms() -> u64 {
    5_000
}

fn default_max_body() -> u64 {
    DEFAULT_MAX_REQUEST_BODY_BYTES
}
fn default_route_timeout() -> u64 {
    DEFAULT_ROUTE_TIMEOUT_MS
}

fn default_max_scan() -> u64 {
    DEFAULT_MAX_RESPONSE_SCAN_BYTES
}

/// How a deployment of a group is chosen among the healthy ones of the lowest `order`
/// (LiteLLM's `router_settings.routing_strategy`; `crate::routing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub enum RoutingStrategy {
    /// LiteLLM's default: random choice weighted by `weight`, else `rpm`, else `tpm`.
    #[default]
    #[serde(rename = "simple-shuffle")]
    SimpleShuffle,
    /// The fewest requests in flight, counted across the Envoy's workers.
    #[serde(rename = "least-busy")]
    LeastBusy,
    /// The lowest recent latency (time to first byte for a stream), at random among those
    /// within `buffer` of it; a deployment with no recent sample is tried first.
    #[serde(rename = "latency-based-routing")]
    LatencyBased(crate::routing::LatencySettings),
    /// The cheapest per token by its prices.
    #[serde(rename = "cost-based-routing")]
    CostBased,
    /// Each deployment's `rpm`/`tpm` is a limit: the least-used deployment (by tokens this
    /// minute) with room for the request; none with room is a 429.
    #[serde(rename = "usage-based-routing-v2")]
    UsageBasedV2,
}

/// The wire protocol a deployment speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// OpenAI and OpenAI-compatible servers (vLLM, Ollama's /v1, …): `Authorization: Bearer`.
    Openai,
    /// Anthropic: `x-api-key` and `anthropic-version`.
    Anthropic,
    /// Azure OpenAI: OpenAI's format under `/openai/deployments/{name}` with `?api-version=`
    /// (or Azure's `/openai/v1`), the key in `api-key`.
    Azure,
    /// Google Gemini (Generative Language API): `{base}/models/{model}:generateContent`, the
    /// key in `x-goog-api-key`; reached by OpenAI clients through translation.
    Gemini,
    /// AWS Bedrock's Converse API: `/model/{id}/converse` (`converse-stream`, AWS's binary
    /// event stream), signed (SigV4) by Envoy's `aws_request_signing` filter on the cluster.
    Bedrock,
    /// Gemini on Google Cloud's Vertex AI: Gemini's format under
    /// `/v1/projects/{p}/locations/{l}/publishers/google`, an OAuth access token in
    /// `authorization` (minted by the control plane, set by Envoy from SDS).
    VertexGemini,
    /// Claude on Vertex AI: Anthropic's Messages body without `model` and with Vertex's
    /// `anthropic_version`, to `…/publishers/anthropic/models/{model}:rawPredict`
    /// (`:streamRawPredict`), the same access token.
    VertexAnthropic,
}

impl Provider {
    pub fn format(self) -> ApiFormat {
        match self {
            Self::Openai | Self::Azure => ApiFormat::OpenAi,
            Self::Anthropic | Self::VertexAnthropic => ApiFormat::Anthropic,
            Self::Gemini | Self::VertexGemini => ApiFormat::Gemini,
            Self::Bedrock => ApiFormat::Bedrock,
        }
    }

    /// Whether the model is a segment of the URL path rather than a field of the body.
    pub fn model_in_path(self) -> bool {
        matches!(self, Self::Gemini | Self::Bedrock | Self::VertexGemini | Self::VertexAnthropic)
    }
}

impl Deployment {
    /// How long a stream from this deployment may go without a byte, before its first and
    /// between its chunks (LiteLLM's `stream_timeout`, else `timeout`, else the gateway's
    /// `timeout`: what its HTTP client's read timeout would be). None: only the connection
    /// manager's idle timeout.
    pub fn stream_idle_ms(&self, gateway_timeout_ms: Option<u64>) -> Option<u64> {
        self.stream_timeout_ms.or(self.timeout_ms).or(gateway_timeout_ms)
    }

    /// The upstream model for a request to this deployment's group: the configured name, with
    /// its `*` replaced by the part of the requested name the group's `*` matched.
    pub fn upstream_model_for<'a>(&'a self, matched: Option<&str>) -> std::borrow::Cow<'a, str> {
        match matched {
            Some(part) if self.upstream_model.contains('*') => self.upstream_model.replacen('*', part, 1).into(),
            _ => std::borrow::Cow::Borrowed(&self.upstream_model),
        }
    }

    /// The path of a request to this deployment on `endpoint`: its base path, the route below it
    /// and its query (Azure's `api-version`); Gemini's names the model and the method instead.
    /// None when a (wildcard-matched) model name cannot be part of a path.
    pub fn upstream_path(
        &self,
        endpoint: crate::endpoint::Endpoint,
        upstream_model: &str,
        streamed: bool,
    ) -> Option<String> {
        let in_path = self.provider.model_in_path();
        if in_path
            && (upstream_model.is_empty() || !upstream_model.bytes().all(|b| path_segment_byte(self.provider, b)))
        {
            return None;
        }
        match self.provider {
            Provider::Gemini | Provider::VertexGemini => {
                let method = match (endpoint, streamed) {
                    (crate::endpoint::Endpoint::Embeddings, _) => "batchEmbedContents",
                    (_, true) => "streamGenerateContent?alt=sse",
                    (_, false) => "generateContent",
                };
                Some(format!("{}/models/{upstream_model}:{method}", self.base_path))
            }
            Provider::Bedrock => {
                // An id (`anthropic.claude-…-v1:0`) or an inference profile's ARN: one path
                // segment, its `:` and `/` escaped as AWS's SDKs do. Embeddings are
                // InvokeModel's (the model's own body), chat is Converse's.
                let id = upstream_model.replace(':', "%3A").replace('/', "%2F");
                let method = match (endpoint, streamed) {
                    (crate::endpoint::Endpoint::Embeddings, _) => "invoke",
                    (_, true) => "converse-stream",
                    (_, false) => "converse",
                };
                Some(format!("{}/model/{id}/{method}", self.base_path))
            }
            Provider::VertexAnthropic => Some(match (endpoint, streamed) {
                // Vertex counts Claude's tokens at one model-less name, the model in the body.
                (crate::endpoint::Endpoint::CountTokens, _) => {
                    format!("{}/models/count-tokens:rawPredict", self.base_path)
                }
                (_, true) => format!("{}/models/{upstream_model}:streamRawPredict", self.base_path),
                (_, false) => format!("{}/models/{upstream_model}:rawPredict", self.base_path),
            }),
            _ => {
                // Every OpenAI-format request's path: pieces joined without `format!`'s machinery.
                let suffix = endpoint.upstream_suffix();
                let mut path = String::with_capacity(self.base_path.len() + suffix.len() + self.path_query.len());
                path.push_str(&self.base_path);
                path.push_str(suffix);
                path.push_str(&self.path_query);
                Some(path)
            }
        }
    }

    /// The prices of `upstream_model` at this deployment, and whether none is known.
    pub fn pricing_for(&self, upstream_model: &str) -> (Pricing, bool) {
        match self.priced_models.get(upstream_model) {
            Some(pricing) => (*pricing, false),
            None => (self.pricing, self.price_unknown),
        }
    }
}

/// A byte a name may have where it stands as one segment of `provider`'s URL path (Gemini's
/// model, Azure's deployment and `api-version`): letters, digits, `-`, `_`, `.`; Bedrock's id
/// or ARN also `:` and `/`, escaped when the path is built; Claude's on Vertex also `@`
/// (`claude-3-5-sonnet-v2@20241022`).
pub fn path_segment_byte(provider: Provider, b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || b"-_.".contains(&b)
        || (provider == Provider::Bedrock && b":/".contains(&b))
        || (provider == Provider::VertexAnthropic && b == b'@')
}

/// The part of `name` that `pattern`'s one `*` matches (`openai/*` and `openai/gpt-4o`: `gpt-4o`),
/// or None when it does not match or `pattern` has no `*`.
pub fn wildcard_match<'a>(pattern: &str, name: &'a str) -> Option<&'a str> {
    let (prefix, suffix) = pattern.split_once('*')?;
    let rest = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (!rest.is_empty()).then_some(rest)
}

/// LiteLLM's `model_info.mode`: which routes a deployment serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelMode {
    /// `/v1/chat/completions`, `/v1/messages` and `/v1/responses`.
    Chat,
    /// `/v1/completions`.
    Completion,
    /// `/v1/embeddings`.
    Embedding,
    /// `/v1/responses` only (a model OpenAI serves on the Responses API alone).
    Responses,
}

impl ModelMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "chat" => Some(Self::Chat),
            "completion" => Some(Self::Completion),
            "embedding" => Some(Self::Embedding),
            "responses" => Some(Self::Responses),
            _ => None,
        }
    }

    pub fn serves(self, endpoint: crate::endpoint::Endpoint) -> bool {
        use crate::endpoint::Endpoint as E;
        match self {
            Self::Chat => matches!(endpoint, E::ChatCompletions | E::Messages | E::Responses | E::CountTokens),
            Self::Completion => endpoint == E::Completions,
            Self::Embedding => endpoint == E::Embeddings,
            Self::Responses => endpoint == E::Responses,
        }
    }
}

/// One `model_list` entry: where a model group's traffic may go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Unique id (`model_info.id`, or derived from the group and position).
    pub id: String,
    /// The model group clients ask for (`model_name`).
    pub model_name: String,
    pub provider: Provider,
    /// The model name sent upstream (`litellm_params.model` without its provider prefix).
    pub upstream_model: String,
    /// The Envoy cluster that reaches this deployment's `api_base`.
    pub cluster: String,
    /// `api_base`'s scheme and authority (`https://api.openai.com`): what `/health` shows of
    /// the deployment, and the `:authority` a health probe names (no secret: LiteLLM shows it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
    /// Path prefix of `api_base` (`/v1` for OpenAI, empty for Anthropic,
    /// `/openai/deployments/{name}` for Azure).
    #[serde(default)]
    pub base_path: String,
    /// Query string appended to every upstream path (Azure's `?api-version=…`), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_query: String,
    /// Name of the environment variable holding the provider credential (never its value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Relative routing weight (already resolved from weight / rpm / tpm).
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub pricing: Pricing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// `model_info.max_input_tokens` (else the built-in table's): the longest prompt the model
    /// takes, for the pre-send context check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    /// LiteLLM's `drop_params`: a client parameter this deployment's format cannot carry is
    /// dropped in translation instead of refused (400 `unsupported_params`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_params: bool,
    /// A wildcard deployment's prices by upstream model (the built-in table's models of its
    /// provider that its pattern matches); a model not listed is billed at `pricing`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub priced_models: BTreeMap<String, Pricing>,
    /// `model_info.mode`: the routes it serves (any, when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModelMode>,
    /// No price is known for this deployment (no `model_info` prices, not in the built-in
    /// table): its requests are recorded at $0 and flagged `price_unknown`, never silently.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub price_unknown: bool,
    /// `litellm_params.timeout`: how long one attempt at this deployment may take, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `litellm_params.stream_timeout`: the same for a streamed request (until its first byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_timeout_ms: Option<u64>,
    /// `litellm_params.order`: the group's deployments of the lowest order that are not cooling
    /// down take its requests (none: after every ordered one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    /// `model_info.disable_background_health_check`: left out of background health checks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_background_health_check: bool,
}

fn one() -> u32 {
    1
}

/// A virtual key (LiteLLM's field names). Only its SHA-256 hash is ever configured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub key_hash: Option<KeyHash>,
    /// The control plane's master key, as its key lookup answers for it (xDS mode, where no
    /// Envoy holds the master key's digest): it may run the gateway's admin routes (`/health`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub master: bool,
    /// The control plane's id of the key (`key_…`), used in usage records and counter names;
    /// standalone keys have none and are named by their hash prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Model groups (or `*`-wildcards, or `all-proxy-models`) this key may use; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u64>,
    /// Requests of this key in flight at once (LiteLLM's parallel request limiter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_requests: Option<u64>,
    /// USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_duration: Option<BudgetDuration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_routes: Vec<String>,
    /// Client addresses (CIDRs) this key may be used from; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<String>,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_rpm_limit: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_tpm_limit: BTreeMap<String, u64>,
    /// USD per model group (LiteLLM's `model_max_budget`), in the key's `budget_duration`
    /// windows: what the key may spend on that model, besides its own `max_budget`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_max_budget: BTreeMap<String, f64>,
    /// USD this key spent on each budgeted model across every Envoy in the current window, as
    /// the control plane counted it when it answered a lookup (xDS mode).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_fleet_spend: BTreeMap<String, f64>,
    /// USD this key spent across every Envoy in its current budget window, as the control
    /// plane counted it when it answered a lookup (xDS mode; a key at its `max_budget` is
    /// refused everywhere, not only on the Envoy that spent it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_spend: Option<f64>,
    /// The key's organization: its own, else its team's (xDS mode: the control plane's
    /// invalidations name it when the organization's budget is spent or its window ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// The `max_budget` (USD) of the key's user, and what that user spent across every Envoy
    /// in the user's current budget window (xDS mode; the control plane counts it, as for
    /// `fleet_spend`). A key whose user is at or over its budget is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_max_budget: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_fleet_spend: Option<f64>,
    /// As `user_max_budget` / `user_fleet_spend`, for the key's organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_max_budget: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_fleet_spend: Option<f64>,
    /// The budget (USD) of the key's user in the key's team (LiteLLM's team member budget:
    /// the member's own, else the team's default for members) and what the member spent across
    /// every Envoy in its current window (xDS mode; the control plane counts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_max_budget: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_fleet_spend: Option<f64>,
    /// The rules of the key's user and of its organization (xDS mode: the lookup adds them
    /// from the stored user and organization), enforced on every key they own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_policy: Option<OwnerPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_policy: Option<OwnerPolicy>,
    /// The limits of the key's user in the key's team (LiteLLM's team member `rpm_limit`,
    /// `tpm_limit`; xDS mode), counted over that user's keys of the team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_policy: Option<OwnerPolicy>,
}

/// What a user or an organization imposes on each of its keys: the models it may use
/// (intersected with the key's and the team's), blocking, and RPM, TPM and parallel limits
/// counted over all of its keys together.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OwnerPolicy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_requests: Option<u64>,
}

impl OwnerPolicy {
    /// Whether it imposes anything at all (an owner with none is not sent).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    pub team_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_alias: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u64>,
    /// Requests of the team's keys in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_duration: Option<BudgetDuration>,
    #[serde(default)]
    pub blocked: bool,
    /// As `KeyConfig::fleet_spend`, for the team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_spend: Option<f64>,
}

/// Which models a key or team may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelAccess {
    All,
    /// Exact group names and `prefix*` wildcards.
    Only {
        exact: HashSet<String>,
        prefixes: Vec<String>,
    },
}

impl ModelAccess {
    fn compile(models: &[String]) -> Self {
        if models.is_empty() || models.iter().any(|m| m == "*" || m == "all-proxy-models") {
            return Self::All;
        }
        let mut exact = HashSet::new();
        let mut prefixes = Vec::new();
        for m in models {
            match m.strip_suffix('*') {
                Some(prefix) => prefixes.push(prefix.to_owned()),
                None => {
                    exact.insert(m.clone());
                }
            }
        }
        Self::Only { exact, prefixes }
    }

    pub fn allows(&self, model_group: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only { exact, prefixes } => {
                exact.contains(model_group) || prefixes.iter().any(|p| model_group.starts_with(p.as_str()))
            }
        }
    }
}

/// A key ready for the request path: limits in nano-dollars, routes as a bit set.
#[derive(Debug, Clone)]
pub struct CompiledKey {
    pub hash: KeyHash,
    /// The control plane's master key (`KeyConfig::master`).
    pub master: bool,
    /// Non-secret id used in usage records, logs and counter names (hash prefix).
    pub key_id: String,
    pub alias: Option<String>,
    pub team: Option<usize>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub models: ModelAccess,
    pub routes: RouteSet,
    pub allowed_ips: Option<IpRules>,
    pub blocked: bool,
    pub expires_unix_secs: Option<i64>,
    pub limits: ScopeLimits,
    /// Per-model limits (`model_rpm_limit`, `model_tpm_limit`, `model_max_budget`) by model group.
    pub model_limits: HashMap<String, ModelScope>,
    /// Shared-data name of this key's counters.
    pub counter_name: String,
    /// Fleet-wide spend in the current budget window (xDS mode), nano-dollars.
    pub fleet_spend_nanos: Option<u64>,
    /// The key's organization (its own, else its team's), as the control plane resolved it.
    pub organization_id: Option<String>,
    /// The budgets of the key's user and organization, counted by the control plane across
    /// the fleet (xDS mode): max and spend in the current window, nano-dollars. The filter
    /// keeps no counters of its own for these.
    pub user_budget: FleetBudget,
    pub org_budget: FleetBudget,
    /// The budget of the key's user in the key's team, counted likewise.
    pub member_budget: FleetBudget,
    /// The user's and the organization's rules ([`OwnerPolicy`]), those that impose any.
    pub owners: Vec<CompiledOwner>,
    /// The key's own response-cache controls (its metadata's `cache`, LiteLLM's key-level
    /// controls): in place of the request's.
    pub cache_control: Option<crate::cache::CacheControl>,
}

/// A key's user or organization, as the filter enforces it.
#[derive(Debug, Clone)]
pub struct CompiledOwner {
    /// `User` or `Organization`.
    pub scope: LimitScope,
    pub models: ModelAccess,
    pub blocked: bool,
    pub limits: ScopeLimits,
    /// Shared-data name of the owner's counters (one per owner, whichever key counts).
    pub counter_name: String,
}

/// A budget only the control plane counts (a user's, an organization's): its max and what the
/// fleet spent of it in the current window when the key was looked up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetBudget {
    pub max_nanos: Option<u64>,
    pub spend_nanos: Option<u64>,
}

impl FleetBudget {
    fn of(max_usd: Option<f64>, spend_usd: Option<f64>) -> Self {
        Self { max_nanos: max_usd.map(usd_to_nanos), spend_nanos: spend_usd.map(usd_to_nanos) }
    }

    /// `(spend, max)` when the budget is spent.
    pub fn exceeded(&self) -> Option<(u64, u64)> {
        match (self.spend_nanos, self.max_nanos) {
            (Some(spend), Some(max)) if spend >= max => Some((spend, max)),
            _ => None,
        }
    }
}

/// A key with its team, however it reached the gateway (config or lookup).
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    pub key: CompiledKey,
    pub team: Option<CompiledTeam>,
}

/// A key × model group scope with its own limits and counter.
#[derive(Debug, Clone)]
pub struct ModelScope {
    pub limits: ScopeLimits,
    pub counter_name: String,
    /// What the fleet spent of the model's budget in the current window (xDS mode), nano-dollars.
    pub fleet_spend_nanos: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct CompiledTeam {
    pub team_id: String,
    pub models: ModelAccess,
    pub blocked: bool,
    pub limits: ScopeLimits,
    pub counter_name: String,
    /// Fleet-wide spend in the current budget window (xDS mode), nano-dollars.
    pub fleet_spend_nanos: Option<u64>,
}

/// The deployments of one model group, in config order.
#[derive(Debug, Clone)]
pub struct ModelGroup {
    pub name: String,
    pub deployments: Vec<usize>,
    /// The groups its failing requests move on to, in order (indices into `groups`).
    pub fallbacks: Vec<usize>,
    /// The groups its requests move on to when the prompt does not fit, or a content policy
    /// refused it (`context_window_fallbacks`, `content_policy_fallbacks`).
    pub context_window_fallbacks: Vec<usize>,
    pub content_policy_fallbacks: Vec<usize>,
}

impl ModelGroup {
    /// Whether its deployments can be taken out of rotation (cooldown): when another deployment
    /// or a fallback group can take the traffic. As in LiteLLM, the only deployment of a group
    /// without fallbacks never is: there would be nothing to route to instead.
    pub fn can_cool_down(&self) -> bool {
        self.deployments.len() > 1 || !self.fallbacks.is_empty()
    }
}

/// An error in a gateway config, naming the offending entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct CompiledConfig {
    pub config: GatewayConfig,
    pub keys: Vec<CompiledKey>,
    pub teams: Vec<CompiledTeam>,
    pub customers: Customers,
    /// The gateway's budget ([`ProxyBudget`]) as its counter's limits.
    pub proxy_limits: Option<ScopeLimits>,
    /// `general_settings.allowed_ips`, compiled.
    pub allowed_ips: Option<IpRules>,
    pub groups: Vec<ModelGroup>,
    key_index: HashMap<KeyHash, usize>,
    group_index: HashMap<String, usize>,
    /// What `/v1/models` lists, sorted by name: every group and every alias not hidden, each
    /// with the group that serves it (a wildcard group by the priced names it matches).
    pub listed_models: Vec<(String, usize)>,
    /// Groups whose name has a `*`, the most specific (longest fixed part) first.
    wildcard_groups: Vec<usize>,
}

/// The shared-data counter of a key, a team, a key on one model group: the names the filter
/// counts under and the fleet's limit sync reports (`crate::fleet`).
pub fn key_counter_name(key_id: &str) -> String {
    format!("sluice:k:{key_id}")
}

pub fn team_counter_name(team_id: &str) -> String {
    format!("sluice:t:{team_id}")
}

/// A team member's id, as its budget scope and its errors name it: the team's id and the
/// user's, joined by a character neither may contain (ids are [A-Za-z0-9-_.:/]).
pub fn member_scope_id(team_id: &str, user_id: &str) -> String {
    format!("{team_id}|{user_id}")
}

/// The team and the user of a [`member_scope_id`].
pub fn member_scope_parts(id: &str) -> (&str, &str) {
    id.split_once('|').unwrap_or((id, ""))
}

pub fn user_counter_name(user_id: &str) -> String {
    format!("sluice:u:{user_id}")
}

pub fn organization_counter_name(organization_id: &str) -> String {
    format!("sluice:o:{organization_id}")
}

/// A team member's counter: its user's keys of that team together.
pub fn member_counter_name(team_id: &str, user_id: &str) -> String {
    format!("sluice:m:{}", member_scope_id(team_id, user_id))
}

/// A key's owners that have a policy: (scope, id, policy, counter name); a team member by its
/// user's id (its team's is checked with the team).
fn owner_policies(key: &KeyConfig) -> impl Iterator<Item = (LimitScope, &str, &OwnerPolicy, String)> {
    let user = key.user_id.as_deref().zip(key.user_policy.as_ref());
    let org = key.organization_id.as_deref().zip(key.organization_policy.as_ref());
    let member = key.team_id.as_deref().zip(key.user_id.as_deref()).zip(key.member_policy.as_ref());
    user.map(|(id, p)| (LimitScope::User, id, p, user_counter_name(id)))
        .into_iter()
        .chain(org.map(|(id, p)| (LimitScope::Organization, id, p, organization_counter_name(id))))
        .chain(member.map(|((team, user), p)| (LimitScope::TeamMember, user, p, member_counter_name(team, user))))
}

/// A deployment's counter under `usage-based-routing-v2` (its `rpm`/`tpm` and its use).
pub fn deployment_counter_name(deployment_id: &str) -> String {
    format!("sluice:d:{deployment_id}")
}

/// A deployment's record of routing state in shared data, by kind: its cooldown (`cd`,
/// `crate::cooldown`) or its load (`ld`, `crate::load`). Its usage counter is
/// [`deployment_counter_name`].
pub fn deployment_record_name(kind: &str, deployment_id: &str) -> String {
    format!("sluice:{kind}:{deployment_id}")
}

pub fn key_model_counter_name(key_id: &str, group: &str) -> String {
    format!("sluice:km:{key_id}:{group}")
}

/// The counters of a stored key (it has a `key_id`) and its team that carry an RPM or TPM
/// limit: what a key lookup reports the fleet's counts for.
pub fn rate_limited_counters(key: &KeyConfig, team: Option<&TeamConfig>) -> Vec<String> {
    let mut names = Vec::new();
    let Some(key_id) = key.key_id.as_deref() else { return names };
    if key.rpm_limit.is_some() || key.tpm_limit.is_some() {
        names.push(key_counter_name(key_id));
    }
    if let Some(team) = team.filter(|t| t.rpm_limit.is_some() || t.tpm_limit.is_some()) {
        names.push(team_counter_name(&team.team_id));
    }
    for (_, _, policy, counter) in owner_policies(key) {
        if policy.rpm_limit.is_some() || policy.tpm_limit.is_some() {
            names.push(counter);
        }
    }
    let mut groups: Vec<&String> = key.model_rpm_limit.keys().chain(key.model_tpm_limit.keys()).collect();
    groups.sort_unstable();
    groups.dedup();
    names.extend(groups.into_iter().map(|g| key_model_counter_name(key_id, g)));
    names
}

/// Names usable as Envoy cluster names, shared-data keys and metric name parts.
fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
}

/// A USD budget must be a finite number, zero or more; `what` names the setting in the error.
pub(crate) fn check_budget(what: &str, budget: Option<f64>, errors: &mut Vec<ConfigError>) {
    if let Some(b) = budget
        && (!b.is_finite() || b < 0.0)
    {
        errors.push(ConfigError(format!("{what}: max_budget must be a non-negative number, got {b}")));
    }
}

fn compile_team(t: &TeamConfig, lease_ms: u64, errors: &mut Vec<ConfigError>) -> CompiledTeam {
    let what = format!("team {:?}", t.team_id);
    if !is_safe_name(&t.team_id) {
        errors.push(ConfigError(format!("{what}: team_id must be 1-200 characters of [A-Za-z0-9-_.:/]")));
    }
    check_budget(&what, t.max_budget, errors);
    CompiledTeam {
        team_id: t.team_id.clone(),
        models: ModelAccess::compile(&t.models),
        blocked: t.blocked,
        limits: ScopeLimits::new(t.rpm_limit, t.tpm_limit, t.max_budget.map(usd_to_nanos), t.budget_duration)
            .with_parallel(t.max_parallel_requests, lease_ms),
        counter_name: team_counter_name(&t.team_id),
        fleet_spend_nanos: t.fleet_spend.map(usd_to_nanos),
    }
}

/// One key; `team` is its index in the config's teams (None for a looked-up key, whose team
/// travels with it), `known_group` says which per-model limits may name a group.
fn compile_key(
    k: &KeyConfig,
    what: &str,
    lease_ms: u64,
    team: Option<usize>,
    known_group: impl Fn(&str) -> bool,
    errors: &mut Vec<ConfigError>,
) -> Option<CompiledKey> {
    let Some(hash) = k.key_hash else {
        errors.push(ConfigError(format!("{what}: key_hash is required (run `sluice key new`)")));
        return None;
    };
    let key_id = match &k.key_id {
        Some(id) if is_safe_name(id) => id.clone(),
        Some(id) => {
            errors.push(ConfigError(format!("{what}: key_id {id:?} must be 1-200 characters of [A-Za-z0-9-_.:/]")));
            return None;
        }
        None => {
            let mut prefix = hash.to_hex();
            prefix.truncate(16);
            prefix
        }
    };
    check_budget(what, k.max_budget, errors);
    check_budget(&format!("{what}: user"), k.user_max_budget, errors);
    check_budget(&format!("{what}: organization"), k.organization_max_budget, errors);
    check_budget(&format!("{what}: team member"), k.member_max_budget, errors);
    let routes = RouteSet::from_names(&k.allowed_routes).unwrap_or_else(|e| {
        errors.push(ConfigError(format!("{what}: {e}")));
        RouteSet::ALL
    });
    let allowed_ips = IpRules::parse(&k.allowed_ips).unwrap_or_else(|e| {
        errors.push(ConfigError(format!("{what}: allowed_ips: {e}")));
        None
    });
    let cache_control = crate::cache::key_cache_control(&k.metadata).unwrap_or_else(|e| {
        errors.push(ConfigError(format!("{what}: {e}")));
        None
    });
    let mut model_limits = HashMap::new();
    for (group, budget) in &k.model_max_budget {
        check_budget(&format!("{what}: model_max_budget.{group}"), Some(*budget), errors);
    }
    for group in k.model_rpm_limit.keys().chain(k.model_tpm_limit.keys()).chain(k.model_max_budget.keys()) {
        if !known_group(group) {
            errors.push(ConfigError(format!("{what}: per-model limit for unknown model {group:?}")));
        }
        let budget = k.model_max_budget.get(group).map(|usd| usd_to_nanos(*usd));
        model_limits.entry(group.clone()).or_insert_with(|| ModelScope {
            limits: ScopeLimits::new(
                k.model_rpm_limit.get(group).copied(),
                k.model_tpm_limit.get(group).copied(),
                budget,
                // LiteLLM's per-model budgets reset with the key's own window.
                budget.and(k.budget_duration),
            ),
            counter_name: key_model_counter_name(&key_id, group),
            fleet_spend_nanos: k.model_fleet_spend.get(group).map(|usd| usd_to_nanos(*usd)),
        });
    }
    let mut owners = Vec::new();
    for (scope, id, policy, counter_name) in owner_policies(k) {
        if !is_safe_name(id) {
            errors.push(ConfigError(format!("{what}: owner id {id:?} must be 1-200 characters of [A-Za-z0-9-_.:/]")));
            continue;
        }
        owners.push(CompiledOwner {
            scope,
            models: ModelAccess::compile(&policy.models),
            blocked: policy.blocked,
            limits: ScopeLimits::new(policy.rpm_limit, policy.tpm_limit, None, None)
                .with_parallel(policy.max_parallel_requests, lease_ms),
            counter_name,
        });
    }
    Some(CompiledKey {
        hash,
        master: k.master,
        counter_name: key_counter_name(&key_id),
        key_id,
        alias: k.key_alias.clone(),
        team,
        team_id: k.team_id.clone(),
        user_id: k.user_id.clone(),
        models: ModelAccess::compile(&k.models),
        routes,
        allowed_ips,
        blocked: k.blocked,
        expires_unix_secs: k.expires.as_ref().map(|t| t.unix_secs),
        limits: ScopeLimits::new(k.rpm_limit, k.tpm_limit, k.max_budget.map(usd_to_nanos), k.budget_duration)
            .with_parallel(k.max_parallel_requests, lease_ms),
        model_limits,
        fleet_spend_nanos: k.fleet_spend.map(usd_to_nanos),
        organization_id: k.organization_id.clone(),
        user_budget: FleetBudget::of(k.user_max_budget, k.user_fleet_spend),
        org_budget: FleetBudget::of(k.organization_max_budget, k.organization_fleet_spend),
        member_budget: FleetBudget::of(k.member_max_budget, k.member_fleet_spend),
        owners,
        cache_control,
    })
}

impl CompiledConfig {
    /// Validates a config and builds its indexes. Every problem is reported, not just the first.
    pub fn compile(config: GatewayConfig) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if config.schema_version != SCHEMA_VERSION {
            errors.push(ConfigError(format!(
                "schema_version {} is not supported (expected {SCHEMA_VERSION})",
                config.schema_version
            )));
        }
        if config.max_request_body_bytes == 0 {
            errors.push(ConfigError("max_request_body_bytes must be positive".into()));
        }
        if config.route_timeout_ms == 0 {
            errors.push(ConfigError("route_timeout_ms must be positive".into()));
        }
        // How long a key's or team's parallel-request slot is leased (`crate::limits`).
        let lease_ms = parallel_lease_ms(config.route_timeout_ms);
        if let Some(lookup) = &config.key_lookup {
            lookup.rate.check(&mut errors);
        }

        let mut groups: Vec<ModelGroup> = Vec::new();
        let mut group_index: HashMap<String, usize> = HashMap::new();
        let mut deployment_ids = HashSet::new();
        for (i, d) in config.deployments.iter().enumerate() {
            let what = format!("deployment {:?} (model_name {:?})", d.id, d.model_name);
            if !deployment_ids.insert(d.id.as_str()) {
                errors.push(ConfigError(format!("{what}: duplicate deployment id")));
            }
            if d.model_name.trim().is_empty() || d.model_name.len() > 200 {
                errors.push(ConfigError(format!("{what}: model_name must be 1-200 characters")));
            }
            if d.upstream_model.is_empty() {
                errors.push(ConfigError(format!("{what}: the upstream model name is empty")));
            }
            // (A wildcard's `*` is filled per request and checked then: `upstream_path`.)
            if d.provider.model_in_path()
                && !d.upstream_model.bytes().all(|b| b == b'*' || path_segment_byte(d.provider, b))
            {
                errors.push(ConfigError(format!(
                    "{what}: the model {:?} goes in the URL path: letters, digits, '-', '_', '.' (and ':', '/' for Bedrock, '@' for Claude on Vertex)",
                    d.upstream_model
                )));
            }
            let stars = |s: &str| s.matches('*').count();
            if stars(&d.model_name) > 1 || stars(&d.upstream_model) > 1 {
                errors.push(ConfigError(format!("{what}: a wildcard name has one '*'")));
            } else if stars(&d.upstream_model) == 1 && stars(&d.model_name) == 0 {
                errors.push(ConfigError(format!(
                    "{what}: the upstream model {:?} has a '*' but model_name has none to fill it",
                    d.upstream_model
                )));
            }
            if !is_safe_name(&d.cluster) {
                errors.push(ConfigError(format!(
                    "{what}: cluster {:?} must be 1-200 characters of [A-Za-z0-9-_.:/]",
                    d.cluster
                )));
            }
            if !(d.base_path.is_empty() || d.base_path.starts_with('/'))
                || d.base_path.ends_with('/')
                || d.base_path.contains(['?', '#', ' '])
            {
                errors.push(ConfigError(format!(
                    "{what}: api_base path {:?} must start with '/' and not end with one",
                    d.base_path
                )));
            }
            if !(d.path_query.is_empty()
                || (d.path_query.starts_with('?')
                    && d.path_query.bytes().skip(1).all(|b| b.is_ascii_alphanumeric() || b"-_.=&".contains(&b))))
            {
                errors.push(ConfigError(format!(
                    "{what}: query {:?} must be '?' and name=value pairs of [A-Za-z0-9-_.]",
                    d.path_query
                )));
            }
            if let Some(env) = &d.api_key_env
                && (env.is_empty() || !env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            {
                errors.push(ConfigError(format!("{what}: {env:?} is not an environment variable name")));
            }
            if let Err(e) = d.pricing.validate() {
                errors.push(ConfigError(format!("{what}: {e}")));
            }
            let g = *group_index.entry(d.model_name.clone()).or_insert_with(|| {
                groups.push(ModelGroup {
                    name: d.model_name.clone(),
                    deployments: Vec::new(),
                    fallbacks: Vec::new(),
                    context_window_fallbacks: Vec::new(),
                    content_policy_fallbacks: Vec::new(),
                });
                groups.len() - 1
            });
            if let Some(group) = groups.get_mut(g) {
                group.deployments.push(i);
            }
        }

        let mut listed_models: Vec<(String, usize)> = Vec::new();
        let mut wildcard_groups = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            if !g.name.contains('*') {
                listed_models.push((g.name.clone(), i));
                continue;
            }
            wildcard_groups.push(i);
            // Listed as the names it serves that have a known price, else as the pattern.
            let before = listed_models.len();
            for d in g.deployments.iter().filter_map(|d| config.deployments.get(*d)) {
                for upstream in d.priced_models.keys() {
                    let served = wildcard_match(&d.upstream_model, upstream).map(|part| g.name.replacen('*', part, 1));
                    listed_models.extend(served.map(|name| (name, i)));
                }
            }
            if listed_models.len() == before {
                listed_models.push((g.name.clone(), i));
            }
        }
        wildcard_groups.sort_by_key(|i| std::cmp::Reverse(groups.get(*i).map_or(0, |g| g.name.len())));
        for a in &config.model_group_aliases {
            let what = format!("model_group_alias {:?}", a.alias);
            match group_index.get(&a.group).copied() {
                _ if group_index.contains_key(&a.alias) => {
                    errors.push(ConfigError(format!("{what}: a model group or another alias has that name")));
                }
                None => errors.push(ConfigError(format!("{what}: model group {:?} is not in model_list", a.group))),
                Some(g) => {
                    group_index.insert(a.alias.clone(), g);
                    if !a.hidden {
                        listed_models.push((a.alias.clone(), g));
                    }
                }
            }
        }

        // Each kind of chain is checked the same way, and an error names its setting.
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let chains = [
            ("fallbacks", crate::fallbacks::chains(&names, &config.fallbacks, &config.default_fallbacks)),
            ("context_window_fallbacks", crate::fallbacks::chains(&names, &config.context_window_fallbacks, &[])),
            ("content_policy_fallbacks", crate::fallbacks::chains(&names, &config.content_policy_fallbacks, &[])),
        ];
        for (setting, found) in chains {
            let chains = match found {
                Ok(chains) => chains,
                Err(e) => {
                    errors.extend(e.into_iter().map(|e| ConfigError(e.replacen("fallbacks", setting, 1))));
                    continue;
                }
            };
            for (group, chain) in groups.iter_mut().zip(chains) {
                match setting {
                    "fallbacks" => group.fallbacks = chain,
                    "context_window_fallbacks" => group.context_window_fallbacks = chain,
                    _ => group.content_policy_fallbacks = chain,
                }
            }
        }

        let mut teams = Vec::new();
        let mut team_index: HashMap<&str, usize> = HashMap::new();
        for t in &config.teams {
            let what = format!("team {:?}", t.team_id);
            if team_index.insert(t.team_id.as_str(), teams.len()).is_some() {
                errors.push(ConfigError(format!("{what}: duplicate team_id")));
            }
            teams.push(compile_team(t, lease_ms, &mut errors));
        }

        let mut keys = Vec::new();
        let mut key_index = HashMap::new();
        let mut key_ids = HashSet::new();
        for (i, k) in config.keys.iter().enumerate() {
            let label = k.key_alias.clone().unwrap_or_else(|| format!("#{i}"));
            let what = format!("key {label:?}");
            let team = match &k.team_id {
                Some(t) => match team_index.get(t.as_str()) {
                    Some(idx) => Some(*idx),
                    None => {
                        errors.push(ConfigError(format!("{what}: team_id {t:?} is not declared under teams")));
                        None
                    }
                },
                None => None,
            };
            let Some(key) = compile_key(k, &what, lease_ms, team, |g| group_index.contains_key(g), &mut errors) else {
                continue;
            };
            if key_index.insert(key.hash, keys.len()).is_some() {
                errors.push(ConfigError(format!("{what}: the same key_hash appears twice")));
            }
            if !key_ids.insert(key.key_id.clone()) {
                errors.push(ConfigError(format!("{what}: two keys share the id {}", key.key_id)));
            }
            keys.push(key);
        }

        let customers = Customers::compile(&config.customers, config.end_user_max_budget, lease_ms, &mut errors);
        let allowed_ips = IpRules::parse(&config.allowed_ips).unwrap_or_else(|e| {
            errors.push(ConfigError(format!("general_settings.allowed_ips: {e}")));
            None
        });
        let proxy_limits = config.proxy_budget.as_ref().map(|b| {
            check_budget("litellm_settings", Some(b.max_budget), &mut errors);
            ScopeLimits::new(None, None, Some(usd_to_nanos(b.max_budget)), b.budget_duration)
        });

        let stream_idle = config.stream_idle_timeouts();
        if stream_idle.len() > crate::retries::MAX_STREAM_IDLE_ROUTES {
            errors.push(ConfigError(format!(
                "{} different stream timeouts (litellm_params.stream_timeout, else timeout, else request_timeout): \
                 at most {} (each is a route in Envoy)",
                stream_idle.len(),
                crate::retries::MAX_STREAM_IDLE_ROUTES
            )));
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        listed_models.sort();
        listed_models.dedup_by(|a, b| a.0 == b.0);
        Ok(Self {
            config,
            keys,
            teams,
            customers,
            proxy_limits,
            allowed_ips,
            groups,
            key_index,
            group_index,
            listed_models,
            wildcard_groups,
        })
    }

    pub fn key(&self, hash: &KeyHash) -> Option<&CompiledKey> {
        self.keys.get(self.key_position(hash)?)
    }

    /// Index of a key in [`Self::keys`] by its hash (a hash-map lookup: the digest, not the
    /// key, is compared, so timing reveals nothing about the key).
    pub fn key_position(&self, hash: &KeyHash) -> Option<usize> {
        self.key_index.get(hash).copied()
    }

    pub fn team(&self, idx: usize) -> Option<&CompiledTeam> {
        self.teams.get(idx)
    }

    pub fn group(&self, name: &str) -> Option<&ModelGroup> {
        self.groups.get(self.group_index(name)?)
    }

    /// Position of a model group in `groups`.
    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.group_index.get(name).copied()
    }

    /// The group serving a requested model name: a group or alias of that name, else the most
    /// specific wildcard group matching it, with the part its `*` matched.
    pub fn resolve_model<'a>(&self, name: &'a str) -> Option<(usize, Option<&'a str>)> {
        if let Some(index) = self.group_index(name) {
            return Some((index, None));
        }
        self.wildcard_groups.iter().find_map(|i| {
            let group = self.groups.get(*i)?;
            wildcard_match(&group.name, name).map(|part| (*i, Some(part)))
        })
    }

    pub fn deployment(&self, idx: usize) -> Option<&Deployment> {
        self.config.deployments.get(idx)
    }

    /// The named records of the configured keys', teams' and (standalone) customers' counters
    /// (key, key × model, the key's owners, team, customer): made when the config loads,
    /// before traffic, because two workers creating the same record at once could lose an
    /// update. In xDS mode customers come and go with the directory: their counters are slotted.
    pub fn named_counters(&self) -> impl Iterator<Item = &str> {
        let keys = self.keys.iter().flat_map(|k| {
            std::iter::once(k.counter_name.as_str())
                .chain(k.model_limits.values().map(|m| m.counter_name.as_str()))
                .chain(k.owners.iter().map(|o| o.counter_name.as_str()))
        });
        let customers = self.customers.counter_names().filter(|_| self.config.key_lookup.is_none());
        let proxy = self.proxy_limits.map(|_| PROXY_COUNTER_NAME);
        keys.chain(self.teams.iter().map(|t| t.counter_name.as_str())).chain(customers).chain(proxy)
    }

    /// A key (and its team) the control plane answered a lookup with, validated and compiled
    /// like a configured one, with the same counter names. Per-model limits for model groups
    /// this gateway does not serve are left out (they cannot apply here).
    pub fn compile_looked_up(
        &self,
        key: &KeyConfig,
        team: Option<&TeamConfig>,
    ) -> Result<ResolvedKey, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let what = "looked-up key";
        if key.team_id.as_deref() != team.map(|t| t.team_id.as_str()) {
            errors.push(ConfigError(format!("{what}: its team does not match the team sent with it")));
        }
        let lease_ms = parallel_lease_ms(self.config.route_timeout_ms);
        let compiled_team = team.map(|t| compile_team(t, lease_ms, &mut errors));
        let compiled = compile_key(key, what, lease_ms, None, |_| true, &mut errors);
        match compiled {
            Some(mut k) if errors.is_empty() => {
                k.model_limits.retain(|group, _| self.group_index.contains_key(group));
                Ok(ResolvedKey { key: k, team: compiled_team })
            }
            _ => Err(errors),
        }
    }

    /// A configured key with its team, in the form the request path uses for every key.
    pub fn resolved(&self, index: usize) -> Option<ResolvedKey> {
        let key = self.keys.get(index)?.clone();
        let team = key.team.and_then(|t| self.team(t)).cloned();
        Some(ResolvedKey { key, team })
    }

    /// Whether a group has at least one deployment that speaks the endpoint's format.
    pub fn group_serves(&self, group: &ModelGroup, endpoint: Endpoint) -> bool {
        group.deployments.iter().filter_map(|i| self.deployment(*i)).any(|d| d.provider.format() == endpoint.format())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn deployment(id: &str, group: &str) -> Deployment {
        Deployment {
            id: id.into(),
            model_name: group.into(),
            provider: Provider::Openai,
            upstream_model: group.into(),
            cluster: format!("sluice_{id}"),
            origin: String::new(),
            base_path: "/v1".into(),
            path_query: String::new(),
            priced_models: BTreeMap::new(),
            mode: None,
            api_key_env: Some("OPENAI_API_KEY".into()),
            weight: 1,
            rpm: None,
            tpm: None,
            pricing: Pricing::default(),
            max_output_tokens: None,
            max_input_tokens: None,
            drop_params: false,
            price_unknown: false,
            timeout_ms: None,
            stream_timeout_ms: None,
            order: None,
            no_background_health_check: false,
        }
    }

    fn base() -> GatewayConfig {
        GatewayConfig {
            schema_version: SCHEMA_VERSION,
            master_key_env: None,
            max_request_body_bytes: 1024,
            max_response_scan_bytes: 1024,
            routing_strategy: RoutingStrategy::SimpleShuffle,
            deployments: vec![deployment("a", "gpt-4o"), deployment("b", "gpt-4o"), deployment("c", "claude")],
            keys: vec![],
            teams: vec![],
            customers: vec![],
            end_user_max_budget: None,
            proxy_budget: None,
            allowed_ips: Vec::new(),
            key_lookup: None,
            model_group_aliases: Vec::new(),
            retries: RetryPolicy::default(),
            timeout_ms: None,
            route_timeout_ms: DEFAULT_ROUTE_TIMEOUT_MS,
            cooldown: CooldownPolicy::default(),
            health_check_interval_ms: None,
            fallbacks: Vec::new(),
            default_fallbacks: Vec::new(),
            context_window_fallbacks: Vec::new(),
            content_policy_fallbacks: Vec::new(),
            pre_call_checks: false,
            cache: None,
        }
    }

    /// Each distinct stream timeout is a pair of Envoy routes: a handful are fine, a config
    /// with more than the bound is refused with the reason (not cut short silently).
    #[test]
    fn stream_timeouts_are_counted_and_bounded() {
        let mut c = base();
        c.timeout_ms = Some(9_000);
        c.deployments[0].stream_timeout_ms = Some(1_500);
        c.deployments[1].timeout_ms = Some(1_500);
        assert_eq!(c.stream_idle_timeouts(), [1_500, 9_000], "c: the gateway's");
        assert!(CompiledConfig::compile(c.clone()).is_ok());
        let bound = crate::retries::MAX_STREAM_IDLE_ROUTES;
        c.deployments = (0..=bound)
            .map(|i| Deployment { stream_timeout_ms: Some(1_000 + i as u64), ..deployment(&format!("d{i}"), "g") })
            .collect();
        let errors = CompiledConfig::compile(c).unwrap_err();
        assert!(errors.iter().any(|e| e.0.contains("17 different stream timeouts")), "{errors:?}");
    }

    #[test]
    fn groups_are_indexed() {
        let c = CompiledConfig::compile(base()).unwrap();
        assert_eq!(c.group("gpt-4o").unwrap().deployments, vec![0, 1]);
        assert!(c.group("nope").is_none());
        let names: Vec<_> = c.listed_models.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["claude", "gpt-4o"]);
    }

    #[test]
    fn every_error_is_reported() {
        let mut cfg = base();
        cfg.deployments[1].id = "a".into();
        cfg.deployments[2].cluster = "bad cluster".into();
        cfg.deployments[2].pricing.input_cost_per_token = -1.0;
        cfg.keys.push(KeyConfig {
            key_hash: Some(KeyHash::of(b"k")),
            team_id: Some("ghost".into()),
            max_budget: Some(f64::NAN),
            allowed_routes: vec!["/admin".into()],
            ..KeyConfig::default()
        });
        cfg.keys.push(KeyConfig { key_hash: Some(KeyHash::of(b"k")), ..KeyConfig::default() });
        let errors = CompiledConfig::compile(cfg).unwrap_err();
        let all = errors.iter().map(|e| e.0.clone()).collect::<Vec<_>>().join("\n");
        for needle in [
            "duplicate deployment id",
            "cluster",
            "input_cost_per_token",
            "ghost",
            "max_budget",
            "/admin",
            "appears twice",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn keys_resolve_teams_and_access() {
        let mut cfg = base();
        cfg.teams.push(TeamConfig { team_id: "t1".into(), models: vec!["gpt-*".into()], ..TeamConfig::default() });
        cfg.keys.push(KeyConfig {
            key_hash: Some(KeyHash::of(b"k1")),
            team_id: Some("t1".into()),
            models: vec!["gpt-4o".into()],
            max_budget: Some(1.5),
            ..KeyConfig::default()
        });
        let c = CompiledConfig::compile(cfg).unwrap();
        let k = c.key(&KeyHash::of(b"k1")).unwrap();
        assert_eq!(k.team, Some(0));
        assert!(k.models.allows("gpt-4o") && !k.models.allows("claude"));
        assert!(c.teams[0].models.allows("gpt-4o-mini"));
        assert_eq!(k.limits.max_budget_nanos, Some(1_500_000_000));
        assert!(c.key(&KeyHash::of(b"k2")).is_none());
        assert_eq!(k.key_id.len(), 16);
    }

    #[test]
    fn plaintext_keys_and_unknown_fields_are_refused() {
        let doc = r#"{"schema_version":1,"keys":[{"key_hash":"sk-sluice-plaintext"}]}"#;
        assert!(serde_json::from_str::<GatewayConfig>(doc).is_err());
        let doc = r#"{"schema_version":1,"keys":[{"key_hash":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","max_budgte":1}]}"#;
        assert!(serde_json::from_str::<GatewayConfig>(doc).is_err());
    }

    #[test]
    fn json_round_trip() {
        let mut cfg = base();
        cfg.keys.push(KeyConfig {
            key_hash: Some(KeyHash::of(b"k1")),
            budget_duration: BudgetDuration::parse("30d"),
            expires: Timestamp::parse("2030-01-01T00:00:00Z"),
            ..KeyConfig::default()
        });
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<GatewayConfig>(&json).unwrap(), cfg);
    }

    fn full_key(seed: &[u8]) -> KeyConfig {
        let mut model_rpm_limit = BTreeMap::new();
        model_rpm_limit.insert("gpt-4o".to_owned(), 5);
        KeyConfig {
            key_hash: Some(KeyHash::of(seed)),
            key_id: Some("key_abc".into()),
            key_alias: Some("ci".into()),
            team_id: Some("t1".into()),
            models: vec!["gpt-4o".into()],
            rpm_limit: Some(60),
            max_budget: Some(2.5),
            budget_duration: BudgetDuration::parse("1d"),
            allowed_routes: vec!["/v1/chat/completions".into()],
            model_rpm_limit,
            ..KeyConfig::default()
        }
    }

    fn team_t1() -> TeamConfig {
        TeamConfig { team_id: "t1".into(), rpm_limit: Some(600), models: vec!["gpt-*".into()], ..TeamConfig::default() }
    }

    #[test]
    fn a_looked_up_key_compiles_like_a_configured_one() {
        // The same key and team, once in the config (standalone) and once from a lookup (xDS).
        let mut standalone = base();
        standalone.teams.push(team_t1());
        standalone.keys.push(full_key(b"k1"));
        let standalone = CompiledConfig::compile(standalone).unwrap();
        let configured = standalone.resolved(0).unwrap();

        let xds = CompiledConfig::compile(base()).unwrap();
        let looked_up = xds.compile_looked_up(&full_key(b"k1"), Some(&team_t1())).unwrap();

        let (a, b) = (&configured.key, &looked_up.key);
        assert_eq!(a.counter_name, "sluice:k:key_abc");
        assert_eq!(a.counter_name, b.counter_name, "counters are shared however the key arrived");
        assert_eq!((a.hash, &a.key_id, &a.alias, &a.team_id), (b.hash, &b.key_id, &b.alias, &b.team_id));
        assert_eq!(
            (a.limits, a.routes, a.blocked, a.expires_unix_secs),
            (b.limits, b.routes, b.blocked, b.expires_unix_secs)
        );
        assert_eq!(a.models, b.models);
        let names = |k: &CompiledKey| {
            let mut v: Vec<_> =
                k.model_limits.iter().map(|(g, m)| (g.clone(), m.counter_name.clone(), m.limits)).collect();
            v.sort_by(|x, y| x.0.cmp(&y.0));
            v
        };
        assert_eq!(names(a), names(b));
        assert_eq!(
            names(b),
            [("gpt-4o".to_owned(), "sluice:km:key_abc:gpt-4o".to_owned(), b.model_limits["gpt-4o"].limits)]
        );
        let (ta, tb) = (configured.team.as_ref().unwrap(), looked_up.team.as_ref().unwrap());
        assert_eq!(
            (ta.counter_name.as_str(), ta.limits, &ta.models),
            (tb.counter_name.as_str(), tb.limits, &tb.models)
        );
        assert_eq!(tb.counter_name, "sluice:t:t1");
        assert_eq!(b.team, None, "a looked-up key's team travels with it, not as a config index");
    }

    #[test]
    fn a_looked_up_key_without_an_id_is_named_by_its_hash_prefix() {
        let c = CompiledConfig::compile(base()).unwrap();
        let key = KeyConfig { key_hash: Some(KeyHash::of(b"k2")), ..KeyConfig::default() };
        let r = c.compile_looked_up(&key, None).unwrap();
        let prefix = &KeyHash::of(b"k2").to_hex()[..16];
        assert_eq!(r.key.key_id, prefix);
        assert_eq!(r.key.counter_name, format!("sluice:k:{prefix}"));
        assert!(r.team.is_none());
    }

    #[test]
    fn a_looked_up_key_is_validated_like_a_configured_one() {
        let c = CompiledConfig::compile(base()).unwrap();
        let bad = |key: KeyConfig, team: Option<TeamConfig>, needle: &str| {
            let errors = c.compile_looked_up(&key, team.as_ref()).unwrap_err();
            let all = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        };
        let ok = KeyConfig { key_hash: Some(KeyHash::of(b"k3")), ..KeyConfig::default() };
        bad(KeyConfig { key_hash: None, ..ok.clone() }, None, "key_hash is required");
        bad(KeyConfig { key_id: Some("key with spaces".into()), ..ok.clone() }, None, "key_id");
        bad(KeyConfig { max_budget: Some(f64::NAN), ..ok.clone() }, None, "max_budget");
        bad(KeyConfig { allowed_routes: vec!["/admin".into()], ..ok.clone() }, None, "/admin");
        bad(KeyConfig { team_id: Some("t1".into()), ..ok.clone() }, None, "team does not match");
        bad(ok.clone(), Some(team_t1()), "team does not match");
        let bad_team = TeamConfig { team_id: "t 1".into(), max_budget: Some(-1.0), ..TeamConfig::default() };
        bad(KeyConfig { team_id: Some("t 1".into()), ..ok.clone() }, Some(bad_team), "team_id must be");
        // A valid key with a team that is blocked compiles: the request path gives the precise error.
        let blocked = TeamConfig { blocked: true, ..team_t1() };
        let r = c.compile_looked_up(&KeyConfig { team_id: Some("t1".into()), ..ok }, Some(&blocked)).unwrap();
        assert!(r.team.unwrap().blocked);
    }

    #[test]
    fn user_and_organization_budgets_are_optional_and_compiled_to_nanos() {
        // An answer from a control plane that knows nothing of them still parses.
        let old: KeyConfig = serde_json::from_str(&format!(
            r#"{{"key_hash":"sha256:{}","fleet_spend":0.5}}"#,
            KeyHash::of(b"k5").to_hex()
        ))
        .unwrap();
        assert_eq!((old.user_max_budget, old.organization_id.as_deref()), (None, None));
        let c = CompiledConfig::compile(base()).unwrap();
        let r = c.compile_looked_up(&old, None).unwrap();
        assert_eq!((r.key.user_budget, r.key.org_budget), (FleetBudget::default(), FleetBudget::default()));
        assert_eq!(r.key.user_budget.exceeded(), None);
        // And a key without them serialises exactly as before.
        assert!(!serde_json::to_string(&old).unwrap().contains("user_"));

        let key = KeyConfig {
            user_id: Some("alice".into()),
            user_max_budget: Some(1.0),
            user_fleet_spend: Some(1.25),
            organization_id: Some("acme".into()),
            organization_max_budget: Some(10.0),
            organization_fleet_spend: Some(2.0),
            ..old.clone()
        };
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<KeyConfig>(&json).unwrap(), key, "round trip");
        let r = c.compile_looked_up(&key, None).unwrap();
        assert_eq!(r.key.organization_id.as_deref(), Some("acme"));
        assert_eq!(r.key.user_budget.exceeded(), Some((1_250_000_000, 1_000_000_000)));
        assert_eq!(r.key.org_budget, FleetBudget { max_nanos: Some(10_000_000_000), spend_nanos: Some(2_000_000_000) });
        assert_eq!(r.key.org_budget.exceeded(), None);
        let errors = c.compile_looked_up(&KeyConfig { organization_max_budget: Some(-1.0), ..key }, None).unwrap_err();
        assert!(errors.iter().any(|e| e.0.contains("organization: max_budget")), "{errors:?}");
    }

    #[test]
    fn per_model_limits_for_groups_this_gateway_does_not_serve_are_dropped() {
        let c = CompiledConfig::compile(base()).unwrap();
        let mut key = KeyConfig { key_hash: Some(KeyHash::of(b"k4")), ..KeyConfig::default() };
        key.model_tpm_limit.insert("gpt-4o".into(), 1000);
        key.model_tpm_limit.insert("served-elsewhere".into(), 1000);
        let r = c.compile_looked_up(&key, None).unwrap();
        assert_eq!(r.key.model_limits.keys().collect::<Vec<_>>(), ["gpt-4o"]);
    }

    #[test]
    fn the_lookup_rate_defaults_when_absent_and_must_be_usable() {
        let lookup: KeyLookupConfig = serde_json::from_str(r#"{"cluster":"cp"}"#).unwrap();
        assert_eq!(lookup.rate, LookupRateConfig::default());
        let partial: KeyLookupConfig =
            serde_json::from_str(r#"{"cluster":"cp","rate":{"per_second":5,"per_source_per_second":0}}"#).unwrap();
        assert_eq!((partial.rate.per_second, partial.rate.burst, partial.rate.per_source_per_second), (5, 100, 0));
        assert!(serde_json::from_str::<KeyLookupConfig>(r#"{"cluster":"cp","rate":{"perSecond":5}}"#).is_err());
        let with = |rate: LookupRateConfig| {
            let mut cfg = base();
            cfg.key_lookup = Some(KeyLookupConfig { rate, ..lookup.clone() });
            CompiledConfig::compile(cfg).err().unwrap_or_default()
        };
        assert!(with(LookupRateConfig::default()).is_empty());
        assert!(
            with(LookupRateConfig { per_source_per_second: 0, max_sources: 0, ..LookupRateConfig::default() })
                .is_empty()
        );
        for bad in [
            LookupRateConfig { per_second: 0, ..LookupRateConfig::default() },
            LookupRateConfig { burst: 0, ..LookupRateConfig::default() },
            LookupRateConfig { per_source_burst: 0, ..LookupRateConfig::default() },
            LookupRateConfig { max_sources: 0, ..LookupRateConfig::default() },
        ] {
            let errors = with(bad);
            assert!(errors.iter().any(|e| e.0.starts_with("key_lookup.rate")), "{bad:?}: {errors:?}");
        }
    }
}

#[cfg(test)]
mod counter_name_tests {
    use super::*;

    #[test]
    fn a_lookup_reports_exactly_the_counters_the_filter_limits() {
        let key = KeyConfig {
            key_id: Some("key_1".into()),
            rpm_limit: Some(10),
            model_tpm_limit: [("gpt-4o".to_string(), 100)].into(),
            model_rpm_limit: [("gpt-4o".to_string(), 5), ("mini".to_string(), 5)].into(),
            ..KeyConfig::default()
        };
        let limited_team = TeamConfig { team_id: "ml".into(), tpm_limit: Some(1), ..TeamConfig::default() };
        assert_eq!(
            rate_limited_counters(&key, Some(&limited_team)),
            ["sluice:k:key_1", "sluice:t:ml", "sluice:km:key_1:gpt-4o", "sluice:km:key_1:mini"]
        );
        // A team without RPM/TPM, a key without any: nothing to report for them.
        let free_team = TeamConfig { team_id: "ops".into(), max_budget: Some(1.0), ..TeamConfig::default() };
        let free_key = KeyConfig { key_id: Some("key_2".into()), max_budget: Some(1.0), ..KeyConfig::default() };
        assert!(rate_limited_counters(&free_key, Some(&free_team)).is_empty());
        assert!(rate_limited_counters(&KeyConfig { key_id: None, ..key }, None).is_empty());
    }
}
