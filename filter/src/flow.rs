//! One HTTP request through the gateway, generic over [`Host`] so every path runs in native unit
//! tests against a mock Envoy. A stage per module, in the order a request meets them:
//!
//! - `auth`: the headers: probes and `/v1/models` answered, the credential checked, the request
//!   held for its body (`lookup`: a key this Envoy has not seen, xDS mode);
//! - `route`: the body: validated, the deployment chosen (`choice`), translated, admitted on
//!   every limited scope, the request pointed at the deployment and the router told its retries
//!   and timeouts (`attempts`);
//! - `response`: the response's tap (usage scanner, translator, bounded copy) and the
//!   `x-ratelimit-*` headers;
//! - here: what every stage shares ([`Gateway`], [`RequestFlow`]'s state, the rejection), and
//!   the end of the stream: settle the reservations, count, record.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use prost::Message;
use sluice_core::attempts::AttemptError;
use sluice_core::config::{
    CompiledConfig, CompiledKey, CompiledTeam, DEFAULT_MAX_OUTPUT_TOKENS, FleetBudget, KeyConfig, Provider,
    ResolvedKey, TeamConfig,
};
use sluice_core::cost::{Pricing, nanos_to_usd};
use sluice_core::endpoint::Endpoint;
use sluice_core::error::{ErrorFormat, GatewayError, LimitKind, LimitScope};
use sluice_core::fallbacks::FAILOVER_ROUTE_HEADER;
use sluice_core::fleet::{self, WindowSet};
use sluice_core::keys::{self, KeyHash};
use sluice_core::limits::{Admission, Remaining};
use sluice_core::lookup_budget::{LookupBudget, Refused, Source};
use sluice_core::request::{parse_request, rewrite_body};
use sluice_core::routing::choose_weighted;
use sluice_core::sse::{Forward, SseUsageScanner};
use sluice_core::usage::{self, ApiFormat, Usage};

use crate::cooldowns::Cooldowns;
use crate::counters::{self, Placement, Scope, Ticket};
use crate::deployment_records::DeploymentRecords;
use crate::health::{self, Probe};
use crate::host::{Action, Host, LogLevel};
use crate::key_cache::{Cached, Invalidations, KeyCache, SharedEntry, Verdict, read_shared, write_shared};
use crate::metrics::{GroupMetric, Metrics};
use crate::secrets::Secrets;
use crate::translation::{Direction, StreamTranslation, Translation};
use crate::usage_record::{FailedAttempt, Outcome, USAGE_LOG_PREFIX, UsageRecord};
use sluice_proto::gateway::v1::{KeyLookupRequest, KeyLookupResponse};

mod attempts;
mod auth;
mod cache;
mod choice;
mod fallback;
mod fan_out;
mod health_check;
mod lookup;
mod response;
mod route;

use attempts::AttemptPolicy;
use lookup::{PendingLookup, Shared};
use response::rate_limit_headers;
pub(crate) use route::UpstreamCredential;

/// The control plane's key lookup (proto/sluice/v1/gateway.proto).
pub const KEY_LOOKUP_SERVICE: &str = "sluice.v1.KeyLookupService";
/// gRPC status OK, as Envoy reports it to the filter.
const GRPC_OK: u32 = 0;

