//! One supervisor task per configured module: start (or dial) it, lease it,
//! watch it, re-lease it, restart it within its policy, stop it.
//!
//! Restart policy, after systemd's `Restart=` / `StartLimitBurst=`: `never`,
//! `on-failure` (a non-zero exit, a crash, a failed start) or `always`; at
//! most `max_restarts` within `window`, waiting `backoff` doubling up to
//! `backoff_max` between attempts; past the limit the module is `failed` and
//! says why.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anima_protocol::contract::{Contract, ModuleType};
use anima_protocol::interface::{Provided, Required};
use anima_protocol::lease::{LeaseSigner, LeaseState, Reason, Scope};
use anima_protocol::pb::module_admin_client::ModuleAdminClient;
use anima_protocol::pb::{ModuleStatus, ShutdownRequest};
use anima_protocol::transport::Address;
use anima_protocol::{ClientTls, Connection, PeerPolicy, TransportError, Urn};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audit::{Actor, AuditLog};
use crate::config::{CoreCert, ModuleConfig, StartMode};
use crate::contract_match;
use crate::events::{EventKind, Events};
use crate::gateway::route::Routes;
use crate::launcher::{LaunchSpec, launch};
use crate::lease::{CallGuard, CoreLeaseError, LeaseLink, LeaseTable, RenewalPolicy};
use crate::reestablish;
use crate::registry::{ModuleCommand, ModuleState, Registry};
use crate::restart::{Decision, RestartBudget};
use crate::sidecars;

/// How long a stopped module may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the Core dials a module it cannot reach (pre-started or
/// shared): a partition heals into a lease within about this much.
pub(crate) const REDIAL_EVERY: Duration = Duration::from_secs(1);

/// How long a resident module in standby waits before being leased again.
const RELEASE_DELAY: Duration = Duration::from_millis(200);

/// What every supervisor shares.
pub(crate) struct CoreContext {
    /// The Core's identity.
    pub(crate) urn: Urn,
    /// How the Core dials modules and signs leases; replaced when its
    /// certificates are reloaded (new leases use the new ones).
    pub(crate) credentials: std::sync::RwLock<Credentials>,
    /// The CA file handed to children.
    pub(crate) ca_file: std::path::PathBuf,
    /// The lease table.
    pub(crate) leases: LeaseTable,
    /// The audit log.
    pub(crate) audit: AuditLog,
    /// Module rows and commands.
    pub(crate) registry: Registry,
    /// Lifecycle events.
    pub(crate) events: Events,
    /// How leases renew (fraction of the TTL left).
    pub(crate) renew_when_left: f64,
    /// The open lease of each module, for callers (gateway) and shutdown.
    pub(crate) links: std::sync::Mutex<std::collections::HashMap<Urn, LeaseLink>>,
    /// Which modules declare each method (learned from contracts and
    /// leases), for the gateway.
    pub(crate) routes: Routes,
    /// Where the modules this Core starts reach its endpoint (the listening
    /// address; loopback when it listens on every address).
    pub(crate) endpoint: std::net::SocketAddr,
    /// Where the Type I and II modules this Core starts listen (Unix
    /// sockets); `None`: on TCP.
    pub(crate) runtime: Option<crate::runtime_dir::RuntimeDir>,
    /// What modules may call of each other (`[[permission]]`) and the
    /// interface definitions applied to those calls.
    pub(crate) mediation: crate::gateway::mediate::Mediation,
    /// Each module's sidecars, in order.
    pub(crate) sidecars: crate::gateway::sidecar::Sidecars,
}

/// The Core's certificates as a dialler and lease signer.
#[derive(Clone)]
pub(crate) struct Credentials {
    /// Dials modules as the Core (`[core] cert`).
    pub(crate) client: ClientTls,
    /// Signs the Core's leases, with `client`'s key.
    pub(crate) signer: Arc<LeaseSigner>,
    /// The Core's endpoint certificate (e.g. P-256) as a dialler and lease
    /// signer, for modules whose entry says `core_cert = "endpoint"`.
    pub(crate) endpoint: Option<(ClientTls, Arc<LeaseSigner>)>,
}

impl CoreContext {
    /// The certificate (as a dialler) and lease signer `module` is reached
    /// with now: `[core] cert`, or `endpoint_cert` when its entry says so.
    pub(crate) fn dialer(&self, module: &ModuleConfig) -> (ClientTls, Arc<LeaseSigner>) {
        let credentials = self.credentials.read().unwrap_or_else(|p| p.into_inner());
        match (module.core_cert, &credentials.endpoint) {
            (CoreCert::Endpoint, Some((client, signer))) => (client.clone(), signer.clone()),
            _ => (credentials.client.clone(), credentials.signer.clone()),
        }
    }

