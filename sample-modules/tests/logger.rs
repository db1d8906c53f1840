//! The logger sample's own parts: its contract, and what it keeps. Its
//! receiving through a real Core's mediator is tested end to end
//! (`tests/e2e/messages.rs`).

// Tests: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anima_module_sdk::{InitMode, ModuleType};
use anima_protocol::pb::{Delivery, MessageMetadata, Priority, RcsEnvelope};
use anima_sample_modules::logger::{self, KEPT, Log};

fn delivery(n: usize, priority: Priority) -> Delivery {
    Delivery {
        delivery: n as u64,
        attempt: 1,
        traceparent: String::new(),
        envelope: Some(RcsEnvelope {
            message_metadata: Some(MessageMetadata {
                message_id: format!("m{n}"),
                priority: priority as i32,
                ..MessageMetadata::default()
            }),
            ..RcsEnvelope::default()
        }),
    }
}

#[test]
fn the_contract_is_a_core_started_type2_module() {
    let contract = logger::contract();
    assert_eq!(contract.urn.to_string(), "urn:anima:module:logger");
    assert_eq!(
        contract.module_type,
        ModuleType::ResidentPrivate(InitMode::CoreStarted)
    );
}

#[test]
fn it_keeps_the_latest_messages_oldest_first() {
    let log = Log::default();
    for n in 0..KEPT + 3 {
        log.keep(&delivery(n, Priority::High));
    }
    let kept = log.recent();
    assert_eq!(kept.len(), KEPT);
    assert_eq!(kept[0].message_id, "m3");
    assert_eq!(kept[KEPT - 1].message_id, format!("m{}", KEPT + 2));
    assert!(kept.iter().all(|m| m.priority == "high"));
    log.keep(&delivery(0, Priority::Unspecified));
    assert_eq!(log.recent()[KEPT - 1].priority, "normal");
}
