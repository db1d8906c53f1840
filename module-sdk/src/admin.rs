//! `anima.v1.ModuleAdmin`: status for any peer the module lets in (Cores and
//! its operators: `access.rs` refuses everyone else right after the
//! handshake), shutdown for the module's own Core (Type I/II) or a
//! configured operator identity.

use std::sync::Arc;

use anima_protocol::PeerInfo;
use anima_protocol::lease::{Reason, status_for};
use anima_protocol::pb::module_admin_server::ModuleAdmin;
use anima_protocol::pb::{ModuleStatus, ShutdownReply, ShutdownRequest, StatusRequest};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::leases::ModuleState;
use crate::lifecycle::Exit;
use anima_protocol::contract::ModuleType;

/// The `ModuleAdmin` service.
pub(crate) struct AdminService {
    pub(crate) state: Arc<ModuleState>,
    pub(crate) stop: CancellationToken,
}

#[tonic::async_trait]
impl ModuleAdmin for AdminService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<ModuleStatus>, Status> {
        let s = &self.state;
        Ok(Response::new(ModuleStatus {
            urn: s.contract.urn.to_string(),
            version: s.contract.version.clone(),
            module_type: match s.contract.module_type {
                ModuleType::Ephemeral => "ephemeral",
                ModuleType::ResidentPrivate(_) => "resident-private",
                ModuleType::ResidentShared => "resident-shared",
            }
            .into(),
            phase: s.phase().as_str().into(),
            pid: std::process::id(),
            active_leases: u32::try_from(*s.active().borrow()).unwrap_or(u32::MAX),
            bound_core: s.bound_core().map(|u| u.to_string()).unwrap_or_default(),
            methods: s.contract.methods.iter().map(str::to_owned).collect(),
            max_lease_ms: u64::try_from(s.contract.max_lease.as_millis()).unwrap_or(u64::MAX),
            provides: s
                .contract
                .provides
                .iter()
                .map(ToString::to_string)
                .collect(),
            requires: s
                .contract
                .requires
                .iter()
                .map(ToString::to_string)
                .collect(),
        }))
    }

    async fn shutdown(
        &self,
        request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownReply>, Status> {
        let peer = PeerInfo::of(&request)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("not an Anima connection"))?;
        let s = &self.state;
        let own_core = !matches!(s.contract.module_type, ModuleType::ResidentShared)
            && s.bound_core().as_ref() == Some(peer.urn());
        if !own_core && !s.is_operator(peer.urn()) {
            return Err(status_for(
                Reason::WrongCore,
                format!("{} may not shut this module down", peer.urn()),
                [],
            ));
        }
        let reason = request.into_inner().reason;
        tracing::info!(by = %peer.urn(), reason = %reason, "shutdown requested");
        s.revoke_all(Reason::Shutdown, "module shutting down");
        s.set_exit(Exit::ShutdownRequested {
            by: peer.urn().to_string(),
        });
        self.stop.cancel();
        Ok(Response::new(ShutdownReply {}))
    }
}
