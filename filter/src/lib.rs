//! Sluice's proxy-wasm filter: thin glue from Envoy's callbacks to [`sluice_core`].
//!
//! - [`host`]: every host call behind one trait (mocked natively in tests).
//! - [`flow`]: one request's life: authenticate, admit, route, meter, settle, record.
//! - [`counters`]: limit and budget counters in shared data (CAS loops).
//! - [`health`]: the liveness and readiness probes, and the workers' heartbeats behind them.
//! - [`secrets`]: provider credentials and the master key, from Envoy's environment.
//! - [`key_cache`]: keys looked up in the control plane, per worker (xDS mode).
//! - [`root`]: per-worker root contexts (filter) and the singleton service's root.
//! - [`service`]: the singleton: drains usage records (to the log, or in batches to the
//!   control plane) and relays the control plane's key invalidations to the workers.

pub mod counters;
pub mod flow;
pub mod health;
pub mod host;
pub mod key_cache;
#[cfg(test)]
mod mock_host;
pub mod root;
pub mod secrets;
pub mod service;
pub mod usage_record;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::SluiceRoot::new(context_id))
    });
}}
