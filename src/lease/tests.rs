//! Handshake and lease-state tests with explicit instants (exact, instant).

use std::time::{Duration, Instant, SystemTime};

use super::doc_support::pair;
use super::jws::{self, b64};
use super::*;

const SAY: &str = "/echo.v1.Echo/Say";
const OTHER: &str = "/echo.v1.Echo/Other";

struct World {
    core: LeaseSigner,
    module: LeaseSigner,
    core_sees: PeerBinding,
    module_sees: PeerBinding,
    declared: Scope,
    now: Instant,
    wall: SystemTime,
}

fn world() -> World {
    let (core, module, core_sees, module_sees) = pair();
    World {
        core,
        module,
        core_sees,
        module_sees,
        declared: Scope::new([SAY, OTHER]).unwrap(),
        now: Instant::now(),
        wall: SystemTime::now(),
    }
}

impl World {
    fn policy(&self, max: Duration) -> GrantPolicy {
        GrantPolicy {
            declared: self.declared.clone(),
            max_ttl: max,
        }
    }

    fn open(&self, ttl: Duration, max: Duration) -> (Lease, Lease) {
        let (offer_jws, pending) = self.offer_by(&self.core, self.declared.clone(), ttl);
        let (grant_jws, module_lease) = self.grant_under(&offer_jws, max).unwrap();
        let core_lease = pending.accept(&self.core, &grant_jws, self.wall).unwrap();
        (core_lease, module_lease)
    }

    /// An offer of `scope` for `ttl` signed by `signer` (the Core, or a
    /// forger), and the Core's pending lease.
    fn offer_by(
        &self,
        signer: &LeaseSigner,
        scope: Scope,
        ttl: Duration,
    ) -> (String, PendingLease) {
        offer(
            signer,
            &self.core_sees,
            LeaseRequest { scope, ttl },
            Entropy::system().unwrap(),
            self.now,
            self.wall,
        )
        .unwrap()
    }

    fn offer_jws(&self, scope: Scope, ttl: Duration) -> String {
        self.offer_by(&self.core, scope, ttl).0
    }

    /// The module's answer to `offer_jws` under a maximum of `max`.
    fn grant_under(&self, offer_jws: &str, max: Duration) -> Result<(String, Lease), LeaseError> {
        grant(
            &self.module,
            &self.module_sees,
            offer_jws,
            &self.policy(max),
            Entropy::system().unwrap(),
            self.now,
            self.wall,
        )
    }

    /// The module's answer to `offer_jws` under a 60 s maximum.
    fn grant(&self, offer_jws: &str) -> Result<(String, Lease), LeaseError> {
        self.grant_under(offer_jws, Duration::from_secs(60))
    }

    fn grant_err(&self, offer_jws: &str) -> LeaseError {
        self.grant(offer_jws).unwrap_err()
    }

    /// The Core's renewal request for `ttl`, sent now.
    fn renew_request(&self, core: &mut Lease, ttl: Duration) -> String {
        core.renew_request(ttl, self.now, self.wall).unwrap()
    }

    /// The Core's request, sent now, to change the scope to `scope`, as the
    /// module received it.
    fn rescope(&self, core: &mut Lease, module: &mut Lease, scope: &Scope) -> ControlClaims {
        let request = core
            .rescope_request(&self.core, scope, self.now, self.wall)
            .unwrap();
        module.receive(&request).unwrap()
    }
}

/// A change to a token's claims.
type Edit = fn(&mut LeaseClaims);

/// Re-signs an offer's claims after `edit`, with `key` (the real Core's
/// when `None`), or keeps the original signature when `keep_signature`.
fn edit_offer(
    w: &World,
    offer_jws: &str,
    keep_signature: bool,
    edit: impl FnOnce(&mut LeaseClaims),
) -> String {
    let mut claims: LeaseClaims = jws::verify(offer_jws, &w.core.verifying_key()).unwrap();
    edit(&mut claims);
    let resigned = jws::sign(&claims, w.core.key()).unwrap();
    if keep_signature {
        let sig = offer_jws.rsplit('.').next().unwrap();
        let mut parts: Vec<&str> = resigned.split('.').collect();
        parts[2] = sig;
        parts.join(".")
    } else {
        resigned
    }
}

#[test]
fn a3_both_sides_issue_and_validate_and_agree() {
    let w = world();
    let (core, module) = w.open(Duration::from_secs(30), Duration::from_secs(60));
    assert_eq!(core.id(), module.id());
    assert_eq!(core.scope(), module.scope());
    assert_eq!(core.ttl(), Duration::from_secs(30));
    assert_eq!(module.ttl(), Duration::from_secs(30));
    assert_eq!(core.consumer().as_str(), "urn:anima:core:dev");
    assert_eq!(module.provider().as_str(), "urn:anima:module:echo");
    assert_eq!(core.side(), Side::Core);
    assert_eq!(module.side(), Side::Module);
}

#[test]
fn a2_lease_holds_every_required_field() {
    let w = world();
    let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_secs(30));
    let claims: LeaseClaims = jws::verify(&offer_jws, &w.core.verifying_key()).unwrap();
    assert_eq!(claims.lid.len(), 22, "128-bit id in base64url");
    assert_eq!(claims.con, "urn:anima:core:dev");
    assert_eq!(claims.pro, "urn:anima:module:echo");
    assert_eq!(
        claims.scope,
        vec![SAY.to_owned(), OTHER.to_owned()]
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
    );
    assert_eq!(claims.ttl_ms, 30_000);
    assert!(claims.exp >= claims.iat + 30);
    assert_eq!(
        claims.rev,
        REVOCATION_CONDITIONS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(claims.cnf.issuer, b64(&w.core.fingerprint().0));
    assert_eq!(claims.cnf.audience, b64(&w.module.fingerprint().0));
}

#[test]
fn a9_ttl_above_contract_maximum_is_capped_and_both_hold_the_cap() {
    let w = world();
    let (core, module) = w.open(Duration::from_secs(3600), Duration::from_secs(5));
    assert_eq!(core.ttl(), Duration::from_secs(5));
    assert_eq!(module.ttl(), Duration::from_secs(5));
    assert_eq!(core.expires_at(), w.now + Duration::from_secs(5));
}

