//! Module lifecycles with real module processes started by the launch
//! protocol (I1–I4, Z1–Z3, E1–E7, R1–R6, S1–S10).

use std::time::Duration;

use anima_core::lease::{CoreLeaseError, LeaseTable};
use anima_protocol::lease::{LeaseState, Reason};
use anima_protocol::pb::ModuleStatus;
use anima_protocol::pb::module_admin_client::ModuleAdminClient;
use anima_protocol::pb::{ShutdownRequest, StatusRequest};
use anima_protocol::{ClientTls, Connection, PeerPolicy};
use anima_tests::echo::echo_client::EchoClient;
use anima_tests::echo::{CountReply, CountRequest, SayReply, SayRequest, SlowRequest};
use anima_tests::{
    CHAT, COLLECT, COUNT, Lessee, ModuleProcess, PATIENCE, SAY, SHOUT, SLOW, TestCa, WATCH,
    bin_path, open_lease, reason,
};

const CORE: &str = "urn:anima:core:dev";
const OTHER_CORE: &str = "urn:anima:core:other";
const OPERATOR: &str = "urn:anima:user:ops";
/// A Core that only reads `Status`.
const OBSERVER: &str = "urn:anima:core:observer";
const MODULE: &str = "urn:anima:module:echo";

/// A contract body (the harness adds the `urn` line).
fn contract(extra: &str) -> String {
    format!(
        "version = \"1.0.0\"\nmax_lease = \"30s\"\nmethods = [{}]\n{extra}",
        anima_tests::echo_methods_toml()
    )
}

const TYPE_I: &str = "startup_grace = \"5s\"\nexpired_grace = \"0s\"\ntermination_window = \"1s\"";
const TYPE_II: &str = "type = \"resident-private\"\ninit = \"core-started\"";
const TYPE_III: &str = "type = \"resident-shared\"";

async fn dial(ca: &TestCa, who: &str, module: &ModuleProcess) -> Connection {
    ClientTls::new(ca.identity(who), ca.trust())
        .dial_addr(module.addr, PeerPolicy::exactly(module.urn.clone()))
        .await
        .unwrap()
}

async fn try_lease(
    ca: &TestCa,
    core: &str,
    module: &ModuleProcess,
    ttl: Duration,
    scope: &[&str],
    table: LeaseTable,
) -> Result<Lessee, CoreLeaseError> {
    open_lease(ca, core, module.addr, &module.urn, ttl, scope, table).await
}

async fn lease(ca: &TestCa, core: &str, module: &ModuleProcess, ttl: Duration) -> Lessee {
    try_lease(
        ca,
        core,
        module,
        ttl,
        &[SAY, SHOUT, SLOW, COUNT],
        LeaseTable::new(),
    )
    .await
    .unwrap()
}

/// A Type III module leased by two Cores, `CORE` then `OTHER_CORE`, for `ttl`.
async fn two_tenants(ca: &TestCa, ttl: Duration) -> (ModuleProcess, Lessee, Lessee) {
    let module = ModuleProcess::start(ca, MODULE, &contract(TYPE_III), None, &[]).await;
    let a = lease(ca, CORE, &module, ttl).await;
    let b = lease(ca, OTHER_CORE, &module, ttl).await;
    (module, a, b)
}

/// A lease `core` asks for with `table`: five seconds, `Say` only.
async fn say_lease(
    ca: &TestCa,
    core: &str,
    module: &ModuleProcess,
    table: LeaseTable,
) -> Result<Lessee, CoreLeaseError> {
    try_lease(ca, core, module, Duration::from_secs(5), &[SAY], table).await
}

/// Why the module refuses `OTHER_CORE` a lease.
async fn other_core_refused(ca: &TestCa, module: &ModuleProcess) -> Reason {
    refused_with(say_lease(ca, OTHER_CORE, module, LeaseTable::new()).await)
}

/// The Core's operator revokes `l`.
fn revoke(l: &Lessee, why: &str) {
    l.link.revoke(why, anima_core::audit::Actor::Operator);
}

async fn say(l: &Lessee) -> Result<SayReply, tonic::Status> {
    EchoClient::new(l.link.channel())
        .say(SayRequest { text: "hi".into() })
        .await
        .map(|r| r.into_inner())
}

