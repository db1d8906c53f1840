//! The conformance tool's errors: why a run, or one step of it, could not
//! happen. A module that *fails a row* is not an error; it is a verdict with
//! evidence in the [`Report`](crate::Report).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anima_protocol::launch::ReadyLineError;
use anima_protocol::lease::LeaseError;
use anima_protocol::{ContractError, IdentityError, TransportError};

/// Why the tool could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// A file or directory could not be read, written or created.
    #[error("{}: {source}", path.display())]
    File {
        /// Which.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The module's contract is invalid.
    #[error("{}: {source}", path.display())]
    Contract {
        /// The contract file.
        path: PathBuf,
        /// What is wrong with it.
        source: ContractError,
    },
    /// The CA directory cannot be used to mint the tool's identities.
    #[error("{}: {source} (the tool mints its test identities with a CA it can sign with)", path.display())]
    Authority {
        /// The CA directory.
        path: PathBuf,
        /// Why.
        source: anima_certs::CertsError,
    },
    /// Minting or reading a certificate failed.
    #[error(transparent)]
    Certs(#[from] anima_certs::CertsError),
    /// A URN the tool names one of its identities with is not valid.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A connection could not be made or configured.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A raw probe's socket step (connect, write) failed.
    #[error("cannot {action} {addr}: {source}")]
    Socket {
        /// What the probe was doing, as a verb phrase (`connect to`).
        action: &'static str,
        /// The module's address.
        addr: SocketAddr,
        /// The system's error.
        source: std::io::Error,
    },
    /// The tool's own lease step failed (signing, or verifying an answer).
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A token's claims do not decode.
    #[error("the {0}'s claims do not decode")]
    Undecodable(&'static str),
    /// There is no command to start the module with.
    #[error("no command to start the module with")]
    NoCommand,
    /// The module could not be started, or did not say it was ready.
    #[error("{program}: {failure} (log: {})", log.display())]
    Launch {
        /// The program started.
        program: String,
        /// Where its stderr is captured.
        log: PathBuf,
        /// What went wrong.
        #[source]
        failure: LaunchFailure,
    },
    /// Nothing came within the time allowed.
    #[error("{what}: nothing within {after:?}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The module refused an honest offer of the tool's.
    #[error("the module refused the offer: {reason} {detail}")]
    Refused {
        /// The refusal's reason, as the module sent it.
        reason: String,
        /// The refusal's detail.
        detail: String,
    },
    /// A lease-free call (`ModuleAdmin/Status`, …) was not answered.
    #[error("{call}: {}", crate::session::describe(status))]
    Rpc {
        /// The method called.
        call: &'static str,
        /// The module's (or the transport's) status.
        status: Box<tonic::Status>,
    },
    /// `ModuleAdmin/Status` did not report the phase awaited in time.
    #[error("phase {phase:?} after {after:?} (want {})", want.join(" or "))]
    Phase {
        /// The phase last reported.
        phase: String,
        /// The phases awaited (any of them).
        want: &'static [&'static str],
        /// How long the tool polled.
        after: Duration,
    },
    /// The module answered a step with something else than the protocol
    /// allows there (described, as evidence).
    #[error("{0}")]
    Unexpected(String),
}

/// Why a module process did not start (see [`ToolError::Launch`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchFailure {
    /// The program could not be spawned.
    #[error("cannot spawn it: {0}")]
    Spawn(#[source] std::io::Error),
    /// No ready line came within the time allowed.
    #[error("no ready line within {0:?}")]
    NoReadyLine(Duration),
    /// Its stdout ended or broke before the ready line: with its exit
    /// status when it exited soon after.
    #[error("{} before its ready line", ended(.0))]
    Ended(Option<ExitStatus>),
    /// The ready line is malformed or names another module.
    #[error(transparent)]
    ReadyLine(#[from] ReadyLineError),
}

/// How a process whose stdout ended went (for [`LaunchFailure::Ended`]).
fn ended(status: &Option<ExitStatus>) -> String {
    match status {
        Some(status) => format!("exited ({status})"),
        None => "closed its stdout".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The errors that end up as evidence in a report read as evidence:
    /// what was awaited, what came, and where to look.
    #[test]
    fn evidence_errors_name_what_was_awaited_and_where_to_look() {
        let phase = ToolError::Phase {
            phase: "leased".into(),
            want: &["expired-grace", "terminating"],
            after: Duration::from_secs(2),
        };
        assert_eq!(
            phase.to_string(),
            "phase \"leased\" after 2s (want expired-grace or terminating)"
        );
        let launch = ToolError::Launch {
            program: "./hasher".into(),
            log: PathBuf::from("/tmp/w/module-1.log"),
            failure: LaunchFailure::NoReadyLine(Duration::from_secs(10)),
        };
        assert_eq!(
            launch.to_string(),
            "./hasher: no ready line within 10s (log: /tmp/w/module-1.log)"
        );
        let ended = LaunchFailure::Ended(None);
        assert_eq!(ended.to_string(), "closed its stdout before its ready line");
        let rpc = ToolError::Rpc {
            call: "ModuleAdmin/Status",
            status: Box::new(tonic::Status::unavailable("gone")),
        };
        assert_eq!(rpc.to_string(), "ModuleAdmin/Status: Unavailable -: gone");
    }
}
