//! The Anima module SDK: serve an ordinary tonic service under leases.
//!
//! A complete module — this is `sample-modules/hasher`, trimmed:
//!
//! ```text
//! use std::process::ExitCode;
//! use anima_module_sdk::{Contract, LeaseContext, launch};
//!
//! #[tokio::main]
//! async fn main() -> ExitCode {
//!     // module.toml: urn, version, type, methods, max_lease, graces.
//!     let contract = Contract::from_toml(include_str!("../module.toml")).expect("valid contract");
//!     launch(contract, |module| {
//!         module
//!             .file_descriptor_set(pb::DESCRIPTORS) // the SDK checks served == declared
//!             .service(pb::hasher_server::HasherServer::new(Hasher::default()))
//!             .on_cleanup(|| async { /* release resources (Type I) */ })
//!     })
//!     .await
//! }
//! ```
//!
//! [`launch()`] reads the launch environment (PROTOCOL.md §6), prints the ready
//! line, and serves until the module's lifecycle says stop. Around the
//! author's services the SDK serves the lease control stream (the Core's
//! offer, the module's grant, renewals, scope changes, revocations) and
//! `ModuleAdmin`, and puts a lease gate in front of every capability call:
//! undeclared methods, calls without a valid lease on their connection, and
//! calls with a missing, forged or replayed proof are refused before the
//! handler runs; an admitted call is halted the moment its lease ends.
//!
//! Handlers see their lease as a [`LeaseContext`]: stage side effects and
//! apply them with [`LeaseContext::commit`], which runs only while the lease
//! is valid; keep per-Core data in [`LeaseContext::with_state`], which is
//! private to the lease and dropped when it ends.
//!
//! The lifecycle of each module type (ADR-0003 §6) is enforced here, not by
//! the author: Type I exits by itself after zero-lease (running the cleanup
//! hook in its termination window), Type II and III go to standby. Contracts
//! parse from TOML:
//!
//! ```
//! use anima_module_sdk::{Contract, ModuleType};
//!
//! let contract = Contract::from_toml(r#"
//!     urn = "urn:anima:module:hasher"
//!     version = "0.1.0"
//!     methods = ["/anima.sample.v1.Hasher/Digest"]
//!     max_lease = "30s"
//! "#)?;
//! assert_eq!(contract.module_type, ModuleType::Ephemeral); // the default
//! # Ok::<(), anima_module_sdk::SdkError>(())
//! ```
//!
//! [`ModuleServer::probe`] adds the conformance probe (`anima.v1.Probe`,
//! PROTOCOL.md §8), through which a conformance tool observes from outside
//! whether handlers ran without a lease, committed after their lease ended,
//! or shared state between leases.
//!
//! What the S-rows check: the Type III isolation rows of `anima conformance`
//! (S4, state scoped to its lease and deleted with it; S8, behaviour
//! independent of other tenants; S9, no data kept past the lease) read the
//! probe's per-lease `touches`, which the probe keeps in
//! [`LeaseContext::with_state`]. They therefore check the SDK's tenant
//! isolation — that `with_state` gives each lease its own state and drops it
//! with the lease — not the module's own handlers: a handler that keeps
//! per-Core data in a field of its service, a global or a cache not keyed by
//! the lease still passes them. Keep tenant data in `with_state`, and check
//! your own handlers with the test bed's isolation check,
//! `testing::TestBed::check_isolation` (feature `testing`): from your write
//! and read steps it runs several Cores' leases against your module and
//! fails naming the row (S3, S4, S5, S8, S9) and the tenant when what one lease
//! wrote reaches another, outlives its lease, or changes what another sees.
//! Every row id is explained in the repository's `docs/conformance.md`.
//!
//! With the `testing` feature, `testing::TestBed` and `testing::FakeCore`
//! let module tests lease, renew, revoke and expire on command, with no Core
//! binary.
//!
//! No feature, setting or environment variable of this crate turns a rule
//! off. The deliberate violations that prove a conformance tool catches a
//! broken module live in a test-only copy of this source
//! (`tests/faulty`, compiled with the `anima_test_faults` cfg that only that
//! package's build script sets); this crate refuses to compile with the cfg.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Functions stay under 80 lines (.clippy.toml); tests are exempt.
#![cfg_attr(test, allow(clippy::too_many_lines))]

mod access;
mod admin;
mod clock;
mod context;
mod control;
mod core_client;
mod deadline;
mod descriptors;
mod error;
#[cfg(anima_test_faults)]
pub mod fault;
#[cfg(anima_test_faults)]
const _: () = assert!(
    fault::is_test_copy(env!("CARGO_PKG_NAME")),
    "the anima_test_faults cfg is for the test-only copy of the SDK (tests/faulty); \
     anima-module-sdk itself never compiles fault hooks"
);
mod gate;
mod id_hash;
mod interval;
mod leases;
mod lifecycle;
pub mod messages;
mod probe;
mod serve;
mod signers;
mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use access::MAX_CONCURRENT_STREAMS;
/// The module contract (`module.toml`), defined in the protocol crate.
pub use anima_protocol::contract::{self, Contract, ContractError, InitMode, ModuleType};
pub use anima_protocol::interface::definition::Interface;
pub use anima_protocol::interface::{self, Provided, Required};
/// The launch protocol (`ANIMA_*` variables, the ready line), defined in the
/// protocol crate.
pub use anima_protocol::launch::{self, shutdown_signal};
pub use context::LeaseContext;
pub use control::{ENDED_LEASE_RETENTION, HANDSHAKE_TIMEOUT};
pub use core_client::{CoreClient, PIN_HEADER};
pub use error::SdkError;
pub use interval::watch_interval;
pub use leases::LeaseEvent;
pub use lifecycle::{Exit, Phase};
pub use serve::{
    INFRASTRUCTURE_MESSAGE_LIMIT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, ModuleHandle,
    ModuleServer, launch,
};
