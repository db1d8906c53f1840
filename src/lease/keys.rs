//! The keys a lease is made with: this side's certificate key (to sign) and
//! the peer's certificate key and fingerprint (to verify and to bind).

use std::fmt;
use std::time::SystemTime;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};

use super::error::LeaseError;
use super::jws::{HEADER, HEADER_ES256};
use crate::identity::Urn;
use crate::transport::{
    CertPublicKey, ConnectionId, Fingerprint, PeerInfo, TlsIdentity, not_after, public_key,
};

/// A certificate's private key, as lease tokens are signed with it.
// One per identity, long-lived: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum SignKey {
    /// Ed25519: tokens are `EdDSA`.
    Ed25519(SigningKey),
    /// ECDSA P-256: tokens are `ES256`.
    P256(Box<EcdsaKeyPair>),
}

impl SignKey {
    pub(crate) fn header(&self) -> &'static str {
        match self {
            SignKey::Ed25519(_) => HEADER,
            SignKey::P256(_) => HEADER_ES256,
        }
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Result<[u8; 64], LeaseError> {
        match self {
            SignKey::Ed25519(key) => Ok(key.sign(message).to_bytes()),
            SignKey::P256(key) => key
                .sign(&SystemRandom::new(), message)
                .ok()
                .and_then(|s| s.as_ref().try_into().ok())
                .ok_or_else(|| LeaseError::Key("ECDSA signing failed".into())),
        }
    }

    pub(crate) fn public_key(&self) -> PeerKey {
        match self {
            SignKey::Ed25519(key) => PeerKey::Ed25519(key.verifying_key()),
            SignKey::P256(key) => {
                let mut point = [0u8; 65];
                point.copy_from_slice(key.public_key().as_ref());
                PeerKey::P256(point)
            }
        }
    }
}

/// A peer certificate's public key, which verifies the peer's tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerKey {
    /// Ed25519 (RFC 8410): the peer's tokens are `EdDSA`, verified strictly.
    Ed25519(VerifyingKey),
    /// ECDSA P-256: the uncompressed point (SEC 1); tokens are `ES256`.
    P256([u8; 65]),
}

impl PeerKey {
    /// Reads the key of a certificate: Ed25519 or P-256, nothing else.
    pub fn of_certificate(
        cert: &rustls::pki_types::CertificateDer<'_>,
    ) -> Result<Self, LeaseError> {
        match public_key(cert) {
            Some(CertPublicKey::Ed25519(raw)) => VerifyingKey::from_bytes(&raw)
                .map(PeerKey::Ed25519)
                .map_err(|_| LeaseError::Key("the certificate's Ed25519 key is invalid".into())),
            Some(CertPublicKey::P256(point)) => Ok(PeerKey::P256(point)),
            None => Err(LeaseError::Key(
                "lease keys are Ed25519 or ECDSA P-256; this certificate's is neither".into(),
            )),
        }
    }

    /// The JWS header this key's tokens carry.
    pub fn header(&self) -> &'static str {
        match self {
            PeerKey::Ed25519(_) => HEADER,
            PeerKey::P256(_) => HEADER_ES256,
        }
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), LeaseError> {
        match self {
            PeerKey::Ed25519(key) => key
                .verify_strict(message, &Signature::from_bytes(signature))
                .map_err(|_| LeaseError::BadSignature),
            PeerKey::P256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .map_err(|_| LeaseError::BadSignature),
        }
    }
}

impl From<VerifyingKey> for PeerKey {
    fn from(key: VerifyingKey) -> Self {
        PeerKey::Ed25519(key)
    }
}

/// Signs this side's lease tokens with the key of its own TLS certificate,
/// so the peer verifies them with what the handshake already proved.
pub struct LeaseSigner {
    key: SignKey,
    urn: Urn,
    fingerprint: Fingerprint,
    not_after: Option<SystemTime>,
}