/// Every edit of a fresh offer for `scope` (re-signed, or keeping the
/// original signature when `keep_signature`) is refused with `reason`.
fn assert_edits_refused(
    scope: Option<Scope>,
    keep_signature: bool,
    edits: &[Edit],
    reason: Reason,
) {
    let w = world();
    let offer_jws = w.offer_jws(
        scope.unwrap_or_else(|| w.declared.clone()),
        Duration::from_secs(30),
    );
    for (i, edit) in edits.iter().enumerate() {
        let edited = edit_offer(&w, &offer_jws, keep_signature, edit);
        assert_eq!(w.grant_err(&edited).reason(), reason, "edit {i}");
    }
}

#[test]
fn a3_tampered_offer_is_refused() {
    // Scope, then TTL, edited after signing.
    let edits: [Edit; 2] = [|c| c.scope.push(OTHER.into()), |c| c.ttl_ms = 1];
    assert_edits_refused(
        Some(Scope::new([SAY]).unwrap()),
        true,
        &edits,
        Reason::BadSignature,
    );
}

#[test]
fn a3_identities_must_equal_the_mtls_peers() {
    let other_core: Edit = |c| c.con = "urn:anima:core:other".into();
    let other_module: Edit = |c| c.pro = "urn:anima:module:other".into();
    assert_edits_refused(
        None,
        false,
        &[other_core, other_module],
        Reason::IdentityMismatch,
    );
}

#[test]
fn a3_certificate_binding_is_checked() {
    let lifted: [Edit; 2] = [
        |c| c.cnf.audience = b64(&[0; 32]),
        |c| c.cnf.issuer = b64(&[0; 32]),
    ];
    assert_edits_refused(None, false, &lifted, Reason::BindingMismatch);
}

#[test]
fn a3_skewed_clock_or_tiny_ttl_is_refused() {
    let skewed: Edit = |c| {
        c.iat -= 3600;
        c.exp -= 3600;
    };
    assert_edits_refused(None, false, &[skewed, |c| c.ttl_ms = 1], Reason::BadToken);
}

#[test]
fn a3_offer_signed_by_another_key_is_refused() {
    let w = world();
    let forger = LeaseSigner::from_parts([9; 32], w.core.urn().clone(), w.core.fingerprint());
    let (forged, _) = w.offer_by(&forger, w.declared.clone(), Duration::from_secs(30));
    assert_eq!(w.grant_err(&forged).reason(), Reason::BadSignature);
}

