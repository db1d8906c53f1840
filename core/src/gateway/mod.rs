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
//!
//! - `route.rs`: which module declares each method;
//! - `mediate.rs`: module-to-module calls (the caller's lease, its
//!   permissions, the provider);
//! - `retry.rs`: the interface's retry policy for those calls;
//! - `sidecar.rs`: the module's proxy sidecars, asked before each call;
//! - `policy.rs`: who may call what (default deny);
//! - `in_flight.rs`: the per-user bound on calls in flight;
//! - `cap.rs`: the per-message size cap, read from the length prefixes;
//! - `observe.rs`: trace context, deadline, and the log and metrics of each
//!   call's end; the watched body that it and the cap wrap bodies in.

pub mod cap;
mod in_flight;
pub(crate) mod mediate;
mod observe;
mod policy;
mod retry;
pub(crate) mod route;
pub(crate) mod sidecar;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anima_protocol::lease::{Reason, status_for};
use anima_protocol::transport::{ChannelError, grpc_timeout};
use anima_protocol::{PeerInfo, Urn, UrnKind};
use http_body::Body as HttpBody;
use tonic::Code;
use tonic::body::Body;
use tower::ServiceExt;

use self::cap::{MAX_MESSAGE_BYTES, MessageCap, too_large};
use self::in_flight::{CallSlot, InFlight};
use self::observe::{CallEnd, CallLog, Watched, trace_context};
use self::policy::Policies;
use crate::audit::{Actor, AuditEvent, AuditRecord};
use crate::config::Policy;
use crate::lease::{CallGuard, LeaseLink};
use crate::metrics::Metrics;
use crate::registry::ModuleState;
use crate::supervisor::CoreContext;

/// How many calls one user may have in flight through the gateway at once.
pub const DEFAULT_MAX_CALLS_PER_USER: usize = 256;

/// The gateway's shared state.
#[derive(Clone)]
pub(crate) struct Gateway {
    ctx: Arc<CoreContext>,
    policies: Arc<Policies>,
    metrics: Arc<Metrics>,
    in_flight: Arc<InFlight>,
}

/// Why a call is refused before it reaches a module, and the message.
#[derive(Debug)]
pub(crate) struct Refused(Reason, String);

/// A call let through: where it goes, under which lease, in which slot.
struct Admitted {
    user: Urn,
    module: Urn,
    method: String,
    link: LeaseLink,
    lease_call: CallGuard,
    slot: CallSlot,
    /// For a module's call: the interface, its policy, the other providers.
    plan: Option<mediate::Plan>,
}

impl Gateway {
    /// A gateway over `ctx`'s modules under `policies`.
    ///
    /// # Default
    /// At most [`DEFAULT_MAX_CALLS_PER_USER`] calls in flight per user.
    pub(crate) fn new(ctx: Arc<CoreContext>, policies: Vec<Policy>, metrics: Arc<Metrics>) -> Self {
        Gateway {
            ctx,
            policies: Arc::new(Policies::new(policies)),
            metrics,
            in_flight: Arc::new(InFlight::new(DEFAULT_MAX_CALLS_PER_USER)),
        }
    }

    fn refuse(&self, reason: Reason, message: String) -> http::Response<Body> {
        self.metrics.refusal(reason.as_str());
        status_for(reason, message, []).into_http()
    }

