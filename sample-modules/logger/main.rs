//! `anima-logger`: the sample module that receives runtime messages through
//! its Core's mediator (see `README.md` beside this file). Serves its one
//! Core; in standby between leases; stops on its Core's or an operator's
//! shutdown, or a signal.

use std::process::ExitCode;

use anima_sample_modules::pb::logger_server::LoggerServer;
use anima_sample_modules::{DESCRIPTORS, logger};

/// jemalloc (see `anima_sample_modules::start_process`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    anima_sample_modules::start_process();
    let log = logger::Log::default();
    let receiving = log.clone();
    anima_module_sdk::launch(logger::contract(), move |module| {
        logger::receive(&receiving, module.handle());
        module
            .file_descriptor_set(DESCRIPTORS)
            .service(LoggerServer::new(log))
            .probe()
    })
    .await
}
