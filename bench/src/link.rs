//! Leases opened the way the Core opens them: dial the module as the Core,
//! then the lease handshake for `Say` on that connection, with no audit log.

use std::sync::Arc;

use anima_core::audit::AuditLog;
use anima_core::lease::{LeaseLink, LeaseTable, RenewalPolicy};
use anima_protocol::lease::{LeaseSigner, Scope};
use anima_protocol::transport::Address;
use anima_protocol::{ClientTls, PeerPolicy, Urn};
use anima_tests::SAY;

use crate::procs::{Res, Setup};

/// What opening a lease needs besides the module: the Core's dialler and
/// signer, and the table the links join (one per opener). Owned, so a
/// spawned task can hold one (a clone shares the table).
#[derive(Clone)]
pub struct LeaseOpener {
    client: ClientTls,
    signer: Arc<LeaseSigner>,
    table: LeaseTable,
}

impl LeaseOpener {
    /// The run's Core, its links joining a new table.
    pub fn new(setup: &Setup) -> Self {
        LeaseOpener {
            client: setup.client(),
            signer: setup.signer.clone(),
            table: LeaseTable::new(),
        }
    }

    /// Dials the module `module` at `addr` on a new connection and opens a
    /// lease for `Say` on it.
    pub async fn open(
        &self,
        addr: impl Into<Address>,
        module: Urn,
        policy: RenewalPolicy,
    ) -> Res<LeaseLink> {
        let conn = self
            .client
            .dial_addr(addr, PeerPolicy::exactly(module))
            .await?;
        Ok(LeaseLink::open(
            conn,
            self.signer.clone(),
            Scope::new([SAY])?,
            policy,
            AuditLog::discard(),
            self.table.clone(),
        )
        .await?)
    }
}
