//! The module's lease table: one slot per leased connection.
//!
//! Locks here are `std` mutexes held for a few field updates, never across
//! an `.await`. Each slot owns a cancellation token that fires the moment
//! its lease ends (expiry, revocation, refusal, connection loss); handlers
//! race against it.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::clock::now;
use crate::deadline;
use crate::id_hash::IdMap;

use anima_protocol::lease::{
    EndedBy, Lease, LeaseError, LeaseId, LeaseSigner, LeaseState, Reason, Scope,
};
use anima_protocol::pb::{ControlFrame, SignedToken, control_frame::Frame};
use anima_protocol::{ConnectionId, PeerInfo, Urn};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};
use tonic::Status;

use crate::lifecycle::{Exit, Phase};
use crate::signers::Signers;
use anima_protocol::contract::{Contract, ModuleType};

/// Something that happened to a lease, as the module saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseEvent {
    /// A Core's offer was verified and a lease granted.
    Granted {
        /// The lease.
        lease_id: LeaseId,
        /// The Core.
        consumer: Urn,
        /// The granted TTL.
        ttl: Duration,
        /// When it expires unless renewed (this process's monotonic clock).
        expires_at: std::time::Instant,
    },
    /// A renewal was granted.
    Renewed {
        /// The lease.
        lease_id: LeaseId,
        /// The granted TTL.
        ttl: Duration,
        /// The new expiry (this process's monotonic clock).
        expires_at: std::time::Instant,
    },
    /// The scope changed.
    Rescoped {
        /// The lease.
        lease_id: LeaseId,
        /// The new scope.
        scope: Scope,
    },
    /// A handshake was refused (no lease was opened).
    Refused {
        /// The Core that asked.
        consumer: Urn,
        /// Why.
        reason: Reason,
    },
    /// The lease ended.
    Ended {
        /// The lease.
        lease_id: LeaseId,
        /// The Core.
        consumer: Urn,
        /// Why.
        reason: Reason,
        /// Who ended it.
        by: EndedBy,
    },
}

/// Per-lease handler state, by type; emptied when the lease ends.
pub(crate) type TenantMap = IdMap<TypeId, Box<dyn Any + Send>>;

/// The end of a lease as its calls see it: a flag read without a lock on
/// every call, and a token to wait on (only a call that has to wait
/// registers with it).
pub(crate) struct LeaseEnd {
    fired: AtomicBool,
    token: CancellationToken,
}

impl LeaseEnd {
    fn new() -> Self {
        LeaseEnd {
            fired: AtomicBool::new(false),
            token: CancellationToken::new(),
        }
    }

    /// Ends it for every call that looks (not yet for those waiting on
    /// it: [`LeaseEnd::wake`]): true the first time, false after.
    fn fire(&self) -> bool {
        !self.fired.swap(true, Ordering::AcqRel)
    }

    /// Wakes the calls waiting on the end, once it has been fired.
    fn wake(&self) {
        self.token.cancel();
    }

    /// Whether the lease has ended.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes when the lease ends (at once if it has).
    pub(crate) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// [`LeaseEnd::cancelled`], owning what it waits on.
    pub(crate) fn cancelled_owned(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }
}

/// One leased connection.
pub(crate) struct LeaseSlot {
    pub(crate) id: LeaseId,
    pub(crate) consumer: Urn,
    pub(crate) connection: ConnectionId,
    /// Signs this lease's steps: the key of the certificate the module
    /// presented on its connection.
    pub(crate) signer: Arc<LeaseSigner>,
    lease: Mutex<Lease>,
    tenant: Mutex<TenantMap>,
    pub(crate) ended: LeaseEnd,
    /// Wakes the expiry watch when a renewal moved the expiry (earlier or
    /// later), so every end-of-lease action follows the new expiry.
    expiry_moved: tokio::sync::Notify,
    outbound: Mutex<Option<mpsc::Sender<Result<ControlFrame, Status>>>>,
    /// Fault `shared-tenant`: one map for every lease, never cleared.
    #[cfg(anima_test_faults)]
    shared_tenant: Option<Arc<Mutex<TenantMap>>>,
}