/// Longer credentials are rejected before hashing: no Sluice or master key is this long.
const MAX_CREDENTIAL_LEN: usize = 512;
/// After a failed or refused lookup, a key known from before is served from this worker's
/// cache for this long before the control plane is asked again, so an outage costs one waiting
/// request per key and worker every few seconds, not every request (and a flood of made-up
/// keys, which empties the lookup budget, costs a known key nothing).
const STALE_RETRY_MS: u64 = 5_000;
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Every request header the flow reads, fetched in one host call when the request starts:
/// what it acts on, then the headers only the gateway sets (the router's retry and timeout
/// headers, the routes' markers).
const READ_REQUEST_HEADERS: [&str; 20] = [
    ":path",
    ":method",
    "authorization",
    "x-api-key",
    "api-key",
    "content-length",
    "x-request-id",
    "anthropic-version",
    sluice_core::request::TAGS_HEADER,
    sluice_core::request::END_USER_HEADERS[0],
    sluice_core::request::END_USER_HEADERS[1],
    "cache-control",
    CLUSTER_HEADER,
    attempts::ROUTER_HEADERS[0],
    attempts::ROUTER_HEADERS[1],
    attempts::ROUTER_HEADERS[2],
    attempts::ROUTER_HEADERS[3],
    attempts::ROUTER_HEADERS[4],
    FAILOVER_ROUTE_HEADER,
    sluice_core::retries::STREAM_IDLE_HEADER,
];
/// The header the route picks the cluster by (`cluster_header`); the route removes it upstream.
const CLUSTER_HEADER: &str = "x-sluice-cluster";
/// Every response header the flow reads, fetched in one host call: the status, the content
/// type, the router's count of attempts, and the provider's own `x-ratelimit-*` (replaced by
/// the gateway's where it has them).
const READ_RESPONSE_HEADERS: [&str; 7] = [
    ":status",
    "content-type",
    "x-envoy-attempt-count",
    RATE_LIMIT_HEADERS[0],
    RATE_LIMIT_HEADERS[1],
    RATE_LIMIT_HEADERS[2],
    RATE_LIMIT_HEADERS[3],
];
/// The client's allowance on its tightest scope, as OpenAI and LiteLLM name it.
const RATE_LIMIT_HEADERS: [&str; 4] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
];
/// Where a client may send its key (LiteLLM reads the same three).
const CLIENT_KEY_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// What the worker shares with every request: the compiled config, provider credentials, and
/// the keys it knows (configured ones, and those looked up in the control plane).
pub struct Gateway {
    pub config: CompiledConfig,
    /// Per deployment, the header its credential goes in upstream, with the value read from
    /// the environment at configure time (made once, not per request).
    pub(crate) upstream_credentials: Vec<UpstreamCredential>,
    /// How the router retries and times out requests (`attempts.rs`).
    attempt_policy: AttemptPolicy,
    /// Which deployments are cooling down after failures.
    pub(crate) cooldowns: Cooldowns,
    /// Deployments' requests in flight and latency (`least-busy`, `latency-based-routing`).
    loads: DeploymentRecords<sluice_core::load::DeploymentLoad>,
    /// Each deployment's counter under `usage-based-routing-v2` (empty under the others).
    pub usage_counters: Vec<String>,
    /// The master key's digest (standalone mode), from the environment likewise.
    master_key: Option<KeyHash>,
    /// The configured keys with their teams (same index as `config.keys`).
    keys: Vec<Rc<ResolvedKey>>,
    /// Looked-up keys (xDS mode).
    pub key_cache: RefCell<KeyCache>,
    /// What this worker has applied of the control plane's invalidations.
    pub invalidations: RefCell<Invalidations>,
    /// The lookups this worker may start (`key_lookup.rate`); None in standalone mode.
    lookup_budget: Option<RefCell<LookupBudget>>,
    /// Rate-limited scopes this worker announced to the singleton this minute (xDS mode: the
    /// singleton syncs their counts with the fleet).
    announced_scopes: RefCell<WindowSet>,
    /// What requests counted and a tick has not reported yet (shared by every worker of a
    /// config in the native build).
    pub metrics: Arc<Metrics>,
    /// The usage record being written (kept, so a request allocates none).
    record_buffer: RefCell<Vec<u8>>,
}

impl Gateway {
    pub fn new(config: CompiledConfig, secrets: Secrets) -> Self {
        let metrics = Arc::new(Metrics::new(&config));
        Self::with_metrics(config, secrets, metrics)
    }