#[test]
fn a3_scope_beyond_declared_is_refused() {
    let w = world();
    let offer_jws = w.offer_jws(
        Scope::new([SAY, "/echo.v1.Echo/Undeclared"]).unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(w.grant_err(&offer_jws).reason(), Reason::ScopeDenied);
}

#[test]
fn a3_core_refuses_a_grant_for_another_offer_or_wider_scope() {
    let w = world();
    let only_say = Scope::new([SAY]).unwrap();
    let (offer_a, pending_a) = w.offer_by(&w.core, only_say.clone(), Duration::from_secs(30));
    let (offer_b, _pending_b) = w.offer_by(&w.core, only_say, Duration::from_secs(30));
    let (grant_b, _) = w.grant_ok(&offer_b);
    assert!(pending_a.accept(&w.core, &grant_b, w.wall).is_err());
    let _ = offer_a;
}

#[test]
fn a4_calls_carry_only_a_proof_bound_to_method_and_lease() {
    let w = world();
    let (core, mut module) = w.open(Duration::from_secs(30), Duration::from_secs(60));
    let p1 = core.proof_key().proof(1, SAY);
    assert!(p1.len() < 40, "compact: {p1}");
    module.admit(SAY, Some(&p1), w.now).unwrap();
    // Replay.
    assert_eq!(
        module.admit(SAY, Some(&p1), w.now).unwrap_err().reason(),
        Reason::ProofReplayed
    );
    // Another method with this proof.
    let p2 = core.proof_key().proof(2, SAY);
    assert_eq!(
        module.admit(OTHER, Some(&p2), w.now).unwrap_err().reason(),
        Reason::BadProof
    );
    // No proof.
    assert_eq!(
        module.admit(SAY, None, w.now).unwrap_err().reason(),
        Reason::NoLease
    );
    // Out of order arrivals are fine.
    for seq in [10, 7, 9, 8] {
        module
            .admit(SAY, Some(&core.proof_key().proof(seq, SAY)), w.now)
            .unwrap();
    }
}

#[test]
fn a4_proof_from_another_lease_is_refused() {
    let w = world();
    let (core_a, _module_a) = w.open(Duration::from_secs(30), Duration::from_secs(60));
    let (_core_b, mut module_b) = w.open(Duration::from_secs(30), Duration::from_secs(60));
    let lifted = core_a.proof_key().proof(1, SAY);
    assert_eq!(
        module_b
            .admit(SAY, Some(&lifted), w.now)
            .unwrap_err()
            .reason(),
        Reason::BadProof
    );
}

#[test]
fn a6_expired_lease_refuses_from_the_expiry_instant() {
    let w = world();
    let (core, mut module) = w.open(Duration::from_millis(500), Duration::from_secs(60));
    let just_before = w.now + Duration::from_millis(499);
    module
        .admit(SAY, Some(&core.proof_key().proof(1, SAY)), just_before)
        .unwrap();
    let at = w.now + Duration::from_millis(500);
    let err = module
        .admit(SAY, Some(&core.proof_key().proof(2, SAY)), at)
        .unwrap_err();
    assert_eq!(err.reason(), Reason::LeaseExpired);
    assert_eq!(core.state(at), LeaseState::Expired);
}

#[test]
fn a8_renewal_extends_both_sides_and_states_the_grant() {
    let w = world();
    let (mut core, mut module) = w.open(Duration::from_millis(500), Duration::from_secs(1));
    let t = w.now + Duration::from_millis(300);
    let req = core
        .renew_request(Duration::from_secs(5), t, w.wall)
        .unwrap();
    let req = module.receive(&req).unwrap();
    let t2 = t + Duration::from_millis(2);
    let ans = module.answer_renew(&req, t2, w.wall).unwrap();
    let ans = core.receive(&ans).unwrap();
    assert_eq!(ans.ttl_ms, Some(1000), "capped at the contract maximum");
    let granted = core.apply_renewed(&ans, t2).unwrap();
    assert_eq!(granted, Duration::from_secs(1));
    // The Core counts from sending; the module from receiving: Core first.
    assert_eq!(core.expires_at(), t + Duration::from_secs(1));
    assert_eq!(module.expires_at(), t2 + Duration::from_secs(1));
    assert!(core.expires_at() <= module.expires_at());
    assert_eq!(core.renewals(), 1);
    assert_eq!(module.renewals(), 1);
    // Valid past the original expiry.
    let later = w.now + Duration::from_millis(900);
    module
        .admit(SAY, Some(&core.proof_key().proof(1, SAY)), later)
        .unwrap();
}

#[test]
fn a8_control_tokens_are_verified_and_ordered() {
    let w = world();
    let (mut core, mut module) = w.open(Duration::from_secs(5), Duration::from_secs(5));
    let req = w.renew_request(&mut core, Duration::from_secs(5));
    let claims = module.receive(&req).unwrap();
    // The same token again is out of order.
    assert_eq!(
        module.receive(&req).unwrap_err().reason(),
        Reason::ProtocolViolation
    );
    // A token signed by someone else does not verify.
    let forged = jws::sign(&claims, w.module.key()).unwrap();
    assert_eq!(
        module.receive(&forged).unwrap_err().reason(),
        Reason::BadSignature
    );
    // Only one request at a time.
    assert!(
        core.renew_request(Duration::from_secs(5), w.now, w.wall)
            .is_err()
    );
}

#[test]
fn rescope_demotion_applies_and_promotion_beyond_declared_is_refused() {
    let w = world();
    let (mut core, mut module) = w.open(Duration::from_secs(5), Duration::from_secs(5));
    let only_say = Scope::new([SAY]).unwrap();
    let req = w.rescope(&mut core, &mut module, &only_say);
    let ans = module
        .answer_rescope(&w.module, &req, &w.declared, w.now, w.wall)
        .unwrap();
    let ans = core.receive(&ans).unwrap();
    core.apply_rescoped(&ans, w.now).unwrap();
    assert_eq!(module.scope(), &only_say);
    assert_eq!(core.scope(), &only_say);
    let err = module
        .admit(OTHER, Some(&core.proof_key().proof(1, OTHER)), w.now)
        .unwrap_err();
    assert_eq!(err.reason(), Reason::ScopeDenied);
    // Promotion within the declared methods works; beyond them it does not.
    let beyond = Scope::new([SAY, "/echo.v1.Echo/Undeclared"]).unwrap();
    let req = w.rescope(&mut core, &mut module, &beyond);
    let err = module
        .answer_rescope(&w.module, &req, &w.declared, w.now, w.wall)
        .unwrap_err();
    assert_eq!(err.reason(), Reason::ScopeDenied);
}

#[test]
fn a6_revocation_ends_both_sides() {
    let w = world();
    let (mut core, mut module) = w.open(Duration::from_secs(5), Duration::from_secs(5));
    let notice = core
        .revoke(&w.core, Reason::LeaseRevoked, "operator", w.now, w.wall)
        .unwrap();
    let claims = module.receive(&notice).unwrap();
    assert_eq!(
        module.apply_revoke(&claims, w.now).unwrap(),
        Reason::LeaseRevoked
    );
    let err = module
        .admit(SAY, Some(&core.proof_key().proof(1, SAY)), w.now)
        .unwrap_err();
    assert_eq!(err.reason(), Reason::LeaseRevoked);
    assert!(matches!(
        core.state(w.now),
        LeaseState::Ended(Ended {
            by: EndedBy::Local,
            ..
        })
    ));
    assert!(matches!(
        module.state(w.now),
        LeaseState::Ended(Ended {
            by: EndedBy::Peer,
            ..
        })
    ));
}

#[test]
fn a6_an_end_after_expiry_is_recorded_as_expiry() {
    let w = world();
    let (_core, mut module) = w.open(Duration::from_millis(100), Duration::from_secs(5));
    let later = w.now + Duration::from_millis(150);
    module.end(
        Reason::ConnectionLost,
        EndedBy::Circumstance,
        "stream closed",
        later,
    );
    let ended = module.ended().unwrap();
    assert_eq!(ended.reason, Reason::LeaseExpired);
    assert_eq!(
        module.check_valid(later).unwrap_err().reason(),
        Reason::LeaseExpired
    );
}

/// A8 under load: the module answered a renewal the Core had given up on
/// and asked again. The late answer still renews (from when its request was
/// sent), so a Core whose answers all come later than the retry interval
/// keeps its lease; the newer answer then counts as well.
#[test]
fn a8_a_late_answer_to_an_abandoned_renewal_still_renews() {
    let w = world();
    let (mut core, mut module) = w.open(Duration::from_secs(1), Duration::from_secs(1));
    let first = w.renew_request(&mut core, Duration::from_secs(1));
    // No answer in time: the Core gives up and asks again.
    core.abandon_request();
    let asked_again = w.now + Duration::from_millis(100);
    let second = core
        .renew_request(Duration::from_secs(1), asked_again, w.wall)
        .unwrap();
    let answered = w.now + Duration::from_millis(150);
    let r1 = module.receive(&first).unwrap();
    let late = module.answer_renew(&r1, answered, w.wall).unwrap();
    let r2 = module.receive(&second).unwrap();
    let fresh = module.answer_renew(&r2, answered, w.wall).unwrap();
    let late = core.receive(&late).unwrap();
    assert!(!core.is_stale_answer(&late));
    core.apply_renewed(&late, answered).unwrap();
    assert_eq!(core.expires_at(), w.now + Duration::from_secs(1));
    assert_eq!(core.renewals(), 1);
    // The retry is still awaited, and its answer moves the expiry on.
    assert_eq!(core.pending_since(), Some(asked_again));
    let fresh = core.receive(&fresh).unwrap();
    assert!(!core.is_stale_answer(&fresh));
    core.apply_renewed(&fresh, answered).unwrap();
    assert_eq!(core.expires_at(), asked_again + Duration::from_secs(1));
    assert_eq!(core.pending_since(), None);
    // Never later than the module's own expiry.
    assert!(core.expires_at() <= module.expires_at());
}

/// Only the last four abandoned renewals take a late answer; an older one,
/// and one that comes after the awaited answer, is ignored, not applied and
/// not a violation.
#[test]
fn a8_a_late_answer_to_a_long_abandoned_renewal_is_stale() {
    let w = world();
    let (mut core, mut module) = w.open(Duration::from_secs(1), Duration::from_secs(1));
    let mut answers = Vec::new();
    for _ in 0..6 {
        let request = w.renew_request(&mut core, Duration::from_secs(1));
        core.abandon_request();
        let request = module.receive(&request).unwrap();
        answers.push(module.answer_renew(&request, w.now, w.wall).unwrap());
    }
    let last = w.renew_request(&mut core, Duration::from_secs(1));
    let last = module.receive(&last).unwrap();
    let last = module.answer_renew(&last, w.now, w.wall).unwrap();
    let answers: Vec<_> = answers.iter().map(|a| core.receive(a).unwrap()).collect();
    // Abandoned fifth and sixth to last: too old.
    assert!(core.is_stale_answer(&answers[0]));
    assert!(core.is_stale_answer(&answers[1]));
    assert!(!core.is_stale_answer(&answers[2]));
    let last = core.receive(&last).unwrap();
    core.apply_renewed(&last, w.now).unwrap();
    // The awaited answer came: the abandoned ones are done with.
    assert!(core.is_stale_answer(&answers[5]));
    assert_eq!(core.renewals(), 1);
}

/// An abandoned scope change has failed: its late answer is ignored.
#[test]
fn a8_a_late_answer_to_an_abandoned_rescope_is_stale() {
    let w = world();
    let (mut core, mut module) = w.open(Duration::from_secs(1), Duration::from_secs(1));
    let narrower = Scope::new([SAY]).unwrap();
    let request = w.rescope(&mut core, &mut module, &narrower);
    core.abandon_request();
    let answer = module
        .answer_rescope(&w.module, &request, &w.declared, w.now, w.wall)
        .unwrap();
    let _retry = w.renew_request(&mut core, Duration::from_secs(1));
    let answer = core.receive(&answer).unwrap();
    assert!(core.is_stale_answer(&answer));
}

/// A signer with `like`'s identity and certificate fingerprint, and a fresh
/// P-256 key (so it signs `ES256`).
fn p256_signer(like: &LeaseSigner) -> LeaseSigner {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    LeaseSigner::from_p256_pkcs8(pkcs8.as_ref(), like.urn().clone(), like.fingerprint()).unwrap()
}

/// A Core with a P-256 certificate signs `ES256`; a module with an Ed25519
/// one signs `EdDSA`; each verifies the other (PROTOCOL.md §1, §3).
#[test]
fn a3_es256_core_and_eddsa_module_agree_on_a_lease() {
    let mut w = world();
    w.core = p256_signer(&w.core);
    w.module_sees.key = w.core.verifying_key();
    let (mut core_lease, mut module_lease) =
        w.open(Duration::from_secs(5), Duration::from_secs(60));
    let offer_header = b64(JWS_HEADER_ES256.as_bytes());
    assert!(matches!(w.module_sees.key, PeerKey::P256(_)));
    let proof = core_lease.proof_key().proof(1, SAY);
    module_lease.admit(SAY, Some(&proof), w.now).unwrap();
    // Renewals are HS256 under the renewal key, whatever the certificate
    // keys, and verify on both sides.
    let renew = w.renew_request(&mut core_lease, Duration::from_secs(5));
    assert!(
        renew.starts_with(&b64(JWS_HEADER_HS256.as_bytes())),
        "{renew}"
    );
    let claims = module_lease.receive(&renew).unwrap();
    let answer = module_lease.answer_renew(&claims, w.now, w.wall).unwrap();
    let answer = core_lease.receive(&answer).unwrap();
    core_lease.apply_renewed(&answer, w.now).unwrap();
    // Signed control steps are ES256 too, and verify on the module.
    let rescope = core_lease
        .rescope_request(&w.core, &Scope::new([SAY]).unwrap(), w.now, w.wall)
        .unwrap();
    assert!(rescope.starts_with(&offer_header), "{rescope}");
    module_lease.receive(&rescope).unwrap();
}

/// Renewal tokens are HS256 under the lease's renewal key, and every other
/// control token is signed: a renewal signed with the certificate key, or a
/// scope change or revocation authenticated with the renewal key, is refused
/// `BAD_TOKEN`; a renewal under another lease's key `BAD_SIGNATURE`.
#[test]
fn a4_renewals_and_only_renewals_use_the_renewal_key() {
    let w = world();
    let (mut core, mut module) = w.open(Duration::from_secs(5), Duration::from_secs(60));
    let (other, _) = w.open(Duration::from_secs(5), Duration::from_secs(60));
    let lid = module.id();
    let renew = ControlClaims {
        ttl_ms: Some(1000),
        ..bare_step(TYP_RENEW, lid)
    };
    let revoke = ControlClaims {
        reason: Some("LEASE_REVOKED".into()),
        detail: Some(String::new()),
        ..bare_step(TYP_REVOKE, lid)
    };
    let refused = |module: &mut Lease, token: String| module.receive(&token).unwrap_err().reason();
    let key = module.renewal_key().clone();
    assert_eq!(
        refused(&mut module, jws::sign(&renew, w.core.key()).unwrap()),
        Reason::BadToken
    );
    assert_eq!(
        refused(&mut module, jws::mac(&revoke, &key).unwrap()),
        Reason::BadToken
    );
    assert_eq!(
        refused(&mut module, jws::mac(&renew, other.renewal_key()).unwrap()),
        Reason::BadSignature
    );
    // The Core refuses a signed `renewed` the same way.
    let renewed = ControlClaims {
        re: Some(1),
        ttl_ms: Some(1000),
        exp: Some(1),
        ..bare_step(TYP_RENEWED, lid)
    };
    assert_eq!(
        refused(&mut core, jws::sign(&renewed, w.module.key()).unwrap()),
        Reason::BadToken
    );
    // The honest forms pass.
    module.receive(&jws::mac(&renew, &key).unwrap()).unwrap();
    let revoke = ControlClaims { seq: 2, ..revoke };
    module
        .receive(&jws::sign(&revoke, w.core.key()).unwrap())
        .unwrap();
}

/// Both sides derive the same renewal key, and it is not the proof key.
#[test]
fn a4_both_sides_derive_one_renewal_key_apart_from_the_proof_key() {
    let w = world();
    let (core, module) = w.open(Duration::from_secs(5), Duration::from_secs(60));
    let claims = ControlClaims {
        ttl_ms: Some(1000),
        ..bare_step(TYP_RENEW, core.id())
    };
    assert_eq!(
        jws::mac(&claims, core.renewal_key()).unwrap(),
        jws::mac(&claims, module.renewal_key()).unwrap()
    );
    // The renewal key over a proof's input gives another tag than the
    // proof key.
    let mut input = b"anima/v1 call\0".to_vec();
    input.extend_from_slice(&1u64.to_be_bytes());
    input.extend_from_slice(SAY.as_bytes());
    let tag = core.renewal_key().tag(&input);
    assert_ne!(
        core.proof_key().proof(1, SAY),
        format!("v1.1.{}", b64(&tag[..16]))
    );
    // Another lease's renewal key is another key.
    let (other, _) = w.open(Duration::from_secs(5), Duration::from_secs(60));
    assert_ne!(
        jws::mac(&claims, core.renewal_key()).unwrap(),
        jws::mac(&claims, other.renewal_key()).unwrap()
    );
}

/// The header must match the certificate's key: an ES256 token checked
/// against an Ed25519 certificate (or the reverse) is refused, whatever its
/// signature.
#[test]
fn a3_alg_must_match_the_certificate_key() {
    let w = world();
    let p256 = p256_signer(&w.core);
    let claims = serde_json::json!({"a": 1});
    let es = jws::sign(&claims, p256.key()).unwrap();
    let ed = jws::sign(&claims, w.core.key()).unwrap();
    assert!(jws::verify::<serde_json::Value>(&es, &p256.verifying_key()).is_ok());
    assert!(matches!(
        jws::verify::<serde_json::Value>(&es, &w.core.verifying_key()),
        Err(LeaseError::BadToken(_))
    ));
    assert!(matches!(
        jws::verify::<serde_json::Value>(&ed, &p256.verifying_key()),
        Err(LeaseError::BadToken(_))
    ));
    // An ES256 signature over other bytes does not verify.
    let mut parts: Vec<&str> = es.split('.').collect();
    let other = b64(br#"{"a":2}"#);
    parts[1] = &other;
    assert!(matches!(
        jws::verify::<serde_json::Value>(&parts.join("."), &p256.verifying_key()),
        Err(LeaseError::BadSignature)
    ));
}

/// A renewal to a shorter TTL shortens both copies: the Core's lease never
/// outlasts the module's (found by `anima conformance`, A8).
#[test]
fn a8_renewal_to_a_shorter_ttl_shortens_the_cores_copy_too() {
    let w = world();
    let (mut core_lease, mut module_lease) =
        w.open(Duration::from_secs(30), Duration::from_secs(60));
    let sent = w.now + Duration::from_secs(1);
    let renew = core_lease
        .renew_request(Duration::from_millis(600), sent, w.wall)
        .unwrap();
    let received = sent + Duration::from_millis(5);
    let claims = module_lease.receive(&renew).unwrap();
    let answer = module_lease
        .answer_renew(&claims, received, w.wall)
        .unwrap();
    let claims = core_lease.receive(&answer).unwrap();
    core_lease
        .apply_renewed(&claims, received + Duration::from_millis(5))
        .unwrap();
    assert_eq!(
        module_lease.expires_at(),
        received + Duration::from_millis(600)
    );
    assert_eq!(core_lease.expires_at(), sent + Duration::from_millis(600));
    assert!(core_lease.expires_at() <= module_lease.expires_at());
}

/// A renewal never runs past either certificate's expiry (the handshake's
/// cap applies to renewals too), and is refused when too little is left.
#[test]
fn a9_renewal_is_capped_by_certificate_expiry() {
    let mut w = world();
    w.module_sees.not_after = Some(w.wall + Duration::from_secs(20));
    let (mut core_lease, mut module_lease) =
        w.open(Duration::from_secs(10), Duration::from_secs(60));
    let renew = w.renew_request(&mut core_lease, Duration::from_secs(60));
    let claims = module_lease.receive(&renew).unwrap();
    let answer = module_lease.answer_renew(&claims, w.now, w.wall).unwrap();
    assert_eq!(module_lease.ttl(), Duration::from_secs(20));
    let claims = core_lease.receive(&answer).unwrap();
    assert_eq!(
        core_lease.apply_renewed(&claims, w.now).unwrap(),
        Duration::from_secs(20)
    );
    // With the Core's certificate about to expire, no renewal is granted.
    let late = w.wall + Duration::from_secs(20);
    let renew = core_lease
        .renew_request(Duration::from_secs(60), w.now, late)
        .unwrap();
    let claims = module_lease.receive(&renew).unwrap();
    assert!(matches!(
        module_lease.answer_renew(&claims, w.now, late),
        Err(LeaseError::BadToken(_))
    ));
}

// PROTOCOL.md §3: the exact claim set of each token, its encoding, and the
// order and reasons of the checks.

/// Signs hand-written claims `json` with `signer`'s certificate key.
fn sign_raw(signer: &LeaseSigner, json: &str) -> String {
    let key = signer.key();
    let input = format!("{}.{}", b64(key.header().as_bytes()), b64(json.as_bytes()));
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&signature))
}

