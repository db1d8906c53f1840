//! Proxy sidecars (PROTOCOL.md §11, P12): before a call is forwarded to a
//! module, each of its sidecars that provides `anima/sidecar` is asked
//! (`anima.v1.Sidecar/Inspect`, under the Core's lease with the sidecar), in
//! the configured order; the call goes on only if every one allows it. A
//! sidecar that cannot be asked refuses the call: a module is never reached
//! around its proxy.

use std::collections::HashMap;
use std::time::Duration;

use anima_protocol::Urn;
use anima_protocol::interface::sidecar::PROXY_INTERFACE;
use anima_protocol::interface::sidecar::{is_reason, refusal_code};
use anima_protocol::lease::{DOMAIN, Reason, status_for};
use anima_protocol::pb::InboundCall;
use anima_protocol::pb::sidecar_client::SidecarClient;
use tonic::Code;

use crate::config::ModuleConfig;
use crate::supervisor::CoreContext;

/// How long a sidecar may take to answer (the interface's timeout), unless
/// the caller's deadline is earlier.
pub(crate) const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest message of a sidecar's refusal that reaches the caller.
const MAX_MESSAGE_BYTES: usize = 512;

/// Each module's sidecars, in the configured order.
#[derive(Debug, Default)]
pub(crate) struct Sidecars(HashMap<Urn, Vec<Urn>>);

/// What a call is, as its sidecars are told.
pub(crate) struct Inbound<'a> {
    pub(crate) module: &'a Urn,
    pub(crate) caller: &'a Urn,
    pub(crate) method: &'a str,
    pub(crate) trace_id: &'a str,
    pub(crate) deadline: Option<Duration>,
}

impl Sidecars {
    /// The sidecars `modules` list.
    pub(crate) fn new(modules: &[ModuleConfig]) -> Self {
        Sidecars(
            modules
                .iter()
                .filter(|m| !m.sidecars.is_empty())
                .map(|m| (m.urn.clone(), m.sidecars.clone()))
                .collect(),
        )
    }

    /// Whether `module` has sidecars.
    pub(crate) fn has(&self, module: &Urn) -> bool {
        self.0.contains_key(module)
    }

    /// Asks each proxy sidecar of `call.module`, in order; the refusal the
    /// caller gets from the first that does not allow the call.
    pub(crate) async fn inspect(
        &self,
        ctx: &CoreContext,
        call: &Inbound<'_>,
    ) -> Result<(), tonic::Status> {
        let Some(sidecars) = self.0.get(call.module) else {
            return Ok(());
        };
        for sidecar in sidecars.iter().filter(|s| is_proxy(ctx, s)) {
            ask(ctx, sidecar, call).await?;
        }
        Ok(())
    }
}

/// Whether `sidecar` provides the proxy interface, as far as the Core knows
/// (its contract file, or what it reported at its lease).
fn is_proxy(ctx: &CoreContext, sidecar: &Urn) -> bool {
    ctx.registry.get(sidecar).is_some_and(|v| {
        v.provides
            .iter()
            .any(|p| p.interface.as_str() == PROXY_INTERFACE)
    })
}

/// Asks one sidecar about `call`.
async fn ask(ctx: &CoreContext, sidecar: &Urn, call: &Inbound<'_>) -> Result<(), tonic::Status> {
    let unavailable = |why: String| {
        tracing::warn!(target: "anima::gateway", module = %call.module, sidecar = %sidecar, method = %call.method, why = %why, outcome = "SIDECAR_UNAVAILABLE", "call refused");
        status_for(
            Reason::SidecarUnavailable,
            format!("{sidecar}, a sidecar of {}, {why}", call.module),
            [("sidecar", sidecar.to_string())],
        )
    };
    let Some((link, _call)) = ctx.active_link_for_call(sidecar) else {
        return Err(unavailable("holds no lease from this Core".into()));
    };
    let limit = call
        .deadline
        .map_or(INSPECT_TIMEOUT, |d| d.min(INSPECT_TIMEOUT));
    let mut request = tonic::Request::new(InboundCall {
        module: call.module.to_string(),
        caller: call.caller.to_string(),
        method: call.method.to_owned(),
        trace_id: call.trace_id.to_owned(),
        deadline_ms: call
            .deadline
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    });
    request.set_timeout(limit);
    let mut client = SidecarClient::new(link.channel());
    let asked = client.inspect(request);
    let verdict = match tokio::time::timeout(limit, asked).await {
        Err(_) => return Err(unavailable(format!("did not answer within {limit:?}"))),
        Ok(Err(status)) => {
            return Err(unavailable(format!(
                "answered {:?}: {:.200}",
                status.code(),
                status.message()
            )));
        }
        Ok(Ok(verdict)) => verdict.into_inner(),
    };
    if verdict.allow {
        return Ok(());
    }
    Err(refusal(sidecar, call, &verdict))
}

/// The caller's status for a sidecar's refusal: its code, reason and
/// message, within bounds.
fn refusal(
    sidecar: &Urn,
    call: &Inbound<'_>,
    verdict: &anima_protocol::pb::Verdict,
) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let code = refusal_code(verdict).unwrap_or(Code::PermissionDenied);
    let named = is_reason(&verdict.reason);
    let reason = if named {
        verdict.reason.as_str()
    } else {
        Reason::SidecarRefused.as_str()
    };
    let mut message = verdict.message.clone();
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    if message.is_empty() {
        message = format!("refused by {sidecar}, a sidecar of {}", call.module);
    }
    tracing::info!(target: "anima::gateway", module = %call.module, sidecar = %sidecar, caller = %call.caller, method = %call.method, outcome = %reason, "call refused by a sidecar");
    let metadata = HashMap::from([("sidecar".to_owned(), sidecar.to_string())]);
    tonic::Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}
