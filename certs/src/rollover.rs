//! Replacing the CA of a certificate directory with an overlap period, so
//! no party stops trusting a peer midway: what `anima certs rollover` does.
//!
//! Every party trusts the file [`CA_CERT_FILE`], and reads every certificate
//! in it as a root. A rollover has three steps:
//!
//! 1. [`begin_rollover`] makes a new CA of the same key type and common name
//!    as the current one. [`CA_KEY_FILE`] becomes the new CA's key and
//!    [`CA_CERT_FILE`] a bundle: the new CA certificate, then the old one.
//!    Every party that re-reads it trusts both, so leaves signed by either
//!    CA are accepted. The old CA is kept as [`CA_PREVIOUS_CERT_FILE`] and
//!    [`CA_PREVIOUS_KEY_FILE`].
//! 2. The operator re-issues every leaf (`anima certs issue --force`);
//!    [`CertAuthority::load`] signs with the CA that matches
//!    [`CA_KEY_FILE`], the new one.
//! 3. Once every party has taken up its new certificate,
//!    [`finish_rollover`] makes [`CA_CERT_FILE`] the new CA alone and removes
//!    the previous CA's files: a retired CA key should not linger, and
//!    nothing signed by the old CA is trusted any more. It refuses while a
//!    certificate of the directory is still signed by the old CA, unless
//!    forced.
//!
//! ```text
//!              ca.pem              ca.key   ca.previous.pem / .key
//! before       old                 old      -
//! begun        new, old (bundle)   new      old
//! finished     new                 new      -
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::authority::{CA_CERT_FILE, CA_KEY_FILE, CertAuthority};
use crate::dev_dir::{self, DEV_CA_NAME, InitOptions};
use crate::error::CertsError;
use crate::pem_file;
use crate::validity;
use crate::write_batch::{self, NewFile};

/// The file name of the previous CA certificate while a rollover is in
/// progress.
pub const CA_PREVIOUS_CERT_FILE: &str = "ca.previous.pem";

/// The file name of the previous CA private key while a rollover is in
/// progress.
pub const CA_PREVIOUS_KEY_FILE: &str = "ca.previous.key";

/// What [`begin_rollover`] should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloverOptions {
    /// Validity of the new CA, in days (1 to 365).
    pub ca_days: u32,
}

impl Default for RolloverOptions {
    /// A 365-day CA, as [`InitOptions::default`] makes.
    fn default() -> Self {
        RolloverOptions {
            ca_days: InitOptions::default().ca_days,
        }
    }
}

/// Begins a CA rollover in `dir`; returns the files written.
///
/// Generates a new CA with the key type and common name of the current one,
/// valid for `options.ca_days`, then writes, all or nothing:
/// [`CA_PREVIOUS_CERT_FILE`] and [`CA_PREVIOUS_KEY_FILE`] (the current CA,
/// key `0600`), [`CA_CERT_FILE`] (the new CA certificate followed by the
/// current one: every party trusts both) and [`CA_KEY_FILE`] (the new CA's
/// key, `0600`). Leaves are untouched: those already issued still chain to
/// the old CA, which stays trusted until [`finish_rollover`].
///
/// Refuses, having changed nothing, when a rollover is already in progress
/// ([`CA_CERT_FILE`] holds several certificates), when a previous CA file is
/// left over, or when the current CA's key is of a type this crate cannot
/// generate.
pub fn begin_rollover(dir: &Path, options: &RolloverOptions) -> Result<Vec<PathBuf>, CertsError> {
    dev_dir::check_ca_days(options.ca_days)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let certificates = trusted_cas(dir, &cert_path)?;
    if certificates > 1 {
        return Err(CertsError::RolloverInProgress {
            path: cert_path,
            certificates,
        });
    }
    let old = CertAuthority::load(dir)?;
    let previous = [CA_PREVIOUS_CERT_FILE, CA_PREVIOUS_KEY_FILE].map(|name| dir.join(name));
    if let Some(path) = write_batch::first_existing(&previous) {
        return Err(CertsError::PreviousCaExists { path: path.clone() });
    }
    let key_type = old.key_type().ok_or_else(|| CertsError::UnsupportedCaKey {
        path: dir.join(CA_KEY_FILE),
    })?;
    let common_name = match old.common_name() {
        "" => DEV_CA_NAME,
        name => name,
    };
    let new = CertAuthority::generate_with_key_type(
        common_name,
        validity::days(options.ca_days),
        key_type,
    )?;

    let bundle = format!("{}{}", new.cert_pem(), old.cert_pem());
    let [previous_cert, previous_key] = dev_dir::cert_and_key(
        [
            CA_PREVIOUS_CERT_FILE.to_owned(),
            CA_PREVIOUS_KEY_FILE.to_owned(),
        ],
        old.cert_pem(),
        &old.key_pem(),
    );
    let [cert, key] = dev_dir::cert_and_key(
        [CA_CERT_FILE.to_owned(), CA_KEY_FILE.to_owned()],
        &bundle,
        &new.key_pem(),
    );
    let files = [previous_cert, previous_key, cert, key];
    // The previous CA files were checked absent above; `force` replaces
    // `ca.pem` and `ca.key`.
    write_batch::write_all(dir, &files, true)
}

