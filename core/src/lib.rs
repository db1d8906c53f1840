//! The Anima Core engine and the `anima` command-line tool.
//!
//! - [`lease`]: opening, renewing and revoking leases on module connections.
//! - [`audit`]: the append-only audit log of lease events.
//!
//! The binary (`src/main.rs`) is thin: it parses the command line with
//! [`cli::Cli`] and calls [`cli::run`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Functions stay under 80 lines (.clippy.toml); tests are exempt.
#![cfg_attr(test, allow(clippy::too_many_lines))]

mod admin;
pub mod audit;
mod caller;
pub mod cli;
pub mod config;
mod contract_match;
mod discovery;
pub mod events;
pub mod gateway;
mod launcher;
pub mod lease;
mod log_text;
pub mod mediator;
mod metrics;
mod notify;
mod reestablish;
mod registry;
mod reload;
mod restart;
mod runtime_dir;
pub mod service;
mod sidecars;
mod status;
mod supervisor;
