//! No lease, no execution for every RPC shape (ADR-0003 §6): server,
//! client and bidirectional streams are gated for their whole life, not only
//! until their response head.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anima_core::lease::LeaseTable;
use anima_module_sdk::LeaseEvent;
use anima_protocol::lease::Reason;
use anima_tests::echo::echo_client::EchoClient;
use anima_tests::echo::{SayRequest, Tick, WatchRequest};
use anima_tests::{
    CHAT, COLLECT, Lessee, RawCore, TestCa, TestModule, WATCH, echo_contract_with, open_lease,
    reason, wait_event,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::wait::in_time;

const CORE: &str = "urn:anima:core:dev";
const MODULE: &str = "urn:anima:module:echo";

async fn echo_module() -> (TestCa, TestModule) {
    let ca = TestCa::new();
    let contract = echo_contract_with(MODULE, "30s", r#"type = "resident-shared""#);
    let module = TestModule::start(&ca, contract).await;
    (ca, module)
}

/// A request for `method` under `core`'s lease, with the proof for call `seq`.
fn proved<T>(core: &RawCore, seq: u64, method: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("anima-proof", core.proof(seq, method).parse().unwrap());
    request
}

/// `Watch` under `core`'s lease (proof for call 1): `count` ticks, one a
/// millisecond (`0`: until the stream ends otherwise).
async fn watch_proved(core: &RawCore, count: u64) -> Result<tonic::Streaming<Tick>, Status> {
    EchoClient::new(core.conn.channel())
        .watch(proved(core, 1, WATCH, every_ms(count)))
        .await
        .map(|r| r.into_inner())
}

/// `count` ticks, one a millisecond.
fn every_ms(count: u64) -> WatchRequest {
    WatchRequest { every_ms: 1, count }
}

/// A lease from `CORE` on `module` for ten seconds, scoped to `method`.
async fn lease_for(ca: &TestCa, module: &TestModule, method: &str) -> Lessee {
    open_lease(
        ca,
        CORE,
        module.addr,
        &module.urn,
        Duration::from_secs(10),
        &[method],
        LeaseTable::new(),
    )
    .await
    .expect("lease")
}

/// Waits for the module to grant a lease; returns when, by its own clock,
/// that lease expires.
async fn granted_until(events: &mut broadcast::Receiver<LeaseEvent>) -> Instant {
    wait_event(events, |e| match e {
        LeaseEvent::Granted { expires_at, .. } => Some(*expires_at),
        _ => None,
    })
    .await
}

/// Waits for the module's lease to end with `why`.
async fn ended_with(events: &mut broadcast::Receiver<LeaseEvent>, why: Reason) {
    wait_event(events, |e| {
        matches!(e, LeaseEvent::Ended { reason, .. } if *reason == why).then_some(())
    })
    .await;
}

/// Reads a server stream to its end: every message with the instant it
/// arrived, then the final status and the instant it arrived.
async fn drain(
    mut stream: tonic::Streaming<Tick>,
) -> (Vec<(Tick, Instant)>, Option<Status>, Instant) {
    let mut got = Vec::new();
    let read = async {
        loop {
            match stream.message().await {
                Ok(Some(tick)) => got.push((tick, Instant::now())),
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    };
    let outcome = in_time(read, "the stream ended in time").await;
    (got, outcome, Instant::now())
}

/// How many ticks the handlers produce from now on, over `window`: a stream
/// still being polled would produce one per millisecond.
async fn ticks_produced_over(module: &TestModule, window: Duration) -> usize {
    let before = module.service.ticks.load(Ordering::SeqCst);
    // Checking that nothing happens: there is no event to wait for.
    tokio::time::sleep(window).await;
    module.service.ticks.load(Ordering::SeqCst) - before
}

/// The stream ended at most 10 ms (`late`) after `what`, and nothing polls
/// its handler's stream any more.
async fn assert_ended_within_10ms(module: &TestModule, late: Duration, what: &str) {
    assert!(
        late <= Duration::from_millis(10),
        "the stream ended {late:?} after {what}"
    );
    assert_eq!(
        ticks_produced_over(module, Duration::from_millis(30)).await,
        0,
        "the handler's stream is still polled after its lease ended"
    );
}

/// The acceptance bound of issue 12 §1: a server stream emitting every 1 ms
/// under an 80 ms lease that is not renewed ends `LEASE_EXPIRED` within
/// 10 ms of the module's expiry instant, and the last message the client
/// got was produced before it. Runs alone (`serial_`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_z1_server_stream_ends_lease_expired_within_10ms_of_expiry() {
    let (ca, module) = echo_module().await;
    let mut events = module.handle.events();
    let core = RawCore::open(&ca, CORE, &module, &[WATCH], Duration::from_millis(80)).await;
    let expires_at = granted_until(&mut events).await;
    let stream = watch_proved(&core, 0)
        .await
        .expect("the stream opens under the lease");
    let (got, status, ended_at) = drain(stream).await;
    let status = status.expect("the stream ends with an error, not OK");
    assert_eq!(reason(&status), Some(Reason::LeaseExpired), "{status:?}");
    assert!(got.len() >= 10, "only {} ticks before expiry", got.len());
    let (last, last_at) = got.last().unwrap();
    assert!(
        last.lease_left_us > 0,
        "the last message was produced after the lease's end"
    );
    assert!(
        *last_at <= expires_at + Duration::from_millis(1),
        "a message arrived {:?} after expiry",
        last_at.saturating_duration_since(expires_at)
    );
    let late = ended_at.saturating_duration_since(expires_at);
    eprintln!(
        "expiry to stream end: {late:?} ({} ticks, last produced {} µs before expiry)",
        got.len(),
        last.lease_left_us
    );
    assert!(ended_at >= expires_at, "ended before expiry");
    assert_ended_within_10ms(&module, late, "expiry").await;
}

/// The same for a revocation by the Core: the stream ends `LEASE_REVOKED`
/// within 10 ms of the Core's revoke, and nothing is produced after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_z1_server_stream_ends_lease_revoked_within_10ms_of_revocation() {
    let (ca, module) = echo_module().await;
    let mut events = module.handle.events();
    let core = lease_for(&ca, &module, WATCH).await;
    let mut stream = EchoClient::new(core.link.channel())
        .watch(every_ms(0))
        .await
        .expect("the stream opens under the lease")
        .into_inner();
    for _ in 0..5 {
        stream.message().await.expect("a tick").expect("not over");
    }
    let revoked_at = Instant::now();
    core.link
        .revoke("test revokes", anima_core::audit::Actor::Operator);
    let (_, status, ended_at) = drain(stream).await;
    let status = status.expect("the stream ends with an error, not OK");
    assert_eq!(reason(&status), Some(Reason::LeaseRevoked), "{status:?}");
    ended_with(&mut events, Reason::LeaseRevoked).await;
    let late = ended_at - revoked_at;
    eprintln!("revoke to stream end: {late:?}");
    assert_ended_within_10ms(&module, late, "the revoke").await;
}

/// A client stream: messages sent after the lease ended never reach the
/// handler, and the call ends with the lease's reason.
#[tokio::test]
async fn z1_client_stream_messages_after_the_lease_ends_never_reach_the_handler() {
    let (ca, module) = echo_module().await;
    let mut events = module.handle.events();
    let core = lease_for(&ca, &module, COLLECT).await;
    let (tx, rx) = mpsc::channel(16);
    let mut client = EchoClient::new(core.link.channel());
    let call = tokio::spawn(async move { client.collect(ReceiverStream::new(rx)).await });
    for i in 0..5 {
        tx.send(SayRequest {
            text: format!("{i}"),
        })
        .await
        .unwrap();
    }
    anima_tests::eventually("the handler got the first five messages", || {
        module.service.received.load(Ordering::SeqCst) == 5
    })
    .await;
    core.link
        .revoke("test revokes", anima_core::audit::Actor::Operator);
    wait_event(&mut events, |e| {
        matches!(e, LeaseEvent::Ended { .. }).then_some(())
    })
    .await;
    for i in 5..10 {
        // The call may already be over: then the stream is closed.
        let _ = tx
            .send(SayRequest {
                text: format!("{i}"),
            })
            .await;
    }
    drop(tx);
    let status = in_time(call, "the call ends in time")
        .await
        .unwrap()
        .expect_err("the call ends with the lease's reason");
    assert_eq!(reason(&status), Some(Reason::LeaseRevoked), "{status:?}");
    assert_eq!(module.service.received.load(Ordering::SeqCst), 5);
}

/// A bidirectional stream ends with the lease's reason when the lease
/// expires; what the client sends afterwards is handed to no handler.
#[tokio::test]
async fn z1_bidirectional_stream_ends_when_the_lease_expires() {
    let (ca, module) = echo_module().await;
    let mut events = module.handle.events();
    let core = RawCore::open(&ca, CORE, &module, &[CHAT], Duration::from_millis(300)).await;
    let (tx, rx) = mpsc::channel(16);
    let mut answers = EchoClient::new(core.conn.channel())
        .chat(proved(&core, 1, CHAT, ReceiverStream::new(rx)))
        .await
        .expect("the call opens under the lease")
        .into_inner();
    tx.send(SayRequest { text: "one".into() }).await.unwrap();
    let first = answers
        .message()
        .await
        .expect("an answer")
        .expect("not over");
    assert_eq!(first.text, "one");
    assert!(first.lease_left_us > 0);
    ended_with(&mut events, Reason::LeaseExpired).await;
    let _ = tx.send(SayRequest { text: "two".into() }).await;
    let status = in_time(answers.message(), "the call ends in time")
        .await
        .expect_err("the call ends with the lease's reason");
    assert_eq!(reason(&status), Some(Reason::LeaseExpired), "{status:?}");
    // The handler's reader task outlives the call: it must read nothing more.
    let _ = tx
        .send(SayRequest {
            text: "three".into(),
        })
        .await;
    // Checking that nothing happens: there is no event to wait for.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        module.service.received.load(Ordering::SeqCst),
        1,
        "a message sent after the lease ended was handed to the handler"
    );
}

/// Streams need a lease like unary calls: without one the handler never
/// runs.
#[tokio::test]
async fn z2_a_stream_without_a_lease_is_refused_before_its_handler_runs() {
    let (ca, module) = echo_module().await;
    let core = RawCore::open(&ca, CORE, &module, &[WATCH], Duration::from_secs(10)).await;
    let status = EchoClient::new(core.conn.channel())
        .watch(every_ms(3))
        .await
        .expect_err("no proof, no stream");
    assert_eq!(reason(&status), Some(Reason::NoLease), "{status:?}");
    assert_eq!(module.calls(), 0);
    // Under the lease the same call streams to its end.
    let stream = watch_proved(&core, 3).await.expect("under the lease");
    let (got, status, _) = drain(stream).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(got.len(), 3);
}
