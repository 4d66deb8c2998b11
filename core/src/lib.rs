//! Sluice's pure core: everything the filter and the control plane must agree on.
//!
//! No proxy-wasm, no tokio, no clock and no RNG: time and randomness are arguments,
//! so every function here is deterministic and unit-tested natively and in wasm32.

pub mod attempts;
pub mod cache;
pub mod config;
pub mod conversion;
pub mod cooldown;
pub mod cost;
pub mod customers;
pub mod deployment_health;
pub mod endpoint;
pub mod error;
pub mod fallbacks;
pub mod fleet;
pub mod ip_rules;
pub mod json_scan;
pub mod keys;
pub mod limits;
pub mod litellm;
pub mod load;
pub mod lookup_budget;
pub mod outbox;
pub mod price_catalog;
pub mod providers;
pub mod refusals;
pub mod request;
pub mod retries;
pub mod routing;
pub mod sse;
pub mod time;
pub mod usage;
