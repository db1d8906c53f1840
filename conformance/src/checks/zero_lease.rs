//! Zero-lease rows: Z1 (a lease ends with its connection: a resident
//! module's open leases fall back; the lease Type I's check drops), Z2 (no
//! valid lease, no handler execution: every declared method refused without
//! a lease, and the probe's counts against the calls admitted) and A1 (a
//! static token admits nothing).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anima_protocol::Connection;
use anima_protocol::lease::Reason;

use super::{Run, TOUCH};
use crate::report::Report;
use crate::session::{self, Actor, call_empty, describe, has_reason};

/// Counts what the probe must report (Z2, E6/R6): executions and commits
/// since a first reading, against the calls the module admitted.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    base: Option<(u64, u64)>,
    pub(crate) admitted: u64,
    /// Calls that may or may not have reached their handler (a Touch sent
    /// just as its lease expires).
    pub(crate) maybe: u64,
    pub(crate) committed: u64,
    /// Touches that may have been committed without the tool seeing them (a
    /// `Watch` reading committed as its lease ended, then dropped).
    pub(crate) maybe_committed: u64,
}

impl Ledger {
    pub(crate) fn check(
        &mut self,
        r: &mut Report,
        reading: &anima_protocol::pb::ProbeReading,
        when: &str,
    ) -> (bool, bool) {
        let (exec0, commit0) = *self.base.get_or_insert((
            reading.executions.saturating_sub(self.admitted),
            reading.committed.saturating_sub(self.committed),
        ));
        let exec = reading.executions.saturating_sub(exec0);
        let commit = reading.committed.saturating_sub(commit0);
        let exec_ok = exec >= self.admitted && exec <= self.admitted + self.maybe;
        r.check(
            "Z2",
            exec_ok,
            format!(
                "{when}: the probe counts {exec} handler executions; the module admitted {} calls{}",
                self.admitted,
                if self.maybe > 0 { format!(" (+ up to {} sent as their lease expired)", self.maybe) } else { String::new() }
            ),
        );
        let commit_ok = commit >= self.committed && commit <= self.committed + self.maybe_committed;
        if !commit_ok {
            r.fail(
                "Z2",
                format!(
                    "{when}: {commit} touches committed; {} were committed under a valid lease{}",
                    self.committed,
                    if self.maybe_committed > 0 {
                        format!(" (+ up to {} as their lease ended)", self.maybe_committed)
                    } else {
                        String::new()
                    }
                ),
            );
        }
        (exec_ok, commit_ok)
    }
}

impl Run<'_> {
    /// Calls every declared method on a connection without a lease (with
    /// static credentials for good measure): each must be refused with
    /// `want` and run nothing.
    pub(crate) async fn unleased_calls(
        &self,
        r: &mut Report,
        addr: SocketAddr,
        want: Reason,
        when: &str,
    ) -> bool {
        let conn = match self.dial(&self.ids().core_a, addr).await {
            Ok(c) => c,
            Err(e) => {
                r.fail("T1", format!("{when}: cannot connect: {e}"));
                return false;
            }
        };
        let secrets = [
            (
                "authorization",
                "Bearer conformance-static-token".to_owned(),
            ),
            ("x-api-key", "conformance-static-key".to_owned()),
        ];
        let mut all_refused = true;
        for method in self.declared.iter() {
            let result = if method == TOUCH {
                session::touch(&conn, None, 0).await.map(|_| ())
            } else {
                call_empty(&conn, method, &secrets).await
            };
            match result {
                Err(s) if has_reason(&s, want) => {
                    r.pass("Z2", format!("{when}: {method} refused {}", want.as_str()));
                    r.pass(
                        "A1",
                        format!("{when}: {method} with a static token: refused"),
                    );
                }
                Err(s) => {
                    all_refused = false;
                    r.fail(
                        "Z2",
                        format!(
                            "{when}: {method}: {} (want {})",
                            describe(&s),
                            want.as_str()
                        ),
                    );
                }
                Ok(()) => {
                    all_refused = false;
                    r.fail("Z2", format!("{when}: {method} ran without a lease"));
                    r.fail(
                        "A1",
                        format!("{when}: {method} ran with only a static token"),
                    );
                }
            }
        }
        if self.probe {
            // A made-up proof on a connection without a lease.
            let fake = format!("v1.1.{}", "A".repeat(22));
            match session::touch(&conn, Some(fake), 0).await {
                Err(s) if has_reason(&s, want) || has_reason(&s, Reason::BadProof) => {
                    r.pass("Z2", format!("{when}: Touch with a made-up proof refused"));
                }
                Err(s) => {
                    all_refused = false;
                    r.fail(
                        "Z2",
                        format!("{when}: Touch with a made-up proof: {}", describe(&s)),
                    );
                }
                Ok(_) => {
                    all_refused = false;
                    r.fail("Z2", format!("{when}: Touch with a made-up proof ran"));
                }
            }
        }
        all_refused
    }

    /// Drops the connection of a fresh lease (Z1 connection loss).
    pub(crate) async fn drop_connection(
        &self,
        r: &mut Report,
        addr: SocketAddr,
        actor: &Actor,
    ) -> bool {
        // The session (and its connection) is dropped at once.
        self.lease_declared(r, actor, addr, self.ttl())
            .await
            .is_some()
    }

    /// A resident module's lease ends with its connection (Z1): the open
    /// lease count rises with a new lease and falls back when its
    /// connection is dropped.
    pub(crate) async fn connection_loss(&self, r: &mut Report, addr: SocketAddr, actor: &Actor) {
        let admin = match self.dial(&self.ids().operator, addr).await {
            Ok(c) => c,
            Err(e) => {
                r.fail("Z1", format!("cannot reach ModuleAdmin: {e}"));
                return;
            }
        };
        let count = |admin: Connection| async move {
            session::status(&admin).await.map(|st| st.active_leases)
        };
        let Ok(before) = count(admin.clone()).await else {
            r.fail("Z1", "ModuleAdmin/Status failed");
            return;
        };
        let Some(s) = self.lease_declared(r, actor, addr, self.ttl()).await else {
            return;
        };
        let during = count(admin.clone()).await.unwrap_or(before);
        drop(s);
        let started = Instant::now();
        // A closed socket is seen at once; a silent peer within the 10 s
        // keepalive bound (PROTOCOL.md §1).
        let limit = Duration::from_secs(12);
        loop {
            match count(admin.clone()).await {
                Ok(n) if n <= before => {
                    r.pass("Z1", format!("connection loss: the module's open leases went {before} → {during} → {n} within {} ms of the connection closing", started.elapsed().as_millis()));
                    return;
                }
                Ok(n) if started.elapsed() >= limit => {
                    r.fail("Z1", format!("connection loss: {n} leases still open {} s after the connection closed (before: {before})", limit.as_secs()));
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(st) => {
                    r.fail("Z1", format!("ModuleAdmin/Status: {}", describe(&st)));
                    return;
                }
            }
        }
    }
}
