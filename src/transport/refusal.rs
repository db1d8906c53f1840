//! Why a connection was refused, in words an operator can act on.

use std::fmt;

use rustls::{CertificateError, InvalidMessage, PeerIncompatible};

use super::cert::CertIdentityError;
use super::error::TransportError;
use super::socket::Address;
use crate::identity::Urn;

/// A connection refused during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Who connected (on a Unix socket: the socket's path).
    pub peer: Address,
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
    /// The certificate is not valid yet: its `notBefore` is in the future
    /// (a clock is wrong, or it was minted to start later).
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
    /// The client cannot verify a signature by this server's key: its
    /// `signature_algorithms` leave out the key's scheme (BoringSSL-based
    /// gRPC stacks offer no Ed25519).
    NoCommonSignatureScheme,
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
    /// The handshake was dropped to make room for a newer one: too many
    /// handshakes were pending, from this address or in all.
    Crowded,
    /// The identity already holds as many connections as the listener
    /// allows one identity.
    TooManyConnections(Urn),
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
            E::PeerIncompatible(PeerIncompatible::NoSignatureSchemesInCommon) => {
                RefusalReason::NoCommonSignatureScheme
            }
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
            RefusalReason::NotYetValid => {
                f.write_str("certificate not valid yet (its notBefore is in the future)")
            }
            RefusalReason::NoIdentity => f.write_str("certificate has no urn:anima identity"),
            RefusalReason::SeveralIdentities => {
                f.write_str("certificate has more than one urn:anima identity")
            }
            RefusalReason::InvalidIdentity(why) => write!(f, "invalid identity: {why}"),
            RefusalReason::UnexpectedIdentity(urn) => {
                write!(f, "identity {urn} is not accepted here")
            }
            RefusalReason::Incompatible(why) => write!(f, "incompatible client: {why}"),
            RefusalReason::NoCommonSignatureScheme => f.write_str(
                "the client cannot verify this server's certificate: it offers no signature \
                 scheme for its key (BoringSSL-based gRPC stacks, such as Python grpcio and C++, \
                 offer no Ed25519); present a P-256 certificate to such clients: on the Core, \
                 [core] endpoint_cert and endpoint_key (anima certs init makes \
                 core-NAME.endpoint.pem and .key, used without a mention when beside [core] \
                 cert); on a module, a certificate from anima certs issue --key-type p256",
            ),
            RefusalReason::PeerAlert(why) => write!(f, "client aborted the handshake: {why}"),
            RefusalReason::HandshakeTimeout => f.write_str("TLS handshake timed out"),
            RefusalReason::NoAlpn => f.write_str("client did not negotiate HTTP/2 (ALPN h2)"),
            RefusalReason::Tls(why) => write!(f, "TLS error: {why}"),
            RefusalReason::Io(why) => write!(f, "I/O error during handshake: {why}"),
            RefusalReason::Crowded => {
                f.write_str("handshake dropped for a newer one (too many pending handshakes)")
            }
            RefusalReason::TooManyConnections(urn) => {
                write!(
                    f,
                    "identity {urn} already holds the most connections allowed"
                )
            }
        }
    }
}

impl RefusalReason {
    /// A short, stable name for the kind of refusal (`plaintext`,
    /// `no_client_certificate`, …), for metrics labels and log grouping.
    pub fn kind(&self) -> &'static str {
        match self {
            RefusalReason::Plaintext => "plaintext",
            RefusalReason::NoClientCertificate => "no_client_certificate",
            RefusalReason::UnknownIssuer => "unknown_issuer",
            RefusalReason::Expired => "expired",
            RefusalReason::NotYetValid => "not_yet_valid",
            RefusalReason::NoIdentity => "no_identity",
            RefusalReason::SeveralIdentities => "several_identities",
            RefusalReason::InvalidIdentity(_) => "invalid_identity",
            RefusalReason::UnexpectedIdentity(_) => "unexpected_identity",
            RefusalReason::Incompatible(_) => "incompatible",
            RefusalReason::NoCommonSignatureScheme => "no_common_signature_scheme",
            RefusalReason::PeerAlert(_) => "peer_alert",
            RefusalReason::HandshakeTimeout => "handshake_timeout",
            RefusalReason::NoAlpn => "no_alpn",
            RefusalReason::Tls(_) => "tls",
            RefusalReason::Io(_) => "io",
            RefusalReason::Crowded => "crowded",
            RefusalReason::TooManyConnections(_) => "too_many_connections",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::pki_types::UnixTime;

    use super::*;

    fn refused_for(cert: CertificateError) -> RefusalReason {
        // As tokio-rustls reports a failed handshake: an I/O error around it.
        let e = rustls::Error::InvalidCertificate(cert);
        RefusalReason::from_io(&std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    #[test]
    fn a_certificate_from_the_future_is_not_yet_valid_not_expired() {
        let at = |secs| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let early = CertificateError::NotValidYetContext {
            time: at(1_000),
            not_before: at(5_000),
        };
        for cert in [early, CertificateError::NotValidYet] {
            assert_eq!(refused_for(cert), RefusalReason::NotYetValid);
        }
        let late = CertificateError::ExpiredContext {
            time: at(5_000),
            not_after: at(1_000),
        };
        assert_eq!(refused_for(late), RefusalReason::Expired);
        assert_eq!(
            RefusalReason::NotYetValid.to_string(),
            "certificate not valid yet (its notBefore is in the future)"
        );
        assert_eq!(RefusalReason::Expired.to_string(), "certificate expired");
    }

    #[test]
    fn a_client_that_cannot_verify_our_key_is_told_apart_naming_the_fix() {
        // What rustls reports when the client's signature_algorithms do not
        // include our key's (a grpcio client and an Ed25519 certificate).
        let e =
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoSignatureSchemesInCommon);
        let reason =
            RefusalReason::from_io(&std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        assert_eq!(reason, RefusalReason::NoCommonSignatureScheme);
        assert_eq!(reason.kind(), "no_common_signature_scheme");
        let said = reason.to_string();
        for fix in ["grpcio", "[core] endpoint_cert", "--key-type p256"] {
            assert!(said.contains(fix), "{said}");
        }
    }
}
