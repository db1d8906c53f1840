//! Reading `anima.toml`: TOML text to the typed [`Config`], noting the line of
//! every key so that each problem can point at it.
//!
//! The document is parsed into a spanned tree first (every syntax error, with
//! its line); the reader then walks it section by section and key by key,
//! reporting every unknown key, wrong type and unparsable value instead of
//! stopping at the first. What the values *mean* (identities, files,
//! certificates, contracts, dependencies, ranges) is checked afterwards by
//! [`super::check`].

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anima_protocol::Urn;
use anima_protocol::contract::parse_duration;
use anima_protocol::contract::{Contract, InitMode, ModuleType};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::check::{self, Node};
use super::model::{
    AdminSection, Config, CoreCert, CoreSection, DEFAULT_ADMIN_LISTEN, LeaseDefaults, ModuleConfig,
    Policy, PolicyTarget, RestartMode, RestartPolicy, StartMode, default_admin_listen,
};
use super::problem::{Problem, Report, join};

type Value<'i> = Spanned<DeValue<'i>>;

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

const TOP_KEYS: &[&str] = &["core", "admin", "leases", "module", "policy"];
const POLICY_KEYS: &[&str] = &["user", "allow"];
const CORE_KEYS: &[&str] = &[
    "urn",
    "cert",
    "key",
    "ca",
    "audit_log",
    "endpoint_cert",
    "endpoint_key",
];
const ADMIN_KEYS: &[&str] = &["listen", "operators"];
const LEASES_KEYS: &[&str] = &["ttl", "renew_when_left"];
const MODULE_KEYS: &[&str] = &[
    "urn",
    "type",
    "command",
    "args",
    "env",
    "cert",
    "key",
    "endpoint",
    "contract",
    "lease_ttl",
    "requires",
    "core_cert",
    "restart",
];
const RESTART_KEYS: &[&str] = &["policy", "max_restarts", "window", "backoff", "backoff_max"];

/// Parses and checks `text`, read from `origin`.
pub(super) fn parse(text: &str, origin: &Path) -> Result<Config, Vec<Problem>> {
    let mut reader = Reader {
        text,
        base: base_dir(origin),
        report: Report::new(origin.display().to_string()),
    };
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for error in errors {
            let line = reader.line(error.span().unwrap_or(0..0));
            reader.report.problem_on_line(line, error.message());
        }
        return Err(reader.report.into_problems());
    }
    let root = doc.get_ref();
    reader.known(root, "", TOP_KEYS);
    let core = match reader.table(root, "", "core", Need::Required) {
        Ok(Some(table)) => reader.core(table),
        _ => None,
    };
    let admin = match reader.table(root, "", "admin", Need::Optional) {
        Ok(Some(table)) => reader.admin(table),
        Ok(None) => Some(AdminSection {
            listen: default_admin_listen(),
            operators: Vec::new(),
        }),
        Err(Bad) => None,
    };
    let leases = match reader.table(root, "", "leases", Need::Optional) {
        Ok(Some(table)) => reader.leases(table),
        Ok(None) => Some(LeaseDefaults::default()),
        Err(Bad) => None,
    };
    let entries = reader.modules(root, &leases.clone().unwrap_or_default());
    let policies = reader.policies(root);

    let mut report = reader.report;
    if let Some(core) = &core {
        check::core(core, &mut report);
    }
    if let Some(leases) = &leases {
        check::leases(leases, &mut report);
    }
    for (index, entry) in entries.iter().enumerate() {
        if let Some(module) = &entry.config {
            check::module(index, module, core.as_ref(), &mut report);
        }
    }
    let nodes: Vec<Node<'_>> = entries
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| {
            Some(Node {
                index,
                urn: entry.urn.as_ref()?,
                requires: entry.requires.iter().map(|(j, urn)| (*j, urn)).collect(),
            })
        })
        .collect();
    check::graph(&nodes, &mut report);

    if !report.is_clean() {
        return Err(report.into_problems());
    }
    let modules: Option<Vec<ModuleConfig>> = entries.into_iter().map(|e| e.config).collect();
    match (core, admin, leases, modules) {
        (Some(core), Some(admin), Some(leases), Some(modules)) => Ok(Config {
            core,
            admin,
            leases,
            modules,
            policies,
            source: Some(origin.to_path_buf()),
        }),
        // Every `None` above was reported; this is a reader bug, not the file's.
        _ => Err(vec![Problem {
            location: origin.display().to_string(),
            message: "internal error: a section was refused without a reason".into(),
        }]),
    }
}

