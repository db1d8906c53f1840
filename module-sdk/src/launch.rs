//! The launch protocol: how a started module learns who it is and who its
//! Core is, and tells the Core where it listens (PROTOCOL.md §7).
//!
//! The Core (or the operator, for pre-started and shared modules) sets:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `ANIMA_CERT`, `ANIMA_KEY`, `ANIMA_CA` | the module's certificate, key and the CA (PEM files) |
//! | `ANIMA_CORE_URN` | the launching Core: the only Core a Type I/II module accepts (optional for Type II: unset binds to the first Core to lease it; ignored by Type III) |
//! | `ANIMA_LISTEN` | the address to listen on (default `127.0.0.1:0`) |
//! | `ANIMA_OPERATORS` | comma-separated identities that may shut the module down |
//!
//! Once listening, the module prints one line on stdout and nothing else
//! there afterwards:
//!
//! ```text
//! ANIMA/1 READY urn:anima:module:NAME 127.0.0.1:PORT
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anima_protocol::Urn;

use crate::error::SdkError;

/// The ready line's prefix; the protocol version is its `1`.
pub const READY_PREFIX: &str = "ANIMA/1 READY";

/// The variable names.
pub const ENV_CERT: &str = "ANIMA_CERT";
/// See [`ENV_CERT`].
pub const ENV_KEY: &str = "ANIMA_KEY";
/// See [`ENV_CERT`].
pub const ENV_CA: &str = "ANIMA_CA";
/// See [`ENV_CERT`].
pub const ENV_CORE_URN: &str = "ANIMA_CORE_URN";
/// See [`ENV_CERT`].
pub const ENV_LISTEN: &str = "ANIMA_LISTEN";
/// See [`ENV_CERT`].
pub const ENV_OPERATORS: &str = "ANIMA_OPERATORS";

/// What the environment says.
#[derive(Debug, Clone)]
pub struct LaunchEnv {
    /// Certificate file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
    /// CA file.
    pub ca: PathBuf,
    /// The launching Core, if given.
    pub core: Option<Urn>,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Operator identities.
    pub operators: Vec<Urn>,
}

impl LaunchEnv {
    /// Reads the variables; a missing or malformed one is an error naming it.
    pub fn from_env() -> Result<Self, SdkError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let required =
            |name: &str| var(name).ok_or_else(|| SdkError::Launch(format!("{name} is not set")));
        let core = var(ENV_CORE_URN)
            .map(|v| v.parse::<Urn>())
            .transpose()
            .map_err(|e| SdkError::Launch(format!("{ENV_CORE_URN}: {e}")))?;
        let listen = var(ENV_LISTEN)
            .unwrap_or_else(|| "127.0.0.1:0".into())
            .parse()
            .map_err(|e| SdkError::Launch(format!("{ENV_LISTEN}: {e}")))?;
        let operators = var(ENV_OPERATORS)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<Urn>())
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|e| SdkError::Launch(format!("{ENV_OPERATORS}: {e}")))?
            .unwrap_or_default();
        Ok(LaunchEnv {
            cert: required(ENV_CERT)?.into(),
            key: required(ENV_KEY)?.into(),
            ca: required(ENV_CA)?.into(),
            core,
            listen,
            operators,
        })
    }
}

/// The ready line for `urn` listening on `addr`.
pub fn ready_line(urn: &Urn, addr: SocketAddr) -> String {
    format!("{READY_PREFIX} {urn} {addr}")
}

/// Parses a ready line into the module's identity and address.
pub fn parse_ready_line(line: &str) -> Option<(Urn, SocketAddr)> {
    let rest = line.strip_prefix(READY_PREFIX)?.trim();
    let (urn, addr) = rest.split_once(' ')?;
    Some((urn.parse().ok()?, addr.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let urn: Urn = "urn:anima:module:x".parse().unwrap();
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let line = ready_line(&urn, addr);
        assert_eq!(line, "ANIMA/1 READY urn:anima:module:x 127.0.0.1:4000");
        assert_eq!(parse_ready_line(&line), Some((urn, addr)));
        assert_eq!(parse_ready_line("ANIMA/2 READY x y"), None);
    }
}
