//! `anima serve`: the Core as a service.
//!
//! Loads the identity, opens the audit log, serves the admin API over mTLS,
//! and runs one supervisor per module in dependency order. On shutdown it
//! revokes its leases, stops the modules it started (each within a bounded
//! grace), and returns. If its endpoint stops serving first (the listening
//! socket is lost, the server task fails), it logs why, stops the same way,
//! and returns `ServeError::EndpointStopped`: a Core without its admin API
//! and gateway does not go on silently. Under a service manager
//! (`NOTIFY_SOCKET`) its main loop also says READY once the modules' first
//! leases are settled, STATUS as they change, pings the watchdog, and says
//! STOPPING when it starts shutting down (`crate::notify`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anima_protocol::lease::LeaseSigner;
use anima_protocol::pb::core_admin_server::CoreAdminServer;
use anima_protocol::pb::mediator_server::MediatorServer;
use anima_protocol::pb::registry_server::RegistryServer;
use anima_protocol::{ClientTls, PeerPolicy, ServerTls, TlsConn, TlsIdentity, TrustRoot, Urn};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminService;
use crate::audit::AuditLog;
use crate::config::Backend;
use crate::config::{Config, start_order};
use crate::discovery::RegistryService;
use crate::events::Events;
use crate::gateway::Gateway;
use crate::gateway::route::Routes;
use crate::lease::LeaseTable;
use crate::mediator::hub::Hub;
use crate::mediator::nats::NatsConfig;
use crate::mediator::route::Grants;
use crate::mediator::service::MediatorService;
use crate::metrics::Metrics;
use crate::notify::{Notifier, Requires};
use crate::registry::Registry;
use crate::supervisor::{CoreContext, Credentials, supervise};

/// The line `anima serve` prints on stdout once its admin endpoint listens.
pub(crate) const READY_PREFIX: &str = "ANIMA-CORE READY";

/// How long module supervisors may take to stop everything on shutdown.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How many streams (calls) one connection to the Core's endpoint may have
/// open at once: announced as HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`, and
/// streams past it are refused (`REFUSED_STREAM`). What one user holds in
/// all is bounded by the gateway
/// ([`DEFAULT_MAX_CALLS_PER_USER`](crate::gateway::DEFAULT_MAX_CALLS_PER_USER))
/// and by the connections one identity may keep
/// ([`anima_protocol::transport::DEFAULT_MAX_CONNECTIONS_PER_IDENTITY`]).
pub const ENDPOINT_MAX_CONCURRENT_STREAMS: u32 = 256;

/// How long the audit log may take to write what is queued on shutdown.
const AUDIT_FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Why the Core could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ServeError {
    /// The Core's certificate or CA.
    #[error("Core identity: {0}")]
    Identity(#[from] anima_protocol::TransportError),
    /// The certificate names another identity than the configuration.
    #[error("the Core certificate is {cert}, but the configuration says {config}")]
    WrongIdentity {
        /// The certificate's URN.
        cert: String,
        /// The configured URN.
        config: String,
    },
    /// The lease signer.
    #[error("lease signer: {0}")]
    Signer(#[from] anima_protocol::lease::LeaseError),
    /// The interface definitions (`[core] interfaces`).
    #[error(transparent)]
    Interfaces(#[from] crate::gateway::mediate::DefinitionsError),
    /// The mediator's message store (`[mediator] store`).
    #[error("message store {path}: {source}")]
    Store {
        /// The store file.
        path: String,
        /// The error.
        source: crate::mediator::store::StoreError,
    },
    /// Files and sockets.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The admin server failed.
    #[error("admin server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// The Core's endpoint stopped serving while the Core ran.
    #[error("the Core's endpoint {addr} stopped: {why}")]
    EndpointStopped {
        /// Where it listened.
        addr: SocketAddr,
        /// Why it stopped.
        why: String,
    },
}

/// The endpoint's accepted connections, passed through; tells `stopped`
/// why, when accepting stops for good.
struct Watched<S> {
    inner: S,
    stopped: Option<oneshot::Sender<String>>,
}

impl<S> Stream for Watched<S>
where
    S: Stream<Item = Result<TlsConn, std::io::Error>> + Unpin,
{
    type Item = Result<TlsConn, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let why = match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(conn))) => return Poll::Ready(Some(Ok(conn))),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Err(e))) => format!("accepting connections failed: {e}"),
            Poll::Ready(None) => "the listener stopped accepting connections".to_owned(),
        };
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.send(why);
        }
        Poll::Ready(None)
    }
}

