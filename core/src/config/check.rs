//! What a configuration's values mean, checked: identities of the right kind,
//! files that exist, certificates that carry the right URN, contracts that
//! agree with their entries, dependencies that resolve without cycles, and
//! numbers in range.
//!
//! The checks read files but start nothing and open no socket. They run on
//! what [`super::parse`] could read (so one bad key does not hide the
//! problems of the rest) and on built configurations ([`super::check`]).
//! Keys, types and unreadable values are [`super::parse`]'s and
//! [`super::resolve`]'s problems; these are about what the values mean.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anima_protocol::contract::{Contract, InitMode, ModuleType};
use anima_protocol::lease::MIN_TTL;
use anima_protocol::transport::not_after;
use anima_protocol::{TlsIdentity, TrustRoot, Urn, UrnKind};

use super::model::{
    AdminSection, CoreCert, CoreSection, LeaseDefaults, ModuleConfig, RENEW_WHEN_LEFT_RANGE,
    RestartPolicy, StartMode,
};
use super::problem::{Report, join};

/// A module as the dependency checks see it.
#[derive(Debug)]
pub(crate) struct Node<'a> {
    /// Its position in the file's `[[module]]` list.
    pub(crate) index: usize,
    /// Its URN.
    pub(crate) urn: &'a Urn,
    /// The modules that start before it: its `requires` and `sidecars`
    /// items, each with its key (`requires[0]`, `sidecars[1]`).
    pub(crate) before: Vec<(String, &'a Urn)>,
}

