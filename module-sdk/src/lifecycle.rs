//! Module lifecycles (ADR-0003 §5–§6), enforced for every module.
//!
//! - **Type I (ephemeral).** No lease within the startup grace → exit. After
//!   the last lease ends: the expired grace (only the same Core may lease
//!   again), then the termination window, in which the cleanup hook runs; then
//!   the process exits by itself.
//! - **Type II (resident private).** Zero-lease → standby: the process and its
//!   caches stay, calls are refused with `STANDBY`, and only its Core may lease
//!   it again. It ends only on an explicit shutdown (its Core or an operator)
//!   or a signal.
//! - **Type III (resident shared).** Leases are per Core; standby when none
//!   are left; ends only on an operator's shutdown or a signal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leases::ModuleState;
use anima_protocol::contract::ModuleType;

/// Where a module is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started; no lease yet (the startup grace runs).
    AwaitingLease,
    /// At least one valid lease.
    Leased,
    /// Type I: the lease ended; only the same Core may lease again.
    ExpiredGrace,
    /// Type I: cleaning up before exiting; no new lease is granted.
    Terminating,
    /// Type II/III: no lease; alive, refusing calls.
    Standby,
}

anima_protocol::str_vocabulary! {
    /// The phase's name on the wire (`ModuleStatus.phase`).
    pub fn Phase::as_str {
        AwaitingLease => "awaiting-lease",
        Leased => "leased",
        ExpiredGrace => "expired-grace",
        Terminating => "terminating",
        Standby => "standby",
    }
}

/// Why [`crate::ModuleServer::serve`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// Type I: the lease ended and the termination window passed.
    LeaseEnded,
    /// Type I: no lease arrived within the startup grace.
    StartupGraceElapsed,
    /// An explicit shutdown through `ModuleAdmin/Shutdown`.
    ShutdownRequested {
        /// Who asked.
        by: String,
    },
    /// The caller's shutdown future completed (e.g. a signal).
    Stopped,
}

impl Exit {
    /// The process exit status this exit maps to: 0, except 3 for an elapsed
    /// startup grace (nobody came).
    pub fn code(&self) -> u8 {
        match self {
            Exit::StartupGraceElapsed => 3,
            _ => 0,
        }
    }
}

/// A module's cleanup hook (Type I termination window).
pub(crate) type CleanupHook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The hook, taken by whoever runs it first: the lifecycle (zero-lease) or
/// the server on its way out (shutdown, signal).
pub(crate) type SharedCleanup = Arc<std::sync::Mutex<Option<CleanupHook>>>;

/// Runs the hook if nobody has yet, within `window`.
pub(crate) async fn cleanup_once(hook: &SharedCleanup, window: Duration) {
    let taken = hook.lock().unwrap_or_else(|p| p.into_inner()).take();
    run_cleanup(taken, window).await;
}

/// Runs the lifecycle until the module must stop; sets the exit and fires
/// `stop`.
pub(crate) async fn run(state: Arc<ModuleState>, stop: CancellationToken, cleanup: SharedCleanup) {
    let exit = match state.contract.module_type {
        ModuleType::Ephemeral => ephemeral(&state, &stop, cleanup).await,
        ModuleType::ResidentPrivate(_) | ModuleType::ResidentShared => {
            resident(&state, &stop).await
        }
    };
    if let Some(exit) = exit {
        state.set_exit(exit);
        stop.cancel();
    }
}

/// Waits until `active` satisfies `want`, for at most `limit`; true if it did.
async fn wait_for(
    active: &mut watch::Receiver<usize>,
    stop: &CancellationToken,
    limit: Option<Duration>,
    want: impl Fn(usize) -> bool,
) -> Option<bool> {
    let wait = async {
        let _ = active.wait_for(|n| want(*n)).await;
    };
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        _ = wait => Some(true),
        _ = sleep_or_forever(limit) => Some(false),
    }
}

