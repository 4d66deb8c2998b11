//! Probe: a proxy-wasm filter in a cluster's upstream HTTP filter chain. Logs, per attempt, what
//! it can learn about the host the router picked, reads+removes `x-sluice-ctx`, and tags the
//! response with `x-probe-deployment`.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use std::cell::Cell;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|id, _| -> Box<dyn HttpContext> { Box::new(Probe { id, deployment: None, rid: String::new() }) });
}}

thread_local! { static SEQ: Cell<u64> = const { Cell::new(0) }; }

struct Probe {
    id: u32,
    deployment: Option<String>,
    rid: String,
}

fn show(b: &Option<Vec<u8>>) -> String {
    match b {
        None => "None".into(),
        Some(v) => {
            let hex: String = v.iter().map(|x| format!("{x:02x}")).collect();
            let txt: String = v.iter().map(|&c| if (0x20..0x7f).contains(&c) { c as char } else { '.' }).collect();
            format!("len={} hex={} txt={:?}", v.len(), hex, txt)
        }
    }
}

impl Probe {
    fn log(&self, msg: String) {
        let _ = hostcalls::log(LogLevel::Info, &format!("PROBE rid={} ctx={} {}", self.rid, self.id, msg));
    }
    fn props(&mut self, at: &str) {
        let paths: &[&[&str]] = &[
            &["xds", "upstream_host_metadata"],
            &["xds", "upstream_host_metadata", "filter_metadata"],
            &["xds", "upstream_host_metadata", "filter_metadata", "sluice"],
            &["xds", "upstream_host_metadata", "filter_metadata", "sluice", "deployment"],
            &["upstream", "address"],
            &["upstream", "port"],
            &["xds", "cluster_name"],
            &["xds", "upstream_host_locality"],
            &["metadata", "filter_metadata", "sluice", "ctx"],
            &["filter_state", "sluice.ctx"],
            &["request", "path"],
            &["request", "headers", "x-sluice-ctx"],
            &["sluice_seen"],
        ];
        for p in paths {
            let v = self.get_property(p.to_vec());
            self.log(format!("{at} prop {} => {}", p.join("."), show(&v)));
        }
        if let Some(v) = self.get_property(vec!["xds", "upstream_host_metadata", "filter_metadata", "sluice", "deployment"]) {
            self.deployment = Some(String::from_utf8_lossy(&v).into_owned());
        } else if let Some(v) = self.get_property(vec!["upstream", "address"]) {
            self.deployment = Some(format!("addr:{}", String::from_utf8_lossy(&v)));
        }
    }
}

impl Context for Probe {}
impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _n: usize, eos: bool) -> Action {
        let seq = SEQ.with(|s| { s.set(s.get() + 1); s.get() });
        let ctxh = self.get_http_request_header("x-sluice-ctx");
        let rid = self.get_http_request_header("x-request-id").unwrap_or_default();
        self.rid = rid.chars().take(8).collect();
        self.set_http_request_header("x-sluice-ctx", None);
        let envoy_hdrs: Vec<String> = self
            .get_http_request_headers()
            .into_iter()
            .filter(|(k, _)| k.starts_with("x-envoy") || k.starts_with(":"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        self.log(format!("on_request_headers seq={seq} eos={eos} x-sluice-ctx={ctxh:?} hdrs={envoy_hdrs:?}"));
        self.props("req_headers");
        // Per-request state across attempts? Append this attempt's deployment to a wasm property.
        let prev = self.get_property(vec!["sluice_seen"]).unwrap_or_default();
        let mut next = prev.clone();
        next.extend_from_slice(format!("d{};", self.deployment.clone().unwrap_or_default()).as_bytes());
        self.set_property(vec!["sluice_seen"], Some(&next));
        self.log(format!("sluice_seen before={:?}", String::from_utf8_lossy(&prev)));
        if let Some(d) = &self.deployment {
            let d = d.clone();
            self.set_http_request_header("x-probe-deployment-sent", Some(&d));
            self.set_http_request_header("content-length", None); // body gets rewritten below
            // Does a rewrite made by one attempt leak into the next attempt? Append a marker.
            let path = self.get_http_request_header(":path").unwrap_or_default();
            self.log(format!("path seen={path}"));
            self.set_http_request_header(":path", Some(&format!("{path};d{d}")));
        }
        Action::Continue
    }
    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        self.log(format!("on_request_body size={size} eos={eos}"));
        self.props("req_body");
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        self.log(format!("body seen={:?}", String::from_utf8_lossy(&body)));
        let mut new = body.clone();
        new.extend_from_slice(format!("+d{}", self.deployment.clone().unwrap_or_default()).as_bytes());
        self.set_http_request_body(0, size, &new);
        Action::Continue
    }
    fn on_http_response_headers(&mut self, _n: usize, eos: bool) -> Action {
        let st = self.get_http_response_header(":status");
        self.log(format!("on_response_headers status={st:?} eos={eos} deployment={:?}", self.deployment));
        let d = self.deployment.clone().unwrap_or_else(|| "unknown".into());
        self.set_http_response_header("x-probe-deployment", Some(&d));
        Action::Continue
    }
    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        self.log(format!("on_response_body size={size} eos={eos}"));
        Action::Continue
    }
    fn on_log(&mut self) {
        self.log("on_log".into());
    }
}
