//! Every call from the filter into Envoy goes through [`Host`], so request flows run natively
//! against [`crate::mock_host::MockHost`] in unit tests and against Envoy in production, through
//! either binding: proxy-wasm (`crate::wasm`, the wasm32 build) or Envoy's dynamic-module ABI
//! (`crate::native`, the `.so`). Nothing here names a type of either, so the flow compiles in
//! both builds.
//!
//! The trait is shaped by cost: each host call copies data across the VM boundary, so it
//! offers exactly the calls the hot path needs (single headers, whole buffers) and nothing
//! that would tempt a caller into per-header loops.

/// What a filter callback tells Envoy: go on, or hold the stream (the headers until the body is
/// here; the body until it is whole; or for good, after a local reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// Log levels, as both bindings have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

/// Outcome of a compare-and-swap write to shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasResult {
    Written,
    /// Another worker wrote first: re-read and retry.
    Conflict,
    Failed,
}

/// Compare-and-swap attempts before a shared-data update gives up (each retry means another
/// worker made progress, so only a broken host reaches it).
const MAX_CAS_ATTEMPTS: usize = 64;

pub trait Host {
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Several request headers at once: one host call where the binding has one (proxy-wasm's
    /// header-map read, the dynamic module's header array), so the flow reads every header it
    /// needs when the request starts.
    fn request_headers<const N: usize>(&self, names: [&str; N]) -> [Option<Vec<u8>>; N] {
        names.map(|name| self.request_header(name))
    }
    /// Every request header, in order (one host call): only for the rare request the filter
    /// sends on itself (`flow/fan_out.rs`).
    fn all_request_headers(&self) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// Sets (replaces) a request header, or removes it with `None`.
    fn set_request_header(&self, name: &str, value: Option<&[u8]>);
    /// Adds a header the request does not have (no search for an old value, as `set` makes).
    fn add_request_header(&self, name: &str, value: &[u8]) {
        self.set_request_header(name, Some(value));
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the whole buffered request body of `old_size` bytes.
    fn replace_request_body(&self, old_size: usize, body: &[u8]);
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Several response headers at once, as [`Host::request_headers`].
    fn response_headers<const N: usize>(&self, names: [&str; N]) -> [Option<Vec<u8>>; N] {
        names.map(|name| self.response_header(name))
    }
    fn set_response_header(&self, name: &str, value: Option<&[u8]>);
    /// Adds a header the response does not have, as [`Host::add_request_header`].
    fn add_response_header(&self, name: &str, value: &[u8]) {
        self.set_response_header(name, Some(value));
    }
    fn response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Appends the current response chunk (`size` bytes) to `out` (a binding that can read
    /// straight into it copies once).
    fn append_response_body(&self, size: usize, out: &mut Vec<u8>) {
        if let Some(chunk) = self.response_body(size) {
            out.extend_from_slice(&chunk);
        }
    }
    /// Replaces the current response body chunk of `old_size` bytes.
    fn replace_response_body(&self, old_size: usize, body: &[u8]);
    fn send_local_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> CasResult;
    /// Changes one shared-data entry in place: `change` gets its value (empty when absent) and
    /// says whether to write it back. No other worker's write in between is lost: by default
    /// proxy-wasm's compare-and-swap loop (`change` may run again after a conflict); a binding
    /// whose shared data is process memory does it under one lock. False if it could not write.
    fn shared_update(&self, key: &str, change: &mut dyn FnMut(&mut Vec<u8>) -> bool) -> bool {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (value, cas) = self.shared_get(key);
            let mut value = value.unwrap_or_default();
            if !change(&mut value) {
                return true;
            }
            match self.shared_set(key, &value, cas) {
                CasResult::Written => return true,
                CasResult::Conflict => {}
                CasResult::Failed => return false,
            }
        }
        false
    }
    /// Hands a usage record (one JSON line) to the singleton service; false if it could not
    /// be queued (the caller then writes it to the log itself).
    fn enqueue_usage(&self, record: &[u8]) -> bool;
    /// Tells the singleton that this worker uses a rate-limited scope this minute, so it syncs
    /// the scope's counts with the fleet (xDS mode). Called once per scope per minute.
    fn announce_limit_scope(&self, name: &str);
    fn now_ms(&self) -> u64;
    /// Envoy's response code details (why a stream ended, e.g. an upstream reset).
    fn response_code_details(&self) -> Option<Vec<u8>>;
    /// The client's address (`source.address`, e.g. `1.2.3.4:5678`): read only when a key
    /// lookup is about to start, never for a cached key.
    fn source_address(&self) -> Option<Vec<u8>>;
    fn log(&self, level: LogLevel, message: &str);
    fn count(&self, metric: &str, delta: u64);
    /// A unary gRPC call to a cluster; the answer comes back to this request's context.
    /// Returns the call's token, or None if Envoy refused to start it.
    fn dispatch_grpc(&self, cluster: &str, service: &str, method: &str, message: &[u8], timeout_ms: u64)
    -> Option<u32>;
    /// The body of the gRPC answer being delivered (`size` bytes).
    fn grpc_response(&self, size: usize) -> Option<Vec<u8>>;
    /// An HTTP call to a cluster (a deployment's health probe); the answer comes back to this
    /// request's context. Returns the call's token, or None if Envoy refused to start it.
    fn dispatch_http(&self, cluster: &str, headers: &[(&str, &[u8])], body: &[u8], timeout_ms: u64) -> Option<u32>;
    /// The HTTP answer being delivered: its status (None: no answer came) and its body
    /// (`size` bytes).
    fn http_response(&self, size: usize) -> (Option<u16>, Vec<u8>);
    /// Lets a request that the filter paused continue (headers and buffered body).
    fn resume_request(&self);
}
