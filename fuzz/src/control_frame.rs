//! The lease control stream after the handshake: `ControlFrame`s decoded
//! from protobuf bytes (as tonic's prost codec does) and each stepped through
//! the receiving side's lease, as the module SDK (`control.rs`: `step`) and
//! the Core (`lease/link.rs`: `on_frame`) do, on a live pair of leases from
//! an honest handshake.
//!
//! Input: a script of operations, each one byte (low nibble) and its operands.
//!
//! | op | operands | what happens |
//! | --- | --- | --- |
//! | 0 / 1 | `u16` length, frame bytes | the frame arrives at the module / the Core; with bit 7 set, each token in it is first replaced by its text signed as claims with the sender's real key (a hostile but authenticated peer) |
//! | 2 | | the Core asks to renew ([`REQUEST_TTL`], as the Core always does) |
//! | 3 | scope mask | the Core asks for a scope (bits 0–2: the declared methods, bit 3: an undeclared one) |
//! | 4 / 5 | | the oldest frame in flight to the module / to the Core arrives |
//! | 6 | `u16` ms | time passes; a lease past its expiry ends |
//! | 7 | | the Core abandons its unanswered request (its retry timer) |
//! | 8 / 9 | reason index | the module / the Core revokes |
//!
//! Frames in flight are delivered in order (one HTTP/2 stream each way).
//! Checked after every step: the module's scope stays within the declared
//! methods and its TTL within `max_lease` (PROTOCOL.md §3.4); the Core's
//! TTL within what it asked; the first end of a lease is final; and while
//! only honest frames were exchanged, the Core's copy never outlives the
//! module's.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anima_protocol::lease::{
    Ended, EndedBy, Lease, LeaseError, LeaseState, MIN_TTL, Reason, Scope, Side,
};
use anima_protocol::pb::{ControlFrame, Refusal, SignedToken, control_frame::Frame};
use prost::Message as _;

use crate::fixtures::{
    self, CORE_SEED, Cursor, DECLARED, MAX_TTL, MODULE_SEED, Parties, REQUEST_TTL, UNDECLARED,
};

/// Reasons a side revokes with (op 8 / 9).
const REASONS: [Reason; 4] = [
    Reason::LeaseRevoked,
    Reason::Shutdown,
    Reason::BadProof,
    Reason::ProtocolViolation,
];

struct Session {
    p: &'static Parties,
    now: Instant,
    core: Lease,
    module: Lease,
    to_module: VecDeque<Frame>,
    to_core: VecDeque<Frame>,
    /// A frame from the fuzz input (not from either honest side) was stepped.
    hostile: bool,
    core_end: Option<Ended>,
    module_end: Option<Ended>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    session(data);
}

/// Runs one input; the session as it ended.
fn session(data: &[u8]) -> Session {
    let p = fixtures::ed25519();
    let now = fixtures::start();
    let (core, module) = fixtures::ed25519_leases();
    let mut s = Session {
        p,
        now,
        core,
        module,
        to_module: VecDeque::new(),
        to_core: VecDeque::new(),
        hostile: false,
        core_end: None,
        module_end: None,
    };
    let mut input = Cursor(data);
    while let Some(op) = input.byte() {
        match op & 0x0f {
            0 | 1 => {
                let len = usize::from(input.u16());
                let Ok(frame) = ControlFrame::decode(input.take(len)) else {
                    continue;
                };
                let to_module = op & 0x0f == 0;
                let mut frame = frame.frame;
                if op & 0x80 != 0 {
                    let seed = if to_module { &CORE_SEED } else { &MODULE_SEED };
                    sign_tokens(&mut frame, seed);
                }
                s.hostile = true;
                // Both sides' control loops skip an empty frame.
                match frame {
                    Some(frame) if to_module => s.module_receives(frame),
                    Some(frame) => s.core_receives(frame),
                    None => {}
                }
            }
            2 => s.core_renews(),
            3 => s.core_rescopes(input.byte().unwrap_or(0)),
            4 => {
                if let Some(f) = s.to_module.pop_front() {
                    s.module_receives(f);
                }
            }
            5 => {
                if let Some(f) = s.to_core.pop_front() {
                    s.core_receives(f);
                }
            }
            6 => s.tick(Duration::from_millis(u64::from(input.u16()))),
            7 => s.core.abandon_request(),
            8 | 9 => {
                let side = if op & 0x0f == 8 {
                    Side::Module
                } else {
                    Side::Core
                };
                let reason = REASONS[usize::from(input.byte().unwrap_or(0)) % REASONS.len()];
                s.revokes(side, reason, "fuzz");
            }
            _ => {}
        }
        s.check();
    }
    s
}