    /// Dials and signs with `credentials` from now on.
    pub(crate) fn set_credentials(&self, credentials: Credentials) {
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = credentials;
    }

    /// The module's current lease link, if leased.
    pub(crate) fn link(&self, module: &Urn) -> Option<LeaseLink> {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(module)
            .cloned()
    }

    /// The module's current lease link with one call counted on it, taken
    /// together: once a replacement link is published, no caller holds the
    /// old one uncounted (`reestablish::retire` waits for those calls).
    pub(crate) fn link_for_call(&self, module: &Urn) -> Option<(LeaseLink, CallGuard)> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = links.get(module)?.clone();
        let call = link.enter_call();
        Some((link, call))
    }

    /// Whether `module` holds an active lease from this Core now.
    pub(crate) fn is_leased(&self, module: &Urn) -> bool {
        self.link(module)
            .is_some_and(|l| l.state() == anima_protocol::lease::LeaseState::Active)
    }

    /// [`CoreContext::link_for_call`], only while that lease is active: a
    /// link whose lease has just ended (its connection gone) is passed over
    /// before anything is sent on it.
    pub(crate) fn active_link_for_call(&self, module: &Urn) -> Option<(LeaseLink, CallGuard)> {
        self.link_for_call(module)
            .filter(|(l, _)| l.state() == anima_protocol::lease::LeaseState::Active)
    }

    fn set_link(&self, module: &Urn, link: Option<LeaseLink>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        match link {
            Some(l) => links.insert(module.clone(), l),
            None => links.remove(module),
        };
    }
}

/// How one run of the module ended.
enum Outcome {
    /// The process (core-started) exited; `None` if its status could not be
    /// read.
    Exited(Option<ExitStatus>),
    /// A Type I module's process exited after its lease ended, as its type
    /// has it do; `None` if its status could not be read.
    ExitedAfterLease(Option<ExitStatus>),
    /// Could not start / dial / lease.
    StartFailed(String),
    /// A module the Core dials could not be reached: not a failure of the
    /// module's, and not counted against its restart limit.
    Unreachable(String),
    /// The configuration is wrong for this module (its contract is not the
    /// module's own): starting it again cannot help.
    Misconfigured(String),
    /// An operator asked to stop it.
    Stop,
    /// An operator asked to restart it.
    Restart,
    /// The Core is shutting down.
    Shutdown,
}

/// What the supervisor does once a run has ended.
enum Next {
    /// Start the module again now.
    Start,
    /// Start it again after this backoff.
    Backoff(Duration),
    /// Wait for an operator's restart.
    AwaitRestart,
    /// Dial it again after [`REDIAL_EVERY`].
    Redial,
    /// Nothing more: the Core shuts down.
    End,
}

/// How holding a lease ended.
enum Held {
    /// The run is over.
    Over(Outcome),
    /// Only the lease ended.
    LeaseEnded,
    /// A lease under renewed certificates is open (and why it was sought):
    /// it replaces the one held.
    Replaced(LeaseLink, &'static str),
}

/// A process's exit status as the supervisor reports it.
fn status_text(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "unknown".to_owned(), |s| s.to_string())
}

fn type_name(t: ModuleType) -> &'static str {
    match t {
        ModuleType::Ephemeral => "ephemeral",
        ModuleType::ResidentPrivate(_) => "resident-private",
        ModuleType::ResidentShared => "resident-shared",
    }
}

/// Registers `module` and returns its supervisor future.
pub(crate) fn supervise(
    ctx: Arc<CoreContext>,
    module: ModuleConfig,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let (provides, requires) = module
        .contract
        .as_ref()
        .map(|c| (c.provides.clone(), c.requires.clone()))
        .unwrap_or_default();
    let commands = ctx.registry.add(
        module.urn.clone(),
        type_name(module.module_type),
        provides,
        requires,
    );
    run(ctx, module, commands, shutdown)
}

