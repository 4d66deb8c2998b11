//! A native stand-in for Envoy implementing [`Host`]: headers, bodies, shared data with real
//! CAS semantics (and injectable conflicts), a usage queue, metrics, logs and a settable clock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::host::{CasResult, Host, LogLevel};

/// State shared by every request of one Envoy (all workers): shared data, queue, metrics.
#[derive(Default)]
pub struct MockEnvoy {
    data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    /// Number of upcoming CAS writes that fail as if another worker wrote first.
    pub inject_conflicts: Cell<u32>,
    pub queue: RefCell<Vec<Vec<u8>>>,
    pub queue_available: Cell<bool>,
    /// Every call into the host, by method name, in order (what a request costs in VM
    /// boundary crossings; usage records are batched per worker, so they are not counted).
    pub host_calls: RefCell<Vec<&'static str>>,
    /// Rate-limited scopes the workers announced to the singleton, in order.
    pub announced_scopes: RefCell<Vec<String>>,
    pub metrics: RefCell<HashMap<String, u64>>,
    pub logs: RefCell<Vec<String>>,
    pub now_ms: Cell<u64>,
    /// gRPC calls started, in order.
    pub grpc_calls: RefCell<Vec<GrpcCall>>,
    /// When true, Envoy refuses to start gRPC calls (no such cluster).
    pub grpc_refused: Cell<bool>,
    /// HTTP calls started (health probes), in order; their tokens follow the gRPC calls'.
    pub http_calls: RefCell<Vec<HttpCall>>,
}

/// An HTTP call the filter started: where, with which headers and body.
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

/// A gRPC call a request started.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout_ms: u64,
}

impl MockEnvoy {
    /// Entries in shared data (Envoy never removes one).
    pub fn shared_len(&self) -> usize {
        self.data.borrow().len()
    }

    pub fn new(now_ms: u64) -> Rc<Self> {
        let env = Self::default();
        env.now_ms.set(now_ms);
        env.queue_available.set(true);
        Rc::new(env)
    }

    pub fn metric(&self, name: &str) -> u64 {
        self.metrics.borrow().get(name).copied().unwrap_or(0)
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        self.queue.borrow().iter().map(|r| serde_json::from_slice(r).unwrap_or_default()).collect()
    }
}

/// A local reply the filter sent.
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One request's view of Envoy.
#[derive(Default)]
pub struct MockStream {
    pub request_headers: RefCell<Vec<(String, Vec<u8>)>>,
    pub request_body: RefCell<Vec<u8>>,
    pub response_headers: RefCell<Vec<(String, Vec<u8>)>>,
    /// The response chunk currently passing through the filter.
    pub response_chunk: RefCell<Vec<u8>>,
    pub local_reply: RefCell<Option<LocalReply>>,
    /// The gRPC answer being delivered to this request.
    pub grpc_response: RefCell<Vec<u8>>,
    /// The HTTP answer being delivered to the stream (status, body).
    pub http_response: RefCell<(Option<u16>, Vec<u8>)>,
    /// Times the filter let a paused request continue.
    pub resumed: Cell<u32>,
    /// What Envoy would report as the response code details at the end.
    pub code_details: RefCell<Option<String>>,
    /// The client's address (`source.address`).
    pub source_address: RefCell<Option<String>>,
}

#[derive(Clone)]
pub struct MockHost {
    pub envoy: Rc<MockEnvoy>,
    pub stream: Rc<MockStream>,
}

fn get(map: &RefCell<Vec<(String, Vec<u8>)>>, name: &str) -> Option<Vec<u8>> {
    map.borrow().iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
}

fn set(map: &RefCell<Vec<(String, Vec<u8>)>>, name: &str, value: Option<&[u8]>) {
    let mut map = map.borrow_mut();
    map.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    if let Some(v) = value {
        map.push((name.to_owned(), v.to_vec()));
    }
}

impl MockHost {
    pub fn new(envoy: Rc<MockEnvoy>) -> Self {
        Self { envoy, stream: Rc::new(MockStream::default()) }
    }

