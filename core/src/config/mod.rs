//! The Core's configuration: `anima.toml`, read and checked before anything
//! starts.
//!
//! ```toml
//! [core]
//! urn = "urn:anima:core:dev"
//! cert = "certs/dev/core-dev.pem"       # paths are relative to this file
//! key = "certs/dev/core-dev.key"
//! ca = "certs/dev/ca.pem"
//!
//! [admin]
//! listen = "127.0.0.1:7700"
//! operators = ["urn:anima:user:dev"]
//!
//! [leases]
//! ttl = "30s"
//! renew_when_left = 0.33
//!
//! [[module]]
//! urn = "urn:anima:module:hasher"
//! command = "target/release/anima-hasher"   # or: endpoint = "127.0.0.1:7801"
//! cert = "certs/dev/module-hasher.pem"
//! key = "certs/dev/module-hasher.key"
//! contract = "sample-modules/hasher/module.toml"
//! # core_cert = "endpoint"  # dial it with [core] endpoint_cert (P-256, ES256
//! #                         # leases): for modules on grpcio/BoringSSL stacks
//! ```
//!
//! [`load`] reads a file, [`parse_str`] text; both check everything (known
//! keys of the right types, URNs of the right kind, files that exist,
//! certificates carrying the right URN, contracts agreeing with their
//! entries, no method declared by two modules (the gateway could route it to
//! neither), lease TTLs within `max_lease`, dependencies without cycles,
//! numbers in range) and return *every* [`Problem`], each with its line and
//! key. They read files but start nothing. [`embedded_default`] is what
//! `anima serve` runs without a file; [`check`] runs the same checks on a
//! configuration built in code. Every key, its type, default and meaning:
//! `docs/config.md`, which `anima config reference` prints.
//!
//! Inside: `raw` is the file's shape as serde reads it (unknown keys
//! refused, enums for closed vocabularies, spans kept for lines);
//! `reference` describes each of its keys once (a test keeps the two in
//! step); `parse` reads the text (every unknown key and wrong type, with what
//! the reference expects there); `resolve` turns raw values into the model
//! (`model`); `check` checks what the model means; `problem` formats
//! `FILE:LINE: key: message`.
//!
//! ```
//! use std::path::Path;
//! use anima_core::config;
//!
//! let problems = config::parse_str(
//!     r#"
//!     [core]
//!     urn = "urn:anima:module:oops"
//!     cert = "core.pem"
//!     key = "core.key"
//!     ca = "ca.pem"
//!     [leases]
//!     ttl = "30"
//!     "#,
//!     Path::new("/nowhere/anima.toml"),
//! )
//! .unwrap_err();
//! // Every problem, in file order, each with its line and key:
//! let locations: Vec<&str> = problems.iter().map(|p| p.location.as_str()).collect();
//! assert_eq!(locations, [
//!     "/nowhere/anima.toml:3: core.urn",  // not a Core URN
//!     "/nowhere/anima.toml:4: core.cert", // no such file
//!     "/nowhere/anima.toml:5: core.key",
//!     "/nowhere/anima.toml:6: core.ca",
//!     "/nowhere/anima.toml:8: leases.ttl", // no unit
//! ]);
//! assert_eq!(problems[4].message,
//!     "\"30\" has no unit (ms, s, m, h) (write a whole number and ms, s, m or h, like \"30s\")");
//! ```

use std::path::Path;

mod check;
mod default;
mod interfaces;
mod model;
mod parse;
mod problem;
mod raw;
mod reference;
mod resolve;

pub use check::start_order;
pub use default::embedded_default;
pub(crate) use interfaces::listed;
pub use model::{
    AdminSection, Backend, Config, CoreCert, CoreSection, DEFAULT_ACK_WAIT, DEFAULT_ADMIN_LISTEN,
    DEFAULT_AUDIT_LOG, DEFAULT_LEASE_TTL, DEFAULT_MAX_STORE_BYTES, DEFAULT_MESSAGE_STORE,
    DEFAULT_NATS_STREAM, DEFAULT_RENEW_WHEN_LEFT, LeaseDefaults, MAX_SYNC_INTERVAL,
    MAX_WORKER_THREADS, MediatorSection, MessageGrant, ModuleConfig, OperatorAccess, Permission,
    Policy, PolicyTarget, RENEW_WHEN_LEFT_RANGE, RestartMode, RestartPolicy, StartMode,
    default_restart_mode,
};
pub use problem::Problem;
pub(crate) use reference::markdown as reference_markdown;

