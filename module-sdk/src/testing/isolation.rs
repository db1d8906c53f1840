//! The tenant-isolation check of a module's own handlers:
//! [`TestBed::check_isolation`], the [`IsolationCheck`] it builds, and the
//! [`IsolationError`] naming the first property (S3, S4, S5, S8, S9) the
//! handlers break.

use std::time::Duration;

use anima_protocol::Urn;
use anima_protocol::contract::ModuleType;
use anima_protocol::lease::LeaseId;

use super::{FakeCore, FakeLease, PATIENCE, ProofChannel, ServedModule, TestBed, err};
use crate::error::SdkError;
use crate::leases::LeaseEvent;

/// The most tenants (Cores) [`TestBed::check_isolation`] leases from.
const MAX_TENANTS: usize = 26;

/// The longest observation an [`IsolationError`] quotes, in characters.
const MAX_SHOWN: usize = 200;

impl TestBed {
    /// Checks that the module's *own handlers* keep each tenant's state to
    /// its lease (ADR-0003 §6.3, §7): what the SDK's `LeaseContext::with_state`
    /// guarantees, checked for the code you wrote around it. Run it with
    /// [`IsolationCheck::run`].
    ///
    /// You supply two steps, each a closure returning a future:
    ///
    /// - `write(channel, tenant)` makes calls on `channel` (under the lease
    ///   of `tenant`'s Core) that store values specific to that tenant —
    ///   derive them from [`Tenant::number`] or [`Tenant::name`] — under the
    ///   same keys for every tenant, so that shared storage would collide;
    /// - `read(channel)` makes calls that observe the state a lease can see
    ///   and returns it (anything `PartialEq + Debug`). It is told no tenant
    ///   on purpose: every lease reads the same way, so one tenant can only
    ///   tell another's values apart if they leaked. Observe only what the
    ///   lease's own calls decide: no clocks, random ids or module-wide
    ///   counters.
    ///
    /// Distinct Cores (`urn:anima:core:tenant-a`, `…-b`, …; two unless
    /// [`IsolationCheck::tenants`] says more) lease the module at once; then,
    /// once with Core A's lease revoked and once with it expired:
    ///
    /// 1. every fresh lease reads the same (S8), and after a round, the same
    ///    as before any lease (S9);
    /// 2. each tenant in turn writes and must read its write back (otherwise
    ///    the check would prove nothing: [`IsolationError::WriteNotObserved`]),
    ///    while every other tenant still reads what it read before (S4);
    /// 3. A's lease ends: every other tenant still reads its own values (S5);
    /// 4. A new lease of Core A reads what a fresh lease reads (S9), and after
    ///    the same write, what A's first lease read (S8).
    ///
    /// The first property that fails is returned as
    /// [`IsolationError::Violated`], naming it and the tenant that saw the
    /// wrong thing. The calls are real: mutual TLS, signed leases, the lease
    /// gate, on the module `served` from this bed, which must be
    /// resident-shared (Type III).
    ///
    /// Here the SDK's own probe stands in for your service (its `Touch`
    /// adds one touch to the calling lease's tenant state, `Read` reads it):
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use anima_module_sdk::Contract;
    /// use anima_module_sdk::testing::TestBed;
    /// use anima_protocol::pb::probe_client::ProbeClient;
    /// use anima_protocol::pb::{ReadRequest, TouchRequest};
    ///
    /// let contract = Contract::from_toml(r#"
    ///     urn = "urn:anima:module:probed"
    ///     version = "1"
    ///     type = "resident-shared"
    ///     max_lease = "30s"
    ///     methods = ["/anima.v1.Probe/Touch", "/anima.v1.Probe/Read", "/anima.v1.Probe/Watch"]
    /// "#)?;
    /// let bed = TestBed::new(contract)?;
    /// let served = bed.serve(|m| m.probe()).await?;
    /// bed.check_isolation(
    ///     &served,
    ///     // Tenant a touches once, tenant b twice, …
    ///     |channel, tenant| async move {
    ///         let mut probe = ProbeClient::new(channel);
    ///         for _ in 0..tenant.number() {
    ///             probe.touch(TouchRequest { hold_ms: 0 }).await?;
    ///         }
    ///         Ok(())
    ///     },
    ///     // … and every lease reads its own touches.
    ///     |channel| async move {
    ///         let reading = ProbeClient::new(channel).read(ReadRequest {}).await?;
    ///         Ok(reading.into_inner().touches)
    ///     },
    /// )
    /// .run()
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub fn check_isolation<'a, W, WF, R, RF, O>(
        &'a self,
        served: &'a ServedModule,
        write: W,
        read: R,
    ) -> IsolationCheck<'a, W, R>
    where
        W: Fn(ProofChannel, Tenant) -> WF,
        WF: Future<Output = Result<(), tonic::Status>>,
        R: Fn(ProofChannel) -> RF,
        RF: Future<Output = Result<O, tonic::Status>>,
        O: PartialEq + std::fmt::Debug,
    {
        IsolationCheck {
            bed: self,
            served,
            write,
            read,
            tenants: 2,
        }
    }
}

