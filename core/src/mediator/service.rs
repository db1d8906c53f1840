//! `anima.v1.Mediator` (PROTOCOL.md §13): modules publish runtime messages
//! and receive them through the Core, never from each other.
//!
//! A publish is validated (M1–M3), checked against the sender's grants and
//! routed to the subscriptions permitted to receive it (M5), stored on disk
//! (M12) and only then answered. A subscription stream hands out what is due
//! on the caller's subscriptions, by priority (M6), at most its window at a
//! time, while the caller's lease from this Core holds: when it ends, what the
//! caller held unacknowledged is due again at once and the stream ends (M11).
//! Every refusal is an EPS error (M10).

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anima_protocol::Urn;
use anima_protocol::lease::{Reason, status_for};
use anima_protocol::pb::mediator_server::Mediator;
use anima_protocol::pb::{
    self, DeadLettersReply, DeadLettersRequest, DeliveryMode, EpsError, ListDeadLettersReply, Open,
    PublishReply, PublishRequest, Published, RcsEnvelope, RequestReply, SubscribeItem,
    SubscribeRequest, publish_reply, request_reply, subscribe_item, subscribe_request,
};
use anima_protocol::rcs::{self, EpsCode, Invalid, Limits};
use futures_util::FutureExt as _;
use futures_util::stream::{FuturesOrdered, StreamExt as _};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::hub::{Direct, Hub, HubError, Publish};
use super::record::{Delivery, rank};
use super::request::{DEFAULT_TIMEOUT, Reply, Requests, Taken};
use super::route::{Grants, module_of, subscription};
use super::store::{Accepted, HandedOut};
use super::trace;
use super::watch::{WatchStream, Watchers};
use super::window::{Named, Window};
use crate::caller::Caller as Sender;
use crate::metrics::Metrics;
use crate::supervisor::CoreContext;

/// The window of an `Open` that names none.
pub(crate) const DEFAULT_WINDOW: u32 = 64;
/// The largest window.
pub(crate) const MAX_WINDOW: u32 = 1024;
/// How long a subscription stream may take to send its `Open`.
const OPEN_WAIT: Duration = Duration::from_secs(10);
/// The most publishes of one `PublishStream` in flight.
const PUBLISH_IN_FLIGHT: usize = 256;

/// The mediator service. Cloning shares it.
#[derive(Clone)]
pub(crate) struct MediatorService {
    ctx: Arc<CoreContext>,
    operators: Arc<[Urn]>,
    grants: Arc<Grants>,
    hub: Hub,
    requests: Arc<Requests>,
    metrics: Arc<Metrics>,
    error_handler: Option<Urn>,
    limits: Limits,
    ack_wait: Duration,
    watchers: Watchers,
}

type ItemStream = Pin<Box<dyn Stream<Item = Result<SubscribeItem, Status>> + Send + 'static>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<PublishReply, Status>> + Send + 'static>>;

impl MediatorService {
    /// Serves `ctx`'s modules and `operators` with `grants`, keeping
    /// messages in `hub`.
    pub(crate) fn new(
        ctx: Arc<CoreContext>,
        operators: Vec<Urn>,
        grants: Grants,
        hub: Hub,
        ack_wait: Duration,
        metrics: Arc<Metrics>,
        error_handler: Option<Urn>,
    ) -> Self {
        MediatorService {
            ctx,
            operators: operators.into(),
            grants: Arc::new(grants),
            hub,
            requests: Arc::default(),
            metrics,
            error_handler,
            limits: Limits::default(),
            ack_wait,
            watchers: Watchers::default(),
        }
    }

    /// Who watches the accepted messages (`anima subscribe`).
    pub(crate) fn watchers(&self) -> &Watchers {
        &self.watchers
    }

    /// Counts one message of `event_type` coming to `outcome` (M13), the
    /// event type by name only when a permission names it.
    fn count(&self, event_type: &str, outcome: &str) {
        let event_type = if self.grants.names(event_type) {
            event_type
        } else {
            "other"
        };
        self.metrics.message(event_type, outcome);
    }

    /// The message store.
    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    pub(crate) fn caller<T>(&self, request: &Request<T>) -> Result<Sender, Status> {
        Sender::of(&self.ctx, &self.operators, request)
    }

