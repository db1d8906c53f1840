//! One leased connection to a module, from the Core's side.
//!
//! [`LeaseLink::open`] opens the control stream on a fresh connection, sends
//! the Core's signed offer, verifies the module's grant and starts one task
//! that owns the stream: it renews when a fraction of the TTL is left (with
//! jitter), retries an unanswered renewal until expiry, answers the module's
//! revocations and refusals, and ends the lease on expiry or connection loss.
//! Calls go through [`LeaseLink::channel`], which adds the per-call proof.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anima_protocol::control::{HandshakeError, SignedOffer};
use anima_protocol::lease::{
    ControlClaims, EndedBy, Lease, LeaseError, LeaseId, LeaseRequest, LeaseSigner, LeaseState,
    PeerBinding, Reason, Scope,
};
use anima_protocol::pb::{ControlFrame, Refusal, SignedToken, control_frame::Frame};
use anima_protocol::{Clock, Connection, SystemClock, Urn};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::calls::{CallCount, CallGuard};
use super::channel::LeasedChannel;
use super::error::CoreLeaseError;
use super::table::{LeaseRecord, LeaseTable};
use crate::audit::{Actor, AuditEvent, AuditLog, AuditRecord};

/// How the Core renews.
#[derive(Debug, Clone)]
pub struct RenewalPolicy {
    /// The TTL asked for at opening and at each renewal.
    pub ttl: Duration,
    /// Renew when this fraction of the TTL is left (default one third).
    pub renew_when_left: f64,
    /// Random spread of the renewal instant, as a fraction of the TTL
    /// (default 5 %), so many leases do not renew in lockstep.
    pub jitter: f64,
    /// How long to wait for a renewal answer before asking again.
    pub retry_after: Duration,
    /// How long the module has to answer the offer.
    pub handshake_timeout: Duration,
}

