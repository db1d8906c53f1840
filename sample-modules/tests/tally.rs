//! The tally (Type III) under the SDK's test harness: two Cores share the
//! module, each seeing only its own counters, which end with its lease.

// Tests: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod harness;

use std::time::Duration;

use anima_module_sdk::testing::{FakeLease, ServedModule, TestBed};
use anima_module_sdk::{LeaseEvent, Phase};
use anima_protocol::lease::{Reason, reason_of};
use anima_sample_modules::pb::tally_client::TallyClient;
use anima_sample_modules::pb::tally_server::TallyServer;
use anima_sample_modules::pb::{
    CounterValue, GetCounterRequest, IncrementRequest, ListCountersRequest, WatchCounterRequest,
};
use anima_sample_modules::tally::{self, Tally};
use harness::within;

const CORE_A: &str = "urn:anima:core:a";
const CORE_B: &str = "urn:anima:core:b";
const TTL: Duration = Duration::from_secs(10);

async fn serve(bed: &TestBed) -> ServedModule {
    bed.serve(|m| {
        m.file_descriptor_set(anima_sample_modules::DESCRIPTORS)
            .service(TallyServer::new(Tally))
            .probe()
    })
    .await
    .unwrap()
}

async fn increment(lease: &FakeLease, counter: &str, by: i64) -> i64 {
    TallyClient::new(lease.channel())
        .increment(IncrementRequest {
            counter: counter.into(),
            by,
        })
        .await
        .unwrap()
        .into_inner()
        .value
}

