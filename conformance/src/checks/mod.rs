//! The checks: what the tool does to the module, as an honest Core and as a
//! misbehaving one, and which row each observation decides.
//!
//! This file holds the driver ([`run`]) and what every scenario shares: the
//! run's context (`Run`) and its helpers to start, dial, lease and call the
//! module. The rows are decided in one file per CONFORMANCE.md row family:
//!
//! - `transport`: T1, T2, T3.
//! - `interface`: I1, I2, I4, O1, and the declared type (E7, R1, S1).
//! - `admission`: A2, A3, A9 (offers and grants), A6 (a call under a lease
//!   ended on a connection kept for a new offer), and another Core's offer
//!   (E2, E3, R2).
//! - `lease`: A3, A4, A6, A8, A9 on a lease that stays open.
//! - `proofs`: A4, A7 (proofs and control steps an honest Core never sends).
//! - `ending`: A5, A6, A7, Z1 (a lease ended by revocation or refusal).
//! - `expiry`: E6, R6 (A6 under Type III), Z1 (a lease that runs out,
//!   streams).
//! - `zero_lease`: Z1, Z2, A1 (no lease, no execution; connection loss).
//! - `ephemeral`: E1 to E6, Z1, Z3 (the Type I scenario).
//! - `resident`: R1 to R6, S2, S5 to S7, Z1, Z3 (the Types II and III
//!   scenario).
//! - `tenants`: S3, S4, S5, S8, S9 (several Cores on a Type III module).
//! - `hostile`: the misbehaving Core's checks, run on a live lease (A3: a
//!   Core that never offers).
//! - `system`: P6 (another module's identity is refused) and P12 (a proxy
//!   sidecar's `Inspect`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anima_protocol::contract::{Contract, ModuleType};
use anima_protocol::lease::Scope;
use anima_protocol::pb::Refusal;
use anima_protocol::transport::Address;
use anima_protocol::{Connection, Urn};

use crate::error::ToolError;
use crate::report::Report;
use crate::session::{
    self, Actor, Answer, OfferKind, READ, Session, TOUCH, WATCH, call_empty, describe,
};
use crate::target::{Identities, LaunchCommand, Running, start};
use zero_lease::Ledger;

mod admission;
mod ending;
mod ephemeral;
mod expiry;
mod hostile;
mod interface;
mod lease;
mod local;
mod proofs;
mod resident;
mod system;
mod tenants;
mod transport;
mod zero_lease;

/// A method no module declares.
const UNDECLARED: &str = "/anima.conformance.v1.Undeclared/Call";
/// The reflection services a module must not serve.
const REFLECTION: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];
/// Slack allowed for a module to react to a lease ending (process
/// scheduling, a loaded machine); the tool reports what it measured.
const REACTION: Duration = Duration::from_millis(1000);

/// Where the module is.
#[derive(Debug, Clone)]
pub enum Target {
    /// The tool starts it (Type I, core-started Type II, or any type the
    /// tool should host as infrastructure).
    Launch(LaunchCommand),
    /// It runs already (pre-started Type II, Type III).
    Endpoint(SocketAddr),
}

/// What a run needs.
pub(crate) struct Plan {
    /// The module's contract.
    pub(crate) contract: Contract,
    /// Whether the contract text declares `type` (E7).
    pub(crate) type_declared: bool,
    /// The identities the tool presents.
    pub(crate) ids: Identities,
    /// Where the module is.
    pub(crate) target: Target,
    /// Where module logs go.
    pub(crate) workdir: std::path::PathBuf,
}

/// The run's context.
struct Run<'a> {
    plan: &'a Plan,
    module: Urn,
    declared: Scope,
    probe: bool,
    /// The contract declares the probe's stream (`Probe/Watch`).
    watch: bool,
    ledger: Ledger,
    launches: usize,
}

