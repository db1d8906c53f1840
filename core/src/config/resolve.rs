//! From the raw shape ([`super::raw`]) to the model: URNs parsed, paths
//! resolved against the file's directory, durations and addresses read, and
//! how each module starts decided.
//!
//! Every value that cannot be read is reported at its key (and line); a key
//! the first pass refused counts as present but unreadable, so it triggers no
//! second problem (a refused `urn` is not also "missing"). The rest is still
//! read, so that [`super::check`] can check it.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anima_protocol::contract::{Contract, InitMode, ModuleType, parse_duration};
use anima_protocol::interface::InterfaceName;
use anima_protocol::{Urn, UrnKind};
use toml::Spanned;

use super::check;
use super::model::{
    AdminSection, Backend, Config, CoreSection, DEFAULT_ADMIN_LISTEN, DEFAULT_NATS_STREAM,
    LeaseDefaults, MAX_SYNC_INTERVAL, MAX_WORKER_THREADS, MIN_ACK_WAIT, MIN_STORE_BYTES,
    MediatorSection, MessageGrant, ModuleConfig, OperatorAccess, Permission, Policy, PolicyTarget,
    RestartPolicy, StartMode, default_admin_listen,
};
use super::problem::{Report, join, line_at};
use super::raw::{self, BackendWord, Field, Strings, TypeWord};

/// Entries with their positions in the file.
type Numbered<T> = Vec<(usize, T)>;

/// A value that was wrong; the problem is already reported.
#[derive(Debug, Clone, Copy)]
struct Bad;

/// A key's value: absent (`Ok(None)`), present, or reported wrong.
type Got<T> = Result<Option<T>, Bad>;

/// Whether a missing key is a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    Optional,
}

/// What could be read of a file: each part, or `None` when a problem in it
/// was reported.
#[derive(Debug)]
pub(super) struct Parts {
    pub(super) core: Option<CoreSection>,
    pub(super) admin: Option<AdminSection>,
    pub(super) leases: Option<LeaseDefaults>,
    pub(super) entries: Vec<Entry>,
    pub(super) policies: Vec<Policy>,
    /// Each read `[[permission]]` of calls with its position in the file.
    pub(super) permissions: Vec<(usize, Permission)>,
    /// Each read `[[permission]]` of messages with its position.
    pub(super) messages: Vec<(usize, MessageGrant)>,
    pub(super) mediator: Option<MediatorSection>,
}

impl Parts {
    /// The configuration, when every part of it was read.
    pub(super) fn into_config(self, origin: &Path) -> Option<Config> {
        let modules: Option<Vec<ModuleConfig>> =
            self.entries.into_iter().map(|e| e.config).collect();
        Some(Config {
            core: self.core?,
            admin: self.admin?,
            leases: self.leases?,
            modules: modules?,
            policies: self.policies,
            permissions: self.permissions.into_iter().map(|(_, p)| p).collect(),
            messages: self.messages.into_iter().map(|(_, m)| m).collect(),
            mediator: self.mediator?,
            source: Some(origin.to_path_buf()),
        })
    }
}

/// One `[[module]]` as far as it could be read.
#[derive(Debug, Default)]
pub(super) struct Entry {
    /// The whole entry, when it says what the module is and how to reach it.
    pub(super) config: Option<ModuleConfig>,
    /// Its URN, when readable (for the duplicate and dependency checks).
    pub(super) urn: Option<Urn>,
    /// Its readable `requires` items, with their positions.
    pub(super) requires: Vec<(usize, Urn)>,
    /// Its readable `sidecars` items, with their positions.
    pub(super) sidecars: Vec<(usize, Urn)>,
}

/// Reads the raw file's values, reporting into its report.
pub(super) struct Resolver<'t> {
    text: &'t str,
    base: PathBuf,
    refused: HashSet<String>,
    report: Report,
}

impl<'t> Resolver<'t> {
    /// A resolver of `text`'s values; `refused` are the key paths the first
    /// pass reported and took out; paths are resolved against `base`.
    pub(super) fn new(
        text: &'t str,
        base: PathBuf,
        refused: HashSet<String>,
        report: Report,
    ) -> Self {
        Resolver {
            text,
            base,
            refused,
            report,
        }
    }

    /// The report, with what the resolver found.
    pub(super) fn into_report(self) -> Report {
        self.report
    }

