//! Which key a minted certificate carries: what `--key-type` chooses.

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SignatureAlgorithm};

use crate::error::CertsError;

/// The key algorithm of a certificate (CA or leaf) minted here.
///
/// Both are lease keys too (PROTOCOL.md §1): a party signs its leases with
/// its certificate's key, `EdDSA` for Ed25519 and `ES256` for P-256.
///
/// # Default
///
/// [`KeyType::Ed25519`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyType {
    /// Ed25519 (RFC 8410), the default everywhere.
    #[default]
    Ed25519,
    /// ECDSA on NIST P-256 with SHA-256, for gRPC stacks built on BoringSSL
    /// (Python `grpcio`, C++ gRPC), which verify no Ed25519 certificate.
    P256,
}

impl KeyType {
    /// Every key type, in the order the CLI lists them.
    pub const ALL: [KeyType; 2] = [KeyType::Ed25519, KeyType::P256];

    /// The signature algorithm of a key of this type.
    pub(crate) fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::Ed25519 => &PKCS_ED25519,
            KeyType::P256 => &PKCS_ECDSA_P256_SHA256,
        }
    }

    /// The key type that signs with `algorithm`, if it is one of these.
    pub(crate) fn of_algorithm(algorithm: &SignatureAlgorithm) -> Option<KeyType> {
        Self::ALL
            .into_iter()
            .find(|key_type| key_type.algorithm() == algorithm)
    }

    /// A fresh key of this type.
    pub(crate) fn generate(self) -> Result<KeyPair, rcgen::Error> {
        KeyPair::generate_for(self.algorithm())
    }
}

anima_protocol::str_vocabulary! {
    /// The name `--key-type` takes: `ed25519` or `p256`.
    pub fn KeyType::as_str {
        Ed25519 => "ed25519",
        P256 => "p256",
    }
    /// Parses `ed25519` or `p256` (what [`KeyType::as_str`] prints).
    fn from_str(s) -> Result<Self, CertsError> else {
        CertsError::UnknownKeyType {
            given: s.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_anything_else_is_refused_with_the_choices() {
        for key_type in KeyType::ALL {
            assert_eq!(key_type.as_str().parse::<KeyType>().unwrap(), key_type);
            assert_eq!(key_type.to_string(), key_type.as_str());
        }
        assert_eq!(KeyType::default(), KeyType::Ed25519);
        for bad in ["rsa", "P256", "p-256", "", "ed25519 "] {
            let err = bad.parse::<KeyType>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("unknown key type {bad:?} (expected ed25519 or p256)")
            );
        }
    }

    #[test]
    fn each_type_generates_its_algorithm() {
        for key_type in KeyType::ALL {
            let key = key_type.generate().unwrap();
            assert_eq!(key.algorithm(), key_type.algorithm());
            assert_eq!(KeyType::of_algorithm(key.algorithm()), Some(key_type));
        }
        assert_eq!(KeyType::of_algorithm(&rcgen::PKCS_ECDSA_P384_SHA384), None);
    }
}
