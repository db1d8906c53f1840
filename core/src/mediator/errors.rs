//! The error handler (M10; PROTOCOL.md §13.8): every EPS error the mediator
//! reports to a sender is also queued, as an `EPS_ERROR` message from the
//! Core, for the module `[mediator] error_handler` names.

use anima_protocol::pb::{
    EpsError, EpsSeverity, MessageMetadata, Priority, RcsEnvelope, Routing, Security,
};
use anima_protocol::rcs;

use super::hub::Publish;
use super::record::{Delivery, rank};
use super::route::subscription;
use super::service::MediatorService;
use super::store::Accepted;

/// The event type of the messages the error handler receives.
pub(crate) const EPS_ERROR: &str = "EPS_ERROR";

/// How often the error handler gets a message again when it does not
/// acknowledge it.
const RETRIES: u32 = 3;

impl MediatorService {
    /// Queues `eps`, caused by `cause` (when known), for the error handler,
    /// if one is configured; not an error about an `EPS_ERROR` message (no
    /// loops). Done in the background: the sender's answer does not wait.
    pub(crate) fn report(&self, eps: &EpsError, cause: Option<&RcsEnvelope>) {
        let Some(handler) = self.error_handler() else {
            return;
        };
        if cause
            .and_then(|c| c.routing.as_ref())
            .is_some_and(|r| r.event_type == EPS_ERROR)
        {
            return;
        }
        let core = self.core_urn().to_string();
        let data = rcs::eps_json(eps).to_string().into_bytes();
        let critical = eps.severity == EpsSeverity::Critical as i32;
        let priority = if critical {
            Priority::Critical
        } else {
            Priority::High
        };
        let uuid = |s: &str| {
            if rcs::is_uuid_v4(s) {
                s.to_owned()
            } else {
                String::new()
            }
        };
        let cause_meta = cause
            .and_then(|c| c.message_metadata.clone())
            .unwrap_or_default();
        let now = crate::audit::unix_ms(std::time::SystemTime::now());
        let envelope = RcsEnvelope {
            message_metadata: Some(MessageMetadata {
                version: rcs::RCS_VERSION.into(),
                message_id: rcs::new_uuid_v4(),
                correlation_id: uuid(&cause_meta.correlation_id),
                parent_message_id: uuid(&cause_meta.message_id),
                created_at: rcs::format_utc_ms(i64::try_from(now).unwrap_or(i64::MAX)),
                priority: priority as i32,
                ..MessageMetadata::default()
            }),
            routing: Some(Routing {
                event_type: EPS_ERROR.into(),
                source_module: core.clone(),
                ..Routing::default()
            }),
            payload: Some(anima_protocol::pb::Payload {
                schema_version: rcs::SCHEMA_VERSION.into(),
                content_type: "application/json".into(),
                size_bytes: data.len() as u64,
                data,
                ..Default::default()
            }),
            security: Some(Security {
                sender_identity: core,
                ..Security::default()
            }),
            observability: cause.and_then(|c| c.observability.clone()),
            ..RcsEnvelope::default()
        };
        let publish = Publish {
            envelope: prost::Message::encode_to_vec(&envelope),
            message_id: String::new(),
            exactly_once: false,
            delivery: Delivery {
                rank: rank(priority),
                dead_letter: true,
                at_most_once: false,
                max_retries: RETRIES,
                retry_delay_ms: 0,
                expires_ms: None,
            },
            subscriptions: vec![subscription(EPS_ERROR, handler)],
        };
        self.queue(publish, envelope);
    }

    /// Stores the error handler's message in the background and shows it
    /// to the Core's watchers once stored, like any message it accepts.
    fn queue(&self, publish: Publish, envelope: RcsEnvelope) {
        let hub = self.hub().clone();
        let watchers = self.watchers().clone();
        tokio::spawn(async move {
            match hub.publish(publish).await {
                Ok(Accepted::Stored(_)) => watchers.accepted(&envelope),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("mediator: the error handler's message was not stored: {e}");
                }
            }
        });
    }
}