/// The module's supervisor: runs it again and again, as its restart policy
/// and the operators say, until the Core shuts down.
async fn run(
    ctx: Arc<CoreContext>,
    module: ModuleConfig,
    mut commands: mpsc::Receiver<ModuleCommand>,
    shutdown: CancellationToken,
) {
    let urn = &module.urn;
    if !wait_for_requirements(&ctx, &module, &shutdown).await {
        return;
    }
    let mut budget = RestartBudget::new(&module.restart);
    let mut stale = Vec::new();
    loop {
        if !sidecars::wait_leased(&ctx, &module, &stale, &shutdown).await {
            return;
        }
        // An unreachable module stays so until it is leased.
        if ctx.registry.get(urn).map(|v| v.state) != Some(ModuleState::Unreachable) {
            ctx.registry.set_state(urn, ModuleState::Starting, "");
        }
        let outcome = run_once(&ctx, &module, &mut commands, &shutdown).await;
        let with_sidecars = restarts_sidecars(&outcome);
        ctx.set_link(urn, None);
        ctx.registry.update(urn, |v| {
            v.pid = None;
            v.lease_id = None;
        });
        let again = match after_run(&ctx, &module, outcome, &mut budget) {
            Next::Start => true,
            Next::Backoff(after) => back_off(&ctx, urn, after, &shutdown).await,
            Next::AwaitRestart => wait_restart_command(&mut commands, &shutdown).await,
            Next::Redial => back_off(&ctx, urn, REDIAL_EVERY, &shutdown).await,
            Next::End => false,
        };
        if !again {
            return;
        }
        stale = if with_sidecars {
            sidecars::restart(&ctx, &module)
        } else {
            Vec::new()
        };
    }
}

/// Whether a run that ended so is a restart its sidecars go through too
/// (P11): an operator's restart, or the process's exit or failed start, not
/// a Type I process ending with its lease (its usual life), a stop, or the
/// Core's shutdown.
fn restarts_sidecars(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Restart | Outcome::Exited(_) | Outcome::StartFailed(_)
    )
}

/// Records how a run ended and decides what follows: an operator's stop or
/// restart is obeyed (and forgets past restarts); an exit or a failed start
/// goes to the restart policy.
fn after_run(
    ctx: &CoreContext,
    module: &ModuleConfig,
    outcome: Outcome,
    budget: &mut RestartBudget,
) -> Next {
    let urn = &module.urn;
    let (failure, why) = match outcome {
        Outcome::Shutdown => {
            ctx.registry
                .set_state(urn, ModuleState::Stopped, "Core shut down");
            return Next::End;
        }
        Outcome::Stop => {
            ctx.registry
                .set_state(urn, ModuleState::Stopped, "stopped by an operator");
            ctx.events.emit(
                EventKind::ModuleStopped,
                urn.as_str(),
                "",
                "stopped by an operator",
            );
            budget.reset();
            return Next::AwaitRestart;
        }
        Outcome::Restart => {
            ctx.events.emit(
                EventKind::ModuleRestarting,
                urn.as_str(),
                "",
                "restart requested",
            );
            budget.reset();
            return Next::Start;
        }
        Outcome::Exited(status) => (
            !status.is_some_and(|s| s.success()),
            format!("exited: {}", status_text(status)),
        ),
        Outcome::ExitedAfterLease(status) => {
            let failure = !status.is_some_and(|s| s.success());
            let why = format!("exited after its lease ended: {}", status_text(status));
            let decision = budget.decide_after_lease(failure, Instant::now());
            return apply_decision(ctx, module, decision, why);
        }
        Outcome::StartFailed(why) => (true, why),
        Outcome::Unreachable(why) => {
            let was = ctx.registry.get(urn).map(|v| v.state);
            ctx.registry
                .set_state(urn, ModuleState::Unreachable, why.clone());
            if was != Some(ModuleState::Unreachable) {
                tracing::warn!(module = %urn, detail = %why, "module unreachable; dialling it again every {REDIAL_EVERY:?}");
                ctx.events
                    .emit(EventKind::ModuleUnreachable, urn.as_str(), "", why);
            }
            return Next::Redial;
        }
        Outcome::Misconfigured(why) => return failed(ctx, urn, why),
    };
    let decision = budget.decide(failure, Instant::now());
    apply_decision(ctx, module, decision, why)
}

/// Marks the module failed for `detail` (logged once, an event) and waits
/// for an operator's restart.
fn failed(ctx: &CoreContext, urn: &Urn, detail: String) -> Next {
    tracing::error!(module = %urn, detail = %detail, "module failed");
    ctx.registry
        .set_state(urn, ModuleState::Failed, detail.clone());
    ctx.events
        .emit(EventKind::ModuleFailed, urn.as_str(), "", detail);
    Next::AwaitRestart
}

