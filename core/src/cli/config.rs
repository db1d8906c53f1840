//! `anima config`: check a Core configuration before serving it, or print
//! the reference of its keys.
//!
//! `anima config check [FILE]` reads and checks like `anima serve --config`
//! does, and starts nothing: every problem is printed on its own line to
//! stderr (`FILE:LINE: key: message`), followed by the `error:` summary.
//! `anima config reference` prints every key of `anima.toml` (type, default,
//! meaning) as Markdown: `docs/config.md`.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::CliResult;
use crate::config;

/// The file checked when none is named, if it exists in the working directory.
pub const DEFAULT_FILE: &str = "anima.toml";

/// `anima config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file: syntax, identities, files, certificates,
    /// contracts, dependencies. Starts nothing.
    ///
    /// Without FILE: ./anima.toml if it exists, else the embedded default
    /// (what `anima serve` runs without --config), with the working directory
    /// as its base.
    Check {
        /// The configuration file (paths in it are relative to its directory).
        file: Option<PathBuf>,
    },
    /// Print every key of anima.toml (type, default, meaning) as Markdown:
    /// docs/config.md.
    Reference,
}

/// Runs `anima config …`.
pub fn run(cmd: ConfigCommand) -> CliResult {
    match cmd {
        ConfigCommand::Check { file } => check(file),
        ConfigCommand::Reference => {
            print!("{}", config::reference_markdown());
            Ok(())
        }
    }
}

fn check(file: Option<PathBuf>) -> CliResult {
    let file = file.or_else(|| {
        let default = Path::new(DEFAULT_FILE);
        default.exists().then(|| default.to_path_buf())
    });
    let (what, checked) = match file {
        Some(file) => (
            file.display().to_string(),
            config::load(&file).map(|c| c.modules.len()),
        ),
        None => {
            println!("no {DEFAULT_FILE} here: checking the embedded default configuration");
            let base = std::env::current_dir()?;
            let default = config::embedded_default(&base);
            (
                "the embedded default".to_owned(),
                config::check(&default).map(|()| default.modules.len()),
            )
        }
    };
    match checked {
        Ok(modules) => {
            println!("ok: {what} ({})", plural(modules, "module"));
            Ok(())
        }
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            Err(format!("{} in {what}", plural(problems.len(), "problem")).into())
        }
    }
}

/// `1 module`, `3 modules`.
fn plural(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}
