//! The proxy sidecar interface (PROTOCOL.md §11): its name, and what a
//! refusing `Verdict` may carry for the Core to pass it on as it is. The
//! Core and the conformance tool read a verdict by these same rules.

use crate::pb::Verdict;

/// The interface a proxy sidecar provides.
pub const PROXY_INTERFACE: &str = "anima/sidecar";
/// The method it serves.
pub const INSPECT: &str = "/anima.v1.Sidecar/Inspect";
/// The longest reason a refusal may name.
pub const MAX_REASON: usize = 64;

/// Whether `reason` is one the Core passes on: 1 to [`MAX_REASON`]
/// characters of `[A-Z0-9_]`.
pub fn is_reason(reason: &str) -> bool {
    !reason.is_empty()
        && reason.len() <= MAX_REASON
        && reason
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The gRPC status code a refusal names, if it is one the Core passes on
/// (1 to 16).
pub fn refusal_code(verdict: &Verdict) -> Option<tonic::Code> {
    i32::try_from(verdict.code)
        .ok()
        .filter(|c| (1..=16).contains(c))
        .map(tonic::Code::from_i32)
}
