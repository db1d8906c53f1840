//! The envelope's JSON form, exactly as the specification writes it, to
//! and from the protobuf form (PROTOCOL.md §12.2). Reading names the
//! offending field of a malformed message; members the specification does
//! not define are kept, in each section's `extensions`.

use serde_json::{Map, Value};

use super::canonical::canonical;
use super::eps::{EpsCode, Invalid};
use super::words::{access_level, delivery_mode, priority};
use crate::pb::{
    MessageMetadata, Observability, Payload, QualityOfService, RcsEnvelope, ReplyTo, Routing,
    Security,
};

/// The `encoding` that carries a binary payload as base64 text in the JSON
/// form.
pub const BASE64: &str = "base64";

/// One JSON object being read: its path, for errors, and its members.
struct Section<'a> {
    path: String,
    members: &'a Map<String, Value>,
}

impl<'a> Section<'a> {
    fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn invalid(&self, name: &str, what: impl Into<String>) -> Invalid {
        Invalid::new(EpsCode::InvalidField, self.field(name), what)
    }

    /// A sub-object, if present.
    fn object(&self, name: &str) -> Result<Option<Section<'a>>, Invalid> {
        match self.members.get(name) {
            None => Ok(None),
            Some(Value::Object(members)) => Ok(Some(Section {
                path: self.field(name),
                members,
            })),
            Some(_) => Err(self.invalid(name, "must be an object")),
        }
    }

    /// A required sub-object.
    fn required_object(&self, name: &str) -> Result<Section<'a>, Invalid> {
        self.object(name)?
            .ok_or_else(|| Invalid::new(EpsCode::MissingField, self.field(name), "is required"))
    }

    /// A string; absent is empty, but present must not be.
    fn text(&self, name: &str) -> Result<String, Invalid> {
        match self.members.get(name) {
            None => Ok(String::new()),
            Some(Value::String(s)) if s.is_empty() => {
                Err(self.invalid(name, "must not be empty (omit it instead)"))
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.invalid(name, "must be a string")),
        }
    }

    /// A required string.
    fn required_text(&self, name: &str) -> Result<String, Invalid> {
        let s = self.text(name)?;
        if s.is_empty() {
            return Err(Invalid::new(
                EpsCode::MissingField,
                self.field(name),
                "is required",
            ));
        }
        Ok(s)
    }

    fn number(&self, name: &str) -> Result<Option<u64>, Invalid> {
        match self.members.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.invalid(name, "must be a whole number, 0 or more")),
            Some(_) => Err(self.invalid(name, "must be a number")),
        }
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, Invalid> {
        match self.members.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.invalid(name, "must be true or false")),
        }
    }

    fn texts(&self, name: &str) -> Result<Vec<String>, Invalid> {
        match self.members.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) if !s.is_empty() => Ok(s.clone()),
                    _ => Err(self.invalid(name, "must be an array of non-empty strings")),
                })
                .collect(),
            Some(_) => Err(self.invalid(name, "must be an array of strings")),
        }
    }

    /// A word of a vocabulary (`parse` gives its number, 0 for absent).
    fn word(&self, name: &str, parse: fn(&str) -> Option<i32>) -> Result<i32, Invalid> {
        let word = self.text(name)?;
        if word.is_empty() {
            return Ok(0);
        }
        parse(&word).ok_or_else(|| self.invalid(name, format!("{word:?} is not a known value")))
    }

    /// The members other than `known`, as an RFC 8785 JSON object (empty
    /// when there are none).
    fn extensions(&self, known: &[&str]) -> Result<String, Invalid> {
        let rest: Map<String, Value> = self
            .members
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if rest.is_empty() {
            return Ok(String::new());
        }
        let bytes = canonical(&Value::Object(rest))
            .map_err(|e| Invalid::new(EpsCode::InvalidField, self.path.clone(), e.to_string()))?;
        Ok(String::from_utf8(bytes).unwrap_or_default())
    }
}