/// Runs every check that applies to the module and returns the report.
pub(crate) async fn run(plan: &Plan) -> Report {
    let mut r = Report::default();
    let declared = plan.contract.methods.clone();
    let probe = declared.contains(TOUCH) && declared.contains(READ);
    let watch = probe && declared.contains(WATCH);
    let mut run = Run {
        plan,
        module: plan.contract.urn.clone(),
        declared,
        probe,
        watch,
        ledger: Ledger::default(),
        launches: 0,
    };
    if !probe {
        for id in ["Z2", "E6", "R6", "S4", "S8", "S9"] {
            r.not_applicable(
                id,
                "the contract declares no probe (/anima.v1.Probe/Touch and Read; PROTOCOL.md §8)",
            );
        }
    }
    core_side_rows(&mut r);
    match plan.contract.module_type {
        ModuleType::Ephemeral => run.type1(&mut r).await,
        ModuleType::ResidentPrivate(_) | ModuleType::ResidentShared => {
            run.resident(&mut r).await;
        }
    }
    // T1 on the local transport: what a Core offers the modules it starts.
    if !matches!(plan.contract.module_type, ModuleType::ResidentShared) {
        run.unix_socket_checks(&mut r).await;
    }
    let not_type = |r: &mut Report, ids: &[&'static str], t: &str| {
        for id in ids {
            r.not_applicable(id, format!("applies to {t} modules"));
        }
    };
    match plan.contract.module_type {
        ModuleType::Ephemeral => {
            not_type(&mut r, &["R1", "R2", "R3", "R4", "R5", "R6"], "Type II");
            not_type(
                &mut r,
                &["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9"],
                "Type III",
            );
        }
        ModuleType::ResidentPrivate(_) => {
            not_type(&mut r, &["E1", "E2", "E3", "E4", "E5", "E6"], "Type I");
            not_type(
                &mut r,
                &["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9"],
                "Type III",
            );
        }
        ModuleType::ResidentShared => {
            not_type(&mut r, &["E1", "E2", "E3", "E4", "E5", "E6"], "Type I");
            not_type(&mut r, &["R1", "R2", "R3", "R4", "R5", "R6"], "Type II");
        }
    }
    if plan.type_declared {
        r.not_applicable("E7", "the contract declares its type");
    }
    r
}

/// Rows that constrain the Core, not the module.
fn core_side_rows(r: &mut Report) {
    r.not_applicable(
        "S10",
        "a Core-side rule (blacklisting); a failed S4/S8/S9 here is what a Core blacklists for",
    );
    r.not_applicable(
        "I3",
        "constrains the Core; the module side (scope enforcement) is checked under A6/Z2",
    );
}

