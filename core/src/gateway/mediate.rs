//! Module-to-module calls (PROTOCOL.md §10): a module calls a method of an
//! interface it requires through the Core, with its own certificate, and
//! the Core picks the provider.
//!
//! Before a call goes anywhere the Core checks, in order: the caller is one
//! of its modules and holds a lease from it now (P8); the method belongs to
//! an interface the caller's contract requires, as some provider in the
//! required range declares it (and as the interface's definition lists it,
//! where the Core has the definition); a `[[permission]]` lets the caller use
//! that interface, from that provider (P7, default deny); a permitted
//! provider in range is leased now. The call then goes to one such provider
//! (in turn, or the one the caller pins with `anima-provider`), under the
//! Core's lease with it, as a gateway call does; the interface's timeout and
//! retry policy apply (P10; `retry.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anima_protocol::Urn;
use anima_protocol::interface::definition::{Interface, MethodPolicy, load_all};
use anima_protocol::interface::{InterfaceName, InterfaceVersion, Provided, Required};
use anima_protocol::lease::Reason;

use super::Refused;
use super::route::Routes;
use crate::config::{Config, Permission, listed};
use crate::registry::{ModuleState, ModuleView, Registry};

/// The metadata a caller pins a call to one provider with (its URN).
pub(crate) const PIN_HEADER: &str = "anima-provider";

/// What modules may call of each other, and the interface definitions the
/// Core applies to those calls.
#[derive(Debug, Default)]
pub(crate) struct Mediation {
    permissions: Vec<Permission>,
    definitions: HashMap<(InterfaceName, InterfaceVersion), Interface>,
    /// Turns over the providers of each interface.
    turn: AtomicUsize,
}

/// Why the interface definitions could not be read.
#[derive(Debug, thiserror::Error)]
#[error("interface definitions in {dir}: {source}")]
pub(crate) struct DefinitionsError {
    dir: String,
    source: Box<anima_protocol::interface::definition::DefinitionError>,
}

/// Where a mediated call goes.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The providers to try, the chosen one first: leased now, permitted,
    /// in range.
    pub(crate) providers: Vec<Urn>,
    /// The method's timeout, idempotency and retry policy, when the Core
    /// has the interface's definition.
    pub(crate) policy: Option<MethodPolicy>,
}

impl Plan {
    /// The interface's timeout for the method, if it sets one.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.policy.as_ref().and_then(|p| p.timeout)
    }
}

impl Mediation {
    /// The permissions of `config`, and the definitions under its
    /// `[core] interfaces` directory.
    pub(crate) fn load(config: &Config) -> Result<Self, DefinitionsError> {
        let mut definitions = HashMap::new();
        if let Some(dir) = &config.core.interfaces {
            let all = load_all(dir).map_err(|source| DefinitionsError {
                dir: dir.display().to_string(),
                source: Box::new(source),
            })?;
            for interface in all {
                let key = (
                    interface.provided.interface.clone(),
                    interface.provided.version.clone(),
                );
                definitions.insert(key, interface);
            }
        }
        Ok(Mediation {
            permissions: config.permissions.clone(),
            definitions,
            turn: AtomicUsize::new(0),
        })
    }

    /// Whether a permission lets `caller` call `interface` from `provider`.
    pub(crate) fn permits(&self, caller: &Urn, interface: &InterfaceName, provider: &Urn) -> bool {
        self.permissions.iter().any(|p| {
            &p.module == caller
                && &p.interface == interface
                && p.provider.as_ref().is_none_or(|only| only == provider)
        })
    }

    /// Whether any permission lets `caller` call `interface`.
    fn grants(&self, caller: &Urn, interface: &InterfaceName) -> bool {
        self.permissions
            .iter()
            .any(|p| &p.module == caller && &p.interface == interface)
    }

    /// The definition of `provided`, if the Core has it.
    pub(crate) fn definition(&self, provided: &Provided) -> Option<&Interface> {
        self.definitions
            .get(&(provided.interface.clone(), provided.version.clone()))
    }

