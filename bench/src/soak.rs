//! `anima-bench soak`: an hour (or `--minutes N`) of the embedded default
//! under load, as an operator would run it.
//!
//! `anima serve` with no configuration in a fresh directory (dev
//! certificates made, the three samples hosted), a real client calling every
//! sample through the gateway at `--rate` calls per second, the Core's own
//! renewals, an operator revoke every minute and a module `kill -9` every
//! five, each on the next sample in turn. Each minute it prints one line:
//! calls, the calls refused because of a revoke or kill (by reason), the
//! calls that failed otherwise (unexplained), and the resident memory and
//! open file descriptors of the Core and every module process. At the end:
//! one `soak_summary` line; the run fails when a call failed unexplained, or
//! when memory or descriptors grew by more than 10 % from the first minute
//! after warm-up to the last.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anima_protocol::lease::{Reason, reason_of};
use anima_protocol::pb::core_admin_client::CoreAdminClient;
use anima_protocol::pb::{ListModulesRequest, ModuleInfo, RevokeLeaseRequest};
use anima_protocol::{ClientTls, Connection, PeerPolicy, TlsIdentity, TrustRoot, UrnKind};
use anima_sample_modules::pb::hasher_client::HasherClient;
use anima_sample_modules::pb::kv_store_client::KvStoreClient;
use anima_sample_modules::pb::tally_client::TallyClient;
use anima_sample_modules::pb::{DigestRequest, GetRequest, IncrementRequest, PutRequest};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::procs::{Proc, Res, child_log};
use crate::stats::rss_kib;

/// The Core's admin API, as an operator reaches it.
type Admin = CoreAdminClient<anima_protocol::transport::PeerChannel>;

/// The samples, in the order revokes and kills take them.
const SAMPLES: [&str; 3] = ["hasher", "kvstore", "tally"];

/// Concurrent callers, and the connections they share.
const CALLERS: usize = 32;
const CONNECTIONS: usize = 4;

/// How long after a revoke or kill of a module its refused calls count as
/// caused by it (a killed module is restarted with backoff, then leased).
const EXPLAINED_FOR: Duration = Duration::from_secs(20);

/// A call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What `soak` does, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct SoakOpts {
    /// How long the run lasts.
    pub minutes: u64,
    /// Gateway calls per second asked of the client (all callers together).
    pub rate: u32,
    /// Seconds between operator revokes.
    pub revoke_every: u64,
    /// Seconds between `kill -9`s.
    pub kill_every: u64,
}

/// A revoke or kill: of which module, when.
#[derive(Debug, Clone)]
struct Disruption {
    module: &'static str,
    at: Instant,
}

/// How the calls went, since the last minute's line.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// Refused in the wake of a revoke or kill of their module, by reason.
    explained: BTreeMap<String, u64>,
    /// Failed otherwise: (module, what), counted.
    unexplained: BTreeMap<(String, String), u64>,
}

impl Tally {
    fn calls(&self) -> u64 {
        self.ok + self.explained.values().sum::<u64>() + self.unexplained.values().sum::<u64>()
    }
}

/// What the callers share.
struct Shared {
    tally: Mutex<Tally>,
    disruptions: Mutex<Vec<Disruption>>,
}

impl Shared {
    fn record(&self, module: &'static str, result: Result<(), tonic::Status>) {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        let status = match result {
            Ok(()) => {
                tally.ok += 1;
                return;
            }
            Err(status) => status,
        };
        let what = match reason_of(&status) {
            Some(reason) => reason.to_string(),
            None => format!("{:?}: {}", status.code(), status.message()),
        };
        if self.explained(module, &status) {
            *tally.explained.entry(what).or_default() += 1;
        } else {
            *tally
                .unexplained
                .entry((module.to_owned(), what))
                .or_default() += 1;
        }
    }

    /// Whether `status`, for a call to `module` that just failed, is what
    /// a recent revoke or kill of that module makes the gateway answer.
    fn explained(&self, module: &str, status: &tonic::Status) -> bool {
        let recent = self
            .disruptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|d| d.module == module && d.at.elapsed() <= EXPLAINED_FOR);
        let fitting = match reason_of(status) {
            Some(reason) => matches!(
                reason,
                Reason::ModuleUnavailable
                    | Reason::ModuleStandby
                    | Reason::LeaseRevoked
                    | Reason::LeaseExpired
                    | Reason::ConnectionLost
                    | Reason::Standby
                    | Reason::NoLease
            ),
            // The module's connection dropped under a call in flight.
            None => status.code() == tonic::Code::Unavailable,
        };
        recent && fitting
    }
}

