//! Why a connection was refused, in words an operator can act on.

use std::fmt;
use std::net::SocketAddr;

use rustls::{CertificateError, InvalidMessage};

use super::cert::CertIdentityError;
use super::error::TransportError;
use crate::identity::Urn;

/// A connection refused during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Who connected.
    pub peer: SocketAddr,
    /// Why it was refused.
    pub reason: RefusalReason,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The client did not speak TLS (e.g. plaintext HTTP/2).
    Plaintext,
    /// The client presented no certificate.
    NoClientCertificate,
    /// The certificate does not chain to the trust root (unknown issuer, or
    /// an issuer with the trusted CA's name but another key).
    UnknownIssuer,
    /// The certificate has expired.
    Expired,
    /// The certificate is not valid yet.
    NotYetValid,
    /// The certificate carries no `urn:anima:` identity.
    NoIdentity,
    /// The certificate carries several `urn:anima:` identities.
    SeveralIdentities,
    /// The certificate's identity is malformed.
    InvalidIdentity(String),
    /// A valid identity that this listener does not accept.
    UnexpectedIdentity(Urn),
    /// The client offered nothing this server accepts (e.g. only TLS 1.2).
    Incompatible(String),
    /// The client aborted the handshake with an alert (it refused us).
    PeerAlert(String),
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The client did not negotiate HTTP/2.
    NoAlpn,
    /// Some other TLS failure.
    Tls(String),
    /// An I/O failure (e.g. the client closed the socket mid-handshake).
    Io(String),
}

impl RefusalReason {
    /// Classifies a handshake error from tokio-rustls.
    pub(crate) fn from_io(e: &std::io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Self::from_tls(tls),
            None => RefusalReason::Io(e.to_string()),
        }
    }

    fn from_tls(e: &rustls::Error) -> Self {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(InvalidMessage::InvalidContentType)
            | E::InvalidMessage(InvalidMessage::InvalidEmptyPayload) => RefusalReason::Plaintext,
            E::NoCertificatesPresented => RefusalReason::NoClientCertificate,
            E::InvalidCertificate(cert) => match cert {
                // Another CA, whether or not it reuses the trusted CA's name
                // (a same-named impostor fails on the signature).
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    RefusalReason::UnknownIssuer
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    RefusalReason::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    RefusalReason::NotYetValid
                }
                CertificateError::Other(other) => match other.0.downcast_ref::<TransportError>() {
                    Some(TransportError::Identity(id)) => Self::from_identity(id),
                    Some(TransportError::UnexpectedPeer { got, .. }) => {
                        RefusalReason::UnexpectedIdentity(got.clone())
                    }
                    _ => RefusalReason::Tls(e.to_string()),
                },
                _ => RefusalReason::Tls(e.to_string()),
            },
            E::PeerIncompatible(_) => RefusalReason::Incompatible(e.to_string()),
            E::AlertReceived(_) => RefusalReason::PeerAlert(e.to_string()),
            _ => RefusalReason::Tls(e.to_string()),
        }
    }

    pub(crate) fn from_identity(e: &CertIdentityError) -> Self {
        match e {
            CertIdentityError::NoUrn => RefusalReason::NoIdentity,
            CertIdentityError::SeveralUrns(_) => RefusalReason::SeveralIdentities,
            other => RefusalReason::InvalidIdentity(other.to_string()),
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::Plaintext => f.write_str("plaintext (non-TLS) client"),
            RefusalReason::NoClientCertificate => f.write_str("no client certificate"),
            RefusalReason::UnknownIssuer => f.write_str("certificate not issued by the trusted CA"),
            RefusalReason::Expired => f.write_str("certificate expired"),
            RefusalReason::NotYetValid => f.write_str("certificate not valid yet"),
            RefusalReason::NoIdentity => f.write_str("certificate has no urn:anima identity"),
            RefusalReason::SeveralIdentities => {
                f.write_str("certificate has more than one urn:anima identity")
            }
            RefusalReason::InvalidIdentity(why) => write!(f, "invalid identity: {why}"),
            RefusalReason::UnexpectedIdentity(urn) => {
                write!(f, "identity {urn} is not accepted here")
            }
            RefusalReason::Incompatible(why) => write!(f, "incompatible client: {why}"),
            RefusalReason::PeerAlert(why) => write!(f, "client aborted the handshake: {why}"),
            RefusalReason::HandshakeTimeout => f.write_str("TLS handshake timed out"),
            RefusalReason::NoAlpn => f.write_str("client did not negotiate HTTP/2 (ALPN h2)"),
            RefusalReason::Tls(why) => write!(f, "TLS error: {why}"),
            RefusalReason::Io(why) => write!(f, "I/O error during handshake: {why}"),
        }
    }
}
