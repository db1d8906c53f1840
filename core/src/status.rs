//! The one place the Core turns its refusals into `tonic::Status`.

use anima_protocol::lease::{LeaseError, LeaseId, status_for};
use tonic::Status;

/// A refused call: the reason as `ErrorInfo` (domain `anima`), with the
/// lease id as metadata when known.
pub(crate) fn refusal(err: &LeaseError, lease: Option<LeaseId>) -> Status {
    status_for(
        err.reason(),
        err.to_string(),
        lease.map(|id| ("lease_id", id.to_string())),
    )
}
