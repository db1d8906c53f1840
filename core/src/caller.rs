//! Who calls the Core's module-facing services (the registry, the
//! mediator): one of its operators, or one of its modules holding a lease
//! from it now. Anyone else is refused before the service looks at the
//! request.

use anima_protocol::lease::{Reason, status_for};
use anima_protocol::{PeerInfo, Urn, UrnKind};
use tonic::{Request, Status};

use crate::supervisor::CoreContext;

/// An admitted caller.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// One of the Core's operators (`[admin] operators`).
    Operator(Urn),
    /// A module of this Core, leased by it now.
    Module(Urn),
}

impl Caller {
    /// The caller of `request`, from its certificate: an operator of
    /// `operators`, or a module of `ctx` holding a lease (`NO_LEASE`
    /// otherwise); anyone else is refused `POLICY_DENIED`.
    pub(crate) fn of<T>(
        ctx: &CoreContext,
        operators: &[Urn],
        request: &Request<T>,
    ) -> Result<Caller, Status> {
        let peer = PeerInfo::of(request)
            .ok_or_else(|| Status::unauthenticated("not an Anima connection"))?;
        let urn = peer.urn();
        if operators.contains(urn) {
            return Ok(Caller::Operator(urn.clone()));
        }
        if urn.kind() != UrnKind::Module || ctx.registry.get(urn).is_none() {
            return Err(status_for(
                Reason::PolicyDenied,
                format!("{urn} is neither a module of this Core nor one of its operators"),
                [],
            ));
        }
        if !ctx.is_leased(urn) {
            return Err(status_for(
                Reason::NoLease,
                format!("{urn} holds no lease from this Core"),
                [],
            ));
        }
        Ok(Caller::Module(urn.clone()))
    }

    /// The caller's URN.
    pub(crate) fn urn(&self) -> &Urn {
        match self {
            Caller::Operator(u) | Caller::Module(u) => u,
        }
    }
}
