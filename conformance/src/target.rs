//! The module under test: the identities the tool presents to it, and the
//! process the tool starts (or the endpoint it is given).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use anima_certs::{CertAuthority, LeafSpec};
use anima_protocol::launch::{DEFAULT_LISTEN, LaunchEnv, READY_TIMEOUT, expect_ready_line};
use anima_protocol::transport::Address;
use anima_protocol::{TlsIdentity, Urn};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::rawtls::ClientCert;
use super::session::Actor;
use crate::error::{LaunchFailure, ToolError};

/// Which key the tool's Core certificates carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyType {
    /// Ed25519 (`EdDSA` leases): the default everywhere.
    #[default]
    Ed25519,
    /// ECDSA P-256 (`ES256` leases): for modules on BoringSSL-based gRPC
    /// stacks (Python `grpcio`, C++), which refuse Ed25519 client certificates.
    P256,
}

/// Everything the tool presents, minted from the deployment's CA.
pub struct Identities {
    /// The CA certificate file (given to started modules).
    pub ca_file: PathBuf,
    /// The Core that launches (and owns) the module.
    pub core_a: Actor,
    /// A second, different Core.
    pub core_b: Actor,
    /// An operator identity (`ANIMA_OPERATORS` of started modules). For a
    /// module running at an endpoint, whose operators the tool cannot name,
    /// a third Core instead: a module lets in only Cores and its own
    /// operators (PROTOCOL.md §1), and the lease-free checks need in.
    pub operator: Actor,
    /// Another module of the same CA (P6: a module serves no other module).
    pub module_peer: Actor,
    /// Certificates a module must refuse, with what is wrong with each.
    pub refused: Vec<(&'static str, Option<ClientCert>)>,
    /// The operator's certificate as PEM (the control case of the T3 probe).
    pub valid: ClientCert,
    /// The module's own certificate and key files.
    pub module_cert: PathBuf,
    /// See `module_cert`.
    pub module_key: PathBuf,
}

impl Identities {
    /// Mints the tool's identities with the CA in `certs` (`ca.pem` and
    /// `ca.key`, as `anima certs init` writes them), and a certificate for
    /// `module` in `workdir` unless one is given. `at_endpoint`: the module
    /// runs already, so the tool cannot make its operator one of the
    /// module's (see [`Identities::operator`]).
    pub fn mint(
        certs: &Path,
        key_type: KeyType,
        module: &Urn,
        module_files: Option<(PathBuf, PathBuf)>,
        workdir: &Path,
        at_endpoint: bool,
    ) -> Result<Self, ToolError> {
        let ca = CertAuthority::load(certs).map_err(|source| ToolError::Authority {
            path: certs.to_owned(),
            source,
        })?;
        let trust = ca.trust_root()?;
        let leaf = |urn: &str, ecdsa: bool| -> Result<TlsIdentity, ToolError> {
            let urn: Urn = urn.parse()?;
            let spec = if ecdsa {
                LeafSpec::new(urn).ecdsa_p256()
            } else {
                LeafSpec::new(urn)
            };
            identity(&ca, &spec)
        };
        let p256 = key_type == KeyType::P256;
        let actor = |identity| Actor {
            identity,
            trust: trust.clone(),
        };
        let core_a = leaf("urn:anima:core:conformance-a", p256)?;
        let core_b = leaf("urn:anima:core:conformance-b", p256)?;
        let operator = if at_endpoint {
            leaf("urn:anima:core:conformance-observer", p256)?
        } else {
            leaf("urn:anima:user:conformance-operator", p256)?
        };
        let module_peer = leaf("urn:anima:module:conformance-peer", p256)?;
        let a_urn: Urn = core_a.urn().clone();
        let refused = refused_certs(&ca, &a_urn, p256)?;
        let valid_spec = LeafSpec::new(operator.urn().clone());
        let valid_spec = if p256 {
            valid_spec.ecdsa_p256()
        } else {
            valid_spec
        };
        let valid = pem(&ca, &valid_spec)?;
        let (module_cert, module_key) = match module_files {
            Some(files) => files,
            None => {
                let issued = ca.issue(&LeafSpec::new(module.clone()))?;
                let cert = workdir.join("module.pem");
                let key = workdir.join("module.key");
                write_private(&cert, issued.cert_pem().as_bytes(), 0o644)?;
                write_private(&key, issued.key_pem().as_bytes(), 0o600)?;
                (cert, key)
            }
        };
        let (core_a, core_b, operator) = (actor(core_a), actor(core_b), actor(operator));
        let module_peer = actor(module_peer);
        Ok(Identities {
            ca_file: certs.join("ca.pem"),
            core_a,
            core_b,
            operator,
            module_peer,
            refused,
            valid,
            module_cert,
            module_key,
        })
    }