    /// The EPS error for `invalid`, about `envelope` (when known).
    /// (Also queued for the error handler, M10.)
    fn eps(&self, invalid: &Invalid, envelope: Option<&RcsEnvelope>) -> EpsError {
        let meta = envelope.and_then(|e| e.message_metadata.as_ref());
        let id = |f: fn(&pb::MessageMetadata) -> &String| meta.map_or("", |m| f(m).as_str());
        let now = crate::audit::unix_ms(std::time::SystemTime::now());
        let eps = invalid.to_eps(
            rcs::new_uuid_v4(),
            self.ctx.urn.as_str(),
            rcs::format_utc_ms(i64::try_from(now).unwrap_or(i64::MAX)),
            id(|m| &m.message_id),
            id(|m| &m.correlation_id),
        );
        self.report(&eps, envelope);
        eps
    }

    /// The module that receives the EPS errors, if any.
    pub(crate) fn error_handler(&self) -> Option<&Urn> {
        self.error_handler.as_ref()
    }

    /// This Core's URN.
    pub(crate) fn core_urn(&self) -> &Urn {
        &self.ctx.urn
    }

    /// Validates and routes one envelope: its checked metadata and the
    /// subscriptions it goes to, or that it was a reply (M9).
    async fn route(&self, sender: &Sender, envelope: &mut RcsEnvelope) -> Result<Routed, Invalid> {
        let checked = rcs::validate(envelope, sender.urn(), self.limits)?;
        let routing = envelope.routing.clone().unwrap_or_default();
        let mut reply = self.requests.answer(envelope, sender.urn());
        if reply == Reply::No {
            // On NATS the request may wait on another Core (M14).
            reply = self.hub.reply_elsewhere(envelope, sender.urn()).await;
        }
        match reply {
            Reply::No => {}
            Reply::Delivered => return Ok(Routed::Reply),
            Reply::Late => {
                return Err(Invalid::new(
                    EpsCode::LateReply,
                    "message_metadata.correlation_id",
                    "the request's timeout had passed: the reply is discarded",
                ));
            }
        }
        if let Sender::Module(me) = sender
            && !self.grants.may_publish(me, &routing.event_type)
        {
            return Err(Invalid::new(
                EpsCode::NotPermitted,
                "routing.event_type",
                format!("no [[permission]] lets {me} publish {}", routing.event_type),
            ));
        }
        let subscriptions = self.grants.route(&routing);
        if subscriptions.is_empty() {
            return Err(Invalid::new(
                EpsCode::NoSubscriber,
                "routing.event_type",
                format!(
                    "no module may receive {} (category {:?}, tags {:?})",
                    routing.event_type, routing.event_category, routing.routing_tags
                ),
            ));
        }
        Ok(Routed::To(checked, subscriptions))
    }

    /// Stores `envelope` for `subscriptions`: what the publisher is told.
    async fn store(
        &self,
        envelope: &RcsEnvelope,
        checked: rcs::Checked,
        subscriptions: Vec<String>,
    ) -> Result<Published, Invalid> {
        let qos = envelope.quality_of_service.clone().unwrap_or_default();
        let meta = envelope.message_metadata.clone().unwrap_or_default();
        let publish = Publish {
            envelope: envelope.encode_to_vec(),
            message_id: meta.message_id.clone(),
            exactly_once: checked.delivery_mode == DeliveryMode::ExactlyOnce,
            delivery: Delivery {
                rank: rank(checked.priority),
                dead_letter: qos.dead_letter_queue.unwrap_or(false),
                at_most_once: checked.delivery_mode == DeliveryMode::AtMostOnce,
                max_retries: qos.max_retries.unwrap_or(0),
                retry_delay_ms: qos.retry_delay_ms.unwrap_or(0),
                expires_ms: checked.expires_ms,
            },
            subscriptions,
        };
        let n = u32::try_from(publish.subscriptions.len()).unwrap_or(u32::MAX);
        let accepted = self
            .hub
            .publish(publish)
            .await
            .map_err(|e| store_failed(&e))?;
        let (subscriptions, duplicate) = match accepted {
            Accepted::Stored(_) => {
                self.watchers.accepted(envelope);
                (n, false)
            }
            Accepted::Duplicate(_) => (0, true),
            Accepted::Unrouted => (0, false),
            Accepted::Full { used, limit } => {
                return Err(Invalid::new(
                    EpsCode::StoreFull,
                    "",
                    format!("the message store holds {used} of its {limit} bytes"),
                ));
            }
        };
        Ok(Published {
            message_id: meta.message_id,
            subscriptions,
            duplicate,
            source_module: source_of(envelope),
            reply: false,
        })
    }

