//! Transport: mutual TLS 1.3, identities, and every refusal (T1–T3).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anima_certs::{CertAuthority, KeyType, LeafSpec};
use anima_protocol::{
    ClientTls, Connection, PeerPolicy, RefusalReason, ServerTls, TlsIdentity, TransportError,
    TrustRoot, Urn, UrnKind,
};
use anima_tests::echo::echo_client::EchoClient;
use anima_tests::echo::{SayRequest, SlowRequest};
use anima_tests::{EchoServer, PATIENCE, TestCa};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::broadcast;
use tonic::transport::{Channel, Endpoint, Uri};

const CORE: &str = "urn:anima:core:dev";
const MODULE: &str = "urn:anima:module:echo";

fn urn(s: &str) -> Urn {
    s.parse().unwrap()
}

/// Server TLS for `urn`, from `ca`, letting in the peers `policy` allows.
fn server_tls(ca: &TestCa, urn: &str, policy: PeerPolicy) -> ServerTls {
    ServerTls::new(&ca.identity(urn), &ca.trust(), policy).unwrap()
}

/// A module-side echo server that accepts any Core.
async fn module_server(ca: &TestCa) -> EchoServer {
    EchoServer::start(server_tls(ca, MODULE, PeerPolicy::kind(UrnKind::Core))).await
}

/// `CORE` dials `server`, requiring `policy` of it.
async fn dial_as_core(
    ca: &TestCa,
    server: &EchoServer,
    policy: PeerPolicy,
) -> Result<Connection, TransportError> {
    ClientTls::new(ca.identity(CORE), ca.trust())
        .dial_addr(server.addr, policy)
        .await
}

async fn say<T>(channel: T) -> Result<anima_tests::echo::SayReply, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    EchoClient::new(channel)
        .say(SayRequest { text: "hi".into() })
        .await
        .map(|r| r.into_inner())
}

/// The outcome of one call on a channel `dialled` tried to open: a refused
/// peer fails at the handshake or, TLS 1.3 letting the client finish its side
/// before the server's alert arrives, on the first call at the latest.
async fn first_call<T, E: ToString>(dialled: Result<T, E>) -> Result<(), String>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    match dialled {
        Ok(channel) => say(channel).await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// A client presenting `identity` (and trusting `ca`) dials `server` and
/// calls it: the call fails, and the server reports why it refused the client.
async fn refused(ca: &TestCa, server: &EchoServer, identity: TlsIdentity) -> RefusalReason {
    let mut refusals = server.tls.refusals();
    let client = ClientTls::new(identity, ca.trust());
    let dialled = client.dial_addr(server.addr, PeerPolicy::AnyIdentity).await;
    let outcome = first_call(dialled.map(|conn| conn.channel())).await;
    assert!(outcome.is_err());
    expect_refusal(&mut refusals).await
}

async fn expect_refusal(rx: &mut broadcast::Receiver<anima_protocol::Refusal>) -> RefusalReason {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a refusal is reported")
        .expect("refusal channel open")
        .reason
}

/// A client built from raw rustls, for misbehaving peers the product's own
/// transport would never produce (no certificate, a certificate without a
/// URN). It verifies the server the standard web-PKI way (127.0.0.1 SAN).
async fn raw_client(
    trust_pem: &str,
    client: Option<(&[u8], &[u8])>,
    addr: std::net::SocketAddr,
) -> Result<Channel, Box<dyn std::error::Error>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trust_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_slice(key)?,
        )?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let slot = std::sync::Mutex::new(Some(tls));
    let slot = Arc::new(slot);
    let channel = Endpoint::from_static("http://anima.peer")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let taken = slot.lock().unwrap().take();
            async move {
                taken
                    .map(TokioIo::new)
                    .ok_or(std::io::Error::from(std::io::ErrorKind::NotConnected))
            }
        }))
        .await?;
    Ok(channel)
}

