//! The rows of a system of modules that a module answers for itself: P6
//! (modules reach each other only through the Core, so another module's
//! identity gets nothing from this one) and P12 (a proxy sidecar answers
//! `Sidecar/Inspect` with a well-formed verdict, and only under a lease).
//! P11 and the rest of P12 (start order, "sees every call first", "cannot
//! be bypassed") constrain the Core.

use std::net::SocketAddr;

use anima_protocol::interface::sidecar::{
    INSPECT, MAX_REASON, PROXY_INTERFACE, is_reason, refusal_code,
};
use anima_protocol::lease::{PROOF_HEADER, reason_of};
use anima_protocol::pb::sidecar_client::SidecarClient;
use anima_protocol::pb::{InboundCall, Refusal, Verdict};

use super::Run;
use crate::report::Report;
use crate::session::{self, Answer, OfferKind, PATIENCE, Session, describe};

impl Run<'_> {
    /// P6: a module's identity (same CA, a module URN) is refused: at the
    /// handshake, or else every call and every lease offer it makes.
    pub(crate) async fn module_peer_checks(&self, r: &mut Report, addr: SocketAddr) {
        let peer = self.ids().module_peer.clone();
        let conn = match self.dial(&peer, addr).await {
            Ok(conn) => conn,
            Err(e) => {
                r.pass(
                    "P6",
                    format!("another module's identity is refused at the handshake ({e})"),
                );
                return;
            }
        };
        match session::status(&conn).await {
            Ok(st) => r.fail(
                "P6",
                format!(
                    "another module's identity was served ModuleAdmin/Status (it names {})",
                    st.urn
                ),
            ),
            Err(s) => r.pass(
                "P6",
                format!(
                    "ModuleAdmin/Status for another module's identity: {}",
                    describe(&s)
                ),
            ),
        }
        let offered = session::offer(
            conn,
            &peer.identity,
            &self.declared,
            self.ttl(),
            OfferKind::Honest,
        )
        .await;
        match offered {
            Ok(Answer::Granted(mut s)) => {
                r.fail("P6", "another module's identity was granted a lease");
                s.revoke("conformance: P6 probe").await;
            }
            Ok(Answer::Refused(Refusal { reason, .. })) => r.pass(
                "P6",
                format!("another module's lease offer was refused ({reason})"),
            ),
            Ok(Answer::Other(what)) => r.pass(
                "P6",
                format!("another module's lease offer was not granted ({what})"),
            ),
            Err(e) => r.pass(
                "P6",
                format!("another module's lease offer was not granted ({e})"),
            ),
        }
    }

    /// Whether the contract provides the proxy interface.
    fn is_proxy(&self) -> bool {
        self.plan
            .contract
            .provides
            .iter()
            .any(|p| p.interface.as_str() == PROXY_INTERFACE)
    }

    /// P12: a proxy sidecar answers `Inspect` under the lease `s` with a
    /// verdict the Core can pass on (a refusal's reason UPPER_SNAKE_CASE of
    /// at most 64 characters or empty, its code 0 to 16), and refuses it
    /// without a lease; `n/a` for a module that is no proxy sidecar.
    pub(crate) async fn sidecar_checks(&self, r: &mut Report, addr: SocketAddr, s: &mut Session) {
        if !self.is_proxy() {
            r.not_applicable(
                "P12",
                "the contract does not provide anima/sidecar; the rest of P12 constrains the Core",
            );
            return;
        }
        if !self.declared.contains(INSPECT) {
            r.fail(
                "P12",
                format!("the contract provides {PROXY_INTERFACE} but does not declare {INSPECT}"),
            );
            return;
        }
        let proof = s.proof(INSPECT);
        match inspect(&s.conn, Some(proof)).await {
            Ok(verdict) => match verdict_fault(&verdict) {
                None => r.pass(
                    "P12",
                    format!(
                        "Inspect under a lease answered allow={} reason={:?} code={}",
                        verdict.allow, verdict.reason, verdict.code
                    ),
                ),
                Some(fault) => r.fail("P12", format!("Inspect answered a verdict {fault}")),
            },
            Err(st) => r.fail(
                "P12",
                format!("Inspect under a lease failed: {}", describe(&st)),
            ),
        }
        // Unleased: a new connection of the same Core, no control stream.
        let Ok(bare) = self.dial(&self.ids().core_a, addr).await else {
            return;
        };
        match inspect(&bare, None).await {
            Ok(_) => r.fail("P12", "Inspect answered without a lease"),
            Err(st) if reason_of(&st).is_some() => {
                r.pass("P12", format!("Inspect without a lease: {}", describe(&st)));
            }
            Err(st) => r.fail(
                "P12",
                format!(
                    "Inspect without a lease: {} (want a lease refusal)",
                    describe(&st)
                ),
            ),
        }
    }
}

/// One `Sidecar/Inspect` call on `conn`, about a made-up call to the main.
async fn inspect(
    conn: &anima_protocol::Connection,
    proof: Option<String>,
) -> Result<Verdict, tonic::Status> {
    let mut request = tonic::Request::new(InboundCall {
        module: "urn:anima:module:conformance-main".into(),
        caller: "urn:anima:user:conformance-caller".into(),
        method: "/anima.conformance.v1.Main/Call".into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        deadline_ms: 0,
    });
    if let Some(p) = proof.and_then(|p| p.parse().ok()) {
        request.metadata_mut().insert(PROOF_HEADER, p);
    }
    request.set_timeout(PATIENCE);
    let mut client = SidecarClient::new(conn.channel());
    let call = client.inspect(request);
    match tokio::time::timeout(PATIENCE, call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "the module did not answer in time",
        )),
    }
}

/// What is wrong with a verdict, if anything.
fn verdict_fault(verdict: &Verdict) -> Option<String> {
    if verdict.allow {
        return None;
    }
    let reason = &verdict.reason;
    if !reason.is_empty() && !is_reason(reason) {
        return Some(format!(
            "refusing with reason {reason:?} (want [A-Z0-9_], at most {MAX_REASON} characters, or empty)"
        ));
    }
    if verdict.code != 0 && refusal_code(verdict).is_none() {
        return Some(format!(
            "refusing with code {} (want 0 to 16)",
            verdict.code
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(reason: &str, code: u32) -> Verdict {
        Verdict {
            allow: false,
            reason: reason.into(),
            message: String::new(),
            code,
        }
    }

    #[test]
    fn p12_verdicts_the_core_can_pass_on() {
        assert_eq!(verdict_fault(&refusal("RATE_LIMITED", 8)), None);
        assert_eq!(verdict_fault(&refusal("", 0)), None);
        assert_eq!(verdict_fault(&refusal(&"A".repeat(64), 16)), None);
        let allowed = Verdict {
            allow: true,
            reason: "whatever".into(),
            message: String::new(),
            code: 99,
        };
        assert_eq!(verdict_fault(&allowed), None);
    }

    #[test]
    fn p12_verdicts_the_core_cannot_pass_on() {
        for bad in [
            refusal("rate limited", 8),
            refusal("Rate_Limited", 8),
            refusal(&"A".repeat(65), 8),
            refusal("RATE_LIMITED", 17),
        ] {
            assert!(verdict_fault(&bad).is_some(), "{bad:?}");
        }
    }
}
