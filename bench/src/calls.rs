//! Calls: unary latency, throughput, connection setup and the gateway, each
//! against its baseline in the same run, interleaved.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anima_core::audit::Actor;
use anima_core::lease::{LeaseLink, LeasedChannel, RenewalPolicy};
use anima_protocol::transport::Address;
use anima_protocol::transport::PeerChannel;
use anima_protocol::{ClientTls, PeerPolicy, Urn};
use anima_tests::echo::SayRequest;
use anima_tests::echo::echo_client::EchoClient;

use crate::Opts;
use crate::link::LeaseOpener;
use crate::procs::{
    CORE, MODULE, OPERATOR, PLAIN, Proc, Res, Setup, Transport, USER, core_process,
    module_process_on, plain_process_on, urn,
};
use crate::report::{Figure, Report};
use crate::stats::{CpuMeter, Samples, rss_kib};

/// The request text: 64 bytes.
const TEXT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Calls `Say` one way or another.
#[derive(Clone)]
pub(crate) enum Caller {
    /// Through a lease (the proof is added per call).
    Leased(EchoClient<LeasedChannel>),
    /// Over a plain mTLS channel (to the plain server, or the gateway).
    Plain(EchoClient<PeerChannel>),
}

impl Caller {
    pub(crate) async fn say(&mut self) -> Result<(), tonic::Status> {
        let request = SayRequest { text: TEXT.into() };
        match self {
            Caller::Leased(c) => c.say(request).await.map(drop),
            Caller::Plain(c) => c.say(request).await.map(drop),
        }
    }

    /// `n` sequential calls, each timed into `samples`.
    ///
    /// The calls are made from a task on the runtime's workers, as a Core's
    /// callers are (the gateway's, a lease's owner's): from the benchmark's
    /// own thread (`block_on`) every call would also pay two wake-ups across
    /// threads, the request's to a worker and the answer's back, which
    /// neither a Core nor go-plugin's host pays.
    pub(crate) async fn timed(&mut self, n: usize, samples: Option<&mut Samples>) -> Res<()> {
        let mut caller = self.clone();
        let keep = samples.is_some();
        let calls = tokio::spawn(async move {
            let mut times = Vec::with_capacity(if keep { n } else { 0 });
            for _ in 0..n {
                let t = Instant::now();
                caller.say().await?;
                if keep {
                    times.push(t.elapsed());
                }
            }
            Ok::<_, tonic::Status>(times)
        });
        let times = calls
            .await
            .map_err(|e| format!("the calls' task failed: {e}"))??;
        if let Some(s) = samples {
            for t in times {
                s.push(t);
            }
        }
        Ok(())
    }
}

/// Sequential calls on `subject` and `baseline` in alternating blocks
/// (the order flips every round), `n` timed calls each after a warm-up.
pub(crate) async fn interleaved(
    subject: &mut Caller,
    baseline: &mut Caller,
    n: usize,
    block: usize,
    warmup: usize,
) -> Res<(Samples, Samples)> {
    subject.timed(warmup, None).await?;
    baseline.timed(warmup, None).await?;
    let mut s = Samples::with_capacity(n);
    let mut b = Samples::with_capacity(n);
    let mut round = 0usize;
    while s.len() < n {
        let k = block.min(n - s.len());
        if round.is_multiple_of(2) {
            subject.timed(k, Some(&mut s)).await?;
            baseline.timed(k, Some(&mut b)).await?;
        } else {
            baseline.timed(k, Some(&mut b)).await?;
            subject.timed(k, Some(&mut s)).await?;
        }
        round += 1;
    }
    Ok((s, b))
}

