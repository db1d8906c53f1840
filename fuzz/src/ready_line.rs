//! The ready line a started module prints (`ANIMA/1 READY <urn> <addr>`,
//! PROTOCOL.md §6.1), as everyone reads it: `anima_protocol::launch`'s
//! `parse_ready_line` (the SDK's tests, the bench) and `expect_ready_line`
//! (the Core's launcher, on the first stdout line with the prefix; the
//! conformance tool).
//!
//! Input: the module's stdout. The parser must agree with a model of the
//! grammar (the prefix, one space, a URN, one space, `ip:port` or `unix:`
//! and an absolute path of at most 107 bytes without NUL, nothing else);
//! `expect_ready_line` must take a line exactly when it names the expected
//! module and, for a Unix socket, the one offered; and the line written for
//! whatever is read must read back the same.

use std::path::Path;

use anima_protocol::Urn;
use anima_protocol::launch::{READY_PREFIX, expect_ready_line, parse_ready_line, ready_line};
use anima_protocol::transport::Address;

const MODULE: &str = "urn:anima:module:fz";
/// The Unix socket offered to the module.
const OFFERED: &str = "/run/anima/1/fz.sock";

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

/// The grammar, written independently of the parser.
fn model(line: &str) -> Option<(Urn, Address)> {
    let words: Vec<&str> = line.split(' ').collect();
    let ["ANIMA/1", "READY", urn, addr] = words.as_slice() else {
        return None;
    };
    let addr = match addr.strip_prefix("unix:") {
        Some(path) if path.starts_with('/') && path.len() <= 107 && !path.contains('\0') => {
            Address::Unix(path.into())
        }
        Some(_) => return None,
        None => Address::Tcp(addr.parse().ok()?),
    };
    Some((urn.parse().ok()?, addr))
}

fn check(line: &str, expected: &Urn) {
    let parsed = parse_ready_line(line).ok();
    assert_eq!(parsed, model(line), "the parser and the model disagree on {line:?}");
    let offered = Path::new(OFFERED);
    let taken = |addr: &Address, offer: Option<&Path>| match addr {
        Address::Unix(path) => Some(path.as_path()) == offer,
        Address::Tcp(_) => true,
    };
    for offer in [None, Some(offered)] {
        let for_expected = parsed
            .as_ref()
            .filter(|(urn, addr)| urn == expected && taken(addr, offer))
            .map(|(_, addr)| addr.clone());
        assert_eq!(
            expect_ready_line(line, expected, offer).ok(),
            for_expected,
            "{line:?}"
        );
    }
    if let Some((urn, addr)) = parsed {
        let offer = match &addr {
            Address::Unix(path) => Some(path.as_path()),
            Address::Tcp(_) => None,
        };
        assert_eq!(
            expect_ready_line(line, &urn, offer),
            Ok(addr.clone()),
            "{line:?}"
        );
        let written = ready_line(&urn, addr.clone());
        assert_eq!(parse_ready_line(&written), Ok((urn.clone(), addr)));
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
        "ANIMA/1 READY urn:anima:module:fz unix:/run/anima/1/fz.sock\n",
        "ANIMA/1 READY urn:anima:module:fz unix:/run/anima/1/other.sock",
        "ANIMA/1 READY urn:anima:module:fz unix:run/fz.sock",
        "ANIMA/1 READY urn:anima:module:fz unix:",
        "ANIMA/1 READY urn:anima:module:fz unix:/a\u{0}b",
        "ANIMA/1 READY urn:anima:module:fz unix:/with space",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    // A line that is not UTF-8 before the ready line.
    .chain([b"\xff\nANIMA/1 READY urn:anima:module:fz 127.0.0.1:1".to_vec()])
    .collect()
}
