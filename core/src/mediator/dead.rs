//! The dead-letter queue as operators see it (M8; PROTOCOL.md §13.5): list,
//! replay and purge, of one module's subscriptions or all, one delivery or
//! every one.

use anima_protocol::Urn;
use anima_protocol::pb::{
    DeadLetter, DeadLettersReply, DeadLettersRequest, ListDeadLettersReply, RcsEnvelope,
};
use prost::Message as _;
use tonic::{Request, Status};

use super::route::module_of;
use super::service::MediatorService;
use super::store::{DeadFilter, DeadLetter as Stored};
use crate::caller::Caller;
use crate::service::MAX_MEDIATOR_MESSAGE;

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
        let DeadLettersRequest {
            module,
            delivery,
            after,
        } = request.into_inner();
        if !module.is_empty() {
            module
                .parse::<Urn>()
                .map_err(|e| Status::invalid_argument(format!("module {module:.200}: {e}")))?;
        }
        let mut chosen = self
            .hub()
            .dead_letters(DeadFilter { module, delivery })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Some(after) = after {
            let subscription = format!("{} {}", after.event_type, after.module);
            chosen.retain(|d| {
                (d.subscription.as_str(), d.seq) > (subscription.as_str(), after.delivery)
            });
        }
        Ok(chosen)
    }

    /// `ListDeadLetters`: as many of the chosen dead letters, in order, as
    /// one reply of the mediator carries.
    pub(crate) async fn list_dead(
        &self,
        request: Request<DeadLettersRequest>,
    ) -> Result<ListDeadLettersReply, Status> {
        Ok(page(self.chosen(request).await?, MAX_MEDIATOR_MESSAGE))
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

/// The first of `chosen` that fit in a reply of at most `limit` bytes (at
/// least one, so a listing always moves on), and whether more are left.
fn page(chosen: Vec<Stored>, limit: usize) -> ListDeadLettersReply {
    // The room `more` takes when set: its tag and its one-byte value.
    const MORE: usize = 2;
    let total = chosen.len();
    let mut reply = ListDeadLettersReply::default();
    let mut size = MORE;
    for stored in chosen {
        let listed = listed(stored);
        let len = listed.encoded_len();
        let field = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if !reply.dead_letters.is_empty() && size + field > limit {
            break;
        }
        size += field;
        reply.dead_letters.push(listed);
    }
    reply.more = reply.dead_letters.len() < total;
    reply
}

/// A stored dead letter as `ListDeadLetters` shows it.
fn listed(d: Stored) -> DeadLetter {
    let (event_type, module) = d
        .subscription
        .split_once(' ')
        .unwrap_or((d.subscription.as_str(), ""));
    DeadLetter {
        module: module.to_owned(),
        event_type: event_type.to_owned(),
        delivery: d.seq,
        attempts: d.attempts,
        since: anima_protocol::rcs::format_utc_ms(i64::try_from(d.since_ms).unwrap_or(i64::MAX)),
        reason: d.reason,
        envelope: RcsEnvelope::decode(d.envelope.as_slice()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: u64, payload: usize) -> Stored {
        Stored {
            subscription: "JOB urn:anima:module:kvstore".into(),
            seq,
            attempts: 1,
            since_ms: 0,
            reason: "EXPIRED".into(),
            envelope: RcsEnvelope {
                extensions: "x".repeat(payload),
                ..RcsEnvelope::default()
            }
            .encode_to_vec(),
        }
    }

    #[test]
    fn m8_a_page_holds_what_fits_and_says_more_follow() {
        let chosen: Vec<_> = (1..=3).map(|seq| stored(seq, 1_000)).collect();
        let all = page(chosen.clone(), MAX_MEDIATOR_MESSAGE);
        assert_eq!(all.dead_letters.len(), 3);
        assert!(!all.more);
        let encoded = all.encoded_len();

        // One byte short of all three: two, and more to come.
        let two = page(chosen.clone(), encoded + 2 - 1);
        assert_eq!(
            two.dead_letters
                .iter()
                .map(|d| d.delivery)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(two.more);
        assert!(two.encoded_len() <= encoded + 1);
        assert_eq!(two.dead_letters[0].module, "urn:anima:module:kvstore");
        assert_eq!(two.dead_letters[0].event_type, "JOB");
    }

    #[test]
    fn m8_a_dead_letter_larger_than_a_page_is_listed_alone_so_a_listing_moves_on() {
        let one = page(vec![stored(7, 5_000), stored(8, 10)], 100);
        assert_eq!(one.dead_letters.len(), 1);
        assert_eq!(one.dead_letters[0].delivery, 7);
        assert!(one.encoded_len() > 5_000, "listed whole");
        assert!(one.more);
        let none = page(Vec::new(), 100);
        assert!(none.dead_letters.is_empty() && !none.more);
    }
}
