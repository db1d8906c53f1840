//! Interfaces (Partenza §5.1, §5.3): named, semantically versioned contracts
//! that modules provide and require.
//!
//! - [`InterfaceName`]: `namespace/name`, e.g. `anima.sample/kv` or
//!   `network/basic`;
//! - [`InterfaceVersion`]: a semantic version (`1.0` is read as `1.0.0`);
//! - [`VersionRange`]: a requirement such as `>=1.0`, `^1.2` or `1.x`
//!   (Cargo's syntax, semver 2.0 precedence);
//! - [`Provided`] and [`Required`]: what a module's contract declares
//!   (`provides`, `requires` in `module.toml`, PROTOCOL.md §9);
//! - [`definition`]: an interface's own file, `interface.toml`: its methods,
//!   schemas, lifecycle expectations, timeouts and retry policy.
//!
//! ```
//! use anima_protocol::interface::{Provided, Required};
//!
//! let kv = Provided::new("anima.sample/kv", "1.2")?;
//! assert_eq!(kv.to_string(), "anima.sample/kv 1.2.0");
//! assert!(Required::new("anima.sample/kv", ">=1.0")?.accepts(&kv));
//! assert!(!Required::new("anima.sample/kv", "^2")?.accepts(&kv));
//! assert!(!Required::new("network/basic", ">=1.0")?.accepts(&kv));
//! # Ok::<(), anima_protocol::interface::InterfaceError>(())
//! ```

pub mod definition;
pub mod sidecar;

use std::fmt;
use std::str::FromStr;

/// The longest interface name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Why an interface name, version or range is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InterfaceError {
    /// Not `namespace/name` with each part 1–63 of `[a-z0-9._-]` starting
    /// with a letter or digit.
    #[error(
        "interface name {0:?} is not namespace/name (each part 1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit)"
    )]
    Name(String),
    /// Not a semantic version.
    #[error("interface version {text:?} is not a semantic version such as 1.0.0: {why}")]
    Version {
        /// What was given.
        text: String,
        /// Why it does not parse.
        why: String,
    },
    /// Not a version requirement.
    #[error("version range {text:?} is not a requirement such as >=1.0 or ^1.2: {why}")]
    Range {
        /// What was given.
        text: String,
        /// Why it does not parse.
        why: String,
    },
}

/// An interface's name: `namespace/name`, each part 1–63 characters of
/// `[a-z0-9._-]` starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_part(part: &str) -> bool {
    (1..=63).contains(&part.len())
        && part
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && part.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

impl FromStr for InterfaceName {
    type Err = InterfaceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((namespace, name))
                if s.len() <= MAX_NAME_LEN && valid_part(namespace) && valid_part(name) =>
            {
                Ok(InterfaceName(s.to_owned()))
            }
            _ => Err(InterfaceError::Name(
                s.chars().take(MAX_NAME_LEN + 8).collect(),
            )),
        }
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A semantic version of an interface. `MAJOR.MINOR` is read as
/// `MAJOR.MINOR.0`; build metadata (`+…`) is refused, since it does not
/// take part in precedence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceVersion(semver::Version);

impl InterfaceVersion {
    /// The semver value.
    pub fn semver(&self) -> &semver::Version {
        &self.0
    }
}

impl FromStr for InterfaceVersion {
    type Err = InterfaceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refuse = |why: String| InterfaceError::Version {
            text: s.chars().take(64).collect(),
            why,
        };
        // `1.0` (and `1.0-beta`) as the spec writes them: a patch of 0.
        let core_end = s.find(['-', '+']).unwrap_or(s.len());
        let full = if s[..core_end].matches('.').count() == 1 {
            format!("{}.0{}", &s[..core_end], &s[core_end..])
        } else {
            s.to_owned()
        };
        let version = semver::Version::parse(&full).map_err(|e| refuse(e.to_string()))?;
        if !version.build.is_empty() {
            return Err(refuse("build metadata (+…) is not allowed".into()));
        }
        Ok(InterfaceVersion(version))
    }
}

impl fmt::Display for InterfaceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A range of interface versions a module accepts: Cargo's requirement
/// syntax (`>=1.0`, `^1.2`, `~1.2.3`, `1.x`, `>=1.2, <2`). A bare version
/// (`1.2`) means `^1.2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionRange(semver::VersionReq);

