//! The Core's configuration, `anima.toml` (`config::parse_str`), read as if
//! from a directory that holds real certificates (minted once per fixture
//! directory), contracts and an executable module, so that the checks behind
//! the parser (identities, files, contracts, dependencies) run too.
//!
//! Input: the file's text. A configuration that parses must pass
//! `config::check` as well (the same rules, on the built value), and
//! `config::start_order` must order every module once, each after the
//! modules it requires.
//!
//! The checks read the files the text names. So that the fuzzer cannot make
//! them read a device or a kernel file (`/dev/zero` is refused as not a
//! regular file, but `/proc/kcore` is one), inputs whose string values name
//! anything under `/dev`, `/proc` or `/sys` are skipped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use anima_core::config;
use toml::de::{DeTable, DeValue};

use crate::fixtures;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_special_files(text) {
        return;
    }
    let origin = fixture_dir().join("anima.toml");
    let Ok(config) = config::parse_str(text, &origin) else {
        return;
    };
    if let Err(problems) = config::check(&config) {
        panic!("parse_str accepted what check refuses: {problems:?}");
    }
    let order = config::start_order(&config.modules);
    assert_eq!(order.len(), config.modules.len());
    let mut started = HashSet::new();
    for &i in &order {
        let module = &config.modules[i];
        for required in &module.requires {
            assert!(
                started.contains(required),
                "{} starts before {required}",
                module.urn
            );
        }
        assert!(started.insert(module.urn.clone()), "started twice");
    }
}

/// Whether any string value (at any depth) contains `/dev`, `/proc` or `/sys`.
fn names_special_files(text: &str) -> bool {
    fn value(v: &DeValue<'_>) -> bool {
        match v {
            DeValue::String(s) => ["/dev", "/proc", "/sys"].iter().any(|p| s.contains(p)),
            DeValue::Array(items) => items.iter().any(|i| value(i.get_ref())),
            DeValue::Table(t) => table(t),
            _ => false,
        }
    }
    fn table(t: &DeTable<'_>) -> bool {
        t.values().any(|v| value(v.get_ref()))
    }
    let (doc, _) = DeTable::parse_recoverable(text);
    table(doc.get_ref())
}

/// `fuzz/target/fixtures/anima_toml`: dev certificates in `certs/`
/// (`anima_certs::init_dir`), a contract per module type in `contracts/`,
/// and an executable `bin/module`. Minted once, and again when a month old
/// (the leaf certificates last 90 days).
pub fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/anima_toml");
        let fresh = std::fs::metadata(dir.join("ready"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < Duration::from_secs(30 * 24 * 3600));
        if !fresh {
            mint(&dir);
        }
        dir
    })
}

/// The contracts in `contracts/`: file name, then text.
pub const CONTRACTS: [(&str, &str); 4] = [
    (
        "hasher.toml",
        "urn = \"urn:anima:module:hasher\"\nversion = \"1\"\n\
         methods = [\"/anima.sample.v1.Hasher/Digest\"]\nmax_lease = \"30s\"\n",
    ),
    (
        "kvstore.toml",
        "urn = \"urn:anima:module:kvstore\"\nversion = \"1\"\ntype = \"resident-private\"\n\
         init = \"core-started\"\nmethods = [\"/anima.sample.v1.KvStore/Get\"]\nmax_lease = \"1m\"\n",
    ),
    (
        "tally.toml",
        "urn = \"urn:anima:module:tally\"\nversion = \"1\"\ntype = \"resident-shared\"\n\
         methods = [\"/anima.sample.v1.Tally/Add\"]\nmax_lease = \"10s\"\n",
    ),
    (
        "broken.toml",
        "urn = \"urn:anima:module:tally\"\nmethods = 1\n",
    ),
];