    /// Every section.
    pub(super) fn file(&mut self, file: &raw::File) -> Parts {
        let core = match self.value("core", &file.core, Need::Required) {
            Ok(Some(core)) => self.core(core),
            _ => None,
        };
        let admin = self.admin_section(file);
        let leases = match self.value("leases", &file.leases, Need::Optional) {
            Ok(Some(leases)) => self.leases(leases),
            Ok(None) => Some(LeaseDefaults::default()),
            Err(Bad) => None,
        };
        let defaults = leases.clone().unwrap_or_default();
        let mut entries = Vec::with_capacity(file.module.len());
        for (index, module) in file.module.iter().enumerate() {
            let p = format!("module[{index}]");
            self.mark(&p, module.span());
            entries.push(if self.refused.contains(&p) {
                Entry::default()
            } else {
                self.module(index, &p, module.get_ref(), &defaults)
            });
        }
        let policies = self.policies(&file.policy);
        let (permissions, messages) = self.permissions(&file.permission);
        let mediator = match self.value("mediator", &file.mediator, Need::Optional) {
            Ok(Some(m)) => self.mediator(m),
            Ok(None) => Some(MediatorSection::default()),
            Err(Bad) => None,
        };
        Parts {
            core,
            admin,
            leases,
            entries,
            policies,
            permissions,
            messages,
            mediator,
        }
    }

    /// Only what the operator commands read: `[admin]` and `[core] ca`,
    /// resolved as [`Resolver::file`] does; nothing else the file names is
    /// read or checked.
    pub(super) fn operator_access(&mut self, file: &raw::File) -> Option<OperatorAccess> {
        let ca = match self.value("core", &file.core, Need::Required) {
            Ok(Some(core)) => required(self.path("core.ca", &core.ca, Need::Required)).ok(),
            _ => None,
        };
        let admin = self.admin_section(file);
        Some(OperatorAccess {
            admin: admin?,
            ca: ca?,
        })
    }

    // ---- sections ----

    /// `[admin]`, or its defaults when the file has none.
    fn admin_section(&mut self, file: &raw::File) -> Option<AdminSection> {
        match self.value("admin", &file.admin, Need::Optional) {
            Ok(Some(admin)) => self.admin(admin),
            Ok(None) => Some(AdminSection {
                listen: default_admin_listen(),
                operators: Vec::new(),
                operator_cert: None,
            }),
            Err(Bad) => None,
        }
    }

    /// An optional certificate and key that go together, each given as its
    /// key path and raw value: both, neither (`Some(None)`), or a problem at
    /// the certificate's key (`None`).
    fn cert_and_key(
        &mut self,
        (cert_path, cert): (&str, &raw::Field<String>),
        (key_path, key): (&str, &raw::Field<String>),
    ) -> Option<Option<(PathBuf, PathBuf)>> {
        let cert = self.path(cert_path, cert, Need::Optional);
        let key = self.path(key_path, key, Need::Optional);
        match (cert.ok()?, key.ok()?) {
            (Some(c), Some(k)) => Some(Some((c, k))),
            (None, None) => Some(None),
            _ => {
                let name = |path: &str| path.rsplit('.').next().unwrap_or(path).to_owned();
                let message = format!("{} and {} go together", name(cert_path), name(key_path));
                self.report.problem(cert_path, message);
                None
            }
        }
    }

    fn core(&mut self, c: &raw::Core) -> Option<CoreSection> {
        let urn = required(self.urn("core.urn", &c.urn, Need::Required));
        let cert = required(self.path("core.cert", &c.cert, Need::Required));
        let key = required(self.path("core.key", &c.key, Need::Required));
        let ca = required(self.path("core.ca", &c.ca, Need::Required));
        let audit_log = self.path("core.audit_log", &c.audit_log, Need::Optional);
        let endpoint = self.cert_and_key(
            ("core.endpoint_cert", &c.endpoint_cert),
            ("core.endpoint_key", &c.endpoint_key),
        )?;
        let interfaces = match self.path("core.interfaces", &c.interfaces, Need::Optional) {
            Ok(Some(dir)) => Some(dir),
            Ok(None) => Some(self.base.join("interfaces")).filter(|d| d.is_dir()),
            Err(Bad) => return None,
        };
        let worker_threads =
            match self.value("core.worker_threads", &c.worker_threads, Need::Optional) {
                Ok(Some(&n)) => match usize::try_from(n) {
                    Ok(n) if (1..=MAX_WORKER_THREADS).contains(&n) => Some(n),
                    _ => {
                        self.report.problem(
                            "core.worker_threads",
                            format!("{n} is out of range (1 to {MAX_WORKER_THREADS})"),
                        );
                        return None;
                    }
                },
                Ok(None) => None,
                Err(Bad) => return None,
            };
        Some(CoreSection {
            urn: urn.ok()?,
            cert: cert.ok()?,
            key: key.ok()?,
            ca: ca.ok()?,
            audit_log: audit_log.ok().flatten(),
            endpoint_cert: endpoint,
            interfaces,
            worker_threads,
        })
    }

