//! RUNE's runtime messages (PROTOCOL.md §12): the RCS envelope in its JSON
//! form ([`from_json`], [`to_json`]) and its protobuf form
//! ([`crate::pb::RcsEnvelope`]), the checks the Core makes before routing
//! one ([`validate`]: M1–M3), and the EPS errors it answers with
//! ([`Invalid`], [`crate::pb::EpsError`]).
//!
//! ```
//! use anima_protocol::rcs;
//!
//! let text = br#"{
//!   "message_metadata": {"version": "1.0",
//!     "message_id": "550e8400-e29b-41d4-a716-446655440000",
//!     "created_at": "2025-07-31T17:47:53.123Z"},
//!   "routing": {"event_type": "SYSTEM_HEARTBEAT"},
//!   "payload": {"schema_version": "rcs_v2", "content_type": "application/json",
//!     "size_bytes": 20, "data": {"status": "healthy"}}
//! }"#;
//! // `source_module` is required: the JSON form names the sender.
//! let err = rcs::from_json(text).unwrap_err();
//! assert_eq!((err.code, err.field.as_str()), (rcs::EpsCode::MissingField, "routing.source_module"));
//! ```

mod canonical;
mod eps;
mod json;
mod time;
mod validate;
pub mod words;

pub use canonical::{CanonicalError, canonical};
pub use eps::{EpsCode, Invalid, eps_json};
pub use json::{BASE64, from_json, from_value, is_json, is_mime, to_json};
pub use time::{TimestampError, format_utc_ms, parse_utc_ms};
pub use validate::{
    Checked, Limits, MAX_DELAY_MS, MAX_NAME, MAX_OPAQUE, MAX_RETRIES, MAX_TAGS, RCS_VERSION,
    SCHEMA_VERSION, is_event_type, is_uuid_v4, new_uuid_v4, sha256_hex, validate,
};

#[cfg(test)]
mod tests;
