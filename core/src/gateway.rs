//! The user gateway: applications call a module's methods through the Core.
//!
//! An application connects to the Core's endpoint with its own certificate
//! and calls the module's method path unchanged (`/pkg.v1.Service/Method`).
//! The gateway routes the call to the module whose contract declares that
//! method, under that module's lease (the lease proof is added), after the
//! policy allows it (default deny). Bodies stream through untouched, so
//! unary and streaming methods both pass; deadlines (`grpc-timeout`) and
//! cancellation pass both ways (a cancelled call drops the module call).
//!
//! Every call gets a W3C `traceparent` (the caller's, or a new one), passed to
//! the module and logged with lease id, user, module, method, latency and
//! outcome.
//!
//! One user has at most [`DEFAULT_MAX_CALLS_PER_USER`] calls in flight
//! through the gateway, all its connections together (a call is in flight
//! until its response ends); past it, calls are refused `TOO_MANY_CALLS` at
//! once, so a caller that opens streams and never finishes them holds a
//! bounded share of the Core and of the module.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use anima_protocol::lease::{Reason, status_for};
use anima_protocol::{PeerInfo, Urn};
use http::HeaderValue;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Code;
use tonic::body::Body;
use tower::ServiceExt;

use crate::audit::{Actor, AuditEvent, AuditRecord};
use crate::config::Policy;
use crate::message_cap::{MAX_MESSAGE_BYTES, MessageCap, too_large};
use crate::metrics::Metrics;
use crate::registry::ModuleState;
use crate::supervisor::CoreContext;

/// How many calls one user may have in flight through the gateway at once.
pub const DEFAULT_MAX_CALLS_PER_USER: usize = 256;

/// The gateway's shared state.
#[derive(Clone)]
pub struct Gateway {
    ctx: Arc<CoreContext>,
    policies: Arc<Vec<Policy>>,
    metrics: Arc<Metrics>,
    in_flight: Arc<InFlight>,
}

/// Calls in flight per user.
struct InFlight {
    max: usize,
    calls: Mutex<HashMap<Urn, usize>>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Urn, usize>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more call for `user`, or `None` when it has the maximum.
    fn enter(self: &Arc<Self>, user: &Urn) -> Option<CallSlot> {
        let mut calls = self.lock();
        let n = calls.entry(user.clone()).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(CallSlot {
            owner: self.clone(),
            user: user.clone(),
        })
    }
}

/// One call in flight; dropping it (when the call ends) frees its place.
struct CallSlot {
    owner: Arc<InFlight>,
    user: Urn,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut calls = self.owner.lock();
        if let Some(n) = calls.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                calls.remove(&self.user);
            }
        }
    }
}

