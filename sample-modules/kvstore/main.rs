//! `anima-kvstore`: the Type II sample module (see `README.md` beside this
//! file). Builds its warm cache, then serves its one Core; in standby
//! between leases; stops on its Core's or an operator's shutdown, or a
//! signal.

use std::process::ExitCode;

use anima_sample_modules::pb::kv_store_server::KvStoreServer;
use anima_sample_modules::{DESCRIPTORS, kvstore};

/// jemalloc (see `anima_sample_modules::start_process`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    anima_sample_modules::start_process();
    let (limit, contract) = match (
        kvstore::cache_limit_from_env(),
        kvstore::contract_from_env(),
    ) {
        (Ok(limit), Ok(contract)) => (limit, contract),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Warm before announcing readiness: the ready line means "warm".
    let cache = match tokio::task::spawn_blocking(move || kvstore::WarmCache::build(limit)).await {
        Ok(Ok(cache)) => cache,
        Ok(Err(e)) => {
            eprintln!("error: warm cache: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: warm cache: {e}");
            return ExitCode::FAILURE;
        }
    };
    anima_module_sdk::launch(contract, |module| {
        module
            .file_descriptor_set(DESCRIPTORS)
            .service(KvStoreServer::new(kvstore::KvStore::new(cache)))
            .interface(kvstore::interface())
            .probe()
    })
    .await
}
