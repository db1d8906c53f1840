//! Accepting mutually authenticated connections for a tonic server.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::admission::{IdentityLimit, IdentitySlot, PendingHandshakes, PendingSlot};
use super::cert::{Fingerprint, identity_of};
use super::error::TransportError;
use super::peer::PeerInfo;
use super::refusal::{Refusal, RefusalReason};
use super::refusal_log::{
    DEFAULT_REFUSAL_LOG_BURST, DEFAULT_REFUSAL_LOG_INTERVAL, RefusalCount, RefusalLog,
};
use super::socket::{Accepted, Address, Listener, Socket};
use super::tls::{PeerPolicy, TlsIdentity, TrustRoot, server_config};
use crate::identity::Urn;

/// How long a client may take to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take, from connecting, to send its whole
/// ClientHello (a real TLS stack sends it at once, in one round trip).
pub const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);

/// How many handshakes may be pending at once on one listener. A new
/// connection is never kept waiting for a place: when the table is full,
/// the handshake that has waited longest for its ClientHello is dropped
/// (else the oldest of all).
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1024;

/// How many handshakes may be pending at once from one IP address; past
/// it, that address's longest-waiting handshake is dropped, not another
/// address's.
pub const DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS: usize = 128;

/// How many connections one identity (one certificate URN) may hold open
/// on one listener at once; further ones are refused after the handshake.
pub const DEFAULT_MAX_CONNECTIONS_PER_IDENTITY: usize = 64;

/// The listen backlog [`ServerTls::incoming`] sets on its listener: how
/// many connections the kernel holds for the accept loop (capped by the
/// system, `net.core.somaxconn` on Linux). Tokio binds with 1024; a burst of
/// abusive connects beyond it makes the kernel drop handshakes, real
/// clients' too, which then retry only after a second.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;

/// Which authenticated identities a listener keeps (see [`ServerTls::admit`]).
type Admit = Arc<dyn Fn(&Urn) -> bool + Send + Sync>;

/// The deadlines and bounds a listener enforces, each set by the
/// [`ServerTls`] method of (about) the same name.
#[derive(Debug, Clone, Copy)]
struct Limits {
    handshake_timeout: Duration,
    client_hello_timeout: Duration,
    max_pending: usize,
    max_pending_per_address: usize,
    max_connections_per_identity: usize,
    listen_backlog: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            client_hello_timeout: DEFAULT_CLIENT_HELLO_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_pending_per_address: DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS,
            max_connections_per_identity: DEFAULT_MAX_CONNECTIONS_PER_IDENTITY,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
        }
    }
}

/// Server-side TLS: turns a [`Listener`] (TCP, or a Unix domain socket) into
/// a stream of authenticated connections for
/// `tonic::transport::Server::serve_with_incoming`.
///
/// Every connection is TLS 1.3 with a client certificate that chains to the
/// trust root and names exactly one identity accepted by the policy; anything
/// else is refused during the handshake, counted
/// ([`ServerTls::refusal_counts`]), logged at a bounded rate per reason,
/// reported to [`ServerTls::refusals`] subscribers, and never reaches the
/// server. Handlers read the peer with [`PeerInfo::of`].
///
/// Hostile clients are bounded: the accept loop never waits for slow
/// handshakes (each has its own task, a ClientHello deadline and a
/// handshake deadline, and the longest-waiting is dropped when too many are
/// pending, per address and in all), and one identity holds a bounded
/// number of connections.
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
    /// What new handshakes present and check; [`ServerTls::reload`]
    /// replaces it for every clone.
    current: Arc<RwLock<Served>>,
    policy: PeerPolicy,
    limits: Limits,
    admit: Option<Admit>,
    refusals: broadcast::Sender<Refusal>,
    log: Arc<RefusalLog>,
}

