//! Reading `anima.toml`: TOML text to the typed [`Config`], every problem
//! with its line.
//!
//! Three steps. The text is parsed into a spanned tree (every syntax error,
//! with its line). Serde reads the tree into [`raw::File`]; it stops at the
//! first key that does not fit, so that key is reported (at its line, saying
//! what the [reference](super::reference) expects there), taken out of the
//! tree, and the tree read again, until it fits: one run names every unknown
//! key and wrong type. Then [`Resolver`] interprets the values (URNs, paths,
//! durations, how each module starts) and [`super::check`] what they mean.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::check::{self, Node};
use super::model::{Config, CoreSection, ModuleConfig, OperatorAccess};
use super::problem::{Problem, Report, line_at};
use super::raw;
use super::reference::{self, Kind, one_of};
use super::resolve::{Parts, Resolver};

/// Parses and checks `text`, read from `origin`.
pub(super) fn parse(text: &str, origin: &Path) -> Result<Config, Vec<Problem>> {
    let (file, mut resolver) = reader(text, origin)?;
    let mut parts = resolver.file(&file);
    if let Some(core) = &mut parts.core {
        endpoint_beside_cert(core);
    }
    let mut report = resolver.into_report();
    check_parts(&parts, &mut report);
    if !report.is_clean() {
        return Err(report.into_problems());
    }
    parts.into_config(origin).ok_or_else(|| {
        // Every part left out was reported; this is a reader bug, not the file's.
        vec![Problem {
            location: origin.display().to_string(),
            message: "internal error: a section was refused without a reason".into(),
        }]
    })
}

/// `[core] endpoint_cert` and `endpoint_key` unset: the pair that `anima
/// certs init` writes beside the Core's certificate (`NAME.pem` →
/// `NAME.endpoint.pem` and `NAME.endpoint.key`), when both files are there.
fn endpoint_beside_cert(core: &mut CoreSection) {
    if core.endpoint_cert.is_some() || core.cert.extension() != Some("pem".as_ref()) {
        return;
    }
    let (Some(dir), Some(stem)) = (core.cert.parent(), core.cert.file_stem()) else {
        return;
    };
    let stem = stem.to_string_lossy();
    let cert = dir.join(format!("{stem}.endpoint.pem"));
    let key = dir.join(format!("{stem}.endpoint.key"));
    if cert.is_file() && key.is_file() {
        core.endpoint_cert = Some((cert, key));
    }
}

/// Reads only what the operator commands need of `text`, read from
/// `origin` (see [`Resolver::operator_access`]): a file that does not parse
/// is refused as by [`parse`], but problems in what `anima serve` alone reads
/// (module certificates, contracts, commands) are not the operator's.
pub(super) fn operator_access(text: &str, origin: &Path) -> Result<OperatorAccess, Vec<Problem>> {
    let (file, mut resolver) = reader(text, origin)?;
    let access = resolver.operator_access(&file);
    let report = resolver.into_report();
    match access {
        Some(access) if report.is_clean() => Ok(access),
        _ => Err(report.into_problems()),
    }
}

/// The raw file of `text` (read from `origin`) and a resolver holding the
/// problems found in reading it, or those problems after a syntax error.
fn reader<'t>(text: &'t str, origin: &Path) -> Result<(raw::File, Resolver<'t>), Vec<Problem>> {
    let mut report = Report::new(origin.display().to_string());
    let Some((file, refused)) = read(text, &mut report) else {
        return Err(report.into_problems());
    };
    Ok((file, Resolver::new(text, base_dir(origin), refused, report)))
}

