//! `anima-hasher`: the Type I sample module (see `README.md` beside this
//! file). Started by a Core under the launch protocol; exits by itself when
//! its lease ends, after removing its scratch directory.

use std::process::ExitCode;

use anima_sample_modules::pb::hasher_server::HasherServer;
use anima_sample_modules::{DESCRIPTORS, hasher};

/// jemalloc (see `anima_sample_modules::start_process`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    anima_sample_modules::start_process();
    let hasher = match hasher::Hasher::new(hasher::scratch_dir_from_env()) {
        Ok(hasher) => hasher,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cleanup = hasher.cleanup();
    let hook = cleanup.clone();
    let code = anima_module_sdk::launch(hasher::contract(), |module| {
        module
            .file_descriptor_set(DESCRIPTORS)
            .service(HasherServer::new(hasher))
            .probe()
            .on_cleanup(move || hook.run())
    })
    .await;
    // The hook ran if the lease ended; after a signal or a failed start it
    // did not. Either way, leave nothing behind (a second run is a no-op).
    cleanup.run().await;
    code
}
