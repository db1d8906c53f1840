//! W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>)
//! as Anima reads and writes it: the Core on its gateway's calls and its
//! mediator's messages (M13; PROTOCOL.md §13.9), modules on the calls they
//! serve.

use ring::rand::{SecureRandom, SystemRandom};

/// The parts of a `traceparent` Anima uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lower-case hex digits, not all zero.
    pub trace_id: String,
    /// 16 lower-case hex digits: the caller's span.
    pub parent_id: String,
}

/// Reads a `traceparent` value: `VERSION-TRACE_ID-PARENT_ID-FLAGS` in hex of
/// 2, 32, 16 and 2 digits, the trace id not all zero; `None` otherwise.
pub fn parse(text: &str) -> Option<TraceParent> {
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0');
    valid.then(|| TraceParent {
        trace_id: parts[1].to_ascii_lowercase(),
        parent_id: parts[2].to_ascii_lowercase(),
    })
}

/// A `traceparent` (version 00, sampled) for a trace and span already in
/// W3C form (32 and 16 lower-case hex digits, neither all zero); `None` for
/// ids of another form, which are passed on as they are but have no
/// `traceparent`.
pub fn format(trace_id: &str, span_id: &str) -> Option<String> {
    let w3c = |s: &str, n: usize| {
        s.len() == n
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && s.bytes().any(|b| b != b'0')
    };
    (w3c(trace_id, 32) && w3c(span_id, 16)).then(|| format!("00-{trace_id}-{span_id}-01"))
}

/// A new trace id: 16 random bytes in lower-case hex.
pub fn new_trace_id() -> String {
    random_hex::<16>()
}

/// A new span id: 8 random bytes in lower-case hex.
pub fn new_span_id() -> String {
    random_hex::<8>()
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    if SystemRandom::new().fill(&mut bytes).is_err() || bytes.iter().all(|&b| b == 0) {
        // All zero is invalid in W3C trace context; the system's randomness
        // failing is not a reason to drop a message.
        bytes[N - 1] = 1;
    }
    crate::hex::lower(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m13_a_valid_traceparent_is_read_and_others_are_not() {
        let parent = parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(parent.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id, "00f067aa0ba902b7");
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn m13_only_w3c_form_ids_make_a_traceparent_and_new_ones_do() {
        assert_eq!(
            format("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7").as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert!(format("auth-trace-456", "00f067aa0ba902b7").is_none());
        assert!(format("4BF92F3577B34DA6A3CE929D0E0E4736", "00f067aa0ba902b7").is_none());
        assert!(format("4bf92f3577b34da6a3ce929d0e0e4736", "0000000000000000").is_none());
        let (trace, span) = (new_trace_id(), new_span_id());
        assert_ne!(trace, new_trace_id());
        let header = format(&trace, &span).expect("new ids are W3C ids");
        assert_eq!(parse(&header).map(|p| p.trace_id), Some(trace));
    }
}