/// Finishes the CA rollover in `dir`; returns the files written
/// ([`CA_CERT_FILE`]).
///
/// Rewrites [`CA_CERT_FILE`] to hold only the CA certificate that matches
/// [`CA_KEY_FILE`] (the new CA), so certificates signed by the old CA are no
/// longer trusted; then removes [`CA_PREVIOUS_KEY_FILE`] (a retired CA key
/// should not linger) and [`CA_PREVIOUS_CERT_FILE`]. Nothing of the old CA
/// is kept. Call it once every party has taken up a certificate signed by
/// the new CA.
///
/// Refuses, having changed nothing, when no rollover is in progress
/// ([`CA_CERT_FILE`] holds a single certificate), and, unless `force`, when
/// a certificate (`*.pem`) in `dir` is still signed by another CA than the
/// new one: its party would be refused at its next connection
/// ([`CertsError::StaleLeaves`] names them all). If removing a previous CA
/// file fails, [`CA_CERT_FILE`] is already rewritten and the error names the
/// file to remove by hand.
pub fn finish_rollover(dir: &Path, force: bool) -> Result<Vec<PathBuf>, CertsError> {
    let cert_path = dir.join(CA_CERT_FILE);
    if trusted_cas(dir, &cert_path)? < 2 {
        return Err(CertsError::NoRolloverInProgress { path: cert_path });
    }
    let current = CertAuthority::load(dir)?;
    if !force {
        let stale = stale_leaves(dir, &current)?;
        if !stale.is_empty() {
            return Err(CertsError::StaleLeaves {
                dir: dir.to_owned(),
                files: stale,
            });
        }
    }
    let file = NewFile {
        name: CA_CERT_FILE.to_owned(),
        contents: current.cert_pem().as_bytes().to_vec(),
        secret: false,
    };
    let written = write_batch::write_all(dir, &[file], true)?;
    // Try both, key first; report the first failure.
    let removed: Vec<Result<(), CertsError>> = [CA_PREVIOUS_KEY_FILE, CA_PREVIOUS_CERT_FILE]
        .into_iter()
        .map(|name| remove_if_present(&dir.join(name)))
        .collect();
    removed.into_iter().collect::<Result<(), _>>()?;
    Ok(written)
}

/// The certificate files of `dir` (`*.pem`, the CA's own and the previous
/// CA's aside), in name order, whose leaf `ca` did not sign.
fn stale_leaves(dir: &Path, ca: &CertAuthority) -> Result<Vec<String>, CertsError> {
    let ca_der = ca.cert_der();
    let ca_cert = pem_file::parse(&dir.join(CA_CERT_FILE), ca_der)?;
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|source| CertsError::Read {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| {
            name.ends_with(".pem") && name != CA_CERT_FILE && name != CA_PREVIOUS_CERT_FILE
        })
        .collect();
    names.sort();
    let mut stale = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let der = pem_file::certificate_der(&path, &pem_file::read(&path)?)?;
        let leaf = pem_file::parse(&path, &der)?;
        if !leaf.is_ca() && leaf.verify_signature(Some(ca_cert.public_key())).is_err() {
            stale.push(name);
        }
    }
    Ok(stale)
}

