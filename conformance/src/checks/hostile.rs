//! The misbehaving Core: tokens an honest Core never sends (forged,
//! tampered, replayed, for another lease), a Core that never offers, a
//! second offer on a leased connection, a new offer on a connection whose
//! lease it revoked, a proof made for another method, a renewal that
//! shortens the lease, a user that offers, TLS 1.2 and a client without
//! ALPN. Each decides its row from what the module does.
//!
//! This file runs them (each lives with its row family: `transport`,
//! `admission`, `proofs`, `lease`) and decides A3 for a Core that opens the
//! control stream and never offers.

use std::net::SocketAddr;
use std::time::Duration;

use anima_protocol::lease::Reason;
use anima_protocol::pb::Refusal;
use anima_protocol::pb::control_frame::Frame;

use super::{REACTION, Run};
use crate::report::Report;
use crate::session::{self, Actor, Session};

/// How long a module waits for the offer on a new control stream
/// (PROTOCOL.md §2, step 1).
const OFFER_DEADLINE: Duration = Duration::from_secs(5);

impl Run<'_> {
    /// Every hostile check. `live` is a lease of the module's own Core
    /// (`core_a`), left open.
    pub(crate) async fn hostile_checks(
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
        self.bad_offer_checks(r, addr, &core_a).await;
        self.user_offer(r, addr).await;
        self.second_offer(r, live).await;
        self.offer_after_end(r, addr).await;
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
    pub(crate) async fn lease_of_a(
        &self,
        r: &mut Report,
        addr: SocketAddr,
        ttl: Duration,
    ) -> Option<Session> {
        let core_a = self.ids().core_a.clone();
        self.lease_declared(r, &core_a, addr, ttl).await
    }

    /// A lease of `actor` for every declared method, or a failed A3 saying
    /// why not.
    pub(crate) async fn lease_declared(
        &self,
        r: &mut Report,
        actor: &Actor,
        addr: SocketAddr,
        ttl: Duration,
    ) -> Option<Session> {
        match self.open(actor, addr, &self.declared.clone(), ttl).await {
            Ok(s) => Some(s),
            Err(e) => {
                r.fail("A3", format!("a lease was not granted: {e}"));
                None
            }
        }
    }
}
