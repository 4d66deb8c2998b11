//! The native build: Sluice's filter as an Envoy dynamic module (`libsluice_filter.so`, loaded
//! by `envoy.filters.http.dynamic_modules`), from the same flow as the wasm build.
//!
//! - `abi`: the hand-written binding of Envoy 1.40's dynamic-module ABI (v0.2.0): types,
//!   callbacks resolved at load, and safe handles over them. Most of the `unsafe` is here.
//! - `host`: [`host::DynamicModuleHost`], the [`crate::host::Host`] of one stream.
//! - `grpc`: unary gRPC calls as Envoy HTTP callouts (key lookups, the service's calls).
//! - `service`: the singleton service (xDS mode) on Envoy's main thread, driven by the configs.
//! - `shared_data`: process-wide shared data with proxy-wasm's CAS semantics.
//! - `module`: the exported `envoy_dynamic_module_on_*` hooks, configs and per-worker state.

#[allow(unsafe_code)]
pub mod abi;
pub mod grpc;
pub mod host;
#[allow(unsafe_code)]
pub mod module;
pub mod service;
pub mod shared_data;
