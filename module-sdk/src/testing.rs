//! A test harness for module authors: a fake Core that leases, renews,
//! revokes and expires on command, and a test bed that mints certificates and
//! serves your module in-process — no Core binary needed.
//!
//! Enabled by the `testing` feature (use it in `[dev-dependencies]`).
//!
//! [`TestBed::check_isolation`] checks a Type III module's own handlers
//! for tenant isolation (S3, S4, S5, S8, S9): the rows of `anima
//! conformance` check only the SDK's.
//!
//! ```no_run
//! # async fn demo(contract: anima_module_sdk::Contract, descriptors: &'static [u8],
//! #     service: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use anima_module_sdk::testing::TestBed;
//!
//! let bed = TestBed::new(contract.clone())?;
//! let module = bed.serve(|m| m.file_descriptor_set(descriptors).service(service)).await?;
//! let lease = bed.core("urn:anima:core:test")?.lease(&module, Duration::from_secs(5)).await?;
//! // SomeClient::new(lease.channel()).call(..).await?;
//! lease.expire().await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anima_certs::{CertAuthority, LeafSpec};
use anima_protocol::control::{self, ControlStream, HandshakeError};
use anima_protocol::lease::{
    Lease, LeaseError, LeaseId, LeaseRequest, LeaseSigner, PROOF_HEADER_NAME, Reason, Scope,
    proof_header_value,
};
use anima_protocol::pb::{SignedToken, control_frame::Frame};
use anima_protocol::transport::{ChannelError, PeerChannel, ResponseFuture};
use anima_protocol::{ClientTls, Connection, PeerPolicy, SystemClock, TlsIdentity, TrustRoot, Urn};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;

use crate::error::SdkError;
use crate::lifecycle::Exit;
use crate::serve::{ModuleHandle, ModuleServer};
use anima_protocol::contract::Contract;

mod isolation;

pub use isolation::{IsolationCheck, IsolationError, Property, Step, Tenant};

/// How long the fake Core waits for any answer.
const PATIENCE: Duration = Duration::from_secs(10);

fn err(e: impl std::fmt::Display) -> SdkError {
    SdkError::Launch(format!("test harness: {e}"))
}

/// A CA, your module's identity, and Cores on demand.
pub struct TestBed {
    ca: CertAuthority,
    contract: Contract,
}

impl TestBed {
    /// A fresh CA for `contract`'s module.
    pub fn new(contract: Contract) -> Result<Self, SdkError> {
        let ca =
            CertAuthority::generate("anima test bed", Duration::from_secs(86_400)).map_err(err)?;
        Ok(TestBed { ca, contract })
    }

    /// The trust root.
    pub fn trust(&self) -> Result<TrustRoot, SdkError> {
        // Through PEM, not `CertAuthority::trust_root`: the test-only copy of
        // this crate builds on a copy of the protocol crate (tests/faulty),
        // whose types are not anima-certs'.
        TrustRoot::from_pem(self.ca.cert_pem().as_bytes()).map_err(err)
    }

    /// A certificate for `urn` from this bed's CA.
    pub fn identity(&self, urn: &str) -> Result<TlsIdentity, SdkError> {
        // Parsed as anima-certs' own `Urn` (see `trust`).
        let cert = self
            .ca
            .issue(&LeafSpec::new(urn.parse().map_err(err)?))
            .map_err(err)?;
        TlsIdentity::from_pem(cert.cert_pem().as_bytes(), cert.key_pem().as_bytes()).map_err(err)
    }

    /// Serves the module in-process on 127.0.0.1; `configure` adds its
    /// services (as in `main`).
    pub async fn serve(
        &self,
        configure: impl FnOnce(ModuleServer) -> ModuleServer,
    ) -> Result<ServedModule, SdkError> {
        let identity = self.identity(self.contract.urn.as_str())?;
        let server = configure(ModuleServer::new(
            self.contract.clone(),
            &identity,
            &self.trust()?,
        )?);
        let handle = server.handle();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = exit_tx.send(server.serve(listener, shutdown).await);
        });
        Ok(ServedModule {
            addr,
            urn: self.contract.urn.clone(),
            handle,
            stop,
            exit: Mutex::new(Some(exit_rx)),
        })
    }

    /// A fake Core with identity `urn`.
    pub fn core(&self, urn: &str) -> Result<FakeCore, SdkError> {
        FakeCore::new(self.identity(urn)?, self.trust()?)
    }
}

/// A module served in-process by a [`TestBed`]; stopped when dropped.
pub struct ServedModule {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its identity.
    pub urn: Urn,
    /// Its lease handle.
    pub handle: ModuleHandle,
    stop: CancellationToken,
    exit: Mutex<Option<tokio::sync::oneshot::Receiver<Result<Exit, SdkError>>>>,
}

impl ServedModule {
    /// Waits (at most `limit`) for the module to stop by itself and returns
    /// why.
    pub async fn exited(&self, limit: Duration) -> Result<Exit, SdkError> {
        let rx = self
            .exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| err("exit already taken"))?;
        tokio::time::timeout(limit, rx)
            .await
            .map_err(|_| err("the module did not exit in time"))?
            .map_err(err)?
    }
}

impl Drop for ServedModule {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A Core that does only what it is told.
pub struct FakeCore {
    client: ClientTls,
    signer: Arc<LeaseSigner>,
}

impl FakeCore {
    /// A fake Core presenting `identity`, trusting `trust`.
    pub fn new(identity: TlsIdentity, trust: TrustRoot) -> Result<Self, SdkError> {
        let signer = Arc::new(LeaseSigner::from_identity(&identity)?);
        Ok(FakeCore {
            client: ClientTls::new(identity, trust),
            signer,
        })
    }

