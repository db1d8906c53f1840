//! The seed's memory check workflow (RUNE) in the embedded default.

use anima_sample_modules::pb::CheckMemoryRequest;
use anima_sample_modules::pb::orchestrator_client::OrchestratorClient;

use super::gateway::user;
use super::messages::{TRACEPARENT, logged_until};
use super::serve::CoreProcess;

/// The seed's memory check workflow in the embedded default: a user's call
/// to the orchestrator becomes an `EXECUTE_SCRIPT` request through the
/// mediator, the script executor's log lines and `SCRIPT_EXECUTED` reply,
/// and the orchestrator's log line — each reaching the logger, all with one
/// correlation id and the trace of the user's call.
#[tokio::test]
async fn m13_the_memory_check_workflow_runs_through_the_mediator_with_one_correlation_and_trace() {
    let core = CoreProcess::start(None).await;
    for name in ["logger", "scripts", "orchestrator"] {
        core.wait_leased(name).await;
    }
    let conn = user(&core, "user-dev").await;
    let mut call = tonic::Request::new(CheckMemoryRequest { timeout_ms: 10_000 });
    call.metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let checked = OrchestratorClient::new(conn.channel())
        .check_memory(call)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.executor, "urn:anima:module:scripts");
    assert_eq!(checked.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    let result: serde_json::Value = serde_json::from_str(&checked.result).unwrap();
    assert_eq!(result["script"], "memory_check", "{result}");
    assert!(result["mem_total_kb"].as_u64().unwrap() > 0, "{result}");
    let kept = logged_until(&core, |k| k.len() >= 3).await;
    assert_eq!(kept.len(), 3, "{kept:#?}");
    for line in &kept {
        assert_eq!(line.event_type, "LOG_MESSAGE");
        assert_eq!(line.correlation_id, checked.correlation_id, "{line:?}");
        assert_eq!(line.trace_id, checked.trace_id, "{line:?}");
    }
    let mut senders: Vec<&str> = kept.iter().map(|l| l.source_module.as_str()).collect();
    senders.sort_unstable();
    assert_eq!(
        senders,
        [
            "urn:anima:module:orchestrator",
            "urn:anima:module:scripts",
            "urn:anima:module:scripts"
        ]
    );
    assert!(
        String::from_utf8_lossy(&kept[0].data).contains("starting"),
        "{kept:#?}"
    );

    // The README's walkthrough: the same request from a terminal, with the
    // file it names.
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sample-modules/orchestrator/check-memory.json");
    let out = core.cli_ok(&["request", file.to_str().unwrap()]).await;
    assert!(
        out.starts_with("reply ")
            && out.contains("(SCRIPT_EXECUTED) from urn:anima:module:scripts"),
        "{out}"
    );
    assert!(out.contains("\"mem_total_kb\""), "{out}");
    logged_until(&core, |k| k.len() >= 5).await;
}
