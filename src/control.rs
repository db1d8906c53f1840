//! The Core side of the lease handshake on the control stream: the one
//! driver that the Core, the conformance tool, the test harness and the
//! SDK's fake Core all use (PROTOCOL.md §2 and §3.1).
//!
//! The handshake is three steps, each a hook point for a tool that must
//! misbehave on purpose:
//!
//! 1. [`SignedOffer::new`] signs an offer for the module at the other end of
//!    a [`Connection`]. Its lease id is known from here on (the Core audits
//!    the offer before sending it); [`SignedOffer::tamper`] replaces the
//!    token (a forged signature, changed claims) while the Core keeps the
//!    honest pending lease.
//! 2. [`SignedOffer::send`] opens `LeaseControl/Control` with the offer as
//!    its first frame and waits, within a deadline, for the module's first
//!    frame: an [`Offered`].
//! 3. [`Offered::settle`] verifies a grant into a [`Lease`] (a [`Granted`]),
//!    or says why there is none. A grant that does not verify is answered
//!    with a `refuse` frame, as A7 asks of the side that refuses.
//!
//! [`open`] runs the three honestly. [`ControlStream`] is the stream itself,
//! for what follows the handshake (renewals, scope changes, revocations) and
//! for opening one without an offer (what a module does with a silent
//! stream).

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::clock::Clock;
use crate::lease::{
    self, Entropy, Lease, LeaseError, LeaseId, LeaseRequest, LeaseSigner, PeerBinding,
    PendingLease, Reason,
};
use crate::pb::control_frame::Frame;
use crate::pb::lease_control_client::LeaseControlClient;
use crate::pb::{ControlFrame, Refusal, SignedToken};
use crate::transport::Connection;

/// How many frames the Core side queues on its half of a control stream.
const OUTBOUND_FRAMES: usize = 32;

/// Why the handshake gave no lease.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// This side could not sign the offer (or read the module's key).
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The control stream was refused or broke before the module answered.
    #[error("lease control stream: {0}")]
    Rpc(Status),
    /// The module did not answer the offer within the deadline.
    #[error("the module did not answer the lease offer within {0:?}")]
    Timeout(Duration),
    /// The module closed the control stream without answering.
    #[error("the lease control stream closed without an answer")]
    Closed,
    /// The module refused the offer (a `refuse` frame, as sent).
    #[error("the module refused: {} ({:.300})", .0.reason, .0.detail)]
    Refused(Refusal),
    /// The module answered with neither a grant nor a refusal.
    #[error("the module answered the offer with neither grant nor refusal: {0:.200}")]
    Unexpected(String),
    /// The module's grant does not verify; this side refused it (A7).
    #[error("the module's grant does not verify: {0}")]
    BadGrant(LeaseError),
}

impl HandshakeError {
    /// The wire reason of a refusal. An unknown reason is read as a
    /// revocation, as a module reads one (PROTOCOL.md §2, step 5).
    pub fn refusal_reason(refusal: &Refusal) -> Reason {
        Reason::parse(&refusal.reason).unwrap_or(Reason::LeaseRevoked)
    }
}

/// A control stream opened by the Core side: its request half and the
/// module's frames.
#[derive(Debug)]
pub struct ControlStream {
    outbound: mpsc::Sender<ControlFrame>,
    inbound: Streaming<ControlFrame>,
}

impl ControlStream {
    /// Opens `LeaseControl/Control` on `conn` with `first` queued (an offer),
    /// or with nothing sent.
    pub async fn open(conn: &Connection, first: Option<Frame>) -> Result<Self, Status> {
        let (outbound, rx) = mpsc::channel(OUTBOUND_FRAMES);
        if let Some(frame) = first {
            // The receiver is alive and the queue empty: this cannot fail.
            let _ = outbound.try_send(ControlFrame { frame: Some(frame) });
        }
        let inbound = LeaseControlClient::new(conn.channel())
            .control(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(ControlStream { outbound, inbound })
    }

    /// Queues `frame` (false once the stream is gone).
    pub async fn send(&self, frame: Frame) -> bool {
        self.outbound
            .send(ControlFrame { frame: Some(frame) })
            .await
            .is_ok()
    }

    /// Closes this side's half cleanly (HTTP/2 `END_STREAM` once the frames
    /// already queued are sent), not by cancelling: what a Core does when its
    /// copy of the lease expired (PROTOCOL.md §2, *Closing a half*). The
    /// module's frames can still be read; later sends return false.
    pub fn close(&mut self) {
        let (closed, _) = mpsc::channel(1);
        // Dropping the last sender ends the request stream.
        drop(std::mem::replace(&mut self.outbound, closed));
    }

    /// The module's next message: `Ok(None)` once it closed its half.
    pub async fn message(&mut self) -> Result<Option<ControlFrame>, Status> {
        self.inbound.message().await
    }

    /// The module's next frame within `wait`: `Ok(Some)` a frame, `Ok(None)`
    /// the stream ended (closed, broken or an empty frame), `Err` nothing in
    /// time.
    pub async fn next_frame(&mut self, wait: Duration) -> Result<Option<Frame>, Elapsed> {
        match tokio::time::timeout(wait, self.inbound.message()).await {
            Err(_) => Err(Elapsed(wait)),
            Ok(Ok(Some(frame))) => Ok(frame.frame),
            Ok(Ok(None) | Err(_)) => Ok(None),
        }
    }

    /// The request half and the module's frames, for a task that owns them.
    pub fn into_parts(self) -> (mpsc::Sender<ControlFrame>, Streaming<ControlFrame>) {
        (self.outbound, self.inbound)
    }
}

/// Nothing arrived within the wait given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nothing arrived within {0:?}")]
pub struct Elapsed(pub Duration);

/// Step 1: an offer signed for the module at the other end of a connection.
#[derive(Debug)]
pub struct SignedOffer {
    token: String,
    pending: PendingLease,
}

impl SignedOffer {
    /// Signs an honest offer for `request` to the module `conn` leads to.
    pub fn new(
        signer: &LeaseSigner,
        conn: &Connection,
        request: LeaseRequest,
        clock: &dyn Clock,
    ) -> Result<Self, LeaseError> {
        let peer = PeerBinding::from_peer(conn.peer())?;
        let (token, pending) = lease::offer(
            signer,
            &peer,
            request,
            Entropy::system()?,
            clock.now(),
            clock.wall(),
        )?;
        Ok(SignedOffer { token, pending })
    }

