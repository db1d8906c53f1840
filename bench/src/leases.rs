//! Leases: renewals at scale, revocation and expiry latency, cold start.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anima_core::audit::Actor;
use anima_core::lease::{LeaseLink, RenewalPolicy};
use anima_module_sdk::{Contract, LeaseEvent};
use anima_protocol::lease::{LeaseState, Reason};
use anima_protocol::pb::{ControlFrame, SignedToken, control_frame::Frame};
use anima_protocol::transport::Address;
use anima_tests::echo::echo_client::EchoClient;
use anima_tests::echo::{SayRequest, SlowRequest, WatchRequest};
use anima_tests::{RawCore, SAY, SLOW, TestModule, WATCH};
use tokio::sync::{Semaphore, broadcast};

use crate::Opts;
use crate::link::LeaseOpener;
use crate::procs::{
    CORE, MODULE, Proc, Res, Setup, module_command, module_process, module_ready, urn,
};
use crate::report::{Figure, Report};
use crate::stats::{CpuMeter, Samples, rss_kib};

/// One load level of the renewal benchmark.
struct Step {
    name: &'static str,
    ttl: Duration,
    renew_when_left: f64,
    jitter: f64,
    /// `None`: the default (a tenth of the TTL, at least 20 ms).
    retry_after: Option<Duration>,
}

impl Step {
    fn policy(&self) -> RenewalPolicy {
        let mut p = RenewalPolicy::new(self.ttl);
        p.renew_when_left = self.renew_when_left;
        p.jitter = self.jitter;
        if let Some(r) = self.retry_after {
            p.retry_after = r;
        }
        p
    }

    /// Renewals per second `leases` leases ask for when every answer is
    /// prompt: each renews `ttl × (1 − left) − jitter/2` after the last.
    fn offered(&self, leases: usize) -> f64 {
        let ttl = self.ttl.as_secs_f64();
        let every = ttl * (1.0 - self.renew_when_left) - ttl * self.jitter / 2.0;
        leases as f64 / every
    }
}

/// Opens `n` leases, one connection each, 16 handshakes at a time; the
/// links share one new table.
async fn open_many(
    setup: &Setup,
    addr: Address,
    n: usize,
    policy: &RenewalPolicy,
) -> Res<Vec<LeaseLink>> {
    let permits = Arc::new(Semaphore::new(16));
    let opener = LeaseOpener::new(setup);
    let module = urn(MODULE)?;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (permits, opener) = (permits.clone(), opener.clone());
        let (module, policy, addr) = (module.clone(), policy.clone(), addr.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            opener.open(addr, module, policy).await
        });
    }
    let mut links = Vec::with_capacity(n);
    let mut failed = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(link)) => links.push(link),
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(e.into()),
        }
    }
    if let Some(e) = failed {
        revoke_all(&links);
        return Err(format!("opened {} of {n} leases: {e}", links.len()).into());
    }
    Ok(links)
}

fn revoke_all(links: &[LeaseLink]) {
    for l in links {
        l.revoke("benchmark done", Actor::Core);
    }
}

/// How many of `links` are no longer active.
fn lost_of(links: &[LeaseLink]) -> usize {
    links
        .iter()
        .filter(|l| !matches!(l.state(), LeaseState::Active))
        .count()
}

fn renewals_of(links: &[LeaseLink]) -> u64 {
    links.iter().map(LeaseLink::renewals).sum()
}

