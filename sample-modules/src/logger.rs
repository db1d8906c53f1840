//! The logger sample (Type II, resident private): it receives every event
//! type its Core's `[[permission]]` entries let it subscribe to (e.g.
//! `LOG_MESSAGE`), through the Core's mediator (PROTOCOL.md §13), only
//! while it holds a lease (M11), and keeps the latest messages for
//! `Recent`.
//!
//! ```no_run
//! use anima_sample_modules::logger::{Log, contract, receive};
//! use anima_sample_modules::pb::logger_server::LoggerServer;
//!
//! # async fn run() {
//! let log = Log::default();
//! let receiving = log.clone();
//! anima_module_sdk::launch(contract(), move |module| {
//!     receive(&receiving, module.handle());
//!     module.service(LoggerServer::new(log))
//! })
//! .await;
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anima_module_sdk::messages::run_subscriber;
use anima_module_sdk::{Contract, ModuleHandle};
use anima_protocol::pb::{Delivery, Priority};
use tonic::{Request, Response, Status};

use crate::lease_of;
use crate::pb::{Logged, RecentReply, RecentRequest};

/// How many messages it keeps.
pub const KEPT: usize = 256;
/// The most deliveries it lets the Core send ahead.
pub const WINDOW: u32 = 16;

/// The logger's capability contract (`logger/module.toml`).
pub fn contract() -> Contract {
    #[allow(clippy::expect_used)]
    // Invariant: the embedded module.toml is fixed at build time and a test
    // (tests/logger.rs) parses it.
    Contract::from_toml(include_str!("../logger/module.toml"))
        .expect("logger/module.toml is a valid contract")
}

/// The messages received, the latest [`KEPT`]. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<VecDeque<Logged>>>);

impl Log {
    /// Keeps `delivery`'s message.
    pub fn keep(&self, delivery: &Delivery) {
        let e = delivery.envelope.clone().unwrap_or_default();
        let meta = e.message_metadata.unwrap_or_default();
        let routing = e.routing.unwrap_or_default();
        let priority = match Priority::try_from(meta.priority) {
            Ok(Priority::Critical) => "critical",
            Ok(Priority::High) => "high",
            Ok(Priority::Low) => "low",
            _ => "normal",
        };
        let logged = Logged {
            message_id: meta.message_id,
            event_type: routing.event_type,
            source_module: routing.source_module,
            correlation_id: meta.correlation_id,
            trace_id: e.observability.unwrap_or_default().trace_id,
            priority: priority.into(),
            attempt: delivery.attempt,
            data: e.payload.unwrap_or_default().data,
        };
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(logged);
    }

    /// The messages kept, oldest first.
    pub fn recent(&self) -> Vec<Logged> {
        let kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        kept.iter().cloned().collect()
    }
}

/// Starts receiving every event type the module may receive into `log`
/// for the module's life,
/// through the launching Core (from the launch environment). Without one
/// (`ANIMA_CORE_ENDPOINT` unset) it logs why and receives nothing.
pub fn receive(log: &Log, module: ModuleHandle) {
    let Some(core) = crate::core_from_env("receiving nothing") else {
        return;
    };
    let log = log.clone();
    tokio::spawn(async move {
        let handler = move |delivery: Delivery| {
            let log = log.clone();
            async move {
                log.keep(&delivery);
                Ok(())
            }
        };
        run_subscriber(core, module, Vec::new(), WINDOW, handler).await;
    });
}

#[tonic::async_trait]
impl crate::pb::logger_server::Logger for Log {
    async fn recent(
        &self,
        request: Request<RecentRequest>,
    ) -> Result<Response<RecentReply>, Status> {
        lease_of(&request)?;
        let only = &request.get_ref().event_type;
        let messages = self
            .recent()
            .into_iter()
            .filter(|m| only.is_empty() || &m.event_type == only)
            .collect();
        Ok(Response::new(RecentReply { messages }))
    }
}
