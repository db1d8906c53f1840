//! `anima config check` end to end: the real binary, a scratch directory with
//! freshly minted dev certificates, and configuration files with one kind of
//! mistake each.

// The helpers below are outside `#[test]` functions, where clippy's
// allow-unwrap-in-tests does not reach; in a test binary a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

use anima_certs::InitOptions;

/// A configuration every check accepts (in a [`Scratch`] directory).
const VALID: &str = r#"# A Core with three modules.
[core]
urn = "urn:anima:core:dev"
cert = "certs/dev/core-dev.pem"
key = "certs/dev/core-dev.key"
ca = "certs/dev/ca.pem"
audit_log = "audit.jsonl"

[admin]
listen = "127.0.0.1:7700"
operators = ["urn:anima:user:dev"]

[leases]
ttl = "20s"
renew_when_left = 0.33

[[module]]
urn = "urn:anima:module:hasher"
command = "bin/anima-hasher"
args = ["--verbose"]
env = { RUST_LOG = "info" }
cert = "certs/dev/module-hasher.pem"
key = "certs/dev/module-hasher.key"
contract = "contracts/hasher.toml"
lease_ttl = "10s"
requires = ["urn:anima:module:kvstore"]

[[module]]
urn = "urn:anima:module:kvstore"
type = "resident-private"
command = "bin/anima-kvstore"
cert = "certs/dev/module-kvstore.pem"
key = "certs/dev/module-kvstore.key"
contract = "contracts/kvstore.toml"
[module.restart]
policy = "always"
max_restarts = 3
window = "30s"
backoff = "100ms"
backoff_max = "5s"

[[module]]
urn = "urn:anima:module:tally"
type = "resident-shared"
endpoint = "127.0.0.1:7801"
"#;

const HASHER_CONTRACT: &str = r#"
urn = "urn:anima:module:hasher"
version = "0.1.0"
methods = ["/anima.sample.v1.Hasher/Digest"]
max_lease = "30s"
"#;

const KVSTORE_CONTRACT: &str = r#"
urn = "urn:anima:module:kvstore"
version = "0.1.0"
type = "resident-private"
init = "core-started"
methods = ["/anima.sample.v1.KvStore/Get"]
max_lease = "30s"
"#;

/// A directory with dev certificates (`certs/dev`), two contracts
/// (`contracts/`) and two fake module programs (`bin/`) that leave a mark
/// if anything ever runs them.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        anima_certs::init_dir(&dir.path().join("certs/dev"), &InitOptions::default()).unwrap();
        let scratch = Scratch { dir };
        scratch.write("contracts/hasher.toml", HASHER_CONTRACT);
        scratch.write("contracts/kvstore.toml", KVSTORE_CONTRACT);
        for name in ["anima-hasher", "anima-kvstore"] {
            scratch.program(&format!("bin/{name}"));
        }
        scratch
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// An executable that records that it ran.
    fn program(&self, name: &str) {
        let marker = self.path().join("ran");
        self.write(
            name,
            &format!("#!/bin/sh\necho \"$0\" >> '{}'\n", marker.display()),
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(self.path().join(name), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// Writes `anima.toml` and runs `anima config check anima.toml`.
    fn check(&self, config: &str) -> Run {
        self.write("anima.toml", config);
        self.anima(&["config", "check", "anima.toml"])
    }

    fn anima(&self, args: &[&str]) -> Run {
        self.anima_with_path(args, std::env::var_os("PATH").unwrap_or_default())
    }

    fn anima_with_path(&self, args: &[&str], path: impl AsRef<std::ffi::OsStr>) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_anima"))
            .args(args)
            .current_dir(self.path())
            .env_remove("RUST_LOG")
            .env("PATH", path)
            .output()
            .expect("run anima");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    /// Whether any fake module program was started.
    fn something_ran(&self) -> bool {
        self.path().join("ran").exists()
    }
}

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_ok(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts a failure; returns the problem lines (without the summary),
    /// having checked that the summary counts them.
    fn problems(&self) -> Vec<&str> {
        assert_eq!(
            self.code,
            Some(1),
            "expected failure\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        let mut lines: Vec<&str> = self.stderr.lines().collect();
        let summary = lines.pop().expect("a summary line");
        let n = lines.len();
        let expected = format!("{n} problem{}", if n == 1 { "" } else { "s" });
        assert!(
            summary.starts_with("error: ") && summary.contains(&expected),
            "summary {summary:?} should count {n} problems:\n{}",
            self.stderr
        );
        lines
    }

    /// Asserts that some problem line starts with `location` and mentions
    /// `words`.
    fn assert_problem(&self, location: &str, words: &str) {
        let problems = self.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(location) && p.contains(words)),
            "no problem at {location:?} mentioning {words:?} in:\n{}",
            self.stderr
        );
    }
}

/// `anima.toml:LINE` for the first line of `text` containing `needle`.
fn at(text: &str, needle: &str) -> String {
    let line = text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
        + 1;
    format!("anima.toml:{line}")
}

/// `VALID` with `from` replaced by `to` (which must occur).
fn valid_with(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from:?} not in VALID");
    VALID.replacen(from, to, 1)
}

