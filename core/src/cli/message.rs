//! `anima message`: runtime messages (RCS envelopes, PROTOCOL.md §12) at a
//! terminal.
//!
//! `anima message check FILE` reads a message in the specification's JSON
//! form and makes every check the Core makes before routing it (M1–M3),
//! without a Core: it prints `ok` with what it learnt, or the EPS error the
//! Core would answer (code, field, detail) and exits 1. `--fix` prints the
//! message with `size_bytes` (and `checksum`, when it has one) set to its
//! payload's, for authors who write messages by hand.

use std::io::Read;
use std::path::PathBuf;

use anima_protocol::Urn;
use anima_protocol::rcs::{self, EpsCode, Limits};
use clap::Subcommand;

use super::CliResult;

/// The largest file read: the payload limit and the envelope's, with room
/// for JSON's white space.
const MAX_FILE: u64 = 4 << 20;

/// `anima message …`
#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// Check a message (the RCS JSON form) as the Core checks it before
    /// routing; print the EPS error it would answer, if any.
    Check {
        /// The message file; `-` reads standard input.
        file: PathBuf,
        /// The sender's URN (the certificate the Core would see). Default:
        /// the message's `routing.source_module`.
        #[arg(long)]
        sender: Option<Urn>,
        /// Print the message with `size_bytes` and `checksum` set to its
        /// payload's, then check that.
        #[arg(long)]
        fix: bool,
    },
}

/// Runs `anima message …`.
pub fn run(cmd: MessageCommand) -> CliResult {
    match cmd {
        MessageCommand::Check { file, sender, fix } => check(&file, sender, fix),
    }
}

fn read(file: &PathBuf) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut text = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().take(MAX_FILE + 1).read_to_end(&mut text)?;
    } else {
        std::fs::File::open(file)
            .map_err(|e| format!("{}: {e}", file.display()))?
            .take(MAX_FILE + 1)
            .read_to_end(&mut text)?;
    }
    if text.len() as u64 > MAX_FILE {
        return Err(format!("{}: larger than {MAX_FILE} bytes", file.display()).into());
    }
    Ok(text)
}

fn check(file: &PathBuf, sender: Option<Urn>, fix: bool) -> CliResult {
    let text = read(file)?;
    let what = if file.as_os_str() == "-" {
        "standard input".to_owned()
    } else {
        file.display().to_string()
    };
    let refused = |e: &rcs::Invalid| -> Box<dyn std::error::Error> {
        let field = if e.field.is_empty() {
            String::new()
        } else {
            format!(" {}", e.field)
        };
        eprintln!("{what}: {}{field}: {}", e.code, e.detail);
        format!("{what}: the Core would refuse it ({})", e.code).into()
    };
    let mut envelope = rcs::from_json(&text).map_err(|e| refused(&e))?;
    let sender = match sender {
        Some(urn) => urn,
        None => {
            let named = envelope
                .routing
                .as_ref()
                .map(|r| r.source_module.clone())
                .unwrap_or_default();
            named.parse::<Urn>().map_err(|_| {
                refused(&rcs::Invalid::new(
                    EpsCode::IdentityMismatch,
                    "routing.source_module",
                    format!(
                        "{named:?} is not a URN, so no certificate can send it (give --sender)"
                    ),
                ))
            })?
        }
    };
    if fix && let Some(p) = envelope.payload.as_mut() {
        p.size_bytes = p.data.len() as u64;
        if !p.checksum.is_empty() {
            p.checksum = rcs::sha256_hex(&p.data);
        }
    }
    // Validation fills in the sender's URN where the message leaves it out;
    // what --fix prints is the message as written, its sizes corrected.
    let mut routed = envelope.clone();
    let checked =
        rcs::validate(&mut routed, &sender, Limits::default()).map_err(|e| refused(&e))?;
    if fix {
        let json = rcs::to_json(&envelope).ok_or("the payload cannot be written as JSON")?;
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let routing = routed.routing.unwrap_or_default();
    let payload = routed.payload.unwrap_or_default();
    println!(
        "ok: {what}: {} from {sender}, priority {}, {}, payload {} bytes{}",
        routing.event_type,
        rcs::words::priority::word(checked.priority as i32).unwrap_or("normal"),
        rcs::words::delivery_mode::word(checked.delivery_mode as i32).unwrap_or("at_least_once"),
        payload.data.len(),
        checked
            .expires_ms
            .map(|ms| format!(", expires at {}", rcs::format_utc_ms(ms)))
            .unwrap_or_default()
    );
    Ok(())
}
