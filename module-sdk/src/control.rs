//! The module's side of the lease control stream (`anima.v1.LeaseControl`).
//!
//! One stream per connection: the Core's offer must arrive within
//! [`HANDSHAKE_TIMEOUT`]; the module verifies it and answers with its grant
//! (or a refusal, which ends the stream). Afterwards it answers renewals and
//! scope changes, applies revocations, and revokes by itself on refusal. The
//! lease ends when the stream ends (connection loss) and the stream ends when
//! the lease does.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anima_protocol::PeerInfo;
use anima_protocol::lease::{
    self, EndedBy, Entropy, GrantPolicy, LeaseError, LeaseSigner, PeerBinding, Reason,
};
use anima_protocol::pb::lease_control_server::LeaseControl;
use anima_protocol::pb::{ControlFrame, Refusal, SignedToken, control_frame::Frame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::clock::now;
use crate::leases::{LeaseEvent, LeaseSlot, ModuleState};

/// How long the Core has to send its offer after opening the stream.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `LeaseControl` service.
#[derive(Clone)]
pub(crate) struct ControlService {
    pub(crate) state: Arc<ModuleState>,
}

type Outbound = mpsc::Sender<Result<ControlFrame, Status>>;

fn frame(f: Frame) -> Result<ControlFrame, Status> {
    Ok(ControlFrame { frame: Some(f) })
}

fn refusal(err: &LeaseError) -> Frame {
    Frame::Refuse(Refusal {
        reason: err.reason().as_str().into(),
        detail: format!("{err:.300}"),
    })
}

#[tonic::async_trait]
impl LeaseControl for ControlService {
    type ControlStream = ReceiverStream<Result<ControlFrame, Status>>;

    async fn control(
        &self,
        request: Request<Streaming<ControlFrame>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        let peer = PeerInfo::of(&request)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("not an Anima connection"))?;
        let binding = PeerBinding::from_peer(&peer)
            .map_err(|e| lease::status_for(e.reason(), e.to_string(), []))?;
        // Leases on this connection are signed with the key of the
        // certificate it was presented (an older one after a reload).
        let signer = self.state.signers.for_certificate(peer.local_fingerprint());
        let (tx, rx) = mpsc::channel(32);
        let inbound = request.into_inner();
        tokio::spawn(run(self.state.clone(), binding, signer, inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Runs one control stream: the handshake, then the lease until it ends,
/// then the ended lease's retention on its connection.
async fn run(
    state: Arc<ModuleState>,
    peer: PeerBinding,
    signer: Arc<LeaseSigner>,
    mut inbound: Streaming<ControlFrame>,
    tx: Outbound,
) {
    #[cfg(anima_test_faults)]
    let deadline = if state.faults.is(crate::fault::Fault::NoOfferDeadline) {
        Duration::from_secs(86_400)
    } else {
        HANDSHAKE_TIMEOUT
    };
    #[cfg(not(anima_test_faults))]
    let deadline = HANDSHAKE_TIMEOUT;
    let Some(offer) = receive_offer(deadline, &mut inbound, &tx).await else {
        return;
    };
    let Some(slot) = answer_offer(&state, &peer, signer, &offer, &tx).await else {
        return;
    };
    follow_lease(&state, &slot, &mut inbound).await;
    retain_ended(&state, &slot, inbound, tx).await;
}

/// Waits up to `deadline` for the stream's first frame, which must be the
/// Core's offer. Anything else is refused, and `None` ends the stream (as
/// does the stream ending or breaking first).
async fn receive_offer(
    deadline: Duration,
    inbound: &mut Streaming<ControlFrame>,
    tx: &Outbound,
) -> Option<String> {
    let first = tokio::time::timeout(deadline, inbound.message()).await;
    let err = match first {
        Ok(Ok(Some(ControlFrame {
            frame: Some(Frame::Offer(SignedToken { jws })),
        }))) => return Some(jws),
        Ok(Ok(Some(_))) => LeaseError::Protocol("the first control frame must be an offer".into()),
        Ok(Ok(None)) | Ok(Err(_)) => return None,
        Err(_) => LeaseError::Protocol("no offer within the handshake timeout".into()),
    };
    let _ = tx.send(frame(refusal(&err))).await;
    None
}

/// Answers the offer with a grant and returns the lease it opened, or
/// refuses it (logged and published) and returns `None`, ending the stream.
async fn answer_offer(
    state: &Arc<ModuleState>,
    peer: &PeerBinding,
    signer: Arc<LeaseSigner>,
    offer: &str,
    tx: &Outbound,
) -> Option<Arc<LeaseSlot>> {
    match open(state, peer, signer, offer, tx.clone()) {
        Ok((slot, grant)) => {
            let _ = tx
                .send(frame(Frame::Grant(SignedToken { jws: grant })))
                .await;
            Some(slot)
        }
        Err(err) => {
            tracing::warn!(core = %peer.urn, connection = %peer.connection, reason = %err.reason(), error = %err, "lease offer refused");
            state.publish(LeaseEvent::Refused {
                consumer: peer.urn.clone(),
                reason: err.reason(),
            });
            let _ = tx.send(frame(refusal(&err))).await;
            None
        }
    }
}

/// Answers the Core's control frames until the lease ends: by a refusal
/// on either side, a revocation, expiry, or the stream closing or breaking.
async fn follow_lease(
    state: &ModuleState,
    slot: &LeaseSlot,
    inbound: &mut Streaming<ControlFrame>,
) {
    loop {
        let message = tokio::select! {
            biased;
            _ = slot.ended.cancelled() => break,
            m = inbound.message() => m,
        };
        match message {
            Ok(Some(ControlFrame { frame: Some(f) })) => {
                if let Err(err) = step(state, slot, f) {
                    // An explicit refusal: this side revokes, and tells the
                    // Core, which must revoke too (A7).
                    tracing::warn!(lease_id = %slot.id, core = %slot.consumer, error = %err, "control step refused; revoking");
                    slot.send(refusal(&err));
                    state.end(slot, err.reason(), EndedBy::Local, &err.to_string());
                }
            }
            Ok(Some(ControlFrame { frame: None })) => {}
            Ok(None) => {
                // A clean half-close with no revoke or refuse before it: an
                // honest Core does that only when its own copy expired
                // (§2.6), a moment before ours (§3.2).
                state.end(
                    slot,
                    Reason::LeaseExpired,
                    EndedBy::Peer,
                    "the Core closed its half of the control stream: its copy expired",
                );
                break;
            }
            Err(_) => {
                state.end(
                    slot,
                    Reason::ConnectionLost,
                    EndedBy::Circumstance,
                    "control stream broken",
                );
                break;
            }
        }
    }
}

/// The lease is over: nothing more is answered on this stream. Closes our
/// side (queued frames still flush) and keeps the ended lease attached to
/// its connection for [`ENDED_LEASE_RETENTION`], so calls on it are refused
/// with the reason it ended, whatever the Core does with its side.
async fn retain_ended(
    state: &ModuleState,
    slot: &LeaseSlot,
    mut inbound: Streaming<ControlFrame>,
    tx: Outbound,
) {
    slot.close_outbound();
    drop(tx);
    let until = tokio::time::Instant::now() + ENDED_LEASE_RETENTION;
    // What the Core still sends is read and dropped until its side ends;
    // then the stream (and its read buffer) goes, the slot stays.
    let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
    let _ = tokio::time::timeout_at(until, drain).await;
    drop(inbound);
    tokio::time::sleep_until(until).await;
    state.forget(slot);
}

/// How long an ended lease stays attached to its connection (PROTOCOL.md
/// §2): calls on that connection are refused with the reason it ended
/// (`LEASE_EXPIRED` / `LEASE_REVOKED`) rather than `NO_LEASE` / `STANDBY`,
/// unless a new lease is granted on it first.
pub const ENDED_LEASE_RETENTION: Duration = Duration::from_secs(60);

fn open(
    state: &Arc<ModuleState>,
    peer: &PeerBinding,
    signer: Arc<LeaseSigner>,
    offer: &str,
    tx: Outbound,
) -> Result<(Arc<LeaseSlot>, String), LeaseError> {
    state.admit_core(&peer.urn)?;
    #[cfg(anima_test_faults)]
    let (second_lease, ended_blocks) = (
        state.faults.is(crate::fault::Fault::NoLeaseExists),
        state.faults.is(crate::fault::Fault::EndedLeaseExists),
    );
    #[cfg(not(anima_test_faults))]
    let (second_lease, ended_blocks) = (false, false);
    if let Some(existing) = state.slot(peer.connection)
        && (!existing.ended.is_cancelled() || ended_blocks)
        && !second_lease
    {
        return Err(LeaseError::LeaseExists {
            lease_id: existing.id.to_string(),
        });
    }
    let policy = GrantPolicy {
        declared: state.contract.methods.clone(),
        max_ttl: state.contract.max_lease,
    };
    let (grant, lease) = lease::grant(
        &signer,
        peer,
        offer,
        &policy,
        Entropy::system()?,
        now(),
        SystemTime::now(),
    )?;
    state.bind(&peer.urn)?;
    let (id, ttl, expires_at) = (lease.id(), lease.ttl(), lease.expires_at());
    let slot = state.install(lease, signer, tx)?;
    tracing::info!(lease_id = %id, core = %peer.urn, ttl_ms = ttl.as_millis() as u64, "lease granted");
    state.publish(LeaseEvent::Granted {
        lease_id: id,
        consumer: peer.urn.clone(),
        ttl,
        expires_at,
    });
    Ok((slot, grant))
}

/// Handles one control frame after the handshake.
fn step(state: &ModuleState, slot: &LeaseSlot, f: Frame) -> Result<(), LeaseError> {
    let wall = SystemTime::now();
    match f {
        Frame::Renew(SignedToken { jws }) => {
            let (answer, ttl, expires_at) = {
                let mut lease = slot.lock();
                let claims = lease.receive(&jws)?;
                let answer = lease.answer_renew(&claims, now(), wall)?;
                (answer, lease.ttl(), lease.expires_at())
            };
            slot.send(Frame::Renewed(SignedToken { jws: answer }));
            slot.expiry_moved();
            tracing::debug!(lease_id = %slot.id, ttl_ms = ttl.as_millis() as u64, "lease renewed");
            state.publish(LeaseEvent::Renewed {
                lease_id: slot.id,
                ttl,
                expires_at,
            });
            Ok(())
        }
        Frame::Rescope(SignedToken { jws }) => {
            let (answer, scope) = {
                let mut lease = slot.lock();
                let claims = lease.receive(&jws)?;
                let answer = lease.answer_rescope(
                    &slot.signer,
                    &claims,
                    &state.contract.methods,
                    now(),
                    wall,
                )?;
                (answer, lease.scope().clone())
            };
            slot.send(Frame::Rescoped(SignedToken { jws: answer }));
            tracing::info!(lease_id = %slot.id, scope = %scope, "lease scope changed");
            state.publish(LeaseEvent::Rescoped {
                lease_id: slot.id,
                scope,
            });
            Ok(())
        }
        Frame::Revoke(SignedToken { jws }) => {
            {
                let mut lease = slot.lock();
                let claims = lease.receive(&jws)?;
                lease.apply_revoke(&claims, now())?;
            }
            state.finish(slot);
            Ok(())
        }
        Frame::Refuse(Refusal { reason, detail }) => {
            let reason = Reason::parse(&reason).unwrap_or(Reason::LeaseRevoked);
            state.end(
                slot,
                reason,
                EndedBy::Peer,
                &format!("refused by the Core: {detail:.200}"),
            );
            Ok(())
        }
        Frame::Offer(_) => Err(LeaseError::LeaseExists {
            lease_id: slot.id.to_string(),
        }),
        Frame::Grant(_) | Frame::Renewed(_) | Frame::Rescoped(_) => Err(LeaseError::Protocol(
            "the module does not accept module-side frames".into(),
        )),
    }
}
