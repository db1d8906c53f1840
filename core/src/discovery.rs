//! The registry API (`anima.v1.Registry`, PROTOCOL.md §10): modules
//! discover the providers of the interfaces they may call (P4) and watch
//! their lifecycle events (P5); operators see every provider.
//!
//! A module is answered only while this Core leases it, and only about the
//! providers its `[[permission]]` entries let it call. A watch follows the
//! Core's event revisions: resumed from a revision the Core still keeps, it
//! misses nothing; from an older one (or one of an earlier run of the Core),
//! it starts with a snapshot of the providers as they are.

use std::pin::Pin;
use std::sync::Arc;

use anima_protocol::Urn;
use anima_protocol::interface::{InterfaceName, Provided, Required, VersionRange};
use anima_protocol::lease::{Reason, status_for};
use anima_protocol::pb::registry_server::Registry as RegistryApi;
use anima_protocol::pb::{
    DiscoverReply, DiscoverRequest, Provider, RegistryEvent, RegistryWatchRequest, Route, Snapshot,
    WatchItem, watch_item,
};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::caller::Caller;
use crate::events::CoreEvent;
use crate::gateway::mediate::PIN_HEADER;
use crate::registry::ModuleView;
use crate::supervisor::CoreContext;

/// How many interfaces one watch may name.
pub(crate) const MAX_WATCHED: usize = 64;

/// The registry service. Cloning shares it.
#[derive(Clone)]
pub(crate) struct RegistryService {
    ctx: Arc<CoreContext>,
    operators: Arc<[Urn]>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchItem, Status>> + Send + 'static>>;

impl RegistryService {
    /// Serves `ctx`'s registry to its modules and `operators`.
    pub(crate) fn new(ctx: Arc<CoreContext>, operators: Vec<Urn>) -> Self {
        RegistryService {
            ctx,
            operators: operators.into(),
        }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        Caller::of(&self.ctx, &self.operators, request)
    }

    /// Every provider of `interface` in `range` that `caller` may see.
    fn providers(
        &self,
        caller: &Caller,
        interface: &InterfaceName,
        range: &VersionRange,
    ) -> Vec<Provider> {
        let required = Required {
            interface: interface.clone(),
            range: range.clone(),
        };
        self.ctx
            .registry
            .list()
            .iter()
            .flat_map(|m| m.provides.iter().map(move |p| (m, p)))
            .filter(|(_, p)| required.accepts(p))
            .filter(|(m, _)| self.may_see(caller, interface, &m.urn))
            .map(|(m, p)| self.provider(m, p))
            .collect()
    }

    /// Whether `caller` sees `provider` as a provider of `interface`:
    /// operators see every one, a module those its permissions let it call.
    fn may_see(&self, caller: &Caller, interface: &InterfaceName, provider: &Urn) -> bool {
        match caller {
            Caller::Operator(_) => true,
            Caller::Module(me) => self.ctx.mediation.permits(me, interface, provider),
        }
    }

    /// A provider's row: its state and how to call it through this Core.
    fn provider(&self, module: &ModuleView, provided: &Provided) -> Provider {
        let methods = match self.ctx.mediation.definition(provided) {
            Some(definition) => definition.method_paths().map(str::to_owned).collect(),
            None => self.ctx.routes.declared_by(&module.urn),
        };
        Provider {
            module: module.urn.to_string(),
            interface: provided.interface.to_string(),
            version: provided.version.to_string(),
            state: module.state.as_str().into(),
            route: Some(Route {
                core: self.ctx.urn.to_string(),
                methods,
                pin_header: PIN_HEADER.into(),
                pin_value: module.urn.to_string(),
            }),
        }
    }

    /// The watched interfaces a module's event concerns, as `NAME VERSION`:
    /// those the module provides and the caller may call it for (a module
    /// sees no event of a provider its permissions keep from it, as
    /// `Discover` lists none).
    fn concerns(
        &self,
        caller: &Caller,
        event: &CoreEvent,
        watched: &[InterfaceName],
    ) -> Vec<String> {
        let Ok(urn) = event.module.parse::<Urn>() else {
            return Vec::new();
        };
        let Some(module) = self.ctx.registry.get(&urn) else {
            return Vec::new();
        };
        module
            .provides
            .iter()
            .filter(|p| watched.contains(&p.interface))
            .filter(|p| self.may_see(caller, &p.interface, &urn))
            .map(ToString::to_string)
            .collect()
    }

