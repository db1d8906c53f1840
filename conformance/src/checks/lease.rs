//! Rows decided on a lease that stays open: A3 (the lease's own calls run,
//! with the probe), A4 and A6 (scope demotion and promotion on the control
//! stream; a call outside the scope refused `SCOPE_DENIED`), A8 (short
//! renewals under continuous calls never interrupt it), A9 (a renewal no
//! longer than the contract's maximum) and A6 again for a renewal that
//! shortens the lease.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anima_protocol::lease::{Reason, Scope};
use anima_protocol::pb::control_frame::Frame;

use super::{REACTION, Run};
use crate::report::Report;
use crate::session::{READ, Session, describe, has_reason};

impl Run<'_> {
    /// The first lease's checks that leave it open: probe baseline, Z2 on
    /// another connection, scope enforcement, renewals.
    pub(crate) async fn leased_checks(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        s: &mut Session,
        unleased: Reason,
    ) {
        if self.probe {
            self.scope_checks(r, addr, s, unleased).await;
        }
        self.renewal_checks(r, s).await;
    }

    /// With the probe: the lease's own touches count (A3), calls on another
    /// connection without a lease run nothing (Z2), and a demotion to `Read`
    /// refuses `Touch` until the scope is promoted back (A6, A4).
    async fn scope_checks(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        s: &mut Session,
        unleased: Reason,
    ) {
        let before = self.read(r, s, "first reading").await;
        self.touch(r, s, "touch 1").await;
        self.touch(r, s, "touch 2").await;
        let touches = self.read(r, s, "after two touches").await;
        r.check(
            "A3",
            before.is_some() && touches == before.map(|n| n + 2),
            format!("the lease's own touches read {touches:?} after two more (before: {before:?})"),
        );
        // Calls on another, unleased connection run nothing.
        self.unleased_calls(
            r,
            addr,
            unleased,
            "another connection of the same Core, no lease",
        )
        .await;
        self.read(r, s, "after unleased calls").await;
        // A6/scope: demote to Read only; Touch is refused and runs nothing.
        let read_only = Scope::new([READ]).ok();
        if let Some(read_only) = read_only {
            match s.rescope(&read_only).await {
                Ok(Some(Frame::Rescoped(_))) => {
                    match s.touch(0).await {
                        Err(st) if has_reason(&st, Reason::ScopeDenied) => {
                            r.pass(
                                "A6",
                                "after demotion to Read, Touch is refused SCOPE_DENIED",
                            );
                        }
                        Err(st) => r.fail(
                            "A6",
                            format!(
                                "Touch outside the scope: {} (want SCOPE_DENIED)",
                                describe(&st)
                            ),
                        ),
                        Ok(_) => {
                            self.ledger.admitted += 1;
                            self.ledger.committed += 1;
                            r.fail("A6", "Touch ran outside the lease's scope");
                        }
                    }
                    self.read(r, s, "after an out-of-scope Touch").await;
                    match s.rescope(&self.declared.clone()).await {
                        Ok(Some(Frame::Rescoped(_))) => r.pass("A4", "scope demotion and promotion within the declared methods are granted on the control stream"),
                        other => r.fail("A4", format!("promotion back to the declared scope: {other:?}")),
                    }
                }
                other => r.fail("A4", format!("demotion to Read: {other:?}")),
            }
        }
    }

    /// A8: short renewals under continuous calls; A9 on renewal.
    async fn renewal_checks(&mut self, r: &mut Report, s: &mut Session) {
        // A8: short renewals under continuous calls.
        // Short enough that several renewals happen, long enough that a
        // loaded machine's scheduling does not let the lease run out.
        let step = Duration::from_millis(1500).min(self.plan.contract.max_lease);
        let mut refusals = Vec::new();
        let mut calls = 0;
        let until = Instant::now() + step * 3;
        if let Err(e) = s.renew(step).await {
            r.fail("A8", format!("renewal refused: {e}"));
        }
        let mut renewals = 1;
        while Instant::now() < until {
            let left = s
                .lease
                .expires_at()
                .saturating_duration_since(Instant::now());
            if left < step / 2 {
                match s.renew(step).await {
                    Ok(_) => renewals += 1,
                    Err(e) => refusals.push(format!("renewal: {e}")),
                }
            }
            let result = self.leased_call(s).await;
            calls += 1;
            if let Err(st) = result {
                refusals.push(describe(&st));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r.check(
            "A8",
            refusals.is_empty(),
            format!(
                "{renewals} renewals of {} ms, {calls} calls over {} ms: {} refusals {:?}",
                step.as_millis(),
                (step * 3).as_millis(),
                refusals.len(),
                refusals.first()
            ),
        );
        // A9 on renewal.
        let max = self.plan.contract.max_lease;
        match s.renew(max * 4).await {
            Ok(ttl) => r.check(
                "A9",
                ttl <= max,
                format!(
                    "renewal asked {} ms, granted {} ms",
                    (max * 4).as_millis(),
                    ttl.as_millis()
                ),
            ),
            Err(e) => r.fail("A8", format!("renewal refused: {e}")),
        }
    }

    /// A6: a renewal that shortens the lease moves its end: a call after the
    /// new, earlier end is refused `LEASE_EXPIRED`.
    pub(crate) async fn shortened_renewal(&mut self, r: &mut Report, addr: SocketAddr) {
        let short = Duration::from_millis(300).min(self.plan.contract.max_lease);
        let long = self.ttl();
        if long <= short + REACTION * 2 {
            return; // The contract's leases are too short to tell.
        }
        let Some(mut s) = self.lease_of_a(r, addr, long).await else {
            return;
        };
        let sent = Instant::now();
        if let Err(e) = s.renew(short).await {
            r.fail(
                "A8",
                format!("a renewal to {} ms was refused: {e}", short.as_millis()),
            );
            return;
        }
        tokio::time::sleep_until((sent + short + REACTION).into()).await;
        self.refused_after_end(
            r,
            &mut s,
            "A6",
            &[Reason::LeaseExpired, Reason::NoLease, Reason::Standby],
            &format!(
                "{} ms lease renewed to {} ms ({} ms ago)",
                long.as_millis(),
                short.as_millis(),
                sent.elapsed().as_millis()
            ),
        )
        .await;
    }
}
