//! What the gateway sees of each call: its W3C trace context, its deadline
//! (`grpc-timeout`), and its end — logged and counted however it ends, from
//! the response's `grpc-status` or from the caller going away.
//!
//! [`Watched`] passes a body on as it comes, showing each frame to a
//! [`Watch`] on the way: [`CallEnd`] here, the message cap in `cap.rs`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::{Code, Status};

use super::in_flight::CallSlot;
use crate::lease::CallGuard;
use crate::metrics::Metrics;

/// A W3C trace context: the trace id to log and the header to send on (the
/// caller's when it is valid, else a new trace's).
pub(crate) fn trace_context(header: Option<&HeaderValue>) -> (String, HeaderValue) {
    if let Some(value) = header
        && let Some(parent) = value.to_str().ok().and_then(anima_protocol::trace::parse)
    {
        return (parent.trace_id, value.clone());
    }
    let trace_id = anima_protocol::trace::new_trace_id();
    let header = format!("00-{trace_id}-{}-01", anima_protocol::trace::new_span_id());
    let value = HeaderValue::from_str(&header).unwrap_or_else(|_| HeaderValue::from_static(""));
    (trace_id, value)
}

/// What is logged when a call ends.
pub(crate) struct CallLog {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) trace_id: String,
    pub(crate) lease_id: String,
    pub(crate) user: String,
    pub(crate) module: String,
    pub(crate) method: String,
    pub(crate) started: Instant,
    pub(crate) deadline: Option<Instant>,
    pub(crate) done: bool,
    /// The user's place among its calls in flight, freed with the log.
    pub(crate) _slot: CallSlot,
    /// The call's place among its lease's calls in flight: a lease being
    /// replaced is revoked only once these have ended.
    pub(crate) _lease_call: CallGuard,
}

impl CallLog {
    /// Whether the caller's deadline, if it set one, has passed.
    pub(crate) fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    pub(crate) fn finish(&mut self, code: Code) {
        if self.done {
            return;
        }
        self.done = true;
        let latency = self.started.elapsed();
        self.metrics.call(&self.method, code, latency);
        tracing::info!(
            target: "anima::gateway",
            trace_id = %self.trace_id,
            lease_id = %self.lease_id,
            user = %self.user,
            module = %self.module,
            method = %self.method,
            latency_us = latency.as_micros() as u64,
            outcome = code as i32,
            "call"
        );
    }
}

impl Drop for CallLog {
    fn drop(&mut self) {
        // Dropped before its end: the caller went away — at its deadline
        // (DEADLINE_EXCEEDED) or before (CANCELLED).
        let code = if self.past_deadline() {
            Code::DeadlineExceeded
        } else {
            Code::Cancelled
        };
        self.finish(code);
    }
}

/// What a body yields at one poll.
pub type Polled = Poll<Option<Result<Frame<Bytes>, Status>>>;

/// What a [`Watched`] body shows each poll of the body it wraps to.
pub trait Watch {
    /// Sees what the wrapped body yielded; an error is yielded instead.
    fn see(&mut self, polled: &Polled) -> Result<(), Status>;
}

/// A body passed on as it comes, each poll shown to a [`Watch`] on the way.
pub struct Watched<W> {
    inner: Body,
    watch: W,
}

impl<W> Watched<W> {
    /// `inner`, shown to `watch` as it is polled.
    pub(crate) fn wrap(inner: Body, watch: W) -> Self {
        Watched { inner, watch }
    }
}

impl<W: Watch + Unpin> HttpBody for Watched<W> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match this.watch.see(&polled) {
            Ok(()) => polled,
            Err(status) => Poll::Ready(Some(Err(status))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Watches the response body for the call's end: its final `grpc-status`.
pub(crate) struct CallEnd {
    pub(crate) call: Option<CallLog>,
    pub(crate) header_code: Option<Code>,
}

impl Watch for CallEnd {
    fn see(&mut self, polled: &Polled) -> Result<(), Status> {
        let code = match polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(|trailers| {
                trailers
                    .get("grpc-status")
                    .map_or(Code::Unknown, |v| Code::from_bytes(v.as_bytes()))
            }),
            Poll::Ready(None) => Some(self.header_code.unwrap_or(Code::Ok)),
            Poll::Ready(Some(Err(_))) => Some(Code::Unavailable),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(mut call) = self.call.take()
        {
            call.finish(code);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_keeps_a_valid_header_and_makes_one_otherwise() {
        let given =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let (id, header) = trace_context(Some(&given));
        assert_eq!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(header, given);
        let (id, header) = trace_context(Some(&HeaderValue::from_static("garbage")));
        assert_eq!(id.len(), 32);
        assert!(header.to_str().unwrap().starts_with(&format!("00-{id}-")));
    }
}