#[test]
fn a_valid_file_passes_and_starts_nothing() {
    let scratch = Scratch::new();
    let run = scratch.check(VALID);
    run.assert_ok();
    assert_eq!(run.stdout, "ok: anima.toml (3 modules)\n");
    assert_eq!(run.stderr, "");
    assert!(!scratch.something_ran(), "the check started a module");
}

#[test]
fn without_a_file_the_one_in_the_working_directory_is_checked() {
    let scratch = Scratch::new();
    scratch.write("anima.toml", VALID);
    let run = scratch.anima(&["config", "check"]);
    run.assert_ok();
    assert_eq!(run.stdout, "ok: anima.toml (3 modules)\n");
}

#[test]
fn without_any_file_the_embedded_default_is_checked() {
    // No certificates here: the default's files are missing, and it says so.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_anima"))
        .args(["config", "check"])
        .current_dir(empty.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("embedded default"), "{stdout}");
    assert!(
        stderr.contains("embedded default: core.cert: no such file")
            && stderr.contains("certs/dev/core-dev.pem"),
        "{stderr}"
    );
    assert!(
        stderr.contains("embedded default: module[0] (urn:anima:module:hasher).cert"),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: ") && l.contains("in the embedded default")),
        "{stderr}"
    );
}

#[test]
fn an_unreadable_file_is_one_problem() {
    let scratch = Scratch::new();
    let run = scratch.anima(&["config", "check", "nope.toml"]);
    run.assert_problem("nope.toml: cannot read", "");
}

#[test]
fn syntax_errors_name_their_line() {
    let scratch = Scratch::new();
    let config = valid_with("ttl = \"20s\"", "ttl = \"20s");
    let run = scratch.check(&config);
    run.assert_problem(&at(&config, "ttl = \"20s"), "string");
}

#[test]
fn unknown_keys_name_their_line_and_the_known_ones() {
    let scratch = Scratch::new();
    let config = valid_with(
        "backoff_max = \"5s\"",
        "backoff_max = \"5s\"\nbackof = \"1s\"",
    )
    .replacen("[admin]", "[admin]\nlisten_on = \"x\"", 1)
    .replacen("# A Core", "cores = 2\n# A Core", 1);
    let run = scratch.check(&config);
    run.assert_problem(
        &format!(
            "{}: module[1] (urn:anima:module:kvstore).restart.backof",
            at(&config, "backof =")
        ),
        "unknown key",
    );
    run.assert_problem(
        &format!("{}: admin.listen_on", at(&config, "listen_on")),
        "listen, operators",
    );
    run.assert_problem(&format!("{}: cores", at(&config, "cores")), "unknown key");
    assert_eq!(run.problems().len(), 3);
}

#[test]
fn invalid_urns_and_wrong_kinds_are_refused() {
    let scratch = Scratch::new();
    let config = valid_with(
        "urn = \"urn:anima:core:dev\"",
        "urn = \"urn:anima:module:dev\"",
    )
    .replacen(
        "urn = \"urn:anima:module:tally\"",
        "urn = \"urn:anima:user:tally\"",
        1,
    )
    .replacen(
        "\"urn:anima:user:dev\"]",
        "\"urn:anima:user:dev\", \"urn:anima:user:Dev\"]",
        1,
    );
    let run = scratch.check(&config);
    run.assert_problem(
        &format!("{}: core.urn", at(&config, "urn:anima:module:dev")),
        "not a Core URN",
    );
    run.assert_problem(
        &format!(
            "{}: module[2] (urn:anima:user:tally).urn",
            at(&config, "urn:anima:user:tally")
        ),
        "not a module URN",
    );
    run.assert_problem(
        &format!("{}: admin.operators[1]", at(&config, "operators")),
        "Dev",
    );
}

