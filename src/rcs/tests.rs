//! The envelope's rules (M1–M3) on the specification's own examples
//! (`docs/rcs-examples/`, corrected as PROTOCOL.md §12.6 says) and on
//! messages broken one field at a time.

use serde_json::{Value, json};

use super::*;
use crate::Urn;
use crate::pb::{DeliveryMode, Priority, RcsEnvelope};

const COMPLETE: &str = include_str!("../../docs/rcs-examples/complete.json");
const MINIMAL: &str = include_str!("../../docs/rcs-examples/minimal.json");
const LOGGING: &str = include_str!("../../docs/rcs-examples/logging.json");

fn urn(s: &str) -> Urn {
    s.parse().expect("urn")
}

fn sender_of(example: &str) -> Urn {
    let v: Value = serde_json::from_str(example).expect("json");
    urn(v["routing"]["source_module"]
        .as_str()
        .expect("source_module"))
}

/// The three examples: read, validated, written back, equal to what was
/// read (members in any order), and read again to the same envelope.
#[test]
fn m1_the_specifications_examples_round_trip() {
    for example in [COMPLETE, MINIMAL, LOGGING] {
        let mut e = from_json(example.as_bytes()).expect("read");
        let before = e.clone();
        validate(&mut e, &sender_of(example), Limits::default()).expect("valid");
        let written = to_json(&e).expect("written");
        let mut original: Value = serde_json::from_str(example).expect("json");
        // Validation adds security.sender_identity (M3) where it is absent.
        if before
            .security
            .as_ref()
            .is_none_or(|s| s.sender_identity.is_empty())
        {
            original["security"]["sender_identity"] = original["routing"]["source_module"].clone();
        }
        assert_eq!(written, original);
        let again = from_value(&written).expect("read again");
        assert_eq!(again, e);
    }
}

#[test]
fn m2_size_bytes_is_the_rfc8785_form_of_json_data() {
    let e = from_json(COMPLETE.as_bytes()).expect("read");
    let p = e.payload.expect("payload");
    assert_eq!(
        p.data,
        br#"{"processing_time_ms":3400,"records_processed":1250,"status":"completed"}"#
    );
    assert_eq!(p.size_bytes, 73);
    // White space and member order in the JSON form do not change it.
    let mut v: Value = serde_json::from_str(COMPLETE).expect("json");
    v["payload"]["data"] = serde_json::from_str(
        "{ \"status\" : \"completed\",\n \"records_processed\": 1250, \"processing_time_ms\": 3400 }",
    )
    .expect("json");
    assert_eq!(
        from_value(&v).expect("read").payload.expect("payload").data,
        p.data
    );
}

/// The seed's sizes (256, 25, 189) are illustrative: none matches its
/// payload, and each is refused as an integrity error naming the field.
#[test]
fn m2_the_seeds_illustrative_sizes_are_integrity_errors() {
    for (example, seed_size) in [(COMPLETE, 256), (MINIMAL, 25), (LOGGING, 189)] {
        let mut v: Value = serde_json::from_str(example).expect("json");
        v["payload"]["size_bytes"] = json!(seed_size);
        let err = check(&v).expect_err("refused");
        assert_eq!(
            (err.code, err.field.as_str()),
            (EpsCode::SizeMismatch, "payload.size_bytes")
        );
        assert_eq!(err.code.category(), crate::pb::EpsCategory::Integrity);
    }
}

