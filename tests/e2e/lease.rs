//! Leases over real sockets: the SDK's module side, the Core's lease links,
//! and a hand-built misbehaving Core (A1–A9).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anima_core::audit::{AuditLog, AuditRecord};
use anima_core::lease::{CoreLeaseError, LeaseLink, LeaseTable, RenewalPolicy};
use anima_module_sdk::LeaseEvent;
use anima_protocol::lease::{EndedBy, LeaseSigner, LeaseState, Reason, Scope};
use anima_protocol::pb::{Refusal, SignedToken, control_frame::Frame};
use anima_protocol::{ClientTls, PeerPolicy};
use anima_tests::echo::SayRequest;
use anima_tests::echo::echo_client::EchoClient;
use anima_tests::{
    PATIENCE, RawCore, SAY, SHOUT, SLOW, TestCa, TestModule, echo_contract, echo_contract_with,
    reason, wait_event,
};

const CORE: &str = "urn:anima:core:dev";
const MODULE: &str = "urn:anima:module:echo";

/// The Core's side of a lease opened by its own `LeaseLink`.
type Core = anima_tests::Lessee;

async fn core_link(ca: &TestCa, module: &TestModule, ttl: Duration, scope: &[&str]) -> Core {
    try_core_link(ca, module, ttl, scope).await.unwrap()
}

async fn try_core_link(
    ca: &TestCa,
    module: &TestModule,
    ttl: Duration,
    scope: &[&str],
) -> Result<Core, CoreLeaseError> {
    anima_tests::open_lease(
        ca,
        CORE,
        module.addr,
        &module.urn,
        ttl,
        scope,
        LeaseTable::new(),
    )
    .await
}

async fn say(link: &LeaseLink) -> Result<String, tonic::Status> {
    EchoClient::new(link.channel())
        .say(SayRequest { text: "hi".into() })
        .await
        .map(|r| r.into_inner().text)
}

/// The reason the module refuses `core`'s `Say` with proof number `seq`.
async fn refusal(core: &RawCore, seq: u64) -> Option<Reason> {
    reason(&core.say(Some(core.proof(seq, SAY))).await.unwrap_err())
}

/// The Core's audit records of `event`, oldest first.
fn audited(core: &Core, event: &str) -> Vec<AuditRecord> {
    let mut records = core.audit.records();
    records.retain(|r| r.event == event);
    records
}

