//! A bare TLS 1.3 client for the certificate checks (T3): it presents any
//! certificate at all — none, expired, from another CA, without a URN — and
//! reports whether the module then answers a call on that connection.
//!
//! It does not judge the module's certificate (the other checks do); it only
//! asks whether the module let *this* client in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anima_protocol::transport::probe::{ProbeCert, any_server_config};
use rustls::pki_types::ServerName;

use crate::error::ToolError;

/// A client certificate and key, PEM (see [`ProbeCert`]).
pub type ClientCert = ProbeCert;

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
pub async fn admission(
    addr: SocketAddr,
    client: Option<&ClientCert>,
) -> Result<Admission, ToolError> {
    admission_alpn(addr, client, true).await
}

/// [`admission`], offering ALPN `h2` only when `alpn` (a module must refuse
/// a client that did not negotiate it, PROTOCOL.md §1).
pub async fn admission_alpn(
    addr: SocketAddr,
    client: Option<&ClientCert>,
    alpn: bool,
) -> Result<Admission, ToolError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(any_server_config(client, alpn)?));
    let wait = Duration::from_secs(5);
    let tcp = connect(addr, wait).await?;
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

/// Whether a server at `addr` negotiates TLS 1.2: sends a ClientHello that
/// offers only TLS 1.2 (no `supported_versions` extension, TLS 1.2 ECDHE
/// suites) and reads the first record back. A TLS 1.3-only server answers
/// with an alert or closes; a `ServerHello` means TLS 1.2 was accepted.
pub async fn negotiates_tls12(addr: SocketAddr) -> Result<bool, ToolError> {
    use tokio::io::AsyncReadExt as _;
    let wait = Duration::from_secs(5);
    let hello = tls12_client_hello();
    let mut tcp = connect_and_send(addr, wait, &hello, "send a TLS 1.2 ClientHello to").await?;
    let mut head = [0u8; 6];
    match tokio::time::timeout(wait, tcp.read_exact(&mut head)).await {
        Err(_) => Err(ToolError::Timeout {
            what: "an answer to a TLS 1.2 ClientHello",
            after: wait,
        }),
        // Closed, or reset: refused.
        Ok(Err(_)) => Ok(false),
        // A handshake record whose first message is a ServerHello.
        Ok(Ok(_)) => Ok(head[0] == 0x16 && head[5] == 0x02),
    }
}

/// A TCP connection to `addr`, made within `wait`.
async fn connect(addr: SocketAddr, wait: Duration) -> Result<tokio::net::TcpStream, ToolError> {
    tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ToolError::Timeout {
            what: "a TCP connection to the module",
            after: wait,
        })?
        .map_err(|source| ToolError::Socket {
            action: "connect to",
            addr,
            source,
        })
}

/// A TCP connection to `addr`, made within `wait`, on which `bytes` were
/// sent; `action` says what sending them was, for the error (`send … to`).
pub(crate) async fn connect_and_send(
    addr: SocketAddr,
    wait: Duration,
    bytes: &[u8],
    action: &'static str,
) -> Result<tokio::net::TcpStream, ToolError> {
    use tokio::io::AsyncWriteExt as _;
    let mut tcp = connect(addr, wait).await?;
    tcp.write_all(bytes)
        .await
        .map_err(|source| ToolError::Socket {
            action,
            addr,
            source,
        })?;
    Ok(tcp)
}

/// A TLS 1.2 ClientHello (RFC 5246 §7.4.1.2) with the extensions an ECDHE
/// server needs, and no `supported_versions`: it can only be answered in
/// TLS 1.2 or refused.
fn tls12_client_hello() -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut extensions = Vec::new();
    // supported_groups: x25519, secp256r1, secp384r1.
    ext(
        &mut extensions,
        0x000a,
        &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18],
    );
    // ec_point_formats: uncompressed.
    ext(&mut extensions, 0x000b, &[1, 0]);
    // signature_algorithms: ed25519, ecdsa_secp256r1_sha256,
    // rsa_pss_rsae_sha256, rsa_pkcs1_sha256.
    ext(
        &mut extensions,
        0x000d,
        &[0, 8, 0x08, 0x07, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    );
    // application_layer_protocol_negotiation: h2.
    ext(&mut extensions, 0x0010, &[0, 3, 2, b'h', b'2']);
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // no session id
    // ECDHE-ECDSA/RSA with AES-GCM and ChaCha20-Poly1305.
    let suites: [u16; 6] = [0xc02b, 0xc02c, 0xc02f, 0xc030, 0xcca9, 0xcca8];
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // compression: null
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// The probe's verdict against a server that does speak TLS 1.2 (OpenSSL,
    /// a foreign peer) and one that does not (rustls, TLS 1.3 only): so a
    /// module that accepted TLS 1.2 would fail T1.
    #[tokio::test]
    async fn t1_the_tls12_probe_tells_a_tls12_server_from_a_tls13_one() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=tls12",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output();
        let Ok(made) = made else {
            panic!("openssl is needed for this test (a TLS 1.2 server we did not write)");
        };
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = tokio::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-tls1_2", "-accept"])
            .arg(port.to_string())
            .arg("-key")
            .arg(&key)
            .arg("-cert")
            .arg(&cert)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // Wait for it to listen (an event, bounded).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "openssl s_server did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            negotiates_tls12(addr).await.unwrap(),
            "OpenSSL's TLS 1.2 server answered with no ServerHello"
        );
        let _ = server.kill().await;

        // A rustls TLS 1.3-only server (as every Anima listener builds it).
        let addr = tls13_server(&cert, &key).await;
        assert!(
            !negotiates_tls12(addr).await.unwrap(),
            "a TLS 1.3-only server was taken for TLS 1.2"
        );
    }

    /// A rustls server that speaks TLS 1.3 only, with `cert` and `key`,
    /// accepting one connection: where it listens.
    async fn tls13_server(cert: &std::path::Path, key: &std::path::Path) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            if let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        addr
    }
}
