//! The control task on tokio's paused clock: renewal timing, retries, late
//! answers, expiry, connection loss and the module's own steps. The module is
//! played in-process with the protocol crate's pure module-side functions, on
//! channels instead of a connection, so every instant is exact.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use anima_protocol::SystemClock;
use anima_protocol::lease::doc_support::pair;
use anima_protocol::lease::{
    self, EndedBy, Entropy, GrantPolicy, Lease, LeaseRequest, LeaseSigner, LeaseState, Reason,
    Scope,
};
use anima_protocol::pb::{ControlFrame, SignedToken, control_frame::Frame};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{Command, LinkShared, RenewalPolicy, spawn_control};
use crate::audit::{Actor, AuditEvent, AuditLog};
use crate::lease::LeaseTable;

const SAY: &str = "/test.Echo/Say";

/// The module's end of a link whose control task runs on channels.
struct Module {
    signer: LeaseSigner,
    lease: Lease,
    /// What the Core sends.
    from_core: mpsc::Receiver<ControlFrame>,
    /// What the module sends (dropped: the connection is lost).
    to_core: Option<mpsc::Sender<Result<ControlFrame, Status>>>,
}

struct Link {
    shared: Arc<LinkShared>,
    commands: Option<mpsc::Sender<Command>>,
    state: watch::Receiver<LeaseState>,
    audit: AuditLog,
    started: Instant,
}

/// Opens a lease of `ttl` by the pure handshake and starts the Core's
/// control task on it with `policy`.
fn start(ttl: Duration, policy: RenewalPolicy) -> (Link, Module) {
    let (core, module, core_sees, module_sees) = pair();
    let started = Instant::now();
    let wall = SystemTime::now();
    let scope = Scope::new([SAY]).unwrap();
    let request = LeaseRequest {
        scope: scope.clone(),
        ttl,
    };
    let (offer, pending) = lease::offer(
        &core,
        &core_sees,
        request,
        Entropy::system().unwrap(),
        started.into_std(),
        wall,
    )
    .unwrap();
    let policy_of_module = GrantPolicy {
        declared: scope,
        max_ttl: Duration::from_secs(3600),
    };
    let (grant, module_lease) = lease::grant(
        &module,
        &module_sees,
        &offer,
        &policy_of_module,
        Entropy::system().unwrap(),
        started.into_std(),
        wall,
    )
    .unwrap();
    let core_lease = pending.accept(&core, &grant, wall).unwrap();
    let (outbound, from_core) = mpsc::channel(32);
    let (to_core, inbound) = mpsc::channel(32);
    let audit = AuditLog::memory();
    let shared = Arc::new(LinkShared {
        id: core_lease.id(),
        module: module.urn().clone(),
        core: core.urn().clone(),
        lease: Mutex::new(core_lease),
        seq: AtomicU64::new(1),
        ended: CancellationToken::new(),
        outbound: Mutex::new(Some(outbound)),
        signer: Arc::new(core),
        audit: audit.clone(),
        table: LeaseTable::new(),
        clock: Arc::new(SystemClock),
        calls: Arc::default(),
        certificates_expire: None,
    });
    let (commands, state) = spawn_control(shared.clone(), ReceiverStream::new(inbound), policy);
    (
        Link {
            shared,
            commands: Some(commands),
            state,
            audit,
            started,
        },
        Module {
            signer: module,
            lease: module_lease,
            from_core,
            to_core: Some(to_core),
        },
    )
}

/// A policy with no jitter, so the renewal instant is exact.
fn exact(ttl: Duration) -> RenewalPolicy {
    RenewalPolicy {
        jitter: 0.0,
        ..RenewalPolicy::new(ttl)
    }
}

/// An exact policy that asks again 300 ms after an unanswered renewal.
fn retrying(ttl: Duration) -> RenewalPolicy {
    RenewalPolicy {
        retry_after: Duration::from_millis(300),
        ..exact(ttl)
    }
}

impl Module {
    /// The next frame from the Core and when it came.
    async fn next(&mut self) -> (Frame, Instant) {
        let frame = self
            .from_core
            .recv()
            .await
            .expect("the Core's half is open");
        (frame.frame.expect("a frame"), Instant::now())
    }

