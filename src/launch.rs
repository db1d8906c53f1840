//! The launch protocol (PROTOCOL.md §6.1): how a started module learns who it
//! is and who its Core is, and tells whoever started it where it listens.
//!
//! One definition for every side: the SDK reads [`LaunchEnv::from_env`] and
//! prints [`ready_line`]; the Core's launcher and the conformance tool set the
//! variables with [`LaunchEnv::apply`] and read the line with
//! [`parse_ready_line`].
//!
//! | variable | meaning |
//! | --- | --- |
//! | `ANIMA_CERT`, `ANIMA_KEY`, `ANIMA_CA` | the module's certificate, key and the CA (PEM files) |
//! | `ANIMA_CORE_URN` | the launching Core: the only Core a Type I/II module accepts (optional for Type II: unset binds to the first Core to lease it; ignored by Type III) |
//! | `ANIMA_LISTEN` | the address to listen on (default `127.0.0.1:0`) |
//! | `ANIMA_LISTEN_UNIX` | a Unix socket path the module may listen on instead (same host, still mutual TLS 1.3) |
//! | `ANIMA_OPERATORS` | comma-separated identities that may shut the module down |
//! | `ANIMA_PARENT_PID` | the launching Core's process id: the module dies with it |
//! | `ANIMA_CORE_ENDPOINT` | the launching Core's endpoint (`ip:port`): its registry and the module-to-module calls it mediates |
//!
//! Once listening, the module prints one line on stdout and nothing else
//! there afterwards, with the TCP address or, when it took the Unix socket
//! offered, `unix:PATH`:
//!
//! ```text
//! ANIMA/1 READY urn:anima:module:NAME 127.0.0.1:PORT
//! ANIMA/1 READY urn:anima:module:NAME unix:/run/user/1000/anima/4242/NAME.sock
//! ```
//!
//! ```
//! use anima_protocol::Urn;
//! use anima_protocol::launch::{parse_ready_line, ready_line};
//!
//! let urn: Urn = "urn:anima:module:hasher".parse()?;
//! let line = ready_line(&urn, "127.0.0.1:4000".parse::<std::net::SocketAddr>()?);
//! assert_eq!(line, "ANIMA/1 READY urn:anima:module:hasher 127.0.0.1:4000");
//! assert_eq!(parse_ready_line(&line)?, (urn, "127.0.0.1:4000".parse()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::identity::Urn;
use crate::transport::Address;

/// The ready line's prefix; the protocol version is its `1`.
pub const READY_PREFIX: &str = "ANIMA/1 READY";

