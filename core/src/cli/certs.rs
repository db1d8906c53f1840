//! `anima certs`: mint and inspect development certificates.
//!
//! A thin layer over `anima-certs`: parse arguments, call the library, print
//! the files written or the report. Errors come back as one line each.

use std::path::{Path, PathBuf};

use anima_certs::{InitOptions, IssueOptions, KeyType, RolloverOptions};
use anima_protocol::UrnKind;
use clap::Subcommand;
use clap::builder::{PossibleValuesParser, TypedValueParser};

use super::CliResult;

/// `anima certs …`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a dev CA and certificates for a Core, the sample modules and a user.
    ///
    /// Writes `ca.pem`/`ca.key` and `<kind>-<name>.pem`/`.key` for core dev, modules
    /// hasher, kvstore and tally, and user dev, all with keys of --key-type, plus the
    /// Core's P-256 endpoint pair `core-dev.endpoint.pem`/`.key` for clients that
    /// verify no Ed25519. Keys are PKCS#8 v1 (OpenSSL, Python cryptography and
    /// BoringSSL read them), created 0600.
    Init {
        /// Directory to write into (created 0700 when missing).
        #[arg(long, default_value = anima_certs::DEFAULT_DIR)]
        dir: PathBuf,
        /// Validity of each certificate, in days (at most --ca-days).
        #[arg(long, default_value_t = InitOptions::default().days)]
        days: u32,
        /// Validity of the CA, in days (at most 365).
        #[arg(long, default_value_t = InitOptions::default().ca_days)]
        ca_days: u32,
        /// Key type of the CA and the certificates: p256 for gRPC stacks built on
        /// BoringSSL (Python grpcio, C++), which verify no Ed25519.
        #[arg(long, default_value_t = KeyType::default(), value_parser = key_type_parser())]
        key_type: KeyType,
        /// Replace existing files (all of them, or none on failure).
        #[arg(long)]
        force: bool,
    },
    /// Sign one more certificate with the CA in the directory.
    ///
    /// Writes `<kind>-<name>.pem` and `.key` (PKCS#8 v1, 0600). The key type may
    /// differ from the CA's. With --endpoint (Cores only), writes the Core's user
    /// endpoint pair `core-<name>.endpoint.pem` and `.key` instead, always P-256.
    /// To renew a certificate in place, issue it again with --force: a Core or an
    /// SDK module takes up the new files within 2 s and its leases move to them.
    Issue {
        /// Kind of identity: core, module or user.
        #[arg(
            long,
            value_parser = PossibleValuesParser::new(["core", "module", "user"])
                .try_map(|s| s.parse::<UrnKind>())
        )]
        kind: UrnKind,
        /// Name: lowercase letters, digits, '-', '_' and '.'.
        #[arg(long)]
        name: String,
        /// Directory holding ca.pem and ca.key; the new files go there too.
        #[arg(long, default_value = anima_certs::DEFAULT_DIR)]
        dir: PathBuf,
        /// Validity in days (at most what the CA has left).
        #[arg(long, default_value_t = IssueOptions::default().days)]
        days: u32,
        /// Key type: p256 for a module served to, or a Core endpoint called by, a
        /// gRPC stack built on BoringSSL (Python grpcio, C++).
        #[arg(long, default_value_t = KeyType::default(), value_parser = key_type_parser())]
        key_type: KeyType,
        /// Replace an existing certificate and key of that identity.
        #[arg(long)]
        force: bool,
        /// The Core's user-endpoint pair (P-256, for clients that verify no
        /// Ed25519) rather than its own certificate.
        #[arg(long, conflicts_with = "key_type")]
        endpoint: bool,
    },
    /// Replace the CA with an overlap period, so no party stops trusting a peer midway.
    ///
    /// Three steps. First `rollover` makes a new CA (same key type and name as the old
    /// one): ca.key becomes its key and ca.pem a bundle of the new and the old CA
    /// certificate, which every party trusts both of once it re-reads ca.pem; the old
    /// CA is kept as ca.previous.pem/.key. Then re-issue every leaf with `anima certs
    /// issue --force`, which signs with the new CA. Once every party has taken up its
    /// new certificate, `rollover --finish` leaves only the new CA in ca.pem and
    /// removes ca.previous.pem and ca.previous.key. Keys are created 0600.
    Rollover {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = anima_certs::DEFAULT_DIR)]
        dir: PathBuf,
        /// Validity of the new CA, in days (at most 365).
        #[arg(long, default_value_t = RolloverOptions::default().ca_days, conflicts_with = "finish")]
        ca_days: u32,
        /// End the rollover: trust only the new CA and remove the previous one.
        /// Refused while a certificate in the directory is still signed by the
        /// old CA (they are named), unless --force.
        #[arg(long)]
        finish: bool,
        /// With --finish: finish although certificates in the directory are
        /// still signed by the old CA (their parties will be refused).
        #[arg(long, requires = "finish")]
        force: bool,
    },
    /// Show a certificate's identity, validity, key type and fingerprint.
    Inspect {
        /// A certificate file (PEM or DER).
        file: PathBuf,
    },
}

