//! Starting core-started modules with the launch protocol (PROTOCOL.md §6.1).
//!
//! The child gets its certificate, the CA, the Core's URN (its only Core) and
//! `127.0.0.1:0` to listen on; it answers with one ready line on stdout. Its
//! later stdout and stderr lines go to the Core's log, tagged with the module.
//! Children are killed if the Core drops them, and ask the kernel for SIGTERM
//! when the Core dies (`ANIMA_PARENT_PID`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anima_protocol::Urn;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a child has to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

const READY_PREFIX: &str = "ANIMA/1 READY";

/// What is needed to start one module.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The module's identity (its ready line must name it).
    pub urn: Urn,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// The module's certificate and key, and the CA.
    pub cert: PathBuf,
    /// See `cert`.
    pub key: PathBuf,
    /// See `cert`.
    pub ca: PathBuf,
    /// The Core that launches it (the only Core it will accept, Type I/II).
    pub core: Urn,
    /// Identities allowed to shut it down (the Core itself for modules it
    /// hosts as infrastructure).
    pub operators: Vec<Urn>,
}

/// Why a module could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The program could not be spawned.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The child exited before its ready line.
    #[error("exited before it was ready ({status})")]
    ExitedEarly {
        /// How it exited.
        status: String,
    },
    /// No ready line in time.
    #[error("no ready line within {0:?}")]
    Timeout(Duration),
    /// The ready line named another module or was malformed.
    #[error("bad ready line {0:?}")]
    BadReadyLine(String),
}

/// A started module process.
#[derive(Debug)]
pub struct Launched {
    /// The child (killed when dropped).
    pub child: Child,
    /// Its process id.
    pub pid: Option<u32>,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Starts `spec` and waits for its ready line.
pub async fn launch(spec: &LaunchSpec) -> Result<Launched, LaunchError> {
    let operators: Vec<String> = spec.operators.iter().map(|u| u.to_string()).collect();
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("ANIMA_CERT", &spec.cert)
        .env("ANIMA_KEY", &spec.key)
        .env("ANIMA_CA", &spec.ca)
        .env("ANIMA_CORE_URN", spec.core.as_str())
        .env("ANIMA_LISTEN", "127.0.0.1:0")
        .env("ANIMA_OPERATORS", operators.join(","))
        .env("ANIMA_PARENT_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            program: spec.program.display().to_string(),
            source,
        })?;
    let pid = child.id();
    let module = spec.urn.to_string();
    if let Some(stderr) = child.stderr.take() {
        let module = module.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "anima::module", module = %module, "{line}");
            }
        });
    }
    let Some(stdout) = child.stdout.take() else {
        return Err(LaunchError::BadReadyLine("no stdout".into()));
    };
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.starts_with(READY_PREFIX) => return Ok(line),
                Ok(Some(line)) => {
                    tracing::info!(target: "anima::module", module = %module, "{line}");
                }
                Ok(None) | Err(_) => return Err(()),
            }
        }
    })
    .await;
    let line = match ready {
        Err(_) => return Err(LaunchError::Timeout(READY_TIMEOUT)),
        Ok(Err(())) => {
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .ok()
                .and_then(Result::ok)
                .map_or_else(
                    || "still running, stdout closed".to_owned(),
                    |s| s.to_string(),
                );
            return Err(LaunchError::ExitedEarly { status });
        }
        Ok(Ok(line)) => line,
    };
    let addr =
        parse_ready(&line, &spec.urn).ok_or_else(|| LaunchError::BadReadyLine(line.clone()))?;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "anima::module", module = %module, "{line}");
        }
    });
    Ok(Launched { child, pid, addr })
}

/// The address in a ready line that names `urn`; `None` for any other line.
/// Public only for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn parse_ready(line: &str, urn: &Urn) -> Option<SocketAddr> {
    let rest = line.strip_prefix(READY_PREFIX)?.trim();
    let (got, addr) = rest.split_once(' ')?;
    (got == urn.as_str()).then_some(())?;
    addr.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_must_name_the_module() {
        let urn: Urn = "urn:anima:module:x".parse().unwrap();
        assert_eq!(
            parse_ready("ANIMA/1 READY urn:anima:module:x 127.0.0.1:5", &urn),
            Some("127.0.0.1:5".parse().unwrap())
        );
        assert_eq!(
            parse_ready("ANIMA/1 READY urn:anima:module:y 127.0.0.1:5", &urn),
            None
        );
        assert_eq!(
            parse_ready("ANIMA/1 READY urn:anima:module:x nowhere", &urn),
            None
        );
    }
}