    /// Opens a lease on a new connection for every declared method.
    pub async fn lease(&self, module: &ServedModule, ttl: Duration) -> Result<FakeLease, SdkError> {
        let scope = module.handle.methods().clone();
        self.lease_at(module.addr, &module.urn, scope, ttl).await
    }

    /// Opens a lease on a new connection to `addr` (which must be `module`;
    /// TCP or a Unix socket).
    pub async fn lease_at(
        &self,
        addr: impl Into<anima_protocol::transport::Address>,
        module: &Urn,
        scope: Scope,
        ttl: Duration,
    ) -> Result<FakeLease, SdkError> {
        let conn = self
            .client
            .dial_addr(addr, PeerPolicy::exactly(module.clone()))
            .await?;
        let granted = control::open(
            &conn,
            &self.signer,
            LeaseRequest { scope, ttl },
            &SystemClock,
            PATIENCE,
        )
        .await
        .map_err(|e| match e {
            HandshakeError::Refused(refusal) => SdkError::Signer(LeaseError::Refused {
                reason: HandshakeError::refusal_reason(&refusal),
                detail: refusal.detail,
            }),
            HandshakeError::Lease(e) | HandshakeError::BadGrant(e) => SdkError::Signer(e),
            other => err(other),
        })?;
        Ok(FakeLease {
            conn,
            signer: self.signer.clone(),
            lease: Arc::new(Mutex::new(granted.lease)),
            seq: Arc::new(AtomicU64::new(1)),
            stream: tokio::sync::Mutex::new(granted.stream),
        })
    }
}

/// A lease held by a [`FakeCore`].
pub struct FakeLease {
    conn: Connection,
    signer: Arc<LeaseSigner>,
    lease: Arc<Mutex<Lease>>,
    seq: Arc<AtomicU64>,
    stream: tokio::sync::Mutex<ControlStream>,
}

impl FakeLease {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease id.
    pub fn id(&self) -> LeaseId {
        self.lock().id()
    }

    /// The fingerprint of the certificate the module presented on this
    /// lease's connection (the one the lease is bound to).
    pub fn module_fingerprint(&self) -> anima_protocol::Fingerprint {
        self.conn.peer().fingerprint()
    }

    /// The TTL granted.
    pub fn ttl(&self) -> Duration {
        self.lock().ttl()
    }

    /// A channel for generated clients: every call carries a fresh proof.
    /// Unlike a real Core it never refuses locally, so tests see exactly what
    /// the module does.
    pub fn channel(&self) -> ProofChannel {
        ProofChannel {
            inner: self.conn.channel(),
            lease: self.lease.clone(),
            seq: self.seq.clone(),
        }
    }

    async fn send(&self, f: Frame) -> Result<(), SdkError> {
        if self.stream.lock().await.send(f).await {
            Ok(())
        } else {
            Err(err("control stream closed"))
        }
    }

    async fn next(&self) -> Result<Frame, SdkError> {
        let mut stream = self.stream.lock().await;
        stream
            .next_frame(PATIENCE)
            .await
            .map_err(|_| err("no answer"))?
            .ok_or_else(|| err("control stream ended"))
    }

    /// Renews for `ttl`; returns the TTL granted.
    pub async fn renew(&self, ttl: Duration) -> Result<Duration, SdkError> {
        let now = tokio::time::Instant::now().into_std();
        let jws = self.lock().renew_request(ttl, now, SystemTime::now())?;
        self.send(Frame::Renew(SignedToken { jws })).await?;
        match self.next().await? {
            Frame::Renewed(SignedToken { jws }) => {
                let mut lease = self.lock();
                let claims = lease.receive(&jws)?;
                Ok(lease.apply_renewed(&claims, tokio::time::Instant::now().into_std())?)
            }
            other => Err(err(format!("unexpected answer {other:?}"))),
        }
    }

    /// Revokes the lease (`LEASE_REVOKED`).
    pub async fn revoke(&self) -> Result<(), SdkError> {
        self.end(Reason::LeaseRevoked, "revoked by the test").await
    }

    /// Ends the lease now as if it had expired (`LEASE_EXPIRED`).
    pub async fn expire(&self) -> Result<(), SdkError> {
        self.end(Reason::LeaseExpired, "expired on command").await
    }

    async fn end(&self, reason: Reason, detail: &str) -> Result<(), SdkError> {
        let now = tokio::time::Instant::now().into_std();
        let jws = self
            .lock()
            .revoke(&self.signer, reason, detail, now, SystemTime::now())?;
        self.send(Frame::Revoke(SignedToken { jws })).await
    }
}

/// A channel adding lease proofs; see [`FakeLease::channel`].
#[derive(Clone)]
pub struct ProofChannel {
    inner: PeerChannel,
    lease: Arc<Mutex<Lease>>,
    seq: Arc<AtomicU64>,
}

impl tower::Service<http::Request<Body>> for ProofChannel {
    type Response = http::Response<Body>;
    type Error = ChannelError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let proof = self
            .lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .proof_key()
            .proof(seq, request.uri().path());
        // As the Core sends it: never indexed (PROTOCOL.md §4).
        if let Ok(value) = proof_header_value(proof) {
            request
                .headers_mut()
                .insert(PROOF_HEADER_NAME.clone(), value);
        }
        self.inner.call(request)
    }
}
