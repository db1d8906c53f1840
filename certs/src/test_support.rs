//! Helpers for this crate's unit tests: judge minted certificates the way a
//! TLS peer would.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

/// Checks `leaf` chains to `ca` as a server (for `localhost` and
/// `127.0.0.1`) and as a client, at `now`.
pub(crate) fn verify_both_roles(
    ca_der: &[u8],
    leaf_der: &[u8],
    now: SystemTime,
) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    let roots = Arc::new(roots);
    let leaf = CertificateDer::from(leaf_der.to_vec());
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap());

    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap();
    for name in ["localhost", "127.0.0.1"] {
        let name = ServerName::try_from(name).unwrap();
        server.verify_server_cert(&leaf, &[], &name, &[], now)?;
    }
    let client = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .unwrap();
    client.verify_client_cert(&leaf, &[], now)?;
    Ok(())
}