impl Run<'_> {
    fn ids(&self) -> &Identities {
        &self.plan.ids
    }

    fn ttl(&self) -> Duration {
        self.plan.contract.max_lease.min(Duration::from_secs(30))
    }

    /// Starts the module (command mode) or returns the endpoint.
    async fn start(
        &mut self,
        core: Option<&Urn>,
    ) -> Result<(SocketAddr, Option<Running>), ToolError> {
        match &self.plan.target {
            Target::Endpoint(addr) => Ok((*addr, None)),
            Target::Launch(command) => {
                self.launches += 1;
                let log = self
                    .plan
                    .workdir
                    .join(format!("module-{}.log", self.launches));
                let running = start(command, self.ids(), &self.module, core, log).await?;
                // No Unix socket was offered: the ready line named TCP.
                let addr = running.addr.tcp().ok_or_else(|| {
                    ToolError::Unexpected(format!("a socket not offered: {}", running.addr))
                })?;
                Ok((addr, Some(running)))
            }
        }
    }

    async fn dial(&self, actor: &Actor, addr: impl Into<Address>) -> Result<Connection, ToolError> {
        actor.dial(addr, &self.module).await
    }

    /// Opens a lease as `actor` for `scope` and `ttl`.
    async fn open(
        &self,
        actor: &Actor,
        addr: impl Into<Address>,
        scope: &Scope,
        ttl: Duration,
    ) -> Result<Session, ToolError> {
        let conn = self.dial(actor, addr).await?;
        match session::offer(conn, &actor.identity, scope, ttl, OfferKind::Honest).await? {
            Answer::Granted(s) => Ok(*s),
            Answer::Refused(Refusal { reason, detail }) => {
                Err(ToolError::Refused { reason, detail })
            }
            Answer::Other(what) => Err(ToolError::Unexpected(what)),
        }
    }

    /// Renews `s` to its full TTL when less than half is left.
    async fn keep(&self, s: &mut Session) {
        let left = s
            .lease
            .expires_at()
            .saturating_duration_since(Instant::now());
        if left < s.lease.ttl() / 2 {
            let _ = s.renew(self.ttl()).await;
        }
    }

    async fn touch(&mut self, r: &mut Report, s: &mut Session, what: &str) -> bool {
        self.keep(s).await;
        match s.touch(0).await {
            Ok(_) => {
                self.ledger.admitted += 1;
                self.ledger.committed += 1;
                true
            }
            Err(status) => {
                r.fail(
                    "A3",
                    format!("{what}: a leased Touch failed: {}", describe(&status)),
                );
                false
            }
        }
    }

    async fn read(&mut self, r: &mut Report, s: &mut Session, what: &str) -> Option<u64> {
        self.keep(s).await;
        match s.read().await {
            Ok(reading) => {
                self.ledger.check(r, &reading, what);
                Some(reading.touches)
            }
            Err(status) => {
                r.fail(
                    "A3",
                    format!("{what}: a leased Read failed: {}", describe(&status)),
                );
                None
            }
        }
    }

    /// Reads under `s` (`what`) and checks `row`: the lease holds `want`
    /// touches, the evidence being `said` and the count read. That count.
    async fn check_touches(
        &mut self,
        r: &mut Report,
        s: &mut Session,
        what: &str,
        row: &'static str,
        want: u64,
        said: &str,
    ) -> Option<u64> {
        let seen = self.read(r, s, what).await;
        r.check(
            row,
            seen == Some(want),
            format!("{said} {seen:?} touches (want {want})"),
        );
        seen
    }

    /// One call under `s`: `Probe/Read` with the probe, else the first
    /// declared method with an empty request. `Err` only for a lease refusal
    /// (a handler's own error on an empty request is an answer).
    async fn leased_call(&self, s: &mut Session) -> Result<(), tonic::Status> {
        if self.probe {
            return s.read().await.map(|_| ());
        }
        let method = self.declared.iter().next().unwrap_or(UNDECLARED).to_owned();
        let proof = s.proof(&method);
        match call_empty(
            &s.conn,
            &method,
            &[(anima_protocol::lease::PROOF_HEADER, proof)],
        )
        .await
        {
            Err(st) if anima_protocol::lease::reason_of(&st).is_some() => Err(st),
            _ => Ok(()),
        }
    }

    // ---------------------------------------------------------------- static

    /// Transport, interface and status checks that need no lease.
    async fn static_checks(&self, r: &mut Report, addr: SocketAddr, pid: Option<u32>) {
        // T2: a plaintext HTTP/2 client gets no service.
        transport::plaintext_check(r, addr).await;
        // T3: certificates the module must refuse.
        self.certificate_checks(r, addr).await;
        // P6: another module's identity gets nothing.
        self.module_peer_checks(r, addr).await;
        // T1: mutual TLS with the module's URN; one listener.
        let Some(conn) = self.mtls_checks(r, addr, pid).await else {
            return;
        };
        // Status: type and methods as declared (I1, I2, R1, S1, E7).
        self.status_checks(r, &conn).await;
        // I4: no reflection, undeclared methods refused (I2).
        interface::undeclared_checks(r, &conn).await;
        // O1: the health service answers without a lease.
        interface::health_check(r, &conn).await;
    }

    // ----------------------------------------------------------------- phases

    /// Polls `Status` until one of the phases `want` (or `within` passes).
    async fn await_phase(
        &self,
        addr: SocketAddr,
        want: &'static [&'static str],
        within: Duration,
    ) -> Result<anima_protocol::pb::ModuleStatus, ToolError> {
        let conn = self.dial(&self.ids().operator, addr).await?;
        let until = Instant::now() + within;
        loop {
            let st = session::status(&conn).await.map_err(status_failed)?;
            if want.contains(&st.phase.as_str()) {
                return Ok(st);
            }
            if Instant::now() >= until {
                return Err(ToolError::Phase {
                    phase: st.phase,
                    want,
                    after: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn active_leases(&self, addr: SocketAddr) -> Option<u32> {
        let conn = self.dial(&self.ids().operator, addr).await.ok()?;
        session::status(&conn).await.ok().map(|st| st.active_leases)
    }

    async fn status_pid(&self, addr: SocketAddr) -> Option<u32> {
        let conn = self.dial(&self.ids().operator, addr).await.ok()?;
        let st = session::status(&conn).await.ok()?;
        // Only meaningful if the process is on this host.
        std::path::Path::new(&format!("/proc/{}", st.pid))
            .exists()
            .then_some(st.pid)
    }
}

/// A failed `ModuleAdmin/Status` call, as the tool's error.
fn status_failed(status: tonic::Status) -> ToolError {
    ToolError::Rpc {
        call: "ModuleAdmin/Status",
        status: Box::new(status),
    }
}

/// A call that failed in transport — the connection closed under it — as
/// opposed to an answer from the module: no answer, so nothing ran. Statuses
/// the module sent have no error source; transport failures do (or are the
/// client's own `Unavailable`/`Cancelled`).
fn transport_failure(status: &tonic::Status) -> bool {
    anima_protocol::lease::reason_of(status).is_none()
        && (std::error::Error::source(status).is_some()
            || matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled
            ))
}