/// A W3C trace context: the trace id to log and the header to send on.
fn trace_context(header: Option<&HeaderValue>) -> (String, HeaderValue) {
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

impl Gateway {
    /// A gateway over `ctx`'s modules under `policies`.
    ///
    /// # Default
    /// At most [`DEFAULT_MAX_CALLS_PER_USER`] calls in flight per user.
    pub fn new(ctx: Arc<CoreContext>, policies: Vec<Policy>, metrics: Arc<Metrics>) -> Self {
        Gateway {
            ctx,
            policies: Arc::new(policies),
            metrics,
            in_flight: Arc::new(InFlight {
                max: DEFAULT_MAX_CALLS_PER_USER,
                calls: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sets how many calls one user may have in flight at once (at least
    /// 1); past it, calls are refused `TOO_MANY_CALLS`.
    ///
    /// # Default
    /// [`DEFAULT_MAX_CALLS_PER_USER`].
    pub fn max_calls_per_user(mut self, n: usize) -> Self {
        self.in_flight = Arc::new(InFlight {
            max: n.max(1),
            calls: Mutex::new(HashMap::new()),
        });
        self
    }

    fn refuse(&self, reason: Reason, message: String) -> http::Response<Body> {
        self.metrics.refusal(reason.as_str());
        status_for(reason, message, []).into_http()
    }

    /// Handles one call.
    pub async fn call<B>(&self, request: http::Request<B>) -> http::Response<Body>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let method = request.uri().path().to_owned();
        let Some(user) = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.urn().clone())
        else {
            return self.refuse(Reason::NoLease, "not an Anima connection".into());
        };
        // Only declared methods route; nothing else touches a module.
        let Some(module) = self.ctx.route(&method) else {
            tracing::info!(target: "anima::gateway", user = %user, method = %method, outcome = "UNKNOWN_METHOD", "call refused");
            return self.refuse(
                Reason::UnknownMethod,
                format!("no single module declares {method:.200} (none does, or several do)"),
            );
        };
        if !Policy::allows(&self.policies, &user, &module, &method) {
            tracing::warn!(target: "anima::gateway", user = %user, module = %module, method = %method, outcome = "POLICY_DENIED", "call refused");
            let mut record = AuditRecord::now(
                AuditEvent::CallRefused,
                module.as_str(),
                self.ctx.urn.as_str(),
                Actor::User,
            );
            record.reason = Some(Reason::PolicyDenied);
            record.detail = Some(format!("{user} may not call {method:.200}"));
            self.ctx.audit.record(record);
            return self.refuse(
                Reason::PolicyDenied,
                format!("{user} may not call {method:.200}"),
            );
        }
        let Some(link) = self.ctx.link(&module) else {
            let state = self.ctx.registry.get(&module).map(|m| m.state);
            let reason = match state {
                Some(ModuleState::Failed) => Reason::ModuleFailed,
                Some(ModuleState::Standby) => Reason::ModuleStandby,
                _ => Reason::ModuleUnavailable,
            };
            tracing::info!(target: "anima::gateway", user = %user, module = %module, method = %method, outcome = %reason, "call refused");
            return self.refuse(
                reason,
                format!(
                    "{module} is not leased now ({})",
                    state.map_or("unknown", ModuleState::as_str)
                ),
            );
        };
        let Some(slot) = self.in_flight.enter(&user) else {
            tracing::debug!(target: "anima::gateway", user = %user, method = %method, outcome = "TOO_MANY_CALLS", "call refused");
            return self.refuse(
                Reason::TooManyCalls,
                format!(
                    "{user} already has {} calls in flight through this Core",
                    self.in_flight.max
                ),
            );
        };
        let (trace_id, traceparent) = trace_context(request.headers().get("traceparent"));
        let lease_id = link.id().to_string();
        // Each message the caller streams is capped as it passes.
        let tripped = Arc::new(AtomicU64::new(0));
        let mut request = request.map(|b| {
            Body::new(MessageCap::new(
                Body::new(b),
                MAX_MESSAGE_BYTES,
                tripped.clone(),
            ))
        });
        request.headers_mut().insert("traceparent", traceparent);
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        // Logged however the call ends, even if the caller goes away first.
        let mut call = CallLog {
            metrics: self.metrics.clone(),
            trace_id,
            lease_id,
            user: user.to_string(),
            module: module.to_string(),
            method,
            started,
            deadline: deadline.map(|d| started + d),
            done: false,
            _slot: slot,
        };
        let forward = link.channel().oneshot(request);
        let outcome = match deadline {
            None => forward.await,
            Some(limit) => match tokio::time::timeout(limit, forward).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // Dropping the forwarded call resets its stream: the
                    // module's handler is cancelled.
                    call.finish(Code::DeadlineExceeded);
                    return tonic::Status::deadline_exceeded(format!(
                        "deadline of {limit:?} exceeded"
                    ))
                    .into_http();
                }
            },
        };
        let oversized = tripped.load(Ordering::SeqCst);
        if oversized > 0 {
            // The forwarded call was reset before the message's body left.
            tracing::warn!(target: "anima::gateway", user = %call.user, method = %call.method, bytes = oversized, outcome = "RESOURCE_EXHAUSTED", "call refused: message too large");
            call.finish(Code::ResourceExhausted);
            return too_large(oversized, MAX_MESSAGE_BYTES).into_http();
        }
        let response = match outcome {
            Ok(r) => r,
            Err(e) => {
                // The caller reset the call at its deadline (its request
                // body ended abruptly), or the module is unreachable.
                if call.deadline.is_some_and(|d| Instant::now() >= d) {
                    call.finish(Code::DeadlineExceeded);
                    return tonic::Status::deadline_exceeded("deadline exceeded").into_http();
                }
                call.finish(Code::Unavailable);
                return self.refuse(Reason::ModuleUnavailable, format!("{module}: {e}"));
            }
        };
        // Trailers-only responses (errors) carry the status in the headers.
        let header_code = response
            .headers()
            .get("grpc-status")
            .map(|v| Code::from_bytes(v.as_bytes()));
        let (parts, body) = response.into_parts();
        let body = Observed {
            inner: body,
            call: Some(call),
            header_code,
        };
        http::Response::from_parts(parts, Body::new(body))
    }
}

/// What is logged when a call ends.
struct CallLog {
    metrics: Arc<Metrics>,
    trace_id: String,
    lease_id: String,
    user: String,
    module: String,
    method: String,
    started: Instant,
    deadline: Option<Instant>,
    done: bool,
    /// The user's place among its calls in flight, freed with the log.
    _slot: CallSlot,
}

impl CallLog {
    fn finish(&mut self, code: Code) {
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
        let code = match self.deadline {
            Some(d) if Instant::now() >= d => Code::DeadlineExceeded,
            _ => Code::Cancelled,
        };
        self.finish(code);
    }
}

/// The response body, watched for its final `grpc-status`.
struct Observed {
    inner: Body,
    call: Option<CallLog>,
    header_code: Option<Code>,
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
fn parse_grpc_timeout(text: &str) -> Option<std::time::Duration> {
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
