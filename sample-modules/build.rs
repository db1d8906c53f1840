//! Compiles the samples' protos (pure Rust, no protoc) — their own in
//! `proto/`, and the kvstore's from the interface it provides,
//! `interfaces/anima.sample/kv/1.0.0/`, whose client the notes sample
//! calls through its Core — and writes their descriptor set,
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
            "anima/sample/v1/notes.proto",
            "anima/sample/v1/logger.proto",
            "anima/sample/v1/workflow.proto",
        ],
        ["proto", KV_INTERFACE],
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("sample_descriptor.bin"), fds.encode_to_vec())?;
    // Servers and clients of every service: the notes sample calls the kv
    // interface with the generated `KvStoreClient`, over its Core's channel.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
