//! The mediator (RUNE; PROTOCOL.md §12): the Core as the one way runtime
//! messages travel between modules. What is built so far is its embedded
//! message store ([`store`]); the `anima.v1.Mediator` service that fills
//! and drains it is being built (issue 16).

pub mod record;
pub mod store;