    pub fn request_header_str(&self, name: &str) -> Option<String> {
        get(&self.stream.request_headers, name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    pub fn response_header_str(&self, name: &str) -> Option<String> {
        get(&self.stream.response_headers, name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}

impl Host for MockHost {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.envoy.host_calls.borrow_mut().push("request_header");
        get(&self.stream.request_headers, name)
    }

    fn request_headers<const N: usize>(&self, names: [&str; N]) -> [Option<Vec<u8>>; N] {
        self.envoy.host_calls.borrow_mut().push("request_headers");
        names.map(|name| get(&self.stream.request_headers, name))
    }

    fn all_request_headers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.envoy.host_calls.borrow_mut().push("all_request_headers");
        self.stream.request_headers.borrow().iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect()
    }

    fn set_request_header(&self, name: &str, value: Option<&[u8]>) {
        self.envoy.host_calls.borrow_mut().push("set_request_header");
        set(&self.stream.request_headers, name, value);
    }

    fn add_request_header(&self, name: &str, value: &[u8]) {
        self.envoy.host_calls.borrow_mut().push("add_request_header");
        self.stream.request_headers.borrow_mut().push((name.to_owned(), value.to_vec()));
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        self.envoy.host_calls.borrow_mut().push("request_body");
        let body = self.stream.request_body.borrow();
        body.get(..size.min(body.len())).map(<[u8]>::to_vec)
    }

    fn replace_request_body(&self, _old_size: usize, body: &[u8]) {
        self.envoy.host_calls.borrow_mut().push("replace_request_body");
        *self.stream.request_body.borrow_mut() = body.to_vec();
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.envoy.host_calls.borrow_mut().push("response_header");
        get(&self.stream.response_headers, name)
    }

    fn response_headers<const N: usize>(&self, names: [&str; N]) -> [Option<Vec<u8>>; N] {
        self.envoy.host_calls.borrow_mut().push("response_headers");
        names.map(|name| get(&self.stream.response_headers, name))
    }

    fn set_response_header(&self, name: &str, value: Option<&[u8]>) {
        self.envoy.host_calls.borrow_mut().push("set_response_header");
        set(&self.stream.response_headers, name, value);
    }

    fn add_response_header(&self, name: &str, value: &[u8]) {
        self.envoy.host_calls.borrow_mut().push("add_response_header");
        self.stream.response_headers.borrow_mut().push((name.to_owned(), value.to_vec()));
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.envoy.host_calls.borrow_mut().push("response_body");
        let chunk = self.stream.response_chunk.borrow();
        chunk.get(..size.min(chunk.len())).map(<[u8]>::to_vec)
    }

    fn replace_response_body(&self, _old_size: usize, body: &[u8]) {
        self.envoy.host_calls.borrow_mut().push("replace_response_body");
        *self.stream.response_chunk.borrow_mut() = body.to_vec();
    }

    fn send_local_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.envoy.host_calls.borrow_mut().push("send_local_response");
        *self.stream.local_reply.borrow_mut() = Some(LocalReply {
            status,
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            body: body.to_vec(),
        });
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.envoy.host_calls.borrow_mut().push("shared_get");
        match self.envoy.data.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> CasResult {
        self.envoy.host_calls.borrow_mut().push("shared_set");
        let conflicts = self.envoy.inject_conflicts.get();
        if conflicts > 0 {
            self.envoy.inject_conflicts.set(conflicts - 1);
            return CasResult::Conflict;
        }
        let mut data = self.envoy.data.borrow_mut();
        // Envoy's semantics: a non-zero CAS must match the entry's current one.
        if let (Some(expected), Some((_, current))) = (cas, data.get(key))
            && expected != *current
        {
            return CasResult::Conflict;
        }
        let next = self.envoy.next_cas.get() + 1;
        self.envoy.next_cas.set(next);
        data.insert(key.to_owned(), (value.to_vec(), next));
        CasResult::Written
    }

    fn announce_limit_scope(&self, name: &str) {
        self.envoy.host_calls.borrow_mut().push("announce_limit_scope");
        self.envoy.announced_scopes.borrow_mut().push(name.to_owned());
    }

    fn enqueue_usage(&self, record: &[u8]) -> bool {
        if !self.envoy.queue_available.get() {
            return false;
        }
        self.envoy.queue.borrow_mut().push(record.to_vec());
        true
    }

    fn response_code_details(&self) -> Option<Vec<u8>> {
        self.envoy.host_calls.borrow_mut().push("response_code_details");
        self.stream.code_details.borrow().clone().map(String::into_bytes)
    }

    fn source_address(&self) -> Option<Vec<u8>> {
        self.envoy.host_calls.borrow_mut().push("source_address");
        self.stream.source_address.borrow().clone().map(String::into_bytes)
    }

    fn now_ms(&self) -> u64 {
        self.envoy.host_calls.borrow_mut().push("now_ms");
        self.envoy.now_ms.get()
    }

    fn log(&self, _level: LogLevel, message: &str) {
        self.envoy.host_calls.borrow_mut().push("log");
        self.envoy.logs.borrow_mut().push(message.to_owned());
    }

    fn count(&self, metric: &str, delta: u64) {
        if delta > 0 {
            self.envoy.host_calls.borrow_mut().push("count"); // Envoy's binding skips a zero
        }
        *self.envoy.metrics.borrow_mut().entry(metric.to_owned()).or_default() += delta;
    }

    fn dispatch_grpc(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        self.envoy.host_calls.borrow_mut().push("dispatch_grpc");
        if self.envoy.grpc_refused.get() {
            return None;
        }
        let mut calls = self.envoy.grpc_calls.borrow_mut();
        let token = u32::try_from(calls.len()).unwrap_or(u32::MAX) + 1;
        calls.push(GrpcCall {
            token,
            cluster: cluster.to_owned(),
            service: service.to_owned(),
            method: method.to_owned(),
            message: message.to_vec(),
            timeout_ms,
        });
        Some(token)
    }

    fn grpc_response(&self, size: usize) -> Option<Vec<u8>> {
        self.envoy.host_calls.borrow_mut().push("grpc_response");
        let body = self.stream.grpc_response.borrow();
        body.get(..size.min(body.len())).map(<[u8]>::to_vec)
    }

    fn dispatch_http(&self, cluster: &str, headers: &[(&str, &[u8])], body: &[u8], timeout_ms: u64) -> Option<u32> {
        self.envoy.host_calls.borrow_mut().push("dispatch_http");
        let mut calls = self.envoy.http_calls.borrow_mut();
        let token = u32::try_from(calls.len()).unwrap_or(u32::MAX) + 1000;
        calls.push(HttpCall {
            token,
            cluster: cluster.to_owned(),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), String::from_utf8_lossy(v).into_owned())).collect(),
            body: body.to_vec(),
            timeout_ms,
        });
        Some(token)
    }

    fn http_response(&self, size: usize) -> (Option<u16>, Vec<u8>) {
        self.envoy.host_calls.borrow_mut().push("http_response");
        let (status, body) = &*self.stream.http_response.borrow();
        (*status, body.get(..size.min(body.len())).map(<[u8]>::to_vec).unwrap_or_default())
    }

    fn resume_request(&self) {
        self.envoy.host_calls.borrow_mut().push("resume_request");
        self.stream.resumed.set(self.stream.resumed.get() + 1);
    }
}
