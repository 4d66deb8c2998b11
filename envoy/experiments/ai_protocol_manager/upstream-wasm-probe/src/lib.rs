//! Probe: a proxy-wasm filter in a cluster's upstream chain rewrites the request body and the
//! path, and the response body, once per attempt (the translation Sluice would do there).
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Probe) });
}}

struct Probe;
impl Context for Probe {}
impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.set_http_request_header("content-length", None);
        self.set_http_request_header(":path", Some("/v1/messages?rewritten-by=upstream-wasm"));
        Action::Continue
    }
    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let new = format!("{{\"translated_by\":\"upstream-wasm\",\"original_bytes\":{}}}", body.len());
        self.set_http_request_body(0, size, new.as_bytes());
        Action::Continue
    }
    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.set_http_response_header("content-length", None);
        Action::Continue
    }
    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        let new = format!("{{\"response_translated\":true,\"upstream_bytes\":{}}}", body.len());
        self.set_http_response_body(0, size, new.as_bytes());
        Action::Continue
    }
}
