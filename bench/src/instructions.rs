//! `instructions`: instructions per call on the server side, the leased
//! module against plain tonic over the same mutual TLS, counted by
//! `valgrind --tool=callgrind`. Unlike a time, a count stays put whatever
//! else the machine does, so two builds compare by it on a noisy machine.
//!
//! Both servers run under callgrind. Each side gets warm-up calls, then its
//! counters are zeroed (`callgrind_control -z PID`), `n` calls are made, and
//! the counters dumped (`callgrind_control -d PID`): the dump's total over
//! `n` is the figure. The client (this process) is not counted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anima_core::audit::Actor;
use anima_protocol::launch::READY_PREFIX;
use tokio::process::Command;

use crate::Opts;
use crate::calls::{Caller, callers};
use crate::procs::{
    MODULE, PLAIN_READY, Proc, Res, Setup, module_command, module_ready, output, plain_command,
    plain_ready,
};
use crate::report::Figure;

/// Warm-up calls before the counters are zeroed.
const WARMUP: usize = 200;

/// `instructions_per_call`, or a line saying why it was skipped.
pub(crate) async fn instructions_per_call(setup: &Setup, opts: &Opts) -> Res<Figure> {
    if !installed("valgrind") || !installed("callgrind_control") {
        return Ok(Figure::new("instructions_per_call")
            .s("skipped", "no-valgrind")
            .s("detail", "apt-get install valgrind to count instructions"));
    }
    let dir = setup.dir.path().join("callgrind");
    std::fs::create_dir_all(&dir)?;
    let n = if opts.quick { 200 } else { 2_000 };
    let module_cmd = module_command(setup, MODULE, "type = \"resident-shared\"", false)?;
    let mut module = Proc::start(
        under_callgrind(&module_cmd, &dir.join("module")),
        READY_PREFIX,
        module_ready,
    )
    .await?;
    let mut plain = Proc::start(
        under_callgrind(&plain_command(setup)?, &dir.join("plain")),
        PLAIN_READY,
        plain_ready,
    )
    .await?;
    let result = async {
        let (link, mut leased, mut direct) = callers(setup, &module, &plain).await?;
        let leased_count = counted(&mut leased, module.pid, &dir.join("module"), n).await?;
        let plain_count = counted(&mut direct, plain.pid, &dir.join("plain"), n).await?;
        link.revoke("benchmark done", Actor::Core);
        Res::Ok((leased_count, plain_count))
    }
    .await;
    module.stop().await;
    plain.stop().await;
    let (v, base) = result?;
    Ok(Figure::new("instructions_per_call")
        .vs(v, base, 0)
        .i("n", n as u64)
        .s("side", "server")
        .s("counter", "callgrind"))
}

/// Whether `program` is on the `PATH`.
fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// `command` run under callgrind, its counts written to `out` and, for each
/// dump, `out.N`.
fn under_callgrind(command: &Command, out: &Path) -> Command {
    let inner = command.as_std();
    let mut wrapped = Command::new("valgrind");
    wrapped
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = inner.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// Instructions per call of `caller`'s server (`pid`, writing `out`):
/// `n` calls between a zeroing and a dump of its counters.
async fn counted(caller: &mut Caller, pid: u32, out: &Path, n: usize) -> Res<f64> {
    caller.timed(WARMUP, None).await?;
    control("-z", pid).await?;
    caller.timed(n, None).await?;
    let before = dumps(out);
    control("-d", pid).await?;
    let dump = dumps(out)
        .into_iter()
        .find(|d| !before.contains(d))
        .ok_or_else(|| format!("callgrind wrote no dump beside {}", out.display()))?;
    let text = std::fs::read_to_string(&dump)?;
    let total: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals: line in {}", dump.display()))?;
    Ok(total / n as f64)
}

/// The dumps callgrind has written beside `out` (`out.N`).
fn dumps(out: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (out.parent(), out.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|f| f.to_string_lossy().starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `callgrind_control FLAG PID`.
async fn control(flag: &str, pid: u32) -> Res<()> {
    let mut command = Command::new("callgrind_control");
    command.arg(flag).arg(pid.to_string());
    let what = format!("callgrind_control {flag} {pid}");
    output(command, &what, Duration::from_secs(60))
        .await
        .map(drop)
}
