//! The checks: what the tool does to the module, as an honest Core and as a
//! misbehaving one, and which row each observation decides.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anima_module_sdk::{Contract, ModuleType};
use anima_protocol::lease::{ProofKey, REVOCATION_CONDITIONS, Reason, Scope};
use anima_protocol::pb::Refusal;
use anima_protocol::pb::control_frame::Frame;
use anima_protocol::{Connection, Urn};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::rawtls;
use super::report::Report;
use super::session::{
    self, Actor, Answer, OfferKind, PATIENCE, READ, Session, TOUCH, WATCH, call_empty, describe,
    has_reason,
};
use super::target::{Identities, LaunchCommand, Running, listening_ports, start};

mod hostile;

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
pub struct Plan {
    /// The module's contract.
    pub contract: Contract,
    /// Whether the contract text declares `type` (E7).
    pub type_declared: bool,
    /// The identities the tool presents.
    pub ids: Identities,
    /// Where the module is.
    pub target: Target,
    /// Where module logs go.
    pub workdir: std::path::PathBuf,
}

/// Counts what the probe must report (Z2, E6/R6): executions and commits
/// since a first reading, against the calls the module admitted.
#[derive(Debug, Default)]
struct Ledger {
    base: Option<(u64, u64)>,
    admitted: u64,
    /// Calls that may or may not have reached their handler (a Touch sent
    /// just as its lease expires).
    maybe: u64,
    committed: u64,
    /// Touches that may have been committed without the tool seeing them (a
    /// `Watch` reading committed as its lease ended, then dropped).
    maybe_committed: u64,
}

