//! The run's certificates, and the processes it starts: echo module
//! fixtures, the plain-tonic echo server (this binary, `plain-echo`), and
//! `anima serve`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anima_certs::LeafSpec;
use anima_protocol::launch::{DEFAULT_LISTEN, LaunchEnv, READY_PREFIX, parse_ready_line};
use anima_protocol::lease::LeaseSigner;
use anima_protocol::transport::{Address, Listener};
use anima_protocol::{ClientTls, PeerPolicy, ServerTls, TlsIdentity, TrustRoot, Urn, UrnKind};
use anima_tests::TestCa;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Errors end one figure group, not the run.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// A result with [`Error`].
pub type Res<T> = Result<T, Error>;

/// The benchmark's Core.
pub const CORE: &str = "urn:anima:core:bench";
/// The leased echo module.
pub const MODULE: &str = "urn:anima:module:echo";
/// The plain (unleased) echo server.
pub const PLAIN: &str = "urn:anima:module:echo-plain";
/// The application calling through the Core's gateway.
pub const USER: &str = "urn:anima:user:bench";
/// The operator of the benchmark's Core.
pub const OPERATOR: &str = "urn:anima:user:bench-op";

/// How long a started process may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The echo fixture's contract, without its `urn` line.
pub fn echo_contract(extra: &str) -> String {
    format!(
        "version = \"0.1.0\"\nmethods = [{}]\n\
         max_lease = \"60s\"\n{extra}\n",
        anima_tests::echo_methods_toml()
    )
}

/// A CA minted for this run, with certificate files in a temporary directory.
pub struct Setup {
    /// The CA.
    pub ca: Arc<TestCa>,
    /// Where certificates, configurations and logs go.
    pub dir: tempfile::TempDir,
    /// Where the workspace's release binaries are (beside this one).
    pub bin_dir: PathBuf,
    /// The Core's identity.
    pub core: TlsIdentity,
    /// The Core's lease signer.
    pub signer: Arc<LeaseSigner>,
    /// The CA as a trust root.
    pub trust: TrustRoot,
}

impl Setup {
    /// Mints the CA and the Core's identity.
    pub fn new() -> Res<Self> {
        let ca = Arc::new(TestCa::named("anima bench CA"));
        let dir = tempfile::Builder::new().prefix("anima-bench-").tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), ca.authority().cert_pem())?;
        let core = ca.identity(CORE);
        let signer = Arc::new(LeaseSigner::from_identity(&core)?);
        let trust = ca.trust();
        let exe = std::env::current_exe()?;
        let bin_dir = exe
            .parent()
            .ok_or("the executable has no directory")?
            .to_path_buf();
        Ok(Setup {
            ca,
            dir,
            bin_dir,
            core,
            signer,
            trust,
        })
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate and key for `urn`, written once: `(cert, key)`.
    pub fn files(&self, urn: &str) -> Res<(PathBuf, PathBuf)> {
        let name = urn.replace(':', "_");
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        if !cert.exists() {
            let issued = self.ca.authority().issue(&LeafSpec::new(urn.parse()?))?;
            std::fs::write(&cert, issued.cert_pem())?;
            std::fs::write(&key, issued.key_pem())?;
        }
        Ok((cert, key))
    }

    /// A dialler with the Core's identity.
    pub fn client(&self) -> ClientTls {
        ClientTls::new(self.core.clone(), self.trust.clone())
    }

    /// A dialler with identity `urn`.
    pub fn client_as(&self, urn: &str) -> ClientTls {
        ClientTls::new(self.ca.identity(urn), self.trust.clone())
    }

    /// A workspace binary next to this one.
    pub fn bin(&self, name: &str) -> Res<PathBuf> {
        let path = self.bin_dir.join(name);
        if path.exists() {
            Ok(path)
        } else {
            Err(format!(
                "{} is missing: build the workspace binaries in release mode first \
                 (`cargo xtask bench` does)",
                path.display()
            )
            .into())
        }
    }

    /// Where a process of this run named `name` listens on a Unix socket:
    /// `<run dir>/name.sock` (the run's directory is 0700).
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    /// The launch environment of a module with identity `urn`.
    pub fn launch_env(&self, urn: &str, core: Option<&str>) -> Res<LaunchEnv> {
        let (cert, key) = self.files(urn)?;
        Ok(LaunchEnv {
            cert,
            key,
            ca: self.ca_file(),
            core: core.map(str::parse).transpose()?,
            listen: DEFAULT_LISTEN,
            listen_unix: None,
            operators: vec![OPERATOR.parse()?],
            parent_pid: Some(std::process::id()),
            core_endpoint: None,
        })
    }
}

