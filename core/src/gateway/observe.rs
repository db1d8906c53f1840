//! What the gateway sees of each call: its W3C trace context, its deadline
//! (`grpc-timeout`), and its end — logged and counted however it ends, from
//! the response's `grpc-status` or from the caller going away.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderValue;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Code;
use tonic::body::Body;

use super::in_flight::CallSlot;
use crate::metrics::Metrics;

/// A W3C trace context: the trace id to log and the header to send on.
pub(crate) fn trace_context(header: Option<&HeaderValue>) -> (String, HeaderValue) {
    if let Some(value) = header
        && let Ok(text) = value.to_str()
    {
        let parts: Vec<&str> = text.split('-').collect();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.len() == 4
            && hex(parts[0], 2)
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2)
            && parts[1] != "00000000000000000000000000000000"
        {
            return (parts[1].to_ascii_lowercase(), value.clone());
        }
    }
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let trace_id = hex[..32].to_owned();
    let header = format!("00-{trace_id}-{}-01", &hex[32..48]);
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

/// The response body, watched for its final `grpc-status`.
pub(crate) struct Observed {
    pub(crate) inner: Body,
    pub(crate) call: Option<CallLog>,
    pub(crate) header_code: Option<Code>,
}

impl HttpBody for Observed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or(Code::Unknown, |v| Code::from_bytes(v.as_bytes()));
                    if let Some(mut call) = self.call.take() {
                        call.finish(code);
                    }
                }
            }
            Poll::Ready(None) => {
                let code = self.header_code.unwrap_or(Code::Ok);
                if let Some(mut call) = self.call.take() {
                    call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut call) = self.call.take() {
                    call.finish(Code::Unavailable);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Parses a `grpc-timeout` header (`1..=8` digits and a unit: `H`, `M`, `S`,
/// `m`, `u`, `n`).
pub(crate) fn parse_grpc_timeout(text: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(
            parse_grpc_timeout("50m"),
            Some(std::time::Duration::from_millis(50))
        );
        assert_eq!(
            parse_grpc_timeout("2S"),
            Some(std::time::Duration::from_secs(2))
        );
        for bad in ["", "m", "50", "50x", "123456789m", "-5m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

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
