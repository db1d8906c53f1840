//! `anima certs …` end to end: the real binary, a scratch directory, and the
//! files it leaves behind.

// The helpers below are outside `#[test]` functions, where clippy's
// allow-unwrap-in-tests does not reach; in a test binary a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anima_certs::{CertAuthority, CertReport, LeafSpec};
use anima_protocol::{Urn, UrnKind};

const DAY: Duration = Duration::from_secs(86_400);

/// The identities `anima certs init` writes, in the order it prints them.
const INIT_IDENTITIES: [&str; 12] = [
    "ca",
    "core-dev",
    "module-hasher",
    "module-kvstore",
    "module-tally",
    "module-notes",
    "module-ratelimit",
    "module-logger",
    "module-scripts",
    "module-orchestrator",
    "user-dev",
    "core-dev.endpoint",
];

/// The files `anima certs init` writes, in the order it prints them: each
/// identity's certificate, then its key.
fn init_files() -> Vec<String> {
    INIT_IDENTITIES
        .iter()
        .flat_map(|name| [format!("{name}.pem"), format!("{name}.key")])
        .collect()
}

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn succeeded(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts a failure reported as exactly one `error: …` line; returns it.
    fn one_line_error(&self) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit 1, got {:?}\n{}",
            self.code,
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one stderr line, got:\n{}",
            self.stderr
        );
        assert!(lines[0].starts_with("error: "), "{}", lines[0]);
        lines[0]
    }
}

/// Runs `anima ARGS` in `cwd`.
fn anima(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_anima"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("run anima");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Runs `anima certs init --dir DIR EXTRA…` and asserts success.
fn init(cwd: &Path, dir: &str, extra: &[&str]) -> Run {
    let mut args = vec!["certs", "init", "--dir", dir];
    args.extend_from_slice(extra);
    let run = anima(cwd, &args);
    assert!(run.succeeded(), "init failed: {}", run.stderr);
    run
}

/// Every file under `dir` (recursively) and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    if !dir.exists() {
        return files;
    }
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.insert(path.clone(), fs::read(&path).unwrap());
        }
    }
    files
}

fn field<'a>(report: &'a str, name: &str) -> &'a str {
    CertReport::field(report, name).unwrap_or_else(|| panic!("no {name:?} line in\n{report}"))
}

#[test]
fn init_creates_the_ca_and_dev_identities_and_prints_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run = init(tmp.path(), "certs/dev", &[]);
    let dir = tmp.path().join("certs/dev");
    let printed: Vec<&str> = run.stdout.lines().collect();
    let expected: Vec<String> = init_files()
        .iter()
        .map(|f| format!("certs/dev/{f}"))
        .collect();
    assert_eq!(printed, expected);
    assert!(
        run.stderr.contains("anima certs inspect"),
        "hint: {}",
        run.stderr
    );

    let on_disk: Vec<PathBuf> = snapshot(&dir).into_keys().collect();
    let mut want: Vec<PathBuf> = init_files().iter().map(|f| dir.join(f)).collect();
    want.sort();
    assert_eq!(on_disk, want, "exactly the printed files, no scratch files");
}

#[cfg(unix)]
#[test]
fn init_creates_private_keys_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), "dev", &[]);
    let mode = |name: &str| {
        fs::metadata(tmp.path().join("dev").join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(".") & 0o077, 0, "directory readable by others");
    for name in init_files().iter().filter(|f| f.ends_with(".key")) {
        assert_eq!(mode(name), 0o600, "{name}");
    }
}

#[test]
fn init_default_dir_is_certs_dev() {
    let tmp = tempfile::tempdir().unwrap();
    let run = anima(tmp.path(), &["certs", "init"]);
    assert!(run.succeeded(), "{}", run.stderr);
    assert!(tmp.path().join("certs/dev/ca.pem").is_file());
}

#[test]
fn second_init_without_force_fails_in_one_line_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), "dev", &[]);
    let before = snapshot(tmp.path());

    let run = anima(tmp.path(), &["certs", "init", "--dir", "dev"]);
    let line = run.one_line_error();
    assert!(
        line.contains("dev/ca.pem") && line.contains("already exists"),
        "{line}"
    );
    assert!(line.contains("--force"), "{line}");
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_eq!(snapshot(tmp.path()), before, "a refused init changed files");
}

#[test]
fn init_with_force_replaces_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), "dev", &[]);
    let before = snapshot(tmp.path());
    init(tmp.path(), "dev", &["--force"]);
    let after = snapshot(tmp.path());
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &after {
        assert_ne!(bytes, &before[path], "{} was not replaced", path.display());
    }
}

