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
use std::time::{Duration, Instant, SystemTime};

use anima_protocol::lease::{
    self, EndedBy, Entropy, Lease, LeaseError, LeaseId, LeaseRequest, LeaseSigner, LeaseState,
    PeerBinding, Reason, Scope,
};
use anima_protocol::pb::lease_control_client::LeaseControlClient;
use anima_protocol::pb::{ControlFrame, Refusal, SignedToken, control_frame::Frame};
use anima_protocol::{Connection, Urn};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

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

    pub(crate) fn lock(&self) -> MutexGuard<'_, Lease> {
        // Mutations are single assignments after their checks; a poisoned
        // lock still holds a consistent lease.
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The proof for one outgoing call of `method`, or why none may be sent.
    pub(crate) fn proof_for(&self, method: &str) -> Result<String, LeaseError> {
        let lease = self.lock();
        lease.check_valid(now())?;
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
        self.lock().check_valid(now()).err()
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

    /// Revokes here and tells the module; `actor` is who asked.
    pub(crate) fn revoke(&self, reason: Reason, detail: &str, actor: Actor) -> bool {
        let token = {
            let mut lease = self.lock();
            if lease.ended().is_some() {
                return false;
            }
            lease.revoke(&self.signer, reason, detail, now(), SystemTime::now())
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
            lease.end(reason, by, detail, now());
        }
        self.finish();
    }

    fn finish(&self) {
        self.ended.cancel();
        let state = self.lock().state(now());
        self.table.update(self.id, |r| r.state = state.clone());
    }
}

/// The Core's monotonic clock (tokio's, so paused-clock tests are exact).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
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
        let peer = PeerBinding::from_peer(connection.peer())?;
        let module = peer.urn.clone();
        if let Some(why) = table.blacklisted(&module) {
            let mut r = AuditRecord::now(
                AuditEvent::Refused,
                module.as_str(),
                signer.urn().as_str(),
                Actor::Core,
            );
            r.detail = Some(format!("blacklisted: {why}"));
            audit.record(r);
            return Err(CoreLeaseError::Blacklisted { module, why });
        }
        let (tx, rx) = mpsc::channel::<ControlFrame>(32);
        let request = LeaseRequest {
            scope,
            ttl: policy.ttl,
        };
        let sent_at = now();
        let (offer_jws, pending) = lease::offer(
            &signer,
            &peer,
            request,
            Entropy::system()?,
            sent_at,
            SystemTime::now(),
        )?;
        let id = *pending.id();
        let mut record = AuditRecord::now(
            AuditEvent::Issued,
            module.as_str(),
            signer.urn().as_str(),
            Actor::Core,
        );
        record.lease_id = Some(id.to_string());
        record.ttl_ms = Some(u64::try_from(policy.ttl.as_millis()).unwrap_or(u64::MAX));
        audit.record(record);

        tx.send(ControlFrame {
            frame: Some(Frame::Offer(SignedToken { jws: offer_jws })),
        })
        .await
        .map_err(|_| CoreLeaseError::StreamClosed)?;
        let mut client = LeaseControlClient::new(connection.channel());
        let handshake = async {
            let mut inbound = client
                .control(ReceiverStream::new(rx))
                .await
                .map_err(CoreLeaseError::Rpc)?
                .into_inner();
            let first = inbound.message().await.map_err(CoreLeaseError::Rpc)?;
            Ok::<_, CoreLeaseError>((inbound, first))
        };
        let (inbound, first) = tokio::time::timeout(policy.handshake_timeout, handshake)
            .await
            .map_err(|_| CoreLeaseError::HandshakeTimeout(policy.handshake_timeout))??;
        let refused = |reason: Reason, detail: String| {
            let mut r = AuditRecord::now(
                AuditEvent::Refused,
                module.as_str(),
                signer.urn().as_str(),
                Actor::Module,
            );
            r.lease_id = Some(id.to_string());
            r.reason = Some(reason);
            r.detail = Some(detail.clone());
            audit.record(r);
            CoreLeaseError::Refused { reason, detail }
        };
        let grant = match first {
            Some(ControlFrame {
                frame: Some(Frame::Grant(SignedToken { jws })),
            }) => jws,
            Some(ControlFrame {
                frame: Some(Frame::Refuse(Refusal { reason, detail })),
            }) => {
                // An unknown reason is a revocation, as the module reads one.
                let reason = Reason::parse(&reason).unwrap_or(Reason::LeaseRevoked);
                return Err(refused(reason, format!("{detail:.300}")));
            }
            Some(_) => {
                return Err(refused(
                    Reason::ProtocolViolation,
                    "the module answered the offer with neither grant nor refusal".into(),
                ));
            }
            None => return Err(CoreLeaseError::StreamClosed),
        };
        let lease = match pending.accept(&signer, &grant, SystemTime::now()) {
            Ok(l) => l,
            Err(e) => {
                // This side refuses: the module must revoke too (A7).
                let _ = tx.try_send(ControlFrame {
                    frame: Some(Frame::Refuse(Refusal {
                        reason: e.reason().as_str().into(),
                        detail: format!("{e:.300}"),
                    })),
                });
                let mut r = AuditRecord::now(
                    AuditEvent::Refused,
                    module.as_str(),
                    signer.urn().as_str(),
                    Actor::Core,
                );
                r.lease_id = Some(id.to_string());
                r.reason = Some(e.reason());
                r.detail = Some(e.to_string());
                audit.record(r);
                return Err(CoreLeaseError::Lease(e));
            }
        };
        let shared = Arc::new(LinkShared {
            id,
            module: module.clone(),
            core: signer.urn().clone(),
            seq: AtomicU64::new(1),
            ended: CancellationToken::new(),
            outbound: Mutex::new(Some(tx.clone())),
            signer,
            audit,
            table: table.clone(),
            lease: Mutex::new(lease),
        });
        table.insert(LeaseRecord::of(&shared.lock()));
        shared.audit(AuditEvent::Accepted, Actor::Module, None, None);
        tracing::info!(lease_id = %id, module = %module, ttl_ms = shared.lock().ttl().as_millis() as u64, "lease open");
        let (commands, command_rx) = mpsc::channel(8);
        let (state_tx, state) = watch::channel(LeaseState::Active);
        tokio::spawn(control_task(
            shared.clone(),
            inbound,
            command_rx,
            policy,
            state_tx,
        ));
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
        self.shared.lock().state(now())
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