/// A resident shared echo module: it outlives its leases and takes any Core,
/// so these tests see the lease protocol alone (lifecycles have their own).
async fn echo_module(max_lease: &str) -> (TestCa, TestModule) {
    let ca = TestCa::new();
    let contract = echo_contract_with(MODULE, max_lease, r#"type = "resident-shared""#);
    let module = TestModule::start(&ca, contract).await;
    (ca, module)
}

/// A resident shared echo module (`max_lease` 30 s) and a Core's lease
/// on it for `scope` with TTL `ttl`.
async fn leased_echo(ttl: Duration, scope: &[&str]) -> (TestModule, Core) {
    let (ca, module) = echo_module("30s").await;
    let core = core_link(&ca, &module, ttl, scope).await;
    (module, core)
}

/// A Type I echo module: with no lease at all it answers `NO_LEASE` (a
/// resident one would answer `STANDBY`).
async fn ephemeral_echo_module() -> (TestCa, TestModule) {
    let ca = TestCa::new();
    let module = TestModule::start(&ca, echo_contract(MODULE, "30s")).await;
    (ca, module)
}

#[tokio::test]
async fn a3_call_under_a_valid_mutual_lease_succeeds() {
    let (ca, module) = echo_module("30s").await;
    let mut events = module.handle.events();
    let core = core_link(&ca, &module, Duration::from_secs(10), &[SAY]).await;
    let (id, consumer) = wait_event(&mut events, |e| match e {
        LeaseEvent::Granted {
            lease_id, consumer, ..
        } => Some((*lease_id, consumer.clone())),
        _ => None,
    })
    .await;
    assert_eq!(id, core.link.id(), "both sides hold the same lease");
    assert_eq!(consumer.as_str(), CORE);
    assert_eq!(say(&core.link).await.unwrap(), "hi");
    assert_eq!(module.calls(), 1);
}

#[tokio::test]
async fn a1_mtls_alone_or_a_static_token_never_authorizes() {
    let (ca, module) = ephemeral_echo_module().await;
    // A fully authenticated mTLS connection with no lease, presenting the
    // kind of static credential other systems accept.
    let conn = ClientTls::new(ca.identity(CORE), ca.trust())
        .dial_addr(module.addr, PeerPolicy::exactly(module.urn.clone()))
        .await
        .unwrap();
    for header in ["authorization", "x-api-key"] {
        let mut request = tonic::Request::new(SayRequest { text: "hi".into() });
        request
            .metadata_mut()
            .insert(header, "Bearer secret".parse().unwrap());
        let status = EchoClient::new(conn.channel())
            .say(request)
            .await
            .unwrap_err();
        assert_eq!(reason(&status), Some(Reason::NoLease), "{status:?}");
    }
    assert_eq!(module.calls(), 0);
}

#[tokio::test]
async fn a4_call_without_proof_is_refused() {
    let (ca, module) = echo_module("30s").await;
    let core = RawCore::open(&ca, CORE, &module, &[SAY], Duration::from_secs(10)).await;
    let status = core.say(None).await.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::NoLease));
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(module.calls(), 0);
    // The lease itself is fine: a proper call goes through.
    core.say(Some(core.proof(1, SAY))).await.unwrap();
    assert_eq!(module.calls(), 1);
}

#[tokio::test]
async fn a4_forged_proof_is_refused_and_revokes() {
    let (ca, module) = echo_module("30s").await;
    let mut core = RawCore::open(&ca, CORE, &module, &[SAY], Duration::from_secs(10)).await;
    let status = core
        .say(Some("v1.1.AAAAAAAAAAAAAAAAAAAAAA".into()))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), Some(Reason::BadProof));
    assert_eq!(module.calls(), 0);
    // The module revoked the lease and said so on the control stream.
    match core.next_frame().await {
        Some(Frame::Revoke(SignedToken { jws })) => {
            let claims = core.lease.receive(&jws).unwrap();
            assert_eq!(claims.reason.as_deref(), Some("BAD_PROOF"));
        }
        other => panic!("expected a revocation, got {other:?}"),
    }
    assert_eq!(refusal(&core, 2).await, Some(Reason::LeaseRevoked));
    assert_eq!(module.calls(), 0);
}

#[tokio::test]
async fn a4_replayed_proof_is_refused() {
    let (ca, module) = echo_module("30s").await;
    let core = RawCore::open(&ca, CORE, &module, &[SAY], Duration::from_secs(10)).await;
    let proof = core.proof(1, SAY);
    core.say(Some(proof.clone())).await.unwrap();
    let status = core.say(Some(proof)).await.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::ProofReplayed));
    assert_eq!(module.calls(), 1);
}

#[tokio::test]
async fn a4_proof_from_another_connection_is_worthless() {
    let (ca, module) = echo_module("30s").await;
    let a = RawCore::open(&ca, CORE, &module, &[SAY], Duration::from_secs(10)).await;
    let b = RawCore::open(&ca, CORE, &module, &[SAY], Duration::from_secs(10)).await;
    // A's valid proof, presented on B's connection.
    let status = b.say(Some(a.proof(1, SAY))).await.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::BadProof));
    assert_eq!(module.calls(), 0);
    // And on a connection with no lease at all.
    let bare = ClientTls::new(ca.identity(CORE), ca.trust())
        .dial_addr(module.addr, PeerPolicy::AnyIdentity)
        .await
        .unwrap();
    let mut request = tonic::Request::new(SayRequest { text: "hi".into() });
    request
        .metadata_mut()
        .insert("anima-proof", a.proof(2, SAY).parse().unwrap());
    let status = EchoClient::new(bare.channel())
        .say(request)
        .await
        .unwrap_err();
    assert_eq!(reason(&status), Some(Reason::NoLease));
    assert_eq!(module.calls(), 0);
}