/// Calls completed by `tasks` concurrent callers sharing `caller`'s
/// connection during `window`; returns (calls, elapsed).
pub(crate) async fn throughput(
    caller: &Caller,
    tasks: usize,
    window: Duration,
) -> Res<(u64, Duration)> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + window;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let mut c = caller.clone();
        let done = done.clone();
        set.spawn(async move {
            while Instant::now() < deadline {
                c.say().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, tonic::Status>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok((done.load(Ordering::Relaxed), start.elapsed()))
}

/// One side of the throughput comparison.
#[derive(Default)]
struct Side {
    calls: u64,
    time: Duration,
    server: Duration,
    client: Duration,
}

impl Side {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.time.as_secs_f64().max(1e-9)
    }

    fn per_call(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }

    /// One `window` of 16 callers on `caller`, whose server is `server_pid`:
    /// calls, seconds, server CPU and client (this process) CPU.
    async fn measure(&mut self, caller: &Caller, server_pid: u32, window: Duration) -> Res<()> {
        let server = CpuMeter::start(server_pid);
        let client = CpuMeter::start(0);
        let (calls, time) = throughput(caller, 16, window).await?;
        self.calls += calls;
        self.time += time;
        self.server += server.read().0;
        self.client += client.read().0;
        Ok(())
    }
}

/// The leased echo module and the plain server on one transport, with a
/// lease on the one and a connection to the other.
struct Pair {
    module: Proc,
    plain: Proc,
    link: LeaseLink,
    leased: Caller,
    direct: Caller,
}

impl Pair {
    async fn start(setup: &Setup, transport: Transport) -> Res<Self> {
        let module = module_process_on(
            setup,
            MODULE,
            "type = \"resident-shared\"",
            false,
            transport,
        )
        .await?;
        let plain = plain_process_on(setup, transport).await?;
        let (link, leased, direct) = callers(setup, &module, &plain).await?;
        Ok(Pair {
            module,
            plain,
            link,
            leased,
            direct,
        })
    }

    async fn stop(mut self) {
        self.link.revoke("benchmark done", Actor::Core);
        self.module.stop().await;
        self.plain.stop().await;
    }
}

/// `unary_p50_us`, `unary_p99_us`, `unary_rps_c16` (TCP), their `unary_unix_`
/// forms (Unix sockets, the transport of the modules a Core starts), the
/// `peers` group's figures (over Unix sockets, as go-plugin's),
/// `handshake_ms`, and `via_core_p50_us` (which needs the leased module as
/// its baseline).
pub async fn run(setup: &Setup, opts: &Opts, report: &mut Report) -> Res<()> {
    let mut tcp = Pair::start(setup, Transport::Tcp).await?;
    if opts.wants("unary") {
        unary(opts, "unary", &mut tcp.leased, &mut tcp.direct, report).await?;
    }
    if opts.wants("rps") {
        let sides = [(&tcp.leased, tcp.module.pid), (&tcp.direct, tcp.plain.pid)];
        report.add(rps(opts, "unary_rps_c16", sides).await?);
    }
    if opts.wants("handshake") {
        report.add(handshake(setup, opts, &tcp.module, &tcp.plain).await?);
    }
    if opts.wants("module_to_module") {
        match module_to_module(setup, opts, &mut tcp.leased).await {
            Ok(figure) => report.add(figure),
            Err(e) => report.add(
                Figure::new("module_to_module_p50_us")
                    .s("skipped", "error")
                    .s("detail", &e.to_string()),
            ),
        }
    }
    if opts.wants("via_core") {
        for hop in [Hop::Tcp, Hop::Unix] {
            match via_core(setup, opts, &mut tcp.leased, hop).await {
                Ok(figures) => figures.into_iter().for_each(|f| report.add(f)),
                Err(e) => report.add(
                    Figure::new(hop.figure())
                        .s("skipped", "error")
                        .s("detail", &e.to_string()),
                ),
            }
        }
    }
    tcp.stop().await;
    if opts.wants("unix") || opts.wants("peers") {
        let mut unix = Pair::start(setup, Transport::Unix).await?;
        if opts.wants("unix") {
            let (leased, direct) = (&mut unix.leased, &mut unix.direct);
            unary(opts, "unary_unix", leased, direct, report).await?;
            let sides = [
                (&unix.leased, unix.module.pid),
                (&unix.direct, unix.plain.pid),
            ];
            report.add(rps(opts, "unary_unix_rps_c16", sides).await?);
        }
        if opts.wants("peers") {
            crate::peers::goplugin(opts, &mut unix.leased, report).await?;
        }
        unix.stop().await;
    }
    Ok(())
}

/// A lease (60-s TTL) on the echo fixture `module`, started as [`MODULE`].
pub(crate) async fn lease_echo(setup: &Setup, module: &Proc) -> Res<LeaseLink> {
    LeaseOpener::new(setup)
        .open(
            module.addr.clone(),
            urn(MODULE)?,
            RenewalPolicy::new(Duration::from_secs(60)),
        )
        .await
}

/// A lease on the echo fixture `module` (as [`MODULE`]) and a connection to
/// the `plain` server: the link, and a caller through each.
pub(crate) async fn callers(
    setup: &Setup,
    module: &Proc,
    plain: &Proc,
) -> Res<(LeaseLink, Caller, Caller)> {
    let link = lease_echo(setup, module).await?;
    let plain_conn = setup
        .client()
        .dial_addr(plain.addr.clone(), PeerPolicy::exactly(urn(PLAIN)?))
        .await?;
    let leased = Caller::Leased(EchoClient::new(link.channel()));
    let direct = Caller::Plain(EchoClient::new(plain_conn.channel()));
    Ok((link, leased, direct))
}

/// `<prefix>_p50_us`, `<prefix>_p99_us`: sequential calls, leased against
/// plain, interleaved.
async fn unary(
    opts: &Opts,
    prefix: &str,
    leased: &mut Caller,
    direct: &mut Caller,
    report: &mut Report,
) -> Res<()> {
    let n = if opts.quick { 1_000 } else { 20_000 };
    let warmup = if opts.quick { 200 } else { 2_000 };
    let (mut s, mut b) = interleaved(leased, direct, n, 500, warmup).await?;
    for (name, p, target) in [("p50_us", 50.0, true), ("p99_us", 99.0, true)] {
        let (v, base) = (s.pct(p), b.pct(p));
        let name = format!("{prefix}_{name}");
        let mut f = Figure::new(&name).vs(v, base, 1).i("n", n as u64);
        if target {
            f = f.target("ratio<=1.05", v <= 1.05 * base);
        }
        report.add(f);
    }
    Ok(())
}

/// `name` (`unary_rps_c16`): 16 concurrent callers on one connection, the
/// subject and the baseline (each with its server's pid) in alternating
/// windows.
async fn rps(opts: &Opts, name: &str, subjects: [(&Caller, u32); 2]) -> Res<Figure> {
    let (windows, window) = if opts.quick {
        (1, Duration::from_millis(500))
    } else {
        (6, Duration::from_secs(1))
    };
    // Warm both connections up with the same concurrency.
    for (caller, _) in subjects {
        throughput(caller, 16, Duration::from_millis(200)).await?;
    }
    let mut sides = [Side::default(), Side::default()];
    for w in 0..windows {
        let order: [usize; 2] = if w % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (caller, pid) = subjects[i];
            sides[i].measure(caller, pid, window).await?;
        }
    }
    let [s, b] = sides;
    let (v, base) = (s.rate(), b.rate());
    Ok(Figure::new(name)
        .vs(v, base, 0)
        .i("callers", 16)
        .f("seconds", s.time.as_secs_f64(), 1)
        .i("calls", s.calls)
        .f("server_cpu_us_per_call", s.per_call(s.server), 1)
        .f("baseline_server_cpu_us_per_call", b.per_call(b.server), 1)
        .f("client_cpu_us_per_call", s.per_call(s.client), 1)
        .f("baseline_client_cpu_us_per_call", b.per_call(b.client), 1)
        .target("ratio>=0.95", v >= 0.95 * base))
}

