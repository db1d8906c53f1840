//! What the Core knows about each configured module, for operators.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use anima_protocol::Urn;
use anima_protocol::interface::{Provided, Required};
use anima_protocol::lease::LeaseId;
use tokio::sync::{mpsc, watch};

/// A module's state as the Core tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModuleState {
    /// Being started, dialled or leased.
    Starting,
    /// Not started yet: no compatible provider of an interface it requires
    /// is leased (P2); says which.
    Blocked,
    /// Holding a valid lease.
    Leased,
    /// Alive without a lease (Type II/III).
    Standby,
    /// Waiting to start again after an exit or failure.
    Restarting,
    /// A module the Core dials (pre-started or shared) cannot be reached;
    /// the Core dials it again every [`REDIAL_EVERY`](crate::supervisor::REDIAL_EVERY).
    Unreachable,
    /// Past its restart limit (or unrecoverable); says why.
    Failed,
    /// Stopped by an operator, or exited and not to be restarted.
    Stopped,
}

anima_protocol::str_vocabulary! {
    /// The state's name (admin API, CLI).
    pub(crate) fn ModuleState::as_str {
        Starting => "starting",
        Blocked => "blocked",
        Leased => "leased",
        Standby => "standby",
        Restarting => "restarting",
        Unreachable => "unreachable",
        Failed => "failed",
        Stopped => "stopped",
    }
}

/// One module's row.
#[derive(Debug, Clone)]
pub(crate) struct ModuleView {
    /// The module.
    pub(crate) urn: Urn,
    /// `ephemeral`, `resident-private` or `resident-shared`.
    pub(crate) module_type: &'static str,
    /// Its state.
    pub(crate) state: ModuleState,
    /// Why, where there is something to say.
    pub(crate) detail: String,
    /// Its process id, when the Core started it and it runs.
    pub(crate) pid: Option<u32>,
    /// Where it listens, once known.
    pub(crate) endpoint: String,
    /// Restarts so far.
    pub(crate) restarts: u32,
    /// The current lease.
    pub(crate) lease_id: Option<LeaseId>,
    /// The interfaces it provides (from its contract file, or as it reported
    /// them at its last lease).
    pub(crate) provides: Vec<Provided>,
    /// The interfaces it requires (likewise).
    pub(crate) requires: Vec<Required>,
}

/// An operator's command to one module's supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModuleCommand {
    /// Stop it and start it again.
    Restart,
    /// Stop it (until a restart).
    Stop,
}

struct Entry {
    view: ModuleView,
    state: watch::Sender<ModuleState>,
    commands: mpsc::Sender<ModuleCommand>,
}

/// Every configured module. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Registry {
    modules: Arc<Mutex<BTreeMap<Urn, Entry>>>,
    /// Bumped whenever a module's state changes.
    changes: Arc<watch::Sender<u64>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            modules: Arc::default(),
            changes: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Urn, Entry>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a module, which provides `provides` and requires `requires` as
    /// far as the Core knows yet; returns the receiver for its commands.
    pub(crate) fn add(
        &self,
        urn: Urn,
        module_type: &'static str,
        provides: Vec<Provided>,
        requires: Vec<Required>,
    ) -> mpsc::Receiver<ModuleCommand> {
        let (tx, rx) = mpsc::channel(8);
        let view = ModuleView {
            urn: urn.clone(),
            module_type,
            state: ModuleState::Starting,
            detail: String::new(),
            pid: None,
            endpoint: String::new(),
            restarts: 0,
            lease_id: None,
            provides,
            requires,
        };
        self.lock().insert(
            urn,
            Entry {
                view,
                state: watch::Sender::new(ModuleState::Starting),
                commands: tx,
            },
        );
        rx
    }

    /// Updates a module's row.
    pub(crate) fn update(&self, urn: &Urn, f: impl FnOnce(&mut ModuleView)) {
        let changed = match self.lock().get_mut(urn) {
            Some(e) => {
                f(&mut e.view);
                let state = e.view.state;
                e.state.send_if_modified(|s| {
                    let changed = *s != state;
                    *s = state;
                    changed
                })
            }
            None => false,
        };
        if changed {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Changes whenever any module's state changes.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The leased modules that provide a version of an interface `required`
    /// accepts.
    pub(crate) fn leased_providers(&self, required: &Required) -> Vec<Urn> {
        self.lock()
            .values()
            .filter(|e| e.view.state == ModuleState::Leased)
            .filter(|e| e.view.provides.iter().any(|p| required.accepts(p)))
            .map(|e| e.view.urn.clone())
            .collect()
    }

    /// Sets a module's state and detail.
    pub(crate) fn set_state(&self, urn: &Urn, state: ModuleState, detail: impl Into<String>) {
        let detail = detail.into();
        self.update(urn, |v| {
            v.state = state;
            v.detail = detail;
        });
    }

    /// Watches a module's state.
    pub(crate) fn watch(&self, urn: &Urn) -> Option<watch::Receiver<ModuleState>> {
        self.lock().get(urn).map(|e| e.state.subscribe())
    }

    /// Every module's row.
    pub(crate) fn list(&self) -> Vec<ModuleView> {
        self.lock().values().map(|e| e.view.clone()).collect()
    }

    /// One module's row.
    pub(crate) fn get(&self, urn: &Urn) -> Option<ModuleView> {
        self.lock().get(urn).map(|e| e.view.clone())
    }

    /// Sends `command` to the module's supervisor; false if unknown.
    pub(crate) fn command(&self, urn: &Urn, command: ModuleCommand) -> bool {
        let tx = self.lock().get(urn).map(|e| e.commands.clone());
        match tx {
            Some(tx) => tx.try_send(command).is_ok(),
            None => false,
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("modules", &self.lock().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urn(name: &str) -> Urn {
        format!("urn:anima:module:{name}").parse().unwrap()
    }

    #[test]
    fn p2_only_leased_modules_providing_a_version_in_range_are_providers() {
        let registry = Registry::default();
        let kv = |v: &str| Provided::new("anima.sample/kv", v).unwrap();
        let _a = registry.add(urn("a"), "resident-private", vec![kv("1.2")], vec![]);
        let _b = registry.add(urn("b"), "resident-private", vec![kv("2.0")], vec![]);
        let _c = registry.add(urn("c"), "resident-private", Vec::new(), vec![]);
        let wanted = Required::new("anima.sample/kv", ">=1.0").unwrap();
        assert!(
            registry.leased_providers(&wanted).is_empty(),
            "none leased yet"
        );
        let mut changes = registry.changes();
        registry.set_state(&urn("a"), ModuleState::Leased, "");
        assert!(
            changes.has_changed().unwrap(),
            "a state change is announced"
        );
        changes.mark_unchanged();
        registry.update(&urn("a"), |v| v.detail = "same state".into());
        assert!(!changes.has_changed().unwrap(), "a detail alone is not");
        registry.set_state(&urn("b"), ModuleState::Leased, "");
        registry.set_state(&urn("c"), ModuleState::Leased, "");
        assert_eq!(registry.leased_providers(&wanted), [urn("a"), urn("b")]);
        let one = Required::new("anima.sample/kv", "^1").unwrap();
        assert_eq!(registry.leased_providers(&one), [urn("a")]);
        // What a module reports at its lease replaces what was known.
        registry.update(&urn("c"), |v| v.provides = vec![kv("1.0")]);
        assert_eq!(registry.leased_providers(&one), [urn("a"), urn("c")]);
    }
}