impl<'a> Node<'a> {
    /// The [`Node::before`] of a module's `requires` and `sidecars`, each
    /// item with its position in its list.
    pub(crate) fn before(
        requires: impl IntoIterator<Item = (usize, &'a Urn)>,
        sidecars: impl IntoIterator<Item = (usize, &'a Urn)>,
    ) -> Vec<(String, &'a Urn)> {
        let requires = requires
            .into_iter()
            .map(|(i, u)| (format!("requires[{i}]"), u));
        let sidecars = sidecars
            .into_iter()
            .map(|(i, u)| (format!("sidecars[{i}]"), u));
        requires.chain(sidecars).collect()
    }
}

/// `[core]`: a Core URN, its certificate and key (carrying that URN), a CA.
pub(crate) fn core(core: &CoreSection, report: &mut Report) {
    if core.urn.kind() != UrnKind::Core {
        report.problem(
            "core.urn",
            format!("{} is not a Core URN (urn:anima:core:NAME)", core.urn),
        );
    }
    let cert = file(report, "core.cert", &core.cert);
    let key = file(report, "core.key", &core.key);
    if cert && key {
        identity(report, "core.cert", &core.cert, &core.key, &core.urn);
    }
    if file(report, "core.ca", &core.ca)
        && let Err(e) = TrustRoot::from_pem_file(&core.ca)
    {
        report.problem("core.ca", format!("not a usable CA certificate: {e}"));
    }
    if let Some((cert, private_key)) = &core.endpoint_cert {
        let cert_ok = file(report, "core.endpoint_cert", cert);
        if file(report, "core.endpoint_key", private_key) && cert_ok {
            identity(report, "core.endpoint_cert", cert, private_key, &core.urn);
        }
    }
    if let Some(dir) = &core.interfaces {
        if !dir.is_dir() {
            report.problem(
                "core.interfaces",
                format!("{} is not a directory", dir.display()),
            );
        } else if let Err(e) = anima_protocol::interface::definition::load_all(dir) {
            report.problem("core.interfaces", e.to_string());
        }
    }
}

/// `[admin]`: the operator's certificate and key, when given, are usable
/// and carry a URN that `operators` lists (else the Core would refuse the
/// operator commands that present them).
pub(crate) fn admin(admin: &AdminSection, report: &mut Report) {
    let Some((cert, private_key)) = &admin.operator_cert else {
        return;
    };
    let key = "admin.operator_cert";
    let cert_ok = file(report, key, cert);
    if !(file(report, "admin.operator_key", private_key) && cert_ok) {
        return;
    }
    let identity = match TlsIdentity::from_pem_files(cert, private_key) {
        Ok(identity) => identity,
        Err(e) => {
            report.problem(key, format!("cannot use this certificate and key: {e}"));
            return;
        }
    };
    if !admin.operators.contains(identity.urn()) {
        report.problem(
            key,
            format!(
                "the certificate {} is for {}, which admin.operators does not list \
                 (the Core would refuse it)",
                cert.display(),
                identity.urn()
            ),
        );
    }
    expiry(report, key, cert, &identity);
}

/// `[leases]`: a TTL a lease can have, a renewal point in range.
pub(crate) fn leases(leases: &LeaseDefaults, report: &mut Report) {
    if leases.ttl < MIN_TTL {
        report.problem(
            "leases.ttl",
            format!(
                "{:?} is shorter than the shortest lease, {MIN_TTL:?}",
                leases.ttl
            ),
        );
    }
    if !RENEW_WHEN_LEFT_RANGE.contains(&leases.renew_when_left) {
        report.problem(
            "leases.renew_when_left",
            format!(
                "{} is outside {}..{} (the fraction of the TTL left when the Core renews)",
                leases.renew_when_left,
                RENEW_WHEN_LEFT_RANGE.start(),
                RENEW_WHEN_LEFT_RANGE.end()
            ),
        );
    }
}

/// One `[[module]]` entry, on its own (see [`graph`] for the relations).
pub(crate) fn module(
    index: usize,
    module: &ModuleConfig,
    core: Option<&CoreSection>,
    report: &mut Report,
) {
    let p = format!("module[{index}]");
    let at = |key: &str| join(&p, key);
    report.label_module(index, &module.urn);
    let is_module = module.urn.kind() == UrnKind::Module;
    if !is_module {
        report.problem(
            &at("urn"),
            format!("{} is not a module URN (urn:anima:module:NAME)", module.urn),
        );
    }
    match &module.start {
        StartMode::Command {
            program, cert, key, ..
        } => {
            if let Err(message) = program_problem(program) {
                report.problem(&at("command"), message);
            }
            let cert_ok = file(report, &at("cert"), cert);
            let key_ok = file(report, &at("key"), key);
            if cert_ok && key_ok && is_module {
                identity(report, &at("cert"), cert, key, &module.urn);
            }
            if module.module_type == ModuleType::ResidentPrivate(InitMode::PreStarted) {
                report.problem(
                    &at("command"),
                    "a pre-started resident-private module is started by infrastructure: \
                     give its endpoint",
                );
            }
        }
        StartMode::Endpoint(endpoint) => dialled(&p, module.module_type, endpoint, report),
    }
    if module.lease_ttl < MIN_TTL {
        report.problem(
            &at("lease_ttl"),
            format!(
                "{:?} is shorter than the shortest lease, {MIN_TTL:?}",
                module.lease_ttl
            ),
        );
    }
    if let Some(contract) = &module.contract {
        agrees_with_contract(&p, module, contract, report);
    }
    if module.core_cert == CoreCert::Endpoint && core.is_some_and(|c| c.endpoint_cert.is_none()) {
        report.problem(
            &at("core_cert"),
            "\"endpoint\" needs [core] endpoint_cert and endpoint_key (a P-256 certificate \
             for the same Core URN; anima certs init makes core-NAME.endpoint.pem and .key, \
             taken without a mention when beside [core] cert)",
        );
    }
    restart(&at("restart"), &module.restart, report);
}

/// A module the Core dials at `endpoint`: one of a type it does not start.
fn dialled(p: &str, module_type: ModuleType, endpoint: &str, report: &mut Report) {
    let at = join(p, "endpoint");
    match module_type {
        ModuleType::Ephemeral => report.problem(
            &at,
            "an ephemeral (Type I) module is always started by its Core: \
             give command, cert and key instead of endpoint (or declare \
             type = \"resident-private\" or \"resident-shared\")",
        ),
        ModuleType::ResidentPrivate(InitMode::CoreStarted) => report.problem(
            &at,
            "a core-started resident-private module is started by the Core: give command",
        ),
        _ => {}
    }
    if let Err(message) = endpoint_problem(endpoint) {
        report.problem(&at, message);
    }
}

/// The contract names this module, its type, and a `max_lease` its lease
/// TTL fits in.
fn agrees_with_contract(p: &str, module: &ModuleConfig, contract: &Contract, report: &mut Report) {
    let at = |key: &str| join(p, key);
    if contract.urn != module.urn {
        report.problem(
            &at("contract"),
            format!("the contract is for {}, not {}", contract.urn, module.urn),
        );
    }
    if contract.module_type != module.module_type {
        let hint = match (contract.module_type, module.module_type) {
            (ModuleType::ResidentPrivate(_), ModuleType::ResidentPrivate(_)) => {
                " (an entry with command is core-started, one with endpoint pre-started)"
            }
            _ => "",
        };
        report.problem(
            &at("contract"),
            format!(
                "the contract declares type {}, but this entry is {}{hint}",
                contract.module_type, module.module_type
            ),
        );
    }
    if module.lease_ttl > contract.max_lease {
        if report.has_site(&at("lease_ttl")) {
            report.problem(
                &at("lease_ttl"),
                format!(
                    "{:?} is longer than the contract's max_lease {:?}",
                    module.lease_ttl, contract.max_lease
                ),
            );
        } else {
            report.problem(
                &at("contract"),
                format!(
                    "the lease TTL {:?} (from [leases].ttl) is longer than the contract's \
                     max_lease {:?}: set lease_ttl for this module",
                    module.lease_ttl, contract.max_lease
                ),
            );
        }
    }
}

/// Services several modules may declare: the conformance probe
/// (PROTOCOL.md §8), which `anima conformance` calls on a module directly.
/// The gateway routes none of their methods that several modules declare.
pub(crate) const SHARED_SERVICES: &[&str] = &["/anima.v1.Probe/"];

/// The most method paths one problem lists.
const LISTED_METHODS: usize = 5;

/// No two modules declare the same method (outside [`SHARED_SERVICES`]):
/// the gateway routes a method only to the one module declaring it, so
/// calls to a method several declare would all fail `UNIMPLEMENTED`. Each
/// later module is reported at its `contract`, naming the earlier one and
/// the paths; modules without a contract declare nothing here, and a
/// repeated URN is [`graph`]'s problem. Two modules that provide the same
/// interface are alternative providers and may declare the same methods:
/// users' calls of those are not routed, modules' calls go through the
/// Core to one of them (PROTOCOL.md §10).
pub(crate) fn methods<'a>(
    modules: impl IntoIterator<Item = (usize, &'a ModuleConfig)>,
    report: &mut Report,
) {
    let declaring: Vec<(usize, &Urn, &Contract)> = modules
        .into_iter()
        .filter_map(|(index, m)| Some((index, &m.urn, m.contract.as_ref()?)))
        .collect();
    for (later, &(index, urn, contract)) in declaring.iter().enumerate() {
        for &(earlier, earlier_urn, earlier_contract) in &declaring[..later] {
            // Alternative providers of one interface declare its methods
            // alike: modules call them through the Core, which picks one.
            let alternatives = contract.provides.iter().any(|p| {
                earlier_contract
                    .provides
                    .iter()
                    .any(|q| q.interface == p.interface)
            });
            if earlier_urn == urn || alternatives {
                continue;
            }
            let shared: Vec<&str> = contract
                .methods
                .iter()
                .filter(|m| !SHARED_SERVICES.iter().any(|s| m.starts_with(s)))
                .filter(|m| earlier_contract.methods.contains(m))
                .collect();
            if shared.is_empty() {
                continue;
            }
            let mut listed = shared[..shared.len().min(LISTED_METHODS)].join(", ");
            if shared.len() > LISTED_METHODS {
                listed.push_str(&format!(" and {} more", shared.len() - LISTED_METHODS));
            }
            report.problem(
                &format!("module[{index}].contract"),
                format!(
                    "declares {listed}, which module[{earlier}] ({earlier_urn}) declares too: \
                     the gateway routes a method only when a single module declares it, so \
                     every call to {} would fail UNIMPLEMENTED (give each module its own \
                     service)",
                    if shared.len() == 1 { "it" } else { "them" }
                ),
            );
        }
    }
}

/// `[module.restart]`: a window, a backoff that can double up to its maximum.
fn restart(p: &str, policy: &RestartPolicy, report: &mut Report) {
    if policy.window.is_zero() {
        report.problem(&join(p, "window"), "must be longer than zero");
    }
    if policy.backoff.is_zero() {
        report.problem(&join(p, "backoff"), "must be longer than zero");
    }
    if policy.backoff > policy.backoff_max {
        report.problem(
            &join(p, "backoff"),
            format!(
                "{:?} is longer than backoff_max {:?}",
                policy.backoff, policy.backoff_max
            ),
        );
    }
}

/// The relations between modules: unique URNs, `requires` naming modules of
/// this configuration (each once), and no dependency cycle.
pub(crate) fn graph(nodes: &[Node<'_>], report: &mut Report) {
    let mut first: HashMap<&Urn, usize> = HashMap::new();
    for (position, node) in nodes.iter().enumerate() {
        if let Some(&earlier) = first.get(node.urn) {
            report.problem(
                &format!("module[{}].urn", node.index),
                format!(
                    "duplicate: module[{}] has the same URN",
                    nodes[earlier].index
                ),
            );
        } else {
            first.insert(node.urn, position);
        }
    }

    // Edges between first occurrences, by position in `nodes`; each with the
    // item it comes from.
    let mut edges: Vec<Vec<(usize, &str)>> = vec![Vec::new(); nodes.len()];
    for (position, node) in nodes.iter().enumerate() {
        let mut seen = HashSet::new();
        for (item, before) in &node.before {
            let path = format!("module[{}].{item}", node.index);
            if !seen.insert(*before) {
                report.problem(&path, format!("{before} is listed twice"));
                continue;
            }
            if before.kind() != UrnKind::Module {
                report.problem(&path, format!("{before} is not a module URN"));
            } else if let Some(&target) = first.get(*before) {
                if first.get(node.urn) == Some(&position) {
                    edges[position].push((target, item.as_str()));
                }
            } else {
                report.problem(&path, format!("no module {before} in this configuration"));
            }
        }
    }
    let targets: Vec<Vec<usize>> = edges
        .iter()
        .map(|e| e.iter().map(|&(t, _)| t).collect())
        .collect();
    for cycle in cycles(&targets) {
        let from = &nodes[cycle[0]];
        let item = edges[cycle[0]]
            .iter()
            .find(|(target, _)| *target == cycle[1 % cycle.len()])
            .map_or("requires[0]", |(_, item)| item);
        let names: Vec<String> = cycle
            .iter()
            .chain(std::iter::once(&cycle[0]))
            .map(|&n| nodes[n].urn.to_string())
            .collect();
        report.problem(
            &format!("module[{}].{item}", from.index),
            format!("dependency cycle: {}", names.join(" -> ")),
        );
    }
}

/// The cycles a depth-first search meets, each once, as node lists starting
/// at their lowest node.
fn cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        node: usize,
        edges: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        found: &mut Vec<Vec<usize>>,
    ) {
        marks[node] = Mark::OnPath;
        path.push(node);
        for &next in &edges[node] {
            match marks[next] {
                Mark::New => visit(next, edges, marks, path, found),
                Mark::OnPath => {
                    let start = path.iter().rposition(|&n| n == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    let lowest = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|&(_, &n)| n)
                        .map_or(0, |(i, _)| i);
                    cycle.rotate_left(lowest);
                    if !found.contains(&cycle) {
                        found.push(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[node] = Mark::Done;
    }
    let mut marks = vec![Mark::New; edges.len()];
    let mut found = Vec::new();
    for node in 0..edges.len() {
        if marks[node] == Mark::New {
            visit(node, edges, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// Indices of `modules`, each module after the modules it requires, otherwise
/// in file order (a depth-first walk in file order). Requirements naming no
/// module here are ignored; a cycle (which the checks refuse) is broken
/// where the walk meets it.
pub fn start_order(modules: &[ModuleConfig]) -> Vec<usize> {
    fn visit(
        i: usize,
        modules: &[ModuleConfig],
        index: &HashMap<&Urn, usize>,
        visited: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        visited[i] = true;
        for required in modules[i].requires.iter().chain(&modules[i].sidecars) {
            if let Some(&j) = index.get(required)
                && !visited[j]
            {
                visit(j, modules, index, visited, order);
            }
        }
        order.push(i);
    }
    let mut index = HashMap::new();
    for (i, module) in modules.iter().enumerate() {
        index.entry(&module.urn).or_insert(i);
    }
    let mut visited = vec![false; modules.len()];
    let mut order = Vec::with_capacity(modules.len());
    for i in 0..modules.len() {
        if !visited[i] {
            visit(i, modules, &index, &mut visited, &mut order);
        }
    }
    order
}

/// Why `path` is not a readable regular file, if it is not.
pub(crate) fn file_problem(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("no such file: {}", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Reports at `key` when `path` is not a file; whether it is one.
fn file(report: &mut Report, key: &str, path: &Path) -> bool {
    match file_problem(path) {
        Ok(()) => true,
        Err(message) => {
            report.problem(key, message);
            false
        }
    }
}

/// Loads a certificate and key as the Core will, and checks the URN and expiry.
fn identity(report: &mut Report, key: &str, cert: &Path, private_key: &Path, urn: &Urn) {
    let identity = match TlsIdentity::from_pem_files(cert, private_key) {
        Ok(identity) => identity,
        Err(e) => {
            report.problem(key, format!("cannot use this certificate and key: {e}"));
            return;
        }
    };
    if identity.urn() != urn {
        report.problem(
            key,
            format!(
                "the certificate {} is for {}, not {urn}",
                cert.display(),
                identity.urn()
            ),
        );
    }
    expiry(report, key, cert, &identity);
}

/// Reports at `key` when `identity` (read from `cert`) has expired.
fn expiry(report: &mut Report, key: &str, cert: &Path, identity: &TlsIdentity) {
    if let Some(end) = not_after(identity.certificate())
        && let Ok(ago) = SystemTime::now().duration_since(end)
    {
        report.problem(
            key,
            format!(
                "the certificate {} expired {} ago",
                cert.display(),
                roughly(ago)
            ),
        );
    }
}

/// A program the Core can spawn: a path to an executable file, or a bare
/// name found on `PATH`. Returns where it is.
pub(crate) fn program_problem(program: &Path) -> Result<PathBuf, String> {
    let bare = program.is_relative() && program.components().count() == 1;
    if !bare {
        file_problem(program)?;
        return if is_executable(program) {
            Ok(program.to_path_buf())
        } else {
            Err(format!("{} is not executable", program.display()))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file() && is_executable(candidate))
        .ok_or_else(|| {
            format!(
                "no program {} on PATH (write a path, relative to this file, to use another)",
                program.display()
            )
        })
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// `host:port` with a non-zero port.
fn endpoint_problem(endpoint: &str) -> Result<(), String> {
    let ok = endpoint
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{endpoint:?} is not host:port, like 127.0.0.1:7801"
        ))
    }
}

/// `3 days`, `5 hours`, `12 minutes`, `40 seconds`.
fn roughly(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = match s {
        0..120 => (s, "second"),
        120..7_200 => (s / 60, "minute"),
        7_200..172_800 => (s / 3_600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urn(name: &str) -> Urn {
        Urn::new(UrnKind::Module, name).unwrap()
    }

    fn module(name: &str, requires: &[&str]) -> ModuleConfig {
        ModuleConfig {
            requires: requires.iter().map(|r| urn(r)).collect(),
            ..ModuleConfig::endpoint_for_tests(name)
        }
    }

    #[test]
    fn start_order_puts_dependencies_first_and_keeps_file_order() {
        let modules = [
            module("a", &["c"]),
            module("b", &[]),
            module("c", &["d"]),
            module("d", &[]),
        ];
        assert_eq!(start_order(&modules), [3, 2, 0, 1]);
        let independent = [module("a", &[]), module("b", &[]), module("c", &[])];
        assert_eq!(start_order(&independent), [0, 1, 2]);
        assert!(start_order(&[]).is_empty());
    }

    #[test]
    fn start_order_ignores_unknown_requirements_and_terminates_on_a_cycle() {
        assert_eq!(
            start_order(&[module("a", &["zzz"]), module("b", &["a"])]),
            [0, 1]
        );
        let mut order = start_order(&[module("a", &["b"]), module("b", &["a"])]);
        order.sort_unstable();
        assert_eq!(order, [0, 1]);
    }

    fn graph_problems(modules: &[ModuleConfig]) -> Vec<String> {
        let nodes: Vec<Node<'_>> = modules
            .iter()
            .enumerate()
            .map(|(index, m)| Node {
                index,
                urn: &m.urn,
                before: Node::before(m.requires.iter().enumerate(), []),
            })
            .collect();
        let mut report = Report::new("t");
        graph(&nodes, &mut report);
        report
            .into_problems()
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn cycles_are_named_once_each() {
        let problems = graph_problems(&[
            module("a", &["b"]),
            module("b", &["c"]),
            module("c", &["a"]),
            module("d", &["d"]),
        ]);
        assert_eq!(
            problems,
            [
                "t: module[0].requires[0]: dependency cycle: urn:anima:module:a -> \
                 urn:anima:module:b -> urn:anima:module:c -> urn:anima:module:a",
                "t: module[3].requires[0]: dependency cycle: urn:anima:module:d -> urn:anima:module:d",
            ]
        );
    }

    #[test]
    fn duplicates_and_unknown_requirements_are_reported() {
        let problems = graph_problems(&[
            module("a", &["x", "b", "b"]),
            module("b", &[]),
            module("a", &[]),
        ]);
        assert_eq!(
            problems,
            [
                "t: module[2].urn: duplicate: module[0] has the same URN",
                "t: module[0].requires[0]: no module urn:anima:module:x in this configuration",
                "t: module[0].requires[2]: urn:anima:module:b is listed twice",
            ]
        );
    }

    #[test]
    fn endpoints_and_durations() {
        assert!(endpoint_problem("127.0.0.1:7801").is_ok());
        assert!(endpoint_problem("tally.local:7801").is_ok());
        assert!(endpoint_problem("[::1]:7801").is_ok());
        for bad in ["127.0.0.1", ":7801", "host:0", "host:99999", "host:x"] {
            assert!(endpoint_problem(bad).is_err(), "{bad}");
        }
        assert_eq!(roughly(Duration::from_secs(1)), "1 second");
        assert_eq!(roughly(Duration::from_secs(3 * 86_400 + 5)), "3 days");
    }
}
