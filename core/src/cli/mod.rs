//! The `anima` command line: argument definitions and dispatch.
//!
//! Every command reports a failure as one line on stderr (`error: …`) and a
//! non-zero exit status: 1 for a failed operation, 2 for bad usage.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod certs;
pub mod config;
pub mod conformance;
pub mod demo;
pub mod dlq;
pub mod message;
pub mod new;
pub mod ops;
pub mod registry;
pub mod serve;
pub mod subscribe;

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
    /// Run the Core: host the configured modules (or the embedded default).
    Serve(serve::ServeArgs),
    /// List the Core's modules and their state.
    Modules(ops::AdminTarget),
    /// List the Core's leases.
    Leases(ops::AdminTarget),
    /// Revoke a lease.
    Revoke {
        /// Which lease.
        #[command(flatten)]
        args: ops::RevokeArgs,
        /// Where the Core is.
        #[command(flatten)]
        target: ops::AdminTarget,
    },
    /// Restart a module.
    Restart {
        /// Which module.
        #[command(flatten)]
        args: ops::ModuleArg,
        /// Where the Core is.
        #[command(flatten)]
        target: ops::AdminTarget,
    },
    /// Stop a module (until restarted).
    Stop {
        /// Which module.
        #[command(flatten)]
        args: ops::ModuleArg,
        /// Where the Core is.
        #[command(flatten)]
        target: ops::AdminTarget,
    },
    /// Follow the Core's lifecycle events.
    Events(ops::AdminTarget),
    /// The providers of interfaces, and their lifecycle events.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Check a configuration file, or print the reference of its keys.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Runtime messages (RCS envelopes): check one as the Core would.
    #[command(subcommand)]
    Message(message::MessageCommand),
    /// Publish a runtime message (the RCS JSON form) through the Core's
    /// mediator, as an operator.
    Publish(message::PublishArgs),
    /// Send a runtime message as a request (the RCS JSON form, naming
    /// `routing.reply_to`) through the Core's mediator, as an operator, and
    /// print its reply.
    Request(message::RequestArgs),
    /// Show the runtime messages the Core accepts, as they come, as an
    /// operator (a view: the modules' subscriptions lose nothing to it).
    Subscribe(subscribe::SubscribeArgs),
    /// The mediator's dead-letter queue: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Mint and inspect development certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Check that a module obeys ADR-0003 (every CONFORMANCE.md row).
    Conformance(conformance::ConformanceArgs),
    /// Scaffold a module crate of your own.
    #[command(subcommand)]
    New(new::NewCommand),
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
        Command::Conformance(args) => return conformance::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Modules(target) => ops::modules(target),
        Command::Leases(target) => ops::leases(target),
        Command::Revoke { args, target } => ops::revoke(target, args),
        Command::Restart { args, target } => ops::module_command(target, args, true),
        Command::Stop { args, target } => ops::module_command(target, args, false),
        Command::Events(target) => ops::events(target),
        Command::Registry(cmd) => registry::run(cmd),
        Command::Config(cmd) => config::run(cmd),
        Command::Message(cmd) => message::run(cmd),
        Command::Publish(args) => message::publish(args),
        Command::Request(args) => message::request(args),
        Command::Subscribe(args) => subscribe::run(args),
        Command::Dlq(cmd) => dlq::run(cmd),
        Command::Certs(cmd) => certs::run(cmd),
        Command::New(cmd) => new::run(cmd),
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A failed command: its message is printed as one line.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;
