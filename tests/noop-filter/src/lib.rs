//! The cheapest useful wasm filter, for `cargo xtask bench`: it moves the provider key from a
//! request header into `Authorization` (what bare Envoy's route does natively) and nothing else.
//! Envoy with this filter shows what *any* proxy-wasm filter costs on Envoy's V8 (VM calls for
//! every stream callback, a context per request), so the bench can tell that floor from what
//! Sluice's own work adds.
//!
//! It doubles as the trap module of `tests/integration/test_failure_policy.py`: Sluice's own
//! filter has no trap path (no panics, no unwraps), so the failure-policy test swaps this module
//! into Sluice's generated bootstrap. Loaded there (root id `sluice_filter`), a request carrying
//! `x-sluice-test-trap` executes a wasm `unreachable` instruction: a real runtime trap, which
//! fails the worker's VM. The trap check is armed only under that root id, once at configure
//! time; the bench's floor (no root id) makes exactly the host calls it always made.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

/// The root id Sluice's generated bootstrap gives its filter (`envoy_bootstrap::FILTER_ROOT_ID`).
const SLUICE_FILTER_ROOT_ID: &[u8] = b"sluice_filter";
/// The request header that makes an armed module trap.
const TRAP_HEADER: &str = "x-sluice-test-trap";

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot { trap_armed: false }) });
}}

struct NoopRoot {
    trap_armed: bool,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.trap_armed = self.get_property(vec!["plugin_root_id"]).as_deref() == Some(SLUICE_FILTER_ROOT_ID);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop { trap_armed: self.trap_armed }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop {
    trap_armed: bool,
}

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.trap_armed && self.get_http_request_header_bytes(TRAP_HEADER).is_some() {
            trap();
        }
        let key = self.get_http_request_header_bytes("x-bench-provider-key");
        self.set_http_request_header_bytes("authorization", key.as_deref());
        Action::Continue
    }
}

/// Executes wasm's `unreachable` instruction: the VM traps, as it would on any runtime fault
/// (a panic under `panic = "abort"` compiles to the same instruction, but the workspace lints
/// forbid `panic!`, and this states the intent). Native builds (clippy, `cargo test`) never
/// load this module, so there it does nothing.
fn trap() {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
}