/// Runs `anima certs …`.
pub fn run(cmd: CertsCommand) -> CliResult {
    match cmd {
        CertsCommand::Init {
            dir,
            days,
            ca_days,
            key_type,
            force,
        } => init(
            &dir,
            &InitOptions {
                days,
                ca_days,
                key_type,
                force,
            },
        ),
        CertsCommand::Issue {
            kind,
            name,
            dir,
            days,
            force,
            endpoint: true,
            ..
        } => issue_endpoint(kind, &name, &dir, days, force),
        CertsCommand::Issue {
            kind,
            name,
            dir,
            days,
            key_type,
            force,
            endpoint: false,
        } => {
            let options = IssueOptions {
                days,
                key_type,
                force,
            };
            print_written(&anima_certs::issue_into_dir_with(
                &dir, kind, &name, &options,
            )?);
            Ok(())
        }
        CertsCommand::Rollover {
            dir,
            ca_days,
            finish: false,
            ..
        } => begin_rollover(&dir, ca_days),
        CertsCommand::Rollover {
            dir,
            finish: true,
            force,
            ..
        } => finish_rollover(&dir, force),
        CertsCommand::Inspect { file } => {
            println!("{}", anima_certs::inspect(&file)?);
            Ok(())
        }
    }
}

/// `anima certs init`.
fn init(dir: &Path, options: &InitOptions) -> CliResult {
    print_written(&anima_certs::init_dir(dir, options)?);
    eprintln!(
        "hint: trust {} on every side; pass each party its <kind>-<name>.pem and .key; \
         inspect any certificate with `anima certs inspect FILE`",
        dir.join(anima_certs::CA_CERT_FILE).display()
    );
    Ok(())
}

/// `anima certs issue --endpoint`: only a Core has a user endpoint.
fn issue_endpoint(kind: UrnKind, name: &str, dir: &Path, days: u32, force: bool) -> CliResult {
    if kind != UrnKind::Core {
        return Err(format!(
            "--endpoint is for a Core's user endpoint; use --kind core, not --kind {kind}"
        )
        .into());
    }
    print_written(&anima_certs::issue_endpoint_into_dir(
        dir, name, days, force,
    )?);
    Ok(())
}

