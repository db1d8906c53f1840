//! The Anima protocol crate: what a Core and its modules share.
//!
//! - [`pb`]: the generated gRPC code for `proto/anima/v1`.
//! - [`identity`]: the URNs that name Cores, modules and users.
//! - [`contract`]: the module contract (`module.toml`) and module types.
//! - [`interface`]: interfaces modules provide and require, and their
//!   definition files.
//! - [`launch`]: the launch protocol (`ANIMA_*` variables, the ready line).
//! - [`lease`]: the lease format, handshake, per-call proofs and control
//!   steps — pure logic with time passed in.
//! - [`control`]: the Core side of the handshake on the control stream —
//!   the one driver everyone uses; [`clock`]: where it takes time from.
//! - [`transport`]: gRPC over mutually authenticated TLS 1.3 — the one place
//!   that builds TLS.
//!
//! ```
//! use anima_protocol::{PeerPolicy, Urn, UrnKind};
//!
//! let core: Urn = "urn:anima:core:dev".parse()?;
//! assert!(PeerPolicy::kind(UrnKind::Core).check(&core).is_ok());
//! assert!(PeerPolicy::kind(UrnKind::Module).check(&core).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Functions stay under 80 lines (.clippy.toml); tests are exempt.
#![cfg_attr(test, allow(clippy::too_many_lines))]

// `fault_on!(Name)`: whether a test-only fault is on. Outside the test-only
// copy of this crate (`tests/faulty-protocol`) it is the constant `false`.
#[cfg(anima_test_faults)]
macro_rules! fault_on {
    ($fault:ident) => {
        crate::fault::on(crate::fault::ProtocolFault::$fault)
    };
}
#[cfg(not(anima_test_faults))]
macro_rules! fault_on {
    ($fault:ident) => {
        false
    };
}

/// Gives a fieldless enum its vocabulary of words: `as_str` (each variant's
/// word, with the doc and visibility given), [`Display`](std::fmt::Display)
/// writing that word and, when a `from_str` line follows,
/// [`FromStr`](std::str::FromStr) accepting exactly those words back and
/// refusing any other with the error the `else` block builds from it.
///
/// ```
/// #[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// enum Light {
///     Red,
///     Green,
/// }
///
/// anima_protocol::str_vocabulary! {
///     /// The light's word.
///     pub fn Light::as_str {
///         Red => "red",
///         Green => "green",
///     }
///     /// Parses `red` or `green`.
///     fn from_str(s) -> Result<Self, String> else {
///         format!("no light {s:?}")
///     }
/// }
///
/// assert_eq!(Light::Red.as_str(), "red");
/// assert_eq!(Light::Green.to_string(), "green");
/// assert_eq!("red".parse::<Light>(), Ok(Light::Red));
/// assert_eq!("Red".parse::<Light>(), Err("no light \"Red\"".to_owned()));
/// ```
#[macro_export]
macro_rules! str_vocabulary {
    (
        $(#[$as_str_attr:meta])*
        $vis:vis fn $name:ident::as_str {
            $($variant:ident => $word:literal),+ $(,)?
        }
        $(#[$from_str_attr:meta])*
        fn from_str($s:ident) -> Result<Self, $err:ty> else $refuse:block
    ) => {
        $crate::str_vocabulary! {
            $(#[$as_str_attr])*
            $vis fn $name::as_str {
                $($variant => $word),+
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $err;

            $(#[$from_str_attr])*
            fn from_str($s: &str) -> ::std::result::Result<Self, Self::Err> {
                match $s {
                    $($word => Ok($name::$variant),)+
                    _ => Err($refuse),
                }
            }
        }
    };
    (
        $(#[$as_str_attr:meta])*
        $vis:vis fn $name:ident::as_str {
            $($variant:ident => $word:literal),+ $(,)?
        }
    ) => {
        impl $name {
            $(#[$as_str_attr])*
            $vis const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(anima_test_faults)]
pub mod fault;
#[cfg(anima_test_faults)]
const _: () = assert!(
    fault::is_test_copy(env!("CARGO_PKG_NAME")),
    "the anima_test_faults cfg is for the test-only copy of this crate \
     (tests/faulty-protocol); anima-protocol itself never compiles fault hooks"
);
pub mod clock;
pub mod contract;
pub mod control;
pub mod hex;
pub mod identity;
pub mod interface;
pub mod launch;
pub mod lease;
pub mod rcs;
pub mod trace;
pub mod transport;

/// Generated protobuf and gRPC code for `proto/anima/v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("anima.v1");

    /// The encoded `google.protobuf.FileDescriptorSet` of `proto/anima/v1`
    /// (lease control, module admin, Core admin, the conformance probe), for
    /// tools that list a service's methods from its descriptors — the module
    /// SDK checks a module serving `anima.v1.Probe` against its contract with
    /// it.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/anima_v1_descriptor.bin"));
}

pub use clock::{Clock, SystemClock};
pub use contract::{Contract, ContractError, InitMode, ModuleType};
pub use identity::{IdentityError, Urn, UrnKind};
pub use transport::{
    ClientTls, Connection, ConnectionId, Fingerprint, PeerInfo, PeerPolicy, Refusal, RefusalCount,
    RefusalReason, ServerTls, TlsConn, TlsIdentity, TransportError, TrustRoot,
};
