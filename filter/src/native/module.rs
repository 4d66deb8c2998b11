//! The hooks Envoy calls (`envoy_dynamic_module_on_*`): load, configs, streams.
//!
//! **Where state lives.** A filter config ([`FilterConfig`]) is made once on Envoy's main
//! thread and then read by every worker: it holds only `Sync` data (the compiled config, the
//! provider credentials, the counter ids, and the metrics the workers count for the main
//! thread's tick to report, as atomics). What the wasm build keeps per worker VM — the
//! [`Gateway`]: key cache, lookup budget — is per worker thread here too, in a thread-local made from the config on the thread's first stream, so the request
//! path takes no lock (the `Gateway` is `Rc`/`RefCell` inside, as in wasm). A config Envoy
//! replaced is forgotten by each worker when it next makes a gateway. The counters' shared data
//! is process memory (`shared_data.rs`), shared by every worker and config, as proxy-wasm's is.
//!
//! **Two kinds of config, one set of hooks.** The dynamic-module filter named
//! [`ATTEMPT_FILTER_NAME`] (`filter_name` in the bootstrap) is the attempt filter in a
//! deployment cluster's upstream chain (configured only when the gateway has fallbacks): it
//! turns a failed answer to a request with a fallback plan into the internal redirect to its
//! next pass (`crate::failover`), and touches nothing else. Every other name is the gateway's
//! filter. The pointers Envoy holds say which: a config is a `ModuleConfig`, a stream a
//! `ModuleStream`, each an enum behind one `Box`, so a hook matches once and never casts one
//! kind to the other.
//!
//! **Never panic**: a panic here unwinds into Envoy's C++ (or aborts, with `panic = "abort"`)
//! and takes the process down; there is no VM to fail and no failure policy. The workspace lints
//! deny unwrap/expect/panic, and every hook treats a null or unexpected pointer as "nothing to
//! do".

use core::ffi::c_char;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use sluice_core::config::{CompiledConfig, GatewayConfig};
use sluice_core::fallbacks::{ATTEMPT_FILTER_NAME, Plan};
use sluice_core::limits::ScopeState;
use sluice_core::routing::SplitMix64;

use super::abi::{
    ABI_VERSION, BODY_STOP_ITERATION_AND_BUFFER, BUFFERED_REQUEST_BODY, CALLOUT_SUCCESS, CONTINUE, Callbacks,
    CalloutAnswer, CalloutResult, ConfigEnvoyPtr, ConfigHandle, ConfigModulePtr, EnvoyBuffer, EnvoyHttpHeader,
    FilterEnvoyPtr, FilterModulePtr, FilterStatus, HEADERS_STOP_ITERATION, LiveConfig, RECEIVED_REQUEST_BODY,
    RECEIVED_RESPONSE_BODY, REQUEST_HEADERS, RESPONSE_HEADERS, Stream, callout_status,
};
use super::host::{Counters, DynamicModuleHost, FLOW_COUNTERS, HookState, SERVICE_COUNTERS, log, shared};
use super::{grpc, service};
use crate::failover::{self, AttemptVerdict};
use crate::flow::{Gateway, RequestFlow};
use crate::host::{Action, LogLevel};
use crate::metrics::Metrics;
use crate::secrets::Secrets;

/// The host callbacks, resolved once by `envoy_dynamic_module_on_program_init`.
static CALLBACKS: OnceLock<Callbacks> = OnceLock::new();

/// What a config pointer Envoy holds points at.
// Only ever behind the Box Envoy holds, never moved: an attempt config (one per deployment
// cluster) wastes the gateway's size, where boxing the gateway's would add a pointer chase.
#[allow(clippy::large_enum_variant)]
enum ModuleConfig {
    /// The gateway's filter (the listener's).
    Filter(FilterConfig),
    /// The attempt filter (a deployment cluster's upstream chain).
    Attempt(AttemptConfig),
}