    /// The next frame, which must be a renewal request: its token.
    async fn renewal(&mut self) -> (String, Instant) {
        match self.next().await {
            (Frame::Renew(SignedToken { jws }), at) => (jws, at),
            (other, _) => panic!("expected a renewal, got {other:?}"),
        }
    }

    /// Answers the renewal request `jws`.
    async fn grant_renewal(&mut self, jws: &str) {
        let claims = self.lease.receive(jws).unwrap();
        let now = Instant::now().into_std();
        let answer = self
            .lease
            .answer_renew(&claims, now, SystemTime::now())
            .unwrap();
        self.send(Frame::Renewed(SignedToken { jws: answer })).await;
    }

    async fn send(&self, frame: Frame) {
        let to_core = self.to_core.as_ref().expect("connected");
        to_core
            .send(Ok(ControlFrame { frame: Some(frame) }))
            .await
            .unwrap();
    }
}

impl Link {
    /// Waits for the lease to end and returns how.
    async fn ended(&mut self) -> LeaseState {
        self.shared.ended.cancelled().await;
        // The task publishes the final state just after the end.
        self.state.changed().await.unwrap();
        self.state.borrow().clone()
    }

    fn since_start(&self, at: Instant) -> Duration {
        at - self.started
    }

    fn audited(&self, event: AuditEvent) -> Vec<(Actor, Option<Reason>)> {
        self.audit
            .records()
            .into_iter()
            .filter(|r| r.event == event)
            .map(|r| (r.actor, r.reason))
            .collect()
    }
}

