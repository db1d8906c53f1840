//! Taking up renewed certificates without a restart: on SIGHUP, or when one
//! of the Core's certificate, key or CA files changes (checked every
//! [`CERT_POLL`](anima_protocol::transport::CERT_POLL)), the Core reads them
//! again. New handshakes on its endpoint present the new certificate and
//! trust the new CA file (which may hold an old and a new CA during a
//! rollover); new leases are dialled and signed with the new certificate,
//! and every open lease is re-established under it (make before break:
//! `supervisor.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use anima_protocol::ServerTls;
use anima_protocol::transport::CertWatch;

use crate::config::Config;
use crate::service::{CoreIdentity, ServeError};
use crate::supervisor::CoreContext;

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

    /// Reloads on every SIGHUP and every change of the files; never ends.
    pub(crate) async fn run(self) -> std::convert::Infallible {
        let mut watch = CertWatch::new(self.files());
        loop {
            let why = watch.next().await;
            match self.reload() {
                Ok(identity) => tracing::info!(
                    why = %why,
                    cert = %self.config.core.cert.display(),
                    fingerprint = %identity.tls.fingerprint(),
                    "certificates reloaded: new connections and leases use them; open leases are re-established under them"
                ),
                Err(e) => tracing::error!(
                    why = %why,
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