    /// A gateway whose counts go to `metrics` (the native build's workers share one per config).
    pub fn with_metrics(config: CompiledConfig, secrets: Secrets, metrics: Arc<Metrics>) -> Self {
        let keys = (0..config.keys.len()).filter_map(|i| config.resolved(i)).map(Rc::new).collect();
        let lookup_budget = config.config.key_lookup.as_ref().map(|l| RefCell::new(LookupBudget::new(&l.rate)));
        let upstream_credentials = config
            .config
            .deployments
            .iter()
            .enumerate()
            .map(|(i, d)| UpstreamCredential::new(d.provider, secrets.credentials.get(i).and_then(Option::as_deref)))
            .collect();
        Self {
            attempt_policy: AttemptPolicy::new(&config),
            cooldowns: Cooldowns::new(&config),
            loads: DeploymentRecords::new(&config),
            usage_counters: usage_counters(&config),
            config,
            upstream_credentials,
            master_key: secrets.master_key,
            keys,
            key_cache: RefCell::new(KeyCache::default()),
            invalidations: RefCell::new(Invalidations::default()),
            lookup_budget,
            announced_scopes: RefCell::new(WindowSet::default()),
            metrics,
            record_buffer: RefCell::new(Vec::new()),
        }
    }

    /// Tells the singleton of the RPM/TPM-limited scopes an admission used that this worker
    /// has not announced this minute, and of those it moved past a tenth of their limit (it
    /// syncs at once). One queue message each; a set lookup otherwise.
    fn announce_to_fleet<H: Host>(&self, host: &H, tickets: &[Ticket], now_ms: u64) {
        let window = fleet::window_of(now_ms);
        let mut announced = self.announced_scopes.borrow_mut();
        for ticket in tickets.iter().filter(|t| t.limits.rpm.is_some() || t.limits.tpm.is_some()) {
            if announced.insert(&ticket.name, window) || ticket.checkpoint {
                host.announce_limit_scope(&ticket.name);
            }
        }
    }

    /// Reports what the request path counted without host calls (the wasm build's tick).
    pub fn flush_metrics<H: Host>(&self, host: &H) {
        self.metrics.drain(|name, delta| host.count(name, delta));
    }
}

/// The deployments' counters `usage-based-routing-v2` admits on (none under another strategy).
pub fn usage_counters(config: &CompiledConfig) -> Vec<String> {
    if config.config.routing_strategy != sluice_core::config::RoutingStrategy::UsageBasedV2 {
        return Vec::new();
    }
    config.config.deployments.iter().map(|d| sluice_core::config::deployment_counter_name(&d.id)).collect()
}

impl Gateway {
    /// Applies the singleton's invalidation log (`service::INVALIDATIONS_KEY`): drops the named
    /// keys, and the keys of the named teams, users and organizations, from this worker's
    /// cache, and remembers them so that shared entries written before them are not trusted
    /// either.
    pub fn apply_invalidations(&self, log: &str, now_ms: u64) {
        let mut applied = self.invalidations.borrow_mut();
        let (drops, last) = crate::service::invalidations_since(log, applied.seq);
        let mut cache = self.key_cache.borrow_mut();
        for drop in drops {
            match &drop {
                Some((kind, id)) => cache.invalidate(*kind, id),
                None => cache.expire_all(now_ms),
            }
            // Numbered with the newest position read: conservative for judging shared entries.
            let (kind, id) = drop.unwrap_or(('r', String::new()));
            applied.record(last, kind, &id);
        }
        applied.seq = last;
    }
}

#[derive(Debug, Clone)]
enum Principal {
    Master,
    Key(Rc<ResolvedKey>),
    /// A well-formed key the control plane could not be asked about, admitted without limits
    /// because the config says fail open.
    Unverified(KeyHash),
}

/// The outcome of reading the credential.
enum Auth {
    Known(Principal),
    /// Not configured and not freshly cached: ask the control plane (the stale entry, if any,
    /// serves only if it cannot answer).
    Lookup(KeyHash, Option<Rc<ResolvedKey>>),
}

