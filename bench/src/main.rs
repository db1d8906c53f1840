//! `anima-bench`: Anima's benchmark command (not tests).
//!
//! Run it on release builds with `cargo xtask bench` (`--quick` for a smoke
//! run). It prints one line per figure, `NAME key=value …`, and writes the
//! same figures as JSON to `target/bench/latest.json` (or `--json PATH`).
//!
//! Every figure that has a baseline is measured side by side with it in the
//! same run, interleaved (alternating blocks whose order flips every round),
//! and reported as `ratio = value / baseline`, since absolute times drift on
//! shared machines:
//!
//! | line | what | baseline |
//! | --- | --- | --- |
//! | `unary_p50_us`, `unary_p99_us` | 64-byte unary call to a leased SDK module process, sequential | the same service as plain tonic over the same mTLS |
//! | `unary_rps_c16` | 16 concurrent callers on one connection | plain tonic over mTLS |
//! | `unary_unix_p50_us`, `unary_unix_p99_us`, `unary_unix_rps_c16` | the same over Unix sockets, the transport of the modules a Core starts (group `unix`) | plain tonic over the same mTLS on a Unix socket |
//! | `instructions_per_call` | instructions the leased module's process runs per unary call (callgrind) | the plain tonic server's |
//! | `instructions_per_call_client` | instructions a client runs per unary call through a lease, the Core's side (callgrind, a process of its own) | a plain tonic client's |
//! | (both) `sha256`, `ratio_sha256_excluded` | of those, the instructions in SHA-256's block function (the proof's HMAC: valgrind hides SHA-NI, so this part overstates the native cost), and the ratio without them | the baseline's |
//! | `unary_p50_us_vs_goplugin`, `unary_p99_us_vs_goplugin`, `unary_rps_c16_vs_goplugin` | the leased call over a Unix socket, sequential and with 16 callers (group `peers`) | HashiCorp go-plugin with AutoMTLS (the anchor built by `cargo xtask bench --peers`) |
//! | `renewals_per_s_vs_etcd` | renewals of 1,000 leases at capacity (group `peers`) | etcd 3.4's lease keepalives over mTLS, 1,000 leases on 16 streams (the anchor built by `cargo xtask bench --peers`) |
//! | `via_core_p50_us` | the same call through the Core's gateway (`anima serve`) | direct leased call |
//! | `handshake_ms` | new connection + mutual lease + first call | new mTLS connection + first call |
//! | `rss_per_lease_kib`, `renewals_default_per_s`, `renewals_per_s` | one Core holding 1,000 leases on one Type III module process | — |
//! | `revoke_to_refusal_us` | revoke returning on the Core → the module refuses a call | — |
//! | `expiry_to_halt_us` | nominal expiry instant → running handler halted | — |
//! | `stream_expiry_to_end_us` | nominal expiry instant → a 1 ms server stream's `LEASE_EXPIRED` end at the client | — |
//! | `cold_start_ms` | Type I: spawn → first successful leased call | — |
//! | `core_idle_rss_mb` | `anima serve` with no modules, settled | — |
//!
//! Design targets are printed (`target=… met=yes|no`) but never asserted.
//! The module processes are the `anima-fixture-module` echo fixture; the
//! plain server is this binary (`anima-bench plain-echo`, hidden).

mod calls;
mod etcd;
mod instructions;
mod jetstream;
mod leases;
mod link;
mod messages;
mod peers;
mod procs;
mod report;
mod sidecar;
mod soak;
mod stats;

/// Logging to stderr, shared with the fixture module.
#[path = "../../tests/fixtures/logging.rs"]
mod logging;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::procs::{Res, Setup};
use crate::report::{Figure, Report};

/// Anima's benchmarks: leased calls against plain tonic over the same mTLS,
/// lease setup, renewals, revocation, expiry, cold start.
#[derive(Debug, Parser)]
#[command(name = "anima-bench")]
struct Cli {
    /// A smoke run: small counts, a few seconds.
    #[arg(long)]
    quick: bool,
    /// Where to write the figures as JSON (default
    /// `target/bench/latest.json`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only these groups (comma-separated): unary, rps, peers,
    /// instructions, handshake, via_core, module_to_module, sidecar_hop, renewals, revoke, expiry,
    /// cold_start, core_idle, messages.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keep one core busy with another process (a busy loop) for the whole
    /// run, for the figures that must hold under load.
    #[arg(long)]
    noise: bool,
    /// Keep the run's working folder (certificates, configurations, the
    /// Core's logs, callgrind's dumps) and print
    /// where it is, instead of removing it at the end.
    #[arg(long)]
    keep: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The busy loop of `--noise`.
    #[command(hide = true)]
    Spin,
    /// The plain-tonic echo server the benchmark compares against.
    #[command(hide = true)]
    PlainEcho(procs::PlainArgs),
    /// The client side of `instructions`: calls the echo server at `addr`
    /// (leased or plain) when told to on stdin, for callgrind to count.
    #[command(hide = true)]
    CountClient(instructions::ClientArgs),
    /// An hour (or --minutes) of `anima serve` with the embedded default
    /// under gateway load, operator revokes and `kill -9`s: prints a line a
    /// minute (calls, errors by cause, memory and descriptors of every
    /// process) and a `soak_summary`; fails on an unexplained error or
    /// growth past 10 %.
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        /// Gateway calls per second, all callers together.
        #[arg(long, default_value_t = 1200)]
        rate: u32,
        /// Seconds between operator revokes (each on the next sample).
        #[arg(long, default_value_t = 60)]
        revoke_every: u64,
        /// Seconds between `kill -9`s of a module process (each on the next
        /// sample).
        #[arg(long, default_value_t = 300)]
        kill_every: u64,
    },
}

