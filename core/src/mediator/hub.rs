//! The mediator's store as the Core's tasks use it: publishes are
//! committed in groups (one fsync for every publish waiting at that
//! moment, each publisher answered once its message is on disk), the other
//! store operations run off the async runtime, and subscribers waiting on
//! an empty queue are woken when a message is queued for them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, oneshot};

use super::record::Delivery;
use super::store::{Accepted, Incoming, Store, StoreError};

/// The most publishes committed in one transaction.
const MAX_GROUP: usize = 512;
/// Publishes waiting for the writer before a publisher waits to queue.
const PENDING: usize = 4096;

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

/// The store, its group-committing writer and the waiting subscribers.
/// Cloning shares it.
#[derive(Clone)]
pub(crate) struct Hub {
    store: Arc<Store>,
    writer: mpsc::Sender<(Publish, Answer)>,
    wakers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

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

impl Hub {
    /// Opens the store at `path` (at most `limit` bytes) and starts its
    /// writer thread.
    pub(crate) fn open(path: &Path, limit: u64) -> Result<Hub, StoreError> {
        let store = Arc::new(Store::open(path, limit)?);
        let (writer, rx) = mpsc::channel(PENDING);
        let hub = Hub {
            store: store.clone(),
            writer,
            wakers: Arc::default(),
        };
        let wake = hub.clone_wakers();
        std::thread::Builder::new()
            .name("anima-mediator-writer".into())
            .spawn(move || write_groups(&store, rx, &wake))
            .map_err(|e| StoreError::Db(redb::StorageError::Io(e).into()))?;
        Ok(hub)
    }

    fn clone_wakers(&self) -> Wakers {
        Wakers(self.wakers.clone())
    }

    /// Stores `publish` (committed with whatever else waits to be) and
    /// wakes its subscribers.
    pub(crate) async fn publish(&self, publish: Publish) -> Result<Accepted, HubError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((publish, tx))
            .await
            .map_err(|_| HubError::Closed)?;
        rx.await
            .map_err(|_| HubError::Closed)?
            .map_err(HubError::Store)
    }

    /// Runs `f` on the store off the async runtime.
    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, HubError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| HubError::Closed)?
            .map_err(HubError::from)
    }

    /// What wakes the subscription streams of `module` when a message is
    /// queued for any of its subscriptions.
    pub(crate) fn waker(&self, module: &anima_protocol::Urn) -> Arc<Notify> {
        self.clone_wakers().get(module.as_str())
    }
}

#[derive(Clone)]
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

/// The writer: takes every publish waiting (at most [`MAX_GROUP`]),
/// commits them in one transaction, answers each, wakes the subscribers.
fn write_groups(store: &Store, mut rx: mpsc::Receiver<(Publish, Answer)>, wakers: &Wakers) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP
            && let Ok(next) = rx.try_recv()
        {
            group.push(next);
        }
        let batch: Vec<Incoming<'_>> = group
            .iter()
            .map(|(p, _)| Incoming {
                envelope: &p.envelope,
                message_id: &p.message_id,
                exactly_once: p.exactly_once,
                delivery: p.delivery,
                subscriptions: &p.subscriptions,
            })
            .collect();
        let result = store.accept(&batch, crate::audit::unix_ms(std::time::SystemTime::now()));
        drop(batch);
        match result {
            Ok(accepted) => {
                for ((publish, answer), accepted) in group.drain(..).zip(accepted) {
                    if matches!(accepted, Accepted::Stored(_)) {
                        for s in &publish.subscriptions {
                            wakers.wake(s);
                        }
                    }
                    let _ = answer.send(Ok(accepted));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, answer) in group.drain(..) {
                    let _ = answer.send(Err(e.clone()));
                }
            }
        }
    }
}
