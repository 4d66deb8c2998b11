//! The proxy-wasm binding of [`Host`]: every call is a proxy-wasm host call into Envoy. Also the
//! per-worker state the binding keeps (metric ids, the usage batch).

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

use crate::host::{CasResult, Host, LogLevel};
use crate::usage_record::USAGE_LOG_PREFIX;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// proxy-wasm's log level for the filter's own.
fn level(level: LogLevel) -> proxy_wasm::types::LogLevel {
    use proxy_wasm::types::LogLevel as Wasm;
    match level {
        LogLevel::Trace => Wasm::Trace,
        LogLevel::Debug => Wasm::Debug,
        LogLevel::Info => Wasm::Info,
        LogLevel::Warn => Wasm::Warn,
        LogLevel::Error => Wasm::Error,
        LogLevel::Critical => Wasm::Critical,
    }
}

/// Name of the shared queue that carries usage records to the singleton service.
pub const USAGE_QUEUE: &str = "sluice_usage";
/// Name of the shared queue that carries rate-limited scope names to the singleton service.
pub const LIMIT_SCOPES_QUEUE: &str = "sluice_limit_scopes";
/// VM id shared by the filter and the service, so they share data and queues.
pub const VM_ID: &str = "sluice";

/// Records a worker batches before one queue message (one cross-thread hand-off per batch).
const USAGE_BATCH: usize = 32;

/// State the proxy-wasm host binding keeps per worker (VM): metric ids, the queue id, and
/// usage records not yet handed to the service (newline-separated JSON).
#[derive(Default)]
pub struct WorkerState {
    metric_ids: HashMap<String, u32>,
    usage_queue: Option<u32>,
    limit_scopes_queue: Option<u32>,
    pending_usage: Vec<u8>,
    pending_count: usize,
}

impl WorkerState {
    /// Hands the pending batch to the service; if the queue is unavailable, writes the records
    /// to the log instead, so none is ever dropped.
    pub fn flush_usage(&mut self) {
        self.hand_over(false);
    }

    /// The VM is going away: the pending records are also written to this worker's log, since
    /// the service may stop before it drains the queue (Envoy shutting down); if it does drain
    /// it, the record is logged twice and counted once (`sluice usage import` is idempotent).
    pub fn flush_usage_on_stop(&mut self) {
        self.hand_over(true);
    }

    fn hand_over(&mut self, also_log: bool) {
        if self.pending_count == 0 {
            return;
        }
        if also_log {
            self.log_pending();
        }
        if self.usage_queue.is_none() {
            // The service registers the queue when it starts; resolve lazily and retry later.
            self.usage_queue = hostcalls::resolve_shared_queue(VM_ID, USAGE_QUEUE).ok().flatten();
        }
        let queued = match self.usage_queue {
            Some(id) => hostcalls::enqueue_shared_queue(id, Some(&self.pending_usage)).is_ok(),
            None => false,
        };
        if !queued {
            self.usage_queue = None;
            if !also_log {
                self.log_pending();
            }
        }
        self.pending_usage.clear();
        self.pending_count = 0;
    }

    fn log_pending(&self) {
        for line in self.pending_usage.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let _ =
                hostcalls::log(level(LogLevel::Info), &format!("{USAGE_LOG_PREFIX}{}", String::from_utf8_lossy(line)));
        }
    }
}

/// The production [`Host`]: proxy-wasm host calls into Envoy.
pub struct EnvoyHost {
    worker: Rc<RefCell<WorkerState>>,
}

impl EnvoyHost {
    pub fn new(worker: Rc<RefCell<WorkerState>>) -> Self {
        Self { worker }
    }
}

fn ok_or_log<T>(result: Result<T, Status>, what: &str) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(status) => {
            let _ = hostcalls::log(level(LogLevel::Warn), &format!("sluice: host call {what} failed: {status:?}"));
            None
        }
    }
}

/// The first value of each of `names` from one header map, in one host call for the whole map
/// (proxy-wasm's `get_header_map_pairs`) instead of one per name: a boundary crossing costs more
/// than copying a request's headers.
fn header_map<const N: usize>(map: MapType, names: [&str; N]) -> [Option<Vec<u8>>; N] {
    let mut found: [Option<Vec<u8>>; N] = [const { None }; N];
    for (key, value) in hostcalls::get_map_bytes(map).unwrap_or_default() {
        if let Some(slot) = names.iter().position(|n| *n == key).and_then(|i| found.get_mut(i))
            && slot.is_none()
        {
            *slot = Some(value);
        }
    }
    found
}

