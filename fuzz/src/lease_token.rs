//! JWS lease tokens and their claims, as each side receives them.
//!
//! Input: one mode byte, then the rest.
//!
//! - mode 0 / 1: the rest is a token, as it arrives in a `SignedToken.jws`
//!   (a protobuf `string`: UTF-8), from an Ed25519 / a P-256 peer. It is given
//!   to the module as the Core's offer (`lease::grant`), to the Core as the
//!   module's grant (`PendingLease::accept`), and to both sides' open leases
//!   as a control token (`Lease::receive`).
//! - mode 2: the rest is the claims of an offer, signed with the Core's real
//!   key (a hostile but authenticated Core), given to `lease::grant`.
//! - mode 3: the rest is the claims of a grant, signed with the module's real
//!   key, given to `PendingLease::accept` of the Core's (fixed) offer.
//!
//! Whatever the input, the verifiers must refuse or accept without panicking,
//! and a lease they open must be within what was declared and asked for
//! (PROTOCOL.md §3.2–3.3): TTL within 50 ms ..= the cap, scope within the
//! declared (module) or requested (Core) methods, the right parties.

use std::cell::RefCell;

use anima_protocol::lease::{Lease, MIN_TTL, Side};

use crate::fixtures::{self, CORE_SEED, MAX_TTL, MODULE_SEED, Parties, REQUEST_TTL};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 | 1 => {
            let Ok(token) = std::str::from_utf8(rest) else {
                return;
            };
            let parties = if mode % 4 == 0 {
                fixtures::ed25519()
            } else {
                fixtures::p256()
            };
            as_offer(parties, token);
            as_grant(parties, token);
            as_control(mode % 4 == 0, parties, token);
        }
        2 => as_offer(fixtures::ed25519(), &fixtures::sign_as(&CORE_SEED, rest)),
        _ => as_grant(fixtures::ed25519(), &fixtures::sign_as(&MODULE_SEED, rest)),
    }
}

/// The module receives `token` as the Core's offer.
fn as_offer(p: &Parties, token: &str) {
    let Ok((grant, lease)) = fixtures::grant(p, token, fixtures::start()) else {
        return;
    };
    check_opened(p, &lease, Side::Module);
    assert!(!grant.is_empty());
}

/// The Core receives `token` as the module's grant of its fixed offer.
fn as_grant(p: &Parties, token: &str) {
    let (_, pending) = fixtures::offer(p, fixtures::start());
    let Ok(lease) = pending.accept(&p.core, token, fixtures::wall()) else {
        return;
    };
    check_opened(p, &lease, Side::Core);
    assert_eq!(lease.id().0, fixtures::LEASE_ID);
}

/// A lease `side` just opened: between the parties, valid, and within its
/// bounds: the module grants at most `max_lease` and the declared methods,
/// the Core accepts at most what it requested.
fn check_opened(p: &Parties, lease: &Lease, side: Side) {
    let (verb, max_ttl, allowed) = match side {
        Side::Module => ("granted", MAX_TTL, fixtures::declared()),
        Side::Core => ("accepted", REQUEST_TTL, fixtures::request().scope),
    };
    assert_eq!(lease.side(), side);
    assert!(lease.ttl() >= MIN_TTL, "a lease under MIN_TTL: {lease:?}");
    assert_eq!(lease.consumer(), p.core.urn());
    assert_eq!(lease.provider(), p.module.urn());
    assert!(lease.check_valid(fixtures::start()).is_ok());
    assert!(
        lease.ttl() <= max_ttl,
        "{verb} beyond {max_ttl:?}: {lease:?}"
    );
    assert!(
        lease.scope().is_subset(&allowed),
        "{verb} a method outside {allowed}: {lease:?}"
    );
}

thread_local! {
    /// Open leases (Core's, module's) per key type, reused until a token is
    /// accepted (which moves their sequence numbers), so every input meets
    /// the same state.
    static LEASES: RefCell<[Option<(Lease, Lease)>; 2]> = const { RefCell::new([None, None]) };
}

/// Both sides receive `token` as a control token on their open lease.
fn as_control(ed25519: bool, p: &Parties, token: &str) {
    LEASES.with_borrow_mut(|leases| {
        let slot = &mut leases[usize::from(!ed25519)];
        let (core, module) = slot.get_or_insert_with(|| fixtures::handshake(p, fixtures::start()));
        let accepted = [core.receive(token), module.receive(token)];
        for claims in accepted.iter().flatten() {
            assert_eq!(claims.lid, core.id().to_string());
            assert!(claims.seq >= 1);
        }
        if accepted.iter().any(Result::is_ok) {
            *slot = None;
        }
    });
}