/// A tenant-isolation check of a module's handlers, from
/// [`TestBed::check_isolation`]; nothing runs until [`IsolationCheck::run`].
#[must_use = "nothing is checked until you call .run().await"]
pub struct IsolationCheck<'a, W, R> {
    bed: &'a TestBed,
    served: &'a ServedModule,
    write: W,
    read: R,
    tenants: usize,
}

impl<W, R> std::fmt::Debug for IsolationCheck<'_, W, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsolationCheck")
            .field("module", &self.served.urn)
            .field("tenants", &self.tenants)
            .finish_non_exhaustive()
    }
}

impl<W, WF, R, RF, O> IsolationCheck<'_, W, R>
where
    W: Fn(ProofChannel, Tenant) -> WF,
    WF: Future<Output = Result<(), tonic::Status>>,
    R: Fn(ProofChannel) -> RF,
    RF: Future<Output = Result<O, tonic::Status>>,
    O: PartialEq + std::fmt::Debug,
{
    /// How many tenants (distinct Cores) lease the module at once, 2 to 26.
    ///
    /// # Default
    ///
    /// 2.
    pub fn tenants(mut self, tenants: usize) -> Self {
        self.tenants = tenants;
        self
    }

    /// Runs the check: one round with Core A's lease revoked, one with it
    /// expired (see [`TestBed::check_isolation`]). Every lease it opened has
    /// ended when it returns `Ok`.
    pub async fn run(self) -> Result<(), IsolationError> {
        let module_type = self.bed.contract.module_type;
        if module_type != ModuleType::ResidentShared {
            return Err(IsolationError::NotShared { module_type });
        }
        if !(2..=MAX_TENANTS).contains(&self.tenants) {
            return Err(IsolationError::TenantCount(self.tenants));
        }
        let mut cores = Vec::with_capacity(self.tenants);
        for index in 0..self.tenants {
            let tenant = Tenant::new(index).map_err(|e| IsolationError::harness(None, e))?;
            let core = self
                .bed
                .core(tenant.core.as_str())
                .map_err(|e| IsolationError::harness(Some(&tenant), e))?;
            cores.push((tenant, core));
        }
        let mut before_any = None;
        for ending in [Ending::Revoked, Ending::Expired] {
            let baseline = self.round(&cores, ending, before_any.as_ref()).await?;
            before_any.get_or_insert(baseline);
        }
        Ok(())
    }

    /// One round; returns what a fresh lease read in it.
    async fn round(
        &self,
        cores: &[(Tenant, FakeCore)],
        ending: Ending,
        before_any: Option<&O>,
    ) -> Result<O, IsolationError> {
        let mut events = self.served.handle.events();
        let leases = self.lease_all(cores).await?;
        let Some(((first, first_lease), others)) = leases.split_first() else {
            return Err(IsolationError::TenantCount(0));
        };
        let baseline = self.fresh_reads(&leases, before_any).await?;
        let seen = self.write_in_turn(&leases, &baseline).await?;

        // S5: A's lease ends; every other tenant carries on untouched.
        let first_id = first_lease.id();
        match ending {
            Ending::Revoked => first_lease.revoke().await,
            Ending::Expired => first_lease.expire().await,
        }
        .map_err(|e| IsolationError::harness(Some(first), e))?;
        self.ended(&mut events, first_id)
            .await
            .map_err(|e| IsolationError::harness(Some(first), e))?;
        self.others_untouched(first, others, &seen, ending).await?;

        let Some(((_, core), _)) = cores.split_first() else {
            return Err(IsolationError::TenantCount(0));
        };
        let again = self
            .come_back(first, core, &baseline, seen.first(), ending)
            .await?;

        // Close the round: every lease ends before the next one starts.
        for (tenant, lease) in others
            .iter()
            .map(|(t, l)| (*t, l))
            .chain([(*first, &again)])
        {
            let id = lease.id();
            lease
                .revoke()
                .await
                .map_err(|e| IsolationError::harness(Some(tenant), e))?;
            self.ended(&mut events, id)
                .await
                .map_err(|e| IsolationError::harness(Some(tenant), e))?;
        }
        Ok(baseline)
    }

    /// S3: every tenant's Core holds a lease at once.
    async fn lease_all<'t>(
        &self,
        cores: &'t [(Tenant, FakeCore)],
    ) -> Result<Vec<(&'t Tenant, FakeLease)>, IsolationError> {
        let ttl = self.bed.contract.max_lease;
        let mut leases = Vec::with_capacity(cores.len());
        for (tenant, core) in cores {
            let lease = core.lease(self.served, ttl).await.map_err(|e| {
                if leases.is_empty() {
                    IsolationError::harness(Some(tenant), e)
                } else {
                    IsolationError::violated(
                        Property::S3,
                        tenant,
                        format!("its Core's lease was refused while other tenants held one ({e})"),
                    )
                }
            })?;
            leases.push((tenant, lease));
        }
        Ok(leases)
    }

    /// A fresh lease reads the same whoever holds it (S8), and after every
    /// lease of the last round ended, the same as before any lease (S9).
    /// Returns what the first tenant's fresh lease read.
    async fn fresh_reads(
        &self,
        leases: &[(&Tenant, FakeLease)],
        before_any: Option<&O>,
    ) -> Result<O, IsolationError> {
        let Some(((first, first_lease), others)) = leases.split_first() else {
            return Err(IsolationError::TenantCount(0));
        };
        let baseline = self.read_as(first, first_lease).await?;
        if let Some(before) = before_any {
            read_as_before(Property::S9, first, &baseline, before, |read, before| {
                format!(
                    "once every lease had ended, a fresh lease read {read}, but before any lease {before}"
                )
            })?;
        }
        for (tenant, lease) in others {
            let fresh = self.read_as(tenant, lease).await?;
            read_as_before(
                Property::S8,
                tenant,
                &fresh,
                &baseline,
                |read, first_read| {
                    format!(
                        "its fresh lease read {read} where tenant {}'s fresh lease read {first_read}",
                        first.name
                    )
                },
            )?;
        }
        Ok(baseline)
    }

    /// S4: each tenant writes in turn; every other one keeps reading what it
    /// read before. Returns what each tenant read after its own write.
    async fn write_in_turn(
        &self,
        leases: &[(&Tenant, FakeLease)],
        baseline: &O,
    ) -> Result<Vec<O>, IsolationError> {
        let mut seen: Vec<O> = Vec::with_capacity(leases.len());
        for (i, (writer, lease)) in leases.iter().enumerate() {
            self.write_as(writer, lease).await?;
            let own = self.read_as(writer, lease).await?;
            if &own == baseline {
                return Err(IsolationError::WriteNotObserved {
                    tenant: Tenant::clone(writer),
                    observed: shown(&own),
                });
            }
            for (j, (tenant, lease)) in leases.iter().enumerate() {
                if j == i {
                    continue;
                }
                let expected = seen.get(j).unwrap_or(baseline);
                let now = self.read_as(tenant, lease).await?;
                read_as_before(Property::S4, tenant, &now, expected, |read, before| {
                    format!(
                        "it read {read} after tenant {} wrote, where it had read {before}",
                        writer.name
                    )
                })?;
            }
            seen.push(own);
        }
        Ok(seen)
    }

    /// S5: after `first`'s lease ended, every other tenant reads what it
    /// read after its own write (`seen`, indexed like the leases).
    async fn others_untouched(
        &self,
        first: &Tenant,
        others: &[(&Tenant, FakeLease)],
        seen: &[O],
        ending: Ending,
    ) -> Result<(), IsolationError> {
        for ((tenant, lease), expected) in others.iter().zip(seen.iter().skip(1)) {
            let failed = |how: String| {
                IsolationError::violated(
                    Property::S5,
                    tenant,
                    format!(
                        "its read {how} after tenant {}'s lease {ending}",
                        first.name
                    ),
                )
            };
            let now = match self.read_as(tenant, lease).await {
                Ok(now) => now,
                Err(IsolationError::StepFailed { status, .. }) => {
                    return Err(failed(format!(
                        "failed ({:?}: {})",
                        status.code(),
                        status.message()
                    )));
                }
                Err(IsolationError::StepTimedOut { limit, .. }) => {
                    return Err(failed(format!("did not finish within {limit:?}")));
                }
                Err(other) => return Err(other),
            };
            read_as_before(Property::S5, tenant, &now, expected, |read, before| {
                format!(
                    "it read {read} after tenant {}'s lease {ending}, where it had read {before}",
                    first.name
                )
            })?;
        }
        Ok(())
    }

    /// S9: `first` comes back to nothing; S8: the same write gives what it
    /// gave when no other tenant held any state (`first_write`). Returns the
    /// new lease.
    async fn come_back(
        &self,
        first: &Tenant,
        core: &FakeCore,
        baseline: &O,
        first_write: Option<&O>,
        ending: Ending,
    ) -> Result<FakeLease, IsolationError> {
        let again = core
            .lease(self.served, self.bed.contract.max_lease)
            .await
            .map_err(|e| IsolationError::harness(Some(first), e))?;
        let fresh = self.read_as(first, &again).await?;
        read_as_before(Property::S9, first, &fresh, baseline, |read, fresh| {
            format!(
                "a new lease read {read} after its last lease {ending}, where a fresh lease reads {fresh}"
            )
        })?;
        self.write_as(first, &again).await?;
        let rewritten = self.read_as(first, &again).await?;
        if let Some(before) = first_write {
            read_as_before(Property::S8, first, &rewritten, before, |read, before| {
                format!(
                    "after the same write its new lease read {read} with other tenants holding state, \
                     where its first lease read {before} with none"
                )
            })?;
        }
        Ok(again)
    }

    async fn write_as(&self, tenant: &Tenant, lease: &FakeLease) -> Result<(), IsolationError> {
        let step = (self.write)(lease.channel(), tenant.clone());
        finish_step(Step::Write, tenant, step).await
    }

    async fn read_as(&self, tenant: &Tenant, lease: &FakeLease) -> Result<O, IsolationError> {
        finish_step(Step::Read, tenant, (self.read)(lease.channel())).await
    }

    /// Waits until the module reports lease `id` ended.
    async fn ended(
        &self,
        events: &mut tokio::sync::broadcast::Receiver<LeaseEvent>,
        id: LeaseId,
    ) -> Result<(), SdkError> {
        use tokio::sync::broadcast::error::RecvError;
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(LeaseEvent::Ended { lease_id, .. }) if lease_id == id => return Ok(()),
                    Ok(_) => {}
                    // Events were dropped: ask the table instead.
                    Err(RecvError::Lagged(_)) if !self.served.handle.lease_ids().contains(&id) => {
                        return Ok(());
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return Err(err("the module stopped serving")),
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .map_err(|_| err(format!("lease {id} did not end within {PATIENCE:?}")))?
    }
}

