//! Lifecycle events the Core publishes (admin `WatchEvents`, logs).

use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::audit::unix_ms;

/// What happened: the `kind` of an `anima.v1.Event` (README's table of
/// `anima events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A core-started module's process printed its ready line.
    ModuleStarted,
    /// A module stopped (an operator's command, or it exited cleanly and is
    /// not restarted).
    ModuleStopped,
    /// A module failed and is not restarted (its policy, or too many
    /// restarts within the window).
    ModuleFailed,
    /// A module is about to be restarted.
    ModuleRestarting,
    /// The Core cannot reach a module it dials (pre-started or shared); it
    /// keeps trying.
    ModuleUnreachable,
    /// A module waits, unstarted, for a compatible provider of an interface
    /// it requires to be leased (P2).
    ModuleBlocked,
    /// A lease was granted.
    LeaseIssued,
    /// A lease was revoked (by the Core, an operator or the module).
    LeaseRevoked,
    /// A lease ran out.
    LeaseExpired,
    /// The lease's connection (or the module's process) went away.
    ConnectionLost,
}

impl EventKind {
    /// Every kind, in README's order.
    pub const ALL: [EventKind; 10] = [
        EventKind::ModuleStarted,
        EventKind::ModuleStopped,
        EventKind::ModuleFailed,
        EventKind::ModuleRestarting,
        EventKind::ModuleUnreachable,
        EventKind::ModuleBlocked,
        EventKind::LeaseIssued,
        EventKind::LeaseRevoked,
        EventKind::LeaseExpired,
        EventKind::ConnectionLost,
    ];
}

anima_protocol::str_vocabulary! {
    /// The name on the wire and in the log.
    pub fn EventKind::as_str {
        ModuleStarted => "module_started",
        ModuleStopped => "module_stopped",
        ModuleFailed => "module_failed",
        ModuleRestarting => "module_restarting",
        ModuleUnreachable => "module_unreachable",
        ModuleBlocked => "module_blocked",
        LeaseIssued => "lease_issued",
        LeaseRevoked => "lease_revoked",
        LeaseExpired => "lease_expired",
        ConnectionLost => "connection_lost",
    }
}

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CoreEvent {
    /// Unix milliseconds.
    pub(crate) ts_ms: u64,
    /// What happened.
    pub(crate) kind: EventKind,
    /// The module.
    pub(crate) module: String,
    /// The lease, when the event concerns one.
    pub(crate) lease_id: String,
    /// Free text.
    pub(crate) detail: String,
}

/// The event bus. Cloning shares it; slow subscribers lose old events.
#[derive(Debug, Clone)]
pub(crate) struct Events(broadcast::Sender<CoreEvent>);

impl Default for Events {
    fn default() -> Self {
        Events(broadcast::channel(1024).0)
    }
}

impl Events {
    /// Publishes an event (and logs it).
    pub(crate) fn emit(
        &self,
        kind: EventKind,
        module: &str,
        lease_id: &str,
        detail: impl Into<String>,
    ) {
        let detail = detail.into();
        tracing::info!(event = kind.as_str(), module, lease_id, detail = %detail, "event");
        let _ = self.0.send(CoreEvent {
            ts_ms: unix_ms(SystemTime::now()),
            kind,
            module: module.to_owned(),
            lease_id: lease_id.to_owned(),
            detail,
        });
    }

    /// Events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<CoreEvent> {
        self.0.subscribe()
    }
}
