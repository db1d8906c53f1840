//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use anima_protocol::{IdentityError, TransportError};

/// Why a certificate could not be minted, loaded, written or inspected.
///
/// Every message is one line and names the file, identity or limit involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// The directory holds no CA (`ca.pem` or `ca.key` is missing).
    #[error("no CA in {}: {} not found; run `anima certs init` first", dir.display(), missing.display())]
    CaMissing {
        /// The directory searched.
        dir: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file could not be written (nothing this call wrote was kept).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The output directory could not be created.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A target file exists and replacing was not asked for.
    #[error("{} already exists; nothing was written (use --force to replace it)", path.display())]
    Exists {
        /// The first existing target.
        path: PathBuf,
    },
    /// A file's PEM armour is malformed.
    #[error("{}: malformed PEM: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// A file holds something other than a certificate.
    #[error("{} is not a certificate: it holds {found}", path.display())]
    NotACertificate {
        /// The file.
        path: PathBuf,
        /// What it holds instead.
        found: String,
    },
    /// A certificate's DER does not parse.
    #[error("{}: certificate does not parse: {detail}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// A private key does not load.
    #[error("{}: private key does not load: {detail}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// The loader's complaint.
        detail: String,
    },
    /// A private key does not belong to the certificate next to it.
    #[error("{} does not belong to the certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate used as a CA is not one.
    #[error("{} is not a CA certificate (no basicConstraints CA:TRUE)", path.display())]
    NotACa {
        /// The file.
        path: PathBuf,
    },
    /// The CA has expired, so it cannot sign anything useful.
    #[error("CA {ca:?} expired at {expired_at}; run `anima certs init --force` for a new one")]
    CaExpired {
        /// The CA's common name.
        ca: String,
        /// When it expired (RFC 3339).
        expired_at: String,
    },
    /// A CA rollover was asked to begin while one is in progress: the CA
    /// certificate file already holds several certificates.
    #[error(
        "{} already holds {certificates} CA certificates, so a rollover is in progress; \
         re-issue every leaf with `anima certs issue --force`, then run `anima certs rollover --finish`",
        path.display()
    )]
    RolloverInProgress {
        /// The CA certificate file (`ca.pem`).
        path: PathBuf,
        /// How many certificates it holds.
        certificates: usize,
    },
    /// A CA rollover was asked to finish while none is in progress: the CA
    /// certificate file holds a single certificate.
    #[error(
        "{} holds a single CA certificate, so no rollover is in progress; \
         run `anima certs rollover` to begin one",
        path.display()
    )]
    NoRolloverInProgress {
        /// The CA certificate file (`ca.pem`).
        path: PathBuf,
    },
    /// Finishing a rollover would leave certificates of the directory
    /// signed by a CA no longer trusted.
    #[error(
        "{} in {} {} still signed by the old CA: {}; re-issue {} (`anima certs issue --kind K \
         --name N --force`, `--endpoint` for the Core's endpoint pair), or finish with --force",
        files.len(),
        dir.display(),
        if files.len() == 1 { "is" } else { "are" },
        files.join(", "),
        if files.len() == 1 { "it" } else { "them" }
    )]
    StaleLeaves {
        /// The directory.
        dir: PathBuf,
        /// The certificate files signed by the old CA.
        files: Vec<String>,
    },
    /// A file a rollover would write is left over from an earlier one.
    #[error(
        "{} is left over from an earlier CA rollover; nothing was written \
         (move it out of the directory, then run `anima certs rollover` again)",
        path.display()
    )]
    PreviousCaExists {
        /// The leftover file (`ca.previous.pem` or `ca.previous.key`).
        path: PathBuf,
    },
    /// The CA key is of a type this crate cannot generate, so no successor of
    /// the same type can be made.
    #[error(
        "{} is neither an Ed25519 nor a P-256 key, so no new CA of its type can be made; \
         run `anima certs init --force` for a new CA",
        path.display()
    )]
    UnsupportedCaKey {
        /// The CA key file.
        path: PathBuf,
    },
    /// A file could not be removed.
    #[error("cannot remove {}: {source}; remove it by hand", path.display())]
    Remove {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A requested validity is empty or longer than allowed.
    #[error("{what} validity of {requested} is out of range (allowed: {allowed})")]
    ValidityOutOfRange {
        /// Whose validity (`CA`, `certificate`).
        what: &'static str,
        /// What was asked for.
        requested: String,
        /// What is allowed.
        allowed: String,
    },
    /// An explicit validity window ends before it starts.
    #[error(
        "empty validity window: not after {not_after} is not later than not before {not_before}"
    )]
    EmptyValidity {
        /// The requested start (RFC 3339).
        not_before: String,
        /// The requested end (RFC 3339).
        not_after: String,
    },
    /// A leaf would be valid for longer than the CA that signs it.
    #[error(
        "a {days}-day certificate would outlive its CA, which expires at {ca_expires}; \
         ask for at most {max_days} days, or use a longer-lived CA"
    )]
    LeafOutlivesCa {
        /// The requested leaf validity in days.
        days: u32,
        /// The most days the CA allows (what it has left, rounded up; the
        /// leaf is then cut at the CA's expiry).
        max_days: u64,
        /// When the CA expires (RFC 3339).
        ca_expires: String,
    },
    /// A key type other than those [`KeyType`](crate::KeyType) names.
    #[error("unknown key type {given:?} (expected ed25519 or p256)")]
    UnknownKeyType {
        /// What was given.
        given: String,
    },
    /// An identity kind or name breaks the naming rules.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The certificate generator failed.
    #[error("cannot mint {what}: {detail}")]
    Mint {
        /// What was being minted.
        what: String,
        /// The generator's complaint.
        detail: String,
    },
    /// A minted certificate is not usable as a TLS identity or trust root
    /// (for instance a leaf with no URN, or with two).
    #[error("not usable for TLS: {0}")]
    Tls(#[source] TransportError),
}
