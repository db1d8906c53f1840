//! Request/reply (M9; PROTOCOL.md §13.6): the requests waiting for their
//! reply, and those whose time ran out, so that a reply that comes too late
//! is told apart from an ordinary message, discarded and counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use anima_protocol::Urn;
use anima_protocol::pb::RcsEnvelope;
use tokio::sync::oneshot;

/// A request's timeout when its `reply_to` names none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many timed-out requests are remembered, to recognise late replies.
const TIMED_OUT_KEPT: usize = 4096;

/// One request waiting for its reply.
struct Pending {
    /// The reply's event type.
    reply_type: String,
    /// The modules the request was routed to: who may reply.
    responders: Vec<String>,
    reply: oneshot::Sender<RcsEnvelope>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Pending>,
    /// (request id, reply event type) of the requests that timed out, the
    /// oldest first.
    timed_out: VecDeque<(String, String)>,
}

/// The requests of this Core.
#[derive(Default)]
pub(crate) struct Requests {
    inner: Mutex<Inner>,
}

/// What a published message is to the requests.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Not a reply: an ordinary message.
    No,
    /// The reply to a waiting request, handed to its requester.
    Delivered,
    /// The reply to a request whose time ran out: to be discarded.
    Late,
}

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for the reply to the request `id`, of type `reply_type`, from
    /// one of `responders` (module URNs); `None` when `id` already waits.
    pub(crate) fn open(
        &self,
        id: &str,
        reply_type: &str,
        responders: Vec<String>,
    ) -> Option<oneshot::Receiver<RcsEnvelope>> {
        let mut inner = self.lock();
        if inner.pending.contains_key(id) {
            return None;
        }
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            reply_type: reply_type.to_owned(),
            responders,
            reply,
        };
        inner.pending.insert(id.to_owned(), pending);
        Some(rx)
    }

    /// The request `id` waits no more: answered, refused, or (`timed_out`)
    /// its time ran out, after which a reply to it is late.
    pub(crate) fn close(&self, id: &str, timed_out: bool) {
        let mut inner = self.lock();
        let Some(p) = inner.pending.remove(id) else {
            return;
        };
        if timed_out {
            if inner.timed_out.len() == TIMED_OUT_KEPT {
                inner.timed_out.pop_front();
            }
            inner.timed_out.push_back((id.to_owned(), p.reply_type));
        }
    }

    /// Whether `envelope`, sent by `sender`, is a reply: of the event type
    /// its request named, carrying the request's id as `correlation_id`,
    /// from a module the request went to. A reply to a waiting request is
    /// handed to the requester.
    pub(crate) fn answer(&self, envelope: &RcsEnvelope, sender: &Urn) -> Reply {
        let Some(id) = envelope
            .message_metadata
            .as_ref()
            .map(|m| m.correlation_id.as_str())
            .filter(|c| !c.is_empty())
        else {
            return Reply::No;
        };
        let event_type = envelope
            .routing
            .as_ref()
            .map_or("", |r| r.event_type.as_str());
        let mut inner = self.lock();
        let is_reply = inner.pending.get(id).is_some_and(|p| {
            p.reply_type == event_type && p.responders.iter().any(|r| r == sender.as_str())
        });
        if is_reply {
            if let Some(p) = inner.pending.remove(id) {
                // The requester may have gone; the reply then goes nowhere.
                let _ = p.reply.send(envelope.clone());
            }
            return Reply::Delivered;
        }
        if inner
            .timed_out
            .iter()
            .any(|(t, reply_type)| t == id && reply_type == event_type)
        {
            return Reply::Late;
        }
        Reply::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anima_protocol::pb::{MessageMetadata, Routing};

    fn reply(correlation: &str, event_type: &str) -> RcsEnvelope {
        RcsEnvelope {
            message_metadata: Some(MessageMetadata {
                correlation_id: correlation.into(),
                ..MessageMetadata::default()
            }),
            routing: Some(Routing {
                event_type: event_type.into(),
                ..Routing::default()
            }),
            ..RcsEnvelope::default()
        }
    }

    #[test]
    fn m9_only_the_right_type_from_a_responder_answers_and_a_late_one_is_counted() {
        let requests = Requests::default();
        let executor: Urn = "urn:anima:module:executor".parse().unwrap();
        let other: Urn = "urn:anima:module:other".parse().unwrap();
        let mut rx = requests
            .open("r1", "DONE", vec![executor.to_string()])
            .unwrap();
        assert!(
            requests.open("r1", "DONE", Vec::new()).is_none(),
            "one wait per id"
        );
        assert_eq!(requests.answer(&reply("", "DONE"), &executor), Reply::No);
        assert_eq!(requests.answer(&reply("r1", "OTHER"), &executor), Reply::No);
        assert_eq!(requests.answer(&reply("r1", "DONE"), &other), Reply::No);
        assert!(rx.try_recv().is_err());
        assert_eq!(
            requests.answer(&reply("r1", "DONE"), &executor),
            Reply::Delivered
        );
        assert!(rx.try_recv().is_ok());
        // Answered: a second reply is an ordinary message.
        assert_eq!(requests.answer(&reply("r1", "DONE"), &executor), Reply::No);

        let _rx = requests
            .open("r2", "DONE", vec![executor.to_string()])
            .unwrap();
        requests.close("r2", true);
        assert_eq!(
            requests.answer(&reply("r2", "DONE"), &executor),
            Reply::Late
        );
    }
}
