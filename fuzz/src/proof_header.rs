//! The per-call proof (`anima-proof: v1.<seq>.<tag>`, PROTOCOL.md §4).
//!
//! Input: one selector byte, then the rest.
//!
//! - selector < 0x80: the rest is the header value of one call of a declared
//!   method (`DECLARED[selector % 3]`), given to the module's open lease as
//!   the gate does (`Lease::admit`). Only a genuine, fresh proof may pass,
//!   and a header the proof key accepts must be that key's own spelling of
//!   its sequence number, to the byte.
//! - selector >= 0x80: the rest is a sequence of 3-byte arrivals
//!   `[how, lo, hi]` of genuine proofs; each is checked (`ProofKey::check`
//!   must return its sequence number, and refuse it for another method) and
//!   offered to a `ReplayWindow`, whose answer must match a model: each
//!   sequence number once, none older than `ReplayWindow::SIZE` below the
//!   highest seen, never 0.

use std::cell::RefCell;
use std::collections::HashSet;

use anima_protocol::lease::{Lease, LeaseError, ProofKey, ReplayWindow};

use crate::fixtures::{self, Cursor, DECLARED, UNDECLARED};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector < 0x80 {
        if let Ok(header) = std::str::from_utf8(rest) {
            one_call(DECLARED[usize::from(selector) % DECLARED.len()], header);
        }
    } else {
        arrivals(DECLARED[usize::from(selector) % DECLARED.len()], rest);
    }
}

thread_local! {
    /// The module's copy of an honest lease, reused until a call is admitted
    /// (which moves its replay window), so every input meets the same state.
    static LEASE: RefCell<Option<Lease>> = const { RefCell::new(None) };
}

fn one_call(method: &str, header: &str) {
    LEASE.with_borrow_mut(|slot| {
        let lease = slot
            .get_or_insert_with(|| fixtures::handshake(fixtures::ed25519(), fixtures::start()).1);
        let now = fixtures::start();
        // One sequence number has one spelling: whatever verifies is exactly
        // what the key writes for it (a `v1.01.…` of a genuine tag for 1 too).
        if let Ok(seq) = lease.proof_key().check(header, method) {
            assert_eq!(header, lease.proof_key().proof(seq, method));
        }
        assert!(matches!(
            lease.admit(method, None, now),
            Err(LeaseError::NoLease(_))
        ));
        if lease.admit(method, Some(header), now).is_ok() {
            // Genuine (a seed): it must not pass twice.
            assert!(matches!(
                lease.admit(method, Some(header), now),
                Err(LeaseError::ProofReplayed { .. })
            ));
            *slot = None;
        }
    });
}

fn arrivals(method: &str, data: &[u8]) {
    let key = ProofKey::new(&[0x42; 32]);
    let mut window = ReplayWindow::default();
    let mut seen = HashSet::new();
    let mut highest = 0u64;
    let mut input = Cursor(data);
    while let Some(how) = input.byte() {
        let n = u64::from(input.u16());
        let seq = match how % 4 {
            0 => highest.saturating_add(n),
            1 => highest.saturating_sub(n),
            2 => n,
            _ => u64::MAX - n,
        };
        let proof = key.proof(seq, method);
        assert_eq!(key.check(&proof, method).ok(), Some(seq), "{proof}");
        assert!(key.check(&proof, UNDECLARED).is_err(), "{proof}");
        let expect =
            seq != 0 && !seen.contains(&seq) && highest.saturating_sub(seq) < ReplayWindow::SIZE;
        assert_eq!(
            window.accept(seq),
            expect,
            "seq {seq}, highest {highest}, seen before: {}",
            seen.contains(&seq)
        );
        if expect {
            seen.insert(seq);
            highest = highest.max(seq);
        }
    }
}

/// Genuine proofs for the seeds' lease, malformed ones, and arrival orders.
pub fn seeds() -> Vec<Vec<u8>> {
    let (core, _) = fixtures::handshake(fixtures::ed25519(), fixtures::start());
    let key = core.proof_key();
    let mut seeds = Vec::new();
    for (i, method) in DECLARED.iter().enumerate() {
        let selector = u8::try_from(i).expect("three methods");
        seeds.push([&[selector][..], key.proof(1, method).as_bytes()].concat());
        seeds.push([&[selector][..], key.proof(u64::MAX, method).as_bytes()].concat());
    }
    // Genuine for another method: a bad proof for this one.
    seeds.push([&[0u8][..], key.proof(7, DECLARED[1]).as_bytes()].concat());
    for bad in [
        "",
        "v1",
        "v1.1",
        "v1.1.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.0.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.18446744073709551616.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.01.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.1.AAAAAAAAAAAAAAAAAAAAAA.x",
        "v1.1.AAAAAAAAAAAAAAAAAAAAA=",
        "v2.1.AAAAAAAAAAAAAAAAAAAAAA",
    ] {
        seeds.push([&[0u8][..], bad.as_bytes()].concat());
    }
    // In order; out of order within the window; a jump past it; near u64::MAX.
    let arrivals: [&[(u8, u16)]; 4] = [
        &[(0, 1), (0, 1), (0, 1), (1, 1), (1, 0)],
        &[(2, 5), (2, 3), (2, 4), (2, 3), (0, 1023), (2, 6), (1, 1024)],
        &[(0, 1), (0, 2000), (1, 1500), (1, 1023), (1, 1024)],
        &[(3, 0), (3, 1), (3, 1024), (3, 0), (2, 0)],
    ];
    for list in arrivals {
        let mut seed = vec![0x80];
        for &(how, n) in list {
            seed.push(how);
            seed.extend_from_slice(&n.to_le_bytes());
        }
        seeds.push(seed);
    }
    seeds
}
