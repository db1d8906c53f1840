//! The mediator's store as the Core's tasks use it, whichever backend keeps
//! the messages. On the embedded store, publishes are committed in groups
//! (one fsync for every publish waiting at that moment, each publisher
//! answered once its message is on disk) and the other store operations run
//! off the async runtime; on NATS each is a request to the server.
//! Subscribers waiting on an empty queue are woken when a message is queued
//! for them (on NATS, by any Core).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use super::record::Delivery;
use tokio_stream::StreamExt as _;

use super::nats::{NatsConfig, NatsStore, ReplyAnswer, ServingReplies};
use super::request::Reply;
use super::store::{
    Accepted, DeadFilter, DeadLetter, HandedOut, Incoming, Store, StoreError, Taken, Waiting,
};

/// The most publishes committed in one transaction.
const MAX_GROUP: usize = 512;
/// Publishes waiting for the writer before a publisher waits to queue.
const PENDING: usize = 4096;
/// The most bytes journaled before a commit group is fsynced instead.
const MAX_JOURNAL: u64 = 64 << 20;

/// One message to store, owned.
#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) envelope: Vec<u8>,
    pub(crate) message_id: String,
    pub(crate) exactly_once: bool,
    pub(crate) delivery: Delivery,
    pub(crate) subscriptions: Vec<String>,
}

type Answer = oneshot::Sender<Result<Accepted, Arc<StoreError>>>;

/// A subscriber's answers: `(subscription, delivery, refusal)` each.
type Answers = Vec<(String, u64, Option<String>)>;

/// What the embedded store's writer commits.
enum Job {
    /// A message, and its publisher waiting for its fate.
    Publish(Publish, Answer),
    /// A subscription stream's answers, and the stream waiting for them to
    /// be applied.
    Answers(Answers, oneshot::Sender<Result<(), Arc<StoreError>>>),
}

/// The store (embedded or on NATS), the embedded store's group-committing
/// writer, and the waiting subscribers. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Hub {
    backend: Backend,
    wakers: Wakers,
}

#[derive(Clone)]
enum Backend {
    Embedded {
        store: Arc<Store>,
        writer: mpsc::Sender<Job>,
        parked: ParkedList,
    },
    Nats(NatsStore),
}

/// What [`Hub::park`] hands a waiting subscription stream.
pub(crate) type Direct = oneshot::Receiver<HandedOut>;

/// A subscription stream with nothing due when it last looked, waiting to
/// be handed what the writer stores for it.
struct Parked {
    subscriptions: Arc<[String]>,
    room: usize,
    ack_wait_ms: u64,
    tx: oneshot::Sender<HandedOut>,
}

type ParkedList = Arc<Mutex<Vec<Parked>>>;

/// Why the hub could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    /// The store failed.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The Core is stopping: its writer is gone.
    #[error("the message store is closed")]
    Closed,
}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        HubError::Store(Arc::new(e))
    }
}

fn now_ms() -> u64 {
    crate::audit::unix_ms(std::time::SystemTime::now())
}

impl Hub {
    /// Opens the embedded store at `path` (at most `limit` bytes) and
    /// starts its writer thread. With `sync_interval`, publishes are
    /// journaled (on disk, not yet fsynced, when answered) and fsynced by a
    /// thread of their own at least that often; without, each commit group
    /// is fsynced before its publishers are answered.
    pub(crate) fn open(
        path: &Path,
        limit: u64,
        sync_interval: Option<Duration>,
    ) -> Result<Hub, StoreError> {
        let store = Arc::new(match sync_interval {
            Some(_) => Store::open_journaled(path, limit)?,
            None => Store::open(path, limit)?,
        });
        let (writer, rx) = mpsc::channel(PENDING);
        let wakers = Wakers::default();
        let parked = ParkedList::default();
        let writing = Writer {
            store: store.clone(),
            wakers: wakers.clone(),
            parked: parked.clone(),
        };
        let spawn_error = |e| StoreError::Db(redb::StorageError::Io(e).into());
        std::thread::Builder::new()
            .name("anima-mediator-writer".into())
            .spawn(move || writing.run(rx))
            .map_err(spawn_error)?;
        if let Some(interval) = sync_interval {
            let weak = Arc::downgrade(&store);
            std::thread::Builder::new()
                .name("anima-mediator-sync".into())
                .spawn(move || sync_journal(&weak, interval))
                .map_err(spawn_error)?;
        }
        Ok(Hub {
            backend: Backend::Embedded {
                store,
                writer,
                parked,
            },
            wakers,
        })
    }

