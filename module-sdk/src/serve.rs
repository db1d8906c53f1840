//! Serving a module: the one entry point module authors call.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anima_protocol::lease::{LeaseId, LeaseSigner, Reason, Scope};
use anima_protocol::pb::lease_control_server::LeaseControlServer;
use anima_protocol::pb::module_admin_server::ModuleAdminServer;
use anima_protocol::pb::probe_server::ProbeServer;
use anima_protocol::transport::{Address, CertWatch, Listener};
use anima_protocol::{PeerPolicy, ServerTls, TlsIdentity, TrustRoot, Urn};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::admin::AdminService;
use crate::control::ControlService;
use crate::descriptors;
use crate::error::SdkError;
use crate::gate::GateLayer;
use crate::leases::{LeaseEvent, ModuleState};
use crate::lifecycle::{self, CleanupHook, Exit, Phase, SharedCleanup, cleanup_once};
use crate::probe::ProbeService;
use anima_protocol::contract::Contract;
use anima_protocol::interface::definition::Interface;
use anima_protocol::launch::{LaunchEnv, ready_line, shutdown_signal};

/// HTTP/2 keepalive: a ping every interval, answered within the timeout, or
/// the connection (and its lease) is dead. A silent Core is detected within
/// their sum; a Core whose process dies is detected at once (the kernel
/// closes its sockets).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long in-flight work may drain once the module stops.
const DRAIN: Duration = Duration::from_millis(250);

/// A module: its contract, identity and services, ready to serve.
///
/// ```no_run
/// # use anima_module_sdk::{Contract, ModuleServer};
/// # async fn demo(contract: Contract, identity: anima_protocol::TlsIdentity,
/// #     trust: anima_protocol::TrustRoot, descriptors: &[u8],
/// #     service: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>)
/// # -> Result<(), anima_module_sdk::SdkError> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let exit = ModuleServer::new(contract, &identity, &trust)?
///     .file_descriptor_set(descriptors)
///     .service(service)
///     .serve(listener, std::future::pending())
///     .await?;
/// std::process::exit(exit.code().into());
/// # }
/// ```
pub struct ModuleServer {
    state: Arc<ModuleState>,
    tls: ServerTls,
    routes: Option<Routes>,
    services: Vec<&'static str>,
    descriptors: Vec<u8>,
    interfaces: Vec<Interface>,
    cleanup: Option<CleanupHook>,
}

impl ModuleServer {
    /// Prepares to serve as `identity` (whose URN must be the contract's),
    /// accepting Cores (and operators, for `ModuleAdmin`) whose certificates
    /// chain to `trust`.
    pub fn new(
        contract: Contract,
        identity: &TlsIdentity,
        trust: &TrustRoot,
    ) -> Result<Self, SdkError> {
        if identity.urn() != &contract.urn {
            return Err(SdkError::IdentityMismatch {
                cert: identity.urn().to_string(),
                contract: contract.urn.to_string(),
            });
        }
        let signer = LeaseSigner::from_identity(identity)?;
        let state = ModuleState::new(contract, signer, None, Vec::new());
        // Only in the test-only copy of the SDK (tests/faulty): ANIMA_TEST_FAULT.
        #[cfg(anima_test_faults)]
        state.faults.load_env(&state.contract)?;
        let tls = ServerTls::new(
            identity,
            trust,
            PeerPolicy::Kinds(crate::access::peer_kinds(&state)),
        )?;
        Ok(ModuleServer {
            state: Arc::new(state),
            tls,
            routes: None,
            services: Vec::new(),
            descriptors: Vec::new(),
            interfaces: Vec::new(),
            cleanup: None,
        })
    }

    /// Binds a Type I/II module to the Core `core` (its launching Core).
    /// Without it, a Type II module binds to the first Core that leases it.
    pub fn bind_core(self, core: Urn) -> Self {
        self.state.set_bound_core(core);
        self
    }