/// `anima certs rollover`: the overlap begins.
fn begin_rollover(dir: &Path, ca_days: u32) -> CliResult {
    print_written(&anima_certs::begin_rollover(
        dir,
        &RolloverOptions { ca_days },
    )?);
    eprintln!(
        "hint: {} now trusts the new and the old CA; re-issue every leaf with \
         `anima certs issue --kind K --name N --dir {} --force`, then, once every party \
         has taken up its new certificate, run `anima certs rollover --dir {} --finish`",
        dir.join(anima_certs::CA_CERT_FILE).display(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// `anima certs rollover --finish`: the new CA alone.
fn finish_rollover(dir: &Path, force: bool) -> CliResult {
    print_written(&anima_certs::finish_rollover(dir, force)?);
    eprintln!(
        "hint: {} now trusts only the new CA; removed {} and {}",
        dir.join(anima_certs::CA_CERT_FILE).display(),
        anima_certs::CA_PREVIOUS_CERT_FILE,
        anima_certs::CA_PREVIOUS_KEY_FILE
    );
    Ok(())
}

/// `ed25519` or `p256`; anything else is a usage error listing both.
fn key_type_parser() -> impl TypedValueParser<Value = KeyType> {
    PossibleValuesParser::new(KeyType::ALL.map(KeyType::as_str)).try_map(|s| s.parse::<KeyType>())
}

/// One written file per line on stdout, so scripts can read them.
fn print_written(files: &[PathBuf]) {
    for file in files {
        println!("{}", file.display());
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        certs: CertsCommand,
    }

    fn parse(args: &[&str]) -> Result<CertsCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("certs").chain(args.iter().copied())).map(|c| c.certs)
    }

    /// Runs `certs init` into `dev` under `tmp`; returns that directory.
    fn init_dev(tmp: &tempfile::TempDir) -> PathBuf {
        let dir = tmp.path().join("dev");
        run(parse(&["init", "--dir", dir.to_str().unwrap()]).unwrap()).unwrap();
        dir
    }

    /// The arguments of `certs issue --endpoint` for the `kind` named `name`
    /// in `dir`.
    fn endpoint_args<'a>(kind: &'a str, name: &'a str, dir: &'a str) -> Vec<&'a str> {
        vec![
            "issue",
            "--kind",
            kind,
            "--name",
            name,
            "--dir",
            dir,
            "--endpoint",
        ]
    }

    #[test]
    fn rollover_begins_by_default_and_finishes_with_the_flag() {
        match parse(&["rollover"]).unwrap() {
            CertsCommand::Rollover {
                dir,
                ca_days,
                finish,
                force,
            } => {
                assert_eq!(dir, PathBuf::from(anima_certs::DEFAULT_DIR));
                assert_eq!(ca_days, InitOptions::default().ca_days);
                assert!(!finish && !force);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["rollover", "--dir", "x", "--finish"]).unwrap() {
            CertsCommand::Rollover { dir, finish, .. } => {
                assert_eq!(dir, PathBuf::from("x"));
                assert!(finish);
            }
            other => panic!("{other:?}"),
        }
        // A new CA's validity means nothing when finishing.
        let err = parse(&["rollover", "--finish", "--ca-days", "30"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn rollover_runs_both_steps_on_a_real_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = init_dev(&tmp);
        let dir_arg = dir.to_str().unwrap();
        run(parse(&["rollover", "--dir", dir_arg]).unwrap()).unwrap();
        assert!(dir.join(anima_certs::CA_PREVIOUS_KEY_FILE).exists());
        let err = run(parse(&["rollover", "--dir", dir_arg]).unwrap()).unwrap_err();
        assert!(err.to_string().contains("--finish"), "{err}");

        // Every certificate of the directory still has the old CA's signature.
        let err = run(parse(&["rollover", "--dir", dir_arg, "--finish"]).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("still signed by the old CA"),
            "{err}"
        );
        assert!(dir.join(anima_certs::CA_PREVIOUS_KEY_FILE).exists());
        assert!(
            parse(&["rollover", "--dir", dir_arg, "--force"]).is_err(),
            "--force needs --finish"
        );
        run(parse(&["rollover", "--dir", dir_arg, "--finish", "--force"]).unwrap()).unwrap();
        assert!(!dir.join(anima_certs::CA_PREVIOUS_KEY_FILE).exists());
        let err = run(parse(&["rollover", "--dir", dir_arg, "--finish"]).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("no rollover is in progress"),
            "{err}"
        );
    }

    #[test]
    fn issue_endpoint_renews_the_cores_p256_pair_and_only_for_a_core() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = init_dev(&tmp);
        let dir_arg = dir.to_str().unwrap();
        let pem = dir.join("core-dev.endpoint.pem");
        let before = std::fs::read(&pem).unwrap();
        let core = std::fs::read(dir.join("core-dev.pem")).unwrap();
        let args = endpoint_args("core", "dev", dir_arg);
        let err = run(parse(&args).unwrap()).unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
        let mut forced = args.clone();
        forced.push("--force");
        run(parse(&forced).unwrap()).unwrap();
        assert_ne!(std::fs::read(&pem).unwrap(), before);
        assert_eq!(std::fs::read(dir.join("core-dev.pem")).unwrap(), core);
        assert_eq!(
            anima_certs::inspect(&pem).unwrap().key_type(),
            "ECDSA P-256"
        );

        let module = endpoint_args("module", "m", dir_arg);
        let err = run(parse(&module).unwrap()).unwrap_err();
        assert!(err.to_string().contains("--kind core"), "{err}");
        let mut typed = args.clone();
        typed.extend(["--key-type", "ed25519"]);
        assert!(parse(&typed).is_err(), "--endpoint is always P-256");
    }
}
