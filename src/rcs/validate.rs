//! The mediator's checks before routing (M1, M2, M3; PROTOCOL.md §12.4):
//! every rule a message must keep, each refusal naming the field.

use prost::Message as _;

use super::eps::{EpsCode, Invalid};
use super::json::{BASE64, is_json, is_mime};
use super::time::parse_utc_ms;
use super::words::access_level;
use crate::Urn;
use crate::pb::{DeliveryMode, Priority, RcsEnvelope};

/// The RCS version this Core speaks (`message_metadata.version`).
pub const RCS_VERSION: &str = "1.0";
/// The payload schema it speaks (`payload.schema_version`).
pub const SCHEMA_VERSION: &str = "rcs_v2";
/// The longest event type, category, tag or trace/span id, in bytes.
pub const MAX_NAME: usize = 128;
/// The most routing tags.
pub const MAX_TAGS: usize = 32;
/// The most retries a message may ask for.
pub const MAX_RETRIES: u32 = 100;
/// The longest retry delay and reply timeout, in milliseconds (1 hour).
pub const MAX_DELAY_MS: u64 = 3_600_000;
/// The longest opaque security string (`signature`, `encryption_key_id`).
pub const MAX_OPAQUE: usize = 4096;

/// What a Core takes, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest payload (`data`).
    pub max_payload: usize,
    /// The largest envelope without its payload (metadata, routing,
    /// extensions …).
    pub max_overhead: usize,
}

impl Default for Limits {
    /// 1 MiB of payload, 64 KiB of the rest.
    fn default() -> Self {
        Limits {
            max_payload: 1 << 20,
            max_overhead: 64 << 10,
        }
    }
}

/// What validation learnt of a message, for routing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// `created_at`, Unix milliseconds.
    pub created_ms: i64,
    /// `expires_at`, Unix milliseconds, if any.
    pub expires_ms: Option<i64>,
    /// The priority (the default applied).
    pub priority: Priority,
    /// The delivery mode (the default applied).
    pub delivery_mode: DeliveryMode,
}

/// Checks `e` as sent by `sender` (the URN of its certificate), and sets
/// `routing.source_module` and `security.sender_identity` to it where
/// absent (M3). On success the message may be routed.
pub fn validate(e: &mut RcsEnvelope, sender: &Urn, limits: Limits) -> Result<Checked, Invalid> {
    let data_len = e.payload.as_ref().map_or(0, |p| p.data.len());
    if data_len > limits.max_payload {
        return Err(Invalid::new(
            EpsCode::TooLarge,
            "payload.data",
            format!(
                "{data_len} bytes; this Core takes at most {}",
                limits.max_payload
            ),
        ));
    }
    let overhead = e.encoded_len().saturating_sub(data_len);
    if overhead > limits.max_overhead {
        return Err(Invalid::new(
            EpsCode::TooLarge,
            "",
            format!(
                "the envelope without its payload is {overhead} bytes; this Core takes at most {}",
                limits.max_overhead
            ),
        ));
    }
    let checked = metadata(e)?;
    routing(e, sender)?;
    payload(e)?;
    qos_and_security(e, sender)?;
    observability(e)?;
    Ok(checked)
}

fn missing(field: &str) -> Invalid {
    Invalid::new(EpsCode::MissingField, field, "is required")
}

fn invalid(field: &str, detail: impl Into<String>) -> Invalid {
    Invalid::new(EpsCode::InvalidField, field, detail)
}

