//! `anima conformance`: run the CONFORMANCE.md rows against a module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anima_conformance::{self as conformance, KeyType, LaunchCommand, Options, Target};
use clap::Args;

/// Check that a module obeys ADR-0003, black-box.
///
/// Give either a command that starts the module (after `--`; required for
/// Type I and core-started Type II) or `--endpoint` for a running one. Exit
/// status: 0 when every applicable row passes, 1 when one fails, 2 when the
/// run could not happen.
#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// The module's contract (module.toml).
    #[arg(long)]
    pub contract: PathBuf,
    /// A CA directory the tool can sign test identities with (ca.pem, ca.key).
    #[arg(long, default_value = "certs/dev")]
    pub certs: PathBuf,
    /// Key type of the tool's Core certificates: p256 for modules on
    /// BoringSSL-based stacks (Python grpcio, C++ gRPC).
    #[arg(long, value_enum, default_value_t = KeyType::Ed25519)]
    pub core_key_type: KeyType,
    /// The module's certificate (default: minted for the contract's URN).
    #[arg(long, requires = "module_key")]
    pub module_cert: Option<PathBuf>,
    /// The module's private key.
    #[arg(long, requires = "module_cert")]
    pub module_key: Option<PathBuf>,
    /// Act as this Core (a module already bound to it) instead of a minted one.
    #[arg(long, requires = "core_key")]
    pub core_cert: Option<PathBuf>,
    /// The key of `--core-cert`.
    #[arg(long, requires = "core_cert")]
    pub core_key: Option<PathBuf>,
    /// A running module's address (ip:port). The probe's counters are
    /// process-wide: keep other traffic away from it during the run.
    #[arg(long, conflicts_with = "command")]
    pub endpoint: Option<SocketAddr>,
    /// Extra environment for the started module, NAME=value (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show the evidence of passing rows too.
    #[arg(long, short)]
    pub verbose: bool,
    /// Keep module logs and minted files here.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// The command that starts the module, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=value"))
}

/// Runs the checks and prints the report.
pub fn run(args: ConformanceArgs) -> ExitCode {
    let target = match (args.endpoint, args.command.is_empty()) {
        (Some(addr), _) => Target::Endpoint(addr),
        (None, false) => Target::Launch(LaunchCommand {
            argv: args.command.clone(),
            env: args.env.clone(),
        }),
        (None, true) => {
            eprintln!("error: give the command that starts the module (after --) or --endpoint");
            return ExitCode::from(2);
        }
    };
    let options = Options {
        contract: args.contract.clone(),
        certs: args.certs.clone(),
        key_type: args.core_key_type,
        module_files: args.module_cert.clone().zip(args.module_key.clone()),
        core_files: args.core_cert.clone().zip(args.core_key.clone()),
        target,
        workdir: args.workdir.clone(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(conformance::run(&options)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let module = conformance::contract_urn(&args.contract).unwrap_or_default();
    if args.json {
        println!("{}", report.json(&module));
    } else {
        print!("{}", report.table(&module, args.verbose));
    }
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
