//! The Core's lease table, for the admin API and operators.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anima_protocol::Urn;
use anima_protocol::lease::{Lease, LeaseId, LeaseState, Scope};

/// One lease as the Core tracks it.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    /// The lease id.
    pub lease_id: LeaseId,
    /// The module.
    pub module: Urn,
    /// The scope now.
    pub scope: Scope,
    /// When it was opened (wall clock).
    pub issued: SystemTime,
    /// When it expires unless renewed (wall-clock estimate).
    pub expires: SystemTime,
    /// The TTL last granted.
    pub ttl: Duration,
    /// Renewals granted.
    pub renewals: u64,
    /// Active, expired or ended (with reason).
    pub state: LeaseState,
}

impl LeaseRecord {
    pub(crate) fn of(lease: &Lease) -> Self {
        LeaseRecord {
            lease_id: lease.id(),
            module: lease.provider().clone(),
            scope: lease.scope().clone(),
            issued: lease.wall_issued(),
            expires: lease.wall_issued() + lease.ttl(),
            ttl: lease.ttl(),
            renewals: lease.renewals(),
            state: LeaseState::Active,
        }
    }
}

/// All leases this Core opened, and the modules it refuses to lease.
/// Cloning shares the table.
#[derive(Clone, Default)]
pub struct LeaseTable(Arc<Mutex<Tables>>);

#[derive(Default)]
struct Tables {
    leases: BTreeMap<LeaseId, LeaseRecord>,
    blacklist: BTreeMap<Urn, String>,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, record: LeaseRecord) {
        self.lock().leases.insert(record.lease_id, record);
    }

    pub(crate) fn update(&self, id: LeaseId, f: impl FnOnce(&mut LeaseRecord)) {
        if let Some(r) = self.lock().leases.get_mut(&id) {
            f(r);
        }
    }

    /// A snapshot of every lease.
    pub fn list(&self) -> Vec<LeaseRecord> {
        self.lock().leases.values().cloned().collect()
    }

    /// One lease.
    pub fn get(&self, id: LeaseId) -> Option<LeaseRecord> {
        self.lock().leases.get(&id).cloned()
    }

    /// Blacklists `module` (ADR-0003 §7: a Type III module that let one
    /// Core's state affect another's is compromised): no lease is opened to
    /// it again, and every refusal says `why`.
    pub fn blacklist(&self, module: Urn, why: impl Into<String>) {
        let why = why.into();
        tracing::warn!(module = %module, reason = %why, "module blacklisted");
        self.lock().blacklist.insert(module, why);
    }

    /// Why `module` is blacklisted, if it is.
    pub fn blacklisted(&self, module: &Urn) -> Option<String> {
        self.lock().blacklist.get(module).cloned()
    }
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.lock();
        f.debug_struct("LeaseTable")
            .field("leases", &t.leases.len())
            .field("blacklisted", &t.blacklist.len())
            .finish()
    }
}
