//! The conformance probe, `anima.v1.Probe` (PROTOCOL.md §8), served by
//! [`ModuleServer::probe`](crate::ModuleServer::probe).
//!
//! A conformance tool cannot see inside a module it does not trust; the probe
//! makes what handlers did observable from outside. `Touch` counts its
//! execution first (`executions`), holds, and then commits one touch to the
//! calling lease's tenant state and to the module's `committed` counter,
//! atomically with the lease still being valid; `Read` reports the three
//! numbers. Both are ordinary capabilities behind the lease gate, so:
//!
//! - a call refused by the gate never moves `executions` (Z2);
//! - a `Touch` whose lease ends while it holds is answered `LEASE_EXPIRED` /
//!   `LEASE_REVOKED` and never moves `committed` (E6, R6);
//! - `touches` belong to one lease: invisible to the others, gone with it
//!   (S4, S9);
//! - `Watch`, a server stream committing one touch per reading, ends with the
//!   lease's reason when its lease ends and commits nothing afterwards
//!   (Z1, E6, R6 for streams).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anima_protocol::pb::probe_server::Probe;
use anima_protocol::pb::{ProbeReading, ReadRequest, TouchRequest, WatchRequest};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::context::LeaseContext;
use crate::interval::watch_interval;

/// The longest `Touch` hold, in milliseconds.
pub(crate) const MAX_HOLD_MS: u32 = 60_000;
/// The longest `Watch` interval, in milliseconds.
pub(crate) const MAX_EVERY_MS: u32 = 60_000;
/// The `Watch` interval when the request names none.
const DEFAULT_EVERY: Duration = Duration::from_millis(100);

/// The module-wide counters. One probe is served per module server, which
/// is one per module process: these count since the process started.
#[derive(Debug, Default)]
struct Counters {
    /// `Touch` handler bodies entered, under any lease.
    executions: AtomicU64,
    /// Touches committed, under any lease.
    committed: AtomicU64,
}

/// One lease's touches: its tenant state (private type, so no other
/// handler's state can collide with it).
#[derive(Debug, Default)]
struct Touches(u64);

/// The probe service.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProbeService {
    counters: Arc<Counters>,
}

impl ProbeService {
    fn reading(&self, touches: u64) -> ProbeReading {
        ProbeReading {
            touches,
            executions: self.counters.executions.load(Ordering::SeqCst),
            committed: self.counters.committed.load(Ordering::SeqCst),
        }
    }

    /// Commits one touch: `lease`'s touches and the module's count move
    /// together, only while the lease is valid (it cannot end meanwhile).
    /// The lease's touches since it began.
    fn commit_touch(&self, lease: &LeaseContext) -> Result<u64, Status> {
        let committed = &self.counters.committed;
        lease.with_state(|touches: &mut Touches| {
            touches.0 += 1;
            committed.fetch_add(1, Ordering::SeqCst);
            touches.0
        })
    }
}

/// `Watch`'s response stream: one committed touch per reading, produced
/// only when polled.
struct Watcher {
    probe: ProbeService,
    lease: Option<LeaseContext>,
    interval: tokio::time::Interval,
    left: Option<u32>,
}

impl Stream for Watcher {
    type Item = Result<ProbeReading, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == Some(0) {
            return Poll::Ready(None);
        }
        if self.interval.poll_tick(cx).is_pending() {
            return Poll::Pending;
        }
        if let Some(left) = self.left.as_mut() {
            *left -= 1;
        }
        let Some(lease) = self.lease.as_ref() else {
            // No lease to commit to (the `unleased-exec` test fault).
            return Poll::Ready(Some(Ok(self.probe.reading(0))));
        };
        // Commit only under a valid lease; send the reading either way, so a
        // stream the gate fails to cut off shows up on the wire.
        let touches = self.probe.commit_touch(lease).unwrap_or(0);
        Poll::Ready(Some(Ok(self.probe.reading(touches))))
    }
}

