//! Compiles the samples' protos (pure Rust, no protoc) — their own in
//! `proto/`, and the kvstore's from the interface it provides,
//! `interfaces/anima.sample/kv/1.0.0/` — and writes their descriptor set,
//! which the SDK reads to check the served methods against each contract.

use prost::Message;

/// The kv interface's directory: its schema is the kvstore's.
const KV_INTERFACE: &str = "../interfaces/anima.sample/kv/1.0.0";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed={KV_INTERFACE}");
    let fds = protox::compile(
        [
            "anima/sample/v1/hasher.proto",
            "kvstore.proto",
            "anima/sample/v1/tally.proto",
        ],
        ["proto", KV_INTERFACE],
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("sample_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
