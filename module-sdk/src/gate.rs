//! The lease gate: a tower layer every capability call passes before its
//! handler runs.
//!
//! Infrastructure services (the lease control stream, `ModuleAdmin`,
//! `grpc.health.v1`) pass
//! through. Every other call must name a declared method, arrive on a
//! connection holding a valid lease, and carry a genuine, fresh proof for
//! that method; otherwise it is refused with an `anima` reason and the
//! handler never runs. An admitted call is raced against its lease: when the
//! lease ends first, the handler's future is dropped at once (no further side
//! effects) and the caller gets `LEASE_EXPIRED` or `LEASE_REVOKED`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anima_protocol::PeerInfo;
#[cfg(anima_test_faults)]
use anima_protocol::lease::Reason;
use anima_protocol::lease::{LeaseError, PROOF_HEADER_NAME};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::Status;
use tower::{Layer, Service};

use crate::context::LeaseContext;
use crate::leases::{LeaseSlot, ModuleState};
use crate::status::refusal;

/// Paths that are not capabilities and need no lease.
/// `ModuleAdmin` authorizes by identity itself (shutdown: the module's Core
/// or an operator).
const INFRASTRUCTURE: [&str; 3] = [
    "/anima.v1.LeaseControl/",
    "/anima.v1.ModuleAdmin/",
    "/grpc.health.v1.Health/",
];

/// The W3C trace context header, logged with an admitted call.
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// What the gate checks in place of a proof header that cannot be one
/// (several entries, or not text): it never verifies, so the call is refused
/// `BAD_PROOF` like any other bad proof.
const MALFORMED_PROOF: &str = "malformed";

