//! The per-user bound: how many calls one user has in flight through the
//! gateway, all its connections together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anima_protocol::Urn;

/// Calls in flight per user.
pub(crate) struct InFlight {
    pub(crate) max: usize,
    calls: Mutex<HashMap<Urn, usize>>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Urn, usize>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more call for `user`, or `None` when it has the maximum.
    pub(crate) fn enter(self: &Arc<Self>, user: &Urn) -> Option<CallSlot> {
        let mut calls = self.lock();
        let n = calls.entry(user.clone()).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(CallSlot {
            owner: self.clone(),
            user: user.clone(),
        })
    }
}

/// One call in flight; dropping it (when the call ends) frees its place.
pub(crate) struct CallSlot {
    owner: Arc<InFlight>,
    user: Urn,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut calls = self.owner.lock();
        if let Some(n) = calls.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                calls.remove(&self.user);
            }
        }
    }
}

impl InFlight {
    /// At most `max` calls in flight per user.
    pub(crate) fn new(max: usize) -> Self {
        InFlight {
            max,
            calls: Mutex::new(HashMap::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_max_calls_and_a_finished_call_frees_its_place() {
        let in_flight = Arc::new(InFlight::new(2));
        let a: Urn = "urn:anima:user:a".parse().unwrap();
        let b: Urn = "urn:anima:user:b".parse().unwrap();
        let first = in_flight.enter(&a).expect("first");
        let _second = in_flight.enter(&a).expect("second");
        assert!(in_flight.enter(&a).is_none(), "a third is refused");
        assert!(in_flight.enter(&b).is_some(), "another user is not");
        drop(first);
        assert!(
            in_flight.enter(&a).is_some(),
            "a finished call frees its place"
        );
    }

    #[test]
    fn a_user_with_no_call_in_flight_leaves_no_entry() {
        let in_flight = Arc::new(InFlight::new(1));
        let a: Urn = "urn:anima:user:a".parse().unwrap();
        drop(in_flight.enter(&a));
        assert!(in_flight.lock().is_empty());
    }
}
