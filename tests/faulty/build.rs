//! Compiles this package — and only this package — with the
//! `anima_test_faults` cfg, which turns on the SDK's fault hooks
//! (`module-sdk/src/fault.rs`), and compiles the echo proto for its fixture.

#[path = "../echo/build_proto.rs"]
mod build_proto;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rustc-cfg=anima_test_faults");
    build_proto::compile(std::path::Path::new("../proto"))
}
