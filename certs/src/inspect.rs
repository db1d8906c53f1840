//! Reading a certificate file back: what `anima certs inspect` prints.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use anima_protocol::transport::identity_of;
use anima_protocol::{Fingerprint, Urn};
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::error::CertsError;
use crate::pem_file;
use crate::validity;

/// Reads the certificate in `path` (PEM, or DER) and reports on it, judging
/// expiry against the current time.
///
/// A private key, another PEM block, or garbage is an error saying so.
pub fn inspect(path: &Path) -> Result<CertReport, CertsError> {
    inspect_at(path, SystemTime::now())
}

/// [`inspect`] as if the time were `now`.
pub(crate) fn inspect_at(path: &Path, now: SystemTime) -> Result<CertReport, CertsError> {
    let data = pem_file::read(path)?;
    let der = pem_file::certificate_der(path, &data)?;
    let cert = pem_file::parse(path, &der)?;
    Ok(CertReport {
        identity: reported_identity(&der, &cert),
        subject_cn: pem_file::common_name(cert.subject()),
        issuer_cn: pem_file::common_name(cert.issuer()),
        serial: cert.raw_serial_as_string(),
        not_before: validity::from_unix_seconds(cert.validity().not_before.timestamp()),
        not_after: validity::from_unix_seconds(cert.validity().not_after.timestamp()),
        checked_at: now,
        key_type: key_type(&cert),
        fingerprint: Fingerprint::of(&der),
        is_ca: cert.is_ca(),
    })
}

/// What a certificate file says: identity, names, validity, key, fingerprint.
///
/// `Display` prints one `field: value` line per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertReport {
    identity: ReportedIdentity,
    subject_cn: Option<String>,
    issuer_cn: Option<String>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
    checked_at: SystemTime,
    key_type: String,
    fingerprint: Fingerprint,
    is_ca: bool,
}

impl CertReport {
    /// The certificate's identity, when it carries exactly one valid URN.
    pub fn urn(&self) -> Option<&Urn> {
        match &self.identity {
            ReportedIdentity::One(urn) => Some(urn),
            _ => None,
        }
    }

    /// The subject common name.
    pub fn subject_cn(&self) -> Option<&str> {
        self.subject_cn.as_deref()
    }

    /// The issuer common name.
    pub fn issuer_cn(&self) -> Option<&str> {
        self.issuer_cn.as_deref()
    }

    /// The serial number, colon-separated hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The start of the validity window.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The end of the validity window.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether the certificate had expired when inspected (`notAfter` itself
    /// is still inside the window, RFC 5280 §4.1.2.5).
    pub fn is_expired(&self) -> bool {
        self.not_after < self.checked_at
    }

    /// The key algorithm (`Ed25519`, `ECDSA P-256`, `RSA 2048`, …).
    pub fn key_type(&self) -> &str {
        &self.key_type
    }

    /// The SHA-256 fingerprint of the certificate's DER.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Whether the certificate is a CA (`basicConstraints CA:TRUE`).
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }

    /// Reads the value of the field `name` back from a report's text (what
    /// `Display` prints, and `anima certs inspect` with it): the trimmed rest
    /// of the first `name:` line, or `None` when there is no such line.
    ///
    /// ```
    /// use anima_certs::CertReport;
    ///
    /// let text = "identity:    urn:anima:module:echo\nCA:          no";
    /// assert_eq!(CertReport::field(text, "identity"), Some("urn:anima:module:echo"));
    /// assert_eq!(CertReport::field(text, "CA"), Some("no"));
    /// assert_eq!(CertReport::field(text, "serial"), None);
    /// ```
    pub fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }

    /// `valid, expires in 89 days`, `EXPIRED 3 days ago`, or `NOT YET VALID …`.
    fn status(&self) -> String {
        let now = self.checked_at;
        if self.is_expired() {
            let ago = now.duration_since(self.not_after).unwrap_or_default();
            format!("EXPIRED {} ago", validity::span(ago))
        } else if let Ok(until) = self.not_before.duration_since(now) {
            if until.is_zero() {
                self.expires_in()
            } else {
                format!("NOT YET VALID (starts in {})", validity::span(until))
            }
        } else {
            self.expires_in()
        }
    }

    fn expires_in(&self) -> String {
        let left = self
            .not_after
            .duration_since(self.checked_at)
            .unwrap_or_default();
        format!("valid, expires in {}", validity::span(left))
    }
}

