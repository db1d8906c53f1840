//! Serving a module: the one entry point module authors call.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anima_protocol::lease::{LeaseId, LeaseSigner, Reason};
use anima_protocol::pb::lease_control_server::LeaseControlServer;
use anima_protocol::{PeerPolicy, ServerTls, TlsIdentity, TrustRoot, UrnKind};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tonic::service::Routes;

use crate::contract::Contract;
use crate::control::ControlService;
use crate::error::SdkError;
use crate::gate::GateLayer;
use crate::leases::{LeaseEvent, ModuleState};

/// HTTP/2 keepalive: a ping every interval, answered within the timeout, or
/// the connection (and its lease) is dead. A silent Core is detected within
/// their sum; a Core whose process dies is detected at once (the kernel
/// closes its sockets).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A module ready to serve: its contract, its identity and the lease state.
pub struct ModuleServer {
    state: Arc<ModuleState>,
    tls: ServerTls,
}

impl ModuleServer {
    /// Prepares to serve as `identity` (whose URN must be the contract's),
    /// accepting Cores whose certificates chain to `trust`.
    pub fn new(
        contract: Contract,
        identity: &TlsIdentity,
        trust: &TrustRoot,
    ) -> Result<Self, SdkError> {
        if identity.urn() != &contract.urn {
            return Err(SdkError::IdentityMismatch {
                cert: identity.urn().to_string(),
                contract: contract.urn.to_string(),
            });
        }
        let signer = LeaseSigner::from_identity(identity)?;
        let tls = ServerTls::new(identity, trust, PeerPolicy::kind(UrnKind::Core))?;
        Ok(ModuleServer {
            state: Arc::new(ModuleState::new(contract, signer)),
            tls,
        })
    }

    /// A handle to watch and act on leases while serving.
    pub fn handle(&self) -> ModuleHandle {
        ModuleHandle {
            state: self.state.clone(),
        }
    }

    /// The TLS listener configuration (to observe refused connections).
    pub fn tls(&self) -> &ServerTls {
        &self.tls
    }

    /// Serves `routes` (the module's capability services) under leases on
    /// `listener` until `shutdown` completes. The lease control service and
    /// `grpc.health.v1` are added; every other call passes the lease gate.
    pub async fn serve(
        self,
        routes: Routes,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SdkError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let routes = routes
            .add_service(LeaseControlServer::new(ControlService {
                state: self.state.clone(),
            }))
            .add_service(health);
        let incoming = self.tls.incoming(listener);
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .layer(GateLayer {
                state: self.state.clone(),
            })
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}

/// Watches and acts on a serving module's leases.
#[derive(Clone)]
pub struct ModuleHandle {
    state: Arc<ModuleState>,
}

impl ModuleHandle {
    /// Lease events from now on.
    pub fn events(&self) -> broadcast::Receiver<LeaseEvent> {
        self.state.subscribe()
    }

    /// The number of open leases, updated as it changes.
    pub fn active_leases(&self) -> watch::Receiver<usize> {
        self.state.active()
    }

    /// The ids of the open leases.
    pub fn lease_ids(&self) -> Vec<LeaseId> {
        self.state.slots_snapshot().iter().map(|s| s.id).collect()
    }

    /// Revokes lease `id` and tells its Core; false when no such lease is open.
    pub fn revoke(&self, id: LeaseId, detail: &str) -> bool {
        match self.state.slots_snapshot().into_iter().find(|s| s.id == id) {
            Some(slot) => {
                self.state.revoke(&slot, Reason::LeaseRevoked, detail);
                true
            }
            None => false,
        }
    }

    /// Revokes every open lease (e.g. on shutdown).
    pub fn revoke_all(&self, reason: Reason, detail: &str) {
        for slot in self.state.slots_snapshot() {
            self.state.revoke(&slot, reason, detail);
        }
    }
}