/// `Echo/Say` on `conn`, which carries no lease: always refused.
async fn say_unleased(conn: &Connection) -> tonic::Status {
    EchoClient::new(conn.channel())
        .say(SayRequest { text: "x".into() })
        .await
        .unwrap_err()
}

async fn count(l: &Lessee) -> CountReply {
    EchoClient::new(l.link.channel())
        .count(CountRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The `Count` a module answers after `calls` calls of which `completed` completed.
fn counted(calls: u64, completed: u64) -> CountReply {
    CountReply {
        calls,
        completed,
        ..Default::default()
    }
}

/// `ModuleAdmin/Shutdown`, asked by `who`.
async fn shutdown(
    ca: &TestCa,
    who: &str,
    module: &ModuleProcess,
    why: &str,
) -> Result<(), tonic::Status> {
    let conn = dial(ca, who, module).await;
    ModuleAdminClient::new(conn.channel())
        .shutdown(ShutdownRequest { reason: why.into() })
        .await
        .map(|_| ())
}

/// `ModuleAdmin/Status` (needs no lease), asked by a Core that holds none:
/// a module lets in only Cores and its own operators (PROTOCOL.md §1), and
/// most modules here have no operator.
async fn status(ca: &TestCa, module: &ModuleProcess) -> ModuleStatus {
    let conn = dial(ca, OBSERVER, module).await;
    ModuleAdminClient::new(conn.channel())
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn wait_phase(ca: &TestCa, module: &ModuleProcess, phase: &str) -> ModuleStatus {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let s = status(ca, module).await;
        if s.phase == phase {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "phase stayed {} (wanted {phase})",
            s.phase
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn refused_with(result: Result<Lessee, CoreLeaseError>) -> Reason {
    match result {
        Err(e) => e.reason().unwrap_or_else(|| panic!("no reason in {e}")),
        Ok(_) => panic!("the lease was granted"),
    }
}

/// Starts the fixture expecting it to refuse to start; returns its stderr.
async fn fails_to_start(ca: &TestCa, contract_body: &str) -> String {
    let dir = anima_tests::write_identity(ca, MODULE);
    let out = tokio::process::Command::new(bin_path("anima-fixture-module"))
        .env("ANIMA_CERT", dir.path().join("cert.pem"))
        .env("ANIMA_KEY", dir.path().join("key.pem"))
        .env("ANIMA_CA", dir.path().join("ca.pem"))
        .env(
            "FIXTURE_CONTRACT",
            format!("urn = \"{MODULE}\"\n{contract_body}"),
        )
        .output();
    let out = tokio::time::timeout(PATIENCE, out).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(1), "refused to start");
    assert!(out.stdout.is_empty(), "no ready line on refusal");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A raw unary call to `path` (any method, declared or not) on `conn`.
async fn raw_call(conn: &Connection, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(conn.channel());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<SayRequest, SayReply>::default();
    grpc.unary(
        tonic::Request::new(SayRequest { text: "x".into() }),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .unwrap_err()
}

// ---------------------------------------------------------------- I: interface

#[tokio::test]
async fn i1_module_serves_its_strict_grpc_interface() {
    let ca = TestCa::new();
    let module = ModuleProcess::start(&ca, MODULE, &contract(TYPE_III), None, &[]).await;
    let core = lease(&ca, CORE, &module, Duration::from_secs(10)).await;
    assert_eq!(say(&core).await.unwrap().text, "hi");
    let conn = dial(&ca, CORE, &module).await;
    let status = raw_call(&conn, "/anima.test.v1.Echo/Undeclared").await;
    assert_eq!(reason(&status), Some(Reason::UnknownMethod));
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn i2_module_whose_methods_differ_from_its_contract_refuses_to_start() {
    let ca = TestCa::new();
    // Count is served but not declared.
    let body = format!(
        "version = \"1\"\nmax_lease = \"30s\"\nmethods = [\"{SAY}\", \"{SHOUT}\", \"{SLOW}\", \"{WATCH}\", \"{COLLECT}\", \"{CHAT}\"]"
    );
    let stderr = fails_to_start(&ca, &body).await;
    assert!(
        stderr.contains("served but not declared: /anima.test.v1.Echo/Count"),
        "{stderr}"
    );
    // A declared method that is not served.
    let body = contract("").replace("methods = [", "methods = [\"/anima.test.v1.Echo/Extra\", ");
    let stderr = fails_to_start(&ca, &body).await;
    assert!(
        stderr.contains("declared but not served: /anima.test.v1.Echo/Extra"),
        "{stderr}"
    );
}

#[tokio::test]
async fn i3_core_calls_only_declared_methods_within_its_scope() {
    let ca = TestCa::new();
    let module = ModuleProcess::start(&ca, MODULE, &contract(TYPE_III), None, &[]).await;
    let core = try_lease(
        &ca,
        CORE,
        &module,
        Duration::from_secs(10),
        &[SAY, COUNT],
        LeaseTable::new(),
    )
    .await
    .unwrap();
    let status = EchoClient::new(core.link.channel())
        .shout(SayRequest { text: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), Some(Reason::ScopeDenied));
    assert_eq!(count(&core).await.calls, 0, "nothing reached the module");
    assert_eq!(
        core.link.state(),
        LeaseState::Active,
        "a local refusal keeps the lease"
    );
}

#[tokio::test]
async fn i4_no_reflection_and_no_undeclared_invocation() {
    let ca = TestCa::new();
    let module = ModuleProcess::start(&ca, MODULE, &contract(TYPE_III), None, &[]).await;
    let core = lease(&ca, CORE, &module, Duration::from_secs(10)).await;
    let conn = dial(&ca, CORE, &module).await;
    for path in [
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/anima.test.v1.Echo/say",
    ] {
        let status = raw_call(&conn, path).await;
        assert_eq!(reason(&status), Some(Reason::UnknownMethod), "{path}");
    }
    assert_eq!(count(&core).await.calls, 0);
}

// ---------------------------------------------------------------- Z: zero-lease

#[tokio::test]
async fn z1_zero_lease_on_expiry_revocation_and_connection_loss() {
    let ca = TestCa::new();
    let module = ModuleProcess::start(&ca, MODULE, &contract(TYPE_II), Some(CORE), &[]).await;
    // Expiry.
    let a = lease(&ca, CORE, &module, Duration::from_millis(300)).await;
    wait_phase(&ca, &module, "leased").await;
    a.link.stop_renewing().await;
    wait_phase(&ca, &module, "standby").await;
    // Revocation.
    let b = lease(&ca, CORE, &module, Duration::from_secs(10)).await;
    wait_phase(&ca, &module, "leased").await;
    revoke(&b, "test");
    wait_phase(&ca, &module, "standby").await;
    // Connection loss: a Core process holding the lease is killed.
    let dir = anima_tests::write_identity(&ca, CORE);
    let mut core = anima_tests::Child::spawn(
        &bin_path("anima-fixture-core"),
        &[
            dir.path().to_str().unwrap(),
            &module.addr.to_string(),
            MODULE,
            "30000",
        ],
    );
    core.line("LEASED").await;
    wait_phase(&ca, &module, "leased").await;
    core.kill9().await;
    wait_phase(&ca, &module, "standby").await;
}

#[tokio::test]
async fn z2_without_a_valid_lease_no_handler_runs() {
    let ca = TestCa::new();
    for body in [contract(TYPE_I), contract(TYPE_II)] {
        let module = ModuleProcess::start(&ca, MODULE, &body, Some(CORE), &[]).await;
        let conn = dial(&ca, CORE, &module).await;
        let status = say_unleased(&conn).await;
        assert!(
            matches!(reason(&status), Some(Reason::NoLease | Reason::Standby)),
            "{status:?}"
        );
        let status = EchoClient::new(conn.channel())
            .slow(SlowRequest { millis: 1 })
            .await
            .unwrap_err();
        assert!(reason(&status).is_some());
        let core = lease(&ca, CORE, &module, Duration::from_secs(10)).await;
        assert_eq!(count(&core).await, counted(0, 0));
    }
}

#[tokio::test]
async fn z3_zero_lease_kills_type1_but_only_freezes_type2_and_type3() {
    let ca = TestCa::new();
    let mut one = ModuleProcess::start(&ca, MODULE, &contract(TYPE_I), Some(CORE), &[]).await;
    let two = ModuleProcess::start(&ca, MODULE, &contract(TYPE_II), Some(CORE), &[]).await;
    let three = ModuleProcess::start(&ca, MODULE, &contract(TYPE_III), None, &[]).await;
    for m in [&one, &two, &three] {
        let l = lease(&ca, CORE, m, Duration::from_secs(10)).await;
        say(&l).await.unwrap();
        revoke(&l, "zero-lease");
    }
    let exit = one
        .exit_status(PATIENCE)
        .await
        .expect("Type I exits by itself");
    assert!(exit.success());
    let pid_two = two.pid();
    assert_eq!(wait_phase(&ca, &two, "standby").await.pid, pid_two);
    wait_phase(&ca, &three, "standby").await;
}

// ---------------------------------------------------------------- E: Type I

#[tokio::test]
async fn e1_type1_with_no_core_exits_after_its_startup_grace() {
    let ca = TestCa::new();
    let body = contract("startup_grace = \"300ms\"\ntermination_window = \"1s\"");
    let mut module = ModuleProcess::start(&ca, MODULE, &body, Some(CORE), &[]).await;
    let started = tokio::time::Instant::now();
    let exit = module.exit_status(PATIENCE).await.expect("exits by itself");
    assert_eq!(exit.code(), Some(3), "exit status says nobody came");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn e2_type1_accepts_only_its_launching_core() {
    let ca = TestCa::new();
    let module = ModuleProcess::start(&ca, MODULE, &contract(TYPE_I), Some(CORE), &[]).await;
    assert_eq!(other_core_refused(&ca, &module).await, Reason::WrongCore);
    let ok = lease(&ca, CORE, &module, Duration::from_secs(5)).await;
    say(&ok).await.unwrap();
}

#[tokio::test]
async fn e3_expired_grace_lets_only_the_same_core_lease_again() {
    let ca = TestCa::new();
    let body = contract("expired_grace = \"3s\"\ntermination_window = \"1s\"");
    let module = ModuleProcess::start(&ca, MODULE, &body, Some(CORE), &[]).await;
    let first = lease(&ca, CORE, &module, Duration::from_secs(10)).await;
    revoke(&first, "transient");
    wait_phase(&ca, &module, "expired-grace").await;
    assert_eq!(other_core_refused(&ca, &module).await, Reason::WrongCore);
    let again = lease(&ca, CORE, &module, Duration::from_secs(5)).await;
    say(&again).await.unwrap();
    wait_phase(&ca, &module, "leased").await;
}

#[tokio::test]
async fn e4_e5_type1_cleans_up_and_exits_by_itself_after_zero_lease() {
    let ca = TestCa::new();
    let mut module = ModuleProcess::start(&ca, MODULE, &contract(TYPE_I), Some(CORE), &[]).await;
    let core = lease(&ca, CORE, &module, Duration::from_millis(300)).await;
    say(&core).await.unwrap();
    core.link.stop_renewing().await;
    // No kill: the process ends on its own after its termination window.
    let exit = module
        .exit_status(PATIENCE)
        .await
        .expect("the module exits by itself");
    assert!(exit.success(), "{exit:?}");
    assert!(module.cleaned_up(), "the cleanup hook ran");
}

/// A call still running when its lease expires ends `LEASE_EXPIRED`, and
/// its handler never completes: the same Core leases `contract_body`'s module
/// again (a Type I module within its expired grace) and looks.
async fn mid_execution_expiry_halts_the_handler(contract_body: &str) {
    let ca = TestCa::new();
    let module = ModuleProcess::start(&ca, MODULE, contract_body, Some(CORE), &[]).await;
    let core = lease(&ca, CORE, &module, Duration::from_millis(300)).await;
    core.link.stop_renewing().await;
    let status = EchoClient::new(core.link.channel())
        .slow(SlowRequest { millis: 1_500 })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), Some(Reason::LeaseExpired));
    // The handler started and never completed, even after its sleep would end.
    let again = lease(&ca, CORE, &module, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(count(&again).await, counted(1, 0));
}

#[tokio::test]
async fn e6_type1_mid_execution_expiry_halts_without_side_effects() {
    mid_execution_expiry_halts_the_handler(&contract("expired_grace = \"5s\"")).await;
}

#[tokio::test]
async fn e7_type1_is_the_default_type() {
    let ca = TestCa::new();
    let module = ModuleProcess::start(&ca, MODULE, &contract(""), Some(CORE), &[]).await;
    let s = status(&ca, &module).await;
    assert_eq!(s.module_type, "ephemeral");
    assert_eq!(s.phase, "awaiting-lease");
}

// ---------------------------------------------------------------- R: Type II

#[tokio::test]
async fn r1_type2_is_declared_with_its_init_mode() {
    let ca = TestCa::new();
    let stderr = fails_to_start(&ca, &contract("type = \"resident-private\"")).await;
    assert!(stderr.contains("init"), "{stderr}");
    let module = ModuleProcess::start(&ca, MODULE, &contract(TYPE_II), Some(CORE), &[]).await;
    assert_eq!(status(&ca, &module).await.module_type, "resident-private");
}

#[tokio::test]
async fn r2_type2_binds_to_one_core() {
    let ca = TestCa::new();
    // Not configured: the first Core to lease it owns it.
    let module = ModuleProcess::start(&ca, MODULE, &contract(TYPE_II), None, &[]).await;
    let first = lease(&ca, CORE, &module, Duration::from_secs(5)).await;
    assert_eq!(status(&ca, &module).await.bound_core, CORE);
    assert_eq!(other_core_refused(&ca, &module).await, Reason::WrongCore);
    // Still bound once its lease is gone.
    revoke(&first, "done");
    wait_phase(&ca, &module, "standby").await;
    assert_eq!(other_core_refused(&ca, &module).await, Reason::WrongCore);
}

#[tokio::test]
async fn r3_r4_type2_standby_keeps_process_refuses_calls_and_resumes() {
    let ca = TestCa::new();
    let module = ModuleProcess::start(&ca, MODULE, &contract(TYPE_II), Some(CORE), &[]).await;
    let first = lease(&ca, CORE, &module, Duration::from_secs(10)).await;
    say(&first).await.unwrap();
    let pid = status(&ca, &module).await.pid;
    revoke(&first, "standby please");
    let s = wait_phase(&ca, &module, "standby").await;
    assert_eq!(s.pid, pid, "same process");
    assert_eq!(s.pid, module.pid());
    // Every capability call is refused with STANDBY, with no side effect.
    let conn = dial(&ca, CORE, &module).await;
    for _ in 0..3 {
        let status = say_unleased(&conn).await;
        assert_eq!(reason(&status), Some(Reason::Standby));
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
    // A new lease from the same Core resumes service on the same process,
    // and the refused calls left no trace.
    let again = lease(&ca, CORE, &module, Duration::from_secs(10)).await;
    assert_eq!(count(&again).await.calls, 1);
    say(&again).await.unwrap();
    assert_eq!(status(&ca, &module).await.pid, pid);
}

#[tokio::test]
async fn r5_type2_ends_only_by_explicit_shutdown() {
    let ca = TestCa::new();
    let mut module =
        ModuleProcess::start(&ca, MODULE, &contract(TYPE_II), Some(CORE), &[OPERATOR]).await;
    let core = lease(&ca, CORE, &module, Duration::from_millis(300)).await;
    core.link.stop_renewing().await;
    wait_phase(&ca, &module, "standby").await;
    assert!(
        module
            .exit_status(Duration::from_millis(500))
            .await
            .is_none(),
        "lease expiry does not end a Type II module"
    );
    // Another Core may not shut it down.
    let status = shutdown(&ca, OTHER_CORE, &module, "no").await.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::WrongCore));
    // Its own Core may.
    shutdown(&ca, CORE, &module, "maintenance").await.unwrap();
    let exit = module
        .exit_status(PATIENCE)
        .await
        .expect("exits on shutdown");
    assert!(exit.success());
}

#[tokio::test]
async fn r6_type2_mid_execution_expiry_halts_with_lease_expired() {
    mid_execution_expiry_halts_the_handler(&contract(TYPE_II)).await;
}

// ---------------------------------------------------------------- S: Type III

#[tokio::test]
async fn s1_s2_type3_is_declared_and_runs_without_any_core() {
    let ca = TestCa::new();
    let body = contract("type = \"resident-shared\"\nstartup_grace = \"200ms\"");
    let mut module = ModuleProcess::start(&ca, MODULE, &body, None, &[]).await;
    let s = status(&ca, &module).await;
    assert_eq!(s.module_type, "resident-shared");
    assert!(
        module
            .exit_status(Duration::from_millis(600))
            .await
            .is_none(),
        "no startup grace applies to infrastructure-started modules"
    );
    assert_eq!(status(&ca, &module).await.phase, "awaiting-lease");
}

#[tokio::test]
async fn s3_s5_s8_type3_serves_cores_concurrently_and_one_expiry_touches_only_that_core() {
    let ca = TestCa::new();
    let (_module, a, b) = two_tenants(&ca, Duration::from_millis(400)).await;
    // Both call at once.
    let (ra, rb) = tokio::join!(say(&a), say(&b));
    assert_eq!(ra.unwrap().caller, CORE);
    assert_eq!(rb.unwrap().caller, OTHER_CORE);
    // A stops renewing; B keeps calling through A's expiry without a refusal.
    a.link.stop_renewing().await;
    let mut b_calls = 0;
    while !matches!(a.link.state(), LeaseState::Expired | LeaseState::Ended(_)) || b_calls < 50 {
        let reply = say(&b).await.unwrap_or_else(|s| panic!("B refused: {s:?}"));
        b_calls += 1;
        // S8: B's results do not depend on A: its own count, its own identity.
        assert_eq!(reply.tenant_count, b_calls + 1);
        assert_eq!(reply.caller, OTHER_CORE);
    }
    let status = say(&a).await.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::LeaseExpired));
    assert_eq!(b.link.state(), LeaseState::Active);
}

#[tokio::test]
async fn s4_s9_type3_state_is_per_lease_and_deleted_when_the_lease_ends() {
    let ca = TestCa::new();
    let (module, a, b) = two_tenants(&ca, Duration::from_secs(10)).await;
    for n in 1..=3 {
        assert_eq!(say(&a).await.unwrap().tenant_count, n);
    }
    assert_eq!(
        say(&b).await.unwrap().tenant_count,
        1,
        "B never sees A's state"
    );
    revoke(&a, "done");
    let a2 = lease(&ca, CORE, &module, Duration::from_secs(10)).await;
    assert_eq!(
        say(&a2).await.unwrap().tenant_count,
        1,
        "A's old state is gone"
    );
    assert_eq!(
        say(&b).await.unwrap().tenant_count,
        2,
        "B's state is untouched"
    );
}

#[tokio::test]
async fn s6_type3_enters_standby_when_all_leases_are_gone() {
    let ca = TestCa::new();
    let (module, a, b) = two_tenants(&ca, Duration::from_secs(10)).await;
    revoke(&a, "done");
    assert_eq!(wait_phase(&ca, &module, "leased").await.active_leases, 1);
    revoke(&b, "done");
    let s = wait_phase(&ca, &module, "standby").await;
    assert_eq!(s.active_leases, 0);
    let conn = dial(&ca, CORE, &module).await;
    let status = say_unleased(&conn).await;
    assert_eq!(reason(&status), Some(Reason::Standby));
}

#[tokio::test]
async fn s7_type3_is_terminated_only_by_an_administrator() {
    let ca = TestCa::new();
    let mut module =
        ModuleProcess::start(&ca, MODULE, &contract(TYPE_III), None, &[OPERATOR]).await;
    let a = lease(&ca, CORE, &module, Duration::from_millis(300)).await;
    a.link.stop_renewing().await;
    wait_phase(&ca, &module, "standby").await;
    // Not even a Core that leased it may stop a shared module.
    let status = shutdown(&ca, CORE, &module, "mine").await.unwrap_err();
    assert_eq!(reason(&status), Some(Reason::WrongCore));
    assert!(
        module
            .exit_status(Duration::from_millis(300))
            .await
            .is_none()
    );
    shutdown(&ca, OPERATOR, &module, "maintenance")
        .await
        .unwrap();
    assert!(module.exit_status(PATIENCE).await.expect("exits").success());
}

#[tokio::test]
async fn s10_core_blacklists_a_compromised_module_and_says_why() {
    let ca = TestCa::new();
    let module = ModuleProcess::start(&ca, MODULE, &contract(TYPE_III), None, &[]).await;
    let table = LeaseTable::new();
    let first = say_lease(&ca, CORE, &module, table.clone()).await.unwrap();
    say(&first).await.unwrap();
    table.blacklist(module.urn.clone(), "state of one Core leaked into another");
    let refused = say_lease(&ca, CORE, &module, table.clone()).await;
    match refused {
        Err(CoreLeaseError::Blacklisted { module: m, why }) => {
            assert_eq!(m.as_str(), MODULE);
            assert!(why.contains("leaked"), "{why}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a blacklisted module was leased"),
    }
    let _ = (&first.table, &first.audit);
}