impl VersionRange {
    /// Every version (`*`).
    pub fn any() -> Self {
        VersionRange(semver::VersionReq::STAR)
    }

    /// Whether `version` is in the range.
    pub fn matches(&self, version: &InterfaceVersion) -> bool {
        self.0.matches(&version.0)
    }
}

impl FromStr for VersionRange {
    type Err = InterfaceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        semver::VersionReq::parse(s)
            .map(VersionRange)
            .map_err(|e| InterfaceError::Range {
                text: s.chars().take(64).collect(),
                why: e.to_string(),
            })
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An interface a module provides, at one version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Provided {
    /// The interface.
    pub interface: InterfaceName,
    /// The version provided.
    pub version: InterfaceVersion,
}

impl Provided {
    /// Parses a name and a version.
    pub fn new(interface: &str, version: &str) -> Result<Self, InterfaceError> {
        Ok(Provided {
            interface: interface.parse()?,
            version: version.parse()?,
        })
    }
}

impl fmt::Display for Provided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.interface, self.version)
    }
}

/// An interface a module requires, in a range of versions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Required {
    /// The interface.
    pub interface: InterfaceName,
    /// The versions accepted.
    pub range: VersionRange,
}

impl Required {
    /// Parses a name and a range.
    pub fn new(interface: &str, range: &str) -> Result<Self, InterfaceError> {
        Ok(Required {
            interface: interface.parse()?,
            range: range.parse()?,
        })
    }

    /// Whether `provided` satisfies this requirement: the same interface,
    /// at a version in the range.
    pub fn accepts(&self, provided: &Provided) -> bool {
        self.interface == provided.interface && self.range.matches(&provided.version)
    }
}

impl fmt::Display for Required {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.interface, self.range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_names_are_namespace_slash_name_of_a_small_alphabet() {
        for good in ["network/basic", "anima.sample/kv", "a/b", "x-1/y_2.z"] {
            assert_eq!(good.parse::<InterfaceName>().unwrap().as_str(), good);
        }
        let long = format!("{}/{}", "a".repeat(63), "b".repeat(63));
        assert!(long.parse::<InterfaceName>().is_ok());
        for bad in [
            "",
            "basic",
            "network/",
            "/basic",
            "a/b/c",
            "Network/basic",
            "network/ba sic",
            "-net/basic",
            "net/.basic",
            &format!("{}/b", "a".repeat(64)),
        ] {
            assert!(
                matches!(bad.parse::<InterfaceName>(), Err(InterfaceError::Name(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn p1_versions_are_semantic_and_two_parts_mean_a_zero_patch() {
        let v: InterfaceVersion = "1.0".parse().unwrap();
        assert_eq!(v.to_string(), "1.0.0");
        assert_eq!(
            "1.2-beta.1"
                .parse::<InterfaceVersion>()
                .unwrap()
                .to_string(),
            "1.2.0-beta.1"
        );
        assert_eq!(
            "2.3.4".parse::<InterfaceVersion>().unwrap().to_string(),
            "2.3.4"
        );
        for bad in ["", "1", "v1.0", "1.0.0.0", "1.0.0+build", "01.0.0", "x.y"] {
            assert!(bad.parse::<InterfaceVersion>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn p1_a_requirement_is_a_range_matched_by_semver_precedence() {
        let at = |v: &str| Provided::new("network/basic", v).unwrap();
        let req = |r: &str| Required::new("network/basic", r).unwrap();
        assert!(req(">=1.0").accepts(&at("1.0")));
        assert!(req(">=1.0").accepts(&at("3.1.4")));
        assert!(!req(">=1.0").accepts(&at("0.9.9")));
        assert!(req("^1.2").accepts(&at("1.9.0")));
        assert!(!req("^1.2").accepts(&at("2.0.0")));
        assert!(req("1.x").accepts(&at("1.4.0")));
        assert!(req(">=1.2, <2").accepts(&at("1.2.0")));
        assert!(
            !req(">=1.0").accepts(&at("1.1.0-rc.1")),
            "a pre-release only when asked for"
        );
        for bad in ["", ">=", "=>1.0", "1.0 || 2.0", ">=one"] {
            assert!(bad.parse::<VersionRange>().is_err(), "{bad:?}");
        }
    }
}
