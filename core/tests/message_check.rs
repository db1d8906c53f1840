//! `anima message check` end to end: the real binary on the specification's
//! examples (`docs/rcs-examples/`), on the same messages as the
//! specification prints them (its illustrative sizes), and with `--fix`.

// The helpers below are outside `#[test]` functions, where clippy's
// allow-unwrap-in-tests does not reach; in a test binary a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/rcs-examples/{name}.json"))
}

fn anima(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_anima"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn m1_the_specifications_examples_pass_the_cores_checks() {
    for name in ["complete", "minimal", "logging"] {
        let path = example(name);
        let out = anima(&["message", "check", path.to_str().unwrap()], None);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with("ok: "),
            "{}",
            text(&out.stdout)
        );
    }
    let out = anima(
        &["message", "check", example("complete").to_str().unwrap()],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("DATA_PROCESSED from urn:anima:module:data-processor")
            && stdout.contains("payload 73 bytes")
            && stdout.contains("expires at 2025-07-31T17:52:53.123Z"),
        "{stdout}"
    );
}

/// The seed's illustrative size is refused as the Core would refuse it
/// (M2), naming the field; `--fix` corrects it, and the fixed message
/// passes.
#[test]
fn m2_a_wrong_size_is_refused_and_fixed() {
    let original = std::fs::read_to_string(example("minimal")).unwrap();
    let seed = original.replace("\"size_bytes\": 20", "\"size_bytes\": 25");
    assert_ne!(seed, original);
    let out = anima(&["message", "check", "-"], Some(seed.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("SIZE_MISMATCH payload.size_bytes: says 25, but the payload is 20 bytes"),
        "{stderr}"
    );
    let fixed = anima(&["message", "check", "--fix", "-"], Some(seed.as_bytes()));
    assert!(fixed.status.success(), "{}", text(&fixed.stderr));
    let fixed_json: serde_json::Value = serde_json::from_slice(&fixed.stdout).unwrap();
    let original_json: serde_json::Value = serde_json::from_str(&original).unwrap();
    assert_eq!(fixed_json, original_json, "only the size changed back");
}

/// M3: a message checked as sent by another module than it names is
/// refused; one whose `source_module` is no URN needs `--sender`.
#[test]
fn m3_the_sender_must_be_the_module_the_message_names() {
    let path = example("logging");
    let out = anima(
        &[
            "message",
            "check",
            "--sender",
            "urn:anima:module:impostor",
            path.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("IDENTITY_MISMATCH routing.source_module"),
        "{}",
        text(&out.stderr)
    );
    let seed_like = std::fs::read_to_string(example("minimal"))
        .unwrap()
        .replace("urn:anima:module:system-monitor", "SystemMonitor");
    let out = anima(&["message", "check", "-"], Some(seed_like.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("give --sender"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn m1_not_json_is_refused_with_its_code() {
    let out = anima(&["message", "check", "-"], Some(b"{\"message_metadata\":"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("INVALID_JSON"),
        "{}",
        text(&out.stderr)
    );
}
