//! The module ends leases exactly as PROTOCOL.md says (issue 12 §3): a
//! shorter renewal moves every end-of-lease action, an honest Core's
//! half-close at its expiry is `LEASE_EXPIRED`, and an ended lease stays
//! attached to its connection so later calls get its reason.

use std::time::{Duration, Instant, SystemTime};

use anima_module_sdk::{LeaseEvent, Phase};
use anima_protocol::SystemClock;
use anima_protocol::control;
use anima_protocol::lease::{LeaseRequest, Reason, Scope};
use anima_protocol::pb::{SignedToken, control_frame::Frame};
use anima_tests::echo::echo_client::EchoClient;
use anima_tests::echo::{SayRequest, SlowRequest};
use anima_tests::{
    PATIENCE, RawCore, SAY, SLOW, TestCa, TestModule, echo_contract_with, reason, wait_event,
};
use tokio::sync::mpsc;

const CORE: &str = "urn:anima:core:dev";
const MODULE: &str = "urn:anima:module:echo";
/// Room for a loaded machine around an instant the module should act at.
const MARGIN: Duration = Duration::from_millis(400);

async fn module(extra: &str) -> (TestCa, TestModule) {
    let ca = TestCa::new();
    let module = TestModule::start(&ca, echo_contract_with(MODULE, "30s", extra)).await;
    (ca, module)
}

/// A call on `core`'s connection with the proof for call `seq`.
async fn say(core: &RawCore, seq: u64) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(SayRequest { text: "hi".into() });
    request
        .metadata_mut()
        .insert("anima-proof", core.proof(seq, SAY).parse().unwrap());
    EchoClient::new(core.conn.channel())
        .say(request)
        .await
        .map(|r| r.into_inner().text)
}

#[tokio::test]
async fn e5_a_renewal_to_a_shorter_ttl_moves_every_end_of_lease_action() {
    let (ca, module) =
        module("startup_grace = \"30s\"\nexpired_grace = \"0s\"\ntermination_window = \"100ms\"")
            .await;
    let mut events = module.handle.events();
    let mut phase = module.handle.phase();
    let mut core = RawCore::open(&ca, CORE, &module, &[SAY], Duration::from_secs(10)).await;
    let short = Duration::from_millis(600);
    let jws = core
        .lease
        .renew_request(
            short,
            tokio::time::Instant::now().into_std(),
            SystemTime::now(),
        )
        .unwrap();
    let renewed_at = Instant::now();
    core.send(Frame::Renew(SignedToken { jws })).await;
    assert!(
        matches!(core.next_frame().await, Some(Frame::Renewed(_))),
        "the renewal is granted"
    );
    // The lease ends at the new expiry, not the old one.
    let ended = tokio::time::timeout(
        short + MARGIN,
        wait_event(&mut events, |e| match e {
            LeaseEvent::Ended { reason, .. } => Some(*reason),
            _ => None,
        }),
    )
    .await
    .expect("the lease ended at its renewed (shorter) expiry");
    assert_eq!(ended, Reason::LeaseExpired);
    assert!(renewed_at.elapsed() >= short, "ended before its expiry");
    // The module closes its half of the control stream then (§2.6)…
    let closed = tokio::time::timeout(MARGIN, core.next_frame()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the module's half of the control stream is closed: {closed:?}"
    );
    // …counts no lease…
    assert_eq!(*module.handle.active_leases().borrow(), 0);
    // …and a Type I module terminates by itself, long before the old 10 s.
    tokio::time::timeout(MARGIN, phase.wait_for(|p| *p == Phase::Terminating))
        .await
        .expect("Type I self-termination follows the shorter lease")
        .unwrap();
}

