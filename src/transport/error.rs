//! Transport errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cert::CertIdentityError;
use super::socket::Address;
use crate::identity::Urn;

/// Why a TLS configuration could not be built or a connection not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file is malformed or holds no item of the expected kind.
    #[error("malformed or missing PEM {what}: {detail}")]
    Pem {
        /// What was expected.
        what: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// Context for another error: the file it came from.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: Box<TransportError>,
    },
    /// A certificate chain or trust root with no certificate.
    #[error("no certificate found")]
    EmptyChain,
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// The certificate's identity is missing or malformed.
    #[error(transparent)]
    Identity(#[from] CertIdentityError),
    /// The peer's identity is valid but not the one required.
    #[error("peer identity {got} is not the one required ({wanted})")]
    UnexpectedPeer {
        /// What the peer presented.
        got: Urn,
        /// What the policy accepts.
        wanted: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(String),
    /// The TCP (or Unix socket) connection failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: Address,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The address could not be resolved.
    #[error("cannot resolve {addr:?}: {detail}")]
    Resolve {
        /// The address given.
        addr: String,
        /// Why.
        detail: String,
    },
    /// The TLS handshake failed (the peer was refused, or refused us).
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer address.
        addr: Address,
        /// The TLS or I/O error.
        source: std::io::Error,
    },
    /// Connecting or the handshake took too long.
    #[error("{what} with {addr} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The peer address.
        addr: Address,
        /// The limit.
        after: Duration,
    },
    /// The peer did not negotiate HTTP/2.
    #[error("peer {0} did not negotiate ALPN h2")]
    NoAlpn(Address),
    /// The HTTP/2 connection could not be set up on the TLS connection.
    #[error("HTTP/2 handshake: {0}")]
    Http2(#[source] hyper::Error),
}

impl TransportError {
    pub(crate) fn pem(what: &'static str, e: impl std::fmt::Display) -> Self {
        TransportError::Pem {
            what,
            detail: e.to_string(),
        }
    }

    pub(crate) fn at(self, path: &Path) -> Self {
        match self {
            e @ (TransportError::Read { .. } | TransportError::InFile { .. }) => e,
            e => TransportError::InFile {
                path: path.to_owned(),
                source: Box::new(e),
            },
        }
    }
}
