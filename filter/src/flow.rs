//! One HTTP request through the gateway: authenticate and hold the headers → route and admit
//! on the body → meter the response → settle and record (log). Generic over [`Host`] so every path runs in
//! native unit tests against a mock Envoy.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use prost::Message;
use sluice_core::config::{
    CompiledConfig, CompiledKey, CompiledTeam, DEFAULT_MAX_OUTPUT_TOKENS, FleetBudget, KeyConfig, Provider,
    ResolvedKey, TeamConfig,
};
use sluice_core::cost::{Pricing, nanos_to_usd};
use sluice_core::endpoint::Endpoint;
use sluice_core::error::{ErrorFormat, GatewayError, LimitKind, LimitScope};
use sluice_core::fleet::{self, WindowSet};
use sluice_core::keys::{self, KeyHash};
use sluice_core::limits::Remaining;
use sluice_core::lookup_budget::{LookupBudget, Refused, Source};
use sluice_core::request::{parse_request, rewrite_body};
use sluice_core::routing::{SplitMix64, choose_weighted};
use sluice_core::sse::{Forward, SseUsageScanner};
use sluice_core::usage::{self, ApiFormat, Usage};

use crate::counters::{self, Placement, Scope, Ticket};
use crate::health::{self, Probe};
use crate::host::{Action, Host, LogLevel};
use crate::key_cache::{Cached, Invalidations, KeyCache, SharedEntry, Verdict, read_shared, write_shared};
use crate::metrics::{GroupMetric, Metrics};
use crate::secrets::Secrets;
use crate::translation::{Direction, StreamTranslation, Translation};
use crate::usage_record::{Outcome, USAGE_LOG_PREFIX, UsageRecord};
use sluice_proto::gateway::v1::{KeyLookupRequest, KeyLookupResponse};

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
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Every request header the flow reads, fetched in one host call when the request starts.
const READ_REQUEST_HEADERS: [&str; 9] = [
    ":path",
    ":method",
    "authorization",
    "x-api-key",
    "api-key",
    "content-length",
    "x-request-id",
    "anthropic-version",
    CLUSTER_HEADER,
];
/// The header the route picks the cluster by (`cluster_header`); the route removes it upstream.
const CLUSTER_HEADER: &str = "x-sluice-cluster";
/// Every response header the flow reads, fetched in one host call: the status, the content
/// type, and the provider's own `x-ratelimit-*` (replaced by the gateway's where it has them).
const READ_RESPONSE_HEADERS: [&str; 6] = [
    ":status",
    "content-type",
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

/// The client's key: a bearer token in `authorization`, else `x-api-key`, else `api-key`.
fn client_credential(
    authorization: Option<Vec<u8>>,
    x_api_key: Option<Vec<u8>>,
    api_key: Option<Vec<u8>>,
) -> Result<Vec<u8>, GatewayError> {
    if let Some(token) = authorization.as_deref().and_then(keys::bearer_token) {
        return Ok(token.to_vec());
    }
    [x_api_key, api_key]
        .into_iter()
        .flatten()
        .map(|v| v.trim_ascii().to_vec())
        .find(|v| !v.is_empty())
        .ok_or(GatewayError::MissingKey)
}

/// What the worker shares with every request: the compiled config, provider credentials, and
/// the keys it knows (configured ones, and those looked up in the control plane).
pub struct Gateway {
    pub config: CompiledConfig,
    /// Per deployment, the header its credential goes in upstream, with the value read from
    /// the environment at configure time (made once, not per request).
    upstream_credentials: Vec<UpstreamCredential>,
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

/// Where a deployment's credential goes upstream.
#[derive(Debug, Clone, Default)]
struct UpstreamCredential {
    /// The provider's header (None: Envoy signs the request on the cluster, as for Bedrock).
    header: Option<&'static str>,
    /// Its value (None: no key configured; the header is then not sent).
    value: Option<String>,
}

impl UpstreamCredential {
    fn new(provider: Provider, credential: Option<&str>) -> UpstreamCredential {
        let (header, value) = match provider {
            Provider::Openai => ("authorization", credential.map(|c| format!("Bearer {c}"))),
            Provider::Anthropic => ("x-api-key", credential.map(str::to_owned)),
            Provider::Azure => ("api-key", credential.map(str::to_owned)),
            Provider::Gemini => ("x-goog-api-key", credential.map(str::to_owned)),
            // Envoy signs Bedrock's requests (SigV4) on the cluster: no header from here.
            Provider::Bedrock => return UpstreamCredential::default(),
        };
        UpstreamCredential { header: Some(header), value }
    }
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

/// A key lookup in flight for this request.
struct PendingLookup {
    token: u32,
    hash: KeyHash,
    stale: Option<Rc<ResolvedKey>>,
}

/// What another worker left in shared data for a digest.
enum Shared {
    Fresh(Rc<ResolvedKey>),
    Stale(Rc<ResolvedKey>),
    Absent,
}

type Answer = (KeyConfig, Option<TeamConfig>);

/// The control plane's answer: the key and its team, or None for an unknown key.
fn parse_answer(bytes: &[u8]) -> Result<Option<Answer>, ()> {
    answer_of(&KeyLookupResponse::decode(bytes).map_err(|_| ())?)
}

fn answer_of(answer: &KeyLookupResponse) -> Result<Option<Answer>, ()> {
    if answer.key_json.is_empty() {
        return Ok(None);
    }
    let key: KeyConfig = serde_json::from_str(&answer.key_json).map_err(|_| ())?;
    let team = if answer.team_json.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<TeamConfig>(&answer.team_json).map_err(|_| ())?)
    };
    Ok(Some((key, team)))
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
    tap: Tap,
    response_complete: bool,
    /// A local reply was sent; nothing else to do for this request.
    rejected: bool,
    recorded: bool,
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
            endpoint: None,
            principal: None,
            request_id: None,
            awaiting_body: false,
            lookup: None,
            body_ready: None,
            admitted: None,
            status: 0,
            tap: Tap::None,
            response_complete: false,
            rejected: false,
            recorded: false,
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

    // ---- request headers -------------------------------------------------------------------

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        #[cfg(all(feature = "test-trap", target_arch = "wasm32"))]
        if self.host.request_header("x-sluice-test-trap").is_some() {
            core::arch::wasm32::unreachable();
        }
        self.start_ms = self.host.now_ms();
        let [path, method, authorization, x_api_key, api_key, content_length, request_id, anthropic_version, cluster] =
            self.host.request_headers(READ_REQUEST_HEADERS);
        self.client_sent_cluster = cluster.is_some();
        self.path = path.unwrap_or_default();
        if let Some(probe) = Probe::from_path(&self.path) {
            self.answer_probe(probe);
            return Action::Pause;
        }
        let Some(endpoint) = Endpoint::from_path(&self.path) else {
            return self.reject(&GatewayError::UnknownRoute);
        };
        self.endpoint = Some(endpoint);
        if method.as_deref() != Some(endpoint.method().as_bytes()) {
            return self
                .reject(&GatewayError::MethodNotAllowed { route: endpoint.route(), allowed: endpoint.method() });
        }
        self.client_key_headers = [authorization.is_some(), x_api_key.is_some(), api_key.is_some()];
        self.has_anthropic_version = anthropic_version.is_some();
        // A key to ask the control plane about is asked about only once the request passed
        // every check that needs no key, so a request refused anyway costs no call.
        let mut to_look_up = None;
        let credential = client_credential(authorization, x_api_key, api_key);
        match credential.and_then(|token| self.authenticate(&token, endpoint)) {
            Ok(Auth::Known(principal)) => self.principal = Some(principal),
            Ok(Auth::Lookup(hash, stale)) => to_look_up = Some((hash, stale)),
            Err(e) => return self.reject(&e),
        }
        // The client's credential never goes upstream: `authorization`, `x-api-key` and
        // `api-key` are replaced or removed when the request is routed (nothing leaves before
        // that); the route removes `accept-encoding` (the gateway meters plain responses) and
        // any client-sent `x-sluice-cluster` (the filter always sets its own).
        if endpoint == Endpoint::Models {
            if let Some((hash, stale)) = to_look_up
                && let Err(e) = self.start_lookup(hash, stale)
            {
                return self.reject(&e);
            }
            if self.lookup.is_none() {
                self.answer_models();
            }
            return Action::Pause;
        }
        if end_of_stream {
            return self.reject(&GatewayError::MissingModel);
        }
        let limit = self.config().config.max_request_body_bytes;
        let declared = content_length.and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return self.reject(&GatewayError::BodyTooLarge { limit });
        }
        self.request_id = request_id.map(|v| String::from_utf8_lossy(&v).into_owned());
        if let Some((hash, stale)) = to_look_up
            && let Err(e) = self.start_lookup(hash, stale)
        {
            return self.reject(&e);
        }
        // Hold the headers until the body is here: routing needs the body's `model`. The
        // bootstrap sets `allow_on_headers_stop_iteration`, so Envoy keeps calling the body
        // callback while the headers wait (without it, a paused headers phase stops the body too).
        self.awaiting_body = true;
        Action::Pause
    }

    fn authenticate(&self, token: &[u8], endpoint: Endpoint) -> Result<Auth, GatewayError> {
        if token.len() > MAX_CREDENTIAL_LEN {
            return Err(GatewayError::MalformedKey);
        }
        let hash = KeyHash::of(token);
        let config = self.config();
        if self.gateway.master_key.is_some_and(|m| m.ct_eq(&hash)) {
            return Ok(Auth::Known(Principal::Master));
        }
        // In xDS mode the master key stays with the control plane (the filter's config holds no
        // digest of it): a credential that could be one is looked up like a key, within the
        // lookup budget. Anything else must be a well-formed Sluice key.
        let master_by_lookup = config.config.key_lookup.is_some()
            && self.gateway.master_key.is_none()
            && token.len() >= keys::MIN_MASTER_KEY_LEN;
        if !master_by_lookup {
            keys::check_format(token).map_err(|_| GatewayError::MalformedKey)?;
        }
        let resolved = match config.key_position(&hash) {
            Some(index) => self.gateway.keys.get(index).cloned().ok_or(GatewayError::InvalidKey)?,
            None => {
                let Some(lookup) = config.config.key_lookup.as_ref() else {
                    return Err(GatewayError::InvalidKey);
                };
                let cached = self.gateway.key_cache.borrow().get(&hash, self.start_ms).cloned();
                match cached {
                    Some(Cached::Found(r)) => {
                        self.gateway.metrics.key_cache_hit();
                        r
                    }
                    Some(Cached::Unknown) => {
                        self.host.count("sluice.key_cache.negative_hits", 1);
                        return Err(GatewayError::InvalidKey);
                    }
                    None => match self.shared_answer(&hash, lookup.ttl_ms) {
                        Shared::Fresh(r) => r,
                        Shared::Stale(r) => return Ok(Auth::Lookup(hash, Some(r))),
                        Shared::Absent => {
                            let stale = self.gateway.key_cache.borrow().stale(&hash);
                            return Ok(Auth::Lookup(hash, stale));
                        }
                    },
                }
            }
        };
        self.check_key(&resolved, endpoint)?;
        Ok(Auth::Known(Principal::Key(resolved)))
    }

    /// What a known key may not do, whichever way it became known.
    fn check_key(&self, resolved: &ResolvedKey, endpoint: Endpoint) -> Result<(), GatewayError> {
        let key = &resolved.key;
        if key.blocked {
            return Err(GatewayError::KeyBlocked);
        }
        if let Some(expires) = key.expires_unix_secs {
            let now_secs = i64::try_from(self.start_ms / 1000).unwrap_or(i64::MAX);
            if now_secs >= expires {
                return Err(GatewayError::KeyExpired);
            }
        }
        if resolved.team.as_ref().is_some_and(|t| t.blocked) {
            return Err(GatewayError::TeamBlocked);
        }
        // The control plane's fleet-wide count (xDS mode): a budget spent on any Envoy is spent
        // on all of them. This Envoy's own counters still reserve and settle each request.
        let over = |spend_nanos, max_nanos| {
            FleetBudget { max_nanos, spend_nanos }
                .exceeded()
                .map(|(spent, max)| (nanos_to_usd(spent), nanos_to_usd(max)))
        };
        if let Some((spend_usd, max_budget_usd)) = over(key.fleet_spend_nanos, key.limits.max_budget_nanos) {
            return Err(GatewayError::BudgetExceeded { scope: LimitScope::Key, spend_usd, max_budget_usd });
        }
        if let Some(team) = &resolved.team
            && let Some((spend_usd, max_budget_usd)) = over(team.fleet_spend_nanos, team.limits.max_budget_nanos)
        {
            return Err(GatewayError::BudgetExceeded { scope: LimitScope::Team, spend_usd, max_budget_usd });
        }
        // The user's and the organization's budgets are counted by the control plane alone
        // (no counter here): spent on the fleet, the key is refused until the window resets.
        let owners = [
            (LimitScope::User, key.user_id.as_deref(), key.user_budget),
            (LimitScope::Organization, key.organization_id.as_deref(), key.org_budget),
        ];
        for (scope, id, budget) in owners {
            if let (Some(id), Some((spend, max))) = (id, budget.exceeded()) {
                return Err(GatewayError::OwnerBudgetExceeded {
                    scope,
                    id: id.to_owned(),
                    spend_usd: nanos_to_usd(spend),
                    max_budget_usd: nanos_to_usd(max),
                });
            }
        }
        if !key.routes.contains(endpoint) {
            return Err(GatewayError::RouteNotAllowed { route: endpoint.route() });
        }
        Ok(())
    }

    // ---- key lookup (xDS mode) -------------------------------------------------------------

    /// Another worker's answer for this digest, from shared data, unless an invalidation has
    /// named its key or team since it was written (after a reset it is only a fallback). A
    /// fresh one joins this worker's cache.
    fn shared_answer(&self, hash: &KeyHash, ttl_ms: u64) -> Shared {
        let Some(entry) = read_shared(&self.host, hash) else { return Shared::Absent };
        let Ok(Some((key, team))) = parse_answer(&entry.answer) else { return Shared::Absent };
        if key.key_hash != Some(*hash) {
            return Shared::Absent;
        }
        let Ok(resolved) = self.config().compile_looked_up(&key, team.as_ref()) else { return Shared::Absent };
        let verdict = self.gateway.invalidations.borrow().judge(entry.seq, &resolved.key);
        let resolved = Rc::new(resolved);
        let age = self.start_ms.saturating_sub(entry.fetched_ms);
        match verdict {
            Verdict::Revoked => return Shared::Absent,
            Verdict::Unconfirmed => return Shared::Stale(resolved),
            Verdict::Valid if age >= ttl_ms => return Shared::Stale(resolved),
            Verdict::Valid => {}
        }
        self.host.count("sluice.key_cache.shared_hits", 1);
        let cached = Cached::Found(Rc::clone(&resolved));
        self.gateway.key_cache.borrow_mut().insert(*hash, cached, self.start_ms, ttl_ms - age);
        Shared::Fresh(resolved)
    }

    /// Asks the control plane about a key no worker has fresh; the request waits. Unless the
    /// worker's lookup budget, or this client's, is spent: then a key known from before serves
    /// from cache and any other is refused (429; a real key gets in on retry).
    fn start_lookup(&mut self, hash: KeyHash, stale: Option<Rc<ResolvedKey>>) -> Result<(), GatewayError> {
        if let Err(refused) = self.take_lookup_token() {
            return self.lookup_refused(hash, stale, refused);
        }
        let Some(lookup) = self.config().config.key_lookup.as_ref() else {
            return Err(GatewayError::InvalidKey);
        };
        let message = KeyLookupRequest { key_hash: format!("sha256:{}", hash.to_hex()) }.encode_to_vec();
        self.host.count("sluice.key_lookups", 1);
        match self.host.dispatch_grpc(&lookup.cluster, KEY_LOOKUP_SERVICE, "Lookup", &message, lookup.timeout_ms) {
            Some(token) => {
                self.lookup = Some(PendingLookup { token, hash, stale });
                Ok(())
            }
            None => self.lookup_failed(hash, stale),
        }
    }

    /// A token from the worker's lookup budget and the client's. The client's address is read
    /// here, so only a request that would cost a lookup pays for the property read.
    fn take_lookup_token(&self) -> Result<(), Refused> {
        let Some(budget) = &self.gateway.lookup_budget else { return Ok(()) };
        let mut budget = budget.borrow_mut();
        let source =
            budget.per_source().then(|| self.host.source_address().map_or(Source::UNKNOWN, |a| Source::of_address(&a)));
        budget.try_start(source, self.start_ms)
    }

    /// No lookup may start now. A key known before (past its TTL, or awaiting confirmation
    /// after a reset; never a revoked one) keeps working, as through an outage; any other key
    /// is refused with a 429, whatever `fail_open` says (a flood must not be admitted).
    fn lookup_refused(
        &mut self,
        hash: KeyHash,
        stale: Option<Rc<ResolvedKey>>,
        refused: Refused,
    ) -> Result<(), GatewayError> {
        self.gateway.metrics.lookup_refused();
        match stale {
            Some(known) => self.serve_stale(hash, known),
            None => Err(GatewayError::KeyLookupRateLimited { retry_after_secs: refused.retry_after_secs() }),
        }
    }

    /// Serves a key known from before without asking (for a few seconds, then it asks again).
    fn serve_stale(&mut self, hash: KeyHash, known: Rc<ResolvedKey>) -> Result<(), GatewayError> {
        let endpoint = self.endpoint.ok_or(GatewayError::Internal { detail: "no endpoint" })?;
        let retry = Cached::Found(Rc::clone(&known));
        self.gateway.key_cache.borrow_mut().insert(hash, retry, self.host.now_ms(), STALE_RETRY_MS);
        self.check_key(&known, endpoint)?;
        self.host.count("sluice.key_cache.stale_served", 1);
        self.principal = Some(Principal::Key(known));
        Ok(())
    }

    /// The control plane could not answer. A key known before (past its TTL) keeps working;
    /// otherwise refuse (fail closed, not cached, so the next request asks again), or with
    /// `fail_open` admit the key without limits.
    fn lookup_failed(&mut self, hash: KeyHash, stale: Option<Rc<ResolvedKey>>) -> Result<(), GatewayError> {
        self.host.count("sluice.key_lookup_failures", 1);
        if let Some(known) = stale {
            return self.serve_stale(hash, known);
        }
        let fail_open = self.config().config.key_lookup.as_ref().is_some_and(|l| l.fail_open);
        if !fail_open {
            return Err(GatewayError::KeyServiceUnavailable);
        }
        self.host.log(LogLevel::Warn, "sluice: key service unreachable; admitting a key unchecked (fail_open)");
        self.principal = Some(Principal::Unverified(hash));
        Ok(())
    }

    /// A gRPC answer for this request (Envoy routes it to the context that made the call).
    pub fn on_grpc_response(&mut self, token: u32, status: u32, size: usize) {
        let Some(pending) = self.lookup.take_if(|l| l.token == token) else {
            return;
        };
        let Some(endpoint) = self.endpoint else {
            return;
        };
        let Some(lookup) = self.config().config.key_lookup.clone() else {
            return;
        };
        let now = self.host.now_ms();
        let bytes = if status == GRPC_OK { self.host.grpc_response(size).unwrap_or_default() } else { Vec::new() };
        let decoded =
            if status == GRPC_OK { KeyLookupResponse::decode(bytes.as_slice()).map_err(|_| ()) } else { Err(()) };
        let parsed = decoded.as_ref().map_err(|_| ()).and_then(answer_of);
        let resolved = match parsed {
            Ok(Some((key, team))) if key.key_hash == Some(pending.hash) => {
                match self.config().compile_looked_up(&key, team.as_ref()) {
                    Ok(r) => Some(Rc::new(r)),
                    Err(errors) => {
                        let detail: Vec<String> = errors.iter().map(ToString::to_string).collect();
                        self.host.log(
                            LogLevel::Error,
                            &format!("sluice: unusable key from the control plane: {}", detail.join("; ")),
                        );
                        None
                    }
                }
            }
            Ok(Some(_)) => None, // an answer about another key: never trusted
            Ok(None) => {
                self.gateway.key_cache.borrow_mut().insert(pending.hash, Cached::Unknown, now, lookup.negative_ttl_ms);
                if !self.rejected {
                    self.reject(&GatewayError::InvalidKey);
                }
                return;
            }
            Err(()) => None,
        };
        match resolved {
            Some(r) => {
                // Its limited scopes (an unlimited one is never admitted on, so it gets no
                // record in shared data).
                let names = || {
                    std::iter::once(&r.key)
                        .filter(|k| !k.limits.is_unlimited())
                        .map(|k| &k.counter_name)
                        .chain(r.key.model_limits.values().map(|m| &m.counter_name))
                        .chain(r.team.as_ref().filter(|t| !t.limits.is_unlimited()).map(|t| &t.counter_name))
                };
                // What the rest of the fleet counted on them this minute, so that this Envoy's
                // first requests with the key are limited like its later ones. Only this key's
                // own counters: the answer names shared-data entries.
                if let Ok(answer) = &decoded {
                    for counts in answer.fleet_counts.iter().filter(|c| names().any(|n| *n == c.scope)) {
                        counters::set_fleet_total(
                            &self.host,
                            &counts.scope,
                            answer.fleet_window,
                            counts.requests,
                            counts.tokens,
                        );
                    }
                }
                // Every worker may use this answer (and keep using it through an outage).
                let seq = self.gateway.invalidations.borrow().seq;
                write_shared(&self.host, &SharedEntry { fetched_ms: now, seq, hash: pending.hash, answer: bytes });
                self.gateway.key_cache.borrow_mut().insert(
                    pending.hash,
                    Cached::Found(Rc::clone(&r)),
                    now,
                    lookup.ttl_ms,
                );
                if self.rejected {
                    return; // refused meanwhile (its body was too large): the answer is only cached
                }
                if let Err(e) = self.check_key(&r, endpoint) {
                    self.reject(&e);
                    return;
                }
                self.principal = Some(Principal::Key(r));
            }
            None if self.rejected => return,
            None => {
                if let Err(e) = self.lookup_failed(pending.hash, pending.stale) {
                    self.reject(&e);
                    return;
                }
            }
        }
        if endpoint == Endpoint::Models {
            self.answer_models();
        } else if let Some(body_size) = self.body_ready.take() {
            // The body is all here: route now, then let the request go.
            if self.route_body(body_size) == Action::Continue {
                self.host.resume_request();
            }
        }
        // Otherwise the body is still arriving; its last callback routes as usual.
    }

    fn may_use(&self, group: &str) -> bool {
        let Some(key) = self.key() else {
            return true; // the master key may use every model
        };
        key.models.allows(group) && self.team().is_none_or(|t| t.models.allows(group))
    }

    /// A liveness or readiness probe (no key: Kubernetes and load balancers call these).
    fn answer_probe(&mut self, probe: Probe) {
        let json = [("content-type", "application/json")];
        match probe {
            Probe::Liveness => self.host.send_local_response(200, &json, br#""I'm alive!""#),
            Probe::Readiness => {
                let readiness = health::readiness(&self.host);
                let status = if readiness.ready() { 200 } else { 503 };
                self.host.send_local_response(status, &json, &readiness.body());
            }
        }
    }

    /// `GET /v1/models`: the model groups and aliases this key may use, answered without an
    /// upstream.
    fn answer_models(&mut self) {
        #[derive(serde::Serialize)]
        struct Model<'a> {
            id: &'a str,
            object: &'static str,
            created: u64,
            owned_by: &'static str,
        }
        let config = self.config();
        let data: Vec<Model<'_>> = config
            .listed_models
            .iter()
            .filter(|(name, group)| {
                self.may_use(name) || config.groups.get(*group).is_some_and(|g| self.may_use(&g.name))
            })
            .map(|(name, _)| Model { id: name, object: "model", created: 0, owned_by: "sluice" })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "object": "list", "data": data })).unwrap_or_default();
        self.rejected = true; // answered locally: no upstream, no usage record
        self.host.send_local_response(200, &[("content-type", "application/json")], &body);
    }

    // ---- request body ----------------------------------------------------------------------

    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.awaiting_body {
            return Action::Continue;
        }
        let limit = self.config().config.max_request_body_bytes;
        if body_size as u64 > limit {
            // No content-length (chunked upload), or a client that lied about it.
            self.awaiting_body = false;
            return self.reject(&GatewayError::BodyTooLarge { limit });
        }
        if !end_of_stream {
            return Action::Pause; // Envoy buffers until the whole body is here
        }
        if self.lookup.is_some() {
            // Routing needs the key: keep the body buffered until the control plane answers.
            self.body_ready = Some(body_size);
            return Action::Pause;
        }
        self.route_body(body_size)
    }

    /// The whole body is buffered: route and admit, or refuse.
    fn route_body(&mut self, body_size: usize) -> Action {
        self.awaiting_body = false;
        let body = self.host.request_body(body_size).unwrap_or_default();
        match self.route_and_admit(&body) {
            Ok(()) if self.rejected => Action::Pause, // answered here
            Ok(()) => Action::Continue,
            Err(error) => self.reject(&error),
        }
    }

    /// Validates the body, chooses the deployment, admits the request on every limited scope,
    /// and points the (still held) headers and the body at the deployment.
    fn route_and_admit(&mut self, body: &[u8]) -> Result<(), GatewayError> {
        let endpoint = self.endpoint.ok_or(GatewayError::Internal { detail: "no endpoint" })?;
        let req = parse_request(body)?;
        let gateway = Rc::clone(&self.gateway);
        let config = &gateway.config;
        let model = req.model.as_ref();
        let (group_index, matched) =
            config.resolve_model(model).ok_or_else(|| GatewayError::UnknownModel { model: model.to_owned() })?;
        let group = config.groups.get(group_index).ok_or(GatewayError::Internal { detail: "group" })?;
        // A key may name the group or the name it asked for (an alias, a wildcard's match).
        if !self.may_use(&group.name) && !self.may_use(model) {
            return Err(GatewayError::ModelNotAllowed { model: model.to_owned() });
        }
        if endpoint == Endpoint::CountTokens {
            return self.count_tokens(&gateway, group, matched, body, &req);
        }
        // Deployments of the group whose `mode` serves this route and that speak its wire
        // format, or one the gateway translates to (`translation.rs`).
        let client_format = endpoint.format();
        let candidates =
            group.deployments.iter().filter_map(|i| Some((*i, config.deployment(*i)?))).filter(|(_, d)| {
                d.mode.is_none_or(|m| m.serves(endpoint))
                    && (d.provider.format() == client_format || Direction::between(endpoint, d.provider).is_some())
                    // The Responses API is OpenAI's own, passed through to OpenAI only.
                    && (endpoint != Endpoint::Responses || d.provider == Provider::Openai)
            });
        let chosen = choose_weighted(candidates.clone().map(|(_, d)| d.weight), self.random)
            .and_then(|c| candidates.clone().nth(c));
        let Some((index, deployment)) = chosen else {
            return Err(GatewayError::ModelNotOnRoute { model: model.to_owned(), route: endpoint.route() });
        };
        // What the response is parsed as: the deployment's format, or the Responses API's own.
        let format =
            if endpoint == Endpoint::Responses { ApiFormat::OpenAiResponses } else { deployment.provider.format() };
        let streamed = req.stream && endpoint.can_stream();
        let upstream_model = deployment.upstream_model_for(matched);
        let (pricing, price_unknown) = deployment.pricing_for(&upstream_model);
        // Translated before admission: a request that cannot be translated reserves nothing.
        // (`between` names only pairs of different formats.)
        let translated = match Direction::between(endpoint, deployment.provider) {
            None => None,
            Some(direction) => {
                let translation =
                    Translation { direction, client_model: model.to_owned(), include_usage: req.client_wants_usage };
                Some((translation.request(body, deployment, &upstream_model, DEFAULT_MAX_OUTPUT_TOKENS)?, translation))
            }
        };

        // Where it goes, decided before admission: a request refused here reserves nothing.
        let upstream_endpoint = translated.as_ref().map_or(endpoint, |(_, t)| t.direction.upstream_endpoint());
        let upstream_path =
            deployment.upstream_path(upstream_endpoint, &upstream_model, streamed).ok_or_else(|| {
                GatewayError::InvalidField {
                    param: "model",
                    detail: "not a model name this provider can be asked for".into(),
                }
            })?;

        // Admission: reserve estimated tokens and the maximum cost on every limited scope.
        let est_prompt_tokens = usage::estimate_tokens_from_bytes(body.len() as u64);
        let max_output = if endpoint == Endpoint::Embeddings {
            0
        } else {
            req.max_output_tokens.or(deployment.max_output_tokens).unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS)
        };
        let max_cost = pricing.max_cost_nanos(est_prompt_tokens, max_output);
        let mut scopes: Vec<Scope<'_>> = Vec::with_capacity(3);
        // Looked-up scopes (xDS mode) share slots; configured ones have named records.
        let placement = if config.config.key_lookup.is_some() { Placement::Slotted } else { Placement::Named };
        if let Some(key) = self.key() {
            if !key.limits.is_unlimited() {
                scopes.push(Scope { name: &key.counter_name, limits: key.limits, kind: LimitScope::Key, placement });
            }
            if let Some(team) = self.team().filter(|t| !t.limits.is_unlimited()) {
                scopes.push(Scope { name: &team.counter_name, limits: team.limits, kind: LimitScope::Team, placement });
            }
            if let Some(per_model) = key.model_limits.get(&group.name) {
                scopes.push(Scope {
                    name: &per_model.counter_name,
                    limits: per_model.limits,
                    kind: LimitScope::KeyModel,
                    placement,
                });
            }
        }
        let (tickets, remaining) = if scopes.is_empty() {
            (Vec::new(), Remaining::default())
        } else {
            counters::admit_all(&self.host, &scopes, self.start_ms, est_prompt_tokens, max_cost)?
        };
        if config.config.key_lookup.is_some() {
            gateway.announce_to_fleet(&self.host, &tickets, self.start_ms);
        }

        // The body for the deployment: its model name; OpenAI streams must report usage.
        let wants_usage_chunk = streamed && format == ApiFormat::OpenAi;
        let strip_usage_chunk = wants_usage_chunk && !req.client_wants_usage;
        let (new_body, translation) = match translated {
            Some((body, translation)) => (Some(body), Some(translation)),
            None => (rewrite_body(body, &req, &upstream_model, wants_usage_chunk), None),
        };
        self.send_upstream(&gateway, index, &upstream_path, body.len(), new_body.as_deref());
        self.admitted = Some(Admitted {
            group: group_index,
            deployment: index,
            format,
            translation,
            streamed,
            strip_usage_chunk,
            est_prompt_tokens,
            tickets,
            remaining,
            pricing,
            price_unknown,
            wildcard_model: match upstream_model {
                std::borrow::Cow::Owned(name) => Some(name),
                std::borrow::Cow::Borrowed(_) => None,
            },
        });
        Ok(())
    }

    /// Points the held request at deployment `index`: its body (when it changed), path, cluster,
    /// the provider's credential in place of the client's, and Anthropic's version header.
    fn send_upstream(
        &mut self,
        gateway: &Gateway,
        index: usize,
        upstream_path: &str,
        body_len: usize,
        new_body: Option<&[u8]>,
    ) {
        let Some(deployment) = gateway.config.deployment(index) else { return };
        if let Some(new_body) = new_body {
            self.host.replace_request_body(body_len, new_body);
            self.host.set_request_header("content-length", Some(itoa::Buffer::new().format(new_body.len()).as_bytes()));
        }
        if upstream_path.as_bytes() != self.path.as_slice() {
            self.host.set_request_header(":path", Some(upstream_path.as_bytes()));
        }
        // A client's own cluster header is replaced; otherwise ours is only added.
        if self.client_sent_cluster {
            self.host.set_request_header(CLUSTER_HEADER, Some(deployment.cluster.as_bytes()));
        } else {
            self.host.add_request_header(CLUSTER_HEADER, deployment.cluster.as_bytes());
        }
        // The provider's credential replaces the client's, in the provider's header; the
        // client's key goes from the others it came in.
        let upstream = gateway.upstream_credentials.get(index);
        let (header, value) = upstream.map_or((None, None), |u| (u.header, u.value.as_deref()));
        for (client_header, sent) in CLIENT_KEY_HEADERS.into_iter().zip(self.client_key_headers) {
            if sent && Some(client_header) != header {
                self.host.set_request_header(client_header, None);
            }
        }
        let client_sent = |name| CLIENT_KEY_HEADERS.iter().zip(self.client_key_headers).any(|(h, s)| s && *h == name);
        if let Some(header) = header
            && (value.is_some() || client_sent(header))
        {
            self.host.set_request_header(header, value.map(str::as_bytes));
        }
        if deployment.provider == Provider::Anthropic && !self.has_anthropic_version {
            self.host.set_request_header("anthropic-version", Some(ANTHROPIC_VERSION.as_bytes()));
        }
    }

    /// `/v1/messages/count_tokens` for `group`: passed to one of its Anthropic deployments
    /// (Anthropic counts for free: nothing is admitted, billed or recorded), else answered
    /// here with the estimate admission uses (LiteLLM would run the model's tokenizer where it
    /// has one; the figure is labelled an estimate in ARCHITECTURE.md).
    fn count_tokens(
        &mut self,
        gateway: &Gateway,
        group: &sluice_core::config::ModelGroup,
        matched: Option<&str>,
        body: &[u8],
        req: &sluice_core::request::LlmRequest<'_>,
    ) -> Result<(), GatewayError> {
        let config = &gateway.config;
        let anthropic = group.deployments.iter().filter_map(|i| Some((*i, config.deployment(*i)?))).filter(|(_, d)| {
            d.provider == Provider::Anthropic && d.mode.is_none_or(|m| m.serves(Endpoint::CountTokens))
        });
        let chosen = choose_weighted(anthropic.clone().map(|(_, d)| d.weight), self.random)
            .and_then(|c| anthropic.clone().nth(c));
        let Some((index, deployment)) = chosen else {
            let estimate = usage::estimate_tokens_from_bytes(body.len() as u64);
            let answer = format!("{{\"input_tokens\":{estimate}}}");
            self.rejected = true; // answered here: no upstream, no usage record
            self.host.send_local_response(200, &[("content-type", "application/json")], answer.as_bytes());
            return Ok(());
        };
        let upstream_model = deployment.upstream_model_for(matched);
        let upstream_path = deployment
            .upstream_path(Endpoint::CountTokens, &upstream_model, false)
            .ok_or(GatewayError::Internal { detail: "count_tokens path" })?;
        let new_body = rewrite_body(body, req, &upstream_model, false);
        self.send_upstream(gateway, index, &upstream_path, body.len(), new_body.as_deref());
        Ok(())
    }

    // ---- response --------------------------------------------------------------------------

    pub fn on_response_headers(&mut self) -> Action {
        let Some(admitted) = &self.admitted else {
            return Action::Continue;
        };
        let [status, content_type, rate_limit @ ..] = self.host.response_headers(READ_RESPONSE_HEADERS);
        self.status = status.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()).unwrap_or(0);
        set_remaining_headers(&self.host, &admitted.remaining, rate_limit.map(|h| h.is_some()));
        let content_type = content_type.unwrap_or_default();
        let has = |needle: &[u8]| content_type.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
        let is_sse = has(b"text/event-stream");
        if let Some(translation) = &admitted.translation {
            // Every byte of the body changes: its length is no longer the provider's.
            self.host.set_response_header("content-length", None);
            // Bedrock streams AWS's binary event stream; the client gets SSE.
            let is_stream = is_sse || has(b"application/vnd.amazon.eventstream");
            self.tap = if is_stream && (200..300).contains(&self.status) {
                if !is_sse {
                    self.host.set_response_header("content-type", Some(b"text/event-stream"));
                }
                let created = self.start_ms / 1000;
                Tap::TranslatedSse(translation.stream(created))
            } else {
                self.host.set_response_header("content-type", Some(b"application/json"));
                Tap::TranslatedJson { body: Vec::new(), overflow: false, translation: translation.clone() }
            };
            return Action::Continue;
        }
        self.tap = if is_sse {
            if admitted.strip_usage_chunk {
                // The body changes length once the usage chunk is removed.
                self.host.set_response_header("content-length", None);
            }
            Tap::Sse(SseUsageScanner::new(admitted.format, admitted.strip_usage_chunk))
        } else {
            Tap::Json { body: Vec::new(), overflow: false }
        };
        Action::Continue
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            self.response_complete = true;
        }
        let scan_limit = usize::try_from(self.config().config.max_response_scan_bytes).unwrap_or(usize::MAX);
        match &mut self.tap {
            Tap::None => {}
            Tap::Sse(scanner) => {
                let chunk =
                    if body_size > 0 { self.host.response_body(body_size).unwrap_or_default() } else { Vec::new() };
                if let Forward::Replace(bytes) = scanner.feed(&chunk, end_of_stream) {
                    self.host.replace_response_body(body_size, &bytes);
                }
            }
            Tap::Json { body, overflow } => gather(&self.host, body, overflow, body_size, scan_limit),
            Tap::TranslatedSse(translator) => {
                let chunk =
                    if body_size > 0 { self.host.response_body(body_size).unwrap_or_default() } else { Vec::new() };
                let translated = translator.feed(&chunk, end_of_stream);
                self.host.replace_response_body(body_size, &translated);
            }
            Tap::TranslatedJson { body, overflow, translation } => {
                // Held back chunk by chunk (each replaced by nothing) and sent whole, translated,
                // with the last one: a JSON document translates only once it is complete.
                gather(&self.host, body, overflow, body_size, scan_limit);
                let out = if !end_of_stream {
                    Vec::new()
                } else if *overflow {
                    GatewayError::Untranslatable { detail: format!("the provider's answer is over {scan_limit} bytes") }
                        .body_for(self.error_format())
                } else {
                    translation.response(self.status, body, self.start_ms / 1000)
                };
                self.host.replace_response_body(body_size, &out);
            }
        }
        Action::Continue
    }

    // ---- end of stream ---------------------------------------------------------------------

    /// Called once when the stream ends, however it ends: settle, count, record.
    pub fn on_log(&mut self) {
        if self.recorded || self.rejected {
            return;
        }
        self.recorded = true;
        let Some(admitted) = self.admitted.take() else {
            return;
        };
        let tap = std::mem::replace(&mut self.tap, Tap::None);
        let (usage, outcome, estimated) = self.measure(&admitted, &tap);
        let gateway = Rc::clone(&self.gateway);
        let Some(deployment) = gateway.config.deployment(admitted.deployment) else {
            return;
        };
        let cost_nanos = admitted.pricing.cost_nanos(&usage);
        let now = self.host.now_ms();
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
        let record_id = record_id(self.random);
        let record = UsageRecord {
            record_id: std::str::from_utf8(&record_id).unwrap_or_default(),
            request_id: self.request_id.as_deref().unwrap_or(""),
            key_id,
            key_alias: key.and_then(|k| k.alias.as_deref()),
            team_id: key.and_then(|k| k.team_id.as_deref()),
            user_id: key.and_then(|k| k.user_id.as_deref()),
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
            price_unknown: admitted.price_unknown,
        };
        let mut json = gateway.record_buffer.take();
        json.clear();
        record.write_json(&mut json);
        if !self.host.enqueue_usage(&json) {
            // The singleton service is not up (yet): write the record ourselves, never drop it.
            self.host.log(LogLevel::Info, &format!("{USAGE_LOG_PREFIX}{}", String::from_utf8_lossy(&json)));
        }
        gateway.record_buffer.replace(json);
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
                match usage::parse_response_usage(admitted.format, body) {
                    Some(u) if self.response_complete => (u, Outcome::Completed, false),
                    Some(u) => (u, cut_outcome(), true),
                    None if !*overflow && self.response_complete => (estimate(0), Outcome::Truncated, true),
                    None => (estimate(body.len() as u64), cut_outcome(), true),
                }
            }
            // No response at all: the client left before the upstream answered.
            Tap::None => (estimate(0), Outcome::Cancelled, true),
        }
    }
}