/// `claims` as the honest sender writes them: a renewal token authenticated
/// with `renewal`, any other signed by `signer`.
fn control_token(claims: &ControlClaims, signer: &LeaseSigner, renewal: &RenewalKey) -> String {
    if claims.typ == TYP_RENEW || claims.typ == TYP_RENEWED {
        jws::mac(claims, renewal).unwrap()
    } else {
        jws::sign(claims, signer.key()).unwrap()
    }
}

/// The claims of `jws` as the JSON text that was signed.
fn claims_text(jws: &str) -> String {
    use base64::Engine as _;
    let payload = jws.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

impl World {
    /// An offer, the Core's pending lease, and the module's grant.
    fn handshake_parts(&self) -> (String, PendingLease, String) {
        let (offer_jws, pending) =
            self.offer_by(&self.core, self.declared.clone(), Duration::from_secs(30));
        let (grant_jws, _) = self.grant_ok(&offer_jws);
        (offer_jws, pending, grant_jws)
    }

    fn grant_ok(&self, offer_jws: &str) -> (String, Lease) {
        self.grant(offer_jws).unwrap()
    }
}

/// Re-signs a grant's claims after `edit`, with the module's key.
fn edit_grant(w: &World, grant_jws: &str, edit: impl FnOnce(&mut LeaseClaims)) -> String {
    let mut claims: LeaseClaims = jws::verify(grant_jws, &w.module.verifying_key()).unwrap();
    edit(&mut claims);
    jws::sign(&claims, w.module.key()).unwrap()
}

/// A control token of type `typ` for lease `lid`, seq 1, with no optional claim.
fn bare_step(typ: &str, lid: LeaseId) -> ControlClaims {
    ControlClaims::bare(typ, lid.to_string(), 1, 0)
}

#[test]
fn grant_for_another_lid_or_offer_is_bad_token() {
    let w = world();
    let edits: [fn(&mut LeaseClaims); 2] = [
        |c| c.lid = b64(&[0xee; 16]),
        |c| c.offer = Some(b64(&[0; 32])),
    ];
    for edit in edits {
        let (_, pending, grant_jws) = w.handshake_parts();
        let forged = edit_grant(&w, &grant_jws, edit);
        let err = pending.accept(&w.core, &forged, w.wall).unwrap_err();
        assert_eq!(err.reason(), Reason::BadToken, "{err}");
    }
}

#[test]
fn an_all_zero_x25519_secret_is_bad_token() {
    let w = world();
    // Low-order `kx` values (0 and 1) make the shared secret all zero.
    for low in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_secs(30));
        let offer_jws = edit_offer(&w, &offer_jws, false, |c| c.kx = b64(&low));
        let err = w.grant_err(&offer_jws);
        assert_eq!(err.reason(), Reason::BadToken, "{err}");
        let (_, pending, grant_jws) = w.handshake_parts();
        let grant_jws = edit_grant(&w, &grant_jws, |c| c.kx = b64(&low));
        let err = pending.accept(&w.core, &grant_jws, w.wall).unwrap_err();
        assert_eq!(err.reason(), Reason::BadToken, "{err}");
    }
}