    /// Every provider of the watched interfaces the caller may see.
    fn snapshot(&self, caller: &Caller, watched: &[InterfaceName], revision: u64) -> WatchItem {
        let any = VersionRange::any();
        let providers = watched
            .iter()
            .flat_map(|i| self.providers(caller, i, &any))
            .collect();
        WatchItem {
            item: Some(watch_item::Item::Snapshot(Snapshot {
                revision,
                providers,
                epoch: self.ctx.events.epoch().into(),
            })),
        }
    }

    /// The event as `caller`, a watcher of `watched`, sees it, if it
    /// concerns them.
    fn item(
        &self,
        caller: &Caller,
        event: CoreEvent,
        watched: &[InterfaceName],
    ) -> Option<WatchItem> {
        let provides = self.concerns(caller, &event, watched);
        if provides.is_empty() {
            return None;
        }
        Some(WatchItem {
            item: Some(watch_item::Item::Event(RegistryEvent {
                revision: event.revision,
                ts_ms: event.ts_ms,
                kind: event.kind.as_str().into(),
                module: event.module,
                lease_id: event.lease_id,
                detail: event.detail,
                provides,
                epoch: self.ctx.events.epoch().into(),
            })),
        })
    }
}

fn invalid(message: String) -> Status {
    Status::invalid_argument(message)
}

fn interface_name(text: &str) -> Result<InterfaceName, Status> {
    text.parse()
        .map_err(|e| invalid(format!("interface {:.200}: {e}", text)))
}

#[tonic::async_trait]
impl RegistryApi for RegistryService {
    async fn discover(
        &self,
        request: Request<DiscoverRequest>,
    ) -> Result<Response<DiscoverReply>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let interface = interface_name(&req.interface)?;
        let range = if req.range.trim().is_empty() {
            VersionRange::any()
        } else {
            req.range
                .parse()
                .map_err(|e| invalid(format!("range {:.200}: {e}", req.range)))?
        };
        // The revision first: a watch from it misses nothing after this answer.
        let revision = self.ctx.events.revision();
        let providers = self.providers(&caller, &interface, &range);
        Ok(Response::new(DiscoverReply {
            providers,
            revision,
            epoch: self.ctx.events.epoch().into(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<RegistryWatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        if req.interfaces.is_empty() || req.interfaces.len() > MAX_WATCHED {
            return Err(invalid(format!(
                "watch 1 to {MAX_WATCHED} interfaces, not {}",
                req.interfaces.len()
            )));
        }
        let watched = req
            .interfaces
            .iter()
            .map(|i| interface_name(i))
            .collect::<Result<Vec<_>, _>>()?;
        let since = self.ctx.events.since(req.since_revision, &req.epoch);
        let service = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move { service.follow(caller, watched, since, tx).await });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl RegistryService {
    /// Feeds one watch until its caller goes away (or, for a module, its
    /// lease ends).
    async fn follow(
        self,
        caller: Caller,
        watched: Vec<InterfaceName>,
        since: crate::events::Since,
        tx: tokio::sync::mpsc::Sender<Result<WatchItem, Status>>,
    ) {
        let crate::events::Since {
            past,
            too_old,
            revision,
            mut live,
        } = since;
        let mut last = revision;
        if too_old
            && tx
                .send(Ok(self.snapshot(&caller, &watched, revision)))
                .await
                .is_err()
        {
            return;
        }
        for event in past {
            last = event.revision;
            if let Some(item) = self.item(&caller, event, &watched)
                && tx.send(Ok(item)).await.is_err()
            {
                return;
            }
        }
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                event = live.recv() => event,
            };
            if let Caller::Module(me) = &caller
                && !self.ctx.is_leased(me)
            {
                let _ = tx
                    .send(Err(status_for(
                        Reason::NoLease,
                        format!("{me}'s lease from this Core ended"),
                        [],
                    )))
                    .await;
                return;
            }
            let item = match event {
                Ok(event) if event.revision <= last => continue,
                Ok(event) => {
                    last = event.revision;
                    self.item(&caller, event, &watched)
                }
                // Events were lost: what is now stands in for them.
                Err(RecvError::Lagged(_)) => {
                    last = self.ctx.events.revision();
                    Some(self.snapshot(&caller, &watched, last))
                }
                Err(RecvError::Closed) => return,
            };
            if let Some(item) = item
                && tx.send(Ok(item)).await.is_err()
            {
                return;
            }
        }
    }
}