/// `handshake_ms`: a new connection, lease and first call to `module`,
/// against a new connection and first call to `plain`, alternating.
async fn handshake(setup: &Setup, opts: &Opts, module: &Proc, plain: &Proc) -> Res<Figure> {
    let n = if opts.quick { 30 } else { 600 };
    let client = setup.client();
    let module_urn = urn(MODULE)?;
    let plain_urn = urn(PLAIN)?;
    let opener = LeaseOpener::new(setup);
    let mut s = Samples::with_capacity(n);
    let mut b = Samples::with_capacity(n);
    for i in 0..n + 5 {
        for is_subject in [i % 2 == 0, i % 2 != 0] {
            let (samples, took) = if is_subject {
                (
                    &mut s,
                    leased_handshake(&opener, module.addr.clone(), &module_urn).await?,
                )
            } else {
                (
                    &mut b,
                    plain_handshake(&client, plain.addr.clone(), &plain_urn).await?,
                )
            };
            if i >= 5 {
                samples.push(took);
            }
        }
    }
    let (v50, b50) = (s.pct(50.0) / 1e3, b.pct(50.0) / 1e3);
    let (v99, b99) = (s.pct(99.0) / 1e3, b.pct(99.0) / 1e3);
    Ok(Figure::new("handshake_ms")
        .f("p50", v50, 3)
        .f("p99", v99, 3)
        .f("baseline_p50", b50, 3)
        .f("baseline_p99", b99, 3)
        .f("ratio", v50 / b50, 3)
        .f("ratio_p99", v99 / b99, 3)
        .i("n", n as u64))
}

