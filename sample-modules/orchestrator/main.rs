//! `anima-orchestrator`: the sample module that starts the memory check
//! workflow (see `README.md` beside this file). Serves its one Core; in
//! standby between leases; stops on its Core's or an operator's shutdown,
//! or a signal.

use std::process::ExitCode;

use anima_sample_modules::pb::orchestrator_server::OrchestratorServer;
use anima_sample_modules::{DESCRIPTORS, orchestrator};

/// jemalloc (see `anima_sample_modules::start_process`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    anima_sample_modules::start_process();
    let service = orchestrator::Orchestrator::from_env();
    anima_module_sdk::launch(orchestrator::contract(), move |module| {
        module
            .file_descriptor_set(DESCRIPTORS)
            .service(OrchestratorServer::new(service))
            .probe()
    })
    .await
}