/// Replaces each token's text by a JWS of that text as claims, signed with
/// the Ed25519 key of `seed`.
fn sign_tokens(frame: &mut Option<Frame>, seed: &[u8; 32]) {
    if let Some(
        Frame::Offer(t)
        | Frame::Grant(t)
        | Frame::Renew(t)
        | Frame::Renewed(t)
        | Frame::Rescope(t)
        | Frame::Rescoped(t)
        | Frame::Revoke(t),
    ) = frame
    {
        t.jws = fixtures::sign_as(seed, t.jws.as_bytes());
    }
}

/// A peer's revocation, as either side takes it.
fn take_revoke(lease: &mut Lease, jws: &str, now: Instant) -> Result<(), LeaseError> {
    let claims = lease.receive(jws)?;
    lease.apply_revoke(&claims, now)?;
    Ok(())
}

/// A peer's refusal ends the lease with its reason; one that is not a
/// reason reads as a revocation to the module and as a protocol violation
/// to the Core.
fn take_refusal(lease: &mut Lease, refusal: &Refusal, now: Instant) {
    let (unknown, peer) = match lease.side() {
        Side::Module => (Reason::LeaseRevoked, "the Core"),
        Side::Core => (Reason::ProtocolViolation, "the module"),
    };
    let reason = Reason::parse(&refusal.reason).unwrap_or(unknown);
    let detail = format!("refused by {peer}: {:.200}", refusal.detail);
    lease.end(reason, EndedBy::Peer, detail, now);
}

fn refusal(err: &LeaseError) -> Frame {
    Frame::Refuse(Refusal {
        reason: err.reason().as_str().into(),
        detail: format!("{err:.300}"),
    })
}

impl Session {
    /// The module's control loop (module-sdk `control.rs`): nothing is read
    /// after its lease ended; a refused step is answered with `refuse` and
    /// ends the lease.
    fn module_receives(&mut self, frame: Frame) {
        if self.module.ended().is_some() {
            return;
        }
        if let Err(err) = self.module_step(frame) {
            self.to_core.push_back(refusal(&err));
            self.module
                .end(err.reason(), EndedBy::Local, err.to_string(), self.now);
        }
    }

    /// module-sdk `control.rs`: `step`.
    fn module_step(&mut self, frame: Frame) -> Result<(), LeaseError> {
        let (p, now, wall) = (self.p, self.now, fixtures::wall());
        match frame {
            Frame::Renew(SignedToken { jws }) => {
                let claims = self.module.receive(&jws)?;
                let answer = self.module.answer_renew(&claims, now, wall)?;
                let ttl = self.module.ttl();
                assert!(
                    (MIN_TTL..=MAX_TTL).contains(&ttl),
                    "the module renewed for {ttl:?}, outside {MIN_TTL:?}..={MAX_TTL:?}"
                );
                self.to_core
                    .push_back(Frame::Renewed(SignedToken { jws: answer }));
            }
            Frame::Rescope(SignedToken { jws }) => {
                let claims = self.module.receive(&jws)?;
                let answer = self.module.answer_rescope(
                    &p.module,
                    &claims,
                    &fixtures::declared(),
                    now,
                    wall,
                )?;
                self.to_core
                    .push_back(Frame::Rescoped(SignedToken { jws: answer }));
            }
            Frame::Revoke(SignedToken { jws }) => take_revoke(&mut self.module, &jws, now)?,
            Frame::Refuse(refusal) => take_refusal(&mut self.module, &refusal, now),
            Frame::Offer(_) => {
                return Err(LeaseError::LeaseExists {
                    lease_id: self.module.id().to_string(),
                });
            }
            Frame::Grant(_) | Frame::Renewed(_) | Frame::Rescoped(_) => {
                return Err(LeaseError::Protocol(
                    "the module does not accept module-side frames".into(),
                ));
            }
        }
        Ok(())
    }

