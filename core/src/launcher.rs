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
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// What is needed to start one module.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    /// The module's identity (its ready line must name it).
    pub(crate) urn: Urn,
    /// The program.
    pub(crate) program: PathBuf,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Extra environment.
    pub(crate) env: Vec<(String, String)>,
    /// The module's certificate and key, and the CA.
    pub(crate) cert: PathBuf,
    /// See `cert`.
    pub(crate) key: PathBuf,
    /// See `cert`.
    pub(crate) ca: PathBuf,
    /// The Core that launches it (the only Core it will accept, Type I/II).
    pub(crate) core: Urn,
    /// Identities allowed to shut it down (the Core itself for modules it
    /// hosts as infrastructure).
    pub(crate) operators: Vec<Urn>,
}

/// Why a module could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LaunchError {
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
pub(crate) struct Launched {
    /// The child (killed when dropped).
    pub(crate) child: Child,
    /// Its process id.
    pub(crate) pid: Option<u32>,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

/// Starts `spec` and waits for its ready line.
pub(crate) async fn launch(spec: &LaunchSpec) -> Result<Launched, LaunchError> {
    let mut child = spawn(spec)?;
    let pid = child.id();
    let module = spec.urn.to_string();
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(log_lines(BufReader::new(stderr).lines(), module.clone()));
    }
    let Some(stdout) = child.stdout.take() else {
        return Err(LaunchError::NoStdout);
    };
    let mut lines = BufReader::new(stdout).lines();
    let line = ready_line(&mut lines, &module, &mut child).await?;
    let addr = expect_ready_line(&line, &spec.urn)?;
    tokio::spawn(log_lines(lines, module));
    Ok(Launched { child, pid, addr })
}

/// Spawns `spec`'s program with the launch protocol's environment, its
/// stdout and stderr piped.
fn spawn(spec: &LaunchSpec) -> Result<Child, LaunchError> {
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
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            program: spec.program.display().to_string(),
            source,
        })
}

/// Reads the child's stdout up to its ready line (logging the lines before
/// it) within [`READY_TIMEOUT`].
async fn ready_line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    module: &str,
    child: &mut Child,
) -> Result<String, LaunchError> {
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.starts_with(READY_PREFIX) => return Ok(line),
                Ok(Some(line)) => log_line(module, &line),
                Ok(None) | Err(_) => return Err(()),
            }
        }
    })
    .await;
    match ready {
        Err(_) => Err(LaunchError::Timeout(READY_TIMEOUT)),
        Ok(Err(())) => {
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .ok()
                .and_then(Result::ok)
                .map_or_else(
                    || "still running, stdout closed".to_owned(),
                    |s| s.to_string(),
                );
            Err(LaunchError::ExitedEarly { status })
        }
        Ok(Ok(line)) => Ok(line),
    }
}

/// Logs each of the child's `lines`, tagged with `module`, until they end.
async fn log_lines<R: AsyncBufRead + Unpin>(mut lines: Lines<R>, module: String) {
    while let Ok(Some(line)) = lines.next_line().await {
        log_line(&module, &line);
    }
}

/// One line the child wrote, in the Core's log.
fn log_line(module: &str, line: &str) {
    tracing::info!(target: "anima::module", module = %module, "{line}");
}
