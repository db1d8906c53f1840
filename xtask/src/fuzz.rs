//! `cargo xtask fuzz [--seconds N] [TARGET…]`: builds the fuzz targets in
//! `fuzz/` (cargo-fuzz, libFuzzer) and runs each for N seconds (default 10)
//! from its committed seeds, one at a time, on one core.
//!
//! - cargo-fuzz is installed from crates.io when missing
//!   (`cargo install --locked cargo-fuzz`).
//! - It runs on the stable toolchain: `RUSTC_BOOTSTRAP=1` admits the
//!   sanitizer-coverage flags cargo-fuzz passes.
//! - Targets are built once, `-O` with the debug assertions and overflow
//!   checks `fuzz/Cargo.toml` turns on, without a sanitizer (the code is safe
//!   Rust), into `fuzz/target`. `--dev` builds them unoptimised and without
//!   debug info instead (cargo-fuzz's `--dev`): about half the build time,
//!   and runs several times slower; what CI uses for its few seconds a
//!   target, where the build is most of the cost.
//! - Each target reads `fuzz/corpus/TARGET` (the committed seeds, never
//!   written) and keeps what it finds in `fuzz/target/corpus/TARGET`; a
//!   crash is saved in `fuzz/artifacts/TARGET/` and fails the command after
//!   every target has run. `cargo fuzz run -O -s none TARGET
//!   fuzz/artifacts/TARGET/…` replays it.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The cargo-fuzz release installed when it is missing.
const CARGO_FUZZ: &str = "cargo-fuzz@0.13.2";

/// How `cargo fuzz build` builds the targets, optimised (the default).
const BUILD_FLAGS: [&str; 5] = ["-O", "--sanitizer", "none", "--codegen-units", "16"];
/// How `cargo fuzz build --dev` builds them (`cargo xtask fuzz --dev`).
const DEV_BUILD_FLAGS: [&str; 5] = ["--dev", "--sanitizer", "none", "--codegen-units", "16"];

/// How the targets are built.
#[derive(Clone, Copy)]
enum Build {
    /// `-O`: the release profile of `fuzz/Cargo.toml`.
    Optimised,
    /// `--dev`: the dev profile, without debug info.
    Dev,
}

impl Build {
    /// The profile directory under `fuzz/target/TRIPLE/`.
    fn dir(self) -> &'static str {
        match self {
            Build::Optimised => "release",
            Build::Dev => "debug",
        }
    }
}

/// One target's outcome.
struct Outcome {
    target: String,
    seconds: f64,
    executions: Option<u64>,
    ok: bool,
}

/// Runs `cargo xtask fuzz ARGS`.
pub fn fuzz(args: &[String]) -> Result<(), String> {
    let (seconds, mode, chosen) = parse_args(args)?;
    let fuzz_dir = crate::workspace_root()?.join("fuzz");
    let chosen = choose(&fuzz_dir, chosen)?;
    crate::ensure_cargo_tool("fuzz", CARGO_FUZZ)?;
    build(&fuzz_dir, mode, &chosen)?;
    let mut outcomes = Vec::new();
    for target in &chosen {
        outcomes.push(run(&fuzz_dir, mode, target, seconds)?);
    }
    print_summary(seconds, &outcomes);
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.target.as_str())
        .collect();
    crate::ensure(failed.is_empty(), || {
        format!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/)",
            failed.join(", ")
        )
    })
}

/// `[--seconds N] [--dev] [TARGET…]`: the seconds per target (default 10),
/// how the targets are built and the targets named.
fn parse_args(args: &[String]) -> Result<(u64, Build, Vec<String>), String> {
    let mut seconds: u64 = 10;
    let mut mode = Build::Optimised;
    let mut chosen = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--seconds takes a whole number of seconds above 0")?;
            }
            "--dev" => mode = Build::Dev,
            flag if flag.starts_with('-') => {
                return Err(format!(
                    "unknown option {flag} (usage: cargo xtask fuzz [--seconds N] [--dev] [TARGET…])"
                ));
            }
            target => chosen.push(target.to_owned()),
        }
    }
    Ok((seconds, mode, chosen))
}

