//! The interface's retry policy for module-to-module calls (P9, P10).
//!
//! Only a method the interface declares idempotent, with a retry policy, is
//! tried again, and only when the attempt did not produce the provider's
//! answer: its connection failed (the provider went away), it answered
//! `UNAVAILABLE`, or its lease with the Core ended under the call
//! (`LEASE_EXPIRED`, `LEASE_REVOKED`). Each attempt after the first waits the
//! policy's backoff (doubled before each next) and goes to the next leased
//! provider in the plan (the same one when it is the only one); all attempts
//! together stay within the call's deadline. Such a method is unary: the Core holds its one request
//! message (at most [`MAX_MESSAGE_BYTES`](super::cap::MAX_MESSAGE_BYTES)) to
//! send it again. An attempt that moves to another provider first asks that
//! provider's proxy sidecars, as the first attempt asked the first's (P12):
//! a module is never reached around its proxy, not even by a retry.

use std::sync::atomic::{AtomicU64, Ordering};

use anima_protocol::Urn;
use anima_protocol::lease::{Reason, reason_of};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tonic::Code;
use tonic::body::Body;
use tower::ServiceExt;

use super::cap::{MAX_MESSAGE_BYTES, too_large};
use super::mediate::Plan;
use super::observe::CallLog;
use super::sidecar::Inbound;
use super::{deadline_exceeded, set_grpc_timeout, sidecar_refusal};
use crate::lease::LeaseLink;
use crate::supervisor::CoreContext;

/// What one attempt gave: the provider's response, or the transport's error.
pub(super) type Outcome = Result<http::Response<Body>, anima_protocol::transport::ChannelError>;

/// Whether the plan's method is tried again on failure.
pub(super) fn applies(plan: &Plan) -> bool {
    plan.policy
        .as_ref()
        .is_some_and(|p| p.idempotent && p.retry.is_some())
}

/// Whether an attempt failed without the provider's answer.
pub(super) fn retriable(outcome: &Outcome) -> bool {
    let response = match outcome {
        Err(_) => return true,
        Ok(response) => response,
    };
    let unavailable = response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| Code::from_bytes(v.as_bytes()) == Code::Unavailable);
    unavailable || lease_ended(response).is_some()
}

/// Why the Core's lease with the provider ended under the call, when the
/// response says it did (`LEASE_EXPIRED`, `LEASE_REVOKED`,
/// `CONNECTION_LOST`, from the provider or from the Core's side of the
/// lease): the call's message, else `None`.
pub(super) fn lease_ended(response: &http::Response<Body>) -> Option<String> {
    let status = tonic::Status::from_header_map(response.headers())?;
    let ended = matches!(
        reason_of(&status),
        Some(Reason::LeaseExpired | Reason::LeaseRevoked | Reason::ConnectionLost)
    );
    ended.then(|| status.message().to_owned())
}

/// One call's attempts.
pub(super) struct Attempts<'a> {
    pub(super) ctx: &'a CoreContext,
    pub(super) plan: &'a Plan,
    /// The calling module, as the providers' proxy sidecars are told.
    pub(super) caller: &'a Urn,
    /// Set by the message cap when the caller's message is over it.
    pub(super) tripped: &'a AtomicU64,
}

