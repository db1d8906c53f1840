//! The test vectors of PROTOCOL.md, Appendix A, recomputed with this crate's
//! lease code from the inputs the appendix states.
//!
//! Every value the appendix states must be one this file computes, and equal
//! to it byte for byte; every value computed here must be stated there. A
//! missing appendix, a missing value or an unknown one fails the tests, naming
//! the value.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::doc_support::binding;
use super::handshake::{hkdf_info, hkdf_renewal_info, hkdf_salt, lease_key_bytes, shared_secret};
use super::*;
use crate::hex::{decode as unhex, lower as hex};
use crate::identity::Urn;
use crate::transport::{ConnectionId, Fingerprint};

const PROTOCOL_MD: &str = include_str!("../../PROTOCOL.md");
const HEADING: &str = "## Appendix A. Test vectors";

/// The values stated in the appendix, by name.
struct Appendix(BTreeMap<String, String>);

/// Parses the appendix: `vectors` blocks of `name = value` lines (`#` lines
/// and blank lines skipped), and `jws NAME` / `json NAME` blocks of one line.
fn appendix() -> Appendix {
    let start = PROTOCOL_MD
        .find(&format!("\n{HEADING}\n"))
        .unwrap_or_else(|| panic!("PROTOCOL.md has no `{HEADING}` section"));
    let body = &PROTOCOL_MD[start + HEADING.len() + 2..];
    let body = body.find("\n## ").map_or(body, |end| &body[..end]);
    let mut values = BTreeMap::new();
    let mut insert = |name: &str, value: &str| {
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "PROTOCOL.md Appendix A: malformed value name {name:?}"
        );
        let old = values.insert(name.to_owned(), value.to_owned());
        assert!(
            old.is_none(),
            "PROTOCOL.md Appendix A: `{name}` is stated twice"
        );
    };
    let mut lines = body.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut block = Vec::new();
        loop {
            match lines.next() {
                Some(l) if l.starts_with("```") => break,
                Some(l) => block.push(l),
                None => panic!("PROTOCOL.md Appendix A: unterminated block ```{info}"),
            }
        }
        let mut words = info.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("vectors"), None, None) => {
                for l in block {
                    if l.trim().is_empty() || l.starts_with('#') {
                        continue;
                    }
                    let (name, value) = l.split_once(" = ").unwrap_or_else(|| {
                        panic!("PROTOCOL.md Appendix A: {l:?} is not `name = value`")
                    });
                    insert(name.trim(), value.trim());
                }
            }
            (Some("jws" | "json"), Some(name), None) => match block[..] {
                [value] => insert(name, value),
                _ => panic!("PROTOCOL.md Appendix A: block `{name}` must hold exactly one line"),
            },
            _ => panic!(
                "PROTOCOL.md Appendix A: block ```{info}: expected `vectors`, `jws NAME` or `json NAME`"
            ),
        }
    }
    assert!(
        !values.is_empty(),
        "PROTOCOL.md Appendix A states no values"
    );
    Appendix(values)
}

impl Appendix {
    fn get(&self, name: &str) -> &str {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("PROTOCOL.md Appendix A: no value named `{name}`"))
    }

    fn bytes<const N: usize>(&self, name: &str) -> [u8; N] {
        let text = self.get(name);
        unhex(text)
            .and_then(|v| v.try_into().ok())
            .unwrap_or_else(|| {
                panic!("PROTOCOL.md Appendix A: `{name}` is not {N} bytes of hex: {text:?}")
            })
    }

    fn number(&self, name: &str) -> u64 {
        let text = self.get(name);
        text.parse().unwrap_or_else(|_| {
            panic!("PROTOCOL.md Appendix A: `{name}` is not a number: {text:?}")
        })
    }

    fn urn(&self, name: &str) -> Urn {
        let text = self.get(name);
        text.parse()
            .unwrap_or_else(|e| panic!("PROTOCOL.md Appendix A: `{name}` {text:?}: {e}"))
    }
}

fn sha256(text: &str) -> [u8; 32] {
    Fingerprint::of(text.as_bytes()).0
}