/// An admitted request, from routing until it is settled.
struct Admitted {
    /// Index into `config.groups`.
    group: usize,
    deployment: usize,
    /// The deployment's format: what the response is parsed as.
    format: ApiFormat,
    /// The client speaks another format than the deployment: its answer is translated back.
    translation: Option<Translation>,
    streamed: bool,
    strip_usage_chunk: bool,
    est_prompt_tokens: u64,
    tickets: Vec<Ticket>,
    remaining: Remaining,
    /// What the upstream model costs, and whether no price is known for it.
    pricing: Pricing,
    price_unknown: bool,
    /// The upstream model a wildcard deployment was asked for (others: the deployment's).
    wildcard_model: Option<String>,
    /// Retries the router was allowed (`attempts.rs`).
    retries: u32,
    /// Counted in its deployment's requests in flight (`least-busy`): uncounted at the end.
    in_flight: bool,
    /// The request's end user (its `user`), recorded with its usage.
    end_user: Option<String>,
}

/// What the response tap keeps while the response passes.
enum Tap {
    None,
    Sse(SseUsageScanner),
    /// A translated stream: every chunk is replaced by its translation.
    TranslatedSse(StreamTranslation),
    /// A translated non-streaming body (or error): gathered, sent translated at its end.
    TranslatedJson {
        body: Vec<u8>,
        overflow: bool,
        translation: Translation,
    },
    /// Copy of a non-streaming body (bounded), parsed for `usage` at the end.
    Json {
        body: Vec<u8>,
        overflow: bool,
    },
}

pub struct RequestFlow<H: Host> {
    host: H,
    gateway: Rc<Gateway>,
    random: u64,
    start_ms: u64,
    /// The client's `:path` (the upstream path replaces it only where they differ).
    path: Vec<u8>,
    /// Which of the client's credential headers (`CLIENT_KEY_HEADERS`) it sent: those are
    /// removed upstream (a header it did not send costs no call).
    client_key_headers: [bool; 3],
    /// The client sent `anthropic-version` (else the gateway sets Anthropic's).
    has_anthropic_version: bool,
    /// The client sent a `CLUSTER_HEADER` of its own (replaced, never trusted).
    client_sent_cluster: bool,
    /// LiteLLM's request tags (`x-litellm-tags`), recorded with the usage.
    request_tags: Vec<String>,
    /// The end user a header names (`x-litellm-customer-id`, `x-litellm-end-user-id`): before
    /// any the body names, as in LiteLLM.
    header_end_user: Option<String>,
    endpoint: Option<Endpoint>,
    principal: Option<Principal>,
    request_id: Option<String>,
    /// Headers held (authenticated), waiting for the body to route on.
    awaiting_body: bool,
    /// The key is being looked up; the request waits for the answer.
    lookup: Option<PendingLookup>,
    /// The body was complete while the lookup was pending (its size).
    body_ready: Option<usize>,
    admitted: Option<Admitted>,
    status: u16,
    /// Attempts the router made (`x-envoy-attempt-count`; 1 when it does not say).
    attempts: u32,
    /// When the response began (read only under `latency-based-routing`).
    first_byte_ms: u64,
    tap: Tap,
    response_complete: bool,
    /// A local reply was sent; nothing else to do for this request.
    rejected: bool,
    recorded: bool,
    /// `/health`: the probes out and their answers (`health_check.rs`).
    health_check: Option<crate::deployment_health::Probes>,
    /// `/health` waits for its credential's lookup before it starts the probes.
    health_pending: bool,
    /// Fallbacks: the request's plan (`fallback.rs`), whether it is in shared data, and
    /// whether this pass is one Envoy redirected from a failed step.
    plan: Option<sluice_core::fallbacks::Plan>,
    plan_saved: bool,
    failover_pass: bool,
    /// The request body's size as Envoy holds it (what a rewrite replaces).
    buffered_len: usize,
    /// The request's `Cache-Control` directives (read only when the response cache is on).
    header_cache_control: Option<sluice_core::cache::CacheControl>,
    /// What the response cache does for this request (`cache.rs`).
    cache: cache::CacheState,
    /// The calls the filter sends itself for a request its deployment takes as several
    /// (`fan_out.rs`); they replace the router's upstream request.
    fan_out: Option<fan_out::FanOut>,
}

