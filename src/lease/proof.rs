//! The per-request proof: an HMAC under the per-lease key, bound to the
//! method and a sequence number, checked against a replay window.
//!
//! Metadata `anima-proof: v1.<seq>.<tag>` where `seq` is a decimal counter
//! starting at 1 and `tag` is base64url (no padding) of the first 16 bytes of
//! `HMAC-SHA256(key, "anima/v1 call" || 0x00 || seq as u64 big-endian || method)`.
//! No public-key operation per request; the key never crosses the wire.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use subtle::ConstantTimeEq;

use super::error::LeaseError;
use super::jws::b64_array;

/// The metadata key that carries the proof.
pub const PROOF_HEADER: &str = "anima-proof";

/// [`PROOF_HEADER`] as a header name: looked up or inserted without being
/// parsed again on every call.
pub static PROOF_HEADER_NAME: http::HeaderName = http::HeaderName::from_static(PROOF_HEADER);

/// `proof` as the Core sends its [`PROOF_HEADER`] value: its own bytes (no
/// copy), marked never indexed, so HPACK neither stores nor looks up a value
/// used once (PROTOCOL.md §4, *Header encoding*).
///
/// # Errors
///
/// When `proof` holds a byte a header value cannot (never for a proof
/// [`ProofKey::proof`] wrote).
pub fn proof_header_value(proof: String) -> Result<http::HeaderValue, LeaseError> {
    let mut value = http::HeaderValue::try_from(proof)
        .map_err(|_| LeaseError::BadProof("unencodable proof"))?;
    value.set_sensitive(true);
    Ok(value)
}

const TAG_LEN: usize = 16;
const LABEL: &[u8] = b"anima/v1 call\0";
/// The longest header value accepted.
const MAX_PROOF_LEN: usize = 64;

/// The per-lease MAC key, derived in the handshake; `Debug` prints nothing secret.
#[derive(Clone)]
pub struct ProofKey(hmac::Key);

impl ProofKey {
    /// Wraps 32 bytes of key material.
    pub fn new(bytes: &[u8; 32]) -> Self {
        ProofKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    fn tag(&self, seq: u64, method: &str) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(LABEL);
        ctx.update(&seq.to_be_bytes());
        ctx.update(method.as_bytes());
        let full = ctx.sign();
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        out
    }

    /// The header value proving call number `seq` of `method`.
    pub fn proof(&self, seq: u64, method: &str) -> String {
        // Written out by hand: this runs for every call the Core sends.
        let mut out = String::with_capacity(MAX_PROOF_LEN);
        out.push_str("v1.");
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = seq;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend(digits[at..].iter().copied().map(char::from));
        out.push('.');
        B64.encode_string(self.tag(seq, method), &mut out);
        out
    }

    /// Checks a header value for `method` and returns its sequence number.
    /// The caller checks the sequence number against its replay window.
    pub fn check(&self, header: &str, method: &str) -> Result<u64, LeaseError> {
        if header.len() > MAX_PROOF_LEN {
            return Err(LeaseError::BadProof("proof too long"));
        }
        let malformed = LeaseError::BadProof("malformed proof (expected v1.SEQ.TAG)");
        let Some(rest) = header.strip_prefix("v1.") else {
            return Err(malformed);
        };
        let Some(dot) = rest.bytes().position(|b| b == b'.') else {
            return Err(malformed);
        };
        let (seq, tag) = (&rest[..dot], &rest[dot + 1..]);
        if tag.bytes().any(|b| b == b'.') {
            return Err(malformed);
        }
        // Canonical decimal: digits only, no sign, no leading zero (one
        // sequence number has one spelling), at most 2^64 - 1.
        let bad_seq = LeaseError::BadProof("malformed sequence number");
        if seq.is_empty() || (seq.len() > 1 && seq.starts_with('0')) {
            return Err(bad_seq);
        }
        let mut n: u64 = 0;
        for b in seq.bytes() {
            if !b.is_ascii_digit() {
                return Err(bad_seq);
            }
            n = match n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
            {
                Some(n) => n,
                None => return Err(bad_seq),
            };
        }
        let seq = n;
        let tag: [u8; TAG_LEN] =
            b64_array(tag, "proof tag").map_err(|_| LeaseError::BadProof("malformed tag"))?;
        if bool::from(self.tag(seq, method).ct_eq(&tag)) {
            Ok(seq)
        } else {
            Err(LeaseError::BadProof("tag does not verify"))
        }
    }
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProofKey(<redacted>)")
    }
}

