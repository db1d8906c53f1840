//! The sample-module tests' shared harness: a bound on every wait, and the
//! calls and refusals more than one of them checks.
//!
//! Each test file is its own crate and uses only part of this.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use anima_module_sdk::SdkError;
use anima_module_sdk::testing::FakeLease;
use anima_protocol::lease::{LeaseError, Reason};
use anima_sample_modules::pb::kv_store_client::KvStoreClient;
use anima_sample_modules::pb::{CacheInfoReply, CacheInfoRequest};

/// Waits for `f`, failing the test after a generous bound (10 s).
pub async fn within<F: Future>(f: F) -> F::Output {
    within_for(Duration::from_secs(10), f).await
}

/// Waits for `f`, failing the test after `bound`.
pub async fn within_for<F: Future>(bound: Duration, f: F) -> F::Output {
    tokio::time::timeout(bound, f).await.expect("timed out")
}

/// Whether a lease was refused because the module belongs to another Core.
pub fn refused_wrong_core(result: &Result<FakeLease, SdkError>) -> bool {
    matches!(
        result,
        Err(SdkError::Signer(LeaseError::Refused {
            reason: Reason::WrongCore,
            ..
        }))
    )
}

/// The kvstore's `CacheInfo`, under `lease`.
pub async fn cache_info(lease: &FakeLease) -> CacheInfoReply {
    KvStoreClient::new(lease.channel())
        .cache_info(CacheInfoRequest {})
        .await
        .unwrap()
        .into_inner()
}
