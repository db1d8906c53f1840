//! Rows of a lease that runs out or ends with a stream open: E6 and R6
//! (expiry mid-execution halts the call, `LEASE_EXPIRED`, no side effect;
//! A6 under Type III, as the caller names the row), A6 (calls after expiry
//! refused), A5 (the control stream closes), the Core's clean half-close
//! read as expiry (A5, A6) and Z1 (a `Probe/Watch` stream ends with its
//! revoked lease).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anima_protocol::lease::Reason;
use anima_protocol::pb::ProbeReading;

use super::ending::stream_closed;
use super::{REACTION, Run};
use crate::report::Report;
use crate::session::{Actor, PATIENCE, Session, WATCH, describe, has_reason};

impl Run<'_> {
    /// Streams are gated for their whole life: a `Probe/Watch` stream whose
    /// lease runs out (`LeaseExpired`, row `halt_row`) or is revoked
    /// (`LeaseRevoked`, Z1) ends with that reason within [`REACTION`] of the
    /// end, and commits nothing afterwards (the ledger checks that later).
    pub(crate) async fn stream_checks(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        actor: &Actor,
        why: Reason,
        row: &'static str,
    ) {
        let expiry = why == Reason::LeaseExpired;
        let what = if expiry { "expired" } else { "revoked" };
        if !self.watch {
            r.pass(
                row,
                format!("(streams not checked: the contract does not declare {WATCH})"),
            );
            return;
        }
        let ttl = if expiry {
            Duration::from_millis(800).min(self.plan.contract.max_lease)
        } else {
            self.ttl()
        };
        let Some((mut s, mut stream)) = self.leased_stream(r, addr, actor, ttl).await else {
            return;
        };
        self.ledger.admitted += 1;
        // Readings received, and the most touches one of them reported: each
        // reading under a valid lease committed one touch.
        let (mut readings, mut touches) = (0u64, 0u64);
        let mut end = s.lease.expires_at();
        if !expiry {
            match tokio::time::timeout(PATIENCE, stream.message()).await {
                Ok(Ok(Some(first))) => {
                    readings += 1;
                    touches = first.touches;
                }
                other => {
                    r.fail(
                        "A3",
                        format!("a leased Watch sent no first reading: {other:?}"),
                    );
                    return;
                }
            }
            end = Instant::now();
            s.revoke("conformance: revoking a lease with a stream open")
                .await;
        }
        let limit = end.saturating_duration_since(Instant::now()) + PATIENCE;
        let outcome = tokio::time::timeout(limit, async {
            loop {
                match stream.message().await {
                    Ok(Some(reading)) => {
                        readings += 1;
                        touches = touches.max(reading.touches);
                    }
                    Ok(None) => return Ok(()),
                    Err(st) => return Err(st),
                }
            }
        })
        .await;
        let late = Instant::now().saturating_duration_since(end);
        // One more touch may have been committed, then dropped with its
        // reading as the lease ended.
        self.ledger.committed += touches;
        self.ledger.maybe_committed += 1;
        let detail = format!("a Watch stream under a {what} lease ({readings} readings)");
        stream_verdict(r, row, why, &detail, late, outcome);
    }

    /// A lease of `ttl` for `actor` with a `Probe/Watch` stream open under
    /// it, or a failed A3 saying why not.
    async fn leased_stream(
        &self,
        r: &mut Report,
        addr: SocketAddr,
        actor: &Actor,
        ttl: Duration,
    ) -> Option<(Session, tonic::Streaming<ProbeReading>)> {
        let mut s = match self.open(actor, addr, &self.declared.clone(), ttl).await {
            Ok(s) => s,
            Err(e) => {
                r.fail("A3", format!("a lease for a stream was not granted: {e}"));
                return None;
            }
        };
        let stream = match s.watch(20, 0).await {
            Ok(stream) => stream,
            Err(st) => {
                r.fail("A3", format!("a leased Watch failed: {}", describe(&st)));
                return None;
            }
        };
        Some((s, stream))
    }

    /// A lease that is not renewed runs out: refused after expiry (A6, Z1);
    /// with the probe, a Touch holding across the expiry is halted and
    /// commits nothing (E6 / R6).
    pub(crate) async fn expiry_checks(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        actor: &Actor,
        halt_row: &'static str,
    ) {
        let ttl = Duration::from_millis(800).min(self.plan.contract.max_lease);
        let mut s = match self.open(actor, addr, &self.declared.clone(), ttl).await {
            Ok(s) => s,
            Err(e) => {
                r.fail("A3", format!("a short lease was not granted: {e}"));
                return;
            }
        };
        if self.probe {
            let expires = s.lease.expires_at();
            let result = s.touch(5_000).await;
            let late = Instant::now().saturating_duration_since(expires);
            // Halted mid-hold, or (on a loaded machine) refused on arrival
            // if it got there after the expiry: it may or may not have run.
            self.ledger.maybe += 1;
            match result {
                Err(st) if has_reason(&st, Reason::LeaseExpired) => r.check(
                    halt_row,
                    late <= REACTION,
                    format!("a Touch holding 5 s under a {} ms lease was halted {} ms after the Core's expiry, LEASE_EXPIRED", ttl.as_millis(), late.as_millis()),
                ),
                Err(st) => r.fail(halt_row, format!("a Touch across expiry: {} after {} ms (want LEASE_EXPIRED)", describe(&st), late.as_millis())),
                Ok(_) => {
                    self.ledger.maybe -= 1;
                    self.ledger.admitted += 1;
                    self.ledger.committed += 1;
                    r.fail(halt_row, format!("a Touch across expiry completed and committed ({} ms after expiry)", late.as_millis()));
                }
            }
        } else {
            tokio::time::sleep_until((s.lease.expires_at() + Duration::from_millis(100)).into())
                .await;
        }
        self.ended(r, &mut s, Reason::LeaseExpired, "expired").await;
        stream_closed(r, &mut s, "expiry").await;
    }

    /// PROTOCOL.md §2, *Which ending*: a Core closes its half of the control
    /// stream without a `revoke` only when its copy of the lease expired, so
    /// the module ends its copy at once as expired, whatever its own timer
    /// says. Under a lease with most of its TTL left the tool closes its half
    /// cleanly: the module closes its own (A5), and a call under the lease
    /// is then refused `LEASE_EXPIRED`, not `LEASE_REVOKED` (A6).
    pub(crate) async fn half_close_checks(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        actor: &Actor,
    ) {
        let Some(mut s) = self.lease_declared(r, actor, addr, self.ttl()).await else {
            return;
        };
        s.close_half();
        // The module's half closing is the event that says its copy ended.
        stream_closed(r, &mut s, "the Core's clean half-close").await;
        self.refused_after_end(r, &mut s, "A6", &[Reason::LeaseExpired], "half-closed")
            .await;
    }
}

/// How a Watch stream under a lease that ended `late` ago ended (`outcome`,
/// or still streaming): `why` within [`REACTION`] passes `row`.
fn stream_verdict(
    r: &mut Report,
    row: &'static str,
    why: Reason,
    detail: &str,
    late: Duration,
    outcome: Result<Result<(), tonic::Status>, tokio::time::error::Elapsed>,
) {
    match outcome {
        Ok(Err(st)) if has_reason(&st, why) => r.check(
            row,
            late <= REACTION,
            format!(
                "{detail} ended {} ms after the end, {}",
                late.as_millis(),
                why.as_str()
            ),
        ),
        Ok(Err(st)) => r.fail(
            row,
            format!("{detail} ended {} (want {})", describe(&st), why.as_str()),
        ),
        Ok(Ok(())) => r.fail(
            row,
            format!("{detail} ended OK, {} ms after the end", late.as_millis()),
        ),
        Err(_) => r.fail(
            row,
            format!(
                "{detail} was still streaming {} ms after the end",
                late.as_millis()
            ),
        ),
    }
}