/// Awaits one of the author's steps, within [`PATIENCE`].
async fn finish_step<T>(
    step: Step,
    tenant: &Tenant,
    future: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, IsolationError> {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(status)) => Err(IsolationError::StepFailed {
            step,
            tenant: tenant.clone(),
            status: Box::new(status),
        }),
        Err(_) => Err(IsolationError::StepTimedOut {
            step,
            tenant: tenant.clone(),
            limit: PATIENCE,
        }),
    }
}

/// `value`'s `Debug` form on one line, cut at [`MAX_SHOWN`] characters.
/// `Ok` when `tenant` read what it read `before`; else `property` is
/// violated, and `how` says how from the two reads as shown.
fn read_as_before<O: PartialEq + std::fmt::Debug>(
    property: Property,
    tenant: &Tenant,
    read: &O,
    before: &O,
    how: impl FnOnce(String, String) -> String,
) -> Result<(), IsolationError> {
    if read == before {
        return Ok(());
    }
    Err(IsolationError::violated(
        property,
        tenant,
        how(shown(read), shown(before)),
    ))
}

fn shown(value: &impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    match text.char_indices().nth(MAX_SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// One of the tenants of an isolation check: a Core of its own, with a
/// lease on the module. Passed to the write step so it writes values of
/// this tenant's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    index: usize,
    name: String,
    core: Urn,
}

impl Tenant {
    fn new(index: usize) -> Result<Self, SdkError> {
        let letter = u8::try_from(index)
            .ok()
            .filter(|i| usize::from(*i) < MAX_TENANTS)
            .map(|i| char::from(b'a' + i))
            .ok_or_else(|| err(format!("at most {MAX_TENANTS} tenants")))?;
        let name = letter.to_string();
        let core = format!("urn:anima:core:tenant-{name}")
            .parse()
            .map_err(err)?;
        Ok(Tenant { index, name, core })
    }

    /// Its position: 0 for the first tenant (Core A), 1 for the next, ….
    pub fn index(&self) -> usize {
        self.index
    }

    /// A number of its own, never zero: 1 for tenant `a`, 2 for `b`, ….
    pub fn number(&self) -> u32 {
        // At most MAX_TENANTS (26) tenants exist.
        u32::try_from(self.index).map_or(u32::MAX, |i| i.saturating_add(1))
    }

    /// Its name: `a`, `b`, ….
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its Core's identity: `urn:anima:core:tenant-a`, ….
    pub fn core(&self) -> &Urn {
        &self.core
    }
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.core)
    }
}

