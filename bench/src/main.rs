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
mod leases;
mod procs;
mod report;
mod stats;

use std::path::PathBuf;
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
    /// Only these groups (comma-separated): unary, rps, handshake,
    /// via_core, renewals, revoke, expiry, cold_start, core_idle.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The plain-tonic echo server the benchmark compares against.
    #[command(hide = true)]
    PlainEcho {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        ca: PathBuf,
    },
}

/// The groups `--only` can name.
const GROUPS: &[&str] = &[
    "unary",
    "rps",
    "handshake",
    "via_core",
    "renewals",
    "revoke",
    "expiry",
    "cold_start",
    "core_idle",
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
    if let Some(Command::PlainEcho { cert, key, ca }) = &cli.command {
        return match procs::serve_plain(cert, key, ca) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
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
    let mut ok = true;
    let mut failed = |report: &mut Report, name: &str, e: procs::Error| {
        ok = false;
        report.add(
            Figure::new(name)
                .s("skipped", "error")
                .s("detail", &e.to_string()),
        );
    };

    if ["unary", "rps", "handshake", "via_core"]
        .iter()
        .any(|g| opts.wants(g))
        && let Err(e) = calls::run(&setup, &opts, &mut report).await
    {
        failed(&mut report, "calls", e);
    }
    if opts.wants("renewals")
        && let Err(e) = leases::renewals(&setup, &opts, &mut report).await
    {
        failed(&mut report, "renewals_per_s", e);
    }
    if opts.wants("revoke") {
        match leases::revoke_to_refusal(&setup, &opts).await {
            Ok(f) => report.add(f),
            Err(e) => failed(&mut report, "revoke_to_refusal_us", e),
        }
    }
    if opts.wants("expiry") {
        match leases::expiry_to_halt(&setup, &opts).await {
            Ok(f) => report.add(f),
            Err(e) => failed(&mut report, "expiry_to_halt_us", e),
        }
    }
    if opts.wants("expiry") {
        match leases::stream_expiry_to_end(&setup, &opts).await {
            Ok(f) => report.add(f),
            Err(e) => failed(&mut report, "stream_expiry_to_end_us", e),
        }
    }
    if opts.wants("cold_start") {
        match leases::cold_start(&setup, &opts).await {
            Ok(f) => report.add(f),
            Err(e) => failed(&mut report, "cold_start_ms", e),
        }
    }
    if opts.wants("core_idle") {
        match calls::core_idle(&setup, &opts).await {
            Ok(f) => report.add(f),
            Err(e) => failed(&mut report, "core_idle_rss_mb", e),
        }
    }

    let seconds = started.elapsed().as_secs_f64();
    let (other_cpu, steal) = machine_meter.read();
    report.add(
        Figure::new("run")
            .f("seconds", seconds, 1)
            .f("other_cpu_pct", other_cpu, 1)
            .f("steal_pct", steal, 1)
            .f("load_1m", report::loadavg(), 2)
            .s("mode", if opts.quick { "quick" } else { "full" }),
    );
    let path = match cli.json {
        Some(p) => p,
        None => setup
            .bin_dir
            .parent()
            .map_or_else(|| PathBuf::from("target"), PathBuf::from)
            .join("bench")
            .join("latest.json"),
    };
    let command: Vec<String> = std::env::args().collect();
    report.write_json(
        &path,
        json!({
            "command": command.join(" "),
            "quick": opts.quick,
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "seconds": seconds,
        }),
    )?;
    eprintln!("anima-bench: wrote {}", path.display());
    Ok(ok)
}