/// Runs the soak; true when it met its bounds.
pub async fn run(opts: SoakOpts, anima: &Path) -> Res<bool> {
    let dir = tempfile::tempdir()?;
    let mut core = start_core(anima, dir.path()).await?;
    let certs = dir.path().join("certs/dev");
    let client = ClientTls::new(
        TlsIdentity::from_pem_files(&certs.join("user-dev.pem"), &certs.join("user-dev.key"))?,
        TrustRoot::from_pem_file(&certs.join("ca.pem"))?,
    );
    let dial = || client.dial_addr(core.addr.clone(), PeerPolicy::kind(UrnKind::Core));
    let admin_conn = dial().await?;
    let mut admin = CoreAdminClient::new(admin_conn.channel());
    wait_all_leased(&mut admin).await?;
    eprintln!(
        "soak: anima serve (pid {}) at {}, {} minutes at {} calls/s",
        core.pid,
        core.addr.clone(),
        opts.minutes,
        opts.rate
    );
    let shared = Arc::new(Shared {
        tally: Mutex::new(Tally::default()),
        disruptions: Mutex::new(Vec::new()),
    });
    let stop = CancellationToken::new();
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(dial().await?);
    }
    let mut callers = tokio::task::JoinSet::new();
    for i in 0..CALLERS {
        let conn = connections[i % CONNECTIONS].clone();
        callers.spawn(caller(i, conn, opts.rate, shared.clone(), stop.clone()));
    }
    let outcome = minutes(opts, &mut admin, &shared, core.pid).await;
    stop.cancel();
    while callers.join_next().await.is_some() {}
    core.stop().await;
    outcome
}