/// Genuine tokens of an honest handshake and its control steps, and claims
/// (for the signing modes) that break one rule each.
pub fn seeds() -> Vec<Vec<u8>> {
    let p = fixtures::ed25519();
    let now = fixtures::start();
    let (offer, _) = fixtures::offer(p, now);
    let (grant, _) = fixtures::grant(p, &offer, now).expect("an honest grant");
    let (mut core, mut module) = fixtures::handshake(p, now);
    let renew = core
        .renew_request(REQUEST_TTL, now, fixtures::wall())
        .expect("renew");
    let claims = module
        .receive(&renew)
        .expect("the module takes the renewal");
    let renewed = module
        .answer_renew(&claims, now, fixtures::wall())
        .expect("renewed");
    let revoke = module
        .revoke(
            &p.module,
            anima_protocol::lease::Reason::Shutdown,
            "bye",
            now,
            fixtures::wall(),
        )
        .expect("revoke");

    let mut seeds = Vec::new();
    for token in [&offer, &grant, &renew, &renewed, &revoke] {
        seeds.push([&[0u8][..], token.as_bytes()].concat());
    }
    // A P-256 peer's tokens: the right header, a signature that cannot verify.
    let es256 = format!(
        "{}.{}.{}",
        fixtures::b64(anima_protocol::lease::JWS_HEADER_ES256.as_bytes()),
        fixtures::b64(&fixtures::payload(&offer)),
        fixtures::b64(&[7u8; 64])
    );
    seeds.push([&[1u8][..], es256.as_bytes()].concat());
    for garbage in ["", ".", "..", "a.b.c", "e30.e30.", "e30.e30.e30.e30"] {
        seeds.push([&[0u8][..], garbage.as_bytes()].concat());
    }

    let offer_claims = String::from_utf8(fixtures::payload(&offer)).expect("JSON");
    let grant_claims = String::from_utf8(fixtures::payload(&grant)).expect("JSON");
    let mut offers = vec![offer_claims.clone()];
    let mut grants = vec![grant_claims.clone()];
    let zero_kx = fixtures::b64(&[0u8; 32]);
    for (from, to) in [
        ("\"ttl_ms\":10000", "\"ttl_ms\":18446744073709551615"),
        ("\"ttl_ms\":10000", "\"ttl_ms\":0"),
        ("\"ttl_ms\":10000", "\"ttl_ms\":49"),
        ("\"scope\":[", "\"scope\":[\"/anima.fuzz.v1.Admin/Wipe\","),
        ("\"scope\":[", "\"scope\":[\"not a method\","),
        ("anima-offer+v1", "anima-grant+v1"),
        ("\"iat\":1800000000", "\"iat\":0"),
        ("\"iat\":1800000000", "\"iat\":18446744073709551615"),
        ("\"exp\":1800000010", "\"exp\":0"),
        ("urn:anima:core:dev", "urn:anima:core:other"),
        ("urn:anima:module:echo", "urn:anima:module:other"),
        ("\"lid\":\"", "\"lid\":\"AA"),
        ("\"rev\":[", "\"extra\":1,\"rev\":["),
    ] {
        offers.push(offer_claims.replacen(from, to, 1));
    }
    offers.push(replace_claim(&offer_claims, "kx", &zero_kx));
    for (from, to) in [
        ("\"ttl_ms\":5000", "\"ttl_ms\":18446744073709551615"),
        ("\"ttl_ms\":5000", "\"ttl_ms\":10001"),
        ("\"ttl_ms\":5000", "\"ttl_ms\":49"),
        ("\"scope\":[", "\"scope\":[\"/anima.fuzz.v1.Admin/Wipe\","),
        ("anima-grant+v1", "anima-offer+v1"),
        ("\"iat\":1800000000", "\"iat\":1799999000"),
        ("\"lid\":\"", "\"lid\":\"B"),
    ] {
        grants.push(grant_claims.replacen(from, to, 1));
    }
    grants.push(replace_claim(
        &grant_claims,
        "offer",
        &fixtures::b64(&[0; 32]),
    ));
    grants.push(replace_claim(&grant_claims, "kx", &zero_kx));
    for claims in offers {
        seeds.push([&[2u8][..], claims.as_bytes()].concat());
    }
    for claims in grants {
        seeds.push([&[3u8][..], claims.as_bytes()].concat());
    }
    seeds
}

/// `claims` with the string claim `name` set to `value`.
fn replace_claim(claims: &str, name: &str, value: &str) -> String {
    let key = format!("\"{name}\":\"");
    let Some(start) = claims.find(&key).map(|i| i + key.len()) else {
        return claims.to_owned();
    };
    let end = start + claims[start..].find('"').unwrap_or(0);
    format!("{}{value}{}", &claims[..start], &claims[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signing modes sign as the real parties do (so claims seeds from
    /// genuine tokens open leases), and genuine tokens open leases.
    #[test]
    fn seeds_reach_the_claim_checks() {
        let p = fixtures::ed25519();
        let now = fixtures::start();
        let (offer, _) = fixtures::offer(p, now);
        assert_eq!(
            fixtures::sign_as(&CORE_SEED, &fixtures::payload(&offer)),
            offer
        );
        let (grant, _) = fixtures::grant(p, &offer, now).expect("grant");
        assert_eq!(
            fixtures::sign_as(&MODULE_SEED, &fixtures::payload(&grant)),
            grant
        );
        let (_, pending) = fixtures::offer(p, now);
        assert!(pending.accept(&p.core, &grant, fixtures::wall()).is_ok());
    }
}