#[tokio::test]
async fn a3_tampered_offer_gets_no_lease() {
    let (ca, module) = ephemeral_echo_module().await;
    let (conn, first) = RawCore::offer_tampered(
        &ca,
        CORE,
        &module,
        &[SAY],
        Duration::from_secs(10),
        |offer| {
            // Widen the scope after signing.
            let mut parts: Vec<String> = offer.split('.').map(str::to_owned).collect();
            let claims = String::from_utf8(base64_decode(&parts[1]))
                .unwrap()
                .replace(SAY, &format!("{SAY}\",\"{SHOUT}"));
            parts[1] = base64_encode(claims.as_bytes());
            parts.join(".")
        },
    )
    .await;
    match first {
        Frame::Refuse(Refusal { reason, .. }) => assert_eq!(reason, "BAD_SIGNATURE"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let status = EchoClient::new(conn.channel())
        .say(SayRequest { text: "hi".into() })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), Some(Reason::NoLease));
    assert_eq!(module.calls(), 0);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn a6_expired_lease_is_refused_by_the_module() {
    let (ca, module) = echo_module("30s").await;
    let mut events = module.handle.events();
    // A raw Core that never renews.
    let core = RawCore::open(&ca, CORE, &module, &[SAY], Duration::from_millis(200)).await;
    core.say(Some(core.proof(1, SAY))).await.unwrap();
    let why = wait_event(&mut events, |e| match e {
        LeaseEvent::Ended { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(why, Reason::LeaseExpired);
    assert_eq!(refusal(&core, 2).await, Some(Reason::LeaseExpired));
    assert_eq!(module.calls(), 1);
}

#[tokio::test]
async fn a6_core_side_revocation_is_refused_by_the_module_at_once() {
    let (ca, module) = echo_module("30s").await;
    let mut events = module.handle.events();
    let mut core = RawCore::open(&ca, CORE, &module, &[SAY], Duration::from_secs(10)).await;
    core.say(Some(core.proof(1, SAY))).await.unwrap();
    let notice = core
        .lease
        .revoke(
            &core.signer,
            Reason::LeaseRevoked,
            "test",
            tokio::time::Instant::now().into_std(),
            SystemTime::now(),
        )
        .unwrap();
    core.send(Frame::Revoke(SignedToken { jws: notice })).await;
    // The very next request: refused (the control frame and the call share
    // one connection, and the module handles the frame as it arrives; allow
    // the few microseconds between them by retrying on success only).
    let mut outcome = core.say(Some(core.proof(2, SAY))).await;
    let mut seq = 3;
    while outcome.is_ok() && seq < 50 {
        outcome = core.say(Some(core.proof(seq, SAY))).await;
        seq += 1;
    }
    let status = outcome.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::LeaseRevoked));
    // Revoked by the Core, for the Core's reason (not refused as forged).
    let ended = wait_event(&mut events, |e| match e {
        LeaseEvent::Ended { reason, by, .. } => Some((*reason, *by)),
        _ => None,
    })
    .await;
    assert_eq!(ended, (Reason::LeaseRevoked, EndedBy::Peer));
}

#[tokio::test]
async fn a6_core_link_revocation_stops_the_core_and_the_module() {
    let (module, core) = leased_echo(Duration::from_secs(10), &[SAY]).await;
    let mut events = module.handle.events();
    say(&core.link).await.unwrap();
    assert!(
        core.link
            .revoke("operator asked", anima_core::audit::Actor::Operator)
    );
    // The Core sends nothing more under the lease.
    let status = say(&core.link).await.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::LeaseRevoked));
    let (why, by) = wait_event(&mut events, |e| match e {
        LeaseEvent::Ended { reason, by, .. } => Some((*reason, *by)),
        _ => None,
    })
    .await;
    assert_eq!((why, by), (Reason::LeaseRevoked, EndedBy::Peer));
    assert_eq!(module.calls(), 1);
    let revoked = &audited(&core, "revoked")[0];
    assert_eq!(revoked.actor, "operator");
    assert_eq!(revoked.reason.map(Reason::as_str), Some("LEASE_REVOKED"));
    assert_eq!(revoked.lease_id, Some(core.link.id().to_string()));
}

