//! Reading what a certificate says: its identity URN, its fingerprint, its key.

use std::fmt;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::Urn;

/// The OID of Ed25519 keys (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";
const EC_PUBLIC_KEY_OID: &str = "1.2.840.10045.2.1";
const P256_CURVE_OID: &str = "1.2.840.10045.3.1.7";

/// SHA-256 of a certificate's DER encoding, as RFC 8705 binds tokens to certificates.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `der`.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        crate::hex::lower(&self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// Why a certificate does not carry a usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertIdentityError {
    /// The DER does not parse as an X.509 certificate.
    #[error("certificate does not parse: {0}")]
    Malformed(String),
    /// No `urn:anima:` URI SAN.
    #[error("certificate carries no urn:anima identity in its URI SAN")]
    NoUrn,
    /// More than one `urn:anima:` URI SAN.
    #[error("certificate carries {0} urn:anima identities; exactly one is allowed")]
    SeveralUrns(usize),
    /// A `urn:anima:` URI SAN that breaks the naming rules.
    #[error("certificate identity is invalid: {0}")]
    InvalidUrn(#[from] crate::identity::IdentityError),
}

/// Extracts the single Anima identity from a certificate's URI SANs.
///
/// URI SANs that are not `urn:anima:` URNs are ignored; zero or several
/// Anima URNs are an error, as is a malformed one.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Urn, CertIdentityError> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| CertIdentityError::Malformed(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| CertIdentityError::Malformed(e.to_string()))?;
    let urns: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("urn:anima:") => Some(*uri),
            _ => None,
        })
        .collect();
    match urns.as_slice() {
        [] => Err(CertIdentityError::NoUrn),
        [one] => Ok(Urn::parse(one)?),
        many => Err(CertIdentityError::SeveralUrns(many.len())),
    }
}

/// A certificate's public key, when it is one leases can be signed with.
///
/// Leases are signed with the key of the signer's TLS certificate, so the
/// peer verifies them with what the handshake already proved. P-256 keys
/// exist for gRPC stacks built on BoringSSL, which do not accept Ed25519
/// client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertPublicKey {
    /// The raw 32-byte Ed25519 key.
    Ed25519([u8; 32]),
    /// The 65-byte uncompressed ECDSA P-256 point (SEC 1).
    P256([u8; 65]),
}

/// The certificate's public key if it is Ed25519 or P-256 (one parse).
pub fn public_key(cert: &CertificateDer<'_>) -> Option<CertPublicKey> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let spki = parsed.public_key();
    let key = spki.subject_public_key.data.as_ref();
    match spki.algorithm.algorithm.to_id_string().as_str() {
        ED25519_OID => key.try_into().ok().map(CertPublicKey::Ed25519),
        EC_PUBLIC_KEY_OID => {
            let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
            if curve.to_id_string() != P256_CURVE_OID {
                return None;
            }
            let point: [u8; 65] = key.try_into().ok()?;
            (point[0] == 0x04).then_some(CertPublicKey::P256(point))
        }
        _ => None,
    }
}

/// When a certificate stops being valid, if it parses.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let secs = parsed.validity().not_after.timestamp();
    let secs = u64::try_from(secs).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}
