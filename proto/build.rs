//! Generates the Rust types from `sluice/**/*.proto` with the vendored protoc. The gRPC
//! services are generated only with the `grpc` feature (the filter uses messages only).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let files = [
        root.join("sluice/admin/v1/admin.proto"),
        root.join("sluice/v1/usage.proto"),
        root.join("sluice/v1/gateway.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .file_descriptor_set_path(out.join("sluice_descriptor.bin"))
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
