//! Sluice's Envoy filter: thin glue from Envoy's callbacks to [`sluice_core`], built two ways
//! from the same code: a proxy-wasm module (wasm32) and an Envoy dynamic module (a native `.so`).
//!
//! - [`host`]: every host call behind one trait (mocked natively in tests), no binding's types.
//! - [`flow`]: one request's life: authenticate, admit, route, meter, settle, record.
//! - [`counters`]: limit and budget counters in shared data (CAS loops).
//! - [`metrics`]: what the request path counts, reported to Envoy's counters on a tick.
//! - [`health`]: the liveness and readiness probes, and the workers' heartbeats behind them.
//! - [`deployment_health`]: deployments' health probes, for `/health` and background checks.
//! - [`translation`]: a client and a deployment of different formats (both directions).
//! - [`secrets`]: provider credentials and the master key, from Envoy's environment.
//! - [`key_cache`]: keys looked up in the control plane, per worker (xDS mode).
//! - [`service`]: the singleton service (usage shipping, invalidations, fleet limit sync) and the
//!   invalidation log it relays to the workers, for either binding to run.
//! - `wasm` (wasm32 only): the proxy-wasm binding: root contexts, the singleton service's VM.
//! - `native` (other targets): the dynamic-module binding: the ABI, its [`host::Host`], the
//!   exported hooks, the singleton on Envoy's main thread (ARCHITECTURE.md, "Native build").

pub mod cooldowns;
pub mod counters;
pub mod deployment_health;
pub mod deployment_records;
pub mod failover;
pub mod flow;
pub mod health;
pub mod host;
pub mod key_cache;
pub mod metrics;
#[cfg(test)]
mod mock_host;
pub mod secrets;
pub mod service;
pub mod translation;
pub mod usage_record;

#[cfg(target_arch = "wasm32")]
pub mod wasm;

#[cfg(not(target_arch = "wasm32"))]
pub mod native;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