/// `renewals_per_s` (and the default policy's rate) and RSS per lease: one
/// Core (this process) holding `n` leases on one Type III module process.
pub async fn renewals(setup: &Setup, opts: &Opts, report: &mut Report) -> Res<()> {
    let n: usize = if opts.quick { 100 } else { 1_000 };
    room_for(n)?;
    let window = Duration::from_secs(if opts.quick { 1 } else { 5 });
    let mut module = module_process(setup, MODULE, "type = \"resident-shared\"", false).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.add(rss_per_lease(setup, &module, n).await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for step in &renewal_steps() {
        report.add(renewal_rate(setup, &module, n, step, window).await?.figure);
        // Let both sides drop the ended leases before the next step.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    module.stop().await;
    Ok(())
}

/// Raises the open-file limit for `n` connections (both ends in this
/// process's count), or says it cannot.
fn room_for(n: usize) -> Res<()> {
    let nofile = crate::procs::raise_nofile();
    if nofile < 2 * n as u64 + 256 {
        return Err(format!("open-file limit {nofile} is too low for {n} connections").into());
    }
    Ok(())
}

/// `rss_per_lease_kib`: the module's (and this process's) growth with `n`
/// leases of 60 s open, nothing renewing yet.
async fn rss_per_lease(setup: &Setup, module: &Proc, n: usize) -> Res<Figure> {
    let rss0 = rss_kib(module.pid).ok_or("cannot read the module's RSS")?;
    let core_rss0 = rss_kib(0).unwrap_or(0);
    let policy = RenewalPolicy::new(Duration::from_secs(60));
    let links = open_many(setup, module.addr.clone(), n, &policy).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = rss_kib(module.pid).ok_or("cannot read the module's RSS")?;
    let core_rss1 = rss_kib(0).unwrap_or(0);
    revoke_all(&links);
    drop(links);
    let per = rss1.saturating_sub(rss0) as f64 / n as f64;
    let core_per = core_rss1.saturating_sub(core_rss0) as f64 / n as f64;
    Ok(Figure::new("rss_per_lease_kib")
        .f("value", per, 1)
        .f("core", core_per, 1)
        .i("leases", n as u64)
        .i("module_rss_before_kib", rss0)
        .i("module_rss_after_kib", rss1)
        .target("<=100", per <= 100.0))
}

/// The renewal benchmark's load levels.
fn renewal_steps() -> [Step; 2] {
    [
        // The default policy (renew with a third left, retry an unanswered
        // renewal after a tenth of the TTL) at a short TTL.
        Step {
            name: "renewals_default_per_s",
            ttl: Duration::from_millis(300),
            renew_when_left: 1.0 / 3.0,
            jitter: 0.05,
            retry_after: None,
        },
        // More renewals asked for than the two processes can serve (33,333
        // a second, above the 25,000 target), so what is achieved is the
        // capacity: every lease always has one renewal in flight. Renewing
        // with 95 % of a 600 ms TTL left leaves 570 ms for queueing, and
        // the retry comes after the lease's expiry, so the Core never
        // abandons (and then rejects) a slow answer.
        Step {
            name: "renewals_per_s",
            ttl: Duration::from_millis(600),
            renew_when_left: 0.95,
            jitter: 0.01,
            retry_after: Some(Duration::from_secs(1)),
        },
    ]
}

/// Renewals per second at capacity (`renewals_per_s`'s step) and how many
/// of the leases were lost: one run of its own, with a module process of
/// its own, for the `peers` group's comparison with etcd.
///
/// Always 1,000 leases, as etcd's side (fewer would cap the offered rate
/// below the capacity); `--quick` only shortens the window.
pub(crate) async fn renewal_capacity(setup: &Setup, opts: &Opts) -> Res<Rate> {
    let n: usize = 1_000;
    room_for(n)?;
    let window = Duration::from_secs(if opts.quick { 1 } else { 5 });
    let mut module = module_process(setup, MODULE, "type = \"resident-shared\"", false).await?;
    let [_, capacity] = renewal_steps();
    let rate = renewal_rate(setup, &module, n, &capacity, window).await;
    module.stop().await;
    rate
}

/// One renewal step's outcome.
pub(crate) struct Rate {
    /// Renewals granted per second over the window.
    pub(crate) per_s: f64,
    /// Leases not active at the end.
    pub(crate) lost: u64,
    /// The step's figure.
    pub(crate) figure: Figure,
}

/// One step's figure: `n` leases renewing under `step`'s policy, counted
/// over `window` after a second to settle.
async fn renewal_rate(
    setup: &Setup,
    module: &Proc,
    n: usize,
    step: &Step,
    window: Duration,
) -> Res<Rate> {
    let opened = Instant::now();
    let links = open_many(setup, module.addr.clone(), n, &step.policy()).await?;
    let open_s = opened.elapsed().as_secs_f64();
    let lost_opening = lost_of(&links);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lost_settling = lost_of(&links);
    let r0 = renewals_of(&links);
    let module_cpu = CpuMeter::start(module.pid);
    let core_cpu = CpuMeter::start(0);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let r1 = renewals_of(&links);
    let secs = t0.elapsed().as_secs_f64();
    let (m_used, m_pct) = module_cpu.read();
    let (c_used, c_pct) = core_cpu.read();
    let lost = lost_of(&links);
    revoke_all(&links);
    drop(links);
    let done = r1.saturating_sub(r0);
    let rate = done as f64 / secs;
    let per_renewal = |used: Duration| {
        if done == 0 {
            0.0
        } else {
            used.as_secs_f64() * 1e6 / done as f64
        }
    };
    let f = Figure::new(step.name)
        .f("value", rate, 0)
        .f("offered", step.offered(n), 0)
        .i("leases", n as u64)
        .i("lost", lost as u64)
        .i("lost_by_opened", lost_opening as u64)
        .i("lost_by_window", lost_settling as u64)
        .f("module_cpu_pct", m_pct, 1)
        .f("core_cpu_pct", c_pct, 1)
        .f("module_cpu_us_per_renewal", per_renewal(m_used), 1)
        .f("core_cpu_us_per_renewal", per_renewal(c_used), 1)
        .i("ttl_ms", step.ttl.as_millis() as u64)
        .f("renew_when_left", step.renew_when_left, 2)
        .f("seconds", secs, 1)
        .f("open_s", open_s, 1);
    let figure = if step.name == "renewals_per_s" {
        f.target(">=25000", rate >= 25_000.0 && lost == 0)
    } else {
        f
    };
    Ok(Rate {
        per_s: rate,
        lost: lost as u64,
        figure,
    })
}

/// An SDK module served in this process on a runtime of its own (two
/// worker threads, as a module process would have here), so that module
/// events and handler drops share this process's monotonic clock.
struct LocalModule {
    module: Option<TestModule>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl LocalModule {
    async fn start(setup: &Setup, contract: Contract) -> Res<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-module")
            .enable_all()
            .build()?;
        let ca = setup.ca.clone();
        let module = runtime
            .spawn(async move { TestModule::start(&ca, contract).await })
            .await?;
        Ok(LocalModule {
            module: Some(module),
            runtime: Some(runtime),
        })
    }

    fn get(&self) -> Res<&TestModule> {
        Ok(self.module.as_ref().ok_or("module stopped")?)
    }
}

impl Drop for LocalModule {
    fn drop(&mut self) {
        drop(self.module.take());
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn shared_contract() -> Res<Contract> {
    let text = format!(
        "urn = \"{MODULE}\"\n{}",
        crate::procs::echo_contract("type = \"resident-shared\"")
    );
    Ok(Contract::from_toml(&text)?)
}

/// `revoke_to_refusal_us`: from the Core's revoke returning (revocation
/// signed and queued on the control stream, as `LeaseLink::revoke` does) to
/// the module refusing a call that carries a valid proof.
///
/// The Core's own `LeasedChannel` refuses locally the moment the lease ends,
/// so probing through it would measure nothing: the probes here come from a
/// hand-built Core that keeps the proof key.
pub async fn revoke_to_refusal(setup: &Setup, opts: &Opts) -> Res<Figure> {
    let n = if opts.quick { 20 } else { 400 };
    let local = LocalModule::start(setup, shared_contract()?).await?;
    let module = local.get()?;
    let mut samples = Samples::with_capacity(n);
    let mut accepted_max = 0u64;
    for i in 0..n + 5 {
        let mut core =
            RawCore::open(&setup.ca, CORE, module, &[SAY], Duration::from_secs(30)).await;
        let mut seq = 1;
        core.say(Some(core.proof(seq, SAY))).await?;
        let now = tokio::time::Instant::now().into_std();
        let jws = core.lease.revoke(
            &core.signer,
            Reason::LeaseRevoked,
            "benchmark",
            now,
            SystemTime::now(),
        )?;
        core.tx.try_send(ControlFrame {
            frame: Some(Frame::Revoke(SignedToken { jws })),
        })?;
        let t0 = Instant::now();
        let mut accepted = 0u64;
        let took = loop {
            seq += 1;
            match core.say(Some(core.proof(seq, SAY))).await {
                Ok(_) => accepted += 1,
                Err(status) => {
                    let reason = anima_protocol::lease::reason_of(&status);
                    if reason != Some(Reason::LeaseRevoked) {
                        return Err(format!("refused for {reason:?}: {status}").into());
                    }
                    break t0.elapsed();
                }
            }
            if t0.elapsed() > Duration::from_secs(2) {
                return Err("calls still admitted 2 s after revocation".into());
            }
        };
        if i >= 5 {
            samples.push(took);
            accepted_max = accepted_max.max(accepted);
        }
    }
    let (p50, p99) = (samples.pct(50.0), samples.pct(99.0));
    Ok(Figure::new("revoke_to_refusal_us")
        .f("p50", p50, 1)
        .f("p99", p99, 1)
        .f("max", samples.max(), 1)
        .i("n", n as u64)
        .i("admitted_after_revoke_max", accepted_max)
        .target("p99<=1000", p99 <= 1000.0))
}

/// The next event `pick` matches, within 5 s.
async fn next_event<T>(
    events: &mut broadcast::Receiver<LeaseEvent>,
    mut pick: impl FnMut(&LeaseEvent) -> Option<T>,
) -> Res<T> {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return Ok(t);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err("no more events"),
            }
        }
    })
    .await
    .map_err(|_| "no lease event within 5 s")??;
    Ok(found)
}

