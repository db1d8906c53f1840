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
        let (lines, summary) = config_failure(&problems, &what);
        for line in lines {
            eprintln!("{line}");
        }
        summary
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
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.core.worker_threads {
        runtime.worker_threads(n);
    }
    let runtime = runtime.enable_all().build()?;
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

/// What `anima serve` says about a configuration it cannot run: the lines
/// printed before the `error:` line, and that line's message. One problem
/// is the error itself (`error: FILE:LINE: key: message`, one line); several
/// are listed one a line, then counted (`error: 3 problems in FILE`).
fn config_failure(problems: &[config::Problem], what: &str) -> (Vec<String>, String) {
    match problems {
        [] => (Vec::new(), format!("{what} cannot be used")),
        [one] => (Vec::new(), one.to_string()),
        many => (
            many.iter().map(ToString::to_string).collect(),
            format!("{} problems in {what}", many.len()),
        ),
    }
}

/// The dev certificates of the embedded default: all of them when there is
/// no dev CA yet; else those a newer version added (a sample module), issued
/// from the CA there.
fn ensure_dev_certs(base: &Path) -> CliResult {
    let dir = base.join(anima_certs::DEFAULT_DIR);
    if dir.join(anima_certs::CA_CERT_FILE).exists() {
        for (kind, name) in anima_certs::DEV_IDENTITIES {
            let urn = anima_protocol::Urn::new(kind, name)?;
            if dir.join(anima_certs::leaf_cert_file(&urn)).exists() {
                continue;
            }
            let days = anima_certs::InitOptions::default().days;
            let created = anima_certs::issue_into_dir(&dir, kind, name, days, false)?;
            tracing::info!(dir = %dir.display(), identity = %urn, files = created.len(), "created a missing dev certificate");
        }
        return Ok(());
    }
    let created = anima_certs::init_dir(&dir, &anima_certs::InitOptions::default())?;
    tracing::info!(dir = %dir.display(), files = created.len(), "created dev certificates");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(location: &str, message: &str) -> config::Problem {
        config::Problem {
            location: location.into(),
            message: message.into(),
        }
    }

    #[test]
    fn one_problem_is_one_line_several_are_listed_and_counted() {
        let one = [problem("a.toml:1", "bad")];
        assert_eq!(
            config_failure(&one, "a.toml"),
            (Vec::new(), "a.toml:1: bad".to_owned())
        );
        let two = [problem("a.toml:1", "bad"), problem("a.toml:2", "worse")];
        let (lines, summary) = config_failure(&two, "a.toml");
        assert_eq!(lines, ["a.toml:1: bad", "a.toml:2: worse"]);
        assert_eq!(summary, "2 problems in a.toml");
    }
}