    fn admin(&mut self, a: &raw::Admin) -> Option<AdminSection> {
        let listen = match self.value("admin.listen", &a.listen, Need::Optional) {
            Ok(Some(text)) => text.parse::<SocketAddr>().map_err(|_| {
                self.report.problem(
                    "admin.listen",
                    format!("{text:?} is not an IP address and port, like {DEFAULT_ADMIN_LISTEN}"),
                );
                Bad
            }),
            Ok(None) => Ok(default_admin_listen()),
            Err(Bad) => Err(Bad),
        };
        let operators = self
            .urns("admin.operators", &a.operators)
            .and_then(every)
            .map(Option::unwrap_or_default);
        let operator_cert = self.cert_and_key(
            ("admin.operator_cert", &a.operator_cert),
            ("admin.operator_key", &a.operator_key),
        )?;
        Some(AdminSection {
            listen: listen.ok()?,
            operators: operators.ok()?,
            operator_cert,
        })
    }

    fn leases(&mut self, l: &raw::Leases) -> Option<LeaseDefaults> {
        let defaults = LeaseDefaults::default();
        let ttl = self.duration("leases.ttl", &l.ttl);
        let renew = self.value("leases.renew_when_left", &l.renew_when_left, Need::Optional);
        Some(LeaseDefaults {
            ttl: ttl.ok()?.unwrap_or(defaults.ttl),
            renew_when_left: renew.ok()?.copied().unwrap_or(defaults.renew_when_left),
        })
    }

    /// Every `[[policy]]` entry: which user may call which modules/methods.
    fn policies(&mut self, policies: &[Spanned<raw::Policy>]) -> Vec<Policy> {
        let mut read = Vec::with_capacity(policies.len());
        for (index, policy) in policies.iter().enumerate() {
            let p = format!("policy[{index}]");
            self.mark(&p, policy.span());
            if self.refused.contains(&p) {
                continue;
            }
            let user =
                required(self.urn(&join(&p, "user"), &policy.get_ref().user, Need::Required));
            let allow = self
                .strings(&join(&p, "allow"), &policy.get_ref().allow)
                .and_then(every);
            let mut targets = Vec::new();
            for text in allow.ok().flatten().unwrap_or_default() {
                if let Ok(urn) = text.parse::<Urn>()
                    && urn.kind() == UrnKind::Module
                {
                    targets.push(PolicyTarget::Module(urn));
                } else if anima_protocol::lease::check_method(&text).is_ok() {
                    targets.push(PolicyTarget::Method(text));
                } else {
                    self.report.problem(
                        &join(&p, "allow"),
                        format!(
                            "{text:?} is neither a module URN nor a /package.Service/Method path"
                        ),
                    );
                }
            }
            if let Ok(user) = &user
                && user.kind() == UrnKind::Module
            {
                self.report.problem(
                    &join(&p, "user"),
                    format!(
                        "{user} is a module: [[policy]] is for users calling through the gateway; \
                         grant a module's calls with [[permission]] (module, interface, provider)"
                    ),
                );
                continue;
            }
            if let Ok(user) = user {
                read.push(Policy {
                    user,
                    allow: targets,
                });
            }
        }
        read
    }

    /// Every `[[permission]]` entry: which module may call which interface
    /// (from which provider), or publish and receive which event types.
    /// Whether the modules are configured is checked with the modules
    /// ([`super::interfaces`]).
    fn permissions(
        &mut self,
        permissions: &[Spanned<raw::Permission>],
    ) -> (Numbered<Permission>, Numbered<MessageGrant>) {
        let mut calls = Vec::with_capacity(permissions.len());
        let mut messages = Vec::new();
        for (index, permission) in permissions.iter().enumerate() {
            let p = format!("permission[{index}]");
            self.mark(&p, permission.span());
            if self.refused.contains(&p) {
                continue;
            }
            let raw = permission.get_ref();
            let module =
                required(self.module_urn(&join(&p, "module"), &raw.module, Need::Required));
            let of_messages = raw.publish.is_some() || raw.subscribe.is_some();
            if of_messages {
                if let Some(grant) = self.message_grant(&p, raw, module) {
                    messages.push((index, grant));
                }
                continue;
            }
            let filters = [
                ("category", raw.category.as_ref().map(Spanned::span)),
                ("tags", raw.tags.as_ref().map(Spanned::span)),
            ];
            for (key, span) in filters {
                if let Some(span) = span {
                    self.mark(&join(&p, key), span);
                    self.report.problem(
                        &join(&p, key),
                        "filters what a `subscribe` permission receives; this entry has none",
                    );
                }
            }
            let interface = match required(self.value(
                &join(&p, "interface"),
                &raw.interface,
                Need::Required,
            )) {
                Ok(text) => text.parse::<InterfaceName>().map_err(|e| {
                    self.report.problem(&join(&p, "interface"), e.to_string());
                    Bad
                }),
                Err(Bad) => Err(Bad),
            };
            let provider = self.module_urn(&join(&p, "provider"), &raw.provider, Need::Optional);
            if let (Ok(module), Ok(interface), Ok(provider)) = (module, interface, provider) {
                calls.push((
                    index,
                    Permission {
                        module,
                        interface,
                        provider,
                    },
                ));
            }
        }
        (calls, messages)
    }

