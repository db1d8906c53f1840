//! The kvstore (Type II) under the SDK's test harness: transactional writes
//! that a lease ending mid-call rolls back, a warm cache and a process that
//! survive standby, and exclusivity to one Core.

// Tests: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod harness;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anima_module_sdk::Phase;
use anima_module_sdk::testing::{FakeLease, ServedModule, TestBed};
use anima_protocol::lease::{Reason, reason_of};
use anima_sample_modules::kvstore::{self, KvStore, WarmCache};
use anima_sample_modules::pb::kv_store_client::KvStoreClient;
use anima_sample_modules::pb::kv_store_server::KvStoreServer;
use anima_sample_modules::pb::{GetReply, GetRequest, PutRequest};
use harness::{cache_info, refused_wrong_core, within};

const CORE: &str = "urn:anima:core:owner";
const OTHER_CORE: &str = "urn:anima:core:intruder";
const TTL: Duration = Duration::from_secs(10);

/// A small cache: the binary's 2^25 sieve is needlessly slow in debug tests.
const TEST_CACHE_LIMIT: u32 = 1 << 16;

/// Serves a kvstore as `main` does; also returns the service, to watch it.
async fn serve(bed: &TestBed) -> (ServedModule, Arc<KvStore>) {
    let store = Arc::new(KvStore::new(WarmCache::build(TEST_CACHE_LIMIT).unwrap()));
    let service = KvStoreServer::from_arc(store.clone());
    let served = bed
        .serve(|m| {
            m.file_descriptor_set(anima_sample_modules::DESCRIPTORS)
                .service(service)
                .interface(kvstore::interface())
                .probe()
        })
        .await
        .unwrap();
    (served, store)
}

/// A kvstore served on `bed` and leased by `CORE`.
async fn leased(bed: &TestBed) -> (ServedModule, FakeLease) {
    let (served, _) = serve(bed).await;
    let lease = bed.core(CORE).unwrap().lease(&served, TTL).await.unwrap();
    (served, lease)
}

fn put(entries: &[(&str, &str)], delay_ms: u64) -> PutRequest {
    PutRequest {
        entries: entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
        delay_ms,
    }
}

