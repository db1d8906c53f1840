//! Sample Anima modules, one per module type, each short enough to read as
//! documentation for [`anima_module_sdk`].
//!
//! | sample | type | what it shows |
//! | --- | --- | --- |
//! | [`hasher`] | I, ephemeral | a stateless service; a resource released by the cleanup hook; the process exiting by itself when its lease ends |
//! | [`kvstore`] | II, resident private | expensive state built once and kept through standby; an all-or-nothing write committed with [`LeaseContext::commit`] |
//! | [`tally`] | III, resident shared | per-lease tenant state with [`LeaseContext::with_state`], invisible to other Cores and gone with the lease |
//! | [`notes`] | II, resident private | an interface it `requires` (the kvstore's `anima.sample/kv`), called through its Core with [`CoreClient`], deadlines carried over and errors passed through |
//! | [`logger`] | II, resident private | runtime messages received through its Core's mediator, only under a lease, each acknowledged once kept |
//! | [`orchestrator`] | II, resident private | the memory check workflow ([`workflow`]) started by a call: a request through the Core's mediator to whichever module executes scripts, its reply, log lines, one correlation and one trace |
//! | [`scripts`] | II, resident private | the workflow's script executor: requests received under a lease, replied to through the Core, built-in scripts only |
//! | [`ratelimit`] | II, resident private | a proxy sidecar (`anima/sidecar`): sees each call to the module it is a sidecar of, logs it, refuses a caller over its rate |
//!
//! Each sample is a folder (`hasher/`, `kvstore/`, `tally/`, `notes/`, `ratelimit/`) holding its
//! capability contract (`module.toml`), its binary (`main.rs`) and a README;
//! its service lives in this library so the tests can serve it in-process
//! with the SDK's `testing` harness (`anima_module_sdk::testing`, behind
//! its `testing` feature).
//!
//! A module's `main` is one call to [`anima_module_sdk::launch()`], which reads
//! the launch environment (`ANIMA_CERT`, `ANIMA_KEY`, `ANIMA_CA`,
//! `ANIMA_CORE_URN`, `ANIMA_LISTEN`, `ANIMA_OPERATORS`), checks the served
//! methods against the contract, prints the ready line on stdout and runs the
//! module's lifecycle:
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! use anima_sample_modules::pb::hasher_server::HasherServer;
//! use anima_sample_modules::{DESCRIPTORS, hasher};
//!
//! #[tokio::main]
//! async fn main() -> ExitCode {
//!     anima_sample_modules::start_process(); // logs to stderr: stdout carries the ready line only
//!     let hasher = match hasher::Hasher::new(hasher::default_scratch_dir()) {
//!         Ok(hasher) => hasher,
//!         Err(e) => {
//!             eprintln!("error: {e}");
//!             return ExitCode::FAILURE;
//!         }
//!     };
//!     let cleanup = hasher.cleanup();
//!     anima_module_sdk::launch(hasher::contract(), |module| {
//!         module
//!             .file_descriptor_set(DESCRIPTORS)
//!             .service(HasherServer::new(hasher))
//!             .probe() // the conformance probe, declared in module.toml
//!             .on_cleanup(move || cleanup.run())
//!     })
//!     .await
//! }
//! ```
//!
//! [`LeaseContext::commit`]: anima_module_sdk::LeaseContext::commit
//! [`LeaseContext::with_state`]: anima_module_sdk::LeaseContext::with_state
//! [`CoreClient`]: anima_module_sdk::CoreClient

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use anima_module_sdk::LeaseContext;
use anima_protocol::lease::{Reason, status_for};
use tonic::Status;

pub mod hasher;
pub mod kvstore;
pub mod logger;
pub mod notes;
pub mod orchestrator;
pub mod ratelimit;
pub mod scripts;
pub mod tally;
pub mod workflow;

/// The generated messages, servers and clients of `anima.sample.v1`
/// (`proto/anima/sample/v1/*.proto`). The clients have no plaintext
/// `connect` helper: dial through `anima_protocol::ClientTls` and a lease.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("anima.sample.v1");
}

/// The encoded `FileDescriptorSet` of the sample services, which
/// [`anima_module_sdk::ModuleServer::file_descriptor_set`] reads to check the
/// served methods against each contract.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sample_descriptor.bin"));

/// What every sample's `main` does first: starts jemalloc's background
/// thread, which purges freed pages (each sample binary declares jemalloc its
/// global allocator: it gives the memory of a burst of calls back to the
/// system once it is over, where the system allocator would keep most of it
/// resident), and sends logs to stderr.
pub fn start_process() {
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    log_to_stderr();
}

