//! The hasher (Type I) under the SDK's test harness: a fake Core leases it
//! in-process over real mTLS; when the lease ends the module cleans up and
//! exits by itself.

// Tests: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::path::Path;
use std::time::Duration;

use anima_module_sdk::Exit;
use anima_module_sdk::testing::{FakeLease, ProofChannel, ServedModule, TestBed};
use anima_sample_modules::hasher::{self, Hasher};
use anima_sample_modules::pb::hasher_client::HasherClient;
use anima_sample_modules::pb::hasher_server::HasherServer;
use anima_sample_modules::pb::{DigestRequest, StatsRequest};

const CORE: &str = "urn:anima:core:test";
/// Generous: the module exits after its 1 s expired grace and cleanup.
const PATIENCE: Duration = Duration::from_secs(15);

/// Serves a hasher whose scratch directory is `scratch`, as `main` does.
async fn serve(bed: &TestBed, scratch: &Path) -> ServedModule {
    let hasher = Hasher::new(scratch).unwrap();
    let cleanup = hasher.cleanup();
    bed.serve(|m| {
        m.file_descriptor_set(anima_sample_modules::DESCRIPTORS)
            .service(HasherServer::new(hasher))
            .probe()
            .on_cleanup(move || cleanup.run())
    })
    .await
    .unwrap()
}

/// A fake Core's ten-second lease on `served`, and a client calling under it.
async fn leased(bed: &TestBed, served: &ServedModule) -> (FakeLease, HasherClient<ProofChannel>) {
    let lease = bed
        .core(CORE)
        .unwrap()
        .lease(served, Duration::from_secs(10))
        .await
        .unwrap();
    let client = HasherClient::new(lease.channel());
    (lease, client)
}

#[tokio::test]
async fn e4_e5_hasher_digests_then_cleans_up_and_exits_by_itself() {
    let parent = tempfile::tempdir().unwrap();
    let scratch = parent.path().join("scratch");
    let bed = TestBed::new(hasher::contract()).unwrap();
    let served = serve(&bed, &scratch).await;
    assert!(scratch.join(hasher::PID_FILE).is_file());

    let (lease, mut client) = leased(&bed, &served).await;
    let reply = client
        .digest(DigestRequest { text: "abc".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.sha256_hex,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!((reply.chars, reply.words), (3, 1));
    let stats = client.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.requests_served, 1);

    // Zero-lease: expired grace, then the cleanup hook, then exit — with
    // nobody killing it.
    lease.expire().await.unwrap();
    assert_eq!(served.exited(PATIENCE).await.unwrap(), Exit::LeaseEnded);
    assert!(
        !scratch.exists(),
        "the cleanup hook removed the scratch dir"
    );
}

#[tokio::test]
async fn hasher_refuses_oversized_text_and_keeps_serving() {
    let parent = tempfile::tempdir().unwrap();
    let bed = TestBed::new(hasher::contract()).unwrap();
    let served = serve(&bed, &parent.path().join("scratch")).await;
    let (_lease, mut client) = leased(&bed, &served).await;

    let text = "x".repeat(hasher::MAX_TEXT_BYTES + 1);
    let err = client.digest(DigestRequest { text }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(anima_protocol::lease::reason_of(&err), None);

    // At the limit is fine, and only answered digests are counted.
    let text = "x".repeat(hasher::MAX_TEXT_BYTES);
    let reply = client
        .digest(DigestRequest { text })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.chars, hasher::MAX_TEXT_BYTES as u64);
    let stats = client.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.requests_served, 1);
}