/// Runs [`super::check`] on whatever could be read, so that one bad key does
/// not hide the problems of the rest.
fn check_parts(parts: &Parts, report: &mut Report) {
    if let Some(core) = &parts.core {
        check::core(core, report);
    }
    if let Some(admin) = &parts.admin {
        check::admin(admin, report);
    }
    if let Some(leases) = &parts.leases {
        check::leases(leases, report);
    }
    for (index, entry) in parts.entries.iter().enumerate() {
        if let Some(module) = &entry.config {
            check::module(index, module, parts.core.as_ref(), report);
        }
    }
    check::methods(
        parts
            .entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| Some((index, entry.config.as_ref()?))),
        report,
    );
    let nodes: Vec<Node<'_>> = parts
        .entries
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| {
            Some(Node {
                index,
                urn: entry.urn.as_ref()?,
                before: Node::before(
                    entry.requires.iter().map(|(j, urn)| (*j, urn)),
                    entry.sidecars.iter().map(|(j, urn)| (*j, urn)),
                ),
            })
        })
        .collect();
    check::graph(&nodes, report);
    let modules: Vec<(usize, &ModuleConfig)> = parts
        .entries
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| Some((index, entry.config.as_ref()?)))
        .collect();
    // Only when every entry is understood can its interfaces be resolved.
    if modules.len() == parts.entries.len() {
        super::interfaces::resolve(&modules, report);
        let permissions = parts.permissions.iter().map(|(i, p)| (*i, p));
        super::interfaces::permissions(&modules, permissions, report);
        // On NATS the message space is shared: a grant may name a module
        // another Core hosts (M14).
        let shared = parts
            .mediator
            .as_ref()
            .is_some_and(|m| matches!(m.backend, super::model::Backend::Nats { .. }));
        if !shared {
            let grants = parts.messages.iter().map(|(i, g)| (*i, &g.module));
            super::interfaces::message_grants(&modules, grants, report);
        }
        if let Some(handler) = parts
            .mediator
            .as_ref()
            .and_then(|m| m.error_handler.as_ref())
            && !modules.iter().any(|(_, m)| &m.urn == handler)
        {
            report.problem(
                "mediator.error_handler",
                format!("{handler} is not a [[module]] of this Core"),
            );
        }
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

/// One step of a key path: a key, or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Where serde stopped: the value there, and whether on its key (unknown
/// there) rather than on the value itself.
struct Spot<'d, 'i> {
    on_key: bool,
    value: &'d DeValue<'i>,
}

/// Reads `text` into the raw shape, reporting every syntax error, unknown
/// key and wrong type. Returns `None` after a syntax error; else the file,
/// with the paths of the keys that were reported and taken out of it.
fn read(text: &str, report: &mut Report) -> Option<(raw::File, HashSet<String>)> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for error in errors {
            let start = error.span().map_or(0, |span| span.start);
            report.problem_on_line(line_at(text, start), error.message());
        }
        return None;
    }
    let root_span = doc.span();
    let mut root = DeValue::Table(doc.into_inner());
    let mut refused = HashSet::new();
    loop {
        let whole = Spanned::new(root_span.clone(), root.clone());
        let error = match raw::File::deserialize(ValueDeserializer::from(whole)) {
            Ok(file) => return Some((file, refused)),
            Err(error) => error,
        };
        let mut steps = Vec::new();
        let found = match (&root, error.span()) {
            (DeValue::Table(table), Some(span)) => find(table, &span, &mut steps)
                .map(|spot| (span, structural(&steps, spot, error.message()))),
            _ => None,
        };
        let Some((span, message)) = found else {
            // Nothing to take out: the file stops here.
            match error.span() {
                Some(span) => report.problem_on_line(line_at(text, span.start), error.message()),
                None => report.problem_in_file(error.message()),
            }
            return None;
        };
        let path = render(&steps);
        report.site(&path, line_at(text, span.start));
        report.problem(&path, message);
        // A placeholder that serde refused again would loop: stop instead.
        if !refused.insert(take_out(&mut root, &steps)?) {
            return None;
        }
    }
}

/// The key or value of `table` (at any depth) at exactly `span`, the
/// shallowest first; its path is left in `steps`.
fn find<'d, 'i>(
    table: &'d DeTable<'i>,
    span: &Range<usize>,
    steps: &mut Vec<Step>,
) -> Option<Spot<'d, 'i>> {
    for (key, value) in table.iter() {
        steps.push(Step::Key(key.get_ref().to_string()));
        if key.span() == *span {
            return Some(Spot {
                on_key: true,
                value: value.get_ref(),
            });
        }
        if let Some(spot) = find_in(value, span, steps) {
            return Some(spot);
        }
        steps.pop();
    }
    None
}

/// [`find`] in a value and what it holds.
fn find_in<'d, 'i>(
    value: &'d Spanned<DeValue<'i>>,
    span: &Range<usize>,
    steps: &mut Vec<Step>,
) -> Option<Spot<'d, 'i>> {
    if value.span() == *span {
        return Some(Spot {
            on_key: false,
            value: value.get_ref(),
        });
    }
    match value.get_ref() {
        DeValue::Table(table) => find(table, span, steps),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                steps.push(Step::Index(index));
                if let Some(spot) = find_in(item, span, steps) {
                    return Some(spot);
                }
                steps.pop();
            }
            None
        }
        _ => None,
    }
}