/// How long a launching Core waits for the ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Declares a constant for each variable of the launch protocol
/// (`CONSTANT = "NAME"`), and [`VARIABLES`], all of them in order.
macro_rules! variables {
    ($($(#[doc = $doc:literal])* $constant:ident = $name:literal,)*) => {
        $($(#[doc = $doc])* pub const $constant: &str = $name;)*

        /// Every variable of the launch protocol, in PROTOCOL.md §6.1's order.
        pub const VARIABLES: [&str; [$($name),*].len()] = [$($constant),*];
    };
}

variables! {
    /// The module's certificate (PEM file).
    ENV_CERT = "ANIMA_CERT",
    /// The module's private key (PEM file).
    ENV_KEY = "ANIMA_KEY",
    /// The CA (PEM file).
    ENV_CA = "ANIMA_CA",
    /// The launching Core's URN.
    ENV_CORE_URN = "ANIMA_CORE_URN",
    /// The address to listen on.
    ENV_LISTEN = "ANIMA_LISTEN",
    /// A Unix socket path the module may listen on instead of
    /// `ANIMA_LISTEN` (its ready line then says `unix:PATH`).
    ENV_LISTEN_UNIX = "ANIMA_LISTEN_UNIX",
    /// Comma-separated operator identities.
    ENV_OPERATORS = "ANIMA_OPERATORS",
    /// The launching Core's process id.
    ENV_PARENT_PID = "ANIMA_PARENT_PID",
    /// The launching Core's endpoint (`ip:port`): its registry and the
    /// module-to-module calls it mediates.
    ENV_CORE_ENDPOINT = "ANIMA_CORE_ENDPOINT",
}

/// Where a module listens when `ANIMA_LISTEN` is unset, and where a
/// launching Core tells it to.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Why the launch environment cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchEnvError {
    /// A required variable is unset or empty.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A variable's value does not parse.
    #[error("{variable}: {message}")]
    Invalid {
        /// The variable.
        variable: &'static str,
        /// Why its value is refused.
        message: String,
    },
}

/// The launch environment: what a launcher sets and a module reads.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A Unix socket path offered instead of `listen`: a module that can
    /// serve on one listens there (and only there).
    pub listen_unix: Option<PathBuf>,
    /// Operator identities.
    pub operators: Vec<Urn>,
    /// The launching process, if a Core started the module.
    pub parent_pid: Option<u32>,
    /// The Core's endpoint, where the module discovers and calls other
    /// modules' interfaces (PROTOCOL.md §10), if given.
    pub core_endpoint: Option<SocketAddr>,
}

impl LaunchEnv {
    /// Reads the process's variables; a missing or malformed one is an error
    /// naming it.
    pub fn from_env() -> Result<Self, LaunchEnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables from `lookup` (a variable's value by name).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, LaunchEnvError> {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let required = |name: &'static str| var(name).ok_or(LaunchEnvError::Missing(name));
        let invalid = |variable: &'static str| {
            move |e: &dyn std::fmt::Display| LaunchEnvError::Invalid {
                variable,
                message: e.to_string(),
            }
        };
        let core = var(ENV_CORE_URN)
            .map(|v| v.parse::<Urn>())
            .transpose()
            .map_err(|e| invalid(ENV_CORE_URN)(&e))?;
        let listen = var(ENV_LISTEN)
            .map(|v| v.parse())
            .transpose()
            .map_err(|e| invalid(ENV_LISTEN)(&e))?
            .unwrap_or(DEFAULT_LISTEN);
        let listen_unix = var(ENV_LISTEN_UNIX)
            .map(|v| match Address::unix(v) {
                Ok(Address::Unix(path)) => Ok(path),
                Ok(Address::Tcp(_)) => unreachable!("Address::unix makes Unix addresses"),
                Err(e) => Err(invalid(ENV_LISTEN_UNIX)(&e)),
            })
            .transpose()?;
        let operators = var(ENV_OPERATORS)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<Urn>())
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|e| invalid(ENV_OPERATORS)(&e))?
            .unwrap_or_default();
        let parent_pid = var(ENV_PARENT_PID)
            .map(|v| v.parse::<u32>())
            .transpose()
            .map_err(|e| invalid(ENV_PARENT_PID)(&e))?;
        let core_endpoint = var(ENV_CORE_ENDPOINT)
            .map(|v| v.parse::<SocketAddr>())
            .transpose()
            .map_err(|e| invalid(ENV_CORE_ENDPOINT)(&e))?;
        Ok(LaunchEnv {
            cert: required(ENV_CERT)?.into(),
            key: required(ENV_KEY)?.into(),
            ca: required(ENV_CA)?.into(),
            core,
            listen,
            listen_unix,
            operators,
            parent_pid,
            core_endpoint,
        })
    }

    /// The variables as a launcher sets them; `None` for one it must remove
    /// from what the child would inherit.
    pub fn vars(&self) -> Vec<(&'static str, Option<OsString>)> {
        let operators: Vec<&str> = self.operators.iter().map(Urn::as_str).collect();
        vec![
            (ENV_CERT, Some(self.cert.clone().into_os_string())),
            (ENV_KEY, Some(self.key.clone().into_os_string())),
            (ENV_CA, Some(self.ca.clone().into_os_string())),
            (ENV_CORE_URN, self.core.as_ref().map(|u| u.as_str().into())),
            (ENV_LISTEN, Some(self.listen.to_string().into())),
            (
                ENV_LISTEN_UNIX,
                self.listen_unix.clone().map(PathBuf::into_os_string),
            ),
            (ENV_OPERATORS, Some(operators.join(",").into())),
            (
                ENV_PARENT_PID,
                self.parent_pid.map(|pid| pid.to_string().into()),
            ),
            (
                ENV_CORE_ENDPOINT,
                self.core_endpoint.map(|a| a.to_string().into()),
            ),
        ]
    }

    /// Sets (and removes) the variables on a command about to start a module.
    pub fn apply(&self, command: &mut tokio::process::Command) {
        for (name, value) in self.vars() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
    }
}