/// The claims of a token, decoded without verifying (the JSON as signed).
fn claims_json(jws: &str) -> String {
    let payload = jws.split('.').nth(1).expect("a compact JWS");
    String::from_utf8(B64.decode(payload).expect("base64url claims")).expect("UTF-8 claims")
}

/// The inputs, and both sides' keys and bindings built from them.
struct Setup {
    core: LeaseSigner,
    module: LeaseSigner,
    core_sees: PeerBinding,
    module_sees: PeerBinding,
    lease_id: [u8; 16],
    core_kx_secret: [u8; 32],
    module_kx_secret: [u8; 32],
    scope: Scope,
    requested_ttl: Duration,
    policy: GrantPolicy,
    wall: SystemTime,
    renew_wall: SystemTime,
    renew_ttl: Duration,
    /// How long after the handshake the scope change happens (both clocks).
    rescope_at: Duration,
    revoke_wall: SystemTime,
    revoke_detail: String,
    proof_method: String,
    /// The instant of the handshake on both monotonic clocks.
    t0: Instant,
}

impl Setup {
    fn new(a: &Appendix) -> Self {
        let core = LeaseSigner::from_parts(
            a.bytes("core_ed25519_seed"),
            a.urn("core_urn"),
            Fingerprint(a.bytes("core_fingerprint")),
        );
        let module = LeaseSigner::from_parts(
            a.bytes("module_ed25519_seed"),
            a.urn("module_urn"),
            Fingerprint(a.bytes("module_fingerprint")),
        );
        let connection = ConnectionId::next();
        let scope = Scope::new(a.get("scope").split(','))
            .unwrap_or_else(|e| panic!("PROTOCOL.md Appendix A: `scope`: {e}"));
        let secs = |name| UNIX_EPOCH + Duration::from_secs(a.number(name));
        Setup {
            core_sees: binding(&module, connection),
            module_sees: binding(&core, connection),
            core,
            module,
            lease_id: a.bytes("lease_id"),
            core_kx_secret: a.bytes("core_kx_secret"),
            module_kx_secret: a.bytes("module_kx_secret"),
            requested_ttl: Duration::from_millis(a.number("requested_ttl_ms")),
            policy: GrantPolicy {
                declared: scope.clone(),
                max_ttl: Duration::from_millis(a.number("max_lease_ms")),
            },
            scope,
            wall: secs("iat"),
            renew_wall: secs("renew_iat"),
            renew_ttl: Duration::from_millis(a.number("renew_ttl_ms")),
            rescope_at: Duration::from_millis(a.number("rescope_at_ms")),
            revoke_wall: secs("revoke_iat"),
            revoke_detail: a.get("revoke_detail").to_owned(),
            proof_method: a.get("proof_method").to_owned(),
            t0: Instant::now(),
        }
    }

    fn core_entropy(&self) -> Entropy {
        Entropy {
            lease_id: self.lease_id,
            kx_secret: Zeroizing::new(self.core_kx_secret),
        }
    }

    fn module_entropy(&self) -> Entropy {
        Entropy {
            // The module's entropy carries no lease id; the offer names it.
            lease_id: [0; 16],
            kx_secret: Zeroizing::new(self.module_kx_secret),
        }
    }

    /// The Core's offer and its pending lease.
    fn offer(&self) -> (String, PendingLease) {
        let request = LeaseRequest {
            scope: self.scope.clone(),
            ttl: self.requested_ttl,
        };
        offer(
            &self.core,
            &self.core_sees,
            request,
            self.core_entropy(),
            self.t0,
            self.wall,
        )
        .expect("the Core signs the offer")
    }

    /// The module's answer to `offer_jws`.
    fn grant(&self, offer_jws: &str) -> Result<(String, Lease), LeaseError> {
        grant(
            &self.module,
            &self.module_sees,
            offer_jws,
            &self.policy,
            self.module_entropy(),
            self.t0,
            self.wall,
        )
    }

    /// The instant of the renewal: as long after the handshake as on the wall clock.
    fn renew_instant(&self) -> Instant {
        self.t0
            + self
                .renew_wall
                .duration_since(self.wall)
                .expect("renew_iat is not before iat")
    }

    /// The wall clock of the scope change (not a whole second).
    fn rescope_wall(&self) -> SystemTime {
        self.wall + self.rescope_at
    }

