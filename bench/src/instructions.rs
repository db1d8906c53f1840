//! `instructions`: instructions per call on the server side, the leased
//! module against plain tonic over the same mutual TLS, counted by
//! `valgrind --tool=callgrind`. Unlike a time, a count stays put whatever
//! else the machine does, so two builds compare by it on a noisy machine.
//!
//! Both servers run under callgrind. Each side gets warm-up calls, then its
//! counters are zeroed (`callgrind_control -z PID`), `n` calls are made, and
//! the counters dumped (`callgrind_control -d PID`): the dump's total over
//! `n` is the figure.
//!
//! `instructions_per_call_client` counts the other end the same way: the
//! client making the calls (the Core's side of a leased call, `LeasedChannel`
//! adding each call's proof; against a plain tonic channel) runs in a process
//! of its own under callgrind (`anima-bench count-client`), against the
//! same two servers run normally. It makes its warm-up calls, says `ready`,
//! makes `n` calls when told (its counters zeroed), says `done`, and exits
//! when told (its counters dumped).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anima_core::audit::{Actor, AuditLog};
use anima_core::lease::{LeaseLink, LeaseTable, RenewalPolicy};
use anima_protocol::launch::READY_PREFIX;
use anima_protocol::lease::{LeaseSigner, Scope};
use anima_protocol::transport::Address;
use anima_protocol::{ClientTls, PeerPolicy, TlsIdentity, TrustRoot};
use anima_tests::SAY;
use anima_tests::echo::echo_client::EchoClient;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

use crate::Opts;
use crate::calls::{Caller, callers};
use crate::procs::{
    CORE, CertFiles, MODULE, PLAIN, PLAIN_READY, Proc, Res, Setup, installed, module_command,
    module_process, module_ready, output, plain_command, plain_process, plain_ready, urn,
};
use crate::report::Figure;

/// Warm-up calls before the counters are zeroed.
const WARMUP: usize = 200;

/// `instructions_per_call`, or a line saying why it was skipped.
pub(crate) async fn instructions_per_call(setup: &Setup, opts: &Opts) -> Res<Figure> {
    let (dir, n) = match prepare(setup, opts, "instructions_per_call", "callgrind")? {
        Ok(ready) => ready,
        Err(skipped) => return Ok(skipped),
    };
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
        .vs(v.total, base.total, 0)
        .f("sha256", v.sha256, 0)
        .f("baseline_sha256", base.sha256, 0)
        .f("ratio_sha256_excluded", v.without_sha256(base), 3)
        .i("n", n as u64)
        .s("side", "server")
        .s("counter", "callgrind"))
}

