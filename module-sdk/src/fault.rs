//! Fault injection — **test only; never in anything shipped.**
//!
//! This module exists only in the test-only copy of the SDK
//! (`tests/faulty`, package `anima-faulty-fixtures`), whose build script
//! sets the `anima_test_faults` cfg for that package alone; the real
//! `anima-module-sdk` refuses to compile with it, and has no cargo feature
//! for it. Even in the copy nothing changes unless the module process runs
//! with [`FAULT_ENV`] (`ANIMA_TEST_FAULT`) set to one of the [`Fault`] names.
//! [`crate::ModuleServer::new`] (and so [`crate::launch()`]) reads the
//! variable, logs a `warn!` naming the fault, and refuses to start on an
//! unknown name.
//!
//! Each fault breaks exactly one ADR-0003 rule, in the one place the SDK
//! enforces it, the way a buggy module would:
//!
//! | `ANIMA_TEST_FAULT` | what the module does | breaks |
//! | --- | --- | --- |
//! | `linger` | Type I: after its last lease ends (and the expired grace), it neither runs the termination window nor exits; it waits for another lease | E5 |
//! | `unleased-exec` | the lease gate passes a capability call with no lease on its connection, or whose lease ended, to the handler (with no [`crate::LeaseContext`]) | Z2 |
//! | `shared-tenant` | [`crate::LeaseContext::with_state`] keeps one state for every lease, never deleted | S4, S9 |
//! | `second-core` | Type I/II: accepts leases from any Core, not only its bound one, and binds to none | E2, R2 |
//! | `ungated-streams` | the lease gate races only a call's response head: a stream's body goes on after its lease ends (the gate before issue 12) | Z1, E6, R6 |
//! | `user-lease` | a user identity (one its operators list lets in) may open a lease, as if it were a Core | T3 |
//! | `module-peer` | another module's identity may connect, call and open a lease, as if it were a Core | P6, T3 |
//! | `no-offer-deadline` | waits for the Core's offer forever instead of refusing after 5 s | A3 |
//! | `no-lease-exists` | grants an offer on a second control stream of a connection whose lease is live | A3 |
//! | `ended-lease-exists` | refuses `LEASE_EXISTS` an offer on a new control stream of a connection whose lease ended, as if that lease were live | A3 |
//! | `no-revoke-on-bad-proof` | refuses a call with a bad or replayed proof but leaves the lease open | A7 |
//! | `unknown-method-bare` | refuses an undeclared method `UNIMPLEMENTED` without the `UNKNOWN_METHOD` reason | I2 |
//!
//! The test-only copy of the SDK builds on the test-only copy of the protocol
//! crate (`tests/faulty-protocol`), whose faults ([`ProtocolFault`]: the
//! offer, control-token, renewal, grant, ALPN and proof checks) are named the
//! same way and break A3, A4, A6, A2 and T1.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use anima_protocol::fault::ProtocolFault;

use crate::error::SdkError;
use crate::leases::TenantMap;
use anima_protocol::contract::{Contract, ModuleType};

/// Whether `package` is the test-only copy of the SDK, the one crate allowed
/// to compile this module (checked at compile time in `lib.rs`).
pub(crate) const fn is_test_copy(package: &str) -> bool {
    anima_protocol::fault::same(package, "anima-faulty-fixtures")
}

/// The environment variable naming the fault to inject.
pub const FAULT_ENV: &str = "ANIMA_TEST_FAULT";

/// Defines [`Fault`] from its table: each SDK fault's variant, its name as
/// `ANIMA_TEST_FAULT` spells it, and the rows it breaks.
macro_rules! faults {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal breaks [$($row:literal),+], )*) => {
        /// A deliberate protocol violation (see the [module docs](self)).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Fault {
            $( $(#[$doc])* $variant, )*
            /// A check of the protocol crate removed (its test-only copy).
            Protocol(ProtocolFault),
        }

        impl Fault {
            /// The SDK's own faults, in table order.
            const OWN: &'static [Fault] = &[$(Fault::$variant,)*];

            /// The fault's name, as `ANIMA_TEST_FAULT` spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Fault::$variant => $name,)*
                    Fault::Protocol(p) => p.as_str(),
                }
            }

            /// The CONFORMANCE.md rows the fault breaks.
            pub fn breaks(self) -> &'static [&'static str] {
                match self {
                    $(Fault::$variant => &[$($row),+],)*
                    Fault::Protocol(p) => protocol_breaks(p),
                }
            }
        }
    };
}