    /// The lease id offered.
    pub fn id(&self) -> LeaseId {
        *self.pending.id()
    }

    /// The token that will be sent.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Replaces the token sent by what `change` makes of it, keeping the
    /// honest pending lease: for tools that test how a module treats a
    /// forged or altered offer.
    pub fn tamper<E>(&mut self, change: impl FnOnce(&str) -> Result<String, E>) -> Result<(), E> {
        self.token = change(&self.token)?;
        Ok(())
    }

    /// Step 2: opens the control stream with the offer and waits at most
    /// `patience` for the module's first frame.
    pub async fn send(
        self,
        conn: &Connection,
        patience: Duration,
    ) -> Result<Offered, HandshakeError> {
        let answer = async {
            let offer = Frame::Offer(SignedToken { jws: self.token });
            let mut stream = ControlStream::open(conn, Some(offer))
                .await
                .map_err(HandshakeError::Rpc)?;
            match stream.message().await.map_err(HandshakeError::Rpc)? {
                Some(ControlFrame { frame: Some(first) }) => Ok((stream, first)),
                Some(ControlFrame { frame: None }) => {
                    Err(HandshakeError::Unexpected("an empty frame".into()))
                }
                None => Err(HandshakeError::Closed),
            }
        };
        let (stream, first) = tokio::time::timeout(patience, answer)
            .await
            .map_err(|_| HandshakeError::Timeout(patience))??;
        Ok(Offered {
            stream,
            pending: self.pending,
            first,
        })
    }
}

/// Step 2's result: the module's first frame on an open control stream.
#[derive(Debug)]
pub struct Offered {
    stream: ControlStream,
    pending: PendingLease,
    first: Frame,
}

impl Offered {
    /// The module's first frame.
    pub fn first(&self) -> &Frame {
        &self.first
    }

    /// The stream and the first frame, for a tool that goes on by hand.
    pub fn into_parts(self) -> (ControlStream, PendingLease, Frame) {
        (self.stream, self.pending, self.first)
    }

    /// Step 3: the lease, if the first frame is a grant that verifies.
    pub fn settle(self, signer: &LeaseSigner, wall: SystemTime) -> Result<Granted, HandshakeError> {
        let grant = match self.first {
            Frame::Grant(SignedToken { jws }) => jws,
            Frame::Refuse(refusal) => return Err(HandshakeError::Refused(refusal)),
            other => return Err(HandshakeError::Unexpected(format!("{other:?}"))),
        };
        match self.pending.accept(signer, &grant, wall) {
            Ok(lease) => Ok(Granted {
                lease,
                grant,
                stream: self.stream,
            }),
            Err(e) => {
                // This side refuses: the module must revoke too (A7).
                let _ = self.stream.outbound.try_send(ControlFrame {
                    frame: Some(Frame::Refuse(Refusal {
                        reason: e.reason().as_str().into(),
                        detail: format!("{e:.300}"),
                    })),
                });
                Err(HandshakeError::BadGrant(e))
            }
        }
    }
}

/// A lease the module granted, with its control stream.
#[derive(Debug)]
pub struct Granted {
    /// The Core's side of the lease.
    pub lease: Lease,
    /// The module's grant token, as received.
    pub grant: String,
    /// The control stream, for renewals and revocations.
    pub stream: ControlStream,
}

/// The whole handshake, honestly: offers `request` to the module at the
/// other end of `conn` and returns the lease it grants, waiting at most
/// `patience` for the answer.
pub async fn open(
    conn: &Connection,
    signer: &LeaseSigner,
    request: LeaseRequest,
    clock: &dyn Clock,
    patience: Duration,
) -> Result<Granted, HandshakeError> {
    SignedOffer::new(signer, conn, request, clock)?
        .send(conn, patience)
        .await?
        .settle(signer, clock.wall())
}