/// The `figure`'s skip line without valgrind; else the folder `name` for
/// its dumps (made) and how many calls to count.
fn prepare(
    setup: &Setup,
    opts: &Opts,
    figure: &str,
    name: &str,
) -> Res<Result<(PathBuf, usize), Figure>> {
    if !installed("valgrind") || !installed("callgrind_control") {
        return Ok(Err(Figure::new(figure)
            .s("skipped", "no-valgrind")
            .s("detail", "apt-get install valgrind to count instructions")));
    }
    let dir = setup.dir.path().join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(Ok((dir, if opts.quick { 200 } else { 2_000 })))
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
async fn counted(caller: &mut Caller, pid: u32, out: &Path, n: usize) -> Res<Count> {
    caller.timed(WARMUP, None).await?;
    control("-z", pid).await?;
    caller.timed(n, None).await?;
    let before = dumps(out);
    control("-d", pid).await?;
    Ok(Count::read(out, &before)?.per(n))
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

/// `instructions_per_call_client`: instructions per call of the client
/// (a process of its own under callgrind), leased against plain, or a line
/// saying why it was skipped.
pub(crate) async fn client_instructions_per_call(setup: &Setup, opts: &Opts) -> Res<Figure> {
    let (dir, n) = match prepare(
        setup,
        opts,
        "instructions_per_call_client",
        "callgrind-client",
    )? {
        Ok(ready) => ready,
        Err(skipped) => return Ok(skipped),
    };
    let mut module = module_process(setup, MODULE, "type = \"resident-shared\"", false).await?;
    let mut plain = plain_process(setup).await?;
    let counted = async {
        let leased = client_count(setup, module.addr.clone(), MODULE, true, n, &dir).await?;
        let direct = client_count(setup, plain.addr.clone(), PLAIN, false, n, &dir).await?;
        Res::Ok((leased, direct))
    }
    .await;
    module.stop().await;
    plain.stop().await;
    let ((v, renewals), (base, _)) = counted?;
    Ok(Figure::new("instructions_per_call_client")
        .vs(v.total, base.total, 0)
        .f("sha256", v.sha256, 0)
        .f("baseline_sha256", base.sha256, 0)
        .f("ratio_sha256_excluded", v.without_sha256(base), 3)
        .i("n", n as u64)
        .i("renewals_counted", renewals)
        .s("side", "client")
        .s("counter", "callgrind"))
}

/// One client under callgrind calling `server` (`urn`) at `addr`, `leased`
/// or not: its instructions per call over `n` calls, and the renewals its
/// lease made meanwhile (counted too; none are expected).
async fn client_count(
    setup: &Setup,
    addr: Address,
    server: &str,
    leased: bool,
    n: usize,
    dir: &Path,
) -> Res<(Count, u64)> {
    let (cert, key) = setup.files(CORE)?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("count-client")
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--ca")
        .arg(setup.ca_file())
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--server")
        .arg(server)
        .arg("--n")
        .arg(n.to_string());
    if leased {
        command.arg("--leased");
    }
    let out = dir.join(if leased { "leased" } else { "plain" });
    let mut child = under_callgrind(&command, &out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("the client exited at once")?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let limit = Duration::from_secs(300);
    let mut said = async |what: &str| -> Res<String> {
        let line = tokio::time::timeout(limit, lines.next_line())
            .await
            .map_err(|_| format!("the client did not say {what} within {limit:?}"))??
            .ok_or_else(|| format!("the client exited before saying {what}"))?;
        if line.starts_with(what) {
            Ok(line)
        } else {
            Err(format!("the client said {line:?}, not {what}").into())
        }
    };
    said("ready").await?;
    control("-z", pid).await?;
    stdin.write_all(b"go\n").await?;
    let done = said("done").await?;
    let before = dumps(&out);
    control("-d", pid).await?;
    stdin.write_all(b"exit\n").await?;
    let status = tokio::time::timeout(limit, child.wait()).await??;
    if !status.success() {
        return Err(format!("the counting client failed ({status})").into());
    }
    let renewals = done
        .strip_prefix("done renewals=")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    Ok((Count::read(&out, &before)?.per(n), renewals))
}

/// What one callgrind dump counted.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Count {
    /// Every instruction.
    total: f64,
    /// Those in SHA-256's block function (the proof's HMAC, on either side).
    /// Valgrind does not run the CPU's SHA instructions, so under it `ring`
    /// takes a vector path that runs about 2,100 instructions a block where
    /// natively the CPU's SHA-NI instructions do the work: this is the part
    /// of `total` that overstates the native cost.
    sha256: f64,
}

/// The functions [`Count::sha256`] adds up (`ring`'s per-CPU variants).
const SHA256_BLOCKS: &str = "sha256_block_data_order";

/// The function a callgrind `fn=`/`cfn=` value names: `(id) name` (which
/// `names` keeps), `(id)` (named before), or a bare name.
fn name<'a>(names: &'a mut std::collections::HashMap<String, String>, value: &'a str) -> &'a str {
    match value.strip_prefix('(').and_then(|r| r.split_once(')')) {
        Some((id, rest)) if !rest.trim().is_empty() => {
            names.insert(id.to_owned(), rest.trim().to_owned());
            rest.trim()
        }
        Some((id, _)) => names.get(id).map_or("", String::as_str),
        None => value.trim(),
    }
}

impl Count {
    /// The dump callgrind wrote beside `out` since `before`.
    fn read(out: &Path, before: &[PathBuf]) -> Res<Count> {
        let dump = dumps(out)
            .into_iter()
            .find(|d| !before.contains(d))
            .ok_or_else(|| format!("callgrind wrote no dump beside {}", out.display()))?;
        let text = std::fs::read_to_string(&dump)?;
        Count::parse(&text).ok_or_else(|| format!("no totals: line in {}", dump.display()).into())
    }

    /// A dump's `totals:` line and its functions' own costs (callgrind's
    /// format: `fn=(id) name` names a function once, `fn=(id)` again; a
    /// cost line is positions then events, `Ir` first; the line after
    /// `calls=` is the callee's inclusive cost, not the caller's own).
    fn parse(text: &str) -> Option<Count> {
        let first = |v: &str| v.split_whitespace().next()?.parse::<f64>().ok();
        let mut positions = 1;
        let mut names = std::collections::HashMap::new();
        let mut in_sha256 = false;
        let mut call_cost_next = false;
        let mut total = None;
        let mut sha256 = 0.0;
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("positions:") {
                positions = p.split_whitespace().count().max(1);
            } else if let Some(v) = line.strip_prefix("totals:") {
                total = first(v);
            } else if let Some(f) = line.strip_prefix("fn=") {
                in_sha256 = name(&mut names, f).contains(SHA256_BLOCKS);
            } else if let Some(f) = line.strip_prefix("cfn=") {
                // A callee: named here, perhaps for a later `fn=(id)`.
                name(&mut names, f);
            } else if line.starts_with("calls=") {
                call_cost_next = true;
            } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
                if std::mem::take(&mut call_cost_next) || !in_sha256 {
                    continue;
                }
                sha256 += line
                    .split_whitespace()
                    .nth(positions)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
        Some(Count {
            total: total?,
            sha256,
        })
    }

    /// The ratio of `self` to `baseline`, each without its SHA-256 blocks.
    fn without_sha256(self, baseline: Count) -> f64 {
        (self.total - self.sha256) / (baseline.total - baseline.sha256).max(1.0)
    }

    /// Per call, over `n` calls.
    fn per(self, n: usize) -> Count {
        let n = n.max(1) as f64;
        Count {
            total: self.total / n,
            sha256: self.sha256 / n,
        }
    }
}

/// What `anima-bench count-client` is told.
#[derive(Debug, clap::Args)]
pub(crate) struct ClientArgs {
    /// The client's certificate and key (the Core's identity), and the CA.
    #[command(flatten)]
    files: CertFiles,
    /// The echo server.
    #[arg(long)]
    addr: Address,
    /// Its URN.
    #[arg(long)]
    server: String,
    /// Through a lease, as the Core calls a module (else plain mTLS).
    #[arg(long)]
    leased: bool,
    /// Calls counted.
    #[arg(long)]
    n: usize,
}

/// The counting client: warm-up calls, `ready`; on a line from stdin, `n`
/// calls, `done renewals=R`; on the next line, the end.
pub(crate) async fn count_client(args: &ClientArgs) -> Res<()> {
    let identity = TlsIdentity::from_pem_files(&args.files.cert, &args.files.key)?;
    let client = ClientTls::new(identity.clone(), TrustRoot::from_pem_file(&args.files.ca)?);
    let conn = client
        .dial_addr(args.addr.clone(), PeerPolicy::exactly(urn(&args.server)?))
        .await?;
    let (mut caller, link) = if args.leased {
        let link = LeaseLink::open(
            conn,
            Arc::new(LeaseSigner::from_identity(&identity)?),
            Scope::new([SAY])?,
            RenewalPolicy::new(Duration::from_secs(60)),
            AuditLog::discard(),
            LeaseTable::new(),
        )
        .await?;
        (Caller::Leased(EchoClient::new(link.channel())), Some(link))
    } else {
        (Caller::Plain(EchoClient::new(conn.channel())), None)
    };
    caller.timed(WARMUP, None).await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    stdin.next_line().await?;
    let renewed = link.as_ref().map_or(0, LeaseLink::renewals);
    caller.timed(args.n, None).await?;
    let renewals = link.as_ref().map_or(0, LeaseLink::renewals) - renewed;
    stdout
        .write_all(format!("done renewals={renewals}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    stdin.next_line().await?;
    if let Some(link) = link {
        link.revoke("benchmark done", Actor::Core);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump in callgrind's compressed format: names given once by id,
    /// subposition compression, and a call whose inclusive cost is not
    /// the caller's own.
    const DUMP: &str = "# callgrind format
version: 1
positions: line
events: Ir
summary: 1000

ob=(1) /lib/x
fl=(1) a.rs
fn=(1) main
10 100
cfl=(2) ring.c
cfn=(2) ring_core_0_17_14__sha256_block_data_order_avx
calls=2 5
+1 700
+2 50

fl=(2)
fn=(2)
5 400
+1 300
* 20
fn=(3) other
1 130
totals: 1000
";

    #[test]
    fn a_dump_gives_its_total_and_sha256s_own_cost() {
        let count = Count::parse(DUMP).expect("parses");
        assert_eq!(
            count,
            Count {
                total: 1000.0,
                sha256: 720.0
            }
        );
        let baseline = Count {
            total: 560.0,
            sha256: 0.0,
        };
        assert_eq!(count.without_sha256(baseline), 0.5);
        assert_eq!(
            count.per(10),
            Count {
                total: 100.0,
                sha256: 72.0
            }
        );
    }

    #[test]
    fn a_dump_without_totals_is_refused() {
        assert_eq!(Count::parse("events: Ir\nfn=(1) main\n1 5\n"), None);
    }

    #[test]
    fn positions_before_the_costs_are_skipped() {
        let dump = "positions: instr line\nevents: Ir\nfn=(1) sha256_block_data_order\n0x10 3 9\ntotals: 9\n";
        assert_eq!(Count::parse(dump).map(|c| c.sha256), Some(9.0));
    }
}