    /// Handles one call.
    pub(crate) async fn call<B>(&self, mut request: http::Request<B>) -> http::Response<Body>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let admitted = match self.admit(&request) {
            Ok(admitted) => admitted,
            Err(Refused(reason, message)) => return self.refuse(reason, message),
        };
        if let Err(refused) = self.ask_sidecars(&mut request, &admitted).await {
            return sidecar_refusal(&self.metrics, refused);
        }
        self.forward(request, admitted, started).await
    }

    /// The module's proxy sidecars' verdict on the call (P12). The call's
    /// trace context is settled here, so that they and the module see the
    /// same trace id.
    async fn ask_sidecars<B>(
        &self,
        request: &mut http::Request<B>,
        admitted: &Admitted,
    ) -> Result<(), tonic::Status> {
        if !self.ctx.sidecars.has(&admitted.module) {
            return Ok(());
        }
        let (trace_id, traceparent) = trace_context(request.headers().get("traceparent"));
        request.headers_mut().insert("traceparent", traceparent);
        let deadline = grpc_timeout(request.headers());
        let inbound = sidecar::Inbound {
            module: &admitted.module,
            caller: &admitted.user,
            method: &admitted.method,
            trace_id: &trace_id,
            deadline,
        };
        self.ctx.sidecars.inspect(&self.ctx, &inbound).await
    }

    /// Who calls, where the call goes, whether the policy lets it, whether
    /// the module is leased, whether the user has a free slot: the first
    /// that fails refuses the call.
    fn admit<B>(&self, request: &http::Request<B>) -> Result<Admitted, Refused> {
        let method = request.uri().path().to_owned();
        let Some(user) = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.urn().clone())
        else {
            return Err(Refused(Reason::NoLease, "not an Anima connection".into()));
        };
        if user.kind() == UrnKind::Module {
            return self.admit_module(request, user, method);
        }
        // Only declared methods route; nothing else touches a module.
        let Some(module) = self.ctx.routes.route(&method) else {
            tracing::info!(target: "anima::gateway", user = %user, method = %method, outcome = "UNKNOWN_METHOD", "call refused");
            return Err(Refused(
                Reason::UnknownMethod,
                format!("no single module declares {method:.200} (none does, or several do)"),
            ));
        };
        if !self.policies.allows(&user, &module, &method) {
            return Err(self.policy_denied(&user, &module, &method));
        }
        let Some((link, lease_call)) = self.ctx.link_for_call(&module) else {
            return Err(self.not_leased(&user, &module, &method));
        };
        let slot = self.enter(&user, &method)?;
        Ok(Admitted {
            user,
            module,
            method,
            link,
            lease_call,
            slot,
            plan: None,
        })
    }

    /// A free slot for one more of `user`'s calls in flight.
    fn enter(&self, user: &Urn, method: &str) -> Result<CallSlot, Refused> {
        self.in_flight.enter(user).ok_or_else(|| {
            tracing::debug!(target: "anima::gateway", user = %user, method = %method, outcome = "TOO_MANY_CALLS", "call refused");
            Refused(
                Reason::TooManyCalls,
                format!(
                    "{user} already has {} calls in flight through this Core",
                    self.in_flight.max
                ),
            )
        })
    }

    /// A module's call of another module's interface (PROTOCOL.md §10):
    /// the caller holds a lease from this Core (P8), a permission grants it
    /// the interface (P7), and a permitted provider in range is leased.
    fn admit_module<B>(
        &self,
        request: &http::Request<B>,
        caller: Urn,
        method: String,
    ) -> Result<Admitted, Refused> {
        let view = self.ctx.registry.get(&caller);
        let leased = self.ctx.is_leased(&caller);
        let (Some(view), true) = (view, leased) else {
            tracing::info!(target: "anima::gateway", caller = %caller, method = %method, outcome = "NO_LEASE", "module call refused");
            return Err(Refused(
                Reason::NoLease,
                format!(
                    "{caller} holds no lease from this Core: a module calls others only while \
                     this Core leases it"
                ),
            ));
        };
        let pinned = match request.headers().get(mediate::PIN_HEADER) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<Urn>().ok())
                    .ok_or_else(|| {
                        Refused(
                            Reason::NotFound,
                            format!("{} is not a module URN", mediate::PIN_HEADER),
                        )
                    })?,
            ),
        };
        let plan = self
            .ctx
            .mediation
            .plan(
                &view,
                &method,
                pinned.as_ref(),
                &self.ctx.registry,
                &self.ctx.routes,
            )
            .map_err(|refused| self.module_refused(&caller, &method, refused))?;
        // The first in the plan whose lease is still open: one whose
        // connection has just gone is passed over before anything is sent.
        let Some((provider, link, lease_call)) = plan.providers.iter().find_map(|p| {
            let (link, call) = self.ctx.active_link_for_call(p)?;
            Some((p.clone(), link, call))
        }) else {
            let provider = plan
                .providers
                .first()
                .cloned()
                .unwrap_or_else(|| caller.clone());
            return Err(self.not_leased(&caller, &provider, &method));
        };
        let slot = self.enter(&caller, &method)?;
        Ok(Admitted {
            user: caller,
            module: provider,
            method,
            link,
            lease_call,
            slot,
            plan: Some(plan),
        })
    }

    /// Logs a module's refused call; a refusal by permission is audited.
    fn module_refused(&self, caller: &Urn, method: &str, refused: Refused) -> Refused {
        let Refused(reason, message) = &refused;
        tracing::warn!(target: "anima::gateway", caller = %caller, method = %method, outcome = %reason, detail = %message, "module call refused");
        if *reason == Reason::PolicyDenied {
            self.audit_denied(caller, Actor::Module, format!("{message} ({method:.200})"));
        }
        refused
    }

    /// Audits a call refused by policy or permission: `module` is the module
    /// called (a user's call) or the calling module.
    fn audit_denied(&self, module: &Urn, actor: Actor, detail: String) {
        let mut record = AuditRecord::now(
            AuditEvent::CallRefused,
            module.as_str(),
            self.ctx.urn.as_str(),
            actor,
        );
        record.reason = Some(Reason::PolicyDenied);
        record.detail = Some(detail);
        self.ctx.audit.record(record);
    }

    /// Refuses a call the policy does not allow, and audits it.
    fn policy_denied(&self, user: &Urn, module: &Urn, method: &str) -> Refused {
        tracing::warn!(target: "anima::gateway", user = %user, module = %module, method = %method, outcome = "POLICY_DENIED", "call refused");
        let message = format!("{user} may not call {method:.200}");
        self.audit_denied(module, Actor::User, message.clone());
        Refused(Reason::PolicyDenied, message)
    }

    /// Refuses a call to a module with no lease now, saying why.
    fn not_leased(&self, user: &Urn, module: &Urn, method: &str) -> Refused {
        let state = self.ctx.registry.get(module).map(|m| m.state);
        let reason = match state {
            Some(ModuleState::Failed) => Reason::ModuleFailed,
            Some(ModuleState::Standby) => Reason::ModuleStandby,
            _ => Reason::ModuleUnavailable,
        };
        tracing::info!(target: "anima::gateway", user = %user, module = %module, method = %method, outcome = %reason, "call refused");
        Refused(
            reason,
            format!(
                "{module} is not leased now ({})",
                state.map_or("unknown", ModuleState::as_str)
            ),
        )
    }

    /// Forwards an admitted call under its module's lease: the caller's
    /// messages capped as they pass, its trace context and deadline kept
    /// (for a module's call, the earlier of its own and the interface's),
    /// its end logged and counted however it comes.
    async fn forward<B>(
        &self,
        request: http::Request<B>,
        admitted: Admitted,
        started: Instant,
    ) -> http::Response<Body>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (trace_id, traceparent) = trace_context(request.headers().get("traceparent"));
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
        request.headers_mut().remove(mediate::PIN_HEADER);
        let deadline = deadline_in_force(&mut request, admitted.plan.as_ref());
        // Logged however the call ends, even if the caller goes away first.
        let mut call = CallLog {
            metrics: self.metrics.clone(),
            trace_id,
            lease_id: admitted.link.id().to_string(),
            user: admitted.user.to_string(),
            module: admitted.module.to_string(),
            method: admitted.method,
            started,
            deadline: deadline.map(|d| started + d),
            done: false,
            _slot: admitted.slot,
            _lease_call: admitted.lease_call,
        };
        if let Some(plan) = admitted.plan.filter(retry::applies) {
            let retried = retry::Attempts {
                ctx: &self.ctx,
                plan: &plan,
                caller: &admitted.user,
                tripped: &tripped,
            };
            return match retried.run(request, admitted.link, &mut call).await {
                Ok((outcome, module)) => {
                    self.answer(outcome, tripped.load(Ordering::SeqCst), &module, call, true)
                }
                Err(response) => response,
            };
        }
        let forward = admitted.link.channel().oneshot(request);
        let outcome = match deadline {
            None => forward.await,
            Some(limit) => match tokio::time::timeout(limit, forward).await {
                Ok(outcome) => outcome,
                // Dropping the forwarded call resets its stream: the
                // module's handler is cancelled.
                Err(_) => {
                    return deadline_exceeded(&mut call, format!("deadline of {limit:?} exceeded"));
                }
            },
        };
        let mediated = admitted.user.kind() == UrnKind::Module;
        self.answer(
            outcome,
            tripped.load(Ordering::SeqCst),
            &admitted.module,
            call,
            mediated,
        )
    }

    /// What the caller gets once the forwarded call has answered (or
    /// failed): a refusal if one of its messages was over the cap, the
    /// deadline's error once its deadline has passed, or else the module's
    /// response, observed to its end.
    fn answer(
        &self,
        outcome: Result<http::Response<Body>, ChannelError>,
        oversized: u64,
        module: &Urn,
        mut call: CallLog,
        mediated: bool,
    ) -> http::Response<Body> {
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
                if call.past_deadline() {
                    return deadline_exceeded(&mut call, "deadline exceeded".to_owned());
                }
                call.finish(Code::Unavailable);
                // A module's call: the provider went away mid-call (P9).
                return if mediated {
                    self.provider_lost(module, &e.to_string())
                } else {
                    self.refuse(Reason::ModuleUnavailable, format!("{module}: {e}"))
                };
            }
        };
        // The provider's lease ended under a module's call (its connection
        // lost, revoked, expired): to the caller, the provider is lost.
        if mediated && let Some(why) = retry::lease_ended(&response) {
            call.finish(Code::Unavailable);
            return self.provider_lost(module, &why);
        }
        // The module's own timer for the forwarded `grpc-timeout` can answer
        // first (tonic ends such a call CANCELLED); once the caller's deadline
        // has passed, an error there is the deadline's.
        let failed = response
            .headers()
            .get("grpc-status")
            .is_some_and(|v| Code::from_bytes(v.as_bytes()) != Code::Ok);
        if failed && call.past_deadline() {
            return deadline_exceeded(&mut call, "deadline exceeded".to_owned());
        }
        observed(response, call)
    }
}