/// The log filter for started processes (`BENCH_CHILD_LOG`, default `warn`).
pub fn child_log() -> String {
    std::env::var("BENCH_CHILD_LOG").unwrap_or_else(|_| "warn".into())
}

/// A started process, killed when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its stdout, after the ready line (kept open: a module must be able
    /// to write to it).
    _stdout: Lines<BufReader<ChildStdout>>,
    /// The address it announced (TCP, or a Unix socket).
    pub addr: Address,
    /// Its process id.
    pub pid: u32,
}

/// How long [`Proc::stop`] lets a process exit by itself.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Proc {
    /// Starts `command` (stdout piped) and waits for a line starting with
    /// `ready`; `parse` reads the address from that whole line.
    pub async fn start(
        mut command: Command,
        ready: &str,
        parse: impl Fn(&str) -> Option<Address>,
    ) -> Res<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let line = tokio::time::timeout(READY_TIMEOUT, async {
            loop {
                match stdout.next_line().await? {
                    Some(line) if line.starts_with(ready) => return Ok(line),
                    Some(_) => {}
                    None => return Err("the process ended before it was ready".into()),
                }
            }
        })
        .await
        .map_err(|_| format!("no `{ready}` line within {READY_TIMEOUT:?}"))?
        .map_err(|e: Error| e)?;
        let addr = parse(&line).ok_or_else(|| format!("bad ready line {line:?}"))?;
        Ok(Proc {
            child,
            _stdout: stdout,
            addr,
            pid,
        })
    }

    /// Asks the process to stop (SIGTERM) and waits up to [`STOP_GRACE`]
    /// for it, then kills it and waits for it. A process that exits by
    /// itself lets a profiler it runs under (`valgrind --trace-children`)
    /// write its figures.
    pub async fn stop(&mut self) {
        let pid = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?));
        if let Some(pid) = pid
            && rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok()
            && tokio::time::timeout(STOP_GRACE, self.child.wait())
                .await
                .is_ok()
        {
            return;
        }
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// Waits at most `limit` for the process to exit by itself, then kills it.
    pub async fn wait_or_kill(&mut self, limit: Duration) {
        if tokio::time::timeout(limit, self.child.wait())
            .await
            .is_err()
        {
            self.stop().await;
        }
    }
}

/// The command starting the echo fixture as `urn` with contract `extra`
/// lines (`type = …`), bound to the bench Core when `bound`.
pub fn module_command(setup: &Setup, urn: &str, extra: &str, bound: bool) -> Res<Command> {
    module_command_on(setup, urn, extra, bound, Transport::Tcp)
}

/// What a benchmark's processes listen on: loopback TCP, or a Unix socket
/// (the local transport the Core gives the modules it starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `127.0.0.1:0`.
    Tcp,
    /// A socket in the run's directory.
    Unix,
}

/// [`module_command`], listening on `transport`.
pub fn module_command_on(
    setup: &Setup,
    urn: &str,
    extra: &str,
    bound: bool,
    transport: Transport,
) -> Res<Command> {
    let mut command = Command::new(setup.bin("anima-fixture-module")?);
    let mut env = setup.launch_env(urn, bound.then_some(CORE))?;
    if transport == Transport::Unix {
        env.listen_unix = Some(setup.socket(&urn.replace(':', "-")));
    }
    env.apply(&mut command);
    command
        .env("RUST_LOG", child_log())
        .env(
            "FIXTURE_CONTRACT",
            format!("urn = \"{urn}\"\n{}", echo_contract(extra)),
        )
        // The renewal figures hold 1,000 leases, a connection each, from
        // the one bench Core (the default allows 64 per identity).
        .env("FIXTURE_MAX_CONNECTIONS_PER_IDENTITY", "1100");
    Ok(command)
}

/// Parses the launch protocol's ready line.
pub fn module_ready(line: &str) -> Option<Address> {
    parse_ready_line(line).ok().map(|(_, addr)| addr)
}

/// Starts the echo fixture as a module process (see [`module_command`]).
pub async fn module_process(setup: &Setup, urn: &str, extra: &str, bound: bool) -> Res<Proc> {
    module_process_on(setup, urn, extra, bound, Transport::Tcp).await
}

/// [`module_process`], listening on `transport`.
pub async fn module_process_on(
    setup: &Setup,
    urn: &str,
    extra: &str,
    bound: bool,
    transport: Transport,
) -> Res<Proc> {
    let command = module_command_on(setup, urn, extra, bound, transport)?;
    Proc::start(command, READY_PREFIX, module_ready).await
}