#[tokio::test]
async fn t1_mutual_tls_call_sees_both_identities() {
    let ca = TestCa::new();
    let server = module_server(&ca).await;
    let conn = dial_as_core(&ca, &server, PeerPolicy::exactly(urn(MODULE)))
        .await
        .unwrap();
    assert_eq!(conn.peer().urn(), &urn(MODULE), "client sees the module");
    let reply = say(conn.channel()).await.unwrap();
    assert_eq!(reply.text, "hi");
    assert_eq!(reply.caller, CORE, "server handler sees the Core");
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn t1_two_connections_from_one_client_are_told_apart() {
    let ca = TestCa::new();
    let server = module_server(&ca).await;
    let client = ClientTls::new(ca.identity(CORE), ca.trust());
    let dial = || client.dial_addr(server.addr, PeerPolicy::AnyIdentity);
    let a = dial().await.unwrap();
    let b = dial().await.unwrap();
    let a1 = say(a.channel()).await.unwrap().connection;
    let b1 = say(b.channel()).await.unwrap().connection;
    let a2 = say(a.channel()).await.unwrap().connection;
    assert_ne!(a1, b1, "two connections get two ids");
    assert_eq!(a1, a2, "one connection keeps its id");
    assert_ne!(a.peer().connection(), b.peer().connection());
}

#[tokio::test]
async fn t1_connection_does_not_silently_reconnect() {
    let ca = TestCa::new();
    let server = module_server(&ca).await;
    let conn = dial_as_core(&ca, &server, PeerPolicy::AnyIdentity)
        .await
        .unwrap();
    say(conn.channel()).await.unwrap();
    drop(server);
    // Once the server is gone the channel fails; it never opens a new
    // connection on its own (a new connection needs a new lease).
    let mut failed = false;
    for _ in 0..200 {
        if say(conn.channel()).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failed, "calls fail once the connection is gone");
    let channel = conn.channel();
    tokio::time::timeout(PATIENCE, async {
        while !channel.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the channel says its connection closed");
    let status = say(channel).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn t1_a_call_ends_at_its_grpc_timeout() {
    let ca = TestCa::new();
    let server = module_server(&ca).await;
    let conn = dial_as_core(&ca, &server, PeerPolicy::AnyIdentity)
        .await
        .unwrap();
    let mut request = tonic::Request::new(SlowRequest { millis: 30_000 });
    request.set_timeout(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let status = EchoClient::new(conn.channel())
        .slow(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    // The connection serves on.
    say(conn.channel()).await.unwrap();
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // deliberately plaintext: this is the attack
async fn t2_plaintext_client_gets_no_service() {
    let ca = TestCa::new();
    let server = module_server(&ca).await;
    let mut refusals = server.tls.refusals();
    let outcome = async {
        let channel = Endpoint::from_shared(format!("http://{}", server.addr))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        say(channel)
            .await
            .map_err(Box::<dyn std::error::Error>::from)
    }
    .await;
    assert!(outcome.is_err(), "plaintext gets no answer: {outcome:?}");
    assert_eq!(
        expect_refusal(&mut refusals).await,
        RefusalReason::Plaintext
    );
    assert_eq!(server.calls(), 0, "the handler never ran");
}

#[tokio::test]
async fn t3_client_without_certificate_is_refused() {
    let ca = TestCa::new();
    let server = module_server(&ca).await;
    let mut refusals = server.tls.refusals();
    let ca_pem = ca.authority().cert_pem();
    let outcome = first_call(raw_client(ca_pem, None, server.addr).await).await;
    assert!(outcome.is_err());
    assert_eq!(
        expect_refusal(&mut refusals).await,
        RefusalReason::NoClientCertificate
    );
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn t3_certificate_from_another_ca_is_refused() {
    let ca = TestCa::new();
    let server = module_server(&ca).await;
    // Another CA under another name, and an impostor CA reusing the
    // trusted CA's name: both refused.
    for other in [TestCa::named("some other CA"), TestCa::new()] {
        // The impostor trusts the real CA (so it would accept the server)
        // but holds a certificate from another CA.
        let refusal = refused(&ca, &server, other.identity(CORE)).await;
        assert_eq!(refusal, RefusalReason::UnknownIssuer);
    }
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn t3_expired_client_certificate_is_refused() {
    let ca = TestCa::new();
    let server = module_server(&ca).await;
    let refusal = refused(&ca, &server, ca.expired_identity(CORE)).await;
    assert_eq!(refusal, RefusalReason::Expired);
    assert_eq!(server.calls(), 0);
}

/// A certificate for `urn` whose validity starts in a day.
fn not_yet_valid_spec(urn: &str) -> LeafSpec {
    let start = SystemTime::now() + Duration::from_secs(86_400);
    LeafSpec::new(urn.parse().unwrap()).valid_between(start, start + Duration::from_secs(86_400))
}

#[tokio::test]
async fn t3_not_yet_valid_client_certificate_is_refused_as_such() {
    let ca = TestCa::new();
    let server = module_server(&ca).await;
    let reason = refused(&ca, &server, ca.issue(not_yet_valid_spec(CORE))).await;
    assert_eq!(reason, RefusalReason::NotYetValid);
    // What the refusal log line says.
    assert!(reason.to_string().contains("not valid yet"), "{reason}");
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn t3_client_refuses_a_not_yet_valid_server_certificate_saying_so() {
    let ca = TestCa::new();
    let tls = ServerTls::new(
        &ca.issue(not_yet_valid_spec(MODULE)),
        &ca.trust(),
        PeerPolicy::AnyIdentity,
    )
    .unwrap();
    let server = EchoServer::start(tls).await;
    let err = dial_as_core(&ca, &server, PeerPolicy::exactly(urn(MODULE)))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("not valid yet"), "{err}");
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn t1_p256_certificates_serve_and_dial_mutual_tls() {
    // A P-256 module certificate (what a Core on BoringSSL can verify), from
    // an Ed25519 CA and from a P-256 one, dialled by an Ed25519 and a P-256 Core.
    for ca_type in KeyType::ALL {
        let ca = CertAuthority::generate_with_key_type(
            "p256 test CA",
            Duration::from_secs(86_400),
            ca_type,
        )
        .unwrap();
        let trust = ca.trust_root().unwrap();
        let mint = |urn: &str, key_type| {
            ca.issue(&LeafSpec::new(self::urn(urn)).key_type(key_type))
                .unwrap()
                .identity()
                .unwrap()
        };
        let module = mint(MODULE, KeyType::P256);
        let tls = ServerTls::new(&module, &trust, PeerPolicy::kind(UrnKind::Core)).unwrap();
        let server = EchoServer::start(tls).await;
        for core_type in KeyType::ALL {
            let client = ClientTls::new(mint(CORE, core_type), trust.clone());
            let conn = client
                .dial_addr(server.addr, PeerPolicy::exactly(urn(MODULE)))
                .await
                .unwrap_or_else(|e| panic!("{ca_type} CA, {core_type} Core: {e}"));
            assert_eq!(conn.peer().urn(), &urn(MODULE));
            assert_eq!(conn.peer().fingerprint(), module.fingerprint());
            // The key the handshake proved is the one its leases verify with.
            let key = anima_protocol::lease::PeerKey::of_certificate(conn.peer().certificate());
            assert!(
                matches!(key, Ok(anima_protocol::lease::PeerKey::P256(_))),
                "{key:?}"
            );
            let reply = say(conn.channel()).await.unwrap();
            assert_eq!(reply.caller, CORE, "the handler sees the Core");
        }
        assert_eq!(server.calls(), 2);
    }
}

async fn refused_with_urns(urns: &[&str]) -> RefusalReason {
    let ca = TestCa::new();
    let server = module_server(&ca).await;
    let mut refusals = server.tls.refusals();
    let (cert, key) = ca.identity_with_urns(urns);
    let dialled = raw_client(ca.authority().cert_pem(), Some((&cert, &key)), server.addr).await;
    assert!(first_call(dialled).await.is_err());
    let reason = expect_refusal(&mut refusals).await;
    assert_eq!(server.calls(), 0);
    reason
}

#[tokio::test]
async fn t3_certificate_without_urn_is_refused() {
    assert_eq!(refused_with_urns(&[]).await, RefusalReason::NoIdentity);
}

#[tokio::test]
async fn t3_certificate_with_two_urns_is_refused() {
    assert_eq!(
        refused_with_urns(&[CORE, "urn:anima:core:other"]).await,
        RefusalReason::SeveralIdentities
    );
}

#[tokio::test]
async fn t3_identity_other_than_required_is_refused() {
    let ca = TestCa::new();
    let tls = server_tls(&ca, MODULE, PeerPolicy::exactly(urn(CORE)));
    let server = EchoServer::start(tls).await;
    // A valid certificate of the right kind, but not the required Core.
    let intruder = ca.identity("urn:anima:core:intruder");
    assert_eq!(
        refused(&ca, &server, intruder).await,
        RefusalReason::UnexpectedIdentity(urn("urn:anima:core:intruder"))
    );
    // A user identity is refused by a listener that takes Cores only.
    let server2 = module_server(&ca).await;
    let user = ca.identity("urn:anima:user:dev");
    assert_eq!(
        refused(&ca, &server2, user).await,
        RefusalReason::UnexpectedIdentity(urn("urn:anima:user:dev"))
    );
    assert_eq!(server.calls() + server2.calls(), 0);
}

#[tokio::test]
async fn t3_client_requiring_x_refuses_server_presenting_y() {
    let ca = TestCa::new();
    let tls = server_tls(&ca, "urn:anima:module:y", PeerPolicy::kind(UrnKind::Core));
    let server = EchoServer::start(tls).await;
    let err = dial_as_core(&ca, &server, PeerPolicy::exactly(urn("urn:anima:module:x")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Handshake { .. }),
        "handshake refused: {err}"
    );
    assert!(err.to_string().contains("urn:anima:module:y"), "{err}");
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn t3_client_refuses_server_from_another_ca_or_expired() {
    let ca = TestCa::new();
    let other = TestCa::new();
    for identity in [other.identity(MODULE), ca.expired_identity(MODULE)] {
        let tls = ServerTls::new(&identity, &ca.trust(), PeerPolicy::AnyIdentity).unwrap();
        let server = EchoServer::start(tls).await;
        let err = dial_as_core(&ca, &server, PeerPolicy::exactly(urn(MODULE)))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
        assert_eq!(server.calls(), 0);
    }
}

#[tokio::test]
async fn t3_trust_root_must_hold_a_certificate() {
    assert!(matches!(
        TrustRoot::from_pem(b"not pem"),
        Err(TransportError::Pem { .. } | TransportError::EmptyChain)
    ));
}

#[tokio::test]
async fn t2_silent_client_neither_stalls_others_nor_lingers() {
    let ca = TestCa::new();
    let tls = server_tls(&ca, MODULE, PeerPolicy::kind(UrnKind::Core))
        .handshake_timeout(Duration::from_millis(300));
    let server = EchoServer::start(tls).await;
    let mut refusals = server.tls.refusals();
    // Connects and says nothing.
    let _silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Meanwhile a well-behaved client is served at once.
    let conn = dial_as_core(&ca, &server, PeerPolicy::AnyIdentity)
        .await
        .unwrap();
    say(conn.channel()).await.unwrap();
    assert_eq!(
        expect_refusal(&mut refusals).await,
        RefusalReason::HandshakeTimeout
    );
    assert_eq!(server.calls(), 1);
}
