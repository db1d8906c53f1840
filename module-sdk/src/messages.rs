//! Runtime messages through the Core's mediator (PROTOCOL.md §13): publish
//! RCS envelopes ([`CoreClient::publish`], or many in flight on one stream
//! with a [`Publisher`], [`CoreClient::publisher`]) and receive them
//! ([`CoreClient::subscribe`], or [`run_subscriber`], which runs a handler
//! only while the module holds a lease, M11).
//!
//! ```no_run
//! # async fn handler() -> Result<(), Box<dyn std::error::Error>> {
//! use anima_module_sdk::CoreClient;
//! use anima_module_sdk::messages::envelope;
//!
//! let core = CoreClient::from_env()?;
//! let message = envelope("LOG_MESSAGE", "application/json", br#"{"level":"info"}"#.to_vec());
//! let published = core.publish(message).await?;
//! println!("queued for {} subscriptions", published.subscriptions);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anima_protocol::Urn;
use anima_protocol::pb::mediator_client::MediatorClient;
use anima_protocol::pb::{
    Ack, Delivery, EpsError, MessageMetadata, Nack, Observability, Open, Payload, PublishReply,
    PublishRequest, Published, RcsEnvelope, Routing, SubscribeItem, SubscribeRequest,
    publish_reply, request_reply, subscribe_item, subscribe_request,
};
use anima_protocol::rcs;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::{CoreClient, ModuleHandle};

/// The most bytes of a refusal's reason kept by the Core.
pub const MAX_NACK_REASON: usize = 1024;

/// A new envelope: a fresh `message_id`, `created_at` now, the RCS and
/// schema versions, and `size_bytes` and `checksum` of `data`. The Core
/// fills in `source_module` and `sender_identity` from the module's
/// certificate. Set the rest (priority, delivery mode, quality of service,
/// correlation) on the returned value.
pub fn envelope(event_type: &str, content_type: &str, data: Vec<u8>) -> RcsEnvelope {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    RcsEnvelope {
        message_metadata: Some(MessageMetadata {
            version: rcs::RCS_VERSION.into(),
            message_id: rcs::new_uuid_v4(),
            created_at: rcs::format_utc_ms(now),
            ..MessageMetadata::default()
        }),
        routing: Some(Routing {
            event_type: event_type.into(),
            ..Routing::default()
        }),
        payload: Some(Payload {
            schema_version: rcs::SCHEMA_VERSION.into(),
            content_type: content_type.into(),
            size_bytes: data.len() as u64,
            checksum: rcs::sha256_hex(&data),
            data,
            ..Payload::default()
        }),
        ..RcsEnvelope::default()
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The Core refused the message (EPS; nothing was stored).
    #[error("refused {}: {}", .0.code, .0.detail)]
    Refused(EpsError),
    /// The call failed (no lease, the Core unreachable …).
    #[error(transparent)]
    Call(#[from] Status),
}

/// What a publish was answered.
#[expect(
    clippy::result_large_err,
    reason = "the SDK's public error; boxing its EPS error would change the API"
)]
fn outcome(reply: PublishReply) -> Result<Published, PublishError> {
    match reply.outcome {
        Some(publish_reply::Outcome::Published(p)) => Ok(p),
        Some(publish_reply::Outcome::Error(e)) => Err(PublishError::Refused(e)),
        None => Err(PublishError::Call(Status::internal(
            "the Core answered neither published nor an error",
        ))),
    }
}

/// The most publishes of one [`Publisher`] in flight (the Core's bound).
pub const PUBLISH_IN_FLIGHT: usize = 256;

/// Publishes on one `PublishStream` (PROTOCOL.md §13.2), many in flight at
/// once: for a module that publishes fast, far cheaper per message than
/// [`CoreClient::publish`], whose every message is a call of its own. Clones
/// share the stream; each [`Publisher::publish`] waits for its own answer.
/// Once the stream ends (the module's lease from the Core ended, the Core
/// went away) every publish fails with the status that ended it: open
/// another.
#[derive(Clone, Debug)]
pub struct Publisher {
    inner: Arc<tokio::sync::Mutex<PublisherInner>>,
}

#[derive(Debug)]
struct PublisherInner {
    requests: mpsc::Sender<PublishRequest>,
    state: Arc<Mutex<Waiting>>,
}

/// The publishes sent and not answered yet, oldest first; or how the
/// stream ended.
#[derive(Debug, Default)]
struct Waiting {
    answers: VecDeque<oneshot::Sender<Result<Published, PublishError>>>,
    ended: Option<Status>,
}