/// Carries out the restart policy's `decision` after a run that ended by
/// itself (`why`), recorded in the registry and the events.
fn apply_decision(
    ctx: &CoreContext,
    module: &ModuleConfig,
    decision: Decision,
    why: String,
) -> Next {
    let urn = &module.urn;
    let backoff = match decision {
        Decision::Restart { after } => after,
        Decision::Stay { failure } => {
            let (state, kind) = if failure {
                (ModuleState::Failed, EventKind::ModuleFailed)
            } else {
                (ModuleState::Stopped, EventKind::ModuleStopped)
            };
            ctx.registry.set_state(urn, state, why.clone());
            ctx.events.emit(kind, urn.as_str(), "", why);
            return Next::AwaitRestart;
        }
        Decision::GiveUp => {
            let detail = format!(
                "restarted {} times within {:?}; last: {why}",
                module.restart.max_restarts, module.restart.window
            );
            return failed(ctx, urn, detail);
        }
    };
    ctx.registry.update(urn, |v| v.restarts += 1);
    ctx.registry.set_state(
        urn,
        ModuleState::Restarting,
        format!("{why}; restarting in {backoff:?}"),
    );
    ctx.events
        .emit(EventKind::ModuleRestarting, urn.as_str(), "", why);
    Next::Backoff(backoff)
}

/// Waits `backoff` before a restart; false (the module stopped) on shutdown.
async fn back_off(
    ctx: &CoreContext,
    urn: &Urn,
    backoff: Duration,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => {
            ctx.registry.set_state(urn, ModuleState::Stopped, "Core shut down");
            false
        }
        _ = tokio::time::sleep(backoff) => true,
    }
}

/// Dependency order: waits until every module `module` requires is leased;
/// false on shutdown.
async fn wait_for_requirements(
    ctx: &CoreContext,
    module: &ModuleConfig,
    shutdown: &CancellationToken,
) -> bool {
    for required in &module.requires {
        ctx.registry.set_state(
            &module.urn,
            ModuleState::Starting,
            format!("waiting for {required}"),
        );
        let Some(mut watch) = ctx.registry.watch(required) else {
            continue;
        };
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = watch.wait_for(|s| *s == ModuleState::Leased) => {}
        }
    }
    match &module.contract {
        Some(contract) => wait_for_interfaces(ctx, &module.urn, &contract.requires, shutdown).await,
        None => true,
    }
}

/// Resolution before start (P2): waits, `blocked`, until a compatible
/// provider of every interface in `requires` is leased; false on shutdown.
async fn wait_for_interfaces(
    ctx: &CoreContext,
    urn: &Urn,
    requires: &[Required],
    shutdown: &CancellationToken,
) -> bool {
    let mut changes = ctx.registry.changes();
    let mut told = String::new();
    loop {
        let missing: Vec<String> = requires
            .iter()
            .filter(|r| ctx.registry.leased_providers(r).is_empty())
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            return true;
        }
        let detail = format!("waiting for a leased provider of {}", missing.join(", "));
        if detail != told {
            ctx.registry
                .set_state(urn, ModuleState::Blocked, detail.clone());
            tracing::info!(module = %urn, detail = %detail, "module blocked");
            ctx.events
                .emit(EventKind::ModuleBlocked, urn.as_str(), "", detail.clone());
            told = detail;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            changed = changes.changed() => if changed.is_err() {
                return false;
            },
        }
    }
}

/// Waits for an operator's restart; false on shutdown.
async fn wait_restart_command(
    commands: &mut mpsc::Receiver<ModuleCommand>,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            cmd = commands.recv() => match cmd {
                Some(ModuleCommand::Restart) => return true,
                Some(ModuleCommand::Stop) => {}
                None => return false,
            },
        }
    }
}