#[test]
fn init_refuses_a_ca_over_a_year_and_leaves_longer_than_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let run = anima(
        tmp.path(),
        &["certs", "init", "--dir", "dev", "--ca-days", "366"],
    );
    assert!(run.one_line_error().contains("365"), "{}", run.stderr);
    let run = anima(
        tmp.path(),
        &[
            "certs",
            "init",
            "--dir",
            "dev",
            "--ca-days",
            "30",
            "--days",
            "31",
        ],
    );
    assert!(run.one_line_error().contains("outlive"), "{}", run.stderr);
    assert!(!tmp.path().join("dev").exists());
}

#[test]
fn issue_without_a_ca_fails_clearly_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = anima(
        tmp.path(),
        &[
            "certs", "issue", "--kind", "module", "--name", "echo", "--dir", "dev",
        ],
    );
    let line = run.one_line_error();
    assert!(
        line.contains("no CA") && line.contains("anima certs init"),
        "{line}"
    );
    assert!(snapshot(tmp.path()).is_empty());
    assert!(!tmp.path().join("dev").exists());
}

#[test]
fn issue_with_an_invalid_name_fails_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), "dev", &[]);
    let before = snapshot(tmp.path());
    for bad in ["Echo", "../echo", "echo/x", "-echo", ""] {
        let name = format!("--name={bad}");
        let run = anima(
            tmp.path(),
            &["certs", "issue", "--kind", "module", &name, "--dir", "dev"],
        );
        let line = run.one_line_error();
        assert!(line.contains("invalid name"), "{bad}: {line}");
    }
    // An unknown kind is a usage error, reported by the argument parser.
    let run = anima(
        tmp.path(),
        &[
            "certs", "issue", "--kind", "robot", "--name", "x", "--dir", "dev",
        ],
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn issue_signs_one_more_pair_and_refuses_to_replace_it_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), "dev", &[]);
    let args = [
        "certs", "issue", "--kind", "user", "--name", "alice", "--dir", "dev", "--days", "7",
    ];
    let run = anima(tmp.path(), &args);
    assert!(run.succeeded(), "{}", run.stderr);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        ["dev/user-alice.pem", "dev/user-alice.key"]
    );
    let report = anima(tmp.path(), &["certs", "inspect", "dev/user-alice.pem"]);
    assert_eq!(field(&report.stdout, "identity"), "urn:anima:user:alice");
    assert_eq!(field(&report.stdout, "issuer CN"), anima_certs::DEV_CA_NAME);
    assert_eq!(field(&report.stdout, "status"), "valid, expires in 6 days");

    let before = snapshot(tmp.path());
    let line = anima(tmp.path(), &args).one_line_error().to_owned();
    assert!(
        line.contains("user-alice.pem") && line.contains("already exists"),
        "{line}"
    );
    assert_eq!(snapshot(tmp.path()), before);

    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(anima(tmp.path(), &forced).succeeded());
    assert_ne!(snapshot(tmp.path()), before);
}

#[test]
fn inspect_shows_identity_validity_and_time_left() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), "dev", &[]);
    let run = anima(tmp.path(), &["certs", "inspect", "dev/module-hasher.pem"]);
    assert!(run.succeeded(), "{}", run.stderr);
    let report = &run.stdout;
    assert_eq!(field(report, "identity"), "urn:anima:module:hasher");
    assert_eq!(field(report, "subject CN"), "urn:anima:module:hasher");
    assert_eq!(field(report, "key"), "Ed25519");
    assert_eq!(field(report, "CA"), "no");
    assert_eq!(field(report, "sha-256").len(), 64);
    // 90 days from a moment ago, as days rounded down.
    assert_eq!(field(report, "status"), "valid, expires in 89 days");
    for bound in ["not before", "not after"] {
        let value = field(report, bound);
        assert!(
            value.len() == 20 && value.ends_with('Z'),
            "{bound}: {value}"
        );
    }

    let ca = anima(tmp.path(), &["certs", "inspect", "dev/ca.pem"]);
    assert_eq!(field(&ca.stdout, "CA"), "yes");
    assert_eq!(field(&ca.stdout, "identity"), "none");
}

