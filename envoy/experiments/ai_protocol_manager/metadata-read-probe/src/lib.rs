//! Probe: which of the AI Protocol Manager's outputs a proxy-wasm filter can read (on_log).
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Probe) });
}}

struct Probe;
impl Context for Probe {}
impl Probe {
    fn show(&self, when: &str, path: Vec<&str>) {
        let v = self.get_property(path.clone());
        let txt = v.as_ref().map(|b| format!("{} bytes: {:?}", b.len(), String::from_utf8_lossy(b)));
        log::info!("PROBE {when} {:?} => {:?}", path, txt);
    }
}
impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.show("req_headers", vec!["filter_state", "envoy.ai.model.request"]);
        self.show("req_headers", vec!["metadata", "filter_metadata", "envoy.ai.request_info"]);
        Action::Continue
    }
    fn on_log(&mut self) {
        for p in [
            vec!["filter_state", "envoy.ai.model.request"],
            vec!["filter_state", "envoy.ai.llm_protocol.request"],
            vec!["metadata", "filter_metadata", "envoy.ai.token_usage"],
            vec!["metadata", "typed_filter_metadata", "envoy.ai.token_usage"],
            vec!["metadata", "filter_metadata", "envoy.ai.request_info"],
            vec!["metadata", "typed_filter_metadata", "envoy.ai.request_info"],
            vec!["metadata"],
        ] {
            self.show("log", p);
        }
    }
}
