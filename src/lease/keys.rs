//! The keys a lease is made with: this side's certificate key (to sign) and
//! the peer's certificate key and fingerprint (to verify and to bind).

use std::fmt;
use std::time::SystemTime;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

use super::error::LeaseError;
use super::jws::{HEADER, HEADER_ES256};
use crate::identity::Urn;
use crate::transport::{
    CertPublicKey, ConnectionId, Fingerprint, PeerInfo, TlsIdentity, not_after, public_key,
};

/// The `jsonwebtoken` backend that signs and verifies lease tokens
/// (`ring`, [`super::crypto`]), named here rather than taken from the
/// process-wide default, which any crate in the process could install.
static CRYPTO: &jsonwebtoken::crypto::CryptoProvider = &super::crypto::PROVIDER;

/// The length of every lease token signature: Ed25519's, and ES256's fixed
/// `r || s` form (RFC 7518 §3.4).
pub(crate) const SIGNATURE_LEN: usize = 64;

/// A certificate's private key, as lease tokens are signed with it.
pub(crate) struct SignKey {
    /// The private key as PKCS#8 DER, as `jsonwebtoken` signs with it
    /// (zeroized on drop). Ed25519 keys are held as PKCS#8 v1 of the seed.
    private: EncodingKey,
    /// Its public half, derived when the key was read: it decides the
    /// algorithm (`EdDSA` or `ES256`) and the header.
    public: PeerKey,
}

impl SignKey {
    /// An Ed25519 key from its 32-byte seed.
    pub(crate) fn ed25519(seed: &[u8; 32]) -> Self {
        let public = PeerKey::Ed25519(SigningKey::from_bytes(seed).verifying_key());
        let mut pkcs8 = zeroize::Zeroizing::new([0u8; ED25519_PKCS8_V1_PREFIX.len() + 32]);
        pkcs8[..ED25519_PKCS8_V1_PREFIX.len()].copy_from_slice(&ED25519_PKCS8_V1_PREFIX);
        pkcs8[ED25519_PKCS8_V1_PREFIX.len()..].copy_from_slice(seed);
        SignKey {
            private: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public,
        }
    }

    /// A P-256 key from PKCS#8 DER, which `ring` checks and derives the
    /// public point from.
    fn p256(pkcs8: &[u8]) -> Option<Self> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .ok()?;
        let point: [u8; 65] = pair.public_key().as_ref().try_into().ok()?;
        Some(SignKey {
            private: EncodingKey::from_ec_der(pkcs8),
            public: PeerKey::P256(point),
        })
    }

    /// Signs a test message and verifies it with the public half, so a key
    /// the signing backend reads otherwise than `ring`/`ed25519-dalek` (or
    /// refuses) fails when it is loaded, not in the peer's hands.
    fn checked(self) -> Result<Self, LeaseError> {
        const PROBE: &[u8] = b"anima lease key check";
        let signature = self.sign(PROBE)?;
        self.public
            .verify(PROBE, &signature)
            .map_err(|_| LeaseError::Key("the signing key does not match its public key".into()))?;
        Ok(self)
    }

    pub(crate) fn header(&self) -> &'static str {
        self.public.header()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], LeaseError> {
        let failed = || LeaseError::Key("lease token signing failed".into());
        // `JwtSigner` is neither `Send` nor `Sync`: one per signature.
        let signer = (CRYPTO.signer_factory)(&self.public.algorithm(), &self.private)
            .map_err(|_| failed())?;
        signer
            .try_sign(message)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(failed)
    }

    pub(crate) fn public_key(&self) -> PeerKey {
        self.public.clone()
    }
}

