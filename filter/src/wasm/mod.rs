//! The proxy-wasm build (wasm32): the [`crate::host::Host`] binding over proxy-wasm host calls,
//! the root contexts (per-worker filter, singleton service) and the module's entry point.

pub mod host;
pub mod root;
pub mod service;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::SluiceRoot::new(context_id))
    });
}}
