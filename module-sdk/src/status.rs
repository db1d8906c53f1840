//! The one place the SDK turns refusals into `tonic::Status`.

use anima_protocol::lease::{LeaseError, LeaseId, status_for};
use tonic::Status;

/// The status a refused call gets: the lease error's reason as
/// `ErrorInfo` (domain `anima`), with the lease id as metadata when known.
pub(crate) fn refusal(err: &LeaseError, lease: Option<LeaseId>) -> Status {
    status_for(
        err.reason(),
        err.to_string(),
        lease.map(|id| ("lease_id", id.to_string())),
    )
}
