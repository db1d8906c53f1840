//! Compiles the samples' protos in `proto/` (pure Rust, no protoc) and writes
//! their descriptor set, which the SDK reads to check the served methods
//! against each contract.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "anima/sample/v1/hasher.proto",
            "anima/sample/v1/kvstore.proto",
            "anima/sample/v1/tally.proto",
        ],
        ["proto"],
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("sample_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