impl ServerTls {
    /// Serves as `identity`, accepting clients that chain to `trust` and
    /// satisfy `policy`.
    ///
    /// # Default
    /// Handshake timeout [`DEFAULT_HANDSHAKE_TIMEOUT`], ClientHello timeout
    /// [`DEFAULT_CLIENT_HELLO_TIMEOUT`], at most
    /// [`DEFAULT_MAX_PENDING_HANDSHAKES`] handshakes pending
    /// ([`DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS`] from one address),
    /// [`DEFAULT_MAX_CONNECTIONS_PER_IDENTITY`] connections per identity,
    /// a listen backlog of [`DEFAULT_LISTEN_BACKLOG`],
    /// every identity the policy accepts kept, refusal lines limited to
    /// [`DEFAULT_REFUSAL_LOG_BURST`] then one per
    /// [`DEFAULT_REFUSAL_LOG_INTERVAL`] per reason.
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
            current: Arc::new(RwLock::new(Served::new(
                identity,
                fallback,
                trust,
                policy.clone(),
            )?)),
            policy,
            limits: Limits::default(),
            admit: None,
            refusals,
            log: Arc::new(RefusalLog::new(
                DEFAULT_REFUSAL_LOG_BURST,
                DEFAULT_REFUSAL_LOG_INTERVAL,
            )),
        })
    }

    /// From now on, new handshakes present `identity` (and `fallback`, as
    /// [`ServerTls::with_fallback`] does) and accept clients that chain to
    /// `trust`, under the same policy; connections already made keep what
    /// they were made with. For every clone of this listener configuration.
    /// On error nothing changes.
    ///
    /// This is how a renewed certificate, or a trust root holding an old and
    /// a new CA during a rollover, is taken up without a restart.
    pub fn reload(
        &self,
        identity: &TlsIdentity,
        fallback: Option<&TlsIdentity>,
        trust: &TrustRoot,
    ) -> Result<(), TransportError> {
        let served = Served::new(identity, fallback, trust, self.policy.clone())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = served;
        Ok(())
    }

    /// The fingerprint of the certificate new handshakes present (the
    /// primary one, with a fallback).
    pub fn local_fingerprint(&self) -> Fingerprint {
        self.served().fingerprint
    }

    /// What new handshakes use now.
    fn served(&self) -> Served {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets how long a client may take to complete the handshake.
    ///
    /// # Default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.limits.handshake_timeout = timeout;
        self
    }

    /// Sets how long a client may take to send its whole ClientHello; the
    /// handshake timeout still bounds the handshake as a whole.
    ///
    /// # Default
    /// [`DEFAULT_CLIENT_HELLO_TIMEOUT`].
    pub fn client_hello_timeout(mut self, timeout: Duration) -> Self {
        self.limits.client_hello_timeout = timeout;
        self
    }

    /// Sets how many handshakes may be pending at once (at least 1); past
    /// it, the longest-waiting one is dropped for the new one.
    ///
    /// # Default
    /// [`DEFAULT_MAX_PENDING_HANDSHAKES`].
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.limits.max_pending = n.max(1);
        self
    }

    /// Sets how many handshakes may be pending at once from one IP address
    /// (on a Unix socket: from one local user) (at least 1); past it, that
    /// address's longest-waiting one is dropped.
    ///
    /// # Default
    /// [`DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS`].
    pub fn max_pending_handshakes_per_address(mut self, n: usize) -> Self {
        self.limits.max_pending_per_address = n.max(1);
        self
    }

    /// Sets how many connections one identity may hold open at once (at
    /// least 1); further ones are refused
    /// ([`RefusalReason::TooManyConnections`]) until one closes.
    ///
    /// # Default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_IDENTITY`].
    pub fn max_connections_per_identity(mut self, n: usize) -> Self {
        self.limits.max_connections_per_identity = n.max(1);
        self
    }

    /// Sets the listen backlog [`ServerTls::incoming`] gives its listener.
    ///
    /// # Default
    /// [`DEFAULT_LISTEN_BACKLOG`].
    pub fn listen_backlog(mut self, n: u32) -> Self {
        self.limits.listen_backlog = n.max(1);
        self
    }

    /// Keeps only the authenticated identities for which `rule` is true;
    /// a connection from any other is closed right after its handshake and
    /// refused as [`RefusalReason::UnexpectedIdentity`]. Unlike the
    /// [`PeerPolicy`], the rule is asked for every connection, so it may
    /// follow state that changes.
    ///
    /// # Default
    /// Every identity the policy accepts.
    pub fn admit(mut self, rule: impl Fn(&Urn) -> bool + Send + Sync + 'static) -> Self {
        self.admit = Some(Arc::new(rule));
        self
    }

    /// Sets the refusal log's rate: per kind of refusal, `burst` lines at
    /// once, then one per `interval`; the refusals left out are counted and
    /// the next line says how many.
    ///
    /// # Default
    /// [`DEFAULT_REFUSAL_LOG_BURST`] and [`DEFAULT_REFUSAL_LOG_INTERVAL`].
    pub fn refusal_log(mut self, burst: u32, interval: Duration) -> Self {
        self.log = Arc::new(RefusalLog::new(burst, interval));
        self
    }

    /// Subscribes to refused connections (each is also counted, and logged
    /// unless its kind is over the log's rate).
    pub fn refusals(&self) -> broadcast::Receiver<Refusal> {
        self.refusals.subscribe()
    }

    /// Refused connections by kind since this listener configuration was
    /// built (shared by its clones), with how many were not logged.
    pub fn refusal_counts(&self) -> Vec<RefusalCount> {
        self.log.counts()
    }

    /// Accepts on `listener` until the returned stream is dropped.
    ///
    /// Each handshake runs in its own task under the timeouts, so a slow or
    /// silent client never stalls the others, and the loop accepts at once
    /// whatever the number of pending handshakes. When accepting fails for
    /// good (the listening socket was closed or shut down), the stream
    /// yields that error and ends; passing errors (no file descriptors left,
    /// a connection reset before it was accepted) are logged and retried.
    pub fn incoming(
        &self,
        listener: impl Into<Listener>,
    ) -> ReceiverStream<Result<TlsConn, io::Error>> {
        let listener = listener.into();
        let backlog = i32::try_from(self.limits.listen_backlog).unwrap_or(i32::MAX);
        if let Err(e) = listener.set_backlog(backlog) {
            tracing::warn!(error = %e, backlog, "cannot set the listen backlog");
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(self.clone(), listener, tx));
        ReceiverStream::new(rx)
    }

    fn refuse(&self, peer: &Address, reason: RefusalReason) {
        self.log.refuse(peer, &reason);
        let _ = self.refusals.send(Refusal {
            peer: peer.clone(),
            reason,
        });
    }
}