/// The attempt filter's config: nothing to compile; the host's counters, which it never counts,
/// made once here instead of per stream.
struct AttemptConfig {
    counters: Arc<Counters>,
}

/// What a stream pointer Envoy holds points at: a stream of the config's kind.
// Only ever behind the Box Envoy holds, never moved: an attempt's allocation has the gateway
// stream's size, where boxing the gateway's stream would add an allocation and a pointer chase
// to every request.
#[allow(clippy::large_enum_variant)]
enum ModuleStream {
    Filter(StreamFilter),
    Attempt(AttemptFilter),
}

/// One loaded filter config, shared by every worker thread.
struct FilterConfig {
    compiled: CompiledConfig,
    secrets: Secrets,
    counters: Arc<Counters>,
    /// What every worker's requests counted, reported by the main thread's tick.
    metrics: Arc<Metrics>,
    /// Alive while the config is: workers drop their gateway for a config whose token is gone.
    token: Arc<()>,
    /// Envoy's pointer for this config, as a number: the service's name for its driver.
    envoy_config: usize,
}

// Envoy hands one config to every worker thread.
const _: fn() = || {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<FilterConfig>();
    shared_across_threads::<ModuleConfig>();
};

/// A worker thread's gateway for one config.
struct Worker {
    config: Weak<()>,
    gateway: Rc<Gateway>,
    rng: Cell<SplitMix64>,
    /// The invalidation log's generation this gateway has applied (xDS mode).
    invalidations_seen: Cell<u64>,
}

thread_local! {
    static WORKERS: RefCell<Vec<Worker>> = const { RefCell::new(Vec::new()) };
}

/// Distinguishes worker threads' seeds even if the OS's random source failed.
static SEEDS: AtomicU64 = AtomicU64::new(0);

impl FilterConfig {
    /// This thread's gateway for the config and a fresh random value for a stream.
    fn worker(&self) -> (Rc<Gateway>, u64) {
        WORKERS.with(|workers| {
            let mut workers = workers.borrow_mut();
            // Compared by address, touching no reference count (every worker shares it); a dead
            // entry's Weak keeps its allocation, so no new config can have that address.
            let token = Arc::as_ptr(&self.token);
            // A stream's random value, and the invalidations the singleton wrote since.
            let serve = |w: &Worker| {
                let mut rng = w.rng.get();
                let random = rng.next_u64();
                w.rng.set(rng);
                if self.is_xds() {
                    apply_invalidations(w);
                }
                (Rc::clone(&w.gateway), random)
            };
            if let Some(w) = workers.iter().find(|w| w.config.as_ptr() == token) {
                return serve(w);
            }
            workers.retain(|w| w.config.strong_count() > 0);
            // Every worker configures in the same millisecond: only real entropy keeps their
            // routing choices and record ids apart.
            let seed = getrandom::u64().unwrap_or(0) ^ SEEDS.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            let worker = Worker {
                config: Arc::downgrade(&self.token),
                gateway: Rc::new(Gateway::with_metrics(
                    self.compiled.clone(),
                    self.secrets.clone(),
                    Arc::clone(&self.metrics),
                )),
                rng: Cell::new(SplitMix64::new(seed)),
                invalidations_seen: Cell::new(0),
            };
            let served = serve(&worker);
            workers.push(worker);
            served
        })
    }

    /// xDS mode (`key_lookup`): keys are looked up and invalidated, usage is shipped.
    fn is_xds(&self) -> bool {
        self.compiled.config.key_lookup.is_some()
    }
}

/// Drops the keys the control plane revoked from this worker's cache, when the singleton wrote
/// the log since this worker last read it (one atomic load per stream otherwise).
fn apply_invalidations(worker: &Worker) {
    let generation = service::invalidations_generation();
    if generation == worker.invalidations_seen.get() {
        return;
    }
    worker.invalidations_seen.set(generation);
    if let (Some(log), _) = shared().get(crate::service::INVALIDATIONS_KEY) {
        worker.gateway.apply_invalidations(&String::from_utf8_lossy(&log), super::host::now_ms());
    }
}