impl fmt::Display for CertReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = match &self.identity {
            ReportedIdentity::One(urn) => urn.to_string(),
            ReportedIdentity::None => "none".to_owned(),
            ReportedIdentity::Several(urns) => format!("several: {}", urns.join(", ")),
            ReportedIdentity::Invalid(why) => format!("invalid: {why}"),
        };
        let none = "(none)";
        writeln!(f, "identity:    {identity}")?;
        writeln!(f, "subject CN:  {}", self.subject_cn().unwrap_or(none))?;
        writeln!(f, "issuer CN:   {}", self.issuer_cn().unwrap_or(none))?;
        writeln!(f, "serial:      {}", self.serial)?;
        writeln!(f, "not before:  {}", validity::rfc3339(self.not_before))?;
        writeln!(f, "not after:   {}", validity::rfc3339(self.not_after))?;
        writeln!(f, "status:      {}", self.status())?;
        writeln!(f, "key:         {}", self.key_type)?;
        writeln!(f, "sha-256:     {}", self.fingerprint)?;
        write!(f, "CA:          {}", if self.is_ca { "yes" } else { "no" })
    }
}

/// The `urn:anima:` identities a certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReportedIdentity {
    One(Urn),
    None,
    Several(Vec<String>),
    Invalid(String),
}

/// The identity as a peer would judge it, listing the URNs when there are several.
fn reported_identity(der: &[u8], cert: &X509Certificate<'_>) -> ReportedIdentity {
    use anima_protocol::transport::CertIdentityError as E;
    match identity_of(&CertificateDer::from(der)) {
        Ok(urn) => ReportedIdentity::One(urn),
        Err(E::NoUrn) => ReportedIdentity::None,
        Err(E::SeveralUrns(_)) => ReportedIdentity::Several(anima_uris(cert)),
        Err(other) => ReportedIdentity::Invalid(other.to_string()),
    }
}