/// The groups `--only` can name.
const GROUPS: &[&str] = &[
    "unary",
    "rps",
    "unix",
    "peers",
    "instructions",
    "handshake",
    "via_core",
    "module_to_module",
    "sidecar_hop",
    "renewals",
    "revoke",
    "expiry",
    "cold_start",
    "core_idle",
    "messages",
];

/// What to run, and how much.
#[derive(Debug)]
pub struct Opts {
    /// Small counts.
    pub quick: bool,
    only: Vec<String>,
}

impl Opts {
    /// Whether the group `name` runs.
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Spin) = &cli.command {
        return spin();
    }
    if let Some(Command::PlainEcho(files)) = &cli.command {
        return exit_code(procs::serve_plain(files).map(|()| true));
    }
    if let Some(Command::CountClient(args)) = &cli.command {
        return exit_code(
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(Into::into)
                .and_then(|rt| rt.block_on(instructions::count_client(args)))
                .map(|()| true),
        );
    }
    if let Some(Command::Soak {
        minutes,
        rate,
        revoke_every,
        kill_every,
    }) = cli.command
    {
        logging::log_to_stderr("warn");
        let opts = soak::SoakOpts {
            minutes,
            rate,
            revoke_every: revoke_every.max(1),
            kill_every: kill_every.max(1),
        };
        let anima = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("anima")))
            .filter(|path| path.exists())
            .ok_or("the anima binary is not beside anima-bench: run `cargo xtask soak`");
        return exit_code(anima.map_err(Into::into).and_then(|anima| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(soak::run(opts, &anima))
        }));
    }
    logging::log_to_stderr("warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"));
    exit_code(
        runtime
            .map_err(Into::into)
            .and_then(|rt| rt.block_on(run(cli))),
    )
}

/// Success when the run went through and every group ran; an error is one
/// `error: …` line on stderr.
fn exit_code(result: Res<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every wanted group; false when one of them failed.
async fn run(cli: Cli) -> Res<bool> {
    if let Some(unknown) = cli.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        return Err(format!(
            "unknown group {unknown:?}; the groups are {}",
            GROUPS.join(", ")
        )
        .into());
    }
    let opts = Opts {
        quick: cli.quick,
        only: cli.only,
    };
    let started = Instant::now();
    let machine_meter = stats::MachineMeter::start();
    let nofile = procs::raise_nofile();
    let mut report = Report::default();
    report.add(report::machine().i("open_files", nofile));
    let setup = Setup::new()?;
    let noise = if cli.noise {
        Some(Noise::start()?)
    } else {
        None
    };
    let ok = run_groups(&setup, &opts, &mut report).await;
    // Reaped before the machine is read: its CPU is not "other" work.
    let noise = noise.map(Noise::stop);
    let seconds = started.elapsed().as_secs_f64();
    let (other_cpu, steal) = machine_meter.read();
    let mut run = Figure::new("run")
        .f("seconds", seconds, 1)
        .f("other_cpu_pct", other_cpu, 1)
        .f("steal_pct", steal, 1)
        .f("load_1m", report::loadavg(), 2)
        .s("mode", if opts.quick { "quick" } else { "full" });
    run = match noise {
        Some(pct) => run.s("noise", "on").f("noise_cpu_pct", pct, 1),
        None => run.s("noise", "off"),
    };
    report.add(run);
    let path = cli.json.unwrap_or_else(|| default_json(&setup));
    write_json(&report, &path, &opts, seconds)?;
    eprintln!("anima-bench: wrote {}", path.display());
    if cli.keep {
        eprintln!("anima-bench: kept {}", setup.dir.keep().display());
    }
    Ok(ok)
}