/// One leased handshake sample: connection, lease, first call.
async fn leased_handshake(opener: &LeaseOpener, addr: Address, module: &Urn) -> Res<Duration> {
    let t = Instant::now();
    let policy = RenewalPolicy::new(Duration::from_secs(60));
    let link = opener.open(addr, module.clone(), policy).await?;
    Caller::Leased(EchoClient::new(link.channel()))
        .say()
        .await?;
    let took = t.elapsed();
    // A dropped link keeps its control task: end it first.
    link.revoke("benchmark sample done", Actor::Core);
    Ok(took)
}

/// One baseline handshake sample: connection, first call.
async fn plain_handshake(client: &ClientTls, addr: Address, plain: &Urn) -> Res<Duration> {
    let t = Instant::now();
    let conn = client
        .dial_addr(addr, PeerPolicy::exactly(plain.clone()))
        .await?;
    Caller::Plain(EchoClient::new(conn.channel())).say().await?;
    Ok(t.elapsed())
}

/// Writes the Core's configuration: identity, admin endpoint on an
/// ephemeral port, and optionally the echo fixture as a Core-started Type
/// III module with a gateway policy for [`USER`].
pub fn core_config(setup: &Setup, name: &str, with_module: bool) -> Res<std::path::PathBuf> {
    core_config_with(setup, name, with_module.then_some(("", "")))
}

/// [`core_config`] with the echo module, given `lines` of its own
/// `[[module]]` table, plus `more` (TOML: its own `[[module]]` entries and
/// sections) after it.
pub(crate) fn core_config_with(
    setup: &Setup,
    name: &str,
    echo: Option<(&str, &str)>,
) -> Res<std::path::PathBuf> {
    core_config_typed(setup, name, "resident-shared", echo)
}

