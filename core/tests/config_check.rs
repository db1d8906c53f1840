//! `anima config check` end to end: the real binary, a scratch directory with
//! freshly minted dev certificates, and configuration files with one kind of
//! mistake each.

// The helpers below are outside `#[test]` functions, where clippy's
// allow-unwrap-in-tests does not reach; in a test binary a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

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

/// A contract for `urn:anima:module:NAME` declaring `method`, with
/// `max_lease = "30s"` and the lines `more` (its type).
fn contract(name: &str, more: &str, method: &str) -> String {
    format!(
        "urn = \"urn:anima:module:{name}\"\nversion = \"0.1.0\"\n{more}\
         methods = [\"{method}\"]\nmax_lease = \"30s\"\n"
    )
}

/// A directory with dev certificates (`certs/dev`), contracts for the hasher
/// and the kvstore and an invalid one (`contracts/`), and two fake module
/// programs (`bin/`) that leave a mark if anything ever runs them.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        anima_certs::init_dir(&dir.path().join("certs/dev"), &InitOptions::default()).unwrap();
        let scratch = Scratch { dir };
        let hasher = contract("hasher", "", "/anima.sample.v1.Hasher/Digest");
        scratch.write("contracts/hasher.toml", &hasher);
        let kvstore = contract(
            "kvstore",
            "type = \"resident-private\"\ninit = \"core-started\"\n",
            "/anima.sample.v1.KvStore/Get",
        );
        scratch.write("contracts/kvstore.toml", &kvstore);
        // The kvstore's contract, declaring the hasher's method as well.
        let taken = contract(
            "kvstore",
            "type = \"resident-private\"\ninit = \"core-started\"\n",
            "/anima.sample.v1.KvStore/Get\", \"/anima.sample.v1.Hasher/Digest",
        );
        scratch.write("contracts/kvstore-taken.toml", &taken);
        scratch.write(
            "contracts/broken.toml",
            "urn = \"urn:anima:module:hasher\"\n",
        );
        for name in ["anima-hasher", "anima-kvstore"] {
            scratch.program(&format!("bin/{name}"));
        }
        // The Core's certificate with no endpoint pair beside it.
        for file in ["core-dev.pem", "core-dev.key"] {
            let from = scratch.path().join("certs/dev").join(file);
            scratch.write(
                &format!("certs/alone/{file}"),
                &fs::read_to_string(from).unwrap(),
            );
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

    /// [`Scratch::check`] for the case `name`, which its failures name.
    fn check_as(&self, name: &str, config: &str) -> Run {
        Run {
            what: name.to_owned(),
            ..self.check(config)
        }
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
            what: format!("anima {}", args.join(" ")),
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

/// A problem `anima config check` must report: on the first line of the
/// configuration containing `.0`, at the key `.1`, its message mentioning
/// `.2`.
type Expected = (&'static str, &'static str, &'static str);

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    /// What ran (or which case), for the failure messages.
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_ok(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "{}: expected success\nstdout: {}\nstderr: {}",
            self.what,
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
            "{}: expected failure\nstdout: {}\nstderr: {}",
            self.what,
            self.stdout,
            self.stderr
        );
        let mut lines: Vec<&str> = self.stderr.lines().collect();
        let summary = lines.pop().expect("a summary line");
        let n = lines.len();
        let expected = format!("{n} problem{}", if n == 1 { "" } else { "s" });
        assert!(
            summary.starts_with("error: ") && summary.contains(&expected),
            "{}: summary {summary:?} should count {n} problems:\n{}",
            self.what,
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
            "{}: no problem at {location:?} mentioning {words:?} in:\n{}",
            self.what,
            self.stderr
        );
    }

    /// Asserts each of `expected` about the run's `config`.
    fn assert_problems(&self, config: &str, expected: &[Expected]) {
        for (near, key, words) in expected {
            self.assert_problem(&format!("{}: {key}", at(config, near)), words);
        }
    }
}

/// `anima.toml:LINE` for the first line of `text` containing `needle`.
fn at(text: &str, needle: &str) -> String {
    nth_at(text, needle, 0)
}

/// `anima.toml:LINE` for the `nth` line (from 0) of `text` containing
/// `needle`.
fn nth_at(text: &str, needle: &str, nth: usize) -> String {
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} not {} times in the config", nth + 1))
        .0;
    format!("anima.toml:{}", line + 1)
}