#[test]
fn duplicate_module_urns_are_refused() {
    let scratch = Scratch::new();
    let config = valid_with("urn:anima:module:tally", "urn:anima:module:hasher");
    let run = scratch.check(&config);
    let line = config
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("urn = \"urn:anima:module:hasher\""))
        .nth(1)
        .unwrap()
        .0
        + 1;
    run.assert_problem(
        &format!("anima.toml:{line}: module[2] (urn:anima:module:hasher).urn"),
        "duplicate: module[0]",
    );
}

#[test]
fn missing_files_are_named() {
    let scratch = Scratch::new();
    let config = valid_with("certs/dev/ca.pem", "certs/dev/no-ca.pem")
        .replacen("bin/anima-hasher", "bin/no-hasher", 1)
        .replacen(
            "certs/dev/module-kvstore.key",
            "certs/dev/no-kvstore.key",
            1,
        )
        .replacen("contracts/kvstore.toml", "contracts/no-kvstore.toml", 1);
    let run = scratch.check(&config);
    run.assert_problem(
        &format!("{}: core.ca", at(&config, "no-ca.pem")),
        "no such file",
    );
    run.assert_problem(
        &format!(
            "{}: module[0] (urn:anima:module:hasher).command",
            at(&config, "no-hasher")
        ),
        "no such file",
    );
    run.assert_problem(
        &format!(
            "{}: module[1] (urn:anima:module:kvstore).key",
            at(&config, "no-kvstore.key")
        ),
        "no such file",
    );
    run.assert_problem(
        &format!(
            "{}: module[1] (urn:anima:module:kvstore).contract",
            at(&config, "no-kvstore.toml")
        ),
        "no such file",
    );
    assert_eq!(run.problems().len(), 4);
}

#[test]
fn bare_commands_are_looked_up_on_path() {
    let scratch = Scratch::new();
    scratch.program("path-bin/anima-hasher");
    let path = scratch.path().join("path-bin");
    let config = valid_with("bin/anima-hasher", "anima-hasher");
    scratch.write("anima.toml", &config);
    scratch
        .anima_with_path(&["config", "check", "anima.toml"], &path)
        .assert_ok();

    let config = valid_with("bin/anima-hasher", "anima-no-such-program");
    scratch.write("anima.toml", &config);
    scratch
        .anima_with_path(&["config", "check", "anima.toml"], &path)
        .assert_problem(
            &format!(
                "{}: module[0] (urn:anima:module:hasher).command",
                at(&config, "anima-no-such")
            ),
            "on PATH",
        );
    assert!(!scratch.something_ran());
}

#[test]
fn certificates_must_carry_the_configured_urn() {
    let scratch = Scratch::new();
    let config = valid_with("certs/dev/core-dev.pem", "certs/dev/module-hasher.pem")
        .replacen("certs/dev/core-dev.key", "certs/dev/module-hasher.key", 1)
        .replacen(
            "certs/dev/module-kvstore.pem",
            "certs/dev/module-tally.pem",
            1,
        )
        .replacen(
            "certs/dev/module-kvstore.key",
            "certs/dev/module-tally.key",
            1,
        );
    let run = scratch.check(&config);
    run.assert_problem(
        &format!(
            "{}: core.cert",
            at(&config, "cert = \"certs/dev/module-hasher.pem\"")
        ),
        "is for urn:anima:module:hasher, not urn:anima:core:dev",
    );
    run.assert_problem(
        &format!(
            "{}: module[1] (urn:anima:module:kvstore).cert",
            at(&config, "module-tally.pem")
        ),
        "is for urn:anima:module:tally, not urn:anima:module:kvstore",
    );
}

#[test]
fn a_certificate_and_a_key_that_do_not_match_are_refused() {
    let scratch = Scratch::new();
    let config = valid_with("certs/dev/core-dev.key", "certs/dev/user-dev.key");
    let run = scratch.check(&config);
    run.assert_problem(
        &format!("{}: core.cert", at(&config, "core-dev.pem")),
        "cannot use this certificate and key",
    );
}