/// Expiry samples: `n` leases of `ttl` for `method` (after 3 not counted),
/// each opened on an in-process module by a hand-built Core that never
/// renews it. `lapse` makes the lease's call and returns the instant its
/// effect ended; a sample is that instant less the module's nominal expiry
/// (from its `Granted` event), in µs, negative when early.
async fn expiry_samples(
    setup: &Setup,
    n: usize,
    ttl: Duration,
    method: &str,
    mut lapse: impl AsyncFnMut(&TestModule, &RawCore) -> Res<Instant>,
) -> Res<Samples> {
    let local = LocalModule::start(setup, shared_contract()?).await?;
    let module = local.get()?;
    let mut events = module.handle.events();
    let mut samples = Samples::with_capacity(n);
    for i in 0..n + 3 {
        while events.try_recv().is_ok() {}
        let core = RawCore::open(&setup.ca, CORE, module, &[method], ttl).await;
        let expires_at = next_event(&mut events, |e| match e {
            LeaseEvent::Granted { expires_at, .. } => Some(*expires_at),
            _ => None,
        })
        .await?;
        let ended = lapse(module, &core).await?;
        if i >= 3 {
            samples.push_us(signed_us(ended, expires_at));
        }
    }
    Ok(samples)
}

/// `message` as the lease's first call of `method`, its proof attached.
fn first_call<T>(core: &RawCore, method: &str, message: T) -> Res<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        anima_protocol::lease::PROOF_HEADER,
        core.proof(1, method).parse()?,
    );
    Ok(request)
}