#[tonic::async_trait]
impl Probe for ProbeService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<ProbeReading, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.counters.executions.fetch_add(1, Ordering::SeqCst);
        let WatchRequest { every_ms, count } = *request.get_ref();
        Ok(Response::new(Box::pin(Watcher {
            probe: self.clone(),
            lease: LeaseContext::of(&request).cloned(),
            interval: watch_interval(every_ms, DEFAULT_EVERY, MAX_EVERY_MS)?,
            left: (count > 0).then_some(count),
        })))
    }

    async fn touch(
        &self,
        request: Request<TouchRequest>,
    ) -> Result<Response<ProbeReading>, Status> {
        // The handler body's first act: whatever happens next, it ran.
        self.counters.executions.fetch_add(1, Ordering::SeqCst);
        let hold_ms = request.get_ref().hold_ms;
        if hold_ms > MAX_HOLD_MS {
            return Err(Status::invalid_argument(format!(
                "hold_ms is {hold_ms}; the limit is {MAX_HOLD_MS}"
            )));
        }
        let hold = Duration::from_millis(hold_ms.into());
        let Some(lease) = LeaseContext::of(&request) else {
            // Only a module whose gate lets calls through without a lease
            // gets here (the `unleased-exec` test fault): there is no lease
            // to commit to, so nothing is committed.
            tokio::time::sleep(hold).await;
            return Ok(Response::new(self.reading(0)));
        };
        tokio::select! {
            biased;
            _ = lease.ended() => return Err(lease.end_status()),
            _ = tokio::time::sleep(hold) => {}
        }
        let touches = self.commit_touch(lease)?;
        Ok(Response::new(self.reading(touches)))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ProbeReading>, Status> {
        let touches = match LeaseContext::of(&request) {
            Some(lease) => lease.with_state(|touches: &mut Touches| touches.0)?,
            // Only without a lease gate (the `unleased-exec` test fault).
            None => 0,
        };
        Ok(Response::new(self.reading(touches)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anima_protocol::lease::{LeaseError, Reason, reason_of};
    use anima_protocol::pb::probe_client::ProbeClient;
    use anima_protocol::pb::{ProbeReading, ReadRequest, TouchRequest};
    use tokio::sync::broadcast;

    use super::{MAX_EVERY_MS, MAX_HOLD_MS};
    use crate::testing::{FakeLease, ServedModule, TestBed};
    use crate::{Contract, Exit, LeaseEvent, ModuleServer, SdkError};

    const TOUCH: &str = "/anima.v1.Probe/Touch";
    const READ: &str = "/anima.v1.Probe/Read";
    const WATCH: &str = "/anima.v1.Probe/Watch";
    const CORE_A: &str = "urn:anima:core:a";
    const CORE_B: &str = "urn:anima:core:b";
    const TTL: Duration = Duration::from_secs(10);
    const PATIENCE: Duration = Duration::from_secs(10);

    fn contract(methods: &[&str], extra: &str) -> Contract {
        let methods: Vec<String> = methods.iter().map(|m| format!("{m:?}")).collect();
        Contract::from_toml(&format!(
            "urn = \"urn:anima:module:probed\"\nversion = \"1\"\nmax_lease = \"30s\"\n\
             methods = [{}]\n{extra}",
            methods.join(", ")
        ))
        .unwrap()
    }

    const SHARED: &str = "type = \"resident-shared\"";
    /// A Type I module that exits 100 ms after its last lease.
    const TYPE_I: &str = "termination_window = \"100ms\"";

    /// A test bed for a module declaring the probe's methods and `extra`.
    fn probed(extra: &str) -> TestBed {
        TestBed::new(contract(&[TOUCH, READ, WATCH], extra)).unwrap()
    }

    async fn serve(bed: &TestBed, configure: fn(ModuleServer) -> ModuleServer) -> ServedModule {
        bed.serve(|m| configure(m.probe())).await.unwrap()
    }

    async fn touch(lease: &FakeLease, hold_ms: u32) -> Result<ProbeReading, tonic::Status> {
        ProbeClient::new(lease.channel())
            .touch(TouchRequest { hold_ms })
            .await
            .map(|r| r.into_inner())
    }

    async fn read(lease: &FakeLease) -> ProbeReading {
        ProbeClient::new(lease.channel())
            .read(ReadRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    fn reading(touches: u64, executions: u64, committed: u64) -> ProbeReading {
        ProbeReading {
            touches,
            executions,
            committed,
        }
    }

    #[tokio::test]
    async fn z1_watch_commits_one_touch_per_reading_and_ends_with_its_lease() {
        let bed = probed(SHARED);
        let served = serve(&bed, |m| m).await;
        let a = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
        let mut stream = ProbeClient::new(a.channel())
            .watch(anima_protocol::pb::WatchRequest {
                every_ms: 5,
                count: 0,
            })
            .await
            .unwrap()
            .into_inner();
        for n in 1..=3 {
            let r = stream.message().await.unwrap().unwrap();
            assert_eq!((r.touches, r.executions), (n, 1));
        }
        a.revoke().await.unwrap();
        let mut seen = 3;
        let status = loop {
            match tokio::time::timeout(PATIENCE, stream.message())
                .await
                .unwrap()
            {
                Ok(Some(_)) => seen += 1,
                Ok(None) => panic!("the stream ended OK after its lease was revoked"),
                Err(status) => break status,
            }
        };
        assert_eq!(reason_of(&status), Some(Reason::LeaseRevoked));
        let b = bed.core(CORE_B).unwrap().lease(&served, TTL).await.unwrap();
        let after = read(&b).await;
        assert_eq!(after.executions, 1);
        // One reading may have been committed, then dropped with its lease.
        assert!(
            (seen..=seen + 1).contains(&after.committed),
            "{} committed, {seen} readings seen",
            after.committed
        );
        let c = ProbeClient::new(b.channel())
            .watch(anima_protocol::pb::WatchRequest {
                every_ms: MAX_EVERY_MS + 1,
                count: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(c.code(), tonic::Code::InvalidArgument);
    }

    /// Waits until the module reports `lease` ended.
    async fn ended(events: &mut broadcast::Receiver<LeaseEvent>, lease: &FakeLease) {
        let id = lease.id();
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let LeaseEvent::Ended { lease_id, .. } = events.recv().await.unwrap()
                    && lease_id == id
                {
                    return;
                }
            }
        })
        .await
        .expect("the lease ended");
    }

    fn is_lease_end(status: &tonic::Status) -> bool {
        matches!(
            reason_of(status),
            Some(Reason::LeaseExpired | Reason::LeaseRevoked)
        )
    }

    #[tokio::test]
    async fn s4_touches_are_per_lease_and_the_counters_per_process() {
        let bed = probed(SHARED);
        // A module serving only the probe needs no descriptor set of its own;
        // asking for the probe twice serves it once.
        let served = serve(&bed, ModuleServer::probe).await;
        let a = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
        assert_eq!(read(&a).await, reading(0, 0, 0));
        assert_eq!(touch(&a, 0).await.unwrap(), reading(1, 1, 1));
        assert_eq!(touch(&a, 1).await.unwrap(), reading(2, 2, 2));

        let b = bed.core(CORE_B).unwrap().lease(&served, TTL).await.unwrap();
        assert_eq!(
            read(&b).await,
            reading(0, 2, 2),
            "B sees none of A's touches"
        );
        assert_eq!(touch(&b, 0).await.unwrap(), reading(1, 3, 3));
        assert_eq!(read(&a).await, reading(2, 3, 3));

        // Too long a hold: refused, but the body ran (it counts first).
        let err = touch(&b, MAX_HOLD_MS + 1).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(reason_of(&err), None);
        assert_eq!(read(&b).await, reading(1, 4, 3));
    }

    #[tokio::test]
    async fn e6_z2_a_touch_halted_by_its_lease_ending_commits_nothing() {
        let bed = probed(SHARED);
        let served = serve(&bed, |m| m).await;
        let mut events = served.handle.events();
        let core = bed.core(CORE_A).unwrap();
        let a = core.lease(&served, TTL).await.unwrap();
        assert_eq!(touch(&a, 0).await.unwrap(), reading(1, 1, 1));

        let mut client = ProbeClient::new(a.channel());
        let held =
            tokio::spawn(async move { client.touch(TouchRequest { hold_ms: 30_000 }).await });
        tokio::time::timeout(PATIENCE, async {
            while read(&a).await.executions < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the held touch started");
        a.expire().await.unwrap();
        let err = tokio::time::timeout(PATIENCE, held)
            .await
            .expect("halted at once")
            .unwrap()
            .unwrap_err();
        assert!(is_lease_end(&err), "{err:?}");
        ended(&mut events, &a).await;

        // After the end, calls are refused before the handler: nothing runs.
        let err = touch(&a, 0).await.unwrap_err();
        assert!(is_lease_end(&err), "{err:?}");

        let again = core.lease(&served, TTL).await.unwrap();
        assert_eq!(
            read(&again).await,
            reading(0, 2, 1),
            "touches died with the lease; the halted touch committed nothing; \
             the refused call never ran"
        );
    }

    #[tokio::test]
    async fn i2_probe_methods_are_checked_against_the_contract() {
        // Served but not declared.
        let bed = TestBed::new(contract(&[TOUCH], SHARED)).unwrap();
        let served = serve(&bed, |m| m).await;
        let err = served.exited(PATIENCE).await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("served but not declared: {READ}")),
            "{err}"
        );

        // Declared but not served.
        let bed = TestBed::new(contract(&[TOUCH, READ, WATCH, "/x.y.Z/Call"], SHARED)).unwrap();
        let served = serve(&bed, |m| m).await;
        let err = served.exited(PATIENCE).await.unwrap_err();
        assert!(matches!(err, SdkError::MethodMismatch(_)), "{err}");
        assert!(
            err.to_string()
                .contains("declared but not served: /x.y.Z/Call"),
            "{err}"
        );

        // Declared, and not served at all.
        let bed = probed(SHARED);
        let served = bed.serve(|m| m).await.unwrap();
        assert!(served.exited(PATIENCE).await.is_err());
    }

    #[tokio::test]
    async fn e2_type_i_probe_module_takes_only_its_core_and_exits() {
        let bed = probed(TYPE_I);
        let served = serve(&bed, |m| m.bind_core(CORE_A.parse().unwrap())).await;
        let refused = bed.core(CORE_B).unwrap().lease(&served, TTL).await;
        assert!(
            matches!(
                refused,
                Err(SdkError::Signer(LeaseError::Refused {
                    reason: Reason::WrongCore,
                    ..
                }))
            ),
            "{:?}",
            refused.err()
        );
        let a = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
        assert_eq!(touch(&a, 0).await.unwrap(), reading(1, 1, 1));
        a.expire().await.unwrap();
        assert_eq!(served.exited(PATIENCE).await.unwrap(), Exit::LeaseEnded);
    }

    /// The test-only faults (the `tests/faulty` copy): each one is seen
    /// through the probe exactly where the rule it breaks is checked.
    #[cfg(anima_test_faults)]
    mod faults {
        use super::*;
        use crate::fault::Fault;
        use crate::{ModuleServer, Phase};

        fn inject(fault: Fault) -> impl FnOnce(ModuleServer) -> ModuleServer {
            move |m| m.probe().inject_fault(fault)
        }

        /// A probe module with `fault` and the contract's `extra` served on a
        /// new test bed, and its lease events.
        async fn faulty(
            fault: Fault,
            extra: &str,
        ) -> (TestBed, ServedModule, broadcast::Receiver<LeaseEvent>) {
            let bed = probed(extra);
            let served = bed.serve(inject(fault)).await.unwrap();
            let events = served.handle.events();
            (bed, served, events)
        }

        #[tokio::test]
        async fn z2_fault_unleased_exec_runs_touch_without_a_lease() {
            let (bed, served, mut events) = faulty(Fault::UnleasedExec, SHARED).await;
            let core = bed.core(CORE_A).unwrap();
            let a = core.lease(&served, TTL).await.unwrap();
            a.expire().await.unwrap();
            ended(&mut events, &a).await;
            // Admitted with no valid lease: the body runs, nothing commits.
            assert_eq!(touch(&a, 0).await.unwrap(), reading(0, 1, 0));
            let b = core.lease(&served, TTL).await.unwrap();
            assert_eq!(
                read(&b).await,
                reading(0, 1, 0),
                "an execution without a lease"
            );
        }

        #[tokio::test]
        async fn s4_s9_fault_shared_tenant_leaks_and_keeps_touches() {
            let (bed, served, mut events) = faulty(Fault::SharedTenant, SHARED).await;
            let a = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
            assert_eq!(touch(&a, 0).await.unwrap(), reading(1, 1, 1));
            assert_eq!(touch(&a, 0).await.unwrap(), reading(2, 2, 2));
            let b = bed.core(CORE_B).unwrap().lease(&served, TTL).await.unwrap();
            assert_eq!(read(&b).await.touches, 2, "B sees A's touches");
            a.expire().await.unwrap();
            b.revoke().await.unwrap();
            ended(&mut events, &a).await;
            let c = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
            assert_eq!(read(&c).await.touches, 2, "kept beyond the lease");
        }

        #[tokio::test]
        async fn e2_r2_fault_second_core_accepts_another_core() {
            for ty in ["", "type = \"resident-private\"\ninit = \"pre-started\""] {
                let bed = probed(ty);
                let served = bed
                    .serve(|m| inject(Fault::SecondCore)(m).bind_core(CORE_A.parse().unwrap()))
                    .await
                    .unwrap();
                let a = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
                let b = bed.core(CORE_B).unwrap().lease(&served, TTL).await.unwrap();
                assert_eq!(touch(&b, 0).await.unwrap(), reading(1, 1, 1), "{ty}");
                assert_eq!(read(&a).await, reading(0, 1, 1), "{ty}");
            }
        }

        #[tokio::test]
        async fn e5_fault_linger_keeps_a_type_i_module_running() {
            let (bed, served, mut events) = faulty(Fault::Linger, TYPE_I).await;
            let a = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
            a.expire().await.unwrap();
            ended(&mut events, &a).await;
            assert!(
                served.exited(Duration::from_secs(2)).await.is_err(),
                "still running well past its termination window"
            );
            assert_eq!(*served.handle.phase().borrow(), Phase::ExpiredGrace);
            // And still serving: its Core may lease it again.
            let again = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
            assert_eq!(touch(&again, 0).await.unwrap(), reading(1, 1, 1));
        }
    }
}
