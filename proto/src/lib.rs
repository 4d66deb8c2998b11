//! Sluice's protobuf contracts (`proto/sluice/**`), generated at build time.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod admin {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/sluice.admin.v1.rs"));
    }
}

/// What Envoy and the control plane exchange: usage records, key lookups (`sluice.v1`).
pub mod gateway {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/sluice.v1.rs"));
    }
}

pub mod usage_line;

/// The encoded descriptors of every file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));
