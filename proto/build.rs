//! Generates the index service (`cairn/index/v1/index.proto`) and the
//! cluster's records and peer calls (`cluster.proto`) with a
//! vendored `protoc`, so no system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes(["."]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["cairn/index/v1/index.proto", "cairn/index/v1/cluster.proto"],
        &["."],
    )?;
    Ok(())
}
