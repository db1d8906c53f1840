//! What one subscription stream has sent and not had answered (PROTOCOL.md
//! §13.3): at most `window` deliveries are outstanding. A delivery awaiting
//! an answer is outstanding until it is answered or its `ack_wait` lapses
//! (then it is due again, M7, and may be sent again on this stream); an
//! `at_most_once` delivery needs no answer and is never outstanding, but an
//! answer naming one of the last [`ONCE_KEPT`] is taken and ignored. Time is
//! passed in (Unix ms).

use std::collections::{HashMap, HashSet, VecDeque};

/// How many `at_most_once` deliveries a stream remembers, for answers that
/// name them.
pub(crate) const ONCE_KEPT: usize = 1024;

/// One stream's deliveries sent and not answered.
#[derive(Debug)]
pub(crate) struct Window {
    size: usize,
    /// Outstanding: delivery → (its subscription's index, when its
    /// `ack_wait` lapses).
    held: HashMap<u64, (usize, u64)>,
    /// No held delivery lapses before this.
    next_lapse: Option<u64>,
    /// Held deliveries whose `ack_wait` lapsed, not answered nor sent
    /// again: delivery → its subscription's index.
    lapsed: HashMap<u64, usize>,
    /// `at_most_once` deliveries sent lately, oldest first.
    once: VecDeque<u64>,
    once_set: HashSet<u64>,
}

/// What an answer named.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Named {
    /// A delivery awaiting an answer (lapsed or not), of the subscription
    /// at this index: no longer outstanding.
    Held(usize),
    /// An `at_most_once` delivery: nothing to do.
    Once,
    /// Nothing this stream sent and has not had answered.
    Unknown,
}

impl Window {
    /// A window of `size` deliveries.
    pub(crate) fn new(size: usize) -> Self {
        Window {
            size,
            held: HashMap::new(),
            next_lapse: None,
            lapsed: HashMap::new(),
            once: VecDeque::new(),
            once_set: HashSet::new(),
        }
    }

    /// `seq` was sent (again) for the subscription at `index`: awaiting an
    /// answer until `lapses_ms`, or (`once`) needing none.
    pub(crate) fn sent(&mut self, seq: u64, index: usize, once: bool, lapses_ms: u64) {
        if once {
            if self.once_set.insert(seq) {
                self.once.push_back(seq);
            }
            if self.once.len() > ONCE_KEPT
                && let Some(old) = self.once.pop_front()
            {
                self.once_set.remove(&old);
            }
            return;
        }
        self.lapsed.remove(&seq);
        self.held.insert(seq, (index, lapses_ms));
        self.next_lapse = Some(self.next_lapse.map_or(lapses_ms, |n| n.min(lapses_ms)));
    }

    /// An answer named `seq`.
    pub(crate) fn answer(&mut self, seq: u64) -> Named {
        if let Some((index, _)) = self.held.remove(&seq) {
            return Named::Held(index);
        }
        if let Some(index) = self.lapsed.remove(&seq) {
            return Named::Held(index);
        }
        if self.once_set.contains(&seq) {
            return Named::Once;
        }
        Named::Unknown
    }

    /// How many more deliveries may be sent at `now_ms`: the window less
    /// the held deliveries whose `ack_wait` has not lapsed.
    pub(crate) fn room(&mut self, now_ms: u64) -> usize {
        if self.next_lapse.is_some_and(|n| n <= now_ms) {
            self.lapse(now_ms);
        }
        self.size.saturating_sub(self.held.len())
    }

    /// Moves what lapsed by `now_ms` out of the window. Lapsed deliveries
    /// beyond twice the window's size are forgotten (an answer naming one
    /// is then unknown; it is delivered again).
    fn lapse(&mut self, now_ms: u64) {
        let mut next = None;
        self.held.retain(|&seq, &mut (index, lapses)| {
            if lapses > now_ms {
                next = Some(next.map_or(lapses, |n: u64| n.min(lapses)));
                return true;
            }
            self.lapsed.insert(seq, index);
            false
        });
        self.next_lapse = next;
        if self.lapsed.len() > 2 * self.size {
            self.lapsed.clear();
        }
    }

    /// When the next held delivery lapses (Unix ms), if any does.
    pub(crate) fn next_lapse(&self) -> Option<u64> {
        self.next_lapse
    }

    /// Every delivery awaiting an answer, lapsed or not, with its
    /// subscription's index; none is held after.
    pub(crate) fn drain_held(&mut self) -> Vec<(u64, usize)> {
        self.next_lapse = None;
        let held = self.held.drain().map(|(seq, (index, _))| (seq, index));
        held.chain(self.lapsed.drain()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m7_held_deliveries_fill_the_window_until_answered_or_lapsed() {
        let mut w = Window::new(2);
        assert_eq!(w.room(0), 2);
        w.sent(1, 0, false, 1_000);
        w.sent(2, 0, false, 1_500);
        assert_eq!((w.room(999), w.next_lapse()), (0, Some(1_000)));
        // The first lapses: due again, no longer outstanding.
        assert_eq!((w.room(1_000), w.next_lapse()), (1, Some(1_500)));
        // Sent again: outstanding again, until its new lapse.
        w.sent(1, 0, false, 2_000);
        assert_eq!((w.room(1_100), w.next_lapse()), (0, Some(1_500)));
        assert_eq!(w.answer(2), Named::Held(0));
        assert_eq!(w.room(1_100), 1);
        // A late answer to a lapsed delivery still names it.
        assert_eq!((w.room(2_500), w.next_lapse()), (2, None));
        assert_eq!(w.answer(1), Named::Held(0));
        assert_eq!(w.answer(1), Named::Unknown);
    }

    #[test]
    fn m7_at_most_once_deliveries_are_never_outstanding_and_their_answers_ignored() {
        let mut w = Window::new(1);
        for seq in 0..=ONCE_KEPT as u64 {
            w.sent(seq, 0, true, 0);
            assert_eq!(w.room(0), 1);
        }
        assert_eq!(w.next_lapse(), None);
        // The oldest is forgotten past ONCE_KEPT.
        assert_eq!(w.answer(0), Named::Unknown);
        assert_eq!(w.answer(1), Named::Once);
        assert_eq!(w.answer(ONCE_KEPT as u64), Named::Once);
    }

    #[test]
    fn lapsed_deliveries_beyond_twice_the_window_are_forgotten() {
        let mut w = Window::new(2);
        for seq in 0..4 {
            w.sent(seq, 1, false, 100);
        }
        assert_eq!(w.room(200), 2);
        assert_eq!(w.answer(0), Named::Held(1));
        for seq in 10..15 {
            w.sent(seq, 1, false, 300);
        }
        w.sent(20, 1, false, 900);
        // Eight lapsed, more than twice the window: forgotten.
        assert_eq!(w.room(400), 1);
        assert_eq!(w.answer(1), Named::Unknown);
        assert_eq!(w.answer(10), Named::Unknown);
        assert_eq!(w.drain_held(), vec![(20, 1)]);
    }

    #[test]
    fn drained_held_deliveries_are_all_returned() {
        let mut w = Window::new(4);
        w.sent(3, 0, false, 100);
        w.sent(4, 1, false, 50);
        w.sent(5, 1, true, 0);
        let mut held = w.drain_held();
        held.sort_unstable();
        assert_eq!(held, vec![(3, 0), (4, 1)]);
        assert_eq!((w.room(0), w.next_lapse()), (4, None));
    }
}
