//! The xDS side of the control plane: Envoys connect over ADS (state of the world) and get one
//! cluster per model deployment (CDS), the routes (RDS), the Sluice filter's config (ECDS) and
//! provider credentials (SDS), all built from the database.
//!
//! - `protocol`: the per-stream protocol as a pure state machine (versions, nonces, ACK/NACK,
//!   make-before-break), unit-tested without I/O.
//! - `resources`: the database's deployments → Envoy resources (the snapshot).
//! - `routes`: the route configuration (management paths, then the deployments' routes).
//! - `server`: the single writer that rebuilds and publishes snapshots, and the tonic ADS
//!   service that runs one state machine per connected Envoy.

pub mod protocol;
pub mod resources;
pub mod routes;
pub mod server;

pub use resources::{CONTROL_PLANE_CLUSTER, FILTER_CONFIG_NAME, FilterModule, XdsOptions};
pub use server::{AdsService, SnapshotPublisher};
