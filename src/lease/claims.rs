//! The claims inside lease tokens (see PROTOCOL.md for the normative text).

use serde::{Deserialize, Deserializer, Serialize};

use super::error::LeaseError;

/// `typ` of the Core's lease (the offer).
pub const TYP_OFFER: &str = "anima-offer+v1";
/// `typ` of the module's lease (the grant).
pub const TYP_GRANT: &str = "anima-grant+v1";
/// `typ` of a renewal request.
pub const TYP_RENEW: &str = "anima-renew+v1";
/// `typ` of a renewal answer.
pub const TYP_RENEWED: &str = "anima-renewed+v1";
/// `typ` of a scope change request.
pub const TYP_RESCOPE: &str = "anima-rescope+v1";
/// `typ` of a scope change answer.
pub const TYP_RESCOPED: &str = "anima-rescoped+v1";
/// `typ` of a revocation.
pub const TYP_REVOKE: &str = "anima-revoke+v1";

/// The revocation conditions every v1 lease carries.
pub const REVOCATION_CONDITIONS: [&str; 4] = [
    "explicit-revocation",
    "explicit-refusal",
    "connection-loss",
    "certificate-expiry",
];

/// An optional claim is absent or holds a value of its type; `null` is not
/// a value (PROTOCOL.md §3).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Certificate binding (after RFC 8705 `x5t#S256`): base64url SHA-256 of the
/// issuer's and of the audience's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// The signer's certificate.
    #[serde(rename = "iss_x5t#S256")]
    pub issuer: String,
    /// The receiver's certificate.
    #[serde(rename = "aud_x5t#S256")]
    pub audience: String,
}