    /// Validates, routes and stores one envelope (a reply goes to its
    /// requester instead).
    async fn accept(
        &self,
        sender: &Sender,
        envelope: &mut RcsEnvelope,
    ) -> Result<Published, Invalid> {
        match self.route(sender, envelope).await? {
            Routed::Reply => {
                self.watchers.accepted(envelope);
                Ok(Published {
                    message_id: envelope
                        .message_metadata
                        .as_ref()
                        .map(|m| m.message_id.clone())
                        .unwrap_or_default(),
                    subscriptions: 0,
                    duplicate: false,
                    source_module: source_of(envelope),
                    reply: true,
                })
            }
            Routed::To(checked, subscriptions) => {
                self.store(envelope, checked, subscriptions).await
            }
        }
    }

    /// Publishes a request and waits for its reply, or its timeout (M9).
    async fn ask(
        &self,
        sender: &Sender,
        envelope: &mut RcsEnvelope,
    ) -> Result<RcsEnvelope, Invalid> {
        let started = tokio::time::Instant::now();
        let reply_to = envelope
            .routing
            .as_ref()
            .and_then(|r| r.reply_to.clone())
            .unwrap_or_default();
        if reply_to.event_type.is_empty() {
            return Err(Invalid::new(
                EpsCode::NoReplyTo,
                "routing.reply_to.event_type",
                "a request names the event type of its reply",
            ));
        }
        let timeout = reply_to
            .timeout_ms
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let Routed::To(checked, subscriptions) = self.route(sender, envelope).await? else {
            return Err(Invalid::new(
                EpsCode::InvalidField,
                "message_metadata.correlation_id",
                "a request is not a reply",
            ));
        };
        let id = envelope
            .message_metadata
            .as_ref()
            .map(|m| m.message_id.clone())
            .unwrap_or_default();
        let responders = subscriptions
            .iter()
            .map(|s| module_of(s).to_owned())
            .collect();
        let mut waiting = self
            .requests
            .open(&id, &reply_to.event_type, responders)
            .map_err(|taken| {
                Invalid::new(
                    EpsCode::InvalidField,
                    "message_metadata.message_id",
                    match taken {
                        Taken::Waiting => "a request with this id is waiting for its reply already",
                        Taken::TimedOut => {
                            "a request with this id timed out: its id is not used again"
                        }
                    },
                )
            })?;
        // Other Cores hand their replies over while it waits (on NATS).
        let requests = self.requests.clone();
        let _serving = self
            .hub
            .serve_replies(&id, Arc::new(move |e, s| requests.answer(e, s)))
            .await;
        if let Err(e) = self.store(envelope, checked, subscriptions).await {
            waiting.refused();
            return Err(e);
        }
        // Dropped on every way out (the reply, the timeout, or the
        // requester going away with this future): the wait ends with it.
        waiting.reply(started + timeout).await.ok_or_else(|| {
            Invalid::new(
                EpsCode::Timeout,
                "routing.reply_to.timeout_ms",
                format!("no reply within {} ms", timeout.as_millis()),
            )
        })
    }
}

/// Where a message goes.
enum Routed {
    /// A reply, handed to its requester.
    Reply,
    /// To these subscriptions.
    To(rcs::Checked, Vec<String>),
}

fn event_type_of(envelope: &RcsEnvelope) -> &str {
    envelope
        .routing
        .as_ref()
        .map_or("", |r| r.event_type.as_str())
}

fn source_of(envelope: &RcsEnvelope) -> String {
    envelope
        .routing
        .as_ref()
        .map(|r| r.source_module.clone())
        .unwrap_or_default()
}

/// The caller's W3C `traceparent` header, if it sent one (M13).
fn traceparent_header<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn store_failed(e: &HubError) -> Invalid {
    tracing::error!("mediator: {e}");
    Invalid::new(EpsCode::Internal, "", e.to_string())
}

