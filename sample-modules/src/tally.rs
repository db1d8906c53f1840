//! The tally: a Type III (resident shared) module.
//!
//! Infrastructure starts it; any number of Cores lease it at once. Each lease
//! gets its own named counters, kept as the lease's tenant state with
//! [`LeaseContext::with_state`]: another Core's lease cannot reach them, and
//! the SDK drops them the moment the lease ends (ADR-0003 §6.3, §7). A Core
//! that leases again starts from nothing.
//!
//! The service itself, [`Tally`], has no fields. Holding nothing outside the
//! lease is what makes the isolation easy to check: no tenant's calls can
//! change what another tenant sees, and nothing outlives a lease.
//!
//! ```no_run
//! # async fn demo() {
//! use anima_sample_modules::{DESCRIPTORS, pb::tally_server::TallyServer, tally};
//!
//! let code = anima_module_sdk::launch(tally::contract(), |m| {
//!     m.file_descriptor_set(DESCRIPTORS)
//!         .service(TallyServer::new(tally::Tally))
//!         .probe()
//! })
//! .await;
//! # }
//! ```
//!
//! [`LeaseContext::with_state`]: anima_module_sdk::LeaseContext::with_state

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anima_module_sdk::{Contract, LeaseContext, watch_interval};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::pb::{
    CounterValue, GetCounterRequest, IncrementRequest, ListCountersReply, ListCountersRequest,
    WatchCounterRequest,
};
use crate::{check_text, lease_of};

/// The longest counter name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// The most counters one lease may hold.
pub const MAX_COUNTERS: usize = 10_000;
/// The longest `Watch` interval, in milliseconds.
pub const MAX_WATCH_EVERY_MS: u32 = 60_000;
/// The `Watch` interval when the request names none.
pub const DEFAULT_WATCH_EVERY: Duration = Duration::from_secs(1);

/// The tally's capability contract (`tally/module.toml`).
pub fn contract() -> Contract {
    #[allow(clippy::expect_used)]
    // Invariant: the embedded module.toml is fixed at build time and a unit
    // test parses it.
    Contract::from_toml(include_str!("../tally/module.toml"))
        .expect("tally/module.toml is a valid contract")
}

/// The tally service: serve it with
/// [`TallyServer::new(Tally)`](crate::pb::tally_server::TallyServer::new).
/// All its state is per lease.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally;

/// One lease's counters: its tenant state, created empty on the lease's
/// first call and dropped with the lease.
#[derive(Debug, Default)]
struct Counters(BTreeMap<String, i64>);

impl Counters {
    /// Adds `by` to `name`, creating it at 0; changes nothing on error.
    fn increment(&mut self, name: &str, by: i64) -> Result<i64, Status> {
        let current = match self.0.get(name) {
            Some(value) => *value,
            None if self.0.len() >= MAX_COUNTERS => {
                return Err(Status::resource_exhausted(format!(
                    "this lease already holds {MAX_COUNTERS} counters"
                )));
            }
            None => 0,
        };
        let value = current.checked_add(by).ok_or_else(|| {
            Status::out_of_range(format!("{current} + {by} overflows a 64-bit counter"))
        })?;
        self.0.insert(name.to_owned(), value);
        Ok(value)
    }

    fn value(&self, name: &str) -> i64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    fn list(&self) -> Vec<CounterValue> {
        self.0
            .iter()
            .map(|(counter, value)| CounterValue {
                counter: counter.clone(),
                value: *value,
            })
            .collect()
    }
}

/// `Watch`'s response stream: the counter's value, read from the lease's
/// tenant state at each tick. The SDK ends it when the lease ends.
struct CounterWatch {
    lease: LeaseContext,
    counter: String,
    interval: tokio::time::Interval,
}

impl Stream for CounterWatch {
    type Item = Result<CounterValue, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.interval.poll_tick(cx).is_pending() {
            return Poll::Pending;
        }
        let counter = self.counter.clone();
        let value = self
            .lease
            .with_state(|counters: &mut Counters| counters.value(&counter));
        Poll::Ready(Some(value.map(|value| CounterValue { counter, value })))
    }
}

#[tonic::async_trait]
impl crate::pb::tally_server::Tally for Tally {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<CounterValue, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<WatchCounterRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let lease = lease_of(&request)?.clone();
        let WatchCounterRequest { counter, every_ms } = request.into_inner();
        check_name(&counter)?;
        Ok(Response::new(Box::pin(CounterWatch {
            lease,
            counter,
            interval: watch_interval(every_ms, DEFAULT_WATCH_EVERY, MAX_WATCH_EVERY_MS)?,
        })))
    }

    async fn increment(
        &self,
        request: Request<IncrementRequest>,
    ) -> Result<Response<CounterValue>, Status> {
        let lease = lease_of(&request)?;
        let IncrementRequest { counter, by } = request.get_ref();
        check_name(counter)?;
        // The lease's own counters, only while it is valid: the lease
        // cannot end while the closure runs.
        let value =
            lease.with_state(|counters: &mut Counters| counters.increment(counter, *by))??;
        tracing::debug!(lease_id = %lease.lease_id(), value, "increment");
        Ok(Response::new(CounterValue {
            counter: counter.clone(),
            value,
        }))
    }

    async fn get(
        &self,
        request: Request<GetCounterRequest>,
    ) -> Result<Response<CounterValue>, Status> {
        let lease = lease_of(&request)?;
        let GetCounterRequest { counter } = request.get_ref();
        check_name(counter)?;
        let value = lease.with_state(|counters: &mut Counters| counters.value(counter))?;
        Ok(Response::new(CounterValue {
            counter: counter.clone(),
            value,
        }))
    }

    async fn list(
        &self,
        request: Request<ListCountersRequest>,
    ) -> Result<Response<ListCountersReply>, Status> {
        let counters = lease_of(&request)?.with_state(|counters: &mut Counters| counters.list())?;
        Ok(Response::new(ListCountersReply { counters }))
    }
}

/// A counter name: not empty, at most [`MAX_NAME_BYTES`].
pub(crate) fn check_name(name: &str) -> Result<(), Status> {
    check_text("a counter name", name, MAX_NAME_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_list_in_order() {
        let mut c = Counters::default();
        assert_eq!(c.increment("b", 2).unwrap(), 2);
        assert_eq!(c.increment("b", -5).unwrap(), -3);
        assert_eq!(c.increment("a", 0).unwrap(), 0);
        assert_eq!(c.value("b"), -3);
        assert_eq!(c.value("missing"), 0);
        let names: Vec<_> = c.list().into_iter().map(|v| v.counter).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn overflow_changes_nothing() {
        let mut c = Counters::default();
        c.increment("x", i64::MAX).unwrap();
        let err = c.increment("x", 1).unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        assert_eq!(c.value("x"), i64::MAX);
    }

    #[test]
    fn counters_per_lease_are_bounded() {
        let mut c = Counters::default();
        for i in 0..MAX_COUNTERS {
            c.increment(&i.to_string(), 1).unwrap();
        }
        let err = c.increment("one more", 1).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        // Existing counters still move.
        assert_eq!(c.increment("0", 1).unwrap(), 2);
    }
}
