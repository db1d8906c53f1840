//! Re-establishing a lease under renewed certificates, make before break.
//!
//! A lease is bound to the two certificates of its connection and is never
//! renewed past the earlier one's expiry (PROTOCOL.md §3.1). So the Core
//! dials the module again, while its lease goes on, when
//!
//! - its own certificate was renewed (reloaded: `reload.rs`),
//! - the certificate file of a module it starts (the one it hands the
//!   module as `ANIMA_CERT`) now holds another certificate than the lease's,
//! - either certificate of the lease expires within [`BEFORE_EXPIRY`], or
//! - every [`PROBE_EVERY`], for a module it dials (its certificate file is
//!   on another host), to see whether it presents a renewed certificate.
//!
//! If the new connection shows another certificate than the lease's on
//! either side, the Core opens a new lease on it and routes new calls to
//! it, then revokes the old lease once the calls it carries have ended (at
//! most [`DRAIN`] later). Otherwise the connection is closed and the lease
//! goes on. No call is refused on the way.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anima_protocol::transport::{Address, CERT_POLL, leaf_fingerprint};
use anima_protocol::{Connection, PeerPolicy};
use tokio_util::sync::CancellationToken;

use crate::audit::Actor;
use crate::config::{ModuleConfig, StartMode};
use crate::events::EventKind;
use crate::lease::{CoreLeaseError, LeaseLink};
use crate::supervisor::CoreContext;

/// How often a lease's certificates are compared with the current ones.
pub(crate) const CHECK_EVERY: Duration = CERT_POLL;
/// How long before the earlier of its certificates expires a lease is
/// re-established (as soon as a renewed certificate is presented).
pub(crate) const BEFORE_EXPIRY: Duration = Duration::from_secs(600);
/// How often a module the Core dials is dialled to see whether it presents
/// a renewed certificate.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(30);
/// How long a replaced lease may carry its calls in flight before it is
/// revoked all the same.
pub(crate) const DRAIN: Duration = Duration::from_secs(30);

/// Why a lease is looked at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The Core's certificate was renewed.
    CoreRenewed,
    /// The module's certificate file holds another certificate.
    ModuleRenewed,
    /// One of the lease's certificates expires soon.
    Expiring,
    /// A module the Core dials: time to see what it presents.
    Probe,
}

impl Due {
    fn as_str(self) -> &'static str {
        match self {
            Due::CoreRenewed => "the Core's certificate was renewed",
            Due::ModuleRenewed => "the module's certificate was renewed",
            Due::Expiring => "a certificate of the lease expires soon",
            Due::Probe => "the module presents a renewed certificate",
        }
    }
}

/// A lease on the module under other certificates than `link`'s, and why:
/// waits (checking every [`CHECK_EVERY`]) until one is open; never
/// completes if the certificates stay the same. Dropping it mid-way drops
/// (revokes) a lease it had begun to open.
pub(crate) async fn renewed_lease(
    ctx: &Arc<CoreContext>,
    module: &ModuleConfig,
    addr: &Address,
    link: &LeaseLink,
) -> (LeaseLink, &'static str) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + CHECK_EVERY, CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probed = Instant::now();
    let mut told = None;
    loop {
        tick.tick().await;
        let Some(due) = due(ctx, module, link, &mut probed) else {
            continue;
        };
        match try_renewed(ctx, module, addr, link).await {
            Ok(Some(new)) => return (new, due.as_str()),
            Ok(None) if due == Due::Expiring && told != Some(due) => {
                let expires = link.certificates_expire().map(|t| {
                    t.duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .as_secs()
                });
                tracing::warn!(module = %module.urn, lease_id = %link.id(), expires_in_s = ?expires, "a certificate of the lease expires soon and no renewed one is presented yet; the lease ends when it expires");
                told = Some(due);
            }
            Ok(None) => {}
            Err(e) => {
                if told.is_none() {
                    tracing::warn!(module = %module.urn, lease_id = %link.id(), why = due.as_str(), error = %e, "cannot re-establish the lease under renewed certificates yet; the current lease goes on");
                }
                told = Some(due);
            }
        }
    }
}

/// Whether `link` should be looked at again now, and why.
fn due(
    ctx: &CoreContext,
    module: &ModuleConfig,
    link: &LeaseLink,
    probed: &mut Instant,
) -> Option<Due> {
    if ctx.dialer(module).1.fingerprint() != link.core_fingerprint() {
        return Some(Due::CoreRenewed);
    }
    if let StartMode::Command { cert, .. } = &module.start
        && leaf_fingerprint(cert).is_ok_and(|f| f != link.module_fingerprint())
    {
        return Some(Due::ModuleRenewed);
    }
    if link
        .certificates_expire()
        .is_some_and(|t| t.duration_since(SystemTime::now()).unwrap_or_default() < BEFORE_EXPIRY)
    {
        return Some(Due::Expiring);
    }
    if matches!(module.start, StartMode::Endpoint(_)) && probed.elapsed() >= PROBE_EVERY {
        *probed = Instant::now();
        return Some(Due::Probe);
    }
    None
}

/// Dials the module with the Core's current certificate; a lease on the
/// new connection when either side presents another certificate than
/// `link`'s, else `None` (the connection is closed).
async fn try_renewed(
    ctx: &Arc<CoreContext>,
    module: &ModuleConfig,
    addr: &Address,
    link: &LeaseLink,
) -> Result<Option<LeaseLink>, CoreLeaseError> {
    let (client, signer) = ctx.dialer(module);
    let conn: Connection = client
        .dial_addr(addr.clone(), PeerPolicy::exactly(module.urn.clone()))
        .await?;
    if signer.fingerprint() == link.core_fingerprint()
        && conn.peer().fingerprint() == link.module_fingerprint()
    {
        return Ok(None);
    }
    crate::supervisor::lease_on(ctx, module, conn, signer)
        .await
        .map(Some)
}

/// Revokes `old`, replaced by `new` (already routed to), once the calls it
/// carries have ended, or after [`DRAIN`], or at once when the Core shuts
/// down.
pub(crate) fn retire(
    ctx: Arc<CoreContext>,
    old: LeaseLink,
    new: &LeaseLink,
    shutdown: CancellationToken,
) {
    let detail = format!(
        "re-established as lease {} under renewed certificates",
        new.id()
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = old.idle() => {}
            _ = old.ended() => return,
            _ = tokio::time::sleep(DRAIN) => {
                tracing::warn!(module = %old.module(), lease_id = %old.id(), calls = old.calls_in_flight(), "calls still in flight on a replaced lease after {DRAIN:?}; revoking it");
            }
            _ = shutdown.cancelled() => {}
        }
        if old.revoke(&detail, Actor::Core) {
            ctx.events.emit(
                EventKind::LeaseRevoked,
                old.module().as_str(),
                &old.id().to_string(),
                detail,
            );
        }
    });
}