impl LeaseSlot {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Lease> {
        // A panic while holding this lock cannot leave the lease half-updated
        // in a way that grants more than it should: every mutation is a single
        // field assignment after its checks.
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn send(&self, frame: Frame) {
        // Bounded: a Core that stops reading loses control frames, and its
        // lease expires by itself.
        let outbound = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = outbound.as_ref() {
            let _ = tx.try_send(Ok(ControlFrame { frame: Some(frame) }));
        }
    }

    /// Tells the expiry watch that a renewal moved the expiry.
    pub(crate) fn expiry_moved(&self) {
        self.expiry_moved.notify_one();
    }

    /// Closes this side of the control stream (frames already queued flush).
    pub(crate) fn close_outbound(&self) {
        self.outbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Runs `f` on this lease's `T` (created on first use), only while the
    /// lease is valid; the lease cannot end during `f`.
    pub(crate) fn with_tenant<T: Default + Send + 'static, R>(
        &self,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, LeaseError> {
        let lease = self.lock();
        lease.check_valid(now()).map_err(call_refusal)?;
        let tenant = &self.tenant;
        #[cfg(anima_test_faults)]
        let tenant = self.shared_tenant.as_deref().unwrap_or(tenant);
        let mut tenant = tenant.lock().unwrap_or_else(|p| p.into_inner());
        let entry = tenant
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()));
        let value = entry
            .downcast_mut::<T>()
            .ok_or_else(|| LeaseError::Protocol("tenant state type confusion".into()))?;
        let out = f(value);
        drop(tenant);
        drop(lease);
        Ok(out)
    }

    /// The error a call under this lease gets now, if the lease is over.
    pub(crate) fn end_error(&self) -> Option<LeaseError> {
        self.lock().check_valid(now()).err().map(call_refusal)
    }
}

/// How a call under an ended lease is refused (PROTOCOL.md §4):
/// `LEASE_EXPIRED` for a lease that ran out on the clock, `LEASE_REVOKED`
/// for every other ending — a broken connection or the module's shutdown
/// included, whose own reasons belong to the lease's record, not to calls.
pub(crate) fn call_refusal(error: LeaseError) -> LeaseError {
    match error {
        LeaseError::Revoked {
            lease_id,
            by,
            reason: Reason::ConnectionLost | Reason::Shutdown,
        } => LeaseError::Revoked {
            lease_id,
            by,
            reason: Reason::LeaseRevoked,
        },
        other => other,
    }
}

/// The module's shared state.
pub(crate) struct ModuleState {
    pub(crate) contract: Contract,
    /// Signs leases: per certificate presented (one more each reload).
    pub(crate) signers: Signers,
    /// Identities allowed to shut the module down besides its Core.
    operators: Mutex<Vec<Urn>>,
    slots: Mutex<IdMap<ConnectionId, Arc<LeaseSlot>>>,
    events: broadcast::Sender<LeaseEvent>,
    active: watch::Sender<usize>,
    /// The open leases by the Core holding them (only Cores with one).
    active_by_core: watch::Sender<BTreeMap<Urn, usize>>,
    phase: watch::Sender<Phase>,
    bound_core: Mutex<Option<Urn>>,
    exit: Mutex<Option<Exit>>,
    /// Injected faults (tests of conformance tools only).
    #[cfg(anima_test_faults)]
    pub(crate) faults: crate::fault::Faults,
}

