//! What the harnesses share: a Core and a module with real keys, a fixed
//! wall clock, fixed handshake randomness (so an honest handshake, and every
//! token in it, is the same in every run and seeds can carry genuine tokens),
//! and the hostile-but-authenticated peer, who signs whatever claims it likes
//! with its own certificate key; and near misses of a text seed.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anima_protocol::lease::{
    self, Entropy, GrantPolicy, JWS_HEADER, Lease, LeaseError, LeaseRequest, LeaseSigner,
    PeerBinding, PendingLease, Scope, doc_support,
};
use anima_protocol::{Fingerprint, Urn};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::Signer as _;
use zeroize::Zeroizing;

/// The wall clock every harness runs at (Unix seconds): tokens in seeds are
/// issued at this time, so their `iat` passes the skew check.
pub const WALL_SECS: u64 = 1_800_000_000;

/// The Core's Ed25519 seed in [`doc_support::pair`].
pub const CORE_SEED: [u8; 32] = [1; 32];
/// The module's Ed25519 seed in [`doc_support::pair`].
pub const MODULE_SEED: [u8; 32] = [2; 32];

/// The lease id of every honest handshake here.
pub const LEASE_ID: [u8; 16] = [0x5a; 16];
/// The Core's ephemeral X25519 secret.
pub const CORE_KX: [u8; 32] = [0x33; 32];
/// The module's ephemeral X25519 secret.
pub const MODULE_KX: [u8; 32] = [0x44; 32];

/// The methods the module's contract declares.
pub const DECLARED: [&str; 3] = [
    "/anima.fuzz.v1.Echo/Say",
    "/anima.fuzz.v1.Echo/Shout",
    "/anima.fuzz.v1.Admin/Reset",
];
/// A well-formed method the contract does not declare.
pub const UNDECLARED: &str = "/anima.fuzz.v1.Admin/Wipe";

/// The contract's `max_lease`.
pub const MAX_TTL: Duration = Duration::from_secs(5);
/// The lease TTL the Core asks for (at opening and at each renewal).
pub const REQUEST_TTL: Duration = Duration::from_secs(10);

/// The fixed wall clock.
pub fn wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(WALL_SECS)
}

/// The monotonic instant harnesses start their clocks from.
pub fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// The declared methods as a scope.
pub fn declared() -> Scope {
    Scope::new(DECLARED).expect("fixed, valid methods")
}

/// The module's grant policy.
pub fn policy() -> GrantPolicy {
    GrantPolicy {
        declared: declared(),
        max_ttl: MAX_TTL,
    }
}

/// The Core's lease request: every declared method, [`REQUEST_TTL`].
pub fn request() -> LeaseRequest {
    LeaseRequest {
        scope: declared(),
        ttl: REQUEST_TTL,
    }
}

/// Handshake randomness: [`LEASE_ID`] and `kx`.
pub fn entropy(kx: [u8; 32]) -> Entropy {
    Entropy {
        lease_id: LEASE_ID,
        kx_secret: Zeroizing::new(kx),
    }
}

/// A Core and a module: their signers and what each sees of the other.
pub struct Parties {
    /// The Core's signer.
    pub core: LeaseSigner,
    /// The module's signer.
    pub module: LeaseSigner,
    /// The module, as the Core's connection shows it.
    pub core_sees: PeerBinding,
    /// The Core, as the module's connection shows it.
    pub module_sees: PeerBinding,
}

/// Ed25519 certificate keys (EdDSA tokens), from [`doc_support::pair`]:
/// seeds [`CORE_SEED`] and [`MODULE_SEED`].
pub fn ed25519() -> &'static Parties {
    static PARTIES: OnceLock<Parties> = OnceLock::new();
    PARTIES.get_or_init(|| {
        let (core, module, core_sees, module_sees) = doc_support::pair();
        Parties {
            core,
            module,
            core_sees,
            module_sees,
        }
    })
}

