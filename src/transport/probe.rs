//! A TLS client that lets any server in, for tools that test how a *server*
//! admits clients: the conformance tool's certificate checks (T1–T3), which
//! present no certificate, an expired one, one from another CA or one
//! without a URN, and the hostile HTTP/2 client of the end-to-end tests.
//!
//! It is never for talking to a peer one trusts: it checks nothing of the
//! server's certificate but the handshake signature. Like every Anima
//! client it speaks TLS 1.3 only, and it is built by the same code, with
//! the same server verifier, as [`ClientTls`](super::ClientTls).

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::error::TransportError;
use super::tls::probe_client_config;

/// A client certificate chain and key, PEM, presented as they are: they need
/// not be valid, trusted or name anyone.
#[derive(Clone)]
pub struct ProbeCert {
    /// The certificate chain.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

impl std::fmt::Debug for ProbeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("ProbeCert").finish_non_exhaustive()
    }
}

/// A TLS 1.3 client configuration that presents `client` (or no
/// certificate), offers ALPN `h2` when `alpn`, and accepts any server whose
/// handshake signature verifies.
pub fn any_server_config(
    client: Option<&ProbeCert>,
    alpn: bool,
) -> Result<rustls::ClientConfig, TransportError> {
    let client = match client {
        None => None,
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error("certificate", e))?;
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                .map_err(|e| pem_error("private key", e))?;
            Some((chain, key))
        }
    };
    probe_client_config(client, alpn)
}

fn pem_error(what: &'static str, e: rustls::pki_types::pem::Error) -> TransportError {
    TransportError::Pem {
        what,
        detail: e.to_string(),
    }
}