/// How many certificates the CA certificate file holds.
fn trusted_cas(dir: &Path, cert_path: &Path) -> Result<usize, CertsError> {
    let data = pem_file::read_ca_file(dir, cert_path)?;
    Ok(pem_file::all_certificates_der(cert_path, &data)?.len())
}

fn remove_if_present(path: &Path) -> Result<(), CertsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CertsError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use anima_protocol::{Urn, UrnKind};
    use rcgen::KeyPair;
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::dev_dir::{init_dir, issue_into_dir, leaf_cert_file};
    use crate::key_type::KeyType;
    use crate::test_support::{cert_der, snapshot, verify_both_roles, verify_both_roles_under};
    use crate::validity::DAY;

    /// Every certificate in `path`, DER, in file order.
    fn bundle(path: &Path) -> Vec<Vec<u8>> {
        pem_file::all_certificates_der(path, &fs::read(path).unwrap()).unwrap()
    }

    /// The raw public key in a certificate.
    fn cert_public_key(der: &[u8]) -> Vec<u8> {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        cert.public_key().subject_public_key.data.to_vec()
    }

    /// The raw public key of a PEM private key file.
    fn key_file_public_key(path: &Path) -> Vec<u8> {
        KeyPair::from_pem(&fs::read_to_string(path).unwrap())
            .unwrap()
            .public_key_raw()
            .to_vec()
    }

    fn init(dir: &Path, key_type: KeyType) {
        let options = InitOptions {
            key_type,
            ..InitOptions::default()
        };
        init_dir(dir, &options).unwrap();
    }

    /// Runs `step` on `dir`, which must refuse it and change nothing there;
    /// returns the refusal.
    #[track_caller]
    fn refused<T: std::fmt::Debug>(
        dir: &Path,
        step: impl FnOnce(&Path) -> Result<T, CertsError>,
    ) -> CertsError {
        let before = snapshot(dir);
        let err = step(dir).unwrap_err();
        assert_eq!(snapshot(dir), before, "nothing changed: {err}");
        err
    }

    fn core_dev() -> Urn {
        Urn::new(UrnKind::Core, "dev").unwrap()
    }

    #[test]
    fn begin_trusts_both_cas_and_signs_new_leaves_with_the_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(dir, KeyType::Ed25519);
        let old_ca = cert_der(&dir.join(CA_CERT_FILE));
        let old_key = fs::read(dir.join(CA_KEY_FILE)).unwrap();
        let old_leaf = cert_der(&dir.join(leaf_cert_file(&core_dev())));

        let written = begin_rollover(dir, &RolloverOptions::default()).unwrap();
        assert_eq!(
            written,
            [
                CA_PREVIOUS_CERT_FILE,
                CA_PREVIOUS_KEY_FILE,
                CA_CERT_FILE,
                CA_KEY_FILE
            ]
            .map(|name| dir.join(name))
        );

        // ca.pem: the new CA first, then the old one; ca.key is the new CA's.
        let cas = bundle(&dir.join(CA_CERT_FILE));
        assert_eq!(cas.len(), 2);
        let new_ca = cas[0].clone();
        assert_ne!(new_ca, old_ca);
        assert_eq!(cas[1], old_ca);
        assert_eq!(
            key_file_public_key(&dir.join(CA_KEY_FILE)),
            cert_public_key(&new_ca)
        );
        // The old CA is kept whole beside it.
        assert_eq!(cert_der(&dir.join(CA_PREVIOUS_CERT_FILE)), old_ca);
        assert_eq!(fs::read(dir.join(CA_PREVIOUS_KEY_FILE)).unwrap(), old_key);
        // Every party reads the bundle as two roots.
        anima_protocol::TrustRoot::from_pem_file(&dir.join(CA_CERT_FILE)).unwrap();

        // Same name, a CA, and what `load` picks.
        let (_, new_cert) = X509Certificate::from_der(&new_ca).unwrap();
        assert!(new_cert.is_ca());
        assert_eq!(
            pem_file::common_name(new_cert.subject()).as_deref(),
            Some(DEV_CA_NAME)
        );
        let loaded = CertAuthority::load(dir).unwrap();
        assert_eq!(loaded.cert_der(), new_ca);
        assert_eq!(loaded.key_type(), Some(KeyType::Ed25519));

        let now = SystemTime::now();
        let both: [&[u8]; 2] = [&new_ca, &old_ca];
        // A leaf issued before still chains, to the old CA only.
        verify_both_roles_under(&both, &old_leaf, now).unwrap();
        verify_both_roles(&new_ca, &old_leaf, now).unwrap_err();

        // A leaf re-issued now chains to the new CA only.
        let reissued = issue_into_dir(dir, UrnKind::Core, "dev", 30, true).unwrap();
        let new_leaf = cert_der(&reissued[0]);
        verify_both_roles(&new_ca, &new_leaf, now).unwrap();
        verify_both_roles(&old_ca, &new_leaf, now).unwrap_err();
        verify_both_roles_under(&both, &new_leaf, now).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn both_ca_keys_are_0600_through_a_rollover() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), KeyType::Ed25519);
        begin_rollover(tmp.path(), &RolloverOptions::default()).unwrap();
        let mode = |name: &str| {
            fs::metadata(tmp.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_PREVIOUS_KEY_FILE), 0o600);
        assert_eq!(mode(CA_CERT_FILE) & !0o644, 0);
        finish_rollover(tmp.path(), true).unwrap();
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_CERT_FILE) & !0o644, 0);
    }

    #[test]
    fn begin_keeps_the_key_type_and_takes_the_new_validity() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), KeyType::P256);
        let before = SystemTime::now();
        begin_rollover(tmp.path(), &RolloverOptions { ca_days: 30 }).unwrap();
        let new = CertAuthority::load(tmp.path()).unwrap();
        assert_eq!(new.key_type(), Some(KeyType::P256));
        let report = crate::inspect(&tmp.path().join(CA_CERT_FILE)).unwrap();
        assert_eq!(report.key_type(), "ECDSA P-256");
        // Whole seconds: within a second either side of the asked-for 30 days.
        let expected = before + 30 * DAY;
        let slack = Duration::from_secs(2);
        assert!(
            new.not_after() + slack >= expected && new.not_after() <= expected + slack,
            "{:?}",
            new.not_after()
        );
    }

    #[test]
    fn begin_twice_is_refused_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), KeyType::Ed25519);
        begin_rollover(tmp.path(), &RolloverOptions::default()).unwrap();
        let err = refused(tmp.path(), |dir| {
            begin_rollover(dir, &RolloverOptions::default())
        });
        assert!(
            matches!(&err, CertsError::RolloverInProgress { path, certificates: 2 }
                if path == &tmp.path().join(CA_CERT_FILE)),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("issue --force") && msg.contains("rollover --finish"),
            "{msg}"
        );
    }

    #[test]
    fn finish_without_begin_is_refused_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), KeyType::Ed25519);
        let err = refused(tmp.path(), |dir| finish_rollover(dir, false));
        assert!(
            matches!(&err, CertsError::NoRolloverInProgress { path }
                if path == &tmp.path().join(CA_CERT_FILE)),
            "{err}"
        );
        assert!(err.to_string().contains("`anima certs rollover`"), "{err}");
    }

    #[test]
    fn finish_refuses_while_a_certificate_is_still_signed_by_the_old_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(dir, KeyType::Ed25519);
        begin_rollover(dir, &RolloverOptions::default()).unwrap();
        for (kind, name) in crate::DEV_IDENTITIES {
            if name != "tally" {
                issue_into_dir(dir, kind, name, 30, true).unwrap();
            }
        }
        let err = refused(dir, |dir| finish_rollover(dir, false));
        let CertsError::StaleLeaves { files, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(files, &["core-dev.endpoint.pem", "module-tally.pem"]);
        assert!(err.to_string().contains("--endpoint"), "{err}");
        assert!(!err.to_string().contains('\n'), "one line: {err}");

        issue_into_dir(dir, UrnKind::Module, "tally", 30, true).unwrap();
        crate::issue_endpoint_into_dir(dir, "dev", 30, true).unwrap();
        finish_rollover(dir, false).unwrap();
        assert_eq!(bundle(&dir.join(CA_CERT_FILE)).len(), 1);
    }

    #[test]
    fn finish_trusts_only_the_new_ca_and_removes_the_previous_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(dir, KeyType::Ed25519);
        let old_leaf = cert_der(&dir.join(leaf_cert_file(&core_dev())));
        begin_rollover(dir, &RolloverOptions::default()).unwrap();
        let new_ca = bundle(&dir.join(CA_CERT_FILE))[0].clone();
        let new_key = fs::read(dir.join(CA_KEY_FILE)).unwrap();
        let new_leaf = cert_der(&issue_into_dir(dir, UrnKind::Core, "dev", 30, true).unwrap()[0]);

        let written = finish_rollover(dir, true).unwrap();
        assert_eq!(written, [dir.join(CA_CERT_FILE)]);
        assert_eq!(
            bundle(&dir.join(CA_CERT_FILE)),
            std::slice::from_ref(&new_ca)
        );
        assert_eq!(fs::read(dir.join(CA_KEY_FILE)).unwrap(), new_key);
        for gone in [CA_PREVIOUS_KEY_FILE, CA_PREVIOUS_CERT_FILE] {
            assert!(!dir.join(gone).exists(), "{gone} is still there");
        }
        assert!(
            snapshot(dir).keys().all(|name| !name.starts_with('.')),
            "no scratch files left behind"
        );
        assert_eq!(CertAuthority::load(dir).unwrap().cert_der(), new_ca);

        let now = SystemTime::now();
        verify_both_roles(&new_ca, &new_leaf, now).unwrap();
        verify_both_roles(&new_ca, &old_leaf, now).unwrap_err();

        // Finished means a next rollover may begin.
        begin_rollover(dir, &RolloverOptions::default()).unwrap();
        assert_eq!(bundle(&dir.join(CA_CERT_FILE))[1], new_ca);
    }

    #[test]
    fn begin_refuses_a_leftover_previous_ca_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), KeyType::Ed25519);
        fs::write(tmp.path().join(CA_PREVIOUS_KEY_FILE), "someone's key").unwrap();
        let err = refused(tmp.path(), |dir| {
            begin_rollover(dir, &RolloverOptions::default())
        });
        assert!(
            matches!(&err, CertsError::PreviousCaExists { path }
                if path.ends_with(CA_PREVIOUS_KEY_FILE)),
            "{err}"
        );
        assert!(err.to_string().contains("nothing was written"), "{err}");
    }

    #[test]
    fn begin_refuses_out_of_range_days_and_a_missing_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let err = begin_rollover(tmp.path(), &RolloverOptions::default()).unwrap_err();
        assert!(matches!(err, CertsError::CaMissing { .. }), "{err}");
        let err = finish_rollover(tmp.path(), false).unwrap_err();
        assert!(matches!(err, CertsError::CaMissing { .. }), "{err}");

        init(tmp.path(), KeyType::Ed25519);
        for ca_days in [0, 366] {
            let err = refused(tmp.path(), |dir| {
                begin_rollover(dir, &RolloverOptions { ca_days })
            });
            assert!(
                matches!(err, CertsError::ValidityOutOfRange { what: "CA", .. }),
                "{ca_days}: {err}"
            );
        }
    }

    #[test]
    fn finish_refuses_a_bundle_none_of_whose_certificates_matches_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), KeyType::Ed25519);
        begin_rollover(tmp.path(), &RolloverOptions::default()).unwrap();
        let stranger = CertAuthority::generate("stranger", DAY).unwrap();
        fs::write(tmp.path().join(CA_KEY_FILE), stranger.key_pem()).unwrap();
        let err = refused(tmp.path(), |dir| finish_rollover(dir, false));
        assert!(matches!(err, CertsError::KeyMismatch { .. }), "{err}");
    }
}
