//! Lifecycle events the Core publishes (admin `WatchEvents`, logs).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// A module waits, not started (or, without a contract file, started but
    /// not leased), for a compatible provider of an interface it requires to
    /// be leased (P2).
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
    /// One more than the event published before it (the first is 1).
    pub(crate) revision: u64,
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

/// How many past events the Core keeps for watchers that reconnect
/// (`anima.v1.Registry/Watch` with `since_revision`); a watcher further
/// behind gets a snapshot instead.
pub(crate) const HISTORY: usize = 4096;

/// How many events a live subscriber may fall behind before it loses some.
const LIVE: usize = 1024;

/// The event bus. Cloning shares it; slow subscribers lose old events (and
/// can tell: revisions have a gap).
#[derive(Debug, Clone)]
pub(crate) struct Events {
    live: broadcast::Sender<CoreEvent>,
    history: Arc<Mutex<History>>,
    epoch: Arc<str>,
}

#[derive(Debug, Default)]
struct History {
    revision: u64,
    kept: VecDeque<CoreEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            live: broadcast::channel(LIVE).0,
            history: Arc::default(),
            epoch: new_epoch().into(),
        }
    }
}

/// Past events and the live ones after them, without a gap between.
pub(crate) struct Since {
    /// The kept events after the asked revision, oldest first.
    pub(crate) past: Vec<CoreEvent>,
    /// Whether events after the asked revision were no longer kept (the
    /// caller should start from a snapshot): `past` is then empty.
    pub(crate) too_old: bool,
    /// The revision of the last event published so far.
    pub(crate) revision: u64,
    /// Every event published from now on.
    pub(crate) live: broadcast::Receiver<CoreEvent>,
}

impl Events {
    fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an event (and logs it).
    pub(crate) fn emit(
        &self,
        kind: EventKind,
        module: &str,
        lease_id: &str,
        detail: impl Into<String>,
    ) {
        let detail = detail.into();
        let mut history = self.history();
        history.revision += 1;
        let event = CoreEvent {
            revision: history.revision,
            ts_ms: unix_ms(SystemTime::now()),
            kind,
            module: module.to_owned(),
            lease_id: lease_id.to_owned(),
            detail,
        };
        tracing::info!(event = kind.as_str(), revision = event.revision, module, lease_id, detail = %event.detail, "event");
        if history.kept.len() == HISTORY {
            history.kept.pop_front();
        }
        history.kept.push_back(event.clone());
        // Sent under the lock, so a subscriber that read the history under
        // it sees every later event live, in order.
        let _ = self.live.send(event);
    }

    /// Events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<CoreEvent> {
        self.live.subscribe()
    }

    /// This run of the Core: revisions count from 1 again in the next.
    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The revision of the last event published so far (0 before any).
    pub(crate) fn revision(&self) -> u64 {
        self.history().revision
    }

    /// The events after `revision` of `epoch` (empty: this one) that are
    /// still kept, and every one published from now on; `since(0, "")` is
    /// "from now on". A revision of another epoch, or one this epoch has not
    /// reached, is too old: the caller cannot be told what it missed.
    pub(crate) fn since(&self, revision: u64, epoch: &str) -> Since {
        let history = self.history();
        let live = self.live.subscribe();
        let now = history.revision;
        let oldest = history.kept.front().map_or(now + 1, |e| e.revision);
        let other_run = !epoch.is_empty() && epoch != &*self.epoch;
        let too_old = revision != 0 && (other_run || revision > now || revision + 1 < oldest);
        let past = if revision == 0 || too_old {
            Vec::new()
        } else {
            let kept = history.kept.iter().filter(|e| e.revision > revision);
            kept.cloned().collect()
        };
        Since {
            past,
            too_old,
            revision: now,
            live,
        }
    }
}

/// 16 hex digits from the system's random source.
fn new_epoch() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // Without randomness the epoch still changes with the clock.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = unix_ms(SystemTime::now()).to_be_bytes();
    }
    anima_protocol::hex::lower(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(events: &Events, n: usize) {
        for i in 0..n {
            events.emit(
                EventKind::LeaseIssued,
                "urn:anima:module:m",
                "",
                format!("{i}"),
            );
        }
    }

    #[test]
    fn p5_a_watcher_resuming_from_a_kept_revision_misses_nothing_and_sees_no_repeat() {
        let events = Events::default();
        emit(&events, 5);
        let mut since = events.since(3, events.epoch());
        assert!(!since.too_old);
        assert_eq!(since.revision, 5);
        let past: Vec<u64> = since.past.iter().map(|e| e.revision).collect();
        assert_eq!(past, [4, 5]);
        emit(&events, 1);
        assert_eq!(since.live.try_recv().unwrap().revision, 6);
        // From now on: nothing past.
        let now = events.since(0, "");
        assert!(now.past.is_empty() && !now.too_old);
        let current = events.since(6, events.epoch());
        assert!(current.past.is_empty() && !current.too_old, "up to date");
    }

    #[test]
    fn p5_a_revision_no_longer_kept_or_of_another_run_asks_for_a_snapshot() {
        let events = Events::default();
        emit(&events, HISTORY + 10);
        assert_eq!(events.revision(), (HISTORY + 10) as u64);
        let kept = events.since(10, "");
        assert!(!kept.too_old, "revision 11 on is still kept");
        assert_eq!(kept.past.len(), HISTORY);
        assert_eq!(kept.past[0].revision, 11);
        assert!(events.since(9, "").too_old, "revision 10 was dropped");
        assert!(events.since(3, "0123456789abcdef").too_old, "another run");
        assert!(events.since(u64::MAX, "").too_old, "a revision not reached");
        assert!(events.since(0, "0123456789abcdef").past.is_empty());
        assert_eq!(events.epoch().len(), 16);
        assert_ne!(events.epoch(), Events::default().epoch());
    }
}
