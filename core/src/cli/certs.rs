//! `anima certs`: mint and inspect development certificates.
//!
//! A thin layer over `anima-certs`: parse arguments, call the library, print
//! the files written or the report. Errors come back as one line each.

use std::path::PathBuf;

use anima_certs::{InitOptions, IssueOptions, KeyType};
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
    /// differ from the CA's.
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
        } => {
            let written = anima_certs::init_dir(
                &dir,
                &InitOptions {
                    days,
                    ca_days,
                    key_type,
                    force,
                },
            )?;
            print_written(&written);
            eprintln!(
                "hint: trust {} on every side; pass each party its <kind>-<name>.pem and .key; \
                 inspect any certificate with `anima certs inspect FILE`",
                dir.join(anima_certs::CA_CERT_FILE).display()
            );
            Ok(())
        }
        CertsCommand::Issue {
            kind,
            name,
            dir,
            days,
            key_type,
            force,
        } => {
            let options = IssueOptions {
                days,
                key_type,
                force,
            };
            let written = anima_certs::issue_into_dir_with(&dir, kind, &name, &options)?;
            print_written(&written);
            Ok(())
        }
        CertsCommand::Inspect { file } => {
            let report = anima_certs::inspect(&file)?;
            println!("{report}");
            Ok(())
        }
    }
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