/// Starts `anima serve` in `dir` with the embedded default and its admin
/// endpoint on a free port.
async fn start_core(anima: &Path, dir: &Path) -> Res<Proc> {
    let mut command = Command::new(anima);
    command
        .args(["serve", "--admin-listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("RUST_LOG", child_log());
    Proc::start(command, "ANIMA-CORE READY", |line| {
        line.strip_prefix("ANIMA-CORE READY")?.trim().parse().ok()
    })
    .await
}

async fn modules(admin: &mut Admin) -> Res<Vec<ModuleInfo>> {
    let reply = tokio::time::timeout(CALL_TIMEOUT, admin.list_modules(ListModulesRequest {}))
        .await
        .map_err(|_| "ListModules did not answer")??;
    Ok(reply.into_inner().modules)
}

async fn wait_all_leased(admin: &mut Admin) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = modules(admin).await?;
        if list.len() == SAMPLES.len() && list.iter().all(|m| m.state == "leased") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the samples were not all leased within 30 s: {list:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One caller: every sample in turn, paced so that all callers together
/// ask `rate` calls per second.
async fn caller(
    index: usize,
    conn: Connection,
    rate: u32,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let every = Duration::from_secs_f64(CALLERS as f64 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hasher = HasherClient::new(conn.channel());
    let mut kvstore = KvStoreClient::new(conn.channel());
    let mut tally = TallyClient::new(conn.channel());
    let key = format!("caller-{index}");
    for n in 0u64.. {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let module = SAMPLES[(n as usize + index) % SAMPLES.len()];
        let call = async {
            match module {
                "hasher" => hasher
                    .digest(DigestRequest {
                        text: format!("soak {n}"),
                    })
                    .await
                    .map(drop),
                "kvstore" if n % 2 == 0 => kvstore
                    .put(PutRequest {
                        entries: [(key.clone(), n.to_string())].into(),
                        delay_ms: 0,
                    })
                    .await
                    .map(drop),
                "kvstore" => kvstore.get(GetRequest { key: key.clone() }).await.map(drop),
                _ => tally
                    .increment(IncrementRequest {
                        counter: key.clone(),
                        by: 1,
                    })
                    .await
                    .map(drop),
            }
        };
        let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 5 s")),
        };
        shared.record(module, result);
    }
}

/// One process's resident memory and open descriptors.
#[derive(Debug, Clone, Copy)]
struct Usage {
    pid: u32,
    rss_kib: u64,
    fds: u64,
}

/// What process `pid` holds now.
fn usage(pid: u32) -> Option<Usage> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Usage {
        pid,
        rss_kib: rss_kib(pid)?,
        fds,
    })
}

/// Each minute's usage, by process name (`core`, `hasher`, …).
type Minute = BTreeMap<String, Usage>;

/// The minutes of the run: each minute's revoke (and every fifth's kill),
/// then its line. Returns whether the run met its bounds.
async fn minutes(opts: SoakOpts, admin: &mut Admin, shared: &Shared, core_pid: u32) -> Res<bool> {
    let started = Instant::now();
    let end = started + Duration::from_secs(opts.minutes * 60);
    let mut next_revoke = started + Duration::from_secs(opts.revoke_every);
    let mut next_kill = started + Duration::from_secs(opts.kill_every);
    let mut next_line = started + Duration::from_secs(60);
    let (mut revokes, mut kills) = (0usize, 0usize);
    let mut totals = Tally::default();
    let mut samples: Vec<Minute> = Vec::new();
    let mut minute = 0;
    while Instant::now() < end {
        let next = next_revoke.min(next_kill).min(next_line).min(end);
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        if now >= next_revoke {
            let module = SAMPLES[revokes % SAMPLES.len()];
            revokes += 1;
            revoke(admin, module, shared).await?;
            next_revoke += Duration::from_secs(opts.revoke_every);
        }
        if now >= next_kill {
            let module = SAMPLES[kills % SAMPLES.len()];
            kills += 1;
            kill(admin, module, shared).await?;
            next_kill += Duration::from_secs(opts.kill_every);
        }
        if now >= next_line || now >= end {
            minute += 1;
            next_line += Duration::from_secs(60);
            let tally =
                std::mem::take(&mut *shared.tally.lock().unwrap_or_else(|p| p.into_inner()));
            let processes = usages(admin, core_pid).await?;
            print_minute(minute, &tally, &processes);
            merge(&mut totals, tally);
            samples.push(processes);
        }
    }
    Ok(summary(
        &opts,
        &totals,
        &samples,
        started.elapsed(),
        revokes,
        kills,
    ))
}

/// Revokes `module`'s current lease as an operator would.
async fn revoke(admin: &mut Admin, module: &'static str, shared: &Shared) -> Res<()> {
    let info = find(admin, module).await?;
    if info.lease_id.is_empty() {
        eprintln!("soak: {module} holds no lease to revoke ({})", info.state);
        return Ok(());
    }
    note(shared, module);
    let call = admin.revoke_lease(RevokeLeaseRequest {
        lease_id: info.lease_id.clone(),
        reason: "soak: the operator's revoke of the minute".into(),
    });
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| "RevokeLease did not answer")??;
    eprintln!("soak: revoked {module}'s lease {}", info.lease_id);
    Ok(())
}

/// `kill -9` of `module`'s process.
async fn kill(admin: &mut Admin, module: &'static str, shared: &Shared) -> Res<()> {
    let info = find(admin, module).await?;
    let pid = rustix::process::Pid::from_raw(i32::try_from(info.pid).unwrap_or(0));
    let Some(pid) = pid else {
        eprintln!("soak: {module} has no process to kill ({})", info.state);
        return Ok(());
    };
    note(shared, module);
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .map_err(|e| format!("kill -9 {}: {e}", info.pid))?;
    eprintln!("soak: kill -9 {module} (pid {})", info.pid);
    Ok(())
}

fn note(shared: &Shared, module: &'static str) {
    shared
        .disruptions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Disruption {
            module,
            at: Instant::now(),
        });
}

async fn find(admin: &mut Admin, module: &str) -> Res<ModuleInfo> {
    let urn = format!("urn:anima:module:{module}");
    modules(admin)
        .await?
        .into_iter()
        .find(|m| m.urn == urn)
        .ok_or_else(|| format!("the Core does not list {urn}").into())
}