/// What is wrong at `steps`, said with what the reference expects there;
/// serde's own words when the reference has nothing better.
fn structural(steps: &[Step], spot: Spot<'_, '_>, serde_message: &str) -> String {
    let parent = &steps[..steps.len().saturating_sub(1)];
    let value = spot.value;
    // (An implicit table's key and value have the same span: a known key
    // there is about its value.)
    if spot.on_key && expected(parent) == Some(Kind::Table) && expected(steps).is_none() {
        let known: Vec<&str> = reference::children(&key_path(parent))
            .map(|key| key.path.rsplit('.').next().unwrap_or(key.path))
            .collect();
        return format!("unknown key (expected one of: {})", known.join(", "));
    }
    match (expected(steps), steps.last()) {
        (Some(Kind::Tables(plural)), Some(Step::Key(name))) if value.is_table() => {
            format!("{plural} are an array of tables: write [[{name}]], not [{name}]")
        }
        (Some(Kind::Tables(_)), Some(Step::Key(name))) if !value.is_array() => {
            format!(
                "must be an array of [[{name}]] tables, not {}",
                value.type_str()
            )
        }
        (Some(kind), _) if !kind.fits(value) => {
            format!("must be {}, not {}", kind.expected(), value.type_str())
        }
        (Some(Kind::Word(words)), _) => match value.as_str() {
            Some(word) => format!("{word:?} is not {}", one_of(words, '"')),
            None => serde_message.to_owned(),
        },
        (Some(Kind::Integer), _) => match value.as_integer() {
            Some(int) => format!("{} is out of range", int.as_str()),
            None => serde_message.to_owned(),
        },
        _ => serde_message.to_owned(),
    }
}

/// The reference's path for `steps`: `module.restart`.
fn key_path(steps: &[Step]) -> String {
    let keys: Vec<&str> = steps
        .iter()
        .filter_map(|step| match step {
            Step::Key(key) => Some(key.as_str()),
            Step::Index(_) => None,
        })
        .collect();
    keys.join(".")
}

/// What the reference expects at `steps`.
fn expected(steps: &[Step]) -> Option<Kind> {
    let mut kind = Kind::Table;
    let mut path = String::new();
    for step in steps {
        kind = match (step, kind) {
            (Step::Index(_), kind) | (Step::Key(_), kind @ Kind::StrTable) => kind.item()?,
            (Step::Key(name), Kind::Table) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(name);
                reference::row(&path)?.kind
            }
            _ => return None,
        };
    }
    Some(kind)
}