/// A tenant-isolation property of ADR-0003 §6.3 and §7, by its row id in
/// the conformance table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Property {
    /// Serves several Cores concurrently.
    S3,
    /// State is scoped to the lease: no tenant sees another's.
    S4,
    /// One Core's lease ending leaves the other tenants untouched.
    S5,
    /// Behaviour does not vary with the presence of other tenants.
    S8,
    /// No data is kept beyond the lease's lifetime.
    S9,
}

impl Property {
    /// The row id: `S4`, ….
    pub fn id(self) -> &'static str {
        match self {
            Property::S3 => "S3",
            Property::S4 => "S4",
            Property::S5 => "S5",
            Property::S8 => "S8",
            Property::S9 => "S9",
        }
    }

    /// What the property asks, in a few words.
    pub fn rule(self) -> &'static str {
        match self {
            Property::S3 => "several Cores served at once",
            Property::S4 => "state scoped to its lease",
            Property::S5 => "other tenants unaffected by a lease ending",
            Property::S8 => "behaviour independent of other tenants",
            Property::S9 => "no data kept beyond the lease",
        }
    }

    /// What usually fixes a handler that breaks it.
    fn fix(self) -> &'static str {
        match self {
            Property::S3 => "accept leases from every Core the Type III contract admits",
            Property::S4 => {
                "keep tenant data in LeaseContext::with_state, not in a field, static or cache \
                 that leases share"
            }
            Property::S5 => {
                "never clear or change shared state when some lease ends; per-lease state in \
                 LeaseContext::with_state ends with its own lease only"
            }
            Property::S8 => {
                "derive answers from the lease's own state only, not from module-wide counters, \
                 sequences or quotas"
            }
            Property::S9 => {
                "keep tenant data in LeaseContext::with_state, which drops it with the lease; \
                 never key it by the Core's identity"
            }
        }
    }
}