#[test]
fn a_grant_cap_under_50ms_is_bad_token() {
    let mut w = world();
    // The Core's certificate expires 40 ms from now: no 50 ms lease fits.
    w.module_sees.not_after = Some(w.wall + Duration::from_millis(40));
    let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_secs(30));
    assert_eq!(w.grant_err(&offer_jws).reason(), Reason::BadToken);
    // 50 ms fits exactly.
    w.module_sees.not_after = Some(w.wall + Duration::from_millis(50));
    let (_, lease) = w.grant_ok(&offer_jws);
    assert_eq!(lease.ttl(), Duration::from_millis(50));
}

#[test]
fn offer_carries_no_offer_claim_and_grant_carries_one() {
    let w = world();
    let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_secs(30));
    let with = edit_offer(&w, &offer_jws, false, |c| c.offer = Some(b64(&[0; 32])));
    assert_eq!(w.grant_err(&with).reason(), Reason::BadToken);
    let (_, pending, grant_jws) = w.handshake_parts();
    let without = edit_grant(&w, &grant_jws, |c| c.offer = None);
    let err = pending.accept(&w.core, &without, w.wall).unwrap_err();
    assert_eq!(err.reason(), Reason::BadToken, "{err}");
}

#[test]
fn lease_tokens_carry_exactly_the_four_revocation_conditions_in_order() {
    let w = world();
    let four: Vec<String> = REVOCATION_CONDITIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut reversed = four.clone();
    reversed.reverse();
    let mut extra = four.clone();
    extra.push("lease-expiry".into());
    let mut twice = four.clone();
    twice.push(four[0].clone());
    for rev in [vec![], four[..3].to_vec(), reversed, extra, twice] {
        let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_secs(30));
        let edited = edit_offer(&w, &offer_jws, false, |c| c.rev = rev.clone());
        assert_eq!(w.grant_err(&edited).reason(), Reason::BadToken, "{rev:?}");
    }
    let (_, pending, grant_jws) = w.handshake_parts();
    let edited = edit_grant(&w, &grant_jws, |c| c.rev.truncate(2));
    let err = pending.accept(&w.core, &edited, w.wall).unwrap_err();
    assert_eq!(err.reason(), Reason::BadToken, "{err}");
}