/// How long after `expires_at` the lease's effect ended `at`, in µs;
/// negative means early.
fn signed_us(at: Instant, expires_at: Instant) -> f64 {
    match at.checked_duration_since(expires_at) {
        Some(late) => late.as_secs_f64() * 1e6,
        None => -(expires_at.duration_since(at).as_secs_f64() * 1e6),
    }
}

/// An expiry figure's common fields: the percentiles of `samples`, and the
/// run's size and TTL.
fn expiry_figure(name: &str, samples: &mut Samples, n: usize, ttl: Duration) -> Figure {
    let (p50, p99) = (samples.pct(50.0), samples.pct(99.0));
    Figure::new(name)
        .f("p50", p50, 1)
        .f("p99", p99, 1)
        .f("max", samples.max(), 1)
        .f("min", samples.pct(0.0), 1)
        .i("n", n as u64)
        .i("ttl_ms", ttl.as_millis() as u64)
}

/// `expiry_to_halt_us`: a Core that never renews; a `Slow` handler runs
/// across the module's nominal expiry instant (from its `Granted` event),
/// and is dropped when the lease ends. Signed: negative means early.
pub async fn expiry_to_halt(setup: &Setup, opts: &Opts) -> Res<Figure> {
    let n = if opts.quick { 10 } else { 200 };
    let ttl = Duration::from_millis(80);
    let mut samples = expiry_samples(setup, n, ttl, SLOW, slow_until_halted).await?;
    let p99 = samples.pct(99.0);
    Ok(expiry_figure("expiry_to_halt_us", &mut samples, n, ttl).target("p99<=2000", p99 <= 2000.0))
}

/// Calls `Slow` (2 s) under `core`'s lease, which must end it with
/// `LEASE_EXPIRED`; returns when the module dropped the handler.
async fn slow_until_halted(module: &TestModule, core: &RawCore) -> Res<Instant> {
    let request = first_call(core, SLOW, SlowRequest { millis: 2_000 })?;
    let status = match EchoClient::new(core.conn.channel()).slow(request).await {
        Ok(_) => return Err("the Slow call outlived its lease".into()),
        Err(s) => s,
    };
    let reason = anima_protocol::lease::reason_of(&status);
    if reason != Some(Reason::LeaseExpired) {
        return Err(format!("Slow refused for {reason:?}: {status}").into());
    }
    let halted = module
        .service
        .halted_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or("the handler was not halted")?;
    Ok(halted)
}