/// Reads the JSON form. Types, presence and vocabularies are checked here
/// (with the offending field named); the rest of M1 and M2 is
/// [`super::validate`]'s.
pub fn from_json(text: &[u8]) -> Result<RcsEnvelope, Invalid> {
    let value: Value = serde_json::from_slice(text)
        .map_err(|e| Invalid::new(EpsCode::InvalidJson, "", format!("not JSON: {e}")))?;
    from_value(&value)
}

/// [`from_json`] from a parsed value.
pub fn from_value(value: &Value) -> Result<RcsEnvelope, Invalid> {
    let Value::Object(members) = value else {
        return Err(Invalid::new(
            EpsCode::InvalidJson,
            "",
            "the message must be a JSON object",
        ));
    };
    let top = Section {
        path: String::new(),
        members,
    };
    Ok(RcsEnvelope {
        message_metadata: Some(metadata(&top.required_object("message_metadata")?)?),
        routing: Some(routing(&top.required_object("routing")?)?),
        payload: Some(payload(&top.required_object("payload")?)?),
        quality_of_service: top
            .object("quality_of_service")?
            .map(|s| qos(&s))
            .transpose()?,
        security: top.object("security")?.map(|s| security(&s)).transpose()?,
        observability: top
            .object("observability")?
            .map(|s| observability(&s))
            .transpose()?,
        extensions: top.extensions(&[
            "message_metadata",
            "routing",
            "payload",
            "quality_of_service",
            "security",
            "observability",
        ])?,
    })
}

fn metadata(s: &Section<'_>) -> Result<MessageMetadata, Invalid> {
    Ok(MessageMetadata {
        version: s.required_text("version")?,
        message_id: s.required_text("message_id")?,
        correlation_id: s.text("correlation_id")?,
        parent_message_id: s.text("parent_message_id")?,
        created_at: s.required_text("created_at")?,
        expires_at: s.text("expires_at")?,
        priority: s.word("priority", priority::parse)?,
        delivery_mode: s.word("delivery_mode", delivery_mode::parse)?,
        extensions: s.extensions(&[
            "version",
            "message_id",
            "correlation_id",
            "parent_message_id",
            "created_at",
            "expires_at",
            "priority",
            "delivery_mode",
        ])?,
    })
}

fn routing(s: &Section<'_>) -> Result<Routing, Invalid> {
    let reply_to = match s.object("reply_to")? {
        None => None,
        Some(r) => Some(ReplyTo {
            event_type: r.text("event_type")?,
            timeout_ms: r.number("timeout_ms")?,
            extensions: r.extensions(&["event_type", "timeout_ms"])?,
        }),
    };
    Ok(Routing {
        event_type: s.required_text("event_type")?,
        event_category: s.text("event_category")?,
        source_module: s.required_text("source_module")?,
        routing_tags: s.texts("routing_tags")?,
        reply_to,
        extensions: s.extensions(&[
            "event_type",
            "event_category",
            "source_module",
            "routing_tags",
            "reply_to",
        ])?,
    })
}

fn payload(s: &Section<'_>) -> Result<Payload, Invalid> {
    let content_type = s.required_text("content_type")?;
    if !is_mime(&content_type) {
        return Err(s.invalid("content_type", "is not a MIME type (type/subtype)"));
    }
    let encoding = s.text("encoding")?;
    let data = match s.members.get("data") {
        None | Some(Value::Null) => {
            return Err(Invalid::new(
                EpsCode::MissingField,
                s.field("data"),
                "is required",
            ));
        }
        Some(v) => data_bytes(s, &content_type, &encoding, v)?,
    };
    let size_bytes = s
        .number("size_bytes")?
        .ok_or_else(|| Invalid::new(EpsCode::MissingField, s.field("size_bytes"), "is required"))?;
    Ok(Payload {
        schema_version: s.required_text("schema_version")?,
        content_type,
        encoding,
        size_bytes,
        checksum: s.text("checksum")?,
        data,
        extensions: s.extensions(&[
            "schema_version",
            "content_type",
            "encoding",
            "size_bytes",
            "checksum",
            "data",
        ])?,
    })
}

