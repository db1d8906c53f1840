//! Compiles this package — and only this package — with the
//! `anima_test_faults` cfg, which turns on the protocol crate's fault hooks
//! (`src/fault.rs`), and compiles the protocol's protos as its build script
//! does.

#[path = "../../build.rs"]
#[allow(dead_code)]
mod protocol_build;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rustc-cfg=anima_test_faults");
    protocol_build::compile(std::path::Path::new("../.."))
}
