//! Taking up renewed certificates without a restart: on SIGHUP, or when one
//! of the Core's certificate, key or CA files changes (checked every
//! [`POLL`]), the Core reads them again. New handshakes on its endpoint
//! present the new certificate and trust the new CA file (which may hold an
//! old and a new CA during a rollover); new leases are dialled and signed
//! with the new certificate. Connections and leases already open go on
//! under the certificates they were made with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anima_protocol::ServerTls;

use crate::config::Config;
use crate::service::{CoreIdentity, ServeError};
use crate::supervisor::CoreContext;

/// How often the certificate files are checked for a change.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// What a file looked like: its modification time and length (`None`:
/// missing or unreadable).
type Stamp = Option<(SystemTime, u64)>;

/// The Core's reloads: what to read again, and what to give it to.
pub(crate) struct Reloads {
    config: Config,
    tls: ServerTls,
    ctx: Arc<CoreContext>,
}

impl Reloads {
    pub(crate) fn new(config: &Config, tls: ServerTls, ctx: Arc<CoreContext>) -> Self {
        Reloads {
            config: config.clone(),
            tls,
            ctx,
        }
    }

    /// The files whose change means a reload.
    fn files(&self) -> Vec<PathBuf> {
        let core = &self.config.core;
        let mut files = vec![core.cert.clone(), core.key.clone(), core.ca.clone()];
        if let Some((cert, key)) = &core.endpoint_cert {
            files.extend([cert.clone(), key.clone()]);
        }
        files
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.files()
            .iter()
            .map(|f| {
                let meta = std::fs::metadata(f).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }

    /// Reloads on every SIGHUP and every change of the files; never ends.
    pub(crate) async fn run(self) -> std::convert::Infallible {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: certificates reload only when their files change");
                None
            }
        };
        let mut seen = self.stamps();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
                _ = tick.tick() => {
                    let now = self.stamps();
                    if now == seen {
                        continue;
                    }
                    "a certificate file changed"
                }
            };
            // Stamped before reading: a file still being written changes
            // again, and is read again then.
            seen = self.stamps();
            match self.reload() {
                Ok(identity) => tracing::info!(
                    why,
                    cert = %self.config.core.cert.display(),
                    fingerprint = %identity.tls.fingerprint(),
                    "certificates reloaded: new connections and leases use them; open ones go on"
                ),
                Err(e) => tracing::error!(
                    why,
                    error = %e,
                    "certificates not reloaded; the previous ones stay in use"
                ),
            }
        }
    }

    /// Reads the certificates again and hands them to the endpoint and the
    /// supervisors; on error, nothing changes.
    fn reload(&self) -> Result<CoreIdentity, ServeError> {
        let identity = CoreIdentity::load(&self.config)?;
        let credentials = identity.credentials()?;
        self.tls
            .reload(&identity.tls, identity.endpoint.as_ref(), &identity.trust)?;
        self.ctx.set_credentials(credentials);
        Ok(identity)
    }
}