/// The payload's bytes (PROTOCOL.md §12.3): a JSON content type's `data` in
/// RFC 8785 form; any other's `data` is a string, its UTF-8 bytes, or with
/// `encoding` "base64" the bytes it encodes.
fn data_bytes(
    s: &Section<'_>,
    content_type: &str,
    encoding: &str,
    data: &Value,
) -> Result<Vec<u8>, Invalid> {
    if is_json(content_type) {
        if encoding == BASE64 {
            return Err(s.invalid(
                "encoding",
                "a JSON content type is carried as JSON, not base64",
            ));
        }
        return canonical(data).map_err(|e| s.invalid("data", e.to_string()));
    }
    let Value::String(text) = data else {
        return Err(s.invalid(
            "data",
            format!("must be a string for the content type {content_type:?} (only a JSON content type's data is JSON)"),
        ));
    };
    if encoding == BASE64 {
        use base64::Engine as _;
        return base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| s.invalid("data", format!("is not base64: {e}")));
    }
    Ok(text.as_bytes().to_vec())
}

/// Whether `content_type` is JSON: `application/json`, or any `+json`
/// suffix (RFC 6839), parameters aside, in any case.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.contains('/') && essence.ends_with("+json"))
}

/// Whether `s` looks like a MIME type: `type/subtype`, parameters aside,
/// of RFC 6838 token characters.
pub fn is_mime(s: &str) -> bool {
    let essence = s.split(';').next().unwrap_or("").trim();
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 127
            && t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
    };
    essence
        .split_once('/')
        .is_some_and(|(t, st)| token(t) && token(st))
        && s.len() <= 256
}

fn qos(s: &Section<'_>) -> Result<QualityOfService, Invalid> {
    let max_retries = match s.number("max_retries")? {
        None => None,
        Some(n) => Some(u32::try_from(n).map_err(|_| s.invalid("max_retries", "is too large"))?),
    };
    Ok(QualityOfService {
        max_retries,
        retry_delay_ms: s.number("retry_delay_ms")?,
        acknowledgment_required: s.flag("acknowledgment_required")?,
        dead_letter_queue: s.flag("dead_letter_queue")?,
        extensions: s.extensions(&[
            "max_retries",
            "retry_delay_ms",
            "acknowledgment_required",
            "dead_letter_queue",
        ])?,
    })
}

fn security(s: &Section<'_>) -> Result<Security, Invalid> {
    Ok(Security {
        sender_identity: s.text("sender_identity")?,
        signature: s.text("signature")?,
        encryption_key_id: s.text("encryption_key_id")?,
        access_level: s.word("access_level", access_level::parse)?,
        extensions: s.extensions(&[
            "sender_identity",
            "signature",
            "encryption_key_id",
            "access_level",
        ])?,
    })
}

fn observability(s: &Section<'_>) -> Result<Observability, Invalid> {
    Ok(Observability {
        trace_id: s.text("trace_id")?,
        span_id: s.text("span_id")?,
        extensions: s.extensions(&["trace_id", "span_id"])?,
    })
}

/// Builds JSON objects, leaving out what is empty or absent.
#[derive(Default)]
struct Out(Map<String, Value>);

impl Out {
    fn text(mut self, name: &str, value: &str) -> Self {
        if !value.is_empty() {
            self.0.insert(name.into(), Value::String(value.into()));
        }
        self
    }

    fn value(mut self, name: &str, value: Option<Value>) -> Self {
        if let Some(v) = value {
            self.0.insert(name.into(), v);
        }
        self
    }

    fn word(self, name: &str, word: Option<&'static str>) -> Self {
        self.text(name, word.unwrap_or(""))
    }

