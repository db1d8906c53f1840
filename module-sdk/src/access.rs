//! Who may connect to a module, and how much one connection may hold
//! (PROTOCOL.md §1 and §6.4).
//!
//! A module serves Cores and its operators (the user identities of
//! `ANIMA_OPERATORS`, [`ModuleServer::operators`](crate::ModuleServer::operators))
//! and nobody else: any other user is refused right after the TLS handshake,
//! before HTTP/2 starts, so it holds no stream, not even on the lease-free
//! `ModuleAdmin` and `grpc.health.v1` services. Module identities are
//! refused during the handshake itself.

use std::sync::Arc;

use anima_protocol::lease::ReplayWindow;
use anima_protocol::{Urn, UrnKind};

use crate::leases::ModuleState;

/// How many streams (calls) one connection to a module may have open at
/// once: announced as HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`; streams past
/// it are refused (`REFUSED_STREAM`; a well-behaved client queues them).
///
/// It equals the proof replay window ([`ReplayWindow::SIZE`]): calls in
/// flight on one lease's connection can then never spread further apart
/// than the window accepts. With [`DEFAULT_MAX_CONNECTIONS_PER_IDENTITY`]
/// connections per identity, it bounds what one peer holds.
///
/// [`DEFAULT_MAX_CONNECTIONS_PER_IDENTITY`]: anima_protocol::transport::DEFAULT_MAX_CONNECTIONS_PER_IDENTITY
pub const MAX_CONCURRENT_STREAMS: u32 = ReplayWindow::SIZE as u32;

/// The kinds of identity that may complete a TLS handshake with the
/// module: Cores and users (which users, [`admits`] decides). Other modules
/// never (Partenza §5: modules reach each other only through the Core).
pub(crate) fn peer_kinds(state: &ModuleState) -> Vec<UrnKind> {
    if module_peers(state) {
        return UrnKind::ALL.to_vec();
    }
    vec![UrnKind::Core, UrnKind::User]
}

/// The connection rule: any Core, and the users that are operators.
pub(crate) fn admits(state: Arc<ModuleState>) -> impl Fn(&Urn) -> bool + Send + Sync + 'static {
    move |urn: &Urn| match urn.kind() {
        UrnKind::Core => true,
        UrnKind::User => state.is_operator(urn),
        UrnKind::Module => module_peers(&state),
    }
}

/// Whether other modules are let in: never, but for the `module-peer`
/// fault of the test-only copy of the SDK.
#[cfg_attr(not(anima_test_faults), allow(unused_variables))]
pub(crate) fn module_peers(state: &ModuleState) -> bool {
    #[cfg(anima_test_faults)]
    if state.faults.is(crate::fault::Fault::ModulePeer) {
        tracing::warn!("FAULT INJECTION (module-peer): other modules may connect and lease");
        return true;
    }
    false
}