#[test]
fn both_command_and_endpoint_are_refused() {
    let scratch = Scratch::new();
    let config = valid_with(
        "endpoint = \"127.0.0.1:7801\"",
        "endpoint = \"127.0.0.1:7801\"\ncommand = \"bin/anima-hasher\"",
    );
    scratch.check(&config).assert_problem(
        &format!(
            "{}: module[2] (urn:anima:module:tally).endpoint",
            at(&config, "7801")
        ),
        "not both",
    );
}

#[test]
fn a_module_without_command_or_endpoint_points_at_its_entry() {
    let scratch = Scratch::new();
    let config = valid_with("endpoint = \"127.0.0.1:7801\"", "");
    let header = config
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == "[[module]]")
        .nth(2)
        .unwrap()
        .0
        + 1;
    scratch.check(&config).assert_problem(
        &format!("anima.toml:{header}: module[2] (urn:anima:module:tally): "),
        "needs either command",
    );
}

#[test]
fn command_needs_cert_and_key_and_endpoint_takes_neither() {
    let scratch = Scratch::new();
    let config = valid_with("key = \"certs/dev/module-hasher.key\"\n", "").replacen(
        "endpoint = \"127.0.0.1:7801\"",
        "endpoint = \"127.0.0.1:7801\"\ncert = \"certs/dev/module-tally.pem\"",
        1,
    );
    let run = scratch.check(&config);
    run.assert_problem(
        "anima.toml:",
        "module[0] (urn:anima:module:hasher).key: required with command",
    );
    run.assert_problem(
        &format!(
            "{}: module[2] (urn:anima:module:tally).cert",
            at(&config, "module-tally.pem")
        ),
        "only for a module the Core starts",
    );
}

#[test]
fn an_ephemeral_module_cannot_be_dialled() {
    let scratch = Scratch::new();
    let config = valid_with("type = \"resident-shared\"\n", "");
    let run = scratch.check(&config);
    run.assert_problem(
        &format!(
            "{}: module[2] (urn:anima:module:tally).endpoint",
            at(&config, "7801")
        ),
        "ephemeral (Type I) module is always started by its Core",
    );
}

#[test]
fn lease_ttls_above_the_contracts_max_lease_are_refused() {
    let scratch = Scratch::new();
    // The module's own TTL.
    let config = valid_with("lease_ttl = \"10s\"", "lease_ttl = \"45s\"");
    scratch.check(&config).assert_problem(
        &format!(
            "{}: module[0] (urn:anima:module:hasher).lease_ttl",
            at(&config, "45s")
        ),
        "45s is longer than the contract's max_lease 30s",
    );
    // The default, inherited by the kvstore.
    let config = valid_with("ttl = \"20s\"", "ttl = \"1m\"");
    scratch.check(&config).assert_problem(
        &format!(
            "{}: module[1] (urn:anima:module:kvstore).contract",
            at(&config, "contracts/kvstore.toml")
        ),
        "60s (from [leases].ttl) is longer than the contract's max_lease 30s",
    );
}

#[test]
fn a_contract_for_another_module_or_type_is_refused() {
    let scratch = Scratch::new();
    let config = valid_with("contracts/hasher.toml", "contracts/kvstore.toml");
    let run = scratch.check(&config);
    let location = format!(
        "{}: module[0] (urn:anima:module:hasher).contract",
        at(&config, "contract = \"contracts/kvstore.toml\"")
    );
    run.assert_problem(&location, "the contract is for urn:anima:module:kvstore");
    run.assert_problem(
        &location,
        "declares type resident-private (core-started), but this entry is ephemeral",
    );
    scratch.write(
        "contracts/broken.toml",
        "urn = \"urn:anima:module:hasher\"\n",
    );
    let config = valid_with("contracts/hasher.toml", "contracts/broken.toml");
    scratch.check(&config).assert_problem(
        &format!(
            "{}: module[0] (urn:anima:module:hasher).contract",
            at(&config, "broken")
        ),
        "invalid contract",
    );
}

