//! `anima-scripts`: the sample module that executes the memory check
//! workflow's script (see `README.md` beside this file). Serves its one
//! Core; in standby between leases; stops on its Core's or an operator's
//! shutdown, or a signal.

use std::process::ExitCode;

use anima_sample_modules::{DESCRIPTORS, scripts};

/// jemalloc (see `anima_sample_modules::start_process`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    anima_sample_modules::start_process();
    anima_module_sdk::launch(scripts::contract(), move |module| {
        scripts::execute(module.handle());
        module.file_descriptor_set(DESCRIPTORS).probe()
    })
    .await
}