#[tokio::test]
async fn a5_module_side_revocation_makes_the_core_stop() {
    let (module, core) = leased_echo(Duration::from_secs(10), &[SAY]).await;
    say(&core.link).await.unwrap();
    assert!(
        module
            .handle
            .revoke(core.link.id(), "module shutting down a tenant")
    );
    tokio::time::timeout(PATIENCE, core.link.ended())
        .await
        .unwrap();
    match core.link.state() {
        LeaseState::Ended(e) => {
            assert_eq!(e.reason, Reason::LeaseRevoked);
            assert_eq!(e.by, EndedBy::Peer);
        }
        other => panic!("expected ended, got {other:?}"),
    }
    // The Core refuses locally: nothing reaches the module.
    let status = say(&core.link).await.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::LeaseRevoked));
    assert_eq!(module.calls(), 1);
    let record = core.table.get(core.link.id()).unwrap();
    assert!(matches!(record.state, LeaseState::Ended(_)));
}

#[tokio::test]
async fn a7_refused_scope_promotion_revokes_on_both_sides() {
    let (module, core) = leased_echo(Duration::from_secs(10), &[SAY]).await;
    let mut events = module.handle.events();
    let err = core
        .link
        .rescope(Scope::new([SAY, "/anima.test.v1.Echo/Undeclared"]).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(Reason::ScopeDenied), "{err}");
    let (why, by) = wait_event(&mut events, |e| match e {
        LeaseEvent::Ended { reason, by, .. } => Some((*reason, *by)),
        _ => None,
    })
    .await;
    assert_eq!((why, by), (Reason::ScopeDenied, EndedBy::Local));
    tokio::time::timeout(PATIENCE, core.link.ended())
        .await
        .unwrap();
    assert!(matches!(core.link.state(), LeaseState::Ended(e) if e.by == EndedBy::Peer));
    assert!(say(&core.link).await.is_err());
    assert_eq!(module.calls(), 0);
}

#[tokio::test]
async fn a7_module_refusal_of_a_call_makes_the_core_revoke() {
    let (module, core) = leased_echo(Duration::from_secs(10), &[SAY]).await;
    say(&core.link).await.unwrap();
    // The module ends its side silently (as if its clock ran out first); the
    // Core learns it from the next refused call and revokes at once.
    let mut handle_events = module.handle.events();
    module.handle.revoke(core.link.id(), "quiet");
    wait_event(&mut handle_events, |e| {
        matches!(e, LeaseEvent::Ended { .. }).then_some(())
    })
    .await;
    tokio::time::timeout(PATIENCE, core.link.ended())
        .await
        .unwrap();
    assert!(matches!(core.link.state(), LeaseState::Ended(_)));
}

#[tokio::test]
async fn a8_renewals_keep_a_500ms_lease_alive_through_5s_of_calls() {
    let (module, core) = leased_echo(Duration::from_millis(500), &[SAY]).await;
    let start = tokio::time::Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < Duration::from_secs(5) {
        say(&core.link)
            .await
            .unwrap_or_else(|s| panic!("call {calls} refused: {s:?}"));
        calls += 1;
    }
    assert!(calls > 100, "continuous calls: {calls}");
    assert!(
        core.link.renewals() >= 8,
        "renewed {} times",
        core.link.renewals()
    );
    assert_eq!(core.link.state(), LeaseState::Active);
    assert!(audited(&core, "renewed").len() >= 8);
    assert_eq!(module.calls() as u32, calls);
}