#[test]
fn m2_checksum_is_verified() {
    let mut v: Value = serde_json::from_str(COMPLETE).expect("json");
    // The seed's checksum is the SHA-256 of nothing.
    v["payload"]["checksum"] =
        json!("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    let err = check(&v).expect_err("refused");
    assert_eq!(err.code, EpsCode::ChecksumMismatch);
    v["payload"]["checksum"] = json!("not hex");
    assert_eq!(check(&v).expect_err("refused").code, EpsCode::InvalidField);
    v["payload"]["checksum"] =
        json!("5C2B82C7495A9A0404102791864897A639B3F8A616A540C24D44A6552DB8B96E");
    assert!(check(&v).is_ok(), "either case");
}

#[test]
fn m2_the_size_cap_applies() {
    let v: Value = serde_json::from_str(MINIMAL).expect("json");
    let mut e = from_value(&v).expect("read");
    let limits = Limits {
        max_payload: 19,
        ..Limits::default()
    };
    let err = validate(&mut e, &sender_of(MINIMAL), limits).expect_err("too large");
    assert_eq!(
        (err.code, err.field.as_str()),
        (EpsCode::TooLarge, "payload.data")
    );
    let limits = Limits {
        max_overhead: 100,
        ..Limits::default()
    };
    assert_eq!(
        validate(&mut e, &sender_of(MINIMAL), limits)
            .expect_err("too large")
            .code,
        EpsCode::TooLarge
    );
}

/// Reads and validates `v` as sent by its `source_module`.
fn check(v: &Value) -> Result<Checked, Invalid> {
    let sender = urn(v["routing"]["source_module"]
        .as_str()
        .unwrap_or("urn:anima:module:x"));
    let mut e = from_value(v)?;
    validate(&mut e, &sender, Limits::default())
}

/// Each required field, removed, is refused naming it.
#[test]
fn m1_required_fields_are_named_when_missing() {
    for (section, field) in [
        ("message_metadata", "version"),
        ("message_metadata", "message_id"),
        ("message_metadata", "created_at"),
        ("routing", "event_type"),
        ("routing", "source_module"),
        ("payload", "schema_version"),
        ("payload", "content_type"),
        ("payload", "size_bytes"),
        ("payload", "data"),
    ] {
        let mut v: Value = serde_json::from_str(MINIMAL).expect("json");
        v[section].as_object_mut().expect("object").remove(field);
        let err = from_value(&v).expect_err("refused");
        assert_eq!(err.code, EpsCode::MissingField, "{section}.{field}: {err}");
        assert_eq!(err.field, format!("{section}.{field}"));
    }
    for section in ["message_metadata", "routing", "payload"] {
        let mut v: Value = serde_json::from_str(MINIMAL).expect("json");
        v.as_object_mut().expect("object").remove(section);
        assert_eq!(from_value(&v).expect_err("refused").field, section);
    }
}

/// A field with a wrong value is refused naming it, with its EPS code.
#[test]
fn m1_invalid_values_are_named() {
    let cases: &[(&str, &str, Value, EpsCode)] = &[
        (
            "message_metadata",
            "version",
            json!("2.0"),
            EpsCode::UnsupportedVersion,
        ),
        (
            "message_metadata",
            "message_id",
            json!("550e8400-e29b-11d4-a716-446655440000"),
            EpsCode::InvalidField,
        ),
        (
            "message_metadata",
            "message_id",
            json!("workflow-abc-123"),
            EpsCode::InvalidField,
        ),
        (
            "message_metadata",
            "correlation_id",
            json!("workflow-abc-123"),
            EpsCode::InvalidField,
        ),
        (
            "message_metadata",
            "parent_message_id",
            json!(42),
            EpsCode::InvalidField,
        ),
        (
            "message_metadata",
            "created_at",
            json!("2025-07-31T17:47:53.123+02:00"),
            EpsCode::InvalidField,
        ),
        (
            "message_metadata",
            "expires_at",
            json!("tomorrow"),
            EpsCode::InvalidField,
        ),
        (
            "message_metadata",
            "priority",
            json!("urgent"),
            EpsCode::InvalidField,
        ),
        (
            "message_metadata",
            "delivery_mode",
            json!("twice"),
            EpsCode::InvalidField,
        ),
        (
            "routing",
            "event_type",
            json!("system heartbeat"),
            EpsCode::InvalidField,
        ),
        (
            "routing",
            "routing_tags",
            json!(["ok", ""]),
            EpsCode::InvalidField,
        ),
        (
            "routing",
            "reply_to",
            json!({"timeout_ms": 0}),
            EpsCode::InvalidField,
        ),
        (
            "routing",
            "source_module",
            json!("urn:anima:module:someone-else"),
            EpsCode::IdentityMismatch,
        ),
        (
            "routing",
            "event_category",
            json!(""),
            EpsCode::InvalidField,
        ),
        (
            "payload",
            "schema_version",
            json!("rcs_v1"),
            EpsCode::UnsupportedVersion,
        ),
        (
            "payload",
            "content_type",
            json!("json"),
            EpsCode::InvalidField,
        ),
        (
            "payload",
            "encoding",
            json!("latin-1"),
            EpsCode::InvalidField,
        ),
        ("payload", "size_bytes", json!(-1), EpsCode::InvalidField),
        (
            "quality_of_service",
            "max_retries",
            json!(101),
            EpsCode::InvalidField,
        ),
        (
            "quality_of_service",
            "dead_letter_queue",
            json!("yes"),
            EpsCode::InvalidField,
        ),
        (
            "security",
            "access_level",
            json!("secret"),
            EpsCode::InvalidField,
        ),
        (
            "security",
            "sender_identity",
            json!("urn:anima:module:someone-else"),
            EpsCode::IdentityMismatch,
        ),
    ];
    for (section, field, value, code) in cases {
        let mut v: Value = serde_json::from_str(MINIMAL).expect("json");
        let sender = v["routing"]["source_module"].clone();
        if v.get(*section).is_none() {
            v[*section] = json!({});
        }
        v[*section][*field] = value.clone();
        let sender = urn(sender.as_str().expect("urn"));
        let err = from_value(&v)
            .and_then(|mut e| validate(&mut e, &sender, Limits::default()))
            .expect_err(&format!("{section}.{field} = {value}"));
        assert_eq!(err.code, *code, "{section}.{field} = {value}: {err}");
        assert!(
            err.field.starts_with(&format!("{section}.{field}")),
            "{section}.{field} = {value}: named {:?}",
            err.field
        );
    }
}

/// M3: the sender's URN is set where the message leaves it out.
#[test]
fn m3_source_and_sender_come_from_the_certificate() {
    let sender = urn("urn:anima:module:monitor");
    let mut e = from_json(MINIMAL.as_bytes()).expect("read");
    e.routing.as_mut().expect("routing").source_module.clear();
    e.security = None;
    validate(&mut e, &sender, Limits::default()).expect("valid");
    assert_eq!(e.routing.expect("routing").source_module, sender.as_str());
    assert_eq!(
        e.security.expect("security").sender_identity,
        sender.as_str()
    );
}

#[test]
fn m1_defaults_and_what_validation_learns() {
    let mut e = from_json(MINIMAL.as_bytes()).expect("read");
    let checked = validate(&mut e, &sender_of(MINIMAL), Limits::default()).expect("valid");
    assert_eq!(checked.priority, Priority::Normal);
    assert_eq!(checked.delivery_mode, DeliveryMode::AtLeastOnce);
    assert_eq!(checked.created_ms, 1_753_984_073_123);
    assert_eq!(checked.expires_ms, None);
    let mut e = from_json(COMPLETE.as_bytes()).expect("read");
    let checked = validate(&mut e, &sender_of(COMPLETE), Limits::default()).expect("valid");
    assert_eq!(checked.expires_ms, Some(1_753_984_373_123));
}

/// The protobuf form is checked as strictly: numbers out of the enums'
/// ranges, data that does not match its content type.
#[test]
fn m1_the_protobuf_form_is_checked_too() {
    let sender = sender_of(MINIMAL);
    let base = from_json(MINIMAL.as_bytes()).expect("read");
    type Break = fn(&mut RcsEnvelope);
    let broken: [(&str, Break); 5] = [
        ("message_metadata.priority", |e| {
            e.message_metadata.as_mut().expect("m").priority = 9;
        }),
        ("message_metadata.delivery_mode", |e| {
            e.message_metadata.as_mut().expect("m").delivery_mode = -1;
        }),
        ("payload.data", |e| {
            let p = e.payload.as_mut().expect("p");
            p.data = b"{not json".to_vec();
            p.size_bytes = 9;
        }),
        ("payload", |e| e.payload = None),
        ("security.access_level", |e| {
            e.security.get_or_insert_with(Default::default).access_level = 7;
        }),
    ];
    for (field, breaks) in broken {
        let mut e = base.clone();
        breaks(&mut e);
        let err = validate(&mut e, &sender, Limits::default()).expect_err(field);
        assert_eq!(err.field, field, "{err}");
    }
}

/// Members the specification does not define are kept, in any section.
#[test]
fn m1_unknown_members_are_kept() {
    let mut v: Value = serde_json::from_str(MINIMAL).expect("json");
    v["routing"]["x_region"] = json!("eu");
    v["x_top"] = json!({"b": 1, "a": [true]});
    let e = from_value(&v).expect("read");
    assert_eq!(
        e.routing.as_ref().expect("routing").extensions,
        r#"{"x_region":"eu"}"#
    );
    assert_eq!(e.extensions, r#"{"x_top":{"a":[true],"b":1}}"#);
    assert_eq!(to_json(&e).expect("written"), v);
}

/// Payloads other than JSON: text as a string, bytes as base64.
#[test]
fn m2_text_and_binary_payloads() {
    let mut v: Value = serde_json::from_str(MINIMAL).expect("json");
    v["payload"]["content_type"] = json!("text/plain; charset=utf-8");
    v["payload"]["data"] = json!("héllo");
    v["payload"]["size_bytes"] = json!(6);
    let e = from_value(&v).expect("read");
    assert_eq!(e.payload.as_ref().expect("p").data, "héllo".as_bytes());
    assert!(check(&v).is_ok());
    assert_eq!(to_json(&e).expect("written"), v);
    v["payload"]["content_type"] = json!("application/octet-stream");
    v["payload"]["encoding"] = json!("base64");
    v["payload"]["data"] = json!("AAEC/w==");
    v["payload"]["size_bytes"] = json!(4);
    let e = from_value(&v).expect("read");
    assert_eq!(e.payload.as_ref().expect("p").data, [0, 1, 2, 255]);
    assert!(check(&v).is_ok());
    assert_eq!(to_json(&e).expect("written"), v);
    v["payload"]["data"] = json!({"not": "a string"});
    assert_eq!(from_value(&v).expect_err("refused").field, "payload.data");
}

#[test]
fn m1_not_json_at_all() {
    for text in [&b"{"[..], b"[]", b"\"x\"", b"\xff"] {
        assert_eq!(
            from_json(text).expect_err("refused").code,
            EpsCode::InvalidJson
        );
    }
}

#[test]
fn m1_new_ids_are_uuid_v4_and_differ() {
    let a = new_uuid_v4();
    assert!(is_uuid_v4(&a), "{a}");
    assert_ne!(a, new_uuid_v4());
}

#[test]
fn m1_uuid_v4_and_event_types() {
    assert!(is_uuid_v4("550e8400-e29b-41d4-a716-446655440000"));
    assert!(is_uuid_v4("550E8400-E29B-41D4-B716-446655440000"));
    for bad in [
        "550e8400-e29b-11d4-a716-446655440000",
        "550e8400-e29b-41d4-c716-446655440000",
        "550e8400e29b41d4a716446655440000",
        "550e8400-e29b-41d4-a716-44665544000g",
    ] {
        assert!(!is_uuid_v4(bad), "{bad}");
    }
    assert!(is_event_type("EXECUTE_SCRIPT"));
    assert!(is_event_type("A1"));
    for bad in ["", "log_message", "_X", "1X", &"A".repeat(129)] {
        assert!(!is_event_type(bad), "{bad}");
    }
}

#[test]
fn m10_eps_codes_have_categories_and_status_codes() {
    let err = Invalid::new(
        EpsCode::IdentityMismatch,
        "routing.source_module",
        "names another",
    );
    let eps = err.to_eps(
        "9b2d7a4e-3c1f-4a5b-8c6d-7e8f9a0b1c2d".into(),
        "urn:anima:core:main",
        format_utc_ms(0),
        "550e8400-e29b-41d4-a716-446655440000",
        "",
    );
    assert_eq!(eps.code, "IDENTITY_MISMATCH");
    assert_eq!(eps.category, crate::pb::EpsCategory::Permission as i32);
    assert_eq!(eps.field, "routing.source_module");
    // Sending as another is what the configuration forbids: not recoverable.
    assert!(!eps.recoverable);
    assert_eq!(eps.severity, crate::pb::EpsSeverity::Error as i32);
    assert!(EpsCode::MissingField.recoverable());
    assert!(EpsCode::StoreFull.recoverable());
    assert_eq!(
        EpsCode::NoSubscriber.severity(),
        crate::pb::EpsSeverity::Warning
    );
    assert_eq!(
        EpsCode::TooLarge.grpc_code(),
        tonic::Code::ResourceExhausted
    );
    assert_eq!(
        EpsCode::SizeMismatch.grpc_code(),
        tonic::Code::InvalidArgument
    );
    let words: Vec<&str> = EpsCode::ALL.iter().map(|c| c.as_str()).collect();
    let mut unique = words.clone();
    unique.dedup();
    assert_eq!(unique.len(), words.len());
}