impl LeaseSigner {
    /// Uses `identity`'s certificate key, which must be Ed25519 (tokens are
    /// `EdDSA`) or ECDSA P-256 (tokens are `ES256`).
    pub fn from_identity(identity: &TlsIdentity) -> Result<Self, LeaseError> {
        let der = identity.private_key().secret_der();
        let cert_key = PeerKey::of_certificate(identity.certificate())?;
        let key = match cert_key {
            PeerKey::Ed25519(_) => {
                SignKey::Ed25519(SigningKey::from_pkcs8_der(der).map_err(|_| {
                    LeaseError::Key(
                        "the certificate is Ed25519 but its key is not Ed25519 PKCS#8".into(),
                    )
                })?)
            }
            PeerKey::P256(_) => SignKey::P256(Box::new(
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .map_err(|_| {
                    LeaseError::Key(
                        "the certificate is P-256 but its key is not a P-256 PKCS#8 key".into(),
                    )
                })?,
            )),
        };
        if key.public_key() != cert_key {
            return Err(LeaseError::Key(
                "the private key does not match the certificate".into(),
            ));
        }
        Ok(LeaseSigner {
            key,
            urn: identity.urn().clone(),
            fingerprint: identity.fingerprint(),
            not_after: not_after(identity.certificate()),
        })
    }

    /// Builds an Ed25519 signer from raw parts (test vectors; PROTOCOL.md
    /// examples).
    pub fn from_parts(seed: [u8; 32], urn: Urn, fingerprint: Fingerprint) -> Self {
        LeaseSigner {
            key: SignKey::Ed25519(SigningKey::from_bytes(&seed)),
            urn,
            fingerprint,
            not_after: None,
        }
    }

    /// A signer claiming this one's identity and certificate with a fresh
    /// random key of the same algorithm: its tokens have the right form and
    /// a signature that does not verify (`BAD_SIGNATURE`). For tools that
    /// test a peer's signature check (`anima conformance`).
    pub fn impostor(&self) -> Result<Self, LeaseError> {
        let rng = SystemRandom::new();
        let key = match &self.key {
            SignKey::Ed25519(_) => {
                let mut seed = zeroize::Zeroizing::new([0u8; 32]);
                ring::rand::SecureRandom::fill(&rng, seed.as_mut())
                    .map_err(|_| LeaseError::Key("no randomness available".into()))?;
                SignKey::Ed25519(SigningKey::from_bytes(&seed))
            }
            SignKey::P256(_) => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| LeaseError::Key("cannot generate a P-256 key".into()))?;
                let key = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                )
                .map_err(|_| LeaseError::Key("cannot generate a P-256 key".into()))?;
                SignKey::P256(Box::new(key))
            }
        };
        Ok(LeaseSigner {
            key,
            urn: self.urn.clone(),
            fingerprint: self.fingerprint,
            not_after: self.not_after,
        })
    }

    /// Builds an ECDSA P-256 signer (`ES256` tokens) from a PKCS#8 key.
    pub fn from_p256_pkcs8(
        pkcs8: &[u8],
        urn: Urn,
        fingerprint: Fingerprint,
    ) -> Result<Self, LeaseError> {
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| LeaseError::Key("not a P-256 PKCS#8 key".into()))?;
        Ok(LeaseSigner {
            key: SignKey::P256(Box::new(key)),
            urn,
            fingerprint,
            not_after: None,
        })
    }

    /// This side's identity.
    pub fn urn(&self) -> &Urn {
        &self.urn
    }

    /// This side's certificate fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The public half, as the peer sees it in this side's certificate.
    pub fn verifying_key(&self) -> PeerKey {
        self.key.public_key()
    }

    pub(crate) fn key(&self) -> &SignKey {
        &self.key
    }

    pub(crate) fn not_after(&self) -> Option<SystemTime> {
        self.not_after
    }
}

impl fmt::Debug for LeaseSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseSigner")
            .field("urn", &self.urn)
            .field("fingerprint", &self.fingerprint)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The authenticated peer of one connection, as the lease layer needs it.
#[derive(Clone, Debug)]
pub struct PeerBinding {
    /// The peer's identity (from mTLS).
    pub urn: Urn,
    /// The peer's certificate fingerprint.
    pub fingerprint: Fingerprint,
    /// The peer's certificate key, which signs its tokens.
    pub key: PeerKey,
    /// When the peer's certificate expires (a lease never outlives it).
    pub not_after: Option<SystemTime>,
    /// The connection the lease is bound to.
    pub connection: ConnectionId,
}

impl PeerBinding {
    /// Reads what the lease layer needs from an authenticated connection.
    pub fn from_peer(peer: &PeerInfo) -> Result<Self, LeaseError> {
        let key = PeerKey::of_certificate(peer.certificate())?;
        Ok(PeerBinding {
            urn: peer.urn().clone(),
            fingerprint: peer.fingerprint(),
            key,
            not_after: not_after(peer.certificate()),
            connection: peer.connection(),
        })
    }
}
