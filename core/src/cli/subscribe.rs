//! `anima subscribe [EVENT_TYPE…]`: the runtime messages a running Core
//! accepts, shown at a terminal as they come (PROTOCOL.md §13.10), as one of
//! its operators. A view, not a subscription: the modules' subscriptions
//! lose nothing to it and it acknowledges nothing. One line per message, or
//! with `--json` the message in the specification's JSON form, one per line
//! (what `anima publish -` reads back); `--count N` exits after N messages.

use anima_protocol::pb::mediator_client::MediatorClient;
use anima_protocol::pb::{RcsEnvelope, WatchMessagesRequest};
use anima_protocol::rcs;

use super::CliResult;
use super::ops::{AdminTarget, endpoint, rpc_error, runtime};

/// `anima subscribe`.
#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// The event types to show; none: every one.
    event_types: Vec<String>,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Where the Core is (`--json` prints each message in the RCS JSON
    /// form, one per line).
    #[command(flatten)]
    target: AdminTarget,
}

/// The longest payload shown as text on a line.
const SHOWN: usize = 200;

/// Runs `anima subscribe`.
pub fn run(args: SubscribeArgs) -> CliResult {
    runtime()?.block_on(async {
        let mut stream = MediatorClient::new(endpoint(&args.target).await?)
            .watch(WatchMessagesRequest {
                event_types: args.event_types.clone(),
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        let what = if args.event_types.is_empty() {
            "every event type".to_owned()
        } else {
            args.event_types.join(", ")
        };
        eprintln!(
            "watching {what}: the messages the Core accepts from now on (nothing is taken \
             from the modules' subscriptions)"
        );
        let mut shown = 0u64;
        while args.count.is_none_or(|n| shown < n) {
            let Some(item) = stream.message().await.map_err(rpc_error)? else {
                return Err("the Core ended the watch (it is stopping)".into());
            };
            if item.missed > 0 {
                eprintln!(
                    "note: {} messages went by unseen (this terminal was too slow)",
                    item.missed
                );
            }
            let Some(envelope) = item.envelope else {
                continue;
            };
            if args.target.json {
                let json = rcs::to_json(&envelope).ok_or("a payload the JSON form cannot hold")?;
                println!("{json}");
            } else {
                println!("{}", line(&envelope));
            }
            shown += 1;
        }
        Ok(())
    })
}

/// One message on one line: when, what, which, from whom, how urgent, its
/// trace and its payload (as text when it is short UTF-8).
fn line(e: &RcsEnvelope) -> String {
    let m = e.message_metadata.clone().unwrap_or_default();
    let r = e.routing.clone().unwrap_or_default();
    let p = e.payload.clone().unwrap_or_default();
    let trace = e
        .observability
        .as_ref()
        .map_or("", |o| o.trace_id.as_str())
        .to_owned();
    let payload = match std::str::from_utf8(&p.data) {
        Ok(text) if text.len() <= SHOWN && !text.chars().any(char::is_control) => text.to_owned(),
        _ => format!("{} bytes of {}", p.data.len(), p.content_type),
    };
    format!(
        "{} {} {} from {} [{}] trace {}: {}",
        m.created_at,
        r.event_type,
        m.message_id,
        r.source_module,
        rcs::words::priority::word(m.priority).unwrap_or("normal"),
        if trace.is_empty() { "-" } else { &trace },
        payload
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use anima_protocol::pb::{MessageMetadata, Observability, Payload, Priority, Routing};

    #[test]
    fn a_line_shows_short_text_and_says_what_else_is_there() {
        let mut e = RcsEnvelope {
            message_metadata: Some(MessageMetadata {
                message_id: "id-1".into(),
                created_at: "2026-12-02T19:00:00.000Z".into(),
                priority: Priority::High as i32,
                ..MessageMetadata::default()
            }),
            routing: Some(Routing {
                event_type: "LOG_MESSAGE".into(),
                source_module: "urn:anima:module:app".into(),
                ..Routing::default()
            }),
            payload: Some(Payload {
                content_type: "text/plain".into(),
                data: b"hello".to_vec(),
                ..Payload::default()
            }),
            observability: Some(Observability {
                trace_id: "t-1".into(),
                ..Observability::default()
            }),
            ..RcsEnvelope::default()
        };
        assert_eq!(
            line(&e),
            "2026-12-02T19:00:00.000Z LOG_MESSAGE id-1 from urn:anima:module:app [high] trace t-1: hello"
        );
        e.payload.as_mut().unwrap().data = vec![0xff, 0, 1];
        assert!(
            line(&e).ends_with(": 3 bytes of text/plain"),
            "{}",
            line(&e)
        );
    }
}
