//! Development certificates for Anima, minted in-process.
//!
//! Anima names every party by one URN in the URI SAN of its certificate
//! (`urn:anima:core:NAME`, `urn:anima:module:NAME`, `urn:anima:user:NAME`) and
//! trusts one CA. This crate makes both: a self-signed [`CertAuthority`], and
//! leaf certificates it signs from a [`LeafSpec`], each with an Ed25519 key
//! (the default) or an ECDSA P-256 one ([`KeyType`]). Tests mint their
//! certificates here at run time (no private keys in git); the `anima certs`
//! command is a thin layer over [`init_dir`], [`issue_into_dir_with`],
//! [`begin_rollover`], [`finish_rollover`] and [`inspect`].
//!
//! ```
//! use std::time::Duration;
//!
//! use anima_certs::{CertAuthority, LeafSpec};
//! use anima_protocol::{Urn, UrnKind};
//!
//! let ca = CertAuthority::generate("example CA", Duration::from_secs(86_400))?;
//! let urn = Urn::new(UrnKind::Module, "echo")?;
//! let leaf = ca.issue(&LeafSpec::new(urn.clone()))?;
//!
//! // Ready for the transport: the identity and the trust root.
//! let identity = leaf.identity()?;
//! assert_eq!(identity.urn(), &urn);
//! let _trust = ca.trust_root()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Certificates a deployment must refuse are as easy to make:
//!
//! ```
//! # use std::time::{Duration, SystemTime};
//! # use anima_certs::{CertAuthority, LeafSpec};
//! # use anima_protocol::{Urn, UrnKind};
//! # let ca = CertAuthority::generate("example CA", Duration::from_secs(86_400))?;
//! let day = Duration::from_secs(86_400);
//! let now = SystemTime::now();
//! let expired = LeafSpec::new(Urn::new(UrnKind::Core, "old")?).valid_between(now - 2 * day, now - day);
//! assert!(ca.issue(&expired)?.not_after() < now);
//!
//! let anonymous = ca.issue(&LeafSpec::without_urn())?;
//! assert!(anonymous.identity().is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Files
//!
//! [`init_dir`] writes a CA and certificates for the dev Core, the sample
//! modules and a user (see [`DEV_IDENTITIES`]) as `ca.pem`/`ca.key` and
//! `<kind>-<name>.pem`/`.key`. Keys are PKCS#8 v1 (which OpenSSL 3.0, Python's
//! `cryptography` and BoringSSL read, as well as rustls), created `0600`,
//! never replaced without `force`, and a failed call removes whatever it
//! wrote.
//!
//! The CA is replaced with an overlap period in three steps:
//! [`begin_rollover`] makes a new CA and turns `ca.pem` into a bundle of the
//! new and the old CA certificate, which every party trusts both of (the old
//! CA is kept as `ca.previous.pem`/`.key`); every leaf is then re-issued
//! ([`issue_into_dir_with`] with `force`; [`CertAuthority::load`] signs with
//! the CA that matches `ca.key`, the new one); and once every party has taken
//! up its new certificate, [`finish_rollover`] leaves the new CA alone in
//! `ca.pem` and removes the previous CA's files, key included.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Functions stay under 80 lines (.clippy.toml); tests are exempt.
#![cfg_attr(test, allow(clippy::too_many_lines))]

mod authority;
mod dev_dir;
mod error;
mod inspect;
mod key_type;
mod leaf;
mod pem_file;
mod pkcs8;
mod rollover;
mod validity;
mod write_batch;

#[cfg(test)]
mod test_support;

pub use authority::{CA_CERT_FILE, CA_KEY_FILE, CertAuthority, MAX_CA_VALIDITY};
pub use dev_dir::{
    DEFAULT_DIR, DEV_CA_NAME, DEV_IDENTITIES, InitOptions, IssueOptions, endpoint_cert_file,
    endpoint_key_file, init_dir, issue_endpoint_into_dir, issue_into_dir, issue_into_dir_with,
    leaf_cert_file, leaf_key_file,
};
pub use error::CertsError;
pub use inspect::{CertReport, inspect};
pub use key_type::KeyType;
pub use leaf::{DEFAULT_LEAF_VALIDITY, IssuedCert, LeafSpec};
pub use rollover::{
    CA_PREVIOUS_CERT_FILE, CA_PREVIOUS_KEY_FILE, RolloverOptions, begin_rollover, finish_rollover,
};
pub use validity::CLOCK_SKEW;