/// Starts a core-started module (its address and process) or resolves a
/// pre-started one's endpoint; the error says why not.
async fn start(
    ctx: &CoreContext,
    module: &ModuleConfig,
) -> Result<(Address, Option<Child>), String> {
    let urn = &module.urn;
    match &module.start {
        StartMode::Command {
            program,
            args,
            env,
            cert,
            key,
        } => {
            let shared = matches!(module.module_type, ModuleType::ResidentShared);
            let spec = LaunchSpec {
                urn: urn.clone(),
                program: program.clone(),
                args: args.clone(),
                env: env.clone(),
                cert: cert.clone(),
                key: key.clone(),
                ca: ctx.ca_file.clone(),
                core: ctx.urn.clone(),
                // The Core hosts shared modules as infrastructure: it may stop them.
                operators: if shared {
                    vec![ctx.urn.clone()]
                } else {
                    Vec::new()
                },
                core_endpoint: Some(ctx.endpoint),
                // Only this Core reaches a Type I or II module: on this
                // host, over a Unix socket. Other Cores reach shared ones.
                listen_unix: ctx
                    .runtime
                    .as_ref()
                    .filter(|_| !shared)
                    .and_then(|dir| dir.socket_for(urn)),
            };
            match launch(&spec).await {
                Ok(launched) => {
                    ctx.registry.update(urn, |v| {
                        v.pid = launched.pid;
                        v.endpoint = launched.addr.to_string();
                    });
                    ctx.events.emit(
                        EventKind::ModuleStarted,
                        urn.as_str(),
                        "",
                        format!("pid {} at {}", launched.pid.unwrap_or(0), launched.addr),
                    );
                    Ok((launched.addr, Some(launched.child)))
                }
                Err(e) => Err(format!("start failed: {e}")),
            }
        }
        StartMode::Endpoint(endpoint) => match tokio::net::lookup_host(endpoint.as_str()).await {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => {
                    ctx.registry.update(urn, |v| v.endpoint = a.to_string());
                    Ok((a.into(), None))
                }
                None => Err(format!("{endpoint} resolves to nothing")),
            },
            Err(e) => Err(format!("cannot resolve {endpoint}: {e}")),
        },
    }
}

/// Starts (or dials) the module once and keeps it leased until its process
/// exits, a command arrives, or the Core shuts down.
async fn run_once(
    ctx: &Arc<CoreContext>,
    module: &ModuleConfig,
    commands: &mut mpsc::Receiver<ModuleCommand>,
    shutdown: &CancellationToken,
) -> Outcome {
    let mut started = match start(ctx, module).await {
        Ok((addr, child)) => Started {
            ctx,
            module,
            addr,
            child,
        },
        // A module the Core dials whose name does not resolve (now) cannot
        // be reached, like one that does not answer.
        Err(why) if matches!(module.start, StartMode::Endpoint(_)) => {
            return Outcome::Unreachable(why);
        }
        Err(why) => return Outcome::StartFailed(why),
    };
    // Without a contract file, what it requires is learned from the module
    // itself: it is not leased before a provider of each is (P2).
    if module.contract.is_none()
        && let Some(outcome) = started.resolve(shutdown).await
    {
        return outcome;
    }
    // Lease it; lease it again whenever a resident module's lease ends.
    loop {
        let mut link = match open_lease(ctx, module, &started.addr).await {
            Ok(link) => link,
            Err(e) => return started.lease_failed(&e).await,
        };
        record_leased(ctx, &module.urn, &link, None);
        loop {
            match started.hold(&link, commands, shutdown).await {
                Held::Over(outcome) => return outcome,
                Held::LeaseEnded => break,
                Held::Replaced(new, why) => {
                    // Make before break: new calls go to the new lease; the
                    // old one is revoked once its calls have ended.
                    tracing::info!(module = %module.urn, old = %link.id(), new = %new.id(), why, "lease re-established under renewed certificates");
                    record_leased(ctx, &module.urn, &new, Some((&link, why)));
                    let old = std::mem::replace(&mut link, new);
                    reestablish::retire(ctx.clone(), old, &link, shutdown.clone());
                }
            }
        }
        let why = record_lease_end(ctx, &module.urn, &link);
        let after = match module.module_type {
            ModuleType::Ephemeral => Some(started.terminating(&why, shutdown).await),
            ModuleType::ResidentPrivate(_) | ModuleType::ResidentShared => {
                started.standby(&why, shutdown).await
            }
        };
        if let Some(outcome) = after {
            return outcome;
        }
    }
}

/// A started (or resolved) module: where it listens and, when the Core
/// started it, its process.
struct Started<'a> {
    ctx: &'a Arc<CoreContext>,
    module: &'a ModuleConfig,
    addr: Address,
    child: Option<Child>,
}

impl Drop for Started<'_> {
    /// The process is gone (or killed now, with its handle): a Unix socket
    /// it could not remove itself goes too.
    fn drop(&mut self) {
        if let (Some(_), Address::Unix(socket), Some(dir)) =
            (&self.child, &self.addr, &self.ctx.runtime)
        {
            dir.remove_socket(socket);
        }
    }
}