#[tonic::async_trait]
impl Mediator for MediatorService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let sender = self.caller(&request)?;
        let header = traceparent_header(&request);
        let reply = self
            .publish_one(&sender, header.as_deref(), request.into_inner())
            .await;
        Ok(Response::new(reply))
    }

    type PublishStreamStream = ReplyStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let sender = self.caller(&request)?;
        let link = match &sender {
            Sender::Module(me) => Some(self.link_of(me)?),
            Sender::Operator(_) => None,
        };
        let header = traceparent_header(&request);
        let (tx, rx) = mpsc::channel(PUBLISH_IN_FLIGHT);
        let publishing = Publishing {
            service: self.clone(),
            sender,
            header,
        };
        tokio::spawn(publishing.run(request.into_inner(), link, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type SubscribeStream = ItemStream;
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchMessagesRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.watch_accepted(request).map(Response::new)
    }

    async fn request(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<RequestReply>, Status> {
        let sender = self.caller(&request)?;
        let header = traceparent_header(&request);
        let Some(mut envelope) = request.into_inner().envelope else {
            let missing = Invalid::new(EpsCode::MissingField, "", "the request holds no envelope");
            return Ok(Response::new(RequestReply {
                outcome: Some(request_reply::Outcome::Error(self.eps(&missing, None))),
            }));
        };
        trace::adopt(&mut envelope, header.as_deref());
        let outcome = match self.ask(&sender, &mut envelope).await {
            Ok(reply) => {
                self.count(event_type_of(&envelope), "answered");
                request_reply::Outcome::Reply(reply)
            }
            Err(invalid) => {
                self.count(event_type_of(&envelope), invalid.code.as_str());
                request_reply::Outcome::Error(self.eps(&invalid, Some(&envelope)))
            }
        };
        Ok(Response::new(RequestReply {
            outcome: Some(outcome),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<DeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersReply>, Status> {
        self.list_dead(request).await.map(Response::new)
    }

    async fn replay_dead_letters(
        &self,
        request: Request<DeadLettersRequest>,
    ) -> Result<Response<DeadLettersReply>, Status> {
        self.end_dead(request, true).await.map(Response::new)
    }

    async fn purge_dead_letters(
        &self,
        request: Request<DeadLettersRequest>,
    ) -> Result<Response<DeadLettersReply>, Status> {
        self.end_dead(request, false).await.map(Response::new)
    }

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let sender = self.caller(&request)?;
        let Sender::Module(me) = sender else {
            return Err(Status::permission_denied(
                "operators publish; only modules receive messages",
            ));
        };
        let link = self.link_of(&me)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(OPEN_WAIT, inbound.message()).await;
        let (tx, rx) = mpsc::channel(8);
        let stream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        let open = match first {
            Ok(Ok(Some(SubscribeRequest {
                item: Some(subscribe_request::Item::Open(open)),
            }))) => open,
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no Open within {OPEN_WAIT:?}"
                )));
            }
            Ok(_) => {
                let e = Invalid::new(
                    EpsCode::UnknownDelivery,
                    "",
                    "a subscription's first request is Open",
                );
                let _ = tx.try_send(Ok(error_item(self.eps(&e, None))));
                return Ok(Response::new(stream));
            }
        };
        let subscriptions = match self.opened(&me, &open) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.try_send(Ok(error_item(self.eps(&e, None))));
                return Ok(Response::new(stream));
            }
        };
        let window = match open.window {
            0 => DEFAULT_WINDOW,
            n => n,
        };
        let subscriber = Subscriber {
            hub: self.hub.clone(),
            ctx: self.ctx.clone(),
            service: self.clone(),
            waker: self.hub.waker(&me),
            me,
            subscriptions: subscriptions.into(),
            window: Window::new(window as usize),
            parked: None,
            tx,
        };
        tokio::spawn(subscriber.run(inbound, link));
        Ok(Response::new(stream))
    }
}

impl MediatorService {
    /// `me`'s lease link from this Core, for a stream that ends with it.
    fn link_of(&self, me: &Urn) -> Result<crate::lease::LeaseLink, Status> {
        self.ctx.link(me).ok_or_else(|| {
            status_for(
                Reason::NoLease,
                format!("{me} holds no lease from this Core"),
                [],
            )
        })
    }