impl ModuleState {
    pub(crate) fn new(
        contract: Contract,
        signer: LeaseSigner,
        bound_core: Option<Urn>,
        operators: Vec<Urn>,
    ) -> Self {
        let (events, _) = broadcast::channel(1024);
        ModuleState {
            contract,
            signers: Signers::new(signer),
            operators: Mutex::new(operators),
            slots: Mutex::new(IdMap::default()),
            events,
            active: watch::Sender::new(0),
            active_by_core: watch::Sender::new(BTreeMap::new()),
            phase: watch::Sender::new(Phase::AwaitingLease),
            bound_core: Mutex::new(bound_core),
            exit: Mutex::new(None),
            #[cfg(anima_test_faults)]
            faults: crate::fault::Faults::default(),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub(crate) fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let changed = *p != phase;
            *p = phase;
            changed
        });
    }

    pub(crate) fn bound_core(&self) -> Option<Urn> {
        self.bound_core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_bound_core(&self, core: Urn) {
        *self.bound_core.lock().unwrap_or_else(|p| p.into_inner()) = Some(core);
    }

    pub(crate) fn set_operators(&self, operators: Vec<Urn>) {
        *self.operators.lock().unwrap_or_else(|p| p.into_inner()) = operators;
    }

    pub(crate) fn is_operator(&self, urn: &Urn) -> bool {
        self.operators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(urn)
    }

    pub(crate) fn set_exit(&self, exit: Exit) {
        let mut slot = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
        }
    }

    pub(crate) fn take_exit(&self) -> Option<Exit> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether leases come from one Core only (Type I and II; E2, R2).
    fn binds_to_one_core(&self) -> bool {
        let private = !matches!(self.contract.module_type, ModuleType::ResidentShared);
        #[cfg(anima_test_faults)]
        if private && self.faults.is(crate::fault::Fault::SecondCore) {
            tracing::warn!("FAULT INJECTION (second-core): not bound to one Core");
            return false;
        }
        private
    }

    /// Whether `core` may open a lease now (ADR-0003 §6): only Cores; Type I
    /// and II only their bound Core (Type II binds to its first lessee when
    /// none was configured); nothing while terminating.
    pub(crate) fn admit_core(&self, core: &Urn) -> Result<(), LeaseError> {
        #[cfg(anima_test_faults)]
        let any_kind = self.faults.is(crate::fault::Fault::UserLease);
        #[cfg(not(anima_test_faults))]
        let any_kind = false;
        let module_peer =
            core.kind() == anima_protocol::UrnKind::Module && crate::access::module_peers(self);
        if core.kind() != anima_protocol::UrnKind::Core && !any_kind && !module_peer {
            return Err(LeaseError::IdentityMismatch {
                role: "consumer",
                claimed: core.to_string(),
                actual: core.clone(),
            });
        }
        if self.phase() == Phase::Terminating {
            return Err(LeaseError::Revoked {
                lease_id: String::new(),
                by: "module".into(),
                reason: Reason::Shutdown,
            });
        }
        if !self.binds_to_one_core() {
            return Ok(());
        }
        match self.bound_core() {
            Some(b) if &b != core => Err(LeaseError::WrongCore {
                bound: b,
                got: core.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// After a successful grant: binds a private module to `core` if it is
    /// not bound yet (the first Core to lease it), or checks the binding.
    pub(crate) fn bind(&self, core: &Urn) -> Result<(), LeaseError> {
        if !self.binds_to_one_core() {
            return Ok(());
        }
        let mut bound = self.bound_core.lock().unwrap_or_else(|p| p.into_inner());
        match &*bound {
            Some(b) if b != core => Err(LeaseError::WrongCore {
                bound: b.clone(),
                got: core.clone(),
            }),
            Some(_) => Ok(()),
            None => {
                tracing::info!(core = %core, "bound to the first Core to lease this module");
                *bound = Some(core.clone());
                Ok(())
            }
        }
    }

    fn slots(&self) -> MutexGuard<'_, IdMap<ConnectionId, Arc<LeaseSlot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn publish(&self, event: LeaseEvent) {
        let _ = self.events.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<LeaseEvent> {
        self.events.subscribe()
    }

    pub(crate) fn active(&self) -> watch::Receiver<usize> {
        self.active.subscribe()
    }

    pub(crate) fn active_by_core(&self) -> watch::Receiver<BTreeMap<Urn, usize>> {
        self.active_by_core.subscribe()
    }

    pub(crate) fn slot(&self, connection: ConnectionId) -> Option<Arc<LeaseSlot>> {
        self.slots().get(&connection).cloned()
    }

    pub(crate) fn slots_snapshot(&self) -> Vec<Arc<LeaseSlot>> {
        self.slots().values().cloned().collect()
    }

    /// Installs a freshly granted lease; refuses a second lease on one
    /// connection while the first is live (an ended one is replaced).
    pub(crate) fn install(
        self: &Arc<Self>,
        lease: Lease,
        signer: Arc<LeaseSigner>,
        outbound: mpsc::Sender<Result<ControlFrame, Status>>,
    ) -> Result<Arc<LeaseSlot>, LeaseError> {
        let slot = Arc::new(LeaseSlot {
            id: lease.id(),
            consumer: lease.consumer().clone(),
            connection: lease.connection(),
            signer,
            lease: Mutex::new(lease),
            tenant: Mutex::new(TenantMap::default()),
            ended: LeaseEnd::new(),
            expiry_moved: tokio::sync::Notify::new(),
            outbound: Mutex::new(Some(outbound)),
            #[cfg(anima_test_faults)]
            shared_tenant: self.faults.shared_tenant(),
        });
        {
            let mut slots = self.slots();
            #[cfg(anima_test_faults)]
            let replaces_live = self.faults.is(crate::fault::Fault::NoLeaseExists);
            #[cfg(not(anima_test_faults))]
            let replaces_live = false;
            if let Some(existing) = slots.get(&slot.connection)
                && !existing.ended.is_cancelled()
                && !replaces_live
            {
                return Err(LeaseError::LeaseExists {
                    lease_id: existing.id.to_string(),
                });
            }
            slots.insert(slot.connection, slot.clone());
        }
        self.count_active();
        tokio::spawn(expiry_watch(self.clone(), slot.clone()));
        Ok(slot)
    }

    /// Ends `slot`'s lease (if still open) and tells the Core with a signed
    /// revocation.
    pub(crate) fn revoke(&self, slot: &LeaseSlot, reason: Reason, detail: &str) {
        let token = {
            let mut lease = slot.lock();
            if lease.ended().is_some() {
                None
            } else {
                lease
                    .revoke(&slot.signer, reason, detail, now(), SystemTime::now())
                    .ok()
            }
        };
        if let Some(jws) = token {
            slot.send(Frame::Revoke(SignedToken { jws }));
        }
        self.finish(slot);
    }

    /// Revokes every open lease, telling each Core.
    pub(crate) fn revoke_all(&self, reason: Reason, detail: &str) {
        for slot in self.slots_snapshot() {
            self.revoke(&slot, reason, detail);
        }
    }

    /// Ends `slot`'s lease for `reason` without telling the Core (it told us,
    /// or the connection is gone).
    pub(crate) fn end(&self, slot: &LeaseSlot, reason: Reason, by: EndedBy, detail: &str) {
        slot.lock().end(reason, by, detail, now());
        self.finish(slot);
    }

    /// Fires the slot's token and reports how it ended. The slot stays in the
    /// table, refusing calls on its connection with the reason it ended,
    /// until the control stream closes ([`ModuleState::forget`]).
    pub(crate) fn finish(&self, slot: &LeaseSlot) {
        if self.halt(slot) {
            self.report_end(slot);
        }
    }

    /// The first half of [`ModuleState::finish`]: ends the lease for its
    /// calls, drops its tenant state and wakes the calls waiting on it, and
    /// nothing else, so that a task which yields next has the halted calls
    /// run before the bookkeeping ([`ModuleState::report_end`]). True the
    /// first time.
    fn halt(&self, slot: &LeaseSlot) -> bool {
        if !slot.ended.fire() {
            return false;
        }
        // Per-lease state dies with the lease (ADR-0003 §6.3, §7).
        slot.tenant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // Last: the runtime runs the task woken last first.
        slot.ended.wake();
        true
    }

    /// The second half of [`ModuleState::finish`]: counts the open leases
    /// again, logs the end and publishes it.
    fn report_end(&self, slot: &LeaseSlot) {
        self.count_active();
        let now = now();
        let (reason, by) = {
            let lease = slot.lock();
            match lease.state(now) {
                LeaseState::Ended(e) => (e.reason, e.by),
                LeaseState::Expired => (Reason::LeaseExpired, EndedBy::Circumstance),
                LeaseState::Active => (Reason::LeaseRevoked, EndedBy::Local),
            }
        };
        tracing::info!(lease_id = %slot.id, core = %slot.consumer, reason = %reason, by = %by, "lease ended");
        self.publish(LeaseEvent::Ended {
            lease_id: slot.id,
            consumer: slot.consumer.clone(),
            reason,
            by,
        });
    }

    /// Drops an ended slot once its retention is over, unless another
    /// lease took its connection meanwhile (that slot, even one whose Core
    /// chose the same lease id again, is not this one).
    pub(crate) fn forget(&self, slot: &LeaseSlot) {
        {
            let mut slots = self.slots();
            if slots
                .get(&slot.connection)
                .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), slot))
            {
                slots.remove(&slot.connection);
            }
        }
        self.count_active();
    }

    #[cfg(test)]
    pub(crate) fn set_active_for_test(&self, n: usize) {
        self.active.send_replace(n);
    }

    fn count_active(&self) {
        let mut by_core = BTreeMap::new();
        for slot in self.slots().values().filter(|s| !s.ended.is_cancelled()) {
            *by_core.entry(slot.consumer.clone()).or_insert(0) += 1;
        }
        self.active.send_replace(by_core.values().sum());
        self.active_by_core.send_if_modified(|now| {
            let changed = *now != by_core;
            *now = by_core;
            changed
        });
    }

    /// Admits one call: declared method, a lease on this connection, a
    /// genuine fresh proof, in scope. A bad or replayed proof also revokes
    /// the lease: only the Core can send on this connection, so it is
    /// misbehaving.
    pub(crate) fn admit(
        &self,
        peer: Option<&PeerInfo>,
        method: &str,
        proof: Option<&str>,
    ) -> Result<Arc<LeaseSlot>, (LeaseError, Option<LeaseId>)> {
        if !self.contract.methods.contains(method) {
            return Err((
                LeaseError::UnknownMethod {
                    method: format!("{method:.256}"),
                },
                None,
            ));
        }
        let peer = peer.ok_or((LeaseError::NoLease("not an Anima connection"), None))?;
        let Some(slot) = self.slot(peer.connection()) else {
            // Resident modules with no lease at all are in standby.
            let resident = !matches!(self.contract.module_type, ModuleType::Ephemeral);
            let error = if resident && *self.active.borrow() == 0 {
                LeaseError::Standby
            } else {
                LeaseError::NoLease("this connection holds no lease")
            };
            return Err((error, None));
        };
        let admitted = slot
            .lock()
            .admit(method, proof, now())
            .map_err(call_refusal);
        match admitted {
            Ok(()) => Ok(slot),
            Err(e) => {
                #[cfg(anima_test_faults)]
                let keeps_lease = self.faults.is(crate::fault::Fault::NoRevokeOnBadProof);
                #[cfg(not(anima_test_faults))]
                let keeps_lease = false;
                if matches!(e.reason(), Reason::BadProof | Reason::ProofReplayed) && !keeps_lease {
                    tracing::warn!(lease_id = %slot.id, core = %slot.consumer, error = %e, "refused call; revoking lease");
                    self.revoke(&slot, e.reason(), &e.to_string());
                }
                Err((e, Some(slot.id)))
            }
        }
    }
}

