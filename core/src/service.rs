//! `anima serve`: the Core as a service.
//!
//! Loads the identity, opens the audit log, serves the admin API over mTLS,
//! and runs one supervisor per module in dependency order. On shutdown it
//! revokes its leases, stops the modules it started (each within a bounded
//! grace), and returns. If its endpoint stops serving first (the listening
//! socket is lost, the server task fails), it logs why, stops the same way,
//! and returns [`ServeError::EndpointStopped`]: a Core without its admin API
//! and gateway does not go on silently.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anima_protocol::lease::LeaseSigner;
use anima_protocol::pb::core_admin_server::CoreAdminServer;
use anima_protocol::{ClientTls, PeerPolicy, ServerTls, TlsConn, TlsIdentity, TrustRoot};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminService;
use crate::audit::AuditLog;
use crate::config::{Config, start_order};
use crate::events::Events;
use crate::gateway::Gateway;
use crate::gateway::route::Routes;
use crate::lease::LeaseTable;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::supervisor::{CoreContext, supervise};

/// The line `anima serve` prints on stdout once its admin endpoint listens.
pub const READY_PREFIX: &str = "ANIMA-CORE READY";

/// How long module supervisors may take to stop everything on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
pub enum ServeError {
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

/// The Core's endpoint: the admin API, `GET /metrics` (operators), and the
/// gateway for every other path.
fn endpoint_routes(
    admin: CoreAdminServer<AdminService>,
    gateway: Gateway,
    metrics: Arc<Metrics>,
    ctx: Arc<CoreContext>,
    operators: Vec<anima_protocol::Urn>,
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
        .into_axum_router()
        .route_service("/metrics", metrics_service)
        .fallback_service(gateway_service);
    tonic::service::Routes::from(router)
}

/// A running Core's shared state, for embedding and tests.
pub struct Running {
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The shared context (registry, leases, events).
    pub ctx: Arc<CoreContext>,
}

/// Runs the Core described by `config` until `shutdown` completes.
/// `on_ready` is called once the admin endpoint listens.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(&Running),
) -> Result<(), ServeError> {
    let identity = TlsIdentity::from_pem_files(&config.core.cert, &config.core.key)?;
    if identity.urn() != &config.core.urn {
        return Err(ServeError::WrongIdentity {
            cert: identity.urn().to_string(),
            config: config.core.urn.to_string(),
        });
    }
    let trust = TrustRoot::from_pem_file(&config.core.ca)?;
    let signer = Arc::new(LeaseSigner::from_identity(&identity)?);
    // The endpoint certificate (same URN, e.g. P-256): a fallback on the
    // user endpoint, and the identity for modules with core_cert = "endpoint".
    let endpoint_identity = match &config.core.endpoint_cert {
        Some((cert, key)) => {
            let fallback = TlsIdentity::from_pem_files(cert, key)?;
            if fallback.urn() != &config.core.urn {
                return Err(ServeError::WrongIdentity {
                    cert: fallback.urn().to_string(),
                    config: config.core.urn.to_string(),
                });
            }
            Some(fallback)
        }
        None => None,
    };
    let endpoint_dialer = match &endpoint_identity {
        Some(id) => Some((
            ClientTls::new(id.clone(), trust.clone()),
            Arc::new(LeaseSigner::from_identity(id)?),
        )),
        None => None,
    };
    let audit_path = config
        .core
        .audit_log
        .clone()
        .unwrap_or_else(|| "anima-audit.jsonl".into());
    let audit = AuditLog::open(&audit_path).map_err(|source| ServeError::Io {
        what: format!("audit log {}", audit_path.display()),
        source,
    })?;
    let ctx = Arc::new(CoreContext {
        urn: config.core.urn.clone(),
        client: ClientTls::new(identity.clone(), trust.clone()),
        signer,
        ca_file: config.core.ca.clone(),
        leases: LeaseTable::new(),
        audit,
        registry: Registry::default(),
        events: Events::default(),
        renew_when_left: config.leases.renew_when_left,
        links: Mutex::new(HashMap::new()),
        endpoint_dialer,
        routes: {
            let routes = Routes::default();
            for m in &config.modules {
                routes.learn(&m.urn, m.contract.iter().flat_map(|c| c.methods.iter()));
            }
            routes
        },
    });

    let listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("admin listen {}", config.admin.listen),
            source,
        })?;
    let admin_addr = listener.local_addr().map_err(|source| ServeError::Io {
        what: "admin address".into(),
        source,
    })?;
    let stop = CancellationToken::new();
    let admin_tls = match &endpoint_identity {
        Some(fallback) => {
            ServerTls::with_fallback(&identity, fallback, &trust, PeerPolicy::AnyIdentity)?
        }
        None => ServerTls::new(&identity, &trust, PeerPolicy::AnyIdentity)?,
    };
    let admin = AdminService::new(ctx.clone(), config.admin.operators.clone());
    let metrics = Arc::new(Metrics::default());
    metrics.watch_listener(&admin_tls);
    let gateway = Gateway::new(ctx.clone(), config.policies.clone(), metrics.clone());
    let routes = endpoint_routes(
        CoreAdminServer::new(admin),
        gateway,
        metrics,
        ctx.clone(),
        config.admin.operators.clone(),
    );
    let admin_stop = stop.clone();
    let (stopped, mut endpoint_stopped) = oneshot::channel();
    let incoming = Watched {
        inner: admin_tls.incoming(listener),
        stopped: Some(stopped),
    };
    let mut admin_server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .max_concurrent_streams(ENDPOINT_MAX_CONCURRENT_STREAMS)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, admin_stop.cancelled_owned()),
    );
    // Every module is registered (listed as starting) before the Core says
    // it is ready, so `anima modules` right after READY lists them all.
    let mut supervisors = JoinSet::new();
    for index in start_order(&config.modules) {
        let module = config.modules[index].clone();
        supervisors.spawn(supervise(ctx.clone(), module, stop.child_token()));
    }
    tracing::info!(core = %config.core.urn, admin = %admin_addr, modules = config.modules.len(), "Core serving");
    on_ready(&Running {
        admin_addr,
        ctx: ctx.clone(),
    });

    // Until asked to stop, or until the endpoint stops by itself.
    tokio::pin!(shutdown);
    let mut server_done = false;
    let failure = tokio::select! {
        _ = &mut shutdown => None,
        why = &mut endpoint_stopped => Some(why.unwrap_or_else(|_| {
            "the endpoint server stopped accepting connections".to_owned()
        })),
        result = &mut admin_server => {
            server_done = true;
            Some(match result {
                Ok(Ok(())) => "the endpoint server ended".to_owned(),
                Ok(Err(e)) => format!("the endpoint server failed: {e}"),
                Err(e) => format!("the endpoint server task failed: {e}"),
            })
        }
    };
    match &failure {
        None => tracing::info!("shutting down: revoking leases and stopping modules"),
        Some(why) => tracing::error!(
            admin = %admin_addr,
            error = %why,
            "the Core's endpoint stopped (no admin API, no gateway); shutting down: revoking leases and stopping modules"
        ),
    }
    stop.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while supervisors.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("modules did not stop within {SHUTDOWN_GRACE:?}; abandoning them");
        supervisors.abort_all();
    }
    if !server_done {
        let _ = tokio::time::timeout(Duration::from_secs(2), admin_server).await;
    }
    // What the audit writer still holds goes to disk before we return.
    let audit = ctx.audit.clone();
    let flushed = tokio::task::spawn_blocking(move || audit.flush(AUDIT_FLUSH_GRACE)).await;
    if !matches!(flushed, Ok(true)) {
        tracing::error!(
            "the audit log did not write its last records within {AUDIT_FLUSH_GRACE:?}"
        );
    }
    tracing::info!("Core stopped");
    match failure {
        None => Ok(()),
        Some(why) => Err(ServeError::EndpointStopped {
            addr: admin_addr,
            why,
        }),
    }
}