    /// The Core's control task (core `lease/link.rs`): nothing is read after
    /// its lease ended; a refused step revokes.
    fn core_receives(&mut self, frame: Frame) {
        if self.core.ended().is_some() {
            return;
        }
        if let Err(err) = self.core_step(frame) {
            self.revokes(Side::Core, err.reason(), &err.to_string());
        }
    }

    /// core `lease/link.rs`: `on_frame`.
    fn core_step(&mut self, frame: Frame) -> Result<(), LeaseError> {
        let now = self.now;
        match frame {
            Frame::Renewed(SignedToken { jws }) => {
                let claims = self.core.receive(&jws)?;
                if self.core.is_stale_answer(&claims) {
                    return Ok(());
                }
                let ttl = self.core.apply_renewed(&claims, now)?;
                assert!(
                    (MIN_TTL..=REQUEST_TTL).contains(&ttl),
                    "the Core took a renewal of {ttl:?}, outside {MIN_TTL:?}..={REQUEST_TTL:?}"
                );
            }
            Frame::Rescoped(SignedToken { jws }) => {
                let claims = self.core.receive(&jws)?;
                self.core.apply_rescoped(&claims, now)?;
            }
            Frame::Revoke(SignedToken { jws }) => take_revoke(&mut self.core, &jws, now)?,
            Frame::Refuse(refusal) => take_refusal(&mut self.core, &refusal, now),
            Frame::Offer(_) | Frame::Grant(_) | Frame::Renew(_) | Frame::Rescope(_) => {
                return Err(LeaseError::Protocol(
                    "the Core does not accept Core-side frames".into(),
                ));
            }
        }
        Ok(())
    }

    /// The Core's renewal timer (`control_task`): ask for the policy TTL.
    fn core_renews(&mut self) {
        if self.core.ended().is_some() {
            return;
        }
        if let Ok(jws) =
            self.core
                .renew_request(REQUEST_TTL, self.now, fixtures::wall())
        {
            self.to_module.push_back(Frame::Renew(SignedToken { jws }));
        }
    }

    /// `LeaseLink::rescope`.
    fn core_rescopes(&mut self, mask: u8) {
        if self.core.ended().is_some() {
            return;
        }
        let methods = DECLARED
            .iter()
            .copied()
            .chain([UNDECLARED])
            .enumerate()
            .filter(|(i, _)| mask >> i & 1 == 1)
            .map(|(_, m)| m);
        let scope = Scope::new(methods).expect("fixed, valid methods");
        if let Ok(jws) = self
            .core
            .rescope_request(&self.p.core, &scope, self.now, fixtures::wall())
        {
            self.to_module
                .push_back(Frame::Rescope(SignedToken { jws }));
        }
    }

    /// `side` revokes: the Core's `LinkShared::revoke`, module-sdk
    /// `ModuleState::revoke`.
    fn revokes(&mut self, side: Side, reason: Reason, detail: &str) {
        let (lease, signer, to_peer) = match side {
            Side::Core => (&mut self.core, &self.p.core, &mut self.to_module),
            Side::Module => (&mut self.module, &self.p.module, &mut self.to_core),
        };
        if lease.ended().is_some() {
            return;
        }
        if let Ok(jws) = lease.revoke(signer, reason, detail, self.now, fixtures::wall()) {
            to_peer.push_back(Frame::Revoke(SignedToken { jws }));
        }
    }

    /// Time passes; each side's expiry watch ends a lease past its expiry.
    fn tick(&mut self, by: Duration) {
        self.now += by;
        for lease in [&mut self.core, &mut self.module] {
            if lease.state(self.now) == LeaseState::Expired {
                lease.end(
                    Reason::LeaseExpired,
                    EndedBy::Circumstance,
                    "expired",
                    self.now,
                );
            }
        }
    }