/// One stream: the flow, and what the hooks read of Envoy's around it.
struct StreamFilter {
    /// Borrowed only for one hook's work. Envoy calls a hook again from inside ours when the
    /// flow sends a local reply (the reply's headers pass back through this filter): that
    /// nested call finds the flow borrowed and lets the reply through untouched.
    flow: RefCell<RequestFlow<DynamicModuleHost>>,
    stream: Stream,
    /// Shared with the host: which hook is running, the key lookup's answer.
    hook: Rc<HookState>,
    /// Envoy ended the stream inside one of our hooks (a local reply sent from a callout's
    /// answer completes the stream at once): the hook records it when its own work is done.
    finish_pending: Cell<bool>,
}

impl StreamFilter {
    /// Settles and records the request (once: the flow ignores a second call). Its metrics
    /// wait in the config's [`Metrics`] for the main thread's tick. Called inside another hook
    /// (the flow busy), it is left to that hook ([`StreamFilter::with_flow`]).
    fn finish(&self) {
        match self.flow.try_borrow_mut() {
            Ok(mut flow) => flow.on_log(),
            Err(_) => self.finish_pending.set(true),
        }
    }

    /// One hook's work on the flow (None when the flow is busy: a hook nested in ours, such as
    /// a local reply's headers passing back through this filter), then the stream's end if
    /// Envoy ended it during that work. A cache hit answered after a key lookup is such a
    /// reply: without this its usage record would be lost.
    fn with_flow<T>(&self, work: impl FnOnce(&mut RequestFlow<DynamicModuleHost>) -> T) -> Option<T> {
        let out = {
            let mut flow = self.flow.try_borrow_mut().ok()?;
            work(&mut flow)
        };
        if self.finish_pending.take() {
            self.finish();
        }
        Some(out)
    }
}

/// One upstream attempt of a request (a deployment cluster's upstream chain): a failing answer
/// to a request whose fallback plan has a step left becomes a 307 to the request's next pass
/// (`crate::failover`); anything else passes untouched.
struct AttemptFilter {
    stream: Stream,
    counters: Arc<Counters>,
    /// A 400 held until its body says whether it is a refusal with somewhere to go: the plan,
    /// and the body so far.
    held: RefCell<Option<(Box<Plan>, Vec<u8>)>>,
}

impl AttemptFilter {
    fn host(&self) -> DynamicModuleHost {
        DynamicModuleHost::new(self.stream, Arc::clone(&self.counters), Rc::new(HookState::default()))
    }

    /// At the attempt's response headers. The request's headers are still readable here: an
    /// upstream filter's are the router's copy of the downstream request's, which outlives
    /// every attempt (Envoy's `UpstreamRequestFilterManagerCallbacks::requestHeaders`). A
    /// success costs one header read and a comparison.
    fn on_response_headers(&self, end_of_stream: bool) -> FilterStatus {
        let status = self.stream.header(RESPONSE_HEADERS, ":status");
        let status = status.as_deref().and_then(|s| std::str::from_utf8(s).ok()?.parse().ok()).unwrap_or(0);
        if !failover::may_move_on(status) {
            return CONTINUE;
        }
        let request_id = self.stream.header(REQUEST_HEADERS, "x-request-id");
        match failover::attempt_verdict(&self.host(), status, request_id.as_deref()) {
            AttemptVerdict::Pass => {}
            AttemptVerdict::Redirect(nonce) => self.redirect(&nonce),
            // A 400 without a body says nothing more.
            AttemptVerdict::ReadBody(_) if end_of_stream => {}
            AttemptVerdict::ReadBody(plan) => {
                *self.held.borrow_mut() = Some((plan, Vec::new()));
                return HEADERS_STOP_ITERATION;
            }
        }
        CONTINUE
    }