/// The Core's endpoint: the admin API, `GET /metrics` (operators), the
/// registry (modules and operators), and the gateway for every other path.
fn endpoint_routes(
    admin: CoreAdminServer<AdminService>,
    registry: RegistryServer<RegistryService>,
    mediator: MediatorServer<MediatorService>,
    gateway: Gateway,
    metrics: Arc<Metrics>,
    ctx: Arc<CoreContext>,
    operators: Vec<Urn>,
) -> tonic::service::Routes {
    use std::convert::Infallible;
    let metrics_service = tower::service_fn(move |request: http::Request<axum::body::Body>| {
        let allowed = request
            .extensions()
            .get::<anima_protocol::PeerInfo>()
            .is_some_and(|p| operators.contains(p.urn()));
        let response = if allowed {
            http::Response::builder()
                .header("content-type", crate::metrics::CONTENT_TYPE)
                .body(axum::body::Body::from(metrics.render(&ctx)))
        } else {
            http::Response::builder()
                .status(http::StatusCode::FORBIDDEN)
                .body(axum::body::Body::from(
                    "metrics are for the Core's operators\n",
                ))
        };
        let response = response.unwrap_or_else(|_| http::Response::new(axum::body::Body::empty()));
        async move { Ok::<_, Infallible>(response) }
    });
    let gateway_service = tower::service_fn(move |request: http::Request<axum::body::Body>| {
        let gateway = gateway.clone();
        async move { Ok::<_, Infallible>(gateway.call(request).await) }
    });
    let router = tonic::service::Routes::new(admin)
        .add_service(registry)
        .add_service(mediator)
        .into_axum_router()
        .route_service("/metrics", metrics_service)
        .fallback_service(gateway_service);
    tonic::service::Routes::from(router)
}

/// What a running Core tells its caller once it is ready.
pub(crate) struct Running {
    /// Where the admin API listens.
    pub(crate) admin_addr: SocketAddr,
}

/// Runs the Core described by `config` until `shutdown` completes.
/// `on_ready` is called once the admin endpoint listens.
pub(crate) async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(&Running),
) -> Result<(), ServeError> {
    let identity = CoreIdentity::load(&config)?;
    let (listener, admin_addr) = bind(config.admin.listen).await?;
    let ctx = Arc::new(core_context(&config, &identity, admin_addr)?);
    let stop = CancellationToken::new();
    let hub = open_store(&config, &identity).await?;
    let mut endpoint = Endpoint::spawn(&config, &identity, &ctx, (listener, hub), &stop)?;
    // Every module is registered (listed as starting) before the Core says
    // it is ready, so `anima modules` right after READY lists them all.
    // Sidecars are stopped after every other module (P11).
    let sidecars: std::collections::HashSet<&Urn> =
        config.modules.iter().flat_map(|m| &m.sidecars).collect();
    let stop_sidecars = CancellationToken::new();
    let (mut supervisors, mut sidecar_supervisors) = (JoinSet::new(), JoinSet::new());
    for index in start_order(&config.modules) {
        let module = config.modules[index].clone();
        let (set, token) = if sidecars.contains(&module.urn) {
            (&mut sidecar_supervisors, &stop_sidecars)
        } else {
            (&mut supervisors, &stop)
        };
        set.spawn(supervise(ctx.clone(), module, token.child_token()));
    }
    tracing::info!(core = %config.core.urn, admin = %admin_addr, modules = config.modules.len(), "Core serving");
    on_ready(&Running { admin_addr });

    // Until asked to stop, or until the endpoint stops by itself; meanwhile
    // the service manager (if any) hears READY, STATUS and the watchdog from
    // this loop.
    let notifier = Notifier::from_env();
    let requires = Requires::of(&config.modules);
    let reloads = crate::reload::Reloads::new(&config, endpoint.tls.clone(), ctx.clone());
    let failure = tokio::select! {
        failure = endpoint.until_stopped(shutdown) => failure,
        never = notifier.run(&ctx.registry, &requires) => match never {},
        never = reloads.run() => match never {},
    };
    match &failure {
        None => {
            notifier.stopping("shutting down: revoking leases and stopping modules");
            tracing::info!("shutting down: revoking leases and stopping modules");
        }
        Some(why) => {
            notifier.stopping(&format!(
                "the Core's endpoint stopped ({why}); shutting down"
            ));
            tracing::error!(
                admin = %admin_addr,
                error = %why,
                "the Core's endpoint stopped (no admin API, no gateway); shutting down: revoking leases and stopping modules"
            );
        }
    }
    stop.cancel();
    drain(supervisors).await;
    stop_sidecars.cancel();
    drain(sidecar_supervisors).await;
    endpoint.finish().await;
    flush_audit(&ctx.audit).await;
    tracing::info!("Core stopped");
    match failure {
        None => Ok(()),
        Some(why) => Err(ServeError::EndpointStopped {
            addr: admin_addr,
            why,
        }),
    }
}

