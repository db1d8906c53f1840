//! Dialling a mutually authenticated connection and running gRPC over it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::cert::identity_of;
use super::channel::PeerChannel;
use super::error::TransportError;
use super::peer::PeerInfo;
use super::server::DEFAULT_HANDSHAKE_TIMEOUT;
use super::socket::{Address, Socket};
use super::tls::{PeerPolicy, TlsIdentity, TrustRoot, client_config};

/// Default limit on the TCP (or Unix socket) connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default HTTP/2 keepalive ping interval.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Default time to wait for a keepalive ping's answer before the connection
/// is declared dead.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Client-side TLS: this side's identity and the roots it trusts.
///
/// ```no_run
/// # async fn demo(identity: anima_protocol::TlsIdentity, trust: anima_protocol::TrustRoot)
/// # -> Result<(), anima_protocol::TransportError> {
/// use anima_protocol::{ClientTls, PeerPolicy, Urn};
///
/// let client = ClientTls::new(identity, trust);
/// let echo: Urn = "urn:anima:module:echo".parse().unwrap();
/// let conn = client.dial("127.0.0.1:7001", PeerPolicy::exactly(echo)).await?;
/// println!("connected to {}", conn.peer().urn());
/// // SomeServiceClient::new(conn.channel())
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientTls {
    identity: TlsIdentity,
    trust: TrustRoot,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
}

impl ClientTls {
    /// Dials as `identity`, trusting servers that chain to `trust`.
    ///
    /// # Default
    /// Connect timeout [`DEFAULT_CONNECT_TIMEOUT`], handshake timeout
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`], HTTP/2 keepalive every
    /// [`DEFAULT_KEEPALIVE_INTERVAL`] with [`DEFAULT_KEEPALIVE_TIMEOUT`] to
    /// answer: a silent peer is detected within their sum.
    pub fn new(identity: TlsIdentity, trust: TrustRoot) -> Self {
        ClientTls {
            identity,
            trust,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }

    /// Sets the TCP (or Unix socket) connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the TLS handshake timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the HTTP/2 keepalive interval and the time allowed for an answer.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// This side's identity.
    pub fn identity(&self) -> &TlsIdentity {
        &self.identity
    }

    /// Resolves `addr` (`host:port`) and dials it; see [`ClientTls::dial_addr`].
    pub async fn dial(&self, addr: &str, expect: PeerPolicy) -> Result<Connection, TransportError> {
        let resolved = tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host(addr))
            .await
            .map_err(|_| TransportError::Resolve {
                addr: addr.to_owned(),
                detail: "timed out".into(),
            })?
            .map_err(|e| TransportError::Resolve {
                addr: addr.to_owned(),
                detail: e.to_string(),
            })?
            .next()
            .ok_or_else(|| TransportError::Resolve {
                addr: addr.to_owned(),
                detail: "no address".into(),
            })?;
        self.dial_addr(resolved, expect).await
    }

    /// Opens one connection to `addr` (TCP, or a Unix socket), completes a
    /// mutual TLS 1.3 handshake requiring a server identity that satisfies
    /// `expect`, and runs an HTTP/2 gRPC channel over that connection.
    ///
    /// The channel never reconnects by itself: when this connection ends,
    /// calls on it fail with `UNAVAILABLE`, and a new connection (with a new
    /// lease) must be dialled. Leases are bound to connections.
    pub async fn dial_addr(
        &self,
        addr: impl Into<Address>,
        expect: PeerPolicy,
    ) -> Result<Connection, TransportError> {
        let config = client_config(&self.identity, &self.trust, expect)?;
        let addr = addr.into();
        let (stream, peer) = self.handshake(&addr, config).await?;
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream));
        let (send, connection) =
            within("HTTP/2 handshake", &addr, self.handshake_timeout, handshake)
                .await?
                .map_err(TransportError::Http2)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
        Ok(Connection {
            channel: PeerChannel::new(send),
            peer,
        })
    }

    /// A channel to `addr` that dials (TCP or a Unix socket, mutual TLS 1.3,
    /// `expect` checked in the handshake) when first used and again whenever its
    /// connection has gone away. For calls bound to no connection (a
    /// module's calls through its Core, the registry); a lease's channel is
    /// [`ClientTls::dial_addr`]'s, which never reconnects.
    pub fn reconnecting(
        &self,
        addr: impl Into<Address>,
        expect: PeerPolicy,
    ) -> Result<Channel, TransportError> {
        let config = client_config(&self.identity, &self.trust, expect)?;
        let dialler = self.clone();
        let addr = addr.into();
        let connector = tower::service_fn(move |_: Uri| {
            let dialler = dialler.clone();
            let config = config.clone();
            let addr = addr.clone();
            async move {
                let (stream, _) = dialler
                    .handshake(&addr, config)
                    .await
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        });
        Ok(Endpoint::from_static("http://anima.peer")
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector))
    }

    async fn handshake(
        &self,
        addr: &Address,
        config: Arc<ClientConfig>,
    ) -> Result<(TlsStream<Socket>, PeerInfo), TransportError> {
        let connect = Socket::connect(addr);
        let what = if addr.is_unix() {
            "unix socket connect"
        } else {
            "TCP connect"
        };
        let (socket, local) = within(what, addr, self.connect_timeout, connect)
            .await?
            .map_err(|source| TransportError::Connect {
                addr: addr.clone(),
                source,
            })?;
        // The server is identified by its URN (checked by the verifier); the
        // name only fills the SNI field.
        let name = match addr {
            Address::Tcp(a) => ServerName::IpAddress(a.ip().into()),
            Address::Unix(_) => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        };
        let connect = TlsConnector::from(config).connect(name, socket);
        let stream = within("TLS handshake", addr, self.handshake_timeout, connect)
            .await?
            .map_err(|source| TransportError::Handshake {
                addr: addr.clone(),
                source,
            })?;
        let (_, conn) = stream.get_ref();
        if conn.alpn_protocol() != Some(b"h2") {
            return Err(TransportError::NoAlpn(addr.clone()));
        }
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(TransportError::EmptyChain)?
            .clone();
        let urn = identity_of(&leaf)?;
        let peer = PeerInfo::new(urn, addr.clone(), local, leaf, self.identity.fingerprint());
        Ok((stream, peer))
    }
}

/// Runs `step` of dialling `addr` for at most `after`; past it, the dial
/// fails with [`TransportError::Timeout`] naming `what`.
async fn within<T>(
    what: &'static str,
    addr: &Address,
    after: Duration,
    step: impl Future<Output = T>,
) -> Result<T, TransportError> {
    tokio::time::timeout(after, step)
        .await
        .map_err(|_| TransportError::Timeout {
            what,
            addr: addr.clone(),
            after,
        })
}

/// One authenticated connection and the gRPC channel running over it.
#[derive(Debug, Clone)]
pub struct Connection {
    channel: PeerChannel,
    peer: PeerInfo,
}

impl Connection {
    /// The gRPC channel; clone it freely, all clones share the connection.
    pub fn channel(&self) -> PeerChannel {
        self.channel.clone()
    }

    /// The server, as the handshake proved it.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}
