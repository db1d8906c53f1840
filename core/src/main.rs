//! `anima`: the Anima Core and its command-line tool.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = anima_core::cli::Cli::parse();
    anima_core::cli::run(cli)
}
