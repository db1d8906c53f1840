//! `anima-notes`: the sample module that calls another module's interface
//! through its Core (see `README.md` beside this file). Serves its one Core;
//! in standby between leases; stops on its Core's or an operator's shutdown,
//! or a signal.

use std::process::ExitCode;

use anima_sample_modules::pb::notes_server::NotesServer;
use anima_sample_modules::{DESCRIPTORS, notes};

/// jemalloc (see `anima_sample_modules::start_process`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    anima_sample_modules::start_process();
    // One client of the Core for the whole process. Without
    // ANIMA_CORE_ENDPOINT the module still serves; its calls then fail with
    // FAILED_PRECONDITION.
    let notes = notes::Notes::from_env();
    anima_module_sdk::launch(notes::contract(), |module| {
        module
            .file_descriptor_set(DESCRIPTORS)
            .service(NotesServer::new(notes))
            .probe()
    })
    .await
}
