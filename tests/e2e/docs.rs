//! The vocabularies the docs list, checked against the code's own lists: a
//! name added, renamed or dropped on one side fails here (as
//! `src/lease/vectors.rs` does for PROTOCOL.md's Appendix A).

use anima_core::audit::{Actor, AuditEvent};
use anima_core::events::EventKind;
use anima_protocol::launch::VARIABLES;
use anima_protocol::lease::Reason;

const README: &str = include_str!("../../README.md");
const PROTOCOL: &str = include_str!("../../PROTOCOL.md");

/// The rows (cells, backticks dropped) of the table whose first header cell
/// is `header`, in the section under the heading that starts with `heading`.
fn table(doc: &str, heading: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = doc.lines();
    let level = heading.bytes().take_while(|&b| b == b'#').count();
    lines
        .by_ref()
        .find(|l| l.starts_with(heading))
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let section: Vec<&str> = lines
        .take_while(|l| {
            let hashes = l.bytes().take_while(|&b| b == b'#').count();
            !(hashes > 0 && hashes <= level && l.as_bytes().get(hashes) == Some(&b' '))
        })
        .collect();
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().replace('`', ""))
            .collect()
    };
    let start = section
        .iter()
        .position(|l| l.starts_with('|') && cells(l).first().map(String::as_str) == Some(header))
        .unwrap_or_else(|| panic!("no table with header {header:?} under {heading:?}"));
    section[start + 2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .map(|l| cells(l))
        .collect()
}

fn first_column(rows: &[Vec<String>]) -> Vec<String> {
    rows.iter().map(|r| r[0].clone()).collect()
}

/// `PermissionDenied` → `PERMISSION_DENIED`, as PROTOCOL.md names codes.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[test]
fn readme_lists_exactly_the_event_kinds_the_core_emits() {
    let rows = table(README, "## Command reference", "kind");
    let code: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(first_column(&rows), code);
}

#[test]
fn protocol_md_lists_exactly_the_audit_events_and_actors() {
    let events = table(PROTOCOL, "## 7. Audit", "event");
    let code: Vec<&str> = AuditEvent::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(first_column(&events), code);
    let actors = table(PROTOCOL, "## 7. Audit", "actor");
    let code: Vec<&str> = Actor::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(first_column(&actors), code);
}

#[test]
fn audit_records_serialise_with_the_documented_names() {
    for event in AuditEvent::ALL {
        assert_eq!(
            serde_json::to_value(event).unwrap(),
            serde_json::json!(event.as_str())
        );
    }
    for actor in Actor::ALL {
        assert_eq!(
            serde_json::to_value(actor).unwrap(),
            serde_json::json!(actor.as_str())
        );
    }
}

#[test]
fn protocol_md_lists_exactly_the_reasons_with_their_codes() {
    let rows = table(PROTOCOL, "## 5. Reasons", "reason");
    let doc: Vec<(String, String)> = rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let code: Vec<(String, String)> = Reason::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), code_name(r.code())))
        .collect();
    assert_eq!(doc, code);
}

/// M10: PROTOCOL.md §12.5's EPS codes are exactly the code's, with their
/// categories and gRPC codes.
#[test]
fn m10_protocol_md_lists_exactly_the_eps_codes() {
    use anima_protocol::rcs::EpsCode;
    let rows = table(PROTOCOL, "### 12.5 EPS errors", "code");
    let doc: Vec<[String; 5]> = rows
        .iter()
        .map(|r| std::array::from_fn(|i| r[i].clone()))
        .collect();
    let code: Vec<[String; 5]> = EpsCode::ALL
        .iter()
        .map(|c| {
            let category = c
                .category()
                .as_str_name()
                .trim_start_matches("EPS_CATEGORY_");
            let severity = c
                .severity()
                .as_str_name()
                .trim_start_matches("EPS_SEVERITY_");
            [
                c.as_str().to_owned(),
                category.to_ascii_lowercase(),
                code_name(c.grpc_code()),
                if c.recoverable() { "yes" } else { "no" }.to_owned(),
                severity.to_ascii_lowercase(),
            ]
        })
        .collect();
    assert_eq!(doc, code);
}

#[test]
fn protocol_md_lists_every_launch_variable_the_code_sets() {
    let rows = table(PROTOCOL, "### 6.1 The launch protocol", "variable");
    let doc: Vec<String> = rows
        .iter()
        .flat_map(|r| r[0].split(", ").map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert_eq!(doc, VARIABLES);
}