#[tokio::test]
async fn serial_a8_when_renewals_stop_refusals_begin_within_50ms_of_expiry() {
    let (module, core) = leased_echo(Duration::from_millis(500), &[SAY]).await;
    let mut events = module.handle.events();
    say(&core.link).await.unwrap();
    core.link.stop_renewing().await;
    let expiry = tokio::time::Instant::now() + core_left(&core);
    // Call continuously; the first refusal comes at the Core's own expiry.
    let first_refusal = loop {
        if say(&core.link).await.is_err() {
            break tokio::time::Instant::now();
        }
        assert!(tokio::time::Instant::now() < expiry + Duration::from_secs(2));
    };
    let module_end = wait_event(&mut events, |e| match e {
        LeaseEvent::Ended { reason, .. } => Some((*reason, tokio::time::Instant::now())),
        _ => None,
    })
    .await;
    assert_eq!(module_end.0, Reason::LeaseExpired);
    let late = first_refusal.saturating_duration_since(expiry);
    assert!(
        late < Duration::from_millis(50),
        "first refusal {late:?} after expiry"
    );
    let module_late = module_end.1.saturating_duration_since(expiry);
    assert!(
        module_late < Duration::from_millis(50),
        "module ended {module_late:?} after expiry"
    );
}

/// How long the Core's lease has left (from its table's wall-clock estimate).
fn core_left(core: &Core) -> Duration {
    let record = core.table.get(core.link.id()).unwrap();
    record
        .expires
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

#[tokio::test]
async fn a9_ttl_above_contract_maximum_is_capped_on_both_sides() {
    let (ca, module) = echo_module("1s").await;
    let mut events = module.handle.events();
    let core = core_link(&ca, &module, Duration::from_secs(3600), &[SAY]).await;
    let granted = wait_event(&mut events, |e| match e {
        LeaseEvent::Granted { ttl, .. } => Some(*ttl),
        _ => None,
    })
    .await;
    assert_eq!(granted, Duration::from_secs(1));
    assert_eq!(core.link.ttl(), Duration::from_secs(1));
    assert_eq!(audited(&core, "accepted")[0].ttl_ms, Some(1000));
}

#[tokio::test]
async fn a2_scope_demotion_applies_to_the_next_request() {
    let (ca, module) = echo_module("30s").await;
    let mut core = RawCore::open(&ca, CORE, &module, &[SAY, SHOUT], Duration::from_secs(10)).await;
    core.shout(core.proof(1, SHOUT)).await.unwrap();
    let request = core
        .lease
        .rescope_request(
            &core.signer,
            &Scope::new([SAY]).unwrap(),
            tokio::time::Instant::now().into_std(),
            SystemTime::now(),
        )
        .unwrap();
    core.send(Frame::Rescope(SignedToken { jws: request }))
        .await;
    match core.next_frame().await {
        Some(Frame::Rescoped(SignedToken { jws })) => {
            let claims = core.lease.receive(&jws).unwrap();
            assert_eq!(claims.scope, Some(vec![SAY.to_owned()]));
            assert!(
                claims.ttl_ms.is_some() && claims.exp.is_some(),
                "states the expiry"
            );
        }
        other => panic!("expected rescoped, got {other:?}"),
    }
    let status = core.shout(core.proof(2, SHOUT)).await.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::ScopeDenied));
    core.say(Some(core.proof(3, SAY))).await.unwrap();
    assert_eq!(module.calls(), 2);
}

