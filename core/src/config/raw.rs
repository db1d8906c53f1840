//! The shape of `anima.toml` as written: what serde reads before any value is
//! interpreted.
//!
//! Every struct refuses unknown keys, closed vocabularies are enums, and each
//! key is kept with its span (`toml::Spanned`) so that a problem found later
//! can name its line. Every key is optional here, required ones included:
//! [`super::resolve`] reports each missing one, so that one run names them
//! all. What the strings mean (URNs, paths, durations, addresses) is read
//! there too. The reference table ([`super::reference::KEYS`]) describes
//! exactly these keys; a test walks these types to keep the two in step.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::model::{CoreCert, RestartMode};

/// A key as written: absent, or its value and where it is.
pub(super) type Field<T> = Option<Spanned<T>>;

/// An array of strings, each item with where it is.
pub(super) type Strings = Field<Vec<Spanned<String>>>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    /// `[core]`.
    pub(super) core: Field<Core>,
    /// `[admin]`.
    pub(super) admin: Field<Admin>,
    /// `[leases]`.
    pub(super) leases: Field<Leases>,
    /// `[[module]]`, in file order.
    #[serde(default)]
    pub(super) module: Vec<Spanned<Module>>,
    /// `[[policy]]`, in file order.
    #[serde(default)]
    pub(super) policy: Vec<Spanned<Policy>>,
    /// `[[permission]]`, in file order.
    #[serde(default)]
    pub(super) permission: Vec<Spanned<Permission>>,
    /// `[mediator]`.
    pub(super) mediator: Field<Mediator>,
}

/// `[mediator]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Mediator {
    pub(super) store: Field<String>,
    /// Any integer: the range is checked with the other values.
    pub(super) max_store_bytes: Field<i64>,
    pub(super) ack_wait: Field<String>,
    pub(super) sync_interval: Field<String>,
    pub(super) error_handler: Field<String>,
    pub(super) backend: Field<BackendWord>,
    pub(super) nats_url: Field<String>,
    pub(super) nats_stream: Field<String>,
}

/// `[core]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Core {
    pub(super) urn: Field<String>,
    pub(super) cert: Field<String>,
    pub(super) key: Field<String>,
    pub(super) ca: Field<String>,
    pub(super) audit_log: Field<String>,
    pub(super) endpoint_cert: Field<String>,
    pub(super) endpoint_key: Field<String>,
    pub(super) interfaces: Field<String>,
    pub(super) worker_threads: Field<i64>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Admin {
    pub(super) listen: Field<String>,
    pub(super) operators: Strings,
    pub(super) operator_cert: Field<String>,
    pub(super) operator_key: Field<String>,
}

/// `[leases]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Leases {
    pub(super) ttl: Field<String>,
    /// An integer is taken as a float.
    pub(super) renew_when_left: Field<f64>,
}

/// One `[[module]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Module {
    pub(super) urn: Field<String>,
    #[serde(rename = "type")]
    pub(super) module_type: Field<TypeWord>,
    pub(super) command: Field<String>,
    pub(super) args: Strings,
    /// Sorted by name.
    pub(super) env: Field<BTreeMap<String, Spanned<String>>>,
    pub(super) cert: Field<String>,
    pub(super) key: Field<String>,
    pub(super) endpoint: Field<String>,
    pub(super) contract: Field<String>,
    pub(super) lease_ttl: Field<String>,
    pub(super) requires: Strings,
    pub(super) sidecars: Strings,
    pub(super) core_cert: Field<CoreCert>,
    pub(super) restart: Field<Restart>,
}

/// `[module.restart]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Restart {
    pub(super) policy: Field<RestartMode>,
    /// Any integer: the range (a `u32`) is checked with the other values, so
    /// that `-1` is "out of range" rather than a type error.
    pub(super) max_restarts: Field<i64>,
    pub(super) window: Field<String>,
    pub(super) backoff: Field<String>,
    pub(super) backoff_max: Field<String>,
}

/// One `[[policy]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Policy {
    pub(super) user: Field<String>,
    pub(super) allow: Strings,
}

/// One `[[permission]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Permission {
    pub(super) module: Field<String>,
    pub(super) interface: Field<String>,
    pub(super) provider: Field<String>,
    pub(super) publish: Strings,
    pub(super) subscribe: Strings,
    pub(super) category: Field<String>,
    pub(super) tags: Strings,
}

/// `[mediator] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum BackendWord {
    /// The embedded store.
    #[default]
    Embedded,
    /// NATS JetStream.
    Nats,
}

/// The module types an entry can declare (`type`); a resident private
/// module's init mode follows from `command` or `endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum TypeWord {
    /// Type I.
    #[default]
    Ephemeral,
    /// Type II.
    ResidentPrivate,
    /// Type III.
    ResidentShared,
}
