//! The lease handshake: the Core offers, the module grants, each verifies
//! the other's token, and both derive the per-lease proof key.
//!
//! Pure: no sockets, no tasks. Time comes in as arguments — a monotonic
//! [`Instant`] for expiry and a wall-clock [`SystemTime`] for audit claims.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use super::claims::{Confirmation, LeaseClaims, REVOCATION_CONDITIONS, TYP_GRANT, TYP_OFFER};
use super::error::LeaseError;
use super::jws::{self, b64, b64_array};
use super::keys::{LeaseSigner, PeerBinding};
use super::lease::{Lease, LeaseId, Side};
use super::proof::ProofKey;
use super::renewal::{LeaseKeys, RenewalKey};
use super::scope::Scope;
use crate::identity::Urn;
use crate::transport::Fingerprint;

/// The largest clock difference tolerated between the `iat` of a token and
/// this side's wall clock. Expiry itself never depends on wall clocks.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The shortest lease either side accepts.
pub const MIN_TTL: Duration = Duration::from_millis(50);

/// What the Core asks for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The methods wanted.
    pub scope: Scope,
    /// The lease duration wanted; the module grants at most its maximum.
    pub ttl: Duration,
}

/// What a module accepts: its declared methods and its maximum lease.
#[derive(Debug, Clone)]
pub struct GrantPolicy {
    /// The methods the module's contract declares.
    pub declared: Scope,
    /// The contract's maximum lease duration.
    pub max_ttl: Duration,
}

/// Fresh randomness for one handshake side.
pub struct Entropy {
    /// The lease id (Core only).
    pub lease_id: [u8; 16],
    /// The ephemeral X25519 secret.
    pub kx_secret: Zeroizing<[u8; 32]>,
}

impl Entropy {
    /// From the operating system's generator.
    pub fn system() -> Result<Self, LeaseError> {
        let rng = SystemRandom::new();
        let mut lease_id = [0u8; 16];
        let mut kx_secret = Zeroizing::new([0u8; 32]);
        rng.fill(&mut lease_id)
            .and_then(|()| rng.fill(kx_secret.as_mut()))
            .map_err(|_| LeaseError::Key("no randomness available".into()))?;
        Ok(Entropy {
            lease_id,
            kx_secret,
        })
    }
}

/// The Core's half-open lease: the offer was sent, the grant is awaited.
pub struct PendingLease {
    id: LeaseId,
    offer_jws: String,
    kx: StaticSecret,
    request: LeaseRequest,
    sent_at: Instant,
    peer: PeerBinding,
    consumer: Urn,
}

impl std::fmt::Debug for PendingLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLease")
            .field("id", &self.id)
            .field("provider", &self.peer.urn)
            .finish_non_exhaustive()
    }
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn sha256_b64(text: &str) -> String {
    b64(Fingerprint::of(text.as_bytes()).0.as_slice())
}

/// Time left before either certificate expires (a lease never outlives one).
pub(crate) fn cert_bound(
    wall: SystemTime,
    a: Option<SystemTime>,
    b: Option<SystemTime>,
) -> Duration {
    [a, b]
        .into_iter()
        .flatten()
        .map(|t| t.duration_since(wall).unwrap_or(Duration::ZERO))
        .min()
        .unwrap_or(Duration::MAX)
}

fn check_skew(iat: u64, wall: SystemTime) -> Result<(), LeaseError> {
    let now = unix(wall);
    if iat.abs_diff(now) > MAX_CLOCK_SKEW.as_secs() {
        return Err(LeaseError::BadToken(format!(
            "issued-at {iat} is more than {}s from this side's clock ({now})",
            MAX_CLOCK_SKEW.as_secs()
        )));
    }
    Ok(())
}

