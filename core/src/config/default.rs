//! The configuration `anima serve` runs with when given no file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anima_certs::{
    CA_CERT_FILE, DEFAULT_DIR, endpoint_cert_file, endpoint_key_file, leaf_cert_file, leaf_key_file,
};
use anima_protocol::contract::{InitMode, ModuleType};
use anima_protocol::{Urn, UrnKind};

use super::model::{
    AdminSection, Config, CoreCert, CoreSection, DEFAULT_LEASE_TTL, LeaseDefaults, MediatorSection,
    MessageGrant, ModuleConfig, Permission, Policy, PolicyTarget, RestartPolicy, StartMode,
    default_admin_listen,
};

/// The ratelimit sample's variable for calls a second per caller, and the
/// rate the embedded default gives it.
const RATE_ENV: &str = "RATELIMIT_PER_SECOND";
const DEFAULT_RATE: &str = "5000";

/// The interface the kvstore sample provides and the notes sample requires.
const KV_INTERFACE: &str = "anima.sample/kv";

/// The development setup: Core `urn:anima:core:dev` with the certificates
/// `anima certs init` writes to `base/certs/dev/`, the admin endpoint on
/// [`DEFAULT_ADMIN_LISTEN`](super::DEFAULT_ADMIN_LISTEN) for
/// `urn:anima:user:dev`, 30 s leases renewed with a third left, and the
/// sample modules, each started by the Core from the directory of the running
/// executable: `anima-ratelimit` (resident private, core-started: the proxy
/// sidecar of the hasher), `anima-hasher` (ephemeral), `anima-kvstore` (resident private,
/// core-started), `anima-tally` (resident shared) and `anima-notes`
/// (resident private, core-started; it requires the kv interface and may
/// call it), and the memory check workflow's `anima-orchestrator`,
/// `anima-scripts` and `anima-logger` (resident private, core-started),
/// with the message grants between them (the orchestrator sends
/// `EXECUTE_SCRIPT`, the script executor receives it, both log `LOG_MESSAGE`
/// for the logger). No contract files (the Core learns what each module provides
/// and requires from it); each the default restart policy of its type
/// ([`RestartPolicy::for_type`]: the ephemeral hasher restarts `always`, as a
/// Type I module exits whenever its lease ends; the others `on-failure`).
///
/// Nothing is read here; [`check`](super::check) tells whether the files exist.
pub fn embedded_default(base: &Path) -> Config {
    let certs = base.join(DEFAULT_DIR);
    let core = dev_urn(UrnKind::Core, "dev");
    Config {
        core: CoreSection {
            cert: certs.join(leaf_cert_file(&core)),
            key: certs.join(leaf_key_file(&core)),
            ca: certs.join(CA_CERT_FILE),
            endpoint_cert: Some((
                certs.join(endpoint_cert_file(&core)),
                certs.join(endpoint_key_file(&core)),
            )),
            urn: core,
            audit_log: None,
            // The samples' interface definitions, when run from a checkout.
            interfaces: Some(PathBuf::from("interfaces")).filter(|d| d.is_dir()),
            worker_threads: None,
        },
        admin: AdminSection {
            listen: default_admin_listen(),
            operators: vec![dev_urn(UrnKind::User, "dev")],
            operator_cert: None,
        },
        leases: LeaseDefaults {
            ttl: Duration::from_secs(30),
            renew_when_left: 1.0 / 3.0,
        },
        modules: dev_modules(&certs),
        policies: dev_policies(),
        // notes keeps its notes in kv, through the Core.
        permissions: vec![Permission {
            module: dev_urn(UrnKind::Module, "notes"),
            interface: kv_interface(),
            provider: None,
        }],
        messages: workflow_grants(),
        mediator: MediatorSection::default(),
        source: None,
    }
}

/// The sample modules, each started by the Core with its dev certificate
/// from `certs`. The start order puts each sidecar before its module.
fn dev_modules(certs: &Path) -> Vec<ModuleConfig> {
    let module = |name: &str, module_type: ModuleType| {
        let urn = dev_urn(UrnKind::Module, name);
        ModuleConfig {
            start: StartMode::Command {
                program: sibling_program(&format!("anima-{name}")),
                args: Vec::new(),
                env: Vec::new(),
                cert: certs.join(leaf_cert_file(&urn)),
                key: certs.join(leaf_key_file(&urn)),
            },
            urn,
            module_type,
            contract: None,
            contract_file: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            restart: RestartPolicy::for_type(module_type),
            requires: Vec::new(),
            sidecars: Vec::new(),
            core_cert: CoreCert::Default,
        }
    };
    let resident = ModuleType::ResidentPrivate(InitMode::CoreStarted);
    // The rate-limiting, logging sidecar stands in front of the hasher, at
    // a rate no demo or soak reaches (its own default is 100 a second).
    let hasher = ModuleConfig {
        sidecars: vec![dev_urn(UrnKind::Module, "ratelimit")],
        ..module("hasher", ModuleType::Ephemeral)
    };
    let mut ratelimit = module("ratelimit", resident);
    if let StartMode::Command { env, .. } = &mut ratelimit.start {
        env.push((RATE_ENV.to_owned(), DEFAULT_RATE.to_owned()));
    }
    vec![
        hasher,
        module("kvstore", resident),
        module("tally", ModuleType::ResidentShared),
        module("notes", resident),
        ratelimit,
        module("logger", resident),
        module("scripts", resident),
        module("orchestrator", resident),
    ]
}