#[tokio::test]
async fn a5_an_honest_cores_half_close_at_its_expiry_is_lease_expired() {
    let (ca, module) = module(r#"type = "resident-shared""#).await;
    let mut events = module.handle.events();
    let ttl = Duration::from_millis(300);
    // An honest Core's clock starts before it sends the offer (§3.2).
    let core_expiry = tokio::time::Instant::now() + ttl;
    let core = RawCore::open(&ca, CORE, &module, &[SAY, SLOW], ttl).await;
    let mut request = tonic::Request::new(SlowRequest { millis: 3_000 });
    request
        .metadata_mut()
        .insert("anima-proof", core.proof(1, SLOW).parse().unwrap());
    let mut client = EchoClient::new(core.conn.channel());
    let call = tokio::spawn(async move { client.slow(request).await });
    // At its own expiry the Core ends its copy and closes its half (§2.6).
    tokio::time::sleep_until(core_expiry).await;
    let RawCore {
        conn,
        signer,
        lease: old,
        tx,
        inbound: _inbound,
    } = core;
    drop(tx);
    let status = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the call ends in time")
        .unwrap()
        .expect_err("the call is halted");
    assert_eq!(reason(&status), Some(Reason::LeaseExpired), "{status:?}");
    let ended = wait_event(&mut events, |e| match e {
        LeaseEvent::Ended { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(ended, Reason::LeaseExpired);
    // The ended lease stays attached to the connection: the next call there
    // gets its reason, not NO_LEASE or STANDBY.
    let mut request = tonic::Request::new(SayRequest { text: "hi".into() });
    request.metadata_mut().insert(
        "anima-proof",
        old.proof_key().proof(2, SAY).parse().unwrap(),
    );
    let status = EchoClient::new(conn.channel())
        .say(request)
        .await
        .expect_err("refused");
    assert_eq!(reason(&status), Some(Reason::LeaseExpired), "{status:?}");
    // A new lease on a new control stream of the same connection replaces
    // the ended one.
    let request = LeaseRequest {
        scope: Scope::new([SAY]).unwrap(),
        ttl: Duration::from_secs(10),
    };
    // Held to the end: its stream stays open while the call runs.
    let granted = match control::open(&conn, &signer, request, &SystemClock, PATIENCE).await {
        Ok(granted) => granted,
        Err(e) => panic!("expected a grant on the same connection, got {e}"),
    };
    let new = &granted.lease;
    let mut request = tonic::Request::new(SayRequest {
        text: "again".into(),
    });
    request.metadata_mut().insert(
        "anima-proof",
        new.proof_key().proof(1, SAY).parse().unwrap(),
    );
    let reply = EchoClient::new(conn.channel()).say(request).await;
    assert_eq!(reply.unwrap().into_inner().text, "again");
    drop(granted);
}

#[tokio::test]
async fn a6_a_revoked_lease_stays_attached_after_the_core_closes_its_half() {
    let (ca, module) = module(r#"type = "resident-shared""#).await;
    let mut events = module.handle.events();
    let mut core = RawCore::open(&ca, CORE, &module, &[SAY], Duration::from_secs(10)).await;
    assert_eq!(say(&core, 1).await.unwrap(), "hi");
    let jws = core
        .lease
        .revoke(
            &core.signer,
            Reason::LeaseRevoked,
            "done",
            tokio::time::Instant::now().into_std(),
            SystemTime::now(),
        )
        .unwrap();
    core.send(Frame::Revoke(SignedToken { jws })).await;
    // The Core closes its half after revoking (§2.6).
    let (closed_tx, _) = mpsc::channel(1);
    drop(std::mem::replace(&mut core.tx, closed_tx));
    let ended = wait_event(&mut events, |e| match e {
        LeaseEvent::Ended { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(ended, Reason::LeaseRevoked);
    // Both halves are closed now; the connection still refuses with the
    // lease's reason, however the close and the next call interleave.
    assert_eq!(core.next_frame().await, None);
    let status = say(&core, 2).await.expect_err("refused");
    assert_eq!(reason(&status), Some(Reason::LeaseRevoked), "{status:?}");
}

/// The Core's own link closes its half cleanly when its copy expires (an
/// `END_STREAM`, not a cancelled stream), so the module ends its copy as
/// `LEASE_EXPIRED`, never `CONNECTION_LOST`.
#[tokio::test]
async fn a5_the_cores_link_ends_an_expired_lease_with_a_clean_half_close() {
    let (ca, module) = module(r#"type = "resident-shared""#).await;
    let mut events = module.handle.events();
    let core = anima_tests::open_lease(
        &ca,
        CORE,
        module.addr,
        &module.urn,
        Duration::from_millis(300),
        &[SAY],
        anima_core::lease::LeaseTable::new(),
    )
    .await
    .unwrap();
    core.link.stop_renewing().await;
    let (ended, by) = wait_event(&mut events, |e| match e {
        LeaseEvent::Ended { reason, by, .. } => Some((*reason, *by)),
        _ => None,
    })
    .await;
    assert_eq!(ended, Reason::LeaseExpired, "ended by {by}");
    tokio::time::timeout(PATIENCE, core.link.ended())
        .await
        .expect("the Core's copy ended too");
}
