//! The `anima` command line: argument definitions and dispatch.
//!
//! Every command reports a failure as one line on stderr (`error: …`) and a
//! non-zero exit status: 1 for a failed operation, 2 for bad usage.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod certs;
pub mod demo;

/// Anima: a capability host for leased modules.
#[derive(Debug, Parser)]
#[command(name = "anima", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mint and inspect development certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Two-process demo: one mutually authenticated gRPC call, both identities printed.
    Demo(demo::DemoArgs),
    /// The server half of `anima demo` (started by it).
    #[command(hide = true)]
    DemoServer(demo::DemoServerArgs),
}

/// Runs a parsed command line and returns the process exit status.
pub fn run(cli: Cli) -> ExitCode {
    init_tracing();
    let result = match cli.command {
        Command::Certs(cmd) => certs::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::DemoServer(args) => demo::run_server(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A failed command: its message is printed as one line.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;