    /// A held 400's body, chunk by chunk (Envoy buffers them too); at its end, the decision.
    fn on_response_body(&self, end_of_stream: bool) -> FilterStatus {
        let mut held = self.held.borrow_mut();
        let Some((_, body)) = held.as_mut() else { return CONTINUE };
        self.stream.read_body(RECEIVED_RESPONSE_BODY, body);
        if !end_of_stream {
            return BODY_STOP_ITERATION_AND_BUFFER;
        }
        if let Some((plan, body)) = held.take()
            && let Some(nonce) = failover::refusal_redirect(&self.host(), plan, &body)
        {
            self.redirect(&nonce);
        }
        CONTINUE
    }

    fn redirect(&self, nonce: &str) {
        for (name, value) in failover::redirect_headers(nonce) {
            self.stream.set_header(RESPONSE_HEADERS, name, Some(value.as_bytes()));
        }
    }
}

fn headers_status(action: Action) -> FilterStatus {
    match action {
        Action::Continue => CONTINUE,
        Action::Pause => HEADERS_STOP_ITERATION,
    }
}

/// A paused body is buffered by Envoy until the filter has all of it.
fn body_status(action: Action) -> FilterStatus {
    match action {
        Action::Continue => CONTINUE,
        Action::Pause => BODY_STOP_ITERATION_AND_BUFFER,
    }
}

/// Compiles a config the way the wasm build's `on_configure` does; the counters and counter
/// records are made here, before any traffic.
fn load_config(callbacks: &'static Callbacks, handle: &ConfigHandle, bytes: &[u8]) -> Result<FilterConfig, String> {
    let config: GatewayConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let compiled = CompiledConfig::compile(config)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    // Envoy's own environment: the native module is Envoy, so it reads the variables named by
    // `api_key: os.environ/NAME` and the master key's directly (the wasm build needs
    // `host_env_keys`).
    let secrets = crate::secrets::from_env(&compiled, |name| std::env::var(name).ok())?;
    let metrics = Arc::new(Metrics::new(&compiled));
    let service_counters = if compiled.config.key_lookup.is_some() { SERVICE_COUNTERS } else { &[] };
    let names = FLOW_COUNTERS.iter().chain(service_counters).copied().chain(metrics.names());
    let counters = Counters::define(handle, names)?;
    // Two workers creating the same record at once could lose an update: made before traffic.
    let deployments = crate::flow::usage_counters(&compiled);
    for name in compiled.named_counters().chain(deployments.iter().map(String::as_str)) {
        super::host::ensure_record(name, &ScopeState::default().encode());
    }
    log(
        callbacks,
        LogLevel::Info,
        &format!(
            "sluice: filter configured (native): {} deployments, {} model groups, {} keys, {} teams",
            compiled.config.deployments.len(),
            compiled.groups.len(),
            compiled.keys.len(),
            compiled.teams.len()
        ),
    );
    Ok(FilterConfig {
        compiled,
        secrets,
        counters: Arc::new(counters),
        metrics,
        token: Arc::new(()),
        envoy_config: handle.ptr() as usize,
    })
}

// ---- hooks ---------------------------------------------------------------------------------

/// Called once when Envoy loads the module. Returns the ABI version the module was written
/// against, or null (Envoy then rejects the config: "Failed to initialize dynamic module") when
/// the host lacks a callback the module calls; the reason goes to Envoy's stderr.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    match Callbacks::resolve() {
        Ok(callbacks) => {
            let _ = CALLBACKS.set(callbacks);
            ABI_VERSION.as_ptr()
        }
        Err(e) => {
            eprintln!("{e}");
            core::ptr::null()
        }
    }
}