/// P-256 certificate keys (ES256 tokens), fresh per process.
pub fn p256() -> &'static Parties {
    static PARTIES: OnceLock<Parties> = OnceLock::new();
    PARTIES.get_or_init(|| {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let signer = |urn: &str, fp: u8| {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("P-256 key generation");
            LeaseSigner::from_p256_pkcs8(
                pkcs8.as_ref(),
                urn.parse::<Urn>().expect("valid urn"),
                Fingerprint([fp; 32]),
            )
            .expect("a generated P-256 key")
        };
        let core = signer("urn:anima:core:dev", 11);
        let module = signer("urn:anima:module:echo", 22);
        let connection = ed25519().core_sees.connection;
        let sees = |s: &LeaseSigner| PeerBinding {
            urn: s.urn().clone(),
            fingerprint: s.fingerprint(),
            key: s.verifying_key(),
            not_after: None,
            connection,
        };
        Parties {
            core_sees: sees(&module),
            module_sees: sees(&core),
            core,
            module,
        }
    })
}

/// The Core's offer (the same token every time for Ed25519 parties).
pub fn offer(p: &Parties, now: Instant) -> (String, PendingLease) {
    lease::offer(
        &p.core,
        &p.core_sees,
        request(),
        entropy(CORE_KX),
        now,
        wall(),
    )
    .expect("an honest offer")
}

/// The module's answer to `offer`.
pub fn grant(p: &Parties, offer: &str, now: Instant) -> Result<(String, Lease), LeaseError> {
    lease::grant(
        &p.module,
        &p.module_sees,
        offer,
        &policy(),
        entropy(MODULE_KX),
        now,
        wall(),
    )
}

/// [`handshake`] of the Ed25519 parties at [`start`], done once per
/// process: every call returns a fresh copy of that pair (`Lease` is `Clone`
/// in fuzz builds only), so an input pays for no signature it did not send.
/// (Outside fuzz builds, as under `cargo test`, it runs the handshake.)
pub fn ed25519_leases() -> (Lease, Lease) {
    #[cfg(fuzzing)]
    {
        static PAIR: OnceLock<(Lease, Lease)> = OnceLock::new();
        PAIR.get_or_init(|| handshake(ed25519(), start())).clone()
    }
    #[cfg(not(fuzzing))]
    handshake(ed25519(), start())
}

/// An honest handshake at `now`: the Core's copy of the lease, then the
/// module's.
pub fn handshake(p: &Parties, now: Instant) -> (Lease, Lease) {
    let (offer, pending) = offer(p, now);
    let (grant, module) = grant(p, &offer, now).expect("an honest grant");
    let core = pending
        .accept(&p.core, &grant, wall())
        .expect("an honest grant is accepted");
    (core, module)
}

/// A JWS with any payload bytes, signed with the Ed25519 key of `seed`: what
/// a peer holding that certificate key can send.
pub fn sign_as(seed: &[u8; 32], payload: &[u8]) -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(seed);
    let mut token = B64.encode(JWS_HEADER);
    token.push('.');
    B64.encode_string(payload, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    B64.encode_string(signature.to_bytes(), &mut token);
    token
}

/// The decoded payload (the claims JSON) of a compact JWS.
pub fn payload(token: &str) -> Vec<u8> {
    let middle = token.split('.').nth(1).expect("a compact JWS");
    B64.decode(middle).expect("base64url claims")
}

/// Base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// A little-endian cursor over fuzz input.
pub struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    /// The next byte.
    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// The next two bytes, little-endian (missing bytes are zero).
    pub fn u16(&mut self) -> u16 {
        u16::from(self.byte().unwrap_or(0)) | (u16::from(self.byte().unwrap_or(0)) << 8)
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// Appends `bytes` to `out` as a length-prefixed item (`u16` LE length).
pub fn push_item(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("a seed item under 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Near misses of a seed: `base` with each edit made on its own, every
/// `from` in it replaced by `to`.
pub fn near_misses(base: &str, edits: &[(&str, &str)]) -> Vec<String> {
    edits
        .iter()
        .map(|(from, to)| base.replace(from, to))
        .collect()
}