#[test]
fn requires_must_name_a_module_here() {
    let scratch = Scratch::new();
    let config = valid_with("urn:anima:module:kvstore\"]", "urn:anima:module:kvstor\"]");
    scratch.check(&config).assert_problem(
        &format!(
            "{}: module[0] (urn:anima:module:hasher).requires[0]",
            at(&config, "requires")
        ),
        "no module urn:anima:module:kvstor in this configuration",
    );
}

#[test]
fn dependency_cycles_are_named() {
    let scratch = Scratch::new();
    let config = valid_with(
        "contract = \"contracts/kvstore.toml\"",
        "contract = \"contracts/kvstore.toml\"\nrequires = [\"urn:anima:module:tally\"]",
    )
    .replacen(
        "endpoint = \"127.0.0.1:7801\"",
        "endpoint = \"127.0.0.1:7801\"\nrequires = [\"urn:anima:module:hasher\"]",
        1,
    );
    let run = scratch.check(&config);
    run.assert_problem(
        &format!(
            "{}: module[0] (urn:anima:module:hasher).requires[0]",
            at(&config, "requires")
        ),
        "dependency cycle: urn:anima:module:hasher -> urn:anima:module:kvstore -> \
         urn:anima:module:tally -> urn:anima:module:hasher",
    );
    assert_eq!(run.problems().len(), 1);
}

#[test]
fn restart_numbers_and_renewal_out_of_range_are_refused() {
    let scratch = Scratch::new();
    let config = valid_with("backoff = \"100ms\"", "backoff = \"6s\"")
        .replacen("window = \"30s\"", "window = \"0s\"", 1)
        .replacen("max_restarts = 3", "max_restarts = -1", 1)
        .replacen("renew_when_left = 0.33", "renew_when_left = 0.99", 1);
    let run = scratch.check(&config);
    let kv = "module[1] (urn:anima:module:kvstore).restart";
    run.assert_problem(
        &format!("{}: {kv}.max_restarts", at(&config, "max_restarts")),
        "-1 is out of range",
    );
    run.assert_problem(
        &format!("{}: leases.renew_when_left", at(&config, "renew_when_left")),
        "0.99 is outside 0.05..0.95",
    );
    // The max_restarts problem keeps the entry from being built; the rest
    // are checked once it is fixed.
    let config = config.replacen("max_restarts = -1", "max_restarts = 3", 1);
    let run = scratch.check(&config);
    run.assert_problem(
        &format!("{}: {kv}.window", at(&config, "window")),
        "must be longer than zero",
    );
    run.assert_problem(
        &format!("{}: {kv}.backoff", at(&config, "backoff = ")),
        "6s is longer than backoff_max 5s",
    );
}