impl<H: Host> RequestFlow<H> {
    pub fn new(host: H, gateway: Rc<Gateway>, random: u64) -> Self {
        Self {
            host,
            gateway,
            random,
            start_ms: 0,
            path: Vec::new(),
            client_key_headers: [false; 3],
            has_anthropic_version: false,
            client_sent_cluster: false,
            request_tags: Vec::new(),
            header_end_user: None,
            endpoint: None,
            principal: None,
            request_id: None,
            awaiting_body: false,
            lookup: None,
            body_ready: None,
            admitted: None,
            status: 0,
            attempts: 1,
            first_byte_ms: 0,
            tap: Tap::None,
            response_complete: false,
            rejected: false,
            recorded: false,
            health_check: None,
            health_pending: false,
            plan: None,
            plan_saved: false,
            failover_pass: false,
            buffered_len: 0,
            header_cache_control: None,
            cache: cache::CacheState::Off,
            fan_out: None,
        }
    }

    fn config(&self) -> &CompiledConfig {
        &self.gateway.config
    }

    fn key(&self) -> Option<&CompiledKey> {
        match self.principal.as_ref()? {
            Principal::Key(r) => Some(&r.key),
            Principal::Master | Principal::Unverified(_) => None,
        }
    }

    fn team(&self) -> Option<&CompiledTeam> {
        match self.principal.as_ref()? {
            Principal::Key(r) => r.team.as_ref(),
            Principal::Master | Principal::Unverified(_) => None,
        }
    }

    /// Answers the client with an OpenAI-style error (a 429 with `retry-after`, and the limit
    /// it hit) and stops the request here.
    /// The client's error shape: Anthropic's on /v1/messages (an unknown route is OpenAI's).
    fn error_format(&self) -> ErrorFormat {
        self.endpoint.map_or(ErrorFormat::OpenAi, Endpoint::error_format)
    }

    fn reject(&mut self, error: &GatewayError) -> Action {
        self.rejected = true;
        let extra = rate_limit_headers(error);
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(1 + extra.len());
        headers.push(("content-type", "application/json"));
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        self.host.send_local_response(u32::from(error.status()), &headers, &error.body_for(self.error_format()));
        self.gateway.metrics.rejection(error);
        Action::Pause
    }

    // ---- end of stream ---------------------------------------------------------------------

