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
use anima_protocol::launch::{
    DEFAULT_LISTEN, LaunchEnv, READY_PREFIX, READY_TIMEOUT, ReadyLineError, expect_ready_line,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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
    /// The child's stdout could not be read.
    #[error("no stdout to read its ready line from")]
    NoStdout,
    /// The ready line named another module or was malformed.
    #[error("bad ready line: {0}")]
    BadReadyLine(#[from] ReadyLineError),
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
    let env = LaunchEnv {
        cert: spec.cert.clone(),
        key: spec.key.clone(),
        ca: spec.ca.clone(),
        core: Some(spec.core.clone()),
        listen: DEFAULT_LISTEN,
        operators: spec.operators.clone(),
        parent_pid: Some(std::process::id()),
    };
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env.apply(&mut command);
    let mut child = command
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
        return Err(LaunchError::NoStdout);
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
    let addr = expect_ready_line(&line, &spec.urn)?;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "anima::module", module = %module, "{line}");
        }
    });
    Ok(Launched { child, pid, addr })
}