impl Ledger {
    fn check(
        &mut self,
        r: &mut Report,
        reading: &anima_protocol::pb::ProbeReading,
        when: &str,
    ) -> (bool, bool) {
        let (exec0, commit0) = *self.base.get_or_insert((
            reading.executions.saturating_sub(self.admitted),
            reading.committed.saturating_sub(self.committed),
        ));
        let exec = reading.executions.saturating_sub(exec0);
        let commit = reading.committed.saturating_sub(commit0);
        let exec_ok = exec >= self.admitted && exec <= self.admitted + self.maybe;
        r.check(
            "Z2",
            exec_ok,
            format!(
                "{when}: the probe counts {exec} handler executions; the module admitted {} calls{}",
                self.admitted,
                if self.maybe > 0 { format!(" (+ up to {} sent as their lease expired)", self.maybe) } else { String::new() }
            ),
        );
        let commit_ok = commit >= self.committed && commit <= self.committed + self.maybe_committed;
        if !commit_ok {
            r.fail(
                "Z2",
                format!(
                    "{when}: {commit} touches committed; {} were committed under a valid lease{}",
                    self.committed,
                    if self.maybe_committed > 0 {
                        format!(" (+ up to {} as their lease ended)", self.maybe_committed)
                    } else {
                        String::new()
                    }
                ),
            );
        }
        (exec_ok, commit_ok)
    }
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
pub async fn run(plan: &Plan) -> Report {
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
    async fn start(&mut self, core: Option<&Urn>) -> Result<(SocketAddr, Option<Running>), String> {
        match &self.plan.target {
            Target::Endpoint(addr) => Ok((*addr, None)),
            Target::Launch(command) => {
                self.launches += 1;
                let log = self
                    .plan
                    .workdir
                    .join(format!("module-{}.log", self.launches));
                let running = start(command, self.ids(), &self.module, core, log).await?;
                Ok((running.addr, Some(running)))
            }
        }
    }

    async fn dial(&self, actor: &Actor, addr: SocketAddr) -> Result<Connection, String> {
        actor.dial(addr, &self.module).await
    }

    /// Opens a lease as `actor` for `scope` and `ttl`.
    async fn open(
        &self,
        actor: &Actor,
        addr: SocketAddr,
        scope: &Scope,
        ttl: Duration,
    ) -> Result<Session, String> {
        let conn = self.dial(actor, addr).await?;
        match session::offer(conn, &actor.identity, scope, ttl, OfferKind::Honest).await? {
            Answer::Granted(s) => Ok(*s),
            Answer::Refused(Refusal { reason, detail }) => {
                Err(format!("the module refused the offer: {reason} {detail}"))
            }
            Answer::Other(what) => Err(what),
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
        match plaintext_served(addr).await {
            Ok(false) => r.pass("T2", "a plaintext HTTP/2 preface got no HTTP/2 answer"),
            Ok(true) => r.fail(
                "T2",
                "the module answered a plaintext HTTP/2 client with SETTINGS",
            ),
            Err(e) => r.fail("T2", format!("plaintext probe: {e}")),
        }
        // T3: certificates the module must refuse. The control case (a
        // valid certificate, same probe) must be served, or the probe proves
        // nothing.
        match rawtls::admission(addr, Some(&self.ids().valid)).await {
            Ok(rawtls::Admission::Served) => {
                for (what, cert) in &self.ids().refused {
                    match rawtls::admission(addr, cert.as_ref()).await {
                        Ok(rawtls::Admission::HandshakeRefused(e)) => {
                            r.pass("T3", format!("{what}: refused at the handshake ({e})"));
                        }
                        Ok(rawtls::Admission::CallRefused(e)) => r.pass(
                            "T3",
                            format!("{what}: handshake completed, but the call was refused ({e})"),
                        ),
                        Ok(rawtls::Admission::Served) => {
                            r.fail(
                                "T3",
                                format!("{what}: ACCEPTED (ModuleAdmin/Status answered)"),
                            );
                        }
                        Err(e) => r.fail("T3", format!("{what}: probe failed: {e}")),
                    }
                }
            }
            Ok(other) => r.fail(
                "T3",
                format!(
                    "a valid operator certificate was not served by the raw TLS probe: {other:?}"
                ),
            ),
            Err(e) => r.fail("T3", format!("raw TLS probe: {e}")),
        }
        // T1: mutual TLS with the module's URN; one listener.
        let conn = match self.dial(&self.ids().operator, addr).await {
            Ok(conn) => {
                r.pass(
                    "T1",
                    format!(
                        "mutual TLS 1.3 with {} (its certificate names it)",
                        self.module
                    ),
                );
                conn
            }
            Err(e) => {
                r.fail(
                    "T1",
                    format!("cannot connect with a valid certificate: {e}"),
                );
                return;
            }
        };
        if let Some(pid) = pid {
            match listening_ports(pid) {
                Some(ports) if ports == [addr.port()] => {
                    r.pass(
                        "T1",
                        format!("process {pid} listens on {} only", addr.port()),
                    );
                }
                Some(ports) => r.fail(
                    "T1",
                    format!(
                        "process {pid} listens on TCP ports {ports:?}; only {} is the module's",
                        addr.port()
                    ),
                ),
                None => {}
            }
        }
        // Status: type and methods as declared (I1, I2, R1, S1, E7).
        match session::status(&conn).await {
            Err(status) => r.fail(
                "I1",
                format!("ModuleAdmin/Status failed: {}", describe(&status)),
            ),
            Ok(st) => {
                let served: Vec<&str> = st.methods.iter().map(String::as_str).collect();
                let mut declared: Vec<&str> = self.declared.iter().collect();
                let mut listed = served.clone();
                listed.sort_unstable();
                declared.sort_unstable();
                r.check(
                    "I2",
                    listed == declared,
                    format!("Status lists {listed:?}; the contract declares {declared:?}"),
                );
                r.check(
                    "I1",
                    st.urn == self.module.as_str(),
                    format!("Status names {}", st.urn),
                );
                let expected = match self.plan.contract.module_type {
                    ModuleType::Ephemeral => "ephemeral",
                    ModuleType::ResidentPrivate(_) => "resident-private",
                    ModuleType::ResidentShared => "resident-shared",
                };
                let row = match self.plan.contract.module_type {
                    ModuleType::Ephemeral if !self.plan.type_declared => "E7",
                    ModuleType::Ephemeral => "I1",
                    ModuleType::ResidentPrivate(_) => "R1",
                    ModuleType::ResidentShared => "S1",
                };
                r.check(
                    row,
                    st.module_type == expected,
                    format!(
                        "the module reports type {:?}; its contract is {expected}",
                        st.module_type
                    ),
                );
                if st.max_lease_ms != self.plan.contract.max_lease.as_millis() as u64 {
                    r.fail(
                        "A9",
                        format!(
                            "the module reports max_lease {} ms; the contract says {} ms",
                            st.max_lease_ms,
                            self.plan.contract.max_lease.as_millis()
                        ),
                    );
                }
            }
        }
        // I4: no reflection, undeclared methods refused.
        for path in REFLECTION.iter().chain(std::iter::once(&UNDECLARED)) {
            match call_empty(&conn, path, &[]).await {
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    r.pass("I4", format!("{path}: UNIMPLEMENTED"));
                }
                Err(s) => r.fail(
                    "I4",
                    format!("{path}: {} (want UNIMPLEMENTED)", describe(&s)),
                ),
                Ok(()) => r.fail("I4", format!("{path}: answered")),
            }
        }
        match call_empty(&conn, UNDECLARED, &[]).await {
            Err(s) if has_reason(&s, Reason::UnknownMethod) => {
                r.pass("I2", "an undeclared method is refused UNKNOWN_METHOD");
            }
            Err(s) => r.fail(
                "I2",
                format!(
                    "an undeclared method: {} (want the UNKNOWN_METHOD reason, PROTOCOL.md §4)",
                    describe(&s)
                ),
            ),
            Ok(()) => r.fail("I2", "an undeclared method was answered"),
        }
        // O1: the health service answers without a lease.
        match call_empty(&conn, "/grpc.health.v1.Health/Check", &[]).await {
            Ok(()) => r.pass("O1", "grpc.health.v1 answers without a lease"),
            Err(s) => r.not_applicable("O1", format!("no grpc.health.v1 ({})", describe(&s))),
        }
    }

    /// Calls every declared method on a connection without a lease (with
    /// static credentials for good measure): each must be refused with
    /// `want` and run nothing.
    async fn unleased_calls(
        &self,
        r: &mut Report,
        addr: SocketAddr,
        want: Reason,
        when: &str,
    ) -> bool {
        let conn = match self.dial(&self.ids().core_a, addr).await {
            Ok(c) => c,
            Err(e) => {
                r.fail("T1", format!("{when}: cannot connect: {e}"));
                return false;
            }
        };
        let secrets = [
            (
                "authorization",
                "Bearer conformance-static-token".to_owned(),
            ),
            ("x-api-key", "conformance-static-key".to_owned()),
        ];
        let mut all_refused = true;
        for method in self.declared.iter() {
            let result = if method == TOUCH {
                session::touch(&conn, None, 0).await.map(|_| ())
            } else {
                call_empty(&conn, method, &secrets).await
            };
            match result {
                Err(s) if has_reason(&s, want) => {
                    r.pass("Z2", format!("{when}: {method} refused {}", want.as_str()));
                    r.pass(
                        "A1",
                        format!("{when}: {method} with a static token: refused"),
                    );
                }
                Err(s) => {
                    all_refused = false;
                    r.fail(
                        "Z2",
                        format!(
                            "{when}: {method}: {} (want {})",
                            describe(&s),
                            want.as_str()
                        ),
                    );
                }
                Ok(()) => {
                    all_refused = false;
                    r.fail("Z2", format!("{when}: {method} ran without a lease"));
                    r.fail(
                        "A1",
                        format!("{when}: {method} ran with only a static token"),
                    );
                }
            }
        }
        if self.probe {
            // A made-up proof on a connection without a lease.
            let fake = format!("v1.1.{}", "A".repeat(22));
            match session::touch(&conn, Some(fake), 0).await {
                Err(s) if has_reason(&s, want) || has_reason(&s, Reason::BadProof) => {
                    r.pass("Z2", format!("{when}: Touch with a made-up proof refused"));
                }
                Err(s) => {
                    all_refused = false;
                    r.fail(
                        "Z2",
                        format!("{when}: Touch with a made-up proof: {}", describe(&s)),
                    );
                }
                Ok(_) => {
                    all_refused = false;
                    r.fail("Z2", format!("{when}: Touch with a made-up proof ran"));
                }
            }
        }
        all_refused
    }

    /// Opens the run's first lease and checks the grant (A2, A3, A9).
    async fn first_lease(&mut self, r: &mut Report, addr: SocketAddr) -> Option<Session> {
        let asked = self.plan.contract.max_lease * 4;
        let s = match self
            .open(
                &self.ids().core_a.clone(),
                addr,
                &self.declared.clone(),
                asked,
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                r.fail(
                    "A3",
                    format!("an honest offer from its Core was not granted: {e}"),
                );
                return None;
            }
        };
        r.pass("A3", "the module verified the Core's offer and its grant verified (signature, identities, binding, scope, TTL)");
        let g = &s.grant;
        let max = self.plan.contract.max_lease;
        r.check(
            "A9",
            s.lease.ttl() <= max && g.ttl_ms <= max.as_millis() as u64,
            format!(
                "asked {} ms, granted {} ms (contract maximum {} ms)",
                asked.as_millis(),
                g.ttl_ms,
                max.as_millis()
            ),
        );
        let rev: Vec<&str> = g.rev.iter().map(String::as_str).collect();
        let ok = !g.lid.is_empty()
            && g.lid == s.lease.id().to_string()
            && g.con == self.ids().core_a.identity.urn().as_str()
            && g.pro == self.module.as_str()
            && g.scope.len() == self.declared.len()
            && g.exp >= g.iat
            && REVOCATION_CONDITIONS.iter().all(|c| rev.contains(c));
        r.check(
            "A2",
            ok,
            format!(
                "grant: lid {}, con {}, pro {}, scope {:?}, ttl_ms {}, rev {:?}",
                g.lid, g.con, g.pro, g.scope, g.ttl_ms, g.rev
            ),
        );
        Some(s)
    }

