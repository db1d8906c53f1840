//! `anima-ratelimit`: the proxy sidecar sample (see `README.md` beside this
//! file). Started by its Core before the module it stands in front of;
//! answers the Core's `Sidecar/Inspect` for each call to that module.

use std::process::ExitCode;

use anima_protocol::pb::sidecar_server::SidecarServer;
use anima_sample_modules::ratelimit;

/// jemalloc (see `anima_sample_modules::start_process`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    anima_sample_modules::start_process();
    let (rate, burst) = match ratelimit::limits_from_env() {
        Ok(limits) => limits,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    anima_module_sdk::launch(ratelimit::contract(), |module| {
        module
            .file_descriptor_set(anima_protocol::pb::FILE_DESCRIPTOR_SET)
            .service(SidecarServer::new(ratelimit::RateLimit::new(rate, burst)))
            .interface(ratelimit::interface())
    })
    .await
}
