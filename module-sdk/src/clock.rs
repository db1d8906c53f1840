//! The SDK's monotonic clock: tokio's, so paused-clock tests are exact.

use std::time::Instant;

/// Now, as a `std` instant on tokio's clock (which tests may pause).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
