//! A module's contract, `module.toml` (`Contract::from_toml`): read by the
//! module at start and by the Core for every configured module.
//!
//! Input: the file's text. A contract that parses must be usable: a module
//! URN, at least one well-formed method, `max_lease` at least the shortest
//! lease, and it prints.

use anima_module_sdk::Contract;
use anima_module_sdk::contract::parse_duration;
use anima_protocol::UrnKind;
use anima_protocol::lease::{MIN_TTL, check_method};

use crate::fixtures;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The duration syntax on its own, as `anima.toml` uses it too.
    if let Ok(d) = parse_duration(text) {
        assert!(d.as_millis() <= u128::from(u64::MAX));
    }
    let Ok(contract) = Contract::from_toml(text) else {
        return;
    };
    assert_eq!(contract.urn.kind(), UrnKind::Module);
    assert!(!contract.methods.is_empty());
    assert!(contract.methods.iter().all(|m| check_method(m).is_ok()));
    assert!(contract.max_lease >= MIN_TTL);
    let _ = format!("{} {:?}", contract.module_type, contract);
}

/// The sample modules' contracts, every type, and near misses.
pub fn seeds() -> Vec<Vec<u8>> {
    let base = r#"urn = "urn:anima:module:hasher"
version = "0.1.0"
type = "ephemeral"
methods = ["/anima.sample.v1.Hasher/Digest"]
max_lease = "30s"
startup_grace = "10s"
expired_grace = "0s"
termination_window = "2s"
"#;
    let mut seeds = vec![base.to_owned()];
    seeds.extend(fixtures::near_misses(
        base,
        &[
            (
                "type = \"ephemeral\"",
                "type = \"resident-private\"\ninit = \"core-started\"",
            ),
            (
                "type = \"ephemeral\"",
                "type = \"resident-private\"\ninit = \"pre-started\"",
            ),
            ("type = \"ephemeral\"", "type = \"resident-shared\""),
            ("type = \"ephemeral\"\n", ""),
            ("30s", "250ms"),
            ("30s", "5124095576030431h"),
            ("30s", "18446744073709551615ms"),
            ("30s", "49ms"),
            ("\"10s\"", "\"1h\""),
            ("\"2s\"", "\"99999999999999999999h\""),
            (
                "[\"/anima.sample.v1.Hasher/Digest\"]",
                "[\"/a.B/C\", \"/a.B/C\", \"/a.B/D\"]",
            ),
            ("[\"/anima.sample.v1.Hasher/Digest\"]", "[]"),
            ("module:hasher", "core:hasher"),
        ],
    ));
    seeds.extend([
        format!("{base}bogus = 1\n"),
        "urn = 1".into(),
        "[[x]]\n[x.y]\nz = [1, {a = \"b\"}, 1979-05-27T07:32:00Z, 0x1f, 1e9, inf]\n".into(),
    ]);
    seeds.extend(["30s", "250ms", "5m", "1h", " 7s ", "0ms", "1d", "s"].map(String::from));
    seeds.into_iter().map(String::into_bytes).collect()
}
