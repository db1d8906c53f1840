//! JWS compact serialization (RFC 7515), the one token format of the lease
//! protocol, signed with EdDSA (RFC 8037, Ed25519 certificate keys) or ES256
//! (RFC 7518, P-256 certificate keys), or, for renewals only, authenticated
//! with HS256 under the lease's renewal key (RFC 7518 §3.2, [`RenewalKey`]).
//!
//! A signed token's header is exactly `{"alg":"EdDSA","typ":"JWT"}` or
//! `{"alg":"ES256","typ":"JWT"}`, and it must match the key of the signer's
//! certificate; a renewal token's is exactly `{"alg":"HS256","typ":"JWT"}`;
//! a token with any other header is refused. This module
//! encodes and checks the form; the signature itself is made and checked by
//! `jsonwebtoken` (over `ring`: `super::crypto`, `super::keys`) over the signing
//! input exactly as sent or received, with the algorithm of the certificate
//! key. `jsonwebtoken`'s own `encode`/`decode` are not used: they would
//! reorder the header, and take the algorithm and claims checks from the
//! token and their `Validation` rather than from PROTOCOL.md.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::LeaseError;
use super::keys::{PeerKey, SIGNATURE_LEN, SignKey};
use super::renewal::{RenewalKey, TAG_LEN};

/// The header of tokens signed with an Ed25519 certificate key.
pub const HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;
/// The header of tokens signed with an ECDSA P-256 certificate key.
pub const HEADER_ES256: &str = r#"{"alg":"ES256","typ":"JWT"}"#;

/// The header of renewal tokens, authenticated with the lease's renewal key.
pub const HEADER_HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// [`HEADER_HS256`] in base64url: a renewal token's first segment.
const HEADER_HS256_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// The largest token accepted (bytes). Real tokens are well under 2 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Signs `claims` with `key` and returns the compact serialization.
pub(crate) fn sign<T: Serialize>(claims: &T, key: &SignKey) -> Result<String, LeaseError> {
    let payload = serde_json::to_vec(claims).map_err(|e| LeaseError::Encode(e.to_string()))?;
    let mut out = String::with_capacity(64 + payload.len() * 4 / 3 + 90);
    B64.encode_string(key.header(), &mut out);
    out.push('.');
    B64.encode_string(&payload, &mut out);
    let signature = key.sign(out.as_bytes())?;
    out.push('.');
    B64.encode_string(signature, &mut out);
    Ok(out)
}

/// Signs `claims` exactly as given with `signer`'s certificate key.
///
/// For tools that test a peer with tokens an honest side never sends (`anima
/// conformance` tampers with one claim at a time and expects the refusal
/// PROTOCOL.md names); an honest side uses [`super::offer`],
/// [`super::Lease::renew_request`] and the like. It grants nothing: the
/// token carries only what its signer could sign anyway.
pub fn sign_claims<T: Serialize>(
    signer: &super::LeaseSigner,
    claims: &T,
) -> Result<String, LeaseError> {
    sign(claims, signer.key())
}

/// Verifies `token` with `key` and decodes its claims.
///
/// Everything here is peer input: sizes are bounded, and every failure is a
/// [`LeaseError::BadToken`] or [`LeaseError::BadSignature`], never a panic.
pub(crate) fn verify<T: DeserializeOwned>(token: &str, key: &PeerKey) -> Result<T, LeaseError> {
    let form = Form::<SIGNATURE_LEN>::parse(token, key.header())?;
    // The signing input is `header "." payload`, exactly as received; the
    // algorithm is the certificate key's (the header was checked to match).
    key.verify(form.signed.as_bytes(), &form.signature)?;
    form.claims()
}

/// Authenticates `claims` with the lease's renewal key (`HS256`) and returns
/// the compact serialization: the form of `renew` and `renewed` tokens.
pub(crate) fn mac<T: Serialize>(claims: &T, key: &RenewalKey) -> Result<String, LeaseError> {
    let payload = serde_json::to_vec(claims).map_err(|e| LeaseError::Encode(e.to_string()))?;
    let mut out = String::with_capacity(HEADER_HS256_B64.len() + payload.len() * 4 / 3 + 48);
    out.push_str(HEADER_HS256_B64);
    out.push('.');
    B64.encode_string(&payload, &mut out);
    let tag = key.tag(out.as_bytes());
    out.push('.');
    B64.encode_string(tag, &mut out);
    Ok(out)
}