#[test]
fn control_tokens_carry_exactly_their_claim_set() {
    let w = world();
    let (mut core, mut module) = w.open(Duration::from_secs(5), Duration::from_secs(5));
    let lid = module.id();
    let renewal = module.renewal_key().clone();
    let to_module = |c: &ControlClaims| control_token(c, &w.core, &renewal);
    let renew = || ControlClaims {
        ttl_ms: Some(1000),
        ..bare_step(TYP_RENEW, lid)
    };
    let mut wrong: Vec<ControlClaims> = vec![
        bare_step(TYP_RENEW, lid),
        ControlClaims {
            scope: Some(vec![SAY.into()]),
            ..renew()
        },
        ControlClaims {
            re: Some(1),
            ..renew()
        },
        ControlClaims {
            exp: Some(1),
            ..renew()
        },
        bare_step(TYP_RESCOPE, lid),
        ControlClaims {
            reason: Some("LEASE_REVOKED".into()),
            ..bare_step(TYP_REVOKE, lid)
        },
        ControlClaims {
            detail: Some(String::new()),
            ..bare_step(TYP_REVOKE, lid)
        },
        ControlClaims {
            typ: TYP_OFFER.into(),
            ..renew()
        },
        ControlClaims {
            typ: "anima-renew+v2".into(),
            ..renew()
        },
    ];
    // The claim set is checked before the lease id.
    wrong.push(ControlClaims {
        lid: b64(&[0; 16]),
        ..bare_step(TYP_RENEW, lid)
    });
    for claims in &wrong {
        let err = module.receive(&to_module(claims)).unwrap_err();
        assert_eq!(err.reason(), Reason::BadToken, "{claims:?}: {err}");
    }
    let other_lease = ControlClaims {
        lid: b64(&[0; 16]),
        ..renew()
    };
    assert_eq!(
        module
            .receive(&to_module(&other_lease))
            .unwrap_err()
            .reason(),
        Reason::ProtocolViolation
    );
    // The exact sets pass: renew, rescope, revoke …
    for (seq, claims) in [
        renew(),
        ControlClaims {
            scope: Some(vec![]),
            ..bare_step(TYP_RESCOPE, lid)
        },
        ControlClaims {
            reason: Some("LEASE_REVOKED".into()),
            detail: Some(String::new()),
            ..bare_step(TYP_REVOKE, lid)
        },
    ]
    .into_iter()
    .enumerate()
    {
        let claims = ControlClaims {
            seq: seq as u64 + 1,
            ..claims
        };
        module.receive(&to_module(&claims)).unwrap();
    }
    // … and the answers need `re`, `ttl_ms` and `exp` (`rescoped`: and `scope`).
    let renewal = core.renewal_key().clone();
    let to_core = |c: &ControlClaims| control_token(c, &w.module, &renewal);
    for claims in [
        ControlClaims {
            re: Some(1),
            ttl_ms: Some(1000),
            ..bare_step(TYP_RENEWED, lid)
        },
        ControlClaims {
            re: Some(1),
            ttl_ms: Some(1000),
            exp: Some(1),
            ..bare_step(TYP_RESCOPED, lid)
        },
    ] {
        let err = core.receive(&to_core(&claims)).unwrap_err();
        assert_eq!(err.reason(), Reason::BadToken, "{claims:?}: {err}");
    }
}