/// The targets to run: those `chosen`, each of which must exist, or all of
/// them when none is.
fn choose(fuzz_dir: &Path, chosen: Vec<String>) -> Result<Vec<String>, String> {
    let all = targets(fuzz_dir)?;
    if let Some(target) = chosen.iter().find(|t| !all.contains(t)) {
        return Err(format!(
            "no fuzz target {target} (targets: {})",
            all.join(", ")
        ));
    }
    Ok(if chosen.is_empty() { all } else { chosen })
}

/// Builds the `chosen` targets once (all of them unless just one is chosen).
fn build(fuzz_dir: &Path, mode: Build, chosen: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let mut build = vec!["build"];
    build.extend(match mode {
        Build::Optimised => BUILD_FLAGS,
        Build::Dev => DEV_BUILD_FLAGS,
    });
    if let [one] = chosen {
        build.push(one);
    }
    let mut command = command(fuzz_dir, &build);
    if let Build::Dev = mode {
        // Symbols stay (a crash's backtrace names its functions); debug
        // info, most of a dev build's code generation and linking, goes.
        command.env("CARGO_PROFILE_DEV_DEBUG", "false");
    }
    eprintln!("xtask: cargo fuzz {}", build.join(" "));
    crate::run_command(&mut command, "cargo fuzz", |status| {
        format!("`cargo fuzz {}` failed ({status})", build.join(" "))
    })?;
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One line per target: seconds run, executions, executions per second and
/// the result.
fn print_summary(seconds: u64, outcomes: &[Outcome]) {
    eprintln!("xtask: fuzz summary ({seconds} s per target)");
    eprintln!(
        "  {:<16} {:>8} {:>12} {:>9}  result",
        "target", "seconds", "executions", "exec/s"
    );
    for o in outcomes {
        let (execs, rate) = match o.executions {
            Some(n) => (n.to_string(), format!("{:.0}", n as f64 / o.seconds)),
            None => ("?".into(), "?".into()),
        };
        eprintln!(
            "  {:<16} {:>8.1} {:>12} {:>9}  {}",
            o.target,
            o.seconds,
            execs,
            rate,
            if o.ok { "ok" } else { "FAILED" }
        );
    }
}

/// The targets: `fuzz/fuzz_targets/*.rs`, sorted.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>, String> {
    let dir = fuzz_dir.join("fuzz_targets");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Runs one built target for `seconds` from its seeds (the binary itself,
/// not `cargo fuzz run`, which would first rebuild whatever changed in the
/// tree since the build); a crash is an `ok: false` outcome, not an error,
/// so that the other targets still run.
fn run(fuzz_dir: &Path, mode: Build, target: &str, seconds: u64) -> Result<Outcome, String> {
    let binary = fuzz_dir
        .join("target")
        .join(host_triple()?)
        .join(mode.dir())
        .join(target);
    let corpus = fuzz_dir.join("target/corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let seeds = fuzz_dir.join("corpus").join(target);
    let mut command = Command::new(&binary);
    command
        .arg(format!("-max_total_time={seconds}"))
        // No single input takes seconds; statistics for the summary.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", path_str(&artifacts)?))
        .arg(&corpus)
        .arg(&seeds)
        .stderr(std::process::Stdio::piped());
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    let started = Instant::now();
    let output = command
        .spawn()
        .and_then(|child| child.wait_with_output())
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&output.stderr);
    // libFuzzer's closing lines (without its recommended dictionary): the
    // crash report, or the statistics.
    let closing: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("# Uses:"))
        .rev()
        .take(if output.status.success() { 8 } else { 60 })
        .collect();
    for line in closing.iter().rev() {
        eprintln!("  {line}");
    }
    let executions = log
        .lines()
        .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .filter_map(|n| n.trim().parse().ok())
        .next_back();
    Ok(Outcome {
        target: target.to_owned(),
        seconds,
        executions,
        ok: output.status.success(),
    })
}

/// The host's target triple, under which cargo-fuzz builds by default.
fn host_triple() -> Result<String, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .map_err(|e| format!("cannot run rustc -vV: {e}"))?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV names no host".into())
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

fn command(fuzz_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(crate::cargo_program());
    let (subcommand, rest) = args.split_first().map_or(("", &[][..]), |(s, r)| (*s, r));
    command
        .args(["fuzz", subcommand, "--fuzz-dir"])
        .arg(fuzz_dir)
        .args(rest)
        // cargo-fuzz's coverage flags are unstable ones: admit them on stable.
        .env("RUSTC_BOOTSTRAP", "1");
    command
}