/// `module[1].restart.policy`.
fn render(steps: &[Step]) -> String {
    let mut path = String::new();
    for step in steps {
        match step {
            Step::Key(key) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Step::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// Takes the value at `steps` out of the tree, so that serde reads on; returns
/// the path of what was taken out. An array item, or an entry of a table of
/// strings, becomes an empty placeholder of its kind, so that the items
/// after it keep their numbers; any other value goes with the field (the key
/// of a struct) it is in.
fn take_out(root: &mut DeValue<'_>, steps: &[Step]) -> Option<String> {
    if let Some(placeholder) = placeholder(steps)
        && let Some(slot) = value_at(root, steps)
    {
        *slot = placeholder;
        return Some(render(steps));
    }
    let is_field = |end: usize| {
        matches!(steps[end], Step::Key(_)) && expected(&steps[..end]) == Some(Kind::Table)
    };
    let end = (0..steps.len())
        .rev()
        .find(|&end| is_field(end))
        .or_else(|| steps.iter().rposition(|s| matches!(s, Step::Key(_))))?;
    let (Step::Key(key), parent) = steps[..=end].split_last()? else {
        return None;
    };
    match value_at(root, parent)? {
        DeValue::Table(table) => table.remove(key.as_str()).map(|_| render(&steps[..=end])),
        _ => None,
    }
}

/// What stands in for the item at `steps`, when it is an item.
fn placeholder<'i>(steps: &[Step]) -> Option<DeValue<'i>> {
    let (last, parent) = steps.split_last()?;
    if !matches!(last, Step::Index(_)) && expected(parent) != Some(Kind::StrTable) {
        return None;
    }
    match expected(steps)? {
        Kind::Str(_) => Some(DeValue::String("".into())),
        Kind::Table => Some(DeValue::Table(DeTable::new())),
        _ => None,
    }
}

/// The value at `steps` under `value`.
fn value_at<'v, 'i>(value: &'v mut DeValue<'i>, steps: &[Step]) -> Option<&'v mut DeValue<'i>> {
    let Some((first, rest)) = steps.split_first() else {
        return Some(value);
    };
    let next = match (value, first) {
        (DeValue::Table(table), Step::Key(key)) => table.get_mut(key.as_str())?.get_mut(),
        (DeValue::Array(items), Step::Index(index)) => items.get_mut(*index)?.get_mut(),
        _ => return None,
    };
    value_at(next, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let mut report = Report::new("t");
        let _ = read(text, &mut report);
        let problems = report.into_problems();
        problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn every_structural_problem_is_reported_and_taken_out() {
        let text = "nope = 1\n[core]\nurn = 1\ntypo = \"x\"\n[admin]\noperators = [\"a\", 2]\n\
                    [[module]]\ntype = \"ephemral\"\nenv = { A = 1 }\nmax_restarts = 1\n\
                    [module.restart]\npolicy = 3\nwindow = 1\n";
        assert_eq!(
            problems(text),
            [
                "t:1: nope: unknown key (expected one of: core, admin, leases, module, policy, permission, mediator)",
                "t:3: core.urn: must be a string, not integer",
                "t:4: core.typo: unknown key (expected one of: urn, cert, key, ca, audit_log, \
                 endpoint_cert, endpoint_key, interfaces, worker_threads)",
                "t:6: admin.operators[1]: must be a string, not integer",
                "t:8: module[0].type: \"ephemral\" is not \"ephemeral\", \"resident-private\" \
                 or \"resident-shared\"",
                "t:9: module[0].env.A: must be a string, not integer",
                "t:10: module[0].max_restarts: unknown key (expected one of: urn, type, command, \
                 args, env, cert, key, endpoint, contract, lease_ttl, requires, sidecars, core_cert, restart)",
                "t:12: module[0].restart.policy: must be \"never\", \"on-failure\" or \"always\", \
                 not integer",
                "t:13: module[0].restart.window: must be a string, not integer",
            ]
        );
    }

    #[test]
    fn sections_of_the_wrong_shape_say_how_to_write_them() {
        assert_eq!(
            problems("[[core]]\n[policy]\nuser = \"x\"\n[[module]]\n"),
            [
                "t:1: core: must be a table, not array",
                "t:2: policy: policies are an array of tables: write [[policy]], not [policy]",
            ]
        );
        assert_eq!(
            problems("module = [1]\npolicy = [{}, 2, 3]\n"),
            [
                "t:1: module[0]: must be a table, not integer",
                "t:2: policy[1]: must be a table, not integer",
                "t:2: policy[2]: must be a table, not integer",
            ]
        );
        // Dotted keys make implicit tables, whose key and value share a span.
        assert_eq!(
            problems("a.b = 1\n[[module]]\nenv.A.B = \"x\"\nrestart.max_restarts = 1e3\n"),
            [
                "t:1: a: unknown key (expected one of: core, admin, leases, module, policy, permission, mediator)",
                "t:3: module[0].env.A: must be a string, not table",
                "t:4: module[0].restart.max_restarts: must be an integer, not float",
            ]
        );
        // Each wrong item is reported and stands in for itself, so that the
        // next keep their numbers; a wrong field is taken out.
        let mut report = Report::new("t");
        let text = "[[module]]\nargs = [1, \"x\", 2]\nenv = { A = 1, B = 2 }\nurn = 3\n\
                    [[policy]]\n[[policy]]\n";
        let (file, refused) = read(text, &mut report).unwrap();
        let mut refused: Vec<String> = refused.into_iter().collect();
        refused.sort();
        assert_eq!(
            refused,
            [
                "module[0].args[0]",
                "module[0].args[2]",
                "module[0].env.A",
                "module[0].env.B",
                "module[0].urn",
            ]
        );
        assert_eq!(report.into_problems().len(), 5);
        let module = file.module[0].get_ref();
        let args: Vec<&str> = module
            .args
            .as_ref()
            .unwrap()
            .get_ref()
            .iter()
            .map(|a| a.get_ref().as_str())
            .collect();
        assert_eq!(args, ["", "x", ""]);
        assert!(module.urn.is_none());
        assert_eq!(file.policy.len(), 2);
        assert_eq!(
            problems("[[module]]\n[module.restart]\nmax_restarts = 18446744073709551615\n"),
            ["t:3: module[0].restart.max_restarts: 18446744073709551615 is out of range"]
        );
    }
}
