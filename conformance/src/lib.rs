//! `anima conformance`: checks, black-box, that a module obeys ADR-0003.
//!
//! The tool acts as a Core — an honest one, and on purpose a misbehaving one
//! (forged and replayed proofs, refusals, scopes beyond the contract, a
//! second Core, plaintext and wrong certificates) — against a module it does
//! not trust, and reports every row of CONFORMANCE.md as pass, fail or n/a
//! with the evidence for each verdict. It starts the module itself with the
//! launch protocol (PROTOCOL.md §6.1) when given a command, which is required
//! for Type I and core-started Type II, or connects to a running module
//! (pre-started Type II, Type III) when given an endpoint.
//!
//! Rules about what a handler *did* are observed through the conformance
//! probe (PROTOCOL.md §8), when the contract declares it.
//!
//! The tool mints its own identities (two Cores, an operator, and
//! certificates a module must refuse) with the deployment's CA, so it needs
//! a CA directory it can sign with — `anima certs init` makes one.
//!
//! This crate is the library behind the `anima conformance` subcommand of
//! `anima-core`: [`run`] takes [`Options`] and returns a [`Report`]. It
//! uses only the protocol crate (`anima-protocol`) and the certificate
//! tooling (`anima-certs`), never the Core itself.
//!
//! - `target`: the identities the tool presents and the module process.
//! - `session`: a Core on the protocol crate's handshake driver, able to
//!   misbehave on purpose.
//! - `rawtls`: TLS probes below gRPC (certificates, TLS 1.2, ALPN).
//! - [`report`]: one verdict per CONFORMANCE.md row, with its evidence.
//! - `checks`: the scenarios, one file per row family, deciding the rows.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Functions stay under 80 lines (.clippy.toml); tests are exempt.
#![cfg_attr(test, allow(clippy::too_many_lines))]

mod checks;
mod error;
mod rawtls;
pub mod report;
mod session;
mod target;

use std::path::{Path, PathBuf};

use anima_protocol::contract::Contract;
pub use checks::Target;
pub use error::{LaunchFailure, ToolError};
pub use report::{Report, RowResult, Verdict};
pub use target::{KeyType, LaunchCommand};

/// What to check, and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The module's contract (`module.toml`).
    pub contract: PathBuf,
    /// The CA directory (`ca.pem`, `ca.key`).
    pub certs: PathBuf,
    /// The key type of the tool's Core certificates.
    pub key_type: KeyType,
    /// The module's certificate and key (minted when absent).
    pub module_files: Option<(PathBuf, PathBuf)>,
    /// Core A's certificate and key, for a module bound to an existing Core.
    pub core_files: Option<(PathBuf, PathBuf)>,
    /// Where the module is.
    pub target: Target,
    /// Where to keep module logs and minted files (a fresh directory when
    /// absent, removed after a passing run).
    pub workdir: Option<PathBuf>,
}

/// Runs the checks. `Err` when the run could not happen at all (bad
/// contract, no CA); a module that fails rows is an `Ok` report with
/// failures.
pub async fn run(options: &Options) -> Result<Report, ToolError> {
    let text = std::fs::read_to_string(&options.contract).map_err(|source| ToolError::File {
        path: options.contract.clone(),
        source,
    })?;
    let contract = Contract::from_toml(&text).map_err(|source| ToolError::Contract {
        path: options.contract.clone(),
        source,
    })?;
    let type_declared = toml::from_str::<toml::Table>(&text)
        .map(|t| t.contains_key("type"))
        .unwrap_or(true);
    let (workdir, temporary) = match &options.workdir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| ToolError::File {
                path: dir.clone(),
                source,
            })?;
            (dir.clone(), false)
        }
        None => (fresh_dir()?, true),
    };
    let mut ids = target::Identities::mint(
        &options.certs,
        options.key_type,
        &contract.urn,
        options.module_files.clone(),
        &workdir,
        matches!(options.target, Target::Endpoint(_)),
    )?;
    if let Some((cert, key)) = &options.core_files {
        // The error names the file it came from.
        ids.set_core_a(anima_protocol::TlsIdentity::from_pem_files(cert, key)?);
    }
    tracing::info!(module = %contract.urn, workdir = %workdir.display(), "conformance run starts");
    let plan = checks::Plan {
        contract,
        type_declared,
        ids,
        target: options.target.clone(),
        workdir: workdir.clone(),
    };
    let report = checks::run(&plan).await;
    if temporary && !report.failed() {
        let _ = std::fs::remove_dir_all(&workdir);
    } else {
        tracing::info!(workdir = %workdir.display(), "module logs kept");
    }
    Ok(report)
}

/// A new private directory under the system's temporary directory.
fn fresh_dir() -> Result<PathBuf, ToolError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let base = std::env::temp_dir();
    let mut last = base.clone();
    for n in 0..1000u32 {
        let dir = base.join(format!("anima-conformance-{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = dir,
            Err(source) => return Err(ToolError::File { path: dir, source }),
        }
    }
    // Every name taken: the last one tried, and why it failed.
    Err(ToolError::File {
        path: last,
        source: std::io::ErrorKind::AlreadyExists.into(),
    })
}

/// The module URN a contract names (for reports).
pub fn contract_urn(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Contract::from_toml(&text).ok().map(|c| c.urn.to_string())
}
