//! A directory of development certificates: what `anima certs init` and
//! `anima certs issue` write.
//!
//! ```text
//! ca.pem  ca.key                      the dev CA
//! core-dev.pem  core-dev.key          urn:anima:core:dev
//! module-hasher.pem  module-hasher.key urn:anima:module:hasher
//! module-kvstore.pem …                urn:anima:module:kvstore
//! module-tally.pem …                  urn:anima:module:tally
//! module-notes.pem …                  urn:anima:module:notes
//! module-ratelimit.pem …              urn:anima:module:ratelimit
//! module-logger.pem …                 urn:anima:module:logger
//! module-scripts.pem …                urn:anima:module:scripts
//! module-orchestrator.pem …           urn:anima:module:orchestrator
//! user-dev.pem  user-dev.key          urn:anima:user:dev
//! core-dev.endpoint.pem …             urn:anima:core:dev, always P-256
//! ```
//!
//! Every key is of the chosen [`KeyType`] (Ed25519 by default), but the
//! Core's endpoint pair, which exists for clients that verify no Ed25519, is
//! P-256 either way. Keys are PKCS#8 v1, which OpenSSL, Python's
//! `cryptography`, BoringSSL and rustls all read.
//!
//! Keys are `0600`, certificates `0644`, a directory created here `0700`.
//! Existing files are never replaced unless asked (`force`), and a call that
//! fails leaves the directory as it found it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anima_protocol::{Urn, UrnKind};

use crate::authority::{CA_CERT_FILE, CA_KEY_FILE, CertAuthority, MAX_CA_VALIDITY};
use crate::error::CertsError;
use crate::key_type::KeyType;
use crate::leaf::{IssuedCert, LeafSpec};
use crate::validity::{self, DAY};
use crate::write_batch::{self, NewFile};

/// The directory the CLI uses when none is given.
pub const DEFAULT_DIR: &str = "certs/dev";

/// The common name of the CA `init_dir` creates.
pub const DEV_CA_NAME: &str = "Anima dev CA";

/// The identities `init_dir` issues certificates for: the dev Core, the
/// sample modules, and one user.
pub const DEV_IDENTITIES: [(UrnKind, &str); 10] = [
    (UrnKind::Core, "dev"),
    (UrnKind::Module, "hasher"),
    (UrnKind::Module, "kvstore"),
    (UrnKind::Module, "tally"),
    (UrnKind::Module, "notes"),
    (UrnKind::Module, "ratelimit"),
    (UrnKind::Module, "logger"),
    (UrnKind::Module, "scripts"),
    (UrnKind::Module, "orchestrator"),
    (UrnKind::User, "dev"),
];

/// What `init_dir` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOptions {
    /// Validity of each leaf certificate, in days (at most `ca_days`).
    pub days: u32,
    /// Validity of the CA, in days (1 to 365).
    pub ca_days: u32,
    /// The key type of the CA and of every leaf but the Core's endpoint
    /// certificate (always P-256).
    pub key_type: KeyType,
    /// Replace existing files.
    pub force: bool,
}

impl Default for InitOptions {
    /// 90-day leaves, a 365-day CA, Ed25519, never replace.
    fn default() -> Self {
        InitOptions {
            days: 90,
            ca_days: 365,
            key_type: KeyType::Ed25519,
            force: false,
        }
    }
}

/// What [`issue_into_dir_with`] should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssueOptions {
    /// Validity in days (at most what the CA has left).
    pub days: u32,
    /// The key type of the new certificate (the CA's may differ).
    pub key_type: KeyType,
    /// Replace an existing certificate and key of that identity.
    pub force: bool,
}

impl Default for IssueOptions {
    /// 90 days, Ed25519, never replace.
    fn default() -> Self {
        IssueOptions {
            days: InitOptions::default().days,
            key_type: KeyType::Ed25519,
            force: false,
        }
    }
}

/// The certificate file name for `urn`: `<kind>-<name>.pem`.
pub fn leaf_cert_file(urn: &Urn) -> String {
    format!("{}-{}.pem", urn.kind(), urn.name())
}

/// The Core's user-endpoint (ECDSA P-256) certificate file for `urn`:
/// `<kind>-<name>.endpoint.pem`.
pub fn endpoint_cert_file(urn: &Urn) -> String {
    format!("{}-{}.endpoint.pem", urn.kind(), urn.name())
}