/// A listener's certificates and trust, as of its last (re)load.
#[derive(Clone)]
struct Served {
    config: Arc<ServerConfig>,
    fingerprint: Fingerprint,
}

impl Served {
    fn new(
        identity: &TlsIdentity,
        fallback: Option<&TlsIdentity>,
        trust: &TrustRoot,
        policy: PeerPolicy,
    ) -> Result<Self, TransportError> {
        Ok(Served {
            config: server_config(identity, fallback, trust, policy)?,
            fingerprint: identity.fingerprint(),
        })
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("local_fingerprint", &self.local_fingerprint())
            .field("limits", &self.limits)
            .field("admit", &self.admit.as_ref().map(|_| "custom"))
            .finish_non_exhaustive()
    }
}

async fn accept_loop(
    tls: ServerTls,
    listener: Listener,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    let limits = tls.limits;
    let pending = PendingHandshakes::new(limits.max_pending, limits.max_pending_per_address);
    let connections = IdentityLimit::new(limits.max_connections_per_identity);
    let every = tls.log.interval();
    let mut summary = tokio::time::interval_at(Instant::now() + every, every);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            _ = summary.tick() => {
                tls.log.report_suppressed();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if listener.failed_for_good(&e) => {
                    tracing::error!(error = %e, "accepting failed for good; no more connections");
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Never waits: a full table makes room by dropping an older handshake.
        let slot = pending.admit(accepted.origin);
        let tls = tls.clone();
        let connections = connections.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Some(conn) = handshake(&tls, &connections, slot, accepted).await {
                let _ = tx.send(Ok(conn)).await;
            }
        });
    }
}

