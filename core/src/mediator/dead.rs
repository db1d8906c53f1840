//! The dead-letter queue as operators see it (M8; PROTOCOL.md §13.5): list,
//! replay and purge, of one module's subscriptions or all, one delivery or
//! every one.

use anima_protocol::Urn;
use anima_protocol::pb::{DeadLetter, DeadLettersReply, DeadLettersRequest, RcsEnvelope};
use prost::Message as _;
use tonic::{Request, Status};

use super::route::module_of;
use super::service::MediatorService;
use super::store::{DeadFilter, DeadLetter as Stored};
use crate::caller::Caller;

impl MediatorService {
    /// The dead letters `request` names, as the store keeps them; only for
    /// operators.
    async fn chosen(&self, request: Request<DeadLettersRequest>) -> Result<Vec<Stored>, Status> {
        match self.caller(&request)? {
            Caller::Operator(_) => {}
            Caller::Module(_) => {
                return Err(Status::permission_denied(
                    "the dead-letter queue is for the Core's operators",
                ));
            }
        }
        let DeadLettersRequest { module, delivery } = request.into_inner();
        if !module.is_empty() {
            module
                .parse::<Urn>()
                .map_err(|e| Status::invalid_argument(format!("module {module:.200}: {e}")))?;
        }
        self.hub()
            .dead_letters(DeadFilter { module, delivery })
            .await
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// `ListDeadLetters`.
    pub(crate) async fn list_dead(
        &self,
        request: Request<DeadLettersRequest>,
    ) -> Result<Vec<DeadLetter>, Status> {
        Ok(self
            .chosen(request)
            .await?
            .into_iter()
            .map(|d| {
                let (event_type, module) = d
                    .subscription
                    .split_once(' ')
                    .unwrap_or((d.subscription.as_str(), ""));
                DeadLetter {
                    module: module.to_owned(),
                    event_type: event_type.to_owned(),
                    delivery: d.seq,
                    attempts: d.attempts,
                    since: anima_protocol::rcs::format_utc_ms(
                        i64::try_from(d.since_ms).unwrap_or(i64::MAX),
                    ),
                    reason: d.reason.clone(),
                    envelope: RcsEnvelope::decode(d.envelope.as_slice()).ok(),
                }
            })
            .collect())
    }

    /// `ReplayDeadLetters` (`replay`) or `PurgeDeadLetters`.
    pub(crate) async fn end_dead(
        &self,
        request: Request<DeadLettersRequest>,
        replay: bool,
    ) -> Result<DeadLettersReply, Status> {
        let keys: Vec<(String, u64)> = self
            .chosen(request)
            .await?
            .into_iter()
            .map(|d| (d.subscription, d.seq))
            .collect();
        let modules: Vec<String> = keys.iter().map(|(s, _)| module_of(s).to_owned()).collect();
        let count = self
            .hub()
            .end_dead(keys, replay)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if replay {
            for module in modules {
                if let Ok(urn) = module.parse::<Urn>() {
                    self.hub().waker(&urn).notify_waiters();
                }
            }
        }
        Ok(DeadLettersReply {
            count: u32::try_from(count).unwrap_or(u32::MAX),
        })
    }
}