impl Publisher {
    /// Publishes `envelope`: answered once the Core has it on disk for
    /// every subscription permitted to receive it (M12), or refused.
    pub async fn publish(&self, envelope: RcsEnvelope) -> Result<Published, PublishError> {
        let (tx, rx) = oneshot::channel();
        {
            // Held while sending, so the answers' order is the requests'.
            let inner = self.inner.lock().await;
            // Room first: dropped while it waits, this publish has left
            // nothing behind. The waiter and the request then go in
            // together, with no wait between them.
            let Ok(room) = inner.requests.reserve().await else {
                // The stream is gone; its reader fails what waits.
                return Err(PublishError::Call(
                    locked(&inner.state)
                        .ended
                        .clone()
                        .unwrap_or_else(|| Status::unavailable("the publish stream ended")),
                ));
            };
            {
                let mut state = locked(&inner.state);
                if let Some(status) = &state.ended {
                    return Err(PublishError::Call(status.clone()));
                }
                state.answers.push_back(tx);
            }
            room.send(PublishRequest {
                envelope: Some(envelope),
            });
        }
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(PublishError::Call(Status::unavailable(
                "the publish stream ended",
            ))),
        }
    }
}

fn locked(state: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands each answer of the stream to the publish waiting longest; when the
/// stream ends, fails every publish waiting and every later one.
async fn read_replies(mut replies: tonic::Streaming<PublishReply>, state: Arc<Mutex<Waiting>>) {
    let end = loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                let Some(answer) = locked(&state).answers.pop_front() else {
                    break Status::internal("the Core answered a publish never sent");
                };
                let _ = answer.send(outcome(reply));
            }
            Ok(None) => break Status::unavailable("the Core ended the publish stream"),
            Err(status) => break status,
        }
    };
    let waiting = {
        let mut state = locked(&state);
        state.ended = Some(end.clone());
        std::mem::take(&mut state.answers)
    };
    for answer in waiting {
        let _ = answer.send(Err(PublishError::Call(end.clone())));
    }
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The Core refused the request, or no reply came in time (EPS
    /// `TIMEOUT`).
    #[error("refused {}: {}", .0.code, .0.detail)]
    Refused(EpsError),
    /// The call failed (no lease, the Core unreachable …).
    #[error(transparent)]
    Call(#[from] Status),
}

/// The reply to `request` (M9): of the event type the request names in
/// `routing.reply_to`, carrying the request's `message_id` as its
/// `correlation_id` and as its `parent_message_id`, and the request's trace
/// (its `trace_id`; the span is the reply's own, named by the Core);
/// `None` when the request names no reply event type.
pub fn reply_to(request: &RcsEnvelope, content_type: &str, data: Vec<u8>) -> Option<RcsEnvelope> {
    let event_type = request
        .routing
        .as_ref()?
        .reply_to
        .as_ref()
        .map(|r| r.event_type.clone())
        .filter(|t| !t.is_empty())?;
    let id = request.message_metadata.as_ref()?.message_id.clone();
    let mut reply = envelope(&event_type, content_type, data);
    if let Some(m) = reply.message_metadata.as_mut() {
        m.correlation_id = id.clone();
        m.parent_message_id = id;
    }
    // The request's trace, in a span of the reply's own: left empty, the
    // Core names one (PROTOCOL.md §13.9).
    reply.observability = request.observability.clone().map(|o| Observability {
        span_id: String::new(),
        ..o
    });
    Some(reply)
}

/// Why a subscription stream stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// The Core refused the subscription or an answer on it (EPS).
    #[error("refused {}: {}", .0.code, .0.detail)]
    Refused(EpsError),
    /// The stream ended with a gRPC error (e.g. the module's lease ended:
    /// `NO_LEASE`).
    #[error(transparent)]
    Call(#[from] Status),
}

impl CoreClient {
    /// Publishes `envelope` through the Core: answered once the Core has it
    /// on disk for every subscription permitted to receive it (M12).
    pub async fn publish(&self, envelope: RcsEnvelope) -> Result<Published, PublishError> {
        let reply: PublishReply = MediatorClient::new(self.channel())
            .publish(PublishRequest {
                envelope: Some(envelope),
            })
            .await?
            .into_inner();
        outcome(reply)
    }

    /// A [`Publisher`]: many publishes in flight on one stream
    /// (`PublishStream`), each answered as [`CoreClient::publish`] answers.
    pub async fn publisher(&self) -> Result<Publisher, Status> {
        let (requests, rx) = mpsc::channel(PUBLISH_IN_FLIGHT);
        let replies = MediatorClient::new(self.channel())
            .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let state = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(read_replies(replies, state.clone()));
        Ok(Publisher {
            inner: Arc::new(tokio::sync::Mutex::new(PublisherInner { requests, state })),
        })
    }

    /// Sends `request` (which names `routing.reply_to.event_type`, and may
    /// name `timeout_ms`) through the Core and waits for its reply (M9).
    pub async fn request(&self, request: RcsEnvelope) -> Result<RcsEnvelope, RequestError> {
        let reply = MediatorClient::new(self.channel())
            .request(PublishRequest {
                envelope: Some(request),
            })
            .await?
            .into_inner();
        match reply.outcome {
            Some(request_reply::Outcome::Reply(r)) => Ok(r),
            Some(request_reply::Outcome::Error(e)) => Err(RequestError::Refused(e)),
            None => Err(RequestError::Call(Status::internal(
                "the Core answered neither a reply nor an error",
            ))),
        }
    }

    /// Opens a subscription to `event_types` (empty: every one the module
    /// may receive), at most `window` deliveries outstanding (0: the
    /// Core's default).
    pub async fn subscribe(
        &self,
        event_types: &[&str],
        window: u32,
    ) -> Result<Subscription, Status> {
        let (requests, rx) = mpsc::channel(64);
        let open = SubscribeRequest {
            item: Some(subscribe_request::Item::Open(Open {
                event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
                window,
            })),
        };
        requests
            .send(open)
            .await
            .map_err(|_| Status::internal("the subscription's request queue closed"))?;
        let items = MediatorClient::new(self.channel())
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Subscription { requests, items })
    }
}

