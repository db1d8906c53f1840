//! Project automation.
//!
//! `cargo xtask serve [ARGS…]` builds the binaries in release mode (the Core
//! and the sample modules it hosts; not the test packages, which serving does
//! not need) and runs `anima serve [ARGS…]`.
//!
//! `cargo xtask bench [--peers] [ARGS…]` builds every binary in release mode
//! and runs the benchmarks, `anima-bench [ARGS…]` (`--quick` for a smoke
//! run; see BENCHMARKS.md). `--peers` first builds the go-plugin and etcd
//! anchors (`../shared/anchors/{go-plugin,etcd}/run.sh`, which install their
//! Debian packages) that the `peers` group measures against.
//!
//! `cargo xtask test` runs every check CI runs, in order, and stops at the
//! first failure (installing Python's `grpcio` and `cryptography` first when
//! missing — the gateway and conformance tests use a client and a module
//! written with them, not with our code — and Debian's `nats-server`, which
//! the mediator's tests on NATS JetStream start):
//!
//! 1. `cargo fmt --all -- --check`, then the release feature graph: no
//!    test-only fault hook in a shipped crate (see `shipped.rs`), then
//!    `cargo machete`: no crate declares a dependency it does not use
//!    (installed from crates.io when missing)
//! 2. `cargo clippy --workspace --all-targets --locked -- -D warnings`
//! 3. `cargo doc --workspace --no-deps --locked` with `RUSTDOCFLAGS=-D warnings`
//! 4. `cargo build --workspace --all-targets --locked` (the end-to-end
//!    tests start the binaries as real processes; the tests are built with
//!    them, with one feature set)
//! 5. the doc tests, then `cargo nextest run --workspace` (falls back to
//!    `cargo test` when nextest is not installed).
//!
//! `cargo xtask abuse [ARGS…]` runs the hostile-peer tests at full scale in
//! release mode and prints what they measure (see `abuse.rs`).
//!
//! `cargo xtask soak [--minutes N] [--rate R] …` builds every binary in
//! release mode and runs `anima-bench soak`: the embedded default under
//! gateway load, operator revokes and `kill -9`s, a line a minute (see
//! BENCHMARKS.md).
//!
//! `cargo xtask fuzz [--seconds N] [--dev] [TARGET…]` builds the fuzz targets in
//! `fuzz/` and runs each for N seconds (default 10) from its seed corpus
//! (see `fuzz.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};

mod abuse;
mod fuzz;
mod shipped;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let done = match args.first().map(String::as_str) {
        Some("test") => test(rest).map(|()| ExitCode::SUCCESS),
        Some("bench") => bench(rest),
        Some("abuse") => abuse::abuse(rest),
        Some("soak") => soak(rest),
        Some("fuzz") => fuzz::fuzz(rest).map(|()| ExitCode::SUCCESS),
        Some("serve") => serve(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask test [TEST-FILTER…] | cargo xtask serve [ANIMA-SERVE-ARGS…] \
                 | cargo xtask bench [--quick] [--peers] [ANIMA-BENCH-ARGS…] \
                 | cargo xtask fuzz [--seconds N] [--dev] [TARGET…] | cargo xtask abuse [ARGS…] \
                 | cargo xtask soak [--minutes N] [--rate R]"
            );
            return ExitCode::from(2);
        }
    };
    exit_code(done)
}

/// A subcommand's exit status; its error is one `xtask: …` line on stderr
/// and exit status 1.
fn exit_code(done: Result<ExitCode, String>) -> ExitCode {
    done.unwrap_or_else(|e| {
        eprintln!("xtask: {e}");
        ExitCode::FAILURE
    })
}

/// The workspace root (the parent of xtask's manifest directory).
fn workspace_root() -> Result<&'static Path, String> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| "xtask is not inside the workspace".into())
}

/// The cargo that runs xtask (`$CARGO`), else `cargo` from the `PATH`.
fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// `Ok` when `ok`, else the error `error` writes.
fn ensure(ok: bool, error: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(error()) }
}

/// Runs `command` to its end: an error naming `program` when it cannot
/// start, and `failed(status)` when it exits unsuccessfully.
fn run_command(
    command: &mut Command,
    program: &str,
    failed: impl FnOnce(ExitStatus) -> String,
) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    ensure(status.success(), || failed(status))
}