/// Owns the control stream: renewals, scope changes, the module's messages,
/// expiry and connection loss.
async fn control_task(
    shared: Arc<LinkShared>,
    mut inbound: Streaming<ControlFrame>,
    mut commands: mpsc::Receiver<Command>,
    policy: RenewalPolicy,
    state: watch::Sender<LeaseState>,
) {
    let mut renewing = true;
    let mut rescope_reply: Option<oneshot::Sender<Result<Scope, CoreLeaseError>>> = None;
    let mut renew_at = next_renewal(&shared, &policy);
    loop {
        let (expires_at, pending_since) = {
            let lease = shared.lock();
            (lease.expires_at(), lease.pending_since())
        };
        let wake = match pending_since {
            Some(since) => (since + policy.retry_after).min(expires_at),
            None if renewing => renew_at.min(expires_at),
            None => expires_at,
        };
        tokio::select! {
            biased;
            _ = shared.ended.cancelled() => break,
            message = inbound.message() => match message {
                Ok(Some(ControlFrame { frame: Some(frame) })) => {
                    if let Err(e) = on_frame(&shared, frame, &mut rescope_reply) {
                        // This side refuses the step: revoke (the module
                        // learns it from the revocation).
                        tracing::warn!(lease_id = %shared.id, error = %e, "control step from module refused");
                        shared.revoke(e.reason(), &e.to_string(), Actor::Core);
                    }
                    renew_at = next_renewal(&shared, &policy);
                }
                Ok(Some(ControlFrame { frame: None })) => {}
                Ok(None) | Err(_) => {
                    if shared.lock().ended().is_none() {
                        tracing::warn!(lease_id = %shared.id, module = %shared.module, "control stream lost");
                        shared.audit(AuditEvent::ConnectionLost, Actor::Connection, Some(Reason::ConnectionLost), None);
                        shared.end(Reason::ConnectionLost, EndedBy::Circumstance, "control stream lost");
                    }
                    // The stream is gone: nothing more can arrive on it.
                    shared.ended.cancel();
                    break;
                }
            },
            command = commands.recv() => match command {
                Some(Command::Rescope(scope, reply)) => {
                    let token = {
                        let mut lease = shared.lock();
                        lease.rescope_request(&shared.signer, &scope, now(), SystemTime::now())
                    };
                    match token {
                        Ok(jws) => {
                            send(&shared, Frame::Rescope(SignedToken { jws })).await;
                            rescope_reply = Some(reply);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(CoreLeaseError::Lease(e)));
                        }
                    }
                }
                Some(Command::StopRenewing) => renewing = false,
                None => {
                    // Every handle was dropped: nobody can use the lease.
                    shared.revoke(Reason::LeaseRevoked, "lease handle dropped", Actor::Core);
                    break;
                }
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                let t = now();
                if t >= expires_at {
                    tracing::info!(lease_id = %shared.id, module = %shared.module, "lease expired");
                    shared.audit(AuditEvent::Expired, Actor::Clock, Some(Reason::LeaseExpired), None);
                    shared.end(Reason::LeaseExpired, EndedBy::Circumstance, "expired");
                    continue;
                }
                if pending_since.is_some() {
                    // Unanswered: forget it and ask again.
                    shared.lock().abandon_request();
                    if let Some(reply) = rescope_reply.take() {
                        let _ = reply.send(Err(CoreLeaseError::Unanswered));
                    }
                }
                if renewing || pending_since.is_some() {
                    let token = {
                        let mut lease = shared.lock();
                        lease.renew_request(&shared.signer, policy.ttl, t, SystemTime::now())
                    };
                    if let Ok(jws) = token {
                        send(&shared, Frame::Renew(SignedToken { jws })).await;
                    }
                }
            }
        }
    }
    if let Some(reply) = rescope_reply.take() {
        let _ = reply.send(Err(CoreLeaseError::Ended));
    }
    let final_state = shared.lock().state(now());
    state.send_replace(final_state);
    // Close our half cleanly (END_STREAM once queued frames are sent), then
    // let the module close its own: dropping `inbound` early would cancel
    // the stream, which the module must read as a broken connection.
    shared.close_outbound();
    let _ = tokio::time::timeout(HALF_CLOSE_WAIT, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
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
        .unwrap_or_else(now)
}

fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

fn on_frame(
    shared: &LinkShared,
    frame: Frame,
    rescope_reply: &mut Option<oneshot::Sender<Result<Scope, CoreLeaseError>>>,
) -> Result<(), LeaseError> {
    match frame {
        Frame::Renewed(SignedToken { jws }) => {
            let ttl = {
                let mut lease = shared.lock();
                let claims = lease.receive(&jws)?;
                if lease.is_stale_answer(&claims) {
                    // The answer to a renewal this side already gave up on
                    // and asked again: harmless, the newer one counts.
                    tracing::debug!(lease_id = %shared.id, "late renewal answer ignored");
                    return Ok(());
                }
                lease.apply_renewed(&claims, now())?
            };
            let renewals = shared.lock().renewals();
            shared.table.update(shared.id, |r| {
                r.renewals = renewals;
                r.ttl = ttl;
                r.expires = SystemTime::now() + ttl;
            });
            tracing::debug!(lease_id = %shared.id, ttl_ms = ttl.as_millis() as u64, "lease renewed");
            shared.audit(AuditEvent::Renewed, Actor::Module, None, None);
            Ok(())
        }
        Frame::Rescoped(SignedToken { jws }) => {
            let result = {
                let mut lease = shared.lock();
                let claims = lease.receive(&jws)?;
                if lease.is_stale_answer(&claims) {
                    // As for renewals: an answer to a request this side gave
                    // up on is ignored (PROTOCOL.md §3.4).
                    tracing::debug!(lease_id = %shared.id, "late rescope answer ignored");
                    return Ok(());
                }
                lease.apply_rescoped(&claims, now())?;
                lease.scope().clone()
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
        Frame::Revoke(SignedToken { jws }) => {
            let reason = {
                let mut lease = shared.lock();
                let claims = lease.receive(&jws)?;
                lease.apply_revoke(&claims, now())?
            };
            tracing::info!(lease_id = %shared.id, module = %shared.module, reason = %reason, "lease revoked by the module");
            shared.audit(AuditEvent::Revoked, Actor::Module, Some(reason), None);
            shared.finish();
            Ok(())
        }
        Frame::Refuse(Refusal { reason, detail }) => {
            // The module refused our last step and has revoked; so do we (A7).
            // An unknown reason is a revocation, as the module reads one.
            let reason = Reason::parse(&reason).unwrap_or(Reason::LeaseRevoked);
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
            Ok(())
        }
        Frame::Offer(_) | Frame::Grant(_) | Frame::Renew(_) | Frame::Rescope(_) => Err(
            LeaseError::Protocol("the Core does not accept Core-side frames".into()),
        ),
    }
}