#[test]
fn claims_reject_null_members() {
    let w = world();
    let (_, mut module) = w.open(Duration::from_secs(5), Duration::from_secs(5));
    let lid = module.id();
    let renew = sign_raw(
        &w.core,
        &format!(
            r#"{{"typ":"anima-renew+v1","lid":"{lid}","seq":1,"iat":0,"ttl_ms":1000,"re":null}}"#
        ),
    );
    assert_eq!(
        module.receive(&renew).unwrap_err().reason(),
        Reason::BadToken
    );
    let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_secs(30));
    let text = claims_text(&offer_jws).replacen(r#","rev":"#, r#","offer":null,"rev":"#, 1);
    assert!(text.contains(r#""offer":null"#));
    let err = w.grant_err(&sign_raw(&w.core, &text));
    assert_eq!(err.reason(), Reason::BadToken, "{err}");
}

#[test]
fn lease_claims_reject_duplicate_members_at_any_depth() {
    let w = world();
    let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_secs(30));
    let text = claims_text(&offer_jws);
    // The unchanged text, re-signed, is accepted.
    w.grant_ok(&sign_raw(&w.core, &text));
    let issuer = b64(&w.core.fingerprint().0);
    for dup in [
        text.replacen(r#""ttl_ms":"#, r#""ttl_ms":30000,"ttl_ms":"#, 1),
        text.replacen(
            r#""cnf":{"#,
            &format!(r#""cnf":{{"iss_x5t#S256":"{issuer}","#),
            1,
        ),
    ] {
        assert_ne!(dup, text);
        let err = w.grant_err(&sign_raw(&w.core, &dup));
        assert_eq!(err.reason(), Reason::BadToken, "{dup}: {err}");
    }
}

#[test]
fn rescoped_scope_must_lie_within_the_request() {
    let w = world();
    let only_say = Scope::new([SAY]).unwrap();
    // The Core asks for `only_say`; the module answers naming `answered`.
    let answer = |answered: [&str; 2]| {
        let (mut core, mut module) = w.open(Duration::from_secs(5), Duration::from_secs(5));
        let request = w.rescope(&mut core, &mut module, &only_say);
        let claims = ControlClaims {
            re: Some(request.seq),
            ttl_ms: Some(5000),
            exp: Some(5),
            scope: Some(answered.iter().map(|m| m.to_string()).collect()),
            ..bare_step(TYP_RESCOPED, module.id())
        };
        let answer = core
            .receive(&jws::sign(&claims, w.module.key()).unwrap())
            .unwrap();
        core.apply_rescoped(&answer, w.now).map(|()| core)
    };
    // An answer naming a method not asked for is refused.
    assert_eq!(
        answer([OTHER, SAY]).err().map(|e| e.reason()),
        Some(Reason::ScopeDenied)
    );
    // The same set, written twice, is the granted scope (compared as sets).
    let core = answer([SAY, SAY]).unwrap();
    assert_eq!(core.scope(), &only_say);
}

#[test]
fn exp_is_iat_plus_whole_seconds_rounded_down() {
    let mut w = world();
    // `iat` is the wall clock's Unix seconds, rounded down.
    w.wall = std::time::UNIX_EPOCH + Duration::from_millis(1_767_225_600_999);
    for (ttl_ms, whole) in [
        (50, 1),
        (999, 1),
        (1000, 1),
        (1999, 1),
        (2000, 2),
        (60_999, 60),
    ] {
        let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_millis(ttl_ms));
        let offered: LeaseClaims = jws::verify(&offer_jws, &w.core.verifying_key()).unwrap();
        assert_eq!(offered.iat, 1_767_225_600);
        assert_eq!(offered.exp - offered.iat, whole, "offer of {ttl_ms} ms");
        let (grant_jws, _) = w.grant_ok(&offer_jws);
        let granted: LeaseClaims = jws::verify(&grant_jws, &w.module.verifying_key()).unwrap();
        assert_eq!(granted.exp - granted.iat, whole, "grant of {ttl_ms} ms");
    }
    let (mut core, mut module) = w.open(Duration::from_secs(5), Duration::from_secs(5));
    // `renewed`: the granted TTL, at least 1.
    for (ttl_ms, whole) in [(50, 1), (2500, 2)] {
        let request = w.renew_request(&mut core, Duration::from_millis(ttl_ms));
        let request = module.receive(&request).unwrap();
        let answer = module.answer_renew(&request, w.now, w.wall).unwrap();
        let answer = core.receive(&answer).unwrap();
        assert_eq!(
            answer.exp.unwrap() - answer.iat,
            whole,
            "renewed {ttl_ms} ms"
        );
        core.apply_renewed(&answer, w.now).unwrap();
    }
    // `rescoped`: the time left, which may round to 0.
    let request = w.rescope(&mut core, &mut module, &w.declared);
    let answer = module
        .answer_rescope(
            &w.module,
            &request,
            &w.declared,
            w.now + Duration::from_millis(1600),
            w.wall,
        )
        .unwrap();
    let answer = core.receive(&answer).unwrap();
    assert_eq!(answer.ttl_ms, Some(900));
    assert_eq!(answer.exp, Some(answer.iat));
}

#[test]
fn lease_exp_is_checked_only_against_iat_and_iat_within_300s() {
    let w = world();
    let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_secs(30));
    // Any exp ≥ iat passes, whatever the TTL says.
    for exp in [0, 1_000_000] {
        w.grant_ok(&edit_offer(&w, &offer_jws, false, |c| c.exp = c.iat + exp));
    }
    let before = edit_offer(&w, &offer_jws, false, |c| c.exp = c.iat - 1);
    assert_eq!(w.grant_err(&before).reason(), Reason::BadToken);
    // iat at most 300 s from the receiver's clock (in Unix seconds).
    for (delta, ok) in [(300i64, true), (-300, true), (301, false), (-301, false)] {
        let edited = edit_offer(&w, &offer_jws, false, |c| {
            c.iat = c.iat.checked_add_signed(delta).unwrap();
            c.exp = c.iat + 30;
        });
        match w.grant(&edited) {
            Ok(_) => assert!(ok, "iat {delta:+} s accepted"),
            Err(e) => {
                assert!(!ok, "iat {delta:+} s refused: {e}");
                assert_eq!(e.reason(), Reason::BadToken);
            }
        }
    }
}

/// The module's checks of an offer (PROTOCOL.md §3.1, steps 2–9): with
/// every defect from a step on, the refusal names that step.
#[test]
fn offer_checks_run_in_the_documented_order() {
    let w = world();
    let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_secs(30));
    let steps: [(Edit, Reason, &str); 8] = [
        (|c| c.typ = TYP_GRANT.into(), Reason::BadToken, "expected a"),
        (
            |c| c.con = "urn:anima:core:other".into(),
            Reason::IdentityMismatch,
            "",
        ),
        (
            |c| c.cnf.audience = b64(&[0; 32]),
            Reason::BindingMismatch,
            "",
        ),
        (|c| c.iat -= 3600, Reason::BadToken, "issued-at"),
        (|c| c.lid = "AAAA".into(), Reason::BadToken, "lid"),
        (
            |c| c.scope = vec!["/echo.v1.Echo/Undeclared".into()],
            Reason::ScopeDenied,
            "",
        ),
        (|c| c.ttl_ms = 1, Reason::BadToken, "ttl"),
        (|c| c.kx = b64(&[0; 32]), Reason::BadToken, "kx"),
    ];
    for from in (0..steps.len()).rev() {
        let edited = edit_offer(&w, &offer_jws, false, |c| {
            for (edit, _, _) in &steps[from..] {
                edit(c);
            }
        });
        let err = w.grant_err(&edited);
        let (_, reason, words) = steps[from];
        assert_eq!(err.reason(), reason, "step {from}: {err}");
        assert!(err.to_string().contains(words), "step {from}: {err}");
    }
}