    /// Adds the members of `extensions` (a JSON object's text, or empty).
    fn extended(mut self, extensions: &str) -> Self {
        if let Ok(Value::Object(rest)) = serde_json::from_str(extensions) {
            for (k, v) in rest {
                self.0.entry(k).or_insert(v);
            }
        }
        self
    }

    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

/// Writes the JSON form. `None` only when a JSON content type's data is not
/// JSON, or a text payload's (no `base64` encoding) is not UTF-8: a message
/// that passed [`super::validate`] always has one.
pub fn to_json(e: &RcsEnvelope) -> Option<Value> {
    let m = e.message_metadata.clone().unwrap_or_default();
    let r = e.routing.clone().unwrap_or_default();
    let p = e.payload.clone().unwrap_or_default();
    let metadata = Out::default()
        .text("version", &m.version)
        .text("message_id", &m.message_id)
        .text("correlation_id", &m.correlation_id)
        .text("parent_message_id", &m.parent_message_id)
        .text("created_at", &m.created_at)
        .text("expires_at", &m.expires_at)
        .word("priority", priority::word(m.priority))
        .word("delivery_mode", delivery_mode::word(m.delivery_mode))
        .extended(&m.extensions);
    let reply_to = r.reply_to.as_ref().map(|rt| {
        Out::default()
            .text("event_type", &rt.event_type)
            .value("timeout_ms", rt.timeout_ms.map(Value::from))
            .extended(&rt.extensions)
            .done()
    });
    let tags = (!r.routing_tags.is_empty()).then(|| Value::from(r.routing_tags.clone()));
    let routing = Out::default()
        .text("event_type", &r.event_type)
        .text("event_category", &r.event_category)
        .text("source_module", &r.source_module)
        .value("routing_tags", tags)
        .value("reply_to", reply_to)
        .extended(&r.extensions);
    let envelope = Out::default()
        .value("message_metadata", Some(metadata.done()))
        .value("routing", Some(routing.done()))
        .value("payload", Some(payload_json(&p)?))
        .value(
            "quality_of_service",
            e.quality_of_service.as_ref().map(qos_json),
        )
        .value("security", e.security.as_ref().map(security_json))
        .value(
            "observability",
            e.observability.as_ref().map(|o| {
                Out::default()
                    .text("trace_id", &o.trace_id)
                    .text("span_id", &o.span_id)
                    .extended(&o.extensions)
                    .done()
            }),
        )
        .extended(&e.extensions);
    Some(envelope.done())
}

fn payload_json(p: &Payload) -> Option<Value> {
    let data = if is_json(&p.content_type) {
        serde_json::from_slice(&p.data).ok()?
    } else if p.encoding == BASE64 {
        use base64::Engine as _;
        Value::String(base64::engine::general_purpose::STANDARD.encode(&p.data))
    } else {
        Value::String(String::from_utf8(p.data.clone()).ok()?)
    };
    Some(
        Out::default()
            .text("schema_version", &p.schema_version)
            .text("content_type", &p.content_type)
            .text("encoding", &p.encoding)
            .value("size_bytes", Some(Value::from(p.size_bytes)))
            .text("checksum", &p.checksum)
            .value("data", Some(data))
            .extended(&p.extensions)
            .done(),
    )
}

fn qos_json(q: &QualityOfService) -> Value {
    Out::default()
        .value("max_retries", q.max_retries.map(Value::from))
        .value("retry_delay_ms", q.retry_delay_ms.map(Value::from))
        .value(
            "acknowledgment_required",
            q.acknowledgment_required.map(Value::from),
        )
        .value("dead_letter_queue", q.dead_letter_queue.map(Value::from))
        .extended(&q.extensions)
        .done()
}

fn security_json(s: &Security) -> Value {
    Out::default()
        .text("sender_identity", &s.sender_identity)
        .text("signature", &s.signature)
        .text("encryption_key_id", &s.encryption_key_id)
        .word("access_level", access_level::word(s.access_level))
        .extended(&s.extensions)
        .done()
}