impl std::fmt::Display for Property {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.id(), self.rule())
    }
}

/// How the first tenant's lease ends in a round of an isolation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The Core revoked it (`LEASE_REVOKED`).
    Revoked,
    /// It expired (`LEASE_EXPIRED`).
    Expired,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ending::Revoked => "was revoked",
            Ending::Expired => "expired",
        })
    }
}

/// One of the author's steps in an isolation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The write step.
    Write,
    /// The read step.
    Read,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Write => "write",
            Step::Read => "read",
        })
    }
}

/// Why [`IsolationCheck::run`] failed: a property the module's handlers
/// break, or a check that could not prove anything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IsolationError {
    /// The module's handlers break `property`: `tenant` saw what it should
    /// not have.
    #[error("{property} failed for tenant {tenant}: {what}; {fix}", fix = property.fix())]
    Violated {
        /// The property broken.
        property: Property,
        /// The tenant that observed the wrong thing.
        tenant: Tenant,
        /// What it observed and what it should have (one line).
        what: String,
    },
    /// The write step changed nothing the read step observes, so no leak
    /// could be seen.
    #[error(
        "the write step under tenant {tenant} changed nothing the read step observes (it still \
         read {observed}): make read return what write stored, or the check proves nothing"
    )]
    WriteNotObserved {
        /// The tenant whose write went unseen.
        tenant: Tenant,
        /// What its read step returned, as on a fresh lease.
        observed: String,
    },
    /// One of the author's steps returned an error.
    #[error(
        "the {step} step under tenant {tenant} failed ({code:?}: {message}); make the step's \
         calls succeed on a valid lease",
        code = status.code(),
        message = status.message()
    )]
    StepFailed {
        /// Which step.
        step: Step,
        /// Under whose lease.
        tenant: Tenant,
        /// What it returned.
        status: Box<tonic::Status>,
    },
    /// One of the author's steps did not finish in time.
    #[error(
        "the {step} step under tenant {tenant} did not finish within {limit:?}; make sure its \
         calls do not wait for something that never comes (an endless stream)"
    )]
    StepTimedOut {
        /// Which step.
        step: Step,
        /// Under whose lease.
        tenant: Tenant,
        /// How long it had.
        limit: Duration,
    },
    /// The module is not Type III: it serves one Core only.
    #[error(
        "tenant isolation is a property of resident-shared (Type III) modules; this one is \
         {module_type}: check it with a resident-shared contract"
    )]
    NotShared {
        /// The module's type.
        module_type: ModuleType,
    },
    /// [`IsolationCheck::tenants`] was given a count it cannot run.
    #[error("an isolation check needs 2 to {MAX_TENANTS} tenants, not {0}: change .tenants(..)")]
    TenantCount(usize),
    /// The test bed failed (a lease refused, a revocation unanswered).
    #[error("test bed{}: {source}", tenant.as_ref().map(|t| format!(", tenant {t}")).unwrap_or_default())]
    Harness {
        /// The tenant being served, if any.
        tenant: Option<Tenant>,
        /// What failed.
        #[source]
        source: Box<SdkError>,
    },
}