impl RenewalPolicy {
    /// Renews a lease of `ttl` with the defaults.
    ///
    /// # Default
    /// Renew with one third of the TTL left, 5 % jitter, retry an unanswered
    /// renewal after a tenth of the TTL (at least 20 ms), 5 s handshake timeout.
    pub fn new(ttl: Duration) -> Self {
        RenewalPolicy {
            ttl,
            renew_when_left: 1.0 / 3.0,
            jitter: 0.05,
            retry_after: (ttl / 10).max(Duration::from_millis(20)),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// The earlier of two optional instants.
fn earlier(
    a: Option<std::time::SystemTime>,
    b: Option<std::time::SystemTime>,
) -> Option<std::time::SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Control-task commands.
enum Command {
    Rescope(Scope, oneshot::Sender<Result<Scope, CoreLeaseError>>),
    /// Stop renewing (tests and shutdown drains: let the lease run out).
    StopRenewing,
}

/// The shared state of a link: the lease, the proof counter, the end signal.
pub(crate) struct LinkShared {
    pub(crate) id: LeaseId,
    pub(crate) module: Urn,
    pub(crate) core: Urn,
    lease: Mutex<Lease>,
    seq: AtomicU64,
    pub(crate) ended: CancellationToken,
    /// The request half of the control stream; taken (closing the half
    /// cleanly, PROTOCOL.md §2) when the lease is over.
    outbound: Mutex<Option<mpsc::Sender<ControlFrame>>>,
    signer: Arc<LeaseSigner>,
    audit: AuditLog,
    table: LeaseTable,
    clock: Arc<dyn Clock>,
    /// Gateway calls in flight on this lease.
    calls: Arc<CallCount>,
    /// When the earlier of the lease's two certificates expires.
    certificates_expire: Option<std::time::SystemTime>,
}

impl LinkShared {
    /// The control stream's request half, while it is open.
    fn outbound(&self) -> Option<mpsc::Sender<ControlFrame>> {
        self.outbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Closes the request half (frames already queued still go out).
    fn close_outbound(&self) {
        self.outbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// The monotonic now, from the link's clock.
    fn now(&self) -> Instant {
        self.clock.now()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Lease> {
        // Mutations are single assignments after their checks; a poisoned
        // lock still holds a consistent lease.
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Verifies the module's answer `jws` to a `what` request of this side
    /// and, under the lease lock, applies it with `apply` (given the claims
    /// and the now). `None` for a stale answer, to a request this side gave
    /// up on and no longer takes an answer to: harmless, the newer one counts
    /// (PROTOCOL.md §3.4). A late answer to one of the last abandoned
    /// renewals is applied like the awaited one.
    fn apply_answer<T>(
        &self,
        jws: &str,
        what: &str,
        apply: impl FnOnce(&mut Lease, &ControlClaims, Instant) -> Result<T, LeaseError>,
    ) -> Result<Option<T>, LeaseError> {
        let mut lease = self.lock();
        let claims = lease.receive(jws)?;
        if lease.is_stale_answer(&claims) {
            tracing::debug!(lease_id = %self.id, "late {what} answer ignored");
            return Ok(None);
        }
        apply(&mut lease, &claims, self.now()).map(Some)
    }

    /// The proof for one outgoing call of `method`, or why none may be sent.
    pub(crate) fn proof_for(&self, method: &str) -> Result<String, LeaseError> {
        let lease = self.lock();
        lease.check_valid(self.now())?;
        if !lease.scope().contains(method) {
            return Err(LeaseError::ScopeDenied {
                method: format!("{method:.256}"),
            });
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Ok(lease.proof_key().proof(seq, method))
    }

    /// The error a call gets once the lease is over.
    pub(crate) fn end_error(&self) -> Option<LeaseError> {
        self.lock().check_valid(self.now()).err()
    }

    fn audit(
        &self,
        event: AuditEvent,
        actor: Actor,
        reason: Option<Reason>,
        detail: Option<String>,
    ) {
        let mut r = AuditRecord::now(event, self.module.as_str(), self.core.as_str(), actor);
        r.lease_id = Some(self.id.to_string());
        r.reason = reason;
        r.detail = detail;
        if matches!(event, AuditEvent::Accepted | AuditEvent::Renewed) {
            r.ttl_ms = Some(u64::try_from(self.lock().ttl().as_millis()).unwrap_or(u64::MAX));
        }
        self.audit.record(r);
    }

    /// Records the open lease with the two certificates it is bound to.
    fn audit_accepted(&self, module_cert: anima_protocol::Fingerprint) {
        let mut r = AuditRecord::now(
            AuditEvent::Accepted,
            self.module.as_str(),
            self.core.as_str(),
            Actor::Module,
        );
        r.lease_id = Some(self.id.to_string());
        r.ttl_ms = Some(u64::try_from(self.lock().ttl().as_millis()).unwrap_or(u64::MAX));
        r.core_cert = Some(self.signer.fingerprint().to_string());
        r.module_cert = Some(module_cert.to_string());
        self.audit.record(r);
    }

    /// Revokes here and tells the module; `actor` is who asked.
    pub(crate) fn revoke(&self, reason: Reason, detail: &str, actor: Actor) -> bool {
        let token = {
            let mut lease = self.lock();
            if lease.ended().is_some() {
                return false;
            }
            lease.revoke(&self.signer, reason, detail, self.now(), self.clock.wall())
        };
        if let (Ok(jws), Some(outbound)) = (token, self.outbound()) {
            let _ = outbound.try_send(ControlFrame {
                frame: Some(Frame::Revoke(SignedToken { jws })),
            });
        }
        tracing::info!(lease_id = %self.id, module = %self.module, reason = %reason, actor = actor.as_str(), "lease revoked");
        self.audit(
            AuditEvent::Revoked,
            actor,
            Some(reason),
            Some(detail.to_owned()),
        );
        self.finish();
        true
    }

    /// Ends the lease for something that happened (no message to send).
    fn end(&self, reason: Reason, by: EndedBy, detail: &str) {
        {
            let mut lease = self.lock();
            if lease.ended().is_some() {
                return;
            }
            lease.end(reason, by, detail, self.now());
        }
        self.finish();
    }

    /// Ends the lease for `lapse`, a circumstance: logged, audited, and
    /// ended with no message to send.
    fn lapse(&self, lapse: Lapse) {
        let (event, actor, reason, detail) = match lapse {
            Lapse::Expired => {
                tracing::info!(lease_id = %self.id, module = %self.module, "lease expired");
                (
                    AuditEvent::Expired,
                    Actor::Clock,
                    Reason::LeaseExpired,
                    "expired",
                )
            }
            Lapse::ConnectionLost => {
                tracing::warn!(lease_id = %self.id, module = %self.module, "control stream lost");
                (
                    AuditEvent::ConnectionLost,
                    Actor::Connection,
                    Reason::ConnectionLost,
                    "control stream lost",
                )
            }
        };
        self.audit(event, actor, Some(reason), None);
        self.end(reason, EndedBy::Circumstance, detail);
    }

    fn finish(&self) {
        self.ended.cancel();
        let state = self.lock().state(self.now());
        self.table.update(self.id, |r| r.state = state.clone());
    }
}

/// What ends a lease with no message from either side.
#[derive(Debug, Clone, Copy)]
enum Lapse {
    /// Its expiry passed.
    Expired,
    /// Its control stream was lost.
    ConnectionLost,
}

/// Where a link writes what happens: the audit log and the lease table.
#[derive(Clone)]
pub struct Books {
    /// The audit log.
    pub audit: AuditLog,
    /// The Core's table of leases.
    pub table: LeaseTable,
}

/// Audit records for a lease that is not open yet.
struct Witness<'a> {
    audit: &'a AuditLog,
    module: &'a Urn,
    core: &'a Urn,
}

impl Witness<'_> {
    fn record(
        &self,
        event: AuditEvent,
        actor: Actor,
        id: Option<LeaseId>,
        reason: Option<Reason>,
        detail: Option<String>,
    ) {
        let mut r = AuditRecord::now(event, self.module.as_str(), self.core.as_str(), actor);
        r.lease_id = id.map(|id| id.to_string());
        r.reason = reason;
        r.detail = detail;
        self.audit.record(r);
    }

    fn issued(&self, id: LeaseId, ttl: Duration) {
        let mut r = AuditRecord::now(
            AuditEvent::Issued,
            self.module.as_str(),
            self.core.as_str(),
            Actor::Core,
        );
        r.lease_id = Some(id.to_string());
        r.ttl_ms = Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self.audit.record(r);
    }

    /// Records why the handshake gave no lease and says it as the Core's
    /// error.
    fn handshake_failed(&self, id: LeaseId, e: HandshakeError) -> CoreLeaseError {
        let (actor, reason, detail, error) = match e {
            HandshakeError::Refused(refusal) => {
                let reason = HandshakeError::refusal_reason(&refusal);
                let detail = format!("{:.300}", refusal.detail);
                let error = CoreLeaseError::Refused {
                    reason,
                    detail: detail.clone(),
                };
                (Actor::Module, reason, detail, error)
            }
            HandshakeError::Unexpected(_) => {
                let detail = "the module answered the offer with neither grant nor refusal";
                let error = CoreLeaseError::Refused {
                    reason: Reason::ProtocolViolation,
                    detail: detail.into(),
                };
                (
                    Actor::Module,
                    Reason::ProtocolViolation,
                    detail.into(),
                    error,
                )
            }
            // This side refused the grant (and told the module, A7).
            HandshakeError::BadGrant(e) => (Actor::Core, e.reason(), e.to_string(), e.into()),
            HandshakeError::Lease(e) => return e.into(),
            HandshakeError::Rpc(status) => return CoreLeaseError::Rpc(status),
            HandshakeError::Timeout(d) => return CoreLeaseError::HandshakeTimeout(d),
            HandshakeError::Closed => return CoreLeaseError::StreamClosed,
            other => return CoreLeaseError::Handshake(other),
        };
        self.record(
            AuditEvent::Refused,
            actor,
            Some(id),
            Some(reason),
            Some(detail),
        );
        error
    }
}

/// An open lease on one module connection. Dropping every clone of it
/// revokes the lease (a channel alone does not keep it).
#[derive(Clone)]
pub struct LeaseLink {
    shared: Arc<LinkShared>,
    connection: Connection,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<LeaseState>,
}

impl LeaseLink {
    /// Opens a lease on `connection` (whose peer is the module).
    pub async fn open(
        connection: Connection,
        signer: Arc<LeaseSigner>,
        scope: Scope,
        policy: RenewalPolicy,
        audit: AuditLog,
        table: LeaseTable,
    ) -> Result<Self, CoreLeaseError> {
        Self::open_with_clock(
            connection,
            signer,
            scope,
            policy,
            Books { audit, table },
            Arc::new(SystemClock),
        )
        .await
    }

    /// [`LeaseLink::open`] with the time taken from `clock`.
    pub async fn open_with_clock(
        connection: Connection,
        signer: Arc<LeaseSigner>,
        scope: Scope,
        policy: RenewalPolicy,
        books: Books,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CoreLeaseError> {
        let peer = PeerBinding::from_peer(connection.peer())?;
        let module = peer.urn.clone();
        let witness = Witness {
            audit: &books.audit,
            module: &module,
            core: signer.urn(),
        };
        if let Some(why) = books.table.blacklisted(&module) {
            witness.record(
                AuditEvent::Refused,
                Actor::Core,
                None,
                None,
                Some(format!("blacklisted: {why}")),
            );
            return Err(CoreLeaseError::Blacklisted { module, why });
        }
        let request = LeaseRequest {
            scope,
            ttl: policy.ttl,
        };
        let offer = SignedOffer::new(&signer, &connection, request, clock.as_ref())?;
        let id = offer.id();
        witness.issued(id, policy.ttl);
        let granted = offer
            .send(&connection, policy.handshake_timeout)
            .await
            .and_then(|offered| offered.settle(&signer, clock.wall()))
            .map_err(|e| witness.handshake_failed(id, e))?;
        let (outbound, inbound) = granted.stream.into_parts();
        let signer_not_after = signer.not_after();
        let shared = Arc::new(LinkShared {
            id,
            module: module.clone(),
            core: signer.urn().clone(),
            seq: AtomicU64::new(1),
            ended: CancellationToken::new(),
            outbound: Mutex::new(Some(outbound)),
            signer,
            audit: books.audit,
            table: books.table,
            lease: Mutex::new(granted.lease),
            clock,
            calls: Arc::default(),
            certificates_expire: earlier(signer_not_after, peer.not_after),
        });
        shared.table.insert(LeaseRecord::of(&shared.lock()));
        shared.audit_accepted(peer.fingerprint);
        tracing::info!(lease_id = %id, module = %module, ttl_ms = shared.lock().ttl().as_millis() as u64, "lease open");
        let (commands, state) = spawn_control(shared.clone(), inbound, policy);
        Ok(LeaseLink {
            shared,
            connection,
            commands,
            state,
        })
    }

    /// The lease id.
    pub fn id(&self) -> LeaseId {
        self.shared.id
    }

    /// The module.
    pub fn module(&self) -> &Urn {
        &self.shared.module
    }

    /// The scope now.
    pub fn scope(&self) -> Scope {
        self.shared.lock().scope().clone()
    }

    /// The TTL last granted.
    pub fn ttl(&self) -> Duration {
        self.shared.lock().ttl()
    }

    /// Renewals granted so far.
    pub fn renewals(&self) -> u64 {
        self.shared.lock().renewals()
    }

    /// The lease's state now.
    pub fn state(&self) -> LeaseState {
        self.shared.lock().state(self.shared.now())
    }

    /// Lease state changes (the state after each end).
    pub fn watch(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Completes when the lease ends for any reason.
    pub async fn ended(&self) {
        self.shared.ended.cancelled().await
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// A channel for the module's generated clients: every call carries the
    /// lease proof, calls outside the scope or after the lease ended are
    /// refused here without reaching the module, and an in-flight call is
    /// dropped the moment the lease ends.
    pub fn channel(&self) -> LeasedChannel {
        LeasedChannel::new(self.connection.channel(), self.shared.clone())
    }

    /// Counts one call in flight on this lease until the guard is dropped.
    pub fn enter_call(&self) -> CallGuard {
        self.shared.calls.enter()
    }

    /// Calls counted in flight now ([`LeaseLink::enter_call`]).
    pub fn calls_in_flight(&self) -> usize {
        self.shared.calls.get()
    }

    /// Completes once no counted call is in flight.
    pub async fn idle(&self) {
        self.shared.calls.idle().await
    }

    /// The fingerprint of the Core's certificate the lease is bound to
    /// (`cnf.iss_x5t#S256` of the offer).
    pub fn core_fingerprint(&self) -> anima_protocol::Fingerprint {
        self.shared.signer.fingerprint()
    }

    /// The fingerprint of the module's certificate the lease is bound to
    /// (the one its connection was presented).
    pub fn module_fingerprint(&self) -> anima_protocol::Fingerprint {
        self.connection.peer().fingerprint()
    }

    /// When the earlier of the two certificates expires: the lease cannot
    /// be renewed past it (`None`: neither says).
    pub fn certificates_expire(&self) -> Option<std::time::SystemTime> {
        self.shared.certificates_expire
    }

    /// Revokes the lease now and tells the module (`actor` is recorded).
    pub fn revoke(&self, detail: &str, actor: Actor) -> bool {
        self.shared.revoke(Reason::LeaseRevoked, detail, actor)
    }

    /// Asks the module for a new scope (promotion or demotion); applies it
    /// when granted. A refusal ends the lease on both sides.
    pub async fn rescope(&self, scope: Scope) -> Result<Scope, CoreLeaseError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Rescope(scope, tx))
            .await
            .map_err(|_| CoreLeaseError::Ended)?;
        rx.await.map_err(|_| CoreLeaseError::Ended)?
    }

    /// Stops renewing: the lease runs out at its expiry.
    pub async fn stop_renewing(&self) {
        let _ = self.commands.send(Command::StopRenewing).await;
    }
}

impl std::fmt::Debug for LeaseLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLink")
            .field("id", &self.shared.id)
            .field("module", &self.shared.module)
            .finish_non_exhaustive()
    }
}

/// Starts the task that owns the control stream: the handle's command
/// queue and the lease state it publishes.
fn spawn_control<S>(
    shared: Arc<LinkShared>,
    inbound: S,
    policy: RenewalPolicy,
) -> (mpsc::Sender<Command>, watch::Receiver<LeaseState>)
where
    S: Stream<Item = Result<ControlFrame, Status>> + Unpin + Send + 'static,
{
    let (commands, command_rx) = mpsc::channel(8);
    let (state_tx, state) = watch::channel(LeaseState::Active);
    tokio::spawn(control_task(shared, inbound, command_rx, policy, state_tx));
    (commands, state)
}

/// Where a rescope's answer goes.
type RescopeReply = oneshot::Sender<Result<Scope, CoreLeaseError>>;

/// Owns the control stream: renewals, scope changes, the module's messages,
/// expiry and connection loss.
async fn control_task<S>(
    shared: Arc<LinkShared>,
    mut inbound: S,
    mut commands: mpsc::Receiver<Command>,
    policy: RenewalPolicy,
    state: watch::Sender<LeaseState>,
) where
    S: Stream<Item = Result<ControlFrame, Status>> + Unpin,
{
    let mut control = Control {
        renew_at: next_renewal(&shared, &policy),
        shared,
        policy,
        renewing: true,
        rescope_reply: None,
    };
    loop {
        let timer = control.timer();
        let step = tokio::select! {
            biased;
            _ = control.shared.ended.cancelled() => Step::Stop,
            message = inbound.next() => control.on_message(message),
            command = commands.recv() => control.on_command(command).await,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timer.wake)) => {
                control.on_timer(timer).await;
                Step::Go
            }
        };
        if let Step::Stop = step {
            break;
        }
    }
    let shared = control.shared;
    if let Some(reply) = control.rescope_reply.take() {
        let _ = reply.send(Err(CoreLeaseError::Ended));
    }
    let final_state = shared.lock().state(shared.now());
    state.send_replace(final_state);
    // Close our half cleanly (END_STREAM once queued frames are sent), then
    // let the module close its own: dropping `inbound` early would cancel
    // the stream, which the module must read as a broken connection.
    shared.close_outbound();
    let _ = tokio::time::timeout(HALF_CLOSE_WAIT, async {
        while let Some(Ok(_)) = inbound.next().await {}
    })
    .await;
}

/// Whether the control task goes on.
enum Step {
    Go,
    Stop,
}

/// The control task's state between events.
struct Control {
    shared: Arc<LinkShared>,
    policy: RenewalPolicy,
    /// False once asked to stop renewing.
    renewing: bool,
    /// The rescope waiting for the module's answer.
    rescope_reply: Option<RescopeReply>,
    /// When the next renewal is due.
    renew_at: Instant,
}

/// What the timer waits for: the lease's expiry, and the renewal or retry
/// due before it.
#[derive(Clone, Copy)]
struct Timer {
    wake: Instant,
    expires_at: Instant,
    pending_since: Option<Instant>,
}

impl Control {
    fn timer(&self) -> Timer {
        let (expires_at, pending_since) = {
            let lease = self.shared.lock();
            (lease.expires_at(), lease.pending_since())
        };
        let wake = match pending_since {
            Some(since) => (since + self.policy.retry_after).min(expires_at),
            None if self.renewing => self.renew_at.min(expires_at),
            None => expires_at,
        };
        Timer {
            wake,
            expires_at,
            pending_since,
        }
    }

    /// A message from the module, or the stream's end.
    fn on_message(&mut self, message: Option<Result<ControlFrame, Status>>) -> Step {
        let shared = &self.shared;
        match message {
            Some(Ok(ControlFrame { frame: Some(frame) })) => {
                if let Err(e) = on_frame(shared, frame, &mut self.rescope_reply) {
                    // This side refuses the step: revoke (the module learns
                    // it from the revocation).
                    tracing::warn!(lease_id = %shared.id, error = %e, "control step from module refused");
                    shared.revoke(e.reason(), &e.to_string(), Actor::Core);
                }
                self.renew_at = next_renewal(shared, &self.policy);
                Step::Go
            }
            Some(Ok(ControlFrame { frame: None })) => Step::Go,
            None | Some(Err(_)) => {
                if shared.lock().ended().is_none() {
                    shared.lapse(Lapse::ConnectionLost);
                }
                // The stream is gone: nothing more can arrive on it.
                shared.ended.cancel();
                Step::Stop
            }
        }
    }

    /// A command from a handle, or every handle gone.
    async fn on_command(&mut self, command: Option<Command>) -> Step {
        let shared = &self.shared;
        match command {
            Some(Command::Rescope(scope, reply)) => {
                let token = {
                    let mut lease = shared.lock();
                    lease.rescope_request(&shared.signer, &scope, shared.now(), shared.clock.wall())
                };
                match token {
                    Ok(jws) => {
                        send(shared, Frame::Rescope(SignedToken { jws })).await;
                        self.rescope_reply = Some(reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(CoreLeaseError::Lease(e)));
                    }
                }
                Step::Go
            }
            Some(Command::StopRenewing) => {
                self.renewing = false;
                Step::Go
            }
            None => {
                // Every handle was dropped: nobody can use the lease.
                shared.revoke(Reason::LeaseRevoked, "lease handle dropped", Actor::Core);
                Step::Stop
            }
        }
    }

    /// The timer fired: the lease expired, or a renewal (or its retry) is
    /// due.
    async fn on_timer(&mut self, timer: Timer) {
        let shared = &self.shared;
        let t = shared.now();
        if t >= timer.expires_at {
            shared.lapse(Lapse::Expired);
            return;
        }
        if timer.pending_since.is_some() {
            // Unanswered: forget it and ask again.
            shared.lock().abandon_request();
            if let Some(reply) = self.rescope_reply.take() {
                let _ = reply.send(Err(CoreLeaseError::Unanswered));
            }
        }
        if self.renewing || timer.pending_since.is_some() {
            let token = {
                let mut lease = shared.lock();
                lease.renew_request(self.policy.ttl, t, shared.clock.wall())
            };
            if let Ok(jws) = token {
                send(shared, Frame::Renew(SignedToken { jws })).await;
            }
        }
    }
}

/// How long the Core waits for the module to close its half of an ended
/// lease's control stream before dropping it.
const HALF_CLOSE_WAIT: Duration = Duration::from_secs(1);

async fn send(shared: &LinkShared, frame: Frame) {
    let Some(outbound) = shared.outbound() else {
        return;
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        outbound.send(ControlFrame { frame: Some(frame) }),
    )
    .await;
}

fn next_renewal(shared: &LinkShared, policy: &RenewalPolicy) -> Instant {
    let lease = shared.lock();
    let ttl = lease.ttl();
    let left = ttl.mul_f64(policy.renew_when_left.clamp(0.05, 0.95));
    let spread = ttl.mul_f64(policy.jitter.clamp(0.0, 0.5));
    let jitter = spread.mul_f64(random_unit());
    lease
        .expires_at()
        .checked_sub(left + jitter)
        .unwrap_or_else(|| shared.now())
}

fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

/// A frame from the module: `Err` when this side refuses the step.
fn on_frame(
    shared: &LinkShared,
    frame: Frame,
    rescope_reply: &mut Option<RescopeReply>,
) -> Result<(), LeaseError> {
    match frame {
        Frame::Renewed(SignedToken { jws }) => on_renewed(shared, &jws),
        Frame::Rescoped(SignedToken { jws }) => on_rescoped(shared, &jws, rescope_reply),
        Frame::Revoke(SignedToken { jws }) => on_revoke(shared, &jws),
        Frame::Refuse(refusal) => {
            on_refuse(shared, refusal, rescope_reply);
            Ok(())
        }
        Frame::Offer(_) | Frame::Grant(_) | Frame::Renew(_) | Frame::Rescope(_) => Err(
            LeaseError::Protocol("the Core does not accept Core-side frames".into()),
        ),
    }
}

fn on_renewed(shared: &LinkShared, jws: &str) -> Result<(), LeaseError> {
    let Some(ttl) = shared.apply_answer(jws, "renewal", |lease, claims, now| {
        lease.apply_renewed(claims, now)
    })?
    else {
        return Ok(());
    };
    let renewals = shared.lock().renewals();
    let wall = shared.clock.wall();
    shared.table.update(shared.id, |r| {
        r.renewals = renewals;
        r.ttl = ttl;
        r.expires = wall + ttl;
    });
    tracing::debug!(lease_id = %shared.id, ttl_ms = ttl.as_millis() as u64, "lease renewed");
    shared.audit(AuditEvent::Renewed, Actor::Module, None, None);
    Ok(())
}

fn on_rescoped(
    shared: &LinkShared,
    jws: &str,
    rescope_reply: &mut Option<RescopeReply>,
) -> Result<(), LeaseError> {
    let Some(result) = shared.apply_answer(jws, "rescope", |lease, claims, now| {
        lease.apply_rescoped(claims, now)?;
        Ok(lease.scope().clone())
    })?
    else {
        return Ok(());
    };
    shared.table.update(shared.id, |r| r.scope = result.clone());
    shared.audit(
        AuditEvent::Rescoped,
        Actor::Module,
        None,
        Some(result.to_string()),
    );
    if let Some(reply) = rescope_reply.take() {
        let _ = reply.send(Ok(result));
    }
    Ok(())
}

fn on_revoke(shared: &LinkShared, jws: &str) -> Result<(), LeaseError> {
    let reason = {
        let mut lease = shared.lock();
        let claims = lease.receive(jws)?;
        lease.apply_revoke(&claims, shared.now())?
    };
    tracing::info!(lease_id = %shared.id, module = %shared.module, reason = %reason, "lease revoked by the module");
    shared.audit(AuditEvent::Revoked, Actor::Module, Some(reason), None);
    shared.finish();
    Ok(())
}

/// The module refused this side's last step and has revoked; so does this
/// side (A7). An unknown reason is a revocation, as the module reads one.
fn on_refuse(shared: &LinkShared, refusal: Refusal, rescope_reply: &mut Option<RescopeReply>) {
    let reason = HandshakeError::refusal_reason(&refusal);
    let detail = refusal.detail;
    tracing::warn!(lease_id = %shared.id, module = %shared.module, reason = %reason, detail = %detail, "module refused; lease ended");
    shared.audit(
        AuditEvent::Refused,
        Actor::Module,
        Some(reason),
        Some(format!("{detail:.300}")),
    );
    shared.end(
        reason,
        EndedBy::Peer,
        &format!("refused by the module: {detail:.200}"),
    );
    if let Some(reply) = rescope_reply.take() {
        let _ = reply.send(Err(CoreLeaseError::Refused {
            reason,
            detail: format!("{detail:.300}"),
        }));
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