/// `VALID` with each `(from, to)` in turn: `from` (which must occur)
/// replaced once by `to`.
fn edited(edits: &[(&str, &str)]) -> String {
    edits.iter().fold(VALID.to_owned(), |text, (from, to)| {
        assert!(text.contains(from), "{from:?} not in the config");
        text.replacen(from, to, 1)
    })
}

/// A mistake made in [`VALID`], and what `anima config check` says of it.
struct Mistake {
    /// The case, named after what it shows (a failure names it).
    name: &'static str,
    /// The edits that make it, as [`edited`] applies them.
    edits: &'static [(&'static str, &'static str)],
    /// Problems that must be among those reported.
    expected: &'static [Expected],
    /// How many problems there are in all, where that is checked.
    count: Option<usize>,
}

/// Mistakes that are each reported at their line and key.
const MISTAKES: &[Mistake] = &[
    Mistake {
        name: "unknown_keys_name_their_line_and_the_known_ones",
        edits: &[
            (
                "backoff_max = \"5s\"",
                "backoff_max = \"5s\"\nbackof = \"1s\"",
            ),
            ("[admin]", "[admin]\nlisten_on = \"x\""),
            ("# A Core", "cores = 2\n# A Core"),
        ],
        expected: &[
            (
                "backof =",
                "module[1] (urn:anima:module:kvstore).restart.backof",
                "unknown key",
            ),
            ("listen_on", "admin.listen_on", "listen, operators"),
            ("cores", "cores", "unknown key"),
        ],
        count: Some(3),
    },
    Mistake {
        name: "invalid_urns_and_wrong_kinds_are_refused",
        edits: &[
            (
                "urn = \"urn:anima:core:dev\"",
                "urn = \"urn:anima:module:dev\"",
            ),
            (
                "urn = \"urn:anima:module:tally\"",
                "urn = \"urn:anima:user:tally\"",
            ),
            (
                "\"urn:anima:user:dev\"]",
                "\"urn:anima:user:dev\", \"urn:anima:user:Dev\"]",
            ),
        ],
        expected: &[
            ("urn:anima:module:dev", "core.urn", "not a Core URN"),
            (
                "urn:anima:user:tally",
                "module[2] (urn:anima:user:tally).urn",
                "not a module URN",
            ),
            ("operators", "admin.operators[1]", "Dev"),
        ],
        count: None,
    },
    Mistake {
        name: "missing_files_are_named",
        edits: &[
            ("certs/dev/ca.pem", "certs/dev/no-ca.pem"),
            ("bin/anima-hasher", "bin/no-hasher"),
            ("certs/dev/module-kvstore.key", "certs/dev/no-kvstore.key"),
            ("contracts/kvstore.toml", "contracts/no-kvstore.toml"),
        ],
        expected: &[
            ("no-ca.pem", "core.ca", "no such file"),
            (
                "no-hasher",
                "module[0] (urn:anima:module:hasher).command",
                "no such file",
            ),
            (
                "no-kvstore.key",
                "module[1] (urn:anima:module:kvstore).key",
                "no such file",
            ),
            (
                "no-kvstore.toml",
                "module[1] (urn:anima:module:kvstore).contract",
                "no such file",
            ),
        ],
        count: Some(4),
    },
    Mistake {
        name: "certificates_must_carry_the_configured_urn",
        edits: &[
            ("certs/dev/core-dev.pem", "certs/dev/module-hasher.pem"),
            ("certs/dev/core-dev.key", "certs/dev/module-hasher.key"),
            ("certs/dev/module-kvstore.pem", "certs/dev/module-tally.pem"),
            ("certs/dev/module-kvstore.key", "certs/dev/module-tally.key"),
        ],
        expected: &[
            (
                "cert = \"certs/dev/module-hasher.pem\"",
                "core.cert",
                "is for urn:anima:module:hasher, not urn:anima:core:dev",
            ),
            (
                "module-tally.pem",
                "module[1] (urn:anima:module:kvstore).cert",
                "is for urn:anima:module:tally, not urn:anima:module:kvstore",
            ),
        ],
        count: None,
    },
    Mistake {
        name: "a_certificate_and_a_key_that_do_not_match_are_refused",
        edits: &[("certs/dev/core-dev.key", "certs/dev/user-dev.key")],
        expected: &[(
            "core-dev.pem",
            "core.cert",
            "cannot use this certificate and key",
        )],
        count: None,
    },
    Mistake {
        name: "both_command_and_endpoint_are_refused",
        edits: &[(
            "endpoint = \"127.0.0.1:7801\"",
            "endpoint = \"127.0.0.1:7801\"\ncommand = \"bin/anima-hasher\"",
        )],
        expected: &[(
            "7801",
            "module[2] (urn:anima:module:tally).endpoint",
            "not both",
        )],
        count: None,
    },
    Mistake {
        name: "an_ephemeral_module_cannot_be_dialled",
        edits: &[("type = \"resident-shared\"\n", "")],
        expected: &[(
            "7801",
            "module[2] (urn:anima:module:tally).endpoint",
            "ephemeral (Type I) module is always started by its Core",
        )],
        count: None,
    },
    Mistake {
        name: "lease_ttls_above_the_contracts_max_lease_are_refused: the module's own TTL",
        edits: &[("lease_ttl = \"10s\"", "lease_ttl = \"45s\"")],
        expected: &[(
            "45s",
            "module[0] (urn:anima:module:hasher).lease_ttl",
            "45s is longer than the contract's max_lease 30s",
        )],
        count: None,
    },
    Mistake {
        name: "lease_ttls_above_the_contracts_max_lease_are_refused: the default, inherited",
        edits: &[("ttl = \"20s\"", "ttl = \"1m\"")],
        expected: &[(
            "contracts/kvstore.toml",
            "module[1] (urn:anima:module:kvstore).contract",
            "60s (from [leases].ttl) is longer than the contract's max_lease 30s",
        )],
        count: None,
    },
    Mistake {
        name: "a_contract_for_another_module_or_type_is_refused",
        edits: &[("contracts/hasher.toml", "contracts/kvstore.toml")],
        expected: &[
            (
                "contract = \"contracts/kvstore.toml\"",
                "module[0] (urn:anima:module:hasher).contract",
                "the contract is for urn:anima:module:kvstore",
            ),
            (
                "contract = \"contracts/kvstore.toml\"",
                "module[0] (urn:anima:module:hasher).contract",
                "declares type resident-private (core-started), but this entry is ephemeral",
            ),
        ],
        count: None,
    },
    Mistake {
        name: "two_modules_declaring_the_same_method_are_refused",
        edits: &[("contracts/kvstore.toml", "contracts/kvstore-taken.toml")],
        expected: &[(
            "kvstore-taken.toml",
            "module[1] (urn:anima:module:kvstore).contract",
            "declares /anima.sample.v1.Hasher/Digest, which module[0] (urn:anima:module:hasher) \
             declares too: the gateway routes a method only when a single module declares it, so \
             every call to it would fail UNIMPLEMENTED",
        )],
        count: Some(1),
    },
    Mistake {
        name: "a_type_its_contract_contradicts_is_refused_naming_both",
        edits: &[("type = \"resident-private\"", "type = \"ephemeral\"")],
        expected: &[
            (
                "\"ephemeral\"",
                "module[1] (urn:anima:module:kvstore).type",
                "\"ephemeral\" here, but the contract ",
            ),
            (
                "\"ephemeral\"",
                "module[1] (urn:anima:module:kvstore).type",
                "contracts/kvstore.toml declares type \"resident-private\": write the contract's \
             type, or leave type out to take it from the contract",
            ),
        ],
        count: Some(1),
    },
    Mistake {
        name: "a_contract_for_another_module_or_type_is_refused: an invalid contract",
        edits: &[("contracts/hasher.toml", "contracts/broken.toml")],
        expected: &[(
            "broken",
            "module[0] (urn:anima:module:hasher).contract",
            "invalid contract",
        )],
        count: None,
    },
    Mistake {
        name: "requires_must_name_a_module_here",
        edits: &[("urn:anima:module:kvstore\"]", "urn:anima:module:kvstor\"]")],
        expected: &[(
            "requires",
            "module[0] (urn:anima:module:hasher).requires[0]",
            "no module urn:anima:module:kvstor in this configuration",
        )],
        count: None,
    },
    Mistake {
        name: "dependency_cycles_are_named",
        edits: &[
            (
                "contract = \"contracts/kvstore.toml\"",
                "contract = \"contracts/kvstore.toml\"\nrequires = [\"urn:anima:module:tally\"]",
            ),
            (
                "endpoint = \"127.0.0.1:7801\"",
                "endpoint = \"127.0.0.1:7801\"\nrequires = [\"urn:anima:module:hasher\"]",
            ),
        ],
        expected: &[(
            "requires",
            "module[0] (urn:anima:module:hasher).requires[0]",
            "dependency cycle: urn:anima:module:hasher -> urn:anima:module:kvstore -> \
             urn:anima:module:tally -> urn:anima:module:hasher",
        )],
        count: Some(1),
    },
    Mistake {
        name: "restart_numbers_and_renewal_out_of_range_are_refused",
        edits: &[
            ("backoff = \"100ms\"", "backoff = \"6s\""),
            ("window = \"30s\"", "window = \"0s\""),
            ("max_restarts = 3", "max_restarts = -1"),
            ("renew_when_left = 0.33", "renew_when_left = 0.99"),
        ],
        expected: &[
            (
                "max_restarts",
                "module[1] (urn:anima:module:kvstore).restart.max_restarts",
                "-1 is out of range",
            ),
            (
                "renew_when_left",
                "leases.renew_when_left",
                "0.99 is outside 0.05..0.95",
            ),
        ],
        count: None,
    },
    // The max_restarts problem keeps the entry from being built; the rest
    // are checked once it is fixed.
    Mistake {
        name: "restart_numbers_and_renewal_out_of_range_are_refused: once max_restarts is fixed",
        edits: &[
            ("backoff = \"100ms\"", "backoff = \"6s\""),
            ("window = \"30s\"", "window = \"0s\""),
            ("renew_when_left = 0.33", "renew_when_left = 0.99"),
        ],
        expected: &[
            (
                "window",
                "module[1] (urn:anima:module:kvstore).restart.window",
                "must be longer than zero",
            ),
            (
                "backoff = ",
                "module[1] (urn:anima:module:kvstore).restart.backoff",
                "6s is longer than backoff_max 5s",
            ),
        ],
        count: None,
    },
    Mistake {
        name: "core_cert_names_a_certificate_the_core_has: not a known value",
        edits: &[(
            "endpoint = \"127.0.0.1:7801\"",
            "endpoint = \"127.0.0.1:7801\"\ncore_cert = \"p256\"",
        )],
        expected: &[(
            "core_cert",
            "module[2] (urn:anima:module:tally).core_cert",
            "\"p256\" is not \"default\" or \"endpoint\"",
        )],
        count: None,
    },
    Mistake {
        name: "core_cert_names_a_certificate_the_core_has: \"endpoint\" without [core] endpoint_cert \
               (named, or beside [core] cert)",
        edits: &[
            (
                "endpoint = \"127.0.0.1:7801\"",
                "endpoint = \"127.0.0.1:7801\"\ncore_cert = \"endpoint\"",
            ),
            ("certs/dev/core-dev.pem", "certs/alone/core-dev.pem"),
            ("certs/dev/core-dev.key", "certs/alone/core-dev.key"),
        ],
        expected: &[(
            "core_cert",
            "module[2] (urn:anima:module:tally).core_cert",
            "needs [core] endpoint_cert",
        )],
        count: None,
    },
    Mistake {
        name: "p7_a_policy_for_a_module_points_to_permission",
        edits: &[(
            "endpoint = \"127.0.0.1:7801\"",
            "endpoint = \"127.0.0.1:7801\"\n\n[[policy]]\nuser = \"urn:anima:module:hasher\"\n\
             allow = [\"urn:anima:module:kvstore\"]",
        )],
        expected: &[(
            "user = \"urn:anima:module:hasher\"",
            "policy[0].user",
            "urn:anima:module:hasher is a module: [[policy]] is for users calling through the \
             gateway; grant a module's calls with [[permission]] (module, interface, provider)",
        )],
        count: Some(1),
    },
    Mistake {
        name: "p7_a_permission_names_modules_here_that_require_and_provide_its_interface",
        edits: &[(
            "endpoint = \"127.0.0.1:7801\"",
            "endpoint = \"127.0.0.1:7801\"\n\n[[permission]]\nmodule = \"urn:anima:module:nobody\"\n\
             interface = \"anima.sample/kv\"\nprovider = \"urn:anima:module:kvstore\"\n\n\
             [[permission]]\nmodule = \"urn:anima:module:hasher\"\ninterface = \"Not An Interface\"\n\n\
             [[permission]]\nmodule = \"urn:anima:module:hasher\"\ninterface = \"anima.sample/kv\"\n\
             provider = \"urn:anima:user:dev\"\n\n\
             [[permission]]\nmodule = \"urn:anima:module:hasher\"\n\
             interface = \"anima.sample/kv\" # unrequired",
        )],
        expected: &[
            (
                "module = \"urn:anima:module:nobody\"",
                "permission[0].module",
                "urn:anima:module:nobody is not a [[module]] of this Core",
            ),
            (
                "provider = \"urn:anima:module:kvstore\"",
                "permission[0].provider",
                "urn:anima:module:kvstore does not provide anima.sample/kv (its contract's \
                 provides: none)",
            ),
            (
                "interface = \"Not An Interface\"",
                "permission[1].interface",
                "Not An Interface",
            ),
            (
                "provider = \"urn:anima:user:dev\"",
                "permission[2].provider",
                "urn:anima:user:dev is not a module URN",
            ),
            (
                "# unrequired",
                "permission[3].interface",
                "urn:anima:module:hasher does not require anima.sample/kv (its contract's \
                 requires: none); add it there",
            ),
        ],
        count: Some(5),
    },
    Mistake {
        name: "m5_a_permission_of_messages_names_event_types_and_a_module_here",
        edits: &[(
            "endpoint = \"127.0.0.1:7801\"",
            "endpoint = \"127.0.0.1:7801\"\n\n[[permission]]\nmodule = \"urn:anima:module:nobody\"\n\
             publish = [\"LOG_MESSAGE\"]\n\n\
             [[permission]]\nmodule = \"urn:anima:module:hasher\"\nsubscribe = [\"log message\"]\n\n\
             [[permission]]\nmodule = \"urn:anima:module:hasher\"\npublish = [\"A\"]\n\
             interface = \"anima.sample/kv\" # both\n\n\
             [[permission]]\nmodule = \"urn:anima:module:hasher\"\npublish = [\"A\"]\n\
             category = \"x\" # nothing subscribed\n\n\
             [mediator]\nack_wait = \"1ms\"\nmax_store_bytes = 5",
        )],
        expected: &[
            (
                "module = \"urn:anima:module:nobody\"",
                "permission[0].module",
                "urn:anima:module:nobody is not a [[module]] of this Core",
            ),
            (
                "subscribe = [\"log message\"]",
                "permission[1].subscribe",
                "\"log message\" is not an event type (UPPER_SNAKE_CASE, at most 128 bytes)",
            ),
            (
                "# both",
                "permission[2].interface",
                "one [[permission]] grants either calls (interface, provider) or messages \
                 (publish, subscribe); write two entries",
            ),
            (
                "# nothing subscribed",
                "permission[3].category",
                "filters what a `subscribe` permission receives; this entry subscribes to nothing",
            ),
            (
                "ack_wait = \"1ms\"",
                "mediator.ack_wait",
                "1ms is shorter than 100ms",
            ),
            (
                "max_store_bytes = 5",
                "mediator.max_store_bytes",
                "5 is below the smallest store, 1048576 bytes",
            ),
        ],
        count: Some(6),
    },
    Mistake {
        name: "worker_threads_out_of_range_is_refused",
        edits: &[(
            "audit_log = \"audit.jsonl\"",
            "audit_log = \"audit.jsonl\"\nworker_threads = 0",
        )],
        expected: &[(
            "worker_threads",
            "core.worker_threads",
            "0 is out of range (1 to 1024)",
        )],
        count: Some(1),
    },
    Mistake {
        name: "m10_the_error_handler_is_a_module_here",
        edits: &[(
            "endpoint = \"127.0.0.1:7801\"",
            "endpoint = \"127.0.0.1:7801\"\n\n[mediator]\nerror_handler = \"urn:anima:module:nobody\"",
        )],
        expected: &[(
            "error_handler = ",
            "mediator.error_handler",
            "urn:anima:module:nobody is not a [[module]] of this Core",
        )],
        count: Some(1),
    },
];