/// A record's id: the request's random value and the next of its generator, 32 hex digits.
fn record_id(random: u64) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let halves = [random, SplitMix64::new(random).next_u64()];
    for (i, digit) in id.iter_mut().enumerate() {
        let half = halves.get(i / 16).copied().unwrap_or(0);
        *digit = HEX[((half >> (60 - 4 * (i % 16))) & 0xf) as usize];
    }
    id
}

/// Appends the response chunk of `size` bytes to `body`, up to `limit` bytes in all; past it,
/// `overflow` is set and nothing more is kept.
fn gather<H: Host>(host: &H, body: &mut Vec<u8>, overflow: &mut bool, size: usize, limit: usize) {
    if size == 0 || *overflow {
        return;
    }
    if body.len().saturating_add(size) > limit {
        *overflow = true;
    } else {
        host.append_response_body(size, body);
    }
}

/// `x-ratelimit-*` headers for the tightest scope.
fn remaining_headers(remaining: &Remaining) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(4);
    let [limit_requests, remaining_requests, limit_tokens, remaining_tokens] = RATE_LIMIT_HEADERS;
    if let Some((limit, left)) = remaining.requests {
        out.push((limit_requests, limit.to_string()));
        out.push((remaining_requests, left.to_string()));
    }
    if let Some((limit, left)) = remaining.tokens {
        out.push((limit_tokens, limit.to_string()));
        out.push((remaining_tokens, left.to_string()));
    }
    out
}

