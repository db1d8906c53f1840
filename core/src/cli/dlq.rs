//! `anima dlq`: the mediator's dead-letter queue (M8; PROTOCOL.md §13.5) —
//! the messages that will not be delivered to a subscriber (retries spent,
//! or expired), listed, shown, queued again or deleted by an operator.

use anima_protocol::pb::mediator_client::MediatorClient;
use anima_protocol::pb::{DeadLetter, DeadLetterPosition, DeadLettersRequest};
use anima_protocol::rcs;
use anima_protocol::transport::PeerChannel;
use clap::Subcommand;

use super::CliResult;
use super::ops::{AdminTarget, endpoint, rpc_error, runtime};

/// `anima dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the dead letters: module, event type, delivery, attempts, since,
    /// reason.
    List {
        /// Only this module's.
        #[arg(long)]
        module: Option<String>,
        /// Where the Core is.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Print one dead letter's message (the RCS JSON form).
    Show {
        /// The delivery number, as listed.
        delivery: u64,
        /// Only this module's.
        #[arg(long)]
        module: Option<String>,
        /// Where the Core is.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Queue dead letters again for their subscriber, as new.
    Replay(Choice),
    /// Delete dead letters.
    Purge(Choice),
}

/// The dead letters a replay or purge acts on: one delivery, or `--all`.
#[derive(Debug, clap::Args)]
pub struct Choice {
    /// The delivery number, as listed.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    delivery: Option<u64>,
    /// Every dead letter (of `--module`, when given).
    #[arg(long)]
    all: bool,
    /// Only this module's.
    #[arg(long)]
    module: Option<String>,
    /// Where the Core is.
    #[command(flatten)]
    target: AdminTarget,
}

/// Runs `anima dlq …`.
pub fn run(cmd: DlqCommand) -> CliResult {
    match cmd {
        DlqCommand::List { module, target } => list(module, None, &target),
        DlqCommand::Show {
            delivery,
            module,
            target,
        } => list(module, Some(delivery), &target),
        DlqCommand::Replay(choice) => end(choice, true),
        DlqCommand::Purge(choice) => end(choice, false),
    }
}

async fn client(
    target: &AdminTarget,
) -> Result<MediatorClient<PeerChannel>, Box<dyn std::error::Error>> {
    Ok(MediatorClient::new(endpoint(target).await?))
}

/// `list`, or `show` when `delivery` is given.
fn list(module: Option<String>, delivery: Option<u64>, target: &AdminTarget) -> CliResult {
    let mut request = DeadLettersRequest {
        module: module.unwrap_or_default(),
        delivery: delivery.unwrap_or(0),
        after: None,
    };
    runtime()?.block_on(async {
        let mut client = client(target).await?;
        if delivery.is_none() && !target.json {
            println!(
                "{:<10} {:<32} {:<24} {:>8} {:<24} REASON",
                "DELIVERY", "MODULE", "EVENT TYPE", "ATTEMPTS", "SINCE"
            );
        }
        // Page by page (a reply carries about 1 MiB of dead letters), each
        // printed as it comes.
        loop {
            let page = client
                .list_dead_letters(request.clone())
                .await
                .map_err(rpc_error)?
                .into_inner();
            if let Some(n) = delivery {
                return show(
                    page.dead_letters
                        .first()
                        .ok_or(format!("no dead letter {n}"))?,
                );
            }
            for d in &page.dead_letters {
                if target.json {
                    println!("{}", row_json(d));
                } else {
                    println!(
                        "{:<10} {:<32} {:<24} {:>8} {:<24} {}",
                        d.delivery, d.module, d.event_type, d.attempts, d.since, d.reason
                    );
                }
            }
            match page.dead_letters.last() {
                Some(last) if page.more => {
                    request.after = Some(DeadLetterPosition {
                        event_type: last.event_type.clone(),
                        module: last.module.clone(),
                        delivery: last.delivery,
                    });
                }
                _ => return Ok(()),
            }
        }
    })
}

/// `show`: the dead letter's message as JSON.
fn show(d: &DeadLetter) -> CliResult {
    let message = d
        .envelope
        .as_ref()
        .and_then(rcs::to_json)
        .ok_or("the dead letter's message cannot be written as JSON")?;
    println!("{}", serde_json::to_string_pretty(&message)?);
    Ok(())
}

fn row_json(d: &DeadLetter) -> serde_json::Value {
    let meta = d
        .envelope
        .as_ref()
        .and_then(|e| e.message_metadata.clone())
        .unwrap_or_default();
    serde_json::json!({
        "delivery": d.delivery,
        "module": d.module,
        "event_type": d.event_type,
        "attempts": d.attempts,
        "since": d.since,
        "reason": d.reason,
        "message_id": meta.message_id,
    })
}

/// `replay` or `purge`.
fn end(choice: Choice, replay: bool) -> CliResult {
    let request = DeadLettersRequest {
        module: choice.module.unwrap_or_default(),
        delivery: choice.delivery.unwrap_or(0),
        after: None,
    };
    let count = runtime()?.block_on(async {
        let mut client = client(&choice.target).await?;
        let reply = if replay {
            client.replay_dead_letters(request).await
        } else {
            client.purge_dead_letters(request).await
        };
        reply.map_err(rpc_error).map(|r| r.into_inner().count)
    })?;
    if let Some(n) = choice.delivery
        && count == 0
    {
        return Err(format!("no dead letter {n}").into());
    }
    println!("{} {count}", if replay { "replayed" } else { "purged" });
    Ok(())
}