/// A filter config: `filter_config` is the same `GatewayConfig` JSON the wasm filter gets, or,
/// for the filter named [`ATTEMPT_FILTER_NAME`], anything (the attempt filter has no config).
/// Null (an invalid config, logged) makes Envoy reject it, as the wasm filter's failed
/// `on_configure` does: fail closed at load.
///
/// # Safety
/// Envoy passes its config pointer and two buffers valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    let Some(callbacks) = CALLBACKS.get() else {
        return core::ptr::null();
    };
    // SAFETY: Envoy's buffer, valid for this call.
    if is_attempt_filter(unsafe { name.as_slice() }) {
        let attempt = AttemptConfig { counters: Arc::new(Counters::default()) };
        // One per deployment cluster: not worth a line each at start.
        log(callbacks, LogLevel::Debug, "sluice: attempt filter configured (native)");
        return Box::into_raw(Box::new(ModuleConfig::Attempt(attempt))).cast_const().cast();
    }
    // SAFETY: Envoy's buffer, valid for this call.
    let bytes = unsafe { config.to_vec() }.unwrap_or_default();
    // SAFETY: the config Envoy is creating in this very call; the handle ends with it.
    let handle = unsafe { ConfigHandle::new(config_envoy, callbacks) };
    match load_config(callbacks, &handle, &bytes) {
        Ok(config) => {
            let cluster = config.compiled.config.key_lookup.as_ref().map(|lookup| lookup.cluster.as_str());
            // SAFETY: the config Envoy is creating; forgotten in on_http_filter_config_destroy
            // (unregister), used on this, the main, thread only.
            let live = unsafe { LiveConfig::new(config_envoy, callbacks) };
            // Background health checks run on this thread, with a gateway of their own.
            let health = config.compiled.config.health_check_interval_ms.map(|_| {
                Gateway::with_metrics(config.compiled.clone(), config.secrets.clone(), Arc::clone(&config.metrics))
            });
            service::register(live, Arc::clone(&config.counters), Arc::clone(&config.metrics), cluster, health);
            Box::into_raw(Box::new(ModuleConfig::Filter(config))).cast_const().cast()
        }
        Err(e) => {
            log(callbacks, LogLevel::Critical, &format!("sluice: invalid filter configuration: {e}"));
            core::ptr::null()
        }
    }
}

/// The filter `name` (the bootstrap's `filter_name`) is the attempt filter's.
fn is_attempt_filter(name: Option<&[u8]>) -> bool {
    name == Some(ATTEMPT_FILTER_NAME.as_bytes())
}

/// # Safety
/// `config` is a pointer `on_http_filter_config_new` returned, destroyed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ConfigModulePtr) {
    if !config.is_null() {
        // SAFETY: made by Box::into_raw in on_http_filter_config_new; Envoy destroys it once,
        // after its last stream.
        let config = unsafe { Box::from_raw(config.cast::<ModuleConfig>().cast_mut()) };
        if let ModuleConfig::Filter(config) = *config {
            service::unregister(config.envoy_config);
        }
    }
}

/// A stream begins on a worker thread.
///
/// # Safety
/// `config` is a live pointer from `on_http_filter_config_new`; `filter_envoy` is the stream's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    filter_envoy: FilterEnvoyPtr,
) -> FilterModulePtr {
    let Some(callbacks) = CALLBACKS.get() else {
        return core::ptr::null();
    };
    // SAFETY: a config this module made, alive while Envoy has streams of it.
    let Some(config) = (unsafe { config.cast::<ModuleConfig>().as_ref() }) else {
        return core::ptr::null();
    };
    // SAFETY: the stream's pointer, kept in the stream's own object (dropped in
    // on_http_filter_destroy) and used only in its hooks, on its worker thread.
    let stream = unsafe { Stream::new(filter_envoy, callbacks) };
    let filter = match config {
        ModuleConfig::Filter(config) => {
            let (gateway, random) = config.worker();
            let hook = Rc::new(HookState::default());
            let host = DynamicModuleHost::new(stream, Arc::clone(&config.counters), Rc::clone(&hook));
            ModuleStream::Filter(StreamFilter {
                flow: RefCell::new(RequestFlow::new(host, gateway, random)),
                stream,
                hook,
                finish_pending: Cell::new(false),
            })
        }
        ModuleConfig::Attempt(config) => ModuleStream::Attempt(AttemptFilter {
            stream,
            counters: Arc::clone(&config.counters),
            held: RefCell::new(None),
        }),
    };
    Box::into_raw(Box::new(filter)).cast_const().cast()
}

