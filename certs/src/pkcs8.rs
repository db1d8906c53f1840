//! Ed25519 private keys as PKCS#8 v1 (RFC 8410 §7, the plain form).
//!
//! rcgen (through ring) writes PKCS#8 v2 with the public key attached.
//! BoringSSL — and so Python's `grpcio` and other C-core gRPC stacks —
//! refuses that form, so leaf keys are written as v1, which every stack
//! (rustls, OpenSSL, BoringSSL, Go, ed25519-dalek) reads.

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
