//! The leased channel: the tower service generated clients call through.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anima_protocol::lease::{LeaseError, PROOF_HEADER_NAME, proof_header_value, reason_of};
use anima_protocol::transport::{ChannelError, PeerChannel};
use tonic::body::Body;
use tower::Service;

use super::link::LinkShared;
use crate::status::refusal;

/// A gRPC channel bound to one lease. Use it with any generated client:
/// `EchoClient::new(link.channel())`.
#[derive(Clone)]
pub struct LeasedChannel {
    inner: PeerChannel,
    link: Arc<LinkShared>,
}

impl LeasedChannel {
    pub(crate) fn new(inner: PeerChannel, link: Arc<LinkShared>) -> Self {
        LeasedChannel { inner, link }
    }
}

impl std::fmt::Debug for LeasedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedChannel")
            .field("lease_id", &self.link.id)
            .finish()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl Service<http::Request<Body>> for LeasedChannel {
    type Response = http::Response<Body>;
    type Error = ChannelError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let link = self.link.clone();
        let proof = link
            .proof_for(request.uri().path())
            .and_then(proof_header_value);
        match proof {
            Ok(value) => {
                request
                    .headers_mut()
                    .insert(PROOF_HEADER_NAME.clone(), value);
            }
            Err(e) => {
                // Refused here: nothing reaches the module.
                let response = refusal(&e, Some(link.id)).into_http();
                return Box::pin(async move { Ok(response) });
            }
        }
        let call = inner.call(request);
        Box::pin(async move {
            tokio::select! {
                biased;
                _ = link.ended.cancelled() => {
                    // The lease ended mid-call: stop talking at once (the
                    // dropped call resets its stream).
                    let e = link.end_error().unwrap_or(LeaseError::NoLease("the lease ended"));
                    Ok(refusal(&e, Some(link.id)).into_http())
                }
                response = call => {
                    let response = response?;
                    observe(&link, &response);
                    Ok(response)
                }
            }
        })
    }
}

/// An explicit refusal by the module (an `anima` reason in a trailers-only
/// response) makes the Core revoke the lease at once (A7).
fn observe(link: &LinkShared, response: &http::Response<Body>) {
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return;
    };
    if status.code() == tonic::Code::Ok {
        return;
    }
    if let Some(reason) = reason_of(&status) {
        tracing::warn!(lease_id = %link.id, module = %link.module, reason = %reason, "module refused a call; revoking the lease");
        link.revoke(
            reason,
            &format!("module refused a call: {:.200}", status.message()),
            crate::audit::Actor::Module,
        );
    }
}