#[test]
fn inspect_of_an_expired_certificate_says_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CertAuthority::generate("expired test CA", 30 * DAY).unwrap();
    let now = SystemTime::now();
    let spec = LeafSpec::new(Urn::new(UrnKind::Module, "stale").unwrap())
        .valid_between(now - 10 * DAY, now - 3 * DAY);
    let leaf = ca.issue(&spec).unwrap();
    fs::write(tmp.path().join("stale.pem"), leaf.cert_pem()).unwrap();

    let run = anima(tmp.path(), &["certs", "inspect", "stale.pem"]);
    assert!(run.succeeded(), "{}", run.stderr);
    assert_eq!(field(&run.stdout, "identity"), "urn:anima:module:stale");
    assert_eq!(field(&run.stdout, "status"), "EXPIRED 3 days ago");
}

#[test]
fn inspect_of_garbage_a_key_or_nothing_fails_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), "dev", &[]);
    fs::write(tmp.path().join("garbage.pem"), "not a certificate at all\n").unwrap();
    for (file, expect) in [
        ("garbage.pem", "not a certificate"),
        ("dev/core-dev.key", "private key"),
        ("missing.pem", "cannot read"),
    ] {
        let run = anima(tmp.path(), &["certs", "inspect", file]);
        let line = run.one_line_error();
        assert!(line.contains(file) && line.contains(expect), "{line}");
        assert!(run.stdout.is_empty());
    }
}

/// Runs `openssl ARGS`; returns its stdout, failing the test with its stderr
/// when it exits non-zero.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (these tests check our files with OpenSSL's CLI)");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 openssl output")
}

/// Loads every `(certificate, key)` pair with Python's `cryptography`: the key
/// with `load_pem_private_key`, of `key_type`, and matching the certificate.
fn python_loads(pairs: &[(PathBuf, PathBuf)], key_type: &str) {
    const SCRIPT: &str = r#"
import sys
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding, PublicFormat, load_pem_private_key)

want = sys.argv[1]
files = sys.argv[2:]
for cert_path, key_path in zip(files[::2], files[1::2]):
    with open(key_path, "rb") as f:
        key = load_pem_private_key(f.read(), password=None)
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    if want == "ed25519":
        assert isinstance(key, ed25519.Ed25519PrivateKey), (key_path, type(key))
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey), (key_path, type(key))
        assert key.curve.name == "secp256r1", (key_path, key.curve.name)
    der = lambda k: k.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert der(key.public_key()) == der(cert.public_key()), (key_path, "does not fit", cert_path)
    print("ok", key_path)
"#;
    let mut args = vec!["-c".to_owned(), SCRIPT.to_owned(), key_type.to_owned()];
    for (cert, key) in pairs {
        args.push(cert.to_string_lossy().into_owned());
        args.push(key.to_string_lossy().into_owned());
    }
    let out = Command::new("python3")
        .args(&args)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'cryptography'"),
        "Python cryptography is missing: `pip install cryptography` (.ci/run installs it)"
    );
    assert!(
        out.status.success(),
        "cryptography refused a file: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), pairs.len(), "{stdout}");
}