/// Why a line is not the ready line expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadyLineError {
    /// Not `ANIMA/1 READY <urn> <address>` with single spaces.
    #[error("not a ready line: {0:?}")]
    Malformed(String),
    /// The URN does not parse.
    #[error("ready line URN {urn:?}: {message}")]
    BadUrn {
        /// The word where the URN belongs.
        urn: String,
        /// Why it is not a URN.
        message: String,
    },
    /// The address is neither `ip:port` nor `unix:/absolute/path`.
    #[error("ready line address {0:?} is neither ip:port nor unix:/absolute/path")]
    BadAddress(String),
    /// The line names a Unix socket other than the one offered
    /// (`ANIMA_LISTEN_UNIX`), or one when none was.
    #[error("ready line address {0} is not the Unix socket offered")]
    NotOffered(Address),
    /// The line names another module.
    #[error("ready line names {got}, the contract {expected}")]
    WrongModule {
        /// The URN the line names.
        got: Urn,
        /// The URN expected.
        expected: Urn,
    },
}

/// The ready line for `urn` listening on `addr`.
pub fn ready_line(urn: &Urn, addr: impl Into<Address>) -> String {
    format!("{READY_PREFIX} {urn} {}", addr.into())
}

/// Parses `ANIMA/1 READY <urn> <address>` (single spaces, nothing else; the
/// address `ip:port` or `unix:/absolute/path`) into the module's identity
/// and address.
pub fn parse_ready_line(line: &str) -> Result<(Urn, Address), ReadyLineError> {
    let malformed = || ReadyLineError::Malformed(line.to_owned());
    let rest = line
        .strip_prefix(READY_PREFIX)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(malformed)?;
    let mut words = rest.split(' ');
    let (Some(urn), Some(addr), None) = (words.next(), words.next(), words.next()) else {
        return Err(malformed());
    };
    let urn = urn.parse::<Urn>().map_err(|e| ReadyLineError::BadUrn {
        urn: urn.to_owned(),
        message: e.to_string(),
    })?;
    let addr = addr
        .parse()
        .map_err(|_| ReadyLineError::BadAddress(addr.to_owned()))?;
    Ok((urn, addr))
}

/// The address in a ready line, which must name `expected` and, when it is
/// a Unix socket, be the one `offered` (the launch's `ANIMA_LISTEN_UNIX`).
pub fn expect_ready_line(
    line: &str,
    expected: &Urn,
    offered: Option<&Path>,
) -> Result<Address, ReadyLineError> {
    let (got, addr) = parse_ready_line(line)?;
    if &got != expected {
        return Err(ReadyLineError::WrongModule {
            got,
            expected: expected.clone(),
        });
    }
    match &addr {
        Address::Unix(path) if Some(path.as_path()) != offered => {
            Err(ReadyLineError::NotOffered(addr))
        }
        _ => Ok(addr),
    }
}