fn metadata(e: &RcsEnvelope) -> Result<Checked, Invalid> {
    let m = e
        .message_metadata
        .as_ref()
        .ok_or_else(|| missing("message_metadata"))?;
    match m.version.as_str() {
        "" => return Err(missing("message_metadata.version")),
        RCS_VERSION => {}
        other => {
            return Err(Invalid::new(
                EpsCode::UnsupportedVersion,
                "message_metadata.version",
                format!("{other:?}: this Core speaks RCS {RCS_VERSION}"),
            ));
        }
    }
    if m.message_id.is_empty() {
        return Err(missing("message_metadata.message_id"));
    }
    for (field, id) in [
        ("message_metadata.message_id", &m.message_id),
        ("message_metadata.correlation_id", &m.correlation_id),
        ("message_metadata.parent_message_id", &m.parent_message_id),
    ] {
        if !id.is_empty() && !is_uuid_v4(id) {
            return Err(invalid(field, format!("{id:.64?} is not a UUID v4")));
        }
    }
    if m.created_at.is_empty() {
        return Err(missing("message_metadata.created_at"));
    }
    let created_ms = parse_utc_ms(&m.created_at)
        .map_err(|why| invalid("message_metadata.created_at", why.to_string()))?;
    let expires_ms = if m.expires_at.is_empty() {
        None
    } else {
        Some(
            parse_utc_ms(&m.expires_at)
                .map_err(|why| invalid("message_metadata.expires_at", why.to_string()))?,
        )
    };
    let priority = match m.priority {
        0 => Priority::Normal,
        n => Priority::try_from(n).ok().ok_or_else(|| {
            invalid(
                "message_metadata.priority",
                format!("{n} is not a known value"),
            )
        })?,
    };
    let delivery_mode = match m.delivery_mode {
        0 => DeliveryMode::AtLeastOnce,
        n => DeliveryMode::try_from(n).ok().ok_or_else(|| {
            invalid(
                "message_metadata.delivery_mode",
                format!("{n} is not a known value"),
            )
        })?,
    };
    Ok(Checked {
        created_ms,
        expires_ms,
        priority,
        delivery_mode,
    })
}

/// A new random UUID v4 (lower-case hex, 8-4-4-4-12), for a
/// `message_id` or an EPS `error_id`.
pub fn new_uuid_v4() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    // The system's random source does not fail on the platforms we build
    // for; were it ever to, the id is still unique enough to name one
    // message within its de-duplication window only by chance, so fail
    // loudly instead.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .unwrap_or_else(|_| panic!("the system's random source failed"));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::hex::lower(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Whether `s` is a UUID of version 4, RFC 9562 variant, in the 8-4-4-4-12
/// hex form (either case).
pub fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B')
}

/// Whether `s` is an event type: `[A-Z][A-Z0-9_]*`, at most [`MAX_NAME`].
pub fn is_event_type(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b[0].is_ascii_uppercase()
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// Whether `s` is a short printable name: 1 to [`MAX_NAME`] bytes, no
/// control characters.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control)
}

fn routing(e: &mut RcsEnvelope, sender: &Urn) -> Result<(), Invalid> {
    let r = e.routing.as_mut().ok_or_else(|| missing("routing"))?;
    if r.event_type.is_empty() {
        return Err(missing("routing.event_type"));
    }
    if !is_event_type(&r.event_type) {
        return Err(invalid(
            "routing.event_type",
            format!(
                "{:.64?} is not UPPER_SNAKE_CASE ([A-Z][A-Z0-9_]*, at most {MAX_NAME})",
                r.event_type
            ),
        ));
    }
    if !r.event_category.is_empty() && !is_name(&r.event_category) {
        return Err(invalid(
            "routing.event_category",
            format!("at most {MAX_NAME} bytes, no control characters"),
        ));
    }
    if r.routing_tags.len() > MAX_TAGS || !r.routing_tags.iter().all(|t| is_name(t)) {
        return Err(invalid(
            "routing.routing_tags",
            format!("at most {MAX_TAGS} tags of 1 to {MAX_NAME} bytes, no control characters"),
        ));
    }
    if let Some(reply) = &r.reply_to {
        if !reply.event_type.is_empty() && !is_event_type(&reply.event_type) {
            return Err(invalid(
                "routing.reply_to.event_type",
                "is not UPPER_SNAKE_CASE",
            ));
        }
        if let Some(t) = reply.timeout_ms
            && !(1..=MAX_DELAY_MS).contains(&t)
        {
            return Err(invalid(
                "routing.reply_to.timeout_ms",
                format!("{t}: from 1 to {MAX_DELAY_MS}"),
            ));
        }
    }
    same_identity(&mut r.source_module, sender, "routing.source_module")
}

/// Sets `claimed` to `sender` when empty; otherwise it must name `sender`.
fn same_identity(claimed: &mut String, sender: &Urn, field: &str) -> Result<(), Invalid> {
    if claimed.is_empty() {
        *claimed = sender.to_string();
        return Ok(());
    }
    if claimed != sender.as_str() {
        return Err(Invalid::new(
            EpsCode::IdentityMismatch,
            field,
            format!("names {claimed:.128?}, but the sender's certificate is {sender}"),
        ));
    }
    Ok(())
}

