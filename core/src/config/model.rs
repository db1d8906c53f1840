//! The checked configuration: what `anima serve` runs.
//!
//! Every value here has passed the checks of [`super::load`] (or was built by
//! [`super::embedded_default`]); paths are already resolved against the
//! configuration file's directory.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use anima_protocol::Urn;
use anima_protocol::contract::{Contract, ModuleType};
use anima_protocol::interface::InterfaceName;
use serde::Deserialize;

/// The address of the admin endpoint when the configuration names none.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7700";

/// [`DEFAULT_ADMIN_LISTEN`] as an address.
pub(crate) fn default_admin_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 7700))
}

/// The lease TTL when `[leases].ttl` is not given.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// The fraction of the TTL left at which a lease is renewed, when
/// `[leases].renew_when_left` is not given.
pub const DEFAULT_RENEW_WHEN_LEFT: f64 = 1.0 / 3.0;

/// The allowed values of `[leases].renew_when_left`.
pub const RENEW_WHEN_LEFT_RANGE: RangeInclusive<f64> = 0.05..=0.95;

/// The audit log when `[core].audit_log` is not given (relative to the
/// working directory of `anima serve`).
pub const DEFAULT_AUDIT_LOG: &str = "anima-audit.jsonl";

/// A whole Core configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The Core's identity and certificates.
    pub core: CoreSection,
    /// The admin (and user) endpoint.
    pub admin: AdminSection,
    /// Lease defaults for every module.
    pub leases: LeaseDefaults,
    /// The modules, in the order the file lists them.
    pub modules: Vec<ModuleConfig>,
    /// Who may call what through the gateway (default: nobody).
    pub policies: Vec<Policy>,
    /// Which module may call which interface through the Core (default:
    /// none may call any).
    pub permissions: Vec<Permission>,
    /// Which module may publish and receive which runtime messages (default:
    /// none may either).
    pub messages: Vec<MessageGrant>,
    /// Where and how the mediator keeps messages.
    pub mediator: MediatorSection,
    /// The file this came from; `None` for the embedded default.
    pub source: Option<PathBuf>,
}

/// `[[permission]]`: a module may call an interface through the Core,
/// from any provider or from one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// The calling module.
    pub module: Urn,
    /// The interface it may call.
    pub interface: InterfaceName,
    /// Only this provider; `None`: any.
    pub provider: Option<Urn>,
}

/// A `[[permission]]` with `publish` or `subscribe`: the event types a
/// module may publish, and those it may receive (M5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageGrant {
    /// The module.
    pub module: Urn,
    /// The event types it may publish.
    pub publish: Vec<String>,
    /// The event types it may receive.
    pub subscribe: Vec<String>,
    /// Receive only messages of this `event_category`; `None`: any.
    pub category: Option<String>,
    /// Receive only messages carrying every one of these `routing_tags`.
    pub tags: Vec<String>,
}

/// The mediator's store when `[mediator] store` is not given (relative to
/// the working directory of `anima serve`).
pub const DEFAULT_MESSAGE_STORE: &str = "anima-messages.redb";

/// `[mediator] max_store_bytes` when not given: 1 GiB.
pub const DEFAULT_MAX_STORE_BYTES: u64 = 1 << 30;

/// The smallest `[mediator] max_store_bytes`: 1 MiB.
pub const MIN_STORE_BYTES: i64 = 1 << 20;

/// The shortest `[mediator] ack_wait`.
pub const MIN_ACK_WAIT: Duration = Duration::from_millis(100);

/// `[mediator] ack_wait` when not given.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// The longest `[mediator] sync_interval`.
pub const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(60);

/// `[mediator]`: where and how runtime messages are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediatorSection {
    /// The store file; `None`: [`DEFAULT_MESSAGE_STORE`].
    pub store: Option<PathBuf>,
    /// The most bytes of messages the store holds; a publish past it is
    /// refused `STORE_FULL`.
    pub max_store_bytes: u64,
    /// How long a delivery may stay neither acknowledged nor refused before
    /// it is delivered again.
    pub ack_wait: Duration,
    /// `None`: every publish is fsynced before its publisher is answered.
    /// Some: publishes are journaled (written, not fsynced, so they survive
    /// the Core's death but not a power loss) and fsynced at least this
    /// often.
    pub sync_interval: Option<Duration>,
    /// The module that receives every EPS error the mediator reports, as
    /// `EPS_ERROR` messages (M10); `None`: only their senders get them.
    pub error_handler: Option<Urn>,
    /// Where the messages are kept: the embedded store, or NATS JetStream.
    pub backend: Backend,
}

/// `[mediator] nats_stream` when not given.
pub const DEFAULT_NATS_STREAM: &str = "ANIMA";

