//! Leases: mutual, signed, bound to certificates and to one connection.
//!
//! On every new connection the Core [`offer`]s a lease and the module
//! [`grant`]s one back; each verifies the other's token (signature by the
//! peer's certificate key, both identities equal to the mTLS peers, both
//! certificate fingerprints, scope within the declared methods, TTL within
//! the contract's maximum). Both then hold a [`Lease`] with the same id, scope
//! and TTL, and a per-lease [`ProofKey`] and [`RenewalKey`] agreed by
//! ephemeral X25519 + HKDF inside the signed handshake. Afterwards only
//! per-call proofs, renewals (authenticated with the renewal key), signed
//! scope changes and signed revocations cross the wire.
//!
//! Issuing ([`offer`], [`grant`], [`LeaseSigner`]) and verifying
//! ([`PendingLease::accept`], [`grant`]'s checks, [`Lease::receive`]) take
//! time as arguments: the module is pure, with no sockets and no runtime.
//!
//! ```
//! use std::time::{Duration, Instant, SystemTime};
//! use anima_protocol::lease::{self, Entropy, GrantPolicy, LeaseRequest, Scope};
//! # use anima_protocol::lease::doc_support::pair;
//! # let (core_signer, module_signer, core_sees, module_sees) = pair();
//!
//! let declared = Scope::new(["/echo.v1.Echo/Say"])?;
//! let now = Instant::now();
//! let wall = SystemTime::now();
//! let request = LeaseRequest { scope: declared.clone(), ttl: Duration::from_secs(600) };
//! let (offer, pending) =
//!     lease::offer(&core_signer, &core_sees, request, Entropy::system()?, now, wall)?;
//! let policy = GrantPolicy { declared, max_ttl: Duration::from_secs(60) };
//! let (grant, mut module_lease) =
//!     lease::grant(&module_signer, &module_sees, &offer, &policy, Entropy::system()?, now, wall)?;
//! let core_lease = pending.accept(&core_signer, &grant, wall)?;
//! // The Core asked for 10 minutes; the contract caps it at one.
//! assert_eq!(core_lease.ttl(), Duration::from_secs(60));
//! assert_eq!(module_lease.ttl(), core_lease.ttl());
//! // Each call carries a proof only.
//! let proof = core_lease.proof_key().proof(1, "/echo.v1.Echo/Say");
//! module_lease.admit("/echo.v1.Echo/Say", Some(&proof), now)?;
//! assert!(module_lease.admit("/echo.v1.Echo/Say", Some(&proof), now).is_err()); // replay
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod claims;
mod crypto;
mod error;
mod handshake;
mod jws;
mod keys;
#[allow(clippy::module_inception)]
mod lease;
mod proof;
mod reason;
mod renewal;
mod scope;

pub use claims::{
    Confirmation, ControlClaims, LeaseClaims, REVOCATION_CONDITIONS, TYP_GRANT, TYP_OFFER,
    TYP_RENEW, TYP_RENEWED, TYP_RESCOPE, TYP_RESCOPED, TYP_REVOKE,
};
pub use error::LeaseError;
pub use handshake::{
    Entropy, GrantPolicy, LeaseRequest, MAX_CLOCK_SKEW, MIN_TTL, PendingLease, grant, offer,
};
pub use jws::{
    HEADER as JWS_HEADER, HEADER_ES256 as JWS_HEADER_ES256, HEADER_HS256 as JWS_HEADER_HS256,
    MAX_TOKEN_LEN, mac_claims, sign_claims,
};
pub use keys::{LeaseSigner, PeerBinding, PeerKey};
pub use lease::{Ended, EndedBy, Lease, LeaseId, LeaseState, Side};
pub use proof::{PROOF_HEADER, PROOF_HEADER_NAME, ProofKey, ReplayWindow, proof_header_value};
pub use reason::{DOMAIN, Reason, reason_of, status_for};
pub use renewal::RenewalKey;
pub use scope::{Scope, check_method};

#[cfg(test)]
mod tests;
#[cfg(anima_test_faults)]
pub(crate) use jws::decode_unverified as decode_jws_unverified;
#[cfg(test)]
mod vectors;

/// Support for this module's doc examples: two signers and their bindings.
#[doc(hidden)]
#[allow(clippy::expect_used)] // fixed, valid literals; examples and tests only
pub mod doc_support {
    use super::{LeaseSigner, PeerBinding};
    use crate::transport::{ConnectionId, Fingerprint};

    /// A Core and a module signer, and what each sees of the other.
    pub fn pair() -> (LeaseSigner, LeaseSigner, PeerBinding, PeerBinding) {
        let core = LeaseSigner::from_parts(
            [1; 32],
            "urn:anima:core:dev".parse().expect("valid urn"),
            Fingerprint([11; 32]),
        );
        let module = LeaseSigner::from_parts(
            [2; 32],
            "urn:anima:module:echo".parse().expect("valid urn"),
            Fingerprint([22; 32]),
        );
        let conn = ConnectionId::next();
        let core_sees = binding(&module, conn);
        let module_sees = binding(&core, conn);
        (core, module, core_sees, module_sees)
    }

    /// What the peer sees of `signer` on `connection` (a certificate that
    /// never expires).
    pub fn binding(signer: &LeaseSigner, connection: ConnectionId) -> PeerBinding {
        PeerBinding {
            urn: signer.urn().clone(),
            fingerprint: signer.fingerprint(),
            key: signer.verifying_key(),
            not_after: None,
            connection,
        }
    }
}
