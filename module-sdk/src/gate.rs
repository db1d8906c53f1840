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
#[cfg(feature = "fault-injection")]
use anima_protocol::lease::Reason;
use anima_protocol::lease::{LeaseError, PROOF_HEADER};
use tower::{Layer, Service};

use crate::context::LeaseContext;
use crate::leases::ModuleState;
use crate::status::refusal;

/// Paths that are not capabilities and need no lease.
/// `ModuleAdmin` authorizes by identity itself (shutdown: the module's Core
/// or an operator).
const INFRASTRUCTURE: [&str; 3] = [
    "/anima.v1.LeaseControl/",
    "/anima.v1.ModuleAdmin/",
    "/grpc.health.v1.Health/",
];

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
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The readied service handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if INFRASTRUCTURE.iter().any(|p| path.starts_with(p)) {
            return Box::pin(inner.call(request));
        }
        let proof = request
            .headers()
            .get(PROOF_HEADER)
            .and_then(|v| v.to_str().ok());
        let slot = match self.state.admit(PeerInfo::of_http(&request), path, proof) {
            Ok(slot) => slot,
            Err((err, lease)) => {
                tracing::debug!(method = %path, reason = %err.reason(), error = %err, "call refused");
                #[cfg(feature = "fault-injection")]
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
                    return Box::pin(inner.call(request));
                }
                let response = refusal(&err, lease).into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        if let Some(trace) = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
        {
            let trace_id = trace.split('-').nth(1).unwrap_or("");
            tracing::info!(target: "anima::call", trace_id, lease_id = %slot.id, core = %slot.consumer, method = %path, "call admitted");
        }
        request
            .extensions_mut()
            .insert(LeaseContext::new(slot.clone()));
        let call = inner.call(request);
        Box::pin(async move {
            tokio::select! {
                biased;
                _ = slot.ended.cancelled() => {
                    let err = slot
                        .end_error()
                        .unwrap_or(LeaseError::NoLease("the lease ended"));
                    tracing::info!(lease_id = %slot.id, reason = %err.reason(), "call halted: lease ended mid-execution");
                    Ok(refusal(&err, Some(slot.id)).into_http())
                }
                response = call => response,
            }
        })
    }
}