    /// The instant of the scope change.
    fn rescope_instant(&self) -> Instant {
        self.t0 + self.rescope_at
    }

    /// The instant of the revocation: as long after the handshake as on the wall clock.
    fn revoke_instant(&self) -> Instant {
        self.t0
            + self
                .revoke_wall
                .duration_since(self.wall)
                .expect("revoke_iat is not before iat")
    }

    /// Both sides' leases after the handshake: the module grants the Core's
    /// offer, and the Core accepts the stated grant.
    fn leases(&self, a: &Appendix) -> (Lease, Lease) {
        let (offer_jws, pending) = self.offer();
        let (_, module_lease) = self
            .grant(&offer_jws)
            .unwrap_or_else(|e| panic!("the module refuses the offer: {e}"));
        let core_lease = pending
            .accept(&self.core, a.get("grant_jws"), self.wall)
            .unwrap_or_else(|e| panic!("the Core refuses `grant_jws`: {e}"));
        (core_lease, module_lease)
    }

    /// Both sides' leases after the stated handshake and renewal, each having
    /// received the stated tokens, at the renewal's instant, and the TTL the
    /// Core's lease was granted.
    fn renewed_leases(&self, a: &Appendix) -> (Lease, Lease, Duration) {
        let (mut core_lease, mut module_lease) = self.leases(a);
        let answer = self.stated_exchange(a, &RENEWAL, &mut core_lease, &mut module_lease);
        // The Core accepts the stated answer to its own request.
        let granted = self.apply_renewed(&mut core_lease, &answer);
        (core_lease, module_lease, granted)
    }

    /// The exchange `ex` with the tokens the code makes: the Core's request
    /// and the module's answer are computed (into `v`), and each side
    /// receives the other's. The answer as the Core received it.
    fn exchange(
        &self,
        ex: &Exchange,
        core_lease: &mut Lease,
        module_lease: &mut Lease,
        v: &mut BTreeMap<&'static str, String>,
    ) -> ControlClaims {
        let [request_claims, request_name, answer_claims, answer_name] = ex.names;
        let request_jws = (ex.send)(self, core_lease);
        let request = receive(module_lease, request_name, &request_jws);
        let answer_jws = (ex.reply)(self, module_lease, &request);
        let answer = receive(core_lease, answer_name, &answer_jws);
        insert_token(v, (request_claims, request_name), request_jws);
        insert_token(v, (answer_claims, answer_name), answer_jws);
        answer
    }

    /// Checks the stated exchange `ex`: the module answers the stated request
    /// (its `ex.seq`th control step) with the stated answer; the Core sends
    /// the stated request and receives the stated answer, returned.
    fn stated_exchange(
        &self,
        a: &Appendix,
        ex: &Exchange,
        core_lease: &mut Lease,
        module_lease: &mut Lease,
    ) -> ControlClaims {
        let [_, request_name, _, answer_name] = ex.names;
        let seq = ex.seq;
        // The module answers the stated request as stated.
        let request = receive(module_lease, request_name, a.get(request_name));
        assert_eq!(request.seq, seq, "`{request_name}` seq");
        let answered = (ex.reply)(self, module_lease, &request);
        assert_eq!(answered, a.get(answer_name), "`{answer_name}`");
        // The Core sends the stated request and receives the stated answer.
        let sent = (ex.send)(self, core_lease);
        assert_eq!(sent, a.get(request_name), "`{request_name}`");
        let answer = receive(core_lease, answer_name, a.get(answer_name));
        assert_eq!(answer.re, Some(seq), "`{answer_name}` answers seq {seq}");
        answer
    }

    /// The Core's renewal request.
    fn renew(&self, core_lease: &mut Lease) -> String {
        let at = self.renew_instant();
        core_lease
            .renew_request(self.renew_ttl, at, self.renew_wall)
            .unwrap_or_else(|e| panic!("the Core cannot renew: {e}"))
    }

    /// The module's answer to the renewal `request`.
    fn answer_renew(&self, module_lease: &mut Lease, request: &ControlClaims) -> String {
        let at = self.renew_instant();
        module_lease
            .answer_renew(request, at, self.renew_wall)
            .unwrap_or_else(|e| panic!("the module cannot answer the renewal: {e}"))
    }

