//! The harnesses behind Anima's fuzz targets: one module per parser of peer
//! input, each with a `run(&[u8])` that feeds the bytes to the real entry
//! point the network (or a started module, or an operator's file) reaches,
//! and a `seeds()` that builds its starting corpus.
//!
//! A harness never panics on its own account: a panic is a defect in the code
//! under test, or a broken invariant the harness asserts (each assertion says
//! which rule of PROTOCOL.md or which documented guarantee it checks).
//!
//! | target | entry points |
//! | --- | --- |
//! | [`lease_token`] | `lease::grant` (a Core's offer), `PendingLease::accept` (a module's grant), `Lease::receive` (control tokens); raw tokens, and claims signed by the peer's real key |
//! | [`proof_header`] | `Lease::admit` with the `anima-proof` value; `ProofKey::check` + `ReplayWindow` against a model |
//! | [`control_frame`] | prost decoding of `ControlFrame`, then the module's and the Core's control steps on live leases |
//! | [`module_toml`] | `Contract::from_toml` |
//! | [`anima_toml`] | `config::parse_str` (with real certificates and contracts to find), `config::check`, `config::start_order` |
//! | [`ready_line`] | `launch::parse_ready_line` and `launch::expect_ready_line`, against a model of the grammar |
//! | [`message_cap`] | the gateway's `MessageCap` body, polled over fuzzed chunking, against a model |

pub mod anima_toml;
pub mod control_frame;
pub mod fixtures;
pub mod lease_token;
pub mod message_cap;
pub mod module_toml;
pub mod proof_header;
pub mod ready_line;

/// Every target: its name, its harness and its seed builder.
pub const TARGETS: &[(&str, fn(&[u8]), fn() -> Vec<Vec<u8>>)] = &[
    ("lease_token", lease_token::run, lease_token::seeds),
    ("proof_header", proof_header::run, proof_header::seeds),
    ("control_frame", control_frame::run, control_frame::seeds),
    ("module_toml", module_toml::run, module_toml::seeds),
    ("anima_toml", anima_toml::run, anima_toml::seeds),
    ("ready_line", ready_line::run, ready_line::seeds),
    ("message_cap", message_cap::run, message_cap::seeds),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::TARGETS;

    /// Every seed runs through its harness, and is committed in
    /// `fuzz/corpus/<target>/` (written there with
    /// `ANIMA_FUZZ_WRITE_SEEDS=1`).
    #[test]
    fn seeds_pass_and_are_committed() {
        let write = std::env::var_os("ANIMA_FUZZ_WRITE_SEEDS").is_some();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let mut missing = Vec::new();
        for (name, run, seeds) in TARGETS {
            let dir = root.join(name);
            for seed in seeds() {
                run(&seed);
                let digest = ring::digest::digest(&ring::digest::SHA256, &seed);
                let hex: String = digest.as_ref()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let path = dir.join(format!("seed-{hex}"));
                if write {
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(&path, &seed).unwrap();
                } else if std::fs::read(&path).ok().as_deref() != Some(&seed[..]) {
                    missing.push(path.display().to_string());
                }
            }
        }
        assert!(
            missing.is_empty(),
            "seeds not committed (run with ANIMA_FUZZ_WRITE_SEEDS=1): {missing:?}"
        );
    }
}