/// An open subscription: deliveries in, acknowledgements out.
#[derive(Debug)]
pub struct Subscription {
    requests: mpsc::Sender<SubscribeRequest>,
    items: tonic::Streaming<SubscribeItem>,
}

impl Subscription {
    /// The next delivery; `None` when the Core ended the stream.
    pub async fn next(&mut self) -> Option<Result<Delivery, SubscriptionError>> {
        loop {
            return match self.items.message().await {
                Ok(Some(SubscribeItem {
                    item: Some(subscribe_item::Item::Delivery(d)),
                })) => Some(Ok(d)),
                Ok(Some(SubscribeItem {
                    item: Some(subscribe_item::Item::Error(e)),
                })) => Some(Err(SubscriptionError::Refused(e))),
                Ok(Some(SubscribeItem { item: None })) => continue,
                Ok(None) => None,
                Err(status) => Some(Err(SubscriptionError::Call(status))),
            };
        }
    }

    /// `delivery` was handled: the Core does not deliver it again.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), Status> {
        self.send(subscribe_request::Item::Ack(Ack {
            delivery: delivery.delivery,
        }))
        .await
    }

    /// `delivery` was refused: the Core delivers it again after its retry
    /// delay while it has retries left, then dead-letters or drops it.
    pub async fn nack(&self, delivery: &Delivery, reason: &str) -> Result<(), Status> {
        let mut reason = reason.to_owned();
        if reason.len() > MAX_NACK_REASON {
            let mut end = MAX_NACK_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        self.send(subscribe_request::Item::Nack(Nack {
            delivery: delivery.delivery,
            reason,
        }))
        .await
    }

    async fn send(&self, item: subscribe_request::Item) -> Result<(), Status> {
        self.requests
            .send(SubscribeRequest { item: Some(item) })
            .await
            .map_err(|_| Status::unavailable("the subscription ended"))
    }
}

/// How long [`run_subscriber`] waits before subscribing again after its
/// stream ended, or after the Core first refused the subscription.
pub const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(200);
/// The longest wait between two refused subscriptions: each refusal in a
/// row doubles the wait, from [`RESUBSCRIBE_DELAY`] up to this.
pub const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(30);

/// The waits between refused subscriptions.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(RESUBSCRIBE_DELAY)
    }

    /// The wait before the next attempt; the one after it is twice as long.
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MAX_RESUBSCRIBE_DELAY);
        wait
    }

    /// A subscription was taken, or a lease ended: start again from the
    /// shortest wait.
    fn reset(&mut self) {
        self.0 = RESUBSCRIBE_DELAY;
    }
}

