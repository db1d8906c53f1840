//! Starting core-started modules with the launch protocol (PROTOCOL.md §6.1).
//!
//! The child gets its certificate, the CA, the Core's URN (its only Core),
//! `127.0.0.1:0` to listen on and, for a module only this Core uses, a Unix
//! socket in the Core's runtime directory to listen on instead
//! ([`crate::runtime_dir`]); it answers with one ready line on stdout naming
//! where it listens. Its
//! later stdout and stderr lines go to the Core's log, tagged with the module,
//! as plain text (see [`crate::log_text`]); it is asked not to colour them
//! (`NO_COLOR=1`).
//! Children are killed if the Core drops them, and ask the kernel for SIGTERM
//! when the Core dies (`ANIMA_PARENT_PID`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anima_protocol::Urn;
use anima_protocol::launch::{
    DEFAULT_LISTEN, LaunchEnv, READY_PREFIX, READY_TIMEOUT, ReadyLineError, expect_ready_line,
};
use anima_protocol::transport::Address;
use tokio::io::{AsyncBufRead, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::log_text::{MAX_LINE, RawLine, read_line};

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
    /// The Core's endpoint, for the module's registry and mediated calls.
    pub(crate) core_endpoint: Option<std::net::SocketAddr>,
    /// The Unix socket offered (`ANIMA_LISTEN_UNIX`), if any.
    pub(crate) listen_unix: Option<PathBuf>,
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
    /// Where it listens: the Unix socket offered, or a TCP address.
    pub(crate) addr: Address,
}

/// Starts `spec` and waits for its ready line.
pub(crate) async fn launch(spec: &LaunchSpec) -> Result<Launched, LaunchError> {
    let mut child = spawn(spec)?;
    let pid = child.id();
    let module = spec.urn.to_string();
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(log_lines(BufReader::new(stderr), module.clone()));
    }
    let Some(stdout) = child.stdout.take() else {
        return Err(LaunchError::NoStdout);
    };
    let mut stdout = BufReader::new(stdout);
    let line = ready_line(&mut stdout, &module, &mut child).await?;
    let addr = expect_ready_line(&line, &spec.urn, spec.listen_unix.as_deref())?;
    tokio::spawn(log_lines(stdout, module));
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
        listen_unix: spec.listen_unix.clone(),
        operators: spec.operators.clone(),
        parent_pid: Some(std::process::id()),
        core_endpoint: spec.core_endpoint,
    };
    let mut command = Command::new(&spec.program);
    // Modules' logs are read by the Core, not a terminal: ask for no colour
    // (the NO_COLOR convention; the module's configured `env` may override).
    command
        .args(&spec.args)
        .env("NO_COLOR", "1")
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env.apply(&mut command);
    // The service manager's variables are the Core's, not the module's.
    for name in crate::notify::MANAGER_ENV {
        command.env_remove(name);
    }
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
    stdout: &mut BufReader<ChildStdout>,
    module: &str,
    child: &mut Child,
) -> Result<String, LaunchError> {
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            match read_line(stdout, MAX_LINE).await {
                Ok(Some(line)) if line.bytes.starts_with(READY_PREFIX.as_bytes()) => {
                    return Ok(String::from_utf8_lossy(&line.bytes).into_owned());
                }
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

/// Logs each line the child writes to `output`, tagged with `module`, until
/// it ends.
async fn log_lines<R: AsyncBufRead + Unpin>(mut output: R, module: String) {
    while let Ok(Some(line)) = read_line(&mut output, MAX_LINE).await {
        log_line(&module, &line);
    }
}

/// One line the child wrote, in the Core's log: at most [`MAX_LINE`] bytes,
/// terminal control sequences removed (the child's output is untrusted).
fn log_line(module: &str, line: &RawLine) {
    let text = line.to_log_text();
    tracing::info!(target: "anima::module", module = %module, "{text}");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::*;

    /// Collects what the Core logs.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
        }
    }

    /// A module that writes coloured log lines, a title-setting OSC and a
    /// cut-off sequence around its ready line, then waits to be killed.
    fn noisy_module(urn: &Urn) -> LaunchSpec {
        let script = format!(
            "printf '\\033[2m2026-12-01T10:00:00Z\\033[0m \\033[32m INFO\\033[0m before ready no_color=%s\\n' \"$NO_COLOR\" >&2; \
             printf '{READY_PREFIX} {urn} 127.0.0.1:9\\n'; \
             printf '\\033]0;evil title\\007\\033[1;31mERROR\\033[0m after ready\\033[38;5\\n'; \
             printf 'last line\\n' >&2; \
             exec sleep 30"
        );
        LaunchSpec {
            urn: urn.clone(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script],
            env: Vec::new(),
            cert: "unused-cert.pem".into(),
            key: "unused-key.pem".into(),
            ca: "unused-ca.pem".into(),
            core: "urn:anima:core:test".parse().expect("core urn"),
            operators: Vec::new(),
            core_endpoint: None,
            listen_unix: None,
        }
    }

    /// A module offered `offered` that answers with `unix:` and the path
    /// in `ANIMA_LISTEN_UNIX` followed by `suffix`.
    fn unix_module(urn: &Urn, offered: Option<&str>, suffix: &str) -> LaunchSpec {
        let script = format!(
            "printf '{READY_PREFIX} {urn} unix:%s{suffix}\\n' \"$ANIMA_LISTEN_UNIX\"; exec sleep 30"
        );
        LaunchSpec {
            args: vec!["-c".into(), script],
            listen_unix: offered.map(PathBuf::from),
            ..noisy_module(urn)
        }
    }

    #[tokio::test]
    async fn a_module_listens_on_the_unix_socket_offered_and_no_other() {
        let urn: Urn = "urn:anima:module:local".parse().expect("module urn");
        let offered = "/run/anima-test/1/local.sock";
        let launched = launch(&unix_module(&urn, Some(offered), ""))
            .await
            .expect("launched");
        assert_eq!(launched.addr, Address::unix(offered).expect("path"));
        for (offered, suffix) in [(Some(offered), ".other"), (None, "/nowhere.sock")] {
            let e = launch(&unix_module(&urn, offered, suffix))
                .await
                .expect_err("a socket not offered");
            assert!(
                matches!(e, LaunchError::BadReadyLine(ReadyLineError::NotOffered(_))),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn forwarded_lines_are_plain_text_and_the_module_is_asked_not_to_colour() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let urn: Urn = "urn:anima:module:noisy".parse().expect("module urn");
        let launched = launch(&noisy_module(&urn)).await.expect("launched");
        assert_eq!(launched.addr, "127.0.0.1:9".parse().expect("addr"));
        let until = Instant::now() + Duration::from_secs(10);
        while !(captured.text().contains("after ready") && captured.text().contains("last line")) {
            assert!(Instant::now() < until, "log so far: {}", captured.text());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let log = captured.text();
        assert!(
            log.contains("2026-12-01T10:00:00Z  INFO before ready no_color=1"),
            "{log}"
        );
        assert!(log.contains("ERROR after ready"), "{log}");
        assert!(!log.contains("evil title"), "{log}");
        assert!(
            !log.contains('\x1b') && !log.contains("\\x1b") && !log.contains('\x07'),
            "{log}"
        );
        assert!(!log.contains("[0m") && !log.contains("38;5"), "{log}");
    }
}
