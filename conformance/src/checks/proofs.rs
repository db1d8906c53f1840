//! Proof rows: A4 (after the handshake only proofs, renewals and scope
//! changes: forged and replayed proofs, a proof made for another method, and
//! control steps an honest Core never sends are refused) and A7 (the module
//! revokes the lease on a bad proof; A6 for calls under it afterwards).

use std::net::SocketAddr;

use anima_protocol::Connection;
use anima_protocol::control::Elapsed;
use anima_protocol::lease::{
    ControlClaims, PROOF_HEADER, ProofKey, Reason, RenewalKey, TYP_REVOKE, mac_claims, sign_claims,
};
use anima_protocol::pb::control_frame::Frame;
use anima_protocol::pb::{Refusal, SignedToken};

use super::{READ, Run, TOUCH, UNDECLARED};
use crate::error::ToolError;
use crate::report::Report;
use crate::session::{self, PATIENCE, Session, call_empty, decode_token, describe, has_reason};

impl Run<'_> {
    /// A forged or replayed proof under `s` (A4): refused, and the module
    /// revokes.
    pub(crate) async fn proof_checks(&mut self, r: &mut Report, mut s: Session, replay: bool) {
        let method = if self.probe {
            READ.to_owned()
        } else {
            self.declared.iter().next().unwrap_or(UNDECLARED).to_owned()
        };
        let call = |conn: &Connection, proof: String| {
            let conn = conn.clone();
            let method = method.clone();
            async move {
                if method == READ {
                    session::read(&conn, Some(proof)).await.map(|_| ())
                } else {
                    call_empty(
                        &conn,
                        &method,
                        &[(anima_protocol::lease::PROOF_HEADER, proof)],
                    )
                    .await
                }
            }
        };
        let (proof, want, what) = if replay {
            let proof = s.proof(&method);
            // The first use is genuine (whatever the handler answers).
            let _ = call(&s.conn, proof.clone()).await;
            (proof, Reason::ProofReplayed, "replayed")
        } else {
            let forged = ProofKey::new(&[0x5a; 32]).proof(s.next_seq(), &method);
            (forged, Reason::BadProof, "forged")
        };
        match call(&s.conn, proof).await {
            Err(st) if has_reason(&st, want) => {
                r.pass("A4", format!("a {what} proof is refused {}", want.as_str()))
            }
            Err(st) => r.fail(
                "A4",
                format!("a {what} proof: {} (want {})", describe(&st), want.as_str()),
            ),
            Ok(()) => r.fail("A4", format!("a call with a {what} proof was answered")),
        }
        // The module revokes the lease on a bad proof (PROTOCOL.md §4).
        match s.next_frame(PATIENCE).await {
            Ok(Some(Frame::Revoke(_) | Frame::Refuse(_))) | Ok(None) => {
                r.pass(
                    "A7",
                    format!("after a {what} proof the module revoked the lease"),
                );
            }
            other => r.fail(
                "A7",
                format!("after a {what} proof the module did not revoke: {other:?}"),
            ),
        }
        self.refused_after_end(
            r,
            &mut s,
            "A6",
            &[Reason::LeaseRevoked, Reason::NoLease, Reason::Standby],
            "revoked",
        )
        .await;
    }

    /// A4: control steps that are forged, for another lease, replayed or in
    /// the wrong frame are refused, never answered.
    pub(crate) async fn control_checks(&mut self, r: &mut Report, addr: SocketAddr) {
        let cases = [
            (
                Misstep::Forged,
                "a renewal authenticated with another renewal key",
                Reason::BadSignature,
            ),
            (
                Misstep::Signed,
                "a renewal signed with the Core's certificate key instead of the renewal key",
                Reason::BadToken,
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
            (
                Misstep::RevokeWithoutDetail,
                "a revoke without its detail claim",
                Reason::BadToken,
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
    pub(crate) async fn other_method_proof(&mut self, r: &mut Report, addr: SocketAddr) {
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
}

/// A control step an honest Core never sends.
#[derive(Debug, Clone, Copy)]
enum Misstep {
    /// A renewal authenticated with a key other than the lease's renewal key.
    Forged,
    /// A renewal signed with the Core's certificate key (renewals are
    /// `HS256` under the renewal key, PROTOCOL.md §3.4).
    Signed,
    /// A renewal whose `lid` names another lease.
    OtherLease,
    /// A renewal the module already answered, sent again.
    Replayed,
    /// A genuine renewal token in a `revoke` frame.
    WrongFrame,
    /// A `grant` frame, which only a module sends.
    GrantFrame,
    /// A `revoke` signed as it should be but without `detail`, which every
    /// revocation carries (`""` when there is nothing to say; PROTOCOL.md §3).
    RevokeWithoutDetail,
}

/// The frame that makes `misstep` on `s` (a replay first sends the honest
/// renewal and awaits its answer).
async fn misstep_frame(s: &mut Session, misstep: Misstep) -> Result<Frame, ToolError> {
    let jws = s.renew_token(s.lease.ttl())?;
    let claims = |tamper: fn(&mut ControlClaims)| {
        let mut claims: ControlClaims =
            decode_token(&jws).ok_or(ToolError::Undecodable("renewal"))?;
        tamper(&mut claims);
        Ok::<_, ToolError>(claims)
    };
    let renew = |jws| Frame::Renew(SignedToken { jws });
    Ok(match misstep {
        Misstep::Forged => renew(mac_claims(&RenewalKey::new(&[0x5a; 32]), &claims(|_| {})?)?),
        Misstep::Signed => renew(sign_claims(s.signer(), &claims(|_| {})?)?),
        Misstep::OtherLease => renew(mac_claims(
            s.lease.renewal_key(),
            &claims(|c| c.lid = "AAAAAAAAAAAAAAAAAAAAAA".into())?,
        )?),
        Misstep::Replayed => {
            s.send(Frame::Renew(SignedToken { jws: jws.clone() })).await;
            match s.next_frame(PATIENCE).await {
                Ok(Some(Frame::Renewed(_))) => Frame::Renew(SignedToken { jws }),
                other => {
                    return Err(ToolError::Unexpected(format!(
                        "the honest renewal before the replay: {}",
                        frame_text(&other)
                    )));
                }
            }
        }
        Misstep::WrongFrame => Frame::Revoke(SignedToken { jws }),
        Misstep::GrantFrame => Frame::Grant(SignedToken { jws }),
        Misstep::RevokeWithoutDetail => Frame::Revoke(SignedToken {
            jws: sign_claims(
                s.signer(),
                &claims(|c| {
                    c.typ = TYP_REVOKE.into();
                    c.ttl_ms = None;
                    c.reason = Some(Reason::LeaseRevoked.as_str().into());
                    c.detail = None;
                })?,
            )?,
        }),
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

/// What the module did with a control step, as evidence.
fn frame_text(frame: &Result<Option<Frame>, Elapsed>) -> String {
    match frame {
        Ok(Some(Frame::Renewed(_))) => "answered renewed".into(),
        Ok(Some(f)) => format!("{f:?}"),
        Ok(None) => "the stream closed".into(),
        Err(Elapsed(after)) => format!("no answer within {after:?}"),
    }
}
