//! The end-to-end test harness: certificates minted at test time, real
//! sockets on 127.0.0.1, real processes, and waiting on events (never on
//! bare sleeps).

#![forbid(unsafe_code)]
#![allow(missing_docs)]
// A test harness: a failed setup step is a failed test, reported by panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anima_certs::{CertAuthority, LeafSpec};
use anima_protocol::{PeerInfo, ServerTls, TlsIdentity, TrustRoot, Urn};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Generated code for `tests/proto/echo.proto`.
pub mod echo {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("anima.test.v1");
}

/// How long tests wait for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Logs to the test's captured output, once per process.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// A certificate authority minted for one test.
pub struct TestCa {
    ca: CertAuthority,
}

impl TestCa {
    /// A fresh CA.
    pub fn new() -> Self {
        Self::named("anima test CA")
    }

    /// A fresh CA with this common name.
    pub fn named(common_name: &str) -> Self {
        init_tracing();
        TestCa {
            ca: CertAuthority::generate(common_name, Duration::from_secs(30 * 86_400))
                .expect("generate CA"),
        }
    }

    /// The trust root holding this CA.
    pub fn trust(&self) -> TrustRoot {
        TrustRoot::from_pem(self.ca.cert_pem().as_bytes()).expect("trust root")
    }

    /// A valid identity for `urn`.
    pub fn identity(&self, urn: &str) -> TlsIdentity {
        self.issue(LeafSpec::new(urn.parse::<Urn>().expect("urn")))
    }

    /// An identity for `urn` whose certificate expired an hour ago.
    pub fn expired_identity(&self, urn: &str) -> TlsIdentity {
        let now = std::time::SystemTime::now();
        self.issue(
            LeafSpec::new(urn.parse::<Urn>().expect("urn")).valid_between(
                now - Duration::from_secs(2 * 86_400),
                now - Duration::from_secs(3600),
            ),
        )
    }

    /// PEM certificate and key carrying exactly these URNs (none, or several).
    pub fn identity_with_urns(&self, urns: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let spec = urns.iter().fold(LeafSpec::without_urn(), |spec, urn| {
            spec.with_urn(urn.parse().expect("urn"))
        });
        let issued = self.ca.issue(&spec).expect("issue");
        (
            issued.cert_pem().as_bytes().to_vec(),
            issued.key_pem().as_bytes().to_vec(),
        )
    }

    /// Issues `spec` and loads it as a TLS identity.
    pub fn issue(&self, spec: LeafSpec) -> TlsIdentity {
        let issued = self.ca.issue(&spec).expect("issue");
        TlsIdentity::from_pem(issued.cert_pem().as_bytes(), issued.key_pem().as_bytes())
            .expect("identity")
    }

    /// The CA itself, for tests that need raw PEM.
    pub fn authority(&self) -> &CertAuthority {
        &self.ca
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// The echo service: counts how often its handler body ran.
#[derive(Clone, Default)]
pub struct EchoService {
    pub calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl echo::echo_server::Echo for EchoService {
    async fn say(
        &self,
        request: Request<echo::SayRequest>,
    ) -> Result<Response<echo::SayReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let peer = PeerInfo::of(&request)
            .cloned()
            .ok_or_else(|| Status::internal("no peer info"))?;
        Ok(Response::new(echo::SayReply {
            text: request.into_inner().text,
            caller: peer.urn().to_string(),
            connection: peer.connection().get(),
        }))
    }
}

/// An echo server listening on 127.0.0.1 until dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    pub tls: ServerTls,
    stop: CancellationToken,
}

impl EchoServer {
    /// Serves the echo service behind `tls` on an ephemeral port.
    pub async fn start(tls: ServerTls) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = EchoService::default();
        let calls = service.calls.clone();
        let stop = CancellationToken::new();
        let incoming = tls.incoming(listener);
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(echo::echo_server::EchoServer::new(service))
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await;
        });
        EchoServer {
            addr,
            calls,
            tls,
            stop,
        }
    }

    /// How often the handler body ran.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The path of a binary built from this workspace (`cargo build --workspace
/// --bins` puts them beside the test executables' parent directory).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/e2e-… → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins), \
         or run `cargo xtask test`",
        path.display()
    );
    path
}

/// Waits until `check` returns true, polling every few milliseconds, for at
/// most `PATIENCE`; panics with `what` otherwise.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
