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
use anima_module_sdk::{Contract, LeaseEvent, ModuleHandle, ModuleServer};
use anima_protocol::control::{self, SignedOffer};
use anima_protocol::launch;
use anima_protocol::lease::{Lease, LeaseRequest, LeaseSigner, PROOF_HEADER, Reason, Scope};
use anima_protocol::pb::{ControlFrame, control_frame::Frame};
use anima_protocol::{
    ClientTls, Connection, PeerPolicy, ServerTls, SystemClock, TlsIdentity, TrustRoot, Urn,
};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

#[path = "../echo/mod.rs"]
mod echo_service;

/// The encoded descriptor set of `tests/proto/echo.proto`.
pub use echo_service::DESCRIPTORS as ECHO_DESCRIPTORS;
pub use echo_service::EchoService;
/// Generated code for `tests/proto/echo.proto`.
pub use echo_service::pb as echo;

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

/// The echo module's contract (Type I), with `max_lease`.
pub fn echo_contract(urn: &str, max_lease: &str) -> Contract {
    echo_contract_with(urn, max_lease, "")
}

/// The echo module's contract with extra TOML lines (`type = …`, graces).
pub fn echo_contract_with(urn: &str, max_lease: &str, extra: &str) -> Contract {
    let methods = echo_methods_toml();
    Contract::from_toml(&format!(
        r#"
        urn = "{urn}"
        version = "0.1.0"
        methods = [{methods}]
        max_lease = "{max_lease}"
        {extra}
        "#
    ))
    .expect("contract")
}