fn ended_with(state: &LeaseState, reason: Reason, by: EndedBy) {
    match state {
        LeaseState::Ended(e) => {
            assert_eq!(e.reason, reason, "{state:?}");
            assert_eq!(e.by, by, "{state:?}");
        }
        other => panic!("expected an end by {reason}, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn renews_when_a_third_of_the_ttl_is_left_and_runs_on() {
    let ttl = Duration::from_secs(3);
    let (link, mut module) = start(ttl, exact(ttl));
    let (jws, at) = module.renewal().await;
    assert_eq!(link.since_start(at), Duration::from_secs(2));
    module.grant_renewal(&jws).await;
    // The next renewal comes a TTL after the first request, less a third.
    let (_, at) = module.renewal().await;
    assert_eq!(link.since_start(at), Duration::from_secs(4));
    assert_eq!(link.shared.lock().renewals(), 1);
    // The Core's lease runs from when it sent the request (2 s + 3 s).
    let expires = link.shared.lock().expires_at();
    assert_eq!(expires - link.started.into_std(), Duration::from_secs(5));
    assert_eq!(link.audited(AuditEvent::Renewed), [(Actor::Module, None)]);
}

#[tokio::test(start_paused = true)]
async fn jitter_moves_the_renewal_earlier_by_at_most_its_share_of_the_ttl() {
    let ttl = Duration::from_secs(10);
    let policy = RenewalPolicy {
        jitter: 0.05,
        ..RenewalPolicy::new(ttl)
    };
    let (link, mut module) = start(ttl, policy);
    let (_, at) = module.renewal().await;
    let at = link.since_start(at);
    let third_left = ttl - ttl / 3;
    assert!(at <= third_left, "renewed at {at:?}");
    assert!(at >= third_left - ttl.mul_f64(0.05), "renewed at {at:?}");
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_renewal_is_asked_again_until_the_lease_expires() {
    let ttl = Duration::from_secs(3);
    let (mut link, mut module) = start(ttl, retrying(ttl));
    let mut asked = Vec::new();
    for _ in 0..4 {
        let (_, at) = module.renewal().await;
        asked.push(link.since_start(at).as_millis());
    }
    assert_eq!(asked, [2000, 2300, 2600, 2900]);
    let state = link.ended().await;
    assert_eq!(link.since_start(Instant::now()), ttl);
    ended_with(&state, Reason::LeaseExpired, EndedBy::Circumstance);
    assert_eq!(
        link.audited(AuditEvent::Expired),
        [(Actor::Clock, Some(Reason::LeaseExpired))]
    );
    assert!(link.shared.proof_for(SAY).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_to_an_abandoned_renewal_renews_and_the_new_one_counts_too() {
    let ttl = Duration::from_secs(3);
    let (link, mut module) = start(ttl, retrying(ttl));
    let (first, _) = module.renewal().await;
    let (second, _) = module.renewal().await;
    // The answer to the first request arrives after the Core asked again:
    // it renews from when the first was sent (2 s + 3 s), and the second
    // is still awaited.
    module.grant_renewal(&first).await;
    module.grant_renewal(&second).await;
    let (_, at) = module.renewal().await;
    // Then the second's: from when it was sent (2.3 s + 3 s - 1 s).
    assert_eq!(link.since_start(at), Duration::from_millis(4300));
    assert_eq!(link.shared.lock().renewals(), 2);
    assert_eq!(link.audited(AuditEvent::Renewed).len(), 2);
    assert!(link.shared.proof_for(SAY).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_lease_whose_every_answer_comes_after_the_retry_is_kept() {
    let ttl = Duration::from_secs(3);
    let (link, mut module) = start(ttl, retrying(ttl));
    for _ in 0..3 {
        // Each answer comes only after the Core has asked again.
        let (late, _) = module.renewal().await;
        let (retry, _) = module.renewal().await;
        module.grant_renewal(&late).await;
        module.grant_renewal(&retry).await;
    }
    // The next renewal is asked for once both last answers are applied.
    let _ = module.renewal().await;
    assert_eq!(link.shared.lock().renewals(), 6);
    assert!(matches!(*link.state.borrow(), LeaseState::Active));
    assert!(link.shared.proof_for(SAY).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_lost_stream_ends_the_lease_at_once() {
    let ttl = Duration::from_secs(30);
    let (mut link, mut module) = start(ttl, exact(ttl));
    tokio::time::sleep(Duration::from_secs(1)).await;
    module.to_core = None;
    let state = link.ended().await;
    assert_eq!(link.since_start(Instant::now()), Duration::from_secs(1));
    ended_with(&state, Reason::ConnectionLost, EndedBy::Circumstance);
    assert_eq!(
        link.audited(AuditEvent::ConnectionLost),
        [(Actor::Connection, Some(Reason::ConnectionLost))]
    );
}

#[tokio::test(start_paused = true)]
async fn the_modules_revocation_ends_the_lease_on_this_side() {
    let ttl = Duration::from_secs(30);
    let (mut link, mut module) = start(ttl, exact(ttl));
    let now = Instant::now().into_std();
    let jws = module
        .lease
        .revoke(
            &module.signer,
            Reason::LeaseRevoked,
            "operator",
            now,
            SystemTime::now(),
        )
        .unwrap();
    module.send(Frame::Revoke(SignedToken { jws })).await;
    let state = link.ended().await;
    ended_with(&state, Reason::LeaseRevoked, EndedBy::Peer);
    assert_eq!(
        link.audited(AuditEvent::Revoked),
        [(Actor::Module, Some(Reason::LeaseRevoked))]
    );
    // The Core closes its half: nothing more is sent, the queue ends.
    assert!(module.from_core.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_revokes_and_tells_the_module() {
    let ttl = Duration::from_secs(30);
    let (mut link, mut module) = start(ttl, exact(ttl));
    link.commands = None;
    match module.next().await {
        (Frame::Revoke(SignedToken { jws }), _) => {
            let claims = module.lease.receive(&jws).unwrap();
            let reason = module
                .lease
                .apply_revoke(&claims, Instant::now().into_std())
                .unwrap();
            assert_eq!(reason, Reason::LeaseRevoked);
        }
        (other, _) => panic!("expected a revocation, got {other:?}"),
    }
    let state = link.ended().await;
    ended_with(&state, Reason::LeaseRevoked, EndedBy::Local);
}

#[tokio::test(start_paused = true)]
async fn stop_renewing_lets_the_lease_run_out_at_its_expiry() {
    let ttl = Duration::from_secs(3);
    let (mut link, mut module) = start(ttl, exact(ttl));
    let commands = link.commands.clone().unwrap();
    commands.send(Command::StopRenewing).await.unwrap();
    let state = link.ended().await;
    assert_eq!(link.since_start(Instant::now()), ttl);
    ended_with(&state, Reason::LeaseExpired, EndedBy::Circumstance);
    // No renewal was asked for: the queue ends with the Core's half.
    assert!(module.from_core.recv().await.is_none());
}
