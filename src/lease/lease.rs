//! An open lease as one side holds it: verified, bound to one connection,
//! with its own expiry on this side's monotonic clock.
//!
//! Pure state: callers pass the current [`Instant`] in, so timing logic is
//! exact under test clocks. Not thread-safe by itself; hosts wrap it.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use super::claims::{ControlClaims, TYP_RENEW, TYP_RENEWED, TYP_RESCOPE, TYP_RESCOPED, TYP_REVOKE};
use super::error::LeaseError;
use super::handshake::{MIN_TTL, cert_bound, unix};
use super::jws::{self, b64};
use super::keys::{LeaseSigner, PeerBinding};
use super::proof::{ProofKey, ReplayWindow};
use super::reason::Reason;
use super::renewal::{LeaseKeys, RenewalKey};
use super::scope::Scope;
use crate::identity::Urn;
use crate::transport::ConnectionId;

/// A lease id: 16 random bytes, written as 22 characters of base64url.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub [u8; 16]);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&b64(&self.0))
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({self})")
    }
}

impl std::str::FromStr for LeaseId {
    type Err = LeaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        super::jws::b64_array(s, "lease id").map(LeaseId)
    }
}

/// Which side holds this copy of the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The consumer.
    Core,
    /// The provider.
    Module,
}

/// Who ended a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// This side.
    Local,
    /// The peer (a revocation or refusal it sent).
    Peer,
    /// Time (expiry) or the connection (loss).
    Circumstance,
}

impl fmt::Display for EndedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndedBy::Local => "local",
            EndedBy::Peer => "peer",
            EndedBy::Circumstance => "circumstance",
        })
    }
}

/// How a lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Why (e.g. `LEASE_REVOKED`, `CONNECTION_LOST`, `LEASE_EXPIRED`).
    pub reason: Reason,
    /// Who ended it.
    pub by: EndedBy,
    /// Human-readable detail.
    pub detail: String,
    /// When, on this side's monotonic clock.
    pub at: Instant,
}

/// The state of a lease at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Valid until `expires_at`.
    Active,
    /// Past its expiry, never renewed.
    Expired,
    /// Ended before expiry.
    Ended(Ended),
}

/// An open lease (the `VerifiedLease` of the protocol): only a verified
/// handshake creates one.
///
/// Not `Clone`: two copies of one side's lease would each accept the same
/// proof once. Fuzz builds (`cfg(fuzzing)`, set by cargo-fuzz) clone one
/// honest handshake's leases for every input instead of redoing it.
#[cfg_attr(fuzzing, derive(Clone))]
pub struct Lease {
    id: LeaseId,
    side: Side,
    consumer: Urn,
    provider: Urn,
    scope: Scope,
    ttl: Duration,
    max_ttl: Duration,
    issued_at: Instant,
    expires_at: Instant,
    wall_issued: SystemTime,
    proof: ProofKey,
    renewal: RenewalKey,
    replay: ReplayWindow,
    peer: PeerBinding,
    /// When this side's own certificate (the one presented on the lease's
    /// connection) expires: renewals never run past it.
    own_not_after: Option<SystemTime>,
    sent_seq: u64,
    received_seq: u64,
    pending: Option<Pending>,
    /// Core side: renewals given up on since the last answered request, the
    /// oldest first (at most four: `ABANDONED_KEPT`); a late answer to one still
    /// renews.
    abandoned: Vec<Pending>,
    renewals: u64,
    ended: Option<Ended>,
}

/// How many abandoned renewals the Core still takes a late answer to.
const ABANDONED_KEPT: usize = 4;

/// A request the Core sends and the module answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// A renewal.
    Renew,
    /// A scope change.
    Rescope,
}

impl Exchange {
    /// The request's `typ`.
    fn request_typ(self) -> &'static str {
        match self {
            Exchange::Renew => TYP_RENEW,
            Exchange::Rescope => TYP_RESCOPE,
        }
    }

    /// The answer's `typ`.
    fn answer_typ(self) -> &'static str {
        match self {
            Exchange::Renew => TYP_RENEWED,
            Exchange::Rescope => TYP_RESCOPED,
        }
    }

    /// What the request and what its answer are called.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Exchange::Renew => ("renewal", "renewal answer"),
            Exchange::Rescope => ("scope change", "scope answer"),
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    sent_at: Instant,
    kind: Exchange,
    /// Renewals: the TTL asked for; the answer may grant less, never more.
    asked: Duration,
    /// Scope changes: the scope asked for; the answer may grant no method
    /// outside it.
    scope: Option<Scope>,
}