/// The key file beside [`endpoint_cert_file`].
pub fn endpoint_key_file(urn: &Urn) -> String {
    format!("{}-{}.endpoint.key", urn.kind(), urn.name())
}

/// The private key file name for `urn`: `<kind>-<name>.key`.
pub fn leaf_key_file(urn: &Urn) -> String {
    format!("{}-{}.key", urn.kind(), urn.name())
}

/// Creates a dev CA in `dir` and certificates for every [`DEV_IDENTITIES`]
/// entry; returns the files written.
///
/// Creates `dir` (`0700`) when missing. Without `force`, fails naming the
/// first file that already exists, having changed nothing.
pub fn init_dir(dir: &Path, options: &InitOptions) -> Result<Vec<PathBuf>, CertsError> {
    check_ca_days(options.ca_days)?;
    check_leaf_days_given(options.days)?;
    let urns = DEV_IDENTITIES
        .iter()
        .map(|&(kind, name)| Urn::new(kind, name))
        .collect::<Result<Vec<_>, _>>()?;
    let mut names = vec![CA_CERT_FILE.to_owned(), CA_KEY_FILE.to_owned()];
    for urn in &urns {
        names.extend([leaf_cert_file(urn), leaf_key_file(urn)]);
    }
    let core = Urn::new(UrnKind::Core, "dev")?;
    names.extend([endpoint_cert_file(&core), endpoint_key_file(&core)]);
    refuse_existing(dir, &names, options.force)?;

    let ca = CertAuthority::generate_with_key_type(
        DEV_CA_NAME,
        validity::days(options.ca_days),
        options.key_type,
    )?;
    check_leaf_days_fit(&ca, options.days, SystemTime::now())?;
    let mut files = Vec::from(cert_and_key(
        [CA_CERT_FILE.to_owned(), CA_KEY_FILE.to_owned()],
        ca.cert_pem(),
        &ca.key_pem(),
    ));
    for urn in urns {
        let leaf = ca.issue(
            &LeafSpec::new(urn.clone())
                .key_type(options.key_type)
                .valid_for(validity::days(options.days)),
        )?;
        files.extend(leaf_files(&urn, &leaf));
    }
    // The Core's user endpoint also presents an ECDSA certificate (same
    // identity) for clients that cannot verify Ed25519.
    let endpoint = ca.issue(
        &LeafSpec::new(core.clone())
            .ecdsa_p256()
            .valid_for(validity::days(options.days)),
    )?;
    files.extend(endpoint_files(&core, &endpoint));
    write_batch::write_all(dir, &files, options.force)
}

