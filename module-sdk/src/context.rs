//! What a handler knows about the lease it runs under.

use std::sync::Arc;

use anima_protocol::Urn;
use anima_protocol::lease::{LeaseError, LeaseId};
use tonic::Status;

use crate::clock::now;
use crate::leases::LeaseSlot;
use crate::status::refusal;

/// The lease a call was admitted under. The gate puts it in every admitted
/// request's extensions: read it with [`LeaseContext::of`].
#[derive(Clone)]
pub struct LeaseContext {
    slot: Arc<LeaseSlot>,
}

impl LeaseContext {
    pub(crate) fn new(slot: Arc<LeaseSlot>) -> Self {
        LeaseContext { slot }
    }

    /// The lease of an admitted request.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&LeaseContext> {
        request.extensions().get::<LeaseContext>()
    }

    /// The lease id.
    pub fn lease_id(&self) -> LeaseId {
        self.slot.id
    }

    /// The Core the lease belongs to.
    pub fn consumer(&self) -> &Urn {
        &self.slot.consumer
    }

    /// Whether the lease is still valid now.
    pub fn is_valid(&self) -> bool {
        self.slot.lock().check_valid(now()).is_ok()
    }

    /// How long the lease has left now unless renewed (zero once it has
    /// ended), on this process's monotonic clock. A handler can use it to
    /// decide whether long work is worth starting; correctness never depends
    /// on it: the SDK halts the call when the lease ends.
    pub fn remaining(&self) -> std::time::Duration {
        let lease = self.slot.lock();
        let now = now();
        match lease.check_valid(now) {
            Ok(()) => lease.expires_at().saturating_duration_since(now),
            Err(_) => std::time::Duration::ZERO,
        }
    }

    /// Completes when the lease ends (expiry, revocation, connection loss).
    pub async fn ended(&self) {
        self.slot.ended.cancelled().await
    }

    /// Runs `apply` only while the lease is valid, atomically with respect
    /// to its ending: the lease cannot end between the check and `apply`.
    /// Stage side effects, then make them visible here, so partial work is
    /// dropped when the lease ends first. Keep `apply` short and non-blocking,
    /// and do not call back into this lease from it (`commit`, `with_state`,
    /// `is_valid` would wait on the lock `commit` holds): `with_state` is
    /// itself atomic with the lease's validity, so changes to tenant state
    /// need no `commit` around them.
    pub fn commit<R>(&self, apply: impl FnOnce() -> R) -> Result<R, Status> {
        let lease = self.slot.lock();
        match lease.check_valid(now()) {
            Ok(()) => Ok(apply()),
            Err(e) => Err(refusal(&crate::leases::call_refusal(e), Some(self.slot.id))),
        }
    }
}

impl LeaseContext {
    /// Runs `f` on this lease's private `T` (the tenant state; created with
    /// `T::default()` on first use), only while the lease is valid. Each
    /// lease has its own `T`, unreachable from any other lease, and it is
    /// dropped the moment the lease ends.
    pub fn with_state<T: Default + Send + 'static, R>(
        &self,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, Status> {
        self.slot
            .with_tenant(f)
            .map_err(|e| refusal(&e, Some(self.slot.id)))
    }
}

impl LeaseContext {
    /// The refusal a call under this lease gets once the lease has ended
    /// (`LEASE_EXPIRED` / `LEASE_REVOKED`, …).
    pub(crate) fn end_status(&self) -> Status {
        let err = self
            .slot
            .end_error()
            .unwrap_or(LeaseError::NoLease("the lease ended"));
        refusal(&err, Some(self.slot.id))
    }
}

impl std::fmt::Debug for LeaseContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseContext")
            .field("lease_id", &self.slot.id)
            .field("consumer", &self.slot.consumer)
            .finish()
    }
}
