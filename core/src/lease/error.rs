//! Errors of the Core's lease layer.

use std::time::Duration;

use anima_protocol::TransportError;
use anima_protocol::lease::{LeaseError, Reason};

/// Why a lease could not be opened or a step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreLeaseError {
    /// The lease protocol refused something on this side.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The connection could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The module refused (and so revoked).
    #[error("the module refused: {reason} ({detail})")]
    Refused {
        /// The module's reason.
        reason: Reason,
        /// The module's detail.
        detail: String,
    },
    /// The control stream could not be opened.
    #[error("lease control stream: {0}")]
    Rpc(tonic::Status),
    /// The module did not answer the offer in time.
    #[error("the module did not answer the lease offer within {0:?}")]
    HandshakeTimeout(Duration),
    /// The control stream closed.
    #[error("the lease control stream closed")]
    StreamClosed,
    /// The lease has ended.
    #[error("the lease has ended")]
    Ended,
    /// The module is blacklisted by this Core.
    #[error("module {module} is blacklisted: {why}")]
    Blacklisted {
        /// The module.
        module: anima_protocol::Urn,
        /// Why.
        why: String,
    },
    /// The module's declared methods could not be read (`ModuleAdmin/Status`,
    /// for a module configured without a contract file).
    #[error("cannot read the module's declared methods: {0}")]
    Declared(String),
    /// The contract the configuration names is not the module's own
    /// (`ModuleAdmin/Status` says otherwise): no offer was made.
    #[error("the contract {file} does not match the module's own contract: {differences}")]
    ContractMismatch {
        /// The configured contract's file.
        file: String,
        /// What differs, `; `-separated.
        differences: String,
    },
    /// The lease handshake failed in a way not listed above.
    #[error(transparent)]
    Handshake(anima_protocol::control::HandshakeError),
    /// A request went unanswered and was abandoned.
    #[error("the module did not answer in time")]
    Unanswered,
}

impl CoreLeaseError {
    /// The wire reason, where one applies.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            CoreLeaseError::Lease(e) => Some(e.reason()),
            CoreLeaseError::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}