fn payload(e: &RcsEnvelope) -> Result<(), Invalid> {
    let p = e.payload.as_ref().ok_or_else(|| missing("payload"))?;
    match p.schema_version.as_str() {
        "" => return Err(missing("payload.schema_version")),
        SCHEMA_VERSION => {}
        other => {
            return Err(Invalid::new(
                EpsCode::UnsupportedVersion,
                "payload.schema_version",
                format!("{other:?}: this Core speaks {SCHEMA_VERSION}"),
            ));
        }
    }
    if p.content_type.is_empty() {
        return Err(missing("payload.content_type"));
    }
    if !is_mime(&p.content_type) {
        return Err(invalid(
            "payload.content_type",
            "is not a MIME type (type/subtype)",
        ));
    }
    let json = is_json(&p.content_type);
    let base64 = p.encoding == BASE64;
    if !(p.encoding.is_empty() || p.encoding.eq_ignore_ascii_case("utf-8") || (base64 && !json)) {
        return Err(invalid(
            "payload.encoding",
            format!(
                "{:.64?}: \"utf-8\", or \"base64\" for a content type other than JSON",
                p.encoding
            ),
        ));
    }
    if json && serde_json::from_slice::<serde::de::IgnoredAny>(&p.data).is_err() {
        return Err(invalid(
            "payload.data",
            "is not JSON, but the content type is",
        ));
    }
    if !json && !base64 && std::str::from_utf8(&p.data).is_err() {
        return Err(invalid(
            "payload.data",
            "is not UTF-8 text (use the encoding \"base64\")",
        ));
    }
    if p.size_bytes != p.data.len() as u64 {
        return Err(Invalid::new(
            EpsCode::SizeMismatch,
            "payload.size_bytes",
            format!(
                "says {}, but the payload is {} bytes (PROTOCOL.md §12.3)",
                p.size_bytes,
                p.data.len()
            ),
        ));
    }
    if !p.checksum.is_empty() {
        check_sum(&p.checksum, &p.data)?;
    }
    Ok(())
}

/// The `checksum` of `data`: its SHA-256 in lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    crate::hex::lower(digest.as_ref())
}

/// `checksum`: 64 hex digits, the SHA-256 of `data`.
fn check_sum(checksum: &str, data: &[u8]) -> Result<(), Invalid> {
    if checksum.len() != 64 || !checksum.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            "payload.checksum",
            "is not 64 hex digits (SHA-256)",
        ));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    if !crate::hex::spells(checksum, digest.as_ref()) {
        return Err(Invalid::new(
            EpsCode::ChecksumMismatch,
            "payload.checksum",
            format!(
                "the payload's SHA-256 is {}",
                crate::hex::lower(digest.as_ref())
            ),
        ));
    }
    Ok(())
}

fn qos_and_security(e: &mut RcsEnvelope, sender: &Urn) -> Result<(), Invalid> {
    if let Some(q) = &e.quality_of_service {
        if q.max_retries.is_some_and(|n| n > MAX_RETRIES) {
            return Err(invalid(
                "quality_of_service.max_retries",
                format!("at most {MAX_RETRIES}"),
            ));
        }
        if q.retry_delay_ms.is_some_and(|d| d > MAX_DELAY_MS) {
            return Err(invalid(
                "quality_of_service.retry_delay_ms",
                format!("at most {MAX_DELAY_MS}"),
            ));
        }
    }
    let s = e.security.get_or_insert_with(Default::default);
    if s.signature.len() > MAX_OPAQUE {
        return Err(invalid(
            "security.signature",
            format!("at most {MAX_OPAQUE} bytes"),
        ));
    }
    if s.encryption_key_id.len() > MAX_OPAQUE {
        return Err(invalid(
            "security.encryption_key_id",
            format!("at most {MAX_OPAQUE} bytes"),
        ));
    }
    if s.access_level != 0 && access_level::word(s.access_level).is_none() {
        return Err(invalid(
            "security.access_level",
            format!("{} is not a known value", s.access_level),
        ));
    }
    same_identity(&mut s.sender_identity, sender, "security.sender_identity")
}

fn observability(e: &RcsEnvelope) -> Result<(), Invalid> {
    if let Some(o) = &e.observability {
        for (field, v) in [
            ("observability.trace_id", &o.trace_id),
            ("observability.span_id", &o.span_id),
        ] {
            if !v.is_empty() && !is_name(v) {
                return Err(invalid(
                    field,
                    format!("at most {MAX_NAME} bytes, no control characters"),
                ));
            }
        }
    }
    Ok(())
}