/// Whether `cargo SUBCOMMAND` is available. Without `CARGO_PKG_NAME`:
/// cargo-machete takes it to mean `cargo run` started it (see `machete`),
/// and then fails `--version`.
fn has_cargo_tool(subcommand: &str) -> bool {
    Command::new(cargo_program())
        .args([subcommand, "--version"])
        .env_remove("CARGO_PKG_NAME")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The cargo-machete release installed when it is missing.
const CARGO_MACHETE: &str = "cargo-machete@0.9.2";

/// Installs `krate` (`name@version`) from crates.io when `cargo SUBCOMMAND`
/// is not available.
fn ensure_cargo_tool(subcommand: &str, krate: &str) -> Result<(), String> {
    if has_cargo_tool(subcommand) {
        return Ok(());
    }
    eprintln!("xtask: installing {krate} (cargo install --locked)");
    run_command(
        Command::new(cargo_program()).args(["install", "--locked", krate]),
        "cargo install",
        |_| format!("cannot install {krate} (cargo install --locked {krate})"),
    )
}

fn test(filter: &[String]) -> Result<(), String> {
    ensure_python_grpcio()?;
    ensure_nats_server()?;
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    shipped::check_feature_graph()?;
    ensure_cargo_tool("machete", CARGO_MACHETE)?;
    machete()?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // Every binary (the e2e tests start those of other packages) and every
    // test, in one build with the features the test run resolves: a build
    // of `--bins` alone resolves them without the dev-dependencies' (tokio's
    // `test-util`), and the network stack and every crate of ours would be
    // compiled twice.
    cargo(&["build", "--workspace", "--all-targets", "--locked"], &[])?;
    let filter: Vec<&str> = filter.iter().map(String::as_str).collect();
    if has_cargo_tool("nextest") {
        // Doc tests first, so the run closes on nextest's summary. The test
        // copies of the SDK and the protocol crate recompile their sources
        // under other crate names, so the examples (which name the real
        // crates) run once, in the real crates; `--doc` ignores the
        // `doctest = false` in those packages' manifests.
        cargo(
            &[
                "test",
                "--workspace",
                "--exclude",
                "anima-faulty-fixtures",
                "--exclude",
                "anima-protocol-faulty",
                "--doc",
                "--locked",
            ],
            &[],
        )?;
        let mut args = vec![
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ];
        args.extend(&filter);
        cargo(&args, &[])?;
    } else {
        let mut args = vec!["test", "--workspace", "--locked", "--no-fail-fast"];
        args.extend(&filter);
        cargo(&args, &[])?;
    }
    Ok(())
}

fn serve(args: &[String]) -> Result<ExitCode, String> {
    let mut full = vec!["serve".to_owned()];
    full.extend_from_slice(args);
    // Without the test packages: serving does not need them.
    run_release(
        "anima",
        &full,
        &[
            "--exclude",
            "anima-tests",
            "--exclude",
            "anima-faulty-fixtures",
        ],
    )
}

fn soak(args: &[String]) -> Result<ExitCode, String> {
    let mut full = vec!["soak".to_owned()];
    full.extend_from_slice(args);
    run_release("anima-bench", &full, &[])
}

fn bench(args: &[String]) -> Result<ExitCode, String> {
    let peers = args.iter().any(|a| a == "--peers");
    let args: Vec<String> = args.iter().filter(|a| *a != "--peers").cloned().collect();
    if peers {
        build_peer_anchors()?;
    }
    // The benchmarks drive the test package's echo fixture.
    run_release("anima-bench", &args, &[])
}

/// `--peers`: the anchors' `run.sh` (in `$ANIMA_ANCHORS`, else
/// `../shared/anchors` beside the workspace) install the Debian packages
/// they need and build what the bench's `peers` group then runs (go-plugin's
/// host and plugin; etcd's lease client); their own short runs go to stderr.
fn build_peer_anchors() -> Result<(), String> {
    let anchors = match std::env::var_os("ANIMA_ANCHORS") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root()?.join("..").join("shared").join("anchors"),
    };
    build_anchor(
        &anchors,
        "go-plugin",
        &[
            ("LAUNCHES", "1"),
            ("CALLS", "200"),
            ("DURATION", "1s"),
            ("MTLS_MODES", "on"),
        ],
    )?;
    build_anchor(
        &anchors,
        "etcd",
        &[
            ("MODES", "mtls"),
            ("PROBES", "0"),
            ("SECS", "1"),
            // Its keepalive phase runs 16 workers and refuses fewer leases
            // than workers ("too few leases granted for keepalive phase").
            ("KA_LEASES", "16"),
            ("RW_TRIALS", "1"),
            ("EXP_TRIALS", "1"),
            ("QUIET_WAIT_S", "0"),
            ("PHASE_QUIET_WAIT_S", "0"),
            ("ATTEMPTS", "1"),
        ],
    )
}

