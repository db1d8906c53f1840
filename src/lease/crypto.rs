//! The signature primitives under `jsonwebtoken`: a [`CryptoProvider`] of
//! our own, backed by `ring`, the library the TLS stack already uses.
//!
//! `jsonwebtoken` ships two backends, aws-lc-rs and RustCrypto; either adds
//! a second cryptography library to the build (aws-lc-sys compiles a C
//! library, RustCrypto brings `rsa` and its advisory). The crate's
//! `CryptoProvider` takes any signer and verifier, so lease tokens are made
//! and checked by the code that already checks every TLS handshake. Only
//! the two lease algorithms exist here: `EdDSA` (Ed25519) and `ES256`
//! (ECDSA P-256, fixed-length `r || s`); any other algorithm or key family
//! is an error, never a fallback.
//!
//! `ring`'s Ed25519 refuses a non-canonical `S` (`S ≥ L`); small-order keys
//! and `R` are refused before, in [`super::keys::PeerKey::verify`].

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{Error as SignatureError, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, UnparsedPublicKey,
};

/// The provider lease tokens are signed and verified with, named where it
/// is used rather than installed process-wide (any crate in the process
/// could install another default).
pub(crate) static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// A signer for `algorithm` with `key` (PKCS#8 DER).
fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    match (algorithm, key.family()) {
        (Algorithm::EdDSA, AlgorithmFamily::Ed) => {
            Ok(Box::new(Ed25519Signer(ed25519_pair(key.as_bytes())?)))
        }
        (Algorithm::ES256, AlgorithmFamily::Ec) => Ok(Box::new(Es256Signer {
            pair: p256_pair(key.as_bytes())?,
            rng: SystemRandom::new(),
        })),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

/// Key pairs parsed from PKCS#8, by their DER bytes. `jsonwebtoken` asks
/// for a signer for every token it signs, and parsing a key derives its
/// public half (a scalar multiplication) each time; a process signs with a
/// handful of keys. Emptied should it ever hold [`KEPT_PAIRS`].
#[derive(Default)]
struct Pairs {
    ed25519: HashMap<Vec<u8>, Arc<Ed25519KeyPair>>,
    p256: HashMap<Vec<u8>, Arc<EcdsaKeyPair>>,
}

/// The most key pairs [`Pairs`] keeps.
const KEPT_PAIRS: usize = 64;

static PAIRS: LazyLock<Mutex<Pairs>> = LazyLock::new(Mutex::default);

fn pairs() -> std::sync::MutexGuard<'static, Pairs> {
    PAIRS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The Ed25519 pair of `der`, PKCS#8 v1 (seed only) as well as v2: the
/// public half is derived from the seed, and the caller checks it against
/// the certificate.
fn ed25519_pair(der: &[u8]) -> Result<Arc<Ed25519KeyPair>> {
    kept(
        der,
        |p| &mut p.ed25519,
        || {
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| ErrorKind::InvalidEddsaKey.into())
        },
    )
}

/// The P-256 pair of `der` (PKCS#8).
fn p256_pair(der: &[u8]) -> Result<Arc<EcdsaKeyPair>> {
    kept(
        der,
        |p| &mut p.p256,
        || {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| ErrorKind::InvalidEcdsaKey.into())
        },
    )
}

/// The pair of `der` in the map `of` picks from [`Pairs`], parsed by
/// `parse` when it is not kept yet (outside the lock).
fn kept<T>(
    der: &[u8],
    of: fn(&mut Pairs) -> &mut HashMap<Vec<u8>, Arc<T>>,
    parse: impl FnOnce() -> Result<T>,
) -> Result<Arc<T>> {
    if let Some(pair) = of(&mut pairs()).get(der) {
        return Ok(pair.clone());
    }
    let pair = Arc::new(parse()?);
    let mut all = pairs();
    let map = of(&mut all);
    if map.len() >= KEPT_PAIRS {
        map.clear();
    }
    map.insert(der.to_vec(), pair.clone());
    Ok(pair)
}