    /// One publish (of `Publish` or `PublishStream`): what its publisher is
    /// told.
    async fn publish_one(
        &self,
        sender: &Sender,
        header: Option<&str>,
        request: PublishRequest,
    ) -> PublishReply {
        let Some(mut envelope) = request.envelope else {
            let missing = Invalid::new(EpsCode::MissingField, "", "the request holds no envelope");
            return PublishReply {
                outcome: Some(publish_reply::Outcome::Error(self.eps(&missing, None))),
            };
        };
        trace::adopt(&mut envelope, header);
        let outcome = match self.accept(sender, &mut envelope).await {
            Ok(published) => {
                // A reply's event type is its requester's choice: counted
                // by name only when a permission names it, as any other.
                let outcome = if published.reply {
                    "reply"
                } else {
                    "published"
                };
                self.count(event_type_of(&envelope), outcome);
                publish_reply::Outcome::Published(published)
            }
            Err(invalid) => {
                self.count(event_type_of(&envelope), invalid.code.as_str());
                publish_reply::Outcome::Error(self.eps(&invalid, Some(&envelope)))
            }
        };
        PublishReply {
            outcome: Some(outcome),
        }
    }

    /// The subscriptions `open` asks for, each one `me` may receive.
    fn opened(&self, me: &Urn, open: &Open) -> Result<Vec<String>, Invalid> {
        if open.window > MAX_WINDOW {
            return Err(Invalid::new(
                EpsCode::InvalidField,
                "open.window",
                format!("{} is over {MAX_WINDOW}", open.window),
            ));
        }
        let allowed = self.grants.receivable(me);
        let types: Vec<&str> = if open.event_types.is_empty() {
            allowed.clone()
        } else {
            // Each type once: a type named again adds nothing (and would
            // hand its messages out again, and cost every look a scan).
            let mut seen = std::collections::HashSet::new();
            open.event_types
                .iter()
                .map(String::as_str)
                .filter(|t| seen.insert(*t))
                .collect()
        };
        if types.is_empty() {
            return Err(Invalid::new(
                EpsCode::NotPermitted,
                "open.event_types",
                format!("no [[permission]] lets {me} receive any event type"),
            ));
        }
        if let Some(t) = types.iter().find(|t| !allowed.contains(t)) {
            return Err(Invalid::new(
                EpsCode::NotPermitted,
                "open.event_types",
                format!("no [[permission]] lets {me} receive {t:.140}"),
            ));
        }
        Ok(types.into_iter().map(|t| subscription(t, me)).collect())
    }
}

fn now_ms() -> u64 {
    crate::audit::unix_ms(std::time::SystemTime::now())
}

fn error_item(e: EpsError) -> SubscribeItem {
    SubscribeItem {
        item: Some(subscribe_item::Item::Error(e)),
    }
}

/// One subscription stream.
struct Subscriber {
    hub: Hub,
    ctx: Arc<CoreContext>,
    service: MediatorService,
    waker: Arc<tokio::sync::Notify>,
    me: Urn,
    subscriptions: Arc<[String]>,
    /// What was sent and not answered; when the next delivery left
    /// unanswered lapses, the store is looked at again, so it is delivered
    /// again in time (M7).
    window: Window,
    /// Parked with the store's writer ([`Hub::park`]): what it hands over.
    parked: Option<Direct>,
    tx: mpsc::Sender<Result<SubscribeItem, Status>>,
}

/// Why a subscription stream ended.
enum End {
    /// The caller went away (or closed its side).
    Gone,
    /// The caller's lease ended.
    NoLease,
    /// The store failed.
    Failed(HubError),
}

impl Subscriber {
    async fn run(
        mut self,
        mut inbound: Streaming<SubscribeRequest>,
        link: crate::lease::LeaseLink,
    ) {
        let end = self.serve(&mut inbound, &link).await;
        self.release().await;
        match end {
            End::Gone => {}
            End::NoLease => {
                let status = status_for(
                    Reason::NoLease,
                    format!("{}'s lease from this Core ended", self.me),
                    [],
                );
                let _ = self.tx.send(Err(status)).await;
            }
            End::Failed(e) => {
                let e = store_failed(&e);
                let _ = self
                    .tx
                    .send(Ok(error_item(self.service.eps(&e, None))))
                    .await;
            }
        }
    }