/// [`core_config_with`], the echo module of type `module_type`
/// (`resident-private`: the Core offers it a Unix socket).
pub(crate) fn core_config_typed(
    setup: &Setup,
    name: &str,
    module_type: &str,
    echo: Option<(&str, &str)>,
) -> Res<std::path::PathBuf> {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let p = |p: &std::path::Path| q(&p.display().to_string());
    let (cert, key) = setup.files(CORE)?;
    let dir = setup.dir.path();
    let mut text = format!(
        "[core]\nurn = {}\ncert = {}\nkey = {}\nca = {}\naudit_log = {}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\noperators = [{}]\n\n\
         [mediator]\nstore = {}\n",
        q(CORE),
        p(&cert),
        p(&key),
        p(&setup.ca_file()),
        p(&dir.join(format!("{name}-audit.jsonl"))),
        q(OPERATOR),
        p(&dir.join(format!("{name}-messages.redb"))),
    );
    if let Some((lines, more)) = echo {
        let (mcert, mkey) = setup.files(MODULE)?;
        let init = if module_type == "resident-private" {
            "init = \"core-started\"\n"
        } else {
            ""
        };
        // It provides the echo methods as an interface, which modules may
        // call through the Core (`module_to_module`).
        let contract = format!(
            "urn = \"{MODULE}\"\n{}",
            crate::procs::echo_contract(&format!(
                "type = \"{module_type}\"\n{init}\
                 provides = [{{ interface = \"{ECHO_INTERFACE}\", version = \"1.0.0\" }}]"
            ))
        );
        text.push_str(&format!(
            "\n[[module]]\nurn = {}\ntype = {}\ncommand = {}\ncert = {}\nkey = {}\n\
             lease_ttl = \"60s\"\n{lines}\n[module.env]\nFIXTURE_CONTRACT = {}\nFIXTURE_INTERFACE = {}\n\
             RUST_LOG = {}\n\n[[policy]]\nuser = {}\nallow = [{}]\n",
            q(MODULE),
            q(module_type),
            p(&setup.bin("anima-fixture-module")?),
            p(&mcert),
            p(&mkey),
            q(&contract),
            q(&anima_tests::echo_interface_toml()),
            q(&crate::procs::child_log()),
            q(USER),
            q(MODULE),
        ));
        text.push_str(more);
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The interface the echo module provides.
const ECHO_INTERFACE: &str = "anima.test/echo";

/// The module that calls the echo module through the Core.
const CALLER: &str = "urn:anima:module:bench-caller";

/// `module_to_module_p50_us`: a module's call of the echo interface through
/// the Core (the caller's lease and permission checked, the provider picked,
/// the call forwarded under the Core's lease), against the direct leased
/// call. The caller is a second fixture module, leased by the Core, whose
/// certificate the benchmark presents.
async fn module_to_module(setup: &Setup, opts: &Opts, direct: &mut Caller) -> Res<Figure> {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let p = |p: &std::path::Path| q(&p.display().to_string());
    let (cert, key) = setup.files(CALLER)?;
    // The caller serves only the conformance probe: it is a caller here.
    let contract = format!(
        "urn = \"{CALLER}\"\nversion = \"0.1.0\"\ntype = \"resident-shared\"\n\
         methods = [\"/anima.v1.Probe/Touch\", \"/anima.v1.Probe/Read\", \"/anima.v1.Probe/Watch\"]\n\
         max_lease = \"60s\"\n\
         requires = [{{ interface = \"{ECHO_INTERFACE}\", version = \">=1.0\" }}]\n"
    );
    let more = format!(
        "\n[[module]]\nurn = {}\ntype = \"resident-shared\"\ncommand = {}\ncert = {}\nkey = {}\n\
         lease_ttl = \"60s\"\n\n[module.env]\nFIXTURE_CONTRACT = {}\nRUST_LOG = {}\n\n\
         [[permission]]\nmodule = {}\ninterface = {}\n",
        q(CALLER),
        p(&setup.bin("anima-fixture-module")?),
        p(&cert),
        p(&key),
        q(&contract),
        q(&crate::procs::child_log()),
        q(CALLER),
        q(ECHO_INTERFACE),
    );
    let config = core_config_with(setup, "module-to-module", Some(("", &more)))?;
    let mut core = core_process(setup, &config).await?;
    let conn = setup
        .client_as(CALLER)
        .dial_addr(core.addr.clone(), PeerPolicy::exactly(urn(CORE)?))
        .await?;
    let mut mediated = Caller::Plain(EchoClient::new(conn.channel()));
    // Until both modules are leased, the call is refused.
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(s) = mediated.say().await {
        if Instant::now() > deadline {
            core.stop().await;
            return Err(format!("module-to-module calls never went through: {s}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = if opts.quick { 500 } else { 10_000 };
    let warmup = if opts.quick { 100 } else { 1_000 };
    let (mut s, mut b) = interleaved(&mut mediated, direct, n, 500, warmup).await?;
    let (v50, b50) = (s.pct(50.0), b.pct(50.0));
    let (v99, b99) = (s.pct(99.0), b.pct(99.0));
    core.stop().await;
    Ok(Figure::new("module_to_module_p50_us")
        .vs(v50, b50, 1)
        .f("p99", v99, 1)
        .f("baseline_p99", b99, 1)
        .i("n", n as u64))
}

/// `via_core_p50_us`: the same call through the Core's gateway, against the
/// direct leased call.
async fn via_core(setup: &Setup, opts: &Opts, direct: &mut Caller, hop: Hop) -> Res<Vec<Figure>> {
    let skipped = |why: &str| {
        vec![
            Figure::new(hop.figure())
                .s("skipped", why)
                .s("detail", "the Core's user gateway answered UNIMPLEMENTED"),
        ]
    };
    let config = core_config_typed(setup, hop.config(), hop.module_type(), Some(("", "")))?;
    let mut core = core_process(setup, &config).await?;
    let conn = setup
        .client_as(USER)
        .dial_addr(core.addr.clone(), PeerPolicy::exactly(urn(CORE)?))
        .await?;
    let mut gateway = Caller::Plain(EchoClient::new(conn.channel()));
    // The Core starts and leases its module after announcing readiness.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match gateway.say().await {
            Ok(()) => break,
            // A gateway refuses with an `anima` reason (UNKNOWN_METHOD until
            // it has leased the module and learned its methods); a Core
            // without one answers a bare UNIMPLEMENTED.
            Err(s)
                if s.code() == tonic::Code::Unimplemented
                    && anima_protocol::lease::reason_of(&s).is_none() =>
            {
                core.stop().await;
                return Ok(skipped("gateway-missing"));
            }
            Err(s) if Instant::now() > deadline => {
                core.stop().await;
                return Err(format!("the gateway never answered: {s}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let n = if opts.quick { 500 } else { 10_000 };
    let warmup = if opts.quick { 100 } else { 1_000 };
    let (mut s, mut b) = interleaved(&mut gateway, direct, n, 500, warmup).await?;
    let core_rss = rss_kib(core.pid).unwrap_or(0);
    let (v50, b50) = (s.pct(50.0), b.pct(50.0));
    let (v99, b99) = (s.pct(99.0), b.pct(99.0));
    core.stop().await;
    Ok(vec![
        Figure::new(hop.figure())
            .vs(v50, b50, 1)
            .f("p99", v99, 1)
            .f("baseline_p99", b99, 1)
            .i("n", n as u64)
            .f("core_rss_mb", core_rss as f64 * 1024.0 / 1e6, 1)
            .s("module", hop.module_type())
            .target("ratio<=1.5", v50 <= 1.5 * b50),
    ])
}

/// The Core's leg to its module in `via_core`.
#[derive(Debug, Clone, Copy)]
enum Hop {
    /// A Type III module: TCP.
    Tcp,
    /// A core-started Type II module: the Unix socket the Core offers it.
    Unix,
}

impl Hop {
    fn figure(self) -> &'static str {
        match self {
            Hop::Tcp => "via_core_p50_us",
            Hop::Unix => "via_core_unix_p50_us",
        }
    }

    fn config(self) -> &'static str {
        match self {
            Hop::Tcp => "via-core",
            Hop::Unix => "via-core-unix",
        }
    }

    fn module_type(self) -> &'static str {
        match self {
            Hop::Tcp => "resident-shared",
            Hop::Unix => "resident-private",
        }
    }
}

/// `core_idle_rss_mb`: `anima serve` with no modules, after settling.
pub async fn core_idle(setup: &Setup, opts: &Opts) -> Res<Figure> {
    let config = core_config(setup, "idle", false)?;
    let mut core = core_process(setup, &config).await?;
    let settle = Duration::from_secs(if opts.quick { 1 } else { 3 });
    tokio::time::sleep(settle).await;
    let rss = rss_kib(core.pid).ok_or("cannot read the Core's RSS")?;
    core.stop().await;
    // MB = 10^6 bytes, as the target is written.
    let mb = rss as f64 * 1024.0 / 1e6;
    Ok(Figure::new("core_idle_rss_mb")
        .f("value", mb, 1)
        .f("settled_s", settle.as_secs_f64(), 0)
        .target("<=20", mb <= 20.0))
}