    fn check(&mut self) {
        let declared = fixtures::declared();
        assert!(
            self.module.scope().is_subset(&declared),
            "the module's scope {} left the declared methods",
            self.module.scope()
        );
        assert!(self.module.ttl() <= MAX_TTL, "{:?}", self.module);
        assert!(self.core.ttl() <= REQUEST_TTL, "{:?}", self.core);
        for (lease, first) in [
            (&self.core, &mut self.core_end),
            (&self.module, &mut self.module_end),
        ] {
            match (first.as_ref(), lease.ended()) {
                (None, now) => *first = now.cloned(),
                (Some(before), now) => {
                    assert_eq!(Some(before), now, "the end of a lease changed")
                }
            }
        }
        let active = |l: &Lease, now| l.state(now) == LeaseState::Active;
        if !self.hostile && active(&self.core, self.now) && active(&self.module, self.now) {
            assert!(
                self.core.expires_at() <= self.module.expires_at(),
                "the Core's copy outlives the module's: {:?} > {:?}",
                self.core.expires_at() - self.now,
                self.module.expires_at().saturating_duration_since(self.now)
            );
        }
    }
}

/// Honest exchanges, and hostile frames that break one rule each.
pub fn seeds() -> Vec<Vec<u8>> {
    let lid = fixtures::b64(&fixtures::LEASE_ID);
    let wall = fixtures::WALL_SECS;
    let encode = |frame: Frame| ControlFrame { frame: Some(frame) }.encode_to_vec();
    let token = |text: String| SignedToken { jws: text };
    // op, then a frame (length-prefixed) for ops 0/1.
    let deliver = |op: u8, frame: Frame| {
        let mut out = vec![op];
        fixtures::push_item(&mut out, &encode(frame));
        out
    };
    let mut seeds: Vec<Vec<u8>> = vec![
        // Renew and answer; twice, with time passing.
        vec![2, 4, 5, 6, 0xe8, 0x03, 2, 4, 5],
        // Rescope to two methods; to an undeclared one (refused, ends both).
        vec![3, 0b011, 4, 5],
        vec![3, 0b1001, 4, 5, 4],
        // Expiry with and without renewal.
        vec![6, 0x88, 0x13],
        vec![6, 0xb8, 0x0b, 2, 4, 6, 0xe8, 0x03, 5, 6, 0xd0, 0x07],
        // An unanswered renewal abandoned and asked again; late answers.
        vec![2, 7, 2, 4, 4, 5, 5],
        vec![2, 4, 7, 5, 2, 4, 5],
        // Revocations either way.
        vec![9, 1, 4, 5],
        vec![8, 2, 5, 4],
        // A second request while one is unanswered.
        vec![2, 3, 0b111, 4, 4, 5, 5],
    ];
    let control = |typ: &str, seq: u64, extra: &str| {
        format!(r#"{{"typ":"{typ}","lid":"{lid}","seq":{seq},"iat":{wall}{extra}}}"#)
    };
    // Hostile Core → module (signed with the Core's key).
    for claims in [
        control("anima-renew+v1", 1, r#","ttl_ms":18446744073709551615"#),
        control("anima-renew+v1", 1, r#","ttl_ms":0"#),
        control("anima-renew+v1", 0, r#","ttl_ms":1000"#),
        control(
            "anima-rescope+v1",
            1,
            r#","scope":["/anima.fuzz.v1.Admin/Wipe"]"#,
        ),
        control("anima-rescope+v1", 1, r#","scope":[]"#),
        control("anima-rescope+v1", 1, ""),
        control("anima-revoke+v1", 1, r#","reason":"SHUTDOWN","detail":"x""#),
        control("anima-revoke+v1", 1, r#","reason":"NOPE""#),
        control("anima-renewed+v1", 1, r#","re":1,"ttl_ms":1000"#),
        control("anima-renew+v1", 1, r#","ttl_ms":1000,"bogus":1"#),
    ] {
        seeds.push(deliver(0x80, Frame::Renew(token(claims.clone()))));
        seeds.push(deliver(0x80, Frame::Rescope(token(claims.clone()))));
        seeds.push(deliver(0x80, Frame::Revoke(token(claims))));
    }
    // Hostile module → Core, after the Core asked.
    for (ask, claims) in [
        (
            2,
            control("anima-renewed+v1", 1, r#","re":1,"ttl_ms":10001"#),
        ),
        (
            2,
            control(
                "anima-renewed+v1",
                1,
                r#","re":1,"ttl_ms":18446744073709551615"#,
            ),
        ),
        (
            2,
            control("anima-renewed+v1", 1, r#","re":2,"ttl_ms":1000"#),
        ),
        (
            2,
            control("anima-renewed+v1", 1, r#","re":1,"ttl_ms":1000"#),
        ),
        (2, control("anima-rescoped+v1", 1, r#","re":1,"scope":[]"#)),
        (
            3,
            control(
                "anima-rescoped+v1",
                1,
                r#","re":1,"scope":["/anima.fuzz.v1.Admin/Wipe"]"#,
            ),
        ),
        (
            3,
            control("anima-rescoped+v1", 1, r#","re":1,"scope":["bad"]"#),
        ),
        (
            3,
            control("anima-revoke+v1", 1, r#","reason":"LEASE_REVOKED""#),
        ),
    ] {
        let mut seed = vec![ask];
        if ask == 3 {
            seed.push(0b001);
        }
        let frame = if claims.contains("rescoped") {
            Frame::Rescoped(token(claims))
        } else if claims.contains("revoke") {
            Frame::Revoke(token(claims))
        } else {
            Frame::Renewed(token(claims))
        };
        seed.extend(deliver(0x81, frame));
        seeds.push(seed);
    }
    // Unsigned and out-of-place frames; refusals; an empty frame.
    seeds.push(deliver(0, Frame::Offer(token("a.b.c".into()))));
    seeds.push(deliver(0, Frame::Grant(token(String::new()))));
    seeds.push(deliver(1, Frame::Renew(token(String::new()))));
    seeds.push(deliver(0, Frame::Renew(token("e30.e30.e30".into()))));
    for reason in ["SCOPE_DENIED", "LEASE_EXPIRED", "", "WHATEVER"] {
        let refuse = || {
            Frame::Refuse(Refusal {
                reason: reason.into(),
                detail: "no".into(),
            })
        };
        seeds.push(deliver(0, refuse()));
        seeds.push(deliver(1, refuse()));
    }
    let mut empty = vec![0];
    fixtures::push_item(&mut empty, &ControlFrame { frame: None }.encode_to_vec());
    seeds.push(empty);
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds reach what they are for: honest steps succeed, and a hostile
    /// peer's signed claims pass the signature check and meet the step rules.
    #[test]
    fn seeds_reach_the_steps() {
        let renewed = session(&[2, 4, 5]);
        assert_eq!((renewed.core.renewals(), renewed.module.renewals()), (1, 1));
        assert!(renewed.core.ended().is_none() && renewed.module.ended().is_none());

        let rescoped = session(&[3, 0b011, 4, 5]);
        assert_eq!(rescoped.core.scope().len(), 2);
        assert_eq!(rescoped.module.scope().len(), 2);

        let lid = fixtures::b64(&fixtures::LEASE_ID);
        let claims = format!(
            r#"{{"typ":"anima-renew+v1","lid":"{lid}","seq":1,"iat":{},"ttl_ms":1000}}"#,
            fixtures::WALL_SECS
        );
        let mut hostile = vec![0x80];
        fixtures::push_item(
            &mut hostile,
            &ControlFrame {
                frame: Some(Frame::Renew(SignedToken { jws: claims })),
            }
            .encode_to_vec(),
        );
        let s = session(&hostile);
        assert_eq!(s.module.renewals(), 1, "{:?}", s.module.ended());
        assert_eq!(s.module.ttl(), Duration::from_secs(1));

        let refused = session(&[3, 0b1000, 4, 5]);
        let ended = |l: &Lease| l.ended().map(|e| e.reason);
        assert_eq!(ended(&refused.module), Some(Reason::ScopeDenied));
        assert_eq!(ended(&refused.core), Some(Reason::ScopeDenied));
    }
}
