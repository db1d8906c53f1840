//! What a leaf certificate should say ([`LeafSpec`]) and what was minted
//! ([`IssuedCert`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use anima_protocol::{Fingerprint, TlsIdentity, Urn};

use crate::error::CertsError;
use crate::key_type::KeyType;
use crate::validity;

/// How long a leaf is valid by default: 90 days.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(90 * 86_400);

/// The subject common name of a leaf that carries no URN.
pub(crate) const ANONYMOUS_CN: &str = "anima-test";

/// What a leaf certificate should say. A consuming builder.
///
/// # Default
///
/// [`LeafSpec::new`] gives a certificate that:
/// - carries exactly the one URN given, as a URI SAN, and as its subject CN;
/// - names `localhost` (DNS SAN) and `127.0.0.1` (IP SAN), since a server
///   certificate needs a DNS or IP SAN for standard verification;
/// - is valid from [`CLOCK_SKEW`](crate::CLOCK_SKEW) before issuing for
///   [`DEFAULT_LEAF_VALIDITY`] (90 days), cut at the CA's expiry;
/// - has both extended key usages, `serverAuth` and `clientAuth` (modules
///   serve, Cores dial, and either may do both);
/// - has a fresh Ed25519 key ([`LeafSpec::key_type`] chooses another).
///
/// Tests can mint what a real deployment never should: no URN
/// ([`LeafSpec::without_urn`]), several ([`LeafSpec::with_urn`]), or an
/// expired window ([`LeafSpec::valid_between`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    pub(crate) urns: Vec<Urn>,
    pub(crate) dns_names: Vec<String>,
    pub(crate) ip_addresses: Vec<IpAddr>,
    pub(crate) validity: Validity,
    pub(crate) key_type: KeyType,
}

impl LeafSpec {
    /// A certificate for `urn`, with the defaults above.
    pub fn new(urn: Urn) -> Self {
        LeafSpec {
            urns: vec![urn],
            ..Self::without_urn()
        }
    }

    /// A certificate with no URN at all (for tests of refusal).
    pub fn without_urn() -> Self {
        LeafSpec {
            urns: Vec::new(),
            dns_names: vec!["localhost".to_owned()],
            ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            validity: Validity::For(DEFAULT_LEAF_VALIDITY),
            key_type: KeyType::Ed25519,
        }
    }

    /// A fresh key of `key_type` (default: Ed25519).
    pub fn key_type(mut self, key_type: KeyType) -> Self {
        self.key_type = key_type;
        self
    }

    /// An ECDSA P-256 key instead of Ed25519: `key_type(KeyType::P256)`. For
    /// TLS stacks that do not verify Ed25519 (BoringSSL, so Python's
    /// `grpcio`); its leases are signed `ES256`.
    pub fn ecdsa_p256(self) -> Self {
        self.key_type(KeyType::P256)
    }

    /// Adds another URN SAN (a certificate with two is refused by peers).
    pub fn with_urn(mut self, urn: Urn) -> Self {
        self.urns.push(urn);
        self
    }

    /// Replaces the DNS SANs (default: `localhost`).
    pub fn dns_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.dns_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the IP SANs (default: `127.0.0.1`).
    pub fn ip_addresses(mut self, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.ip_addresses = addrs.into_iter().collect();
        self
    }

    /// Valid from [`CLOCK_SKEW`](crate::CLOCK_SKEW) before issuing, for
    /// `validity`, but never past the CA's expiry.
    pub fn valid_for(mut self, validity: Duration) -> Self {
        self.validity = Validity::For(validity);
        self
    }

    /// Valid exactly from `not_before` to `not_after`, as given: not backdated
    /// and not cut at the CA's expiry. For tests that need an expired or a
    /// not-yet-valid certificate.
    pub fn valid_between(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.validity = Validity::Between(not_before, not_after);
        self
    }

    /// The URNs the certificate will carry.
    pub fn urns(&self) -> &[Urn] {
        &self.urns
    }

    /// The subject common name: the first URN, or `anima-test` without one.
    pub(crate) fn common_name(&self) -> &str {
        self.urns.first().map_or(ANONYMOUS_CN, Urn::as_str)
    }
}

/// When a leaf is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validity {
    /// From `CLOCK_SKEW` before issuing, for this long, cut at the CA's expiry.
    For(Duration),
    /// Exactly this window, as given.
    Between(SystemTime, SystemTime),
}

/// A minted leaf certificate and its private key.
///
/// `Debug` never prints the key.
#[derive(Clone)]
pub struct IssuedCert {
    pub(crate) urns: Vec<Urn>,
    pub(crate) cert_der: Vec<u8>,
    pub(crate) cert_pem: String,
    pub(crate) key_der: Vec<u8>,
    pub(crate) key_pem: String,
    pub(crate) key_type: KeyType,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl IssuedCert {
    /// The URNs the certificate carries.
    pub fn urns(&self) -> &[Urn] {
        &self.urns
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The private key, PKCS#8 PEM. Never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The private key, PKCS#8 DER. Never log it.
    pub fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    /// The type of the certificate's key.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The start of the validity window (whole seconds).
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The end of the validity window (whole seconds).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The SHA-256 fingerprint of the certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    /// The certificate and key as a TLS identity.
    ///
    /// Fails, as a peer would, unless the certificate carries exactly one URN.
    pub fn identity(&self) -> Result<TlsIdentity, CertsError> {
        TlsIdentity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
            .map_err(CertsError::Tls)
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("urns", &self.urns)
            .field("key_type", &self.key_type)
            .field("fingerprint", &self.fingerprint())
            .field("not_before", &validity::rfc3339(self.not_before))
            .field("not_after", &validity::rfc3339(self.not_after))
            .field("key", &"<redacted>")
            .finish()
    }
}