faults! {
    /// `linger`: a Type I module does not exit after zero-lease (E5).
    Linger = "linger" breaks ["E5"],
    /// `unleased-exec`: handlers run without a valid lease (Z2).
    UnleasedExec = "unleased-exec" breaks ["Z2"],
    /// `shared-tenant`: one tenant state for all leases, never deleted (S4, S9).
    SharedTenant = "shared-tenant" breaks ["S4", "S9"],
    /// `second-core`: a Type I/II module accepts any Core (E2, R2).
    SecondCore = "second-core" breaks ["E2", "R2"],
    /// `ungated-streams`: a stream outlives its lease (Z1, E6, R6).
    UngatedStreams = "ungated-streams" breaks ["Z1", "E6", "R6"],
    /// `user-lease`: a user identity may open a lease (T3).
    UserLease = "user-lease" breaks ["T3"],
    /// `module-peer`: another module may connect and lease (P6, T3).
    ModulePeer = "module-peer" breaks ["P6", "T3"],
    /// `no-offer-deadline`: no deadline for the Core's offer (A3).
    NoOfferDeadline = "no-offer-deadline" breaks ["A3"],
    /// `no-lease-exists`: a second live lease on one connection (A3).
    NoLeaseExists = "no-lease-exists" breaks ["A3"],
    /// `ended-lease-exists`: an ended lease still blocks its connection (A3).
    EndedLeaseExists = "ended-lease-exists" breaks ["A3"],
    /// `no-revoke-on-bad-proof`: a bad proof leaves the lease open (A7).
    NoRevokeOnBadProof = "no-revoke-on-bad-proof" breaks ["A7"],
    /// `unknown-method-bare`: no `UNKNOWN_METHOD` reason (I2).
    UnknownMethodBare = "unknown-method-bare" breaks ["I2"],
}

/// The CONFORMANCE.md rows a fault of the protocol crate breaks.
fn protocol_breaks(fault: ProtocolFault) -> &'static [&'static str] {
    match fault {
        ProtocolFault::OfferSignature
        | ProtocolFault::OfferIdentities
        | ProtocolFault::OfferBinding
        | ProtocolFault::OfferIat
        | ProtocolFault::OfferTtl
        | ProtocolFault::OfferScope => &["A3"],
        ProtocolFault::ControlSignature
        | ProtocolFault::ControlLid
        | ProtocolFault::ControlSeq
        | ProtocolFault::ProofAnyMethod => &["A4"],
        ProtocolFault::RenewExtends => &["A6"],
        ProtocolFault::GrantExpIat => &["A2"],
        ProtocolFault::AlpnUnchecked => &["T1"],
    }
}

impl Fault {
    /// Every fault: the SDK's own, then the protocol crate's.
    pub const ALL: [Fault; Fault::OWN.len() + ProtocolFault::ALL.len()] = {
        let mut all = [Fault::Linger; Fault::OWN.len() + ProtocolFault::ALL.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = match i.checked_sub(Fault::OWN.len()) {
                None => Fault::OWN[i],
                Some(p) => Fault::Protocol(ProtocolFault::ALL[p]),
            };
            i += 1;
        }
        all
    };

