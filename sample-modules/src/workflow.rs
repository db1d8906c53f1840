//! What the memory check workflow's samples share (the seed's "Memory Check
//! Workflow Communication"; `workflow.proto`): its event types, and how a
//! message joins the workflow of the message that caused it — the same
//! `correlation_id` and trace, the cause as `parent_message_id`.
//!
//! The [`orchestrator`](crate::orchestrator) sends `EXECUTE_SCRIPT` as a
//! request; the [`scripts`](crate::scripts) executor logs, runs the script
//! and replies `SCRIPT_EXECUTED`; the orchestrator logs the outcome; the
//! [`logger`](crate::logger) receives every `LOG_MESSAGE`. All of it
//! through the Core's mediator: no module knows another's address.

use anima_module_sdk::CoreClient;
use anima_module_sdk::messages::envelope;
use anima_protocol::pb::{Observability, RcsEnvelope};

/// The request to run a script: `{"script": NAME}`.
pub const EXECUTE_SCRIPT: &str = "EXECUTE_SCRIPT";
/// The reply: the script's result, JSON.
pub const SCRIPT_EXECUTED: &str = "SCRIPT_EXECUTED";
/// A line for the logger: `{"text": TEXT}`.
pub const LOG_MESSAGE: &str = "LOG_MESSAGE";
/// The one script the executor runs.
pub const MEMORY_CHECK: &str = "memory_check";

/// Threads `message` into the workflow of `cause`: `cause`'s
/// `correlation_id` (its `message_id` when it has none), `cause` as its
/// parent, and `cause`'s trace in a span of its own (left empty for the
/// Core to name).
pub fn thread(message: &mut RcsEnvelope, cause: &RcsEnvelope) {
    let cause_meta = cause.message_metadata.clone().unwrap_or_default();
    if let Some(m) = message.message_metadata.as_mut() {
        m.correlation_id = if cause_meta.correlation_id.is_empty() {
            cause_meta.message_id.clone()
        } else {
            cause_meta.correlation_id
        };
        m.parent_message_id = cause_meta.message_id;
    }
    message.observability = cause.observability.as_ref().map(|o| Observability {
        trace_id: o.trace_id.clone(),
        ..Observability::default()
    });
}

/// A `LOG_MESSAGE` of `text` in the workflow of `cause`.
pub fn log_line(cause: &RcsEnvelope, text: &str) -> RcsEnvelope {
    let data = serde_json::json!({ "text": text }).to_string().into_bytes();
    let mut line = envelope(LOG_MESSAGE, "application/json", data);
    thread(&mut line, cause);
    line
}

/// Publishes a log line of `text` in `cause`'s workflow. A log line is worth
/// a warning when it cannot be sent, not the work it reports.
pub async fn log(core: &CoreClient, cause: &RcsEnvelope, text: &str) {
    if let Err(e) = core.publish(log_line(cause, text)).await {
        tracing::warn!("log line not sent: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anima_protocol::pb::MessageMetadata;

    #[test]
    fn a_message_joins_its_causes_workflow() {
        let mut cause = envelope(EXECUTE_SCRIPT, "application/json", b"{}".to_vec());
        cause.observability = Some(Observability {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            ..Observability::default()
        });
        let id = cause.message_metadata.as_ref().unwrap().message_id.clone();
        let line = log_line(&cause, "started");
        let meta: &MessageMetadata = line.message_metadata.as_ref().unwrap();
        assert_eq!(
            meta.correlation_id, id,
            "the cause's id, having no correlation"
        );
        assert_eq!(meta.parent_message_id, id);
        let o = line.observability.as_ref().unwrap();
        assert_eq!(o.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(o.span_id, "", "a span of its own, named by the Core");
        assert_eq!(
            line.payload.as_ref().unwrap().data,
            br#"{"text":"started"}"#
        );
        // A message caused by the line keeps the workflow's correlation.
        let next = log_line(&line, "next");
        let next_meta = next.message_metadata.as_ref().unwrap();
        assert_eq!(next_meta.correlation_id, id);
        assert_eq!(next_meta.parent_message_id, meta.message_id);
    }
}