impl Started<'_> {
    /// Stops the process, if the Core started one.
    async fn stop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            stop_child(self.ctx, self.module, c, &self.addr).await;
        }
    }

    /// The process's exit; never, for a module the Core did not start.
    async fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => c.wait().await.ok(),
            None => std::future::pending().await,
        }
    }

    /// Asks the module what it requires (`ModuleAdmin/Status`) and waits,
    /// `blocked`, until a compatible provider of each is leased; `None` to
    /// go on to its lease (a module that cannot say is leased as before),
    /// else how the run ended.
    async fn resolve(&mut self, shutdown: &CancellationToken) -> Option<Outcome> {
        let (client, _) = self.ctx.dialer(self.module);
        let conn = client
            .dial_addr(
                self.addr.clone(),
                PeerPolicy::exactly(self.module.urn.clone()),
            )
            .await
            .ok()?;
        let status = module_status(&conn).await.ok()?;
        drop(conn);
        let requires = reported(&status.requires, Required::new);
        let provides = reported(&status.provides, Provided::new);
        self.ctx.registry.update(&self.module.urn, |v| {
            v.provides = provides;
            v.requires = requires.clone();
        });
        tokio::select! {
            waited = wait_for_interfaces(self.ctx, &self.module.urn, &requires, shutdown) => {
                if waited {
                    self.ctx.registry.set_state(&self.module.urn, ModuleState::Starting, "");
                    return None;
                }
            }
            status = self.exited() => return Some(Outcome::Exited(status)),
        }
        self.stop().await;
        Some(Outcome::Shutdown)
    }

    /// The lease could not be opened: a dead process explains itself;
    /// otherwise the process is stopped and the lease failure reported.
    async fn lease_failed(&mut self, e: &CoreLeaseError) -> Outcome {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Outcome::Exited(Some(status));
            }
            stop_child(self.ctx, self.module, c, &self.addr).await;
        }
        match e {
            CoreLeaseError::ContractMismatch { .. } => Outcome::Misconfigured(e.to_string()),
            CoreLeaseError::Transport(
                TransportError::Connect { .. }
                | TransportError::Timeout { .. }
                | TransportError::Resolve { .. },
            ) if self.child.is_none() => Outcome::Unreachable(format!("cannot reach it: {e}")),
            _ => Outcome::StartFailed(format!("lease failed: {e}")),
        }
    }

    /// Holds `link` until something ends the run (the Core shutting down,
    /// an operator's command, the process exiting), only the lease (it
    /// ended, or the module failed its health checks), or a lease under
    /// renewed certificates is open to replace it.
    async fn hold(
        &mut self,
        link: &LeaseLink,
        commands: &mut mpsc::Receiver<ModuleCommand>,
        shutdown: &CancellationToken,
    ) -> Held {
        let (ctx, module, addr) = (self.ctx, self.module, self.addr.clone());
        let urn = &module.urn;
        let lease_id = link.id().to_string();
        let over = tokio::select! {
            _ = shutdown.cancelled() => {
                link.revoke("Core shutting down", Actor::Core);
                ctx.events.emit(EventKind::LeaseRevoked, urn.as_str(), &lease_id, "Core shutting down");
                self.stop().await;
                Some(Outcome::Shutdown)
            }
            cmd = commands.recv() => {
                link.revoke("operator command", Actor::Operator);
                self.stop().await;
                Some(match cmd {
                    Some(ModuleCommand::Restart) => Outcome::Restart,
                    Some(ModuleCommand::Stop) | None => Outcome::Stop,
                })
            }
            status = self.exited() => {
                let detail = format!("process {}", status_text(status));
                ctx.events.emit(EventKind::ConnectionLost, urn.as_str(), &lease_id, detail);
                Some(Outcome::Exited(status))
            }
            _ = link.ended() => None,
            unhealthy = watch_health(link) => {
                // The module stopped answering grpc.health.v1 on its own
                // connection: end the lease; it is leased again (or restarted)
                // like after any other loss.
                tracing::warn!(module = %urn, reason = %unhealthy, "health check failed; revoking the lease");
                link.revoke(&format!("health check failed: {unhealthy}"), Actor::Core);
                None
            }
            (new, why) = reestablish::renewed_lease(ctx, module, &addr, link) => {
                return Held::Replaced(new, why);
            }
        };
        match over {
            Some(outcome) => Held::Over(outcome),
            None => Held::LeaseEnded,
        }
    }

    /// A Type I module's lease ended (`why`): it exits by itself after its
    /// termination window; wait for that (and restart per policy).
    async fn terminating(&mut self, why: &str, shutdown: &CancellationToken) -> Outcome {
        self.ctx.registry.set_state(
            &self.module.urn,
            ModuleState::Restarting,
            format!("lease ended ({why}); module terminating"),
        );
        if self.child.is_none() {
            return Outcome::StartFailed(format!("lease ended ({why})"));
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                self.stop().await;
                Outcome::Shutdown
            }
            status = self.exited() => Outcome::ExitedAfterLease(status),
        }
    }

    /// A resident module's lease ended (`why`): it waits in standby, then is
    /// leased again (`None`), unless the Core shuts down.
    async fn standby(&mut self, why: &str, shutdown: &CancellationToken) -> Option<Outcome> {
        self.ctx.registry.set_state(
            &self.module.urn,
            ModuleState::Standby,
            format!("lease ended ({why})"),
        );
        tokio::select! {
            _ = shutdown.cancelled() => {
                self.stop().await;
                Some(Outcome::Shutdown)
            }
            _ = tokio::time::sleep(RELEASE_DELAY) => None,
        }
    }
}