    /// Whether the fault changes anything for a module of type `ty`.
    fn applies_to(self, ty: ModuleType) -> bool {
        match self {
            Fault::Linger => ty == ModuleType::Ephemeral,
            Fault::SecondCore => ty != ModuleType::ResidentShared,
            _ => true,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Fault {
    type Err = SdkError;

    fn from_str(s: &str) -> Result<Self, SdkError> {
        Fault::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Fault::ALL.iter().map(|f| f.as_str()).collect();
                SdkError::Launch(format!(
                    "{FAULT_ENV}={s:.64?} names no fault (known: {})",
                    known.join(", ")
                ))
            })
    }
}

/// The fault one module server runs with: none until [`Faults::load`].
#[derive(Default)]
pub(crate) struct Faults {
    active: OnceLock<Fault>,
    /// `shared-tenant`: the one tenant map every lease uses.
    shared_tenant: Arc<Mutex<TenantMap>>,
}

impl Faults {
    /// Reads [`FAULT_ENV`]: unset or empty changes nothing.
    pub(crate) fn load_env(&self, contract: &Contract) -> Result<(), SdkError> {
        let value = std::env::var(FAULT_ENV).ok();
        self.load(value.as_deref(), contract)
    }

    pub(crate) fn load(&self, value: Option<&str>, contract: &Contract) -> Result<(), SdkError> {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(());
        };
        let fault: Fault = value.parse()?;
        self.inject(fault, contract);
        Ok(())
    }

    pub(crate) fn inject(&self, fault: Fault, contract: &Contract) {
        let _ = self.active.set(fault);
        if let Fault::Protocol(p) = fault {
            anima_protocol::fault::inject(p);
        }
        let breaks = fault.breaks().join(", ");
        if fault.applies_to(contract.module_type) {
            tracing::warn!(
                fault = fault.as_str(),
                breaks,
                module = %contract.urn,
                "FAULT INJECTION ACTIVE ({FAULT_ENV}={fault}): this module deliberately breaks \
                 ADR-0003 ({breaks}); a test build for conformance tools; never deploy it"
            );
        } else {
            tracing::warn!(
                fault = fault.as_str(),
                module = %contract.urn,
                module_type = %contract.module_type,
                "FAULT INJECTION requested ({FAULT_ENV}={fault}) but it does not apply to this \
                 module type; behaving normally"
            );
        }
    }

    /// Whether `fault` is injected.
    pub(crate) fn is(&self, fault: Fault) -> bool {
        self.active.get() == Some(&fault)
    }

    /// `shared-tenant`: the map to use instead of each lease's own.
    pub(crate) fn shared_tenant(&self) -> Option<Arc<Mutex<TenantMap>>> {
        self.is(Fault::SharedTenant)
            .then(|| self.shared_tenant.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(ty: &str) -> Contract {
        Contract::from_toml(&format!(
            "urn = \"urn:anima:module:m\"\nversion = \"1\"\nmethods = [\"/m.M/X\"]\nmax_lease = \"30s\"\n{ty}"
        ))
        .unwrap()
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for fault in Fault::ALL {
            assert_eq!(fault.as_str().parse::<Fault>().unwrap(), fault);
        }
        let protocol: Vec<ProtocolFault> = Fault::ALL
            .iter()
            .filter_map(|f| match f {
                Fault::Protocol(p) => Some(*p),
                _ => None,
            })
            .collect();
        assert_eq!(
            protocol,
            ProtocolFault::ALL,
            "every protocol fault, in order"
        );
        let err = "lingr".parse::<Fault>().unwrap_err().to_string();
        assert!(
            err.contains("ANIMA_TEST_FAULT") && err.contains("linger"),
            "{err}"
        );
    }

    #[test]
    fn unset_or_empty_injects_nothing() {
        let c = contract("");
        for value in [None, Some(""), Some("  ")] {
            let faults = Faults::default();
            faults.load(value, &c).unwrap();
            assert!(Fault::ALL.iter().all(|f| !faults.is(*f)));
            assert!(faults.shared_tenant().is_none());
        }
        let faults = Faults::default();
        assert!(faults.load(Some("nope"), &c).is_err());
        faults.load(Some("shared-tenant"), &c).unwrap();
        assert!(faults.is(Fault::SharedTenant) && !faults.is(Fault::Linger));
        assert!(faults.shared_tenant().is_some());
    }
}
