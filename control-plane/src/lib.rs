//! Sluice's control plane: the admin gRPC API over SQLite or Postgres (`admin`, `store`), the
//! xDS server and key lookups that Envoys use (`xds`, `key_lookup`), and standalone mode's
//! tooling behind the `sluice` CLI (config.yaml, Envoy's bootstrap, keys in the file).

pub mod admin;
pub mod alerting;
pub mod budget;
pub mod callbacks;
pub mod config_file;
pub mod customers;
pub mod envoy_bootstrap;
pub mod fleet_limits;
pub mod google_tokens;
pub mod http_client;
pub mod invalidation;
pub mod key_file;
pub mod key_lookup;
pub mod metrics;
pub mod pki;
pub mod provider_policy;
pub mod rest;
pub mod server;
pub mod shared_redis;
pub mod store;
pub mod usage_ingest;
pub mod usage_metrics;
pub mod xds;

/// A throwaway CA for the TLS tests (shared with the integration tests).
#[cfg(test)]
#[path = "../tests/common/certs.rs"]
pub(crate) mod test_certs;
