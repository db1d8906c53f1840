//! The Core's side of leases: open one per module connection, renew it,
//! change its scope, revoke it, and make every call carry its proof.

mod calls;
mod channel;
mod error;
mod link;
mod table;

pub use calls::CallGuard;
pub use channel::LeasedChannel;
pub use error::CoreLeaseError;
pub use link::{Books, LeaseLink, RenewalPolicy};
pub use table::{LeaseRecord, LeaseTable};