/// Runs the `name` anchor's `run.sh` with `env` (a short run that installs
/// and builds it).
fn build_anchor(anchors: &Path, name: &str, env: &[(&str, &str)]) -> Result<(), String> {
    let script = anchors.join(name).join("run.sh");
    if !script.is_file() {
        return Err(format!(
            "--peers: no {name} anchor at {} (set ANIMA_ANCHORS to the anchors folder)",
            script.display()
        ));
    }
    eprintln!(
        "xtask: bash {} (builds the {name} anchor)",
        script.display()
    );
    run_command(
        Command::new("bash")
            .arg(&script)
            .envs(env.iter().copied())
            .stdout(std::io::stderr()),
        &format!("the {name} anchor"),
        |status| format!("the {name} anchor's run.sh failed ({status})"),
    )
}

/// Builds the workspace's binaries in release mode (less `exclude`), then
/// runs `target/release/BIN ARGS`.
fn run_release(bin: &str, args: &[String], exclude: &[&str]) -> Result<ExitCode, String> {
    let mut build = vec!["build", "--release", "--workspace", "--bins", "--locked"];
    build.extend_from_slice(exclude);
    cargo(&build, &[])?;
    let target = match std::env::var("CARGO_TARGET_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => workspace_root()?.join("target"),
    };
    let path = target.join("release").join(bin);
    eprintln!("xtask: {} {}", path.display(), args.join(" "));
    let status = Command::new(&path)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// The pinned Python packages of the cross-language tests.
const PYTHON_REQUIREMENTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/python/requirements.txt"
);

/// The gateway tests drive the Core with Python's `grpcio` (a gRPC stack we
/// did not write), and the conformance tests run a module written with it and
/// `cryptography`; install the pinned versions (pip does nothing when they
/// are installed already).
fn ensure_python_grpcio() -> Result<(), String> {
    eprintln!("xtask: python3 -m pip install -r {PYTHON_REQUIREMENTS}");
    run_command(
        Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            PYTHON_REQUIREMENTS,
        ]),
        "python3 -m pip",
        |_| {
            format!(
                "cannot install the Python test packages (python3 -m pip install -r {PYTHON_REQUIREMENTS})"
            )
        },
    )
}

/// The mediator's tests on NATS JetStream (M14) start Debian's
/// `nats-server`; install it when missing (as root, or with `sudo -n`).
fn ensure_nats_server() -> Result<(), String> {
    let present = Command::new("nats-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: apt-get install nats-server");
    let script = "export DEBIAN_FRONTEND=noninteractive; \
        apt-get install -y -q nats-server || { apt-get update -q && apt-get install -y -q nats-server; }";
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let mut command = if root {
        Command::new("sh")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", "sh"]);
        sudo
    };
    run_command(command.args(["-c", script]), "apt-get", |_| {
        "cannot install nats-server (apt-get install nats-server): the mediator's tests on NATS JetStream need it".to_owned()
    })
}

fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    eprintln!("xtask: cargo {}", args.join(" "));
    run_command(
        Command::new(cargo_program())
            .args(args)
            .envs(env.iter().copied()),
        "cargo",
        |status| format!("`cargo {}` failed ({status})", args.join(" ")),
    )
}

/// `cargo machete` over the workspace. cargo-machete takes a set
/// `CARGO_PKG_NAME` (which `cargo xtask` has, being a `cargo run`) to mean
/// it was started by `cargo run` and reads its arguments differently, so the
/// variable is removed for it.
fn machete() -> Result<(), String> {
    eprintln!("xtask: cargo machete");
    run_command(
        Command::new(cargo_program())
            .arg("machete")
            .env_remove("CARGO_PKG_NAME"),
        "cargo",
        |status| {
            format!(
                "`cargo machete` failed ({status}): a crate declares a dependency it does not use"
            )
        },
    )
}
