//! The mediator's message space on NATS JetStream (`[mediator] backend =
//! "nats"`, M14): what [`super::store::Store`] does on one Core's disk, on
//! streams every Core naming the same server and prefix shares, so a module
//! on one Core receives what a module on another published, and a Core's
//! `kill -9` loses nothing accepted (the server holds it; JetStream hands a
//! delivery the dead Core never answered to another once the ack wait
//! passes).
//!
//! With the prefix `P` (PROTOCOL.md §13.11):
//! - stream `P_QUEUE` (work queue, file storage, `max_bytes` the store's
//!   limit, new messages refused when full, a 10 minute duplicate window)
//!   holds one copy of each message per subscription it is routed to, on
//!   subject `P.q.<subscription in hex>.<rank>`, the [`Record`] bytes as the
//!   payload; an `exactly_once` copy carries `Nats-Msg-Id: <message_id>.<subscription hash>`;
//! - one durable pull consumer per subscription and rank,
//!   `q<rank>-<subscription hash>`, explicit acks, the mediator's ack wait,
//!   deliveries unlimited (retries are counted here, as in the embedded
//!   store): ranks are read critical first (M6);
//! - stream `P_DEAD` holds dead letters on
//!   `P.dead.<subscription in hex>.<delivery>`,
//!   the record as payload and the `Anima-*` headers below;
//! - core NATS subject `P.wake.<subscription in hex>` tells every Core's
//!   subscribers that a message was queued.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_nats::{HeaderMap, Subject};
use tokio_stream::StreamExt as _;

use anima_protocol::Urn;
use anima_protocol::pb::RcsEnvelope;
use prost::Message as _;

use super::record::Record;
use super::request::{Reply, correlation_of};
use super::store::{
    Accepted, DEDUP_WINDOW_MS, DeadFilter, DeadLetter, Handed, Incoming, Retry, StoreError, Taken,
    backoff, spent,
};

/// The dead letter's subscription.
const SUBSCRIPTION: &str = "Anima-Subscription";
/// Its deliveries before it was dead-lettered.
const ATTEMPTS: &str = "Anima-Attempts";
/// When it was dead-lettered (Unix ms).
const SINCE: &str = "Anima-Since";
/// Why.
const REASON: &str = "Anima-Reason";
/// A replayed copy's delivery number: the one it had before (a copy
/// without it is numbered by its queue stream sequence).
const DELIVERY: &str = "Anima-Delivery";

/// How long a request to the server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle subscriber looks again for redeliveries it was not
/// told of (another Core's refusals and lapsed ack waits).
const POLL_MS: u64 = 1000;
/// The fewest bytes a server's `max_payload` may be: a record at the
/// mediator's limits (PROTOCOL.md §13.1) and its headers.
pub const MIN_MAX_PAYLOAD: i64 = (1 << 20) + (64 << 10) + 4096;
/// What the redeliveries a Core knows of are rounded up to, so that a
/// subscription keeps at most `ack_wait / DUE_GRAIN_MS` of them.
const DUE_GRAIN_MS: u64 = 10;
/// The most dead letters one listing reads.
const MAX_LISTED: usize = 100_000;

/// Where the mediator's messages are on a NATS server.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `tls://HOST:PORT`.
    pub url: String,
    /// The streams' prefix.
    pub stream: String,
    /// The most bytes of queued messages (the queue stream's `max_bytes`).
    pub limit: u64,
    /// The consumers' ack wait.
    pub ack_wait: Duration,
    /// The TLS client configuration (TLS 1.3, the Core's certificate).
    pub tls: rustls::ClientConfig,
    /// The name the connection gives the server.
    pub name: String,
}

/// A delivery handed out and not answered yet.
struct Held {
    message: jetstream::Message,
    record: Record,
    attempt: u32,
    /// When the server redelivers it unanswered (Unix ms): handed out
    /// plus `ack_wait`.
    redelivered_ms: u64,
}

