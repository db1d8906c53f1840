//! EPS errors (PROTOCOL.md §12.5): the codes the Core answers a message
//! with, their category and severity, and the error envelope.

use crate::pb::{EpsCategory, EpsError, EpsSeverity};

/// What is wrong with a message, as the EPS `code` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EpsCode {
    /// The JSON form is not JSON, or not an object (M1).
    InvalidJson,
    /// A required field is absent (in the protobuf form: empty) (M1).
    MissingField,
    /// A field has the wrong type, format or value (M1).
    InvalidField,
    /// `version` or `schema_version` is one this Core does not speak (M1).
    UnsupportedVersion,
    /// `size_bytes` is not the payload's size (M2).
    SizeMismatch,
    /// `checksum` is not the payload's SHA-256 (M2).
    ChecksumMismatch,
    /// The payload or the envelope is larger than the Core takes (M2).
    TooLarge,
    /// `source_module` or `sender_identity` names another than the
    /// sender's certificate (M3).
    IdentityMismatch,
    /// No `[[permission]]` lets the sender publish this event type, or
    /// receive it (M5).
    NotPermitted,
    /// No module may receive this message: nothing was stored (M5).
    NoSubscriber,
    /// The message store is full: nothing was stored (M12).
    StoreFull,
    /// An `Ack` or `Nack` names no delivery outstanding on this stream, or
    /// the stream broke its order (`Open` first, and once).
    UnknownDelivery,
    /// No reply to a request came within its `timeout_ms` (M9).
    Timeout,
    /// A reply came after its request's timeout: discarded (M9).
    LateReply,
    /// A request names no `reply_to.event_type` (M9).
    NoReplyTo,
    /// The Core failed (its store could not be read or written).
    Internal,
}

crate::str_vocabulary! {
    /// The code as EPS writes it.
    pub fn EpsCode::as_str {
        InvalidJson => "INVALID_JSON",
        MissingField => "MISSING_FIELD",
        InvalidField => "INVALID_FIELD",
        UnsupportedVersion => "UNSUPPORTED_VERSION",
        SizeMismatch => "SIZE_MISMATCH",
        ChecksumMismatch => "CHECKSUM_MISMATCH",
        TooLarge => "TOO_LARGE",
        IdentityMismatch => "IDENTITY_MISMATCH",
        NotPermitted => "NOT_PERMITTED",
        NoSubscriber => "NO_SUBSCRIBER",
        StoreFull => "STORE_FULL",
        UnknownDelivery => "UNKNOWN_DELIVERY",
        Timeout => "TIMEOUT",
        LateReply => "LATE_REPLY",
        NoReplyTo => "NO_REPLY_TO",
        Internal => "INTERNAL",
    }
}

impl EpsCode {
    /// Every code, in PROTOCOL.md §12.5's order.
    pub const ALL: [EpsCode; 16] = [
        EpsCode::InvalidJson,
        EpsCode::MissingField,
        EpsCode::InvalidField,
        EpsCode::UnsupportedVersion,
        EpsCode::SizeMismatch,
        EpsCode::ChecksumMismatch,
        EpsCode::TooLarge,
        EpsCode::IdentityMismatch,
        EpsCode::NotPermitted,
        EpsCode::NoSubscriber,
        EpsCode::StoreFull,
        EpsCode::UnknownDelivery,
        EpsCode::Timeout,
        EpsCode::LateReply,
        EpsCode::NoReplyTo,
        EpsCode::Internal,
    ];

    /// The EPS category.
    pub fn category(self) -> EpsCategory {
        match self {
            EpsCode::InvalidJson
            | EpsCode::MissingField
            | EpsCode::InvalidField
            | EpsCode::UnsupportedVersion
            | EpsCode::UnknownDelivery
            | EpsCode::NoReplyTo => EpsCategory::Validation,
            EpsCode::Timeout | EpsCode::LateReply => EpsCategory::Timeout,
            EpsCode::SizeMismatch | EpsCode::ChecksumMismatch => EpsCategory::Integrity,
            EpsCode::TooLarge | EpsCode::StoreFull => EpsCategory::Resource,
            EpsCode::IdentityMismatch | EpsCode::NotPermitted => EpsCategory::Permission,
            EpsCode::NoSubscriber => EpsCategory::Routing,
            EpsCode::Internal => EpsCategory::Internal,
        }
    }

