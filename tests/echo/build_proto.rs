//! Compiles `tests/proto/echo.proto` (pure Rust, no protoc) for a build
//! script and writes its descriptor set (`echo_descriptor.bin`) beside the
//! generated code, for the SDK's served-vs-declared method check.
//!
//! Included by path from the build scripts of `anima-tests` and
//! `anima-faulty-fixtures`.

use std::path::Path;

use prost::Message;

/// Compiles the protos in `proto_dir` into `OUT_DIR`.
pub fn compile(proto_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let fds = protox::compile([proto_dir.join("echo.proto")], [proto_dir])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("echo_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