impl Attempts<'_> {
    /// Runs the call on `first` (the plan's first provider) and, as the
    /// policy allows, on the next: the last attempt's outcome and its
    /// provider, or the response that ended the call early (deadline,
    /// oversized or unreadable request).
    pub(super) async fn run(
        &self,
        request: http::Request<Body>,
        first: LeaseLink,
        call: &mut CallLog,
    ) -> Result<(Outcome, Urn), http::Response<Body>> {
        let (parts, body) = request.into_parts();
        let message = self.read_request(body, call).await?;
        let (attempts, mut backoff) = self
            .plan
            .policy
            .as_ref()
            .and_then(|p| p.retry.as_ref())
            .map_or((1, std::time::Duration::ZERO), |r| {
                (r.attempts.max(1), r.backoff)
            });
        let mut link = first;
        let mut index = 0;
        let mut attempt = 1;
        loop {
            let request = again(&parts, message.clone(), call);
            let sent = link.channel().oneshot(request);
            let outcome = match call.deadline {
                None => sent.await,
                Some(at) => match tokio::time::timeout_at(at.into(), sent).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(deadline_exceeded(call, "deadline exceeded".into())),
                },
            };
            let provider = link.module().clone();
            if attempt >= attempts || !retriable(&outcome) {
                return Ok((outcome, provider));
            }
            tracing::info!(target: "anima::gateway", caller = %call.user, provider = %provider, method = %call.method, attempt, "retrying on the interface's policy");
            let wait = tokio::time::sleep(backoff);
            backoff = backoff.saturating_mul(2);
            match call.deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at.into(), wait).await.is_err() {
                        return Err(deadline_exceeded(call, "deadline exceeded".into()));
                    }
                }
                None => wait.await,
            }
            // The next leased provider in the plan, else this one again.
            let Some((next, guard, at)) = self.next_link(index) else {
                return Ok((outcome, provider));
            };
            call.lease_id = next.id().to_string();
            call.module = next.module().to_string();
            call._lease_call = guard;
            if next.module() != &provider
                && let Err(refused) = self.ask_sidecars(next.module(), call).await
            {
                call.finish(refused.code());
                return Err(sidecar_refusal(&call.metrics, refused));
            }
            link = next;
            index = at;
            attempt += 1;
        }
    }

    /// The verdict of `module`'s proxy sidecars on the call, before an
    /// attempt moves to it: told the time the caller has left.
    async fn ask_sidecars(&self, module: &Urn, call: &CallLog) -> Result<(), tonic::Status> {
        let inbound = Inbound {
            module,
            caller: self.caller,
            method: &call.method,
            trace_id: &call.trace_id,
            deadline: call
                .deadline
                .map(|at| at.saturating_duration_since(std::time::Instant::now())),
        };
        self.ctx.sidecars.inspect(self.ctx, &inbound).await
    }

    /// The caller's one message, whole, within the call's deadline.
    async fn read_request(
        &self,
        body: Body,
        call: &mut CallLog,
    ) -> Result<Bytes, http::Response<Body>> {
        // One message: its 5-byte prefix and at most the cap.
        let limit = usize::try_from(MAX_MESSAGE_BYTES)
            .unwrap_or(usize::MAX)
            .saturating_add(5);
        let read = Limited::new(body, limit).collect();
        let collected = match call.deadline {
            None => read.await,
            Some(at) => match tokio::time::timeout_at(at.into(), read).await {
                Ok(collected) => collected,
                Err(_) => return Err(deadline_exceeded(call, "deadline exceeded".into())),
            },
        };
        match collected {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) => {
                let oversized = self.tripped.load(Ordering::SeqCst);
                if oversized > 0 || e.is::<http_body_util::LengthLimitError>() {
                    call.finish(Code::ResourceExhausted);
                    return Err(
                        too_large(oversized.max(limit as u64), MAX_MESSAGE_BYTES).into_http()
                    );
                }
                call.finish(Code::Cancelled);
                Err(
                    tonic::Status::cancelled(format!("the request did not arrive whole: {e}"))
                        .into_http(),
                )
            }
        }
    }

    /// The first provider after position `index` of the plan (wrapping
    /// round, ending with the one at `index`) whose lease takes a call now.
    fn next_link(&self, index: usize) -> Option<(LeaseLink, crate::lease::CallGuard, usize)> {
        let providers = &self.plan.providers;
        let n = providers.len();
        (1..=n).map(|step| (index + step) % n).find_map(|at| {
            let (link, guard) = self.ctx.active_link_for_call(&providers[at])?;
            Some((link, guard, at))
        })
    }
}

/// The request again, from its parts and its one message; the deadline
/// left is told to the provider.
fn again(parts: &http::request::Parts, message: Bytes, call: &CallLog) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(Full::new(message)));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    if let Some(at) = call.deadline {
        let left = at.saturating_duration_since(std::time::Instant::now());
        set_grpc_timeout(&mut request, left);
    }
    request
}
