//! The ready line a started module prints (`ANIMA/1 READY <urn> <addr>`,
//! PROTOCOL.md §6.1), as the Core reads it (`launcher::parse_ready`, on the
//! first stdout line with the prefix) and as the SDK and the conformance
//! tool read it (`launch::parse_ready_line`).
//!
//! Input: the module's stdout. The two parsers must agree: the Core takes a
//! line exactly when the SDK reads the module's URN from it, with the same
//! address; and whatever the SDK reads, the line the SDK writes for it must
//! read back the same.

use anima_core::launcher::parse_ready;
use anima_module_sdk::launch::{READY_PREFIX, parse_ready_line, ready_line};
use anima_protocol::Urn;

const MODULE: &str = "urn:anima:module:fz";

/// Runs one input.
pub fn run(data: &[u8]) {
    let expected: Urn = MODULE.parse().expect("a valid urn");
    // The Core's reading loop: lines split at '\n' (a trailing '\r'
    // dropped), the first with the prefix; a line that is not UTF-8 ends it.
    for raw in data.split(|&b| b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            break;
        };
        if line.starts_with(READY_PREFIX) {
            check(line, &expected);
            break;
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check(text, &expected);
    }
}

fn check(line: &str, expected: &Urn) {
    let sdk = parse_ready_line(line);
    let core = parse_ready(line, expected);
    let sdk_for_expected = sdk
        .as_ref()
        .filter(|(urn, _)| urn == expected)
        .map(|&(_, addr)| addr);
    assert_eq!(
        core, sdk_for_expected,
        "the Core and the SDK disagree on {line:?}"
    );
    if let Some((urn, addr)) = sdk {
        assert_eq!(parse_ready(line, &urn), Some(addr), "{line:?}");
        let written = ready_line(&urn, addr);
        assert_eq!(parse_ready_line(&written), Some((urn.clone(), addr)));
        assert_eq!(parse_ready(&written, &urn), Some(addr));
    }
}

/// Lines as modules print them, and near misses.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        "ANIMA/1 READY urn:anima:module:fz 127.0.0.1:4000\n",
        "starting\nANIMA/1 READY urn:anima:module:fz [::1]:65535\r\nmore\n",
        "ANIMA/1 READY urn:anima:module:other 127.0.0.1:4000",
        "ANIMA/1 READY  urn:anima:module:fz   127.0.0.1:4000  ",
        "ANIMA/1 READY urn:anima:module:fz 127.0.0.1:4000 extra",
        "ANIMA/1 READYurn:anima:module:fz 127.0.0.1:1",
        "ANIMA/1 READY urn:anima:module:fz\t127.0.0.1:1",
        "ANIMA/1 READY urn:anima:module:fz [fe80::1%eth0]:1",
        "ANIMA/1 READY urn:anima:module:fz 256.0.0.1:1",
        "ANIMA/1 READY urn:anima:module:fz localhost:1",
        "ANIMA/1 READY urn:anima:core:fz 127.0.0.1:1",
        "ANIMA/2 READY urn:anima:module:fz 127.0.0.1:1",
        "\u{feff}ANIMA/1 READY urn:anima:module:fz 127.0.0.1:1",
        "ANIMA/1 READY urn:anima:module:\u{e9} 127.0.0.1:1",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    // A line that is not UTF-8 before the ready line.
    .chain([b"\xff\nANIMA/1 READY urn:anima:module:fz 127.0.0.1:1".to_vec()])
    .collect()
}
