//! The configuration reference: one table describing every key of
//! `anima.toml` (its type, default and meaning), from which `anima config
//! reference` prints `docs/config.md`, and which names what a key expected
//! when the file has something else there.
//!
//! Tests keep it in step with the code: one walks the serde types of
//! [`super::raw`] and requires exactly these keys, kinds and words; another
//! (in `core/tests/config_check.rs`) requires `docs/config.md` to be this
//! table's Markdown.

use std::fmt::Write as _;
use std::time::Duration;

use toml::de::DeValue;

use anima_protocol::contract::ModuleType;

use super::model::{
    DEFAULT_ACK_WAIT, DEFAULT_ADMIN_LISTEN, DEFAULT_AUDIT_LOG, DEFAULT_LEASE_TTL,
    DEFAULT_MAX_STORE_BYTES, DEFAULT_MESSAGE_STORE, DEFAULT_NATS_STREAM, DEFAULT_RENEW_WHEN_LEFT,
    DEFAULT_RESTART, default_restart_mode,
};

/// One key of `anima.toml`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    /// The dotted path without indices: `module.restart.policy`.
    pub(crate) path: &'static str,
    /// What the value is.
    pub(crate) kind: Kind,
    /// What applies when the key is not written.
    pub(crate) default: Fallback,
    /// What it means (Markdown, one line).
    pub(crate) meaning: &'static str,
}