/// Accepts each sequence number once, in any order within a window of
/// [`ReplayWindow::SIZE`] below the highest seen, so concurrent HTTP/2
/// streams may arrive out of order.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: u64,
    seen: [u64; Self::WORDS],
}

impl ReplayWindow {
    const WORDS: usize = 16;
    /// How far below the highest sequence number a late arrival may be.
    pub const SIZE: u64 = (Self::WORDS * 64) as u64;

    /// Records `seq`; false when it is zero, already seen, or too old.
    pub fn accept(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            if shift >= Self::SIZE {
                self.seen = [0; Self::WORDS];
            } else {
                for _ in 0..shift {
                    // Slide one position: the bit of `highest + 1` enters.
                    self.shift_one();
                }
            }
            self.highest = seq;
            self.set(0);
            return true;
        }
        let offset = self.highest - seq;
        if offset >= Self::SIZE || self.get(offset) {
            return false;
        }
        self.set(offset);
        true
    }

    fn shift_one(&mut self) {
        // Bit i means `highest - i` was seen; shifting moves every bit up one.
        let mut carry = 0;
        for word in self.seen.iter_mut() {
            let next = *word >> 63;
            *word = (*word << 1) | carry;
            carry = next;
        }
    }

    fn get(&self, offset: u64) -> bool {
        let (w, b) = ((offset / 64) as usize, offset % 64);
        self.seen[w] >> b & 1 == 1
    }

    fn set(&mut self, offset: u64) {
        let (w, b) = ((offset / 64) as usize, offset % 64);
        self.seen[w] |= 1 << b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_round_trip_and_binding() {
        let key = ProofKey::new(&[7; 32]);
        let p = key.proof(5, "/pkg.S/M");
        assert_eq!(key.check(&p, "/pkg.S/M").unwrap(), 5);
        // Another method, another key, an edited sequence number: all refused.
        assert!(key.check(&p, "/pkg.S/Other").is_err());
        assert!(ProofKey::new(&[8; 32]).check(&p, "/pkg.S/M").is_err());
        let edited = p.replacen("v1.5.", "v1.6.", 1);
        assert!(key.check(&edited, "/pkg.S/M").is_err());
    }

    #[test]
    fn malformed_proofs_are_refused() {
        let key = ProofKey::new(&[7; 32]);
        for bad in [
            "",
            "v1",
            "v1.1",
            "v2.1.AAAAAAAAAAAAAAAAAAAAAA",
            "v1.-1.AAAAAAAAAAAAAAAAAAAAAA",
            "v1.+1.AAAAAAAAAAAAAAAAAAAAAA",
            "v1.99999999999999999999.AAAAAAAAAAAAAAAAAAAAAA",
            "v1.1.short",
            "v1.1.AAAAAAAAAAAAAAAAAAAAAA.extra",
        ] {
            assert!(key.check(bad, "/a.B/C").is_err(), "{bad}");
        }
    }

    #[test]
    fn proof_seq_is_canonical_decimal() {
        let key = ProofKey::new(&[7; 32]);
        let genuine = key.proof(1, "/a.B/C");
        let tag = genuine.rsplit('.').next().unwrap();
        assert_eq!(key.check(&genuine, "/a.B/C").unwrap(), 1);
        // The same number with a leading zero: the MAC would verify, the
        // spelling does not.
        for spelling in ["01", "001", "+1", " 1"] {
            let bad = format!("v1.{spelling}.{tag}");
            assert_eq!(
                key.check(&bad, "/a.B/C").unwrap_err(),
                LeaseError::BadProof("malformed sequence number"),
                "{bad}"
            );
        }
        // 0 is well-formed; the replay window never accepts it.
        assert_eq!(key.check(&key.proof(0, "/a.B/C"), "/a.B/C").unwrap(), 0);
        assert!(!ReplayWindow::default().accept(0));
        // The largest sequence number.
        let max = key.proof(u64::MAX, "/a.B/C");
        assert_eq!(key.check(&max, "/a.B/C").unwrap(), u64::MAX);
        // One more does not fit in 64 bits, nor do longer spellings.
        for over in [
            "18446744073709551616",
            "99999999999999999999",
            "184467440737095516150",
        ] {
            let bad = format!("v1.{over}.{tag}");
            assert_eq!(
                key.check(&bad, "/a.B/C").unwrap_err(),
                LeaseError::BadProof("malformed sequence number"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_cores_header_value_is_the_proof_never_indexed() {
        let proof = ProofKey::new(&[7; 32]).proof(42, "/a.B/C");
        let value = proof_header_value(proof.clone()).expect("a proof is a header value");
        assert!(value.is_sensitive());
        assert_eq!(value.as_bytes(), proof.as_bytes());
        assert!(matches!(
            proof_header_value("v1.1.\n".into()),
            Err(LeaseError::BadProof(_))
        ));
    }

    #[test]
    fn proof_is_spelled_as_protocol_md_says() {
        let key = ProofKey::new(&[7; 32]);
        for seq in [0, 1, 9, 10, 1234567890, u64::MAX] {
            let proof = key.proof(seq, "/a.B/C");
            let tag = b64_array::<TAG_LEN>(proof.rsplit('.').next().unwrap(), "tag").unwrap();
            assert_eq!(proof, format!("v1.{seq}.{}", B64.encode(tag)));
            assert_eq!(tag, key.tag(seq, "/a.B/C"));
        }
    }

    #[test]
    fn replay_window_boundary_is_1023_below_the_highest() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(5000));
        // Accepted iff highest - seq <= 1023 (and unseen).
        assert!(w.accept(5000 - 1023));
        assert!(!w.accept(5000 - 1024));
        assert!(!w.accept(5000 - 1023), "each once");
        // A seq above the highest always passes and moves the window.
        assert!(w.accept(5001));
        assert!(w.accept(5001 - 1023));
        assert!(!w.accept(5001 - 1025), "unseen, but now 1025 below");
    }

    #[test]
    fn replay_window_accepts_each_once_out_of_order() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(3));
        assert!(w.accept(1));
        assert!(w.accept(2));
        assert!(!w.accept(2));
        assert!(!w.accept(3));
        assert!(w.accept(1000));
        assert!(w.accept(10));
        assert!(!w.accept(10));
        // Too old once the window has moved past it.
        assert!(w.accept(5000));
        assert!(!w.accept(11));
        assert!(w.accept(5000 - ReplayWindow::SIZE + 1));
        assert!(!w.accept(5000 - ReplayWindow::SIZE));
    }

    #[test]
    fn replay_window_matches_a_set_model() {
        // A deterministic pseudo-random sequence of arrivals against a model.
        let mut w = ReplayWindow::default();
        let mut seen = std::collections::HashSet::new();
        let mut highest = 0u64;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 1..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seq = (i + (x % 1500)).saturating_sub(700).max(1);
            let expect = seq + ReplayWindow::SIZE > highest && !seen.contains(&seq);
            assert_eq!(w.accept(seq), expect, "seq {seq} at step {i}");
            if expect {
                seen.insert(seq);
                highest = highest.max(seq);
            }
        }
    }
}