/// The stream's object, for one hook.
///
/// # Safety
/// `filter` is null or a live pointer from `on_http_filter_new`, used on its worker thread.
unsafe fn module_stream<'a>(filter: FilterModulePtr) -> Option<&'a ModuleStream> {
    // SAFETY: the caller's promise; shared references only (hooks may nest, see `flow`).
    unsafe { filter.cast::<ModuleStream>().as_ref() }
}

/// The gateway filter's stream, for one hook; None for an attempt's (nothing to do).
///
/// # Safety
/// As for [`module_stream`].
unsafe fn stream_filter<'a>(filter: FilterModulePtr) -> Option<&'a StreamFilter> {
    // SAFETY: the caller's promise.
    match unsafe { module_stream(filter) }? {
        ModuleStream::Filter(f) => Some(f),
        ModuleStream::Attempt(_) => None,
    }
}

/// # Safety
/// Envoy calls it with a live stream's pointers, on that stream's worker thread (as every
/// stream hook below).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    _filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> FilterStatus {
    // SAFETY: see the function's contract.
    let Some(f) = (unsafe { stream_filter(filter) }) else { return CONTINUE };
    f.with_flow(|flow| headers_status(flow.on_request_headers(end_of_stream))).unwrap_or(CONTINUE)
}

/// # Safety
/// As for the request headers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> FilterStatus {
    // SAFETY: see the function's contract.
    let Some(f) = (unsafe { stream_filter(filter) }) else { return CONTINUE };
    f.with_flow(|flow| {
        // The body so far: what Envoy buffered for us, and this callback's chunk.
        let mut size = f.stream.body_len(BUFFERED_REQUEST_BODY);
        if !f.stream.received_is_buffered() {
            size += f.stream.body_len(RECEIVED_REQUEST_BODY);
        }
        f.hook.in_request_body.set(true);
        let action = flow.on_request_body(size, end_of_stream);
        f.hook.in_request_body.set(false);
        body_status(action)
    })
    .unwrap_or(CONTINUE)
}

/// # Safety
/// As for the request headers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> FilterStatus {
    // SAFETY: see the function's contract.
    let f = match unsafe { module_stream(filter) } {
        Some(ModuleStream::Filter(f)) => f,
        Some(ModuleStream::Attempt(attempt)) => return attempt.on_response_headers(end_of_stream),
        None => return CONTINUE,
    };
    f.with_flow(|flow| headers_status(flow.on_response_headers())).unwrap_or(CONTINUE)
}

/// # Safety
/// As for the request headers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> FilterStatus {
    // SAFETY: see the function's contract.
    let f = match unsafe { module_stream(filter) } {
        Some(ModuleStream::Filter(f)) => f,
        Some(ModuleStream::Attempt(attempt)) => return attempt.on_response_body(end_of_stream),
        None => return CONTINUE,
    };
    // Never buffered: each chunk passes as soon as the tap has read it (streams stay streams).
    f.with_flow(|flow| flow.on_response_body(f.stream.body_len(RECEIVED_RESPONSE_BODY), end_of_stream));
    CONTINUE
}

/// The stream is over (completed, reset or cancelled): settle and record, as wasm's `on_log`.
///
/// # Safety
/// As for the request headers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
) {
    // SAFETY: see the function's contract.
    if let Some(f) = unsafe { stream_filter(filter) } {
        f.finish();
    }
}

/// # Safety
/// `filter` is a pointer `on_http_filter_new` returned; Envoy destroys it once, last.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: FilterModulePtr) {
    if !filter.is_null() {
        // SAFETY: made by Box::into_raw in on_http_filter_new; no hook runs after this one.
        drop(unsafe { Box::from_raw(filter.cast::<ModuleStream>().cast_mut()) });
    }
}