/// Runs one connection's TLS handshake under the listener's deadlines and
/// admits its authenticated peer, or refuses the connection (counted,
/// logged, reported) and returns `None`.
async fn handshake(
    tls: &ServerTls,
    connections: &Arc<IdentityLimit>,
    mut slot: PendingSlot,
    accepted: Accepted,
) -> Option<TlsConn> {
    let Accepted {
        socket,
        peer,
        local,
        ..
    } = accepted;
    let local = match local {
        Ok(a) => a,
        Err(e) => {
            tls.refuse(&peer, RefusalReason::Io(e.to_string()));
            return None;
        }
    };
    // The certificates as of this connection's start: a reload meanwhile
    // applies to the next one.
    let served = tls.served();
    let deadline = Instant::now() + tls.limits.handshake_timeout;
    let hello_deadline = deadline.min(Instant::now() + tls.limits.client_hello_timeout);
    // First the ClientHello, under its own short deadline.
    let hello = LazyConfigAcceptor::new(Acceptor::default(), socket);
    let started = handshake_step(tls, &peer, &mut slot, hello_deadline, hello).await?;
    slot.progressing();
    let rest = started.into_stream(served.config);
    let stream = handshake_step(tls, &peer, &mut slot, deadline, rest).await?;
    drop(slot);
    authorize(tls, connections, stream, peer, local, served.fingerprint)
}

/// Runs one step of a handshake until `deadline`, unless the pending table
/// drops the handshake first (that wins a tie); refuses the connection and
/// returns `None` when the step fails, times out or is dropped.
async fn handshake_step<T>(
    tls: &ServerTls,
    peer: &Address,
    slot: &mut PendingSlot,
    deadline: Instant,
    step: impl Future<Output = io::Result<T>>,
) -> Option<T> {
    let reason = tokio::select! {
        biased;
        _ = &mut slot.evicted => RefusalReason::Crowded,
        done = tokio::time::timeout_at(deadline, step) => match done {
            Err(_) => RefusalReason::HandshakeTimeout,
            Ok(Err(e)) => RefusalReason::from_io(&e),
            Ok(Ok(s)) => return Some(s),
        },
    };
    tls.refuse(peer, reason);
    None
}

/// Admits the peer of a completed handshake: it negotiated HTTP/2, its
/// identity passes the listener's [`ServerTls::admit`] rule, and that
/// identity has a place left among its connections.
fn authorize(
    tls: &ServerTls,
    connections: &Arc<IdentityLimit>,
    stream: TlsStream<Socket>,
    peer: Address,
    local: Address,
    local_fingerprint: Fingerprint,
) -> Option<TlsConn> {
    let (_, conn) = stream.get_ref();
    if conn.alpn_protocol() != Some(b"h2") && !fault_on!(AlpnUnchecked) {
        tls.refuse(&peer, RefusalReason::NoAlpn);
        return None;
    }
    // The verifier already required a certificate with exactly one identity;
    // this re-reads it for the request extensions.
    let leaf = conn.peer_certificates().and_then(|c| c.first())?.clone();
    let urn = match identity_of(&leaf) {
        Ok(u) => u,
        Err(e) => {
            tls.refuse(&peer, RefusalReason::from_identity(&e));
            return None;
        }
    };
    if let Some(admit) = &tls.admit
        && !admit(&urn)
    {
        tls.refuse(&peer, RefusalReason::UnexpectedIdentity(urn));
        return None;
    }
    let Some(held) = connections.hold(&urn) else {
        tls.refuse(&peer, RefusalReason::TooManyConnections(urn));
        return None;
    };
    tracing::debug!(peer = %peer, identity = %urn, "connection accepted");
    let info = PeerInfo::new(urn, peer, local, leaf, local_fingerprint);
    Some(TlsConn {
        inner: stream,
        info,
        _held: held,
    })
}

/// One accepted, authenticated connection.
pub struct TlsConn {
    inner: TlsStream<Socket>,
    info: PeerInfo,
    /// The identity's place among its connections, given back on drop.
    _held: IdentitySlot,
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