/// Checks the parts every lease token shares: type, parties, binding.
fn check_common(
    claims: &LeaseClaims,
    typ: &str,
    consumer: &Urn,
    provider: &Urn,
    issuer_fp: Fingerprint,
    audience_fp: Fingerprint,
    wall: SystemTime,
) -> Result<(), LeaseError> {
    claims.check_claim_set(typ)?;
    let actual = |role| {
        if role == "consumer" {
            consumer
        } else {
            provider
        }
    };
    for (role, claimed) in [("consumer", &claims.con), ("provider", &claims.pro)] {
        if claimed != actual(role).as_str() && !fault_on!(OfferIdentities) {
            return Err(LeaseError::IdentityMismatch {
                role,
                claimed: format!("{claimed:.100}"),
                actual: actual(role).clone(),
            });
        }
    }
    if fault_on!(OfferBinding) {
        tracing::warn!("FAULT INJECTION (offer-binding): cnf unchecked");
    } else if claims.cnf.issuer != b64(&issuer_fp.0) {
        return Err(LeaseError::BindingMismatch {
            which: "issuer certificate",
        });
    }
    if claims.cnf.audience != b64(&audience_fp.0) && !fault_on!(OfferBinding) {
        return Err(LeaseError::BindingMismatch {
            which: "audience certificate",
        });
    }
    if fault_on!(OfferIat) {
        tracing::warn!("FAULT INJECTION (offer-iat): iat and exp unchecked");
        return Ok(());
    }
    if claims.exp < claims.iat {
        return Err(LeaseError::BadToken("exp is before iat".into()));
    }
    check_skew(claims.iat, wall)
}

/// The X25519 shared secret of `secret` and the peer's `kx` claim
/// (PROTOCOL.md §3.3); an all-zero result is refused.
pub(crate) fn shared_secret(
    secret: &StaticSecret,
    peer_kx: &str,
) -> Result<SharedSecret, LeaseError> {
    let peer: [u8; 32] = b64_array(peer_kx, "kx")?;
    let shared = secret.diffie_hellman(&PublicKey::from(peer));
    if !shared.was_contributory() {
        return Err(LeaseError::BadToken("kx is a low-order point".into()));
    }
    Ok(shared)
}

/// The HKDF salt: SHA-256 of the offer's JWS text, then of the grant's.
pub(crate) fn hkdf_salt(offer_jws: &str, grant_jws: &str) -> [u8; 64] {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(&Fingerprint::of(offer_jws.as_bytes()).0);
    salt[32..].copy_from_slice(&Fingerprint::of(grant_jws.as_bytes()).0);
    salt
}

/// The HKDF info of the per-call key: `"anima/v1 proof key "` followed by
/// the 16 lease id bytes.
pub(crate) fn hkdf_info(lease_id: &LeaseId) -> Vec<u8> {
    info(b"anima/v1 proof key ", lease_id)
}

/// The HKDF info of the renewal key: `"anima/v1 renewal key "` followed by
/// the 16 lease id bytes.
pub(crate) fn hkdf_renewal_info(lease_id: &LeaseId) -> Vec<u8> {
    info(b"anima/v1 renewal key ", lease_id)
}

fn info(label: &[u8], lease_id: &LeaseId) -> Vec<u8> {
    let mut info = label.to_vec();
    info.extend_from_slice(&lease_id.0);
    info
}

/// The per-call key and the renewal key, 32 bytes each: one HKDF-SHA256
/// extract of the shared secret under `salt`, expanded with each key's
/// `info` (PROTOCOL.md §3.3).
pub(crate) fn lease_key_bytes(
    shared: &SharedSecret,
    salt: &[u8; 64],
    lease_id: &LeaseId,
) -> Result<[Zeroizing<[u8; 32]>; 2], LeaseError> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(shared.as_bytes());
    let expand = |info: &[u8]| {
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[info], ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(out.as_mut()))
            .map_err(|_| LeaseError::Key("key derivation failed".into()))?;
        Ok(out)
    };
    Ok([
        expand(&hkdf_info(lease_id))?,
        expand(&hkdf_renewal_info(lease_id))?,
    ])
}

/// Both keys of the lease (PROTOCOL.md §3.3): the per-call key and the
/// renewal key, from one shared secret and salt, with their own `info`.
fn derive_keys(
    secret: &StaticSecret,
    peer_kx: &str,
    lease_id: &LeaseId,
    offer_jws: &str,
    grant_jws: &str,
) -> Result<LeaseKeys, LeaseError> {
    let shared = shared_secret(secret, peer_kx)?;
    let [proof, renewal] = lease_key_bytes(&shared, &hkdf_salt(offer_jws, grant_jws), lease_id)?;
    Ok(LeaseKeys {
        proof: ProofKey::new(&proof),
        renewal: RenewalKey::new(&renewal),
    })
}

