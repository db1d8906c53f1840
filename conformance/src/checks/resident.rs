//! The Types II and III scenario (resident modules) and its rows: R1 and
//! S2 (running with no Core connected: phase `awaiting-lease`), R2 (one Core
//! only), R3 and S6 (zero-lease is standby, the process stays), R4 (standby
//! refuses every call and waits for the same Core), R5 and S7 (no lease's
//! end terminates the module; only its operator shuts it down), R6 (expiry
//! mid-execution halts, no side effect), S5 and A6 (another lease's end
//! leaves a lease working), S9 (a new lease starts empty), Z1 and Z3 (the
//! same process stays at zero-lease). The same steps decide the Type II row
//! or its Type III counterpart.

use std::net::SocketAddr;
use std::time::Duration;

use anima_protocol::contract::ModuleType;
use anima_protocol::lease::Reason;

use super::Run;
use super::ending::Provocation;
use crate::report::Report;
use crate::session::{self, Actor, Session, describe, has_reason};
use crate::target::Running;

/// What every step of the resident scenario works with: where the module
/// listens, whether it is Type III (the `S` rows decide) and the tool's two
/// Cores.
struct Scene {
    addr: SocketAddr,
    shared: bool,
    core_a: Actor,
    core_b: Actor,
}

impl Run<'_> {
    /// Runs the resident scenario against one process (or endpoint).
    pub(crate) async fn resident(&mut self, r: &mut Report) {
        let shared = matches!(self.plan.contract.module_type, ModuleType::ResidentShared);
        let core_a = self.ids().core_a.clone();
        let core_b = self.ids().core_b.clone();
        let Some((addr, mut process, pid)) = self.resident_start(r, shared, &core_a).await else {
            return;
        };
        let scene = Scene {
            addr,
            shared,
            core_a,
            core_b,
        };
        // Leases other Cores hold on a running module (endpoint mode): then
        // it is not in standby, and calls without a lease are NO_LEASE.
        let foreign = self.active_leases(addr).await.unwrap_or(0);
        let Some(a) = self.first_lease_checks(r, &scene, foreign).await else {
            return;
        };
        for what in Provocation::ALL {
            self.provoke_end(r, addr, &scene.core_a, what).await;
        }
        self.connection_loss(r, addr, &scene.core_a).await;
        // Zero-lease: revoke the last lease; standby, same process.
        self.revoke_checks(r, a).await;
        self.standby_checks(r, &scene, foreign, pid, &mut process)
            .await;
        self.after_standby(r, &scene).await;
        self.shutdown_checks(r, &scene, process).await;
    }

    /// Starts the module (bound to `core_a` when core-started), runs the
    /// static checks and checks the phase before any lease (R1, S2). Where
    /// it listens, the process the tool started, and its pid when known.
    async fn resident_start(
        &mut self,
        r: &mut Report,
        shared: bool,
        core_a: &Actor,
    ) -> Option<(SocketAddr, Option<Running>, Option<u32>)> {
        let core_urn = core_a.identity.urn().clone();
        // Core-started Type II is bound to its launching Core; pre-started
        // Type II binds to its first lessee; Type III ignores it.
        let bind = match self.plan.contract.module_type {
            ModuleType::ResidentPrivate(anima_protocol::contract::InitMode::CoreStarted) => {
                Some(&core_urn)
            }
            _ => None,
        };
        let (addr, process) = match self.start(bind).await {
            Ok(x) => x,
            Err(e) => {
                r.fail("T1", format!("cannot start: {e}"));
                return None;
            }
        };
        let pid = match process.as_ref() {
            Some(p) => p.pid,
            None => self.status_pid(addr).await,
        };
        self.static_checks(r, addr, pid).await;
        match self
            .await_phase(addr, &["awaiting-lease"], Duration::ZERO)
            .await
        {
            Ok(_) => {
                let row = if shared { "S2" } else { "R1" };
                r.pass(row, "running with no Core connected: phase awaiting-lease");
            }
            Err(e) if process.is_none() => r.not_applicable(
                if shared { "S2" } else { "R1" },
                format!("endpoint already used: {e}"),
            ),
            Err(e) => r.fail(
                if shared { "S2" } else { "R1" },
                format!("before any lease: {e}"),
            ),
        }
        Some((addr, process, pid))
    }

    /// Calls before any lease, the first lease and what runs beside it:
    /// another Core (R2) or tenants (Type III), the hostile checks, expiry
    /// mid-call (R6, or A6 under Type III), streams, and the first lease
    /// still working after another's expiry (S5, A6). The first lease.
    async fn first_lease_checks(
        &mut self,
        r: &mut Report,
        scene: &Scene,
        foreign: u32,
    ) -> Option<Session> {
        let (addr, shared) = (scene.addr, scene.shared);
        let (core_a, core_b) = (&scene.core_a, &scene.core_b);
        let unleased = if foreign > 0 {
            Reason::NoLease
        } else {
            Reason::Standby
        };
        self.unleased_calls(r, addr, unleased, "before any lease")
            .await;
        let mut a = self.first_lease(r, addr).await?;
        if shared {
            self.tenants(r, addr, &mut a, core_b).await;
        } else {
            self.wrong_core(r, addr, core_b, "R2").await;
        }
        self.hostile_checks(r, addr, &mut a).await;
        self.sidecar_checks(r, addr, &mut a).await;
        self.leased_checks(r, addr, &mut a, Reason::NoLease).await;
        let halt_row = if shared { "A6" } else { "R6" };
        self.expiry_checks(r, addr, core_a, halt_row).await;
        self.half_close_checks(r, addr, core_a).await;
        self.stream_checks(r, addr, core_a, Reason::LeaseExpired, halt_row)
            .await;
        self.stream_checks(r, addr, core_a, Reason::LeaseRevoked, "Z1")
            .await;
        if self.probe {
            // Nothing the halted call staged was applied.
            self.keep(&mut a).await;
            if let Ok(reading) = a.read().await {
                let (_, commit_ok) =
                    self.ledger
                        .check(r, &reading, "after a call halted by expiry");
                r.check(halt_row, commit_ok, format!("after the halted call the module has committed {} touches in all (want {} from this run)", reading.committed, self.ledger.committed));
            }
        }
        // A's first lease lives on through another lease's expiry.
        match a.read().await {
            Ok(_) => {
                let row = if shared { "S5" } else { "A6" };
                r.pass(row, "another lease's expiry left this lease working");
            }
            Err(st) if !self.probe => r.pass("A6", format!("(no probe) {}", describe(&st))),
            Err(st) => r.fail(
                if shared { "S5" } else { "A6" },
                format!(
                    "after another lease expired, this one failed: {}",
                    describe(&st)
                ),
            ),
        }
        Some(a)
    }

    /// With no lease left: standby (R3, S6), the same process (Z3, Z1), it
    /// still runs (R5, S7), and every call is refused `STANDBY` (R4).
    async fn standby_checks(
        &mut self,
        r: &mut Report,
        scene: &Scene,
        foreign: u32,
        pid: Option<u32>,
        process: &mut Option<Running>,
    ) {
        let (addr, shared) = (scene.addr, scene.shared);
        let (row_standby, row_stay) = if shared { ("S6", "S7") } else { ("R3", "R5") };
        // `None`: other Cores' leases keep it out of standby.
        let standby = if foreign > 0 {
            r.not_applicable(
                row_standby,
                format!(
                    "other Cores hold {foreign} leases on this module: it cannot be in standby"
                ),
            );
            None
        } else {
            Some(
                self.await_phase(addr, &["standby"], Duration::from_secs(3))
                    .await,
            )
        };
        match &standby {
            None => {}
            Some(Ok(st)) => {
                r.pass(
                    row_standby,
                    format!("no lease left: phase standby, {} leases", st.active_leases),
                );
                r.check(
                    "Z3",
                    pid.is_none_or(|p| p == st.pid),
                    format!("the same process stays (pid {})", st.pid),
                );
                r.pass(
                    "Z1",
                    "connection loss and revocation ended their leases (no lease left)",
                );
            }
            Some(Err(e)) => r.fail(row_standby, format!("with no lease left: {e}")),
        }
        if let Some(p) = process.as_mut() {
            r.check(
                row_stay,
                p.alive(),
                "after its leases expired, were revoked and lost, the process still runs"
                    .to_owned(),
            );
            if !shared {
                r.check("R3", p.alive(), "standby keeps the process".to_owned());
            }
        }
        if foreign == 0 {
            let refused = self
                .unleased_calls(r, addr, Reason::Standby, "standby")
                .await;
            if !shared {
                r.check(
                    "R4",
                    refused,
                    "in standby every capability call is refused STANDBY (details under Z2)",
                );
            }
        }
    }

    /// A new lease from the same Core is taken (R4, S9: nothing kept).
    async fn after_standby(&mut self, r: &mut Report, scene: &Scene) {
        let (addr, shared) = (scene.addr, scene.shared);
        let (core_a, core_b) = (&scene.core_a, &scene.core_b);
        match self
            .open(core_a, addr, &self.declared.clone(), self.ttl())
            .await
        {
            Ok(mut again) => {
                if !shared {
                    r.pass("R4", "after standby the same Core leases again");
                }
                if self.probe {
                    let row = if shared { "S9" } else { "A6" };
                    let what = "a new lease after standby";
                    self.check_touches(r, &mut again, what, row, 0, "a new lease starts with")
                        .await;
                }
                if !shared {
                    self.wrong_core(r, addr, core_b, "R2").await;
                }
                again.revoke_and_wait("conformance: done").await;
            }
            Err(e) => r.fail(
                if shared { "S6" } else { "R4" },
                format!("after standby the same Core could not lease: {e}"),
            ),
        }
    }

    /// Shutdown: refused to others, honoured for the operator (R5, S7).
    async fn shutdown_checks(&mut self, r: &mut Report, scene: &Scene, process: Option<Running>) {
        let addr = scene.addr;
        let row_stay = if scene.shared { "S7" } else { "R5" };
        let stranger = if scene.shared {
            &scene.core_a
        } else {
            &scene.core_b
        };
        if let Ok(conn) = self.dial(stranger, addr).await {
            match session::shutdown(&conn, "conformance: not allowed").await {
                // At an endpoint the tool neither sees the process nor acts as
                // its operator: one refused Shutdown is not enough to pass.
                Err(st) if has_reason(&st, Reason::WrongCore) && process.is_none() => r
                    .not_applicable(
                        row_stay,
                        format!(
                            "endpoint mode: the tool cannot watch the process or shut it down as its \
                             operator, so it cannot tell what terminates it (a Shutdown from {} was \
                             refused WRONG_CORE)",
                            stranger.identity.urn()
                        ),
                    ),
                Err(st) if has_reason(&st, Reason::WrongCore) => r.pass(
                    row_stay,
                    format!(
                        "Shutdown from {} refused WRONG_CORE",
                        stranger.identity.urn()
                    ),
                ),
                Err(st) => r.fail(
                    row_stay,
                    format!(
                        "Shutdown from {}: {} (want WRONG_CORE)",
                        stranger.identity.urn(),
                        describe(&st)
                    ),
                ),
                Ok(()) => r.fail(
                    row_stay,
                    format!(
                        "{} (not its Core, not an operator) shut the module down",
                        stranger.identity.urn()
                    ),
                ),
            }
        }
        if let Some(mut p) = process {
            match self.dial(&self.ids().operator, addr).await {
                Ok(conn) => {
                    let _ = session::shutdown(&conn, "conformance: done").await;
                    match p.wait_exit(Duration::from_secs(5)).await {
                        Some(st) => r.check(
                            row_stay,
                            st.success(),
                            format!("an operator's Shutdown: exited with {st}"),
                        ),
                        None => {
                            if p.alive() {
                                r.fail(row_stay, "an operator's Shutdown: still running after 5 s");
                            }
                            p.kill().await;
                        }
                    }
                }
                Err(_) => p.kill().await,
            }
        }
    }
}