    /// Whether sending again can succeed: corrected (validation,
    /// integrity), or later (a full store, a Core failure, a subscriber yet
    /// to be configured). Not for what the configuration forbids.
    pub fn recoverable(self) -> bool {
        !matches!(
            self,
            EpsCode::IdentityMismatch
                | EpsCode::NotPermitted
                | EpsCode::TooLarge
                | EpsCode::LateReply
        )
    }

    /// How bad it is: a message with no subscriber is a warning; a Core
    /// failure critical; the rest errors.
    pub fn severity(self) -> EpsSeverity {
        match self {
            EpsCode::NoSubscriber | EpsCode::LateReply => EpsSeverity::Warning,
            EpsCode::Internal => EpsSeverity::Critical,
            _ => EpsSeverity::Error,
        }
    }

    /// The gRPC status code of a call refused with it.
    pub fn grpc_code(self) -> tonic::Code {
        match self.category() {
            EpsCategory::Permission => tonic::Code::PermissionDenied,
            EpsCategory::Resource => tonic::Code::ResourceExhausted,
            EpsCategory::Routing => tonic::Code::FailedPrecondition,
            EpsCategory::Internal => tonic::Code::Internal,
            EpsCategory::Timeout => tonic::Code::DeadlineExceeded,
            _ => tonic::Code::InvalidArgument,
        }
    }
}

/// A message refused before routing: the code, the offending field (a
/// JSON-form path such as `message_metadata.message_id`, empty when no one
/// field is to blame) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {}{detail}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct Invalid {
    /// The EPS code.
    pub code: EpsCode,
    /// The field's path in the JSON form.
    pub field: String,
    /// What is wrong, for people.
    pub detail: String,
}

impl Invalid {
    /// `code` at `field`.
    pub fn new(code: EpsCode, field: impl Into<String>, detail: impl Into<String>) -> Self {
        Invalid {
            code,
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// The EPS error for it: reported by `reporter` at `created_at` (RFC
    /// 3339), about the message `message_id` of workflow `correlation_id`
    /// (either empty when unknown); its severity and whether it is
    /// recoverable follow from the code.
    pub fn to_eps(
        &self,
        error_id: String,
        reporter: &str,
        created_at: String,
        message_id: &str,
        correlation_id: &str,
    ) -> EpsError {
        EpsError {
            error_id,
            code: self.code.as_str().to_owned(),
            category: self.code.category() as i32,
            severity: self.code.severity() as i32,
            message_id: message_id.to_owned(),
            correlation_id: correlation_id.to_owned(),
            recoverable: self.code.recoverable(),
            detail: self.detail.clone(),
            field: self.field.clone(),
            reporter: reporter.to_owned(),
            created_at,
        }
    }
}

/// An EPS error in its JSON form (PROTOCOL.md §13.8): every field of
/// `anima.v1.EpsError` under its own name, `category` and `severity` as
/// lower-case words (`validation`, `error` …).
pub fn eps_json(e: &EpsError) -> serde_json::Value {
    let word = |name: &str, prefix: &str| name.trim_start_matches(prefix).to_ascii_lowercase();
    let category = EpsCategory::try_from(e.category).unwrap_or(EpsCategory::Unspecified);
    let severity = EpsSeverity::try_from(e.severity).unwrap_or(EpsSeverity::Unspecified);
    serde_json::json!({
        "error_id": e.error_id,
        "code": e.code,
        "category": word(category.as_str_name(), "EPS_CATEGORY_"),
        "severity": word(severity.as_str_name(), "EPS_SEVERITY_"),
        "message_id": e.message_id,
        "correlation_id": e.correlation_id,
        "recoverable": e.recoverable,
        "detail": e.detail,
        "field": e.field,
        "reporter": e.reporter,
        "created_at": e.created_at,
    })
}
