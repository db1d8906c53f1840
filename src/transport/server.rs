//! Accepting mutually authenticated connections for a tonic server.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::cert::{Fingerprint, identity_of};
use super::error::TransportError;
use super::peer::PeerInfo;
use super::refusal::{Refusal, RefusalReason};
use super::tls::{PeerPolicy, TlsIdentity, TrustRoot, server_config};

/// How long a client may take to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many handshakes may be in progress at once; further connections wait
/// in the kernel's backlog.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 256;

/// Server-side TLS: turns a [`TcpListener`] into a stream of authenticated
/// connections for `tonic::transport::Server::serve_with_incoming`.
///
/// Every connection is TLS 1.3 with a client certificate that chains to the
/// trust root and names exactly one identity accepted by the policy; anything
/// else is refused during the handshake, logged once (reason and peer
/// address), reported to [`ServerTls::refusals`] subscribers, and never
/// reaches the server. Handlers read the peer with [`PeerInfo::of`].
///
/// ```no_run
/// # async fn demo(identity: anima_protocol::TlsIdentity, trust: anima_protocol::TrustRoot)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// use anima_protocol::{PeerPolicy, ServerTls, UrnKind};
///
/// let tls = ServerTls::new(&identity, &trust, PeerPolicy::kind(UrnKind::Core))?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let incoming = tls.incoming(listener);
/// // tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    local_fingerprint: Fingerprint,
    handshake_timeout: Duration,
    max_pending: usize,
    refusals: broadcast::Sender<Refusal>,
}

impl ServerTls {
    /// Serves as `identity`, accepting clients that chain to `trust` and
    /// satisfy `policy`.
    ///
    /// # Default
    /// Handshake timeout [`DEFAULT_HANDSHAKE_TIMEOUT`], at most
    /// [`DEFAULT_MAX_PENDING_HANDSHAKES`] handshakes in progress.
    pub fn new(
        identity: &TlsIdentity,
        trust: &TrustRoot,
        policy: PeerPolicy,
    ) -> Result<Self, TransportError> {
        Self::build(identity, None, trust, policy)
    }

    /// Like [`ServerTls::new`], also presenting `fallback` (the same identity
    /// with another key type, e.g. ECDSA P-256) to clients that do not offer
    /// Ed25519 signatures, such as BoringSSL-based gRPC stacks.
    pub fn with_fallback(
        identity: &TlsIdentity,
        fallback: &TlsIdentity,
        trust: &TrustRoot,
        policy: PeerPolicy,
    ) -> Result<Self, TransportError> {
        Self::build(identity, Some(fallback), trust, policy)
    }

    fn build(
        identity: &TlsIdentity,
        fallback: Option<&TlsIdentity>,
        trust: &TrustRoot,
        policy: PeerPolicy,
    ) -> Result<Self, TransportError> {
        let (refusals, _) = broadcast::channel(64);
        Ok(ServerTls {
            config: server_config(identity, fallback, trust, policy)?,
            local_fingerprint: identity.fingerprint(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
            refusals,
        })
    }

    /// Sets how long a client may take to complete the handshake.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets how many handshakes may run at once.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self
    }

    /// Subscribes to refused connections (each is also logged once).
    pub fn refusals(&self) -> broadcast::Receiver<Refusal> {
        self.refusals.subscribe()
    }

    /// Accepts on `listener` until the returned stream is dropped.
    ///
    /// Each handshake runs in its own task under the timeout, so a slow or
    /// silent client never stalls the others.
    pub fn incoming(&self, listener: TcpListener) -> ReceiverStream<Result<TlsConn, io::Error>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(self.clone(), listener, tx));
        ReceiverStream::new(rx)
    }

    fn refuse(&self, peer: SocketAddr, reason: RefusalReason) {
        tracing::warn!(peer = %peer, reason = %reason, "connection refused");
        let _ = self.refusals.send(Refusal { peer, reason });
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("local_fingerprint", &self.local_fingerprint)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

async fn accept_loop(
    tls: ServerTls,
    listener: TcpListener,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    let acceptor = TlsAcceptor::from(tls.config.clone());
    let pending = Arc::new(Semaphore::new(tls.max_pending));
    loop {
        let permit = tokio::select! {
            _ = tx.closed() => return,
            permit = pending.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let tls = tls.clone();
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(conn) = handshake(&tls, &acceptor, tcp, peer).await {
                let _ = tx.send(Ok(conn)).await;
            }
        });
    }
}

async fn handshake(
    tls: &ServerTls,
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsConn> {
    let _ = tcp.set_nodelay(true);
    let local = match tcp.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tls.refuse(peer, RefusalReason::Io(e.to_string()));
            return None;
        }
    };
    let stream = match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            tls.refuse(peer, RefusalReason::HandshakeTimeout);
            return None;
        }
        Ok(Err(e)) => {
            tls.refuse(peer, RefusalReason::from_io(&e));
            return None;
        }
        Ok(Ok(s)) => s,
    };
    let (_, conn) = stream.get_ref();
    if conn.alpn_protocol() != Some(b"h2") {
        tls.refuse(peer, RefusalReason::NoAlpn);
        return None;
    }
    // The verifier already required a certificate with exactly one identity;
    // this re-reads it for the request extensions.
    let leaf = conn.peer_certificates().and_then(|c| c.first())?.clone();
    let urn = match identity_of(&leaf) {
        Ok(u) => u,
        Err(e) => {
            tls.refuse(peer, RefusalReason::from_identity(&e));
            return None;
        }
    };
    tracing::debug!(peer = %peer, identity = %urn, "connection accepted");
    let info = PeerInfo::new(urn, peer, local, leaf, tls.local_fingerprint);
    Some(TlsConn {
        inner: stream,
        info,
    })
}

/// One accepted, authenticated connection.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConn {
    /// The authenticated peer.
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn").field("peer", &self.info).finish()
    }
}