/// The Core's certificates, checked against its configured URN.
pub(crate) struct CoreIdentity {
    /// The Core's certificate (`[core] cert`).
    pub(crate) tls: TlsIdentity,
    /// The CA every peer must chain to.
    pub(crate) trust: TrustRoot,
    /// Signs the Core's leases, with `tls`'s key.
    signer: Arc<LeaseSigner>,
    /// The endpoint certificate (same URN, e.g. P-256): a fallback on the
    /// user endpoint, and the identity for modules with core_cert = "endpoint".
    pub(crate) endpoint: Option<TlsIdentity>,
}

impl CoreIdentity {
    pub(crate) fn load(config: &Config) -> Result<Self, ServeError> {
        let urn = &config.core.urn;
        let tls = load_identity(&config.core.cert, &config.core.key, urn)?;
        let trust = TrustRoot::from_pem_file(&config.core.ca)?;
        let signer = Arc::new(LeaseSigner::from_identity(&tls)?);
        let endpoint = match &config.core.endpoint_cert {
            Some((cert, key)) => {
                let identity = load_identity(cert, key, urn)?;
                tracing::info!(
                    cert = %cert.display(),
                    "clients that offer no Ed25519 (Python grpcio, C++ gRPC) get the endpoint certificate"
                );
                Some(identity)
            }
            None => {
                tracing::info!(
                    "no [core] endpoint_cert: clients that offer no Ed25519 (Python grpcio, C++ gRPC) \
                     cannot be served; anima certs init makes core-NAME.endpoint.pem and .key, used \
                     when beside [core] cert"
                );
                None
            }
        };
        Ok(CoreIdentity {
            tls,
            trust,
            signer,
            endpoint,
        })
    }

    /// The certificates as diallers and lease signers.
    pub(crate) fn credentials(&self) -> Result<Credentials, ServeError> {
        let endpoint = match &self.endpoint {
            Some(id) => Some((
                ClientTls::new(id.clone(), self.trust.clone()),
                Arc::new(LeaseSigner::from_identity(id)?),
            )),
            None => None,
        };
        Ok(Credentials {
            client: ClientTls::new(self.tls.clone(), self.trust.clone()),
            signer: self.signer.clone(),
            endpoint,
        })
    }

    /// The endpoint's TLS: the Core's certificate, with the endpoint
    /// certificate as the fallback when there is one; any identity may call.
    fn server_tls(&self) -> Result<ServerTls, ServeError> {
        Ok(match &self.endpoint {
            Some(fallback) => {
                ServerTls::with_fallback(&self.tls, fallback, &self.trust, PeerPolicy::AnyIdentity)?
            }
            None => ServerTls::new(&self.tls, &self.trust, PeerPolicy::AnyIdentity)?,
        })
    }
}

