//! Sluice's control plane. Today: standalone mode's tooling behind the `sluice` CLI — loading
//! LiteLLM's config.yaml, generating Envoy's bootstrap, and key management in the file. The
//! gRPC admin API, storage and xDS server grow here next, on the same core types.

pub mod admin;
pub mod config_file;
pub mod envoy_bootstrap;
pub mod key_file;
pub mod server;
pub mod store;