    async fn serve(
        &mut self,
        inbound: &mut Streaming<SubscribeRequest>,
        link: &crate::lease::LeaseLink,
    ) -> End {
        let waker = self.waker.clone();
        // Registered before each look at the store and kept until it fires,
        // so no message queued between a look and the wait is missed.
        let notified = waker.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Whether the store may hold something due for this stream that it
        // has not been asked for: false only after a look found nothing
        // due, until a wake-up, a due time, a refusal or a full window.
        let mut look = true;
        let mut next_due = None;
        loop {
            if look {
                match self.look().await {
                    Ok(Some(due)) => {
                        next_due = due;
                        look = false;
                    }
                    Ok(None) => next_due = None,
                    Err(end) => return end,
                }
            }
            let room = self.window.room(now_ms());
            if !look && self.parked.is_none() && room > 0 {
                let room = room.min(MAX_BATCH);
                self.parked = self
                    .hub
                    .park(self.subscriptions.clone(), self.ack_wait_ms(), room);
            }
            let wait = self.wait(next_due);
            let direct = async {
                match self.parked.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                handed = direct => {
                    self.parked = None;
                    match handed {
                        Some(handed) => {
                            if let Some(end) = self.send(handed).await {
                                return end;
                            }
                        }
                        // The writer is gone (the Core is stopping).
                        None => look = true,
                    }
                }
                () = &mut notified => {
                    notified.set(waker.notified());
                    notified.as_mut().enable();
                    look = true;
                }
                () = tokio::time::sleep(wait) => look = true,
                () = link.ended() => return End::NoLease,
                () = self.tx.closed() => return End::Gone,
                request = inbound.message() => match request {
                    Ok(Some(request)) => {
                        let full = room == 0;
                        let (requests, gone) = more_ready(inbound, request);
                        match self.answer(requests).await {
                            Ok(refused) => look |= full || refused,
                            Err(e) => return End::Failed(e),
                        }
                        if gone {
                            return End::Gone;
                        }
                    }
                    Ok(None) | Err(_) => return End::Gone,
                },
            }
        }
    }

    /// How long the stream may wait before it looks again: until the next
    /// message is due (`next_due`) or the window's next lapse, whichever
    /// comes first (an hour when neither is known).
    fn wait(&self, next_due: Option<u64>) -> Duration {
        let due = match (next_due, self.window.next_lapse()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        due.map_or(Duration::from_secs(3600), |due| {
            Duration::from_millis(due.saturating_sub(now_ms()))
        })
    }

    /// Hands out what is due while the window has room: `Some` with when
    /// the next is due (if known) once nothing more is, `None` when the
    /// window is full.
    async fn look(&mut self) -> Result<Option<Option<u64>>, End> {
        // What the writer handed over before this is counted first: the
        // window holds.
        if let Some(handed) = self.unpark()
            && let Some(end) = self.send(handed).await
        {
            return Err(end);
        }
        while self.window.room(now_ms()) > 0 {
            if !self.ctx.is_leased(&self.me) {
                return Err(End::NoLease);
            }
            match self.hand_out().await {
                Ok(Batch::More) => {}
                Ok(Batch::Gone) => return Err(End::Gone),
                Ok(Batch::NoLease) => return Err(End::NoLease),
                Ok(Batch::Idle(due)) => return Ok(Some(due)),
                Err(e) => return Err(End::Failed(e)),
            }
        }
        Ok(None)
    }

    fn ack_wait_ms(&self) -> u64 {
        u64::try_from(self.service.ack_wait.as_millis()).unwrap_or(u64::MAX)
    }

    /// Hands out what is due, at most [`MAX_BATCH`] and what the window
    /// has room for, taken from the store at once.
    async fn hand_out(&mut self) -> Result<Batch, HubError> {
        let room = self.window.room(now_ms()).min(MAX_BATCH);
        let (taken, idle) = self
            .hub
            .take(self.subscriptions.clone(), self.ack_wait_ms(), room)
            .await?;
        let full = taken.len() == room;
        if taken.is_empty() {
            return Ok(Batch::Idle(idle));
        }
        Ok(match self.send(taken).await {
            Some(End::Gone) => Batch::Gone,
            Some(End::NoLease) => Batch::NoLease,
            Some(End::Failed(e)) => return Err(e),
            None if full => Batch::More,
            None => Batch::Idle(idle),
        })
    }

    /// Sends what the store handed out, each while the caller's lease
    /// holds (M11); how the stream ends, if it does.
    async fn send(&mut self, taken: HandedOut) -> Option<End> {
        // Held from now on: what is not sent goes back when the stream ends.
        let lapses = now_ms().saturating_add(self.ack_wait_ms());
        for (index, handed) in &taken {
            self.window.sent(handed.seq, *index, handed.once, lapses);
        }
        for (_, handed) in taken {
            if !self.ctx.is_leased(&self.me) {
                return Some(End::NoLease);
            }
            let Ok(envelope) = RcsEnvelope::decode(handed.envelope.as_slice()) else {
                let corrupt = super::store::StoreError::Corrupt(handed.seq);
                return Some(End::Failed(HubError::from(corrupt)));
            };
            self.service.count(event_type_of(&envelope), "delivered");
            let item = SubscribeItem {
                item: Some(subscribe_item::Item::Delivery(pb::Delivery {
                    delivery: handed.seq,
                    attempt: handed.attempt,
                    traceparent: trace::traceparent(&envelope),
                    envelope: Some(envelope),
                })),
            };
            if self.tx.send(Ok(item)).await.is_err() {
                return Some(End::Gone);
            }
        }
        None
    }

    /// Withdraws the stream from the writer; what it was handed before.
    fn unpark(&mut self) -> Option<HandedOut> {
        let mut rx = self.parked.take()?;
        rx.close();
        rx.try_recv().ok()
    }

    /// `Ack`s and `Nack`s, answered to the store at once (a second `Open`
    /// is refused); whether any was a refusal (queued again, maybe due now).
    async fn answer(&mut self, requests: Vec<SubscribeRequest>) -> Result<bool, HubError> {
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            if let Some(answer) = self.answered(request).await {
                answers.push(answer);
            }
        }
        let refused = answers.iter().any(|(_, _, refusal)| refusal.is_some());
        if !answers.is_empty() {
            self.hub.answer(answers).await?;
        }
        Ok(refused)
    }

