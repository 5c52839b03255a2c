//! Compiles the `.proto` contracts with protox (pure Rust), so no machine needs `protoc`.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/rungate/types/v1/types.proto",
    "proto/rungate/inference/v1/inference.proto",
    "proto/rungate/billing/v1/billing.proto",
    "proto/rungate/ledger/v1/ledger.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by gRPC reflection so `grpcurl list` works without the .proto files.
    std::fs::write(out.join("rungate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