    /// Connects to NATS JetStream (`backend = "nats"`) and wakes this
    /// Core's subscribers when any Core queues a message for them.
    pub(crate) async fn nats(config: NatsConfig) -> Result<Hub, StoreError> {
        let store = NatsStore::connect(config).await?;
        let mut wakes = store.wakes().await?;
        let wakers = Wakers::default();
        let wake = wakers.clone();
        tokio::spawn(async move {
            while let Some(message) = wakes.next().await {
                if let Some(subscription) = super::nats::woken(&message.subject) {
                    wake.wake(&subscription);
                }
            }
        });
        Ok(Hub {
            backend: Backend::Nats(store),
            wakers,
        })
    }

    /// Stores `publish` (committed with whatever else waits to be) and
    /// wakes its subscribers.
    pub(crate) async fn publish(&self, publish: Publish) -> Result<Accepted, HubError> {
        match &self.backend {
            Backend::Embedded { writer, .. } => {
                ask_writer(writer, |tx| Job::Publish(publish, tx)).await
            }
            Backend::Nats(store) => {
                let accepted = store.accept(&publish.incoming(), now_ms()).await?;
                if matches!(accepted, Accepted::Stored(_)) {
                    for s in &publish.subscriptions {
                        self.wakers.wake(s);
                    }
                }
                Ok(accepted)
            }
        }
    }

