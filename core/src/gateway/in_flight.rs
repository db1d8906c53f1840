//! The per-user bound: how many calls one user has in flight through the
//! gateway, all its connections together.

use std::sync::Arc;

use anima_protocol::Urn;
use anima_protocol::transport::{IdentityLimit, IdentitySlot};

/// Calls in flight per user.
pub(crate) struct InFlight {
    pub(crate) max: usize,
    calls: Arc<IdentityLimit>,
}

/// One call in flight; dropping it (when the call ends) frees its place.
pub(crate) type CallSlot = IdentitySlot;

impl InFlight {
    /// At most `max` calls in flight per user.
    pub(crate) fn new(max: usize) -> Self {
        let calls = IdentityLimit::new(max);
        InFlight {
            max: calls.max(),
            calls,
        }
    }

    /// One more call for `user`, or `None` when it has the maximum.
    pub(crate) fn enter(&self, user: &Urn) -> Option<CallSlot> {
        self.calls.hold(user)
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
        assert_eq!(in_flight.calls.holders(), 0);
    }
}
