//! Resolving interfaces statically (P2): from the contract files a
//! configuration names, every interface a module requires must have a
//! compatible provider among the other modules, and the modules must have a
//! start order (no cycle of requirements). What no contract file says is
//! left to the Core at run time, which keeps such a module `blocked` until
//! a provider is leased.

use super::model::{ModuleConfig, Permission};
use super::problem::Report;

/// Checks each `[[permission]]` (with its position in the file) against
/// the modules: the caller and the provider are configured here; where
/// their contracts are known, the caller requires the interface and the
/// provider provides it.
pub(crate) fn permissions<'p>(
    entries: &[(usize, &ModuleConfig)],
    permissions: impl IntoIterator<Item = (usize, &'p Permission)>,
    report: &mut Report,
) {
    let find = |urn| entries.iter().map(|&(_, m)| m).find(|m| &m.urn == urn);
    for (index, permission) in permissions {
        let p = format!("permission[{index}]");
        let interface = &permission.interface;
        let caller = find(&permission.module);
        let unmet = caller.and_then(|m| {
            let requires = &m.contract.as_ref()?.requires;
            let met = requires.iter().any(|r| &r.interface == interface);
            (!met).then(|| {
                format!(
                    "{} does not require {interface} (its contract's requires: {}); add it \
                     there, with the versions it accepts",
                    m.urn,
                    listed(requires)
                )
            })
        });
        entry(
            report,
            &format!("{p}.module"),
            &permission.module,
            caller.is_some(),
        );
        if let Some(why) = unmet {
            report.problem(&format!("{p}.interface"), why);
        }
        let Some(provider) = &permission.provider else {
            continue;
        };
        let module = find(provider);
        entry(report, &format!("{p}.provider"), provider, module.is_some());
        let provides = module.and_then(|m| Some(&m.contract.as_ref()?.provides));
        if let Some(provides) = provides
            && !provides.iter().any(|v| &v.interface == interface)
        {
            report.problem(
                &format!("{p}.provider"),
                format!(
                    "{provider} does not provide {interface} (its contract's provides: {})",
                    listed(provides)
                ),
            );
        }
    }
}

/// Checks the `[[permission]]` entries of messages (`publish`,
/// `subscribe`): each names a configured module.
pub(crate) fn message_grants<'g>(
    entries: &[(usize, &ModuleConfig)],
    grants: impl IntoIterator<Item = (usize, &'g anima_protocol::Urn)>,
    report: &mut Report,
) {
    for (index, module) in grants {
        let configured = entries.iter().any(|(_, m)| &m.urn == module);
        entry(
            report,
            &format!("permission[{index}].module"),
            module,
            configured,
        );
    }
}

/// Reports a permission's `urn` at `key` unless it is a configured module.
fn entry(report: &mut Report, key: &str, urn: &anima_protocol::Urn, configured: bool) {
    if !configured {
        report.problem(key, format!("{urn} is not a [[module]] of this Core"));
    }
}

/// `a, b` or `none`.
pub(crate) fn listed<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    items.join(", ")
}

/// Checks the interfaces the modules' contract files require and provide;
/// `entries` are the modules with their positions in the file's
/// `[[module]]` list.
pub(crate) fn resolve(entries: &[(usize, &ModuleConfig)], report: &mut Report) {
    let modules: Vec<&ModuleConfig> = entries.iter().map(|&(_, m)| m).collect();
    let at = |i: usize| entries[i].0;
    // Only when every contract is known can "nobody provides it" be told.
    let all_known = modules.iter().all(|m| m.contract.is_some());
    let providers = providers(&modules);
    for (i, module) in modules.iter().enumerate() {
        let Some(contract) = &module.contract else {
            continue;
        };
        for (k, required) in contract.requires.iter().enumerate() {
            if !providers[i][k].is_empty() || !all_known {
                continue;
            }
            let offered: Vec<String> = modules
                .iter()
                .filter_map(|m| Some((&m.urn, m.contract.as_ref()?)))
                .flat_map(|(urn, c)| {
                    c.provides
                        .iter()
                        .filter(|p| p.interface == required.interface)
                        .map(move |p| format!("{urn} provides {}", p.version))
                })
                .collect();
            let offered = if offered.is_empty() {
                String::new()
            } else {
                format!(" ({})", offered.join("; "))
            };
            report.problem(
                &format!("module[{}].contract", at(i)),
                format!(
                    "{} requires {required}: no module here provides a compatible version{offered}",
                    module.urn
                ),
            );
        }
    }
    for cycle in cycles(&modules, &providers) {
        let first = cycle[0];
        let steps: Vec<String> = cycle
            .iter()
            .map(|&(i, k)| {
                let required = modules[i]
                    .contract
                    .as_ref()
                    .map_or_else(String::new, |c| c.requires[k].to_string());
                format!("{} requires {required}", modules[i].urn)
            })
            .collect();
        report.problem(
            &format!("module[{}].contract", at(first.0)),
            format!(
                "interface dependency cycle: {}, provided only by modules in this cycle",
                steps.join(", which ")
            ),
        );
    }
}

