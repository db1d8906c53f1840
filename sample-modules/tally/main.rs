//! `anima-tally`: the Type III sample module (see `README.md` beside this
//! file). Started by infrastructure; serves any number of Cores, each with
//! its own counters; stops on an operator's shutdown or a signal.

use std::process::ExitCode;

use anima_sample_modules::pb::tally_server::TallyServer;
use anima_sample_modules::{DESCRIPTORS, tally};

/// jemalloc (see `anima_sample_modules::start_process`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    anima_sample_modules::start_process();
    anima_module_sdk::launch(tally::contract(), |module| {
        module
            .file_descriptor_set(DESCRIPTORS)
            .service(TallyServer::new(tally::Tally))
            .probe()
    })
    .await
}