    /// Identities (besides the module's own Core) that may shut it down.
    pub fn operators(self, operators: Vec<Urn>) -> Self {
        self.state.set_operators(operators);
        self
    }

    /// The module's encoded `FileDescriptorSet`, from which the SDK lists the
    /// served methods to check them against the contract.
    pub fn file_descriptor_set(mut self, bytes: &[u8]) -> Self {
        self.descriptors = bytes.to_vec();
        self
    }

    /// The definition of an interface the contract `provides` (its
    /// `interface.toml`, PROTOCOL.md §9), e.g.
    /// `Interface::from_toml(include_str!("…/interface.toml"))`. Before
    /// serving, the SDK checks that every interface the contract provides
    /// has its definition here, that every method of each is declared in
    /// the contract's `methods` (and so served: the served methods must be
    /// the declared ones), and that no definition is given for an interface
    /// the contract does not provide; otherwise the module refuses to start.
    pub fn interface(mut self, definition: Interface) -> Self {
        self.interfaces.push(definition);
        self
    }

    /// Adds a capability service (a tonic generated server).
    pub fn service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME);
        self.routes = Some(match self.routes.take() {
            None => Routes::new(service),
            Some(routes) => routes.add_service(service),
        });
        self
    }

    /// Serves the conformance probe, `anima.v1.Probe` (PROTOCOL.md §8), beside
    /// the module's own services, so a conformance tool (`anima
    /// conformance`) can observe from outside what handlers did: whether one
    /// ran without a lease, committed after its lease ended, or let one
    /// lease see another's state.
    ///
    /// - `Touch { hold_ms }` counts the handler's execution first, waits
    ///   `hold_ms` (at most 60 000, else `INVALID_ARGUMENT`) unless the lease
    ///   ends first (then `LEASE_EXPIRED` / `LEASE_REVOKED`, nothing
    ///   committed), then commits one touch to the lease's tenant state and
    ///   the module's `committed` count, atomically with the lease being
    ///   valid;
    /// - `Read {}` answers `{touches, executions, committed}`: the calling
    ///   lease's touches and the module's two counters (since the process
    ///   started).
    ///
    /// - `Watch {every_ms, count}` is a server stream: it counts one
    ///   execution, then commits one touch per reading while the lease is
    ///   valid; it ends with the lease's reason when the lease ends.
    ///
    /// Declare the three methods in the contract like any capability —
    /// `methods = [..., "/anima.v1.Probe/Touch", "/anima.v1.Probe/Read",
    /// "/anima.v1.Probe/Watch"]` — or the
    /// module refuses to start (served but not declared); leases, proofs and
    /// scope apply to them as to the module's own methods. The SDK knows
    /// the probe's descriptors, so [`ModuleServer::file_descriptor_set`]
    /// needs only the module's own. Calling this twice serves one probe.
    pub fn probe(self) -> Self {
        if self
            .services
            .contains(&<ProbeServer<ProbeService> as NamedService>::NAME)
        {
            return self;
        }
        self.service(ProbeServer::new(ProbeService::default()))
    }

    /// Injects a test fault without the environment (the SDK's own tests).
    #[cfg(all(test, anima_test_faults))]
    pub(crate) fn inject_fault(self, fault: crate::fault::Fault) -> Self {
        self.state.faults.inject(fault, &self.state.contract);
        self
    }

    /// Checks the served methods against the contract's `methods` (I2),
    /// reading each served service's methods from the module's descriptor
    /// set or, for the services the SDK itself can add (the probe), the
    /// protocol's.
    fn check_methods(&self) -> Result<(), SdkError> {
        if self.descriptors.is_empty()
            && self
                .services
                .iter()
                .any(|s| *s != <ProbeServer<ProbeService> as NamedService>::NAME)
        {
            return Err(SdkError::MethodMismatch(
                "no file descriptor set was given (ModuleServer::file_descriptor_set): \
                 the served methods cannot be checked against the contract"
                    .into(),
            ));
        }
        let served = descriptors::served_methods(
            &[&self.descriptors, anima_protocol::pb::FILE_DESCRIPTOR_SET],
            &self.services,
        )?;
        descriptors::check(&served, &self.state.contract.methods)?;
        self.check_interfaces()
    }

    /// Checks the interfaces the contract provides against the definitions
    /// given ([`ModuleServer::interface`]): each provided one defined, each
    /// of its methods declared, nothing defined that is not provided (P1).
    fn check_interfaces(&self) -> Result<(), SdkError> {
        let contract = &self.state.contract;
        for provided in &contract.provides {
            let Some(definition) = self.interfaces.iter().find(|d| d.provided == *provided) else {
                return Err(SdkError::Interface(format!(
                    "the contract provides {provided} but its definition was not given \
                     (ModuleServer::interface with its interface.toml)"
                )));
            };
            let missing: Vec<&str> = definition
                .method_paths()
                .filter(|m| !contract.methods.contains(m))
                .collect();
            if !missing.is_empty() {
                return Err(SdkError::Interface(format!(
                    "the contract provides {provided} but does not declare (or serve) its methods {}",
                    missing.join(", ")
                )));
            }
        }
        if let Some(extra) = self
            .interfaces
            .iter()
            .find(|d| !contract.provides.contains(&d.provided))
        {
            return Err(SdkError::Interface(format!(
                "the definition of {} was given but the contract does not provide it: \
                 add it to `provides` in module.toml",
                extra.provided
            )));
        }
        Ok(())
    }

    /// The cleanup hook a Type I module runs in its termination window.
    pub fn on_cleanup<F, Fut>(mut self, cleanup: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.cleanup = Some(Box::new(move || Box::pin(cleanup())));
        self
    }

    /// Accepts at most `n` connections at once from one identity (default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_IDENTITY`]): raise it for a module that
    /// one Core legitimately holds many leases on (each lease is a connection
    /// of its own).
    ///
    /// [`DEFAULT_MAX_CONNECTIONS_PER_IDENTITY`]: anima_protocol::transport::DEFAULT_MAX_CONNECTIONS_PER_IDENTITY
    pub fn max_connections_per_identity(mut self, n: usize) -> Self {
        self.tls = self.tls.max_connections_per_identity(n);
        self
    }

    /// A handle to watch and act on leases, and to reload the module's
    /// certificates, while serving.
    pub fn handle(&self) -> ModuleHandle {
        ModuleHandle {
            state: self.state.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The TLS listener configuration (to observe refused connections).
    pub fn tls(&self) -> &ServerTls {
        &self.tls
    }

    /// Checks the served methods against the contract, then serves on
    /// `listener` (a `TcpListener`, a `UnixListener` or a [`Listener`])
    /// until the lifecycle ends (Type I), an authorized shutdown arrives, or
    /// `shutdown` completes. The lease control service,
    /// `ModuleAdmin` and `grpc.health.v1` are added; every other call passes
    /// the lease gate.
    pub async fn serve(
        mut self,
        listener: impl Into<Listener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Exit, SdkError> {
        let listener = listener.into();
        let routes = self.routes.take().ok_or_else(|| {
            SdkError::MethodMismatch(
                "no capability service was added (ModuleServer::service)".into(),
            )
        })?;
        self.check_methods()?;

        let state = self.state;
        let stop = CancellationToken::new();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        // The lease-free services take small messages only (a token is at
        // most 8 KiB): a peer cannot make them buffer tonic's default 4 MiB.
        let routes = routes
            .add_service(
                LeaseControlServer::new(ControlService {
                    state: state.clone(),
                })
                .max_decoding_message_size(INFRASTRUCTURE_MESSAGE_LIMIT),
            )
            .add_service(
                ModuleAdminServer::new(AdminService {
                    state: state.clone(),
                    stop: stop.clone(),
                })
                .max_decoding_message_size(INFRASTRUCTURE_MESSAGE_LIMIT),
            )
            .add_service(health.max_decoding_message_size(INFRASTRUCTURE_MESSAGE_LIMIT));
        tracing::info!(
            module = %state.contract.urn,
            module_type = %state.contract.module_type,
            addr = %listener.local_address()?,
            "serving"
        );
        let cleanup: SharedCleanup = Arc::new(std::sync::Mutex::new(self.cleanup));
        let lifecycle = tokio::spawn(lifecycle::run(state.clone(), stop.clone(), cleanup.clone()));
        // Cores and operators only (PROTOCOL.md §1), a bounded number of
        // streams per connection.
        let incoming = self
            .tls
            .clone()
            .admit(crate::access::admits(state.clone()))
            .incoming(listener);
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(crate::access::MAX_CONCURRENT_STREAMS)
            .layer(GateLayer {
                state: state.clone(),
            })
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        tokio::pin!(server);
        let outside = async {
            shutdown.await;
            // Leaving: revoke every lease, telling each Core.
            state.revoke_all(Reason::Shutdown, "module shutting down");
            state.set_exit(Exit::Stopped);
            stop.cancel();
            std::future::pending::<()>().await;
        };
        let drained = async {
            stop.cancelled().await;
            tokio::time::sleep(DRAIN).await;
        };
        tokio::select! {
            result = &mut server => result?,
            _ = outside => {}
            _ = drained => {}
        }
        lifecycle.abort();
        // Stopped from outside (signal, shutdown request): the cleanup hook
        // still runs once, within the termination window.
        cleanup_once(&cleanup, state.contract.termination_window).await;
        Ok(state.take_exit().unwrap_or(Exit::Stopped))
    }
}

/// The largest message a module takes on `LeaseControl`, `ModuleAdmin` and
/// `grpc.health.v1` (PROTOCOL.md §1): a larger one is not read, and its
/// call ends (on the control stream, the lease with it).
pub const INFRASTRUCTURE_MESSAGE_LIMIT: usize = 64 * 1024;

/// The whole `main` of a module started under the launch protocol: reads
/// the environment ([`anima_protocol::launch`](mod@anima_protocol::launch)), lets `configure` add services and
/// hooks, prints the ready line, serves until the lifecycle ends or
/// SIGINT/SIGTERM, and returns the exit status. Startup failures (a method
/// mismatch, a missing variable, an unreadable certificate) are one line on
/// stderr and status 1.
pub async fn launch(
    contract: Contract,
    configure: impl FnOnce(ModuleServer) -> ModuleServer,
) -> ExitCode {
    match launch_inner(contract, configure).await {
        Ok(exit) => {
            tracing::info!(?exit, "module exiting");
            ExitCode::from(exit.code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn launch_inner(
    contract: Contract,
    configure: impl FnOnce(ModuleServer) -> ModuleServer,
) -> Result<Exit, SdkError> {
    let env = LaunchEnv::from_env()?;
    if !die_with_parent(env.parent_pid) {
        return Ok(Exit::Stopped);
    }
    let identity = TlsIdentity::from_pem_files(&env.cert, &env.key)?;
    let trust = TrustRoot::from_pem_file(&env.ca)?;
    let mut server = ModuleServer::new(contract, &identity, &trust)?.operators(env.operators);
    if let Some(core) = env.core {
        server = server.bind_core(core);
    }
    let server = configure(server);
    tokio::spawn(reload_on_change(server.handle(), env.cert, env.key, env.ca));
    // The Unix socket offered, if any (same host: no TCP stack), else TCP.
    let listen = match env.listen_unix {
        Some(path) => Address::Unix(path),
        None => Address::Tcp(env.listen),
    };
    let listener = Listener::bind(&listen).await?;
    let addr = listener.local_address()?;
    // Check everything before announcing readiness.
    let urn = identity.urn().clone();
    let ready = ready_line(&urn, addr);
    let announce = async move {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{ready}");
        let _ = out.flush();
    };
    let serve = server.serve_announced(listener, shutdown_signal(), announce);
    serve.await
}

impl ModuleServer {
    async fn serve_announced(
        self,
        listener: Listener,
        shutdown: impl Future<Output = ()> + Send,
        announce: impl Future<Output = ()>,
    ) -> Result<Exit, SdkError> {
        self.check_methods()?;
        announce.await;
        self.serve(listener, shutdown).await
    }
}

/// Reads the module's certificate, key and CA file again on SIGHUP and
/// whenever one of them changes; a set that does not load (a key that does
/// not match, another URN) is logged and the previous one stays in use.
async fn reload_on_change(handle: ModuleHandle, cert: PathBuf, key: PathBuf, ca: PathBuf) {
    let mut watch = CertWatch::new(vec![cert.clone(), key.clone(), ca.clone()]);
    loop {
        let why = watch.next().await;
        let loaded = TlsIdentity::from_pem_files(&cert, &key)
            .map_err(SdkError::from)
            .and_then(|identity| {
                let trust = TrustRoot::from_pem_file(&ca)?;
                handle.reload(&identity, &trust)?;
                Ok(identity.fingerprint())
            });
        match loaded {
            Ok(fingerprint) => tracing::info!(
                why = %why,
                %fingerprint,
                "certificates reloaded: new connections and leases use them; open leases go on"
            ),
            Err(e) => tracing::error!(
                why = %why,
                error = %e,
                "certificates not reloaded; the previous ones stay in use"
            ),
        }
    }
}

/// With `ANIMA_PARENT_PID` set (a Core launched us), asks the kernel for
/// SIGTERM when that parent dies, so a killed Core leaves no orphan. False
/// when the parent is already gone.
fn die_with_parent(parent_pid: Option<u32>) -> bool {
    let Some(parent) = parent_pid.and_then(|pid| i32::try_from(pid).ok()) else {
        return true;
    };
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Signal, getppid, set_parent_process_death_signal};
        if let Err(e) = set_parent_process_death_signal(Some(Signal::TERM)) {
            tracing::warn!(error = %e, "cannot ask for the parent-death signal");
        }
        // The parent may have died before the request took effect.
        if getppid().map(|p| p.as_raw_pid()) != Some(parent) {
            tracing::warn!(parent, "the launching Core is already gone; exiting");
            return false;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
    true
}

/// Watches and acts on a serving module's leases.
#[derive(Clone)]
pub struct ModuleHandle {
    state: Arc<ModuleState>,
    tls: ServerTls,
}

impl ModuleHandle {
    /// Takes up a renewed certificate (same URN) and trust root without a
    /// restart: new connections are presented `identity` and accept peers
    /// that chain to `trust` (which may hold an old and a new CA during a
    /// rollover), and leases they open are signed with its key. Leases
    /// already open go on under the certificate their connection was
    /// presented until they end; their Core re-establishes them under the
    /// new one (PROTOCOL.md §2, *Renewed certificates*). On error nothing
    /// changes. [`launch`] calls this on SIGHUP and whenever `ANIMA_CERT`,
    /// `ANIMA_KEY` or `ANIMA_CA` changes.
    pub fn reload(&self, identity: &TlsIdentity, trust: &TrustRoot) -> Result<(), SdkError> {
        if identity.urn() != &self.state.contract.urn {
            return Err(SdkError::IdentityMismatch {
                cert: identity.urn().to_string(),
                contract: self.state.contract.urn.to_string(),
            });
        }
        let signer = LeaseSigner::from_identity(identity)?;
        // The signer first: a handshake presenting the new certificate
        // finds its signer when the offer arrives.
        self.state.signers.push(signer);
        self.tls.reload(identity, None, trust)?;
        Ok(())
    }

    /// Lease events from now on.
    pub fn events(&self) -> broadcast::Receiver<LeaseEvent> {
        self.state.subscribe()
    }

    /// The number of open leases, updated as it changes.
    pub fn active_leases(&self) -> watch::Receiver<usize> {
        self.state.active()
    }

    /// The open leases by the Core holding them, updated as they change:
    /// only Cores holding one are in the map. A Type III module leased by
    /// several Cores tells here whether one Core's lease is still open
    /// (what [`run_subscriber`](crate::messages::run_subscriber) needs
    /// before it hands that Core's deliveries to a handler).
    pub fn active_leases_by_core(&self) -> watch::Receiver<BTreeMap<Urn, usize>> {
        self.state.active_by_core()
    }

    /// The lifecycle phase, updated as it changes.
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.state.watch_phase()
    }

    /// The ids of the open leases.
    pub fn lease_ids(&self) -> Vec<LeaseId> {
        self.state
            .slots_snapshot()
            .iter()
            .filter(|s| !s.ended.is_cancelled())
            .map(|s| s.id)
            .collect()
    }

    /// The declared methods.
    pub fn methods(&self) -> &Scope {
        &self.state.contract.methods
    }

    /// Revokes lease `id` and tells its Core; false when no such lease is open.
    pub fn revoke(&self, id: LeaseId, detail: &str) -> bool {
        match self
            .state
            .slots_snapshot()
            .into_iter()
            .find(|s| s.id == id && !s.ended.is_cancelled())
        {
            Some(slot) => {
                self.state.revoke(&slot, Reason::LeaseRevoked, detail);
                true
            }
            None => false,
        }
    }

    /// Revokes every open lease (e.g. on shutdown).
    pub fn revoke_all(&self, reason: Reason, detail: &str) {
        self.state.revoke_all(reason, detail);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anima_protocol::transport::DEFAULT_MAX_CONNECTIONS_PER_IDENTITY;

    use crate::Contract;
    use crate::testing::TestBed;

    fn contract() -> Contract {
        Contract::from_toml(
            "urn = \"urn:anima:module:many\"\nversion = \"1\"\nmax_lease = \"30s\"\n\
             methods = [\"/anima.v1.Probe/Touch\", \"/anima.v1.Probe/Read\", \"/anima.v1.Probe/Watch\"]\n\
             type = \"resident-shared\"",
        )
        .unwrap()
    }

    /// How many leases one Core gets on `module`, each on its own
    /// connection, asking for `tries`.
    async fn leases_of_one_core(bed: &TestBed, limit: Option<usize>, tries: usize) -> usize {
        let served = bed
            .serve(|m| {
                let m = m.probe();
                match limit {
                    Some(n) => m.max_connections_per_identity(n),
                    None => m,
                }
            })
            .await
            .unwrap();
        let core = bed.core("urn:anima:core:a").unwrap();
        let mut held = Vec::new();
        for _ in 0..tries {
            match core.lease(&served, Duration::from_secs(10)).await {
                Ok(lease) => held.push(lease),
                Err(_) => break,
            }
        }
        held.len()
    }

    /// A Type III module leased by two Cores counts each one's open leases
    /// apart: the end of one Core's lease leaves the other's count as it
    /// was (what `run_subscriber` waits on for its Core's deliveries).
    #[tokio::test]
    async fn s3_open_leases_are_counted_by_the_core_holding_them() {
        let bed = TestBed::new(contract()).unwrap();
        let served = bed.serve(|m| m.probe()).await.unwrap();
        let mut by_core = served.handle.active_leases_by_core();
        let (a, b) = (
            bed.core("urn:anima:core:a").unwrap(),
            bed.core("urn:anima:core:b").unwrap(),
        );
        let ttl = Duration::from_secs(10);
        let from_a = a.lease(&served, ttl).await.unwrap();
        let _from_b = b.lease(&served, ttl).await.unwrap();
        let _again_b = b.lease(&served, ttl).await.unwrap();
        let counts = |m: &std::collections::BTreeMap<anima_protocol::Urn, usize>| {
            m.iter()
                .map(|(core, n)| (core.to_string(), *n))
                .collect::<Vec<_>>()
        };
        let both = by_core
            .wait_for(|m| m.values().sum::<usize>() == 3)
            .await
            .map(|m| counts(&m))
            .unwrap();
        assert_eq!(
            both,
            [
                ("urn:anima:core:a".to_owned(), 1),
                ("urn:anima:core:b".to_owned(), 2)
            ]
        );
        from_a.revoke().await.unwrap();
        let after = by_core
            .wait_for(|m| m.values().sum::<usize>() == 2)
            .await
            .map(|m| counts(&m))
            .unwrap();
        assert_eq!(after, [("urn:anima:core:b".to_owned(), 2)]);
        assert_eq!(*served.handle.active_leases().borrow(), 2);
    }

    /// The control stream takes messages of up to
    /// [`INFRASTRUCTURE_MESSAGE_LIMIT`](super::INFRASTRUCTURE_MESSAGE_LIMIT):
    /// an oversized token within it is refused `BAD_TOKEN` as always, and a
    /// frame over it ends the call unread, before the module buffers it.
    #[tokio::test]
    async fn t3_a_control_frame_over_the_limit_fails_the_call_unread() {
        use anima_protocol::control::ControlStream;
        use anima_protocol::pb::SignedToken;
        use anima_protocol::pb::control_frame::Frame;
        use anima_protocol::{ClientTls, PeerPolicy};
        let bed = TestBed::new(contract()).unwrap();
        let served = bed.serve(|m| m.probe()).await.unwrap();
        let client = ClientTls::new(
            bed.identity("urn:anima:core:a").unwrap(),
            bed.trust().unwrap(),
        );
        let offer = |size: usize| {
            Frame::Offer(SignedToken {
                jws: "x".repeat(size),
            })
        };
        let conn = client
            .dial_addr(served.addr, PeerPolicy::exactly(served.urn.clone()))
            .await
            .unwrap();
        // Over the token's 8 KiB, within the stream's limit: BAD_TOKEN.
        let mut stream = ControlStream::open(&conn, Some(offer(9_000)))
            .await
            .unwrap();
        match stream.message().await {
            Ok(Some(frame)) => match frame.frame {
                Some(Frame::Refuse(refusal)) => assert_eq!(refusal.reason, "BAD_TOKEN"),
                other => panic!("a refusal, not {other:?}"),
            },
            other => panic!("a refusal, not {other:?}"),
        }
        // Over the stream's limit: the module never reads it (no refusal
        // comes), and the call ends.
        let mut stream =
            ControlStream::open(&conn, Some(offer(super::INFRASTRUCTURE_MESSAGE_LIMIT + 1)))
                .await
                .unwrap();
        match stream.message().await {
            Ok(None) | Err(_) => {}
            Ok(Some(frame)) => panic!("the frame was read: {frame:?}"),
        }
    }

    #[tokio::test]
    async fn one_identity_holds_at_most_its_connection_limit_and_the_limit_can_be_raised() {
        let bed = TestBed::new(contract()).unwrap();
        let over = DEFAULT_MAX_CONNECTIONS_PER_IDENTITY + 6;
        assert_eq!(leases_of_one_core(&bed, Some(3), 5).await, 3);
        assert_eq!(
            leases_of_one_core(&bed, None, over).await,
            DEFAULT_MAX_CONNECTIONS_PER_IDENTITY
        );
        assert_eq!(leases_of_one_core(&bed, Some(over), over).await, over);
    }

    #[tokio::test]
    async fn a_reloaded_certificate_serves_new_leases_while_open_ones_go_on_under_the_old() {
        use anima_protocol::pb::TouchRequest;
        use anima_protocol::pb::probe_client::ProbeClient;
        let bed = TestBed::new(contract()).unwrap();
        let served = bed.serve(|m| m.probe()).await.unwrap();
        let core = bed.core("urn:anima:core:a").unwrap();
        let ttl = Duration::from_secs(10);
        let before = core.lease(&served, ttl).await.unwrap();

        let renewed = bed.identity("urn:anima:module:many").unwrap();
        assert_ne!(before.module_fingerprint(), renewed.fingerprint());
        served
            .handle
            .reload(&renewed, &bed.trust().unwrap())
            .unwrap();
        let after = core.lease(&served, ttl).await.unwrap();
        assert_eq!(after.module_fingerprint(), renewed.fingerprint());

        // Each lease's steps are signed with its own certificate's key: the
        // Core verifies them with the key its connection was presented.
        before.renew(ttl).await.unwrap();
        after.renew(ttl).await.unwrap();
        for lease in [&before, &after] {
            ProbeClient::new(lease.channel())
                .touch(TouchRequest { hold_ms: 0 })
                .await
                .unwrap();
        }
        before.revoke().await.unwrap();
        after.renew(ttl).await.unwrap();

        // A certificate for another identity is not taken.
        let other = bed.identity("urn:anima:module:other").unwrap();
        let refused = served.handle.reload(&other, &bed.trust().unwrap());
        assert!(
            matches!(refused, Err(crate::SdkError::IdentityMismatch { .. })),
            "{refused:?}"
        );
        let still = core.lease(&served, ttl).await.unwrap();
        assert_eq!(still.module_fingerprint(), renewed.fingerprint());
    }

    #[test]
    fn p1_a_module_providing_an_interface_must_be_given_its_definition_and_declare_its_methods() {
        use anima_protocol::interface::definition::Interface;
        let probe = |extra: &str| {
            Contract::from_toml(&format!(
                "urn = \"urn:anima:module:many\"\nversion = \"1\"\nmax_lease = \"30s\"\n\
                 methods = [\"/anima.v1.Probe/Touch\", \"/anima.v1.Probe/Read\", \"/anima.v1.Probe/Watch\"]\n{extra}"
            ))
            .unwrap()
        };
        let definition = |methods: &[&str]| {
            let methods: String = methods
                .iter()
                .map(|m| format!("[[method]]\npath = \"{m}\"\nidempotent = true\n"))
                .collect();
            Interface::from_toml(&format!(
                "interface = \"test/probe\"\nversion = \"1.0.0\"\nsummary = \"s\"\n\
                 lifecycle = \"l\"\nprotos = [\"probe.proto\"]\n{methods}"
            ))
            .unwrap()
        };
        let provides = "provides = [{ interface = \"test/probe\", version = \"1.0\" }]";
        let bed = TestBed::new(probe(provides)).unwrap();
        let identity = bed.identity("urn:anima:module:many").unwrap();
        let trust = bed.trust().unwrap();
        let server = |contract: Contract| {
            crate::ModuleServer::new(contract, &identity, &trust)
                .unwrap()
                .probe()
        };
        let check = |s: crate::ModuleServer| s.check_methods().map_err(|e| e.to_string());

        // Provided, defined, every method declared and served: it starts.
        let ok = server(probe(provides)).interface(definition(&[
            "/anima.v1.Probe/Touch",
            "/anima.v1.Probe/Read",
        ]));
        check(ok).unwrap();
        // Provided without its definition.
        let err = check(server(probe(provides))).unwrap_err();
        assert!(
            err.contains("provides test/probe 1.0.0 but its definition was not given"),
            "{err}"
        );
        // A method of the interface neither declared nor served.
        let err = check(server(probe(provides)).interface(definition(&[
            "/anima.v1.Probe/Touch",
            "/anima.v1.Probe/Forget",
        ])))
        .unwrap_err();
        assert!(
            err.contains("does not declare (or serve) its methods /anima.v1.Probe/Forget"),
            "{err}"
        );
        // A definition for an interface the contract does not provide.
        let err =
            check(server(probe("")).interface(definition(&["/anima.v1.Probe/Touch"]))).unwrap_err();
        assert!(err.contains("add it to `provides`"), "{err}");
    }
}
