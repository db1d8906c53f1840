//! The Type I scenario and its rows: E1 (no connection within the startup
//! grace: exit 3), E2 (leases from its launching Core only), E3 (the expired
//! grace: the same Core leases again), E4 (zero-lease opens the termination
//! window), E5 (it terminates by itself, status 0), E6 (expiry mid-execution
//! halts), Z1 (zero-lease on the startup grace and on connection loss) and
//! Z3 (a Type I module terminates at zero-lease). Each destructive check
//! runs in a process of its own.

use std::time::{Duration, Instant};

use anima_protocol::lease::Reason;
use anima_protocol::{Connection, Urn};

use super::ending::Provocation;
use super::{Run, Target, status_failed};
use crate::error::ToolError;
use crate::report::Report;
use crate::session::{self, Actor};
use crate::target::Running;

impl Run<'_> {
    /// Runs the Type I scenario: the module is started for each part.
    pub(crate) async fn type1(&mut self, r: &mut Report) {
        let Target::Launch(_) = &self.plan.target else {
            for id in ["E1", "E2", "E3", "E4", "E5", "E6", "Z3"] {
                r.not_applicable(
                    id,
                    "Type I modules are started by their Core: give a command, not an endpoint",
                );
            }
            if let Target::Endpoint(addr) = self.plan.target {
                self.static_checks(r, addr, None).await;
            }
            return;
        };
        let core_a = self.ids().core_a.clone();
        let core_b = self.ids().core_b.clone();
        let core_urn = core_a.identity.urn().clone();
        let c = &self.plan.contract;
        let exit_within = c.expired_grace + c.termination_window + Duration::from_secs(3);

        // E1: nobody connects.
        self.no_connection(r, &core_urn).await;

        // The main run: static checks, the first lease, other Cores, revoke.
        // Its process is kept (and killed if still running) to the end.
        let Some(_main) = self.main_run(r, &core_urn, &core_b, exit_within).await else {
            return;
        };

        // E3: the expired grace.
        self.expired_grace(r, &core_urn, &core_a, &core_b, exit_within)
            .await;

        // E6 and the remaining destructive checks, one process each.
        self.destructive_steps(r, &core_urn, &core_a, exit_within)
            .await;
        // Z1 connection loss.
        self.lost_connection(r, &core_urn, &core_a, exit_within)
            .await;
    }

    /// E1: nobody connects; the module must exit with status 3 within its
    /// startup grace (Z1).
    async fn no_connection(&mut self, r: &mut Report, core_urn: &Urn) {
        let c = &self.plan.contract;
        match self.start(Some(core_urn)).await {
            Err(e) => r.fail("E1", format!("cannot start: {e}")),
            Ok((_, Some(mut p))) => {
                let within = c.startup_grace + Duration::from_secs(3);
                let started = Instant::now();
                match p.wait_exit(within).await {
                    Some(st) if st.code() == Some(3) => {
                        r.pass("E1", format!("no connection: exited with status 3 after {} ms (startup grace {} ms)", started.elapsed().as_millis(), c.startup_grace.as_millis()));
                        r.pass("Z1", "no connection within the startup grace: zero-lease, the module terminated");
                    }
                    Some(st) => r.fail(
                        "E1",
                        format!("no connection: exited with {st} (want status 3)"),
                    ),
                    None => {
                        r.fail("E1", format!("no connection: still running {} ms after start (startup grace {} ms)", within.as_millis(), c.startup_grace.as_millis()));
                        p.kill().await;
                    }
                }
            }
            Ok((_, None)) => {}
        }
    }

    /// The main run: static checks, the first lease, other Cores (E2), the
    /// hostile checks, revocation and the termination window (E4). The
    /// process, unless it could not start.
    async fn main_run(
        &mut self,
        r: &mut Report,
        core_urn: &Urn,
        core_b: &Actor,
        exit_within: Duration,
    ) -> Option<Running> {
        let Ok((addr, Some(mut p))) = self
            .start(Some(core_urn))
            .await
            .map_err(|e| r.fail("T1", format!("cannot start: {e}")))
        else {
            return None;
        };
        self.static_checks(r, addr, p.pid).await;
        self.unleased_calls(r, addr, Reason::NoLease, "before any lease")
            .await;
        if let Some(mut s) = self.first_lease(r, addr).await {
            self.wrong_core(r, addr, core_b, "E2").await;
            self.hostile_checks(r, addr, &mut s).await;
            self.sidecar_checks(r, addr, &mut s).await;
            self.leased_checks(r, addr, &mut s, Reason::NoLease).await;
            let admin = self.dial(&self.ids().operator, addr).await.ok();
            self.revoke_checks(r, s).await;
            // E4: the module is in its grace or termination window now.
            match admin {
                Some(admin) => match window_phase(&admin, Duration::from_secs(2)).await {
                    Ok(phase) => r.pass("E4", format!("after the lease ended the module reported phase {phase:?}: its termination window is open")),
                    Err(e) => match p.wait_exit(Duration::from_secs(2)).await {
                        // Too quick to observe: the window ran its cleanup
                        // and the module exited cleanly.
                        Some(st) if st.success() => r.pass(
                            "E4",
                            format!("the module closed its window and exited 0 before the phase could be read ({e})"),
                        ),
                        _ => r.fail("E4", format!("after the lease ended: {e}")),
                    },
                },
                None => r.fail("E4", "cannot reach ModuleAdmin before the lease ended"),
            }
            self.await_exit(r, &mut p, exit_within, "after revocation")
                .await;
        }
        Some(p)
    }

    /// E3: within the expired grace the same Core leases again, another
    /// Core does not.
    async fn expired_grace(
        &mut self,
        r: &mut Report,
        core_urn: &Urn,
        core_a: &Actor,
        core_b: &Actor,
        exit_within: Duration,
    ) {
        let c = &self.plan.contract;
        if c.expired_grace >= Duration::from_millis(300) {
            if let Ok((addr, Some(mut p))) = self.start(Some(core_urn)).await {
                if let Ok(s) = self
                    .open(core_a, addr, &self.declared.clone(), self.ttl())
                    .await
                {
                    let mut s = s;
                    s.revoke_and_wait("conformance: grace").await;
                    self.wrong_core(r, addr, core_b, "E3").await;
                    match self
                        .open(core_a, addr, &self.declared.clone(), self.ttl())
                        .await
                    {
                        Ok(mut again) => {
                            r.pass("E3", "within the expired grace the same Core leased again");
                            again.revoke("conformance: grace done").await;
                        }
                        Err(e) => r.fail(
                            "E3",
                            format!("within the expired grace the same Core was refused: {e}"),
                        ),
                    }
                }
                self.await_exit(
                    r,
                    &mut p,
                    exit_within + c.expired_grace,
                    "after the grace re-lease",
                )
                .await;
            }
        } else {
            r.not_applicable("E3", "the contract has no expired grace");
        }
    }

    /// E6 (expiry mid-call), the Core's refusal, a refused scope, forged
    /// and replayed proofs, the Core's clean half-close, and (with the
    /// probe's stream) streams whose lease expires or is revoked: one process
    /// each, which must then exit (E5).
    async fn destructive_steps(
        &mut self,
        r: &mut Report,
        core_urn: &Urn,
        core_a: &Actor,
        exit_within: Duration,
    ) {
        // Steps 6 and 7 need the probe's stream.
        let steps = if self.watch { 8 } else { 6 };
        for step in 0..steps {
            let (addr, mut p) = match self.start(Some(core_urn)).await {
                Ok((addr, Some(p))) => (addr, p),
                Ok((_, None)) => {
                    r.fail(
                        "T1",
                        "cannot start the module again: not started by the tool",
                    );
                    continue;
                }
                Err(e) => {
                    r.fail("T1", format!("cannot start the module again: {e}"));
                    continue;
                }
            };
            match step {
                0 => self.expiry_checks(r, addr, core_a, "E6").await,
                1..=4 => {
                    self.provoke_end(r, addr, core_a, Provocation::ALL[step - 1])
                        .await;
                }
                5 => self.half_close_checks(r, addr, core_a).await,
                6 => {
                    self.stream_checks(r, addr, core_a, Reason::LeaseExpired, "E6")
                        .await;
                }
                _ => {
                    self.stream_checks(r, addr, core_a, Reason::LeaseRevoked, "Z1")
                        .await;
                }
            }
            self.await_exit(
                r,
                &mut p,
                exit_within,
                [
                    "after expiry",
                    "after the Core's refusal",
                    "after a refused scope",
                    "after a forged proof",
                    "after a replayed proof",
                    "after the Core's clean half-close",
                    "after a stream's lease expired",
                    "after a stream's lease was revoked",
                ][step],
            )
            .await;
        }
    }

    /// Z1: a lease whose connection is lost ends, and the module exits.
    async fn lost_connection(
        &mut self,
        r: &mut Report,
        core_urn: &Urn,
        core_a: &Actor,
        exit_within: Duration,
    ) {
        if let Ok((addr, Some(mut p))) = self.start(Some(core_urn)).await
            && self.drop_connection(r, addr, core_a).await
        {
            if let Some(st) = p.wait_exit(exit_within).await {
                r.check(
                    "Z1",
                    st.success(),
                    format!("connection loss: zero-lease, the module exited with {st}"),
                );
            } else {
                r.fail("Z1", "connection loss: the module is still running");
                r.fail(
                    "E5",
                    format!(
                        "still running {} ms after its connection was lost",
                        exit_within.as_millis()
                    ),
                );
                p.kill().await;
            }
        }
    }

    /// A Type I module must end by itself with status 0 (E5, Z3).
    async fn await_exit(&self, r: &mut Report, p: &mut Running, within: Duration, when: &str) {
        let started = Instant::now();
        match p.wait_exit(within).await {
            Some(st) if st.success() => {
                r.pass(
                    "E5",
                    format!(
                        "{when}: exited by itself with status 0 in {} ms",
                        started.elapsed().as_millis()
                    ),
                );
                r.pass("Z3", format!("{when}: Type I terminated"));
            }
            Some(st) => r.fail("E5", format!("{when}: exited with {st} (want 0)")),
            None => {
                r.fail("E5", format!("{when}: still running {} ms after its lease ended (expired grace + termination window + 3 s)", within.as_millis()));
                r.fail(
                    "Z3",
                    format!("{when}: zero-lease, but the process did not terminate"),
                );
                p.kill().await;
            }
        }
    }
}

/// The phases of a Type I module's windows after its lease ended.
const WINDOW_PHASES: &[&str] = &["expired-grace", "terminating"];

/// Polls `Status` until the phase is `expired-grace` or `terminating`.
async fn window_phase(conn: &Connection, within: Duration) -> Result<String, ToolError> {
    let until = Instant::now() + within;
    loop {
        match session::status(conn).await {
            Ok(st) if WINDOW_PHASES.contains(&st.phase.as_str()) => {
                return Ok(st.phase);
            }
            Ok(st) if Instant::now() >= until => {
                return Err(ToolError::Phase {
                    phase: st.phase,
                    want: WINDOW_PHASES,
                    after: within,
                });
            }
            Ok(_) => {}
            Err(st) => return Err(status_failed(st)),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
