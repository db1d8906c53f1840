//! Identities: the URNs that name Cores, modules and users.
//!
//! Every party in Anima is named by exactly one URN carried in the URI subject
//! alternative name of its certificate:
//!
//! ```text
//! urn:anima:core:NAME      a Core instance
//! urn:anima:module:NAME    a module
//! urn:anima:user:NAME      an operator or application
//! ```
//!
//! `NAME` is 1 to 63 characters of lowercase ASCII letters, digits, `-`, `_` and
//! `.`, starting with a letter or digit. URNs are parsed once, at the edge
//! ([`Urn::parse`]), and passed around as [`Urn`] afterwards.
//!
//! ```
//! use anima_protocol::{Urn, UrnKind};
//!
//! let urn: Urn = "urn:anima:module:echo".parse()?;
//! assert_eq!(urn.kind(), UrnKind::Module);
//! assert_eq!(urn.name(), "echo");
//! assert!("urn:anima:module:Echo".parse::<Urn>().is_err());
//! # Ok::<(), anima_protocol::IdentityError>(())
//! ```

use std::fmt;
use std::str::FromStr;

/// The longest allowed `NAME` part of a URN.
pub const MAX_NAME_LEN: usize = 63;

const PREFIX: &str = "urn:anima:";

/// What kind of party a URN names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UrnKind {
    /// A Core instance (`urn:anima:core:…`).
    Core,
    /// A module (`urn:anima:module:…`).
    Module,
    /// An operator or application (`urn:anima:user:…`).
    User,
}

impl UrnKind {
    /// All kinds, in a stable order.
    pub const ALL: [UrnKind; 3] = [UrnKind::Core, UrnKind::Module, UrnKind::User];
}

crate::str_vocabulary! {
    /// The kind's word in a URN (`core`, `module`, `user`).
    pub fn UrnKind::as_str {
        Core => "core",
        Module => "module",
        User => "user",
    }
    fn from_str(s) -> Result<Self, IdentityError> else {
        IdentityError::UnknownKind(s.to_owned())
    }
}

/// A parsed, valid Anima identity URN.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Urn {
    full: String,
    kind: UrnKind,
}

impl Urn {
    /// Parses `urn:anima:KIND:NAME`.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let rest = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| IdentityError::NotAnAnimaUrn(truncate(s)))?;
        let (kind, name) = rest
            .split_once(':')
            .ok_or_else(|| IdentityError::NotAnAnimaUrn(truncate(s)))?;
        let kind: UrnKind = kind.parse()?;
        Self::new(kind, name)
    }

    /// Builds the URN of `kind` with `name`, checking the name.
    pub fn new(kind: UrnKind, name: &str) -> Result<Self, IdentityError> {
        validate_name(name)?;
        Ok(Urn {
            full: format!("{PREFIX}{kind}:{name}"),
            kind,
        })
    }

    /// The kind of party this URN names.
    pub fn kind(&self) -> UrnKind {
        self.kind
    }

    /// The `NAME` part.
    pub fn name(&self) -> &str {
        // The constructor wrote `PREFIX kind ':' name`.
        &self.full[PREFIX.len() + self.kind.as_str().len() + 1..]
    }

    /// The whole URN as text.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for Urn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Urn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Urn({})", self.full)
    }
}

impl FromStr for Urn {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Urn::parse(s)
    }
}

/// Checks the `NAME` part of a URN.
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let bad = |why: &'static str| IdentityError::InvalidName {
        name: truncate(name),
        why,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("it is longer than 63 characters"));
    }
    let mut chars = name.chars();
    if !chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(bad("it must start with a lowercase letter or a digit"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad(
            "only lowercase letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    Ok(())
}

/// Keeps error messages bounded when the input came from a peer.
fn truncate(s: &str) -> String {
    const MAX: usize = 100;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Why a string is not a valid identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The text does not start with `urn:anima:KIND:`.
    #[error("{0:?} is not an Anima URN (expected urn:anima:core|module|user:NAME)")]
    NotAnAnimaUrn(String),
    /// The kind is not `core`, `module` or `user`.
    #[error("unknown identity kind {0:?} (expected core, module or user)")]
    UnknownKind(String),
    /// The name part breaks the naming rules.
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The offending name (truncated).
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        for kind in UrnKind::ALL {
            let text = format!("urn:anima:{kind}:a-b_c.9");
            let urn = Urn::parse(&text).unwrap();
            assert_eq!(urn.kind(), kind);
            assert_eq!(urn.name(), "a-b_c.9");
            assert_eq!(urn.to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "urn:anima:",
            "urn:anima:module",
            "urn:anima:module:",
            "urn:anima:robot:x",
            "urn:other:module:x",
            "urn:anima:module:X",
            "urn:anima:module:-x",
            "urn:anima:module:a b",
            "urn:anima:module:a:b",
            "urn:anima:module:é",
        ] {
            assert!(Urn::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("urn:anima:module:{}", "a".repeat(64));
        assert!(Urn::parse(&long).is_err());
        let ok = format!("urn:anima:module:{}", "a".repeat(63));
        assert!(Urn::parse(&ok).is_ok());
    }

    #[test]
    fn error_messages_are_bounded() {
        let huge = "x".repeat(10_000);
        let msg = Urn::parse(&huge).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }
}
