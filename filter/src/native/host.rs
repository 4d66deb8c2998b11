//! The dynamic-module binding of [`Host`]: each call is one of Envoy's callbacks on the stream
//! (through the safe [`Stream`] handle), or process memory where proxy-wasm needed a host call
//! (shared data, the clock). In xDS mode a key lookup is an HTTP callout carrying gRPC
//! ([`super::grpc`]), and usage records and limit scopes go to the singleton service on the
//! main thread ([`super::service`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, LazyLock};

use super::abi::{
    ATTRIBUTE_RESPONSE_CODE_DETAILS, ATTRIBUTE_SOURCE_ADDRESS, BUFFERED_REQUEST_BODY, Callbacks, ConfigHandle,
    RECEIVED_REQUEST_BODY, RECEIVED_RESPONSE_BODY, REQUEST_HEADERS, RESPONSE_HEADERS, Stream,
};
use super::shared_data::SharedData;
use crate::host::{CasResult, Host, LogLevel};

/// The shared data of every worker of this Envoy (and of every config it loads, as proxy-wasm's
/// shared data outlives VMs): limit and budget counters.
static SHARED: LazyLock<SharedData> = LazyLock::new(SharedData::default);

/// The process's shared data (the singleton service writes the invalidation log here).
pub fn shared() -> &'static SharedData {
    &SHARED
}

/// Milliseconds since the Unix epoch, as proxy-wasm's clock gives them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Creates a shared record if absent (`counters::ensure_exists` for a config being loaded,
/// before any stream exists).
pub fn ensure_record(name: &str, initial: &[u8]) {
    if SHARED.get(name).0.is_none() {
        SHARED.set(name, initial, None);
    }
}

/// The request headers the bootstrap's routes read (`envoy_bootstrap.rs`: prefix `/`,
/// `cluster_header: x-sluice-cluster`, the failover route's and the stream-idle routes' markers;
/// management prefixes in xDS mode).
const ROUTE_HEADERS: &[&str] = &[
    "x-sluice-cluster",
    ":path",
    sluice_core::fallbacks::FAILOVER_ROUTE_HEADER,
    sluice_core::retries::STREAM_IDLE_HEADER,
];

/// Counter names the flow reports with a host call, besides those it keeps in
/// [`crate::metrics::Metrics`] for the tick. A name missing here is not counted: the test below
/// reads the flow's source for them.
pub const FLOW_COUNTERS: &[&str] = &[
    "sluice.key_cache.negative_hits",
    "sluice.key_cache.shared_hits",
    "sluice.key_cache.stale_served",
    "sluice.key_lookups",
    "sluice.key_lookup_failures",
];

/// Counter names the singleton service reports (xDS mode); the test below reads them from
/// `service.rs`.
pub const SERVICE_COUNTERS: &[&str] = &[
    "sluice.usage.outbox_overflow",
    "sluice.usage.unreadable",
    "sluice.usage.shipped",
    "sluice.usage.duplicates",
    "sluice.usage.report_failures",
    "sluice.fleet_limits.syncs",
    "sluice.fleet_limits.sync_failures",
    "sluice.key_invalidations",
];

/// The counters a config defined, by name (Envoy creates no stats once a config is loaded, so
/// every name the flow may count is defined up front).
#[derive(Debug, Default)]
pub struct Counters {
    ids: HashMap<String, usize>,
}

impl Counters {
    /// Defines every name; the first Envoy refuses is the error.
    pub fn define<'a>(config: &ConfigHandle, names: impl Iterator<Item = &'a str>) -> Result<Counters, String> {
        let mut ids = HashMap::new();
        for name in names {
            let id = config.define_counter(name).ok_or_else(|| format!("Envoy refused the counter {name}"))?;
            ids.insert(name.to_owned(), id);
        }
        Ok(Counters { ids })
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.ids.get(name).copied()
    }
}

/// The production [`Host`] of the native build: one stream's.
pub struct DynamicModuleHost {
    stream: Stream,
    counters: Arc<Counters>,
    /// What the stream's hooks tell the host (shared with the stream's object).
    hook: Rc<HookState>,
}

/// Where the flow is being called from, and what came with the call.
#[derive(Default)]
pub struct HookState {
    /// Inside a request-body hook: the chunk it brought is "received" (outside one, after a
    /// key lookup's answer, the whole body is in Envoy's buffer and there is no received chunk).
    pub in_request_body: Cell<bool>,
    /// The message of the key lookup's answer, put here by the callout hook for the flow.
    pub grpc_answer: RefCell<Vec<u8>>,
    /// A health probe's answer (status, body), put here likewise.
    pub http_answer: RefCell<(Option<u16>, Vec<u8>)>,
}