    /// One `Ack` or `Nack`: what the store is to be told, if anything.
    async fn answered(
        &mut self,
        request: SubscribeRequest,
    ) -> Option<(String, u64, Option<String>)> {
        let (delivery, nack) = match request.item {
            Some(subscribe_request::Item::Ack(a)) => (a.delivery, None),
            Some(subscribe_request::Item::Nack(n)) => (n.delivery, Some(n.reason)),
            _ => {
                let e = Invalid::new(EpsCode::UnknownDelivery, "", "Open comes first, and once");
                let _ = self
                    .tx
                    .send(Ok(error_item(self.service.eps(&e, None))))
                    .await;
                return None;
            }
        };
        let index = match self.window.answer(delivery) {
            Named::Held(index) => index,
            // Taken and ignored: it needs no answer.
            Named::Once => return None,
            Named::Unknown => {
                let e = Invalid::new(
                    EpsCode::UnknownDelivery,
                    "",
                    format!("no delivery {delivery} is outstanding on this stream"),
                );
                let _ = self
                    .tx
                    .send(Ok(error_item(self.service.eps(&e, None))))
                    .await;
                return None;
            }
        };
        let subscription = self.subscriptions[index].clone();
        let event_type = subscription.split_once(' ').map_or("", |(t, _)| t);
        let answer = if nack.is_some() { "nacked" } else { "acked" };
        self.service.count(event_type, answer);
        Some((subscription, delivery, nack))
    }

    /// What the stream held unanswered is due again now (M11).
    async fn release(&mut self) {
        // Handed over but not sent: back to the queue too, whatever its mode.
        let unsent = self
            .unpark()
            .into_iter()
            .flatten()
            .map(|(index, h)| (h.seq, index));
        let held: Vec<(String, u64)> = unsent
            .chain(self.window.drain_held())
            .map(|(seq, index)| (self.subscriptions[index].clone(), seq))
            .collect();
        if held.is_empty() {
            return;
        }
        let released = self.hub.release(held).await;
        if let Err(e) = released {
            tracing::error!("mediator: releasing {}'s deliveries: {e}", self.me);
        }
        // Another stream of the same module may take them now.
        self.waker.notify_waiters();
    }
}

/// What became of one [`Subscriber::hand_out`].
enum Batch {
    /// As many as asked were handed out: there may be more.
    More,
    /// Nothing more is due; the next is due then (Unix ms), if any.
    Idle(Option<u64>),
    /// The caller went away.
    Gone,
    /// The caller's lease ended.
    NoLease,
}