async fn get(lease: &FakeLease, key: &str) -> GetReply {
    KvStoreClient::new(lease.channel())
        .get(GetRequest { key: key.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Puts `entries` under `lease`; returns the version the store gave them.
async fn put_version(lease: &FakeLease, entries: &[(&str, &str)]) -> u64 {
    KvStoreClient::new(lease.channel())
        .put(put(entries, 0))
        .await
        .unwrap()
        .into_inner()
        .version
}

#[tokio::test]
async fn kvstore_put_then_get() {
    let bed = TestBed::new(kvstore::contract()).unwrap();
    let (_served, lease) = leased(&bed).await;

    assert_eq!(put_version(&lease, &[("a", "1"), ("b", "2")]).await, 1);
    assert_eq!(put_version(&lease, &[("a", "3")]).await, 2);

    let a = get(&lease, "a").await;
    assert_eq!((a.found, a.value.as_str(), a.version), (true, "3", 2));
    let b = get(&lease, "b").await;
    assert_eq!((b.found, b.value.as_str(), b.version), (true, "2", 1));
    assert!(!get(&lease, "missing").await.found);
}

#[tokio::test]
async fn kvstore_refuses_bad_input_without_writing() {
    let bed = TestBed::new(kvstore::contract()).unwrap();
    let (_served, lease) = leased(&bed).await;
    let mut client = KvStoreClient::new(lease.channel());

    let big = "v".repeat(kvstore::MAX_VALUE_BYTES + 1);
    let too_many: Vec<(String, String)> = (0..=kvstore::MAX_ENTRIES)
        .map(|i| (i.to_string(), String::new()))
        .collect();
    let bad = [
        put(&[("ok", "1"), ("", "empty key")], 0),
        put(&[("ok", "1"), ("big", &big)], 0),
        put(&[("ok", "1")], kvstore::MAX_DELAY.as_millis() as u64 + 1),
        PutRequest {
            entries: too_many.into_iter().collect(),
            delay_ms: 0,
        },
    ];
    for request in bad {
        let err = client.put(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
    assert!(
        !get(&lease, "ok").await.found,
        "a refused Put writes nothing"
    );
}

#[tokio::test]
async fn r6_put_interrupted_by_lease_end_writes_nothing() {
    let bed = TestBed::new(kvstore::contract()).unwrap();
    let (served, store) = serve(&bed).await;
    let core = bed.core(CORE).unwrap();
    let lease = core.lease(&served, TTL).await.unwrap();
    let mut staged = store.staged_puts();

    let mut client = KvStoreClient::new(lease.channel());
    let call = tokio::spawn(async move { client.put(put(&[("k", "v")], 2000)).await });
    // The handler has staged its entries and is working: end the lease now.
    within(staged.wait_for(|n| *n == 1)).await.unwrap();
    lease.expire().await.unwrap();

    let err = within(call).await.unwrap().unwrap_err();
    assert_eq!(reason_of(&err), Some(Reason::LeaseExpired), "{err:?}");
    // The dropped handler released its staged entries.
    within(staged.wait_for(|n| *n == 0)).await.unwrap();

    // Nothing was written, not even a version.
    let again = core.lease(&served, TTL).await.unwrap();
    assert!(!get(&again, "k").await.found);
    assert_eq!(put_version(&again, &[("k", "later")]).await, 1);
}

#[tokio::test]
async fn r6_put_outliving_its_lease_is_rolled_back() {
    let bed = TestBed::new(kvstore::contract()).unwrap();
    let (served, _) = serve(&bed).await;
    let core = bed.core(CORE).unwrap();
    // Nobody renews: the lease runs out while the Put works.
    let short = core
        .lease(&served, Duration::from_millis(500))
        .await
        .unwrap();
    let err = within(KvStoreClient::new(short.channel()).put(put(&[("k", "v")], 2000)))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(Reason::LeaseExpired), "{err:?}");

    let again = core.lease(&served, TTL).await.unwrap();
    assert!(!get(&again, "k").await.found);
}

#[tokio::test]
async fn r3_standby_keeps_the_cache_the_store_and_the_process() {
    let bed = TestBed::new(kvstore::contract()).unwrap();
    let (served, store) = serve(&bed).await;
    let core = bed.core(CORE).unwrap();
    let mut phase = served.handle.phase();

    let first = core.lease(&served, TTL).await.unwrap();
    let mut client = KvStoreClient::new(first.channel());
    let before = cache_info(&first).await;
    assert_eq!(before.cache_id, store.cache().id());
    assert_eq!(before.entries, 6542); // primes below 2^16
    assert_eq!(before.pid, std::process::id());
    client.put(put(&[("kept", "yes")], 0)).await.unwrap();

    first.expire().await.unwrap();
    within(phase.wait_for(|p| *p == Phase::Standby))
        .await
        .unwrap();
    // The ended lease takes no more calls.
    let err = client
        .get(GetRequest { key: "kept".into() })
        .await
        .unwrap_err();
    assert!(
        matches!(
            reason_of(&err),
            Some(Reason::LeaseExpired | Reason::Standby)
        ),
        "{err:?}"
    );

    // Same Core, new lease: the same warm cache, process and data.
    let second = core.lease(&served, TTL).await.unwrap();
    within(phase.wait_for(|p| *p == Phase::Leased))
        .await
        .unwrap();
    assert_eq!(cache_info(&second).await, before);
    let kept = get(&second, "kept").await;
    assert_eq!((kept.found, kept.value.as_str()), (true, "yes"));
}

#[tokio::test]
async fn r2_only_its_own_core_may_lease_it() {
    let bed = TestBed::new(kvstore::contract()).unwrap();
    let (served, _) = serve(&bed).await;
    let owner = bed.core(CORE).unwrap();
    let intruder = bed.core(OTHER_CORE).unwrap();

    // The first Core to lease it becomes its Core.
    let lease = owner.lease(&served, TTL).await.unwrap();
    assert!(refused_wrong_core(&intruder.lease(&served, TTL).await));

    // In standby it still waits for that same Core.
    let mut phase = served.handle.phase();
    lease.expire().await.unwrap();
    within(phase.wait_for(|p| *p == Phase::Standby))
        .await
        .unwrap();
    assert!(refused_wrong_core(&intruder.lease(&served, TTL).await));
    let again = owner.lease(&served, TTL).await.unwrap();
    assert!(!get(&again, "anything").await.found);
}