impl DynamicModuleHost {
    pub fn new(stream: Stream, counters: Arc<Counters>, hook: Rc<HookState>) -> Self {
        Self { stream, counters, hook }
    }

    /// The chunk this hook brought is separate from Envoy's buffer (a request-body hook, unless
    /// a filter before this one buffered the body and the chunk is that buffer).
    fn received_is_separate(&self) -> bool {
        self.hook.in_request_body.get() && !self.stream.received_is_buffered()
    }

    fn callbacks(&self) -> &'static Callbacks {
        self.stream.callbacks()
    }
}

/// Envoy's log level for the filter's own.
fn level(level: LogLevel) -> super::abi::LogLevel {
    use super::abi::{LOG_CRITICAL, LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_TRACE, LOG_WARN};
    match level {
        LogLevel::Trace => LOG_TRACE,
        LogLevel::Debug => LOG_DEBUG,
        LogLevel::Info => LOG_INFO,
        LogLevel::Warn => LOG_WARN,
        LogLevel::Error => LOG_ERROR,
        LogLevel::Critical => LOG_CRITICAL,
    }
}

/// A line in Envoy's log, from any thread.
pub fn log(callbacks: &Callbacks, log_level: LogLevel, message: &str) {
    callbacks.log(level(log_level), message);
}