/// The most deliveries taken from the store at once.
const MAX_BATCH: usize = 64;
/// The most answers told the store at once.
const MAX_ANSWERS: usize = 256;

/// `first` and the requests that arrived with it (ready now, at most
/// [`MAX_ANSWERS`]); true when the caller closed its side after them.
fn more_ready(
    inbound: &mut Streaming<SubscribeRequest>,
    first: SubscribeRequest,
) -> (Vec<SubscribeRequest>, bool) {
    let mut requests = vec![first];
    while requests.len() < MAX_ANSWERS {
        match ready_now(inbound.message()) {
            Some(Ok(Some(request))) => requests.push(request),
            Some(Ok(None) | Err(_)) => return (requests, true),
            None => break,
        }
    }
    (requests, false)
}

/// `f`'s output if it is ready at its first poll. (Not a zero timeout: the
/// runtime's timer would make that wait for its next tick.)
fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// One `PublishStream`: each request published as `Publish` does (many at
/// once, through the store's commit groups), answered in the order sent.
struct Publishing {
    service: MediatorService,
    sender: Sender,
    header: Option<String>,
}

impl Publishing {
    /// Reads `inbound` and answers each request on `tx` in order, until
    /// the stream, its reader or the sender's lease ends.
    ///
    /// The publishes in flight are futures of this one task (not a task
    /// each): they wait on the store's commit groups together, and a reply
    /// wakes nothing but this task.
    async fn run(
        self,
        mut inbound: Streaming<PublishRequest>,
        link: Option<crate::lease::LeaseLink>,
        tx: mpsc::Sender<Result<PublishReply, Status>>,
    ) {
        let ended = async {
            match &link {
                Some(link) => link.ended().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(ended);
        // At most PUBLISH_IN_FLIGHT, and one answer waiting for room in
        // `tx`: a publisher that does not read its answers is not read
        // either.
        let mut in_flight = FuturesOrdered::new();
        let mut ready: Option<Result<PublishReply, Status>> = None;
        // How the stream ends, once what was read is answered: `None` when
        // the publisher closed it; else the status it ends with.
        let end: Option<Status> = loop {
            tokio::select! {
                biased;
                () = &mut ended => break Some(self.lease_ended()),
                () = tx.closed() => return,
                permit = tx.reserve(), if ready.is_some() => match (permit, ready.take()) {
                    (Ok(permit), Some(reply)) => permit.send(reply),
                    _ => return,
                },
                Some(reply) = in_flight.next(), if ready.is_none() => ready = Some(reply),
                request = inbound.message(), if in_flight.len() < PUBLISH_IN_FLIGHT => {
                    let request = match request {
                        Ok(Some(request)) => request,
                        Ok(None) => break None,
                        // A request the gRPC layer refused (over the size
                        // limit, not a message): it and what follows are
                        // not read, and the stream says so at its end.
                        Err(status) => break Some(status),
                    };
                    if let Sender::Module(urn) = &self.sender
                        && !self.service.ctx.is_leased(urn)
                    {
                        break Some(self.lease_ended());
                    }
                    in_flight.push_back(self.publish(request));
                }
            }
        };
        // What was read is still answered, in order; then the end, unless
        // the publisher closed the stream.
        if let Some(reply) = ready.take()
            && tx.send(reply).await.is_err()
        {
            return;
        }
        while let Some(reply) = in_flight.next().await {
            if tx.send(reply).await.is_err() {
                return;
            }
        }
        if let Some(status) = end {
            let _ = tx.send(Err(status)).await;
        }
    }

    /// The end of a stream whose publisher's lease ended.
    fn lease_ended(&self) -> Status {
        let (Sender::Module(urn) | Sender::Operator(urn)) = &self.sender;
        status_for(
            Reason::NoLease,
            format!("{urn}'s lease from this Core ended"),
            [],
        )
    }

    /// One request published; a panic answered as an internal error, as a
    /// failed task would be.
    async fn publish(&self, request: PublishRequest) -> Result<PublishReply, Status> {
        let publishing = self
            .service
            .publish_one(&self.sender, self.header.as_deref(), request);
        AssertUnwindSafe(publishing)
            .catch_unwind()
            .await
            .map_err(|_| Status::internal("a publish of this stream failed"))
    }
}
