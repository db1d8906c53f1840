//! A bare TLS 1.3 client for the certificate checks (T3): it presents any
//! certificate at all — none, expired, from another CA, without a URN — and
//! reports whether the module then answers a call on that connection.
//!
//! It does not judge the module's certificate (the other checks do); it only
//! asks whether the module let *this* client in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// A client certificate and key, PEM.
pub struct ClientCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

/// What the module did with a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The TLS handshake (or the first bytes after it) failed.
    HandshakeRefused(String),
    /// The handshake completed but the call was refused (how).
    CallRefused(String),
    /// `ModuleAdmin/Status` was answered: the client was let in.
    Served,
}

/// Connects to `addr` presenting `client` (or no certificate) and calls
/// `ModuleAdmin/Status`, which needs no lease, on that one connection.
pub async fn admission(addr: SocketAddr, client: Option<&ClientCert>) -> Result<Admission, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key =
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let wait = Duration::from_secs(5);
    let tcp = tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = match tokio::time::timeout(wait, connector.connect(name, tcp)).await {
        Err(_) => return Ok(Admission::HandshakeRefused("handshake timed out".into())),
        Ok(Err(e)) => return Ok(Admission::HandshakeRefused(e.to_string())),
        Ok(Ok(tls)) => tls,
    };
    // One gRPC channel over exactly this TLS stream.
    let slot = Arc::new(std::sync::Mutex::new(Some(tls)));
    let channel = tonic::transport::Endpoint::from_static("http://anima.conformance")
        .connect_timeout(wait)
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            async move {
                taken
                    .map(hyper_util::rt::TokioIo::new)
                    .ok_or(std::io::Error::from(std::io::ErrorKind::NotConnected))
            }
        }))
        .await;
    let channel = match channel {
        Ok(c) => c,
        Err(e) => return Ok(Admission::HandshakeRefused(format!("HTTP/2: {e}"))),
    };
    let mut request = tonic::Request::new(anima_protocol::pb::StatusRequest {});
    request.set_timeout(wait);
    match anima_protocol::pb::module_admin_client::ModuleAdminClient::new(channel)
        .status(request)
        .await
    {
        Ok(_) => Ok(Admission::Served),
        Err(status) => {
            let described = super::session::describe(&status);
            // A TLS alert surfaces as a transport error on the first call.
            if status.code() == tonic::Code::Unavailable || status.code() == tonic::Code::Unknown {
                Ok(Admission::HandshakeRefused(described))
            } else {
                Ok(Admission::CallRefused(described))
            }
        }
    }
}

/// Accepts any server certificate whose handshake signature verifies.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