#[tokio::test]
async fn a2_core_link_demotion_refuses_locally_without_touching_the_module() {
    let (module, core) = leased_echo(Duration::from_secs(10), &[SAY, SHOUT]).await;
    let granted = core.link.rescope(Scope::new([SAY]).unwrap()).await.unwrap();
    assert_eq!(granted, Scope::new([SAY]).unwrap());
    let status = EchoClient::new(core.link.channel())
        .shout(SayRequest { text: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), Some(Reason::ScopeDenied));
    assert_eq!(module.calls(), 0);
    // Promotion back within the declared methods is granted.
    core.link
        .rescope(Scope::new([SAY, SHOUT]).unwrap())
        .await
        .unwrap();
    EchoClient::new(core.link.channel())
        .shout(SayRequest { text: "x".into() })
        .await
        .unwrap();
    let events: Vec<_> = core.audit.records().iter().map(|r| r.event).collect();
    assert_eq!(
        events.iter().filter(|e| **e == "rescoped").count(),
        2,
        "{events:?}"
    );
}

#[tokio::test]
async fn a3_offer_for_undeclared_methods_is_refused() {
    let (ca, module) = echo_module("30s").await;
    let err = try_core_link(
        &ca,
        &module,
        Duration::from_secs(10),
        &[SAY, "/anima.test.v1.Echo/Nope"],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.reason(), Some(Reason::ScopeDenied), "{err}");
}