/// `[mediator] backend`: where the mediator keeps its messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// The embedded store (`[mediator] store`), one Core's own.
    #[default]
    Embedded,
    /// NATS JetStream, shared by every Core that names the same server and
    /// streams (M14).
    Nats {
        /// The server, `tls://HOST:PORT`.
        url: String,
        /// The prefix of the JetStream streams' names (the same on every
        /// Core that shares the message space).
        stream: String,
    },
}

impl Default for MediatorSection {
    fn default() -> Self {
        MediatorSection {
            store: None,
            max_store_bytes: DEFAULT_MAX_STORE_BYTES,
            ack_wait: DEFAULT_ACK_WAIT,
            sync_interval: None,
            error_handler: None,
            backend: Backend::Embedded,
        }
    }
}

/// `[[policy]]`: a user and what it may call through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The application's identity.
    pub user: Urn,
    /// Modules (every declared method) or single methods.
    pub allow: Vec<PolicyTarget>,
}

/// One thing a policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    /// Every declared method of this module.
    Module(Urn),
    /// This method (`/package.Service/Method`).
    Method(String),
}

/// `[core]`: who the Core is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreSection {
    /// The Core's URN (kind `core`); its certificate carries the same.
    pub urn: Urn,
    /// The Core's certificate (PEM).
    pub cert: PathBuf,
    /// The Core's private key (PEM).
    pub key: PathBuf,
    /// The CA every peer's certificate must chain to (PEM).
    pub ca: PathBuf,
    /// The audit log; `None` means the default place in the state directory.
    pub audit_log: Option<PathBuf>,
    /// A second certificate and key for the user endpoint (same URN, e.g.
    /// ECDSA P-256), presented to clients that cannot verify Ed25519.
    pub endpoint_cert: Option<(PathBuf, PathBuf)>,
    /// The directory of interface definitions the Core applies to
    /// module-to-module calls (`[core] interfaces`, or `interfaces` beside
    /// the file).
    pub interfaces: Option<PathBuf>,
    /// How many threads run the Core's tasks (`[core] worker_threads`, 1
    /// to [`MAX_WORKER_THREADS`]); `None`: one per CPU.
    pub worker_threads: Option<usize>,
}

/// The most threads `[core] worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

/// `[admin]`: the admin and user endpoint (mTLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSection {
    /// Where it listens ([`DEFAULT_ADMIN_LISTEN`] unless given).
    pub listen: SocketAddr,
    /// The identities allowed to use the admin API (any kind).
    pub operators: Vec<Urn>,
    /// The certificate and key (PEM) the operator commands (`anima modules`,
    /// `leases`, … `--config FILE`) present; its URN is one of `operators`.
    /// `None`: the commands' own default (`certs/dev/user-dev.pem`).
    pub operator_cert: Option<(PathBuf, PathBuf)>,
}

/// What the operator commands read of a configuration
/// ([`super::operator_access`]): where the admin endpoint listens, who they
/// present, and the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorAccess {
    /// `[admin]`, resolved as for `anima serve`.
    pub admin: AdminSection,
    /// `[core] ca`.
    pub ca: PathBuf,
}

/// `[leases]`: defaults for every module's leases.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseDefaults {
    /// The lease TTL of a module that sets no `lease_ttl`.
    pub ttl: Duration,
    /// The fraction of the TTL left when the Core renews, in
    /// [`RENEW_WHEN_LEFT_RANGE`].
    pub renew_when_left: f64,
}

impl Default for LeaseDefaults {
    /// [`DEFAULT_LEASE_TTL`] and [`DEFAULT_RENEW_WHEN_LEFT`].
    fn default() -> Self {
        LeaseDefaults {
            ttl: DEFAULT_LEASE_TTL,
            renew_when_left: DEFAULT_RENEW_WHEN_LEFT,
        }
    }
}

/// One `[[module]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleConfig {
    /// The module's URN (kind `module`).
    pub urn: Urn,
    /// Its type. A resident private module is
    /// [`InitMode::CoreStarted`](anima_protocol::contract::InitMode::CoreStarted)
    /// when it has a `command`, `PreStarted` when it has an `endpoint`.
    pub module_type: ModuleType,
    /// How the Core reaches it.
    pub start: StartMode,
    /// The module's contract, when the entry names one.
    pub contract: Option<Contract>,
    /// The file `contract` was read from.
    pub contract_file: Option<PathBuf>,
    /// The TTL of its leases: its `lease_ttl`, else `[leases].ttl`.
    pub lease_ttl: Duration,
    /// What to do when it exits.
    pub restart: RestartPolicy,
    /// Modules to start before this one.
    pub requires: Vec<Urn>,
    /// Its sidecars (PROTOCOL.md §11): started and leased before it,
    /// restarted with it, stopped after it; those that provide
    /// `anima/sidecar` see each call to it first.
    pub sidecars: Vec<Urn>,
    /// Which of the Core's certificates dials this module and signs its
    /// leases (`core_cert`).
    pub core_cert: CoreCert,
}

