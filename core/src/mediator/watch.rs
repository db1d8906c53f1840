//! Watching the messages the Core accepts (PROTOCOL.md §13.10): operators
//! only, as `anima subscribe` shows them at a terminal. A view, not a
//! subscription — nothing is taken from the modules' subscriptions or
//! acknowledged — so a slow watcher holds nothing up: it misses messages and
//! is told how many.

use std::pin::Pin;
use std::sync::Arc;

use anima_protocol::pb::{RcsEnvelope, WatchMessagesRequest, WatchedMessage};
use anima_protocol::rcs::{self, MAX_NAME};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Status};

use super::service::MediatorService;
use super::trace;
use crate::caller::Caller;

/// How many accepted messages wait for the slowest watcher before it
/// misses some.
const BACKLOG: usize = 1024;
/// The most watchers at once.
pub(crate) const MAX_WATCHERS: usize = 16;
/// The most event types one watcher names.
const MAX_TYPES: usize = 64;

/// The stream `Watch` answers with.
pub(crate) type WatchStream =
    Pin<Box<dyn Stream<Item = Result<WatchedMessage, Status>> + Send + 'static>>;

/// The Core's watchers. Cloning shares them.
#[derive(Clone)]
pub(crate) struct Watchers {
    accepted: broadcast::Sender<Arc<RcsEnvelope>>,
    slots: Arc<Semaphore>,
}

impl Default for Watchers {
    fn default() -> Self {
        Watchers {
            accepted: broadcast::channel(BACKLOG).0,
            slots: Arc::new(Semaphore::new(MAX_WATCHERS)),
        }
    }
}

impl Watchers {
    /// Shows `envelope`, just accepted, to the watchers (when there are any:
    /// otherwise it costs nothing).
    pub(crate) fn accepted(&self, envelope: &RcsEnvelope) {
        if self.accepted.receiver_count() > 0 {
            let _ = self.accepted.send(Arc::new(envelope.clone()));
        }
    }
}

impl MediatorService {
    /// `Watch`: the messages accepted from now on, of `event_types`.
    pub(crate) fn watch_accepted(
        &self,
        request: Request<WatchMessagesRequest>,
    ) -> Result<WatchStream, Status> {
        if let Caller::Module(_) = self.caller(&request)? {
            return Err(Status::permission_denied(
                "watching messages is for the Core's operators",
            ));
        }
        let types = request.into_inner().event_types;
        if types.len() > MAX_TYPES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_TYPES} event types"
            )));
        }
        if let Some(bad) = types.iter().find(|t| !rcs::is_event_type(t)) {
            return Err(Status::invalid_argument(format!(
                "event type {bad:.200?}: [A-Z][A-Z0-9_]*, at most {MAX_NAME} bytes"
            )));
        }
        let watchers = self.watchers();
        let permit = Arc::clone(&watchers.slots)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!("at most {MAX_WATCHERS} watchers at once"))
            })?;
        let accepted = watchers.accepted.subscribe();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let _permit = permit;
            forward(accepted, &types, &tx).await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Passes the accepted messages of `types` (all when empty) to `tx` until
/// the watcher goes or the Core stops.
async fn forward(
    mut accepted: broadcast::Receiver<Arc<RcsEnvelope>>,
    types: &[String],
    tx: &mpsc::Sender<Result<WatchedMessage, Status>>,
) {
    let mut missed = 0u64;
    loop {
        let envelope = tokio::select! {
            next = accepted.recv() => match next {
                Ok(envelope) => envelope,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    missed = missed.saturating_add(n);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tx.closed() => return,
        };
        let event_type = envelope
            .routing
            .as_ref()
            .map_or("", |r| r.event_type.as_str());
        if !types.is_empty() && !types.iter().any(|t| t == event_type) {
            continue;
        }
        let item = WatchedMessage {
            traceparent: trace::traceparent(&envelope),
            envelope: Some(RcsEnvelope::clone(&envelope)),
            missed: std::mem::take(&mut missed),
        };
        if tx.send(Ok(item)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anima_protocol::pb::Routing;

    fn message(event_type: &str) -> RcsEnvelope {
        RcsEnvelope {
            routing: Some(Routing {
                event_type: event_type.into(),
                ..Routing::default()
            }),
            ..RcsEnvelope::default()
        }
    }

    fn type_of(item: &WatchedMessage) -> &str {
        &item
            .envelope
            .as_ref()
            .unwrap()
            .routing
            .as_ref()
            .unwrap()
            .event_type
    }

    #[tokio::test]
    async fn a_watcher_sees_its_types_in_order_and_is_told_what_it_missed() {
        let watchers = Watchers::default();
        watchers.accepted(&message("BEFORE"));
        let receiver = watchers.accepted.subscribe();
        let (tx, mut rx) = mpsc::channel(1);
        let types = vec!["JOB".to_owned()];
        let task = tokio::spawn(async move { forward(receiver, &types, &tx).await });
        watchers.accepted(&message("JOB"));
        watchers.accepted(&message("OTHER"));
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!((type_of(&first), first.missed), ("JOB", 0));
        // The channel to the watcher holds one item: it waits there, and
        // the Core's backlog overflows behind it.
        for _ in 0..BACKLOG + 10 {
            watchers.accepted(&message("JOB"));
        }
        let mut seen = 0usize;
        let mut missed = 0u64;
        while seen + usize::try_from(missed).unwrap() < BACKLOG + 10 {
            let item = rx.recv().await.unwrap().unwrap();
            assert_eq!(type_of(&item), "JOB");
            missed += item.missed;
            seen += 1;
        }
        assert!(missed > 0, "a slow watcher is told it missed messages");
        drop(rx);
        watchers.accepted(&message("JOB"));
        task.await.unwrap();
    }
}