/// `stream_expiry_to_end_us`: a Core that never renews; a server stream
/// emitting every 1 ms runs across the module's nominal expiry instant (from
/// its `Granted` event) under an 80 ms lease; measured to the moment the
/// client has the stream's `LEASE_EXPIRED` end. Signed: negative means early.
/// Also counts messages that were produced after the lease ended (want 0).
pub async fn stream_expiry_to_end(setup: &Setup, opts: &Opts) -> Res<Figure> {
    let n = if opts.quick { 10 } else { 200 };
    let ttl = Duration::from_millis(80);
    let mut late_messages = 0u64;
    let mut samples = expiry_samples(setup, n, ttl, WATCH, async |_, core| {
        watch_until_end(core, &mut late_messages).await
    })
    .await?;
    Ok(
        expiry_figure("stream_expiry_to_end_us", &mut samples, n, ttl)
            .i("produced_after_expiry", late_messages)
            .target(
                "max<=10000,produced_after_expiry=0",
                samples.max() <= 10_000.0 && late_messages == 0,
            ),
    )
}

/// Watches a 1 ms stream under `core`'s lease, which must end it with
/// `LEASE_EXPIRED`; returns when the end arrived, counting into
/// `late_messages` the messages produced with no lease left.
async fn watch_until_end(core: &RawCore, late_messages: &mut u64) -> Res<Instant> {
    let watch = WatchRequest {
        every_ms: 1,
        count: 0,
    };
    let request = first_call(core, WATCH, watch)?;
    let mut stream = EchoClient::new(core.conn.channel())
        .watch(request)
        .await?
        .into_inner();
    let status = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(tick)) => {
                    // Produced with no lease left (arrival may trail the
                    // expiry: it was on the wire already).
                    if tick.lease_left_us == 0 {
                        *late_messages += 1;
                    }
                }
                Ok(None) => return Err("the stream ended OK"),
                Err(status) => return Ok(status),
            }
        }
    })
    .await
    .map_err(|_| "the stream outlived its lease by 5 s")??;
    let ended = Instant::now();
    let reason = anima_protocol::lease::reason_of(&status);
    if reason != Some(Reason::LeaseExpired) {
        return Err(format!("the stream ended {reason:?}: {status}").into());
    }
    Ok(ended)
}

/// `cold_start_ms`: spawn a Type I module process → ready line → dial →
/// lease → first successful call.
pub async fn cold_start(setup: &Setup, opts: &Opts) -> Res<Figure> {
    let n = if opts.quick { 5 } else { 40 };
    let cold = "urn:anima:module:cold";
    setup.files(cold)?;
    let cold_urn = urn(cold)?;
    let opener = LeaseOpener::new(setup);
    let mut total = Samples::with_capacity(n);
    let mut ready = Samples::with_capacity(n);
    for i in 0..n + 2 {
        let command = module_command(
            setup,
            cold,
            "type = \"ephemeral\"\ntermination_window = \"1s\"",
            true,
        )?;
        let t0 = Instant::now();
        let mut proc =
            Proc::start(command, anima_protocol::launch::READY_PREFIX, module_ready).await?;
        let t_ready = t0.elapsed();
        let policy = RenewalPolicy::new(Duration::from_secs(30));
        let link = opener
            .open(proc.addr.clone(), cold_urn.clone(), policy)
            .await?;
        EchoClient::new(link.channel())
            .say(SayRequest {
                text: "cold".into(),
            })
            .await?;
        let took = t0.elapsed();
        link.revoke("benchmark sample done", Actor::Core);
        // A Type I module exits by itself once its lease ends.
        proc.wait_or_kill(Duration::from_secs(3)).await;
        if i >= 2 {
            total.push(took);
            ready.push(t_ready);
        }
    }
    let (p50, p90) = (total.pct(50.0) / 1e3, total.pct(90.0) / 1e3);
    Ok(Figure::new("cold_start_ms")
        .f("p50", p50, 2)
        .f("p90", p90, 2)
        .f("ready_p50", ready.pct(50.0) / 1e3, 2)
        .i("n", n as u64)
        .target("p50<=10", p50 <= 10.0))
}