    /// Called once when the stream ends, however it ends: settle, count, record.
    pub fn on_log(&mut self) {
        if self.recorded || self.rejected {
            self.end_plan();
            return;
        }
        self.recorded = true;
        let Some(admitted) = self.admitted.take() else {
            self.end_plan();
            return;
        };
        if self.end_redirected_pass(&admitted) {
            return; // the next pass records the request
        }
        // The attempts before the answer: earlier passes' (the plan says how each failed), then
        // the router's retries within this one.
        let mut failed: Vec<(usize, AttemptError)> = Vec::new();
        // The deployments its failures took out of rotation: earlier passes' (saved in the plan
        // after this pass read it), then this one's, below.
        let mut cooled_down = self.earlier_cooldowns();
        if let Some(plan) = &self.plan {
            failed.extend(plan.tried.iter().copied().zip(plan.failed.iter().copied()));
        }
        let retried = self.attempts.saturating_sub(1) as usize;
        failed.extend(std::iter::repeat_n((admitted.deployment, AttemptError::Retried), retried));
        self.end_plan();
        let tap = std::mem::replace(&mut self.tap, Tap::None);
        let cache_hit = self.cache.hit();
        let mut fan_out = self.fan_out.take();
        let (usage, outcome, estimated) = match (cache_hit, &fan_out) {
            (Some(usage), _) => (usage, Outcome::Completed, false),
            (None, Some(calls)) => calls.measure(),
            (None, None) => self.measure(&admitted, &tap),
        };
        let gateway = Rc::clone(&self.gateway);
        let Some(deployment) = gateway.config.deployment(admitted.deployment) else {
            return;
        };
        // A cached answer costs nothing (LiteLLM's rule): no provider was asked.
        let cost_nanos = if cache_hit.is_some() { 0 } else { admitted.pricing.cost_nanos(&usage) };
        let now = self.host.now_ms();
        if cache_hit.is_none() {
            if self.count_failures(&gateway, &admitted, now, self.failed_attempts()) {
                let class = AttemptError::of(self.status, None).unwrap_or(AttemptError::Retried);
                cooled_down.push((admitted.deployment, class));
            }
            self.update_load(&gateway, &admitted, now);
        }
        if !counters::settle_all(&self.host, &admitted.tickets, now, usage.total_tokens(), cost_nanos) {
            self.host.log(LogLevel::Error, "sluice: could not settle counters (shared data unavailable)");
        }
        let group = |metric, delta| gateway.metrics.group(admitted.group, metric, delta);
        group(GroupMetric::Requests, 1);
        group(GroupMetric::PromptTokens, usage.prompt_tokens);
        group(GroupMetric::CompletionTokens, usage.completion_tokens);
        group(GroupMetric::CostNanos, cost_nanos);
        group(GroupMetric::Estimated, u64::from(estimated));
        group(GroupMetric::Unpriced, u64::from(admitted.price_unknown));
        let key = self.key();
        let unverified_id = match &self.principal {
            Some(Principal::Unverified(hash)) => format!("unverified:{}", hash.short_id()),
            _ => String::new(),
        };
        let key_id = match &self.principal {
            Some(Principal::Unverified(_)) => unverified_id.as_str(),
            _ => key.map_or("master", |k| k.key_id.as_str()),
        };
        let record_id = crate::usage_record::record_id(self.random);
        let named = |(index, error): &(usize, AttemptError)| {
            Some(FailedAttempt { deployment: &gateway.config.deployment(*index)?.id, error: *error })
        };
        for (index, error) in &failed {
            gateway.metrics.failed_attempt(*index, *error);
        }
        let failed_attempts: Vec<FailedAttempt<'_>> = failed.iter().filter_map(named).collect();
        let cooled_down: Vec<FailedAttempt<'_>> = cooled_down.iter().filter_map(named).collect();
        let record = UsageRecord {
            record_id: std::str::from_utf8(&record_id).unwrap_or_default(),
            request_id: self.request_id.as_deref().unwrap_or(""),
            key_id,
            key_alias: key.and_then(|k| k.alias.as_deref()),
            team_id: key.and_then(|k| k.team_id.as_deref()),
            user_id: key.and_then(|k| k.user_id.as_deref()),
            end_user: admitted.end_user.as_deref(),
            request_tags: &self.request_tags,
            model_group: gateway.config.groups.get(admitted.group).map_or("", |g| g.name.as_str()),
            deployment: &deployment.id,
            upstream_model: admitted.wildcard_model.as_deref().unwrap_or(&deployment.upstream_model),
            route: self.endpoint.map_or("", Endpoint::route),
            status: self.status,
            outcome,
            prompt_tokens: usage.prompt_tokens,
            cached_prompt_tokens: usage.cached_prompt_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            completion_tokens: usage.completion_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            total_tokens: usage.total_tokens(),
            cost_usd: sluice_core::cost::nanos_to_usd(cost_nanos),
            start_ms: self.start_ms,
            latency_ms: now.saturating_sub(self.start_ms),
            streamed: admitted.streamed,
            estimated,
            price_unknown: admitted.price_unknown && cache_hit.is_none(),
            cache_hit: cache_hit.is_some(),
            failed_attempts: &failed_attempts,
            cooled_down: &cooled_down,
        };
        let mut json = gateway.record_buffer.take();
        json.clear();
        record.write_json(&mut json);
        if !self.host.enqueue_usage(&json) {
            // The singleton service is not up (yet): write the record ourselves, never drop it.
            self.host.log(LogLevel::Info, &format!("{USAGE_LOG_PREFIX}{}", String::from_utf8_lossy(&json)));
        }
        gateway.record_buffer.replace(json);
        // A whole non-streamed answer is the tap's copy (or the one the filter made from its
        // calls); a stream's was copied as it passed.
        let copy = match tap {
            Tap::Json { body, overflow: false } => Some(body),
            _ => fan_out.as_mut().and_then(fan_out::FanOut::take_reply),
        };
        self.store_in_cache(usage, outcome, estimated, copy);
    }

