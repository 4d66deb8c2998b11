//! The cheapest useful wasm filter, for `cargo xtask bench`: it moves the provider key from a
//! request header into `Authorization` (what bare Envoy's route does natively) and nothing else.
//! Envoy with this filter shows what *any* proxy-wasm filter costs on Envoy's V8 (VM calls for
//! every stream callback, a context per request), so the bench can tell that floor from what
//! Sluice's own work adds.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let key = self.get_http_request_header_bytes("x-bench-provider-key");
        self.set_http_request_header_bytes("authorization", key.as_deref());
        Action::Continue
    }
}