/// The busy loop of `--noise`, until the benchmark that started it is gone.
fn spin() -> ExitCode {
    let parent = std::os::unix::process::parent_id();
    loop {
        let until = Instant::now() + std::time::Duration::from_millis(100);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        if std::os::unix::process::parent_id() != parent {
            return ExitCode::SUCCESS;
        }
    }
}

/// `--noise`: a busy loop in a process of its own (`anima-bench spin`).
struct Noise {
    child: std::process::Child,
    meter: stats::CpuMeter,
}

impl Noise {
    fn start() -> Res<Noise> {
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("spin")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let meter = stats::CpuMeter::start(child.id());
        Ok(Noise { child, meter })
    }

    /// Stops the loop; the share of one core it used.
    fn stop(mut self) -> f64 {
        let (_, pct) = self.meter.read();
        let _ = self.child.kill();
        let _ = self.child.wait();
        pct
    }
}

/// Runs the wanted groups in order, each adding its figures to `report`, or
/// one `NAME skipped=error detail=…` line when it fails; false when one
/// failed.
async fn run_groups(setup: &Setup, opts: &Opts, report: &mut Report) -> bool {
    let mut ok = true;
    if [
        "unary",
        "rps",
        "peers",
        "handshake",
        "via_core",
        "module_to_module",
    ]
    .iter()
    .any(|g| opts.wants(g))
    {
        let done = calls::run(setup, opts, report).await;
        ok &= added(report, "calls", done);
    }
    if opts.wants("renewals") {
        let done = leases::renewals(setup, opts, report).await;
        ok &= added(report, "renewals_per_s", done);
    }
    if opts.wants("peers") {
        let done = etcd::versus_etcd(setup, opts, report).await;
        ok &= added(report, "renewals_per_s_vs_etcd", done);
    }
    if opts.wants("messages") {
        let done = messages::run(setup, opts, report).await;
        ok &= added(report, "messages", done);
    }
    for (group, name, measure) in ONE_FIGURE {
        if opts.wants(group) {
            let figure = measure(setup, opts).await;
            ok &= added_figure(report, name, figure);
        }
    }
    ok
}

/// A measurement that makes one figure.
type Measure = for<'a> fn(&'a Setup, &'a Opts) -> Pin<Box<dyn Future<Output = Res<Figure>> + 'a>>;

/// The measurements that make one figure each, in report order: (group,
/// figure, measurement).
const ONE_FIGURE: [(&str, &str, Measure); 8] = [
    ("instructions", "instructions_per_call", |s, o| {
        Box::pin(instructions::instructions_per_call(s, o))
    }),
    ("instructions", "instructions_per_call_client", |s, o| {
        Box::pin(instructions::client_instructions_per_call(s, o))
    }),
    ("sidecar_hop", "sidecar_hop_p50_us", |s, o| {
        Box::pin(sidecar::sidecar_hop(s, o))
    }),
    ("revoke", "revoke_to_refusal_us", |s, o| {
        Box::pin(leases::revoke_to_refusal(s, o))
    }),
    ("expiry", "expiry_to_halt_us", |s, o| {
        Box::pin(leases::expiry_to_halt(s, o))
    }),
    ("expiry", "stream_expiry_to_end_us", |s, o| {
        Box::pin(leases::stream_expiry_to_end(s, o))
    }),
    ("cold_start", "cold_start_ms", |s, o| {
        Box::pin(leases::cold_start(s, o))
    }),
    ("core_idle", "core_idle_rss_mb", |s, o| {
        Box::pin(calls::core_idle(s, o))
    }),
];

/// Adds `figure`, or when the group failed the line `NAME skipped=error
/// detail=…` in its place; false when it failed.
fn added_figure(report: &mut Report, name: &str, figure: Res<Figure>) -> bool {
    let done = figure.map(|f| report.add(f));
    added(report, name, done)
}

/// For a group that added its own figures: true when it succeeded,
/// otherwise the line `NAME skipped=error detail=…` and false.
fn added(report: &mut Report, name: &str, done: Res<()>) -> bool {
    match done {
        Ok(()) => true,
        Err(e) => {
            report.add(
                Figure::new(name)
                    .s("skipped", "error")
                    .s("detail", &e.to_string()),
            );
            false
        }
    }
}

/// `target/bench/latest.json` beside the release binaries.
fn default_json(setup: &Setup) -> PathBuf {
    setup
        .bin_dir
        .parent()
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("bench")
        .join("latest.json")
}

/// Writes the figures to `path`, with the run's command line and time.
fn write_json(report: &Report, path: &Path, opts: &Opts, seconds: f64) -> Res<()> {
    let command: Vec<String> = std::env::args().collect();
    Ok(report.write_json(
        path,
        json!({
            "command": command.join(" "),
            "quick": opts.quick,
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "seconds": seconds,
        }),
    )?)
}
