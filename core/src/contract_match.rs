//! Whether the contract a configuration names for a module is the one the
//! module carries: the Core compares its copy with what the module says of
//! itself (`ModuleAdmin/Status`, PROTOCOL.md §6.4) before its offer, so that
//! a stale or wrong copy is reported as what it is, once, instead of as the
//! offer's refusal again and again.

use std::collections::BTreeSet;
use std::time::Duration;

use anima_protocol::contract::{Contract, ModuleType};
use anima_protocol::pb::ModuleStatus;

/// What differs between `configured` (the Core's copy) and the module's own
/// contract as `status` reports it, one phrase per difference; empty when
/// they agree on everything `Status` reports (URN, version, type, methods,
/// maximum lease, interfaces provided and required).
pub(crate) fn differences(configured: &Contract, status: &ModuleStatus) -> Vec<String> {
    let mut found = Vec::new();
    if configured.urn.as_str() != status.urn {
        found.push(format!(
            "urn {} here, {} in the module",
            configured.urn, status.urn
        ));
    }
    if configured.version != status.version {
        found.push(format!(
            "version {:?} here, {:?} in the module",
            configured.version, status.version
        ));
    }
    let word = type_word(configured.module_type);
    if word != status.module_type {
        found.push(format!(
            "type {word} here, {} in the module",
            status.module_type
        ));
    }
    let methods: Vec<&str> = configured.methods.iter().collect();
    compare_list("declared", &methods, &status.methods, &mut found);
    let max_lease = Duration::from_millis(status.max_lease_ms);
    if configured.max_lease != max_lease {
        found.push(format!(
            "max_lease {:?} here, {max_lease:?} in the module",
            configured.max_lease
        ));
    }
    compare_list(
        "provides",
        &texts(&configured.provides),
        &status.provides,
        &mut found,
    );
    compare_list(
        "requires",
        &texts(&configured.requires),
        &status.requires,
        &mut found,
    );
    found
}

/// Adds what differs between the two sides' lists of `what` (methods,
/// interfaces), compared as sets.
fn compare_list(what: &str, here: &[impl AsRef<str>], there: &[String], found: &mut Vec<String>) {
    let here: BTreeSet<&str> = here.iter().map(AsRef::as_ref).collect();
    let there: BTreeSet<&str> = there.iter().map(String::as_str).collect();
    let only_here: Vec<&str> = here.difference(&there).copied().collect();
    if !only_here.is_empty() {
        found.push(format!(
            "{what} here, not by the module: {}",
            only_here.join(", ")
        ));
    }
    let only_there: Vec<&str> = there.difference(&here).copied().collect();
    if !only_there.is_empty() {
        found.push(format!(
            "{what} by the module, not here: {}",
            only_there.join(", ")
        ));
    }
}

/// Each of `items` as `Status` writes it (`<interface> <version or range>`).
fn texts(items: &[impl ToString]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// The word `ModuleAdmin/Status` uses for a module type.
fn type_word(module_type: ModuleType) -> &'static str {
    match module_type {
        ModuleType::Ephemeral => "ephemeral",
        ModuleType::ResidentPrivate(_) => "resident-private",
        ModuleType::ResidentShared => "resident-shared",
    }
}

#[cfg(test)]
mod tests {
    use anima_protocol::contract::InitMode;

    use super::*;

    fn contract() -> Contract {
        Contract::from_toml(
            r#"
            urn = "urn:anima:module:tally"
            version = "0.1.0"
            type = "resident-private"
            init = "pre-started"
            methods = ["/t.v1.T/Get", "/t.v1.T/Put"]
            max_lease = "30s"
            "#,
        )
        .unwrap()
    }

    /// What the module itself says of `contract`.
    fn status_of(contract: &Contract) -> ModuleStatus {
        ModuleStatus {
            urn: contract.urn.to_string(),
            version: contract.version.clone(),
            module_type: type_word(contract.module_type).into(),
            methods: contract.methods.iter().map(str::to_owned).collect(),
            max_lease_ms: u64::try_from(contract.max_lease.as_millis()).unwrap(),
            provides: contract.provides.iter().map(ToString::to_string).collect(),
            requires: contract.requires.iter().map(ToString::to_string).collect(),
            ..ModuleStatus::default()
        }
    }

    #[test]
    fn the_same_contract_has_no_differences_whatever_the_order_of_methods() {
        let configured = contract();
        let mut status = status_of(&configured);
        status.methods.reverse();
        assert!(differences(&configured, &status).is_empty());
        // How a resident private module starts is the configuration's, not
        // the module's to report.
        let mut core_started = configured.clone();
        core_started.module_type = ModuleType::ResidentPrivate(InitMode::CoreStarted);
        assert!(differences(&core_started, &status).is_empty());
    }

    #[test]
    fn each_difference_is_named() {
        let configured = contract();
        let status = ModuleStatus {
            urn: "urn:anima:module:other".into(),
            version: "0.2.0".into(),
            module_type: "resident-shared".into(),
            methods: vec!["/t.v1.T/Get".into(), "/t.v1.T/List".into()],
            max_lease_ms: 10_000,
            ..ModuleStatus::default()
        };
        assert_eq!(
            differences(&configured, &status),
            [
                "urn urn:anima:module:tally here, urn:anima:module:other in the module",
                "version \"0.1.0\" here, \"0.2.0\" in the module",
                "type resident-private here, resident-shared in the module",
                "declared here, not by the module: /t.v1.T/Put",
                "declared by the module, not here: /t.v1.T/List",
                "max_lease 30s here, 10s in the module",
            ]
        );
    }

    #[test]
    fn p1_interfaces_provided_and_required_are_compared() {
        let mut configured = contract();
        configured.provides =
            vec![anima_protocol::interface::Provided::new("t/store", "1.0").unwrap()];
        configured.requires =
            vec![anima_protocol::interface::Required::new("t/clock", ">=2").unwrap()];
        let same = status_of(&configured);
        assert!(differences(&configured, &same).is_empty());
        let mut status = same.clone();
        status.provides = vec!["t/store 1.1.0".into()];
        status.requires.clear();
        assert_eq!(
            differences(&configured, &status),
            [
                "provides here, not by the module: t/store 1.0.0",
                "provides by the module, not here: t/store 1.1.0",
                "requires here, not by the module: t/clock >=2",
            ]
        );
    }
}