impl Lease {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: LeaseId,
        side: Side,
        consumer: Urn,
        provider: Urn,
        scope: Scope,
        ttl: Duration,
        start: Instant,
        wall: SystemTime,
        max_ttl: Duration,
        keys: LeaseKeys,
        peer: PeerBinding,
        own_not_after: Option<SystemTime>,
    ) -> Self {
        Lease {
            id,
            side,
            consumer,
            provider,
            scope,
            ttl,
            max_ttl,
            issued_at: start,
            expires_at: start + ttl,
            wall_issued: wall,
            proof: keys.proof,
            renewal: keys.renewal,
            replay: ReplayWindow::default(),
            peer,
            own_not_after,
            sent_seq: 0,
            received_seq: 0,
            pending: None,
            abandoned: Vec::new(),
            renewals: 0,
            ended: None,
        }
    }

    /// The lease id.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// Which side holds this copy.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The Core.
    pub fn consumer(&self) -> &Urn {
        &self.consumer
    }

    /// The module.
    pub fn provider(&self) -> &Urn {
        &self.provider
    }

    /// The permitted methods.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The TTL last granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the lease was opened (this side's clock).
    pub fn issued_at(&self) -> Instant {
        self.issued_at
    }

    /// When the lease was opened (wall clock; audit).
    pub fn wall_issued(&self) -> SystemTime {
        self.wall_issued
    }

    /// When the lease expires unless renewed (this side's clock).
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// How many renewals were granted.
    pub fn renewals(&self) -> u64 {
        self.renewals
    }

    /// The connection the lease is bound to.
    pub fn connection(&self) -> ConnectionId {
        self.peer.connection
    }

    /// The other side's identity.
    pub fn peer(&self) -> &Urn {
        &self.peer.urn
    }

    /// The per-lease proof key (the Core signs calls with it).
    pub fn proof_key(&self) -> &ProofKey {
        &self.proof
    }

    /// The key that authenticates this lease's renewal tokens (PROTOCOL.md
    /// §3.3), for tools that send tokens an honest side never does.
    pub fn renewal_key(&self) -> &RenewalKey {
        &self.renewal
    }

    /// How the lease ended, if it did (expiry is not recorded here).
    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> LeaseState {
        match &self.ended {
            Some(e) => LeaseState::Ended(e.clone()),
            None if now >= self.expires_at => LeaseState::Expired,
            None => LeaseState::Active,
        }
    }

    /// `Ok` while the lease is valid at `now`; otherwise the refusal.
    pub fn check_valid(&self, now: Instant) -> Result<(), LeaseError> {
        match self.state(now) {
            LeaseState::Active => Ok(()),
            LeaseState::Expired => Err(LeaseError::Expired {
                lease_id: self.id.to_string(),
                ago: now.saturating_duration_since(self.expires_at),
            }),
            LeaseState::Ended(e) if e.reason == Reason::LeaseExpired => Err(LeaseError::Expired {
                lease_id: self.id.to_string(),
                ago: now.saturating_duration_since(self.expires_at),
            }),
            LeaseState::Ended(e) => Err(LeaseError::Revoked {
                lease_id: self.id.to_string(),
                by: e.by.to_string(),
                reason: e.reason,
            }),
        }
    }

    /// Module side: admits one call of `method` carrying `proof` (the
    /// `anima-proof` metadata value), in this order: lease valid, proof
    /// present and genuine, not replayed, method in scope.
    pub fn admit(
        &mut self,
        method: &str,
        proof: Option<&str>,
        now: Instant,
    ) -> Result<(), LeaseError> {
        self.check_valid(now)?;
        let proof = proof.ok_or(LeaseError::NoLease("the call carries no lease proof"))?;
        let seq = match self.proof.check(proof, method) {
            Err(e) if fault_on!(ProofAnyMethod) => self
                .scope
                .iter()
                .find_map(|m| self.proof.check(proof, m).ok())
                .ok_or(e)?,
            checked => checked?,
        };
        if !self.replay.accept(seq) {
            return Err(LeaseError::ProofReplayed { seq });
        }
        if !self.scope.contains(method) {
            return Err(LeaseError::ScopeDenied {
                method: format!("{method:.256}"),
            });
        }
        Ok(())
    }

    /// Ends the lease (first end wins). A lease already past its expiry
    /// ends as expired, whatever else happened after that instant.
    pub fn end(&mut self, reason: Reason, by: EndedBy, detail: impl Into<String>, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        let ended = if now >= self.expires_at && reason != Reason::LeaseExpired {
            Ended {
                reason: Reason::LeaseExpired,
                by: EndedBy::Circumstance,
                detail: "expired".into(),
                at: self.expires_at,
            }
        } else {
            Ended {
                reason,
                by,
                detail: detail.into(),
                at: now,
            }
        };
        self.ended = Some(ended);
    }

    /// Numbers `claims` and signs them with this side's certificate key.
    fn control(
        &mut self,
        signer: &LeaseSigner,
        claims: ControlClaims,
    ) -> Result<String, LeaseError> {
        jws::sign(&self.numbered(claims), signer.key())
    }

    /// Numbers renewal `claims` and authenticates them with the lease's
    /// renewal key (`HS256`).
    fn renewal_control(&mut self, claims: ControlClaims) -> Result<String, LeaseError> {
        let claims = self.numbered(claims);
        jws::mac(&claims, &self.renewal)
    }

    /// `claims` with this side's next control sequence number.
    fn numbered(&mut self, mut claims: ControlClaims) -> ControlClaims {
        self.sent_seq += 1;
        claims.seq = self.sent_seq;
        claims
    }

    fn blank(&self, typ: &str, wall: SystemTime) -> ControlClaims {
        ControlClaims::bare(typ, self.id.to_string(), 0, unix(wall))
    }

    /// The claims of the `kind` answer to `request`: the lease runs `left`
    /// more, until `exp_secs` after `wall`.
    fn answer_claims(
        &self,
        kind: Exchange,
        request: &ControlClaims,
        left: Duration,
        exp_secs: u64,
        wall: SystemTime,
    ) -> ControlClaims {
        ControlClaims {
            re: Some(request.seq),
            ttl_ms: Some(ms(left)),
            exp: Some(unix(wall) + exp_secs),
            ..self.blank(kind.answer_typ(), wall)
        }
    }

    /// Verifies a control token from the peer: signature (or, for a
    /// renewal, its tag under the renewal key), claim set, lease id, order.
    pub fn receive(&mut self, token: &str) -> Result<ControlClaims, LeaseError> {
        let renewal = jws::is_mac(token);
        let verified = if renewal {
            jws::verify_mac(token, &self.renewal)
        } else {
            jws::verify(token, &self.peer.key)
        };
        #[cfg(not(anima_test_faults))]
        let claims: ControlClaims = verified?;
        #[cfg(anima_test_faults)]
        let claims: ControlClaims = crate::fault::verify_token(
            token,
            verified,
            crate::fault::ProtocolFault::ControlSignature,
        )?;
        claims.check_claim_set()?;
        // Renewals, and only renewals, are authenticated with the renewal key.
        let is_renewal_typ = claims.typ == TYP_RENEW || claims.typ == TYP_RENEWED;
        if renewal != is_renewal_typ {
            return Err(LeaseError::BadToken(format!(
                "a {} token must be {}",
                claims.typ,
                if is_renewal_typ {
                    "authenticated with the lease's renewal key (HS256)"
                } else {
                    "signed with the certificate key"
                }
            )));
        }
        if claims.lid != self.id.to_string() && !fault_on!(ControlLid) {
            return Err(LeaseError::Protocol(
                "control token for another lease".into(),
            ));
        }
        if claims.seq <= self.received_seq && !fault_on!(ControlSeq) {
            return Err(LeaseError::Protocol(format!(
                "control sequence {} not after {}",
                claims.seq, self.received_seq
            )));
        }
        self.received_seq = claims.seq;
        Ok(claims)
    }

    fn start_request(
        &mut self,
        kind: Exchange,
        asked: Duration,
        scope: Option<Scope>,
        now: Instant,
    ) -> Result<(), LeaseError> {
        if self.side != Side::Core {
            return Err(LeaseError::Protocol(format!(
                "only the Core sends {}",
                kind.request_typ()
            )));
        }
        if let Some(p) = &self.pending {
            return Err(LeaseError::Protocol(format!(
                "{} {} still unanswered",
                p.kind.request_typ(),
                p.seq
            )));
        }
        self.check_valid(now)?;
        self.pending = Some(Pending {
            seq: self.sent_seq + 1,
            sent_at: now,
            kind,
            asked,
            scope,
        });
        Ok(())
    }

    /// Stops awaiting an unanswered request (its answer timed out). A late
    /// answer to an abandoned renewal (one of the last four)
    /// still renews the lease, from when that request was sent
    /// ([`Lease::apply_renewed`]); any other late answer is ignored
    /// ([`Lease::is_stale_answer`]). An abandoned `rescope` has failed.
    pub fn abandon_request(&mut self) {
        if let Some(p) = self.pending.take()
            && p.kind == Exchange::Renew
        {
            if self.abandoned.len() == ABANDONED_KEPT {
                self.abandoned.remove(0);
            }
            self.abandoned.push(p);
        }
    }

    /// Module side: `Ok` if `request` is a `kind` request and the lease is
    /// valid at `now`.
    fn check_request(
        &self,
        kind: Exchange,
        request: &ControlClaims,
        now: Instant,
    ) -> Result<(), LeaseError> {
        request.expect_typ(kind.request_typ(), kind.names().0)?;
        self.check_valid(now)
    }

    /// Core side: the pending `kind` request that `answer` answers, if
    /// `answer` is a `kind` answer to it and the lease is valid at `now`.
    fn finish_request(
        &mut self,
        kind: Exchange,
        answer: &ControlClaims,
        now: Instant,
    ) -> Result<Pending, LeaseError> {
        answer.expect_typ(kind.answer_typ(), kind.names().1)?;
        let awaited = self
            .pending
            .as_ref()
            .is_some_and(|p| p.kind == kind && answer.re == Some(p.seq));
        let pending = if awaited {
            // The module answers in order: every older request is answered
            // or never will be.
            self.abandoned.clear();
            self.pending.take()
        } else {
            // A late answer to an abandoned renewal: the ones before it are
            // done with too; the awaited request stays awaited.
            let late = self
                .abandoned
                .iter()
                .position(|p| p.kind == kind && answer.re == Some(p.seq));
            late.and_then(|i| self.abandoned.drain(..=i).next_back())
        };
        let Some(pending) = pending else {
            return Err(LeaseError::Protocol(format!(
                "unexpected {} answer",
                kind.request_typ()
            )));
        };
        self.check_valid(now)?;
        Ok(pending)
    }

    /// Core side: a renewal request for `ttl`, authenticated with the
    /// lease's renewal key.
    pub fn renew_request(
        &mut self,
        ttl: Duration,
        now: Instant,
        wall: SystemTime,
    ) -> Result<String, LeaseError> {
        self.start_request(Exchange::Renew, ttl, None, now)?;
        let mut claims = self.blank(TYP_RENEW, wall);
        claims.ttl_ms = Some(ms(ttl));
        self.renewal_control(claims)
    }

    /// Module side: answers a verified renewal request. The lease then runs
    /// `granted` from `now`, where `granted` is the request capped at the
    /// contract maximum.
    pub fn answer_renew(
        &mut self,
        request: &ControlClaims,
        now: Instant,
        wall: SystemTime,
    ) -> Result<String, LeaseError> {
        self.check_request(Exchange::Renew, request, now)?;
        let asked = Duration::from_millis(request.ttl_ms.unwrap_or(0));
        if asked < MIN_TTL {
            return Err(LeaseError::BadToken(format!(
                "renewal ttl below {MIN_TTL:?}"
            )));
        }
        // Capped like the handshake: the contract maximum, and neither
        // certificate may expire while the lease runs (`certificate-expiry`).
        let granted =
            asked
                .min(self.max_ttl)
                .min(cert_bound(wall, self.own_not_after, self.peer.not_after));
        if granted < MIN_TTL {
            return Err(LeaseError::BadToken(
                "a certificate expires before a renewed lease could run".into(),
            ));
        }
        self.ttl = granted;
        self.expires_at = if fault_on!(RenewExtends) {
            self.expires_at + granted
        } else {
            now + granted
        };
        self.renewals += 1;
        let claims = self.answer_claims(
            Exchange::Renew,
            request,
            granted,
            granted.as_secs().max(1),
            wall,
        );
        self.renewal_control(claims)
    }

    /// Core side: applies a verified renewal answer. The Core's lease runs
    /// the granted TTL from when it *sent* the request, so it never outlasts
    /// the module's.
    pub fn apply_renewed(
        &mut self,
        answer: &ControlClaims,
        now: Instant,
    ) -> Result<Duration, LeaseError> {
        let pending = self.finish_request(Exchange::Renew, answer, now)?;
        let granted = Duration::from_millis(answer.ttl_ms.unwrap_or(0));
        if granted < MIN_TTL || granted > pending.asked {
            return Err(LeaseError::BadToken(format!(
                "renewal granted {granted:?}, outside {MIN_TTL:?}..={:?}",
                pending.asked
            )));
        }
        self.ttl = granted;
        // The module's lease now runs `granted` from when it received the
        // request (it may be shorter than before); ours from when we sent
        // it, so ours never outlasts the module's.
        self.expires_at = pending.sent_at + granted;
        self.renewals += 1;
        Ok(granted)
    }

    /// Core side: a signed request to change the scope to `scope`.
    pub fn rescope_request(
        &mut self,
        signer: &LeaseSigner,
        scope: &Scope,
        now: Instant,
        wall: SystemTime,
    ) -> Result<String, LeaseError> {
        self.start_request(Exchange::Rescope, Duration::ZERO, Some(scope.clone()), now)?;
        let mut claims = self.blank(TYP_RESCOPE, wall);
        claims.scope = Some(scope.to_vec());
        self.control(signer, claims)
    }

    /// Module side: answers a verified scope change, which must lie within
    /// the `declared` methods (a promotion beyond them is refused).
    pub fn answer_rescope(
        &mut self,
        signer: &LeaseSigner,
        request: &ControlClaims,
        declared: &Scope,
        now: Instant,
        wall: SystemTime,
    ) -> Result<String, LeaseError> {
        self.check_request(Exchange::Rescope, request, now)?;
        let scope = Scope::new(request.scope.clone().unwrap_or_default())?;
        if let Some(extra) = scope.difference(declared).next() {
            return Err(LeaseError::ScopeDenied {
                method: extra.to_owned(),
            });
        }
        self.scope = scope;
        let left = self.expires_at.saturating_duration_since(now);
        let claims = ControlClaims {
            scope: Some(self.scope.to_vec()),
            ..self.answer_claims(Exchange::Rescope, request, left, left.as_secs(), wall)
        };
        self.control(signer, claims)
    }

    /// Core side: applies a verified scope answer, whose scope must lie
    /// within the scope asked for (compared as sets).
    pub fn apply_rescoped(
        &mut self,
        answer: &ControlClaims,
        now: Instant,
    ) -> Result<(), LeaseError> {
        let pending = self.finish_request(Exchange::Rescope, answer, now)?;
        let scope = Scope::new(answer.scope.clone().unwrap_or_default())?;
        let asked = pending.scope.unwrap_or_default();
        if let Some(extra) = scope.difference(&asked).next() {
            return Err(LeaseError::ScopeDenied {
                method: extra.to_owned(),
            });
        }
        self.scope = scope;
        Ok(())
    }

    /// Either side: ends the lease here and returns the signed revocation
    /// to send.
    pub fn revoke(
        &mut self,
        signer: &LeaseSigner,
        reason: Reason,
        detail: &str,
        now: Instant,
        wall: SystemTime,
    ) -> Result<String, LeaseError> {
        self.end(reason, EndedBy::Local, detail, now);
        let mut claims = self.blank(TYP_REVOKE, wall);
        claims.reason = Some(reason.as_str().into());
        claims.detail = Some(format!("{detail:.200}"));
        self.control(signer, claims)
    }

    /// Either side: applies a verified revocation from the peer.
    pub fn apply_revoke(
        &mut self,
        notice: &ControlClaims,
        now: Instant,
    ) -> Result<Reason, LeaseError> {
        notice.expect_typ(TYP_REVOKE, "revocation")?;
        let reason = notice
            .reason
            .as_deref()
            .and_then(Reason::parse)
            .unwrap_or(Reason::LeaseRevoked);
        let detail = notice.detail.clone().unwrap_or_default();
        self.end(reason, EndedBy::Peer, format!("{detail:.200}"), now);
        Ok(reason)
    }

    /// Whether `answer` answers a request this side abandoned (it asked
    /// again since) and no longer takes an answer to: an abandoned
    /// `rescope`, or a renewal abandoned before the last four.
    /// Such an answer is ignored, not a violation.
    pub fn is_stale_answer(&self, answer: &ControlClaims) -> bool {
        let current = self.pending.as_ref().map(|p| p.seq);
        let kept = |re| self.abandoned.iter().any(|p| p.seq == re);
        matches!(answer.re, Some(re) if re < self.sent_seq && Some(re) != current && !kept(re))
    }

    /// The time of the pending request, if one is unanswered.
    pub fn pending_since(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.sent_at)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("side", &self.side)
            .field("consumer", &self.consumer)
            .field("provider", &self.provider)
            .field("scope", &self.scope)
            .field("ttl", &self.ttl)
            .field("renewals", &self.renewals)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
