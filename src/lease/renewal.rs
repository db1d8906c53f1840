//! The per-lease renewal key: routine renewals (`renew` and `renewed`) are
//! authenticated with HMAC-SHA256 under a key both sides derive in the
//! handshake (PROTOCOL.md §3.3), so a renewal costs no public-key operation.
//! The handshake, scope changes and revocations stay signed by the
//! certificate keys.

use ring::hmac;

use super::error::LeaseError;

/// The length of an `HS256` tag (RFC 7518 §3.2: the full HMAC-SHA256 output).
pub(crate) const TAG_LEN: usize = 32;

/// The per-lease key of renewal tokens, derived in the handshake (PROTOCOL.md
/// §3.3) and never sent; `Debug` prints nothing secret.
#[derive(Clone)]
pub struct RenewalKey(hmac::Key);

impl RenewalKey {
    /// Wraps 32 bytes of key material.
    pub fn new(bytes: &[u8; 32]) -> Self {
        RenewalKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The tag of `message` (a token's `header "." payload`).
    pub(crate) fn tag(&self, message: &[u8]) -> [u8; TAG_LEN] {
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(hmac::sign(&self.0, message).as_ref());
        out
    }

    /// Checks `tag` over `message` in constant time.
    pub(crate) fn verify(&self, message: &[u8], tag: &[u8; TAG_LEN]) -> Result<(), LeaseError> {
        hmac::verify(&self.0, message, tag).map_err(|_| LeaseError::BadSignature)
    }
}

impl std::fmt::Debug for RenewalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RenewalKey(<redacted>)")
    }
}

/// The two keys of one lease, derived together in the handshake.
#[derive(Clone, Debug)]
pub(crate) struct LeaseKeys {
    /// Per-call proofs (§4).
    pub(crate) proof: super::ProofKey,
    /// Renewal tokens (§3.4).
    pub(crate) renewal: RenewalKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_test_case_2() {
        // HMAC-SHA256 with key "Jefe" (padded here to 32 bytes with zeros,
        // which HMAC treats the same as the 4-byte key).
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let tag = RenewalKey::new(&key).tag(b"what do ya want for nothing?");
        assert_eq!(
            crate::hex::lower(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn another_key_or_message_does_not_verify() {
        let key = RenewalKey::new(&[7; 32]);
        let tag = key.tag(b"a.b");
        assert_eq!(key.verify(b"a.b", &tag), Ok(()));
        assert_eq!(key.verify(b"a.c", &tag), Err(LeaseError::BadSignature));
        assert_eq!(
            RenewalKey::new(&[8; 32]).verify(b"a.b", &tag),
            Err(LeaseError::BadSignature)
        );
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(
            format!("{:?}", RenewalKey::new(&[7; 32])),
            "RenewalKey(<redacted>)"
        );
    }
}
