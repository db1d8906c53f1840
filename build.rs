//! Compiles `proto/anima/v1/*.proto` with a pure-Rust compiler (protox): no
//! system `protoc` needed. Clients are generated without tonic's plaintext
//! `connect(url)` helper; every channel comes from `transport::ClientTls`.
//! The encoded descriptor set is written to `OUT_DIR` too and exported as
//! `pb::FILE_DESCRIPTOR_SET` (the module SDK lists the probe's methods from it).

use std::path::{Path, PathBuf};

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile(Path::new("."))
}

/// Compiles `ROOT/proto/anima/v1` (the test-only copy of this crate,
/// `tests/faulty-protocol`, calls it with the workspace root).
pub fn compile(root: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let dir = root.join("proto/anima/v1");
    let mut protos: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    protos.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    let fds = protox::compile(&protos, [root.join("proto")])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("anima_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