impl Host for EnvoyHost {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        // The `_bytes` variant: header values may be any bytes, and the String variant panics.
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
    }

    fn request_headers<const N: usize>(&self, names: [&str; N]) -> [Option<Vec<u8>>; N] {
        header_map(MapType::HttpRequestHeaders, names)
    }

    fn all_request_headers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        headers.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect()
    }

    fn set_request_header(&self, name: &str, value: Option<&[u8]>) {
        ok_or_log(hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value), "set_request_header");
    }

    fn add_request_header(&self, name: &str, value: &[u8]) {
        ok_or_log(hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value), "add_request_header");
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten()
    }

    fn replace_request_body(&self, old_size: usize, body: &[u8]) {
        ok_or_log(hostcalls::set_buffer(BufferType::HttpRequestBody, 0, old_size, body), "replace_request_body");
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()
    }

    fn response_headers<const N: usize>(&self, names: [&str; N]) -> [Option<Vec<u8>>; N] {
        header_map(MapType::HttpResponseHeaders, names)
    }

    fn set_response_header(&self, name: &str, value: Option<&[u8]>) {
        ok_or_log(hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, value), "set_response_header");
    }

    fn add_response_header(&self, name: &str, value: &[u8]) {
        ok_or_log(hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, name, value), "add_response_header");
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size).ok().flatten()
    }

    fn replace_response_body(&self, old_size: usize, body: &[u8]) {
        ok_or_log(hostcalls::set_buffer(BufferType::HttpResponseBody, 0, old_size, body), "replace_response_body");
    }

    fn send_local_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        ok_or_log(hostcalls::send_http_response(status, headers.to_vec(), Some(body)), "send_http_response");
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> CasResult {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => CasResult::Written,
            Err(Status::CasMismatch) => CasResult::Conflict,
            Err(_) => CasResult::Failed,
        }
    }

    fn enqueue_usage(&self, record: &[u8]) -> bool {
        // Batched per worker: flushed every USAGE_BATCH records and on every tick.
        let mut worker = self.worker.borrow_mut();
        worker.pending_usage.extend_from_slice(record);
        worker.pending_usage.push(b'\n');
        worker.pending_count += 1;
        if worker.pending_count >= USAGE_BATCH {
            worker.flush_usage();
        }
        true
    }

    fn announce_limit_scope(&self, name: &str) {
        let mut worker = self.worker.borrow_mut();
        if worker.limit_scopes_queue.is_none() {
            worker.limit_scopes_queue = hostcalls::resolve_shared_queue(VM_ID, LIMIT_SCOPES_QUEUE).ok().flatten();
        }
        let queued = worker
            .limit_scopes_queue
            .is_some_and(|id| hostcalls::enqueue_shared_queue(id, Some(name.as_bytes())).is_ok());
        if !queued {
            // The singleton is not up yet (or restarted): resolve again next time. Until it
            // hears of the scope, this Envoy limits it with its own counts only.
            worker.limit_scopes_queue = None;
        }
    }

    fn response_code_details(&self) -> Option<Vec<u8>> {
        hostcalls::get_property(vec!["response", "code_details"]).ok().flatten()
    }

    fn source_address(&self) -> Option<Vec<u8>> {
        hostcalls::get_property(vec!["source", "address"]).ok().flatten()
    }

    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn log(&self, log_level: LogLevel, message: &str) {
        let _ = hostcalls::log(level(log_level), message);
    }

    fn dispatch_grpc(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        let timeout = std::time::Duration::from_millis(timeout_ms);
        ok_or_log(hostcalls::dispatch_grpc_call(cluster, service, method, Vec::new(), Some(message), timeout), "grpc")
    }

    fn grpc_response(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size).ok().flatten()
    }

    fn dispatch_http(&self, cluster: &str, headers: &[(&str, &[u8])], body: &[u8], timeout_ms: u64) -> Option<u32> {
        // proxy-wasm takes header values as text; the probes' are ASCII.
        let headers: Vec<(&str, &str)> =
            headers.iter().filter_map(|(k, v)| Some((*k, std::str::from_utf8(v).ok()?))).collect();
        let timeout = std::time::Duration::from_millis(timeout_ms);
        ok_or_log(hostcalls::dispatch_http_call(cluster, headers, Some(body), Vec::new(), timeout), "http call")
    }

    fn http_response(&self, size: usize) -> (Option<u16>, Vec<u8>) {
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse().ok());
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size).ok().flatten().unwrap_or_default();
        (status, body)
    }

    fn resume_request(&self) {
        ok_or_log(hostcalls::resume_http_request(), "resume_http_request");
    }

    fn count(&self, metric: &str, delta: u64) {
        if delta == 0 {
            return; // Envoy refuses a zero increment; skip the host calls
        }
        let mut worker = self.worker.borrow_mut();
        let id = match worker.metric_ids.get(metric) {
            Some(id) => *id,
            None => match hostcalls::define_metric(MetricType::Counter, metric) {
                Ok(id) => {
                    worker.metric_ids.insert(metric.to_owned(), id);
                    id
                }
                Err(_) => return,
            },
        };
        let _ = hostcalls::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
    }
}