/// The memory check workflow's runtime messages (PROTOCOL.md §13): the
/// orchestrator sends `EXECUTE_SCRIPT` requests, which the script executor
/// receives (its `SCRIPT_EXECUTED` replies need no grant); both log
/// `LOG_MESSAGE` lines, which the logger receives.
fn workflow_grants() -> Vec<MessageGrant> {
    let grant = |name: &str, publish: &[&str], subscribe: &[&str]| MessageGrant {
        module: dev_urn(UrnKind::Module, name),
        publish: publish.iter().map(|&t| t.to_owned()).collect(),
        subscribe: subscribe.iter().map(|&t| t.to_owned()).collect(),
        category: None,
        tags: Vec::new(),
    };
    vec![
        grant("orchestrator", &["EXECUTE_SCRIPT", "LOG_MESSAGE"], &[]),
        grant("scripts", &["LOG_MESSAGE"], &["EXECUTE_SCRIPT"]),
        grant("logger", &[], &["LOG_MESSAGE"]),
    ]
}

/// The dev user may call every sample module that serves calls through the
/// gateway (the script executor serves none).
fn dev_policies() -> Vec<Policy> {
    vec![Policy {
        user: dev_urn(UrnKind::User, "dev"),
        allow: [
            "hasher",
            "kvstore",
            "tally",
            "notes",
            "logger",
            "orchestrator",
        ]
        .into_iter()
        .map(|m| PolicyTarget::Module(dev_urn(UrnKind::Module, m)))
        .collect(),
    }]
}

/// `name` next to the running executable, or the bare name (found on `PATH`
/// at spawn) when the executable's place is unknown.
fn sibling_program(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A URN from constant parts.
fn dev_urn(kind: UrnKind, name: &str) -> Urn {
    // Invariant: called only with the constant names above, which are valid
    // (the test below builds every one).
    #[allow(clippy::expect_used)]
    Urn::new(kind, name).expect("constant dev URN names are valid")
}

fn kv_interface() -> anima_protocol::interface::InterfaceName {
    // Invariant: a constant, valid name (the test below builds it).
    #[allow(clippy::expect_used)]
    KV_INTERFACE
        .parse()
        .expect("the constant kv interface name is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_ADMIN_LISTEN;

    #[test]
    fn the_default_names_the_dev_identities_and_files() {
        let config = embedded_default(Path::new("/srv/anima"));
        assert_eq!(config.core.urn.as_str(), "urn:anima:core:dev");
        assert_eq!(
            config.core.cert,
            Path::new("/srv/anima/certs/dev/core-dev.pem")
        );
        assert_eq!(
            config.core.key,
            Path::new("/srv/anima/certs/dev/core-dev.key")
        );
        assert_eq!(config.core.ca, Path::new("/srv/anima/certs/dev/ca.pem"));
        assert_eq!(config.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(config.admin.operators[0].as_str(), "urn:anima:user:dev");
        assert_eq!(config.leases, LeaseDefaults::default());
        assert_eq!(config.source, None);
        let names: Vec<&str> = config.modules.iter().map(|m| m.urn.name()).collect();
        assert_eq!(
            names,
            [
                "hasher",
                "kvstore",
                "tally",
                "notes",
                "ratelimit",
                "logger",
                "scripts",
                "orchestrator"
            ]
        );
        assert_eq!(config.modules[0].sidecars, [config.modules[4].urn.clone()]);
        let order: Vec<&str> = crate::config::start_order(&config.modules)
            .into_iter()
            .map(|i| config.modules[i].urn.name())
            .collect();
        let position = |name| order.iter().position(|n| *n == name);
        assert!(position("ratelimit") < position("hasher"), "{order:?}");
        assert_eq!(config.permissions.len(), 1);
        assert_eq!(config.permissions[0].module.name(), "notes");
        assert_eq!(config.permissions[0].interface.to_string(), KV_INTERFACE);
        let exe_dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        for m in &config.modules {
            let StartMode::Command {
                program, cert, key, ..
            } = &m.start
            else {
                panic!("{} is not core-started", m.urn);
            };
            assert_eq!(*program, exe_dir.join(format!("anima-{}", m.urn.name())));
            assert_eq!(
                *cert,
                Path::new(&format!("/srv/anima/certs/dev/module-{}.pem", m.urn.name()))
            );
            assert_eq!(
                *key,
                Path::new(&format!("/srv/anima/certs/dev/module-{}.key", m.urn.name()))
            );
            assert_eq!(m.lease_ttl, Duration::from_secs(30));
            assert!(m.requires.is_empty() && m.contract.is_none());
        }
        assert_eq!(
            config.modules[1].module_type,
            ModuleType::ResidentPrivate(InitMode::CoreStarted)
        );
    }
}