    /// A permission of messages (`publish`, `subscribe`, `category`,
    /// `tags`) for `module`; `None` when a problem was reported.
    fn message_grant(
        &mut self,
        p: &str,
        raw: &raw::Permission,
        module: Result<Urn, Bad>,
    ) -> Option<MessageGrant> {
        for (key, field) in [("interface", &raw.interface), ("provider", &raw.provider)] {
            if let Some(value) = field {
                self.mark(&join(p, key), value.span());
                self.report.problem(
                    &join(p, key),
                    "one [[permission]] grants either calls (interface, provider) or messages \
                     (publish, subscribe); write two entries",
                );
            }
        }
        let event_types = |resolver: &mut Self, key: &str, field: &raw::Strings| {
            let path = join(p, key);
            let items = every(resolver.strings(&path, field).ok()?).ok()?;
            let mut good = Vec::new();
            for item in items.unwrap_or_default() {
                if anima_protocol::rcs::is_event_type(&item) {
                    good.push(item);
                } else {
                    resolver.report.problem(
                        &path,
                        format!(
                            "{item:.140?} is not an event type (UPPER_SNAKE_CASE, at most {} bytes)",
                            anima_protocol::rcs::MAX_NAME
                        ),
                    );
                    return None;
                }
            }
            Some(good)
        };
        let publish = event_types(self, "publish", &raw.publish);
        let subscribe = event_types(self, "subscribe", &raw.subscribe);
        let category = self
            .value(&join(p, "category"), &raw.category, Need::Optional)
            .ok()?
            .cloned();
        let tags = every(self.strings(&join(p, "tags"), &raw.tags).ok()?).ok()?;
        let (publish, subscribe) = (publish?, subscribe?);
        if (category.is_some() || tags.is_some()) && subscribe.is_empty() {
            self.report.problem(
                &join(
                    p,
                    if category.is_some() {
                        "category"
                    } else {
                        "tags"
                    },
                ),
                "filters what a `subscribe` permission receives; this entry subscribes to nothing",
            );
            return None;
        }
        Some(MessageGrant {
            module: module.ok()?,
            publish,
            subscribe,
            category,
            tags: tags.unwrap_or_default(),
        })
    }

    /// `[mediator]`.
    fn mediator(&mut self, m: &raw::Mediator) -> Option<MediatorSection> {
        let defaults = MediatorSection::default();
        let store = self.path("mediator.store", &m.store, Need::Optional);
        let ack_wait = self.duration("mediator.ack_wait", &m.ack_wait);
        let handler = self.module_urn("mediator.error_handler", &m.error_handler, Need::Optional);
        let max = self.value(
            "mediator.max_store_bytes",
            &m.max_store_bytes,
            Need::Optional,
        );
        let max = match max {
            Ok(Some(&n)) if n < MIN_STORE_BYTES => {
                self.report.problem(
                    "mediator.max_store_bytes",
                    format!("{n} is below the smallest store, {MIN_STORE_BYTES} bytes"),
                );
                None
            }
            Ok(Some(&n)) => Some(n.unsigned_abs()),
            Ok(None) => Some(defaults.max_store_bytes),
            Err(Bad) => None,
        };
        let ack_wait = match ack_wait {
            Ok(Some(d)) if d < MIN_ACK_WAIT => {
                self.report.problem(
                    "mediator.ack_wait",
                    format!("{d:?} is shorter than {MIN_ACK_WAIT:?}"),
                );
                None
            }
            Ok(d) => Some(d.unwrap_or(defaults.ack_wait)),
            Err(Bad) => None,
        };
        let backend = self.backend(m);
        let sync_interval = self.sync_interval(m, backend.as_ref());
        Some(MediatorSection {
            store: store.ok()?,
            max_store_bytes: max?,
            ack_wait: ack_wait?,
            sync_interval: sync_interval.ok()?,
            error_handler: handler.ok()?,
            backend: backend?,
        })
    }

    /// `[mediator] sync_interval`: 1 ms to [`MAX_SYNC_INTERVAL`], with the
    /// embedded store.
    fn sync_interval(&mut self, m: &raw::Mediator, backend: Option<&Backend>) -> Got<Duration> {
        const PATH: &str = "mediator.sync_interval";
        let Some(d) = self.duration(PATH, &m.sync_interval)? else {
            return Ok(None);
        };
        let problem = if matches!(backend, Some(Backend::Nats { .. })) {
            "is read only with backend = \"embedded\" (on NATS the server keeps the messages)"
                .to_owned()
        } else if d.is_zero() || d > MAX_SYNC_INTERVAL {
            format!("{d:?} is not between 1ms and {MAX_SYNC_INTERVAL:?}")
        } else {
            return Ok(Some(d));
        };
        self.report.problem(PATH, problem);
        Err(Bad)
    }

