//! The admin API (`anima.v1.CoreAdmin`), callable only by the operator
//! identities in the Core's configuration.

use std::pin::Pin;
use std::sync::Arc;

use anima_protocol::lease::{LeaseId, LeaseState, Reason, status_for};
use anima_protocol::pb::core_admin_server::CoreAdmin;
use anima_protocol::pb::{
    Event, LeaseInfo, ListLeasesReply, ListLeasesRequest, ListModulesReply, ListModulesRequest,
    ModuleInfo, ModuleReply, ModuleRequest, RevokeLeaseReply, RevokeLeaseRequest,
    WatchEventsRequest,
};
use anima_protocol::{PeerInfo, Urn};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::audit::unix_ms;
use crate::lease::LeaseRecord;
use crate::registry::{ModuleCommand, ModuleView};
use crate::supervisor::CoreContext;

/// The admin service.
pub(crate) struct AdminService {
    ctx: Arc<CoreContext>,
    operators: Vec<Urn>,
}

impl AdminService {
    /// Serves `ctx` to `operators`.
    pub(crate) fn new(ctx: Arc<CoreContext>, operators: Vec<Urn>) -> Self {
        AdminService { ctx, operators }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<Urn, Status> {
        let peer = PeerInfo::of(request)
            .ok_or_else(|| Status::unauthenticated("not an Anima connection"))?;
        if self.operators.contains(peer.urn()) {
            Ok(peer.urn().clone())
        } else {
            tracing::warn!(caller = %peer.urn(), "admin call refused: not an operator");
            Err(status_for(
                Reason::NotOperator,
                format!("{} is not an operator of this Core", peer.urn()),
                [],
            ))
        }
    }
}

/// A lease state's name, as the admin API and `/metrics` report it.
pub(crate) fn lease_state_name(state: &LeaseState) -> &'static str {
    match state {
        LeaseState::Active => "active",
        LeaseState::Expired => "expired",
        LeaseState::Ended(_) => "ended",
    }
}

fn not_found(what: String) -> Status {
    status_for(Reason::NotFound, what, [])
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl CoreAdmin for AdminService {
    async fn list_modules(
        &self,
        request: Request<ListModulesRequest>,
    ) -> Result<Response<ListModulesReply>, Status> {
        self.authorize(&request)?;
        let modules = self
            .ctx
            .registry
            .list()
            .into_iter()
            .map(module_info)
            .collect();
        Ok(Response::new(ListModulesReply { modules }))
    }

    async fn list_leases(
        &self,
        request: Request<ListLeasesRequest>,
    ) -> Result<Response<ListLeasesReply>, Status> {
        self.authorize(&request)?;
        let leases = self.ctx.leases.list().into_iter().map(lease_info).collect();
        Ok(Response::new(ListLeasesReply { leases }))
    }

    async fn revoke_lease(
        &self,
        request: Request<RevokeLeaseRequest>,
    ) -> Result<Response<RevokeLeaseReply>, Status> {
        let by = self.authorize(&request)?;
        let req = request.into_inner();
        let id: LeaseId = req
            .lease_id
            .parse()
            .map_err(|_| not_found(format!("{:.64} is not a lease id", req.lease_id)))?;
        let record = self
            .ctx
            .leases
            .get(id)
            .ok_or_else(|| not_found(format!("no lease {id}")))?;
        let link = self
            .ctx
            .link(&record.module)
            .filter(|l| l.id() == id)
            .ok_or_else(|| not_found(format!("lease {id} is not open")))?;
        let detail = if req.reason.is_empty() {
            format!("revoked by {by}")
        } else {
            format!("{:.200} (by {by})", req.reason)
        };
        link.revoke(&detail, crate::audit::Actor::Operator);
        Ok(Response::new(RevokeLeaseReply {}))
    }

    async fn restart_module(
        &self,
        request: Request<ModuleRequest>,
    ) -> Result<Response<ModuleReply>, Status> {
        self.command(request, ModuleCommand::Restart)
    }

    async fn stop_module(
        &self,
        request: Request<ModuleRequest>,
    ) -> Result<Response<ModuleReply>, Status> {
        self.command(request, ModuleCommand::Stop)
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.authorize(&request)?;
        let mut rx = self.ctx.events.subscribe();
        let stream = async_stream(move |tx| async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        let event = Event {
                            ts_ms: e.ts_ms,
                            kind: e.kind.as_str().into(),
                            module: e.module,
                            lease_id: e.lease_id,
                            detail: e.detail,
                            revision: e.revision,
                        };
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

impl AdminService {
    /// Sends `command` to the module `request` names, if an operator asks.
    fn command(
        &self,
        request: Request<ModuleRequest>,
        command: ModuleCommand,
    ) -> Result<Response<ModuleReply>, Status> {
        self.authorize(&request)?;
        let urn: Urn = (request.into_inner().urn)
            .parse()
            .map_err(|e| not_found(format!("{e}")))?;
        if self.ctx.registry.command(&urn, command) {
            Ok(Response::new(ModuleReply {}))
        } else {
            Err(not_found(format!("no module {urn}")))
        }
    }
}

/// A module's row in `ListModules`.
fn module_info(m: ModuleView) -> ModuleInfo {
    ModuleInfo {
        urn: m.urn.to_string(),
        module_type: m.module_type.into(),
        state: m.state.as_str().into(),
        detail: m.detail,
        pid: m.pid.unwrap_or(0),
        endpoint: m.endpoint,
        restarts: m.restarts,
        lease_id: m.lease_id.map(|l| l.to_string()).unwrap_or_default(),
    }
}

/// A lease's row in `ListLeases`.
fn lease_info(r: LeaseRecord) -> LeaseInfo {
    let reason = match &r.state {
        LeaseState::Active => String::new(),
        LeaseState::Expired => "LEASE_EXPIRED".into(),
        LeaseState::Ended(e) => e.reason.to_string(),
    };
    LeaseInfo {
        lease_id: r.lease_id.to_string(),
        module: r.module.to_string(),
        scope: r.scope.iter().map(str::to_owned).collect(),
        issued_ms: unix_ms(r.issued),
        expires_ms: unix_ms(r.expires),
        ttl_ms: u64::try_from(r.ttl.as_millis()).unwrap_or(u64::MAX),
        renewals: r.renewals,
        state: lease_state_name(&r.state).into(),
        reason,
    }
}

/// A stream fed by a task; the task ends when the receiver is dropped.
fn async_stream<F, Fut>(f: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