/// For each module and each interface its contract requires, the other
/// modules whose contracts provide a compatible version.
fn providers(modules: &[&ModuleConfig]) -> Vec<Vec<Vec<usize>>> {
    modules
        .iter()
        .enumerate()
        .map(|(i, module)| {
            let Some(contract) = &module.contract else {
                return Vec::new();
            };
            contract
                .requires
                .iter()
                .map(|required| {
                    modules
                        .iter()
                        .enumerate()
                        .filter(|&(j, other)| {
                            j != i
                                && other
                                    .contract
                                    .as_ref()
                                    .is_some_and(|c| c.provides.iter().any(|p| required.accepts(p)))
                        })
                        .map(|(j, _)| j)
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// The cycles that leave modules without a start order, each once, as
/// `(module, requirement)` steps: every requirement of the cycle is
/// provided only by modules that cannot start either. A requirement with
/// no known provider does not hold a module back here (it is reported
/// above, or left to run time).
fn cycles(modules: &[&ModuleConfig], providers: &[Vec<Vec<usize>>]) -> Vec<Vec<(usize, usize)>> {
    // Which modules can start, as a fixpoint: those each of whose
    // requirements has a provider that can.
    let mut can_start = vec![false; modules.len()];
    loop {
        let mut changed = false;
        for i in 0..modules.len() {
            if !can_start[i]
                && providers[i]
                    .iter()
                    .all(|ps| ps.is_empty() || ps.iter().any(|&j| can_start[j]))
            {
                can_start[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // From each stuck module, follow a requirement none of whose providers
    // can start, to its first provider, until a module repeats.
    let mut found: Vec<Vec<(usize, usize)>> = Vec::new();
    for start in (0..modules.len()).filter(|&i| !can_start[i]) {
        let mut path: Vec<(usize, usize)> = Vec::new();
        let mut at = start;
        loop {
            if let Some(pos) = path.iter().position(|&(i, _)| i == at) {
                let mut cycle = path[pos..].to_vec();
                let lowest = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|&(_, &(i, _))| i)
                    .map_or(0, |(p, _)| p);
                cycle.rotate_left(lowest);
                if !found.contains(&cycle) {
                    found.push(cycle);
                }
                break;
            }
            let Some((k, next)) = providers[at]
                .iter()
                .enumerate()
                .find(|(_, ps)| !ps.is_empty() && ps.iter().all(|&j| !can_start[j]))
                .map(|(k, ps)| (k, ps[0]))
            else {
                break;
            };
            path.push((at, k));
            at = next;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use anima_protocol::contract::Contract;

    use super::*;

    /// A module `name` with no contract file.
    fn bare(name: &str) -> ModuleConfig {
        ModuleConfig::endpoint_for_tests(name)
    }

    /// A module `name` whose contract provides and requires as given
    /// (`("x/a", "1.0")` pairs).
    fn module(name: &str, provides: &[(&str, &str)], requires: &[(&str, &str)]) -> ModuleConfig {
        let list = |entries: &[(&str, &str)]| {
            entries
                .iter()
                .map(|(i, v)| format!("{{ interface = \"{i}\", version = \"{v}\" }}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let contract = Contract::from_toml(&format!(
            "urn = \"urn:anima:module:{name}\"\nversion = \"1\"\nmax_lease = \"30s\"\n\
             methods = [\"/{name}.v1.S/M\"]\nprovides = [{}]\nrequires = [{}]",
            list(provides),
            list(requires)
        ))
        .unwrap();
        let mut m = bare(name);
        m.contract = Some(contract);
        m
    }

    fn problems(modules: &[ModuleConfig]) -> Vec<String> {
        let mut report = Report::new("t");
        let entries: Vec<(usize, &ModuleConfig)> = modules.iter().enumerate().collect();
        resolve(&entries, &mut report);
        report
            .into_problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn p2_every_required_interface_has_a_compatible_provider_in_some_start_order() {
        let modules = [
            module("notes", &[], &[("anima.sample/kv", ">=1.0")]),
            module("kv", &[("anima.sample/kv", "1.2")], &[("net/basic", "^1")]),
            module("net", &[("net/basic", "1.0")], &[]),
        ];
        assert_eq!(problems(&modules), Vec::<String>::new());
    }

    #[test]
    fn p2_a_requirement_nobody_provides_is_refused_naming_what_is_offered() {
        let modules = [
            module("notes", &[], &[("anima.sample/kv", "^2")]),
            module("kv", &[("anima.sample/kv", "1.2")], &[]),
        ];
        assert_eq!(
            problems(&modules),
            [
                "t: module[0].contract: urn:anima:module:notes requires anima.sample/kv ^2: \
              no module here provides a compatible version (urn:anima:module:kv provides 1.2.0)"
            ]
        );
        // A module without a contract file might provide it: left to run time.
        let mut unknown = modules.to_vec();
        unknown.push(bare("other"));
        assert_eq!(problems(&unknown), Vec::<String>::new());
    }

    #[test]
    fn p2_a_cycle_of_requirements_is_refused_once() {
        let modules = [
            module("a", &[("x/a", "1.0")], &[("x/b", "^1")]),
            module("b", &[("x/b", "1.0")], &[("x/c", "^1")]),
            module("c", &[("x/c", "1.0")], &[("x/a", "^1")]),
            module("d", &[], &[("x/a", "^1")]),
        ];
        assert_eq!(
            problems(&modules),
            ["t: module[0].contract: interface dependency cycle: \
              urn:anima:module:a requires x/b ^1, which urn:anima:module:b requires x/c ^1, \
              which urn:anima:module:c requires x/a ^1, provided only by modules in this cycle"]
        );
        // A second provider outside the cycle breaks it.
        let mut broken = modules.to_vec();
        broken.push(module("b2", &[("x/b", "1.1")], &[]));
        assert_eq!(problems(&broken), Vec::<String>::new());
    }
}