impl Gateway {
    /// A module's call whose provider went away during it (P9).
    fn provider_lost(&self, module: &Urn, why: &str) -> http::Response<Body> {
        self.refuse(
            Reason::ProviderLost,
            format!(
                "the provider {module} went away during the call, which may or may not have \
                 run: {why:.300}"
            ),
        )
    }
}

/// The module's response, its end logged and counted when its body ends.
fn observed(response: http::Response<Body>, call: CallLog) -> http::Response<Body> {
    // Trailers-only responses (errors) carry the status in the headers.
    let header_code = response
        .headers()
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()));
    let (parts, body) = response.into_parts();
    let end = CallEnd {
        call: Some(call),
        header_code,
    };
    http::Response::from_parts(parts, Body::new(Watched::wrap(body, end)))
}

/// The call's deadline: the caller's `grpc-timeout`, or the interface's
/// timeout for a module's call when that is earlier (the module is then
/// told that one).
fn deadline_in_force<B>(
    request: &mut http::Request<B>,
    plan: Option<&mediate::Plan>,
) -> Option<std::time::Duration> {
    let asked = grpc_timeout(request.headers());
    match (asked, plan.and_then(mediate::Plan::timeout)) {
        (Some(asked), Some(limit)) if limit >= asked => Some(asked),
        (_, Some(limit)) => {
            set_grpc_timeout(request, limit);
            Some(limit)
        }
        (asked, None) => asked,
    }
}

/// Tells the module the deadline in force (the interface's, when earlier
/// than the caller's).
fn set_grpc_timeout<B>(request: &mut http::Request<B>, limit: std::time::Duration) {
    let millis = limit.as_millis().clamp(1, 99_999_999);
    if let Ok(value) = http::HeaderValue::from_str(&format!("{millis}m")) {
        request.headers_mut().insert("grpc-timeout", value);
    }
}

/// A proxy sidecar refused the call (or could not be asked): counted by its
/// reason, answered as the sidecar's verdict says.
fn sidecar_refusal(metrics: &Metrics, refused: tonic::Status) -> http::Response<Body> {
    let reason = anima_protocol::lease::reason_of(&refused).unwrap_or(Reason::SidecarRefused);
    metrics.refusal(reason.as_str());
    refused.into_http()
}

/// The caller's deadline has passed: the call ends `DEADLINE_EXCEEDED`.
fn deadline_exceeded(call: &mut CallLog, message: String) -> http::Response<Body> {
    call.finish(Code::DeadlineExceeded);
    tonic::Status::deadline_exceeded(message).into_http()
}