    /// Usage of a finished request: as reported by the provider, or estimated from what was
    /// delivered when the response was cut short.
    fn measure(&self, admitted: &Admitted, tap: &Tap) -> (Usage, Outcome, bool) {
        let estimate = |delivered_bytes: u64| Usage {
            prompt_tokens: admitted.est_prompt_tokens,
            completion_tokens: usage::estimate_tokens_from_bytes(delivered_bytes),
            ..Usage::default()
        };
        // Cut short: by the upstream (Envoy saw it reset) or by the client (it went away). Asked
        // only when needed: the property read is one of the dearer host calls.
        let cut_outcome = || {
            if self.status != 0
                && self.host.response_code_details().is_some_and(|d| d.windows(8).any(|w| w == b"upstream"))
            {
                Outcome::Truncated
            } else if self.status == 0 || !self.response_complete {
                Outcome::Cancelled
            } else {
                Outcome::Truncated
            }
        };
        if self.status != 0 && !(200..300).contains(&self.status) {
            return (Usage::default(), Outcome::UpstreamError, false);
        }
        match tap {
            Tap::Sse(scanner) => {
                let delivered = scanner.delivered_text_bytes();
                match scanner.reported_usage() {
                    Some(u) if scanner.completed() => (u, Outcome::Completed, false),
                    Some(mut u) => {
                        // Anthropic reports input at the start; output only at the end.
                        u.completion_tokens = u.completion_tokens.max(usage::estimate_tokens_from_bytes(delivered));
                        (u, cut_outcome(), true)
                    }
                    None => (estimate(delivered), cut_outcome(), true),
                }
            }
            Tap::TranslatedSse(translator) => {
                let reported = translator.usage();
                if translator.completed() {
                    (reported, Outcome::Completed, false)
                } else if reported == Usage::default() {
                    (estimate(0), cut_outcome(), true)
                } else {
                    (reported, cut_outcome(), true)
                }
            }
            Tap::TranslatedJson { body, overflow, .. } | Tap::Json { body, overflow } => {
                // Embeddings from a provider that counts no tokens (Gemini, Cohere on Bedrock):
                // a whole answer is complete, its prompt the estimate its client was shown.
                let uncounted = || match tap {
                    Tap::TranslatedJson { translation, .. } => {
                        translation.uncounted_embeddings_prompt(self.status, body)
                    }
                    _ => None,
                };
                match usage::parse_response_usage(admitted.format, body) {
                    Some(u) if self.response_complete => (u, Outcome::Completed, false),
                    Some(u) => (u, cut_outcome(), true),
                    None if !*overflow && self.response_complete => match uncounted() {
                        Some(prompt_tokens) => (Usage { prompt_tokens, ..Usage::default() }, Outcome::Completed, true),
                        None => (estimate(0), Outcome::Truncated, true),
                    },
                    None => (estimate(body.len() as u64), cut_outcome(), true),
                }
            }
            // No response at all: the client left before the upstream answered.
            Tap::None => (estimate(0), Outcome::Cancelled, true),
        }
    }
}
