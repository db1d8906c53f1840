//! Admission rows: A2 (what a grant states), A3 (both sides issue and
//! validate the lease before any request: offers the module must refuse, a
//! second offer on a leased connection, a new offer on a connection whose
//! lease ended) and A9 (a grant no longer than the contract's maximum). Also
//! A6 for a call under that ended lease, and another Core's offer, refused
//! by the module bound to its own (E2, E3 and R2, as the caller names the
//! row).

use std::net::SocketAddr;
use std::time::Duration;

use anima_protocol::Connection;
use anima_protocol::lease::{LeaseClaims, REVOCATION_CONDITIONS, Reason};
use anima_protocol::pb::Refusal;

use super::{Run, UNDECLARED};
use crate::error::ToolError;
use crate::report::Report;
use crate::session::{self, Actor, Answer, OfferKind, Session, describe};

impl Run<'_> {
    /// Opens the run's first lease and checks the grant (A2, A3, A9).
    pub(crate) async fn first_lease(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
    ) -> Option<Session> {
        let asked = self.plan.contract.max_lease * 4;
        let s = match self
            .open(
                &self.ids().core_a.clone(),
                addr,
                &self.declared.clone(),
                asked,
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                r.fail(
                    "A3",
                    format!("an honest offer from its Core was not granted: {e}"),
                );
                return None;
            }
        };
        r.pass("A3", "the module verified the Core's offer and its grant verified (signature, identities, binding, scope, TTL)");
        let g = &s.grant;
        let max = self.plan.contract.max_lease;
        r.check(
            "A9",
            s.lease.ttl() <= max && g.ttl_ms <= max.as_millis() as u64,
            format!(
                "asked {} ms, granted {} ms (contract maximum {} ms)",
                asked.as_millis(),
                g.ttl_ms,
                max.as_millis()
            ),
        );
        let rev: Vec<&str> = g.rev.iter().map(String::as_str).collect();
        let ok = !g.lid.is_empty()
            && g.lid == s.lease.id().to_string()
            && g.con == self.ids().core_a.identity.urn().as_str()
            && g.pro == self.module.as_str()
            && g.scope.len() == self.declared.len()
            && g.exp >= g.iat
            && REVOCATION_CONDITIONS.iter().all(|c| rev.contains(c));
        r.check(
            "A2",
            ok,
            format!(
                "grant: lid {}, con {}, pro {}, scope {:?}, ttl_ms {}, rev {:?}",
                g.lid, g.con, g.pro, g.scope, g.ttl_ms, g.rev
            ),
        );
        Some(s)
    }

    /// Another Core's offer must not be granted.
    pub(crate) async fn wrong_core(
        &self,
        r: &mut Report,
        addr: SocketAddr,
        other: &Actor,
        row: &'static str,
    ) {
        let conn = match self.dial(other, addr).await {
            Err(e) => {
                r.pass(
                    row,
                    format!(
                        "another Core ({}) is refused at the handshake: {e}",
                        other.identity.urn()
                    ),
                );
                return;
            }
            Ok(conn) => conn,
        };
        match session::offer(
            conn,
            &other.identity,
            &self.declared,
            self.ttl(),
            OfferKind::Honest,
        )
        .await
        {
            Ok(Answer::Refused(Refusal { reason, detail })) => r.check(
                row,
                reason == Reason::WrongCore.as_str(),
                format!("another Core's offer is refused: {reason} {detail}"),
            ),
            Ok(Answer::Granted(mut s)) => {
                r.fail(
                    row,
                    format!(
                        "the module granted a lease to a second Core ({})",
                        other.identity.urn()
                    ),
                );
                s.revoke("conformance: second core").await;
            }
            Ok(Answer::Other(what)) => {
                r.pass(row, format!("another Core's offer is not granted: {what}"))
            }
            Err(e) => r.pass(row, format!("another Core's offer is not granted: {e}")),
        }
    }

    /// A3: offers the module must refuse, each from the module's own Core
    /// (`core_a`) on a connection of its own.
    pub(crate) async fn bad_offer_checks(&self, r: &mut Report, addr: SocketAddr, core_a: &Actor) {
        for (what, want, kind) in bad_offers() {
            let answer = match self.dial(core_a, addr).await {
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
    }

    /// A3: an offer on a second control stream of a leased connection is
    /// refused `LEASE_EXISTS`, and the lease lives on.
    pub(crate) async fn second_offer(&mut self, r: &mut Report, live: &mut Session) {
        let answer = self.honest_offer_on(live.conn.clone()).await;
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

    /// A3 and A6: an ended lease stays attached to its connection but does
    /// not hold it (PROTOCOL.md §2, *One lease per connection*). A fresh
    /// lease is revoked; a call under it is refused `LEASE_REVOKED` (never
    /// `NO_LEASE` or `STANDBY`, A6); an offer on a new control stream of
    /// the same connection is granted like a first one, and a call under the
    /// new lease runs (A3). The run's first lease stays live on another
    /// connection meanwhile, so a Type I module is not at zero-lease and
    /// does not terminate (§6.3: only its last lease ending counts).
    pub(crate) async fn offer_after_end(&mut self, r: &mut Report, addr: SocketAddr) {
        let Some(mut ended) = self.lease_of_a(r, addr, self.ttl()).await else {
            return;
        };
        ended
            .revoke_and_wait("conformance: revoked, its connection kept for a new offer")
            .await;
        let what = "revoked and still attached";
        self.refused_after_end(r, &mut ended, "A6", &[Reason::LeaseRevoked], what)
            .await;
        let answer = self.honest_offer_on(ended.conn.clone()).await;
        let what = "an offer on a new control stream of a connection whose lease was revoked";
        let Some(mut again) = granted(r, "A3", what, answer) else {
            return;
        };
        match self.leased_call(&mut again).await {
            Ok(()) => r.pass(
                "A3",
                format!("{what}: granted, and a call under the new lease ran"),
            ),
            Err(st) => r.fail(
                "A3",
                format!(
                    "{what}: granted, but a call under the new lease failed: {}",
                    describe(&st)
                ),
            ),
        }
        again
            .revoke("conformance: re-lease on a kept connection done")
            .await;
    }

    /// The module's own Core (`core_a`) offers the declared scope on a new
    /// control stream of `conn`, a connection it already holds.
    async fn honest_offer_on(&self, conn: Connection) -> Result<Answer, ToolError> {
        let identity = &self.ids().core_a.identity;
        session::offer(
            conn,
            identity,
            &self.declared,
            self.ttl(),
            OfferKind::Honest,
        )
        .await
    }

    /// A2: a sub-second grant states exactly what PROTOCOL.md §3.1–3.2 say.
    pub(crate) async fn grant_claims(&mut self, r: &mut Report, addr: SocketAddr) {
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
}

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

/// Records whether an offer was refused with `want`.
pub(crate) fn refused(
    r: &mut Report,
    row: &'static str,
    what: &str,
    want: Reason,
    answer: Result<Answer, ToolError>,
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

/// The session of an offer that must be granted, or a failed `row` saying
/// what came instead.
fn granted(
    r: &mut Report,
    row: &'static str,
    what: &str,
    answer: Result<Answer, ToolError>,
) -> Option<Session> {
    let got = match answer {
        Ok(Answer::Granted(s)) => return Some(*s),
        Ok(Answer::Refused(Refusal { reason, detail })) => {
            format!("refused {reason} ({detail:.80})")
        }
        Ok(Answer::Other(other)) => other,
        Err(e) => e.to_string(),
    };
    r.fail(row, format!("{what}: {got} (want a grant)"));
    None
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
