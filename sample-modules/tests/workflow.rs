//! The memory check workflow's samples, their own parts: their contracts.
//! The workflow itself runs end to end through a real Core's mediator in
//! `tests/e2e/messages.rs`.

// Tests: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anima_module_sdk::{InitMode, ModuleType};
use anima_sample_modules::{orchestrator, scripts};

#[test]
fn the_contracts_are_core_started_type2_modules() {
    for (contract, name, methods) in [
        (orchestrator::contract(), "orchestrator", 4),
        (scripts::contract(), "scripts", 3),
    ] {
        assert_eq!(contract.urn.to_string(), format!("urn:anima:module:{name}"));
        assert_eq!(
            contract.module_type,
            ModuleType::ResidentPrivate(InitMode::CoreStarted)
        );
        assert_eq!(contract.methods.len(), methods, "{name}");
    }
}