/// Publishes a new lease: its link and routes first, so that a module the
/// Core reports leased (its row, the event) is admitted by the Core's
/// services and reached by the gateway; then the row and the event. The
/// link replaces `replaces`, for the reason given, when re-established under
/// renewed certificates.
fn record_leased(
    ctx: &CoreContext,
    urn: &Urn,
    link: &LeaseLink,
    replaces: Option<(&LeaseLink, &str)>,
) {
    ctx.set_link(urn, Some(link.clone()));
    ctx.routes.learn(urn, link.scope().iter());
    ctx.registry.update(urn, |v| {
        v.state = ModuleState::Leased;
        v.detail = String::new();
        v.lease_id = Some(link.id());
    });
    let detail = match replaces {
        None => format!("ttl {:?}", link.ttl()),
        Some((old, why)) => format!("ttl {:?}; replaces lease {} ({why})", link.ttl(), old.id()),
    };
    ctx.events.emit(
        EventKind::LeaseIssued,
        urn.as_str(),
        &link.id().to_string(),
        detail,
    );
}

/// Publishes the end of a lease while its module lives on; returns why it
/// ended.
fn record_lease_end(ctx: &CoreContext, urn: &Urn, link: &LeaseLink) -> String {
    let (kind, why) = match link.state() {
        LeaseState::Ended(e) => (
            match e.reason {
                Reason::LeaseExpired => EventKind::LeaseExpired,
                Reason::ConnectionLost => EventKind::ConnectionLost,
                _ => EventKind::LeaseRevoked,
            },
            e.reason.to_string(),
        ),
        LeaseState::Expired => (EventKind::LeaseExpired, Reason::LeaseExpired.to_string()),
        LeaseState::Active => (EventKind::LeaseRevoked, "ended".to_owned()),
    };
    ctx.events
        .emit(kind, urn.as_str(), &link.id().to_string(), why.clone());
    ctx.set_link(urn, None);
    ctx.registry.update(urn, |v| v.lease_id = None);
    why
}

/// How often the Core checks a leased module's health, and how many checks
/// in a row may fail before it gives up on the connection.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_FAILURES: u32 = 2;

/// Polls `grpc.health.v1` over the lease's connection; returns why once the
/// module has failed `HEALTH_FAILURES` checks in a row (never otherwise).
async fn watch_health(link: &LeaseLink) -> String {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mut client = HealthClient::new(link.connection().channel());
    let mut failures = 0;
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        let check = client.check(HealthCheckRequest {
            service: String::new(),
        });
        let why = match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving => {
                failures = 0;
                continue;
            }
            Ok(Ok(r)) => format!("status {:?}", r.get_ref().status()),
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
            Err(_) => "no answer within 2 s".to_owned(),
        };
        failures += 1;
        if failures >= HEALTH_FAILURES {
            return why;
        }
    }
}

async fn open_lease(
    ctx: &Arc<CoreContext>,
    module: &ModuleConfig,
    addr: &Address,
) -> Result<LeaseLink, CoreLeaseError> {
    let (client, signer) = ctx.dialer(module);
    let conn: Connection = client
        .dial_addr(addr.clone(), PeerPolicy::exactly(module.urn.clone()))
        .await?;
    lease_on(ctx, module, conn, signer).await
}

