//! Calls in flight on one lease, so a lease being replaced (renewed
//! certificates, make before break) is revoked only once the calls it
//! carries have ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Counts the calls in flight on one lease.
#[derive(Default)]
pub(crate) struct CallCount {
    n: AtomicUsize,
    /// Whether anyone waits in [`CallCount::idle`]: only then does the last
    /// call out wake anyone (no lock on a call's way out otherwise).
    watched: AtomicBool,
    idle: Notify,
}

/// One call in flight; dropping it (when the call ends) counts it out.
pub struct CallGuard(Arc<CallCount>);

impl CallCount {
    /// Counts one more call until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> CallGuard {
        self.n.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// Calls in flight now.
    pub(crate) fn get(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }

    /// Completes once no call is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // SeqCst with the guard's drop: either this sees the count at
            // 0, or that drop sees `watched` and wakes this.
            self.watched.store(true, Ordering::SeqCst);
            if self.n.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.watched.load(Ordering::SeqCst) {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_last_call_in_flight() {
        let count = Arc::new(CallCount::default());
        count.idle().await; // none in flight: at once
        let first = count.enter();
        let second = count.enter();
        let waiter = tokio::spawn({
            let count = count.clone();
            async move { count.idle().await }
        });
        drop(first);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "one call is still in flight");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("idle once the last call ended")
            .unwrap();
        assert_eq!(count.get(), 0);
    }
}
