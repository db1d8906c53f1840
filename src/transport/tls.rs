//! The one place that builds rustls configurations.
//!
//! Both directions are TLS 1.3 only, ALPN `h2`, with mutual certificate
//! authentication against one trust root, no session resumption (every
//! connection presents and verifies full certificates), and an identity check
//! on the peer's single `urn:anima:` URI SAN inside the handshake itself, so a
//! refused peer never completes a handshake and never reaches a handler.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use super::cert::{Fingerprint, identity_of};
use super::error::TransportError;
use crate::identity::{Urn, UrnKind};

/// The ALPN protocol both sides require.
const ALPN_H2: &[u8] = b"h2";

/// The crypto provider: `ring`, which builds with nothing but a C compiler.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This side's certificate chain and private key.
///
/// `Debug` never prints the key.
#[derive(Clone)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    urn: Urn,
}

impl TlsIdentity {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TransportError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| e.at(cert))
    }

    /// Parses a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TransportError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TransportError::pem("certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TransportError::pem("private key", e))?;
        Self::from_der(chain, key)
    }

    /// Builds an identity from DER: the chain (leaf first) and its private key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TransportError> {
        let leaf = chain.first().ok_or(TransportError::EmptyChain)?;
        let urn = identity_of(leaf)?;
        // Fail here, not at the first handshake, when the key does not fit.
        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(TransportError::Config)?;
        if let Some(spki) = signing.public_key() {
            let parsed = ParsedCertificate::try_from(leaf).map_err(TransportError::Config)?;
            if parsed.subject_public_key_info().as_ref() != spki.as_ref() {
                return Err(TransportError::KeyMismatch);
            }
        }
        Ok(TlsIdentity {
            chain,
            key: Arc::new(key),
            urn,
        })
    }

    /// The identity URN of this side's certificate.
    pub fn urn(&self) -> &Urn {
        &self.urn
    }

    /// The leaf certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        // The constructor refused an empty chain.
        &self.chain[0]
    }

    /// The fingerprint of the leaf certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.certificate())
    }

    /// The private key, in DER. Callers sign leases with it; never log it.
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("urn", &self.urn)
            .field("fingerprint", &self.fingerprint())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The certificate authorities whose certificates this side accepts.
#[derive(Clone)]
pub struct TrustRoot {
    roots: Arc<RootCertStore>,
}

impl TrustRoot {
    /// Loads one or more PEM CA certificates.
    pub fn from_pem_file(path: &Path) -> Result<Self, TransportError> {
        Self::from_pem(&read(path)?).map_err(|e| e.at(path))
    }

    /// Parses one or more PEM CA certificates.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TransportError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TransportError::pem("CA certificate", e))?;
        Self::from_der(certs)
    }

    /// Builds a trust root from DER CA certificates.
    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, TransportError> {
        if certs.is_empty() {
            return Err(TransportError::EmptyChain);
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(TransportError::Config)?;
        }
        Ok(TrustRoot {
            roots: Arc::new(roots),
        })
    }
}

impl fmt::Debug for TrustRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustRoot")
            .field("anchors", &self.roots.len())
            .finish()
    }
}

/// Which peer identities a side accepts, checked during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Any identity the trust root vouches for.
    AnyIdentity,
    /// Any identity of one of these kinds.
    Kinds(Vec<UrnKind>),
    /// Exactly one of these identities.
    OneOf(Vec<Urn>),
}

impl PeerPolicy {
    /// Exactly `urn`.
    pub fn exactly(urn: Urn) -> Self {
        PeerPolicy::OneOf(vec![urn])
    }

    /// Any identity of `kind`.
    pub fn kind(kind: UrnKind) -> Self {
        PeerPolicy::Kinds(vec![kind])
    }

    /// Checks `urn` against the policy.
    pub fn check(&self, urn: &Urn) -> Result<(), TransportError> {
        let ok = match self {
            PeerPolicy::AnyIdentity => true,
            PeerPolicy::Kinds(kinds) => kinds.contains(&urn.kind()),
            PeerPolicy::OneOf(urns) => urns.contains(urn),
        };
        if ok {
            Ok(())
        } else {
            Err(TransportError::UnexpectedPeer {
                got: urn.clone(),
                wanted: self.to_string(),
            })
        }
    }
}

impl fmt::Display for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |items: Vec<String>| items.join(" or ");
        match self {
            PeerPolicy::AnyIdentity => f.write_str("any identity"),
            PeerPolicy::Kinds(kinds) => write!(
                f,
                "any {} identity",
                join(kinds.iter().map(|k| k.to_string()).collect())
            ),
            PeerPolicy::OneOf(urns) => {
                f.write_str(&join(urns.iter().map(|u| u.to_string()).collect()))
            }
        }
    }
}

/// Checks the leaf's identity inside the handshake and turns failures into a
/// certificate error rustls reports (and alerts) like any other.
fn check_identity(leaf: &CertificateDer<'_>, policy: &PeerPolicy) -> Result<(), rustls::Error> {
    identity_of(leaf)
        .map_err(TransportError::from)
        .and_then(|urn| policy.check(&urn))
        .map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })
}

/// The handshake-signature half of a certificate verifier, the same in both
/// directions: TLS 1.3 signatures checked with the provider's algorithms
/// (the verifier's `algorithms`), TLS 1.2 never accepted (every
/// configuration here allows TLS 1.3 only).
macro_rules! tls13_signatures_only {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Server side: the standard WebPKI client check, then the identity policy.
#[derive(Debug)]
struct IdentityClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: PeerPolicy,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for IdentityClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_identity(end_entity, &self.policy)?;
        Ok(ClientCertVerified::assertion())
    }

    tls13_signatures_only!();
}