/// A verifier for `algorithm` with `key` (the raw Ed25519 key, or the
/// uncompressed P-256 point).
fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let raw = key.try_get_as_bytes()?.to_vec();
    match (algorithm, key.family()) {
        (Algorithm::EdDSA, AlgorithmFamily::Ed) => Ok(Box::new(PublicKey {
            algorithm: Algorithm::EdDSA,
            key: UnparsedPublicKey::new(&ED25519, raw),
        })),
        (Algorithm::ES256, AlgorithmFamily::Ec) => Ok(Box::new(PublicKey {
            algorithm: Algorithm::ES256,
            key: UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, raw),
        })),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

/// Signs `EdDSA` tokens.
struct Ed25519Signer(Arc<Ed25519KeyPair>);

impl Signer<Vec<u8>> for Ed25519Signer {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, SignatureError> {
        Ok(self.0.sign(message).as_ref().to_vec())
    }
}

impl JwtSigner for Ed25519Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// Signs `ES256` tokens (randomized ECDSA, fixed-length signatures).
struct Es256Signer {
    pair: Arc<EcdsaKeyPair>,
    rng: SystemRandom,
}

impl Signer<Vec<u8>> for Es256Signer {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, SignatureError> {
        self.pair
            .sign(&self.rng, message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| SignatureError::new())
    }
}

impl JwtSigner for Es256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

/// Verifies one algorithm's tokens with one public key.
struct PublicKey {
    algorithm: Algorithm,
    key: UnparsedPublicKey<Vec<u8>>,
}

impl Verifier<Vec<u8>> for PublicKey {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), SignatureError> {
        self.key
            .verify(message, signature)
            .map_err(|_| SignatureError::new())
    }
}

impl JwtVerifier for PublicKey {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 §7.1, test 1: the seed, its public key, and the signature
    /// of the empty message.
    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn hex(text: &str) -> Vec<u8> {
        crate::hex::decode(text).expect("hex")
    }

    fn ed25519_pkcs8_v1(seed: &[u8]) -> Vec<u8> {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(seed);
        der
    }

    #[test]
    fn ed25519_signs_and_verifies_rfc_8032_test_1() {
        let key = EncodingKey::from_ed_der(&ed25519_pkcs8_v1(&hex(SEED)));
        let signature = signer(&Algorithm::EdDSA, &key)
            .expect("signer")
            .try_sign(b"")
            .expect("sign");
        assert_eq!(signature, hex(SIGNATURE));
        let verifying =
            verifier(&Algorithm::EdDSA, &DecodingKey::from_ed_der(&hex(PUBLIC))).expect("verifier");
        assert!(verifying.verify(b"", &signature).is_ok());
        assert!(verifying.verify(b"x", &signature).is_err());
    }

    #[test]
    fn es256_signs_and_verifies_and_refuses_another_message() {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("pair");
        let point = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        let signature = signer(&Algorithm::ES256, &EncodingKey::from_ec_der(pkcs8.as_ref()))
            .expect("signer")
            .try_sign(b"message")
            .expect("sign");
        assert_eq!(signature.len(), 64);
        let verifying =
            verifier(&Algorithm::ES256, &DecodingKey::from_ec_der(&point)).expect("verifier");
        assert!(verifying.verify(b"message", &signature).is_ok());
        assert!(verifying.verify(b"other", &signature).is_err());
    }

    #[test]
    fn an_algorithm_outside_the_lease_protocol_or_a_mismatched_key_is_refused() {
        let ed = EncodingKey::from_ed_der(&ed25519_pkcs8_v1(&hex(SEED)));
        for algorithm in [Algorithm::ES256, Algorithm::HS256, Algorithm::RS256] {
            assert!(signer(&algorithm, &ed).is_err(), "{algorithm:?}");
        }
        let public = DecodingKey::from_ed_der(&hex(PUBLIC));
        for algorithm in [Algorithm::ES256, Algorithm::HS256, Algorithm::PS256] {
            assert!(verifier(&algorithm, &public).is_err(), "{algorithm:?}");
        }
        assert!(signer(&Algorithm::EdDSA, &EncodingKey::from_secret(b"k")).is_err());
    }
}