    /// Runs `f` on the embedded store off the async runtime.
    async fn blocking<T: Send + 'static>(
        store: &Arc<Store>,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, HubError> {
        let store = store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| HubError::Closed)?
            .map_err(HubError::from)
    }

    /// At most `max` messages due for `subscriptions`, handed out for
    /// `ack_wait_ms` (M6, M7), each with the index of its subscription;
    /// when fewer, also when the next one is due, if known.
    pub(crate) async fn take(
        &self,
        subscriptions: Arc<[String]>,
        ack_wait_ms: u64,
        max: usize,
    ) -> Result<Taken, HubError> {
        match &self.backend {
            Backend::Embedded { store, .. } => {
                Self::blocking(store, move |store| {
                    let subs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
                    store.take_many(&subs, now_ms(), ack_wait_ms, max)
                })
                .await
            }
            Backend::Nats(store) => Ok(store.take_many(&subscriptions, now_ms(), max).await?),
        }
    }

    /// On the embedded store, registers a subscription stream that found
    /// nothing due: the writer hands it, in the transaction that stores
    /// them, up to `room` of the messages published for `subscriptions`
    /// from now on (M6 order within a group; `at_most_once` ones are left
    /// to [`Hub::take`]). Closing the receiver withdraws it; what was sent
    /// before is still in it. `None` on NATS.
    pub(crate) fn park(
        &self,
        subscriptions: Arc<[String]>,
        ack_wait_ms: u64,
        room: usize,
    ) -> Option<Direct> {
        let Backend::Embedded { parked, .. } = &self.backend else {
            return None;
        };
        let (tx, rx) = oneshot::channel();
        locked(parked).push(Parked {
            subscriptions,
            room,
            ack_wait_ms,
            tx,
        });
        Some(rx)
    }

    /// The subscriber's answers: each `(subscription, delivery, refusal)`
    /// an acknowledgement (no refusal) or a refusal (M7).
    /// On the embedded store they are applied by its writer, with the
    /// publishes waiting at that moment, in one transaction.
    pub(crate) async fn answer(&self, answers: Answers) -> Result<(), HubError> {
        match &self.backend {
            Backend::Embedded { writer, .. } => {
                ask_writer(writer, |tx| Job::Answers(answers, tx)).await
            }
            Backend::Nats(store) => {
                for (subscription, seq, refusal) in answers {
                    match refusal {
                        None => drop(store.ack(&subscription, seq).await?),
                        Some(reason) => {
                            store.nack(&subscription, seq, now_ms(), &reason).await?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Deliveries whose subscriber's lease ended unanswered: due again now,
    /// not counted as attempts (M11).
    pub(crate) async fn release(&self, held: Vec<(String, u64)>) -> Result<(), HubError> {
        match &self.backend {
            Backend::Embedded { store, .. } => {
                Self::blocking(store, move |store| {
                    let now = now_ms();
                    for (subscription, seq) in &held {
                        store.release(subscription, *seq, now)?;
                    }
                    Ok(())
                })
                .await
            }
            Backend::Nats(store) => {
                for (subscription, seq) in &held {
                    store.release(subscription, *seq).await?;
                }
                Ok(())
            }
        }
    }

    /// The dead letters `filter` names (M8).
    pub(crate) async fn dead_letters(
        &self,
        filter: DeadFilter,
    ) -> Result<Vec<DeadLetter>, HubError> {
        match &self.backend {
            Backend::Embedded { store, .. } => {
                Self::blocking(store, move |store| {
                    store.dead_letters_where(&|sub, seq| filter.keeps(sub, seq))
                })
                .await
            }
            Backend::Nats(store) => Ok(store.dead_letters(&filter).await?),
        }
    }

    /// Queues the dead letters `keys` names again (`replay`) or deletes
    /// them; how many there were.
    pub(crate) async fn end_dead(
        &self,
        keys: Vec<(String, u64)>,
        replay: bool,
    ) -> Result<usize, HubError> {
        match &self.backend {
            Backend::Embedded { store, .. } => {
                Self::blocking(store, move |store| {
                    if !replay {
                        return store.purge_keys(&keys);
                    }
                    let mut n = 0;
                    for (sub, seq) in &keys {
                        n += usize::from(store.replay(sub, *seq)?);
                    }
                    Ok(n)
                })
                .await
            }
            Backend::Nats(store) => {
                let mut n = 0;
                for (sub, seq) in &keys {
                    let done = if replay {
                        store.replay(sub, *seq).await?
                    } else {
                        store.purge_one(sub, *seq).await?
                    };
                    n += usize::from(done);
                }
                Ok(n)
            }
        }
    }

    /// Whether `envelope` from `sender` is the reply to a request waiting
    /// on another Core (on NATS; the embedded store has no other Core).
    pub(crate) async fn reply_elsewhere(
        &self,
        envelope: &anima_protocol::pb::RcsEnvelope,
        sender: &anima_protocol::Urn,
    ) -> Reply {
        match &self.backend {
            Backend::Embedded { .. } => Reply::No,
            Backend::Nats(store) => store.reply_elsewhere(envelope, sender).await,
        }
    }

    /// On NATS, lets other Cores hand this Core the replies to its request
    /// `id` while the guard lives (`answer` tells a reply).
    pub(crate) async fn serve_replies(
        &self,
        id: &str,
        answer: ReplyAnswer,
    ) -> Option<ServingReplies> {
        let Backend::Nats(store) = &self.backend else {
            return None;
        };
        match store.serve_replies(id, answer).await {
            Ok(guard) => Some(guard),
            Err(e) => {
                tracing::warn!(
                    "mediator: request {id:.64} gets replies through this Core only: {e}"
                );
                None
            }
        }
    }

    /// What wakes the subscription streams of `module` when a message is
    /// queued for any of its subscriptions.
    pub(crate) fn waker(&self, module: &anima_protocol::Urn) -> Arc<Notify> {
        self.wakers.get(module.as_str())
    }
}

impl Publish {
    fn incoming(&self) -> Incoming<'_> {
        Incoming {
            envelope: &self.envelope,
            message_id: &self.message_id,
            exactly_once: self.exactly_once,
            delivery: self.delivery,
            subscriptions: &self.subscriptions,
        }
    }
}

#[derive(Clone, Default)]
struct Wakers(Arc<Mutex<HashMap<String, Arc<Notify>>>>);

impl Wakers {
    fn get(&self, module: &str) -> Arc<Notify> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(module.to_owned()).or_default().clone()
    }

    fn wake(&self, subscription: &str) {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get(super::route::module_of(subscription)) {
            // Subscribers enable their `notified()` before they look at
            // the queue, so none misses this between its look and its wait.
            n.notify_waiters();
        }
    }
}

/// The journal's fsyncs (`[mediator] sync_interval`): every `interval`,
/// one durable commit when anything was journaled since the last, until
/// the store is dropped.
fn sync_journal(store: &std::sync::Weak<Store>, interval: Duration) {
    loop {
        std::thread::sleep(interval);
        let Some(store) = store.upgrade() else {
            return;
        };
        if store.journal_bytes().unwrap_or(0) > 0
            && let Err(e) = store.checkpoint()
        {
            tracing::error!("mediator: fsync of the message store failed: {e}");
        }
    }
}

/// Queues the job `job` makes of a reply channel, and waits for the reply.
async fn ask_writer<T>(
    writer: &mpsc::Sender<Job>,
    job: impl FnOnce(oneshot::Sender<Result<T, Arc<StoreError>>>) -> Job,
) -> Result<T, HubError> {
    let (tx, rx) = oneshot::channel();
    writer.send(job(tx)).await.map_err(|_| HubError::Closed)?;
    rx.await
        .map_err(|_| HubError::Closed)?
        .map_err(HubError::Store)
}

/// The embedded store's writer thread.
struct Writer {
    store: Arc<Store>,
    wakers: Wakers,
    parked: ParkedList,
}

impl Writer {
    /// Takes every publish waiting (at most [`MAX_GROUP`]), commits them in
    /// one transaction that also hands the parked streams theirs, answers
    /// each publisher, wakes the subscribers of what is left queued. A
    /// journaled store is fsynced with the group instead of journaling it
    /// when its journal passed [`MAX_JOURNAL`], and when the Core stops.
    fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut answers = Vec::new();
        let mut answered = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            let mut jobs = 0;
            while let Some(job) = next {
                match job {
                    Job::Publish(publish, answer) => group.push((publish, answer)),
                    Job::Answers(some, done) => {
                        answers.extend(some);
                        answered.push(done);
                    }
                }
                jobs += 1;
                next = if jobs < MAX_GROUP {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            let result = self.commit(&mut group, &answers);
            answers.clear();
            for done in answered.drain(..) {
                let _ = done.send(result.clone());
            }
        }
        if self.store.journal_bytes().unwrap_or(0) > 0
            && let Err(e) = self.store.checkpoint()
        {
            tracing::error!("mediator: fsync of the message store at stop failed: {e}");
        }
    }

    /// Commits `group` and `answers` in one transaction; how the answers
    /// fared.
    fn commit(
        &self,
        group: &mut Vec<(Publish, Answer)>,
        answers: &Answers,
    ) -> Result<(), Arc<StoreError>> {
        if group.is_empty() {
            let answered = self.store.commit_group(&[], now_ms(), false, &[], answers);
            return answered.map(drop).map_err(Arc::new);
        }
        let parked: Vec<Parked> = {
            let mut list = locked(&self.parked);
            list.retain(|p| !p.tx.is_closed());
            std::mem::take(&mut *list)
        };
        let waiting: Vec<Waiting<'_>> = parked
            .iter()
            .map(|p| Waiting {
                subscriptions: &p.subscriptions,
                room: p.room,
                ack_wait_ms: p.ack_wait_ms,
            })
            .collect();
        let batch: Vec<Incoming<'_>> = group.iter().map(|(p, _)| p.incoming()).collect();
        let journaled = self.store.journal_bytes().is_some_and(|n| n < MAX_JOURNAL);
        let result = self
            .store
            .commit_group(&batch, now_ms(), journaled, &waiting, answers);
        drop((batch, waiting));
        let (accepted, handed) = match result {
            Ok(done) => done,
            Err(e) => {
                locked(&self.parked).extend(parked);
                let e = Arc::new(e);
                for (_, answer) in group.drain(..) {
                    let _ = answer.send(Err(e.clone()));
                }
                return Err(e);
            }
        };
        // What went straight to a parked stream needs no wake-up for it.
        let mut direct = std::collections::HashSet::new();
        for (p, out) in parked.iter().zip(&handed) {
            for (index, h) in out {
                direct.insert((p.subscriptions[*index].as_str(), h.seq));
            }
        }
        for ((publish, answer), accepted) in group.drain(..).zip(accepted) {
            if let Accepted::Stored(seq) = accepted {
                for s in &publish.subscriptions {
                    if !direct.contains(&(s.as_str(), seq)) {
                        self.wakers.wake(s);
                    }
                }
            }
            let _ = answer.send(Ok(accepted));
        }
        self.hand(parked, handed);
        Ok(())
    }

    /// Sends each parked stream what it was handed; those handed nothing
    /// stay parked. What a stream that went away was handed is due again.
    fn hand(&self, parked: Vec<Parked>, handed: Vec<HandedOut>) {
        let mut still = Vec::new();
        for (p, out) in parked.into_iter().zip(handed) {
            if out.is_empty() {
                still.push(p);
                continue;
            }
            let Err(out) = p.tx.send(out) else {
                continue;
            };
            let now = now_ms();
            for (index, h) in out {
                let subscription = &p.subscriptions[index];
                if let Err(e) = self.store.release(subscription, h.seq, now) {
                    tracing::error!("mediator: giving back delivery {}: {e}", h.seq);
                }
                self.wakers.wake(subscription);
            }
        }
        locked(&self.parked).extend(still);
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