/// `init --key-type T`, then `issue --key-type T` for every kind (and the other
/// type once): every key loads in `openssl pkey` and Python's `cryptography`
/// as PKCS#8 v1 and fits its certificate, every certificate in `openssl x509`
/// and chains to the CA in `openssl verify`.
fn every_minted_file_loads_in_openssl_and_python(key_type: &str, other: &str, oid_name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), "dev", &["--key-type", key_type]);
    for kind in ["core", "module", "user"] {
        let name = format!("{kind}-{key_type}");
        let run = anima(
            tmp.path(),
            &[
                "certs",
                "issue",
                "--kind",
                kind,
                "--name",
                &name,
                "--dir",
                "dev",
                "--key-type",
                key_type,
            ],
        );
        assert!(run.succeeded(), "issue {kind}: {}", run.stderr);
    }
    let args = [
        "certs",
        "issue",
        "--kind",
        "module",
        "--name",
        "mixed",
        "--dir",
        "dev",
        "--key-type",
        other,
    ];
    assert!(anima(tmp.path(), &args).succeeded());

    let dir = tmp.path().join("dev");
    let files: Vec<PathBuf> = snapshot(&dir).into_keys().collect();
    // Those from init, 3 issued of the type, 1 of the other.
    assert_eq!(files.len(), init_files().len() + 8, "{files:?}");
    let ca = dir.join("ca.pem");
    let ca_str = ca.to_str().unwrap();
    let mut pairs = Vec::new();
    for key in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "key"))
    {
        let cert = key.with_extension("pem");
        let (key_str, cert_str) = (key.to_str().unwrap(), cert.to_str().unwrap());
        openssl(&["pkey", "-in", key_str, "-noout"]);
        // PKCS#8 v1: the first field, the version, is 0.
        let asn1 = openssl(&["asn1parse", "-in", key_str]);
        let version = asn1.lines().nth(1).unwrap_or_default();
        assert!(
            version.contains("INTEGER") && version.ends_with(":00"),
            "{key_str}: {asn1}"
        );
        // The key fits the certificate, as OpenSSL sees both.
        assert_eq!(
            openssl(&["pkey", "-in", key_str, "-pubout"]),
            openssl(&["x509", "-in", cert_str, "-noout", "-pubkey"]),
            "{key_str}"
        );
        openssl(&["x509", "-in", cert_str, "-noout", "-subject", "-dates"]);
        if cert != ca {
            let verified = openssl(&["verify", "-CAfile", ca_str, cert_str]);
            assert!(verified.trim_end().ends_with(": OK"), "{verified}");
        }
        pairs.push((cert, key.clone()));
    }
    assert_eq!(
        pairs.len(),
        files.len() / 2,
        "every certificate has its key"
    );

    // The key types, as OpenSSL and `anima certs inspect` name them.
    let (endpoint, mixed): (Vec<_>, Vec<_>) = pairs
        .iter()
        .cloned()
        .partition(|(cert, _)| cert.ends_with("core-dev.endpoint.pem"));
    let (mixed, typed): (Vec<_>, Vec<_>) = mixed
        .into_iter()
        .partition(|(cert, _)| cert.ends_with("module-mixed.pem"));
    let inspected_key = |cert: &Path| {
        let run = anima(tmp.path(), &["certs", "inspect", cert.to_str().unwrap()]);
        assert!(run.succeeded(), "{}", run.stderr);
        field(&run.stdout, "key").to_owned()
    };
    let x509_text = openssl(&["x509", "-in", ca_str, "-noout", "-text"]);
    assert!(x509_text.contains(oid_name), "CA key: {x509_text}");
    for (cert, _) in &typed {
        let want = if key_type == "p256" {
            "ECDSA P-256"
        } else {
            "Ed25519"
        };
        assert_eq!(inspected_key(cert), want, "{}", cert.display());
    }
    assert_eq!(inspected_key(&endpoint[0].0), "ECDSA P-256");
    python_loads(&typed, key_type);
    python_loads(&endpoint, "p256");
    python_loads(&mixed, other);
}

#[test]
fn ed25519_files_load_in_openssl_and_python_cryptography() {
    every_minted_file_loads_in_openssl_and_python("ed25519", "p256", "ED25519");
}

#[test]
fn p256_files_load_in_openssl_and_python_cryptography() {
    every_minted_file_loads_in_openssl_and_python("p256", "ed25519", "prime256v1");
}

#[test]
fn an_unknown_key_type_is_a_usage_error_naming_the_choices() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |run: Run| {
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert!(
            run.stderr
                .contains("invalid value 'rsa' for '--key-type <KEY_TYPE>'"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("[possible values: ed25519, p256]"),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty());
    };
    check(anima(
        tmp.path(),
        &["certs", "init", "--dir", "dev", "--key-type", "rsa"],
    ));
    assert!(!tmp.path().join("dev").exists());
    init(tmp.path(), "dev", &[]);
    let before = snapshot(tmp.path());
    check(anima(
        tmp.path(),
        &[
            "certs",
            "issue",
            "--kind",
            "module",
            "--name",
            "x",
            "--dir",
            "dev",
            "--key-type",
            "rsa",
        ],
    ));
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn inspect_of_a_not_yet_valid_certificate_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CertAuthority::generate("future test CA", 30 * DAY).unwrap();
    let now = SystemTime::now();
    let starts = now + 3 * DAY + Duration::from_secs(3_600);
    let spec = LeafSpec::new(Urn::new(UrnKind::Module, "early").unwrap())
        .valid_between(starts, starts + DAY);
    fs::write(
        tmp.path().join("early.pem"),
        ca.issue(&spec).unwrap().cert_pem(),
    )
    .unwrap();

    let run = anima(tmp.path(), &["certs", "inspect", "early.pem"]);
    assert!(run.succeeded(), "{}", run.stderr);
    assert_eq!(field(&run.stdout, "identity"), "urn:anima:module:early");
    assert_eq!(
        field(&run.stdout, "status"),
        "NOT YET VALID (starts in 3 days)"
    );
}