/// A key lookup's answer (xDS mode) or a health probe's, on the stream's worker thread: the
/// flow admits or refuses and resumes the request, or counts the probe. An answer Envoy delivers inside the call that started it (it failed
/// before leaving) finds the flow borrowed and is dropped: the start reports the failure.
///
/// # Safety
/// As for the request headers; `headers` and `chunks` are arrays of the given sizes (or null),
/// valid during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    callout_id: u64,
    result: CalloutResult,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: see the function's contract.
    let Some(f) = (unsafe { stream_filter(filter) }) else { return };
    let Ok(token) = u32::try_from(callout_id) else { return };
    // SAFETY: the hook's arguments, as Envoy passed them.
    let answer = unsafe { CalloutAnswer::read(headers, headers_size, chunks, chunks_size) };
    f.with_flow(|flow| {
        if flow.awaits_http_call(token) {
            // A health probe's answer: the status as sent, the body as is.
            let status = callout_status(result == CALLOUT_SUCCESS, &answer.headers);
            let size = answer.body.len();
            *f.hook.http_answer.borrow_mut() = (status, answer.body);
            flow.on_http_response(token, size);
            return;
        }
        let (status, message) = grpc::answer(result == CALLOUT_SUCCESS, &answer.headers, &answer.body);
        let size = message.len();
        *f.hook.grpc_answer.borrow_mut() = message;
        flow.on_grpc_response(token, status, size);
    });
}

/// An event the singleton's ticking thread (or a worker announcing a scope) posted to the main
/// thread through a config's scheduler.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: ConfigEnvoyPtr,
    _config: ConfigModulePtr,
    event_id: u64,
) {
    service::on_event(event_id);
}

/// The answer to one of the singleton's calls, on the main thread.
///
/// # Safety
/// `config_envoy` is a live config's; `headers` and `chunks` as in the stream's callout hook.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: ConfigEnvoyPtr,
    _config: ConfigModulePtr,
    callout_id: u64,
    result: CalloutResult,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    let Some(callbacks) = CALLBACKS.get() else { return };
    // SAFETY: the hook's arguments, as Envoy passed them.
    let answer = unsafe { CalloutAnswer::read(headers, headers_size, chunks, chunks_size) };
    // SAFETY: a config Envoy still has (it calls this hook only for one), on the main thread;
    // the service only compares it with its drivers.
    let config = unsafe { LiveConfig::new(config_envoy, callbacks) };
    service::on_answer(config, callout_id, result == CALLOUT_SUCCESS, &answer.headers, &answer.body);
}

// The other hooks Envoy 1.40 resolves when it loads an HTTP filter module: nothing to do
// (no trailers to inspect; no streams or per-stream timers started; no flow control).

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) -> FilterStatus {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) -> FilterStatus {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _event_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_abi_version_is_the_one_envoy_1_40_expects() {
        assert_eq!(ABI_VERSION.to_str().ok(), Some("v0.2.0"));
    }

    /// Outside Envoy (a test binary exports no callbacks) the load check refuses, naming the
    /// missing callback and the ABI version, and program init returns null.
    #[test]
    fn without_envoy_the_load_check_refuses_clearly() {
        let err = Callbacks::resolve().err().unwrap_or_default();
        assert!(err.contains("envoy_dynamic_module_callback_http_get_header"), "{err}");
        assert!(err.contains("v0.2.0"), "{err}");
        assert!(envoy_dynamic_module_on_program_init().is_null());
    }

    /// Only the bootstrap's attempt filter name makes the attempt kind; the gateway's filter is
    /// named `sluice` (and any other name, or none, is the gateway's too).
    #[test]
    fn the_attempt_filter_is_chosen_by_its_filter_name() {
        assert!(is_attempt_filter(Some(b"sluice_attempt")));
        for other in [&b"sluice"[..], b"", b"sluice_attempt2", b"SLUICE_ATTEMPT"] {
            assert!(!is_attempt_filter(Some(other)), "{other:?}");
        }
        assert!(!is_attempt_filter(None));
    }
}