fn anima_uris(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("urn:anima:") => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// A name for the key algorithm, from its OID (and curve or size).
fn key_type(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    let oid = spki.algorithm.algorithm.to_id_string();
    match oid.as_str() {
        "1.3.101.112" => "Ed25519".to_owned(),
        "1.3.101.113" => "Ed448".to_owned(),
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|c| c.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "ECDSA P-256".to_owned(),
                Some("1.3.132.0.34") => "ECDSA P-384".to_owned(),
                Some("1.3.132.0.35") => "ECDSA P-521".to_owned(),
                Some(other) => format!("ECDSA (curve {other})"),
                None => "ECDSA".to_owned(),
            }
        }
        "1.2.840.113549.1.1.1" => match spki.parsed() {
            Ok(key) if key.key_size() > 0 => format!("RSA {}", key.key_size()),
            _ => "RSA".to_owned(),
        },
        other => format!("unknown (OID {other})"),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Duration;

    use anima_protocol::{Urn, UrnKind};

    use super::*;
    use crate::{CertAuthority, IssuedCert, LeafSpec};

    const DAY: Duration = Duration::from_secs(86_400);
    const HOUR: Duration = Duration::from_secs(3_600);

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: std::path::PathBuf,
        ca: CertAuthority,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            Fixture {
                dir: tmp.path().to_owned(),
                _tmp: tmp,
                ca: CertAuthority::generate("Inspect CA", 100 * DAY).unwrap(),
            }
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> std::path::PathBuf {
            let path = self.dir.join(name);
            fs::write(&path, contents).unwrap();
            path
        }

        fn leaf(&self, spec: LeafSpec) -> (IssuedCert, std::path::PathBuf) {
            let leaf = self.ca.issue(&spec).unwrap();
            let path = self.write("leaf.pem", leaf.cert_pem());
            (leaf, path)
        }
    }

    fn urn(name: &str) -> Urn {
        Urn::new(UrnKind::Module, name).unwrap()
    }

    fn line<'a>(report: &'a str, field: &str) -> &'a str {
        CertReport::field(report, field).unwrap_or_else(|| panic!("no {field:?} line in\n{report}"))
    }

    #[test]
    fn reports_every_field_of_a_leaf() {
        let f = Fixture::new();
        let (leaf, path) = f.leaf(LeafSpec::new(urn("hasher")));
        let report = inspect_at(&path, leaf.not_after() - 10 * DAY).unwrap();
        assert_eq!(report.urn(), Some(&urn("hasher")));
        assert!(!report.is_expired());
        assert!(!report.is_ca());
        assert_eq!(report.fingerprint(), leaf.fingerprint());

        let text = report.to_string();
        assert_eq!(line(&text, "identity"), "urn:anima:module:hasher");
        assert_eq!(line(&text, "subject CN"), "urn:anima:module:hasher");
        assert_eq!(line(&text, "issuer CN"), "Inspect CA");
        assert_eq!(line(&text, "serial"), report.serial());
        assert!(report.serial().contains(':'));
        assert_eq!(
            line(&text, "not before"),
            validity::rfc3339(leaf.not_before())
        );
        assert_eq!(
            line(&text, "not after"),
            validity::rfc3339(leaf.not_after())
        );
        assert!(line(&text, "not after").ends_with('Z'));
        assert_eq!(line(&text, "status"), "valid, expires in 10 days");
        assert_eq!(line(&text, "key"), "Ed25519");
        assert_eq!(line(&text, "sha-256"), leaf.fingerprint().to_hex());
        assert_eq!(line(&text, "CA"), "no");
        assert_eq!(text.lines().count(), 10);
    }

    #[test]
    fn status_says_hours_expired_or_not_yet_valid() {
        let f = Fixture::new();
        let (leaf, path) = f.leaf(LeafSpec::new(urn("x")));
        let status = |now| line(&inspect_at(&path, now).unwrap().to_string(), "status").to_owned();
        assert_eq!(
            status(leaf.not_after() - 5 * HOUR),
            "valid, expires in 5 hours"
        );
        assert_eq!(status(leaf.not_after() + 2 * DAY), "EXPIRED 2 days ago");
        assert_eq!(status(leaf.not_after()), "valid, expires in 0 seconds");
        assert_eq!(
            status(leaf.not_after() + Duration::from_secs(1)),
            "EXPIRED 1 second ago"
        );
        assert_eq!(
            status(leaf.not_before() - 3 * HOUR),
            "NOT YET VALID (starts in 3 hours)"
        );
        assert!(!inspect_at(&path, leaf.not_after()).unwrap().is_expired());
        let just_after = leaf.not_after() + Duration::from_secs(1);
        assert!(inspect_at(&path, just_after).unwrap().is_expired());
    }

    #[test]
    fn reports_an_expired_certificate_as_expired_now() {
        let f = Fixture::new();
        let now = SystemTime::now();
        let (_, path) = f.leaf(LeafSpec::new(urn("old")).valid_between(now - 3 * DAY, now - DAY));
        let report = inspect(&path).unwrap();
        assert!(report.is_expired());
        assert!(line(&report.to_string(), "status").starts_with("EXPIRED "));
    }

    #[test]
    fn reports_ca_none_and_several_identities() {
        let f = Fixture::new();
        let ca_path = f.write("ca.pem", f.ca.cert_pem());
        let text = inspect(&ca_path).unwrap().to_string();
        assert_eq!(line(&text, "CA"), "yes");
        assert_eq!(line(&text, "identity"), "none");
        assert_eq!(line(&text, "subject CN"), "Inspect CA");

        let (_, path) = f.leaf(LeafSpec::without_urn());
        let text = inspect(&path).unwrap().to_string();
        assert_eq!(line(&text, "identity"), "none");
        assert_eq!(line(&text, "subject CN"), "anima-test");

        let (_, path) = f.leaf(LeafSpec::new(urn("a")).with_urn(urn("b")));
        let report = inspect(&path).unwrap();
        assert_eq!(report.urn(), None);
        assert_eq!(
            line(&report.to_string(), "identity"),
            "several: urn:anima:module:a, urn:anima:module:b"
        );
    }

    #[test]
    fn reads_der_too() {
        let f = Fixture::new();
        let leaf = f.ca.issue(&LeafSpec::new(urn("der"))).unwrap();
        let path = f.write("leaf.der", leaf.cert_der());
        assert_eq!(inspect(&path).unwrap().urn(), Some(&urn("der")));
    }

    #[test]
    fn refuses_keys_garbage_and_missing_files_in_one_line() {
        let f = Fixture::new();
        let leaf = f.ca.issue(&LeafSpec::new(urn("k"))).unwrap();
        let key = f.write("leaf.key", leaf.key_pem());
        let garbage = f.write("garbage.pem", "this is not a certificate\n");
        let missing = f.dir.join("missing.pem");
        for (path, expect) in [
            (&key, "is not a certificate: it holds a private key"),
            (
                &garbage,
                "is not a certificate: it holds neither a PEM nor a DER certificate",
            ),
            (&missing, "cannot read"),
        ] {
            let msg = inspect(path).unwrap_err().to_string();
            assert!(msg.contains(expect), "{msg}");
            assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
        }
    }
}