    /// The TTL granted by the renewal `answer`, which the Core applies.
    fn apply_renewed(&self, core_lease: &mut Lease, answer: &ControlClaims) -> Duration {
        core_lease
            .apply_renewed(answer, self.renew_instant())
            .unwrap_or_else(|e| panic!("the Core refuses the renewal answer: {e}"))
    }

    /// The Core's request to change the scope (to the same scope).
    fn rescope(&self, core_lease: &mut Lease) -> String {
        core_lease
            .rescope_request(
                &self.core,
                &self.scope,
                self.rescope_instant(),
                self.rescope_wall(),
            )
            .unwrap_or_else(|e| panic!("the Core cannot change the scope: {e}"))
    }

    /// The module's answer to the scope change `request`.
    fn answer_rescope(&self, module_lease: &mut Lease, request: &ControlClaims) -> String {
        let (at, wall) = (self.rescope_instant(), self.rescope_wall());
        module_lease
            .answer_rescope(&self.module, request, &self.policy.declared, at, wall)
            .unwrap_or_else(|e| panic!("the module cannot answer the scope change: {e}"))
    }

    /// The Core applies the scope `answer`.
    fn apply_rescoped(&self, core_lease: &mut Lease, answer: &ControlClaims) {
        core_lease
            .apply_rescoped(answer, self.rescope_instant())
            .unwrap_or_else(|e| panic!("the Core refuses the scope answer: {e}"));
    }

    /// The Core's ordinary revocation.
    fn revoke(&self, core_lease: &mut Lease) -> String {
        core_lease
            .revoke(
                &self.core,
                Reason::LeaseRevoked,
                &self.revoke_detail,
                self.revoke_instant(),
                self.revoke_wall,
            )
            .unwrap_or_else(|e| panic!("the Core cannot revoke: {e}"))
    }
}

/// The names of a token's claims and of its text in the appendix.
type TokenNames = (&'static str, &'static str);

/// A request of the Core's and the module's answer, as the appendix states
/// them.
struct Exchange {
    /// The names of the request's claims and text, and of the answer's.
    names: [&'static str; 4],
    /// The request's control sequence number.
    seq: u64,
    /// The Core's request.
    send: fn(&Setup, &mut Lease) -> String,
    /// The module's answer to the request it received.
    reply: fn(&Setup, &mut Lease, &ControlClaims) -> String,
}

const RENEWAL: Exchange = Exchange {
    names: ["renew_claims", "renew_jws", "renewed_claims", "renewed_jws"],
    seq: 1,
    send: Setup::renew,
    reply: Setup::answer_renew,
};

const SCOPE_CHANGE: Exchange = Exchange {
    names: [
        "rescope_claims",
        "rescope_jws",
        "rescoped_claims",
        "rescoped_jws",
    ],
    seq: 2,
    send: Setup::rescope,
    reply: Setup::answer_rescope,
};

/// Adds the token `jws` and its claims to the computed values.
fn insert_token(v: &mut BTreeMap<&'static str, String>, (claims, name): TokenNames, jws: String) {
    v.insert(claims, claims_json(&jws));
    v.insert(name, jws);
}

/// The control token `name`, `jws`, as `lease` receives it from the peer.
fn receive(lease: &mut Lease, name: &str, jws: &str) -> ControlClaims {
    let who = match lease.side() {
        Side::Core => "the Core",
        Side::Module => "the module",
    };
    lease
        .receive(jws)
        .unwrap_or_else(|e| panic!("{who} refuses `{name}`: {e}"))
}

/// Every value of the appendix, computed from its inputs by the lease code.
fn computed(a: &Appendix) -> BTreeMap<&'static str, String> {
    let s = Setup::new(a);
    let mut v = BTreeMap::new();