/// Authenticates `claims` exactly as given with a renewal key.
///
/// For tools that test a peer with tokens an honest side never sends, as
/// [`sign_claims`]; an honest side uses [`super::Lease::renew_request`] and
/// [`super::Lease::answer_renew`].
pub fn mac_claims<T: Serialize>(key: &RenewalKey, claims: &T) -> Result<String, LeaseError> {
    mac(claims, key)
}

/// Checks an `HS256` token with the lease's renewal key and decodes its
/// claims, with the same form checks as [`verify`].
pub(crate) fn verify_mac<T: DeserializeOwned>(
    token: &str,
    key: &RenewalKey,
) -> Result<T, LeaseError> {
    let form = Form::<TAG_LEN>::parse(token, HEADER_HS256)?;
    key.verify(form.signed.as_bytes(), &form.signature)?;
    form.claims()
}

/// Whether `token`'s header segment is the `HS256` one (a renewal token);
/// its form is checked when it is verified.
pub(crate) fn is_mac(token: &str) -> bool {
    token
        .split_once('.')
        .is_some_and(|(header, _)| header == HEADER_HS256_B64)
}

/// A token whose form passed (PROTOCOL.md §3, stage 1), its signature or
/// tag `N` bytes long and not yet checked.
struct Form<'a, const N: usize> {
    /// The signing input, `header "." payload`, exactly as received.
    signed: &'a str,
    payload: Vec<u8>,
    signature: [u8; N],
}

impl<'a, const N: usize> Form<'a, N> {
    /// Checks the form of `token`, whose header must be exactly `header`.
    fn parse(token: &'a str, header: &str) -> Result<Self, LeaseError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(LeaseError::BadToken("token too long".into()));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LeaseError::BadToken(
                "not a JWS compact serialization".into(),
            ));
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature.is_empty() {
            return Err(LeaseError::BadToken("a JWS segment is empty".into()));
        }
        let decoded = B64
            .decode(header_b64)
            .map_err(|_| LeaseError::BadToken("header is not base64url".into()))?;
        if decoded != header.as_bytes() {
            return Err(LeaseError::BadToken(format!(
                "unsupported JWS header (this token needs exactly {header})"
            )));
        }
        // Form before signature: every segment is canonical unpadded
        // base64url (trailing bits zero) before the signature is checked.
        let payload = B64
            .decode(payload_b64)
            .map_err(|_| LeaseError::BadToken("payload is not base64url".into()))?;
        let signature: [u8; N] = B64
            .decode(signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| LeaseError::BadToken(format!("signature is not {N} base64url bytes")))?;
        Ok(Form {
            signed: &token[..header_b64.len() + 1 + payload_b64.len()],
            payload,
            signature,
        })
    }

    fn claims<T: DeserializeOwned>(&self) -> Result<T, LeaseError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| LeaseError::BadToken(format!("claims: {e}")))
    }
}

/// The claims of `token`, its signature unchecked: the test-only fault
/// hooks only (`src/fault.rs`).
#[cfg(anima_test_faults)]
pub(crate) fn decode_unverified<T: DeserializeOwned>(token: &str) -> Result<T, LeaseError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| LeaseError::BadToken("not a JWS compact serialization".into()))?;
    let payload = B64
        .decode(payload)
        .map_err(|_| LeaseError::BadToken("payload is not base64url".into()))?;
    serde_json::from_slice(&payload).map_err(|e| LeaseError::BadToken(format!("claims: {e}")))
}