impl ModuleConfig {
    /// A resident shared module `urn:anima:module:NAME` the Core dials at
    /// 127.0.0.1:1, with no contract file and the defaults (tests of the
    /// relations between modules).
    #[cfg(test)]
    pub(crate) fn endpoint_for_tests(name: &str) -> Self {
        ModuleConfig {
            urn: Urn::new(anima_protocol::UrnKind::Module, name).unwrap_or_else(|e| panic!("{e}")),
            module_type: ModuleType::ResidentShared,
            start: StartMode::Endpoint("127.0.0.1:1".into()),
            contract: None,
            contract_file: None,
            lease_ttl: Duration::from_secs(30),
            restart: RestartPolicy::default(),
            requires: Vec::new(),
            sidecars: Vec::new(),
            core_cert: CoreCert::Default,
        }
    }
}

/// `core_cert`: which certificate the Core presents to a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoreCert {
    /// `"default"`: `[core] cert` (Ed25519; leases `EdDSA`).
    #[default]
    Default,
    /// `"endpoint"`: `[core] endpoint_cert` (P-256; leases `ES256`), for
    /// modules on BoringSSL-based gRPC stacks (Python `grpcio`, C++), which
    /// refuse Ed25519 client certificates (PROTOCOL.md §1).
    Endpoint,
}

/// How the Core reaches a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartMode {
    /// The Core spawns the program (Type I, Type II core-started, or a Type
    /// III module for which the Core plays infrastructure) and hands it its
    /// certificate and key through the launch environment.
    Command {
        /// The program: a path, or a bare name looked up on `PATH`.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables, on top of the launch environment.
        env: Vec<(String, String)>,
        /// The module's certificate (PEM).
        cert: PathBuf,
        /// The module's private key (PEM).
        key: PathBuf,
    },
    /// The module is already running (pre-started or shared); the Core dials
    /// this `host:port`.
    Endpoint(String),
}

/// `[module.restart]`: what the Core does when a module it started exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// When to restart.
    pub mode: RestartMode,
    /// How many restarts are allowed within `window` before giving up.
    pub max_restarts: u32,
    /// The sliding window `max_restarts` counts in (not zero).
    pub window: Duration,
    /// The first delay before a restart (not zero, at most `backoff_max`).
    pub backoff: Duration,
    /// The longest delay: `backoff` doubles up to this.
    pub backoff_max: Duration,
}

/// [`RestartPolicy::default`], as a constant for the reference table.
pub(crate) const DEFAULT_RESTART: RestartPolicy = RestartPolicy {
    mode: RestartMode::OnFailure,
    max_restarts: 5,
    window: Duration::from_secs(60),
    backoff: Duration::from_millis(200),
    backoff_max: Duration::from_secs(10),
};

impl Default for RestartPolicy {
    /// On failure, 5 restarts in 60 s, backoff 200 ms doubling to 10 s.
    fn default() -> Self {
        DEFAULT_RESTART
    }
}

impl RestartPolicy {
    /// The policy of a module of `module_type` whose entry does not set
    /// `restart.policy`: [`default_restart_mode`], with the other values of
    /// [`RestartPolicy::default`].
    pub fn for_type(module_type: ModuleType) -> Self {
        RestartPolicy {
            mode: default_restart_mode(module_type),
            ..DEFAULT_RESTART
        }
    }
}

/// When a module of `module_type` is restarted unless its entry says: an
/// ephemeral (Type I) module exits by design whenever its lease ends, so it
/// is started (and leased) again `always`, keeping its capability available;
/// a resident one (Type II, III) keeps running without a lease, so it is
/// restarted `on-failure` only.
pub const fn default_restart_mode(module_type: ModuleType) -> RestartMode {
    match module_type {
        ModuleType::Ephemeral => RestartMode::Always,
        ModuleType::ResidentPrivate(_) | ModuleType::ResidentShared => RestartMode::OnFailure,
    }
}

/// When a module is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Never: an exit is final.
    Never,
    /// When it exits with a non-zero status or a signal.
    #[default]
    OnFailure,
    /// Whenever it exits.
    Always,
}

anima_protocol::str_vocabulary! {
    /// The word used in the file: `never`, `on-failure`, `always`.
    pub fn RestartMode::as_str {
        Never => "never",
        OnFailure => "on-failure",
        Always => "always",
    }
}