/// A certificate and key that must name the Core's configured `urn`.
fn load_identity(cert: &Path, key: &Path, urn: &Urn) -> Result<TlsIdentity, ServeError> {
    let identity = TlsIdentity::from_pem_files(cert, key)?;
    if identity.urn() != urn {
        return Err(ServeError::WrongIdentity {
            cert: identity.urn().to_string(),
            config: urn.to_string(),
        });
    }
    Ok(identity)
}

/// What every supervisor shares: the Core's identity, its audit log (opened
/// here), empty tables, and the routes the contracts declare.
fn core_context(
    config: &Config,
    identity: &CoreIdentity,
    endpoint: SocketAddr,
) -> Result<CoreContext, ServeError> {
    let credentials = identity.credentials()?;
    let audit_path = config
        .core
        .audit_log
        .clone()
        .unwrap_or_else(|| crate::config::DEFAULT_AUDIT_LOG.into());
    let audit = AuditLog::open(&audit_path).map_err(|source| ServeError::Io {
        what: format!("audit log {}", audit_path.display()),
        source,
    })?;
    let routes = Routes::default();
    for m in &config.modules {
        routes.learn(&m.urn, m.contract.iter().flat_map(|c| c.methods.iter()));
    }
    Ok(CoreContext {
        urn: config.core.urn.clone(),
        credentials: std::sync::RwLock::new(credentials),
        ca_file: config.core.ca.clone(),
        leases: LeaseTable::new(),
        audit,
        registry: Registry::default(),
        events: Events::default(),
        renew_when_left: config.leases.renew_when_left,
        links: Mutex::new(HashMap::new()),
        routes,
        endpoint: local_address(endpoint),
        runtime: runtime_dir(),
        mediation: crate::gateway::mediate::Mediation::load(config)?,
        sidecars: crate::gateway::sidecar::Sidecars::new(&config.modules),
    })
}

/// The directory for modules' Unix sockets, or `None` (modules listen on
/// TCP) when it cannot be made, which is logged.
fn runtime_dir() -> Option<crate::runtime_dir::RuntimeDir> {
    match crate::runtime_dir::RuntimeDir::create() {
        Ok(dir) => {
            tracing::debug!(dir = %dir.path().display(), "runtime directory for modules' Unix sockets");
            Some(dir)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no runtime directory: the modules this Core starts listen on TCP");
            None
        }
    }
}

/// The largest request or reply of `anima.v1.Mediator`: an envelope at the
/// mediator's limits (1 MiB of payload, 64 KiB of the rest) and its framing.
pub(crate) const MAX_MEDIATOR_MESSAGE: usize = (1 << 20) + (64 << 10) + 1024;

/// The mediator's store: the embedded one, opened (created when missing),
/// or NATS JetStream, connected with the Core's certificate.
async fn open_store(config: &Config, identity: &CoreIdentity) -> Result<Hub, ServeError> {
    let m = &config.mediator;
    match &m.backend {
        Backend::Embedded => {
            let path = m
                .store
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_MESSAGE_STORE.into());
            Hub::open(&path, m.max_store_bytes, m.sync_interval).map_err(|source| {
                ServeError::Store {
                    path: path.display().to_string(),
                    source,
                }
            })
        }
        Backend::Nats { url, stream } => {
            let tls =
                anima_protocol::transport::host_client_config(&identity.tls, &identity.trust)?;
            let nats = NatsConfig {
                url: url.clone(),
                stream: stream.clone(),
                limit: m.max_store_bytes,
                ack_wait: m.ack_wait,
                tls,
                name: config.core.urn.to_string(),
            };
            let store = Hub::nats(nats).await.map_err(|source| ServeError::Store {
                path: url.clone(),
                source,
            })?;
            tracing::info!(%url, %stream, "mediator: messages on NATS JetStream");
            Ok(store)
        }
    }
}

/// Where a process on this host reaches `listening`: itself, or loopback
/// when it is the unspecified address (listening on every address).
fn local_address(listening: SocketAddr) -> SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listening.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listening.port())
        }
        _ => listening,
    }
}

