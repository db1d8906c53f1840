//! The orchestrator sample (Type II, resident private) of the memory check
//! workflow ([`crate::workflow`]): `CheckMemory`, called by a user through
//! the Core's gateway, sends `EXECUTE_SCRIPT` as a request through the
//! Core's mediator — to whichever module the Core's permissions route it to,
//! not to one it knows — waits for the `SCRIPT_EXECUTED` reply, logs the
//! outcome and answers with it. The call's W3C `traceparent` (which the
//! gateway sends on every call) becomes the workflow's trace.

use std::time::Duration;

use anima_module_sdk::messages::{RequestError, envelope};
use anima_module_sdk::{Contract, CoreClient};
use anima_protocol::pb::{Observability, ReplyTo};
use tonic::{Request, Response, Status};

use crate::lease_of;
use crate::pb::{CheckMemoryReply, CheckMemoryRequest};
use crate::workflow::{EXECUTE_SCRIPT, MEMORY_CHECK, SCRIPT_EXECUTED, log};

/// How long `CheckMemory` waits for the reply when the call names no time.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait a call may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The orchestrator's capability contract (`orchestrator/module.toml`).
pub fn contract() -> Contract {
    #[allow(clippy::expect_used)]
    // Invariant: the embedded module.toml is fixed at build time and a test
    // (tests/workflow.rs) parses it.
    Contract::from_toml(include_str!("../orchestrator/module.toml"))
        .expect("orchestrator/module.toml is a valid contract")
}

/// The orchestrator service: its client of the Core (none without a launch
/// environment naming the Core, when every call fails `FAILED_PRECONDITION`).
#[derive(Clone)]
pub struct Orchestrator {
    core: Option<CoreClient>,
}

impl Orchestrator {
    /// The orchestrator of the launching Core (`ANIMA_CORE_ENDPOINT` …).
    pub fn from_env() -> Self {
        Orchestrator {
            core: crate::core_from_env("CheckMemory will fail"),
        }
    }
}

/// A request the Core refused, or that got no reply, as the caller's status.
fn refused(e: RequestError, timeout: Duration) -> Status {
    match e {
        RequestError::Refused(e) if e.code == "TIMEOUT" => Status::deadline_exceeded(format!(
            "no script executor replied within {} ms",
            timeout.as_millis()
        )),
        RequestError::Refused(e) if e.code == "NO_SUBSCRIBER" => {
            Status::unavailable(format!("no module may execute scripts here ({})", e.detail))
        }
        RequestError::Refused(e) => Status::failed_precondition(format!(
            "the Core refused the request: {}: {}",
            e.code, e.detail
        )),
        RequestError::Call(status) => status,
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl crate::pb::orchestrator_server::Orchestrator for Orchestrator {
    async fn check_memory(
        &self,
        request: Request<CheckMemoryRequest>,
    ) -> Result<Response<CheckMemoryReply>, Status> {
        lease_of(&request)?;
        let core = self.core.as_ref().ok_or_else(|| {
            Status::failed_precondition("the orchestrator was started without its Core's endpoint")
        })?;
        let timeout = match request.get_ref().timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms if Duration::from_millis(ms.into()) <= MAX_TIMEOUT => {
                Duration::from_millis(ms.into())
            }
            ms => {
                return Err(Status::invalid_argument(format!(
                    "timeout_ms {ms} is over {} ms",
                    MAX_TIMEOUT.as_millis()
                )));
            }
        };
        let trace_id = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(anima_protocol::trace::parse)
            .map(|parent| parent.trace_id);
        let data = serde_json::json!({ "script": MEMORY_CHECK })
            .to_string()
            .into_bytes();
        let mut ask = envelope(EXECUTE_SCRIPT, "application/json", data);
        let id = ask
            .message_metadata
            .as_ref()
            .map(|m| m.message_id.clone())
            .unwrap_or_default();
        // The request's id is the workflow's correlation id: its reply
        // carries it (M9), and so does every message that follows from it.
        if let Some(m) = ask.message_metadata.as_mut() {
            m.correlation_id.clone_from(&id);
        }
        if let Some(r) = ask.routing.as_mut() {
            r.reply_to = Some(ReplyTo {
                event_type: SCRIPT_EXECUTED.into(),
                timeout_ms: u64::try_from(timeout.as_millis()).ok(),
                ..ReplyTo::default()
            });
        }
        ask.observability = trace_id.map(|trace_id| Observability {
            trace_id,
            ..Observability::default()
        });
        let reply = core.request(ask).await.map_err(|e| refused(e, timeout))?;
        let result = reply
            .payload
            .as_ref()
            .map(|p| String::from_utf8_lossy(&p.data).into_owned())
            .unwrap_or_default();
        log(
            core,
            &reply,
            &format!("orchestrator: memory check complete: {result}"),
        )
        .await;
        Ok(Response::new(CheckMemoryReply {
            correlation_id: id,
            trace_id: reply
                .observability
                .as_ref()
                .map(|o| o.trace_id.clone())
                .unwrap_or_default(),
            executor: reply
                .routing
                .as_ref()
                .map(|r| r.source_module.clone())
                .unwrap_or_default(),
            result,
        }))
    }
}
