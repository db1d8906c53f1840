//! `cargo xtask abuse [ARGS…]`: the hostile-peer tests of the end-to-end
//! suite (`tests/e2e/abuse/`, issue 12 §5) at the scale — 1,000 slow
//! unauthenticated sockets, 30,000 held streams — in release mode, printing
//! what they measure (resident memory before, during and after; p50/p99 of
//! legitimate calls under abuse).
//!
//! CI runs the same tests at a lighter load (`cargo xtask test`); this sets
//! `ANIMA_ABUSE=full`. `ARGS` are passed to the test runner (e.g. `-E
//! 'test(/slow/)'` to narrow further with nextest).

use std::process::ExitCode;

/// Builds the release binaries, then runs the abuse tests with
/// `ANIMA_ABUSE=full`, one at a time, output shown.
pub fn abuse(args: &[String]) -> Result<ExitCode, String> {
    crate::cargo(
        &["build", "--release", "--workspace", "--bins", "--locked"],
        &[],
    )?;
    let env = [("ANIMA_ABUSE", "full")];
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut run = if crate::has_cargo_tool("nextest") {
        vec![
            "nextest",
            "run",
            "--release",
            "--locked",
            "-p",
            "anima-tests",
            "--no-capture",
            "--no-fail-fast",
            "-E",
            "test(/abuse_/)",
        ]
    } else {
        vec![
            "test",
            "--release",
            "--locked",
            "-p",
            "anima-tests",
            "--test",
            "e2e",
            "--",
            "abuse_",
            "--nocapture",
            "--test-threads=1",
        ]
    };
    run.extend(&extra);
    crate::cargo(&run, &env)?;
    Ok(ExitCode::SUCCESS)
}