    /// Whether `provider`, providing `provided`, serves `method` as part of
    /// that interface: the definition lists it (where the Core has one) and
    /// the provider declares it.
    fn serves(&self, routes: &Routes, provider: &Urn, provided: &Provided, method: &str) -> bool {
        let listed = self
            .definition(provided)
            .is_none_or(|d| d.method(method).is_some());
        listed && routes.declaring(method).contains(provider)
    }

    /// The first requirement of `caller` whose providers (any state) offer
    /// `method`, and those providers with what they provide.
    fn offered<'m>(
        &self,
        caller: &'m ModuleView,
        modules: &'m [ModuleView],
        method: &str,
        routes: &Routes,
    ) -> Option<(&'m Required, Vec<(&'m ModuleView, &'m Provided)>)> {
        let offers = |required: &Required| -> Vec<(&'m ModuleView, &'m Provided)> {
            modules
                .iter()
                .flat_map(|m| m.provides.iter().map(move |p| (m, p)))
                .filter(|(m, p)| required.accepts(p) && self.serves(routes, &m.urn, p, method))
                .collect()
        };
        caller
            .requires
            .iter()
            .map(|r| (r, offers(r)))
            .find(|(_, offered)| !offered.is_empty())
    }

    /// Where `caller`'s call of `method` goes, or why it goes nowhere. The
    /// caller's lease (P8) is checked before this.
    pub(crate) fn plan(
        &self,
        caller: &ModuleView,
        method: &str,
        pinned: Option<&Urn>,
        registry: &Registry,
        routes: &Routes,
    ) -> Result<Plan, Refused> {
        let modules = registry.list();
        let Some((required, offered)) = self.offered(caller, &modules, method, routes) else {
            return Err(Refused(
                Reason::UnknownMethod,
                format!(
                    "{method:.200} is not a method of an interface {} requires ({}), \
                     as any provider here declares it",
                    caller.urn,
                    listed(&caller.requires)
                ),
            ));
        };
        let interface = &required.interface;
        if !self.grants(&caller.urn, interface) {
            return Err(Refused(
                Reason::PolicyDenied,
                format!("{} has no [[permission]] to call {interface}", caller.urn),
            ));
        }
        if let Some(pin) = pinned
            && !offered.iter().any(|(m, _)| &m.urn == pin)
        {
            return Err(Refused(
                Reason::NotFound,
                format!("{pin} is no provider of {required} that declares {method:.200}"),
            ));
        }
        let permitted: Vec<(&ModuleView, &Provided)> = offered
            .into_iter()
            .filter(|(m, _)| self.permits(&caller.urn, interface, &m.urn))
            .filter(|(m, _)| pinned.is_none_or(|pin| pin == &m.urn))
            .collect();
        if permitted.is_empty() {
            let whom = pinned.map_or_else(|| "any provider".to_owned(), ToString::to_string);
            return Err(Refused(
                Reason::PolicyDenied,
                format!("{} may not call {interface} from {whom}", caller.urn),
            ));
        }
        let mut leased: Vec<(&ModuleView, &Provided)> = permitted
            .iter()
            .copied()
            .filter(|(m, _)| m.state == ModuleState::Leased)
            .collect();
        if leased.is_empty() {
            let states: Vec<String> = permitted
                .iter()
                .map(|(m, _)| format!("{} {}", m.urn, m.state.as_str()))
                .collect();
            return Err(Refused(
                Reason::ModuleUnavailable,
                format!(
                    "no provider of {required} is leased now ({})",
                    states.join(", ")
                ),
            ));
        }
        // In turn, so that calls spread over the providers.
        let first = self.turn.fetch_add(1, Ordering::Relaxed) % leased.len();
        leased.rotate_left(first);
        let (chosen, provided) = leased[0];
        let policy = self
            .definition(provided)
            .and_then(|d| d.method(method))
            .cloned();
        Ok(Plan {
            providers: std::iter::once(chosen.urn.clone())
                .chain(leased[1..].iter().map(|(m, _)| m.urn.clone()))
                .collect(),
            policy,
        })
    }
}
