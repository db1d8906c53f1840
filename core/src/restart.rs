//! The restart policy's arithmetic (`[module.restart]`): whether a run that
//! ended is restarted, how many restarts the sliding window allows, and the
//! backoff between them. Time is passed in; the supervisor acts on the
//! decision.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{RestartMode, RestartPolicy};

/// What to do after a run ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The policy does not restart it: the module is stopped (a clean exit)
    /// or failed (a failure), until an operator restarts it.
    Stay {
        /// Whether the run failed.
        failure: bool,
    },
    /// Restarted more than `max_restarts` times within `window`: failed,
    /// until an operator restarts it.
    GiveUp,
    /// Restart after this delay.
    Restart {
        /// The backoff.
        after: Duration,
    },
}

/// One module's restarts so far and its current backoff.
#[derive(Debug)]
pub(crate) struct RestartBudget {
    policy: RestartPolicy,
    restarts_at: VecDeque<Instant>,
    backoff: Duration,
}

impl RestartBudget {
    pub(crate) fn new(policy: &RestartPolicy) -> Self {
        RestartBudget {
            policy: policy.clone(),
            restarts_at: VecDeque::new(),
            backoff: policy.backoff,
        }
    }

    /// Forgets past restarts and the backoff (an operator restarted or
    /// stopped the module).
    pub(crate) fn reset(&mut self) {
        self.restarts_at.clear();
        self.backoff = self.policy.backoff;
    }

    /// Decides after a Type I module's process exited at `now` once its
    /// lease had ended: a clean exit is the end of a life that went as it
    /// should, so it forgets past restarts and the backoff first (under
    /// `always`, the module is started again after the first backoff, however
    /// many leases it has served); a failed exit counts like any other.
    pub(crate) fn decide_after_lease(&mut self, failure: bool, now: Instant) -> Decision {
        if !failure {
            self.reset();
        }
        self.decide(failure, now)
    }

    /// Decides after a run that ended at `now`, failed or not.
    pub(crate) fn decide(&mut self, failure: bool, now: Instant) -> Decision {
        let restart = match self.policy.mode {
            RestartMode::Never => false,
            RestartMode::OnFailure => failure,
            RestartMode::Always => true,
        };
        if !restart {
            return Decision::Stay { failure };
        }
        self.restarts_at.push_back(now);
        while self
            .restarts_at
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.restarts_at.pop_front();
        }
        if self.restarts_at.len() > self.policy.max_restarts as usize {
            self.reset();
            return Decision::GiveUp;
        }
        let after = self.backoff;
        self.backoff = (self.backoff * 2).min(self.policy.backoff_max);
        Decision::Restart { after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: RestartMode) -> RestartPolicy {
        RestartPolicy {
            mode,
            max_restarts: 3,
            window: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_mode_decides_which_endings_restart() {
        let t = Instant::now();
        for (mode, failure, restarts) in [
            (RestartMode::Never, true, false),
            (RestartMode::Never, false, false),
            (RestartMode::OnFailure, true, true),
            (RestartMode::OnFailure, false, false),
            (RestartMode::Always, true, true),
            (RestartMode::Always, false, true),
        ] {
            let got = RestartBudget::new(&policy(mode)).decide(failure, t);
            assert_eq!(
                matches!(got, Decision::Restart { .. }),
                restarts,
                "{mode:?} failure={failure}: {got:?}"
            );
            if !restarts {
                assert_eq!(got, Decision::Stay { failure });
            }
        }
    }

    #[test]
    fn clean_exits_after_a_lease_never_exhaust_the_budget_and_failures_still_do() {
        let mut budget = RestartBudget::new(&policy(RestartMode::Always));
        let t = Instant::now();
        // Ten lives in a window that allows three restarts, each at the
        // first backoff.
        for i in 0..10 {
            assert_eq!(
                budget.decide_after_lease(false, t + ms(i)),
                Decision::Restart { after: ms(100) },
                "life {i}"
            );
        }
        // Failed exits after a lease count and back off as usual.
        let failed: Vec<Decision> = (10..14)
            .map(|i| budget.decide_after_lease(true, t + ms(i)))
            .collect();
        assert_eq!(
            failed,
            [
                Decision::Restart { after: ms(200) },
                Decision::Restart { after: ms(350) },
                Decision::GiveUp,
                Decision::Restart { after: ms(100) },
            ]
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let mut budget = RestartBudget::new(&RestartPolicy {
            max_restarts: 100,
            ..policy(RestartMode::Always)
        });
        let t = Instant::now();
        let delays: Vec<Decision> = (0..4).map(|i| budget.decide(true, t + ms(i))).collect();
        assert_eq!(
            delays,
            [100, 200, 350, 350].map(|n| Decision::Restart { after: ms(n) })
        );
        budget.reset();
        assert_eq!(
            budget.decide(true, t + ms(10)),
            Decision::Restart { after: ms(100) }
        );
    }

    /// An on-failure budget (3 restarts per 10 s) that restarted at `t`,
    /// `t` + 1 ms and `t` + 2 ms.
    fn restarted_three_times(t: Instant) -> RestartBudget {
        let mut budget = RestartBudget::new(&policy(RestartMode::OnFailure));
        for i in 0..3 {
            assert!(matches!(
                budget.decide(true, t + ms(i)),
                Decision::Restart { .. }
            ));
        }
        budget
    }

    #[test]
    fn more_than_max_restarts_within_the_window_gives_up() {
        let t = Instant::now();
        let mut budget = restarted_three_times(t);
        assert_eq!(budget.decide(true, t + ms(3)), Decision::GiveUp);
        // Giving up starts afresh: an operator's restart gets a new budget.
        assert_eq!(
            budget.decide(true, t + ms(4)),
            Decision::Restart { after: ms(100) }
        );
    }

    #[test]
    fn restarts_older_than_the_window_no_longer_count() {
        let t = Instant::now();
        let mut budget = restarted_three_times(t);
        // 10 s after the first three (the window), they have slid out.
        let later = t + Duration::from_secs(10) + ms(3);
        assert!(matches!(
            budget.decide(true, later),
            Decision::Restart { .. }
        ));
        // Exactly at the window's edge a restart still counts.
        let mut edge = RestartBudget::new(&policy(RestartMode::OnFailure));
        for _ in 0..3 {
            edge.decide(true, t);
        }
        assert_eq!(
            edge.decide(true, t + Duration::from_secs(10)),
            Decision::GiveUp
        );
    }
}