/// Sends `tracing` output to stderr, filtered by `RUST_LOG` (default
/// `info`; colours only on a terminal): stdout belongs to the launch
/// protocol's ready line.
fn log_to_stderr() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second initialisation (none in these binaries) would keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The client of the launching Core, from the launch environment; `None`
/// without one (`ANIMA_CORE_ENDPOINT` unset) or when it cannot be built,
/// logged with what the module then does not do (`idle`, e.g. "receiving
/// nothing").
pub(crate) fn core_from_env(idle: &str) -> Option<anima_module_sdk::CoreClient> {
    use anima_module_sdk::SdkError;
    use anima_module_sdk::launch::{ENV_CORE_ENDPOINT, LaunchEnvError};
    match anima_module_sdk::CoreClient::from_env() {
        Ok(core) => Some(core),
        Err(SdkError::LaunchEnv(LaunchEnvError::Missing(ENV_CORE_ENDPOINT))) => {
            tracing::warn!("no Core endpoint in the launch environment: {idle}");
            None
        }
        Err(e) => {
            tracing::warn!("no client of the Core ({e}): {idle}");
            None
        }
    }
}

/// The lease a call was admitted under. Every call that reaches a handler
/// through the SDK's lease gate has one; a service served some other way
/// refuses every call (`NO_LEASE`) rather than run without a lease.
pub(crate) fn lease_of<T>(request: &tonic::Request<T>) -> Result<&LeaseContext, Status> {
    LeaseContext::of(request).ok_or_else(|| {
        status_for(
            Reason::NoLease,
            "no lease context: the service is not behind the Anima lease gate",
            std::iter::empty(),
        )
    })
}

/// Checks a request's name-like field (`what`, e.g. "a key"): not empty and
/// at most `limit` bytes; otherwise `INVALID_ARGUMENT`.
pub(crate) fn check_text(what: &str, value: &str, limit: usize) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what} must not be empty"
        )));
    }
    if value.len() > limit {
        return Err(too_long(what, value.len(), limit));
    }
    Ok(())
}

/// `INVALID_ARGUMENT`: `what` is `len` bytes, more than `limit`.
pub(crate) fn too_long(what: &str, len: usize, limit: usize) -> Status {
    Status::invalid_argument(format!("{what} is {len} bytes; the limit is {limit}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anima_module_sdk::{Contract, InitMode, ModuleType};

    use super::*;

    /// The sample's contract declares `module_type` and `urn`.
    fn assert_declares(contract: Contract, module_type: ModuleType, urn: &str) {
        assert_eq!(contract.module_type, module_type);
        assert_eq!(contract.urn.as_str(), urn);
    }

    #[test]
    fn e7_hasher_contract_is_ephemeral_by_default() {
        let c = hasher::contract();
        assert_eq!(c.expired_grace, Duration::from_secs(1));
        assert_declares(c, ModuleType::Ephemeral, "urn:anima:module:hasher");
    }

    #[test]
    fn p1_the_kvstore_provides_the_kv_interface_and_declares_its_methods() {
        let contract = kvstore::contract();
        let kv = kvstore::interface();
        assert_eq!(contract.provides, std::slice::from_ref(&kv.provided));
        assert_eq!(kv.provided.to_string(), "anima.sample/kv 1.0.0");
        for method in kv.method_paths() {
            assert!(contract.methods.contains(method), "{method}");
        }
        assert!(contract.requires.is_empty());
    }

    #[test]
    fn r1_kvstore_contract_declares_resident_private_core_started() {
        let resident_private = ModuleType::ResidentPrivate(InitMode::CoreStarted);
        assert_declares(
            kvstore::contract(),
            resident_private,
            "urn:anima:module:kvstore",
        );
    }

    #[test]
    fn s1_tally_contract_declares_resident_shared() {
        assert_declares(
            tally::contract(),
            ModuleType::ResidentShared,
            "urn:anima:module:tally",
        );
    }

    #[test]
    fn keys_and_counter_names_are_bounded() {
        type Check = fn(&str) -> Result<(), Status>;
        let checks: [(Check, &str, usize); 2] = [
            (kvstore::check_key, "k", kvstore::MAX_KEY_BYTES),
            (tally::check_name, "hits", tally::MAX_NAME_BYTES),
        ];
        for (check, valid, limit) in checks {
            assert!(check(valid).is_ok());
            assert_eq!(check("").unwrap_err().code(), tonic::Code::InvalidArgument);
            let long = "k".repeat(limit + 1);
            assert_eq!(
                check(&long).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