/// The endpoint's listening socket and its address.
async fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("admin listen {listen}"),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Io {
        what: "admin address".into(),
        source,
    })?;
    Ok((listener, addr))
}

/// The Core's endpoint server, running in its own task.
struct Endpoint {
    /// The endpoint's TLS (reloaded with the Core's certificates).
    tls: ServerTls,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Why accepting connections stopped for good, if it does.
    stopped: oneshot::Receiver<String>,
    /// Whether `server` has been awaited to its end.
    done: bool,
}

impl Endpoint {
    /// Serves the admin API, `/metrics` and the gateway on `listener` over
    /// mTLS until `stop` is cancelled.
    fn spawn(
        config: &Config,
        identity: &CoreIdentity,
        ctx: &Arc<CoreContext>,
        (listener, hub): (TcpListener, Hub),
        stop: &CancellationToken,
    ) -> Result<Self, ServeError> {
        let tls = identity.server_tls()?;
        let admin = AdminService::new(ctx.clone(), config.admin.operators.clone());
        let metrics = Arc::new(Metrics::default());
        metrics.watch_listener(&tls);
        let gateway = Gateway::new(ctx.clone(), config.policies.clone(), metrics.clone());
        let registry = RegistryService::new(ctx.clone(), config.admin.operators.clone());
        let mediator = MediatorService::new(
            ctx.clone(),
            config.admin.operators.clone(),
            Grants::new(&config.messages, config.mediator.error_handler.as_ref()),
            hub,
            config.mediator.ack_wait,
            metrics.clone(),
            config.mediator.error_handler.clone(),
        );
        let routes = endpoint_routes(
            CoreAdminServer::new(admin),
            RegistryServer::new(registry),
            MediatorServer::new(mediator)
                .max_decoding_message_size(MAX_MEDIATOR_MESSAGE)
                .max_encoding_message_size(MAX_MEDIATOR_MESSAGE),
            gateway,
            metrics,
            ctx.clone(),
            config.admin.operators.clone(),
        );
        let (stopped_tx, stopped) = oneshot::channel();
        let incoming = Watched {
            inner: tls.incoming(listener),
            stopped: Some(stopped_tx),
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(5)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .max_concurrent_streams(ENDPOINT_MAX_CONCURRENT_STREAMS)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
        );
        Ok(Endpoint {
            tls,
            server,
            stopped,
            done: false,
        })
    }

    /// Waits for `shutdown` (`None`), or for the endpoint to stop by itself
    /// (why).
    async fn until_stopped(&mut self, shutdown: impl Future<Output = ()>) -> Option<String> {
        tokio::select! {
            _ = shutdown => None,
            why = &mut self.stopped => Some(why.unwrap_or_else(|_| {
                "the endpoint server stopped accepting connections".to_owned()
            })),
            result = &mut self.server => {
                self.done = true;
                Some(match result {
                    Ok(Ok(())) => "the endpoint server ended".to_owned(),
                    Ok(Err(e)) => format!("the endpoint server failed: {e}"),
                    Err(e) => format!("the endpoint server task failed: {e}"),
                })
            }
        }
    }

    /// Gives the server a moment to finish, unless it already has.
    async fn finish(self) {
        if !self.done {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.server).await;
        }
    }
}

/// Waits for the module supervisors (asked to stop) within
/// [`SHUTDOWN_GRACE`]; abandons those still running then.
async fn drain(mut supervisors: JoinSet<()>) {
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while supervisors.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("modules did not stop within {SHUTDOWN_GRACE:?}; abandoning them");
        supervisors.abort_all();
    }
}

/// What the audit writer still holds goes to disk before the Core returns.
async fn flush_audit(audit: &AuditLog) {
    let audit = audit.clone();
    let flushed = tokio::task::spawn_blocking(move || audit.flush(AUDIT_FLUSH_GRACE)).await;
    if !matches!(flushed, Ok(true)) {
        tracing::error!(
            "the audit log did not write its last records within {AUDIT_FLUSH_GRACE:?}"
        );
    }
}