    // Inputs, written back in their canonical form.
    v.insert("core_urn", s.core.urn().to_string());
    v.insert("module_urn", s.module.urn().to_string());
    v.insert(
        "core_ed25519_seed",
        hex(&a.bytes::<32>("core_ed25519_seed")),
    );
    v.insert(
        "module_ed25519_seed",
        hex(&a.bytes::<32>("module_ed25519_seed")),
    );
    v.insert("core_fingerprint", hex(&s.core.fingerprint().0));
    v.insert("module_fingerprint", hex(&s.module.fingerprint().0));
    v.insert("lease_id", hex(&s.lease_id));
    v.insert("core_kx_secret", hex(&s.core_kx_secret));
    v.insert("module_kx_secret", hex(&s.module_kx_secret));
    v.insert("scope", s.scope.to_string());
    v.insert("requested_ttl_ms", a.number("requested_ttl_ms").to_string());
    v.insert("max_lease_ms", a.number("max_lease_ms").to_string());
    v.insert("iat", a.number("iat").to_string());
    v.insert("proof_method", s.proof_method.clone());
    v.insert("renew_iat", a.number("renew_iat").to_string());
    v.insert("renew_ttl_ms", a.number("renew_ttl_ms").to_string());
    v.insert("rescope_at_ms", a.number("rescope_at_ms").to_string());
    v.insert("revoke_iat", a.number("revoke_iat").to_string());
    v.insert("revoke_detail", s.revoke_detail.clone());

    // Public keys and encodings.
    for (seed, name) in [
        ("core_ed25519_seed", "core_ed25519_public"),
        ("module_ed25519_seed", "module_ed25519_public"),
    ] {
        let key = ed25519_dalek::SigningKey::from_bytes(&a.bytes(seed)).verifying_key();
        v.insert(name, hex(key.as_bytes()));
    }
    v.insert("core_fingerprint_b64", B64.encode(s.core.fingerprint().0));
    v.insert(
        "module_fingerprint_b64",
        B64.encode(s.module.fingerprint().0),
    );
    v.insert("lease_id_b64", LeaseId(s.lease_id).to_string());

    // The offer: signed by the Core, verified by the module.
    let (offer_jws, pending) = s.offer();
    assert_eq!(pending.id(), &LeaseId(s.lease_id), "the offered lease id");
    let offer_claims: LeaseClaims =
        serde_json::from_str(&claims_json(&offer_jws)).expect("offer claims");
    let core_kx_public: [u8; 32] = B64.decode(&offer_claims.kx).unwrap().try_into().unwrap();
    v.insert("core_kx_public", hex(&core_kx_public));
    v.insert("core_kx_public_b64", offer_claims.kx.clone());
    v.insert("offer_claims", claims_json(&offer_jws));
    v.insert("offer_sha256", hex(&sha256(&offer_jws)));
    v.insert("offer_sha256_b64", B64.encode(sha256(&offer_jws)));
    v.insert("offer_jws", offer_jws.clone());

    // The grant: verifying the offer, signed by the module, verified by the Core.
    let (grant_jws, mut module_lease) = s
        .grant(&offer_jws)
        .unwrap_or_else(|e| panic!("the module refuses the offer: {e}"));
    let grant_claims: LeaseClaims =
        serde_json::from_str(&claims_json(&grant_jws)).expect("grant claims");
    let module_kx_public: [u8; 32] = B64.decode(&grant_claims.kx).unwrap().try_into().unwrap();
    v.insert("module_kx_public", hex(&module_kx_public));
    v.insert("module_kx_public_b64", grant_claims.kx.clone());
    v.insert("granted_ttl_ms", grant_claims.ttl_ms.to_string());
    v.insert("grant_claims", claims_json(&grant_jws));
    v.insert("grant_sha256", hex(&sha256(&grant_jws)));
    v.insert("grant_jws", grant_jws.clone());
    let mut core_lease = pending
        .accept(&s.core, &grant_jws, s.wall)
        .unwrap_or_else(|e| panic!("the Core refuses the grant: {e}"));
    assert_eq!(core_lease.ttl(), module_lease.ttl(), "both sides' ttl");
    assert_eq!(
        core_lease.ttl(),
        Duration::from_millis(grant_claims.ttl_ms),
        "the ttl held"
    );