fn mint(dir: &Path) {
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    anima_certs::init_dir(&tmp.join("certs"), &anima_certs::InitOptions::default())
        .expect("minting fixture certificates");
    std::fs::create_dir_all(tmp.join("contracts")).expect("fixture dir");
    for (name, text) in CONTRACTS {
        std::fs::write(tmp.join("contracts").join(name), text).expect("fixture contract");
    }
    std::fs::create_dir_all(tmp.join("bin")).expect("fixture dir");
    let program = tmp.join("bin/module");
    std::fs::write(&program, "#!/bin/sh\nexit 0\n").expect("fixture program");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))
            .expect("fixture program mode");
    }
    std::fs::write(tmp.join("ready"), "").expect("fixture marker");
    // Another process may have minted concurrently: either copy will do.
    let _ = std::fs::remove_dir_all(dir);
    if std::fs::rename(&tmp, dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

/// A configuration of every kind of module, and near misses.
pub fn seeds() -> Vec<Vec<u8>> {
    let core = r#"[core]
urn = "urn:anima:core:dev"
cert = "certs/core-dev.pem"
key = "certs/core-dev.key"
ca = "certs/ca.pem"
endpoint_cert = "certs/core-dev.endpoint.pem"
endpoint_key = "certs/core-dev.endpoint.key"
audit_log = "audit.jsonl"

[admin]
listen = "127.0.0.1:7700"
operators = ["urn:anima:user:dev"]

[leases]
ttl = "30s"
renew_when_left = 0.33
"#;
    let modules = r#"
[[module]]
urn = "urn:anima:module:hasher"
command = "bin/module"
args = ["--x", "y"]
env = { RUST_LOG = "info" }
cert = "certs/module-hasher.pem"
key = "certs/module-hasher.key"
contract = "contracts/hasher.toml"
lease_ttl = "20s"
restart = { policy = "on-failure", max_restarts = 5, window = "1m", backoff = "100ms", backoff_max = "5s" }

[[module]]
urn = "urn:anima:module:kvstore"
type = "resident-private"
command = "bin/module"
cert = "certs/module-kvstore.pem"
key = "certs/module-kvstore.key"
contract = "contracts/kvstore.toml"
requires = ["urn:anima:module:hasher"]

[[module]]
urn = "urn:anima:module:tally"
type = "resident-shared"
endpoint = "127.0.0.1:7803"
contract = "contracts/tally.toml"
core_cert = "endpoint"
lease_ttl = "5s"
requires = ["urn:anima:module:kvstore", "urn:anima:module:hasher"]

[[policy]]
user = "urn:anima:user:dev"
allow = ["urn:anima:module:hasher", "/anima.sample.v1.Tally/Add"]
"#;
    let full = format!("{core}{modules}");
    let mut seeds = vec![full.clone(), core.to_owned()];
    seeds.extend(fixtures::near_misses(
        &full,
        &[
            // A dependency cycle; a duplicate; a missing requirement.
            (
                "lease_ttl = \"20s\"",
                "lease_ttl = \"20s\"\nrequires = [\"urn:anima:module:tally\"]",
            ),
            (
                "urn:anima:module:kvstore\"\ntype",
                "urn:anima:module:hasher\"\ntype",
            ),
            (
                "requires = [\"urn:anima:module:hasher\"]",
                "requires = [\"urn:anima:module:nope\", \"urn:anima:user:dev\", \"x\"]",
            ),
            // Wrong types, values out of range, unknown keys, files that are not there.
            ("ttl = \"30s\"", "ttl = 30\nextra = true"),
            ("0.33", "2"),
            ("0.33", "nan"),
            ("max_restarts = 5", "max_restarts = -1"),
            ("max_restarts = 5", "max_restarts = 0x7fffffffffffffff"),
            ("backoff = \"100ms\"", "backoff = \"1h\""),
            ("window = \"1m\"", "window = \"0s\""),
            ("lease_ttl = \"5s\"", "lease_ttl = \"5124095576030431h\""),
            ("contracts/tally.toml", "contracts/broken.toml"),
            ("contracts/tally.toml", "contracts/hasher.toml"),
            ("bin/module", "no/such/program"),
            ("command = \"bin/module\"\nargs", "command = \"sh\"\nargs"),
            ("127.0.0.1:7803", "127.0.0.1:0"),
            (
                "[[module]]\nurn = \"urn:anima:module:hasher\"",
                "[module]\nurn = \"urn:anima:module:hasher\"",
            ),
            ("RUST_LOG", "\"A=B\""),
            ("endpoint_key = \"certs/core-dev.endpoint.key\"\n", ""),
            ("certs/core-dev.pem", "certs/module-hasher.pem"),
            ("127.0.0.1:7700", "localhost:7700"),
        ],
    ));
    seeds.extend(["[core\nurn = ", "core = 1\nmodule = \"x\"\npolicy = [1]\n"].map(String::from));
    seeds.dedup();
    seeds.into_iter().map(String::into_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first seed is a configuration the Core accepts, so that the
    /// fuzzer starts from the checks behind the parser, not from its errors.
    #[test]
    fn the_full_seed_is_accepted() {
        let seed = String::from_utf8(seeds().remove(0)).expect("UTF-8");
        let parsed = config::parse_str(&seed, &fixture_dir().join("anima.toml"));
        let config = parsed.unwrap_or_else(|p| panic!("{p:#?}"));
        assert_eq!(config.modules.len(), 3);
        assert!(!names_special_files(&seed));
        assert!(names_special_files("a = { b = [\"x\", \"/proc/kcore\"] }"));
    }
}
