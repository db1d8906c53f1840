//! Compiles the test-only protos in `tests/proto` (pure Rust, no protoc) and
//! writes their descriptor set for the SDK's method check.

#[path = "echo/build_proto.rs"]
mod build_proto;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    build_proto::compile(std::path::Path::new("proto"))
}
