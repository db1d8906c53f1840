//! The mediator (RUNE; PROTOCOL.md §12–13): the Core as the one way runtime
//! messages travel between modules. `route` says who may publish and
//! receive what, [`store`] keeps messages on disk, `hub` commits publishes
//! in groups and wakes subscribers, and `service` is `anima.v1.Mediator`.

mod dead;
mod errors;
pub(crate) mod hub;
pub(crate) mod nats;
pub mod record;
mod request;
pub(crate) mod route;
pub(crate) mod service;
pub mod store;
mod trace;
mod watch;
mod window;