/// What a key's value is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// A table: `[name]`, or `name = { … }`.
    Table,
    /// An array of tables, `[[name]]`; the plural names the entries.
    Tables(&'static str),
    /// A string holding what the text says (a path, a URN, a duration…).
    Str(&'static str),
    /// One of these words (a string).
    Word(&'static [&'static str]),
    /// An array of strings, each holding what the text says.
    Strs(&'static str),
    /// A table whose every value is a string.
    StrTable,
    /// A whole number.
    Integer,
    /// A number: an integer or a float.
    Number,
}

/// What applies when a key is not written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fallback {
    /// Nothing: the key must be written.
    Required,
    /// Nothing: the key is optional, and its absence means what the meaning
    /// says.
    Unset,
    /// An empty array or table.
    Empty,
    /// This string.
    Text(&'static str),
    /// This duration.
    Duration(Duration),
    /// This number.
    Number(f64),
    /// This whole number.
    Integer(u64),
    /// The value of another key.
    Key(&'static str),
    /// One word for an ephemeral module, another for a resident one.
    ByType {
        /// For `type = "ephemeral"`.
        ephemeral: &'static str,
        /// For `type = "resident-private"` and `"resident-shared"`.
        resident: &'static str,
    },
}

/// A duration's type, as every duration key shows it.
const DURATION: Kind = Kind::Str("duration");

/// Every key of `anima.toml`, section by section, in the order the reference
/// shows them.
pub(crate) const KEYS: &[Key] = &[
    key(
        "core",
        Kind::Table,
        Fallback::Required,
        "Who the Core is: its identity and certificates.",
    ),
    key(
        "core.urn",
        Kind::Str("Core URN"),
        Fallback::Required,
        "The Core's identity, `urn:anima:core:NAME`; its certificate carries the same URN.",
    ),
    key(
        "core.cert",
        Kind::Str("path"),
        Fallback::Required,
        "The Core's certificate (PEM): it dials modules with it and signs their leases with its key (EdDSA).",
    ),
    key(
        "core.key",
        Kind::Str("path"),
        Fallback::Required,
        "The private key of `cert` (PEM).",
    ),
    key(
        "core.ca",
        Kind::Str("path"),
        Fallback::Required,
        "The CA every peer's certificate must chain to (PEM).",
    ),
    key(
        "core.audit_log",
        Kind::Str("path"),
        Fallback::Text(DEFAULT_AUDIT_LOG),
        "The append-only audit log (JSON lines). Unset: this name in the working directory of `anima serve`.",
    ),
    key(
        "core.endpoint_cert",
        Kind::Str("path"),
        Fallback::Unset,
        "A second certificate for the same URN (ECDSA P-256), presented on the Core's endpoint to clients \
         that cannot verify Ed25519 (Python `grpcio`, C++ gRPC), and used for modules with \
         `core_cert = \"endpoint\"`. Goes with `endpoint_key`. Unset: `NAME.endpoint.pem` and \
         `NAME.endpoint.key` beside `cert` (`NAME.pem`) when both are there, as `anima certs init` \
         writes them; else none, and such clients are refused (the Core's log says why).",
    ),
    key(
        "core.endpoint_key",
        Kind::Str("path"),
        Fallback::Unset,
        "The private key of `endpoint_cert` (PEM). Unset: see `endpoint_cert`.",
    ),
    key(
        "core.interfaces",
        Kind::Str("path"),
        Fallback::Unset,
        "A directory of interface definitions (`NAMESPACE/NAME/VERSION/interface.toml`, PROTOCOL.md §9): the methods, timeouts and retry policies the Core applies to module-to-module calls. Unset: `interfaces` beside this file, if there is one.",
    ),
    key(
        "core.worker_threads",
        Kind::Integer,
        Fallback::Unset,
        "How many threads run the Core's tasks, 1 to 1024. Unset: one per CPU (or `TOKIO_WORKER_THREADS` from the environment). On a small machine one thread forwards a call sooner and with less CPU (no wake-ups across threads; BENCHMARKS.md, thirteenth entry), but the Core then uses at most one CPU for its calls and messages.",
    ),
    key(
        "admin",
        Kind::Table,
        Fallback::Unset,
        "The Core's endpoint (mutual TLS): the admin API, the user gateway and `GET /metrics`.",
    ),
    key(
        "admin.listen",
        Kind::Str("IP address and port"),
        Fallback::Text(DEFAULT_ADMIN_LISTEN),
        "Where the endpoint listens.",
    ),
    key(
        "admin.operators",
        Kind::Strs("URNs"),
        Fallback::Empty,
        "The identities (any kind) allowed to use the admin API.",
    ),
    key(
        "admin.operator_cert",
        Kind::Str("path"),
        Fallback::Unset,
        "The certificate (PEM) the operator commands (`anima modules`, `leases`, `revoke`, `restart`, `stop`, \
         `events`) present when given `--config` with this file; its URN must be one of `operators`. \
         Goes with `operator_key`. Unset: `certs/dev/user-dev.pem` in the working directory (or `--cert`).",
    ),
    key(
        "admin.operator_key",
        Kind::Str("path"),
        Fallback::Unset,
        "The private key of `operator_cert` (PEM).",
    ),
    key(
        "leases",
        Kind::Table,
        Fallback::Unset,
        "Lease defaults for every module.",
    ),
    key(
        "leases.ttl",
        DURATION,
        Fallback::Duration(DEFAULT_LEASE_TTL),
        "The TTL of the leases of a module that sets no `lease_ttl`; no shorter than the protocol's shortest lease (50ms).",
    ),
    key(
        "leases.renew_when_left",
        Kind::Number,
        Fallback::Number(DEFAULT_RENEW_WHEN_LEFT),
        "The fraction of the TTL left when the Core renews a lease, from 0.05 to 0.95.",
    ),
    key(
        "module",
        Kind::Tables("modules"),
        Fallback::Empty,
        "One entry per module the Core leases, started by the Core (`command`) or dialled (`endpoint`).",
    ),
    key(
        "module.urn",
        Kind::Str("module URN"),
        Fallback::Required,
        "The module's identity, `urn:anima:module:NAME`; unique in the file.",
    ),
    key(
        "module.type",
        Kind::Word(&["ephemeral", "resident-private", "resident-shared"]),
        Fallback::Text("ephemeral"),
        "Type I, II or III (ADR-0003). A resident-private module is core-started with `command`, pre-started with `endpoint`. \
         Unset: the `type` of the module's `contract` when it names one, else ephemeral; a `type` its contract contradicts is refused.",
    ),
    key(
        "module.command",
        Kind::Str("path or program name"),
        Fallback::Unset,
        "The program the Core starts: a path (relative to this file), or a bare name looked up on `PATH`. \
         Give `command` or `endpoint`, not both.",
    ),
    key(
        "module.args",
        Kind::Strs("strings"),
        Fallback::Empty,
        "The arguments of `command`.",
    ),
    key(
        "module.env",
        Kind::StrTable,
        Fallback::Empty,
        "Environment variables for `command`, on top of the launch environment.",
    ),
    key(
        "module.cert",
        Kind::Str("path"),
        Fallback::Unset,
        "The module's certificate (PEM), handed to it at launch: required with `command`, refused with `endpoint`.",
    ),
    key(
        "module.key",
        Kind::Str("path"),
        Fallback::Unset,
        "The module's private key (PEM): required with `command`, refused with `endpoint`.",
    ),
    key(
        "module.endpoint",
        Kind::Str("host:port"),
        Fallback::Unset,
        "The address of a module already running (pre-started or shared), which the Core dials.",
    ),
    key(
        "module.contract",
        Kind::Str("path"),
        Fallback::Unset,
        "The module's contract (`module.toml`): its URN and type must be this entry's, and `max_lease` bounds the lease TTL. \
         Its `methods` are routed through the gateway: no two modules may declare the same one (the conformance probe, \
         `/anima.v1.Probe/…`, aside). It must be the contract built into the module: before each lease the Core \
         compares it with what the module reports (`ModuleAdmin/Status`: URN, version, type, methods, max_lease, interfaces provided and required), \
         and on a difference marks the module failed, naming what differs. Its `requires` are resolved before \
         the module starts (it stays `blocked` until a module providing each is leased) and its `provides` satisfy \
         other modules' (PROTOCOL.md §9). Unset: the Core leases every method the module declares.",
    ),
    key(
        "module.lease_ttl",
        DURATION,
        Fallback::Key("leases.ttl"),
        "The TTL of this module's leases; no longer than its contract's `max_lease`.",
    ),
    key(
        "module.requires",
        Kind::Strs("module URNs"),
        Fallback::Empty,
        "Modules of this file that start (and are leased) before this one; no cycles.",
    ),
    key(
        "module.sidecars",
        Kind::Strs("module URNs"),
        Fallback::Empty,
        "Its sidecars (PROTOCOL.md §11), modules of this file: started and leased before it, restarted with it, stopped after it; a sidecar that provides `anima/sidecar` sees each call to it first and may refuse it.",
    ),
    key(
        "module.core_cert",
        Kind::Word(&["default", "endpoint"]),
        Fallback::Text("default"),
        "The Core certificate that dials this module and signs its leases: `default` is `[core] cert` (EdDSA), \
         `endpoint` is `[core] endpoint_cert` (P-256, ES256), for modules on BoringSSL-based gRPC stacks \
         (Python `grpcio`, C++).",
    ),
    key(
        "module.restart",
        Kind::Table,
        Fallback::Unset,
        "What the Core does when a module it started exits (also written `restart = { … }`).",
    ),
    key(
        "module.restart.policy",
        Kind::Word(&["never", "on-failure", "always"]),
        Fallback::ByType {
            ephemeral: default_restart_mode(ModuleType::Ephemeral).as_str(),
            resident: default_restart_mode(ModuleType::ResidentShared).as_str(),
        },
        "When to restart: never, after a non-zero exit or a signal, or after any exit. An ephemeral (Type I) module \
         exits whenever its lease ends, so by default it is started and leased again (`always`); a resident one keeps \
         running without a lease and is restarted only after a failure (`on-failure`).",
    ),
    key(
        "module.restart.max_restarts",
        Kind::Integer,
        Fallback::Integer(DEFAULT_RESTART.max_restarts as u64),
        "How many restarts `window` may hold before the module is failed (0 to 4294967295).",
    ),
    key(
        "module.restart.window",
        DURATION,
        Fallback::Duration(DEFAULT_RESTART.window),
        "The sliding window `max_restarts` counts in; longer than zero.",
    ),
    key(
        "module.restart.backoff",
        DURATION,
        Fallback::Duration(DEFAULT_RESTART.backoff),
        "The first delay before a restart, doubling on each restart up to `backoff_max`; longer than zero.",
    ),
    key(
        "module.restart.backoff_max",
        DURATION,
        Fallback::Duration(DEFAULT_RESTART.backoff_max),
        "The longest delay before a restart; at least `backoff`.",
    ),
    key(
        "policy",
        Kind::Tables("policies"),
        Fallback::Empty,
        "Who may call what through the Core's endpoint; what no policy allows is refused.",
    ),
    key(
        "policy.user",
        Kind::Str("URN"),
        Fallback::Required,
        "The application's identity (the URN of its client certificate).",
    ),
    key(
        "policy.allow",
        Kind::Strs("module URNs or method paths"),
        Fallback::Empty,
        "What it may call: a module URN (every method the module declares) or one method, `/package.Service/Method`.",
    ),
    key(
        "permission",
        Kind::Tables("permissions"),
        Fallback::Empty,
        "Which module may call which interface through the Core (module-to-module calls, PROTOCOL.md §10); what no permission grants is refused `POLICY_DENIED`.",
    ),
    key(
        "permission.module",
        Kind::Str("URN"),
        Fallback::Required,
        "The calling module: one of this Core's `[[module]]` entries.",
    ),
    key(
        "permission.interface",
        Kind::Str("interface name"),
        Fallback::Unset,
        "The interface it may call (`namespace/name`, as in `provides`), at the versions its contract's `requires` accepts. Required unless the entry grants messages (`publish`, `subscribe`) instead.",
    ),
    key(
        "permission.provider",
        Kind::Str("URN"),
        Fallback::Unset,
        "Only this provider (one of this Core's `[[module]]` entries). Unset: any module that provides the interface.",
    ),
    key(
        "permission.publish",
        Kind::Strs("event types"),
        Fallback::Empty,
        "The event types (`UPPER_SNAKE_CASE`) the module may publish through the mediator (PROTOCOL.md §13); what no permission grants is refused `NOT_PERMITTED`.",
    ),
    key(
        "permission.subscribe",
        Kind::Strs("event types"),
        Fallback::Empty,
        "The event types the module receives: each message of them published from then on is queued for it, durably, whether or not it is subscribed at the moment.",
    ),
    key(
        "permission.category",
        Kind::Str("event category"),
        Fallback::Unset,
        "With `subscribe`: only messages of this `event_category`. Unset: any category.",
    ),
    key(
        "permission.tags",
        Kind::Strs("routing tags"),
        Fallback::Empty,
        "With `subscribe`: only messages carrying every one of these `routing_tags`.",
    ),
    key(
        "mediator",
        Kind::Table,
        Fallback::Unset,
        "Where and how the mediator keeps runtime messages (PROTOCOL.md §13).",
    ),
    key(
        "mediator.store",
        Kind::Str("path"),
        Fallback::Text(DEFAULT_MESSAGE_STORE),
        "The message store of `backend = \"embedded\"` (one file, created when missing; relative to the working directory of `anima serve` when defaulted). Messages are on disk in it before their publisher is answered. Refused with `backend = \"nats\"`.",
    ),
    key(
        "mediator.max_store_bytes",
        Kind::Integer,
        Fallback::Integer(DEFAULT_MAX_STORE_BYTES),
        "The most bytes of messages the store holds (1 GiB by default), at least 1048576; a publish past it is refused `STORE_FULL`, never dropped silently.",
    ),
    key(
        "mediator.ack_wait",
        DURATION,
        Fallback::Duration(DEFAULT_ACK_WAIT),
        "How long a delivery may stay neither acknowledged nor refused before it is delivered again; at least 100ms.",
    ),
    key(
        "mediator.sync_interval",
        DURATION,
        Fallback::Unset,
        "With `backend = \"embedded\"`: unset, every publish is fsynced (with the others committed at that moment) before its publisher is answered, so an accepted message survives a power loss. Set (1ms to 60s): accepted messages are written to a journal beside the store before the answer, without fsync, so they survive a `kill -9` of the Core (as NATS JetStream's do) but a power loss may lose those of the last interval; the store is fsynced at least this often (PROTOCOL.md §13.2).",
    ),
    key(
        "mediator.error_handler",
        Kind::Str("URN"),
        Fallback::Unset,
        "A module (one of this Core's `[[module]]` entries) that receives every EPS error the mediator reports, as `EPS_ERROR` messages (PROTOCOL.md §13.8). Unset: only the senders get them.",
    ),
    key(
        "mediator.backend",
        Kind::Word(&["embedded", "nats"]),
        Fallback::Text("embedded"),
        "Where messages are kept: `embedded`, this Core's own store (`store`); `nats`, NATS JetStream at `nats_url`, shared by every Core naming the same server and `nats_stream`, so modules on different Cores exchange messages (PROTOCOL.md §13.11).",
    ),
    key(
        "mediator.nats_url",
        Kind::Str("tls://HOST:PORT"),
        Fallback::Unset,
        "With `backend = \"nats\"` (required there): the NATS server. The link is TLS 1.3 with the Core's own certificate and key (`[core] cert`, `key`) as its client certificate, the server's verified against `[core] ca` and the host named.",
    ),
    key(
        "mediator.nats_stream",
        Kind::Str("name"),
        Fallback::Text(DEFAULT_NATS_STREAM),
        "With `backend = \"nats\"`: the prefix of the JetStream streams (`<name>_QUEUE`, `<name>_DEAD`) and of the subjects (`<name>.q.…`) the Cores sharing a message space use; 1 to 32 letters, digits, `_` or `-`.",
    ),
];

/// A row of [`KEYS`].
const fn key(path: &'static str, kind: Kind, default: Fallback, meaning: &'static str) -> Key {
    Key {
        path,
        kind,
        default,
        meaning,
    }
}

/// What opens the reference, before the sections.
const INTRO: &str = "\
# `anima.toml` reference

<!-- Generated by `anima config reference` from core/src/config/reference.rs; \
a test fails when this file differs. -->

The configuration of `anima serve` (`--config FILE`, else `./anima.toml`, else the
embedded default). `anima config check FILE` checks a file without starting
anything and prints every problem as `FILE:LINE: key: message`.

Paths are relative to the file's directory. A duration is a whole number and a
unit, `ms`, `s`, `m` or `h`, written as a string: `\"30s\"`. A URN is
`urn:anima:KIND:NAME`, KIND being `core`, `module` or `user`. Unknown keys are
refused.
";

/// The reference as Markdown: what `anima config reference` prints and
/// `docs/config.md` holds.
pub(crate) fn markdown() -> String {
    let mut out = String::from(INTRO);
    for section in KEYS.iter().filter(|k| k.kind.is_table()) {
        let header = match section.kind {
            Kind::Tables(_) => format!("[[{}]]", section.path),
            _ => format!("[{}]", section.path),
        };
        let status = match section.default {
            Fallback::Required => "Required.",
            _ => "Optional.",
        };
        let _ = write!(
            out,
            "\n## `{header}`\n\n{} {status}\n\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n",
            section.meaning
        );
        for child in children(section.path) {
            let name = &child.path[section.path.len() + 1..];
            let (default, meaning) = if child.kind.is_table() {
                ("below".to_owned(), format!("See `[{}]` below.", child.path))
            } else {
                (child.default.doc(), child.meaning.to_owned())
            };
            let _ = writeln!(
                out,
                "| `{name}` | {} | {default} | {meaning} |",
                child.kind.doc()
            );
        }
    }
    out
}

/// The row for `path` (a dotted path without indices).
pub(crate) fn row(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

/// The keys directly inside the table at `parent` (`""`: the top level).
pub(crate) fn children(parent: &str) -> impl Iterator<Item = &'static Key> + '_ {
    KEYS.iter().filter(move |k| {
        let rest = if parent.is_empty() {
            Some(k.path)
        } else {
            k.path
                .strip_prefix(parent)
                .and_then(|rest| rest.strip_prefix('.'))
        };
        rest.is_some_and(|name| !name.contains('.'))
    })
}

impl Kind {
    /// What an item of an array, or a value of a table of strings, is.
    pub(crate) fn item(self) -> Option<Kind> {
        match self {
            Kind::Tables(_) => Some(Kind::Table),
            Kind::Strs(_) | Kind::StrTable => Some(Kind::Str("string")),
            _ => None,
        }
    }

    /// Whether a value of this TOML type can be this kind (its contents
    /// aside).
    pub(crate) fn fits(self, value: &DeValue<'_>) -> bool {
        match self {
            Kind::Table | Kind::StrTable => value.is_table(),
            Kind::Tables(_) | Kind::Strs(_) => value.is_array(),
            Kind::Str(_) | Kind::Word(_) => value.is_str(),
            Kind::Integer => value.is_integer(),
            Kind::Number => value.is_integer() || value.is_float(),
        }
    }

    /// What it must be, in a problem: `a string`, `an array of strings`.
    pub(crate) fn expected(self) -> String {
        match self {
            Kind::Table => "a table".into(),
            Kind::Tables(_) => "an array of tables".into(),
            Kind::Str(_) => "a string".into(),
            Kind::Word(words) => one_of(words, '"'),
            Kind::Strs(_) => "an array of strings".into(),
            Kind::StrTable => "a table of strings".into(),
            Kind::Integer => "an integer".into(),
            Kind::Number => "a number".into(),
        }
    }

    /// Whether it is a table of keys of its own (a section).
    fn is_table(self) -> bool {
        matches!(self, Kind::Table | Kind::Tables(_))
    }

    /// Its type in the reference.
    fn doc(self) -> String {
        match self {
            Kind::Table => "table".into(),
            Kind::Tables(_) => "array of tables".into(),
            Kind::Str(what) => what.into(),
            Kind::Word(words) => one_of(words, '`'),
            Kind::Strs(what) => format!("array of {what}"),
            Kind::StrTable => "table of strings".into(),
            Kind::Integer => "integer".into(),
            Kind::Number => "number".into(),
        }
    }
}

impl Fallback {
    /// Its cell in the reference, written as in the file.
    fn doc(self) -> String {
        match self {
            Fallback::Required => "required".into(),
            Fallback::Unset => "unset".into(),
            Fallback::Empty => "none".into(),
            Fallback::Text(text) => format!("`{text:?}`"),
            Fallback::Duration(d) => format!("`\"{}\"`", duration_text(d)),
            Fallback::Number(n) => {
                let exact = n.to_string();
                if exact.len() <= 6 {
                    format!("`{exact}`")
                } else {
                    format!("about `{n:.3}`")
                }
            }
            Fallback::Integer(n) => format!("`{n}`"),
            Fallback::Key(path) => format!("`{path}`"),
            Fallback::ByType {
                ephemeral,
                resident,
            } => format!("`{ephemeral:?}` (ephemeral), `{resident:?}` (resident)"),
        }
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"` (quoted with `quote`).
pub(crate) fn one_of(words: &[&str], quote: char) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("{quote}{w}{quote}")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// A duration as the file writes it, in the largest unit that keeps it
/// whole: `200ms`, `30s`, `1m`, `2h`.
fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    let whole = [(3_600_000, "h"), (60_000, "m"), (1000, "s")]
        .into_iter()
        .find(|&(unit, _)| ms != 0 && ms.is_multiple_of(unit));
    match whole {
        Some((unit, name)) => format!("{}{name}", ms / unit),
        None => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use anima_protocol::contract::parse_duration;
    use anima_protocol::lease::MIN_TTL;
    use serde::de::value::{BorrowedStrDeserializer, Error, U64Deserializer};
    use serde::de::{self, Deserialize, IntoDeserializer};

    use super::*;
    use crate::config::model::{CoreCert, RENEW_WHEN_LEFT_RANGE, RestartMode};
    use crate::config::raw::{self, BackendWord, TypeWord};

    /// Every key the deserializer accepts, with the shapes it reads there:
    /// `struct`, `seq`, `map`, `str`, `i64`, `f64`, `enum WORDS`.
    type Shapes = BTreeMap<String, Vec<String>>;

    /// A deserializer that feeds a type the least it accepts and notes, at
    /// each key path, what the type asked for: one array item, one table
    /// entry, every struct field, the first enum variant.
    struct Walker<'a> {
        path: String,
        seen: &'a RefCell<Shapes>,
    }

    impl<'a> Walker<'a> {
        fn note(&self, shape: impl Into<String>) {
            let mut seen = self.seen.borrow_mut();
            seen.entry(self.path.clone())
                .or_default()
                .push(shape.into());
        }

        fn at(&self, key: &str) -> Walker<'a> {
            let path = match self.path.as_str() {
                "" => key.to_owned(),
                parent => format!("{parent}.{key}"),
            };
            Walker {
                path,
                seen: self.seen,
            }
        }

        fn same(&self) -> Walker<'a> {
            Walker {
                path: self.path.clone(),
                seen: self.seen,
            }
        }
    }

    /// Table entries, struct fields, or a `Spanned`'s parts, one by one.
    struct Entries<'a> {
        walker: Walker<'a>,
        keys: std::slice::Iter<'static, &'static str>,
        /// Whether values stay at the walker's path (a map entry, a
        /// `Spanned`) rather than going one key down (a struct field).
        flat: bool,
        current: &'static str,
    }

    impl<'de> de::MapAccess<'de> for Entries<'_> {
        type Error = Error;

        fn next_key_seed<K: de::DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            let Some(key) = self.keys.next() else {
                return Ok(None);
            };
            self.current = key;
            seed.deserialize(BorrowedStrDeserializer::new(key))
                .map(Some)
        }

        fn next_value_seed<V: de::DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, Error> {
            if self.current.starts_with("$__serde_spanned") && !self.current.ends_with("value") {
                seed.deserialize(U64Deserializer::new(0))
            } else if self.flat {
                seed.deserialize(self.walker.same())
            } else {
                seed.deserialize(self.walker.at(self.current))
            }
        }
    }

    /// One array item.
    struct Item<'a>(Option<Walker<'a>>);

    impl<'de> de::SeqAccess<'de> for Item<'_> {
        type Error = Error;

        fn next_element_seed<T: de::DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Error> {
            self.0.take().map(|w| seed.deserialize(w)).transpose()
        }
    }

    impl<'de> de::Deserializer<'de> for Walker<'_> {
        type Error = Error;

        fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(de::Error::custom(format!(
                "{}: a shape the walker does not know",
                self.path
            )))
        }

        fn deserialize_option<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.visit_some(self)
        }

        fn deserialize_string<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.note("str");
            v.visit_str("")
        }

        fn deserialize_str<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.deserialize_string(v)
        }

        fn deserialize_i64<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.note("i64");
            v.visit_i64(0)
        }

        fn deserialize_f64<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.note("f64");
            v.visit_f64(0.0)
        }

        fn deserialize_seq<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.note("seq");
            v.visit_seq(Item(Some(self.same())))
        }

        fn deserialize_map<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.note("map");
            v.visit_map(Entries {
                walker: self,
                keys: ["NAME"].iter(),
                flat: true,
                current: "",
            })
        }

        fn deserialize_struct<V: de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Error> {
            let spanned = fields.iter().all(|f| f.starts_with("$__serde_spanned"));
            if !spanned {
                self.note("struct");
            }
            v.visit_map(Entries {
                walker: self,
                keys: fields.iter(),
                flat: spanned,
                current: "",
            })
        }

        fn deserialize_enum<V: de::Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Error> {
            self.note(format!("enum {}", variants.join(" ")));
            v.visit_enum(variants[0].into_deserializer())
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i128 u8 u16 u32 u64 u128 f32 char bytes byte_buf unit
            unit_struct newtype_struct tuple tuple_struct identifier ignored_any
        }
    }

    /// What the walker should see at each key of [`KEYS`].
    fn shapes_of_the_table() -> Shapes {
        let mut shapes = Shapes::new();
        shapes.insert(String::new(), vec!["struct".into()]);
        for key in KEYS {
            let shape: Vec<String> = match key.kind {
                Kind::Table => vec!["struct".into()],
                Kind::Tables(_) => vec!["seq".into(), "struct".into()],
                Kind::Str(_) => vec!["str".into()],
                Kind::Word(words) => vec![format!("enum {}", words.join(" "))],
                Kind::Strs(_) => vec!["seq".into(), "str".into()],
                Kind::StrTable => vec!["map".into(), "str".into()],
                Kind::Integer => vec!["i64".into()],
                Kind::Number => vec!["f64".into()],
            };
            shapes.insert(key.path.to_owned(), shape);
        }
        shapes
    }

    /// Every key the deserializer accepts is in the reference, with its kind
    /// and (for enums) its exact words, and the reference has no other key.
    #[test]
    fn the_reference_describes_exactly_the_keys_the_deserializer_accepts() {
        let seen = RefCell::new(Shapes::new());
        let walker = Walker {
            path: String::new(),
            seen: &seen,
        };
        raw::File::deserialize(walker).unwrap();
        assert_eq!(seen.into_inner(), shapes_of_the_table());
    }

    /// The defaults the reference shows for words are the enums' defaults,
    /// and its durations are written so that they parse back.
    #[test]
    fn the_documented_defaults_are_the_ones_applied() {
        fn word<T: for<'de> Deserialize<'de>>(path: &str) -> T {
            let Fallback::Text(text) = row(path).unwrap().default else {
                panic!("{path} has no word default");
            };
            T::deserialize(IntoDeserializer::<Error>::into_deserializer(text)).unwrap()
        }
        assert_eq!(word::<TypeWord>("module.type"), TypeWord::default());
        assert_eq!(
            word::<BackendWord>("mediator.backend"),
            BackendWord::default()
        );
        assert_eq!(word::<CoreCert>("module.core_cert"), CoreCert::default());
        // The restart policy's default depends on the module's type.
        let Fallback::ByType {
            ephemeral,
            resident,
        } = row("module.restart.policy").unwrap().default
        else {
            panic!("module.restart.policy has no per-type default");
        };
        let mode = |text: &str| {
            RestartMode::deserialize(IntoDeserializer::<Error>::into_deserializer(text)).unwrap()
        };
        assert_eq!(mode(ephemeral), default_restart_mode(ModuleType::Ephemeral));
        assert_eq!(mode(ephemeral), RestartMode::Always);
        for resident_type in [
            ModuleType::ResidentPrivate(anima_protocol::contract::InitMode::CoreStarted),
            ModuleType::ResidentPrivate(anima_protocol::contract::InitMode::PreStarted),
            ModuleType::ResidentShared,
        ] {
            assert_eq!(mode(resident), default_restart_mode(resident_type));
        }
        assert_eq!(mode(resident), RestartMode::default());
        for key in KEYS {
            if let Fallback::Duration(d) = key.default {
                assert_eq!(
                    parse_duration(&duration_text(d)).unwrap(),
                    d,
                    "{}",
                    key.path
                );
            }
            if let Fallback::Key(other) = key.default {
                assert_eq!(row(other).unwrap().kind, key.kind, "{}", key.path);
            }
        }
    }

    /// The bounds the meanings quote are the ones the checks apply.
    #[test]
    fn the_documented_bounds_are_the_checked_ones() {
        let quotes = |path: &str, text: &str| {
            let meaning = row(path).unwrap().meaning;
            assert!(
                meaning.contains(text),
                "{path}: {meaning:?} should say {text:?}"
            );
        };
        quotes("leases.ttl", &format!("({})", duration_text(MIN_TTL)));
        let (low, high) = (RENEW_WHEN_LEFT_RANGE.start(), RENEW_WHEN_LEFT_RANGE.end());
        quotes("leases.renew_when_left", &format!("from {low} to {high}"));
        quotes(
            "module.restart.max_restarts",
            &format!("(0 to {})", u32::MAX),
        );
    }

    #[test]
    fn values_are_shown_as_the_file_writes_them() {
        assert_eq!(duration_text(Duration::from_millis(200)), "200ms");
        assert_eq!(duration_text(Duration::from_secs(90)), "90s");
        assert_eq!(duration_text(Duration::from_secs(60)), "1m");
        assert_eq!(duration_text(Duration::from_secs(7200)), "2h");
        assert_eq!(Fallback::Number(1.0 / 3.0).doc(), "about `0.333`");
        assert_eq!(Fallback::Number(0.5).doc(), "`0.5`");
        assert_eq!(one_of(&["a", "b", "c"], '"'), "\"a\", \"b\" or \"c\"");
        let names: Vec<&str> = children("").map(|k| k.path).collect();
        assert_eq!(
            names,
            [
                "core",
                "admin",
                "leases",
                "module",
                "policy",
                "permission",
                "mediator"
            ]
        );
    }
}
