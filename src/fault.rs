//! Fault injection in the protocol crate — **test only; never in anything
//! shipped.**
//!
//! This module exists only in the test-only copy of this crate
//! (`tests/faulty-protocol`, package `anima-protocol-faulty`), whose build
//! script sets the `anima_test_faults` cfg for that package alone; the real
//! `anima-protocol` refuses to compile with it and has no feature for it. The
//! test-only copy of the module SDK (`tests/faulty`) depends on this copy
//! under the name `anima_protocol`, and turns a fault on with [`inject`] when
//! its process runs with `ANIMA_TEST_FAULT` naming one of these.
//!
//! Each fault removes exactly one check a module makes (PROTOCOL.md §1, §3),
//! the way a buggy module would:
//!
//! | name | what the module no longer does |
//! | --- | --- |
//! | `offer-signature` | verify the offer's signature (§3.1 step 2) |
//! | `offer-identities` | check the offer's `con` / `pro` against the mTLS peers (step 4) |
//! | `offer-binding` | check the offer's `cnf` against the two certificates (step 5) |
//! | `offer-iat` | check `exp ≥ iat` and the offer's `iat` against its clock (step 6) |
//! | `offer-ttl` | refuse an offer asking less than 50 ms (step 9) |
//! | `offer-scope` | refuse an offer naming undeclared methods (step 8) |
//! | `control-signature` | verify a control token's signature (§3.4) |
//! | `control-lid` | check a control token's `lid` |
//! | `control-seq` | check that a control token's `seq` is new |
//! | `renew-extends` | run a renewed lease from the renewal: it adds the TTL to the old expiry |
//! | `grant-exp-iat` | give `exp = iat` for a sub-second grant (§3.2: at least `iat + 1`) |
//! | `alpn-unchecked` | refuse a client that negotiated no ALPN `h2` (§1) |
//! | `proof-any-method` | bind a call's proof to its method: a proof made for any method in scope passes (§4) |

use std::sync::atomic::{AtomicU8, Ordering};

use serde::de::DeserializeOwned;

use crate::lease::LeaseError;

/// Whether `package` is the test-only copy of this crate, the one crate
/// allowed to compile this module (checked at compile time in `lib.rs`).
pub(crate) const fn is_test_copy(package: &str) -> bool {
    same(package, "anima-protocol-faulty")
}

/// `a == b`, at compile time (the test copies' package-name checks).
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A check of this crate a fault removes (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ProtocolFault {
    /// `offer-signature`.
    OfferSignature = 1,
    /// `offer-identities`.
    OfferIdentities,
    /// `offer-binding`.
    OfferBinding,
    /// `offer-iat`.
    OfferIat,
    /// `offer-ttl`.
    OfferTtl,
    /// `offer-scope`.
    OfferScope,
    /// `control-signature`.
    ControlSignature,
    /// `control-lid`.
    ControlLid,
    /// `control-seq`.
    ControlSeq,
    /// `renew-extends`.
    RenewExtends,
    /// `grant-exp-iat`.
    GrantExpIat,
    /// `alpn-unchecked`.
    AlpnUnchecked,
    /// `proof-any-method`.
    ProofAnyMethod,
}

impl ProtocolFault {
    /// Every fault of this crate.
    pub const ALL: [ProtocolFault; 13] = [
        ProtocolFault::OfferSignature,
        ProtocolFault::OfferIdentities,
        ProtocolFault::OfferBinding,
        ProtocolFault::OfferIat,
        ProtocolFault::OfferTtl,
        ProtocolFault::OfferScope,
        ProtocolFault::ControlSignature,
        ProtocolFault::ControlLid,
        ProtocolFault::ControlSeq,
        ProtocolFault::RenewExtends,
        ProtocolFault::GrantExpIat,
        ProtocolFault::AlpnUnchecked,
        ProtocolFault::ProofAnyMethod,
    ];

    /// The fault's name, as `ANIMA_TEST_FAULT` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolFault::OfferSignature => "offer-signature",
            ProtocolFault::OfferIdentities => "offer-identities",
            ProtocolFault::OfferBinding => "offer-binding",
            ProtocolFault::OfferIat => "offer-iat",
            ProtocolFault::OfferTtl => "offer-ttl",
            ProtocolFault::OfferScope => "offer-scope",
            ProtocolFault::ControlSignature => "control-signature",
            ProtocolFault::ControlLid => "control-lid",
            ProtocolFault::ControlSeq => "control-seq",
            ProtocolFault::RenewExtends => "renew-extends",
            ProtocolFault::GrantExpIat => "grant-exp-iat",
            ProtocolFault::AlpnUnchecked => "alpn-unchecked",
            ProtocolFault::ProofAnyMethod => "proof-any-method",
        }
    }
}

static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// Turns `fault` on for this process.
pub fn inject(fault: ProtocolFault) {
    ACTIVE.store(fault as u8, Ordering::Relaxed);
}

/// Whether `fault` is on.
pub(crate) fn on(fault: ProtocolFault) -> bool {
    ACTIVE.load(Ordering::Relaxed) == fault as u8
}

/// `verified`, the outcome of verifying `token`, except that with `skip` on
/// a token whose signature (or renewal tag) does not verify is decoded
/// anyway.
pub(crate) fn verify_token<T: DeserializeOwned>(
    token: &str,
    verified: Result<T, LeaseError>,
    skip: ProtocolFault,
) -> Result<T, LeaseError> {
    match verified {
        Err(LeaseError::BadSignature) if on(skip) => {
            tracing::warn!(
                fault = skip.as_str(),
                "FAULT INJECTION: a token whose signature does not verify is accepted"
            );
            crate::lease::decode_jws_unverified(token)
        }
        other => other,
    }
}
