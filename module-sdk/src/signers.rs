//! The module's lease signers: one per certificate it has presented.
//!
//! A lease is signed with the key of the certificate the module presented
//! on the lease's connection (PROTOCOL.md §1). After a reload the module
//! presents its renewed certificate to new connections, while leases on
//! older connections go on under the certificate they were bound to: each
//! lease keeps its own signer, and an offer on a connection made before
//! the reload finds the signer of the certificate that connection saw.

use std::sync::{Arc, RwLock};

use anima_protocol::Fingerprint;
use anima_protocol::lease::LeaseSigner;

/// How many earlier certificates an offer may still be answered for (on
/// a connection made before that many reloads).
const KEPT: usize = 8;

/// The signers of the certificates presented so far.
pub(crate) struct Signers {
    kept: RwLock<Kept>,
}

struct Kept {
    /// The certificate new connections are presented.
    current: Arc<LeaseSigner>,
    /// Earlier ones, newest last.
    older: Vec<Arc<LeaseSigner>>,
}

impl Signers {
    pub(crate) fn new(signer: LeaseSigner) -> Self {
        Signers {
            kept: RwLock::new(Kept {
                current: Arc::new(signer),
                older: Vec::new(),
            }),
        }
    }

    fn kept(&self) -> std::sync::RwLockReadGuard<'_, Kept> {
        self.kept.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The signer of the certificate with `fingerprint` (the one a
    /// connection was presented), or the current one when it is no longer
    /// kept (the offer is then refused `BINDING_MISMATCH`, as it must be).
    pub(crate) fn for_certificate(&self, fingerprint: Fingerprint) -> Arc<LeaseSigner> {
        let kept = self.kept();
        if kept.current.fingerprint() == fingerprint {
            return kept.current.clone();
        }
        kept.older
            .iter()
            .rev()
            .find(|s| s.fingerprint() == fingerprint)
            .unwrap_or(&kept.current)
            .clone()
    }

    /// Presents `signer`'s certificate from now on.
    pub(crate) fn push(&self, signer: LeaseSigner) {
        let mut kept = self.kept.write().unwrap_or_else(|p| p.into_inner());
        let previous = std::mem::replace(&mut kept.current, Arc::new(signer));
        let current = kept.current.fingerprint();
        kept.older.push(previous);
        kept.older.retain(|s| s.fingerprint() != current);
        let excess = kept.older.len().saturating_sub(KEPT);
        kept.older.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anima_protocol::Urn;

    fn signer(n: u8) -> LeaseSigner {
        let urn: Urn = "urn:anima:module:m".parse().unwrap();
        LeaseSigner::from_parts([n; 32], urn, Fingerprint([n; 32]))
    }

    #[test]
    fn an_offer_finds_the_signer_of_the_certificate_its_connection_saw() {
        let signers = Signers::new(signer(1));
        signers.push(signer(2));
        assert_eq!(signers.kept().current.fingerprint(), Fingerprint([2; 32]));
        assert_eq!(
            signers.for_certificate(Fingerprint([1; 32])).fingerprint(),
            Fingerprint([1; 32])
        );
        assert_eq!(
            signers.for_certificate(Fingerprint([9; 32])).fingerprint(),
            Fingerprint([2; 32]),
            "an unknown certificate gets the current signer"
        );
    }

    #[test]
    fn only_the_last_few_certificates_are_kept_and_a_repeat_moves_to_the_end() {
        let signers = Signers::new(signer(0));
        for n in 1..=20 {
            signers.push(signer(n));
        }
        signers.push(signer(15));
        let kept = signers.kept();
        assert_eq!(kept.older.len(), KEPT);
        assert_eq!(kept.current.fingerprint(), Fingerprint([15; 32]));
        assert!(
            kept.older
                .iter()
                .all(|s| s.fingerprint().0[0] >= 12 && s.fingerprint().0[0] != 15)
        );
    }
}