/// Ends the lease at its expiry instant; a renewal that moves the expiry,
/// earlier or later, moves the end with it.
///
/// Two clocks race for the instant: the runtime's timer, which rounds up to
/// its next millisecond tick and is the one tests can pause, and a
/// deadline kept to the microsecond on the real clock
/// ([`deadline::reached`]). Whichever wakes
/// first, the lease ends only once the SDK's clock says it has expired; a
/// deadline that woke early on a paused clock is not asked again for the
/// same instant.
async fn expiry_watch(state: Arc<ModuleState>, slot: Arc<LeaseSlot>) {
    let mut precise_for = None;
    loop {
        let at = slot.lock().expires_at();
        let asked = precise_for == Some(at);
        let precise = async move {
            if asked {
                std::future::pending::<()>().await;
            }
            deadline::reached(at).await;
        };
        tokio::select! {
            biased;
            _ = slot.ended.cancelled() => return,
            () = precise => precise_for = Some(at),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
            _ = slot.expiry_moved.notified() => continue,
        }
        let now = now();
        let expired = {
            let mut lease = slot.lock();
            let expired = matches!(lease.state(now), LeaseState::Expired);
            if expired {
                lease.end(Reason::LeaseExpired, EndedBy::Circumstance, "expired", now);
            }
            expired
        };
        if expired {
            // The halted calls first, then the log and the event.
            if state.halt(&slot) {
                tokio::task::yield_now().await;
                state.report_end(&slot);
            }
            return;
        }
    }
}