/// Declares a constant for each method of the echo service, its path
/// (`NAME => Method`), and [`ECHO_METHODS`], all of them in order.
macro_rules! echo_methods {
    ($($(#[doc = $doc:literal])* $name:ident => $method:ident,)*) => {
        $(
            #[doc = concat!("`/anima.test.v1.Echo/", stringify!($method), "`")]
            $(#[doc = $doc])*
            pub const $name: &str = concat!("/anima.test.v1.Echo/", stringify!($method));
        )*
        /// Every method the echo service serves.
        pub const ECHO_METHODS: [&str; [$($name),*].len()] = [$($name),*];
    };
}

echo_methods! {
    SAY => Say,
    SHOUT => Shout,
    SLOW => Slow,
    COUNT => Count,
    /// (server streaming)
    WATCH => Watch,
    /// (client streaming)
    COLLECT => Collect,
    /// (bidirectional streaming)
    CHAT => Chat,
}

/// [`ECHO_METHODS`] as the items of a TOML array: `"/a", "/b", …`.
pub fn echo_methods_toml() -> String {
    ECHO_METHODS.map(|m| format!("\"{m}\"")).join(", ")
}

/// The echo service as an interface, `anima.test/echo` 1.0.0
/// (`interface.toml`, PROTOCOL.md §9): every echo method, idempotent (an echo
/// changes nothing), no timeout or retries.
pub fn echo_interface_toml() -> String {
    let methods: String = ECHO_METHODS
        .map(|m| format!("\n[[method]]\npath = \"{m}\"\nidempotent = true\n"))
        .concat();
    format!(
        "interface = \"anima.test/echo\"\nversion = \"1.0.0\"\n\
         summary = \"The end-to-end tests' echo service.\"\n\
         lifecycle = \"Stateless: each call answers from its request alone.\"\n\
         protos = [\"echo.proto\"]\n{methods}"
    )
}

/// The echo service served in-process as a leased module (SDK).
pub struct TestModule {
    pub addr: SocketAddr,
    pub service: EchoService,
    pub handle: ModuleHandle,
    pub urn: Urn,
    stop: CancellationToken,
}

impl TestModule {
    /// Serves `contract` as its URN, with certificates from `ca`.
    pub async fn start(ca: &TestCa, contract: Contract) -> Self {
        let urn = contract.urn.clone();
        let server = ModuleServer::new(contract, &ca.identity(urn.as_str()), &ca.trust())
            .expect("module server");
        let handle = server.handle();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = EchoService::default();
        let server = server
            .file_descriptor_set(ECHO_DESCRIPTORS)
            .service(echo::echo_server::EchoServer::new(service.clone()));
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(e) = server.serve(listener, shutdown).await {
                panic!("module failed: {e}");
            }
        });
        TestModule {
            addr,
            service,
            handle,
            urn,
            stop,
        }
    }

    /// Handler bodies entered so far.
    pub fn calls(&self) -> usize {
        self.service.calls.load(Ordering::SeqCst)
    }
}

impl Drop for TestModule {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A Core built by hand from the protocol crate, able to misbehave: it
/// exposes the lease (and so the proof key) and the raw control stream.
pub struct RawCore {
    pub conn: Connection,
    pub signer: LeaseSigner,
    pub lease: Lease,
    pub tx: mpsc::Sender<ControlFrame>,
    pub inbound: tonic::Streaming<ControlFrame>,
}

impl RawCore {
    /// Dials `module` as `core` and offers `scope`/`ttl` with the token
    /// changed by `tamper` after signing; returns the connection and the
    /// module's first answer.
    pub async fn offer_tampered(
        ca: &TestCa,
        core: &str,
        module: &TestModule,
        scope: &[&str],
        ttl: Duration,
        tamper: impl FnOnce(&str) -> String,
    ) -> (Connection, Frame) {
        let (conn, signer) = Self::dial(ca, core, module).await;
        let request = LeaseRequest {
            scope: Scope::new(scope.iter().copied()).expect("scope"),
            ttl,
        };
        let mut offer = SignedOffer::new(&signer, &conn, request, &SystemClock).expect("offer");
        offer
            .tamper(|jws| Ok::<_, std::convert::Infallible>(tamper(jws)))
            .expect("infallible");
        let offered = offer.send(&conn, PATIENCE).await.expect("an answer");
        let (_stream, _pending, first) = offered.into_parts();
        (conn, first)
    }

    /// Opens a lease honestly for `scope` and `ttl`.
    pub async fn open(
        ca: &TestCa,
        core: &str,
        module: &TestModule,
        scope: &[&str],
        ttl: Duration,
    ) -> RawCore {
        let (conn, signer) = Self::dial(ca, core, module).await;
        let request = LeaseRequest {
            scope: Scope::new(scope.iter().copied()).expect("scope"),
            ttl,
        };
        let granted = control::open(&conn, &signer, request, &SystemClock, PATIENCE)
            .await
            .expect("a lease");
        let (tx, inbound) = granted.stream.into_parts();
        RawCore {
            conn,
            signer,
            lease: granted.lease,
            tx,
            inbound,
        }
    }

    /// A connection to `module` as `core`, and `core`'s lease signer.
    async fn dial(ca: &TestCa, core: &str, module: &TestModule) -> (Connection, LeaseSigner) {
        let identity = ca.identity(core);
        let signer = LeaseSigner::from_identity(&identity).expect("signer");
        let conn = ClientTls::new(identity, ca.trust())
            .dial_addr(module.addr, PeerPolicy::exactly(module.urn.clone()))
            .await
            .expect("dial");
        (conn, signer)
    }

    /// The proof for call `seq` of `method` under this lease.
    pub fn proof(&self, seq: u64, method: &str) -> String {
        self.lease.proof_key().proof(seq, method)
    }

    /// Calls `Say` on the raw connection with `proof` (or none).
    pub async fn say(&self, proof: Option<String>) -> Result<echo::SayReply, Status> {
        self.client()
            .say(hi_request(proof))
            .await
            .map(|r| r.into_inner())
    }

    /// Calls `Shout` on the raw connection with `proof`.
    pub async fn shout(&self, proof: String) -> Result<echo::SayReply, Status> {
        self.client()
            .shout(hi_request(Some(proof)))
            .await
            .map(|r| r.into_inner())
    }

    /// An echo client on the raw connection.
    fn client(&self) -> echo::echo_client::EchoClient<anima_protocol::transport::PeerChannel> {
        echo::echo_client::EchoClient::new(self.conn.channel())
    }

    /// Sends a control frame.
    pub async fn send(&self, frame: Frame) {
        self.tx
            .send(ControlFrame { frame: Some(frame) })
            .await
            .expect("control stream open");
    }

    /// The next control frame from the module (panics after `PATIENCE`).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(PATIENCE, self.inbound.message())
            .await
            .expect("a frame in time")
            .ok()
            .flatten()
            .and_then(|f| f.frame)
    }
}

/// A request saying "hi", carrying `proof` (or none).
fn hi_request(proof: Option<String>) -> Request<echo::SayRequest> {
    let mut request = Request::new(echo::SayRequest { text: "hi".into() });
    if let Some(p) = proof {
        request
            .metadata_mut()
            .insert(PROOF_HEADER, p.parse().expect("ascii proof"));
    }
    request
}

/// The `anima` reason of a refused call.
pub fn reason(status: &Status) -> Option<Reason> {
    anima_protocol::lease::reason_of(status)
}

/// Waits for the first event matching `pick`.
pub async fn wait_event<T>(
    events: &mut broadcast::Receiver<LeaseEvent>,
    mut pick: impl FnMut(&LeaseEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await
    .expect("the event in time")
}

/// A child process that is killed when dropped.
pub struct Child {
    pub child: tokio::process::Child,
    pub stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    /// Starts `bin` with `args`, stdout piped, killed on drop.
    pub fn spawn(bin: &std::path::Path, args: &[&str]) -> Self {
        Self::spawn_env(bin, args, &[])
    }

    /// Like [`Child::spawn`], with extra environment variables.
    pub fn spawn_env(bin: &std::path::Path, args: &[&str], env: &[(String, String)]) -> Self {
        Self::spawn_with(bin, args, env, None)
    }

    /// Like [`Child::spawn`], in directory `cwd`, stderr into `cwd/stderr.log`.
    pub fn spawn_in(bin: &std::path::Path, args: &[&str], cwd: &std::path::Path) -> Self {
        Self::spawn_with(bin, args, &[], Some(cwd))
    }

    /// Like [`Child::spawn_in`], with extra environment variables.
    pub fn spawn_env_in(
        bin: &std::path::Path,
        args: &[&str],
        env: &[(String, String)],
        cwd: &std::path::Path,
    ) -> Self {
        Self::spawn_with(bin, args, env, Some(cwd))
    }

    fn spawn_with(
        bin: &std::path::Path,
        args: &[&str],
        env: &[(String, String)],
        cwd: Option<&std::path::Path>,
    ) -> Self {
        let stderr = match cwd {
            Some(dir) => std::process::Stdio::from(
                std::fs::File::create(dir.join("stderr.log")).expect("stderr log"),
            ),
            None => std::process::Stdio::inherit(),
        };
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(bin);
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }
        let mut child = command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        Child { child, stdout }
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    pub async fn line(&mut self, prefix: &str) -> String {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let line = self
                    .stdout
                    .next_line()
                    .await
                    .expect("read stdout")
                    .expect("process ended before printing");
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_owned();
                }
            }
        })
        .await
        .expect("the line in time")
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill9(&mut self) {
        self.child.kill().await.expect("kill");
    }
}

