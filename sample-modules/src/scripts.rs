//! The script executor sample (Type II, resident private) of the memory
//! check workflow ([`crate::workflow`]): it receives `EXECUTE_SCRIPT`
//! requests through its Core's mediator while it holds a lease, logs that it
//! starts, runs the script, replies `SCRIPT_EXECUTED` with the result and
//! logs it — each message in the request's workflow.
//!
//! It runs only the scripts built into it — `memory_check`, which reads the
//! system's memory figures — never code a message carries.

use anima_module_sdk::messages::{PublishError, reply_to, run_subscriber};
use anima_module_sdk::{Contract, CoreClient, ModuleHandle};
use anima_protocol::pb::Delivery;
use serde_json::{Value, json};

use crate::workflow::{EXECUTE_SCRIPT, MEMORY_CHECK, log};

/// The most requests it lets the Core send ahead.
pub const WINDOW: u32 = 4;

/// The script executor's capability contract (`scripts/module.toml`).
pub fn contract() -> Contract {
    #[allow(clippy::expect_used)]
    // Invariant: the embedded module.toml is fixed at build time and a test
    // (tests/workflow.rs) parses it.
    Contract::from_toml(include_str!("../scripts/module.toml"))
        .expect("scripts/module.toml is a valid contract")
}

/// Runs the script a request names (its payload `{"script": NAME}`):
/// its result as JSON, an `"error"` member when it could not run.
pub fn run_script(request: &[u8]) -> Value {
    let name = serde_json::from_slice::<Value>(request)
        .ok()
        .and_then(|v| v.get("script")?.as_str().map(str::to_owned));
    match name.as_deref() {
        Some(MEMORY_CHECK) => memory_check(std::fs::read_to_string("/proc/meminfo")),
        Some(other) => json!({
            "script": other,
            "error": format!("no such script: this executor runs {MEMORY_CHECK} only"),
        }),
        None => json!({ "error": "the request names no script (payload {\"script\": NAME})" }),
    }
}

/// `memory_check`: the total and available memory, from `/proc/meminfo`.
fn memory_check(meminfo: std::io::Result<String>) -> Value {
    let text = match meminfo {
        Ok(text) => text,
        Err(e) => return json!({ "script": MEMORY_CHECK, "error": format!("/proc/meminfo: {e}") }),
    };
    let kb = |field: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    match (kb("MemTotal"), kb("MemAvailable")) {
        (Some(total), Some(available)) if total > 0 => json!({
            "script": MEMORY_CHECK,
            "mem_total_kb": total,
            "mem_available_kb": available,
            "available_percent": available * 100 / total,
        }),
        _ => {
            json!({ "script": MEMORY_CHECK, "error": "/proc/meminfo has no MemTotal and MemAvailable" })
        }
    }
}

/// Handles one `EXECUTE_SCRIPT` delivery: logs, runs, replies, logs. Only a
/// reply the Core could not take is an error (the request is delivered
/// again); one that came too late is not.
async fn handle(core: &CoreClient, delivery: Delivery) -> Result<(), String> {
    let request = delivery.envelope.ok_or("a delivery without its message")?;
    let data = request.payload.as_ref().map_or(&[][..], |p| &p.data[..]);
    log(
        core,
        &request,
        "script executor: starting the requested script",
    )
    .await;
    let result = run_script(data);
    let reply = reply_to(
        &request,
        "application/json",
        result.to_string().into_bytes(),
    )
    .ok_or("the request names no reply type")?;
    match core.publish(reply.clone()).await {
        Ok(_) => {}
        Err(PublishError::Refused(e)) if e.code == "LATE_REPLY" => {
            tracing::warn!("the requester stopped waiting: {}", e.detail);
        }
        Err(e) => return Err(format!("reply not taken: {e}")),
    }
    log(core, &reply, &format!("script executor: {result}")).await;
    Ok(())
}

/// Starts executing the requests that reach the module, for its life,
/// through the launching Core. Without one (`ANIMA_CORE_ENDPOINT` unset) it
/// logs why and executes nothing.
pub fn execute(module: ModuleHandle) {
    let Some(core) = crate::core_from_env("executing nothing") else {
        return;
    };
    tokio::spawn(async move {
        let publisher = core.clone();
        let handler = move |delivery: Delivery| {
            let core = publisher.clone();
            async move { handle(&core, delivery).await }
        };
        run_subscriber(core, module, vec![EXECUTE_SCRIPT.into()], WINDOW, handler).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_check_reads_the_figures_and_says_what_it_could_not() {
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   12288000 kB\n";
        assert_eq!(
            memory_check(Ok(meminfo.into())),
            json!({
                "script": "memory_check",
                "mem_total_kb": 24_576_000u64,
                "mem_available_kb": 12_288_000u64,
                "available_percent": 50u64,
            })
        );
        assert!(memory_check(Ok("MemTotal: 1 kB\n".into()))["error"].is_string());
        assert!(memory_check(Err(std::io::ErrorKind::NotFound.into()))["error"].is_string());
    }

    #[test]
    fn only_built_in_scripts_run() {
        assert!(
            run_script(br#"{"script":"rm -rf /"}"#)["error"]
                .as_str()
                .unwrap()
                .contains("no such script")
        );
        assert!(run_script(b"not json")["error"].is_string());
        assert_eq!(
            run_script(br#"{"script":"memory_check"}"#)["script"],
            "memory_check"
        );
    }
}