    /// `[mediator] backend`, `nats_url` and `nats_stream`.
    fn backend(&mut self, m: &raw::Mediator) -> Option<Backend> {
        let backend = self.value("mediator.backend", &m.backend, Need::Optional);
        let url = self.value("mediator.nats_url", &m.nats_url, Need::Optional);
        let stream = self.value("mediator.nats_stream", &m.nats_stream, Need::Optional);
        let (Ok(backend), Ok(url), Ok(stream)) = (backend, url, stream) else {
            return None;
        };
        match backend.copied().unwrap_or_default() {
            BackendWord::Embedded => {
                for (key, given) in [
                    ("nats_url", url.is_some()),
                    ("nats_stream", stream.is_some()),
                ] {
                    if given {
                        self.report.problem(
                            &format!("mediator.{key}"),
                            "is read only with backend = \"nats\"",
                        );
                    }
                }
                (url.is_none() && stream.is_none()).then_some(Backend::Embedded)
            }
            BackendWord::Nats => {
                let Some(url) = url else {
                    self.report.problem(
                        "mediator.backend",
                        "\"nats\" needs nats_url = \"tls://HOST:PORT\"",
                    );
                    return None;
                };
                if m.store.is_some() {
                    self.report.problem(
                        "mediator.store",
                        "is read only with backend = \"embedded\" (on NATS the server keeps the messages)",
                    );
                    return None;
                }
                let url_ok =
                    nats_url_problem(url).map(|p| self.report.problem("mediator.nats_url", p));
                let stream = stream.map_or(DEFAULT_NATS_STREAM, String::as_str);
                let stream_ok = nats_stream_problem(stream)
                    .map(|p| self.report.problem("mediator.nats_stream", p));
                (url_ok.is_none() && stream_ok.is_none()).then(|| Backend::Nats {
                    url: url.clone(),
                    stream: stream.to_owned(),
                })
            }
        }
    }

    /// A URN that must name a module.
    fn module_urn(&mut self, path: &str, field: &Field<String>, need: Need) -> Got<Urn> {
        let urn = self.urn(path, field, need)?;
        if let Some(urn) = &urn
            && urn.kind() != UrnKind::Module
        {
            self.report.problem(
                path,
                format!("{urn} is not a module URN (urn:anima:module:NAME)"),
            );
            return Err(Bad);
        }
        Ok(urn)
    }

    // ---- modules ----