    // The per-call key, computed from each side's secret.
    let core_shared = shared_secret(&StaticSecret::from(s.core_kx_secret), &grant_claims.kx)
        .expect("the Core's shared secret");
    let module_shared = shared_secret(&StaticSecret::from(s.module_kx_secret), &offer_claims.kx)
        .expect("the module's shared secret");
    assert_eq!(
        core_shared.as_bytes(),
        module_shared.as_bytes(),
        "both sides' X25519 shared secret"
    );
    let salt = hkdf_salt(&offer_jws, &grant_jws);
    let info = hkdf_info(&LeaseId(s.lease_id));
    let renewal_info = hkdf_renewal_info(&LeaseId(s.lease_id));
    let [key, renewal_key] =
        lease_key_bytes(&core_shared, &salt, &LeaseId(s.lease_id)).expect("the lease keys");
    v.insert("shared_secret", hex(core_shared.as_bytes()));
    v.insert("hkdf_salt", hex(&salt));
    v.insert("hkdf_info", hex(&info));
    v.insert("proof_key", hex(key.as_ref()));
    v.insert("hkdf_renewal_info", hex(&renewal_info));
    v.insert("renewal_key", hex(renewal_key.as_ref()));

    // Call proofs: made by the Core's lease, equal to those of the stated
    // key, admitted by the module's lease.
    let stated_key = ProofKey::new(&key);
    for (seq, name) in [(1, "proof_seq1"), (2, "proof_seq2")] {
        let proof = core_lease.proof_key().proof(seq, &s.proof_method);
        assert_eq!(
            proof,
            stated_key.proof(seq, &s.proof_method),
            "`{name}` from the Core's lease and from `proof_key`"
        );
        module_lease
            .admit(&s.proof_method, Some(&proof), s.t0)
            .unwrap_or_else(|e| panic!("the module refuses `{name}`: {e}"));
        v.insert(name, proof);
    }

    // A renewal: the Core's first control step and the module's answer.
    let answer = s.exchange(&RENEWAL, &mut core_lease, &mut module_lease, &mut v);
    let granted = s.apply_renewed(&mut core_lease, &answer);
    assert_eq!(granted, module_lease.ttl(), "both sides' renewed ttl");

    // A scope change (the Core's step 2, the module's step 2), at an instant
    // that is not a whole second.
    let answer = s.exchange(&SCOPE_CHANGE, &mut core_lease, &mut module_lease, &mut v);
    s.apply_rescoped(&mut core_lease, &answer);
    assert_eq!(
        core_lease.scope(),
        module_lease.scope(),
        "both sides' scope"
    );

    // An ordinary revocation by the Core (its step 3).
    let revoke_jws = s.revoke(&mut core_lease);
    let notice = receive(&mut module_lease, "revoke_jws", &revoke_jws);
    assert_eq!(
        module_lease.apply_revoke(&notice, s.revoke_instant()),
        Ok(Reason::LeaseRevoked),
        "the module ends its copy"
    );
    insert_token(&mut v, ("revoke_claims", "revoke_jws"), revoke_jws);
    v
}

#[test]
fn vectors_every_value_matches_the_code() {
    let a = appendix();
    let computed = computed(&a);
    let mut problems = Vec::new();
    for (name, value) in &computed {
        match a.0.get(*name) {
            None => problems.push(format!(
                "`{name}` is missing; the code computes\n    {value}"
            )),
            Some(stated) if stated != value => problems.push(format!(
                "`{name}` differs from the code:\n    stated   {stated}\n    computed {value}"
            )),
            Some(_) => {}
        }
    }
    for name in a.0.keys() {
        if !computed.contains_key(name.as_str()) {
            problems.push(format!("`{name}` is not a value these tests check"));
        }
    }
    assert!(
        problems.is_empty(),
        "PROTOCOL.md Appendix A disagrees with the code:\n{}",
        problems.join("\n")
    );
}

#[test]
fn vectors_the_module_verifies_the_stated_offer() {
    let a = appendix();
    let s = Setup::new(&a);
    let offer_jws = a.get("offer_jws");
    let (grant_jws, _) = s
        .grant(offer_jws)
        .unwrap_or_else(|e| panic!("the module refuses `offer_jws`: {e}"));
    assert_eq!(grant_jws, a.get("grant_jws"), "`grant_jws`");
    // The check is real: a token signed by another key is refused.
    let (header_claims, _) = offer_jws.rsplit_once('.').unwrap();
    let forged = format!("{header_claims}.{}", B64.encode([0u8; 64]));
    assert!(matches!(s.grant(&forged), Err(LeaseError::BadSignature)));
}