impl Host for DynamicModuleHost {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.stream.header(REQUEST_HEADERS, name)
    }

    fn request_headers<const N: usize>(&self, names: [&str; N]) -> [Option<Vec<u8>>; N] {
        self.stream.headers(REQUEST_HEADERS, names)
    }

    fn all_request_headers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        self.stream.visit_headers(REQUEST_HEADERS, |key, value| all.push((key.to_vec(), value.to_vec())));
        all
    }

    /// A header the route reads also clears the route cache, as Envoy does for a wasm filter's
    /// every header change: the filter routes by setting `x-sluice-cluster` (and `:path`) after
    /// Envoy chose a route. The route matches on nothing else (`prefix: /`, `cluster_header`),
    /// so the credential headers set beside them cost no second route choice.
    fn set_request_header(&self, name: &str, value: Option<&[u8]>) {
        self.stream.set_header(REQUEST_HEADERS, name, value);
        if ROUTE_HEADERS.contains(&name) {
            self.stream.clear_route_cache();
        }
    }

    fn add_request_header(&self, name: &str, value: &[u8]) {
        self.stream.add_header(REQUEST_HEADERS, name, value);
        if ROUTE_HEADERS.contains(&name) {
            self.stream.clear_route_cache();
        }
    }

    /// The whole request body: what earlier callbacks buffered, then this callback's chunk
    /// (unless that chunk is the buffer itself, or there is no body callback).
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        let mut body = Vec::with_capacity(size);
        self.stream.read_body(BUFFERED_REQUEST_BODY, &mut body);
        if self.received_is_separate() {
            self.stream.read_body(RECEIVED_REQUEST_BODY, &mut body);
        }
        Some(body)
    }

    /// Empties both parts of the body and puts the new one in this callback's chunk, which
    /// Envoy adds to its buffer and sends on when the callback continues; outside a body
    /// callback (a key lookup's answer resumed the request), into Envoy's buffer.
    fn replace_request_body(&self, _old_size: usize, body: &[u8]) {
        let target = if self.received_is_separate() {
            self.stream.drain_body(BUFFERED_REQUEST_BODY, self.stream.body_len(BUFFERED_REQUEST_BODY));
            RECEIVED_REQUEST_BODY
        } else {
            BUFFERED_REQUEST_BODY
        };
        self.stream.drain_body(target, self.stream.body_len(target));
        if !self.stream.append_body(target, body) {
            self.log(LogLevel::Warn, "sluice: could not replace the request body");
        }
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.stream.header(RESPONSE_HEADERS, name)
    }

    fn response_headers<const N: usize>(&self, names: [&str; N]) -> [Option<Vec<u8>>; N] {
        self.stream.headers(RESPONSE_HEADERS, names)
    }

    fn set_response_header(&self, name: &str, value: Option<&[u8]>) {
        self.stream.set_header(RESPONSE_HEADERS, name, value);
    }

    fn add_response_header(&self, name: &str, value: &[u8]) {
        self.stream.add_header(RESPONSE_HEADERS, name, value);
    }

    /// This callback's chunk of the response (the filter never buffers responses).
    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        let mut chunk = Vec::with_capacity(size);
        self.stream.read_body(RECEIVED_RESPONSE_BODY, &mut chunk);
        Some(chunk)
    }

    fn append_response_body(&self, _size: usize, out: &mut Vec<u8>) {
        self.stream.read_body(RECEIVED_RESPONSE_BODY, out);
    }

    fn replace_response_body(&self, _old_size: usize, body: &[u8]) {
        self.stream.drain_body(RECEIVED_RESPONSE_BODY, self.stream.body_len(RECEIVED_RESPONSE_BODY));
        if !self.stream.append_body(RECEIVED_RESPONSE_BODY, body) {
            self.log(LogLevel::Warn, "sluice: could not replace a response chunk");
        }
    }

    fn send_local_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.stream.send_response(status, headers, body);
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        SHARED.get(key)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> CasResult {
        SHARED.set(key, value, cas)
    }

    /// Under the shared data's lock: one lock and no copy, where the default is a read and a
    /// compare-and-swap write.
    fn shared_update(&self, key: &str, change: &mut dyn FnMut(&mut Vec<u8>) -> bool) -> bool {
        SHARED.update(key, change);
        true
    }

    /// Handed to the singleton service on the main thread, which writes the records to the log
    /// a batch per call (and ships them in xDS mode): one log call per request was a tenth of
    /// this build's cost per request (BENCHMARKS.md, profile).
    fn enqueue_usage(&self, record: &[u8]) -> bool {
        super::service::hand_over_usage(record);
        true
    }

    fn announce_limit_scope(&self, name: &str) {
        super::service::announce_scope(name);
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn response_code_details(&self) -> Option<Vec<u8>> {
        self.stream.attribute(ATTRIBUTE_RESPONSE_CODE_DETAILS)
    }

    fn source_address(&self) -> Option<Vec<u8>> {
        self.stream.attribute(ATTRIBUTE_SOURCE_ADDRESS)
    }

    fn log(&self, log_level: LogLevel, message: &str) {
        log(self.callbacks(), log_level, message);
    }

    fn count(&self, metric: &str, delta: u64) {
        if delta == 0 {
            return;
        }
        if let Some(id) = self.counters.ids.get(metric) {
            self.stream.increment_counter(*id, delta);
        }
    }

    /// A key lookup: an HTTP callout with gRPC's framing; the answer reaches the flow through
    /// `on_http_filter_http_callout_done`. Envoy numbers callouts per stream from 1.
    fn dispatch_grpc(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        super::grpc::call(cluster, service, method, message, |headers, body| {
            self.stream.http_callout(cluster, headers, body, timeout_ms)
        })
    }

    fn grpc_response(&self, _size: usize) -> Option<Vec<u8>> {
        Some(std::mem::take(&mut *self.hook.grpc_answer.borrow_mut()))
    }

    fn dispatch_http(&self, cluster: &str, headers: &[(&str, &[u8])], body: &[u8], timeout_ms: u64) -> Option<u32> {
        self.stream.http_callout(cluster, headers, body, timeout_ms).and_then(|id| u32::try_from(id).ok())
    }

    fn http_response(&self, _size: usize) -> (Option<u16>, Vec<u8>) {
        std::mem::take(&mut *self.hook.http_answer.borrow_mut())
    }

    fn resume_request(&self) {
        self.stream.continue_decoding();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every literal counter name the flow reports is defined by the native build.
    #[test]
    fn every_counter_the_flow_reports_is_defined() {
        let flow = [
            include_str!("../flow.rs"),
            include_str!("../flow/auth.rs"),
            include_str!("../flow/lookup.rs"),
            include_str!("../flow/route.rs"),
            include_str!("../flow/response.rs"),
        ]
        .concat();
        let mut found = 0;
        for piece in flow.split("count(\"").skip(1) {
            let Some(name) = piece.split('"').next() else { continue };
            assert!(FLOW_COUNTERS.contains(&name), "{name} is counted by the flow but not defined natively");
            found += 1;
        }
        assert!(found >= 5, "the flow's counters were not found ({found})");
    }

    /// Every literal counter name the singleton service reports is defined by the native build.
    #[test]
    fn every_counter_the_service_reports_is_defined() {
        let service = include_str!("../service.rs");
        let names: Vec<&str> = service.split("count(\"").skip(1).filter_map(|piece| piece.split('"').next()).collect();
        assert!(names.len() >= 6, "the service's counters were not found ({names:?})");
        for name in names {
            assert!(SERVICE_COUNTERS.contains(&name), "{name} is counted by the service but not defined natively");
        }
    }
}
