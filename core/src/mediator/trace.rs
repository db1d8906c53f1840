//! The trace of a runtime message (M13; PROTOCOL.md §13.9): every message
//! the Core accepts carries a trace id and the span that sent it, and every
//! delivery a W3C `traceparent` a subscriber continues the trace from.

use anima_protocol::pb::{Observability, RcsEnvelope};

use anima_protocol::trace;

/// Fills what `envelope` leaves empty of its trace: `trace_id` from the
/// publisher's `traceparent` header when it sent a valid one, else a new
/// trace; `span_id` from that header's parent id, else a new span. What the
/// publisher set is kept as it is.
pub(crate) fn adopt(envelope: &mut RcsEnvelope, header: Option<&str>) {
    let parent = header.and_then(trace::parse);
    let o = envelope
        .observability
        .get_or_insert_with(Observability::default);
    if o.trace_id.is_empty() {
        match &parent {
            Some(p) => o.trace_id.clone_from(&p.trace_id),
            None => o.trace_id = trace::new_trace_id(),
        }
        if o.span_id.is_empty() {
            o.span_id = parent.map_or_else(trace::new_span_id, |p| p.parent_id);
        }
    } else if o.span_id.is_empty() {
        o.span_id = trace::new_span_id();
    }
}

/// The `traceparent` a delivery of `envelope` carries: its trace and span
/// in W3C form; empty when the publisher chose ids of another form.
pub(crate) fn traceparent(envelope: &RcsEnvelope) -> String {
    envelope
        .observability
        .as_ref()
        .and_then(|o| trace::format(&o.trace_id, &o.span_id))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(trace_id: &str, span_id: &str) -> RcsEnvelope {
        RcsEnvelope {
            observability: Some(Observability {
                trace_id: trace_id.into(),
                span_id: span_id.into(),
                ..Observability::default()
            }),
            ..RcsEnvelope::default()
        }
    }

    fn ids(e: &RcsEnvelope) -> (&str, &str) {
        let o = e.observability.as_ref().expect("observability");
        (&o.trace_id, &o.span_id)
    }

    const HEADER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn m13_the_publishers_traceparent_starts_the_messages_trace() {
        let mut e = RcsEnvelope::default();
        adopt(&mut e, Some(HEADER));
        assert_eq!(
            ids(&e),
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
        );
        assert_eq!(traceparent(&e), HEADER);
    }

    #[test]
    fn m13_what_the_publisher_set_is_kept_and_what_is_missing_is_made() {
        let mut e = with("auth-trace-456", "span-1");
        adopt(&mut e, Some(HEADER));
        assert_eq!(ids(&e), ("auth-trace-456", "span-1"));
        assert_eq!(traceparent(&e), "", "not W3C ids: passed on, no header");

        let mut e = with("4bf92f3577b34da6a3ce929d0e0e4736", "");
        adopt(&mut e, None);
        let (trace_id, span_id) = ids(&e);
        assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span_id.len(), 16);
        assert!(traceparent(&e).starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));

        for header in [None, Some("garbage")] {
            let mut e = RcsEnvelope::default();
            adopt(&mut e, header);
            let (trace_id, span_id) = ids(&e);
            assert_eq!((trace_id.len(), span_id.len()), (32, 16));
            assert_eq!(
                traceparent(&e),
                format!("00-{trace_id}-{span_id}-01"),
                "{header:?}"
            );
        }
    }
}
