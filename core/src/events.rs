//! Lifecycle events the Core publishes (admin `WatchEvents`, logs).

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreEvent {
    /// Unix milliseconds.
    pub ts_ms: u64,
    /// `module_started`, `module_stopped`, `module_failed`,
    /// `module_restarting`, `lease_issued`, `lease_renewed`, `lease_revoked`,
    /// `lease_expired`, `lease_lost`.
    pub kind: &'static str,
    /// The module.
    pub module: String,
    /// The lease, when the event concerns one.
    pub lease_id: String,
    /// Free text.
    pub detail: String,
}

/// The event bus. Cloning shares it; slow subscribers lose old events.
#[derive(Debug, Clone)]
pub struct Events(broadcast::Sender<CoreEvent>);

impl Default for Events {
    fn default() -> Self {
        Events(broadcast::channel(1024).0)
    }
}

impl Events {
    /// Publishes an event (and logs it).
    pub fn emit(
        &self,
        kind: &'static str,
        module: &str,
        lease_id: &str,
        detail: impl Into<String>,
    ) {
        let detail = detail.into();
        tracing::info!(event = kind, module, lease_id, detail = %detail, "event");
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let _ = self.0.send(CoreEvent {
            ts_ms,
            kind,
            module: module.to_owned(),
            lease_id: lease_id.to_owned(),
            detail,
        });
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CoreEvent> {
        self.0.subscribe()
    }
}
