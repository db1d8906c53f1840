//! What request handling knows about the connection a request came on.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::pki_types::CertificateDer;

use super::cert::Fingerprint;
use super::socket::Address;
use crate::identity::Urn;

/// Identifies one TLS connection within this process.
///
/// Every accepted or dialled connection gets a fresh id, so two connections
/// from the same peer are told apart. Leases are bound to the connection
/// whose control stream opened them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl ConnectionId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number (unique within this process).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// The authenticated peer of one connection, as the TLS handshake proved it.
///
/// On a server, every request carries it as an extension: read it with
/// [`PeerInfo::of`]. On a client, [`Connection::peer`](super::Connection::peer)
/// returns it. Cloning is cheap.
#[derive(Clone)]
pub struct PeerInfo(Arc<Inner>);

struct Inner {
    connection: ConnectionId,
    urn: Urn,
    remote_addr: Address,
    local_addr: Address,
    certificate: CertificateDer<'static>,
    fingerprint: Fingerprint,
    local_fingerprint: Fingerprint,
}

impl PeerInfo {
    pub(crate) fn new(
        urn: Urn,
        remote_addr: Address,
        local_addr: Address,
        certificate: CertificateDer<'static>,
        local_fingerprint: Fingerprint,
    ) -> Self {
        PeerInfo(Arc::new(Inner {
            connection: ConnectionId::next(),
            fingerprint: Fingerprint::of(&certificate),
            urn,
            remote_addr,
            local_addr,
            certificate,
            local_fingerprint,
        }))
    }

    /// The peer of the connection `request` arrived on, when it arrived over
    /// an Anima TLS listener.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&PeerInfo> {
        request.extensions().get::<PeerInfo>()
    }

    /// The peer of the connection an HTTP request arrived on (for tower layers).
    pub fn of_http<B>(request: &http::Request<B>) -> Option<&PeerInfo> {
        request.extensions().get::<PeerInfo>()
    }

    /// This connection's id.
    pub fn connection(&self) -> ConnectionId {
        self.0.connection
    }

    /// The peer's identity.
    pub fn urn(&self) -> &Urn {
        &self.0.urn
    }

    /// The peer's address. Local peers on a Unix socket are unnamed: for
    /// them this is the socket's path, as [`PeerInfo::local_addr`] is.
    pub fn remote_addr(&self) -> &Address {
        &self.0.remote_addr
    }

    /// This side's address.
    pub fn local_addr(&self) -> &Address {
        &self.0.local_addr
    }

    /// The peer's leaf certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.0.certificate
    }

    /// SHA-256 of the peer's leaf certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.0.fingerprint
    }

    /// SHA-256 of the certificate this side presented on the connection.
    pub fn local_fingerprint(&self) -> Fingerprint {
        self.0.local_fingerprint
    }
}

impl fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerInfo")
            .field("connection", &self.0.connection)
            .field("urn", &self.0.urn)
            .field("remote_addr", &self.0.remote_addr)
            .field("fingerprint", &self.0.fingerprint)
            .finish()
    }
}