/// Applies the gate to a service.
#[derive(Clone)]
pub(crate) struct GateLayer {
    pub(crate) state: Arc<ModuleState>,
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The gate around one service.
#[derive(Clone)]
pub(crate) struct Gate<S> {
    inner: S,
    state: Arc<ModuleState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> Service<http::Request<B>> for Gate<S>
where
    S: Service<http::Request<LeasedRequest<B>>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The readied service handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if INFRASTRUCTURE.iter().any(|p| path.starts_with(p)) {
            return Box::pin(inner.call(request.map(LeasedRequest::ungated)));
        }
        // Exactly one ASCII `anima-proof` entry; several, or one that is not
        // text, is a bad proof (PROTOCOL.md §4), never "no proof".
        let mut proofs = request.headers().get_all(&PROOF_HEADER_NAME).iter();
        let proof = match (proofs.next(), proofs.next()) {
            (None, _) => None,
            (Some(one), None) => Some(one.to_str().unwrap_or(MALFORMED_PROOF)),
            (Some(_), Some(_)) => Some(MALFORMED_PROOF),
        };
        let slot = match self.state.admit(PeerInfo::of_http(&request), path, proof) {
            Ok(slot) => slot,
            Err((err, lease)) => {
                tracing::debug!(method = %path, reason = %err.reason(), error = %err, "call refused");
                #[cfg(anima_test_faults)]
                if self.state.faults.is(crate::fault::Fault::UnleasedExec)
                    && matches!(
                        err.reason(),
                        Reason::NoLease
                            | Reason::Standby
                            | Reason::LeaseExpired
                            | Reason::LeaseRevoked
                    )
                {
                    tracing::warn!(method = %path, reason = %err.reason(), "FAULT INJECTION (unleased-exec): running a call without a valid lease");
                    return Box::pin(inner.call(request.map(LeasedRequest::ungated)));
                }
                #[cfg(anima_test_faults)]
                if self.state.faults.is(crate::fault::Fault::UnknownMethodBare)
                    && err.reason() == Reason::UnknownMethod
                {
                    let response = Status::unimplemented("no such method").into_http();
                    return Box::pin(async move { Ok(response) });
                }
                let response = refusal(&err, lease).into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        if let Some(trace) = request
            .headers()
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
        {
            let trace_id = trace.split('-').nth(1).unwrap_or("");
            tracing::info!(target: "anima::call", trace_id, lease_id = %slot.id, core = %slot.consumer, method = %path, "call admitted");
        }
        let mut request = request.map(|body| LeasedRequest::gated(body, slot.clone()));
        request
            .extensions_mut()
            .insert(LeaseContext::new(slot.clone()));
        let call = inner.call(request);
        #[cfg(anima_test_faults)]
        let ungated = self.state.faults.is(crate::fault::Fault::UngatedStreams);
        #[cfg(not(anima_test_faults))]
        let ungated = false;
        Box::pin(async move {
            let Some(response) = until_ended(call, &slot).await else {
                return Ok(halted(&slot).into_http());
            };
            if ungated {
                tracing::warn!("FAULT INJECTION (ungated-streams): the body outlives the lease");
                return response;
            }
            response.map(|r| r.map(|body| tonic::body::Body::new(LeasedResponse::new(body, slot))))
        })
    }
}

/// `call`'s output, or `None` once `slot`'s lease has ended first. The
/// lease's end is looked at before each poll of the call (a flag, no lock)
/// and waited on only while the call waits.
async fn until_ended<F: Future>(call: F, slot: &LeaseSlot) -> Option<F::Output> {
    let ended = slot.ended.cancelled();
    tokio::pin!(call, ended);
    std::future::poll_fn(|cx| {
        if slot.ended.is_cancelled() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(output) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        ended.as_mut().poll(cx).map(|()| None)
    })
    .await
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The status a call halted by the end of its lease ends with (and logs it).
fn halted(slot: &LeaseSlot) -> Status {
    let err = slot
        .end_error()
        .unwrap_or(LeaseError::NoLease("the lease ended"));
    tracing::info!(lease_id = %slot.id, reason = %err.reason(), "call halted: lease ended mid-execution");
    refusal(&err, Some(slot.id))
}

/// A leased call's end-of-lease signal, looked at before each poll of its
/// body and waited on only while the body waits.
struct Ending {
    slot: Arc<LeaseSlot>,
    /// Made the first time the body waits.
    ended: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Ending {
    fn new(slot: Arc<LeaseSlot>) -> Self {
        Ending { slot, ended: None }
    }

    /// Whether the lease has ended (without waiting).
    fn has_ended(&self) -> bool {
        self.slot.ended.is_cancelled()
    }

    /// For a body that waits: whether the lease has ended, registering the
    /// waker to be woken when it does otherwise.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        let slot = &self.slot;
        self.ended
            .get_or_insert_with(|| Box::pin(slot.ended.cancelled_owned()))
            .as_mut()
            .poll(cx)
            .is_ready()
    }

    /// Whether a message leaving now would leave after the lease's end.
    fn is_over(&self) -> bool {
        self.slot.ended.is_cancelled() || self.slot.end_error().is_some()
    }
}

/// The request body of a capability call: once the call's lease has ended
/// it hands the handler no further message (its next read fails with the
/// lease's reason) and never polls the peer's stream again.
pub(crate) struct LeasedRequest<B> {
    inner: B,
    /// `None` for lease-free infrastructure calls; taken once the lease ended.
    ending: Option<Ending>,
    /// The lease ended: the body is over.
    halted: bool,
}

impl<B> LeasedRequest<B> {
    fn gated(inner: B, slot: Arc<LeaseSlot>) -> Self {
        LeasedRequest {
            inner,
            ending: Some(Ending::new(slot)),
            halted: false,
        }
    }

    fn ungated(inner: B) -> Self {
        LeasedRequest {
            inner,
            ending: None,
            halted: false,
        }
    }

    fn halt(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.halted = true;
        match self.ending.take() {
            Some(ending) => Poll::Ready(Some(Err(Box::new(halted(&ending.slot))))),
            None => Poll::Ready(None),
        }
    }
}

impl<B> Body for LeasedRequest<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.halted {
            return Poll::Ready(None);
        }
        if this.ending.as_ref().is_some_and(Ending::has_ended) {
            return this.halt();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_data() && this.ending.as_ref().is_some_and(Ending::is_over) {
                    return this.halt();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.ending.as_mut().is_some_and(|e| e.poll_ended(cx)) {
                    return this.halt();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.halted || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.halted {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

/// The response body of an admitted call: when the lease ends it drops the
/// handler's stream (no further polls, no further side effects) and ends
/// the call with trailers carrying the lease's reason; a message the handler
/// yields after the lease's end is dropped, not sent.
struct LeasedResponse {
    /// `None` once over (the handler's stream ended or was dropped).
    inner: Option<tonic::body::Body>,
    ending: Ending,
}

impl LeasedResponse {
    fn new(inner: tonic::body::Body, slot: Arc<LeaseSlot>) -> Self {
        LeasedResponse {
            inner: Some(inner),
            ending: Ending::new(slot),
        }
    }

    /// Drops the handler's stream and ends the call with the lease's reason.
    fn halt(&mut self) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.inner = None;
        let mut trailers = http::HeaderMap::new();
        if let Err(unencodable) = halted(&self.ending.slot).add_header(&mut trailers) {
            // Our own status always encodes; should it not, the code alone.
            trailers.clear();
            let _ = unencodable.add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl Body for LeasedResponse {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if this.ending.has_ended() {
            return this.halt();
        }
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_data() && this.ending.is_over() => this.halt(),
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending if this.ending.poll_ended(cx) => this.halt(),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