#[tokio::test]
async fn a5_expiry_mid_call_halts_the_handler_on_both_sides() {
    let (module, core) = leased_echo(Duration::from_millis(300), &[SAY, SLOW]).await;
    core.link.stop_renewing().await;
    // The handler would run for 2 s; the lease has 300 ms left.
    let handler = Duration::from_millis(2_000);
    let started = std::time::Instant::now();
    let status = EchoClient::new(core.link.channel())
        .slow(anima_tests::echo::SlowRequest {
            millis: handler.as_millis() as u64,
        })
        .await
        .unwrap_err();
    let answered = started.elapsed();
    // The Core's side: the call is answered LEASE_EXPIRED at expiry, not
    // when the handler would have finished.
    assert_eq!(reason(&status), Some(Reason::LeaseExpired));
    assert!(
        answered < handler,
        "answered after {answered:?}: the call was not cut at expiry"
    );
    assert_eq!(module.calls(), 1, "the handler started");
    // The module's side: the handler is dropped mid-call (its halt guard
    // fires), so it can never complete. Wait for whichever happens first,
    // the halt or a completion.
    let completed = || {
        module
            .service
            .completed
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let halted_at = || *module.service.halted_at.lock().unwrap();
    anima_tests::eventually("the handler halted or completed", || {
        halted_at().is_some() || completed() > 0
    })
    .await;
    assert_eq!(completed(), 0, "the handler ran to completion");
    let halted_at = halted_at().expect("the module dropped the handler");
    assert!(
        halted_at < started + handler,
        "halted {:?} after the call began, when it would have finished anyway",
        halted_at - started
    );
}

#[tokio::test]
async fn a6_audit_log_has_one_line_per_event_with_id_actor_reason() {
    let (_module, core) = leased_echo(Duration::from_millis(300), &[SAY]).await;
    // Wait for a renewal, then revoke.
    tokio::time::timeout(PATIENCE, async {
        while core.link.renewals() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    core.link.revoke("done", anima_core::audit::Actor::Operator);
    let records = core.audit.records();
    let kinds: Vec<&str> = records.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(kinds[..2], ["issued", "accepted"], "{kinds:?}");
    assert!(kinds.contains(&"renewed"));
    assert_eq!(*kinds.last().unwrap(), "revoked");
    let id = core.link.id().to_string();
    for r in &records {
        assert_eq!(r.lease_id.as_deref(), Some(id.as_str()));
        assert_eq!(r.module, MODULE);
        assert_eq!(r.core, CORE);
        assert!(!r.actor.as_str().is_empty());
    }
    assert_eq!(
        records.last().unwrap().reason.map(Reason::as_str),
        Some("LEASE_REVOKED")
    );
}

#[tokio::test]
async fn a5_killing_the_module_process_puts_the_core_in_zero_lease() {
    let ca = TestCa::new();
    let mut module = anima_tests::ModuleProcess::start(
        &ca,
        MODULE,
        &format!(
            "version = \"1\"\nmax_lease = \"30s\"\nmethods = [{}]",
            anima_tests::echo_methods_toml()
        ),
        Some(CORE),
        &[],
    )
    .await;
    let addr = module.addr;
    let identity = ca.identity(CORE);
    let signer = Arc::new(LeaseSigner::from_identity(&identity).unwrap());
    let conn = ClientTls::new(identity, ca.trust())
        .dial_addr(addr, PeerPolicy::exactly(MODULE.parse().unwrap()))
        .await
        .unwrap();
    let link = LeaseLink::open(
        conn,
        signer,
        Scope::new([SAY]).unwrap(),
        RenewalPolicy::new(Duration::from_secs(30)),
        AuditLog::discard(),
        LeaseTable::new(),
    )
    .await
    .unwrap();
    say(&link).await.unwrap();
    let killed = tokio::time::Instant::now();
    module.child.kill9().await;
    // The kernel closes a dead process's sockets: no keepalive round needed.
    tokio::time::timeout(Duration::from_secs(2), link.ended())
        .await
        .expect("zero-lease within 2 s of the module's death");
    let took = killed.elapsed();
    match link.state() {
        LeaseState::Ended(e) => assert_eq!(e.reason, Reason::ConnectionLost),
        other => panic!("expected connection loss, got {other:?} after {took:?}"),
    }
    let status = say(&link).await.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::ConnectionLost));
}

#[tokio::test]
async fn a5_killing_the_core_process_puts_the_module_in_zero_lease() {
    let (ca, module) = echo_module("30s").await;
    let mut events = module.handle.events();
    let dir = anima_tests::write_identity(&ca, CORE);
    let mut core = anima_tests::Child::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_anima-fixture-core")),
        &[
            dir.path().to_str().unwrap(),
            &module.addr.to_string(),
            MODULE,
            "30000",
        ],
    );
    let id = core.line("LEASED").await;
    anima_tests::eventually("the core process calls", || module.calls() > 0).await;
    assert_eq!(*module.handle.active_leases().borrow(), 1);
    let killed = tokio::time::Instant::now();
    core.kill9().await;
    let (ended, why) = wait_event(&mut events, |e| match e {
        LeaseEvent::Ended {
            lease_id, reason, ..
        } => Some((lease_id.to_string(), *reason)),
        _ => None,
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "took {:?}",
        killed.elapsed()
    );
    assert_eq!(ended, id);
    assert_eq!(why, Reason::ConnectionLost);
    assert_eq!(*module.handle.active_leases().borrow(), 0);
}

/// Opens a lease of `ttl` that `module`'s Core never renews, runs a 3 s
/// `Slow` call across its expiry, and returns how long after the module's
/// nominal expiry instant (its `Granted` event) the handler was dropped.
/// Fails when the call is not refused `LEASE_EXPIRED`, when the handler ran
/// to its end, or when it was dropped before the expiry.
/// How late a lease's handler was halted, and how late a bare thread asleep
/// until the same expiry instant woke: what the machine itself allowed at
/// that instant, shown when the bound is missed.
struct Halt {
    late: Duration,
    bare_thread_late: Duration,
}

async fn expiry_to_halt(ca: &TestCa, module: &TestModule, ttl: Duration) -> Halt {
    let mut events = module.handle.events();
    let core = RawCore::open(ca, CORE, module, &[SLOW], ttl).await;
    let expires_at = wait_event(&mut events, |e| match e {
        LeaseEvent::Granted { expires_at, .. } => Some(*expires_at),
        _ => None,
    })
    .await;
    let bare_thread = std::thread::spawn(move || {
        std::thread::sleep(expires_at.saturating_duration_since(std::time::Instant::now()));
        std::time::Instant::now()
    });
    let mut request = tonic::Request::new(anima_tests::echo::SlowRequest { millis: 3_000 });
    request
        .metadata_mut()
        .insert("anima-proof", core.proof(1, SLOW).parse().unwrap());
    let status = EchoClient::new(core.conn.channel())
        .slow(request)
        .await
        .unwrap_err();
    assert_eq!(reason(&status), Some(Reason::LeaseExpired));
    let halted = module
        .service
        .halted_at
        .lock()
        .unwrap()
        .take()
        .expect("the handler was dropped mid-call");
    assert!(halted >= expires_at, "halted before expiry");
    assert_eq!(
        module
            .service
            .completed
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let bare_thread_woke = bare_thread.join().expect("the bare thread woke");
    Halt {
        late: halted.duration_since(expires_at),
        bare_thread_late: bare_thread_woke.saturating_duration_since(expires_at),
    }
}

#[tokio::test]
async fn serial_e6_expiry_halts_a_running_handler_within_10ms() {
    let (ca, module) = echo_module("30s").await;
    // A Core that never renews: the lease runs out mid-call.
    let halt = expiry_to_halt(&ca, &module, Duration::from_millis(300)).await;
    eprintln!(
        "expiry to halt: {:?} (a bare thread woke {:?} late)",
        halt.late, halt.bare_thread_late
    );
    assert!(
        halt.late <= Duration::from_millis(10),
        "halted {:?} after expiry (a bare thread asleep until the instant woke {:?} late)",
        halt.late,
        halt.bare_thread_late
    );
}

/// Issue 17's bound: of 100 leases that run out mid-call, 99 have their
/// handler halted within 2 ms of the expiry instant (the runtime's timer
/// alone rounds a deadline up to its next millisecond tick).
///
/// This machine's host now and then stalls every vCPU at once for 2–6 ms
/// (BENCHMARKS.md, 2026-12-04 "tenth"): at such an instant no thread of the
/// machine runs within 2 ms, and the bound cannot be met by any code. A
/// bare thread asleep until each expiry instant tells those instants: a
/// lease whose bare thread woke more than 2 ms late is set aside and
/// another measured in its place, until 100 leases ran out at instants the
/// machine could have met; the bound is then judged on those 100, exactly
/// as before. Every lease set aside is printed, and more than 30 of them
/// fail the test (the host, not the code, is then what was measured).
#[tokio::test]
async fn serial_e6_expiry_halts_running_handlers_within_2ms_at_p99() {
    const BOUND: Duration = Duration::from_millis(2);
    let (ca, module) = echo_module("30s").await;
    let (mut counted, mut set_aside) = (Vec::with_capacity(100), Vec::new());
    while counted.len() < 100 && set_aside.len() <= 30 {
        let halt = expiry_to_halt(&ca, &module, Duration::from_millis(60)).await;
        if halt.bare_thread_late > BOUND {
            set_aside.push(format!(
                "{:?} (bare thread {:?})",
                halt.late, halt.bare_thread_late
            ));
        } else {
            counted.push(halt);
        }
    }
    eprintln!(
        "set aside, the machine stalled at their instant: {}: {}",
        set_aside.len(),
        set_aside.join(", ")
    );
    assert_eq!(
        counted.len(),
        100,
        "the host stalled a bare thread more than 2 ms at {} expiry instants; \
         nothing about the code can be judged from this run",
        set_aside.len()
    );
    // Each late halt beside the bare thread's lateness at the same instant.
    let over: Vec<_> = (counted.iter().enumerate())
        .filter(|(_, halt)| halt.late > BOUND)
        .map(|(i, h)| format!("#{i}: {:?} (bare thread {:?})", h.late, h.bare_thread_late))
        .collect();
    let mut lates: Vec<_> = counted.iter().map(|halt| halt.late).collect();
    lates.sort();
    let (p50, p99, max) = (lates[49], lates[98], lates[99]);
    eprintln!("expiry to halt, 100 leases: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    assert!(
        p99 <= BOUND,
        "p99 {p99:?} (p50 {p50:?}, max {max:?}); over 2 ms: {}",
        over.join(", ")
    );
}