/// The message space on JetStream. Cloning shares it.
#[derive(Clone)]
pub struct NatsStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    queue: stream::Stream,
    dead: stream::Stream,
    prefix: String,
    limit: u64,
    ack_wait: Duration,
    consumers: Mutex<HashMap<(String, u8), consumer::PullConsumer>>,
    /// What each subscription was handed and has not answered, by delivery.
    held: Mutex<HashMap<String, HashMap<u64, Held>>>,
    /// Lease ends per delivery (M11): they do not count as attempts.
    released: Mutex<HashMap<(String, u64), u32>>,
    /// Instants (Unix ms, rounded up to [`DUE_GRAIN_MS`]) a redelivery this
    /// Core knows of is due, per subscription.
    dues: Mutex<HashMap<String, BTreeSet<u64>>>,
}

fn nats(what: &'static str) -> impl FnOnce(async_nats::Error) -> StoreError {
    move |source| StoreError::Nats { what, source }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Nats {
        what,
        source: Box::new(e),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `subscription` as a subject token: lowercase hex of its bytes.
pub fn token(subscription: &str) -> String {
    anima_protocol::hex::lower(subscription.as_bytes())
}

/// The subscription a subject token names, when it is one.
pub fn from_token(token: &str) -> Option<String> {
    String::from_utf8(anima_protocol::hex::decode(token)?).ok()
}

/// A short name for `subscription` where subjects are too long (consumer
/// names, message ids): 32 hex digits of its SHA-256.
pub fn hash(subscription: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, subscription.as_bytes());
    anima_protocol::hex::lower(&digest.as_ref()[..16])
}

impl NatsStore {
    /// Connects (TLS 1.3 only) and makes sure the streams are there.
    pub async fn connect(config: NatsConfig) -> Result<NatsStore, StoreError> {
        let client = async_nats::ConnectOptions::new()
            .name(&config.name)
            .require_tls(true)
            .tls_client_config(config.tls)
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .connect(config.url.as_str())
            .await
            .map_err(boxed("connecting"))?;
        let max_payload = i64::try_from(client.server_info().max_payload).unwrap_or(i64::MAX);
        if max_payload < MIN_MAX_PAYLOAD {
            return Err(StoreError::NatsPayload {
                server: max_payload,
                needed: MIN_MAX_PAYLOAD,
            });
        }
        let js = jetstream::new(client.clone());
        let prefix = config.stream;
        // Created, or brought to this configuration (a changed
        // `max_store_bytes` applies to streams made before it).
        let queue = stream_as(
            &js,
            stream::Config {
                name: format!("{prefix}_QUEUE"),
                subjects: vec![format!("{prefix}.q.>")],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                max_bytes: i64::try_from(config.limit).unwrap_or(i64::MAX),
                discard: stream::DiscardPolicy::New,
                duplicate_window: Duration::from_millis(DEDUP_WINDOW_MS),
                max_message_size: i32::try_from(MIN_MAX_PAYLOAD).unwrap_or(i32::MAX),
                ..Default::default()
            },
            "the queue stream",
        )
        .await?;
        let dead = stream_as(
            &js,
            stream::Config {
                name: format!("{prefix}_DEAD"),
                subjects: vec![format!("{prefix}.dead.>")],
                storage: stream::StorageType::File,
                max_bytes: i64::try_from(config.limit).unwrap_or(i64::MAX),
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            },
            "the dead-letter stream",
        )
        .await?;
        Ok(NatsStore {
            inner: Arc::new(Inner {
                client,
                js,
                queue,
                dead,
                prefix,
                limit: config.limit,
                ack_wait: config.ack_wait,
                consumers: Mutex::default(),
                held: Mutex::default(),
                released: Mutex::default(),
                dues: Mutex::default(),
            }),
        })
    }

    fn queue_subject(&self, subscription: &str, rank: u8) -> String {
        format!("{}.q.{}.{rank}", self.inner.prefix, token(subscription))
    }

    fn dead_subject(&self, subscription: &str, delivery: u64) -> String {
        format!(
            "{}.dead.{}.{delivery}",
            self.inner.prefix,
            token(subscription)
        )
    }

    /// The subject every Core hears "a message was queued" on
    /// (`<prefix>.wake.>`); the subscription is the last token.
    pub fn wake_subjects(&self) -> String {
        format!("{}.wake.>", self.inner.prefix)
    }

    /// Tells every Core's subscribers of `subscription` that a message was
    /// queued for it (best effort: an idle subscriber also polls).
    async fn wake(&self, subscription: &str) {
        let subject = format!("{}.wake.{}", self.inner.prefix, token(subscription));
        let _ = self
            .inner
            .client
            .publish(subject, bytes::Bytes::new())
            .await;
    }

    /// The core NATS subscription to [`NatsStore::wake_subjects`].
    pub async fn wakes(&self) -> Result<async_nats::Subscriber, StoreError> {
        self.inner
            .client
            .subscribe(self.wake_subjects())
            .await
            .map_err(boxed("subscribing to wake-ups"))
    }

    fn reply_subject(&self, request_id: &str) -> String {
        format!("{}.reply.{}", self.inner.prefix, token(request_id))
    }

    /// Answers, for as long as the returned guard lives, other Cores'
    /// questions "is this a reply to request `id`?" with `answer` (the
    /// request waits on this Core).
    pub async fn serve_replies(
        &self,
        id: &str,
        answer: ReplyAnswer,
    ) -> Result<ServingReplies, StoreError> {
        let mut questions = self
            .inner
            .client
            .subscribe(self.reply_subject(id))
            .await
            .map_err(boxed("serving a request's replies"))?;
        // The server has the subscription before the request is published.
        self.inner
            .client
            .flush()
            .await
            .map_err(boxed("serving a request's replies"))?;
        let client = self.inner.client.clone();
        let task = tokio::spawn(async move {
            while let Some(question) = questions.next().await {
                let Some(to) = question.reply else { continue };
                let verdict = match asked(&question.payload) {
                    Some((sender, envelope)) => answer(&envelope, &sender),
                    None => Reply::No,
                };
                let word = match verdict {
                    Reply::No => "no",
                    Reply::Delivered => "delivered",
                    Reply::Late => "late",
                };
                let _ = client
                    .publish(to, bytes::Bytes::from_static(word.as_bytes()))
                    .await;
            }
        });
        Ok(ServingReplies(task))
    }

    /// Whether `envelope` from `sender`, which answers no request waiting
    /// on this Core, is the reply to one waiting on another (M14); `No`
    /// when no Core waits for its `correlation_id`.
    pub async fn reply_elsewhere(&self, envelope: &RcsEnvelope, sender: &Urn) -> Reply {
        let Some(id) = correlation_of(envelope) else {
            return Reply::No;
        };
        let mut question = format!("{sender}\n").into_bytes();
        question.extend_from_slice(&envelope.encode_to_vec());
        let asked = self
            .inner
            .client
            .request(self.reply_subject(id), question.into())
            .await;
        match asked {
            Ok(answer) if answer.payload.as_ref() == b"delivered" => Reply::Delivered,
            Ok(answer) if answer.payload.as_ref() == b"late" => Reply::Late,
            Ok(_) => Reply::No,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Reply::No,
            Err(e) => {
                tracing::warn!("mediator: asking the other Cores about reply {id:.64}: {e}");
                Reply::No
            }
        }
    }

    /// Stores one message: a copy for each subscription, every copy
    /// acknowledged by the server before this returns.
    pub async fn accept(&self, m: &Incoming<'_>, now_ms: u64) -> Result<Accepted, StoreError> {
        if m.subscriptions.is_empty() {
            return Ok(Accepted::Unrouted);
        }
        let bytes = bytes::Bytes::from(
            Record {
                delivery: m.delivery,
                accepted_ms: now_ms,
                envelope: m.envelope.to_vec(),
            }
            .encode(),
        );
        let mut pending = Vec::with_capacity(m.subscriptions.len());
        for sub in m.subscriptions {
            let mut publish = jetstream::message::PublishMessage::build().payload(bytes.clone());
            if m.exactly_once {
                publish = publish.message_id(format!("{}.{}", m.message_id, hash(sub)));
            }
            let subject = self.queue_subject(sub, m.delivery.rank);
            let ack = self.inner.js.send_publish(subject, publish).await;
            pending.push(ack.map_err(boxed("publishing"))?);
        }
        let mut first = None;
        let mut duplicates = 0;
        for ack in pending {
            match ack.await {
                Ok(ack) => {
                    first.get_or_insert(ack.sequence);
                    duplicates += usize::from(ack.duplicate);
                }
                Err(e) if is_full(&e) => {
                    let used = self.used().await.unwrap_or(self.inner.limit);
                    return Ok(Accepted::Full {
                        used,
                        limit: self.inner.limit,
                    });
                }
                Err(e) => return Err(boxed("publishing")(e)),
            }
        }
        let seq = first.unwrap_or_default();
        if duplicates == m.subscriptions.len() {
            return Ok(Accepted::Duplicate(seq));
        }
        for sub in m.subscriptions {
            self.wake(sub).await;
        }
        Ok(Accepted::Stored(seq))
    }

    async fn used(&self) -> Result<u64, StoreError> {
        let mut queue = self.inner.queue.clone();
        let info = queue.info().await.map_err(boxed("the queue stream"))?;
        Ok(info.state.bytes)
    }

    async fn consumer(
        &self,
        subscription: &str,
        rank: u8,
    ) -> Result<consumer::PullConsumer, StoreError> {
        let key = (subscription.to_owned(), rank);
        if let Some(c) = lock(&self.inner.consumers).get(&key) {
            return Ok(c.clone());
        }
        let name = format!("q{rank}-{}", hash(subscription));
        let c = self
            .inner
            .queue
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: self.queue_subject(subscription, rank),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.inner.ack_wait,
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(boxed("a subscription's consumer"))?;
        lock(&self.inner.consumers).insert(key, c.clone());
        Ok(c)
    }

    /// At most `max` messages due for `subscriptions` (one subscriber's),
    /// by priority, each with its subscription's index: as
    /// [`super::store::Store::take_many`]. Each subscription and rank is
    /// asked once for what it has, up to what is still wanted.
    pub async fn take_many(
        &self,
        subscriptions: &[String],
        now_ms: u64,
        max: usize,
    ) -> Result<Taken, StoreError> {
        let mut taken = Vec::new();
        for rank in 0..=3u8 {
            for (index, sub) in subscriptions.iter().enumerate() {
                let room = max - taken.len();
                if room == 0 {
                    return Ok((taken, None));
                }
                let handed = self.take_from(sub, rank, now_ms, room).await?;
                taken.extend(handed.into_iter().map(|h| (index, h)));
            }
        }
        let next = (taken.len() < max).then(|| self.next_due(subscriptions, now_ms));
        Ok((taken, next))
    }

    /// Up to `room` messages of `subscription` at `rank`, ending on the way
    /// the ones that expired or spent their retries.
    async fn take_from(
        &self,
        sub: &str,
        rank: u8,
        now_ms: u64,
        room: usize,
    ) -> Result<Vec<Handed>, StoreError> {
        let consumer = self.consumer(sub, rank).await?;
        let mut out = Vec::new();
        loop {
            let want = room - out.len();
            if want == 0 {
                return Ok(out);
            }
            // A consumer that fails (the server lost it, say) is asked for
            // again next time.
            let forget = || {
                lock(&self.inner.consumers).remove(&(sub.to_owned(), rank));
            };
            let mut batch = consumer
                .fetch()
                .max_messages(want)
                .messages()
                .await
                .inspect_err(|_| forget())
                .map_err(boxed("fetching"))?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                got += 1;
                let message = message
                    .inspect_err(|_| forget())
                    .map_err(nats("fetching"))?;
                if let Some(handed) = self.received(sub, message, now_ms).await? {
                    out.push(handed);
                }
            }
            if got < want {
                return Ok(out);
            }
        }
    }

    /// One fetched message: handed out, or ended (`None`).
    async fn received(
        &self,
        sub: &str,
        message: jetstream::Message,
        now_ms: u64,
    ) -> Result<Option<Handed>, StoreError> {
        let (seq, delivered) = {
            let info = message.info().map_err(nats("a delivery's metadata"))?;
            (
                delivery_of(&message).unwrap_or(info.stream_sequence),
                info.delivered,
            )
        };
        let Some(record) = Record::decode(&message.payload) else {
            tracing::error!("mediator: NATS message {seq} of {sub} is no record; dropped");
            message.ack_with(AckKind::Term).await.map_err(nats("ack"))?;
            return Ok(None);
        };
        let released = lock(&self.inner.released)
            .get(&(sub.to_owned(), seq))
            .copied()
            .unwrap_or(0);
        let before = u32::try_from(delivered.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .saturating_sub(released);
        let d = record.delivery;
        if let Some(why) = d.over(before, now_ms) {
            self.end(sub, (seq, &message, &record), before, why, now_ms)
                .await?;
            return Ok(None);
        }
        let attempt = before + 1;
        let handed = Handed {
            seq,
            attempt,
            envelope: record.envelope.clone(),
            once: d.at_most_once,
        };
        if d.at_most_once {
            message.ack().await.map_err(nats("ack"))?;
        } else {
            let ack_wait = u64::try_from(self.inner.ack_wait.as_millis()).unwrap_or(u64::MAX);
            let held = Held {
                message,
                record,
                attempt,
                redelivered_ms: now_ms.saturating_add(ack_wait),
            };
            let mut all = lock(&self.inner.held);
            if let Some(subscription) = all.get_mut(sub) {
                subscription.insert(seq, held);
            } else {
                all.insert(sub.to_owned(), HashMap::from([(seq, held)]));
            }
        }
        Ok(Some(handed))
    }

    /// Moves a message whose delivery is over to the dead-letter stream (or
    /// drops and counts it), then takes it off the queue.
    async fn end(
        &self,
        sub: &str,
        (seq, message, record): (u64, &jetstream::Message, &Record),
        attempts: u32,
        why: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let dead = record.delivery.dead_letter;
        if dead {
            let mut headers = HeaderMap::new();
            headers.insert(SUBSCRIPTION, sub);
            headers.insert(ATTEMPTS, attempts.to_string().as_str());
            headers.insert(SINCE, now_ms.to_string().as_str());
            headers.insert(REASON, header_text(why).as_str());
            self.inner
                .js
                .publish_with_headers(
                    self.dead_subject(sub, seq),
                    headers,
                    message.payload.clone(),
                )
                .await
                .map_err(boxed("dead-lettering"))?
                .await
                .map_err(boxed("dead-lettering"))?;
        } else {
            tracing::info!("mediator: a message for {sub} dropped (no dead-letter queue): {why}");
        }
        message.double_ack().await.map_err(nats("ack"))?;
        lock(&self.inner.released).remove(&(sub.to_owned(), seq));
        Ok(dead)
    }

    fn due(&self, sub: &str, at: u64) {
        lock(&self.inner.dues)
            .entry(sub.to_owned())
            .or_default()
            .insert(at.div_ceil(DUE_GRAIN_MS).saturating_mul(DUE_GRAIN_MS));
    }

    /// When an idle subscriber of `subscriptions` looks again: at the next
    /// redelivery this Core knows of (a refusal's backoff, or the ack
    /// deadline of a delivery it holds), soon after one that is due (the
    /// server makes it available), at the latest in [`POLL_MS`].
    fn next_due(&self, subscriptions: &[String], now_ms: u64) -> u64 {
        // What was due more than a poll ago has been looked for.
        let since = now_ms.saturating_sub(POLL_MS);
        let soon = |d: u64| if d <= now_ms { now_ms + 20 } else { d };
        let mut next = now_ms + POLL_MS;
        {
            let mut dues = lock(&self.inner.dues);
            for sub in subscriptions {
                if let Some(set) = dues.get_mut(sub) {
                    *set = set.split_off(&since);
                    if let Some(&d) = set.first() {
                        next = next.min(soon(d));
                    }
                }
            }
        }
        let held = lock(&self.inner.held);
        for h in subscriptions
            .iter()
            .filter_map(|sub| held.get(sub))
            .flat_map(HashMap::values)
        {
            if h.redelivered_ms >= since {
                next = next.min(soon(h.redelivered_ms));
            }
        }
        next
    }

    fn held(&self, sub: &str, seq: u64) -> Option<Held> {
        let mut all = lock(&self.inner.held);
        let subscription = all.get_mut(sub)?;
        let held = subscription.remove(&seq);
        if subscription.is_empty() {
            all.remove(sub);
        }
        held
    }

    /// The subscriber handled `seq`.
    pub async fn ack(&self, sub: &str, seq: u64) -> Result<bool, StoreError> {
        let Some(held) = self.held(sub, seq) else {
            return Ok(false);
        };
        held.message.ack().await.map_err(nats("ack"))?;
        lock(&self.inner.released).remove(&(sub.to_owned(), seq));
        Ok(true)
    }

    /// The subscriber refused `seq`: as [`super::store::Store::nack`].
    pub async fn nack(
        &self,
        sub: &str,
        seq: u64,
        now_ms: u64,
        reason: &str,
    ) -> Result<Retry, StoreError> {
        let Some(held) = self.held(sub, seq) else {
            return Ok(Retry::Unknown);
        };
        let d = held.record.delivery;
        if held.attempt > d.max_retries {
            let dead = self
                .end(
                    sub,
                    (seq, &held.message, &held.record),
                    held.attempt,
                    &spent(reason),
                    now_ms,
                )
                .await?;
            return Ok(if dead {
                Retry::DeadLettered
            } else {
                Retry::Dropped
            });
        }
        let delay = backoff(d.retry_delay_ms, held.attempt);
        held.message
            .ack_with(AckKind::Nak(Some(Duration::from_millis(delay))))
            .await
            .map_err(nats("nak"))?;
        let due = now_ms.saturating_add(delay);
        self.due(sub, due);
        Ok(Retry::At(due))
    }

    /// The subscriber's lease ended while it held `seq` (M11): due again
    /// now, not counted as an attempt.
    pub async fn release(&self, sub: &str, seq: u64) -> Result<bool, StoreError> {
        let Some(held) = self.held(sub, seq) else {
            return Ok(false);
        };
        *lock(&self.inner.released)
            .entry((sub.to_owned(), seq))
            .or_default() += 1;
        held.message
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(nats("nak"))?;
        Ok(true)
    }

    /// The dead letters: their `seq` is their sequence in the dead-letter
    /// stream.
    pub async fn dead_letters(&self, filter: &DeadFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let mut dead = self.inner.dead.clone();
        let info = dead.info().await.map_err(boxed("the dead-letter stream"))?;
        if info.state.messages == 0 {
            return Ok(Vec::new());
        }
        let reader = dead
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(boxed("reading dead letters"))?;
        let mut out = Vec::new();
        loop {
            let mut batch = reader
                .fetch()
                .max_messages(256)
                .messages()
                .await
                .map_err(boxed("reading dead letters"))?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(nats("reading dead letters"))?;
                got += 1;
                if let Some(letter) = dead_letter(&message, filter) {
                    out.push(letter);
                }
            }
            if got < 256 || out.len() >= MAX_LISTED {
                break;
            }
        }
        let name = reader.cached_info().name.clone();
        let _ = dead.delete_consumer(&name).await;
        // As the embedded store lists them: by subscription, then delivery.
        out.sort_by(|a, b| (&a.subscription, a.seq).cmp(&(&b.subscription, b.seq)));
        Ok(out)
    }

    /// The dead letter `seq` of `sub`, when there is one: its sequence in
    /// the dead-letter stream and its record.
    async fn dead_letter(&self, sub: &str, seq: u64) -> Result<Option<(u64, Record)>, StoreError> {
        match self
            .inner
            .dead
            .get_last_raw_message_by_subject(&self.dead_subject(sub, seq))
            .await
        {
            Ok(m) => Ok(Record::decode(&m.payload).map(|r| (m.sequence, r))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(boxed("reading a dead letter")(e)),
        }
    }

    /// Queues the dead letter `seq` of `sub` again, as new (the same
    /// delivery number, its attempts starting over).
    pub async fn replay(&self, sub: &str, seq: u64) -> Result<bool, StoreError> {
        let Some((dead_seq, record)) = self.dead_letter(sub, seq).await? else {
            return Ok(false);
        };
        let subject = self.queue_subject(sub, record.delivery.rank);
        let mut headers = HeaderMap::new();
        headers.insert(DELIVERY, seq.to_string().as_str());
        self.inner
            .js
            .publish_with_headers(subject, headers, bytes::Bytes::from(record.encode()))
            .await
            .map_err(boxed("replaying"))?
            .await
            .map_err(boxed("replaying"))?;
        self.delete_dead(dead_seq).await?;
        self.wake(sub).await;
        Ok(true)
    }

    async fn delete_dead(&self, dead_seq: u64) -> Result<bool, StoreError> {
        self.inner
            .dead
            .delete_message(dead_seq)
            .await
            .map_err(boxed("deleting a dead letter"))
    }

    /// Deletes the dead letter `seq` of `sub`.
    pub async fn purge_one(&self, sub: &str, seq: u64) -> Result<bool, StoreError> {
        match self.dead_letter(sub, seq).await? {
            Some((dead_seq, _)) => self.delete_dead(dead_seq).await,
            None => Ok(false),
        }
    }
}

/// The stream `config` names, created or updated to `config`.
async fn stream_as(
    js: &jetstream::Context,
    config: stream::Config,
    what: &'static str,
) -> Result<stream::Stream, StoreError> {
    let name = config.name.clone();
    js.create_or_update_stream(config)
        .await
        .map_err(boxed(what))?;
    js.get_stream(name).await.map_err(boxed(what))
}

/// How a Core tells whether an envelope from a sender is the reply to a
/// request waiting on it.
pub type ReplyAnswer = Arc<dyn Fn(&RcsEnvelope, &Urn) -> Reply + Send + Sync>;

/// Answers other Cores about one waiting request until dropped.
pub struct ServingReplies(tokio::task::JoinHandle<()>);

impl Drop for ServingReplies {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A question of [`NatsStore::reply_elsewhere`]: the sender's URN, a line
/// feed, the envelope's protobuf bytes.
fn asked(payload: &[u8]) -> Option<(Urn, RcsEnvelope)> {
    let at = payload.iter().position(|&b| b == b'\n')?;
    let sender = std::str::from_utf8(&payload[..at]).ok()?.parse().ok()?;
    let envelope = RcsEnvelope::decode(&payload[at + 1..]).ok()?;
    Some((sender, envelope))
}

/// A replayed copy's delivery number ([`DELIVERY`]).
fn delivery_of(message: &async_nats::Message) -> Option<u64> {
    message
        .headers
        .as_ref()?
        .get(DELIVERY)?
        .as_str()
        .parse()
        .ok()
}

/// A dead-letter stream message as a [`DeadLetter`]; `None` when it is not
/// one this mediator wrote, or not one `filter` names.
fn dead_letter(message: &jetstream::Message, filter: &DeadFilter) -> Option<DeadLetter> {
    let headers = message.headers.as_ref()?;
    let text = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    let seq = message.subject.as_str().rsplit('.').next()?.parse().ok()?;
    let subscription = text(SUBSCRIPTION)?;
    if !filter.keeps(&subscription, seq) {
        return None;
    }
    Some(DeadLetter {
        subscription,
        seq,
        attempts: text(ATTEMPTS)?.parse().ok()?,
        since_ms: text(SINCE)?.parse().ok()?,
        reason: text(REASON).unwrap_or_default(),
        envelope: Record::decode(&message.payload)?.envelope,
    })
}

/// `text` as a header value: one line.
fn header_text(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// Whether a publish failed because the queue stream is full.
fn is_full(e: &jetstream::context::PublishError) -> bool {
    let text = e.to_string();
    text.contains("maximum bytes") || text.contains("insufficient resources")
}

/// The subscription a wake-up subject names.
pub fn woken(subject: &Subject) -> Option<String> {
    from_token(subject.as_str().rsplit('.').next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m14_subscriptions_travel_in_subjects_and_come_back() {
        let sub = "LOG_MESSAGE urn:anima:module:logger";
        let t = token(sub);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(from_token(&t).as_deref(), Some(sub));
        assert_eq!(from_token("4"), None);
        assert_eq!(from_token("zz"), None);
        assert_eq!(hash(sub).len(), 32);
        assert_ne!(hash(sub), hash("LOG_MESSAGE urn:anima:module:other"));
        let subject = Subject::from(format!("ANIMA.wake.{t}"));
        assert_eq!(woken(&subject).as_deref(), Some(sub));
    }
}
