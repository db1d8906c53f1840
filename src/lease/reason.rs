//! The machine-readable reasons of the lease protocol: a wire contract.
//!
//! Each reason travels as the `reason` of a `google.rpc.ErrorInfo` (domain
//! [`DOMAIN`]) in a refused call's status, or in a control-stream `Refusal`.
//! Clients branch on the reason, never on message text. Renaming one is a
//! breaking change. The table of reasons and gRPC codes is in PROTOCOL.md.

use std::fmt;

/// The `ErrorInfo.domain` of every Anima reason.
pub const DOMAIN: &str = "anima";

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $text:literal => $code:ident, )*) => {
        /// A machine-readable reason (`/[A-Z0-9_]+/`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
        }

        impl Reason {
            /// Every reason, in table order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The reason as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $text,)* }
            }

            /// The gRPC status code a call refused for this reason carries.
            pub fn code(self) -> tonic::Code {
                match self { $(Reason::$variant => tonic::Code::$code,)* }
            }

            /// Parses a wire reason.
            pub fn parse(s: &str) -> Option<Reason> {
                match s { $($text => Some(Reason::$variant),)* _ => None }
            }
        }
    };
}

reasons! {
    /// The call carries no lease proof, or its connection holds no lease.
    NoLease = "NO_LEASE" => Unauthenticated,
    /// The proof is malformed or its MAC does not verify.
    BadProof = "BAD_PROOF" => Unauthenticated,
    /// The proof's sequence number was already used (or is too old).
    ProofReplayed = "PROOF_REPLAYED" => Unauthenticated,
    /// The lease expired.
    LeaseExpired = "LEASE_EXPIRED" => Unauthenticated,
    /// The lease was revoked.
    LeaseRevoked = "LEASE_REVOKED" => Unauthenticated,
    /// The method is not in the lease's scope.
    ScopeDenied = "SCOPE_DENIED" => PermissionDenied,
    /// The Core is not the one this module is bound to.
    WrongCore = "WRONG_CORE" => PermissionDenied,
    /// The module is in standby (no lease).
    Standby = "STANDBY" => Unavailable,
    /// The method is not declared in the module's contract.
    UnknownMethod = "UNKNOWN_METHOD" => Unimplemented,
    /// A lease token's signature does not verify.
    BadSignature = "BAD_SIGNATURE" => Unauthenticated,
    /// A lease token is malformed or its claims are inconsistent.
    BadToken = "BAD_TOKEN" => InvalidArgument,
    /// A token's identities differ from the mTLS peers.
    IdentityMismatch = "IDENTITY_MISMATCH" => PermissionDenied,
    /// A token is bound to other certificates than this connection's.
    BindingMismatch = "BINDING_MISMATCH" => PermissionDenied,
    /// This connection already holds a lease (one per connection).
    LeaseExists = "LEASE_EXISTS" => AlreadyExists,
    /// A control-stream step came out of order or too late.
    ProtocolViolation = "PROTOCOL_VIOLATION" => FailedPrecondition,
    /// Reserved: no side sends it in version 1 (a renewal the module cannot
    /// grant is refused [`Reason::BadToken`], PROTOCOL.md §3.4); received,
    /// it ends the lease like any other refusal.
    RenewalRefused = "RENEWAL_REFUSED" => PermissionDenied,
    /// The connection (or its control stream) was lost.
    ConnectionLost = "CONNECTION_LOST" => Unavailable,
    /// The side is shutting down.
    Shutdown = "SHUTDOWN" => Unavailable,
    /// The caller is not an operator of this Core.
    NotOperator = "NOT_OPERATOR" => PermissionDenied,
    /// No such module or lease.
    NotFound = "NOT_FOUND" => NotFound,
    /// The gateway's policy does not let this user call this method.
    PolicyDenied = "POLICY_DENIED" => PermissionDenied,
    /// The module is in standby (no lease held by the Core right now).
    ModuleStandby = "MODULE_STANDBY" => Unavailable,
    /// The module failed (past its restart limit).
    ModuleFailed = "MODULE_FAILED" => Unavailable,
    /// The module is starting, restarting, stopped or unreachable.
    ModuleUnavailable = "MODULE_UNAVAILABLE" => Unavailable,
    /// The caller already has as many calls in flight through the gateway
    /// as one identity may.
    TooManyCalls = "TOO_MANY_CALLS" => ResourceExhausted,
    /// A module-to-module call's provider went away while the call was in
    /// flight: it may or may not have run; the caller may retry it.
    ProviderLost = "PROVIDER_LOST" => Unavailable,
    /// A proxy sidecar of the module refused the call without naming a
    /// reason of its own (PROTOCOL.md §11).
    SidecarRefused = "SIDECAR_REFUSED" => PermissionDenied,
    /// A proxy sidecar of the module could not be asked about the call (no
    /// lease, no answer in time, an error): the call does not go around it.
    SidecarUnavailable = "SIDECAR_UNAVAILABLE" => Unavailable,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Anima reason carried by a status, if any (`ErrorInfo` with domain
/// [`DOMAIN`] and a known reason).
pub fn reason_of(status: &tonic::Status) -> Option<Reason> {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let info = details.error_info()?;
    (info.domain == DOMAIN)
        .then(|| Reason::parse(&info.reason))
        .flatten()
}

/// A status refusing a call for `reason`, with `ErrorInfo` (domain
/// [`DOMAIN`]) and `metadata` (e.g. `lease_id`).
pub fn status_for(
    reason: Reason,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (&'static str, String)>,
) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let metadata: std::collections::HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    tonic::Status::with_error_details(
        reason.code(),
        message,
        ErrorDetails::with_error_info(reason.as_str(), DOMAIN, metadata),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_upper_snake_and_round_trip() {
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            );
            assert_eq!(Reason::parse(s), Some(*r));
        }
        assert_eq!(Reason::parse("nope"), None);
    }
}