/// PKCS#8 v1 (RFC 8410 §7) of an Ed25519 private key, up to its 32-byte seed.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The canonical encodings of the eight points of small order of
/// edwards25519 (the torsion subgroup), which `verify_strict` refuses as an
/// Ed25519 signature's `R`. Only canonical encodings matter: the backend
/// compares `R` byte for byte with the canonical encoding of `[S]B - [k]A`.
const SMALL_ORDER_POINTS: [[u8; 32]; 8] = {
    const fn hex(text: &str) -> [u8; 32] {
        const fn nibble(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => panic!("not lowercase hex"),
            }
        }
        let text = text.as_bytes();
        assert!(text.len() == 64);
        let mut out = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            out[i] = nibble(text[2 * i]) << 4 | nibble(text[2 * i + 1]);
            i += 1;
        }
        out
    }
    [
        // The identity (0, 1).
        hex("0100000000000000000000000000000000000000000000000000000000000000"),
        // Order 2: (0, -1).
        hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        // Order 4: (±sqrt(-1), 0).
        hex("0000000000000000000000000000000000000000000000000000000000000000"),
        hex("0000000000000000000000000000000000000000000000000000000000000080"),
        // Order 8.
        hex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
        hex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
        hex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
        hex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    ]
};

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

    /// The one algorithm this key's tokens are signed with: chosen by the
    /// certificate key, never by a token.
    fn algorithm(&self) -> Algorithm {
        match self {
            PeerKey::Ed25519(_) => Algorithm::EdDSA,
            PeerKey::P256(_) => Algorithm::ES256,
        }
    }

    /// Verifies `signature` over `message` (a token's `header "." payload`).
    ///
    /// Ed25519 is verified strictly (PROTOCOL.md §3): the backend (`ring`)
    /// refuses a non-canonical `S`, and small-order keys and `R`
    /// are refused here first, as `ed25519-dalek`'s `verify_strict` does.
    pub(crate) fn verify(
        &self,
        message: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<(), LeaseError> {
        let key = match self {
            PeerKey::Ed25519(key) => {
                if key.is_weak() || SMALL_ORDER_POINTS.iter().any(|p| signature[..32] == p[..]) {
                    return Err(LeaseError::BadSignature);
                }
                // Exactly the 32-byte key (a shorter one panics in some
                // backends).
                DecodingKey::from_ed_der(key.as_bytes())
            }
            // An uncompressed SEC 1 point only, as `ring` took it.
            PeerKey::P256(point) if point[0] == 0x04 => DecodingKey::from_ec_der(point),
            PeerKey::P256(_) => return Err(LeaseError::BadSignature),
        };
        let verifier = (CRYPTO.verifier_factory)(&self.algorithm(), &key)
            .map_err(|_| LeaseError::BadSignature)?;
        verifier
            .verify(message, &signature.to_vec())
            .map_err(|_| LeaseError::BadSignature)
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
            PeerKey::Ed25519(_) => SigningKey::from_pkcs8_der(der)
                .map(|key| SignKey::ed25519(&zeroize::Zeroizing::new(key.to_bytes())))
                .map_err(|_| {
                    LeaseError::Key(
                        "the certificate is Ed25519 but its key is not Ed25519 PKCS#8".into(),
                    )
                })?,
            PeerKey::P256(_) => SignKey::p256(der).ok_or_else(|| {
                LeaseError::Key(
                    "the certificate is P-256 but its key is not a P-256 PKCS#8 key".into(),
                )
            })?,
        };
        if key.public_key() != cert_key {
            return Err(LeaseError::Key(
                "the private key does not match the certificate".into(),
            ));
        }
        Ok(LeaseSigner {
            key: key.checked()?,
            urn: identity.urn().clone(),
            fingerprint: identity.fingerprint(),
            not_after: not_after(identity.certificate()),
        })
    }

    /// Builds an Ed25519 signer from raw parts (test vectors; PROTOCOL.md
    /// examples).
    pub fn from_parts(seed: [u8; 32], urn: Urn, fingerprint: Fingerprint) -> Self {
        LeaseSigner {
            key: SignKey::ed25519(&seed),
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
        let key = match &self.key.public {
            PeerKey::Ed25519(_) => {
                let mut seed = zeroize::Zeroizing::new([0u8; 32]);
                ring::rand::SecureRandom::fill(&rng, seed.as_mut())
                    .map_err(|_| LeaseError::Key("no randomness available".into()))?;
                SignKey::ed25519(&seed)
            }
            PeerKey::P256(_) => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| LeaseError::Key("cannot generate a P-256 key".into()))?;
                SignKey::p256(pkcs8.as_ref())
                    .ok_or_else(|| LeaseError::Key("cannot generate a P-256 key".into()))?
                    .checked()?
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
        let key = SignKey::p256(pkcs8)
            .ok_or_else(|| LeaseError::Key("not a P-256 PKCS#8 key".into()))?
            .checked()?;
        Ok(LeaseSigner {
            key,
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

    /// When this side's certificate expires (`None` for signers built
    /// from raw parts): no lease it signs outlives it.
    pub fn not_after(&self) -> Option<SystemTime> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_order_table_is_the_whole_torsion_subgroup() {
        // Eight distinct canonical encodings of points of small order: the
        // torsion subgroup has exactly eight points, so these are all.
        for (i, bytes) in SMALL_ORDER_POINTS.iter().enumerate() {
            let point = VerifyingKey::from_bytes(bytes).unwrap();
            assert!(point.is_weak(), "{i}");
            assert_eq!(point.to_edwards().compress().to_bytes(), *bytes, "{i}");
            assert!(!SMALL_ORDER_POINTS[..i].contains(bytes), "{i}");
        }
        // An honest key and an honest `R` are not in it.
        let key = SignKey::ed25519(&[1; 32]);
        let PeerKey::Ed25519(public) = key.public_key() else {
            unreachable!()
        };
        assert!(!public.is_weak());
        let signature = key.sign(b"m").unwrap();
        assert!(!SMALL_ORDER_POINTS.iter().any(|p| signature[..32] == p[..]));
    }

    #[test]
    fn ed25519_keys_are_held_as_pkcs8_v1_of_the_seed() {
        let key = SignKey::ed25519(&[5; 32]);
        let back = SigningKey::from_pkcs8_der(key.private.as_bytes()).unwrap();
        assert_eq!(back.to_bytes(), [5; 32]);
        assert_eq!(
            key.public_key(),
            PeerKey::Ed25519(SigningKey::from_bytes(&[5; 32]).verifying_key())
        );
        let key = key.checked().unwrap();
        assert_eq!(key.header(), HEADER);
    }

    #[test]
    fn p256_keys_load_check_and_refuse_garbage() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = SignKey::p256(pkcs8.as_ref()).unwrap().checked().unwrap();
        assert_eq!(key.header(), HEADER_ES256);
        let signature = key.sign(b"m").unwrap();
        key.public_key().verify(b"m", &signature).unwrap();
        assert_eq!(
            key.public_key().verify(b"n", &signature),
            Err(LeaseError::BadSignature)
        );
        // A P-256 key is no Ed25519 key, and garbage is no key.
        assert!(SignKey::p256(&[0; 40]).is_none());
        assert!(SignKey::p256(&[]).is_none());
        let ed = SignKey::ed25519(&[5; 32]);
        assert!(SignKey::p256(ed.private.as_bytes()).is_none());
        // A public key of the wrong kind fails the load-time check.
        let mismatched = SignKey {
            private: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public: ed.public_key(),
        };
        assert!(matches!(mismatched.checked(), Err(LeaseError::Key(_))));
        let mismatched = SignKey {
            private: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public: SignKey::p256(
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .unwrap()
                    .as_ref(),
            )
            .unwrap()
            .public_key(),
        };
        assert!(matches!(mismatched.checked(), Err(LeaseError::Key(_))));
    }

    #[test]
    fn malformed_public_points_are_bad_signatures_not_panics() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = SignKey::p256(pkcs8.as_ref()).unwrap();
        let signature = key.sign(b"m").unwrap();
        let PeerKey::P256(point) = key.public_key() else {
            unreachable!()
        };
        for first in [0x00, 0x02, 0x03, 0x06, 0x07, 0x30] {
            let mut bad = point;
            bad[0] = first;
            assert_eq!(
                PeerKey::P256(bad).verify(b"m", &signature),
                Err(LeaseError::BadSignature),
                "{first:#x}"
            );
        }
        for bad in [[0u8; 65], [0xff; 65]] {
            assert_eq!(
                PeerKey::P256(bad).verify(b"m", &signature),
                Err(LeaseError::BadSignature)
            );
        }
    }
}
