//! The development certificate authority: generate one, load one from disk,
//! sign leaves with it.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anima_protocol::{Fingerprint, TrustRoot};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::CertsError;
use crate::key_type::KeyType;
use crate::leaf::{IssuedCert, LeafSpec, Validity};
use crate::pem_file;
use crate::validity::{self, CLOCK_SKEW, DAY};

/// The longest validity [`CertAuthority::generate`] accepts: 365 days. A dev
/// CA that outlives a year is a dev CA nobody remembers is trusted.
pub const MAX_CA_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// The file name of the CA certificate in a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";

/// The file name of the CA private key in a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// A certificate authority: a self-signed CA certificate (Ed25519 or P-256)
/// and its key.
///
/// `Debug` never prints the key.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    cert_pem: String,
    common_name: String,
    not_after: SystemTime,
}

impl CertAuthority {
    /// Generates a self-signed Ed25519 CA named `common_name`, valid from
    /// [`CLOCK_SKEW`] ago for `validity` (at most [`MAX_CA_VALIDITY`]).
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, CertsError> {
        Self::generate_with_key_type(common_name, validity, KeyType::Ed25519)
    }

    /// [`generate`](Self::generate) with a key of `key_type`. The CA's key
    /// type only decides how it signs; it signs leaves of either type.
    pub fn generate_with_key_type(
        common_name: &str,
        validity: Duration,
        key_type: KeyType,
    ) -> Result<Self, CertsError> {
        if validity.is_zero() || validity > MAX_CA_VALIDITY {
            return Err(CertsError::ValidityOutOfRange {
                what: "CA",
                requested: describe(validity),
                allowed: format!("up to {}", describe(MAX_CA_VALIDITY)),
            });
        }
        let now = SystemTime::now();
        let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
        let not_after = now.checked_add(validity).unwrap_or(now);

        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity::to_datetime(not_before)?;
        params.not_after = validity::to_datetime(not_after)?;

        let key = key_type.generate().map_err(mint_error("a CA key"))?;
        let cert = params
            .self_signed(&key)
            .map_err(mint_error("a CA certificate"))?;
        Ok(CertAuthority {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            common_name: common_name.to_owned(),
            // Certificates hold whole seconds; report what the certificate says.
            not_after: validity::from_unix_seconds(validity::unix_seconds(not_after)),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA in `dir`: [`CA_CERT_FILE`] and [`CA_KEY_FILE`].
    ///
    /// Checks that the certificate is a CA and that the key belongs to it.
    /// The key may be PKCS#8 v1 (what this crate writes) or v2 (what it
    /// wrote for Ed25519 before), Ed25519 or P-256.
    ///
    /// During a CA rollover [`CA_CERT_FILE`] is a bundle of several CA
    /// certificates (see [`begin_rollover`](crate::begin_rollover)); the CA
    /// loaded is the one whose public key is that of [`CA_KEY_FILE`], so
    /// leaves are signed by the new CA while the old one is still trusted.
    pub fn load(dir: &Path) -> Result<Self, CertsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = pem_file::read_ca_file(dir, &cert_path)?;
        let key_pem = pem_file::read_ca_file(dir, &key_path)?;

        let bundle = pem_file::all_certificates_der(&cert_path, &cert_pem)?;
        let parsed = bundle
            .iter()
            .map(|der| pem_file::parse(&cert_path, der))
            .collect::<Result<Vec<_>, _>>()?;
        if !parsed.iter().any(|cert| cert.is_ca()) {
            return Err(CertsError::NotACa { path: cert_path });
        }

        let key_text = std::str::from_utf8(&key_pem).map_err(|_| CertsError::Key {
            path: key_path.clone(),
            detail: "not PEM text".into(),
        })?;
        let key = KeyPair::from_pem(key_text).map_err(|e| CertsError::Key {
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
        let Some(index) = parsed.iter().position(|cert| {
            key.public_key_raw() == cert.public_key().subject_public_key.data.as_ref()
        }) else {
            return Err(CertsError::KeyMismatch {
                cert: cert_path,
                key: key_path,
            });
        };
        let cert = &parsed[index];
        if !cert.is_ca() {
            return Err(CertsError::NotACa { path: cert_path });
        }
        let common_name = pem_file::common_name(cert.subject()).unwrap_or_default();
        let not_after = validity::from_unix_seconds(cert.validity().not_after.timestamp());
        let cert_der = bundle[index].clone();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key).map_err(|e| {
            CertsError::Certificate {
                path: cert_path.clone(),
                detail: e.to_string(),
            }
        })?;
        Ok(CertAuthority {
            issuer,
            cert_pem: pem_file::certificate_pem(&cert_der),
            cert_der,
            common_name,
            not_after,
        })
    }

    /// Signs a leaf with a fresh key as `spec` describes.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, CertsError> {
        self.issue_at(spec, SystemTime::now())
    }

    /// [`issue`](Self::issue) as if the time were `now`.
    pub(crate) fn issue_at(
        &self,
        spec: &LeafSpec,
        now: SystemTime,
    ) -> Result<IssuedCert, CertsError> {
        let (not_before, not_after) = match spec.validity {
            Validity::For(length) => {
                if self.not_after <= now {
                    return Err(self.expired());
                }
                let wanted = now.checked_add(length).unwrap_or(self.not_after);
                (
                    now.checked_sub(CLOCK_SKEW).unwrap_or(now),
                    wanted.min(self.not_after),
                )
            }
            Validity::Between(not_before, not_after) => (not_before, not_after),
        };
        // Compare what the certificate will hold: whole seconds.
        let not_before = validity::from_unix_seconds(validity::unix_seconds(not_before));
        let not_after = validity::from_unix_seconds(validity::unix_seconds(not_after));
        if not_after <= not_before {
            return Err(CertsError::EmptyValidity {
                not_before: validity::rfc3339(not_before),
                not_after: validity::rfc3339(not_after),
            });
        }

        let what = || format!("a certificate for {}", spec.common_name());
        let mint = |e: rcgen::Error| CertsError::Mint {
            what: what(),
            detail: e.to_string(),
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(spec.common_name());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity::to_datetime(not_before)?;
        params.not_after = validity::to_datetime(not_after)?;
        for urn in &spec.urns {
            let uri = Ia5String::try_from(urn.as_str()).map_err(mint)?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        for name in &spec.dns_names {
            let dns = Ia5String::try_from(name.as_str()).map_err(mint)?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params
            .subject_alt_names
            .extend(spec.ip_addresses.iter().copied().map(SanType::IpAddress));

        let key = spec.key_type.generate().map_err(mint)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(mint)?;
        let key_der = crate::pkcs8::private_key_der(&key);
        Ok(IssuedCert {
            urns: spec.urns.clone(),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: crate::pkcs8::pem("PRIVATE KEY", &key_der),
            key_der,
            key_type: spec.key_type,
            not_before,
            not_after,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The subject common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// When the CA expires (whole seconds).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The SHA-256 fingerprint of the CA certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    /// A trust root holding this CA.
    pub fn trust_root(&self) -> Result<TrustRoot, CertsError> {
        TrustRoot::from_pem(self.cert_pem.as_bytes()).map_err(CertsError::Tls)
    }

    /// The private key, PKCS#8 v1 PEM, for writing `ca.key`.
    pub(crate) fn key_pem(&self) -> String {
        crate::pkcs8::pem(
            "PRIVATE KEY",
            &crate::pkcs8::private_key_der(self.issuer.key()),
        )
    }

    /// The type of the CA's key, or `None` for a key loaded from a file that
    /// is neither Ed25519 nor P-256.
    pub(crate) fn key_type(&self) -> Option<KeyType> {
        KeyType::of_algorithm(self.issuer.key().algorithm())
    }

    /// Whole days of validity left at `now` (rounded up), or why none are.
    pub(crate) fn days_left(&self, now: SystemTime) -> Result<u64, CertsError> {
        match self.not_after.duration_since(now) {
            Ok(left) if !left.is_zero() => Ok(validity::days_rounded_up(left)),
            _ => Err(self.expired()),
        }
    }

    fn expired(&self) -> CertsError {
        CertsError::CaExpired {
            ca: self.common_name.clone(),
            expired_at: validity::rfc3339(self.not_after),
        }
    }
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority")
            .field("common_name", &self.common_name)
            .field("fingerprint", &self.fingerprint())
            .field("not_after", &validity::rfc3339(self.not_after))
            .field("key", &"<redacted>")
            .finish()
    }
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn mint_error(what: &'static str) -> impl Fn(rcgen::Error) -> CertsError {
    move |e| CertsError::Mint {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// `d` as whole days when it is whole days, else in seconds.
fn describe(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(DAY.as_secs()) && d.subsec_nanos() == 0 {
        format!("{} days", secs / DAY.as_secs())
    } else {
        format!("{secs} seconds")
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use anima_protocol::transport::{CertIdentityError, identity_of};
    use anima_protocol::{TlsIdentity, Urn, UrnKind};
    use rustls::pki_types::CertificateDer;
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::test_support::{pem_der, pkcs8_version, verify_both_roles};

    fn ca() -> CertAuthority {
        CertAuthority::generate("test CA", 30 * DAY).unwrap()
    }

    fn key_oid(cert_der: &[u8]) -> String {
        let (_, cert) = X509Certificate::from_der(cert_der).unwrap();
        cert.public_key().algorithm.algorithm.to_id_string()
    }

    const ED25519_OID: &str = "1.3.101.112";
    const EC_PUBLIC_KEY_OID: &str = "1.2.840.10045.2.1";

    fn urn(kind: UrnKind, name: &str) -> Urn {
        Urn::new(kind, name).unwrap()
    }

    /// Writes `ca`'s certificate and `key_pem` where [`CertAuthority::load`]
    /// looks for them, and loads them back.
    fn write_and_load(ca: &CertAuthority, key_pem: &str) -> CertAuthority {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CA_CERT_FILE), ca.cert_pem()).unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), key_pem).unwrap();
        CertAuthority::load(dir.path()).unwrap()
    }

    /// Checks that `loaded` signs leaves that chain to `ca`.
    fn assert_signs_leaves_of(loaded: &CertAuthority, ca: &CertAuthority) {
        let leaf = loaded
            .issue(&LeafSpec::new(urn(UrnKind::Module, "m")))
            .unwrap();
        verify_both_roles(ca.cert_der(), leaf.cert_der(), SystemTime::now()).unwrap();
    }

    fn identity(leaf: &IssuedCert) -> Result<Urn, CertIdentityError> {
        identity_of(&CertificateDer::from(leaf.cert_der()))
    }

    #[test]
    fn generated_ca_is_an_ed25519_ca_for_signing_certificates() {
        let ca = ca();
        let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        assert!(cert.is_ca());
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        assert!(!usage.digital_signature());
        assert_eq!(
            cert.public_key().algorithm.algorithm.to_id_string(),
            "1.3.101.112"
        );
        assert_eq!(
            pem_file::common_name(cert.subject()).as_deref(),
            Some("test CA")
        );
        assert_eq!(ca.common_name(), "test CA");
        assert_eq!(cert.subject(), cert.issuer());
        assert_eq!(
            validity::unix_seconds(ca.not_after()),
            cert.validity().not_after.timestamp()
        );
        ca.trust_root().unwrap();
    }

    #[test]
    fn a_ca_of_either_key_type_signs_leaves_of_either_key_type() {
        for ca_type in KeyType::ALL {
            let ca = CertAuthority::generate_with_key_type("typed CA", 30 * DAY, ca_type).unwrap();
            let want_ca = match ca_type {
                KeyType::Ed25519 => ED25519_OID,
                KeyType::P256 => EC_PUBLIC_KEY_OID,
            };
            assert_eq!(key_oid(ca.cert_der()), want_ca, "{ca_type}");
            for leaf_type in KeyType::ALL {
                let m = urn(UrnKind::Module, "m");
                let leaf = ca
                    .issue(&LeafSpec::new(m.clone()).key_type(leaf_type))
                    .unwrap();
                assert_eq!(leaf.key_type(), leaf_type);
                let want_leaf = match leaf_type {
                    KeyType::Ed25519 => ED25519_OID,
                    KeyType::P256 => EC_PUBLIC_KEY_OID,
                };
                assert_eq!(key_oid(leaf.cert_der()), want_leaf, "{leaf_type}");
                verify_both_roles(ca.cert_der(), leaf.cert_der(), SystemTime::now())
                    .unwrap_or_else(|e| panic!("{ca_type} CA, {leaf_type} leaf: {e}"));
                assert_eq!(leaf.identity().unwrap().urn(), &m);
            }
        }
        assert_eq!(
            LeafSpec::without_urn().ecdsa_p256(),
            LeafSpec::without_urn().key_type(KeyType::P256)
        );
    }

    #[test]
    fn every_key_minted_is_pkcs8_v1_and_serves_tls_and_leases() {
        for ca_type in KeyType::ALL {
            let ca = CertAuthority::generate_with_key_type("v1 CA", 30 * DAY, ca_type).unwrap();
            let ca_key = ca.key_pem();
            assert!(ca_key.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            assert_eq!(pkcs8_version(&pem_der(&ca_key)), 0, "{ca_type} CA key");
            // rcgen reads it back to the key in the certificate.
            let reread = KeyPair::from_pem(&ca_key).unwrap();
            assert_eq!(reread.public_key_raw(), ca.issuer.key().public_key_raw());
            for leaf_type in KeyType::ALL {
                let leaf = ca
                    .issue(&LeafSpec::new(urn(UrnKind::Core, "c")).key_type(leaf_type))
                    .unwrap();
                assert_eq!(pem_der(leaf.key_pem()), leaf.key_der());
                assert_eq!(pkcs8_version(leaf.key_der()), 0, "{leaf_type} leaf key");
                let identity = leaf.identity().unwrap();
                anima_protocol::lease::LeaseSigner::from_identity(&identity)
                    .unwrap_or_else(|e| panic!("{leaf_type} leaf as a lease key: {e}"));
            }
        }
    }

    #[test]
    fn a_ca_key_written_as_pkcs8_v2_still_loads() {
        // What `anima certs init` wrote for Ed25519 before keys became v1.
        let ca = ca();
        let v2 = ca.issuer.key().serialize_pem();
        assert_eq!(pkcs8_version(&pem_der(&v2)), 1);

        let loaded = write_and_load(&ca, &v2);
        assert_eq!(pkcs8_version(&pem_der(&loaded.key_pem())), 0);
        assert_eq!(loaded.key_pem(), ca.key_pem());
        assert_signs_leaves_of(&loaded, &ca);
    }

    #[test]
    fn a_leaf_key_in_pkcs8_v2_still_serves_tls_and_leases() {
        let ca = ca();
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(pkcs8_version(key.serialized_der()), 1);
        let mut params = CertificateParams::new(["localhost".to_owned()]).unwrap();
        let uri = Ia5String::try_from("urn:anima:module:old").unwrap();
        params.subject_alt_names.push(SanType::URI(uri));
        let cert = params.signed_by(&key, &ca.issuer).unwrap();

        let identity =
            TlsIdentity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(identity.urn(), &urn(UrnKind::Module, "old"));
        anima_protocol::lease::LeaseSigner::from_identity(&identity).unwrap();
    }

    #[test]
    fn ca_validity_is_at_most_a_year() {
        for bad in [
            Duration::ZERO,
            MAX_CA_VALIDITY + Duration::from_secs(1),
            400 * DAY,
        ] {
            let err = CertAuthority::generate("x", bad).unwrap_err();
            assert!(
                matches!(err, CertsError::ValidityOutOfRange { what: "CA", .. }),
                "{err}"
            );
        }
        let msg = CertAuthority::generate("x", 400 * DAY)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "CA validity of 400 days is out of range (allowed: up to 365 days)"
        );
        CertAuthority::generate("x", MAX_CA_VALIDITY).unwrap();
    }

    #[test]
    fn leaf_carries_its_urn_and_works_as_server_and_client() {
        let ca = ca();
        let hasher = urn(UrnKind::Module, "hasher");
        let leaf = ca.issue(&LeafSpec::new(hasher.clone())).unwrap();
        assert_eq!(identity(&leaf).unwrap(), hasher);
        assert_eq!(leaf.urns(), std::slice::from_ref(&hasher));
        verify_both_roles(ca.cert_der(), leaf.cert_der(), SystemTime::now()).unwrap();

        let (_, cert) = X509Certificate::from_der(leaf.cert_der()).unwrap();
        assert!(!cert.is_ca());
        assert_eq!(
            pem_file::common_name(cert.subject()).as_deref(),
            Some("urn:anima:module:hasher")
        );
        assert_eq!(
            pem_file::common_name(cert.issuer()).as_deref(),
            Some("test CA")
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(
            cert.public_key().algorithm.algorithm.to_id_string(),
            "1.3.101.112"
        );

        // The key is PKCS#8 and fits the certificate: the transport accepts the pair.
        assert!(leaf.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let tls = leaf.identity().unwrap();
        assert_eq!(tls.urn(), &hasher);
        assert_eq!(tls.fingerprint(), leaf.fingerprint());
        assert_eq!(
            KeyPair::try_from(leaf.key_der())
                .unwrap()
                .public_key_raw()
                .len(),
            32
        );
    }

    #[test]
    fn default_validity_is_90_days_backdated_for_clock_skew() {
        let ca = CertAuthority::generate("test CA", MAX_CA_VALIDITY).unwrap();
        let now = SystemTime::now();
        let leaf = ca
            .issue_at(&LeafSpec::new(urn(UrnKind::Core, "dev")), now)
            .unwrap();
        let (_, cert) = X509Certificate::from_der(leaf.cert_der()).unwrap();
        let now_s = validity::unix_seconds(now);
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        assert_eq!(nb, now_s - 300);
        assert_eq!(na, now_s + 90 * 86_400);
        assert_eq!(validity::unix_seconds(leaf.not_before()), nb);
        assert_eq!(validity::unix_seconds(leaf.not_after()), na);
    }

    #[test]
    fn relative_validity_is_cut_at_the_ca_expiry() {
        let ca = CertAuthority::generate("short CA", 10 * DAY).unwrap();
        let leaf = ca
            .issue(&LeafSpec::new(urn(UrnKind::Core, "dev")).valid_for(90 * DAY))
            .unwrap();
        assert_eq!(leaf.not_after(), ca.not_after());
    }

    #[test]
    fn an_expired_ca_signs_nothing_relative() {
        let ca = ca();
        let later = ca.not_after() + Duration::from_secs(1);
        let err = ca
            .issue_at(&LeafSpec::new(urn(UrnKind::Core, "dev")), later)
            .unwrap_err();
        assert!(matches!(err, CertsError::CaExpired { .. }), "{err}");
    }

    #[test]
    fn a_leaf_without_urn_has_no_identity() {
        let ca = ca();
        let leaf = ca.issue(&LeafSpec::without_urn()).unwrap();
        assert!(leaf.urns().is_empty());
        assert_eq!(identity(&leaf), Err(CertIdentityError::NoUrn));
        let (_, cert) = X509Certificate::from_der(leaf.cert_der()).unwrap();
        assert_eq!(
            pem_file::common_name(cert.subject()).as_deref(),
            Some("anima-test")
        );
        let err = leaf.identity().unwrap_err();
        assert!(err.to_string().contains("no urn:anima identity"), "{err}");
        // Still a valid certificate: peers refuse it for its identity alone.
        verify_both_roles(ca.cert_der(), leaf.cert_der(), SystemTime::now()).unwrap();
    }

    #[test]
    fn a_leaf_with_two_urns_has_no_single_identity() {
        let ca = ca();
        let spec = LeafSpec::new(urn(UrnKind::Module, "a")).with_urn(urn(UrnKind::Module, "b"));
        assert_eq!(spec.urns().len(), 2);
        let leaf = ca.issue(&spec).unwrap();
        assert_eq!(identity(&leaf), Err(CertIdentityError::SeveralUrns(2)));
        assert!(leaf.identity().is_err());
    }

    #[test]
    fn an_explicit_window_is_kept_as_given_even_when_expired() {
        let ca = ca();
        let now = SystemTime::now();
        let spec = LeafSpec::new(urn(UrnKind::User, "old")).valid_between(now - 2 * DAY, now - DAY);
        let leaf = ca.issue(&spec).unwrap();
        assert!(leaf.not_after() < now);
        assert_eq!(
            validity::unix_seconds(leaf.not_before()),
            validity::unix_seconds(now - 2 * DAY)
        );
        let err = verify_both_roles(ca.cert_der(), leaf.cert_der(), now).unwrap_err();
        assert!(format!("{err:?}").contains("Expired"), "{err:?}");
    }

    #[test]
    fn an_empty_window_is_refused() {
        let now = SystemTime::now();
        let spec = LeafSpec::without_urn().valid_between(now, now - DAY);
        let err = ca().issue(&spec).unwrap_err();
        assert!(matches!(err, CertsError::EmptyValidity { .. }), "{err}");
    }

    #[test]
    fn sans_can_be_replaced() {
        let ca = ca();
        let spec = LeafSpec::new(urn(UrnKind::Module, "x"))
            .dns_names(["example.test"])
            .ip_addresses([]);
        let leaf = ca.issue(&spec).unwrap();
        let (_, cert) = X509Certificate::from_der(leaf.cert_der()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["URI(urn:anima:module:x)", "DNSName(example.test)"]);

        let bad = LeafSpec::without_urn().dns_names(["é.test"]);
        assert!(matches!(ca.issue(&bad), Err(CertsError::Mint { .. })));
    }

    #[test]
    fn load_round_trips_and_signs_leaves_that_chain_to_the_original() {
        let ca = ca();
        let loaded = write_and_load(&ca, &ca.key_pem());
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.common_name(), "test CA");
        assert_eq!(loaded.not_after(), ca.not_after());
        assert_eq!(loaded.key_pem(), ca.key_pem());
        assert_signs_leaves_of(&loaded, &ca);
    }

    #[test]
    fn load_explains_a_missing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let err = CertAuthority::load(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, CertsError::CaMissing { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("ca.pem") && msg.contains("anima certs init"),
            "{msg}"
        );

        fs::write(dir.path().join(CA_CERT_FILE), ca().cert_pem()).unwrap();
        let msg = CertAuthority::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("ca.key not found"), "{msg}");
    }

    #[test]
    fn load_refuses_malformed_mismatched_and_non_ca_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join(CA_CERT_FILE), dir.path().join(CA_KEY_FILE));
        let ca = ca();
        let other = CertAuthority::generate("other", DAY).unwrap();

        fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        fs::write(&key, ca.key_pem()).unwrap();
        let err = CertAuthority::load(dir.path()).unwrap_err();
        assert!(matches!(err, CertsError::Pem { .. }), "{err}");

        fs::write(&cert, ca.cert_pem()).unwrap();
        fs::write(&key, "not a key").unwrap();
        let err = CertAuthority::load(dir.path()).unwrap_err();
        assert!(matches!(err, CertsError::Key { .. }), "{err}");

        fs::write(&key, other.key_pem()).unwrap();
        let err = CertAuthority::load(dir.path()).unwrap_err();
        assert!(matches!(err, CertsError::KeyMismatch { .. }), "{err}");

        let leaf = ca.issue(&LeafSpec::new(urn(UrnKind::Core, "dev"))).unwrap();
        fs::write(&cert, leaf.cert_pem()).unwrap();
        fs::write(&key, leaf.key_pem()).unwrap();
        let err = CertAuthority::load(dir.path()).unwrap_err();
        assert!(matches!(err, CertsError::NotACa { .. }), "{err}");
    }

    #[test]
    fn load_picks_the_certificate_of_a_bundle_that_matches_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join(CA_CERT_FILE), dir.path().join(CA_KEY_FILE));
        let first = ca();
        let second =
            CertAuthority::generate_with_key_type("second CA", DAY, KeyType::P256).unwrap();
        fs::write(&cert, format!("{}{}", first.cert_pem(), second.cert_pem())).unwrap();

        fs::write(&key, second.key_pem()).unwrap();
        let loaded = CertAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_der(), second.cert_der());
        assert_eq!(loaded.cert_pem(), second.cert_pem());
        assert_eq!(loaded.common_name(), "second CA");
        assert_eq!(loaded.not_after(), second.not_after());
        assert_eq!(loaded.key_type(), Some(KeyType::P256));
        assert_signs_leaves_of(&loaded, &second);

        fs::write(&key, first.key_pem()).unwrap();
        let loaded = CertAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_der(), first.cert_der());
        assert_signs_leaves_of(&loaded, &first);

        let stranger = CertAuthority::generate("stranger", DAY).unwrap();
        fs::write(&key, stranger.key_pem()).unwrap();
        let err = CertAuthority::load(dir.path()).unwrap_err();
        assert!(matches!(err, CertsError::KeyMismatch { .. }), "{err}");

        // The key's certificate must be a CA, even beside one that is.
        let leaf = first
            .issue(&LeafSpec::new(urn(UrnKind::Core, "dev")))
            .unwrap();
        fs::write(&cert, format!("{}{}", first.cert_pem(), leaf.cert_pem())).unwrap();
        fs::write(&key, leaf.key_pem()).unwrap();
        let err = CertAuthority::load(dir.path()).unwrap_err();
        assert!(matches!(err, CertsError::NotACa { .. }), "{err}");
    }

    #[test]
    fn debug_never_prints_keys() {
        let ca = ca();
        let leaf = ca.issue(&LeafSpec::new(urn(UrnKind::Core, "dev"))).unwrap();
        let secret_line = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
        for (debug, key_pem) in [
            (format!("{ca:?}"), ca.key_pem()),
            (format!("{leaf:?}"), leaf.key_pem().to_owned()),
        ] {
            assert!(debug.contains("<redacted>"), "{debug}");
            assert!(!debug.contains(&secret_line(&key_pem)), "{debug}");
            assert!(!debug.contains("PRIVATE"), "{debug}");
        }
        assert!(format!("{leaf:?}").contains("urn:anima:core:dev"));
    }
}
