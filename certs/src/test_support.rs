//! Helpers for this crate's unit tests: judge minted certificates the way a
//! TLS peer would.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

/// Every file in `dir` and its bytes (to show a call changed nothing).
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The first certificate of the PEM file `path`, DER.
pub(crate) fn cert_der(path: &Path) -> Vec<u8> {
    crate::pem_file::certificate_der(path, &fs::read(path).unwrap()).unwrap()
}

/// Checks `leaf` chains to `ca` as a server (for `localhost` and
/// `127.0.0.1`) and as a client, at `now`.
pub(crate) fn verify_both_roles(
    ca_der: &[u8],
    leaf_der: &[u8],
    now: SystemTime,
) -> Result<(), rustls::Error> {
    verify_both_roles_under(&[ca_der], leaf_der, now)
}

/// [`verify_both_roles`] trusting every CA of `cas` (a bundle, as during a
/// CA rollover).
pub(crate) fn verify_both_roles_under(
    cas: &[&[u8]],
    leaf_der: &[u8],
    now: SystemTime,
) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca_der in cas {
        roots.add(CertificateDer::from(ca_der.to_vec()))?;
    }
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

/// The DER inside the first PEM block of `pem`.
pub(crate) fn pem_der(pem: &str) -> Vec<u8> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .expect("a PEM block")
        .expect("well-formed PEM")
        .contents
}

/// The version field of a PKCS#8 private key: 0 is v1 (RFC 5208), 1 is v2
/// (RFC 5958, with the public key attached).
pub(crate) fn pkcs8_version(der: &[u8]) -> u8 {
    assert_eq!(der[0], 0x30, "a SEQUENCE");
    // Short or long form length, then `INTEGER` of one byte.
    let start = match der[1] {
        short if short < 0x80 => 2,
        long => 2 + usize::from(long & 0x7f),
    };
    assert_eq!(der[start..start + 2], [0x02, 0x01], "a one-byte version");
    der[start + 2]
}
