//! `anima message`: runtime messages (RCS envelopes, PROTOCOL.md §12) at a
//! terminal.
//!
//! `anima message check FILE` reads a message in the specification's JSON
//! form and makes every check the Core makes before routing it (M1–M3),
//! without a Core: it prints `ok` with what it learnt, or the EPS error the
//! Core would answer (code, field, detail) and exits 1. `--fix` prints the
//! message with `size_bytes` (and `checksum`, when it has one) set to its
//! payload's, for authors who write messages by hand.
//!
//! `anima publish FILE` sends a message in the JSON form to a running Core's
//! mediator as one of its operators (PROTOCOL.md §13): it prints the
//! `message_id` and how many subscriptions it was queued for, or the EPS
//! error the Core answered and exits 1. The sender is the operator: the
//! Core sets `source_module` and `sender_identity` to the operator's URN
//! (M3), so the file's own values (e.g. the specification's examples, which
//! name modules) are replaced, and said so on standard error.

use std::io::Read;
use std::path::PathBuf;

use anima_protocol::Urn;
use anima_protocol::pb::RcsEnvelope;
use anima_protocol::rcs::{self, EpsCode, Limits};
use clap::Subcommand;

use super::CliResult;
use super::ops::{AdminTarget, endpoint, rpc_error, runtime};

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

/// `anima publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The message (the RCS JSON form); `-` reads standard input.
    file: PathBuf,
    /// Where the Core is (`--json` prints the Core's answer as JSON).
    #[command(flatten)]
    target: AdminTarget,
}

/// `anima request`.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// The request (the RCS JSON form, naming `routing.reply_to`); `-`
    /// reads standard input.
    file: PathBuf,
    /// Where the Core is (`--json` prints the reply in the RCS JSON form).
    #[command(flatten)]
    target: AdminTarget,
}

/// Runs `anima request FILE`: sends the request as an operator and prints
/// the reply (one line, or its JSON form), or the EPS error (`TIMEOUT` when
/// no reply came in its `timeout_ms`) and exits 1.
pub fn request(args: RequestArgs) -> CliResult {
    use anima_protocol::pb::request_reply::Outcome;
    let envelope = envelope_to_publish(&args.file)?;
    let reply = runtime()?.block_on(async {
        anima_protocol::pb::mediator_client::MediatorClient::new(endpoint(&args.target).await?)
            .request(anima_protocol::pb::PublishRequest {
                envelope: Some(envelope),
            })
            .await
            .map_err(rpc_error)
            .map(tonic::Response::into_inner)
    })?;
    match reply.outcome {
        Some(Outcome::Reply(reply)) if args.target.json => {
            let json = rcs::to_json(&reply).ok_or("a payload the JSON form cannot hold")?;
            println!("{json}");
            Ok(())
        }
        Some(Outcome::Reply(reply)) => {
            let meta = reply.message_metadata.unwrap_or_default();
            let routing = reply.routing.unwrap_or_default();
            let payload = reply.payload.unwrap_or_default();
            println!(
                "reply {} ({}) from {} to {}: {}",
                meta.message_id,
                routing.event_type,
                routing.source_module,
                meta.correlation_id,
                String::from_utf8_lossy(&payload.data)
            );
            Ok(())
        }
        Some(Outcome::Error(e)) => {
            Err(format!("refused: {}{}: {}", e.code, at(&e.field), e.detail).into())
        }
        None => Err("the Core answered neither a reply nor an error".into()),
    }
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
        eprintln!("{what}: {}{}: {}", e.code, at(&e.field), e.detail);
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

/// Runs `anima publish FILE`.
pub fn publish(args: PublishArgs) -> CliResult {
    let envelope = envelope_to_publish(&args.file)?;
    let reply = runtime()?.block_on(async {
        anima_protocol::pb::mediator_client::MediatorClient::new(endpoint(&args.target).await?)
            .publish(anima_protocol::pb::PublishRequest {
                envelope: Some(envelope),
            })
            .await
            .map_err(rpc_error)
            .map(tonic::Response::into_inner)
    })?;
    print_reply(reply, args.target.json)
}

/// The message in `file`, its sender left for the Core to set: the
/// operator is the sender, whatever the file names (said on standard
/// error).
fn envelope_to_publish(file: &PathBuf) -> Result<RcsEnvelope, Box<dyn std::error::Error>> {
    let text = read(file)?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
    // A stand-in satisfies the JSON form's required `source_module`; it is
    // cleared before sending.
    for (section, field) in [
        ("routing", "source_module"),
        ("security", "sender_identity"),
    ] {
        if let Some(named) = value
            .get_mut(section)
            .and_then(|s| s.as_object_mut())
            .and_then(|s| s.insert(field.to_owned(), "urn:anima:user:sender".into()))
            && let Some(named) = named.as_str()
        {
            eprintln!("note: {section}.{field} {named:?} is replaced by the operator's URN (M3)");
        }
    }
    let mut envelope = rcs::from_value(&value).map_err(|e| {
        format!(
            "{}: {}{}: {}",
            file.display(),
            e.code,
            at(&e.field),
            e.detail
        )
    })?;
    if let Some(r) = envelope.routing.as_mut() {
        r.source_module.clear();
    }
    if let Some(s) = envelope.security.as_mut() {
        s.sender_identity.clear();
    }
    Ok(envelope)
}

/// " FIELD", or nothing for no field.
fn at(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(" {field}")
    }
}

/// Prints the Core's answer to a publish (JSON with `json`); an EPS error
/// is the command's failure.
fn print_reply(reply: anima_protocol::pb::PublishReply, json: bool) -> CliResult {
    use anima_protocol::pb::publish_reply::Outcome;
    match reply.outcome {
        Some(Outcome::Published(p)) if json => {
            let line = serde_json::json!({
                "message_id": p.message_id,
                "subscriptions": p.subscriptions,
                "duplicate": p.duplicate,
                "source_module": p.source_module,
            });
            println!("{line}");
            Ok(())
        }
        Some(Outcome::Published(p)) => {
            let what = if p.duplicate {
                "a duplicate (exactly_once, seen before): not queued again".to_owned()
            } else {
                format!("queued for {} subscriptions", p.subscriptions)
            };
            println!(
                "published {} from {}: {what}",
                p.message_id, p.source_module
            );
            Ok(())
        }
        Some(Outcome::Error(e)) => {
            if json {
                let line = serde_json::json!({
                    "error_id": e.error_id, "code": e.code, "field": e.field,
                    "detail": e.detail, "recoverable": e.recoverable,
                    "message_id": e.message_id,
                });
                println!("{line}");
            }
            Err(format!("refused: {}{}: {}", e.code, at(&e.field), e.detail).into())
        }
        None => Err("the Core answered neither published nor an error".into()),
    }
}
