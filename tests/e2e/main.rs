//! End-to-end tests: one binary, real sockets, real certificates.
//!
//! Test names carry the CONFORMANCE.md row they exercise (`t1_…`, `a3_…`).

// Tests and their helpers: a failed step is a failed test, reported by panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod abuse;
mod architecture;
mod conformance;
mod docs;
mod endings;
mod first_hour;
mod gateway;
mod hosts;
mod interfaces;
mod journal;
mod lease;
mod lifecycle;
mod local_sockets;
mod loud;
mod mediation;
mod messages;
/// The same tests, the mediator on NATS JetStream (M14): compiled twice on
/// purpose, each copy telling its backend by its module path.
#[allow(clippy::duplicate_mod)]
#[path = "messages.rs"]
mod messages_on_nats;
mod nats;
mod ops;
mod python_modules;
mod rollover;
mod rotation;
mod scaffold;
mod serve;
mod shared_messages;
mod shipped;
mod sidecars;
mod streams;
mod systemd;
mod transport;
mod wait;
mod workflow;