impl IsolationError {
    fn violated(property: Property, tenant: &Tenant, what: String) -> Self {
        IsolationError::Violated {
            property,
            tenant: tenant.clone(),
            what,
        }
    }

    fn harness(tenant: Option<&Tenant>, source: SdkError) -> Self {
        IsolationError::Harness {
            tenant: tenant.cloned(),
            source: Box::new(source),
        }
    }

    /// The property broken, when that is why the check failed.
    pub fn property(&self) -> Option<Property> {
        match self {
            IsolationError::Violated { property, .. } => Some(*property),
            _ => None,
        }
    }

    /// The tenant the failure is about, if any.
    pub fn tenant(&self) -> Option<&Tenant> {
        match self {
            IsolationError::Violated { tenant, .. }
            | IsolationError::WriteNotObserved { tenant, .. }
            | IsolationError::StepFailed { tenant, .. }
            | IsolationError::StepTimedOut { tenant, .. } => Some(tenant),
            IsolationError::Harness { tenant, .. } => tenant.as_ref(),
            IsolationError::NotShared { .. } | IsolationError::TenantCount(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The isolation check against handlers that keep tenant state right
    //! (the SDK's probe) and wrong (each leaky probe below breaks one
    //! property), all served for real: mutual TLS, signed leases, the gate.

    use std::collections::BTreeMap;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use anima_protocol::pb::probe_client::ProbeClient;
    use anima_protocol::pb::probe_server::{Probe, ProbeServer};
    use anima_protocol::pb::{ProbeReading, ReadRequest, TouchRequest, WatchRequest};
    use tokio_stream::Stream;
    use tonic::{Request, Response, Status};

    use super::{IsolationError, Property, Step, Tenant};
    use crate::testing::{ProofChannel, ServedModule, TestBed};
    use crate::{Contract, LeaseContext, ModuleServer};

    fn contract(module_type: &str) -> Contract {
        Contract::from_toml(&format!(
            "urn = \"urn:anima:module:isolated\"\nversion = \"1\"\nmax_lease = \"30s\"\n\
             methods = [\"/anima.v1.Probe/Touch\", \"/anima.v1.Probe/Read\", \
             \"/anima.v1.Probe/Watch\"]\n{module_type}"
        ))
        .unwrap()
    }

    fn shared() -> TestBed {
        TestBed::new(contract("type = \"resident-shared\"")).unwrap()
    }

    /// The write step: tenant `n` touches `n` times.
    async fn touch_n(channel: ProofChannel, tenant: Tenant) -> Result<(), Status> {
        let mut probe = ProbeClient::new(channel);
        for _ in 0..tenant.number() {
            probe.touch(TouchRequest { hold_ms: 0 }).await?;
        }
        Ok(())
    }

    /// The read step: the lease's touches (not the module-wide counters,
    /// which every tenant's calls move by design).
    async fn touches(channel: ProofChannel) -> Result<u64, Status> {
        let reading = ProbeClient::new(channel).read(ReadRequest {}).await?;
        Ok(reading.into_inner().touches)
    }

    /// Runs the check with the steps above on `served`.
    async fn check(bed: &TestBed, served: &ServedModule) -> Result<(), IsolationError> {
        bed.check_isolation(served, touch_n, touches).run().await
    }

    async fn serve(bed: &TestBed, probe: Leaky) -> ServedModule {
        bed.serve(|m| m.service(ProbeServer::new(probe)))
            .await
            .unwrap()
    }

    /// Asserts `result` is `property` failing for tenant `tenant`.
    fn assert_violated(result: Result<(), IsolationError>, property: Property, tenant: &str) {
        let e = result.expect_err("the check passed");
        assert_eq!(e.property(), Some(property), "{e}");
        assert_eq!(e.tenant().map(Tenant::name), Some(tenant), "{e}");
        let message = e.to_string();
        assert!(message.starts_with(property.id()), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    /// Every tenant's touches in one process-wide counter.
    static GLOBAL_TOUCHES: AtomicU64 = AtomicU64::new(0);

    /// How a leaky probe keeps touches; each breaks one property.
    #[derive(Debug, Clone, Copy)]
    enum Keeping {
        /// In [`GLOBAL_TOUCHES`], shared by every lease (S4).
        Global,
        /// In a map keyed by the Core's identity, never cleared (S9).
        ByCore,
        /// Keyed by the Core, but the whole map is dropped when any lease
        /// ends (S5).
        ByCoreEvictAll,
        /// Per lease (`with_state`), but each touch reports a ticket from a
        /// module-wide sequence, which reveals other tenants' activity (S8).
        Tickets,
    }

    /// What a leaky probe shares between leases.
    #[derive(Debug, Default)]
    struct Shared {
        by_core: BTreeMap<String, u64>,
        /// Every lease seen, to notice one ending.
        leases: Vec<LeaseContext>,
        next_ticket: u64,
    }

    /// The probe's `Touch` and `Read`, written wrong in one of the ways of
    /// [`Keeping`].
    #[derive(Debug, Clone)]
    struct Leaky {
        keeping: Keeping,
        shared: Arc<Mutex<Shared>>,
    }

    /// A lease's last ticket (`Keeping::Tickets`).
    #[derive(Debug, Default)]
    struct Ticket(u64);

    impl Leaky {
        fn new(keeping: Keeping) -> Self {
            Leaky {
                keeping,
                shared: Arc::default(),
            }
        }

        /// Adds one touch (`touch`) or reads, under `lease`; the touches
        /// the lease sees.
        fn touches(&self, lease: &LeaseContext, touch: bool) -> Result<u64, Status> {
            let add = u64::from(touch);
            let mut shared = self.shared.lock().unwrap();
            let core = lease.consumer().to_string();
            Ok(match self.keeping {
                Keeping::Global => GLOBAL_TOUCHES.fetch_add(add, Ordering::SeqCst) + add,
                Keeping::ByCore => {
                    let n = shared.by_core.entry(core).or_default();
                    *n += add;
                    *n
                }
                Keeping::ByCoreEvictAll => {
                    if shared.leases.iter().any(|l| !l.is_valid()) {
                        shared.by_core.clear();
                        shared.leases.clear();
                    }
                    shared.leases.push(lease.clone());
                    let n = shared.by_core.entry(core).or_default();
                    *n += add;
                    *n
                }
                Keeping::Tickets => {
                    if touch {
                        shared.next_ticket += 1;
                    }
                    let next = shared.next_ticket;
                    lease.with_state(|t: &mut Ticket| {
                        if touch {
                            t.0 = next;
                        }
                        t.0
                    })?
                }
            })
        }
    }

    impl Leaky {
        /// The touches `request`'s lease sees, after one more when `touch`.
        fn reading<T>(
            &self,
            request: &Request<T>,
            touch: bool,
        ) -> Result<Response<ProbeReading>, Status> {
            let lease = LeaseContext::of(request).ok_or_else(|| Status::internal("no lease"))?;
            let touches = self.touches(lease, touch)?;
            Ok(Response::new(ProbeReading {
                touches,
                ..ProbeReading::default()
            }))
        }
    }

    #[tonic::async_trait]
    impl Probe for Leaky {
        type WatchStream = Pin<Box<dyn Stream<Item = Result<ProbeReading, Status>> + Send>>;

        async fn touch(
            &self,
            request: Request<TouchRequest>,
        ) -> Result<Response<ProbeReading>, Status> {
            self.reading(&request, true)
        }

        async fn read(
            &self,
            request: Request<ReadRequest>,
        ) -> Result<Response<ProbeReading>, Status> {
            self.reading(&request, false)
        }

        async fn watch(
            &self,
            _: Request<WatchRequest>,
        ) -> Result<Response<Self::WatchStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    #[tokio::test]
    async fn s3_s4_s5_s8_s9_tenant_state_in_with_state_passes_with_two_and_three_tenants() {
        let bed = shared();
        let served = bed.serve(ModuleServer::probe).await.unwrap();
        check(&bed, &served).await.unwrap();
        bed.check_isolation(&served, touch_n, touches)
            .tenants(3)
            .run()
            .await
            .unwrap();
        // Every lease the checks opened has ended.
        assert!(served.handle.lease_ids().is_empty());
    }

    /// Serves a module that keeps its state as `keeping` and checks it:
    /// `property` must fail, for `tenant`.
    async fn caught(keeping: Keeping, property: Property, tenant: &str) {
        let bed = shared();
        let served = serve(&bed, Leaky::new(keeping)).await;
        assert_violated(check(&bed, &served).await, property, tenant);
    }

    /// One test a way of keeping state: `NAME: KEEPING breaks PROPERTY for
    /// TENANT` serves a module keeping its state that way, and the check
    /// must fail PROPERTY naming TENANT.
    macro_rules! caught {
        ($(
            $(#[doc = $doc:literal])*
            $name:ident: $keeping:ident breaks $property:ident for $tenant:literal;
        )*) => {$(
            $(#[doc = $doc])*
            #[tokio::test]
            async fn $name() {
                caught(Keeping::$keeping, Property::$property, $tenant).await;
            }
        )*};
    }

    caught! {
        /// Tenant a touched once: tenant b, having touched nothing, reads 1.
        s4_a_process_wide_static_fails_naming_the_tenant_that_saw_the_other: Global breaks S4 for "b";
        /// Isolated between Cores, but Core A's new lease finds its old touch.
        s9_state_keyed_by_core_identity_outlives_the_lease: ByCore breaks S9 for "a";
        /// The other tenants lose their state with one tenant's lease.
        s5_evicting_every_tenant_when_one_lease_ends_fails_for_the_others: ByCoreEvictAll breaks S5 for "b";
        /// Tenant a's first lease got ticket 1; after tenant b's two, the
        /// same write under its new lease gets ticket 4.
        s8_answers_from_a_module_wide_sequence_depend_on_other_tenants: Tickets breaks S8 for "a";
    }

    #[tokio::test]
    async fn a_check_that_cannot_see_a_leak_is_refused() {
        let bed = shared();
        let served = bed.serve(ModuleServer::probe).await.unwrap();

        // A write step that writes nothing would pass any module.
        let e = bed
            .check_isolation(&served, |_, _| async { Ok(()) }, touches)
            .run()
            .await
            .unwrap_err();
        assert!(
            matches!(&e, IsolationError::WriteNotObserved { tenant, .. } if tenant.name() == "a"),
            "{e}"
        );

        // A step's error is the author's to fix, and says which step.
        let e = bed
            .check_isolation(
                &served,
                |channel, _| async move {
                    ProbeClient::new(channel)
                        .touch(TouchRequest { hold_ms: u32::MAX })
                        .await?;
                    Ok(())
                },
                touches,
            )
            .run()
            .await
            .unwrap_err();
        assert!(
            matches!(&e, IsolationError::StepFailed { step: Step::Write, status, .. }
                if status.code() == tonic::Code::InvalidArgument),
            "{e}"
        );

        for n in [0, 1, 27] {
            let e = bed
                .check_isolation(&served, touch_n, touches)
                .tenants(n)
                .run()
                .await
                .unwrap_err();
            assert!(matches!(e, IsolationError::TenantCount(m) if m == n), "{e}");
        }
    }

    #[tokio::test]
    async fn a_module_serving_one_core_is_not_checked() {
        let bed = TestBed::new(contract(
            "type = \"resident-private\"\ninit = \"pre-started\"",
        ))
        .unwrap();
        let served = bed.serve(ModuleServer::probe).await.unwrap();
        let e = check(&bed, &served).await.unwrap_err();
        assert!(matches!(e, IsolationError::NotShared { .. }), "{e}");
        assert!(served.handle.lease_ids().is_empty(), "no lease was taken");
    }

    /// The SDK itself leaking (the `shared-tenant` fault of the test-only
    /// copy): the check sees it like any handler's leak.
    #[cfg(anima_test_faults)]
    #[tokio::test]
    async fn s4_fault_shared_tenant_is_caught_too() {
        let bed = shared();
        let served = bed
            .serve(|m| m.probe().inject_fault(crate::fault::Fault::SharedTenant))
            .await
            .unwrap();
        assert_violated(check(&bed, &served).await, Property::S4, "b");
    }
}