/// Core side: signs an offer for the module at the other end of `peer`.
///
/// Returns the token to send and the pending lease that verifies the answer.
/// `now` is when the offer is sent: the Core's lease runs from then, so it
/// ends no later than the module's, which runs from receipt.
pub fn offer(
    signer: &LeaseSigner,
    peer: &PeerBinding,
    request: LeaseRequest,
    entropy: Entropy,
    now: Instant,
    wall: SystemTime,
) -> Result<(String, PendingLease), LeaseError> {
    if request.ttl < MIN_TTL {
        return Err(LeaseError::BadToken(format!(
            "a lease must last at least {MIN_TTL:?}"
        )));
    }
    let id = LeaseId(entropy.lease_id);
    let kx = StaticSecret::from(*entropy.kx_secret);
    let iat = unix(wall);
    let claims = LeaseClaims {
        typ: TYP_OFFER.into(),
        lid: id.to_string(),
        con: signer.urn().to_string(),
        pro: peer.urn.to_string(),
        scope: request.scope.to_vec(),
        ttl_ms: ms(request.ttl),
        iat,
        exp: iat + request.ttl.as_secs().max(1),
        cnf: Confirmation {
            issuer: b64(&signer.fingerprint().0),
            audience: b64(&peer.fingerprint.0),
        },
        kx: b64(PublicKey::from(&kx).as_bytes()),
        offer: None,
        rev: REVOCATION_CONDITIONS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let offer_jws = jws::sign(&claims, signer.key())?;
    Ok((
        offer_jws.clone(),
        PendingLease {
            id,
            offer_jws,
            kx,
            request,
            sent_at: now,
            peer: peer.clone(),
            consumer: signer.urn().clone(),
        },
    ))
}

impl PendingLease {
    /// The lease id offered.
    pub fn id(&self) -> &LeaseId {
        &self.id
    }

    /// Core side: verifies the module's grant and opens the lease.
    pub fn accept(
        self,
        signer: &LeaseSigner,
        grant_jws: &str,
        wall: SystemTime,
    ) -> Result<Lease, LeaseError> {
        let claims: LeaseClaims = jws::verify(grant_jws, &self.peer.key)?;
        check_common(
            &claims,
            TYP_GRANT,
            &self.consumer,
            &self.peer.urn,
            self.peer.fingerprint,
            signer.fingerprint(),
            wall,
        )?;
        if claims.lid != self.id.to_string() {
            return Err(LeaseError::BadToken(
                "grant answers another lease id".into(),
            ));
        }
        if claims.offer.as_deref() != Some(sha256_b64(&self.offer_jws).as_str()) {
            return Err(LeaseError::BadToken("grant answers another offer".into()));
        }
        let scope = Scope::new(claims.scope.iter().cloned())?;
        if !scope.is_subset(&self.request.scope) {
            return Err(LeaseError::ScopeDenied {
                method: scope
                    .difference(&self.request.scope)
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        let ttl = Duration::from_millis(claims.ttl_ms);
        if ttl > self.request.ttl || ttl < MIN_TTL {
            return Err(LeaseError::BadToken(format!(
                "granted ttl {ttl:?} is outside {MIN_TTL:?}..={:?}",
                self.request.ttl
            )));
        }
        let ttl = ttl.min(cert_bound(wall, signer.not_after(), self.peer.not_after));
        let keys = derive_keys(&self.kx, &claims.kx, &self.id, &self.offer_jws, grant_jws)?;
        Ok(Lease::new(
            self.id,
            Side::Core,
            self.consumer,
            self.peer.urn.clone(),
            scope,
            ttl,
            self.sent_at,
            wall,
            self.request.ttl,
            keys,
            self.peer,
            signer.not_after(),
        ))
    }
}

/// Module side: verifies the Core's offer and signs the grant.
///
/// The grant states the scope requested (which must lie within the declared
/// methods) and the TTL requested capped at the contract's maximum and at
/// either certificate's expiry. `now` is when the offer was received.
pub fn grant(
    signer: &LeaseSigner,
    peer: &PeerBinding,
    offer_jws: &str,
    policy: &GrantPolicy,
    entropy: Entropy,
    now: Instant,
    wall: SystemTime,
) -> Result<(String, Lease), LeaseError> {
    let claims = verify_offer(signer, peer, offer_jws, wall)?;
    let id = LeaseId(b64_array(&claims.lid, "lid")?);
    let scope = granted_scope(&claims, policy)?;
    let ttl = granted_ttl(&claims, policy, signer, peer, wall)?;
    let kx = StaticSecret::from(*entropy.kx_secret);
    let iat = unix(wall);
    let whole_seconds = if fault_on!(GrantExpIat) {
        ttl.as_secs()
    } else {
        ttl.as_secs().max(1)
    };
    let grant_claims = LeaseClaims {
        typ: TYP_GRANT.into(),
        lid: claims.lid.clone(),
        con: peer.urn.to_string(),
        pro: signer.urn().to_string(),
        scope: scope.to_vec(),
        ttl_ms: ms(ttl),
        iat,
        exp: iat + whole_seconds,
        cnf: Confirmation {
            issuer: b64(&signer.fingerprint().0),
            audience: b64(&peer.fingerprint.0),
        },
        kx: b64(PublicKey::from(&kx).as_bytes()),
        offer: Some(sha256_b64(offer_jws)),
        rev: REVOCATION_CONDITIONS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let grant_jws = jws::sign(&grant_claims, signer.key())?;
    let keys = derive_keys(&kx, &claims.kx, &id, offer_jws, &grant_jws)?;
    let lease = Lease::new(
        id,
        Side::Module,
        peer.urn.clone(),
        signer.urn().clone(),
        scope,
        ttl,
        now,
        wall,
        policy.max_ttl,
        keys,
        peer.clone(),
        signer.not_after(),
    );
    Ok((grant_jws, lease))
}

/// Module side: the offer's claims, once its signature (by the Core at the
/// other end of `peer`) and the parts every lease token shares are checked.
fn verify_offer(
    signer: &LeaseSigner,
    peer: &PeerBinding,
    offer_jws: &str,
    wall: SystemTime,
) -> Result<LeaseClaims, LeaseError> {
    #[cfg(not(anima_test_faults))]
    let claims: LeaseClaims = jws::verify(offer_jws, &peer.key)?;
    #[cfg(anima_test_faults)]
    let claims: LeaseClaims = crate::fault::verify_token(
        offer_jws,
        jws::verify(offer_jws, &peer.key),
        crate::fault::ProtocolFault::OfferSignature,
    )?;
    check_common(
        &claims,
        TYP_OFFER,
        &peer.urn,
        signer.urn(),
        peer.fingerprint,
        signer.fingerprint(),
        wall,
    )?;
    Ok(claims)
}

/// The scope the offer requests, which must lie within the declared methods.
fn granted_scope(offer: &LeaseClaims, policy: &GrantPolicy) -> Result<Scope, LeaseError> {
    let scope = Scope::new(offer.scope.iter().cloned())?;
    if let Some(extra) = scope.difference(&policy.declared).next()
        && !fault_on!(OfferScope)
    {
        return Err(LeaseError::ScopeDenied {
            method: extra.to_owned(),
        });
    }
    Ok(scope)
}

/// The TTL the offer requests (at least [`MIN_TTL`]), capped at the
/// contract's maximum and at either certificate's expiry; refused when the
/// cap leaves less than [`MIN_TTL`].
fn granted_ttl(
    offer: &LeaseClaims,
    policy: &GrantPolicy,
    signer: &LeaseSigner,
    peer: &PeerBinding,
    wall: SystemTime,
) -> Result<Duration, LeaseError> {
    let requested = Duration::from_millis(offer.ttl_ms);
    if requested < MIN_TTL && !fault_on!(OfferTtl) {
        return Err(LeaseError::BadToken(format!(
            "requested ttl {requested:?} is below {MIN_TTL:?}"
        )));
    }
    let ttl =
        requested
            .min(policy.max_ttl)
            .min(cert_bound(wall, signer.not_after(), peer.not_after));
    if ttl < MIN_TTL && !fault_on!(OfferTtl) {
        return Err(LeaseError::BadToken(
            "a certificate expires before a lease could run".into(),
        ));
    }
    Ok(ttl)
}