#[test]
fn several_problems_are_all_reported_in_file_order() {
    let scratch = Scratch::new();
    let config = valid_with(
        "urn = \"urn:anima:core:dev\"",
        "urn = \"urn:anima:core:Dev\"",
    )
    .replacen("listen = \"127.0.0.1:7700\"", "listen = \"localhost\"", 1)
    .replacen("ttl = \"20s\"", "ttl = \"20 seconds\"", 1)
    .replacen("args = [\"--verbose\"]", "args = \"--verbose\"", 1)
    .replacen("policy = \"always\"", "policy = \"sometimes\"", 1)
    .replacen(
        "endpoint = \"127.0.0.1:7801\"",
        "endpoint = \"127.0.0.1\"",
        1,
    );
    let run = scratch.check(&config);
    let problems = run.problems();
    let expected = [
        format!("{}: core.urn", at(&config, "core:Dev")),
        format!("{}: admin.listen", at(&config, "localhost")),
        format!("{}: leases.ttl", at(&config, "20 seconds")),
        format!(
            "{}: module[0] (urn:anima:module:hasher).args",
            at(&config, "args")
        ),
        format!(
            "{}: module[1] (urn:anima:module:kvstore).restart.policy",
            at(&config, "sometimes")
        ),
        format!(
            "{}: module[2] (urn:anima:module:tally).endpoint",
            at(&config, "endpoint")
        ),
    ];
    assert_eq!(problems.len(), expected.len(), "{}", run.stderr);
    for (problem, location) in problems.iter().zip(&expected) {
        assert!(
            problem.starts_with(location.as_str()),
            "{problem:?} should be at {location:?}"
        );
    }
    assert!(
        run.stderr.ends_with("error: 6 problems in anima.toml\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn core_cert_names_a_certificate_the_core_has() {
    let scratch = Scratch::new();
    // Not a known value.
    let config = valid_with(
        "endpoint = \"127.0.0.1:7801\"",
        "endpoint = \"127.0.0.1:7801\"\ncore_cert = \"p256\"",
    );
    scratch.check(&config).assert_problem(
        &format!(
            "{}: module[2] (urn:anima:module:tally).core_cert",
            at(&config, "core_cert")
        ),
        "\"p256\" is not \"default\" or \"endpoint\"",
    );
    // "endpoint" without [core] endpoint_cert.
    let config = valid_with(
        "endpoint = \"127.0.0.1:7801\"",
        "endpoint = \"127.0.0.1:7801\"\ncore_cert = \"endpoint\"",
    );
    scratch.check(&config).assert_problem(
        &format!(
            "{}: module[2] (urn:anima:module:tally).core_cert",
            at(&config, "core_cert")
        ),
        "needs [core] endpoint_cert",
    );
    // With the endpoint certificate configured, it is accepted.
    let config = valid_with(
        "audit_log = \"audit.jsonl\"",
        "audit_log = \"audit.jsonl\"\nendpoint_cert = \"certs/dev/core-dev.endpoint.pem\"\n\
         endpoint_key = \"certs/dev/core-dev.endpoint.key\"",
    )
    .replacen(
        "endpoint = \"127.0.0.1:7801\"",
        "endpoint = \"127.0.0.1:7801\"\ncore_cert = \"endpoint\"",
        1,
    );
    scratch.check(&config).assert_ok();
}

#[test]
fn the_reference_in_docs_is_the_generated_one() {
    let scratch = Scratch::new();
    let run = scratch.anima(&["config", "reference"]);
    run.assert_ok();
    assert_eq!(run.stderr, "");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    let committed = fs::read_to_string(&docs).expect("docs/config.md");
    assert!(
        committed == run.stdout,
        "docs/config.md differs from `anima config reference`; regenerate it with\n  \
         cargo run -p anima-core -- config reference > docs/config.md"
    );
    // Every key of the reference is in it, under its section.
    for key in [
        "| `urn` |",
        "| `renew_when_left` |",
        "| `backoff_max` |",
        "| `allow` |",
    ] {
        assert!(run.stdout.contains(key), "{key} missing");
    }
    assert!(run.stdout.contains("## `[module.restart]`"));
}

#[test]
fn unknown_keys_wrong_types_and_meanings_are_reported_in_one_run() {
    let scratch = Scratch::new();
    let config = valid_with("ttl = \"20s\"", "ttl = 20")
        .replacen("type = \"resident-private\"", "type = \"resident\"", 1)
        .replacen("max_restarts = 3", "max_restarts = 3\nmax_restart = 4", 1)
        .replacen("certs/dev/ca.pem", "certs/dev/no-ca.pem", 1)
        .replacen(
            "endpoint = \"127.0.0.1:7801\"",
            "endpoint = \"127.0.0.1:7801\"\ncore_cert = 1",
            1,
        );
    let run = scratch.check(&config);
    let problems = run.problems();
    let kv = "module[1] (urn:anima:module:kvstore)";
    let expected = [
        format!(
            "{}: core.ca: no such file: {}",
            at(&config, "no-ca.pem"),
            scratch.path().join("certs/dev/no-ca.pem").display()
        ),
        format!(
            "{}: leases.ttl: must be a string, not integer",
            at(&config, "ttl = 20")
        ),
        format!(
            "{}: {kv}.type: \"resident\" is not \"ephemeral\", \"resident-private\" or \
             \"resident-shared\"",
            at(&config, "\"resident\"")
        ),
        format!(
            "{}: {kv}.restart.max_restart: unknown key (expected one of: policy, max_restarts, \
             window, backoff, backoff_max)",
            at(&config, "max_restart =")
        ),
        format!(
            "{}: module[2] (urn:anima:module:tally).core_cert: must be \"default\" or \
             \"endpoint\", not integer",
            at(&config, "core_cert")
        ),
    ];
    assert_eq!(problems, expected, "{}", run.stderr);
}
