//! Lease errors: each carries its context and maps to one wire [`Reason`].

use std::time::Duration;

use super::reason::Reason;
use crate::identity::Urn;

/// Why a lease step failed or a request under a lease was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// No lease on this connection, or no proof on the call.
    #[error("no lease: {0}")]
    NoLease(&'static str),
    /// The proof is malformed or does not verify.
    #[error("bad lease proof: {0}")]
    BadProof(&'static str),
    /// The proof's sequence number was already used or fell out of the window.
    #[error("lease proof {seq} replayed or too old")]
    ProofReplayed {
        /// The sequence number presented.
        seq: u64,
    },
    /// The lease expired.
    #[error("lease {lease_id} expired {ago:?} ago")]
    Expired {
        /// The lease id.
        lease_id: String,
        /// How long ago, by this side's monotonic clock.
        ago: Duration,
    },
    /// The lease was revoked.
    #[error("lease {lease_id} revoked by {by}: {reason}")]
    Revoked {
        /// The lease id.
        lease_id: String,
        /// Who revoked it (`core`, `module`, or `connection`).
        by: String,
        /// The revocation reason.
        reason: Reason,
    },
    /// The method is outside the lease's scope.
    #[error("method {method} is not in the lease's scope")]
    ScopeDenied {
        /// The method called or requested.
        method: String,
    },
    /// The module is bound to another Core.
    #[error("this module is bound to {bound}; {got} may not lease it")]
    WrongCore {
        /// The Core the module serves.
        bound: Urn,
        /// The Core that asked.
        got: Urn,
    },
    /// The method is not declared in the module's contract.
    #[error("method {method} is not declared by this module")]
    UnknownMethod {
        /// The method called.
        method: String,
    },
    /// The module has no lease and takes no calls.
    #[error("module is in standby (no valid lease)")]
    Standby,
    /// A token's signature does not verify with the signer's certificate key.
    #[error("lease token signature does not verify")]
    BadSignature,
    /// A token is malformed, or a claim is missing or inconsistent.
    #[error("bad lease token: {0}")]
    BadToken(String),
    /// A token names other parties than the authenticated peers.
    #[error("token names {claimed} as {role}, but the connection authenticated {actual}")]
    IdentityMismatch {
        /// `consumer` or `provider`.
        role: &'static str,
        /// What the token says.
        claimed: String,
        /// What mTLS proved.
        actual: Urn,
    },
    /// A token is bound to other certificates.
    #[error("token is bound to another certificate ({which})")]
    BindingMismatch {
        /// Which binding failed.
        which: &'static str,
    },
    /// The connection already holds a lease.
    #[error("this connection already holds lease {lease_id}")]
    LeaseExists {
        /// The lease held.
        lease_id: String,
    },
    /// A step arrived out of order, too late, or malformed.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer refused a step (and so revoked the lease).
    #[error("refused by peer: {reason} ({detail})")]
    Refused {
        /// The peer's reason.
        reason: Reason,
        /// The peer's human-readable detail.
        detail: String,
    },
    /// A key could not be used.
    #[error("key: {0}")]
    Key(String),
    /// Claims could not be encoded.
    #[error("cannot encode claims: {0}")]
    Encode(String),
}

impl LeaseError {
    /// The wire reason for this error.
    pub fn reason(&self) -> Reason {
        match self {
            LeaseError::NoLease(_) => Reason::NoLease,
            LeaseError::BadProof(_) => Reason::BadProof,
            LeaseError::ProofReplayed { .. } => Reason::ProofReplayed,
            LeaseError::Expired { .. } => Reason::LeaseExpired,
            // A lease that ended with its connection or its side's shutdown
            // says so; every other ending is a revocation.
            LeaseError::Revoked { reason, .. } => match reason {
                Reason::ConnectionLost | Reason::Shutdown => *reason,
                _ => Reason::LeaseRevoked,
            },
            LeaseError::ScopeDenied { .. } => Reason::ScopeDenied,
            LeaseError::WrongCore { .. } => Reason::WrongCore,
            LeaseError::Standby => Reason::Standby,
            LeaseError::UnknownMethod { .. } => Reason::UnknownMethod,
            LeaseError::BadSignature => Reason::BadSignature,
            LeaseError::BadToken(_) | LeaseError::Encode(_) | LeaseError::Key(_) => {
                Reason::BadToken
            }
            LeaseError::IdentityMismatch { .. } => Reason::IdentityMismatch,
            LeaseError::BindingMismatch { .. } => Reason::BindingMismatch,
            LeaseError::LeaseExists { .. } => Reason::LeaseExists,
            LeaseError::Protocol(_) => Reason::ProtocolViolation,
            LeaseError::Refused { reason, .. } => *reason,
        }
    }
}
