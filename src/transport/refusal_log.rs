//! Refused connections: counted, and logged at a bounded rate per reason.
//!
//! A client that fails its handshake in a loop must not fill the log: each
//! kind of refusal ([`RefusalReason::kind`]) may log a burst of lines, then
//! one line per interval; every refusal in between is counted, and the next
//! line logged for that kind says how many were left out — or, if none
//! comes, a summary line at the end of the interval does.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::refusal::RefusalReason;
use super::socket::Address;

/// How many refusal lines of one kind may be logged at once.
pub const DEFAULT_REFUSAL_LOG_BURST: u32 = 5;

/// After the burst, one refusal line per kind per this interval; refusals
/// left out are reported by the next line, at the latest at the end of the
/// interval.
pub const DEFAULT_REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What a listener refused of one kind, since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusalCount {
    /// The kind of refusal ([`RefusalReason::kind`]).
    pub reason: &'static str,
    /// Connections refused.
    pub refused: u64,
    /// Of these, how many were not logged (rate limit).
    pub logs_suppressed: u64,
}

/// Counts refusals and decides which of them are logged.
pub(crate) struct RefusalLog {
    burst: u32,
    interval: Duration,
    kinds: Mutex<BTreeMap<&'static str, Kind>>,
}

struct Kind {
    refused: u64,
    suppressed: u64,
    /// Lines that may be logged now (refilled one per interval).
    allowance: u32,
    refilled: Instant,
    /// Refusals not logged since the last line of this kind.
    unreported: u64,
}

impl RefusalLog {
    pub(crate) fn new(burst: u32, interval: Duration) -> Self {
        RefusalLog {
            burst: burst.max(1),
            interval: interval.max(Duration::from_millis(1)),
            kinds: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Kind>> {
        self.kinds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one refusal; logs it unless its kind is over its rate. The
    /// line says how many refusals of this kind were not logged before it.
    pub(crate) fn refuse(&self, peer: &Address, reason: &RefusalReason) {
        if let Some(left_out) = self.count(reason.kind(), Instant::now()) {
            if left_out == 0 {
                tracing::warn!(peer = %peer, reason = %reason, "connection refused");
            } else {
                tracing::warn!(
                    peer = %peer,
                    reason = %reason,
                    suppressed = left_out,
                    "connection refused ({left_out} similar refusals were not logged)"
                );
            }
        }
    }

    /// Counts one refusal of `kind` at `now`; `Some(left out before it)`
    /// when it is to be logged.
    fn count(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.lock();
        let entry = kinds.entry(kind).or_insert(Kind {
            refused: 0,
            suppressed: 0,
            allowance: self.burst,
            refilled: now,
            unreported: 0,
        });
        entry.refused += 1;
        let periods = now.saturating_duration_since(entry.refilled).as_nanos()
            / self.interval.as_nanos().max(1);
        if periods > 0 {
            let add = u32::try_from(periods).unwrap_or(u32::MAX);
            entry.allowance = entry.allowance.saturating_add(add).min(self.burst);
            entry.refilled = now;
        }
        if entry.allowance > 0 {
            entry.allowance -= 1;
            Some(std::mem::take(&mut entry.unreported))
        } else {
            entry.suppressed += 1;
            entry.unreported += 1;
            None
        }
    }

    /// How often [`RefusalLog::report_suppressed`] should run.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Logs, for each kind, the refusals left out since its last line (if
    /// any); the accept loop calls this once per interval.
    pub(crate) fn report_suppressed(&self) {
        for (kind, left_out) in self.take_unreported() {
            tracing::warn!(
                reason = kind,
                suppressed = left_out,
                "connection refused: {left_out} more refusals ({kind}) were not logged"
            );
        }
    }

    fn take_unreported(&self) -> Vec<(&'static str, u64)> {
        self.lock()
            .iter_mut()
            .filter(|(_, k)| k.unreported > 0)
            .map(|(kind, k)| (*kind, std::mem::take(&mut k.unreported)))
            .collect()
    }

    /// Every kind refused so far, with its counts.
    pub(crate) fn counts(&self) -> Vec<RefusalCount> {
        self.lock()
            .iter()
            .map(|(reason, k)| RefusalCount {
                reason,
                refused: k.refused,
                logs_suppressed: k.suppressed,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_line_per_interval_each_saying_what_it_left_out() {
        let log = RefusalLog::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let logged: Vec<Option<u64>> = (0..10).map(|_| log.count("plaintext", t0)).collect();
        assert_eq!(
            logged,
            [
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        // Another kind has its own allowance.
        assert_eq!(log.count("expired", t0), Some(0));
        // One interval later: one line, carrying the seven left out.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(log.count("plaintext", t1), Some(7));
        assert_eq!(log.count("plaintext", t1), None);
        // What no line carried is reported by the interval's summary, once.
        assert_eq!(log.count("plaintext", t1), None);
        assert_eq!(log.take_unreported(), [("plaintext", 2)]);
        assert_eq!(log.take_unreported(), []);
        // A long quiet spell refills the burst, not more.
        let t2 = t1 + Duration::from_secs(3600);
        let logged: Vec<Option<u64>> = (0..4).map(|_| log.count("plaintext", t2)).collect();
        assert_eq!(logged, [Some(0), Some(0), Some(0), None]);
        let counts = log.counts();
        assert_eq!(
            counts,
            [
                RefusalCount {
                    reason: "expired",
                    refused: 1,
                    logs_suppressed: 0
                },
                RefusalCount {
                    reason: "plaintext",
                    refused: 17,
                    logs_suppressed: 10
                },
            ]
        );
    }
}