use problem::Report;

/// Reads and checks the configuration file at `path`.
///
/// Relative paths in it are taken from the file's directory. On failure,
/// returns every problem found, in file order.
pub fn load(path: &Path) -> Result<Config, Vec<Problem>> {
    let text = read(path)?;
    parse_str(&text, path)
}

/// Reads what the operator commands need of the configuration file at
/// `path`: `[admin]` and `[core] ca`, relative paths taken from the file's
/// directory. The file must parse as for [`load`]; the rest of what
/// [`load`] checks (module certificates, contracts, commands) is `anima
/// serve`'s concern, so a module problem does not lock operators out.
pub fn operator_access(path: &Path) -> Result<OperatorAccess, Vec<Problem>> {
    let text = read(path)?;
    parse::operator_access(&text, path)
}

/// The text of the file at `path`, or the problem reading it.
fn read(path: &Path) -> Result<String, Vec<Problem>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![Problem {
            location: path.display().to_string(),
            message: format!("cannot read: {e}"),
        }]
    })
}

/// Parses and checks `text` as if read from `origin`: problems name `origin`,
/// and relative paths are taken from its directory.
pub fn parse_str(text: &str, origin: &Path) -> Result<Config, Vec<Problem>> {
    parse::parse(text, origin)
}

/// Runs the checks of [`load`] on a configuration built in code (such as the
/// [`embedded_default`]): files, certificates, contracts, dependencies,
/// ranges. Problems carry key paths but no lines.
pub fn check(config: &Config) -> Result<(), Vec<Problem>> {
    let origin = match &config.source {
        Some(path) => path.display().to_string(),
        None => "embedded default".to_owned(),
    };
    let mut report = Report::new(origin);
    check::core(&config.core, &mut report);
    check::admin(&config.admin, &mut report);
    check::leases(&config.leases, &mut report);
    for (index, module) in config.modules.iter().enumerate() {
        check::module(index, module, Some(&config.core), &mut report);
    }
    check::methods(config.modules.iter().enumerate(), &mut report);
    let nodes: Vec<check::Node<'_>> = config
        .modules
        .iter()
        .enumerate()
        .map(|(index, m)| check::Node {
            index,
            urn: &m.urn,
            before: check::Node::before(
                m.requires.iter().enumerate(),
                m.sidecars.iter().enumerate(),
            ),
        })
        .collect();
    check::graph(&nodes, &mut report);
    let entries: Vec<(usize, &ModuleConfig)> = config.modules.iter().enumerate().collect();
    interfaces::resolve(&entries, &mut report);
    interfaces::permissions(&entries, config.permissions.iter().enumerate(), &mut report);
    let first = config.permissions.len();
    let grants = config.messages.iter().map(|g| &g.module);
    interfaces::message_grants(&entries, (first..).zip(grants), &mut report);
    if report.is_clean() {
        Ok(())
    } else {
        Err(report.into_problems())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anima_certs::InitOptions;
    use anima_protocol::contract::{InitMode, ModuleType};

    use super::*;

    /// A directory with dev certificates in `certs/dev` and an executable
    /// `bin/module`.
    fn scratch() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        anima_certs::init_dir(&dir.path().join("certs/dev"), &InitOptions::default()).unwrap();
        let bin = dir.path().join("bin/module");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    const CORE: &str = r#"
        [core]
        urn = "urn:anima:core:dev"
        cert = "certs/dev/core-dev.pem"
        key = "certs/dev/core-dev.key"
        ca = "certs/dev/ca.pem"
    "#;

    fn messages(result: Result<Config, Vec<Problem>>) -> Vec<String> {
        result.unwrap_err().iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_minimal_file_takes_the_defaults_and_resolves_paths() {
        let dir = scratch();
        let text = format!(
            r#"{CORE}
            [[module]]
            urn = "urn:anima:module:hasher"
            command = "bin/module"
            args = ["-v"]
            env = {{ B = "2", A = "1" }}
            cert = "certs/dev/module-hasher.pem"
            key = "certs/dev/module-hasher.key"

            [[module]]
            urn = "urn:anima:module:kvstore"
            type = "resident-private"
            endpoint = "127.0.0.1:7802"
            lease_ttl = "5s"
            requires = ["urn:anima:module:hasher"]
            restart = {{ policy = "never", backoff = "1s" }}
            "#
        );
        let config = parse_str(&text, &dir.path().join("anima.toml")).unwrap();
        let certs = dir.path().join("certs/dev");
        assert_eq!(config.core.cert, certs.join("core-dev.pem"));
        assert_eq!(config.core.audit_log, None);
        assert_eq!(config.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert!(config.admin.operators.is_empty());
        assert_eq!(config.leases, LeaseDefaults::default());
        assert_eq!(
            config.source.as_deref(),
            Some(dir.path().join("anima.toml").as_path())
        );

        let hasher = &config.modules[0];
        assert_eq!(hasher.module_type, ModuleType::Ephemeral);
        assert_eq!(hasher.lease_ttl, DEFAULT_LEASE_TTL);
        // Type I: restarted (and leased) again whenever it exits.
        assert_eq!(
            hasher.restart,
            RestartPolicy::for_type(ModuleType::Ephemeral)
        );
        assert_eq!(hasher.restart.mode, RestartMode::Always);
        assert_eq!(
            hasher.start,
            StartMode::Command {
                program: dir.path().join("bin/module"),
                args: vec!["-v".into()],
                env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
                cert: certs.join("module-hasher.pem"),
                key: certs.join("module-hasher.key"),
            }
        );

        let kvstore = &config.modules[1];
        assert_eq!(
            kvstore.module_type,
            ModuleType::ResidentPrivate(InitMode::PreStarted)
        );
        assert_eq!(kvstore.start, StartMode::Endpoint("127.0.0.1:7802".into()));
        assert_eq!(kvstore.lease_ttl, Duration::from_secs(5));
        assert_eq!(kvstore.requires, std::slice::from_ref(&hasher.urn));
        assert_eq!(kvstore.restart.mode, RestartMode::Never);
        assert_eq!(kvstore.restart.backoff, Duration::from_secs(1));
        assert_eq!(
            kvstore.restart.backoff_max,
            RestartPolicy::default().backoff_max
        );
        assert_eq!(start_order(&config.modules), [0, 1]);
    }

    #[test]
    fn m5_permissions_of_messages_and_the_mediator_section_are_read() {
        let dir = scratch();
        let module = r#"
            [[module]]
            urn = "urn:anima:module:hasher"
            command = "bin/module"
            cert = "certs/dev/module-hasher.pem"
            key = "certs/dev/module-hasher.key"
            "#;
        let text = format!(
            r#"{CORE}
            [mediator]
            store = "state/messages.redb"
            max_store_bytes = 2097152
            ack_wait = "5s"
            sync_interval = "100ms"
            error_handler = "urn:anima:module:hasher"
            {module}
            [[permission]]
            module = "urn:anima:module:hasher"
            publish = ["LOG_MESSAGE", "ALERT"]

            [[permission]]
            module = "urn:anima:module:hasher"
            subscribe = ["LOG_MESSAGE"]
            category = "security"
            tags = ["prod"]
            "#
        );
        let config = parse_str(&text, &dir.path().join("anima.toml")).unwrap();
        assert!(config.permissions.is_empty());
        let logger: anima_protocol::Urn = "urn:anima:module:hasher".parse().unwrap();
        assert_eq!(
            config.messages,
            [
                MessageGrant {
                    module: logger.clone(),
                    publish: vec!["LOG_MESSAGE".into(), "ALERT".into()],
                    subscribe: Vec::new(),
                    category: None,
                    tags: Vec::new(),
                },
                MessageGrant {
                    module: logger,
                    publish: Vec::new(),
                    subscribe: vec!["LOG_MESSAGE".into()],
                    category: Some("security".into()),
                    tags: vec!["prod".into()],
                },
            ]
        );
        assert_eq!(
            config.mediator,
            MediatorSection {
                store: Some(dir.path().join("state/messages.redb")),
                max_store_bytes: 2 << 20,
                ack_wait: Duration::from_secs(5),
                sync_interval: Some(Duration::from_millis(100)),
                error_handler: Some("urn:anima:module:hasher".parse().unwrap()),
                backend: Backend::Embedded,
            }
        );
        let defaults = parse_str(&format!("{CORE}{module}"), &dir.path().join("a.toml")).unwrap();
        assert_eq!(defaults.mediator, MediatorSection::default());
        assert!(defaults.messages.is_empty());
    }

    #[test]
    fn m14_the_nats_backend_is_read_and_checked() {
        let dir = scratch();
        let file = dir.path().join("anima.toml");
        let read = |mediator: &str| parse_str(&format!("{CORE}\n[mediator]\n{mediator}"), &file);
        let nats = read("backend = \"nats\"\nnats_url = \"tls://127.0.0.1:4222\"").unwrap();
        assert_eq!(
            nats.mediator.backend,
            Backend::Nats {
                url: "tls://127.0.0.1:4222".into(),
                stream: DEFAULT_NATS_STREAM.into(),
            }
        );
        let named = read(
            "backend = \"nats\"\nnats_url = \"tls://nats.example:7422\"\nnats_stream = \"prod-1\"",
        );
        assert!(matches!(
            named.unwrap().mediator.backend,
            Backend::Nats { stream, .. } if stream == "prod-1"
        ));
        let at = file.display();
        for (mediator, problem) in [
            (
                "backend = \"nats\"",
                format!("{at}:9: mediator.backend: \"nats\" needs nats_url = \"tls://HOST:PORT\""),
            ),
            (
                "backend = \"nats\"\nnats_url = \"nats://127.0.0.1:4222\"",
                format!(
                    "{at}:10: mediator.nats_url: nats://127.0.0.1:4222 is not tls://HOST:PORT (the link to NATS is TLS)"
                ),
            ),
            (
                "backend = \"nats\"\nnats_url = \"tls://127.0.0.1\"",
                format!("{at}:10: mediator.nats_url: tls://127.0.0.1 is not tls://HOST:PORT"),
            ),
            (
                "backend = \"nats\"\nnats_url = \"tls://h:1\"\nnats_stream = \"a.b\"",
                format!(
                    "{at}:11: mediator.nats_stream: a.b is not 1 to 32 letters, digits, '_' or '-'"
                ),
            ),
            (
                "nats_url = \"tls://h:1\"",
                format!("{at}:9: mediator.nats_url: is read only with backend = \"nats\""),
            ),
            (
                "backend = \"nats\"\nnats_url = \"tls://h:1\"\nstore = \"m.redb\"",
                format!(
                    "{at}:11: mediator.store: is read only with backend = \"embedded\" (on NATS the server keeps the messages)"
                ),
            ),
            (
                "backend = \"nats\"\nnats_url = \"tls://h:1\"\nsync_interval = \"1s\"",
                format!(
                    "{at}:11: mediator.sync_interval: is read only with backend = \"embedded\" (on NATS the server keeps the messages)"
                ),
            ),
            (
                "sync_interval = \"0ms\"",
                format!("{at}:9: mediator.sync_interval: 0ns is not between 1ms and 60s"),
            ),
            (
                "sync_interval = \"2m\"",
                format!("{at}:9: mediator.sync_interval: 120s is not between 1ms and 60s"),
            ),
        ] {
            assert_eq!(messages(read(mediator)), [problem], "{mediator}");
        }
    }

    #[test]
    fn the_endpoint_certificate_beside_the_cores_is_taken_unless_one_is_named() {
        let dir = scratch();
        let file = dir.path().join("anima.toml");
        let certs = dir.path().join("certs/dev");
        // Unnamed: the pair anima certs init wrote beside core-dev.pem.
        let config = parse_str(CORE, &file).unwrap();
        assert_eq!(
            config.core.endpoint_cert,
            Some((
                certs.join("core-dev.endpoint.pem"),
                certs.join("core-dev.endpoint.key")
            ))
        );
        // Named: that one, checked like the Core's own.
        let named = format!(
            "{CORE}endpoint_cert = \"certs/dev/user-dev.pem\"\nendpoint_key = \"certs/dev/user-dev.key\"\n"
        );
        let problems = messages(parse_str(&named, &file));
        assert!(
            problems.iter().any(|p| p.contains("core.endpoint_cert")
                && p.contains("is for urn:anima:user:dev, not urn:anima:core:dev")),
            "{problems:?}"
        );
        // Half a pair beside it, or none: no endpoint certificate.
        std::fs::remove_file(certs.join("core-dev.endpoint.key")).unwrap();
        assert_eq!(parse_str(CORE, &file).unwrap().core.endpoint_cert, None);
    }

    #[test]
    fn paths_resolve_against_the_files_directory() {
        let dir = scratch();
        let text = r#"
            [core]
            urn = "urn:anima:core:dev"
            cert = "../core-dev.pem"
            key = "../core-dev.key"
            ca = "../ca.pem"
        "#;
        std::fs::create_dir(dir.path().join("certs/dev/sub")).unwrap();
        let config = parse_str(text, &dir.path().join("certs/dev/sub/anima.toml")).unwrap();
        assert_eq!(config.core.ca, dir.path().join("certs/dev/sub/../ca.pem"));
        // A file named without a directory: relative to the working
        // directory, made absolute.
        let absolute = CORE.replace(
            "certs/dev",
            &dir.path().join("certs/dev").display().to_string(),
        );
        let config = parse_str(&absolute, Path::new("anima.toml")).unwrap();
        assert!(config.core.cert.is_absolute());
    }

    #[test]
    fn wrong_types_and_shapes_are_each_reported() {
        let dir = scratch();
        let text = format!(
            r#"{CORE}
            [admin]
            operators = "urn:anima:user:dev"
            [leases]
            renew_when_left = "a third"
            [module]
            urn = "urn:anima:module:x"
            "#
        );
        let problems = messages(parse_str(&text, &dir.path().join("anima.toml")));
        assert_eq!(
            problems,
            [
                format!(
                    "{}:9: admin.operators: must be an array of strings, not string",
                    dir.path().join("anima.toml").display()
                ),
                format!(
                    "{}:11: leases.renew_when_left: must be a number, not string",
                    dir.path().join("anima.toml").display()
                ),
                format!(
                    "{}:12: module: modules are an array of tables: write [[module]], not [module]",
                    dir.path().join("anima.toml").display()
                ),
            ]
        );
    }

    #[test]
    fn a_missing_core_section_and_missing_keys_are_reported() {
        let problems = messages(parse_str("[admin]\n", Path::new("a.toml")));
        assert_eq!(problems, ["a.toml: core: missing (required)"]);
        let problems = messages(parse_str("\n[core]\nurn = 1\n", Path::new("a.toml")));
        assert_eq!(
            problems,
            [
                "a.toml:2: core.cert: missing (required)",
                "a.toml:2: core.key: missing (required)",
                "a.toml:2: core.ca: missing (required)",
                "a.toml:3: core.urn: must be a string, not integer",
            ]
        );
    }

    #[test]
    fn renew_when_left_takes_integers_and_floats_in_range_only() {
        let dir = scratch();
        let origin = dir.path().join("anima.toml");
        for (value, ok) in [
            ("0.05", true),
            ("0.95", true),
            ("0.5", true),
            ("0.04", false),
            ("1", false),
            ("nan", false),
            ("inf", false),
        ] {
            let text = format!("{CORE}\n[leases]\nrenew_when_left = {value}\n");
            assert_eq!(parse_str(&text, &origin).is_ok(), ok, "{value}");
        }
    }

    #[test]
    fn the_embedded_default_is_checked_like_a_file() {
        let dir = scratch();
        let config = embedded_default(dir.path());
        // The certificates are there; the sample programs (siblings of the
        // test binary) may not be built: only they can be missing.
        match check(&config) {
            Ok(()) => {}
            Err(problems) => {
                for p in &problems {
                    assert!(p.location.starts_with("embedded default: module["), "{p}");
                    assert!(p.location.ends_with(".command"), "{p}");
                }
            }
        }
        let empty = tempfile::tempdir().unwrap();
        let problems = check(&embedded_default(empty.path())).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.location == "embedded default: core.cert"),
            "{problems:?}"
        );
    }

    /// Writes `contracts/NAME.toml` for `urn:anima:module:NAME` with the
    /// `type` lines `more` and the `methods`; returns its path.
    fn write_contract(dir: &Path, name: &str, more: &str, methods: &[&str]) -> std::path::PathBuf {
        let path = dir.join(format!("contracts/{name}.toml"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let methods: Vec<String> = methods.iter().map(|m| format!("{m:?}")).collect();
        std::fs::write(
            &path,
            format!(
                "urn = \"urn:anima:module:{name}\"\nversion = \"1\"\n{more}\n\
                 methods = [{}]\nmax_lease = \"30s\"\n",
                methods.join(", ")
            ),
        )
        .unwrap();
        path
    }

    /// A scratch directory with the contract of module `name` (`more`
    /// lines, one method `/NAME.v1.S/Do`), and the contract's path.
    fn scratch_with_contract(name: &str, more: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = scratch();
        let contract = write_contract(dir.path(), name, more, &[&format!("/{name}.v1.S/Do")]);
        (dir, contract)
    }

    /// A `[[module]]` started with `bin/module` and its dev certificate
    /// (`hasher`, `kvstore` or `tally`), with the extra lines `more`.
    fn started(name: &str, more: &str) -> String {
        format!(
            "[[module]]\nurn = \"urn:anima:module:{name}\"\ncommand = \"bin/module\"\n\
             cert = \"certs/dev/module-{name}.pem\"\nkey = \"certs/dev/module-{name}.key\"\n{more}\n"
        )
    }

    #[test]
    fn the_restart_policy_defaults_by_module_type() {
        let (dir, contract) = scratch_with_contract("shared", "type = \"resident-shared\"");
        let shared = contract.display().to_string();
        let text = format!(
            "{CORE}\n{}{}{}{}{}[[module]]\nurn = \"urn:anima:module:shared\"\n\
             endpoint = \"127.0.0.1:7802\"\ncontract = {shared:?}\n",
            started("hasher", ""),
            started("kvstore", "restart = { backoff = \"1s\" }"),
            started("tally", "restart = { policy = \"on-failure\" }"),
            "[[module]]\nurn = \"urn:anima:module:four\"\ntype = \"resident-private\"\n\
             endpoint = \"127.0.0.1:7800\"\n",
            "[[module]]\nurn = \"urn:anima:module:five\"\ntype = \"resident-shared\"\n\
             endpoint = \"127.0.0.1:7801\"\n",
        );
        let config = parse_str(&text, &dir.path().join("anima.toml")).unwrap();
        let modes: Vec<RestartMode> = config.modules.iter().map(|m| m.restart.mode).collect();
        assert_eq!(
            modes,
            [
                RestartMode::Always,    // Type I: started again whenever its lease ends
                RestartMode::Always,    // other restart keys keep the type's policy
                RestartMode::OnFailure, // as written
                RestartMode::OnFailure, // Type II
                RestartMode::OnFailure, // Type III
                RestartMode::OnFailure, // Type III, the type taken from its contract
            ]
        );
        assert_eq!(config.modules[1].restart.backoff, Duration::from_secs(1));
        for m in &config.modules {
            assert_eq!(
                m.restart.max_restarts,
                RestartPolicy::default().max_restarts
            );
        }
        assert_eq!(
            default_restart_mode(ModuleType::Ephemeral),
            RestartMode::Always
        );
        assert_eq!(
            RestartPolicy::for_type(ModuleType::ResidentPrivate(InitMode::PreStarted)),
            RestartPolicy::default()
        );
        // The embedded default applies the same defaults.
        let default = embedded_default(dir.path());
        for m in &default.modules {
            assert_eq!(
                m.restart,
                RestartPolicy::for_type(m.module_type),
                "{}",
                m.urn
            );
        }
    }

    #[test]
    fn the_type_comes_from_the_contract_unless_written_the_same() {
        let kvstore = "type = \"resident-private\"\ninit = \"core-started\"";
        let (dir, contract) = scratch_with_contract("kvstore", kvstore);
        let origin = dir.path().join("anima.toml");
        let entry = |more: &str| {
            format!(
                "{CORE}\n{}",
                started(
                    "kvstore",
                    &format!("contract = {:?}\n{more}", contract.display().to_string())
                )
            )
        };
        for written in ["", "type = \"resident-private\""] {
            let config = parse_str(&entry(written), &origin).unwrap();
            assert_eq!(
                config.modules[0].module_type,
                ModuleType::ResidentPrivate(InitMode::CoreStarted),
                "{written:?}"
            );
        }
        let conflicting = entry("type = \"resident-shared\"");
        let line = conflicting
            .lines()
            .position(|l| l.contains("resident-shared"))
            .unwrap()
            + 1;
        let problems = messages(parse_str(&conflicting, &origin));
        assert_eq!(
            problems,
            [format!(
                "{}:{}: module[0] (urn:anima:module:kvstore).type: \"resident-shared\" here, but the \
                 contract {} declares type \"resident-private\": write the contract's type, or \
                 leave type out to take it from the contract",
                origin.display(),
                line,
                contract.display()
            )]
        );
    }

    #[test]
    fn two_modules_may_not_declare_the_same_method() {
        let dir = scratch();
        let probe = ["/anima.v1.Probe/Touch", "/anima.v1.Probe/Read"];
        let a = write_contract(
            dir.path(),
            "a",
            "",
            &["/x.v1.X/Do", "/x.v1.X/Undo", probe[0], probe[1]],
        );
        let b = write_contract(
            dir.path(),
            "b",
            "",
            &["/x.v1.X/Undo", "/x.v1.X/Do", probe[0]],
        );
        let c = write_contract(dir.path(), "c", "", &["/y.v1.Y/Do", probe[0], probe[1]]);
        // Two providers of one interface: alternatives, not a conflict.
        let provides = "provides = [{ interface = \"x.test/z\", version = \"1.0.0\" }]";
        let p = write_contract(dir.path(), "p", provides, &["/z.v1.Z/Do"]);
        let q = write_contract(dir.path(), "q", provides, &["/z.v1.Z/Do"]);
        let mut config = embedded_default(dir.path());
        config.modules.truncate(1);
        let template = config.modules[0].clone();
        config.modules.clear();
        for path in [&a, &b, &c, &p, &q] {
            let contract = anima_protocol::contract::Contract::from_file(path).unwrap();
            config.modules.push(ModuleConfig {
                urn: contract.urn.clone(),
                contract: Some(contract),
                contract_file: Some(path.clone()),
                ..template.clone()
            });
        }
        let problems = check(&config).unwrap_err();
        let methods: Vec<String> = problems
            .iter()
            .filter(|p| p.location.ends_with(".contract"))
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            methods,
            [
                "embedded default: module[1] (urn:anima:module:b).contract: declares /x.v1.X/Do, \
              /x.v1.X/Undo, which module[0] (urn:anima:module:a) declares too: the gateway routes \
              a method only when a single module declares it, so every call to them would fail \
              UNIMPLEMENTED (give each module its own service)"
            ]
        );
    }

    #[test]
    fn load_reports_an_unreadable_file() {
        let problems = load(Path::new("/nonexistent/anima.toml")).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].location, "/nonexistent/anima.toml");
        assert!(problems[0].message.starts_with("cannot read"));
    }
}