/// The plain echo server's ready line.
pub const PLAIN_READY: &str = "BENCH-PLAIN READY";

/// The command starting the plain echo server (this binary, `plain-echo`)
/// on TCP.
pub fn plain_command(setup: &Setup) -> Res<Command> {
    plain_command_on(setup, Transport::Tcp)
}

/// [`plain_command`], listening on `transport`.
pub fn plain_command_on(setup: &Setup, transport: Transport) -> Res<Command> {
    let (cert, key) = setup.files(PLAIN)?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("plain-echo")
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--ca")
        .arg(setup.ca_file())
        .env("RUST_LOG", child_log());
    if transport == Transport::Unix {
        command.arg("--unix").arg(setup.socket("plain"));
    }
    Ok(command)
}

/// Parses the plain echo server's ready line.
pub fn plain_ready(line: &str) -> Option<Address> {
    line.strip_prefix(PLAIN_READY)?.trim().parse().ok()
}

/// Starts the plain echo server (see [`plain_command`]).
pub async fn plain_process(setup: &Setup) -> Res<Proc> {
    plain_process_on(setup, Transport::Tcp).await
}

/// [`plain_process`], listening on `transport`.
pub async fn plain_process_on(setup: &Setup, transport: Transport) -> Res<Proc> {
    Proc::start(
        plain_command_on(setup, transport)?,
        PLAIN_READY,
        plain_ready,
    )
    .await
}

/// Runs `command` to its end (at most `limit`; killed after) and returns
/// its stdout; an error names `what` and carries its stderr when it fails.
pub async fn output(mut command: Command, what: &str, limit: Duration) -> Res<String> {
    let run = command.kill_on_drop(true).output();
    let out = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| format!("{what} took over {limit:?}"))??;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts `anima serve --config config`.
pub async fn core_process(setup: &Setup, config: &Path) -> Res<Proc> {
    let mut command = Command::new(setup.bin("anima")?);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", child_log());
    Proc::start(command, "ANIMA-CORE READY", |line| {
        line.strip_prefix("ANIMA-CORE READY")?.trim().parse().ok()
    })
    .await
}

/// A certificate, its key and the CA, as files (the hidden subcommands'
/// `--cert`, `--key`, `--ca`).
#[derive(Debug, Clone, clap::Args)]
pub struct CertFiles {
    /// The certificate (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// The CA (PEM).
    #[arg(long)]
    pub ca: PathBuf,
}

/// The plain echo server's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PlainArgs {
    /// Its certificate, key and the CA.
    #[command(flatten)]
    pub files: CertFiles,
    /// Listen on this Unix socket (created, removed on exit) instead of
    /// `127.0.0.1:0`.
    #[arg(long)]
    pub unix: Option<PathBuf>,
}

/// The plain-tonic echo server: the same `EchoService` behind the same
/// `ServerTls`, with the HTTP/2 settings every Anima endpoint has (the
/// keepalive of PROTOCOL.md §1 and a module's stream limit), and no lease,
/// no gate and no SDK: what it saves against the module is what leasing
/// costs, not what the transport does. Prints
/// `BENCH-PLAIN READY <addr>` and serves until killed.
pub fn serve_plain(args: &PlainArgs) -> Res<()> {
    let CertFiles { cert, key, ca } = &args.files;
    #[cfg(target_os = "linux")]
    {
        // Do not outlive the benchmark if it is killed.
        let _ =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    }
    // The same runtime as `#[tokio::main]`, which the module fixture uses.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let identity = TlsIdentity::from_pem_files(cert, key)?;
        let trust = TrustRoot::from_pem_file(ca)?;
        let tls = ServerTls::new(
            &identity,
            &trust,
            PeerPolicy::Kinds(vec![UrnKind::Core, UrnKind::User]),
        )?;
        let listen = match &args.unix {
            Some(path) => Address::unix(path.clone())?,
            None => Address::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        };
        let listener = Listener::bind(&listen).await?;
        let addr = listener.local_address()?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{PLAIN_READY} {addr}")?;
            out.flush()?;
        }
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(anima_module_sdk::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(anima_module_sdk::KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(anima_module_sdk::MAX_CONCURRENT_STREAMS)
            .add_service(anima_tests::echo::echo_server::EchoServer::new(
                anima_tests::EchoService::default(),
            ))
            .serve_with_incoming(tls.incoming(listener))
            .await?;
        Ok(())
    })
}

/// A URN constant, parsed.
pub fn urn(s: &str) -> Res<Urn> {
    Ok(s.parse()?)
}

/// Raises this process's open-file limit to its hard limit (children
/// inherit it); returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Whether `program` is an executable file in a `PATH` directory.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