#[test]
fn each_mistake_is_reported_at_its_line_and_key() {
    let scratch = Scratch::new();
    for mistake in MISTAKES {
        let config = edited(mistake.edits);
        let run = scratch.check_as(mistake.name, &config);
        run.assert_problems(&config, mistake.expected);
        if let Some(count) = mistake.count {
            assert_eq!(run.problems().len(), count, "{}", mistake.name);
        }
    }
}

#[test]
fn worker_threads_sets_how_many_threads_run_the_core() {
    let scratch = Scratch::new();
    let origin = &scratch.path().join("anima.toml");
    let one = edited(&[(
        "audit_log = \"audit.jsonl\"",
        "audit_log = \"audit.jsonl\"\nworker_threads = 1",
    )]);
    let config = anima_core::config::parse_str(&one, origin).expect("a valid file");
    assert_eq!(config.core.worker_threads, Some(1));
    let unset = anima_core::config::parse_str(&edited(&[]), origin).expect("a valid file");
    assert_eq!(unset.core.worker_threads, None, "unset: one per CPU");
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

/// `type` may be left out when the contract says it (and a `type` that
/// says the same is accepted: [`VALID`]).
#[test]
fn the_type_is_taken_from_the_contract() {
    let scratch = Scratch::new();
    let config = edited(&[("type = \"resident-private\"\n", "")]);
    scratch.check(&config).assert_ok();
}

/// Every module may declare the conformance probe (PROTOCOL.md §8): only
/// its own methods must be its alone.
#[test]
fn the_conformance_probe_may_be_declared_by_several_modules() {
    let scratch = Scratch::new();
    let probe = "/anima.v1.Probe/Touch\", \"/anima.v1.Probe/Read";
    let hasher = contract(
        "hasher",
        "",
        &format!("/anima.sample.v1.Hasher/Digest\", \"{probe}"),
    );
    scratch.write("contracts/hasher.toml", &hasher);
    let kvstore = contract(
        "kvstore",
        "type = \"resident-private\"\ninit = \"core-started\"\n",
        &format!("/anima.sample.v1.KvStore/Get\", \"{probe}"),
    );
    scratch.write("contracts/kvstore.toml", &kvstore);
    scratch.check(VALID).assert_ok();
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
    let config = edited(&[("ttl = \"20s\"", "ttl = \"20s")]);
    let run = scratch.check(&config);
    run.assert_problem(&at(&config, "ttl = \"20s"), "string");
}

#[test]
fn bare_commands_are_looked_up_on_path() {
    let scratch = Scratch::new();
    scratch.program("path-bin/anima-hasher");
    let path = scratch.path().join("path-bin");
    let config = edited(&[("bin/anima-hasher", "anima-hasher")]);
    scratch.write("anima.toml", &config);
    scratch
        .anima_with_path(&["config", "check", "anima.toml"], &path)
        .assert_ok();

    let config = edited(&[("bin/anima-hasher", "anima-no-such-program")]);
    scratch.write("anima.toml", &config);
    scratch
        .anima_with_path(&["config", "check", "anima.toml"], &path)
        .assert_problems(
            &config,
            &[(
                "anima-no-such",
                "module[0] (urn:anima:module:hasher).command",
                "on PATH",
            )],
        );
    assert!(!scratch.something_ran());
}

/// Problems on a line whose text the file has more than once: at the
/// `nth` (from 0) line with that text.
#[test]
fn problems_on_a_repeated_line_are_at_the_right_one() {
    let scratch = Scratch::new();
    let cases = [
        (
            "duplicate_module_urns_are_refused",
            ("urn:anima:module:tally", "urn:anima:module:hasher"),
            ("urn = \"urn:anima:module:hasher\"", 1),
            "module[2] (urn:anima:module:hasher).urn",
            "duplicate: module[0]",
        ),
        (
            "a_module_without_command_or_endpoint_points_at_its_entry",
            ("endpoint = \"127.0.0.1:7801\"", ""),
            ("[[module]]", 2),
            "module[2] (urn:anima:module:tally): ",
            "needs either command",
        ),
    ];
    for (name, edit, (text, nth), key, words) in cases {
        let config = edited(&[edit]);
        let location = format!("{}: {key}", nth_at(&config, text, nth));
        scratch
            .check_as(name, &config)
            .assert_problem(&location, words);
    }
}

#[test]
fn command_needs_cert_and_key_and_endpoint_takes_neither() {
    let scratch = Scratch::new();
    let config = edited(&[
        ("key = \"certs/dev/module-hasher.key\"\n", ""),
        (
            "endpoint = \"127.0.0.1:7801\"",
            "endpoint = \"127.0.0.1:7801\"\ncert = \"certs/dev/module-tally.pem\"",
        ),
    ]);
    let run = scratch.check(&config);
    run.assert_problem(
        "anima.toml:",
        "module[0] (urn:anima:module:hasher).key: required with command",
    );
    run.assert_problems(
        &config,
        &[(
            "module-tally.pem",
            "module[2] (urn:anima:module:tally).cert",
            "only for a module the Core starts",
        )],
    );
}

/// With the endpoint certificate configured, `core_cert = "endpoint"` is
/// accepted ([`MISTAKES`] has the values refused).
#[test]
fn core_cert_names_a_certificate_the_core_has() {
    let scratch = Scratch::new();
    let config = edited(&[
        (
            "audit_log = \"audit.jsonl\"",
            "audit_log = \"audit.jsonl\"\nendpoint_cert = \"certs/dev/core-dev.endpoint.pem\"\n\
             endpoint_key = \"certs/dev/core-dev.endpoint.key\"",
        ),
        (
            "endpoint = \"127.0.0.1:7801\"",
            "endpoint = \"127.0.0.1:7801\"\ncore_cert = \"endpoint\"",
        ),
    ]);
    scratch.check(&config).assert_ok();
}

#[test]
fn several_problems_are_all_reported_in_file_order() {
    let scratch = Scratch::new();
    let config = edited(&[
        (
            "urn = \"urn:anima:core:dev\"",
            "urn = \"urn:anima:core:Dev\"",
        ),
        ("listen = \"127.0.0.1:7700\"", "listen = \"localhost\""),
        ("ttl = \"20s\"", "ttl = \"20 seconds\""),
        ("args = [\"--verbose\"]", "args = \"--verbose\""),
        ("policy = \"always\"", "policy = \"sometimes\""),
        ("endpoint = \"127.0.0.1:7801\"", "endpoint = \"127.0.0.1\""),
    ]);
    let run = scratch.check(&config);
    let problems = run.problems();
    let expected = [
        ("core:Dev", "core.urn"),
        ("localhost", "admin.listen"),
        ("20 seconds", "leases.ttl"),
        ("args", "module[0] (urn:anima:module:hasher).args"),
        (
            "sometimes",
            "module[1] (urn:anima:module:kvstore).restart.policy",
        ),
        ("endpoint", "module[2] (urn:anima:module:tally).endpoint"),
    ]
    .map(|(near, key)| format!("{}: {key}", at(&config, near)));
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
    let config = edited(&[
        ("ttl = \"20s\"", "ttl = 20"),
        ("type = \"resident-private\"", "type = \"resident\""),
        ("max_restarts = 3", "max_restarts = 3\nmax_restart = 4"),
        ("certs/dev/ca.pem", "certs/dev/no-ca.pem"),
        (
            "endpoint = \"127.0.0.1:7801\"",
            "endpoint = \"127.0.0.1:7801\"\ncore_cert = 1",
        ),
    ]);
    let run = scratch.check(&config);
    let no_ca = scratch.path().join("certs/dev/no-ca.pem");
    let no_ca = format!("core.ca: no such file: {}", no_ca.display());
    let expected = [
        ("no-ca.pem", no_ca.as_str()),
        ("ttl = 20", "leases.ttl: must be a string, not integer"),
        (
            "\"resident\"",
            "module[1] (urn:anima:module:kvstore).type: \"resident\" is not \"ephemeral\", \
             \"resident-private\" or \"resident-shared\"",
        ),
        (
            "max_restart =",
            "module[1] (urn:anima:module:kvstore).restart.max_restart: unknown key (expected \
             one of: policy, max_restarts, window, backoff, backoff_max)",
        ),
        (
            "core_cert",
            "module[2] (urn:anima:module:tally).core_cert: must be \"default\" or \
             \"endpoint\", not integer",
        ),
    ]
    .map(|(near, problem)| format!("{}: {problem}", at(&config, near)));
    assert_eq!(run.problems(), expected, "{}", run.stderr);
}

#[test]
fn the_operator_certificate_is_checked_like_the_cores() {
    let scratch = Scratch::new();
    let operator = "operators = [\"urn:anima:user:dev\"]";
    // Given, usable and one of the operators: fine.
    let config = edited(&[(
        operator,
        "operators = [\"urn:anima:user:dev\"]\noperator_cert = \"certs/dev/user-dev.pem\"\n\
         operator_key = \"certs/dev/user-dev.key\"",
    )]);
    scratch.check(&config).assert_ok();
    // A certificate without its key.
    let config = edited(&[(
        operator,
        "operators = [\"urn:anima:user:dev\"]\noperator_cert = \"certs/dev/user-dev.pem\"",
    )]);
    scratch
        .check(&config)
        .assert_problem("anima.toml", "operator_cert and operator_key go together");
    // A certificate the Core would refuse on its admin API.
    let config = edited(&[(
        operator,
        "operators = [\"urn:anima:user:dev\"]\noperator_cert = \"certs/dev/module-hasher.pem\"\n\
         operator_key = \"certs/dev/module-hasher.key\"",
    )]);
    let run = scratch.check(&config);
    run.assert_problem(
        &format!("{}: admin.operator_cert", at(&config, "operator_cert")),
        "is for urn:anima:module:hasher, which admin.operators does not list",
    );
    // A missing file, at its key.
    let config = edited(&[(
        operator,
        "operators = [\"urn:anima:user:dev\"]\noperator_cert = \"certs/dev/nobody.pem\"\n\
         operator_key = \"certs/dev/user-dev.key\"",
    )]);
    scratch
        .check(&config)
        .assert_problem("anima.toml", "admin.operator_cert: no such file");
}
