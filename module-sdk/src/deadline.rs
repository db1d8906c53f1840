//! Deadlines kept to the microsecond: two threads per process, each on its
//! own CPU, that sleep until the earliest registered instant and wake its
//! waiter.
//!
//! Tokio's timer wheel counts whole milliseconds and rounds every deadline
//! up to its next tick, so a lease ended by `sleep_until` alone ends 0–2 ms
//! after its instant (BENCHMARKS.md, `expiry_to_halt_us`). These threads
//! wait on a condition variable with the remaining time, which the kernel
//! keeps to its timer slack (50 µs by default); whichever wakes first wakes
//! the task ([`WAITERS`] says why two).
//!
//! A [`Deadline`] wakes its task once its instant has passed on the
//! process's real monotonic clock; it does not know tokio's paused test
//! clock, so it is only ever raced against the runtime's own timer, never
//! used alone. The threads start with the first deadline, hold a few
//! kilobytes each and no lock while they sleep; registering costs one lock
//! and a map insertion, and wakes the threads only when the new deadline
//! is the earliest.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// What the thread and the deadlines share.
struct Timers {
    state: Mutex<State>,
    /// Wakes the thread when a new deadline is the earliest.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Pending deadlines and the task each wakes, earliest first; the key's
    /// second half keeps two deadlines at one instant apart.
    pending: BTreeMap<(Instant, u64), Waker>,
    next_key: u64,
}