    /// The first lease's checks that leave it open: probe baseline, Z2 on
    /// another connection, scope enforcement, renewals.
    async fn leased_checks(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        s: &mut Session,
        unleased: Reason,
    ) {
        if self.probe {
            let before = self.read(r, s, "first reading").await;
            self.touch(r, s, "touch 1").await;
            self.touch(r, s, "touch 2").await;
            let touches = self.read(r, s, "after two touches").await;
            r.check(
                "A3",
                before.is_some() && touches == before.map(|n| n + 2),
                format!(
                    "the lease's own touches read {touches:?} after two more (before: {before:?})"
                ),
            );
            // Calls on another, unleased connection run nothing.
            self.unleased_calls(
                r,
                addr,
                unleased,
                "another connection of the same Core, no lease",
            )
            .await;
            self.read(r, s, "after unleased calls").await;
            // A6/scope: demote to Read only; Touch is refused and runs nothing.
            let read_only = Scope::new([READ]).ok();
            if let Some(read_only) = read_only {
                match s.rescope(&read_only).await {
                    Ok(Some(Frame::Rescoped(_))) => {
                        match s.touch(0).await {
                            Err(st) if has_reason(&st, Reason::ScopeDenied) => {
                                r.pass(
                                    "A6",
                                    "after demotion to Read, Touch is refused SCOPE_DENIED",
                                );
                            }
                            Err(st) => r.fail(
                                "A6",
                                format!(
                                    "Touch outside the scope: {} (want SCOPE_DENIED)",
                                    describe(&st)
                                ),
                            ),
                            Ok(_) => {
                                self.ledger.admitted += 1;
                                self.ledger.committed += 1;
                                r.fail("A6", "Touch ran outside the lease's scope");
                            }
                        }
                        self.read(r, s, "after an out-of-scope Touch").await;
                        match s.rescope(&self.declared.clone()).await {
                            Ok(Some(Frame::Rescoped(_))) => r.pass("A4", "scope demotion and promotion within the declared methods are granted on the control stream"),
                            other => r.fail("A4", format!("promotion back to the declared scope: {other:?}")),
                        }
                    }
                    other => r.fail("A4", format!("demotion to Read: {other:?}")),
                }
            }
        }
        // A8: short renewals under continuous calls.
        // Short enough that several renewals happen, long enough that a
        // loaded machine's scheduling does not let the lease run out.
        let step = Duration::from_millis(1500).min(self.plan.contract.max_lease);
        let mut refusals = Vec::new();
        let mut calls = 0;
        let until = Instant::now() + step * 3;
        if let Err(e) = s.renew(step).await {
            r.fail("A8", format!("renewal refused: {e}"));
        }
        let mut renewals = 1;
        while Instant::now() < until {
            let left = s
                .lease
                .expires_at()
                .saturating_duration_since(Instant::now());
            if left < step / 2 {
                match s.renew(step).await {
                    Ok(_) => renewals += 1,
                    Err(e) => refusals.push(format!("renewal: {e}")),
                }
            }
            let result = self.leased_call(s).await;
            calls += 1;
            if let Err(st) = result {
                refusals.push(describe(&st));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r.check(
            "A8",
            refusals.is_empty(),
            format!(
                "{renewals} renewals of {} ms, {calls} calls over {} ms: {} refusals {:?}",
                step.as_millis(),
                (step * 3).as_millis(),
                refusals.len(),
                refusals.first()
            ),
        );
        // A9 on renewal.
        let max = self.plan.contract.max_lease;
        match s.renew(max * 4).await {
            Ok(ttl) => r.check(
                "A9",
                ttl <= max,
                format!(
                    "renewal asked {} ms, granted {} ms",
                    (max * 4).as_millis(),
                    ttl.as_millis()
                ),
            ),
            Err(e) => r.fail("A8", format!("renewal refused: {e}")),
        }
    }

    /// Ends `s` by revocation and checks the module stops (A5, A6, Z1).
    async fn revoke_checks(&mut self, r: &mut Report, mut s: Session) {
        s.revoke("conformance: revocation").await;
        stream_closed(r, &mut s, "revocation").await;
        self.ended(r, &mut s, Reason::LeaseRevoked, "revoked").await;
    }

    /// A6 and Z1 for a lease that ended (`why`): a further call under it is
    /// refused with `why` (or as if no lease were left).
    async fn ended(&mut self, r: &mut Report, s: &mut Session, why: Reason, what: &str) {
        let want = [why, Reason::NoLease, Reason::Standby];
        if self.refused_after_end(r, s, "A6", &want, what).await {
            r.pass(
                "Z1",
                format!("the {what} lease is over: calls under it are refused"),
            );
        }
    }

    /// A call under an ended lease must be refused with one of `want`.
    async fn refused_after_end(
        &mut self,
        r: &mut Report,
        s: &mut Session,
        row: &'static str,
        want: &[Reason],
        what: &str,
    ) -> bool {
        let result = if self.probe {
            let proof = s.proof(TOUCH);
            session::touch(&s.conn, Some(proof), 0).await.map(|_| ())
        } else {
            let method = self.declared.iter().next().unwrap_or(UNDECLARED).to_owned();
            let proof = s.proof(&method);
            call_empty(
                &s.conn,
                &method,
                &[(anima_protocol::lease::PROOF_HEADER, proof)],
            )
            .await
        };
        match result {
            Err(st) if want.iter().any(|w| has_reason(&st, *w)) => {
                r.pass(
                    row,
                    format!("a call under the {what} lease: {}", describe(&st)),
                );
                true
            }
            Err(st) if transport_failure(&st) => {
                // The connection is gone (a Type I module exiting): no
                // answer, so nothing ran.
                r.pass(
                    row,
                    format!(
                        "a call under the {what} lease: connection closed ({})",
                        st.message()
                    ),
                );
                true
            }
            Err(st) => {
                r.fail(
                    row,
                    format!(
                        "a call under the {what} lease: {} (want {:?})",
                        describe(&st),
                        want.iter().map(|w| w.as_str()).collect::<Vec<_>>()
                    ),
                );
                false
            }
            Ok(()) => {
                if self.probe {
                    self.ledger.admitted += 1;
                    self.ledger.committed += 1;
                }
                r.fail(row, format!("a call under the {what} lease was answered"));
                false
            }
        }
    }

    /// Streams are gated for their whole life: a `Probe/Watch` stream whose
    /// lease runs out (`LeaseExpired`, row `halt_row`) or is revoked
    /// (`LeaseRevoked`, Z1) ends with that reason within [`REACTION`] of the
    /// end, and commits nothing afterwards (the ledger checks that later).
    async fn stream_checks(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        actor: &Actor,
        why: Reason,
        row: &'static str,
    ) {
        let expiry = why == Reason::LeaseExpired;
        let what = if expiry { "expired" } else { "revoked" };
        if !self.watch {
            r.pass(
                row,
                format!("(streams not checked: the contract does not declare {WATCH})"),
            );
            return;
        }
        let ttl = if expiry {
            Duration::from_millis(800).min(self.plan.contract.max_lease)
        } else {
            self.ttl()
        };
        let mut s = match self.open(actor, addr, &self.declared.clone(), ttl).await {
            Ok(s) => s,
            Err(e) => {
                r.fail("A3", format!("a lease for a stream was not granted: {e}"));
                return;
            }
        };
        let mut stream = match s.watch(20, 0).await {
            Ok(stream) => stream,
            Err(st) => {
                r.fail("A3", format!("a leased Watch failed: {}", describe(&st)));
                return;
            }
        };
        self.ledger.admitted += 1;
        // Readings received, and the most touches one of them reported: each
        // reading under a valid lease committed one touch.
        let (mut readings, mut touches) = (0u64, 0u64);
        let mut end = s.lease.expires_at();
        if !expiry {
            match tokio::time::timeout(PATIENCE, stream.message()).await {
                Ok(Ok(Some(first))) => {
                    readings += 1;
                    touches = first.touches;
                }
                other => {
                    r.fail(
                        "A3",
                        format!("a leased Watch sent no first reading: {other:?}"),
                    );
                    return;
                }
            }
            end = Instant::now();
            s.revoke("conformance: revoking a lease with a stream open")
                .await;
        }
        let limit = end.saturating_duration_since(Instant::now()) + PATIENCE;
        let outcome = tokio::time::timeout(limit, async {
            loop {
                match stream.message().await {
                    Ok(Some(reading)) => {
                        readings += 1;
                        touches = touches.max(reading.touches);
                    }
                    Ok(None) => return Ok(()),
                    Err(st) => return Err(st),
                }
            }
        })
        .await;
        let late = Instant::now().saturating_duration_since(end);
        // One more touch may have been committed, then dropped with its
        // reading as the lease ended.
        self.ledger.committed += touches;
        self.ledger.maybe_committed += 1;
        let detail = format!("a Watch stream under a {what} lease ({readings} readings)");
        match outcome {
            Ok(Err(st)) if has_reason(&st, why) => r.check(
                row,
                late <= REACTION,
                format!(
                    "{detail} ended {} ms after the end, {}",
                    late.as_millis(),
                    why.as_str()
                ),
            ),
            Ok(Err(st)) => r.fail(
                row,
                format!("{detail} ended {} (want {})", describe(&st), why.as_str()),
            ),
            Ok(Ok(())) => r.fail(
                row,
                format!("{detail} ended OK, {} ms after the end", late.as_millis()),
            ),
            Err(_) => r.fail(
                row,
                format!(
                    "{detail} was still streaming {} ms after the end",
                    late.as_millis()
                ),
            ),
        }
    }

    /// A lease that is not renewed runs out: refused after expiry (A6, Z1);
    /// with the probe, a Touch holding across the expiry is halted and
    /// commits nothing (E6 / R6).
    async fn expiry_checks(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        actor: &Actor,
        halt_row: &'static str,
    ) {
        let ttl = Duration::from_millis(800).min(self.plan.contract.max_lease);
        let mut s = match self.open(actor, addr, &self.declared.clone(), ttl).await {
            Ok(s) => s,
            Err(e) => {
                r.fail("A3", format!("a short lease was not granted: {e}"));
                return;
            }
        };
        if self.probe {
            let expires = s.lease.expires_at();
            let result = s.touch(5_000).await;
            let late = Instant::now().saturating_duration_since(expires);
            // Halted mid-hold, or (on a loaded machine) refused on arrival
            // if it got there after the expiry: it may or may not have run.
            self.ledger.maybe += 1;
            match result {
                Err(st) if has_reason(&st, Reason::LeaseExpired) => r.check(
                    halt_row,
                    late <= REACTION,
                    format!("a Touch holding 5 s under a {} ms lease was halted {} ms after the Core's expiry, LEASE_EXPIRED", ttl.as_millis(), late.as_millis()),
                ),
                Err(st) => r.fail(halt_row, format!("a Touch across expiry: {} after {} ms (want LEASE_EXPIRED)", describe(&st), late.as_millis())),
                Ok(_) => {
                    self.ledger.maybe -= 1;
                    self.ledger.admitted += 1;
                    self.ledger.committed += 1;
                    r.fail(halt_row, format!("a Touch across expiry completed and committed ({} ms after expiry)", late.as_millis()));
                }
            }
        } else {
            tokio::time::sleep_until((s.lease.expires_at() + Duration::from_millis(100)).into())
                .await;
        }
        self.ended(r, &mut s, Reason::LeaseExpired, "expired").await;
        stream_closed(r, &mut s, "expiry").await;
    }

    /// The Core refuses (A7): the module must end the lease at once. Then a
    /// scope beyond the declared methods: the module refuses and ends it.
    async fn refusal_checks(&mut self, r: &mut Report, addr: SocketAddr, actor: &Actor, which: u8) {
        let mut s = match self
            .open(actor, addr, &self.declared.clone(), self.ttl())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                r.fail("A3", format!("a lease was not granted: {e}"));
                return;
            }
        };
        if which == 0 {
            s.send(Frame::Refuse(Refusal {
                reason: Reason::ProtocolViolation.as_str().into(),
                detail: "conformance: the Core refuses".into(),
            }))
            .await;
            // The module needs a moment to read the frame; a call racing it
            // may still pass, so wait for its side of the stream to close.
            let closed = s.await_close(PATIENCE).await;
            r.check(
                "A5",
                closed.is_ok(),
                format!("after the Core's refuse the module closed its stream: {closed:?}"),
            );
            let ok = self
                .refused_after_end(
                    r,
                    &mut s,
                    "A7",
                    &[Reason::LeaseRevoked, Reason::NoLease, Reason::Standby],
                    "refused",
                )
                .await;
            if ok {
                r.pass("A7", "the Core's refuse ended the module's lease");
            }
        } else {
            let mut wider = self.declared.iter().map(str::to_owned).collect::<Vec<_>>();
            wider.push(UNDECLARED.into());
            let Ok(wider) = Scope::new(wider.iter().map(String::as_str)) else {
                return;
            };
            match s.rescope(&wider).await {
                Ok(Some(Frame::Refuse(Refusal { reason, .. })))
                    if reason == Reason::ScopeDenied.as_str() =>
                {
                    r.pass(
                        "A7",
                        "a scope naming an undeclared method is refused SCOPE_DENIED",
                    );
                    self.refused_after_end(
                        r,
                        &mut s,
                        "A7",
                        &[
                            Reason::LeaseRevoked,
                            Reason::ScopeDenied,
                            Reason::NoLease,
                            Reason::Standby,
                        ],
                        "refused",
                    )
                    .await;
                }
                other => r.fail(
                    "A7",
                    format!(
                        "a scope naming an undeclared method: {other:?} (want refuse SCOPE_DENIED)"
                    ),
                ),
            }
        }
    }

