//! The Anima module SDK: serve an ordinary tonic service under leases.
//!
//! A module author writes a tonic service and a capability [`Contract`], and
//! serves it with [`ModuleServer::serve`]. The SDK serves the lease control
//! stream (the Core's offer, the module's grant, renewals, scope changes,
//! revocations) and puts a lease gate in front of every capability call:
//! undeclared methods, calls without a valid lease on their connection, and
//! calls with a missing, forged or replayed proof are refused before the
//! handler runs; an admitted call is halted the moment its lease ends.
//! Handlers see their lease as a [`LeaseContext`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod clock;
mod context;
pub mod contract;
mod control;
mod error;
mod gate;
mod leases;
mod serve;
mod status;

pub use context::LeaseContext;
pub use contract::{Contract, InitMode, ModuleType};
pub use control::HANDSHAKE_TIMEOUT;
pub use error::SdkError;
pub use leases::LeaseEvent;
pub use serve::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, ModuleHandle, ModuleServer};
