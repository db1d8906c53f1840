//! Rows of a lease's end: A5 (the module closes its half of the control
//! stream once the lease ended), A6 (calls under an expired or revoked lease
//! are refused at once), A7 (the Core's refusal, or a scope beyond the
//! declared methods, ends the lease on the module's side) and Z1 (the lease
//! is over: zero-lease on revocation).

use std::net::SocketAddr;

use anima_protocol::lease::{Reason, Scope};
use anima_protocol::pb::Refusal;
use anima_protocol::pb::control_frame::Frame;

use super::{Run, TOUCH, UNDECLARED, transport_failure};
use crate::report::Report;
use crate::session::{self, Actor, PATIENCE, Session, call_empty, describe, has_reason};

impl Run<'_> {
    /// Ends `s` by revocation and checks the module stops (A5, A6, Z1).
    pub(crate) async fn revoke_checks(&mut self, r: &mut Report, mut s: Session) {
        s.revoke("conformance: revocation").await;
        stream_closed(r, &mut s, "revocation").await;
        self.ended(r, &mut s, Reason::LeaseRevoked, "revoked").await;
    }

    /// A6 and Z1 for a lease that ended (`why`): a further call under it is
    /// refused with `why` (or as if no lease were left).
    pub(crate) async fn ended(&mut self, r: &mut Report, s: &mut Session, why: Reason, what: &str) {
        let want = [why, Reason::NoLease, Reason::Standby];
        if self.refused_after_end(r, s, "A6", &want, what).await {
            r.pass(
                "Z1",
                format!("the {what} lease is over: calls under it are refused"),
            );
        }
    }

    /// A call under an ended lease must be refused with one of `want`.
    pub(crate) async fn refused_after_end(
        &mut self,
        r: &mut Report,
        s: &mut Session,
        row: &'static str,
        want: &[Reason],
        what: &str,
    ) -> bool {
        let result = if self.probe {
            let proof = s.proof(TOUCH);
            session::touch(&s.conn, Some(proof), 0).await.map(|_| ())
        } else {
            let method = self.declared.iter().next().unwrap_or(UNDECLARED).to_owned();
            let proof = s.proof(&method);
            call_empty(
                &s.conn,
                &method,
                &[(anima_protocol::lease::PROOF_HEADER, proof)],
            )
            .await
        };
        match result {
            Err(st) if want.iter().any(|w| has_reason(&st, *w)) => {
                r.pass(
                    row,
                    format!("a call under the {what} lease: {}", describe(&st)),
                );
                true
            }
            Err(st) if transport_failure(&st) => {
                // The connection is gone (a Type I module exiting): no
                // answer, so nothing ran.
                r.pass(
                    row,
                    format!(
                        "a call under the {what} lease: connection closed ({})",
                        st.message()
                    ),
                );
                true
            }
            Err(st) => {
                r.fail(
                    row,
                    format!(
                        "a call under the {what} lease: {} (want {:?})",
                        describe(&st),
                        want.iter().map(|w| w.as_str()).collect::<Vec<_>>()
                    ),
                );
                false
            }
            Ok(()) => {
                if self.probe {
                    self.ledger.admitted += 1;
                    self.ledger.committed += 1;
                }
                r.fail(row, format!("a call under the {what} lease was answered"));
                false
            }
        }
    }

    /// Takes a fresh lease of `actor` for every declared method and does
    /// `what` to it, after which the module must end it (A4, A5, A7).
    pub(crate) async fn provoke_end(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        actor: &Actor,
        what: Provocation,
    ) {
        let Some(s) = self.lease_declared(r, actor, addr, self.ttl()).await else {
            return;
        };
        match what {
            Provocation::CoreRefuses => self.core_refuses(r, s).await,
            Provocation::WiderScope => self.wider_scope(r, s).await,
            Provocation::ForgedProof => self.proof_checks(r, s, false).await,
            Provocation::ReplayedProof => self.proof_checks(r, s, true).await,
        }
    }

    /// The Core refuses (A7): the module must end the lease at once.
    async fn core_refuses(&mut self, r: &mut Report, mut s: Session) {
        s.send(Frame::Refuse(Refusal {
            reason: Reason::ProtocolViolation.as_str().into(),
            detail: "conformance: the Core refuses".into(),
        }))
        .await;
        // The module needs a moment to read the frame; a call racing it
        // may still pass, so wait for its side of the stream to close.
        let closed = s.await_close(PATIENCE).await;
        r.check(
            "A5",
            closed.is_ok(),
            format!("after the Core's refuse the module closed its stream: {closed:?}"),
        );
        let ok = self
            .refused_after_end(
                r,
                &mut s,
                "A7",
                &[Reason::LeaseRevoked, Reason::NoLease, Reason::Standby],
                "refused",
            )
            .await;
        if ok {
            r.pass("A7", "the Core's refuse ended the module's lease");
        }
    }

    /// A scope beyond the declared methods (A7): the module refuses and
    /// ends the lease.
    async fn wider_scope(&mut self, r: &mut Report, mut s: Session) {
        let mut wider = self.declared.iter().map(str::to_owned).collect::<Vec<_>>();
        wider.push(UNDECLARED.into());
        let Ok(wider) = Scope::new(wider.iter().map(String::as_str)) else {
            return;
        };
        match s.rescope(&wider).await {
            Ok(Some(Frame::Refuse(Refusal { reason, .. })))
                if reason == Reason::ScopeDenied.as_str() =>
            {
                r.pass(
                    "A7",
                    "a scope naming an undeclared method is refused SCOPE_DENIED",
                );
                self.refused_after_end(
                    r,
                    &mut s,
                    "A7",
                    &[
                        Reason::LeaseRevoked,
                        Reason::ScopeDenied,
                        Reason::NoLease,
                        Reason::Standby,
                    ],
                    "refused",
                )
                .await;
            }
            other => r.fail(
                "A7",
                format!(
                    "a scope naming an undeclared method: {other:?} (want refuse SCOPE_DENIED)"
                ),
            ),
        }
    }
}

/// What the tool does to a fresh lease so that the module must end it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Provocation {
    /// The Core refuses (A5, A7).
    CoreRefuses,
    /// The Core asks for a scope beyond the declared methods (A7).
    WiderScope,
    /// A call carries a forged proof (A4, A7).
    ForgedProof,
    /// A call carries a replayed proof (A4, A7).
    ReplayedProof,
}

impl Provocation {
    /// Every provocation, in the order the scenarios make them.
    pub(crate) const ALL: [Provocation; 4] = [
        Provocation::CoreRefuses,
        Provocation::WiderScope,
        Provocation::ForgedProof,
        Provocation::ReplayedProof,
    ];
}

/// A5: once a lease ended by `what`, the module closes its half of the
/// control stream and sends nothing more for it.
pub(crate) async fn stream_closed(r: &mut Report, s: &mut Session, what: &str) {
    match s.await_close(PATIENCE).await {
        Ok(t) => r.pass(
            "A5",
            format!(
                "after {what} the module closed its control stream within {} ms",
                t.as_millis()
            ),
        ),
        Err(e) => r.fail("A5", format!("after {what}: {e}")),
    }
}
