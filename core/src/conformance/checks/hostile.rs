//! The misbehaving Core: tokens an honest Core never sends (forged,
//! tampered, replayed, for another lease), a Core that never offers, a
//! second offer on a leased connection, a proof made for another method, a
//! renewal that shortens the lease, a user that offers, TLS 1.2 and a client
//! without ALPN. Each decides its row from what the module does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anima_protocol::lease::{ControlClaims, LeaseClaims, PROOF_HEADER, Reason, sign_claims};
use anima_protocol::pb::control_frame::Frame;
use anima_protocol::pb::{Refusal, SignedToken};
use anima_protocol::{Connection, UrnKind};

use super::{REACTION, READ, Run, TOUCH, UNDECLARED};
use crate::conformance::rawtls;
use crate::conformance::report::Report;
use crate::conformance::session::{
    self, Answer, OfferKind, PATIENCE, Session, call_empty, decode_token, describe, has_reason,
};

/// How long a module waits for the offer on a new control stream
/// (PROTOCOL.md §2, step 1).
const OFFER_DEADLINE: Duration = Duration::from_secs(5);

/// Base64url of 32 bytes no certificate hashes to.
fn foreign_fingerprint() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0x42; 32])
}

/// One offer the module must refuse: what is wrong, the reason it must give,
/// and how it is made.
type BadOffer = (&'static str, Reason, OfferKind);

fn bad_offers() -> Vec<BadOffer> {
    vec![
        (
            "an offer signed with a key other than the Core certificate's",
            Reason::BadSignature,
            OfferKind::ForgedSignature,
        ),
        (
            "an offer whose con names another Core",
            Reason::IdentityMismatch,
            OfferKind::Tampered(|c| c.con = "urn:anima:core:someone-else".into()),
        ),
        (
            "an offer whose pro names another module",
            Reason::IdentityMismatch,
            OfferKind::Tampered(|c| c.pro = "urn:anima:module:someone-else".into()),
        ),
        (
            "an offer bound (cnf) to another Core certificate",
            Reason::BindingMismatch,
            OfferKind::Tampered(|c| c.cnf.issuer = foreign_fingerprint()),
        ),
        (
            "an offer bound (cnf) to another module certificate",
            Reason::BindingMismatch,
            OfferKind::Tampered(|c| c.cnf.audience = foreign_fingerprint()),
        ),
        (
            "an offer issued 301 s ago",
            Reason::BadToken,
            OfferKind::Tampered(|c| {
                c.iat -= 301;
                c.exp -= 301;
            }),
        ),
        (
            "an offer whose exp is before its iat",
            Reason::BadToken,
            OfferKind::Tampered(|c| c.exp = c.iat - 1),
        ),
        (
            "an offer asking for a 10 ms lease",
            Reason::BadToken,
            OfferKind::Tampered(|c| c.ttl_ms = 10),
        ),
        (
            "an offer whose scope names an undeclared method",
            Reason::ScopeDenied,
            OfferKind::Tampered(|c| c.scope.push(UNDECLARED.into())),
        ),
    ]
}

impl Run<'_> {
    /// Every check of this file. `live` is a lease of the module's own Core
    /// (`core_a`), left open.
    pub(super) async fn hostile_checks(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        live: &mut Session,
    ) {
        let core_a = self.ids().core_a.clone();
        // The silent Core takes the longest (the module's 5 s): run it
        // beside the others.
        let silent = match self.dial(&core_a, addr).await {
            Ok(conn) => Some(tokio::spawn(session::silent_stream(
                conn,
                OFFER_DEADLINE + REACTION,
            ))),
            Err(e) => {
                r.fail("A3", format!("cannot connect as the module's Core: {e}"));
                None
            }
        };
        self.transport_checks(r, addr).await;
        for (what, want, kind) in bad_offers() {
            let answer = match self.dial(&core_a, addr).await {
                Ok(conn) => {
                    session::offer(
                        conn,
                        &core_a.identity,
                        &self.declared.clone(),
                        self.ttl(),
                        kind,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            refused(r, "A3", what, want, answer);
        }
        self.user_offer(r, addr).await;
        self.second_offer(r, live).await;
        self.grant_claims(r, addr).await;
        self.control_checks(r, addr).await;
        self.other_method_proof(r, addr).await;
        self.shortened_renewal(r, addr).await;
        if let Some(silent) = silent {
            match silent.await {
                Ok(Ok((Some(Frame::Refuse(Refusal { reason, .. })), after)))
                    if reason == Reason::ProtocolViolation.as_str() =>
                {
                    r.pass(
                        "A3",
                        format!(
                            "a Core that opened the control stream and sent nothing was refused PROTOCOL_VIOLATION after {} ms",
                            after.as_millis()
                        ),
                    );
                }
                Ok(Ok((frame, after))) => r.fail(
                    "A3",
                    format!(
                        "a Core that sent no offer: {} after {} ms (want refuse PROTOCOL_VIOLATION within {} ms)",
                        frame.map_or("the stream closed".to_owned(), |f| format!("{f:?}")),
                        after.as_millis(),
                        OFFER_DEADLINE.as_millis()
                    ),
                ),
                Ok(Err(e)) => r.fail(
                    "A3",
                    format!(
                        "a Core that sent no offer: {e} (want refuse PROTOCOL_VIOLATION within {} ms)",
                        OFFER_DEADLINE.as_millis()
                    ),
                ),
                Err(e) => r.fail("A3", format!("the silent-Core check failed: {e}")),
            }
        }
    }

    /// A lease of the module's own Core for every declared method, or a
    /// failed A3 saying why not.
    async fn lease_of_a(&self, r: &mut Report, addr: SocketAddr, ttl: Duration) -> Option<Session> {
        let core_a = self.ids().core_a.clone();
        match self.open(&core_a, addr, &self.declared.clone(), ttl).await {
            Ok(s) => Some(s),
            Err(e) => {
                r.fail("A3", format!("a lease was not granted: {e}"));
                None
            }
        }
    }

    /// T1: TLS 1.3 only, ALPN `h2` required.
    async fn transport_checks(&self, r: &mut Report, addr: SocketAddr) {
        match rawtls::negotiates_tls12(addr).await {
            Ok(false) => r.pass("T1", "a TLS 1.2-only ClientHello is refused"),
            Ok(true) => r.fail(
                "T1",
                "the module negotiated TLS 1.2 (a ServerHello to a TLS 1.2-only ClientHello)",
            ),
            Err(e) => r.fail("T1", format!("TLS 1.2 probe: {e}")),
        }
        match rawtls::admission_alpn(addr, Some(&self.ids().valid), false).await {
            Ok(rawtls::Admission::Served) => r.fail(
                "T1",
                "a client that negotiated no ALPN was served (PROTOCOL.md §1: ALPN MUST be h2)",
            ),
            Ok(other) => r.pass(
                "T1",
                format!("a client without ALPN h2 is refused ({other:?})"),
            ),
            Err(e) => r.fail("T1", format!("ALPN probe: {e}")),
        }
    }

    /// T3: a user identity the module lets in (an operator) cannot lease.
    async fn user_offer(&self, r: &mut Report, addr: SocketAddr) {
        let operator = self.ids().operator.clone();
        if operator.identity.urn().kind() != UrnKind::User {
            // Endpoint mode: the tool cannot name the module's operators,
            // and no other user gets past the handshake (checked above).
            return;
        }
        let answer = match self.dial(&operator, addr).await {
            Ok(conn) => {
                session::offer(
                    conn,
                    &operator.identity,
                    &self.declared.clone(),
                    self.ttl(),
                    OfferKind::Honest,
                )
                .await
            }
            Err(e) => Err(e),
        };
        refused(
            r,
            "T3",
            "an offer from a user identity (an operator)",
            Reason::IdentityMismatch,
            answer,
        );
    }

    /// A3: an offer on a second control stream of a leased connection is
    /// refused `LEASE_EXISTS`, and the lease lives on.
    async fn second_offer(&mut self, r: &mut Report, live: &mut Session) {
        let identity = self.ids().core_a.identity.clone();
        let answer = session::offer(
            live.conn.clone(),
            &identity,
            &self.declared.clone(),
            self.ttl(),
            OfferKind::Honest,
        )
        .await;
        refused(
            r,
            "A3",
            "a second offer on a connection whose lease is live",
            Reason::LeaseExists,
            answer,
        );
        self.keep(live).await;
        match self.leased_call(live).await {
            Ok(()) => r.pass(
                "A3",
                "after a refused second offer, the connection's lease still serves",
            ),
            Err(st) => r.fail(
                "A3",
                format!(
                    "after a refused second offer the live lease failed: {}",
                    describe(&st)
                ),
            ),
        }
    }

    /// A2: a sub-second grant states exactly what PROTOCOL.md §3.1–3.2 say.
    async fn grant_claims(&mut self, r: &mut Report, addr: SocketAddr) {
        let asked = Duration::from_millis(600).min(self.plan.contract.max_lease);
        let Some(s) = self.lease_of_a(r, addr, asked).await else {
            return;
        };
        let declared: Vec<&str> = self.declared.iter().collect();
        let problems = grant_problems(&s.grant, asked, &declared);
        r.check(
            "A2",
            problems.is_empty(),
            format!(
                "a grant for {} ms: ttl_ms {}, iat {}, exp {}{}",
                asked.as_millis(),
                s.grant.ttl_ms,
                s.grant.iat,
                s.grant.exp,
                if problems.is_empty() {
                    String::new()
                } else {
                    format!(": {}", problems.join("; "))
                }
            ),
        );
    }

    /// A4: control steps that are forged, for another lease, replayed or in
    /// the wrong frame are refused, never answered.
    async fn control_checks(&mut self, r: &mut Report, addr: SocketAddr) {
        let cases = [
            (
                Misstep::Forged,
                "a renewal signed with another key",
                Reason::BadSignature,
            ),
            (
                Misstep::OtherLease,
                "a renewal for another lease id",
                Reason::ProtocolViolation,
            ),
            (
                Misstep::Replayed,
                "a renewal replayed (the same token twice)",
                Reason::ProtocolViolation,
            ),
            (
                Misstep::WrongFrame,
                "a renewal token in a revoke frame",
                Reason::ProtocolViolation,
            ),
            (
                Misstep::GrantFrame,
                "a grant frame from the Core",
                Reason::ProtocolViolation,
            ),
        ];
        for (misstep, what, want) in cases {
            let Some(mut s) = self.lease_of_a(r, addr, self.ttl()).await else {
                continue;
            };
            let frame = match misstep_frame(&mut s, misstep).await {
                Ok(frame) => frame,
                Err(e) => {
                    r.fail("A4", format!("{what}: {e}"));
                    continue;
                }
            };
            s.send(frame).await;
            match s.next_frame(PATIENCE).await {
                Ok(Some(Frame::Refuse(Refusal { reason, detail }))) if reason == want.as_str() => {
                    r.pass("A4", format!("{what}: refused {reason} ({detail:.80})"));
                }
                other => r.fail(
                    "A4",
                    format!(
                        "{what}: {} (want refuse {})",
                        frame_text(&other),
                        want.as_str()
                    ),
                ),
            }
        }
    }

    /// A4: a proof made for one method does not admit a call of another.
    async fn other_method_proof(&mut self, r: &mut Report, addr: SocketAddr) {
        let (method, other) = if self.probe {
            (READ.to_owned(), TOUCH.to_owned())
        } else {
            let mut methods = self.declared.iter();
            match (methods.next(), methods.next()) {
                (Some(a), Some(b)) => (a.to_owned(), b.to_owned()),
                _ => return, // One method: nothing to confuse it with.
            }
        };
        let Some(mut s) = self.lease_of_a(r, addr, self.ttl()).await else {
            return;
        };
        let proof = s.proof(&other);
        let answer = call_with_proof(&s.conn, &method, proof).await;
        let what = format!("a call of {method} with a proof made for {other}");
        match answer {
            Err(st) if has_reason(&st, Reason::BadProof) => {
                r.pass("A4", format!("{what}: refused BAD_PROOF"));
            }
            Err(st) if anima_protocol::lease::reason_of(&st).is_some() => {
                r.fail("A4", format!("{what}: {} (want BAD_PROOF)", describe(&st)));
            }
            _ => r.fail("A4", format!("{what}: answered")),
        }
    }

    /// A6: a renewal that shortens the lease moves its end: a call after the
    /// new, earlier end is refused `LEASE_EXPIRED`.
    async fn shortened_renewal(&mut self, r: &mut Report, addr: SocketAddr) {
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

/// A control step an honest Core never sends.
#[derive(Debug, Clone, Copy)]
enum Misstep {
    /// A renewal signed with a key other than the Core certificate's.
    Forged,
    /// A renewal whose `lid` names another lease.
    OtherLease,
    /// A renewal the module already answered, sent again.
    Replayed,
    /// A genuine renewal token in a `revoke` frame.
    WrongFrame,
    /// A `grant` frame, which only a module sends.
    GrantFrame,
}

/// The frame that makes `misstep` on `s` (a replay first sends the honest
/// renewal and awaits its answer).
async fn misstep_frame(s: &mut Session, misstep: Misstep) -> Result<Frame, String> {
    let jws = s.renew_token(s.lease.ttl())?;
    let resigned = |s: &Session, tamper: fn(&mut ControlClaims), forge: bool| {
        let mut claims: ControlClaims =
            decode_token(&jws).ok_or("a renewal's claims do not decode")?;
        tamper(&mut claims);
        let signed = if forge {
            s.signer()
                .impostor()
                .and_then(|forger| sign_claims(&forger, &claims))
        } else {
            sign_claims(s.signer(), &claims)
        };
        signed.map_err(|e| format!("cannot sign a renewal: {e}"))
    };
    Ok(match misstep {
        Misstep::Forged => Frame::Renew(SignedToken {
            jws: resigned(s, |_| {}, true)?,
        }),
        Misstep::OtherLease => Frame::Renew(SignedToken {
            jws: resigned(s, |c| c.lid = "AAAAAAAAAAAAAAAAAAAAAA".into(), false)?,
        }),
        Misstep::Replayed => {
            s.send(Frame::Renew(SignedToken { jws: jws.clone() })).await;
            match s.next_frame(PATIENCE).await {
                Ok(Some(Frame::Renewed(_))) => Frame::Renew(SignedToken { jws }),
                other => {
                    return Err(format!(
                        "the honest renewal before the replay: {}",
                        frame_text(&other)
                    ));
                }
            }
        }
        Misstep::WrongFrame => Frame::Revoke(SignedToken { jws }),
        Misstep::GrantFrame => Frame::Grant(SignedToken { jws }),
    })
}

/// A capability call of `method` carrying `proof`.
async fn call_with_proof(
    conn: &Connection,
    method: &str,
    proof: String,
) -> Result<(), tonic::Status> {
    if method == READ {
        session::read(conn, Some(proof)).await.map(|_| ())
    } else {
        call_empty(conn, method, &[(PROOF_HEADER, proof)]).await
    }
}

/// Records whether an offer was refused with `want`.
fn refused(
    r: &mut Report,
    row: &'static str,
    what: &str,
    want: Reason,
    answer: Result<Answer, String>,
) {
    match answer {
        Ok(Answer::Refused(Refusal { reason, detail })) if reason == want.as_str() => {
            r.pass(row, format!("{what}: refused {reason} ({detail:.80})"));
        }
        Ok(Answer::Refused(Refusal { reason, detail })) => r.fail(
            row,
            format!(
                "{what}: refused {reason} ({detail:.80}); want {}",
                want.as_str()
            ),
        ),
        Ok(Answer::Granted(_)) => r.fail(row, format!("{what}: GRANTED")),
        Ok(Answer::Other(other)) => r.fail(
            row,
            format!("{what}: {other} (want refuse {})", want.as_str()),
        ),
        Err(e) => r.fail(row, format!("{what}: {e}")),
    }
}

fn frame_text(frame: &Result<Option<Frame>, ()>) -> String {
    match frame {
        Ok(Some(Frame::Renewed(_))) => "answered renewed".into(),
        Ok(Some(f)) => format!("{f:?}"),
        Ok(None) => "the stream closed".into(),
        Err(()) => "no answer within 5 s".into(),
    }
}

/// What a grant for `asked` states wrongly (PROTOCOL.md §3.1, §3.2).
fn grant_problems(g: &LeaseClaims, asked: Duration, declared: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let asked_ms = asked.as_millis() as u64;
    if g.ttl_ms > asked_ms {
        problems.push(format!(
            "ttl_ms {} is more than the {asked_ms} asked",
            g.ttl_ms
        ));
    }
    let want_exp = g.iat + (g.ttl_ms / 1000).max(1);
    if g.exp != want_exp {
        problems.push(format!(
            "exp {} is not iat + max(1, ttl in whole seconds) = {want_exp}",
            g.exp
        ));
    }
    let mut want_scope: Vec<&str> = declared.to_vec();
    want_scope.sort_unstable();
    want_scope.dedup();
    if g.scope
        .iter()
        .map(String::as_str)
        .ne(want_scope.iter().copied())
    {
        problems.push(format!(
            "scope {:?} is not the requested set sorted ({want_scope:?})",
            g.scope
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a2_a_sub_second_grant_needs_exp_one_second_after_iat() {
        let mut g = LeaseClaims {
            typ: "anima-grant+v1".into(),
            lid: String::new(),
            con: String::new(),
            pro: String::new(),
            scope: vec!["/a.A/X".into(), "/a.A/Y".into()],
            ttl_ms: 600,
            iat: 1000,
            exp: 1001,
            cnf: anima_protocol::lease::Confirmation {
                issuer: String::new(),
                audience: String::new(),
            },
            kx: String::new(),
            offer: None,
            rev: Vec::new(),
        };
        let declared = ["/a.A/Y", "/a.A/X"];
        assert!(grant_problems(&g, Duration::from_millis(600), &declared).is_empty());
        g.exp = 1000;
        assert_eq!(
            grant_problems(&g, Duration::from_millis(600), &declared).len(),
            1
        );
        g.exp = 1001;
        g.scope.reverse();
        assert_eq!(
            grant_problems(&g, Duration::from_millis(600), &declared).len(),
            1
        );
        g.scope.reverse();
        g.ttl_ms = 2500;
        g.exp = 1002;
        assert_eq!(
            grant_problems(&g, Duration::from_millis(600), &declared).len(),
            1
        );
    }
}