/// The directory relative paths are resolved against: the file's own,
/// made absolute so that it does not depend on a later working directory.
fn base_dir(origin: &Path) -> PathBuf {
    let dir = match origin.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// One `[[module]]` as far as it could be read.
#[derive(Debug, Default)]
struct Entry {
    /// The whole entry, when every key of it was readable.
    config: Option<ModuleConfig>,
    /// Its URN, when readable (for the duplicate and dependency checks).
    urn: Option<Urn>,
    /// Its readable `requires` items, with their positions.
    requires: Vec<(usize, Urn)>,
}

/// The module types a `[[module]]` entry can declare; a resident private
/// module's init mode follows from `command` or `endpoint`.
#[derive(Debug, Clone, Copy)]
enum TypeWord {
    Ephemeral,
    ResidentPrivate,
    ResidentShared,
}

/// Walks the parsed document, reporting into `report`.
struct Reader<'t> {
    text: &'t str,
    base: PathBuf,
    report: Report,
}

impl Reader<'_> {
    // ---- sections ----

    fn core(&mut self, t: &DeTable<'_>) -> Option<CoreSection> {
        let p = "core";
        self.known(t, p, CORE_KEYS);
        let urn = required(self.urn(t, p, "urn", Need::Required));
        let cert = required(self.path(t, p, "cert", Need::Required));
        let key = required(self.path(t, p, "key", Need::Required));
        let ca = required(self.path(t, p, "ca", Need::Required));
        let audit_log = self.path(t, p, "audit_log", Need::Optional);
        let endpoint_cert = self.path(t, p, "endpoint_cert", Need::Optional);
        let endpoint_key = self.path(t, p, "endpoint_key", Need::Optional);
        let endpoint = match (endpoint_cert.ok()?, endpoint_key.ok()?) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                self.report.problem(
                    &join(p, "endpoint_cert"),
                    "endpoint_cert and endpoint_key go together",
                );
                return None;
            }
        };
        Some(CoreSection {
            urn: urn.ok()?,
            cert: cert.ok()?,
            key: key.ok()?,
            ca: ca.ok()?,
            audit_log: audit_log.ok().flatten(),
            endpoint_cert: endpoint,
        })
    }

    fn admin(&mut self, t: &DeTable<'_>) -> Option<AdminSection> {
        let p = "admin";
        self.known(t, p, ADMIN_KEYS);
        let listen = match self.string(t, p, "listen", Need::Optional) {
            Ok(Some(text)) => text.parse::<SocketAddr>().map_err(|_| {
                self.report.problem(
                    &join(p, "listen"),
                    format!("{text:?} is not an IP address and port, like {DEFAULT_ADMIN_LISTEN}"),
                );
                Bad
            }),
            Ok(None) => Ok(default_admin_listen()),
            Err(Bad) => Err(Bad),
        };
        let operators = self
            .urns(t, p, "operators")
            .and_then(every)
            .map(Option::unwrap_or_default);
        Some(AdminSection {
            listen: listen.ok()?,
            operators: operators.ok()?,
        })
    }

    fn leases(&mut self, t: &DeTable<'_>) -> Option<LeaseDefaults> {
        let p = "leases";
        self.known(t, p, LEASES_KEYS);
        let defaults = LeaseDefaults::default();
        let ttl = self.duration(t, p, "ttl");
        let renew = self.float(t, p, "renew_when_left");
        Some(LeaseDefaults {
            ttl: ttl.ok()?.unwrap_or(defaults.ttl),
            renew_when_left: renew.ok()?.unwrap_or(defaults.renew_when_left),
        })
    }

    /// Every `[[policy]]` entry: which user may call which modules/methods.
    fn policies(&mut self, root: &DeTable<'_>) -> Vec<Policy> {
        let Ok(Some(value)) = self.value(root, "", "policy", Need::Optional) else {
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.report.problem(
                "policy",
                "policies are an array of tables: write [[policy]]",
            );
            return Vec::new();
        };
        let mut policies = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let p = format!("policy[{index}]");
            self.mark(&p, item.span());
            let DeValue::Table(t) = item.get_ref() else {
                let _ = self.wrong::<()>(&p, "a table", item);
                continue;
            };
            self.known(t, &p, POLICY_KEYS);
            let user = required(self.urn(t, &p, "user", Need::Required));
            let allow = self.strings(t, &p, "allow").and_then(every);
            let mut targets = Vec::new();
            for text in allow.ok().flatten().unwrap_or_default() {
                if let Ok(urn) = text.parse::<Urn>()
                    && urn.kind() == anima_protocol::UrnKind::Module
                {
                    targets.push(PolicyTarget::Module(urn));
                    continue;
                }
                if anima_protocol::lease::check_method(&text).is_ok() {
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
            if let Ok(user) = user {
                policies.push(Policy {
                    user,
                    allow: targets,
                });
            }
        }
        policies
    }

    /// Every `[[module]]` entry, in order.
    fn modules(&mut self, root: &DeTable<'_>, leases: &LeaseDefaults) -> Vec<Entry> {
        let Ok(Some(value)) = self.value(root, "", "module", Need::Optional) else {
            return Vec::new();
        };
        let items = match value.get_ref() {
            DeValue::Array(items) => items,
            DeValue::Table(_) => {
                self.report.problem(
                    "module",
                    "modules are an array of tables: write [[module]], not [module]",
                );
                return Vec::new();
            }
            _ => {
                let _ = self.wrong::<()>("module", "an array of [[module]] tables", value);
                return Vec::new();
            }
        };
        let mut entries = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let p = format!("module[{index}]");
            self.mark(&p, item.span());
            entries.push(match item.get_ref() {
                DeValue::Table(t) => self.module(index, &p, t, leases),
                _ => {
                    let _ = self.wrong::<()>(&p, "a table", item);
                    Entry::default()
                }
            });
        }
        entries
    }

    fn module(&mut self, index: usize, p: &str, t: &DeTable<'_>, leases: &LeaseDefaults) -> Entry {
        self.known(t, p, MODULE_KEYS);
        let urn = required(self.urn(t, p, "urn", Need::Required));
        if let Ok(urn) = &urn {
            self.report.label_module(index, urn);
        }
        let type_word = self.type_word(t, p);
        let command = self.string(t, p, "command", Need::Optional);
        let endpoint = self.string(t, p, "endpoint", Need::Optional);
        let args = self.strings(t, p, "args").and_then(every);
        let env = self.env(t, p);
        let cert = self.path(t, p, "cert", Need::Optional);
        let key = self.path(t, p, "key", Need::Optional);
        let contract = self.contract(t, p);
        let lease_ttl = self.duration(t, p, "lease_ttl");
        let core_cert = match self.string(t, p, "core_cert", Need::Optional) {
            Ok(None) => CoreCert::Default,
            Ok(Some(word)) if word == "default" => CoreCert::Default,
            Ok(Some(word)) if word == "endpoint" => CoreCert::Endpoint,
            Ok(Some(other)) => {
                self.report.problem(
                    &join(p, "core_cert"),
                    format!("{other:?} is not \"default\" or \"endpoint\""),
                );
                CoreCert::Default
            }
            Err(Bad) => CoreCert::Default,
        };
        let requires = self
            .urns(t, p, "requires")
            .ok()
            .flatten()
            .unwrap_or_default();
        let restart = match self.table(t, p, "restart", Need::Optional) {
            Ok(Some(rt)) => self.restart(rt, &join(p, "restart")),
            Ok(None) | Err(Bad) => RestartPolicy::default(),
        };
        let start = self.start_mode(
            p,
            Given {
                command,
                endpoint,
                args,
                env,
                cert,
                key,
            },
        );
        let module_type = match (type_word, &start) {
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

        // Built whenever the entry says what the module is and how to reach
        // it, so that its other checks still run; a key that was wrong (and
        // reported) gives way to its default, and the file is refused anyway.
        let readable: Vec<(usize, Urn)> = requires
            .iter()
            .enumerate()
            .filter_map(|(j, r)| Some((j, r.as_ref().ok()?.clone())))
            .collect();
        let config = match (urn.clone(), module_type, start) {
            (Ok(urn), Ok(module_type), Ok(start)) => Some(ModuleConfig {
                urn,
                module_type,
                start,
                contract: contract.ok().flatten(),
                lease_ttl: lease_ttl.ok().flatten().unwrap_or(leases.ttl),
                restart,
                requires: readable.iter().map(|(_, urn)| urn.clone()).collect(),
                core_cert,
            }),
            _ => None,
        };
        Entry {
            config,
            urn: urn.ok(),
            requires: readable,
        }
    }

    fn type_word(&mut self, t: &DeTable<'_>, p: &str) -> Result<TypeWord, Bad> {
        match self.string(t, p, "type", Need::Optional)?.as_deref() {
            None | Some("ephemeral") => Ok(TypeWord::Ephemeral),
            Some("resident-private") => Ok(TypeWord::ResidentPrivate),
            Some("resident-shared") => Ok(TypeWord::ResidentShared),
            Some(other) => {
                self.report.problem(
                    &join(p, "type"),
                    format!(
                        "{other:?} is not \"ephemeral\", \"resident-private\" or \"resident-shared\""
                    ),
                );
                Err(Bad)
            }
        }
    }

    /// `command` (with `args`, `env`, `cert`, `key`) or `endpoint`.
    fn start_mode(&mut self, p: &str, given: Given) -> Result<StartMode, Bad> {
        match (given.command?, given.endpoint?) {
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
                let program = if command.is_empty() {
                    self.report
                        .problem(&join(p, "command"), "must not be empty");
                    Err(Bad)
                } else if command.contains('/') || command.contains(std::path::MAIN_SEPARATOR) {
                    Ok(self.base.join(&command))
                } else {
                    // A bare name: looked up on PATH, by the check and at spawn.
                    Ok(PathBuf::from(&command))
                };
                let mut need = |name: &str, got: Got<PathBuf>| match got {
                    Ok(Some(path)) => Ok(path),
                    Ok(None) => {
                        self.report.problem(
                            &join(p, name),
                            format!(
                                "required with command: the module's own {}, handed to it at launch",
                                if name == "cert" { "certificate" } else { "private key" }
                            ),
                        );
                        Err(Bad)
                    }
                    Err(Bad) => Err(Bad),
                };
                let cert = need("cert", given.cert);
                let key = need("key", given.key);
                Ok(StartMode::Command {
                    program: program?,
                    args: given.args.ok().flatten().unwrap_or_default(),
                    env: given.env.ok().flatten().unwrap_or_default(),
                    cert: cert?,
                    key: key?,
                })
            }
            (None, Some(endpoint)) => {
                let mut clean = true;
                for (name, present) in [
                    ("args", matches!(given.args, Ok(Some(_)))),
                    ("env", matches!(given.env, Ok(Some(_)))),
                    ("cert", matches!(given.cert, Ok(Some(_)))),
                    ("key", matches!(given.key, Ok(Some(_)))),
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
                    Ok(StartMode::Endpoint(endpoint))
                } else {
                    Err(Bad)
                }
            }
        }
    }

    fn env(&mut self, t: &DeTable<'_>, p: &str) -> Got<Vec<(String, String)>> {
        let Some(table) = self.table(t, p, "env", Need::Optional)? else {
            return Ok(None);
        };
        let env_path = join(p, "env");
        let mut vars = Vec::with_capacity(table.len());
        let mut clean = true;
        for (name, value) in table.iter() {
            let name = name.get_ref().as_ref();
            let var_path = join(&env_path, name);
            self.mark(&var_path, value.span());
            if name.is_empty() || name.contains(['=', '\0']) {
                self.report.problem(
                    &var_path,
                    "not a usable variable name (empty, or with '=' or NUL)",
                );
                clean = false;
            }
            match value.get_ref().as_str() {
                Some(v) => vars.push((name.to_owned(), v.to_owned())),
                None => {
                    let _ = self.wrong::<()>(&var_path, "a string", value);
                    clean = false;
                }
            }
        }
        if clean { Ok(Some(vars)) } else { Err(Bad) }
    }

    fn contract(&mut self, t: &DeTable<'_>, p: &str) -> Got<Contract> {
        let Some(path) = self.path(t, p, "contract", Need::Optional)? else {
            return Ok(None);
        };
        let key = join(p, "contract");
        if let Err(message) = check::file_problem(&path) {
            self.report.problem(&key, message);
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
            Ok(contract) => Ok(Some(contract)),
            Err(message) => {
                self.report.problem(&key, message);
                Err(Bad)
            }
        }
    }

    /// `[module.restart]`; a wrong key (reported) gives way to a value that
    /// triggers no further problem.
    fn restart(&mut self, t: &DeTable<'_>, p: &str) -> RestartPolicy {
        self.known(t, p, RESTART_KEYS);
        let defaults = RestartPolicy::default();
        let mode = match self.string(t, p, "policy", Need::Optional) {
            Ok(Some(word)) => match word.as_str() {
                "never" => RestartMode::Never,
                "on-failure" => RestartMode::OnFailure,
                "always" => RestartMode::Always,
                _ => {
                    self.report.problem(
                        &join(p, "policy"),
                        format!("{word:?} is not \"never\", \"on-failure\" or \"always\""),
                    );
                    defaults.mode
                }
            },
            Ok(None) | Err(Bad) => defaults.mode,
        };
        let max_restarts = match self.integer(t, p, "max_restarts") {
            Ok(Some(n)) => u32::try_from(n).unwrap_or_else(|_| {
                self.report.problem(
                    &join(p, "max_restarts"),
                    format!("{n} is out of range (0 to {})", u32::MAX),
                );
                defaults.max_restarts
            }),
            Ok(None) | Err(Bad) => defaults.max_restarts,
        };
        let window = match self.duration(t, p, "window") {
            Ok(window) => window.unwrap_or(defaults.window),
            Err(Bad) => defaults.window,
        };
        let backoff = self.duration(t, p, "backoff");
        let backoff_max = match self.duration(t, p, "backoff_max") {
            Ok(max) => max.unwrap_or(defaults.backoff_max),
            Err(Bad) => Duration::MAX,
        };
        let backoff = match backoff {
            Ok(backoff) => backoff.unwrap_or(defaults.backoff),
            Err(Bad) => defaults.backoff.min(backoff_max),
        };
        RestartPolicy {
            mode,
            max_restarts,
            window,
            backoff,
            backoff_max,
        }
    }

    // ---- typed values ----

    /// The value at `key`, its line noted.
    fn value<'v, 'i>(
        &mut self,
        t: &'v DeTable<'i>,
        parent: &str,
        key: &str,
        need: Need,
    ) -> Got<&'v Value<'i>> {
        let path = join(parent, key);
        match t.get(key) {
            Some(value) => {
                self.mark(&path, value.span());
                Ok(Some(value))
            }
            None if need == Need::Required => {
                self.report.problem(&path, "missing (required)");
                Err(Bad)
            }
            None => Ok(None),
        }
    }

    fn table<'v, 'i>(
        &mut self,
        t: &'v DeTable<'i>,
        parent: &str,
        key: &str,
        need: Need,
    ) -> Got<&'v DeTable<'i>> {
        let Some(value) = self.value(t, parent, key, need)? else {
            return Ok(None);
        };
        match value.get_ref() {
            DeValue::Table(table) => Ok(Some(table)),
            _ => self.wrong(&join(parent, key), "a table", value),
        }
    }

    fn string(&mut self, t: &DeTable<'_>, parent: &str, key: &str, need: Need) -> Got<String> {
        let Some(value) = self.value(t, parent, key, need)? else {
            return Ok(None);
        };
        match value.get_ref().as_str() {
            Some(s) => Ok(Some(s.to_owned())),
            None => self.wrong(&join(parent, key), "a string", value),
        }
    }

    /// An array of strings; each item reported on its own.
    fn strings(
        &mut self,
        t: &DeTable<'_>,
        parent: &str,
        key: &str,
    ) -> Got<Vec<Result<String, Bad>>> {
        let Some(value) = self.value(t, parent, key, Need::Optional)? else {
            return Ok(None);
        };
        let path = join(parent, key);
        let DeValue::Array(items) = value.get_ref() else {
            return self.wrong(&path, "an array of strings", value);
        };
        let mut out = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{j}]");
            self.mark(&item_path, item.span());
            out.push(match item.get_ref().as_str() {
                Some(s) => Ok(s.to_owned()),
                None => self.wrong(&item_path, "a string", item),
            });
        }
        Ok(Some(out))
    }

    /// An array of URNs (of any kind; kinds are checked later).
    fn urns(&mut self, t: &DeTable<'_>, parent: &str, key: &str) -> Got<Vec<Result<Urn, Bad>>> {
        let Some(items) = self.strings(t, parent, key)? else {
            return Ok(None);
        };
        let path = join(parent, key);
        Ok(Some(
            items
                .into_iter()
                .enumerate()
                .map(|(j, item)| {
                    let text = item?;
                    Urn::parse(&text).map_err(|e| {
                        self.report.problem(&format!("{path}[{j}]"), e.to_string());
                        Bad
                    })
                })
                .collect(),
        ))
    }

    /// A URN (of any kind; kinds are checked later).
    fn urn(&mut self, t: &DeTable<'_>, parent: &str, key: &str, need: Need) -> Got<Urn> {
        let Some(text) = self.string(t, parent, key, need)? else {
            return Ok(None);
        };
        match Urn::parse(&text) {
            Ok(urn) => Ok(Some(urn)),
            Err(e) => {
                self.report.problem(&join(parent, key), e.to_string());
                Err(Bad)
            }
        }
    }

    /// A path, resolved against the configuration file's directory.
    fn path(&mut self, t: &DeTable<'_>, parent: &str, key: &str, need: Need) -> Got<PathBuf> {
        let Some(text) = self.string(t, parent, key, need)? else {
            return Ok(None);
        };
        if text.is_empty() {
            self.report.problem(&join(parent, key), "must not be empty");
            return Err(Bad);
        }
        Ok(Some(self.base.join(text)))
    }

    /// A duration written `250ms`, `30s`, `5m` or `1h`.
    fn duration(&mut self, t: &DeTable<'_>, parent: &str, key: &str) -> Got<Duration> {
        let Some(text) = self.string(t, parent, key, Need::Optional)? else {
            return Ok(None);
        };
        match parse_duration(&text) {
            Ok(d) => Ok(Some(d)),
            Err(e) => {
                self.report.problem(
                    &join(parent, key),
                    format!("{e} (write a whole number and ms, s, m or h, like \"30s\")"),
                );
                Err(Bad)
            }
        }
    }

    fn integer(&mut self, t: &DeTable<'_>, parent: &str, key: &str) -> Got<i64> {
        let Some(value) = self.value(t, parent, key, Need::Optional)? else {
            return Ok(None);
        };
        let path = join(parent, key);
        let Some(int) = value.get_ref().as_integer() else {
            return self.wrong(&path, "an integer", value);
        };
        match i64::from_str_radix(int.as_str(), int.radix()) {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                self.report.problem(&path, format!("{int} is out of range"));
                Err(Bad)
            }
        }
    }

    /// A number (an integer is taken as a float).
    fn float(&mut self, t: &DeTable<'_>, parent: &str, key: &str) -> Got<f64> {
        let Some(value) = self.value(t, parent, key, Need::Optional)? else {
            return Ok(None);
        };
        let text = match value.get_ref() {
            DeValue::Float(f) => f.as_str().to_owned(),
            DeValue::Integer(i) if i.radix() == 10 => i.as_str().to_owned(),
            _ => return self.wrong(&join(parent, key), "a number", value),
        };
        match text.parse::<f64>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                self.report
                    .problem(&join(parent, key), format!("{text} is not a number"));
                Err(Bad)
            }
        }
    }

    // ---- reporting ----

    /// Reports every key of `t` not in `known`, at the key's line.
    fn known(&mut self, t: &DeTable<'_>, parent: &str, known: &[&str]) {
        for key in t.keys() {
            let name: &str = key.get_ref().as_ref();
            if !known.contains(&name) {
                let path = join(parent, name);
                self.mark(&path, key.span());
                self.report.problem(
                    &path,
                    format!("unknown key (expected one of: {})", known.join(", ")),
                );
            }
        }
    }

    /// Reports that `value` at `path` is not `want`.
    fn wrong<T>(&mut self, path: &str, want: &str, value: &Value<'_>) -> Result<T, Bad> {
        self.report.problem(
            path,
            format!("must be {want}, not {}", value.get_ref().type_str()),
        );
        Err(Bad)
    }

    /// Notes that `path` is written at `span`.
    fn mark(&mut self, path: &str, span: Range<usize>) {
        let line = self.line(span);
        self.report.site(path, line);
    }

    /// The 1-based line of a byte span's start.
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }
}

/// The keys that decide how the Core reaches a module, as read.
struct Given {
    command: Got<String>,
    endpoint: Got<String>,
    args: Got<Vec<String>>,
    env: Got<Vec<(String, String)>>,
    cert: Got<PathBuf>,
    key: Got<PathBuf>,
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