/// What a client checks of the server's certificate.
#[derive(Debug)]
enum ServerCheck {
    /// It chains to the trust root and names an identity the policy allows.
    ///
    /// The server is identified by its URN, not by the host name dialled,
    /// so the DNS/IP name check of web PKI is replaced by the URN check.
    Trusted {
        roots: Arc<RootCertStore>,
        policy: PeerPolicy,
    },
    /// Nothing but the handshake signature: for tools that probe how a
    /// server admits clients ([`super::probe`]), never for a peer one talks
    /// to.
    AnyForProbing,
}

/// Client side: the one server certificate verifier. The handshake
/// signature is always verified, TLS 1.2 never accepted.
#[derive(Debug)]
struct ServerVerifier {
    check: ServerCheck,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let ServerCheck::Trusted { roots, policy } = &self.check {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
            check_identity(end_entity, policy)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    tls13_signatures_only!();
}

/// Presents the primary (Ed25519) certificate to clients that can verify
/// Ed25519, and the fallback (same identity, another key type) to the rest.
#[derive(Debug)]
struct BySignatureScheme {
    primary: Arc<CertifiedKey>,
    fallback: Arc<CertifiedKey>,
}

impl ResolvesServerCert for BySignatureScheme {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello
            .signature_schemes()
            .contains(&SignatureScheme::ED25519)
        {
            Some(self.primary.clone())
        } else {
            Some(self.fallback.clone())
        }
    }
}

fn certified(
    provider: &CryptoProvider,
    identity: &TlsIdentity,
) -> Result<Arc<CertifiedKey>, TransportError> {
    let key = provider
        .key_provider
        .load_private_key(identity.key.clone_key())
        .map_err(TransportError::Config)?;
    Ok(Arc::new(CertifiedKey::new(identity.chain.clone(), key)))
}

/// Builds the server configuration: client certificates required, verified
/// against `trust`, identities filtered by `policy`. With a `fallback`
/// identity, clients that do not offer Ed25519 get that certificate instead.
pub(crate) fn server_config(
    identity: &TlsIdentity,
    fallback: Option<&TlsIdentity>,
    trust: &TrustRoot,
    policy: PeerPolicy,
) -> Result<Arc<ServerConfig>, TransportError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider.clone())
        .build()
        .map_err(|e| TransportError::Verifier(e.to_string()))?;
    let verifier = Arc::new(IdentityClientVerifier {
        inner,
        policy,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TransportError::Config)?
        .with_client_cert_verifier(verifier);
    let mut config = match fallback {
        None => builder
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(TransportError::Config)?,
        Some(fallback) => {
            if fallback.urn() != identity.urn() {
                return Err(TransportError::UnexpectedPeer {
                    got: fallback.urn().clone(),
                    wanted: identity.urn().to_string(),
                });
            }
            builder.with_cert_resolver(Arc::new(BySignatureScheme {
                primary: certified(&provider, identity)?,
                fallback: certified(&provider, fallback)?,
            }))
        }
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Builds a client configuration that presents `identity` and accepts only a
/// server whose identity satisfies `policy`.
pub(crate) fn client_config(
    identity: &TlsIdentity,
    trust: &TrustRoot,
    policy: PeerPolicy,
) -> Result<Arc<ClientConfig>, TransportError> {
    let check = ServerCheck::Trusted {
        roots: trust.roots.clone(),
        policy,
    };
    let chain = identity.chain.clone();
    let config = client_builder(check)?
        .with_client_auth_cert(chain, identity.key.clone_key())
        .map_err(TransportError::Config)?;
    Ok(Arc::new(finish_client(config, true)))
}

/// A client configuration for a server named by its host, not by a URN
/// (the NATS server the mediator may keep its messages on): TLS 1.3 only,
/// `identity` presented, the server's chain verified to `trust` and the
/// name dialled checked against its DNS or IP SANs (web PKI). No ALPN.
pub fn host_client_config(
    identity: &TlsIdentity,
    trust: &TrustRoot,
) -> Result<ClientConfig, TransportError> {
    let provider = provider();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        trust.roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| TransportError::Verifier(e.to_string()))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TransportError::Config)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(TransportError::Config)?;
    Ok(finish_client(config, false))
}

/// A client configuration that presents `client` (any chain and key, or
/// none) and lets any server in: see [`super::probe`].
pub(crate) fn probe_client_config(
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: bool,
) -> Result<ClientConfig, TransportError> {
    let builder = client_builder(ServerCheck::AnyForProbing)?;
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(TransportError::Config)?,
    };
    Ok(finish_client(config, alpn))
}

/// A TLS 1.3 client builder with the one server verifier doing `check`.
fn client_builder(
    check: ServerCheck,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TransportError> {
    let provider = provider();
    let verifier = Arc::new(ServerVerifier {
        check,
        algorithms: provider.signature_verification_algorithms,
    });
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TransportError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

/// ALPN `h2` (unless a probe asks not to offer it), no resumption.
fn finish_client(mut config: ClientConfig, alpn: bool) -> ClientConfig {
    if alpn {
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
    }
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// The fingerprint of the first (leaf) certificate in a PEM file: how a
/// peer that reads the file now would see the certificate it presents.
pub fn leaf_fingerprint(path: &Path) -> Result<Fingerprint, TransportError> {
    let pem = read(path)?;
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or(TransportError::EmptyChain)?
        .map_err(|e| TransportError::pem("certificate", e))?;
    Ok(Fingerprint::of(&leaf))
}

fn read(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::Read {
        path: PathBuf::from(path),
        source,
    })
}