/// The Core's and each running module's usage, by name.
async fn usages(admin: &mut Admin, core_pid: u32) -> Res<Minute> {
    let mut found = BTreeMap::new();
    if let Some(u) = usage(core_pid) {
        found.insert("core".to_owned(), u);
    }
    for m in modules(admin).await? {
        let name = m.urn.rsplit(':').next().unwrap_or(&m.urn).to_owned();
        if let Some(u) = (m.pid != 0).then(|| usage(m.pid)).flatten() {
            found.insert(name, u);
        }
    }
    Ok(found)
}

fn print_minute(minute: u64, tally: &Tally, processes: &Minute) {
    let explained: Vec<String> = tally
        .explained
        .iter()
        .map(|(reason, n)| format!("{reason}:{n}"))
        .collect();
    let unexplained: u64 = tally.unexplained.values().sum();
    let usage: Vec<String> = processes
        .iter()
        .map(|(name, u)| {
            format!(
                "{name}_pid={} {name}_rss_kib={} {name}_fds={}",
                u.pid, u.rss_kib, u.fds
            )
        })
        .collect();
    println!(
        "soak minute={minute} calls={} ok={} explained={} unexplained={unexplained} {}",
        tally.calls(),
        tally.ok,
        if explained.is_empty() {
            "0".to_owned()
        } else {
            explained.join(",")
        },
        usage.join(" ")
    );
    for ((module, what), n) in &tally.unexplained {
        println!("soak unexplained minute={minute} module={module} n={n} what={what:?}");
    }
}

fn merge(totals: &mut Tally, minute: Tally) {
    totals.ok += minute.ok;
    for (k, v) in minute.explained {
        *totals.explained.entry(k).or_default() += v;
    }
    for (k, v) in minute.unexplained {
        *totals.unexplained.entry(k).or_default() += v;
    }
}

/// The most a process's memory or descriptors grew (in %) over one life
/// of at least three minutes, from its second minute (warm-up) to its last:
/// (rss, fds, minutes compared), or `None` when no life was that long.
fn growth(samples: &[Minute], name: &str) -> Option<(f64, f64, usize)> {
    let pct = |a: u64, b: u64| (b as f64 - a as f64) * 100.0 / (a.max(1) as f64);
    let mut lives: Vec<Vec<Usage>> = Vec::new();
    for minute in samples {
        let Some(u) = minute.get(name) else {
            lives.push(Vec::new());
            continue;
        };
        match lives.last_mut() {
            Some(life) if life.last().is_some_and(|l| l.pid == u.pid) => life.push(*u),
            _ => lives.push(vec![*u]),
        }
    }
    lives
        .iter()
        .filter(|life| life.len() >= 3)
        .map(|life| {
            let (first, last) = (life[1], life[life.len() - 1]);
            (
                pct(first.rss_kib, last.rss_kib),
                pct(first.fds, last.fds),
                life.len() - 1,
            )
        })
        .max_by(|a, b| a.0.max(a.1).total_cmp(&b.0.max(b.1)))
}

/// Prints the summary line; true when no call failed unexplained and no
/// process's memory or descriptors grew by more than 10 % over a life of
/// three minutes or more (after its first minute).
fn summary(
    opts: &SoakOpts,
    totals: &Tally,
    samples: &[Minute],
    took: Duration,
    revokes: usize,
    kills: usize,
) -> bool {
    let unexplained: u64 = totals.unexplained.values().sum();
    let mut flat = true;
    let mut grown = Vec::new();
    for name in std::iter::once("core").chain(SAMPLES) {
        match growth(samples, name) {
            Some((rss, fds, minutes)) => {
                flat &= rss <= 10.0 && fds <= 10.0;
                grown.push(format!(
                    "{name}_rss_pct={rss:+.1} {name}_fds_pct={fds:+.1} {name}_minutes={minutes}"
                ));
            }
            None => grown.push(format!("{name}_minutes=0")),
        }
    }
    let calls = totals.calls();
    let explained: u64 = totals.explained.values().sum();
    println!(
        "soak_summary minutes={:.1} rate_asked={} calls={calls} calls_per_s={:.0} ok={} explained={explained} \
         unexplained={unexplained} revokes={revokes} kills={kills} {} met={}",
        took.as_secs_f64() / 60.0,
        opts.rate,
        calls as f64 / took.as_secs_f64(),
        totals.ok,
        grown.join(" "),
        if unexplained == 0 && flat {
            "yes"
        } else {
            "no"
        },
    );
    unexplained == 0 && flat
}
