//! `anima-tally`: the Type III sample module (see `README.md` beside this
//! file). Started by infrastructure; serves any number of Cores, each with
//! its own counters; stops on an operator's shutdown or a signal.

use std::process::ExitCode;

use anima_sample_modules::pb::tally_server::TallyServer;
use anima_sample_modules::{DESCRIPTORS, tally};

/// jemalloc, with a background thread that purges freed pages, gives the
/// memory of a burst of calls back to the system once it is over; the
/// system allocator would keep most of it resident.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    anima_sample_modules::log_to_stderr();
    anima_module_sdk::launch(tally::contract(), |module| {
        module
            .file_descriptor_set(DESCRIPTORS)
            .service(TallyServer::new(tally::Tally))
            .probe()
    })
    .await
}