    /// Forged and replayed proofs (A4): refused, and the module revokes.
    async fn proof_checks(
        &mut self,
        r: &mut Report,
        addr: SocketAddr,
        actor: &Actor,
        replay: bool,
    ) {
        let mut s = match self
            .open(actor, addr, &self.declared.clone(), self.ttl())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                r.fail("A3", format!("a lease was not granted: {e}"));
                return;
            }
        };
        let method = if self.probe {
            READ.to_owned()
        } else {
            self.declared.iter().next().unwrap_or(UNDECLARED).to_owned()
        };
        let call = |conn: &Connection, proof: String| {
            let conn = conn.clone();
            let method = method.clone();
            async move {
                if method == READ {
                    session::read(&conn, Some(proof)).await.map(|_| ())
                } else {
                    call_empty(
                        &conn,
                        &method,
                        &[(anima_protocol::lease::PROOF_HEADER, proof)],
                    )
                    .await
                }
            }
        };
        let (proof, want, what) = if replay {
            let proof = s.proof(&method);
            // The first use is genuine (whatever the handler answers).
            let _ = call(&s.conn, proof.clone()).await;
            (proof, Reason::ProofReplayed, "replayed")
        } else {
            let forged = ProofKey::new(&[0x5a; 32]).proof(s.next_seq(), &method);
            (forged, Reason::BadProof, "forged")
        };
        match call(&s.conn, proof).await {
            Err(st) if has_reason(&st, want) => {
                r.pass("A4", format!("a {what} proof is refused {}", want.as_str()))
            }
            Err(st) => r.fail(
                "A4",
                format!("a {what} proof: {} (want {})", describe(&st), want.as_str()),
            ),
            Ok(()) => r.fail("A4", format!("a call with a {what} proof was answered")),
        }
        // The module revokes the lease on a bad proof (PROTOCOL.md §4).
        match s.next_frame(PATIENCE).await {
            Ok(Some(Frame::Revoke(_) | Frame::Refuse(_))) | Ok(None) => {
                r.pass(
                    "A7",
                    format!("after a {what} proof the module revoked the lease"),
                );
            }
            other => r.fail(
                "A7",
                format!("after a {what} proof the module did not revoke: {other:?}"),
            ),
        }
        self.refused_after_end(
            r,
            &mut s,
            "A6",
            &[Reason::LeaseRevoked, Reason::NoLease, Reason::Standby],
            "revoked",
        )
        .await;
    }

    /// Drops the connection of a fresh lease (Z1 connection loss).
    async fn drop_connection(&self, r: &mut Report, addr: SocketAddr, actor: &Actor) -> bool {
        match self
            .open(actor, addr, &self.declared.clone(), self.ttl())
            .await
        {
            Ok(s) => {
                drop(s);
                true
            }
            Err(e) => {
                r.fail("A3", format!("a lease was not granted: {e}"));
                false
            }
        }
    }

    /// A resident module's lease ends with its connection (Z1): the open
    /// lease count rises with a new lease and falls back when its
    /// connection is dropped.
    async fn connection_loss(&self, r: &mut Report, addr: SocketAddr, actor: &Actor) {
        let admin = match self.dial(&self.ids().operator, addr).await {
            Ok(c) => c,
            Err(e) => {
                r.fail("Z1", format!("cannot reach ModuleAdmin: {e}"));
                return;
            }
        };
        let count = |admin: Connection| async move {
            session::status(&admin).await.map(|st| st.active_leases)
        };
        let Ok(before) = count(admin.clone()).await else {
            r.fail("Z1", "ModuleAdmin/Status failed");
            return;
        };
        let s = match self
            .open(actor, addr, &self.declared.clone(), self.ttl())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                r.fail("A3", format!("a lease was not granted: {e}"));
                return;
            }
        };
        let during = count(admin.clone()).await.unwrap_or(before);
        drop(s);
        let started = Instant::now();
        // A closed socket is seen at once; a silent peer within the 10 s
        // keepalive bound (PROTOCOL.md §1).
        let limit = Duration::from_secs(12);
        loop {
            match count(admin.clone()).await {
                Ok(n) if n <= before => {
                    r.pass("Z1", format!("connection loss: the module's open leases went {before} → {during} → {n} within {} ms of the connection closing", started.elapsed().as_millis()));
                    return;
                }
                Ok(n) if started.elapsed() >= limit => {
                    r.fail("Z1", format!("connection loss: {n} leases still open {} s after the connection closed (before: {before})", limit.as_secs()));
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(st) => {
                    r.fail("Z1", format!("ModuleAdmin/Status: {}", describe(&st)));
                    return;
                }
            }
        }
    }

    /// Polls `Status` until `phase` (or `within` passes).
    async fn await_phase(
        &self,
        addr: SocketAddr,
        phase: &str,
        within: Duration,
    ) -> Result<anima_protocol::pb::ModuleStatus, String> {
        let conn = self.dial(&self.ids().operator, addr).await?;
        let until = Instant::now() + within;
        loop {
            let st = session::status(&conn).await.map_err(|s| describe(&s))?;
            if st.phase == phase {
                return Ok(st);
            }
            if Instant::now() >= until {
                return Err(format!(
                    "phase {:?} after {within:?} (want {phase:?})",
                    st.phase
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // ---------------------------------------------------------------- Type I

    async fn type1(&mut self, r: &mut Report) {
        let Target::Launch(_) = &self.plan.target else {
            for id in ["E1", "E2", "E3", "E4", "E5", "E6", "Z3"] {
                r.not_applicable(
                    id,
                    "Type I modules are started by their Core: give a command, not an endpoint",
                );
            }
            if let Target::Endpoint(addr) = self.plan.target {
                self.static_checks(r, addr, None).await;
            }
            return;
        };
        let core_a = self.ids().core_a.clone();
        let core_b = self.ids().core_b.clone();
        let core_urn = core_a.identity.urn().clone();
        let c = &self.plan.contract;
        let exit_within = c.expired_grace + c.termination_window + Duration::from_secs(3);

        // E1: nobody connects.
        match self.start(Some(&core_urn)).await {
            Err(e) => r.fail("E1", format!("cannot start: {e}")),
            Ok((_, Some(mut p))) => {
                let within = c.startup_grace + Duration::from_secs(3);
                let started = Instant::now();
                match p.wait_exit(within).await {
                    Some(st) if st.code() == Some(3) => {
                        r.pass("E1", format!("no connection: exited with status 3 after {} ms (startup grace {} ms)", started.elapsed().as_millis(), c.startup_grace.as_millis()));
                        r.pass("Z1", "no connection within the startup grace: zero-lease, the module terminated");
                    }
                    Some(st) => r.fail(
                        "E1",
                        format!("no connection: exited with {st} (want status 3)"),
                    ),
                    None => {
                        r.fail("E1", format!("no connection: still running {} ms after start (startup grace {} ms)", within.as_millis(), c.startup_grace.as_millis()));
                        p.kill().await;
                    }
                }
            }
            Ok((_, None)) => {}
        }

        // The main run: static checks, the first lease, other Cores, revoke.
        let Ok((addr, Some(mut p))) = self
            .start(Some(&core_urn))
            .await
            .map_err(|e| r.fail("T1", format!("cannot start: {e}")))
        else {
            return;
        };
        self.static_checks(r, addr, p.pid).await;
        self.unleased_calls(r, addr, Reason::NoLease, "before any lease")
            .await;
        if let Some(mut s) = self.first_lease(r, addr).await {
            self.wrong_core(r, addr, &core_b, "E2").await;
            self.hostile_checks(r, addr, &mut s).await;
            self.leased_checks(r, addr, &mut s, Reason::NoLease).await;
            let admin = self.dial(&self.ids().operator, addr).await.ok();
            self.revoke_checks(r, s).await;
            // E4: the module is in its grace or termination window now.
            match admin {
                Some(admin) => match window_phase(&admin, Duration::from_secs(2)).await {
                    Ok(phase) => r.pass("E4", format!("after the lease ended the module reported phase {phase:?}: its termination window is open")),
                    Err(e) => match p.wait_exit(Duration::from_secs(2)).await {
                        // Too quick to observe: the window ran its cleanup
                        // and the module exited cleanly.
                        Some(st) if st.success() => r.pass(
                            "E4",
                            format!("the module closed its window and exited 0 before the phase could be read ({e})"),
                        ),
                        _ => r.fail("E4", format!("after the lease ended: {e}")),
                    },
                },
                None => r.fail("E4", "cannot reach ModuleAdmin before the lease ended"),
            }
            self.await_exit(r, &mut p, exit_within, "after revocation")
                .await;
        }

        // E3: the expired grace.
        if c.expired_grace >= Duration::from_millis(300) {
            if let Ok((addr, Some(mut p))) = self.start(Some(&core_urn)).await {
                if let Ok(s) = self
                    .open(&core_a, addr, &self.declared.clone(), self.ttl())
                    .await
                {
                    let mut s = s;
                    s.revoke("conformance: grace").await;
                    let _ = s.await_close(PATIENCE).await;
                    self.wrong_core(r, addr, &core_b, "E3").await;
                    match self
                        .open(&core_a, addr, &self.declared.clone(), self.ttl())
                        .await
                    {
                        Ok(mut again) => {
                            r.pass("E3", "within the expired grace the same Core leased again");
                            again.revoke("conformance: grace done").await;
                        }
                        Err(e) => r.fail(
                            "E3",
                            format!("within the expired grace the same Core was refused: {e}"),
                        ),
                    }
                }
                self.await_exit(
                    r,
                    &mut p,
                    exit_within + c.expired_grace,
                    "after the grace re-lease",
                )
                .await;
            }
        } else {
            r.not_applicable("E3", "the contract has no expired grace");
        }

        // E6 and the remaining destructive checks, one process each.
        // Steps 5 and 6 need the probe's stream.
        let steps = if self.watch { 7 } else { 5 };
        for step in 0..steps {
            let Ok((addr, Some(mut p))) = self.start(Some(&core_urn)).await else {
                r.fail("T1", "cannot start the module again");
                continue;
            };
            match step {
                0 => self.expiry_checks(r, addr, &core_a, "E6").await,
                1 => self.refusal_checks(r, addr, &core_a, 0).await,
                2 => self.refusal_checks(r, addr, &core_a, 1).await,
                3 => self.proof_checks(r, addr, &core_a, false).await,
                4 => self.proof_checks(r, addr, &core_a, true).await,
                5 => {
                    self.stream_checks(r, addr, &core_a, Reason::LeaseExpired, "E6")
                        .await;
                }
                _ => {
                    self.stream_checks(r, addr, &core_a, Reason::LeaseRevoked, "Z1")
                        .await;
                }
            }
            self.await_exit(
                r,
                &mut p,
                exit_within,
                [
                    "after expiry",
                    "after the Core's refusal",
                    "after a refused scope",
                    "after a forged proof",
                    "after a replayed proof",
                    "after a stream's lease expired",
                    "after a stream's lease was revoked",
                ][step],
            )
            .await;
        }
        // Z1 connection loss.
        if let Ok((addr, Some(mut p))) = self.start(Some(&core_urn)).await
            && self.drop_connection(r, addr, &core_a).await
        {
            if let Some(st) = p.wait_exit(exit_within).await {
                r.check(
                    "Z1",
                    st.success(),
                    format!("connection loss: zero-lease, the module exited with {st}"),
                );
            } else {
                r.fail("Z1", "connection loss: the module is still running");
                r.fail(
                    "E5",
                    format!(
                        "still running {} ms after its connection was lost",
                        exit_within.as_millis()
                    ),
                );
                p.kill().await;
            }
        }
    }

    /// A Type I module must end by itself with status 0 (E5, Z3).
    async fn await_exit(&self, r: &mut Report, p: &mut Running, within: Duration, when: &str) {
        let started = Instant::now();
        match p.wait_exit(within).await {
            Some(st) if st.success() => {
                r.pass(
                    "E5",
                    format!(
                        "{when}: exited by itself with status 0 in {} ms",
                        started.elapsed().as_millis()
                    ),
                );
                r.pass("Z3", format!("{when}: Type I terminated"));
            }
            Some(st) => r.fail("E5", format!("{when}: exited with {st} (want 0)")),
            None => {
                r.fail("E5", format!("{when}: still running {} ms after its lease ended (expired grace + termination window + 3 s)", within.as_millis()));
                r.fail(
                    "Z3",
                    format!("{when}: zero-lease, but the process did not terminate"),
                );
                p.kill().await;
            }
        }
    }

    /// Another Core's offer must not be granted.
    async fn wrong_core(&self, r: &mut Report, addr: SocketAddr, other: &Actor, row: &'static str) {
        let conn = match self.dial(other, addr).await {
            Err(e) => {
                r.pass(
                    row,
                    format!(
                        "another Core ({}) is refused at the handshake: {e}",
                        other.identity.urn()
                    ),
                );
                return;
            }
            Ok(conn) => conn,
        };
        match session::offer(
            conn,
            &other.identity,
            &self.declared,
            self.ttl(),
            OfferKind::Honest,
        )
        .await
        {
            Ok(Answer::Refused(Refusal { reason, detail })) => r.check(
                row,
                reason == Reason::WrongCore.as_str(),
                format!("another Core's offer is refused: {reason} {detail}"),
            ),
            Ok(Answer::Granted(mut s)) => {
                r.fail(
                    row,
                    format!(
                        "the module granted a lease to a second Core ({})",
                        other.identity.urn()
                    ),
                );
                s.revoke("conformance: second core").await;
            }
            Ok(Answer::Other(what)) => {
                r.pass(row, format!("another Core's offer is not granted: {what}"))
            }
            Err(e) => r.pass(row, format!("another Core's offer is not granted: {e}")),
        }
    }

    // ----------------------------------------------------- Types II and III

    async fn resident(&mut self, r: &mut Report) {
        let shared = matches!(self.plan.contract.module_type, ModuleType::ResidentShared);
        let core_a = self.ids().core_a.clone();
        let core_b = self.ids().core_b.clone();
        let core_urn = core_a.identity.urn().clone();
        // Core-started Type II is bound to its launching Core; pre-started
        // Type II binds to its first lessee; Type III ignores it.
        let bind = match self.plan.contract.module_type {
            ModuleType::ResidentPrivate(anima_module_sdk::InitMode::CoreStarted) => Some(&core_urn),
            _ => None,
        };
        let (addr, mut process) = match self.start(bind).await {
            Ok(x) => x,
            Err(e) => {
                r.fail("T1", format!("cannot start: {e}"));
                return;
            }
        };
        let pid = match process.as_ref() {
            Some(p) => p.pid,
            None => self.status_pid(addr).await,
        };
        self.static_checks(r, addr, pid).await;
        match self
            .await_phase(addr, "awaiting-lease", Duration::ZERO)
            .await
        {
            Ok(_) => {
                let row = if shared { "S2" } else { "R1" };
                r.pass(row, "running with no Core connected: phase awaiting-lease");
            }
            Err(e) if process.is_none() => r.not_applicable(
                if shared { "S2" } else { "R1" },
                format!("endpoint already used: {e}"),
            ),
            Err(e) => r.fail(
                if shared { "S2" } else { "R1" },
                format!("before any lease: {e}"),
            ),
        }
        // Leases other Cores hold on a running module (endpoint mode): then
        // it is not in standby, and calls without a lease are NO_LEASE.
        let foreign = self.active_leases(addr).await.unwrap_or(0);
        let unleased = if foreign > 0 {
            Reason::NoLease
        } else {
            Reason::Standby
        };
        self.unleased_calls(r, addr, unleased, "before any lease")
            .await;
        let Some(mut a) = self.first_lease(r, addr).await else {
            return;
        };
        if shared {
            self.tenants(r, addr, &mut a, &core_b).await;
        } else {
            self.wrong_core(r, addr, &core_b, "R2").await;
        }
        self.hostile_checks(r, addr, &mut a).await;
        self.leased_checks(r, addr, &mut a, Reason::NoLease).await;
        let halt_row = if shared { "A6" } else { "R6" };
        self.expiry_checks(r, addr, &core_a, halt_row).await;
        self.stream_checks(r, addr, &core_a, Reason::LeaseExpired, halt_row)
            .await;
        self.stream_checks(r, addr, &core_a, Reason::LeaseRevoked, "Z1")
            .await;
        if self.probe {
            // Nothing the halted call staged was applied.
            self.keep(&mut a).await;
            if let Ok(reading) = a.read().await {
                let (_, commit_ok) =
                    self.ledger
                        .check(r, &reading, "after a call halted by expiry");
                r.check(halt_row, commit_ok, format!("after the halted call the module has committed {} touches in all (want {} from this run)", reading.committed, self.ledger.committed));
            }
        }
        // A's first lease lives on through another lease's expiry.
        match a.read().await {
            Ok(_) => {
                let row = if shared { "S5" } else { "A6" };
                r.pass(row, "another lease's expiry left this lease working");
            }
            Err(st) if !self.probe => r.pass("A6", format!("(no probe) {}", describe(&st))),
            Err(st) => r.fail(
                if shared { "S5" } else { "A6" },
                format!(
                    "after another lease expired, this one failed: {}",
                    describe(&st)
                ),
            ),
        }
        self.refusal_checks(r, addr, &core_a, 0).await;
        self.refusal_checks(r, addr, &core_a, 1).await;
        self.proof_checks(r, addr, &core_a, false).await;
        self.proof_checks(r, addr, &core_a, true).await;
        self.connection_loss(r, addr, &core_a).await;
        // Zero-lease: revoke the last lease; standby, same process.
        self.revoke_checks(r, a).await;
        let (row_standby, row_stay) = if shared { ("S6", "S7") } else { ("R3", "R5") };
        let standby = if foreign > 0 {
            r.not_applicable(
                row_standby,
                format!(
                    "other Cores hold {foreign} leases on this module: it cannot be in standby"
                ),
            );
            Err(String::new())
        } else {
            self.await_phase(addr, "standby", Duration::from_secs(3))
                .await
        };
        match &standby {
            Err(e) if e.is_empty() => {}
            Ok(st) => {
                r.pass(
                    row_standby,
                    format!("no lease left: phase standby, {} leases", st.active_leases),
                );
                r.check(
                    "Z3",
                    pid.is_none_or(|p| p == st.pid),
                    format!("the same process stays (pid {})", st.pid),
                );
                r.pass(
                    "Z1",
                    "connection loss and revocation ended their leases (no lease left)",
                );
            }
            Err(e) => r.fail(row_standby, format!("with no lease left: {e}")),
        }
        if let Some(p) = process.as_mut() {
            r.check(
                row_stay,
                p.alive(),
                "after its leases expired, were revoked and lost, the process still runs"
                    .to_owned(),
            );
            if !shared {
                r.check("R3", p.alive(), "standby keeps the process".to_owned());
            }
        }
        if foreign == 0 {
            let refused = self
                .unleased_calls(r, addr, Reason::Standby, "standby")
                .await;
            if !shared {
                r.check(
                    "R4",
                    refused,
                    "in standby every capability call is refused STANDBY (details under Z2)",
                );
            }
        }
        // A new lease from the same Core is taken (R4, S9: nothing kept).
        match self
            .open(&core_a, addr, &self.declared.clone(), self.ttl())
            .await
        {
            Ok(mut again) => {
                if !shared {
                    r.pass("R4", "after standby the same Core leases again");
                }
                if self.probe {
                    let touches = self.read(r, &mut again, "a new lease after standby").await;
                    let row = if shared { "S9" } else { "A6" };
                    r.check(
                        row,
                        touches == Some(0),
                        format!("a new lease starts with {touches:?} touches (want 0)"),
                    );
                }
                if !shared {
                    self.wrong_core(r, addr, &core_b, "R2").await;
                }
                again.revoke("conformance: done").await;
                let _ = again.await_close(PATIENCE).await;
            }
            Err(e) => r.fail(
                if shared { "S6" } else { "R4" },
                format!("after standby the same Core could not lease: {e}"),
            ),
        }
        // Shutdown: refused to others, honoured for the operator.
        let stranger = if shared { &core_a } else { &core_b };
        if let Ok(conn) = self.dial(stranger, addr).await {
            match session::shutdown(&conn, "conformance: not allowed").await {
                // At an endpoint the tool neither sees the process nor acts as
                // its operator: one refused Shutdown is not enough to pass.
                Err(st) if has_reason(&st, Reason::WrongCore) && process.is_none() => r
                    .not_applicable(
                        row_stay,
                        format!(
                            "endpoint mode: the tool cannot watch the process or shut it down as its \
                             operator, so it cannot tell what terminates it (a Shutdown from {} was \
                             refused WRONG_CORE)",
                            stranger.identity.urn()
                        ),
                    ),
                Err(st) if has_reason(&st, Reason::WrongCore) => r.pass(
                    row_stay,
                    format!(
                        "Shutdown from {} refused WRONG_CORE",
                        stranger.identity.urn()
                    ),
                ),
                Err(st) => r.fail(
                    row_stay,
                    format!(
                        "Shutdown from {}: {} (want WRONG_CORE)",
                        stranger.identity.urn(),
                        describe(&st)
                    ),
                ),
                Ok(()) => r.fail(
                    row_stay,
                    format!(
                        "{} (not its Core, not an operator) shut the module down",
                        stranger.identity.urn()
                    ),
                ),
            }
        }
        if let Some(mut p) = process {
            match self.dial(&self.ids().operator, addr).await {
                Ok(conn) => {
                    let _ = session::shutdown(&conn, "conformance: done").await;
                    match p.wait_exit(Duration::from_secs(5)).await {
                        Some(st) => r.check(
                            row_stay,
                            st.success(),
                            format!("an operator's Shutdown: exited with {st}"),
                        ),
                        None => {
                            if p.alive() {
                                r.fail(row_stay, "an operator's Shutdown: still running after 5 s");
                            }
                            p.kill().await;
                        }
                    }
                }
                Err(_) => p.kill().await,
            }
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

    /// Type III: a second Core leases concurrently; tenants are isolated.
    async fn tenants(&mut self, r: &mut Report, addr: SocketAddr, a: &mut Session, core_b: &Actor) {
        let mut b = match self
            .open(core_b, addr, &self.declared.clone(), self.ttl())
            .await
        {
            Ok(b) => {
                r.pass(
                    "S3",
                    format!(
                        "{} and {} hold leases at once",
                        self.ids().core_a.identity.urn(),
                        core_b.identity.urn()
                    ),
                );
                b
            }
            Err(e) => {
                r.fail("S3", format!("a second Core could not lease: {e}"));
                return;
            }
        };
        if !self.probe {
            b.revoke("conformance").await;
            return;
        }
        self.touch(r, a, "A touches").await;
        self.touch(r, a, "A touches").await;
        self.touch(r, a, "A touches").await;
        let b_sees = self.read(r, &mut b, "B reads").await;
        r.check(
            "S4",
            b_sees == Some(0),
            format!("after A's 3 touches, B's lease reads {b_sees:?} touches (want 0)"),
        );
        r.check(
            "S8",
            b_sees == Some(0),
            format!("B's answers do not depend on A's activity ({b_sees:?})"),
        );
        self.touch(r, &mut b, "B touches").await;
        let a_sees = self.read(r, a, "A reads").await;
        r.check(
            "S4",
            a_sees == Some(3),
            format!("after B's touch, A's lease reads {a_sees:?} touches (want 3)"),
        );
        // B's lease ends; B leases again and finds nothing of the old one.
        b.revoke("conformance: tenant ends").await;
        let _ = b.await_close(PATIENCE).await;
        match self.read(r, a, "A after B's lease ended").await {
            Some(n) => r.check(
                "S5",
                n == 3,
                format!("B's lease ended; A still reads {n} (want 3)"),
            ),
            None => r.fail("S5", "B's lease ended and A's calls failed"),
        }
        match self
            .open(core_b, addr, &self.declared.clone(), self.ttl())
            .await
        {
            Ok(mut b2) => {
                let seen = self.read(r, &mut b2, "B's new lease").await;
                r.check("S9", seen == Some(0), format!("B's new lease reads {seen:?} touches (want 0: the old lease's state is deleted)"));
                r.check(
                    "S4",
                    seen == Some(0),
                    format!("state deleted with its lease ({seen:?})"),
                );
                b2.revoke("conformance").await;
                let _ = b2.await_close(PATIENCE).await;
            }
            Err(e) => r.fail("S3", format!("the second Core could not lease again: {e}")),
        }
    }
}

/// A5: once a lease ended by `what`, the module closes its half of the
/// control stream and sends nothing more for it.
async fn stream_closed(r: &mut Report, s: &mut Session, what: &str) {
    match s.await_close(PATIENCE).await {
        Ok(t) => r.pass(
            "A5",
            format!(
                "after {what} the module closed its control stream within {} ms",
                t.as_millis()
            ),
        ),
        Err(e) => r.fail("A5", format!("after {what}: {e}")),
    }
}

/// Polls `Status` until the phase is `expired-grace` or `terminating`.
async fn window_phase(conn: &Connection, within: Duration) -> Result<String, String> {
    let until = Instant::now() + within;
    loop {
        match session::status(conn).await {
            Ok(st) if st.phase == "expired-grace" || st.phase == "terminating" => {
                return Ok(st.phase);
            }
            Ok(st) if Instant::now() >= until => {
                return Err(format!(
                    "phase {:?} after {within:?} (want expired-grace or terminating)",
                    st.phase
                ));
            }
            Ok(_) => {}
            Err(st) => return Err(format!("Status: {}", describe(&st))),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
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

/// Sends an HTTP/2 client preface in clear and reports whether the peer
/// answered with an HTTP/2 SETTINGS frame (that is, served plaintext).
async fn plaintext_served(addr: SocketAddr) -> Result<bool, String> {
    let mut stream = tokio::time::timeout(PATIENCE, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    // Preface, then an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Err(_) | Ok(Err(_)) | Ok(Ok(0)) => Ok(false),
        // A SETTINGS frame header: type 4 at byte 3.
        Ok(Ok(n)) => Ok(n >= 4 && buf[3] == 4 && buf[0] != 0x15 && buf[0] != 0x16),
    }
}