#[test]
fn granted_scope_is_sorted_deduplicated_and_may_be_empty() {
    let w = world();
    let offer_jws = w.offer_jws(w.declared.clone(), Duration::from_secs(30));
    let messy = edit_offer(&w, &offer_jws, false, |c| {
        c.scope = vec![SAY.into(), OTHER.into(), SAY.into()]
    });
    let (grant_jws, _) = w.grant_ok(&messy);
    let granted: LeaseClaims = jws::verify(&grant_jws, &w.module.verifying_key()).unwrap();
    assert_eq!(granted.scope, [OTHER, SAY], "byte order, each once");
    let empty = edit_offer(&w, &offer_jws, false, |c| c.scope = vec![]);
    let (grant_jws, mut lease) = w.grant_ok(&empty);
    let granted: LeaseClaims = jws::verify(&grant_jws, &w.module.verifying_key()).unwrap();
    assert!(granted.scope.is_empty());
    let proof = ProofKey::new(&[0; 32]).proof(1, SAY);
    assert_ne!(
        lease.admit(SAY, Some(&proof), w.now).unwrap_err().reason(),
        Reason::NoLease
    );
    for bad in ["", "/echo.v1.Echo/Say/", "echo.v1.Echo/Say"] {
        let edited = edit_offer(&w, &offer_jws, false, |c| c.scope = vec![bad.into()]);
        assert_eq!(w.grant_err(&edited).reason(), Reason::BadToken, "{bad:?}");
    }
}
