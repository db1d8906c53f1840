//! Sidecars' lives (PROTOCOL.md §11, P11): a module starts only once each of
//! its sidecars holds a lease, goes through its restarts with them, and is
//! stopped before them when the Core shuts down (`service.rs` stops the
//! modules that have sidecars first). What a proxy sidecar does to calls is
//! the gateway's (`gateway/sidecar.rs`).

use anima_protocol::Urn;
use anima_protocol::lease::LeaseId;
use tokio_util::sync::CancellationToken;

use crate::config::ModuleConfig;
use crate::events::EventKind;
use crate::registry::{ModuleCommand, ModuleState};
use crate::supervisor::CoreContext;

/// Waits, `blocked`, until each of `module`'s sidecars holds a lease other
/// than the `stale` ones (those it held before a restart); false on
/// shutdown. A sidecar that failed or was stopped keeps the module from
/// starting, saying so.
pub(crate) async fn wait_leased(
    ctx: &CoreContext,
    module: &ModuleConfig,
    stale: &[(Urn, Option<LeaseId>)],
    shutdown: &CancellationToken,
) -> bool {
    if module.sidecars.is_empty() {
        return true;
    }
    let mut changes = ctx.registry.changes();
    let mut told = String::new();
    loop {
        let waiting: Vec<String> = module
            .sidecars
            .iter()
            .filter_map(|s| not_ready(ctx, s, stale))
            .collect();
        if waiting.is_empty() {
            if !told.is_empty() {
                ctx.registry
                    .set_state(&module.urn, ModuleState::Starting, "");
            }
            return true;
        }
        let detail = format!("waiting for its sidecar {}", waiting.join(", "));
        if detail != told {
            ctx.registry
                .set_state(&module.urn, ModuleState::Blocked, detail.clone());
            tracing::info!(module = %module.urn, detail = %detail, "module blocked");
            ctx.events.emit(
                EventKind::ModuleBlocked,
                module.urn.as_str(),
                "",
                detail.clone(),
            );
            told = detail;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            changed = changes.changed() => if changed.is_err() {
                return false;
            },
        }
    }
}

/// `sidecar` and its state, unless it holds a lease that is not stale.
fn not_ready(ctx: &CoreContext, sidecar: &Urn, stale: &[(Urn, Option<LeaseId>)]) -> Option<String> {
    let Some(view) = ctx.registry.get(sidecar) else {
        return Some(format!("{sidecar} (not configured)"));
    };
    let old = stale
        .iter()
        .any(|(urn, lease)| urn == sidecar && *lease == view.lease_id);
    if view.state == ModuleState::Leased && !old {
        return None;
    }
    let state = if view.detail.is_empty() || view.state == ModuleState::Leased {
        view.state.as_str().to_owned()
    } else {
        format!("{}: {:.200}", view.state.as_str(), view.detail)
    };
    Some(format!("{sidecar} ({state})"))
}

/// Restarts `module`'s sidecars (it is being restarted); returns the leases
/// they held, which [`wait_leased`] then does not count.
pub(crate) fn restart(ctx: &CoreContext, module: &ModuleConfig) -> Vec<(Urn, Option<LeaseId>)> {
    module
        .sidecars
        .iter()
        .map(|sidecar| {
            let lease = ctx.registry.get(sidecar).and_then(|v| v.lease_id);
            tracing::info!(module = %module.urn, sidecar = %sidecar, "restarting a sidecar with its module");
            ctx.registry.command(sidecar, ModuleCommand::Restart);
            (sidecar.clone(), lease)
        })
        .collect()
}