    /// The readable items of a list of module URNs, with their positions.
    fn module_urns(&mut self, path: &str, field: &Strings) -> Vec<(usize, Urn)> {
        self.urns(path, field)
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(j, urn)| Some((j, urn.ok()?)))
            .collect()
    }

    fn module(&mut self, index: usize, p: &str, m: &raw::Module, leases: &LeaseDefaults) -> Entry {
        let urn = required(self.urn(&join(p, "urn"), &m.urn, Need::Required));
        if let Ok(urn) = &urn {
            self.report.label_module(index, urn);
        }
        let type_word = self.value(&join(p, "type"), &m.module_type, Need::Optional);
        let start = self.start_mode(p, m);
        let contract = self.contract(&join(p, "contract"), &m.contract);
        let lease_ttl = self.duration(&join(p, "lease_ttl"), &m.lease_ttl);
        let core_cert = self.value(&join(p, "core_cert"), &m.core_cert, Need::Optional);
        let requires = self.module_urns(&join(p, "requires"), &m.requires);
        let sidecars = self.module_urns(&join(p, "sidecars"), &m.sidecars);
        let word = match type_word {
            Ok(written) => Ok(self.type_word(p, written.copied(), urn.as_ref().ok(), &contract)),
            Err(Bad) => Err(Bad),
        };
        let module_type = match (word, &start) {
            (Ok(TypeWord::Ephemeral), _) => Ok(ModuleType::Ephemeral),
            (Ok(TypeWord::ResidentPrivate), Ok(StartMode::Command { .. })) => {
                Ok(ModuleType::ResidentPrivate(InitMode::CoreStarted))
            }
            (Ok(TypeWord::ResidentPrivate), Ok(StartMode::Endpoint(_))) => {
                Ok(ModuleType::ResidentPrivate(InitMode::PreStarted))
            }
            (Ok(TypeWord::ResidentShared), _) => Ok(ModuleType::ResidentShared),
            _ => Err(Bad),
        };
        let restart = self.restart(&join(p, "restart"), &m.restart, module_type.ok());
        // Built whenever the entry says what the module is and how to reach
        // it, so that its other checks still run; a key that was wrong (and
        // reported) gives way to its default, and the file is refused anyway.
        let config = match (urn.clone(), module_type, start) {
            (Ok(urn), Ok(module_type), Ok(start)) => Some(ModuleConfig {
                urn,
                module_type,
                start,
                contract: contract
                    .as_ref()
                    .ok()
                    .and_then(|c| c.as_ref())
                    .map(|(_, c)| c.clone()),
                contract_file: contract.ok().flatten().map(|(path, _)| path),
                lease_ttl: lease_ttl.ok().flatten().unwrap_or(leases.ttl),
                restart,
                requires: requires.iter().map(|(_, urn)| urn.clone()).collect(),
                sidecars: sidecars.iter().map(|(_, urn)| urn.clone()).collect(),
                core_cert: core_cert.ok().flatten().copied().unwrap_or_default(),
            }),
            _ => None,
        };
        Entry {
            config,
            urn: urn.ok(),
            requires,
            sidecars,
        }
    }

    /// The entry's type: as written, else its contract's (when the contract
    /// is this module's), else ephemeral. A written type its own contract
    /// contradicts is reported here, naming both values and both files, and
    /// gives way to the contract's. (A contract for another module is
    /// reported by the checks, with its type.)
    fn type_word(
        &mut self,
        p: &str,
        written: Option<TypeWord>,
        urn: Option<&Urn>,
        contract: &Got<(PathBuf, Contract)>,
    ) -> TypeWord {
        let own = match contract {
            Ok(Some((path, contract))) if Some(&contract.urn) == urn => {
                Some((path, word_of(contract.module_type)))
            }
            _ => None,
        };
        match (written, own) {
            (Some(written), Some((path, declared))) if written != declared => {
                self.report.problem(
                    &join(p, "type"),
                    format!(
                        "{:?} here, but the contract {} declares type {:?}: write the \
                         contract's type, or leave type out to take it from the contract",
                        type_text(written),
                        path.display(),
                        type_text(declared)
                    ),
                );
                declared
            }
            (Some(written), _) => written,
            (None, Some((_, declared))) => declared,
            (None, None) => TypeWord::default(),
        }
    }

    /// `command` (with `args`, `env`, `cert`, `key`) or `endpoint`.
    fn start_mode(&mut self, p: &str, m: &raw::Module) -> Result<StartMode, Bad> {
        let command = self.value(&join(p, "command"), &m.command, Need::Optional);
        let endpoint = self.value(&join(p, "endpoint"), &m.endpoint, Need::Optional);
        let args = self.strings(&join(p, "args"), &m.args).and_then(every);
        let env = self.env(&join(p, "env"), &m.env);
        let cert = self.path(&join(p, "cert"), &m.cert, Need::Optional);
        let key = self.path(&join(p, "key"), &m.key, Need::Optional);
        match (command?, endpoint?) {
            (Some(_), Some(_)) => {
                self.report.problem(
                    &join(p, "endpoint"),
                    "give either command (the Core starts the module) or endpoint \
                     (the Core dials it), not both",
                );
                Err(Bad)
            }
            (None, None) => {
                self.report.problem(
                    p,
                    "needs either command (the Core starts the module) or endpoint \
                     (the Core dials it)",
                );
                Err(Bad)
            }
            (Some(command), None) => {
                let program = self.program(&join(p, "command"), command);
                let cert = self.launch_file(p, "cert", cert);
                let key = self.launch_file(p, "key", key);
                Ok(StartMode::Command {
                    program: program?,
                    args: args.ok().flatten().unwrap_or_default(),
                    env: env.ok().flatten().unwrap_or_default(),
                    cert: cert?,
                    key: key?,
                })
            }
            (None, Some(endpoint)) => {
                let mut clean = true;
                for (name, present) in [
                    ("args", matches!(args, Ok(Some(_)))),
                    ("env", matches!(env, Ok(Some(_)))),
                    ("cert", matches!(cert, Ok(Some(_)))),
                    ("key", matches!(key, Ok(Some(_)))),
                ] {
                    if present {
                        self.report.problem(
                            &join(p, name),
                            "only for a module the Core starts (with command); \
                             this one has an endpoint",
                        );
                        clean = false;
                    }
                }
                if clean {
                    Ok(StartMode::Endpoint(endpoint.clone()))
                } else {
                    Err(Bad)
                }
            }
        }
    }

    /// `command`: a path relative to the file, or a bare name looked up on
    /// `PATH` (by the check and at spawn).
    fn program(&mut self, path: &str, command: &str) -> Result<PathBuf, Bad> {
        if command.is_empty() {
            self.report.problem(path, "must not be empty");
            Err(Bad)
        } else if command.contains('/') || command.contains(std::path::MAIN_SEPARATOR) {
            Ok(self.base.join(command))
        } else {
            Ok(PathBuf::from(command))
        }
    }

    /// The module's `cert` or `key`, which a `command` needs.
    fn launch_file(&mut self, p: &str, name: &str, got: Got<PathBuf>) -> Result<PathBuf, Bad> {
        match got {
            Ok(Some(path)) => Ok(path),
            Ok(None) => {
                let what = if name == "cert" {
                    "certificate"
                } else {
                    "private key"
                };
                self.report.problem(
                    &join(p, name),
                    format!(
                        "required with command: the module's own {what}, handed to it at launch"
                    ),
                );
                Err(Bad)
            }
            Err(Bad) => Err(Bad),
        }
    }

    fn env(
        &mut self,
        path: &str,
        field: &Field<BTreeMap<String, Spanned<String>>>,
    ) -> Got<Vec<(String, String)>> {
        let Some(table) = self.value(path, field, Need::Optional)? else {
            return Ok(None);
        };
        let mut vars = Vec::with_capacity(table.len());
        let mut clean = true;
        for (name, value) in table {
            let var_path = join(path, name);
            self.mark(&var_path, value.span());
            if self.refused.contains(&var_path) {
                clean = false;
                continue;
            }
            if name.is_empty() || name.contains(['=', '\0']) {
                self.report.problem(
                    &var_path,
                    "not a usable variable name (empty, or with '=' or NUL)",
                );
                clean = false;
            }
            vars.push((name.clone(), value.get_ref().clone()));
        }
        if clean { Ok(Some(vars)) } else { Err(Bad) }
    }

    /// `contract`: the file (resolved) and the contract it holds.
    fn contract(&mut self, key: &str, field: &Field<String>) -> Got<(PathBuf, Contract)> {
        let Some(path) = self.path(key, field, Need::Optional)? else {
            return Ok(None);
        };
        if let Err(message) = check::file_problem(&path) {
            self.report.problem(key, message);
            return Err(Bad);
        }
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| {
                Contract::from_toml(&text).map_err(|e| {
                    format!(
                        "invalid contract {}: {}",
                        path.display(),
                        one_line(&e.to_string())
                    )
                })
            });
        match parsed {
            Ok(contract) => Ok(Some((path, contract))),
            Err(message) => {
                self.report.problem(key, message);
                Err(Bad)
            }
        }
    }

    /// `[module.restart]`, its defaults those of the module's type (see
    /// [`RestartPolicy::for_type`]; of a resident module when the type is
    /// unknown); a wrong key (reported) gives way to a value that triggers
    /// no further problem.
    fn restart(
        &mut self,
        p: &str,
        field: &Field<raw::Restart>,
        module_type: Option<ModuleType>,
    ) -> RestartPolicy {
        let defaults = module_type.map_or_else(RestartPolicy::default, RestartPolicy::for_type);
        let Ok(Some(r)) = self.value(p, field, Need::Optional) else {
            return defaults;
        };
        let mode = self.value(&join(p, "policy"), &r.policy, Need::Optional);
        let max_restarts =
            match self.value(&join(p, "max_restarts"), &r.max_restarts, Need::Optional) {
                Ok(Some(&n)) => u32::try_from(n).unwrap_or_else(|_| {
                    self.report.problem(
                        &join(p, "max_restarts"),
                        format!("{n} is out of range (0 to {})", u32::MAX),
                    );
                    defaults.max_restarts
                }),
                Ok(None) | Err(Bad) => defaults.max_restarts,
            };
        let window = self.duration(&join(p, "window"), &r.window);
        let backoff = self.duration(&join(p, "backoff"), &r.backoff);
        let backoff_max = match self.duration(&join(p, "backoff_max"), &r.backoff_max) {
            Ok(max) => max.unwrap_or(defaults.backoff_max),
            Err(Bad) => Duration::MAX,
        };
        RestartPolicy {
            mode: mode.ok().flatten().copied().unwrap_or(defaults.mode),
            max_restarts,
            window: window.ok().flatten().unwrap_or(defaults.window),
            backoff: match backoff {
                Ok(backoff) => backoff.unwrap_or(defaults.backoff),
                Err(Bad) => defaults.backoff.min(backoff_max),
            },
            backoff_max,
        }
    }

    // ---- values ----

    /// The value of `field`, at `path`, its line noted. A key the first pass
    /// refused is `Err(Bad)`: reported already, neither present nor missing.
    fn value<'v, T>(&mut self, path: &str, field: &'v Field<T>, need: Need) -> Got<&'v T> {
        match field {
            Some(value) => {
                self.mark(path, value.span());
                Ok(Some(value.get_ref()))
            }
            None if self.refused.contains(path) => Err(Bad),
            None if need == Need::Required => {
                self.report.problem(path, "missing (required)");
                Err(Bad)
            }
            None => Ok(None),
        }
    }

    /// An array of strings, each item's line noted; an item the first pass
    /// refused is `Err(Bad)`.
    fn strings(&mut self, path: &str, field: &Strings) -> Got<Vec<Result<String, Bad>>> {
        let Some(items) = self.value(path, field, Need::Optional)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{j}]");
            self.mark(&item_path, item.span());
            out.push(if self.refused.contains(&item_path) {
                Err(Bad)
            } else {
                Ok(item.get_ref().clone())
            });
        }
        Ok(Some(out))
    }

    /// An array of URNs (of any kind; kinds are checked later); each item
    /// reported on its own.
    fn urns(&mut self, path: &str, field: &Strings) -> Got<Vec<Result<Urn, Bad>>> {
        let Some(items) = self.strings(path, field)? else {
            return Ok(None);
        };
        let mut urns = Vec::with_capacity(items.len());
        for (j, item) in items.into_iter().enumerate() {
            urns.push(item.and_then(|text| {
                Urn::parse(&text).map_err(|e| {
                    self.report.problem(&format!("{path}[{j}]"), e.to_string());
                    Bad
                })
            }));
        }
        Ok(Some(urns))
    }

    /// A URN (of any kind; kinds are checked later).
    fn urn(&mut self, path: &str, field: &Field<String>, need: Need) -> Got<Urn> {
        let Some(text) = self.value(path, field, need)? else {
            return Ok(None);
        };
        match Urn::parse(text) {
            Ok(urn) => Ok(Some(urn)),
            Err(e) => {
                self.report.problem(path, e.to_string());
                Err(Bad)
            }
        }
    }

    /// A path, resolved against the configuration file's directory.
    fn path(&mut self, path: &str, field: &Field<String>, need: Need) -> Got<PathBuf> {
        let Some(text) = self.value(path, field, need)? else {
            return Ok(None);
        };
        if text.is_empty() {
            self.report.problem(path, "must not be empty");
            return Err(Bad);
        }
        Ok(Some(self.base.join(text)))
    }

    /// A duration written `250ms`, `30s`, `5m` or `1h`.
    fn duration(&mut self, path: &str, field: &Field<String>) -> Got<Duration> {
        let Some(text) = self.value(path, field, Need::Optional)? else {
            return Ok(None);
        };
        match parse_duration(text) {
            Ok(d) => Ok(Some(d)),
            Err(e) => {
                self.report.problem(
                    path,
                    format!("{e} (write a whole number and ms, s, m or h, like \"30s\")"),
                );
                Err(Bad)
            }
        }
    }

    /// Notes that `path` is written at `span`.
    fn mark(&mut self, path: &str, span: Range<usize>) {
        let line = line_at(self.text, span.start);
        self.report.site(path, line);
    }
}