/// Completes on SIGINT or SIGTERM (Ctrl-C elsewhere): how a Core tells a
/// module it started to stop, and how an operator stops either.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urn(s: &str) -> Urn {
        s.parse().unwrap()
    }

    #[test]
    fn ready_line_round_trips() {
        let x = urn("urn:anima:module:x");
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let line = ready_line(&x, addr);
        assert_eq!(line, "ANIMA/1 READY urn:anima:module:x 127.0.0.1:4000");
        assert_eq!(parse_ready_line(&line), Ok((x.clone(), addr.into())));
        assert_eq!(expect_ready_line(&line, &x, None), Ok(addr.into()));
        let v6: SocketAddr = "[::1]:65535".parse().unwrap();
        assert_eq!(
            parse_ready_line(&ready_line(&x, v6)),
            Ok((x.clone(), v6.into()))
        );
        let unix = Address::unix("/run/anima/7/x.sock").unwrap();
        let line = ready_line(&x, unix.clone());
        assert_eq!(
            line,
            "ANIMA/1 READY urn:anima:module:x unix:/run/anima/7/x.sock"
        );
        assert_eq!(parse_ready_line(&line), Ok((x.clone(), unix.clone())));
        let offered = Path::new("/run/anima/7/x.sock");
        assert_eq!(
            expect_ready_line(&line, &x, Some(offered)),
            Ok(unix.clone())
        );
        for other in [None, Some(Path::new("/run/anima/7/y.sock"))] {
            assert_eq!(
                expect_ready_line(&line, &x, other),
                Err(ReadyLineError::NotOffered(unix.clone()))
            );
        }
    }

    #[test]
    fn ready_line_is_exact() {
        let x = urn("urn:anima:module:x");
        for line in [
            "ANIMA/2 READY urn:anima:module:x 127.0.0.1:5",
            "ANIMA/1 READYurn:anima:module:x 127.0.0.1:5",
            "ANIMA/1 READY  urn:anima:module:x 127.0.0.1:5",
            "ANIMA/1 READY urn:anima:module:x  127.0.0.1:5",
            "ANIMA/1 READY urn:anima:module:x 127.0.0.1:5 ",
            "ANIMA/1 READY urn:anima:module:x\t127.0.0.1:5",
            "ANIMA/1 READY urn:anima:module:x 127.0.0.1:5 extra",
            "ANIMA/1 READY urn:anima:module:x",
        ] {
            assert!(
                matches!(parse_ready_line(line), Err(ReadyLineError::Malformed(_))),
                "{line:?}"
            );
        }
        for address in ["nowhere", "unix:x.sock", "unix:"] {
            let line = format!("ANIMA/1 READY urn:anima:module:x {address}");
            assert!(
                matches!(parse_ready_line(&line), Err(ReadyLineError::BadAddress(_))),
                "{line:?}"
            );
        }
        assert!(matches!(
            parse_ready_line("ANIMA/1 READY bogus 127.0.0.1:5"),
            Err(ReadyLineError::BadUrn { .. })
        ));
        assert!(matches!(
            expect_ready_line("ANIMA/1 READY urn:anima:module:y 127.0.0.1:5", &x, None),
            Err(ReadyLineError::WrongModule { .. })
        ));
    }

    #[test]
    fn the_environment_round_trips_through_its_variables() {
        let env = LaunchEnv {
            cert: "/c/cert.pem".into(),
            key: "/c/key.pem".into(),
            ca: "/c/ca.pem".into(),
            core: Some(urn("urn:anima:core:a")),
            listen: DEFAULT_LISTEN,
            listen_unix: Some("/run/anima/42/a.sock".into()),
            operators: vec![urn("urn:anima:user:op"), urn("urn:anima:core:a")],
            parent_pid: Some(42),
            core_endpoint: Some("127.0.0.1:7700".parse().unwrap()),
        };
        let vars: std::collections::HashMap<&str, String> = env
            .vars()
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?.into_string().ok()?)))
            .collect();
        assert_eq!(
            vars.keys()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            VARIABLES.into_iter().collect()
        );
        let read = LaunchEnv::from_lookup(|name| vars.get(name).cloned()).unwrap();
        assert_eq!(read, env);
        let unset = LaunchEnv {
            core: None,
            listen_unix: None,
            parent_pid: None,
            core_endpoint: None,
            ..env
        };
        let removed: Vec<&str> = unset
            .vars()
            .into_iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            removed,
            [
                ENV_CORE_URN,
                ENV_LISTEN_UNIX,
                ENV_PARENT_PID,
                ENV_CORE_ENDPOINT
            ]
        );
    }

    #[test]
    fn a_bad_variable_is_named() {
        let lookup = |bad: &'static str, value: &'static str| {
            move |name: &str| {
                if name == bad {
                    Some(value.to_owned())
                } else {
                    match name {
                        ENV_CERT | ENV_KEY | ENV_CA => Some("/x.pem".to_owned()),
                        _ => None,
                    }
                }
            }
        };
        assert_eq!(
            LaunchEnv::from_lookup(lookup(ENV_KEY, "")).unwrap_err(),
            LaunchEnvError::Missing(ENV_KEY)
        );
        for (variable, value) in [
            (ENV_CORE_URN, "core"),
            (ENV_LISTEN, "nowhere"),
            (ENV_LISTEN_UNIX, "relative.sock"),
            (ENV_OPERATORS, "urn:anima:user:a,bogus"),
            (ENV_PARENT_PID, "-1"),
        ] {
            let err = LaunchEnv::from_lookup(lookup(variable, value)).unwrap_err();
            assert!(
                matches!(&err, LaunchEnvError::Invalid { variable: v, .. } if *v == variable),
                "{err}"
            );
            assert!(err.to_string().starts_with(variable), "{err}");
        }
    }
}