impl Timers {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single map operation: a panic elsewhere cannot
        // leave the map half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process's timers, their threads started on first use; `None`
    /// when no thread can be started (the runtime's timer then serves
    /// alone).
    fn get() -> Option<&'static Timers> {
        static TIMERS: OnceLock<Option<&'static Timers>> = OnceLock::new();
        *TIMERS.get_or_init(|| {
            let timers: &'static Timers = Box::leak(Box::new(Timers {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }));
            let cpus = waiter_cpus();
            let mut started = 0;
            for i in 0..cpus.len().max(1) {
                let cpu = cpus.get(i).copied();
                let spawned = std::thread::Builder::new()
                    .name("anima-deadlines".into())
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            pin_to(cpu);
                        }
                        timers.run()
                    });
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => tracing::warn!(error = %e, "cannot start a deadline thread"),
                }
            }
            if started == 0 {
                tracing::warn!("no deadline thread; lease ends follow the runtime's timer");
            }
            (started > 0).then_some(timers)
        })
    }

    /// A waiter thread: wakes every deadline that has passed, then sleeps
    /// until the earliest left (or until an earlier one is added). Both
    /// waiters sleep until the same instant; the first awake takes the
    /// entries, the other finds none due.
    fn run(&self) {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            while let Some(entry) = state.pending.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                entry.remove().wake();
            }
            state = match state.pending.first_key_value() {
                Some((&(at, _), _)) => {
                    self.changed
                        .wait_timeout(state, at.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// How many threads wait for the same deadlines, each on its own CPU.
///
/// A virtual machine's host may wake an idle vCPU late (on ours p99 about
/// 2 ms, at most 4.4 ms: BENCHMARKS.md, 2026-12-03 "eighth"); a second
/// waiter on another vCPU is late at the same instant far less often, and
/// whichever wakes first wakes the task (with one waiter, 7 of 800 leases
/// halted more than 2 ms late; with two, 1 and 2 of 800: "tenth"). The
/// other finds nothing due and sleeps again: one more thread wake-up per
/// deadline.
const WAITERS: usize = 2;

/// The CPUs the waiters are pinned to, one each, of those this process may
/// run on ([`spread`]); none (one waiter, unpinned) when it may run on only
/// one or the set cannot be read.
fn waiter_cpus() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        use rustix::thread::{CpuSet, sched_getaffinity};
        if let Ok(allowed) = sched_getaffinity(None) {
            let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
                .filter(|&cpu| allowed.is_set(cpu))
                .collect();
            return spread(&cpus, std::process::id() as usize);
        }
    }
    Vec::new()
}

/// [`WAITERS`] of `allowed`, as far apart in it as they can be, starting at
/// an index taken from `seed` (the process id), so that the module processes
/// of a larger machine do not all wait on its first CPUs; none when fewer
/// than two are allowed.
fn spread(allowed: &[usize], seed: usize) -> Vec<usize> {
    let n = allowed.len();
    if n < 2 {
        return Vec::new();
    }
    let mut cpus: Vec<usize> = (0..WAITERS.min(n))
        .map(|i| allowed[(seed + i * n / WAITERS.min(n)) % n])
        .collect();
    cpus.sort_unstable();
    cpus
}

/// Keeps the calling thread on `cpu`; left where it is if it cannot be.
fn pin_to(cpu: usize) {
    #[cfg(target_os = "linux")]
    {
        use rustix::thread::{CpuSet, sched_setaffinity};
        let mut only = CpuSet::new();
        only.set(cpu);
        if let Err(e) = sched_setaffinity(None, &only) {
            tracing::debug!(cpu, error = %e, "a deadline thread stays unpinned");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpu;
}

/// How long before an instant [`reached`] has its task woken. Waking a
/// thread on this machine takes 100–200 µs (the kernel's timer slack, then
/// the hop to a runtime worker); the task yields for the rest.
const LEAD: Duration = Duration::from_micros(500);

/// Completes at `at` on the real monotonic clock, within microseconds: the
/// deadline thread wakes the task [`LEAD`] before, and the task yields to
/// the runtime's other tasks until the instant (at most [`LEAD`] of one
/// worker's time, once per lease that runs out).
pub(crate) async fn reached(at: Instant) {
    Deadline::at(at.checked_sub(LEAD).unwrap_or(at)).await;
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// Completes once `at` has passed on the real monotonic clock (within the
/// kernel's timer slack), or never when the process has no deadline thread.
pub(crate) struct Deadline {
    at: Instant,
    /// The registration's key while registered (its instant is `at`).
    key: Option<(Instant, u64)>,
    timers: Option<&'static Timers>,
}

impl Deadline {
    pub(crate) fn at(at: Instant) -> Self {
        Deadline {
            at,
            key: None,
            timers: Timers::get(),
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(timers) = this.timers else {
            return Poll::Pending;
        };
        if Instant::now() >= this.at {
            this.deregister();
            return Poll::Ready(());
        }
        let mut state = timers.lock();
        // Still registered: keep the latest waker.
        if let Some(waker) = this.key.and_then(|key| state.pending.get_mut(&key)) {
            waker.clone_from(cx.waker());
            return Poll::Pending;
        }
        // Not yet registered, or woken before the clock read above saw the
        // instant: register (again).
        let key = (this.at, state.next_key);
        state.next_key = state.next_key.wrapping_add(1);
        let earliest = state
            .pending
            .first_key_value()
            .is_none_or(|(first, _)| key < *first);
        state.pending.insert(key, cx.waker().clone());
        this.key = Some(key);
        drop(state);
        if earliest {
            timers.changed.notify_all();
        }
        Poll::Pending
    }
}

impl Deadline {
    fn deregister(&mut self) {
        if let (Some(key), Some(timers)) = (self.key.take(), self.timers) {
            timers.lock().pending.remove(&key);
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.deregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waiters_are_pinned_to_distinct_cpus_the_process_may_use() {
        let cpus = waiter_cpus();
        assert!(cpus.len() <= WAITERS && cpus.len() != 1, "{cpus:?}");
        let mut distinct = cpus.clone();
        distinct.dedup();
        assert_eq!(distinct, cpus, "ascending and distinct");
        #[cfg(target_os = "linux")]
        {
            let allowed = rustix::thread::sched_getaffinity(None).expect("the affinity");
            assert!(cpus.iter().all(|&cpu| allowed.is_set(cpu)), "{cpus:?}");
            if allowed.count() >= 2 {
                assert_eq!(cpus.len(), WAITERS);
            }
        }
    }

    #[test]
    fn the_waiters_spread_half_the_allowed_cpus_apart_from_the_process_id() {
        assert_eq!(spread(&[], 7), Vec::<usize>::new());
        assert_eq!(spread(&[3], 7), Vec::<usize>::new(), "one CPU: unpinned");
        assert_eq!(spread(&[0, 1], 7), [0, 1]);
        assert_eq!(spread(&[0, 1], 8), [0, 1]);
        assert_eq!(spread(&[0, 1, 2], 0), [0, 1]);
        assert_eq!(spread(&[0, 1, 2, 3, 4, 5, 6, 7], 3), [3, 7]);
        assert_eq!(spread(&[0, 1, 2, 3, 4, 5, 6, 7], 6), [2, 6]);
        assert_eq!(
            spread(&[2, 5, 9, 11], 1),
            [5, 11],
            "of the allowed ones only"
        );
    }

    #[tokio::test]
    async fn a_deadline_completes_after_its_instant_and_not_before() {
        let at = Instant::now() + Duration::from_millis(5);
        Deadline::at(at).await;
        assert!(Instant::now() >= at);
    }

    #[tokio::test]
    async fn a_dropped_deadline_leaves_nothing_registered() {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut pending = Box::pin(Deadline::at(far));
        let woken = std::future::poll_fn(|cx| Poll::Ready(pending.as_mut().poll(cx))).await;
        assert!(woken.is_pending());
        let key = pending.key.expect("registered");
        let timers = Timers::get().expect("a deadline thread");
        assert!(timers.lock().pending.contains_key(&key));
        drop(pending);
        assert!(!timers.lock().pending.contains_key(&key));
    }

    #[tokio::test]
    async fn an_earlier_deadline_added_later_is_not_held_behind_a_later_one() {
        let later = Deadline::at(Instant::now() + Duration::from_secs(3600));
        let mut later = Box::pin(later);
        let _ = std::future::poll_fn(|cx| Poll::Ready(later.as_mut().poll(cx))).await;
        let soon = Instant::now() + Duration::from_millis(5);
        tokio::time::timeout(Duration::from_secs(5), Deadline::at(soon))
            .await
            .expect("the earlier deadline woke its task");
        assert!(Instant::now() >= soon);
    }
}
