//! The keys a lease is made with: this side's certificate key (to sign) and
//! the peer's certificate key and fingerprint (to verify and to bind).

use std::fmt;
use std::time::SystemTime;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::error::LeaseError;
use crate::identity::Urn;
use crate::transport::{
    ConnectionId, Fingerprint, PeerInfo, TlsIdentity, ed25519_public_key, not_after,
};

/// Signs this side's lease tokens with the key of its own TLS certificate,
/// so the peer verifies them with what the handshake already proved.
pub struct LeaseSigner {
    key: SigningKey,
    urn: Urn,
    fingerprint: Fingerprint,
    not_after: Option<SystemTime>,
}

impl LeaseSigner {
    /// Uses `identity`'s certificate key, which must be Ed25519.
    pub fn from_identity(identity: &TlsIdentity) -> Result<Self, LeaseError> {
        let key =
            SigningKey::from_pkcs8_der(identity.private_key().secret_der()).map_err(|_| {
                LeaseError::Key("lease signing needs an Ed25519 certificate key (PKCS#8)".into())
            })?;
        let cert_key = ed25519_public_key(identity.certificate())
            .ok_or_else(|| LeaseError::Key("the certificate's key is not Ed25519".into()))?;
        if key.verifying_key().to_bytes() != cert_key {
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

    /// Builds a signer from raw parts (test vectors; PROTOCOL.md examples).
    pub fn from_parts(seed: [u8; 32], urn: Urn, fingerprint: Fingerprint) -> Self {
        LeaseSigner {
            key: SigningKey::from_bytes(&seed),
            urn,
            fingerprint,
            not_after: None,
        }
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
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub(crate) fn key(&self) -> &SigningKey {
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
    pub key: VerifyingKey,
    /// When the peer's certificate expires (a lease never outlives it).
    pub not_after: Option<SystemTime>,
    /// The connection the lease is bound to.
    pub connection: ConnectionId,
}

impl PeerBinding {
    /// Reads what the lease layer needs from an authenticated connection.
    pub fn from_peer(peer: &PeerInfo) -> Result<Self, LeaseError> {
        let raw = ed25519_public_key(peer.certificate())
            .ok_or_else(|| LeaseError::Key("the peer's certificate key is not Ed25519".into()))?;
        let key = VerifyingKey::from_bytes(&raw)
            .map_err(|_| LeaseError::Key("the peer's Ed25519 key is invalid".into()))?;
        Ok(PeerBinding {
            urn: peer.urn().clone(),
            fingerprint: peer.fingerprint(),
            key,
            not_after: not_after(peer.certificate()),
            connection: peer.connection(),
        })
    }
}