async fn value(lease: &FakeLease, counter: &str) -> i64 {
    TallyClient::new(lease.channel())
        .get(GetCounterRequest {
            counter: counter.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .value
}

async fn list(lease: &FakeLease) -> Vec<CounterValue> {
    TallyClient::new(lease.channel())
        .list(ListCountersRequest {})
        .await
        .unwrap()
        .into_inner()
        .counters
}

/// Waits until the module reports lease `lease` ended.
async fn ended(events: &mut tokio::sync::broadcast::Receiver<LeaseEvent>, lease: &FakeLease) {
    let id = lease.id();
    within(async {
        loop {
            if let LeaseEvent::Ended { lease_id, .. } = events.recv().await.unwrap()
                && lease_id == id
            {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn s3_s4_s5_each_core_counts_alone_and_loses_its_counters_with_its_lease() {
    let bed = TestBed::new(tally::contract()).unwrap();
    let served = serve(&bed).await;
    let (core_a, core_b) = (bed.core(CORE_A).unwrap(), bed.core(CORE_B).unwrap());
    let a = core_a.lease(&served, TTL).await.unwrap();
    let b = core_b.lease(&served, TTL).await.unwrap();

    // Same counter name, two tenants, two counters.
    assert_eq!(increment(&a, "hits", 2).await, 2);
    assert_eq!(increment(&b, "hits", 1).await, 1);
    assert_eq!(increment(&a, "hits", 2).await, 4);
    assert_eq!(increment(&a, "misses", -1).await, -1);
    assert_eq!(value(&a, "hits").await, 4);
    assert_eq!(value(&b, "hits").await, 1);
    let names: Vec<_> = list(&a).await.into_iter().map(|c| c.counter).collect();
    assert_eq!(names, ["hits", "misses"]);
    assert_eq!(list(&b).await.len(), 1);

    // Core A's lease ends: Core B carries on untouched.
    let mut events = served.handle.events();
    a.expire().await.unwrap();
    ended(&mut events, &a).await;
    assert_eq!(value(&b, "hits").await, 1);
    assert_eq!(increment(&b, "hits", 1).await, 2);

    // Core A comes back with a new lease and an empty slate.
    let a2 = core_a.lease(&served, TTL).await.unwrap();
    assert_eq!(value(&a2, "hits").await, 0);
    assert!(list(&a2).await.is_empty());
    assert_eq!(value(&b, "hits").await, 2);
}

#[tokio::test]
async fn s8_results_do_not_depend_on_other_tenants() {
    // The same calls give the same answers alone and beside a busy neighbour.
    async fn script(lease: &FakeLease) -> Vec<i64> {
        vec![
            increment(lease, "x", 5).await,
            increment(lease, "y", -2).await,
            increment(lease, "x", 1).await,
            value(lease, "y").await,
            value(lease, "z").await,
        ]
    }
    let bed = TestBed::new(tally::contract()).unwrap();
    let served = serve(&bed).await;
    let alone = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
    let expected = script(&alone).await;
    assert_eq!(expected, [5, -2, 6, -2, 0]);
    alone.revoke().await.unwrap();

    let a = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
    let b = bed.core(CORE_B).unwrap().lease(&served, TTL).await.unwrap();
    for counter in ["x", "y", "z"] {
        increment(&b, counter, 1000).await;
    }
    assert_eq!(script(&a).await, expected);
}

/// The SDK's isolation check of a module's own handlers
/// (`TestBed::check_isolation`) on the tally: three Cores write the same
/// counter names with values of their own and list what they see; each
/// sees only its own, before and after Core A's lease is revoked or expires,
/// and Core A's next lease starts empty.
#[tokio::test]
async fn s3_s4_s5_s8_s9_the_tally_handlers_pass_the_isolation_check() {
    let bed = TestBed::new(tally::contract()).unwrap();
    let served = serve(&bed).await;
    bed.check_isolation(
        &served,
        |channel, tenant| async move {
            let mut tally = TallyClient::new(channel);
            let by = i64::from(tenant.number());
            for counter in ["hits".to_owned(), format!("only-{}", tenant.name())] {
                tally.increment(IncrementRequest { counter, by }).await?;
            }
            Ok(())
        },
        |channel| async move {
            let reply = TallyClient::new(channel)
                .list(ListCountersRequest {})
                .await?;
            Ok(reply.into_inner().counters)
        },
    )
    .tenants(3)
    .run()
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(served.handle.lease_ids().is_empty());
}

#[tokio::test]
async fn s6_standby_when_every_lease_is_gone() {
    let bed = TestBed::new(tally::contract()).unwrap();
    let served = serve(&bed).await;
    let mut phase = served.handle.phase();
    let a = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
    let b = bed.core(CORE_B).unwrap().lease(&served, TTL).await.unwrap();
    within(phase.wait_for(|p| *p == Phase::Leased))
        .await
        .unwrap();

    let mut events = served.handle.events();
    a.expire().await.unwrap();
    ended(&mut events, &a).await;
    assert_eq!(*served.handle.phase().borrow(), Phase::Leased);

    b.revoke().await.unwrap();
    within(phase.wait_for(|p| *p == Phase::Standby))
        .await
        .unwrap();
}

#[tokio::test]
async fn tally_refuses_bad_input() {
    let bed = TestBed::new(tally::contract()).unwrap();
    let served = serve(&bed).await;
    let lease = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
    let mut client = TallyClient::new(lease.channel());

    for counter in [String::new(), "n".repeat(tally::MAX_NAME_BYTES + 1)] {
        let err = client
            .increment(IncrementRequest { counter, by: 1 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
    increment(&lease, "big", i64::MAX).await;
    let err = client
        .increment(IncrementRequest {
            counter: "big".into(),
            by: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert_eq!(value(&lease, "big").await, i64::MAX);
}

/// A server stream under the lease: `Watch` follows the counter while the
/// lease lasts and ends with the lease's reason the moment it is revoked.
#[tokio::test]
async fn z1_watch_streams_a_counter_until_its_lease_is_revoked() {
    let bed = TestBed::new(tally::contract()).unwrap();
    let served = serve(&bed).await;
    let a = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
    increment(&a, "hits", 2).await;
    let mut stream = TallyClient::new(a.channel())
        .watch(WatchCounterRequest {
            counter: "hits".into(),
            every_ms: 5,
        })
        .await
        .unwrap()
        .into_inner();
    let first = within(stream.message()).await.unwrap().unwrap();
    assert_eq!(first.value, 2);
    increment(&a, "hits", 3).await;
    loop {
        let next = within(stream.message()).await.unwrap().unwrap();
        if next.value == 5 {
            break;
        }
        assert_eq!(next.value, 2, "only the lease's own values");
    }
    a.revoke().await.unwrap();
    let status = loop {
        match within(stream.message()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended OK after its lease was revoked"),
            Err(status) => break status,
        }
    };
    assert_eq!(reason_of(&status), Some(Reason::LeaseRevoked), "{status:?}");
}

#[tokio::test]
async fn watch_refuses_a_bad_interval() {
    let bed = TestBed::new(tally::contract()).unwrap();
    let served = serve(&bed).await;
    let a = bed.core(CORE_A).unwrap().lease(&served, TTL).await.unwrap();
    let status = TallyClient::new(a.channel())
        .watch(WatchCounterRequest {
            counter: "hits".into(),
            every_ms: tally::MAX_WATCH_EVERY_MS + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}
