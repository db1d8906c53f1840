//! `anima serve`: run the Core.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;

use super::CliResult;
use crate::config;
use crate::service::{READY_PREFIX, serve};

/// `anima serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file. Without one, `anima.toml` in the current
    /// directory if there is one, else an embedded default that hosts the
    /// three sample modules on dev certificates in certs/dev (created when
    /// missing).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen for the admin API here instead of the configured address.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
}

/// Runs `anima serve`.
pub fn run(args: ServeArgs) -> CliResult {
    let local = PathBuf::from(super::config::DEFAULT_FILE);
    let file = args
        .config
        .clone()
        .or_else(|| local.exists().then_some(local));
    let report = |problems: Vec<config::Problem>, what: String| {
        for p in &problems {
            eprintln!("{p}");
        }
        format!("{} problems in {what}", problems.len())
    };
    let mut config = match &file {
        Some(path) => config::load(path).map_err(|p| report(p, path.display().to_string()))?,
        None => {
            let base = std::env::current_dir()?;
            ensure_dev_certs(&base)?;
            let config = config::embedded_default(&base);
            config::check(&config).map_err(|p| report(p, "the embedded default".into()))?;
            config
        }
    };
    if let Some(addr) = args.admin_listen {
        config.admin.listen = addr;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(
        config,
        anima_protocol::launch::shutdown_signal(),
        |running| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{READY_PREFIX} {}", running.admin_addr);
            let _ = out.flush();
        },
    ))?;
    Ok(())
}

fn ensure_dev_certs(base: &Path) -> CliResult {
    let dir = base.join(anima_certs::DEFAULT_DIR);
    if dir.join(anima_certs::CA_CERT_FILE).exists() {
        return Ok(());
    }
    let created = anima_certs::init_dir(&dir, &anima_certs::InitOptions::default())?;
    tracing::info!(dir = %dir.display(), files = created.len(), "created dev certificates");
    Ok(())
}