#[test]
fn vectors_the_core_verifies_the_stated_grant() {
    let a = appendix();
    let s = Setup::new(&a);
    let (offer_jws, pending) = s.offer();
    assert_eq!(offer_jws, a.get("offer_jws"), "`offer_jws`");
    let lease = pending
        .accept(&s.core, a.get("grant_jws"), s.wall)
        .unwrap_or_else(|e| panic!("the Core refuses `grant_jws`: {e}"));
    assert_eq!(
        lease.ttl(),
        Duration::from_millis(a.number("granted_ttl_ms")),
        "`granted_ttl_ms`"
    );
    assert_eq!(
        lease.id().to_string(),
        a.get("lease_id_b64"),
        "`lease_id_b64`"
    );
    // A grant for another offer is refused.
    let (_, pending) = s.offer();
    let (header_claims, _) = a.get("grant_jws").rsplit_once('.').unwrap();
    let forged = format!("{header_claims}.{}", B64.encode([0u8; 64]));
    assert!(matches!(
        pending.accept(&s.core, &forged, s.wall),
        Err(LeaseError::BadSignature)
    ));
}

#[test]
fn vectors_the_stated_proofs_are_admitted_once() {
    let a = appendix();
    let s = Setup::new(&a);
    let (_, mut lease) = s
        .grant(a.get("offer_jws"))
        .unwrap_or_else(|e| panic!("the module refuses `offer_jws`: {e}"));
    let key = ProofKey::new(&a.bytes("proof_key"));
    for (seq, name) in [(1, "proof_seq1"), (2, "proof_seq2")] {
        let proof = a.get(name);
        assert_eq!(
            key.check(proof, &s.proof_method).ok(),
            Some(seq),
            "`{name}` under `proof_key`"
        );
        lease
            .admit(&s.proof_method, Some(proof), s.t0)
            .unwrap_or_else(|e| panic!("the module refuses `{name}`: {e}"));
    }
    assert!(matches!(
        lease.admit(&s.proof_method, Some(a.get("proof_seq1")), s.t0),
        Err(LeaseError::ProofReplayed { seq: 1 })
    ));
}

#[test]
fn vectors_the_stated_renewal_is_accepted() {
    let a = appendix();
    let s = Setup::new(&a);
    let (_, module_lease, granted) = s.renewed_leases(&a);
    assert_eq!(granted, module_lease.ttl(), "the renewed ttl");
    // Both tokens are HS256 under the stated `renewal_key`, not under the
    // proof key.
    let key = RenewalKey::new(&a.bytes("renewal_key"));
    let proof_key = RenewalKey::new(&a.bytes("proof_key"));
    for name in ["renew_jws", "renewed_jws"] {
        let token = a.get(name);
        assert!(
            super::jws::verify_mac::<ControlClaims>(token, &key).is_ok(),
            "`{name}` under `renewal_key`"
        );
        assert!(matches!(
            super::jws::verify_mac::<ControlClaims>(token, &proof_key),
            Err(LeaseError::BadSignature)
        ));
    }
}

#[test]
fn vectors_the_stated_scope_change_and_revocation_are_accepted() {
    let a = appendix();
    let s = Setup::new(&a);
    let (mut core_lease, mut module_lease, _) = s.renewed_leases(&a);
    let answer = s.stated_exchange(&a, &SCOPE_CHANGE, &mut core_lease, &mut module_lease);
    // The Core accepts the stated answer to its own request.
    s.apply_rescoped(&mut core_lease, &answer);
    // The stated revocation ends the module's copy as LEASE_REVOKED.
    let at = s.revoke_instant();
    let notice = receive(&mut module_lease, "revoke_jws", a.get("revoke_jws"));
    assert_eq!(notice.seq, 3, "`revoke_jws` seq");
    assert_eq!(
        module_lease.apply_revoke(&notice, at),
        Ok(Reason::LeaseRevoked)
    );
    assert!(module_lease.check_valid(at).is_err());
    // And the Core's own revocation is the stated one.
    let revoke = s.revoke(&mut core_lease);
    assert_eq!(revoke, a.get("revoke_jws"), "`revoke_jws`");
}
