//! Waiting on what a test cannot go on without: a command run to its end
//! (`python3`, `anima certs init`), failing with what it printed; a call
//! answered within [`PATIENCE`].

use std::future::Future;
use std::process::{Command, Output};

use anima_tests::PATIENCE;

/// Runs `command` to its end; `what` names it if it cannot start.
pub(crate) fn output(command: &mut Command, what: &str) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"))
}

/// Runs `command`, which must exit 0 ([`assert_succeeded`]).
pub(crate) fn succeeds(command: &mut Command, what: &str) -> Output {
    let out = output(command, what);
    assert_succeeded(&out);
    out
}

/// The command exited 0; if not, the failure shows its stdout and stderr.
pub(crate) fn assert_succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `call` comes to, which must be within [`PATIENCE`]; `what` says
/// what did not come in time.
pub(crate) async fn in_time<T>(call: impl Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(PATIENCE, call).await.expect(what)
}