/// Sets the `x-ratelimit-*` headers for the tightest scope on the response, replacing those of
/// the provider (`sent`: which of `RATE_LIMIT_HEADERS` it sent; the others are only added).
/// Numbers are formatted on the stack: this runs for every limited request.
fn set_remaining_headers<H: Host>(host: &H, remaining: &Remaining, sent: [bool; 4]) {
    let values = [
        remaining.requests.map(|(limit, _)| limit),
        remaining.requests.map(|(_, left)| left),
        remaining.tokens.map(|(limit, _)| limit),
        remaining.tokens.map(|(_, left)| left),
    ];
    for ((name, value), sent) in RATE_LIMIT_HEADERS.into_iter().zip(values).zip(sent) {
        let Some(value) = value else { continue };
        let mut digits = itoa::Buffer::new();
        let value = digits.format(value).as_bytes();
        if sent {
            host.set_response_header(name, Some(value));
        } else {
            host.add_response_header(name, value);
        }
    }
}

/// Headers of a rejection: `retry-after` and the limit that was hit (remaining 0).
fn rate_limit_headers(error: &GatewayError) -> Vec<(&'static str, String)> {
    let (kind, limit, retry_after_secs) = match error {
        GatewayError::RateLimited { kind, limit, retry_after_secs, .. } => (kind, limit, retry_after_secs),
        GatewayError::KeyLookupRateLimited { retry_after_secs } => {
            return vec![("retry-after", retry_after_secs.to_string())];
        }
        _ => return Vec::new(),
    };
    let mut rem = Remaining::default();
    match kind {
        LimitKind::Requests => rem.requests = Some((*limit, 0)),
        LimitKind::Tokens => rem.tokens = Some((*limit, 0)),
    }
    let mut out = remaining_headers(&rem);
    out.push(("retry-after", retry_after_secs.to_string()));
    out
}
