//! Where the lease code takes its time from.
//!
//! The lease logic in [`crate::lease`] is pure: every step takes the
//! monotonic instant (expiry, renewal timing) and the wall-clock time (token
//! `iat`/`exp`) as arguments. The code that drives it asks a [`Clock`], so a
//! test can run a lease on tokio's paused clock, or shift the wall clock,
//! without touching the driver.

use std::time::{Instant, SystemTime};

/// A source of the two times a lease needs.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The monotonic now: lease expiry and renewal instants.
    fn now(&self) -> Instant;
    /// The wall-clock now: token `iat`/`exp` and certificate validity.
    fn wall(&self) -> SystemTime;
}

/// The clock of a running process: tokio's monotonic clock (which follows a
/// paused test clock exactly) and the system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}
