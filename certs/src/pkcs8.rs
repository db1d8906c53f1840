//! Private keys as PKCS#8 v1 (RFC 5208; RFC 8410 §7 for Ed25519), the plain
//! form every stack reads.
//!
//! rcgen (through ring) writes Ed25519 keys as PKCS#8 v2 (RFC 5958) with the
//! public key attached. OpenSSL 3.0 (`openssl pkey`), Python's
//! `cryptography` and BoringSSL (so Python's `grpcio` and other C-core gRPC
//! stacks) refuse that form as "unsupported", so every Ed25519 key written
//! here — CA and leaves — is v1, which all of them and rustls, Go and
//! ed25519-dalek read. ring's P-256 keys are already v1 (the public key sits
//! inside the SEC 1 `ECPrivateKey`, where every stack expects it).
//!
//! Loading stays lenient: rustls, rcgen and ed25519-dalek read v1 and v2
//! alike, so key files written before this change keep working.

use base64::Engine as _;

/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }`
const V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The same key as PKCS#8 v1. Input that is not an Ed25519 PKCS#8 key
/// (v1 or v2) is returned unchanged.
pub(crate) fn ed25519_v1(der: &[u8]) -> Vec<u8> {
    // Both versions share the layout up to the seed, at bytes 16..48; only
    // the outer length and the version differ.
    let looks_ed25519 = der.len() >= 48
        && der[0] == 0x30
        && der[2..5] == [0x02, 0x01, 0x01]
        && der[5..16] == V1_PREFIX[5..16];
    if !looks_ed25519 {
        return der.to_vec();
    }
    let mut out = V1_PREFIX.to_vec();
    out.extend_from_slice(&der[16..48]);
    out
}

/// `key` as the PKCS#8 DER this crate writes: v1 for every key type.
pub(crate) fn private_key_der(key: &rcgen::KeyPair) -> Vec<u8> {
    ed25519_v1(key.serialized_der())
}

/// PEM with 64-column lines.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_becomes_v1_with_the_same_seed_and_loads_everywhere() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let v2 = key.serialize_der();
        let v1 = ed25519_v1(&v2);
        assert_eq!(v1.len(), 48);
        assert_eq!(&v1[16..], &v2[16..48]);
        // rustls (ring) and ed25519-dalek read it, to the same public key.
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(v1.clone().into());
        let signing = rustls::crypto::ring::sign::any_eddsa_type(&match der {
            rustls::pki_types::PrivateKeyDer::Pkcs8(p) => p,
            _ => unreachable!(),
        })
        .unwrap();
        assert_eq!(signing.algorithm(), rustls::SignatureAlgorithm::ED25519);
        assert_eq!(ed25519_v1(&v1), v1, "idempotent");
        assert!(pem("PRIVATE KEY", &v1).starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }
}
