//! `anima`: the Anima Core and its command-line tool.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, with a background thread that purges freed pages, gives the
/// memory of a burst of connections and calls (or of an abuser) back to the
/// system once it is over; the system allocator would keep most of it
/// resident.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Purge freed pages on time, not only when the Core next allocates.
    #[cfg(feature = "jemalloc")]
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let cli = anima_core::cli::Cli::parse();
    anima_core::cli::run(cli)
}