/// Opens a lease on `conn` (to `module`), signed by `signer`: the
/// contract compared first, or the module's declared methods asked for.
pub(crate) async fn lease_on(
    ctx: &Arc<CoreContext>,
    module: &ModuleConfig,
    conn: Connection,
    signer: Arc<LeaseSigner>,
) -> Result<LeaseLink, CoreLeaseError> {
    let scope = match &module.contract {
        Some(c) => {
            check_own_contract(&conn, module, c).await?;
            c.methods.clone()
        }
        None => declared_scope(ctx, module, &conn).await?,
    };
    let mut policy = RenewalPolicy::new(module.lease_ttl);
    policy.renew_when_left = ctx.renew_when_left;
    LeaseLink::open(
        conn,
        signer,
        scope,
        policy,
        ctx.audit.clone(),
        ctx.leases.clone(),
    )
    .await
}

/// How long the Core waits for a module's `ModuleAdmin/Status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// What the module says of itself (`ModuleAdmin/Status`, which needs no
/// lease), or why it did not.
async fn module_status(conn: &Connection) -> Result<ModuleStatus, String> {
    let mut client = ModuleAdminClient::new(conn.channel());
    let call = client.status(anima_protocol::pb::StatusRequest {});
    match tokio::time::timeout(STATUS_TIMEOUT, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(e)) => Err(e.message().to_owned()),
        Err(_) => Err(format!("no answer within {STATUS_TIMEOUT:?}")),
    }
}

/// Without a contract file, the Core asks the module for its declared
/// methods and leases them all; the interfaces it reports providing are
/// recorded, for the modules that require them (P2).
async fn declared_scope(
    ctx: &CoreContext,
    module: &ModuleConfig,
    conn: &Connection,
) -> Result<Scope, CoreLeaseError> {
    let status = module_status(conn)
        .await
        .map_err(CoreLeaseError::Declared)?;
    let provides = reported(&status.provides, Provided::new);
    let requires = reported(&status.requires, Required::new);
    ctx.registry.update(&module.urn, |v| {
        v.provides = provides;
        v.requires = requires;
    });
    Ok(Scope::new(status.methods)?)
}

/// The interfaces a module reports providing (`NAME VERSION` each) or
/// requiring (`NAME RANGE`); an entry that does not parse is left out (and
/// logged).
fn reported<T>(
    entries: &[String],
    parse: impl Fn(&str, &str) -> Result<T, anima_protocol::interface::InterfaceError>,
) -> Vec<T> {
    entries
        .iter()
        .filter_map(|entry| {
            let parsed = entry
                .split_once(' ')
                .ok_or_else(|| "not NAME VERSION".to_owned())
                .and_then(|(name, version)| parse(name, version).map_err(|e| e.to_string()));
            match parsed {
                Ok(p) => Some(p),
                Err(why) => {
                    tracing::warn!(entry = %entry.chars().take(200).collect::<String>(), %why, "a module reports an interface that does not parse; ignored");
                    None
                }
            }
        })
        .collect()
}

/// With a contract file, the Core first checks that it is the module's own
/// contract, as the module reports it. A module that cannot say (no
/// `ModuleAdmin`) is offered the configured contract's methods as before.
async fn check_own_contract(
    conn: &Connection,
    module: &ModuleConfig,
    contract: &Contract,
) -> Result<(), CoreLeaseError> {
    let status = match module_status(conn).await {
        Ok(status) => status,
        Err(why) => {
            tracing::debug!(module = %module.urn, %why, "no ModuleAdmin/Status; contract not compared");
            return Ok(());
        }
    };
    let differences = contract_match::differences(contract, &status);
    if differences.is_empty() {
        return Ok(());
    }
    Err(CoreLeaseError::ContractMismatch {
        file: module.contract_file.as_ref().map_or_else(
            || "in the configuration".to_owned(),
            |p| p.display().to_string(),
        ),
        differences: differences.join("; "),
    })
}

/// Asks the module to shut down (its Core may), then kills it if it lingers.
async fn stop_child(
    ctx: &Arc<CoreContext>,
    module: &ModuleConfig,
    child: &mut Child,
    addr: &Address,
) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let asked = async {
        let conn = ctx
            .dialer(module)
            .0
            .dial_addr(addr.clone(), PeerPolicy::exactly(module.urn.clone()))
            .await
            .ok()?;
        ModuleAdminClient::new(conn.channel())
            .shutdown(ShutdownRequest {
                reason: "stopped by its Core".into(),
            })
            .await
            .ok()
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), asked).await;
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(module = %module.urn, "did not exit within {STOP_GRACE:?}; killing");
        let _ = child.kill().await;
    }
}