/// Receives `event_types` for the module's whole life, running `handler`
/// on each message only while the module holds a lease (M11): it subscribes
/// once a lease is open, and a handler still running when the last lease
/// ends is dropped unfinished and its message not acknowledged, so the Core
/// delivers it again. A handler's `Err` refuses the message (it is retried
/// as its quality of service says); `Ok` acknowledges it. When the Core
/// refuses the subscription (a permission not granted yet, say: its error
/// item comes before any delivery), it tries again after
/// [`RESUBSCRIBE_DELAY`], doubling the wait on each refusal in a row up to
/// [`MAX_RESUBSCRIBE_DELAY`], and from the shortest again once a delivery
/// came or the leases ended. An error item after a delivery (an answer the
/// Core did not know) is logged and the subscription goes on.
pub async fn run_subscriber<F, Fut>(
    core: CoreClient,
    module: ModuleHandle,
    event_types: Vec<String>,
    window: u32,
    handler: F,
) where
    F: Fn(Delivery) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let types: Vec<&str> = event_types.iter().map(String::as_str).collect();
    // The deliveries are this Core's: handled only under a lease from it,
    // whatever leases other Cores hold (a Type III module's).
    let from = core.core().clone();
    let leased = |by_core: &BTreeMap<Urn, usize>| by_core.get(&from).is_some_and(|n| *n > 0);
    let mut leases = module.active_leases_by_core();
    let mut backoff = Backoff::new();
    loop {
        if !leased(&leases.borrow()) {
            backoff.reset();
        }
        if leases.wait_for(leased).await.is_err() {
            return;
        }
        let mut subscription = match core.subscribe(&types, window).await {
            Ok(s) => s,
            Err(status) => {
                let wait = backoff.next();
                tracing::warn!("subscribing to {types:?}: {status} (again in {wait:?})");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        // Taken once a delivery comes; refused when the Core's error item
        // came first (the Core ends the stream after a refused Open).
        let (mut taken, mut refused) = (false, false);
        while let Some(item) = subscription.next().await {
            let delivery = match item {
                Ok(d) => d,
                // After a refused Open the stream ends; after an answer
                // the Core did not know (`UNKNOWN_DELIVERY`) it goes on.
                Err(e @ SubscriptionError::Refused(_)) => {
                    tracing::warn!("subscription to {types:?}: {e}");
                    refused |= !taken;
                    continue;
                }
                Err(e) => {
                    tracing::warn!("subscription to {types:?}: {e}");
                    break;
                }
            };
            if !taken {
                taken = true;
                backoff.reset();
            }
            if !leased(&leases.borrow()) {
                // No lease from this Core: the message is not handled;
                // ending the stream gives it back to the Core.
                break;
            }
            let handled = tokio::select! {
                outcome = handler(delivery.clone()) => Some(outcome),
                _ = leases.wait_for(|m| !leased(m)) => None,
            };
            let answered = match handled {
                Some(Ok(())) => subscription.ack(&delivery).await,
                Some(Err(why)) => subscription.nack(&delivery, &why).await,
                None => break,
            };
            if answered.is_err() {
                break;
            }
        }
        let wait = if refused {
            backoff.next()
        } else {
            RESUBSCRIBE_DELAY
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m11_refused_subscriptions_back_off_doubling_to_a_ceiling_and_reset() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.next()).collect();
        assert_eq!(waits[0], RESUBSCRIBE_DELAY);
        assert_eq!(waits[1], RESUBSCRIBE_DELAY * 2);
        assert_eq!(waits[2], RESUBSCRIBE_DELAY * 4);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(waits[9], MAX_RESUBSCRIBE_DELAY);
        backoff.reset();
        assert_eq!(backoff.next(), RESUBSCRIBE_DELAY);
    }

    /// A publish dropped while it waits for room on the stream (a caller's
    /// timeout, a handler halted by the end of its lease) leaves no waiter
    /// behind: answers are matched to publishes by position, so one left
    /// would hand every later publish the answer of the one before it.
    #[tokio::test(start_paused = true)]
    async fn m12_a_publish_dropped_before_it_is_sent_takes_no_answer() {
        let (requests, _stream) = mpsc::channel(1);
        let state = Arc::new(Mutex::new(Waiting::default()));
        let publisher = Publisher {
            inner: Arc::new(tokio::sync::Mutex::new(PublisherInner {
                requests,
                state: state.clone(),
            })),
        };
        // The first is sent (the stream has room for one) and waits for
        // its answer.
        let first = tokio::spawn({
            let publisher = publisher.clone();
            async move { publisher.publish(RcsEnvelope::default()).await }
        });
        while locked(&state).answers.is_empty() {
            tokio::task::yield_now().await;
        }
        // The second finds no room and is dropped.
        let second = tokio::time::timeout(
            Duration::from_millis(10),
            publisher.publish(RcsEnvelope::default()),
        )
        .await;
        assert!(second.is_err(), "the second publish waited for room");
        assert_eq!(
            locked(&state).answers.len(),
            1,
            "only the publish that was sent waits for an answer"
        );
        first.abort();
    }
}