/// Declares a claims struct. A field marked `#[optional]` is an optional
/// claim: absent when `None`, and when present a value of its type, never
/// `null` (PROTOCOL.md §3).
macro_rules! claims {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $($fields:tt)* }
    ) => {
        claims!(@fields [$(#[$meta])* pub struct $name] [] $($fields)*);
    };
    (
        @fields $head:tt [$($done:tt)*]
        $(#[doc = $doc:literal])* #[optional] pub $field:ident: $ty:ty, $($rest:tt)*
    ) => {
        claims!(@fields $head [
            $($done)*
            $(#[doc = $doc])*
            #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
            pub $field: $ty,
        ] $($rest)*);
    };
    (
        @fields $head:tt [$($done:tt)*]
        $(#[$attr:meta])* pub $field:ident: $ty:ty, $($rest:tt)*
    ) => {
        claims!(@fields $head [$($done)* $(#[$attr])* pub $field: $ty,] $($rest)*);
    };
    (@fields [$($head:tt)*] [$($done:tt)*]) => {
        $($head)* { $($done)* }
    };
}

claims! {
    /// A lease, as the Core offers it or the module grants it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LeaseClaims {
        /// [`TYP_OFFER`] or [`TYP_GRANT`].
        pub typ: String,
        /// Lease id: base64url of 16 random bytes.
        pub lid: String,
        /// Consumer: the Core's URN.
        pub con: String,
        /// Provider: the module's URN.
        pub pro: String,
        /// Permitted methods.
        pub scope: Vec<String>,
        /// Time to live in milliseconds, counted by each side's monotonic clock
        /// from the moment it sent (Core) or received (module) the offer.
        pub ttl_ms: u64,
        /// Issued at (Unix seconds; audit only).
        pub iat: u64,
        /// Expires (Unix seconds; audit and sanity bound only).
        pub exp: u64,
        /// Certificate binding.
        pub cnf: Confirmation,
        /// The signer's ephemeral X25519 public key (base64url, 32 bytes).
        pub kx: String,
        /// Grant only: base64url SHA-256 of the offer's JWS text.
        #[optional]
        pub offer: Option<String>,
        /// Revocation conditions.
        pub rev: Vec<String>,
    }
}

claims! {
    /// A step on the control stream after the handshake.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ControlClaims {
        /// One of the control `TYP_*` values.
        pub typ: String,
        /// The lease id.
        pub lid: String,
        /// The sender's control sequence number (1, 2, …; strictly increasing).
        pub seq: u64,
        /// Issued at (Unix seconds; audit only).
        pub iat: u64,
        /// Answers only: the `seq` of the request answered.
        #[optional]
        pub re: Option<u64>,
        /// Renew: requested TTL. Renewed/rescoped: granted (remaining) TTL.
        #[optional]
        pub ttl_ms: Option<u64>,
        /// Answers: the granted expiry (Unix seconds; audit).
        #[optional]
        pub exp: Option<u64>,
        /// Rescope/rescoped: the scope.
        #[optional]
        pub scope: Option<Vec<String>>,
        /// Revoke: the reason (a wire reason).
        #[optional]
        pub reason: Option<String>,
        /// Revoke: human-readable detail.
        #[optional]
        pub detail: Option<String>,
    }
}

impl LeaseClaims {
    /// Checks the claim set of a lease token of type `typ` (PROTOCOL.md §3):
    /// the `typ` itself, `offer` present in a grant and absent from an offer,
    /// and `rev` exactly [`REVOCATION_CONDITIONS`], in that order.
    pub(crate) fn check_claim_set(&self, typ: &str) -> Result<(), LeaseError> {
        if self.typ != typ {
            return Err(LeaseError::BadToken(format!(
                "expected a {typ} token, got {:.40?}",
                self.typ
            )));
        }
        if self.offer.is_some() != (typ == TYP_GRANT) {
            return Err(LeaseError::BadToken(format!(
                "a {typ} token {} `offer`",
                if typ == TYP_GRANT {
                    "needs"
                } else {
                    "carries no"
                }
            )));
        }
        if self.rev != REVOCATION_CONDITIONS {
            return Err(LeaseError::BadToken(format!(
                "`rev` must be exactly {REVOCATION_CONDITIONS:?}"
            )));
        }
        Ok(())
    }
}

impl ControlClaims {
    /// A `typ` step for lease `lid` with sequence number `seq`, issued at
    /// `iat`, carrying none of the optional claims.
    pub(crate) fn bare(typ: &str, lid: String, seq: u64, iat: u64) -> Self {
        ControlClaims {
            typ: typ.into(),
            lid,
            seq,
            iat,
            re: None,
            ttl_ms: None,
            exp: None,
            scope: None,
            reason: None,
            detail: None,
        }
    }

    /// `Ok` if this is a `typ` step; otherwise a protocol violation: the
    /// step is not the `what` expected.
    pub(crate) fn expect_typ(&self, typ: &str, what: &str) -> Result<(), LeaseError> {
        if self.typ == typ {
            Ok(())
        } else {
            Err(LeaseError::Protocol(format!("not a {what}")))
        }
    }

    /// Checks that a control token carries exactly the claims of its `typ`
    /// (PROTOCOL.md §3): besides `typ`, `lid`, `seq` and `iat`, each of
    /// `re`, `ttl_ms`, `exp`, `scope`, `reason` and `detail` is required by
    /// some types and refused in the others; an unknown `typ` is refused.
    pub(crate) fn check_claim_set(&self) -> Result<(), LeaseError> {
        // Whether the type carries `re`, `ttl_ms`, `exp`, `scope`, and
        // `reason` with `detail`.
        let [re, ttl_ms, exp, scope, revoke] = match self.typ.as_str() {
            TYP_RENEW => [false, true, false, false, false],
            TYP_RENEWED => [true, true, true, false, false],
            TYP_RESCOPE => [false, false, false, true, false],
            TYP_RESCOPED => [true, true, true, true, false],
            TYP_REVOKE => [false, false, false, false, true],
            other => {
                return Err(LeaseError::BadToken(format!(
                    "{other:.40?} is not a control step type"
                )));
            }
        };
        let claims = [
            ("re", self.re.is_some(), re),
            ("ttl_ms", self.ttl_ms.is_some(), ttl_ms),
            ("exp", self.exp.is_some(), exp),
            ("scope", self.scope.is_some(), scope),
            ("reason", self.reason.is_some(), revoke),
            ("detail", self.detail.is_some(), revoke),
        ];
        for (name, present, wanted) in claims {
            if present != wanted {
                return Err(LeaseError::BadToken(format!(
                    "a {} token {} `{name}`",
                    self.typ,
                    if wanted { "needs" } else { "carries no" }
                )));
            }
        }
        Ok(())
    }
}