async fn sleep_or_forever(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn ephemeral(
    state: &ModuleState,
    stop: &CancellationToken,
    cleanup: SharedCleanup,
) -> Option<Exit> {
    let contract = &state.contract;
    let mut active = state.active();
    state.set_phase(Phase::AwaitingLease);
    if !wait_for(&mut active, stop, Some(contract.startup_grace), |n| n > 0).await? {
        tracing::warn!(
            grace_ms = contract.startup_grace.as_millis() as u64,
            "no lease within the startup grace; exiting"
        );
        state.set_phase(Phase::Terminating);
        cleanup_once(&cleanup, contract.termination_window).await;
        return Some(Exit::StartupGraceElapsed);
    }
    loop {
        state.set_phase(Phase::Leased);
        wait_for(&mut active, stop, None, |n| n == 0).await?;
        // Zero-lease. The optional grace: only the same Core may lease again
        // (Type I is bound to its launching Core).
        state.set_phase(Phase::ExpiredGrace);
        tracing::info!(
            grace_ms = contract.expired_grace.as_millis() as u64,
            "zero-lease: expired-lease grace"
        );
        if !contract.expired_grace.is_zero()
            && wait_for(&mut active, stop, Some(contract.expired_grace), |n| n > 0).await?
        {
            continue;
        }
        #[cfg(anima_test_faults)]
        if state.faults.is(crate::fault::Fault::Linger) {
            tracing::warn!("FAULT INJECTION (linger): zero-lease, but not terminating");
            wait_for(&mut active, stop, None, |n| n > 0).await?;
            continue;
        }
        break;
    }
    state.set_phase(Phase::Terminating);
    tracing::info!(
        window_ms = contract.termination_window.as_millis() as u64,
        "zero-lease: graceful termination"
    );
    cleanup_once(&cleanup, contract.termination_window).await;
    Some(Exit::LeaseEnded)
}

async fn run_cleanup(cleanup: Option<CleanupHook>, window: Duration) {
    let Some(hook) = cleanup else { return };
    if tokio::time::timeout(window, hook()).await.is_err() {
        tracing::warn!(
            window_ms = window.as_millis() as u64,
            "cleanup did not finish within the termination window"
        );
    }
}

async fn resident(state: &ModuleState, stop: &CancellationToken) -> Option<Exit> {
    let mut active = state.active();
    state.set_phase(Phase::AwaitingLease);
    wait_for(&mut active, stop, None, |n| n > 0).await?;
    loop {
        state.set_phase(Phase::Leased);
        wait_for(&mut active, stop, None, |n| n == 0).await?;
        state.set_phase(Phase::Standby);
        tracing::info!("zero-lease: standby");
        wait_for(&mut active, stop, None, |n| n > 0).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use anima_protocol::lease::LeaseSigner;
    use anima_protocol::transport::Fingerprint;

    use super::*;
    use anima_protocol::contract::Contract;

    fn state(extra: &str) -> Arc<ModuleState> {
        let contract = Contract::from_toml(&format!(
            "urn = \"urn:anima:module:m\"\nversion = \"1\"\nmethods = [\"/m.M/X\"]\nmax_lease = \"30s\"\n{extra}"
        ))
        .unwrap();
        let signer = LeaseSigner::from_parts([1; 32], contract.urn.clone(), Fingerprint([0; 32]));
        Arc::new(ModuleState::new(contract, signer, None, Vec::new()))
    }

    fn hook(flag: Arc<AtomicBool>) -> SharedCleanup {
        let hook: CleanupHook = Box::new(move || {
            Box::pin(async move {
                flag.store(true, Ordering::SeqCst);
            })
        });
        Arc::new(std::sync::Mutex::new(Some(hook)))
    }

    /// Runs the lifecycle of a module whose contract adds `extra`, in a task.
    fn start(
        extra: &str,
        cleanup: SharedCleanup,
    ) -> (
        Arc<ModuleState>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let s = state(extra);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(s.clone(), stop.clone(), cleanup));
        (s, stop, task)
    }

    /// Sets the number of active leases to `active`, lets `wait` pass, and
    /// returns the phase then.
    async fn phase_after(s: &ModuleState, active: usize, wait: Duration) -> Phase {
        s.set_active_for_test(active);
        tokio::time::sleep(wait).await;
        s.phase()
    }

    #[tokio::test(start_paused = true)]
    async fn e1_startup_grace_is_exact() {
        let cleaned = Arc::new(AtomicBool::new(false));
        let (s, stop, task) = start("startup_grace = \"10s\"", hook(cleaned.clone()));
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        assert!(
            !stop.is_cancelled(),
            "still waiting just before the grace ends"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        task.await.unwrap();
        assert!(stop.is_cancelled());
        assert_eq!(s.take_exit(), Some(Exit::StartupGraceElapsed));
        assert!(cleaned.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn e3_e4_expired_grace_then_termination_window() {
        let cleaned = Arc::new(AtomicBool::new(false));
        let (s, stop, task) = start(
            "expired_grace = \"5s\"\ntermination_window = \"2s\"",
            hook(cleaned.clone()),
        );
        let leased = phase_after(&s, 1, Duration::from_secs(60)).await;
        assert_eq!(leased, Phase::Leased);
        // Zero-lease; the same Core comes back within the grace.
        let zero = phase_after(&s, 0, Duration::from_secs(3)).await;
        assert_eq!(zero, Phase::ExpiredGrace);
        let back = phase_after(&s, 1, Duration::from_secs(10)).await;
        assert_eq!(back, Phase::Leased);
        assert!(!stop.is_cancelled());
        // Zero-lease again, and nobody comes: exactly 5 s of grace.
        let zero = phase_after(&s, 0, Duration::from_millis(4_999)).await;
        assert_eq!(zero, Phase::ExpiredGrace);
        tokio::time::sleep(Duration::from_millis(2)).await;
        task.await.unwrap();
        assert!(cleaned.load(Ordering::SeqCst));
        assert_eq!(s.take_exit(), Some(Exit::LeaseEnded));
    }

    #[tokio::test(start_paused = true)]
    async fn e4_cleanup_is_bounded_by_the_termination_window() {
        let slow: CleanupHook =
            Box::new(|| Box::pin(async { tokio::time::sleep(Duration::from_secs(3600)).await }));
        let slow: SharedCleanup = Arc::new(std::sync::Mutex::new(Some(slow)));
        let (s, _stop, task) = start("termination_window = \"2s\"", slow);
        phase_after(&s, 1, Duration::from_secs(1)).await;
        s.set_active_for_test(0);
        let started = tokio::time::Instant::now();
        task.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(s.take_exit(), Some(Exit::LeaseEnded));
    }

    #[tokio::test(start_paused = true)]
    async fn r3_s6_residents_go_to_standby_and_never_exit_by_themselves() {
        for ty in [
            "type = \"resident-private\"\ninit = \"pre-started\"",
            "type = \"resident-shared\"",
        ] {
            let (s, stop, task) = start(ty, SharedCleanup::default());
            tokio::time::sleep(Duration::from_secs(3600)).await;
            assert_eq!(s.phase(), Phase::AwaitingLease);
            let two = phase_after(&s, 2, Duration::from_millis(1)).await;
            assert_eq!(two, Phase::Leased);
            let one = phase_after(&s, 1, Duration::from_millis(1)).await;
            assert_eq!(one, Phase::Leased, "one lease left is still leased");
            let none = phase_after(&s, 0, Duration::from_secs(3600)).await;
            assert_eq!(none, Phase::Standby);
            assert!(!stop.is_cancelled());
            stop.cancel();
            task.await.unwrap();
            assert_eq!(s.take_exit(), None);
        }
    }
}