/// Base64url without padding, as used throughout the protocol.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes base64url without padding into exactly `N` bytes.
pub fn b64_array<const N: usize>(text: &str, what: &'static str) -> Result<[u8; N], LeaseError> {
    // Straight into the array: a longer text fails as too big for it, a
    // shorter one decodes fewer than `N` bytes.
    let mut out = [0u8; N];
    match B64.decode_slice(text, &mut out) {
        Ok(n) if n == N => Ok(out),
        _ => Err(LeaseError::BadToken(format!(
            "{what} is not {N} base64url bytes"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Claims {
        a: String,
        n: u64,
    }

    #[test]
    fn b64_array_takes_exactly_n_canonical_bytes() {
        let sixteen = b64(&[0xa5; 16]);
        assert_eq!(b64_array::<16>(&sixteen, "t").unwrap(), [0xa5; 16]);
        // Shorter, longer, padded, not base64url, non-canonical last bits.
        for bad in [
            b64(&[0xa5; 15]),
            b64(&[0xa5; 17]),
            format!("{sixteen}=="),
            sixteen.replace('p', "+"),
            format!("{}B", &sixteen[..21]),
            String::new(),
        ] {
            assert!(b64_array::<16>(&bad, "t").is_err(), "{bad}");
        }
    }

    fn key(seed: u8) -> SignKey {
        SignKey::ed25519(&[seed; 32])
    }

    #[test]
    fn round_trip() {
        let claims = Claims {
            a: "x".into(),
            n: 7,
        };
        let token = sign(&claims, &key(1)).unwrap();
        assert_eq!(token.split('.').count(), 3);
        let back: Claims = verify(&token, &key(1).public_key()).unwrap();
        assert_eq!(back, claims);
    }

    #[test]
    fn wrong_key_or_tampered_payload_is_refused() {
        let token = sign(
            &Claims {
                a: "x".into(),
                n: 7,
            },
            &key(1),
        )
        .unwrap();
        assert!(matches!(
            verify::<Claims>(&token, &key(2).public_key()),
            Err(LeaseError::BadSignature)
        ));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = b64(br#"{"a":"y","n":7}"#);
        let tampered = parts.join(".");
        assert!(matches!(
            verify::<Claims>(&tampered, &key(1).public_key()),
            Err(LeaseError::BadSignature)
        ));
    }

    /// A token over `payload` (raw claims bytes), validly signed by `key(1)`.
    fn signed_raw(payload: &[u8]) -> String {
        let k = key(1);
        let input = format!("{}.{}", b64(k.header().as_bytes()), b64(payload));
        let signature = k.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&signature))
    }

    fn reason_of(token: &str) -> Result<Claims, crate::lease::Reason> {
        verify::<Claims>(token, &key(1).public_key()).map_err(|e| e.reason())
    }

    use crate::lease::Reason::{BadSignature, BadToken};

    #[test]
    fn jws_checks_form_before_signature() {
        // A payload that is not base64url under a signature that does not
        // verify: the form is refused first.
        let header = b64(key(1).header().as_bytes());
        let token = format!("{header}.!!!.{}", b64(&[0; 64]));
        assert_eq!(reason_of(&token).unwrap_err(), BadToken);
        // Well-formed, wrong signature.
        let token = format!("{header}.{}.{}", b64(br#"{"a":"x","n":1}"#), b64(&[0; 64]));
        assert_eq!(reason_of(&token).unwrap_err(), BadSignature);
    }

    #[test]
    fn jws_rejects_non_canonical_base64() {
        let token = signed_raw(br#"{"a":"x","n":7}"#);
        assert!(reason_of(&token).is_ok());
        let parts: Vec<&str> = token.split('.').collect();
        // Padding, the standard alphabet, whitespace: not unpadded base64url.
        for bad in [
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1].replacen('e', "+", 1),
                parts[2]
            ),
            format!("{}.{} .{}", parts[0], parts[1], parts[2]),
        ] {
            assert_eq!(reason_of(&bad).unwrap_err(), BadToken, "{bad}");
        }
        // The same bytes with non-zero trailing bits in a segment's last
        // character (86 characters carry 64 bytes and 4 spare bits).
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let sig = parts[2];
        let last = alphabet.find(&sig[sig.len() - 1..]).unwrap();
        assert_eq!(last & 0b1111, 0, "canonical: the spare bits are zero");
        let spare = &alphabet[last | 1..=last | 1];
        let bad = format!("{}.{}.{}{spare}", parts[0], parts[1], &sig[..sig.len() - 1]);
        assert_eq!(reason_of(&bad).unwrap_err(), BadToken, "{bad}");
    }

    #[test]
    fn jws_rejects_empty_segments_and_wrong_length_signatures() {
        let token = signed_raw(br#"{"a":"x","n":7}"#);
        let parts: Vec<&str> = token.split('.').collect();
        for bad in [
            format!(".{}.{}", parts[1], parts[2]),
            format!("{}..{}", parts[0], parts[2]),
            format!("{}.{}.", parts[0], parts[1]),
            format!("{}.{}.{}", parts[0], parts[1], b64(&[0; 63])),
            format!("{}.{}.{}", parts[0], parts[1], b64(&[0; 65])),
        ] {
            assert_eq!(reason_of(&bad).unwrap_err(), BadToken, "{bad}");
        }
        // An empty payload, validly signed, is no JSON object.
        assert_eq!(reason_of(&signed_raw(b"")).unwrap_err(), BadToken);
    }

    #[test]
    fn jws_size_limit_is_8192_bytes_inclusive() {
        // Start a little short of the limit (base64url grows text by 4/3).
        let mut text = "x".repeat((MAX_TOKEN_LEN - 200) * 3 / 4);
        let token = loop {
            let t = signed_raw(format!(r#"{{"a":"{text}","n":1}}"#).as_bytes());
            if t.len() >= MAX_TOKEN_LEN {
                break t;
            }
            text.push('x');
        };
        assert_eq!(token.len(), MAX_TOKEN_LEN);
        assert!(reason_of(&token).is_ok());
        text.push('x');
        let over = signed_raw(format!(r#"{{"a":"{text}","n":1}}"#).as_bytes());
        assert!(over.len() > MAX_TOKEN_LEN);
        assert_eq!(reason_of(&over).unwrap_err(), BadToken);
    }

    #[test]
    fn jws_rejects_duplicate_json_members() {
        for claims in [r#"{"a":"x","a":"x","n":1}"#, r#"{"a":"x","n":1,"n":1}"#] {
            let token = signed_raw(claims.as_bytes());
            assert_eq!(reason_of(&token).unwrap_err(), BadToken, "{claims}");
        }
    }

    #[test]
    fn jws_rejects_non_integer_numbers() {
        for n in [
            "1.0",
            "1e0",
            "-1",
            "-0",
            "01",
            "\"1\"",
            "18446744073709551616",
            "null",
        ] {
            let claims = format!(r#"{{"a":"x","n":{n}}}"#);
            let token = signed_raw(claims.as_bytes());
            assert_eq!(reason_of(&token).unwrap_err(), BadToken, "{claims}");
        }
        let max = signed_raw(br#"{"a":"x","n":18446744073709551615}"#);
        assert_eq!(reason_of(&max).unwrap().n, u64::MAX);
    }

    #[test]
    fn hs256_header_segment_is_the_header_in_base64url() {
        assert_eq!(HEADER_HS256_B64, b64(HEADER_HS256.as_bytes()));
    }

    #[test]
    fn hs256_round_trip_and_refusals() {
        let claims = Claims {
            a: "x".into(),
            n: 7,
        };
        let renewal = RenewalKey::new(&[3; 32]);
        let token = mac(&claims, &renewal).unwrap();
        assert!(is_mac(&token));
        assert_eq!(verify_mac::<Claims>(&token, &renewal).unwrap(), claims);
        // Another key, a tampered payload: the tag does not verify.
        let other = RenewalKey::new(&[4; 32]);
        let reason = |t: &str, k: &RenewalKey| verify_mac::<Claims>(t, k).map_err(|e| e.reason());
        assert_eq!(reason(&token, &other).unwrap_err(), BadSignature);
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64(br#"{"a":"y","n":7}"#), parts[2]);
        assert_eq!(reason(&tampered, &renewal).unwrap_err(), BadSignature);
        // Form: a tag of another length, a signed token's header, a 64-byte
        // signature: refused before the tag is checked.
        for bad in [
            format!("{}.{}.{}", parts[0], parts[1], b64(&[0; 31])),
            format!("{}.{}.{}", parts[0], parts[1], b64(&[0; 64])),
            format!("{}.{}.{}", b64(HEADER.as_bytes()), parts[1], parts[2]),
        ] {
            assert_eq!(reason(&bad, &renewal).unwrap_err(), BadToken, "{bad}");
        }
        // A signed token is not an HS256 one, nor the other way round.
        let signed = sign(&claims, &key(1)).unwrap();
        assert!(!is_mac(&signed));
        assert_eq!(reason(&signed, &renewal).unwrap_err(), BadToken);
        assert!(matches!(
            verify::<Claims>(&token, &key(1).public_key()),
            Err(LeaseError::BadToken(_))
        ));
    }

    #[test]
    fn ed25519_is_verified_strictly() {
        // Non-canonical `S` (S + L, still under 2^253): refused.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let token = signed_raw(br#"{"a":"x","n":7}"#);
        assert!(reason_of(&token).is_ok());
        let (input, sig) = token.rsplit_once('.').unwrap();
        let mut sig: [u8; 64] = b64_array(sig, "signature").unwrap();
        let mut carry = 0u16;
        for (s, l) in sig[32..].iter_mut().zip(L) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!((carry, sig[63] & 0xe0), (0, 0));
        assert_eq!(
            reason_of(&format!("{input}.{}", b64(&sig))).unwrap_err(),
            BadSignature
        );

        // A small-order key: with it, `R` = identity and `S` = 0 satisfy the
        // (cofactorless) equation for any message. Refused, as is that `R`
        // under an honest key.
        let identity = {
            let mut p = [0u8; 32];
            p[0] = 1;
            p
        };
        let weak = PeerKey::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&identity).unwrap());
        let header = b64(HEADER.as_bytes());
        let payload = b64(br#"{"a":"x","n":1}"#);
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&identity);
        let forged = format!("{header}.{payload}.{}", b64(&forged));
        assert!(matches!(
            verify::<Claims>(&forged, &weak),
            Err(LeaseError::BadSignature)
        ));
        assert_eq!(reason_of(&forged).unwrap_err(), BadSignature);
    }

    #[test]
    fn es256_round_trip_and_refusals() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let urn: crate::identity::Urn = "urn:anima:core:main".parse().unwrap();
        let signer = crate::lease::LeaseSigner::from_p256_pkcs8(
            pkcs8.as_ref(),
            urn,
            crate::transport::Fingerprint([7; 32]),
        )
        .unwrap();
        let claims = Claims {
            a: "x".into(),
            n: 7,
        };
        let token = sign_claims(&signer, &claims).unwrap();
        assert!(token.starts_with(&format!("{}.", b64(HEADER_ES256.as_bytes()))));
        let vk = signer.verifying_key();
        assert_eq!(verify::<Claims>(&token, &vk).unwrap(), claims);
        // Another P-256 key: a bad signature. An Ed25519 key: a bad header.
        assert!(matches!(
            verify::<Claims>(&token, &signer.impostor().unwrap().verifying_key()),
            Err(LeaseError::BadSignature)
        ));
        assert!(matches!(
            verify::<Claims>(&token, &key(1).public_key()),
            Err(LeaseError::BadToken(_))
        ));
        // r = s = 0, and r, s out of range (over n): well-formed, refused.
        let (input, _) = token.rsplit_once('.').unwrap();
        for sig in [[0u8; 64], [0xff; 64]] {
            let bad = format!("{input}.{}", b64(&sig));
            assert!(matches!(
                verify::<Claims>(&bad, &vk),
                Err(LeaseError::BadSignature)
            ));
        }
    }

    #[test]
    fn other_headers_and_garbage_are_refused() {
        let k = key(1);
        let vk = k.public_key();
        // alg "none"
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(br#"{"a":"x","n":1}"#)
        );
        assert!(verify::<Claims>(&none, &vk).is_err());
        for garbage in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(verify::<Claims>(garbage, &vk).is_err(), "{garbage:.20}");
        }
    }
}