/// The word `type` takes for a module of `module_type`.
fn word_of(module_type: ModuleType) -> TypeWord {
    match module_type {
        ModuleType::Ephemeral => TypeWord::Ephemeral,
        ModuleType::ResidentPrivate(_) => TypeWord::ResidentPrivate,
        ModuleType::ResidentShared => TypeWord::ResidentShared,
    }
}

/// `word` as `anima.toml` and `module.toml` write it.
fn type_text(word: TypeWord) -> &'static str {
    match word {
        TypeWord::Ephemeral => "ephemeral",
        TypeWord::ResidentPrivate => "resident-private",
        TypeWord::ResidentShared => "resident-shared",
    }
}

/// A required value: present, or already reported missing or wrong.
fn required<T>(got: Got<T>) -> Result<T, Bad> {
    got?.ok_or(Bad)
}

/// A list, when every item of it was readable.
fn every<T>(items: Option<Vec<Result<T, Bad>>>) -> Got<Vec<T>> {
    items.map(|items| items.into_iter().collect()).transpose()
}

/// A multi-line TOML error (position, snippet, message) as one line:
/// `TOML parse error at line 1, column 1: missing field `version``.
fn one_line(message: &str) -> String {
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    match lines.next_back() {
        Some(last) => format!("{first}: {last}"),
        None => first.to_owned(),
    }
}

/// What is wrong with `[mediator] nats_url`, if anything: it is
/// `tls://HOST:PORT` (the mediator never talks to NATS in the clear).
fn nats_url_problem(url: &str) -> Option<String> {
    let Some(rest) = url.strip_prefix("tls://") else {
        return Some(format!(
            "{url:.200} is not tls://HOST:PORT (the link to NATS is TLS)"
        ));
    };
    let port = rest
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(p))) if !host.is_empty() && p != 0 && !host.contains(['/', '@', ',']) => {
            None
        }
        _ => Some(format!("{url:.200} is not tls://HOST:PORT")),
    }
}

/// What is wrong with `[mediator] nats_stream`, if anything: 1 to 32 ASCII
/// letters, digits, `_` or `-` (it begins JetStream stream and consumer
/// names).
fn nats_stream_problem(stream: &str) -> Option<String> {
    let ok = (1..=32).contains(&stream.len())
        && stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (!ok).then(|| format!("{stream:.40} is not 1 to 32 letters, digits, '_' or '-'"))
}