/// Signs an Ed25519 certificate for `urn:anima:<kind>:<name>` with the CA
/// in `dir`, valid for `days` (at most what the CA has left); returns the
/// files written (`<kind>-<name>.pem` and `.key`).
///
/// Without `force`, fails naming the first file that already exists, having
/// changed nothing. [`issue_into_dir_with`] chooses the key type too.
pub fn issue_into_dir(
    dir: &Path,
    kind: UrnKind,
    name: &str,
    days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, CertsError> {
    let options = IssueOptions {
        days,
        force,
        ..IssueOptions::default()
    };
    issue_into_dir_with(dir, kind, name, &options)
}

/// [`issue_into_dir`] as `options` say: validity, key type, replacing.
pub fn issue_into_dir_with(
    dir: &Path,
    kind: UrnKind,
    name: &str,
    options: &IssueOptions,
) -> Result<Vec<PathBuf>, CertsError> {
    let IssueOptions {
        days,
        key_type,
        force,
    } = *options;
    let urn = Urn::new(kind, name)?;
    check_leaf_days_given(days)?;
    let ca = CertAuthority::load(dir)?;
    refuse_existing(dir, &[leaf_cert_file(&urn), leaf_key_file(&urn)], force)?;
    check_leaf_days_fit(&ca, days, SystemTime::now())?;
    let leaf = ca.issue(
        &LeafSpec::new(urn.clone())
            .key_type(key_type)
            .valid_for(validity::days(days)),
    )?;
    write_batch::write_all(dir, &leaf_files(&urn, &leaf), force)
}

/// Signs the Core `name`'s user-endpoint certificate (ECDSA P-256, for
/// clients that verify no Ed25519) with the CA in `dir`, valid for `days`;
/// returns the files written ([`endpoint_cert_file`] and
/// [`endpoint_key_file`]). This is how that pair is renewed, or re-issued
/// from a new CA during a rollover.
///
/// Without `force`, fails naming the first file that already exists, having
/// changed nothing.
pub fn issue_endpoint_into_dir(
    dir: &Path,
    name: &str,
    days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, CertsError> {
    let urn = Urn::new(UrnKind::Core, name)?;
    check_leaf_days_given(days)?;
    let ca = CertAuthority::load(dir)?;
    refuse_existing(
        dir,
        &[endpoint_cert_file(&urn), endpoint_key_file(&urn)],
        force,
    )?;
    check_leaf_days_fit(&ca, days, SystemTime::now())?;
    let leaf = ca.issue(
        &LeafSpec::new(urn.clone())
            .ecdsa_p256()
            .valid_for(validity::days(days)),
    )?;
    write_batch::write_all(dir, &endpoint_files(&urn, &leaf), force)
}

/// `leaf` as `urn`'s certificate and key files.
fn leaf_files(urn: &Urn, leaf: &IssuedCert) -> [NewFile; 2] {
    cert_and_key(
        [leaf_cert_file(urn), leaf_key_file(urn)],
        leaf.cert_pem(),
        leaf.key_pem(),
    )
}

/// `leaf` as the files of `urn`'s user endpoint.
fn endpoint_files(urn: &Urn, leaf: &IssuedCert) -> [NewFile; 2] {
    cert_and_key(
        [endpoint_cert_file(urn), endpoint_key_file(urn)],
        leaf.cert_pem(),
        leaf.key_pem(),
    )
}

/// A certificate and its private key as the files named `[cert, key]`, the
/// key secret (mode `0600`).
pub(crate) fn cert_and_key(names: [String; 2], cert_pem: &str, key_pem: &str) -> [NewFile; 2] {
    let [cert, key] = names;
    [
        NewFile {
            name: cert,
            contents: cert_pem.as_bytes().to_vec(),
            secret: false,
        },
        NewFile {
            name: key,
            contents: key_pem.as_bytes().to_vec(),
            secret: true,
        },
    ]
}

/// Fails early, before any key is generated, when a target exists.
fn refuse_existing(dir: &Path, names: &[String], force: bool) -> Result<(), CertsError> {
    if force {
        return Ok(());
    }
    let targets: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    match write_batch::first_existing(&targets) {
        Some(path) => Err(CertsError::Exists { path: path.clone() }),
        None => Ok(()),
    }
}

/// A CA may be valid for 1 day up to [`MAX_CA_VALIDITY`].
pub(crate) fn check_ca_days(ca_days: u32) -> Result<(), CertsError> {
    let max_ca_days = MAX_CA_VALIDITY.as_secs() / DAY.as_secs();
    if ca_days == 0 || u64::from(ca_days) > max_ca_days {
        return Err(CertsError::ValidityOutOfRange {
            what: "CA",
            requested: plural_days(ca_days),
            allowed: format!("1 to {max_ca_days} days"),
        });
    }
    Ok(())
}

fn check_leaf_days_given(days: u32) -> Result<(), CertsError> {
    if days == 0 {
        return Err(CertsError::ValidityOutOfRange {
            what: "certificate",
            requested: plural_days(days),
            allowed: "1 day up to what the CA has left".into(),
        });
    }
    Ok(())
}

/// A leaf may not ask for more days than its CA has left (rounded up; the
/// leaf is then cut at the CA's expiry).
fn check_leaf_days_fit(ca: &CertAuthority, days: u32, now: SystemTime) -> Result<(), CertsError> {
    let max_days = ca.days_left(now)?;
    if u64::from(days) > max_days {
        return Err(CertsError::LeafOutlivesCa {
            days,
            max_days,
            ca_expires: validity::rfc3339(ca.not_after()),
        });
    }
    Ok(())
}

fn plural_days(days: u32) -> String {
    if days == 1 {
        "1 day".into()
    } else {
        format!("{days} days")
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use anima_protocol::transport::identity_of;
    use rustls::pki_types::CertificateDer;

    use super::*;
    use crate::test_support::{cert_der, pem_der, pkcs8_version, snapshot, verify_both_roles};

    const EXPECTED: [&str; 24] = [
        "ca.pem",
        "ca.key",
        "core-dev.pem",
        "core-dev.key",
        "module-hasher.pem",
        "module-hasher.key",
        "module-kvstore.pem",
        "module-kvstore.key",
        "module-tally.pem",
        "module-tally.key",
        "module-notes.pem",
        "module-notes.key",
        "module-ratelimit.pem",
        "module-ratelimit.key",
        "module-logger.pem",
        "module-logger.key",
        "module-scripts.pem",
        "module-scripts.key",
        "module-orchestrator.pem",
        "module-orchestrator.key",
        "user-dev.pem",
        "user-dev.key",
        "core-dev.endpoint.pem",
        "core-dev.endpoint.key",
    ];

    #[test]
    fn the_endpoint_pair_is_renewed_p256_and_only_with_force() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs/dev");
        init_dir(&dir, &InitOptions::default()).unwrap();
        let before = snapshot(&dir);
        let refused = issue_endpoint_into_dir(&dir, "dev", 30, false).unwrap_err();
        assert!(matches!(refused, CertsError::Exists { .. }), "{refused}");
        assert_eq!(snapshot(&dir), before, "nothing changed");

        let written = issue_endpoint_into_dir(&dir, "dev", 30, true).unwrap();
        assert_eq!(
            written,
            [
                dir.join("core-dev.endpoint.pem"),
                dir.join("core-dev.endpoint.key")
            ]
        );
        let after = snapshot(&dir);
        assert_ne!(
            after["core-dev.endpoint.pem"],
            before["core-dev.endpoint.pem"]
        );
        assert_eq!(
            after["core-dev.pem"], before["core-dev.pem"],
            "only the endpoint pair"
        );
        let leaf = cert_der(&dir.join("core-dev.endpoint.pem"));
        verify_both_roles(&cert_der(&dir.join("ca.pem")), &leaf, SystemTime::now()).unwrap();
        let tls = anima_protocol::TlsIdentity::from_pem_files(
            &dir.join("core-dev.endpoint.pem"),
            &dir.join("core-dev.endpoint.key"),
        )
        .unwrap();
        assert_eq!(tls.urn().as_str(), "urn:anima:core:dev");
        let report = crate::inspect(&dir.join("core-dev.endpoint.pem")).unwrap();
        assert_eq!(report.key_type(), "ECDSA P-256");
    }

    #[test]
    fn init_writes_a_ca_and_one_pair_per_dev_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs/dev");
        let written = init_dir(&dir, &InitOptions::default()).unwrap();
        let expected: Vec<PathBuf> = EXPECTED.iter().map(|n| dir.join(n)).collect();
        assert_eq!(written, expected);
        let mut on_disk: Vec<String> = snapshot(&dir).into_keys().collect();
        let mut want: Vec<String> = EXPECTED.iter().map(|s| s.to_string()).collect();
        on_disk.sort();
        want.sort();
        assert_eq!(on_disk, want, "no scratch files left behind");

        let ca_der = cert_der(&dir.join("ca.pem"));
        for (kind, name) in DEV_IDENTITIES {
            let urn = Urn::new(kind, name).unwrap();
            let leaf = cert_der(&dir.join(leaf_cert_file(&urn)));
            assert_eq!(
                identity_of(&CertificateDer::from(leaf.as_slice())).unwrap(),
                urn
            );
            verify_both_roles(&ca_der, &leaf, SystemTime::now()).unwrap();
            let tls = anima_protocol::TlsIdentity::from_pem_files(
                &dir.join(leaf_cert_file(&urn)),
                &dir.join(leaf_key_file(&urn)),
            )
            .unwrap();
            assert_eq!(tls.urn(), &urn);
        }
        anima_protocol::TrustRoot::from_pem_file(&dir.join("ca.pem")).unwrap();
        CertAuthority::load(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_0600_and_a_new_directory_0700() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        init_dir(&dir, &InitOptions::default()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir) & !0o700, 0);
        for name in EXPECTED {
            let m = mode(&dir.join(name));
            if name.ends_with(".key") {
                assert_eq!(m, 0o600, "{name}");
            } else {
                assert_eq!(m & !0o644, 0, "{name}: {m:o}");
            }
        }
    }

    #[test]
    fn init_twice_fails_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        init_dir(tmp.path(), &InitOptions::default()).unwrap();
        let before = snapshot(tmp.path());
        let err = init_dir(tmp.path(), &InitOptions::default()).unwrap_err();
        assert!(
            matches!(&err, CertsError::Exists { path } if path == &tmp.path().join("ca.pem")),
            "{err}"
        );
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(snapshot(tmp.path()), before);
    }

    #[test]
    fn init_names_the_first_existing_file_even_if_it_is_the_only_one() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("user-dev.key"), "mine").unwrap();
        let err = init_dir(tmp.path(), &InitOptions::default()).unwrap_err();
        assert!(
            matches!(&err, CertsError::Exists { path } if path.ends_with("user-dev.key")),
            "{err}"
        );
        assert_eq!(snapshot(tmp.path()).len(), 1);
    }

    #[test]
    fn init_with_force_replaces_everything() {
        let tmp = tempfile::tempdir().unwrap();
        init_dir(tmp.path(), &InitOptions::default()).unwrap();
        let before = snapshot(tmp.path());
        let options = InitOptions {
            force: true,
            ..InitOptions::default()
        };
        init_dir(tmp.path(), &options).unwrap();
        let after = snapshot(tmp.path());
        assert_eq!(after.len(), EXPECTED.len());
        for name in EXPECTED {
            assert_ne!(before[name], after[name], "{name} was not replaced");
        }
    }

    #[test]
    fn init_refuses_out_of_range_days_before_touching_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        for (days, ca_days) in [(90, 366), (90, 0), (0, 365), (366, 365), (31, 30)] {
            let options = InitOptions {
                days,
                ca_days,
                ..InitOptions::default()
            };
            let err = init_dir(&dir, &options).unwrap_err();
            assert!(
                matches!(
                    err,
                    CertsError::ValidityOutOfRange { .. } | CertsError::LeafOutlivesCa { .. }
                ),
                "{days}/{ca_days}: {err}"
            );
            assert!(!dir.exists());
        }
        let options = InitOptions {
            days: 30,
            ca_days: 30,
            ..InitOptions::default()
        };
        init_dir(&dir, &options).unwrap();
    }

    #[test]
    fn issue_adds_one_pair_signed_by_the_dir_ca() {
        let tmp = tempfile::tempdir().unwrap();
        init_dir(tmp.path(), &InitOptions::default()).unwrap();
        let written = issue_into_dir(tmp.path(), UrnKind::Module, "echo", 30, false).unwrap();
        assert_eq!(
            written,
            [
                tmp.path().join("module-echo.pem"),
                tmp.path().join("module-echo.key")
            ]
        );
        let leaf = cert_der(&written[0]);
        let urn = identity_of(&CertificateDer::from(leaf.as_slice())).unwrap();
        assert_eq!(urn.as_str(), "urn:anima:module:echo");
        verify_both_roles(
            &cert_der(&tmp.path().join("ca.pem")),
            &leaf,
            SystemTime::now(),
        )
        .unwrap();

        let before = snapshot(tmp.path());
        let err = issue_into_dir(tmp.path(), UrnKind::Module, "echo", 30, false).unwrap_err();
        assert!(matches!(err, CertsError::Exists { .. }), "{err}");
        assert_eq!(snapshot(tmp.path()), before);
        issue_into_dir(tmp.path(), UrnKind::Module, "echo", 30, true).unwrap();
        assert_ne!(
            snapshot(tmp.path())["module-echo.key"],
            before["module-echo.key"]
        );
    }

    #[test]
    fn init_with_p256_makes_every_key_p256_and_pkcs8_v1() {
        let tmp = tempfile::tempdir().unwrap();
        let options = InitOptions {
            key_type: KeyType::P256,
            ..InitOptions::default()
        };
        let written = init_dir(tmp.path(), &options).unwrap();
        let names: Vec<PathBuf> = EXPECTED.iter().map(|n| tmp.path().join(n)).collect();
        assert_eq!(written, names, "the same files as for Ed25519");
        for path in written {
            let text = fs::read_to_string(&path).unwrap();
            if path.extension().is_some_and(|e| e == "key") {
                assert_eq!(pkcs8_version(&pem_der(&text)), 0, "{}", path.display());
            } else {
                let report = crate::inspect(&path).unwrap();
                assert_eq!(report.key_type(), "ECDSA P-256", "{}", path.display());
            }
        }
        let ca_der = cert_der(&tmp.path().join("ca.pem"));
        for (kind, name) in DEV_IDENTITIES {
            let urn = Urn::new(kind, name).unwrap();
            let cert = tmp.path().join(leaf_cert_file(&urn));
            verify_both_roles(&ca_der, &cert_der(&cert), SystemTime::now()).unwrap();
            let tls = anima_protocol::TlsIdentity::from_pem_files(
                &cert,
                &tmp.path().join(leaf_key_file(&urn)),
            )
            .unwrap();
            anima_protocol::lease::LeaseSigner::from_identity(&tls).unwrap();
        }
        CertAuthority::load(tmp.path()).unwrap();
    }

    #[test]
    fn issue_with_a_key_type_under_a_ca_of_either_type() {
        for ca_type in KeyType::ALL {
            let tmp = tempfile::tempdir().unwrap();
            let options = InitOptions {
                key_type: ca_type,
                ..InitOptions::default()
            };
            init_dir(tmp.path(), &options).unwrap();
            for (n, leaf_type) in KeyType::ALL.into_iter().enumerate() {
                let name = format!("m{n}");
                let options = IssueOptions {
                    days: 7,
                    key_type: leaf_type,
                    force: false,
                };
                let written =
                    issue_into_dir_with(tmp.path(), UrnKind::Module, &name, &options).unwrap();
                let report = crate::inspect(&written[0]).unwrap();
                let want = match leaf_type {
                    KeyType::Ed25519 => "Ed25519",
                    KeyType::P256 => "ECDSA P-256",
                };
                assert_eq!(report.key_type(), want, "{ca_type} CA, {leaf_type} leaf");
                let key = fs::read_to_string(&written[1]).unwrap();
                assert_eq!(pkcs8_version(&pem_der(&key)), 0);
                verify_both_roles(
                    &cert_der(&tmp.path().join("ca.pem")),
                    &cert_der(&written[0]),
                    SystemTime::now(),
                )
                .unwrap();
            }
            // The shorthand issues Ed25519.
            let written = issue_into_dir(tmp.path(), UrnKind::User, "u", 7, false).unwrap();
            assert_eq!(crate::inspect(&written[0]).unwrap().key_type(), "Ed25519");
        }
    }

    #[test]
    fn issue_without_a_ca_fails_and_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let err = issue_into_dir(&dir, UrnKind::Module, "echo", 30, false).unwrap_err();
        assert!(matches!(err, CertsError::CaMissing { .. }), "{err}");
        assert!(err.to_string().contains("anima certs init"), "{err}");
        assert!(!dir.exists());

        fs::create_dir(&dir).unwrap();
        issue_into_dir(&dir, UrnKind::Module, "echo", 30, false).unwrap_err();
        assert!(snapshot(&dir).is_empty());
    }

    #[test]
    fn issue_rejects_invalid_names_and_too_many_days() {
        let tmp = tempfile::tempdir().unwrap();
        let options = InitOptions {
            days: 10,
            ca_days: 20,
            ..InitOptions::default()
        };
        init_dir(tmp.path(), &options).unwrap();
        let before = snapshot(tmp.path());
        for bad in ["Echo", "", "../x", "a/b", "-x"] {
            let err = issue_into_dir(tmp.path(), UrnKind::Module, bad, 10, false).unwrap_err();
            assert!(matches!(err, CertsError::Identity(_)), "{bad:?}: {err}");
        }
        let err = issue_into_dir(tmp.path(), UrnKind::User, "ok", 21, false).unwrap_err();
        assert!(
            matches!(
                err,
                CertsError::LeafOutlivesCa {
                    days: 21,
                    max_days: 20,
                    ..
                }
            ),
            "{err}"
        );
        let err = issue_into_dir(tmp.path(), UrnKind::User, "ok", 0, false).unwrap_err();
        assert!(
            matches!(err, CertsError::ValidityOutOfRange { .. }),
            "{err}"
        );
        assert_eq!(snapshot(tmp.path()), before);
        issue_into_dir(tmp.path(), UrnKind::User, "ok", 20, false).unwrap();
    }
}