/// Writes `identity`'s certificate and key and the CA to a fresh directory.
pub fn write_identity(ca: &TestCa, urn: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let issued = ca
        .authority()
        .issue(&LeafSpec::new(urn.parse().expect("urn")))
        .expect("issue");
    std::fs::write(dir.path().join("cert.pem"), issued.cert_pem()).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), issued.key_pem()).expect("write key");
    std::fs::write(dir.path().join("ca.pem"), ca.authority().cert_pem()).expect("write ca");
    dir
}

/// A module process started with the launch protocol.
pub struct ModuleProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub urn: Urn,
    pub dir: tempfile::TempDir,
}

impl ModuleProcess {
    /// Starts the echo fixture as `urn` with `contract_toml` (the `urn` line
    /// is added), bound to `core` if given, with `operators`.
    pub async fn start(
        ca: &TestCa,
        urn: &str,
        contract_toml: &str,
        core: Option<&str>,
        operators: &[&str],
    ) -> Self {
        let dir = write_identity(ca, urn);
        let contract = format!("urn = \"{urn}\"\n{contract_toml}");
        let mut env: Vec<(String, String)> = vec![
            (launch::ENV_CERT.into(), path(&dir, "cert.pem")),
            (launch::ENV_KEY.into(), path(&dir, "key.pem")),
            (launch::ENV_CA.into(), path(&dir, "ca.pem")),
            (launch::ENV_OPERATORS.into(), operators.join(",")),
            ("FIXTURE_CONTRACT".into(), contract),
            ("FIXTURE_CLEANUP_MARKER".into(), path(&dir, "cleaned-up")),
        ];
        if let Some(core) = core {
            env.push((launch::ENV_CORE_URN.into(), core.into()));
        }
        let mut child = Child::spawn_env(&bin_path("anima-fixture-module"), &[], &env);
        let line = child.line(launch::READY_PREFIX).await;
        let (got, addr) = launch::parse_ready_line(&format!("{} {line}", launch::READY_PREFIX))
            .expect("a valid ready line");
        assert_eq!(got.as_str(), urn);
        ModuleProcess {
            child,
            addr: addr.tcp().expect("TCP: no Unix socket was offered"),
            urn: got,
            dir,
        }
    }

    /// Whether the cleanup hook ran.
    pub fn cleaned_up(&self) -> bool {
        self.dir.path().join("cleaned-up").exists()
    }

    /// Waits (at most `limit`) for the process to exit by itself.
    pub async fn exit_status(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.child.id().unwrap_or(0)
    }
}

fn path(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

/// A Core's side of one lease opened with the Core's own `LeaseLink`, with
/// the audit log and lease table it writes to.
pub struct Lessee {
    /// The lease link.
    pub link: anima_core::lease::LeaseLink,
    /// The lease table the link reports to.
    pub table: anima_core::lease::LeaseTable,
    /// The link's (in-memory) audit log.
    pub audit: anima_core::audit::AuditLog,
}

/// Dials the module `urn` at `addr` as `core` (minted by `ca`) and opens a
/// lease for `scope` with TTL `ttl`, as the Core's supervisor does.
pub async fn open_lease(
    ca: &TestCa,
    core: &str,
    addr: SocketAddr,
    urn: &Urn,
    ttl: Duration,
    scope: &[&str],
    table: anima_core::lease::LeaseTable,
) -> Result<Lessee, anima_core::lease::CoreLeaseError> {
    let identity = ca.identity(core);
    let signer = Arc::new(LeaseSigner::from_identity(&identity).expect("signer"));
    let conn = ClientTls::new(identity, ca.trust())
        .dial_addr(addr, PeerPolicy::exactly(urn.clone()))
        .await?;
    let audit = anima_core::audit::AuditLog::memory();
    let link = anima_core::lease::LeaseLink::open(
        conn,
        signer,
        Scope::new(scope.iter().copied()).expect("scope"),
        anima_core::lease::RenewalPolicy::new(ttl),
        audit.clone(),
        table.clone(),
    )
    .await?;
    Ok(Lessee { link, table, audit })
}