    /// Uses `cert`/`key` as Core A instead of the minted one (a module that
    /// is already bound to a Core).
    pub fn set_core_a(&mut self, identity: TlsIdentity) {
        self.core_a.identity = identity;
    }
}

/// The client certificates a module must refuse, with what is wrong with
/// each (the T3 probe): none, expired, from another CA, without a URN, and a
/// module's identity. `a_urn` is Core A's.
fn refused_certs(
    ca: &CertAuthority,
    a_urn: &Urn,
    p256: bool,
) -> Result<Vec<(&'static str, Option<ClientCert>)>, ToolError> {
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expired_spec = LeafSpec::new(a_urn.clone()).valid_between(now - 2 * day, now - day);
    let expired_spec = if p256 {
        expired_spec.ecdsa_p256()
    } else {
        expired_spec
    };
    let foreign = CertAuthority::generate("conformance foreign CA", day)?;
    let foreign_spec = if p256 {
        LeafSpec::new(a_urn.clone()).ecdsa_p256()
    } else {
        LeafSpec::new(a_urn.clone())
    };
    let no_urn = if p256 {
        LeafSpec::without_urn().ecdsa_p256()
    } else {
        LeafSpec::without_urn()
    };
    let impostor_spec = LeafSpec::new("urn:anima:module:conformance-impostor".parse()?);
    let impostor_spec = if p256 {
        impostor_spec.ecdsa_p256()
    } else {
        impostor_spec
    };
    Ok(vec![
        ("no client certificate", None),
        ("expired certificate", Some(pem(ca, &expired_spec)?)),
        (
            "certificate from another CA",
            Some(pem(&foreign, &foreign_spec)?),
        ),
        ("certificate without a URN", Some(pem(ca, &no_urn)?)),
        (
            "a module's identity as the client",
            Some(pem(ca, &impostor_spec)?),
        ),
    ])
}

/// A certificate and key issued by `ca` for `spec`, as PEM.
fn pem(ca: &CertAuthority, spec: &LeafSpec) -> Result<ClientCert, ToolError> {
    let issued = ca.issue(spec)?;
    Ok(ClientCert {
        cert_pem: issued.cert_pem().to_owned(),
        key_pem: issued.key_pem().to_owned(),
    })
}

/// A certificate and key issued by `ca` for `spec`, as a TLS identity.
fn identity(ca: &CertAuthority, spec: &LeafSpec) -> Result<TlsIdentity, ToolError> {
    let issued = ca.issue(spec)?;
    Ok(TlsIdentity::from_pem(
        issued.cert_pem().as_bytes(),
        issued.key_pem().as_bytes(),
    )?)
}

/// Writes `bytes` to a new file at `path` with permissions `mode`.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ToolError> {
    let file_error = |source| ToolError::File {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(file_error)?;
    file.write_all(bytes).map_err(file_error)
}

/// How to start the module.
#[derive(Debug, Clone)]
pub struct LaunchCommand {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Extra environment (`NAME=value`).
    pub env: Vec<(String, String)>,
}

/// A module process the tool started. Killed if dropped while running.
pub struct Running {
    child: Child,
    /// Its process id.
    pub pid: Option<u32>,
    /// Where it listens (from its ready line): TCP, or the Unix socket
    /// offered ([`start_offering`]).
    pub addr: Address,
    exited: Option<ExitStatus>,
}

/// Starts `command` with the launch protocol (PROTOCOL.md §6.1) and waits
/// for its ready line, which must name `module`.
pub async fn start(
    command: &LaunchCommand,
    ids: &Identities,
    module: &Urn,
    core: Option<&Urn>,
    log: PathBuf,
) -> Result<Running, ToolError> {
    launch(command, ids, module, core, log, None).await
}

/// [`start`], offering the module the Unix socket `socket`
/// (`ANIMA_LISTEN_UNIX`) as a Core offers it to the Type I and II modules it
/// starts: the ready line names that socket or a TCP address.
pub async fn start_offering(
    command: &LaunchCommand,
    ids: &Identities,
    module: &Urn,
    core: Option<&Urn>,
    log: PathBuf,
    socket: &Path,
) -> Result<Running, ToolError> {
    launch(command, ids, module, core, log, Some(socket)).await
}

async fn launch(
    command: &LaunchCommand,
    ids: &Identities,
    module: &Urn,
    core: Option<&Urn>,
    log: PathBuf,
    socket: Option<&Path>,
) -> Result<Running, ToolError> {
    let (program, args) = command.argv.split_first().ok_or(ToolError::NoCommand)?;
    let failed = |failure| ToolError::Launch {
        program: program.clone(),
        log: log.clone(),
        failure,
    };
    let stderr = File::create(&log).map_err(|source| ToolError::File {
        path: log.clone(),
        source,
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(command.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    LaunchEnv {
        cert: ids.module_cert.clone(),
        key: ids.module_key.clone(),
        ca: ids.ca_file.clone(),
        core: core.cloned(),
        listen: DEFAULT_LISTEN,
        // Most checks speak to the module over TCP (raw TLS among them).
        listen_unix: socket.map(Path::to_path_buf),
        operators: vec![ids.operator.identity.urn().clone()],
        parent_pid: Some(std::process::id()),
        core_endpoint: None,
    }
    .apply(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| failed(LaunchFailure::Spawn(e)))?;
    let pid = child.id();
    // Always there: stdout is piped above.
    let stdout = child.stdout.take().ok_or_else(|| {
        failed(LaunchFailure::Spawn(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "no stdout pipe",
        )))
    })?;
    let mut lines = BufReader::new(stdout).lines();
    let line = match tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await {
        Err(_) => return Err(failed(LaunchFailure::NoReadyLine(READY_TIMEOUT))),
        Ok(Ok(Some(line))) => line,
        Ok(_) => {
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            return Err(failed(LaunchFailure::Ended(
                status.ok().and_then(Result::ok),
            )));
        }
    };
    // Nothing may follow on stdout; drain it so the module never blocks.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = expect_ready_line(&line, module, socket).map_err(|e| failed(e.into()))?;
    Ok(Running {
        child,
        pid,
        addr,
        exited: None,
    })
}

impl Running {
    /// Waits up to `within` for the process to exit by itself.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.exited.is_none()
            && let Ok(Ok(status)) = tokio::time::timeout(within, self.child.wait()).await
        {
            self.exited = Some(status);
        }
        self.exited
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Kills the process (the end of a run that left it behind).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The TCP ports `pid` listens on, from `/proc` (Linux; `None` elsewhere or
/// when not readable).
pub fn listening_ports(pid: u32) -> Option<Vec<u16>> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let Ok(entry) = entry else { continue };
        if let Ok(link) = std::fs::read_link(entry.path()) {
            let link = link.to_string_lossy().into_owned();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), …, inode at index 9.
            if cols.len() > 9
                && cols[3] == "0A"
                && inodes.contains(cols[9])
                && let Some(port) = cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Some(ports)
}
