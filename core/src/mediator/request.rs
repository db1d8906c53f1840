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
    /// The reply event type and the responders of each request that timed
    /// out (or whose requester went away), by request id.
    late: HashMap<String, (String, Vec<String>)>,
    /// The ids in `late`, the oldest first: the first to be forgotten.
    timed_out: VecDeque<String>,
}

/// A request waiting for its reply: [`Waiting::reply`] waits, and when it is
/// dropped unanswered — its time ran out, or the requester went away and
/// the handler with it — the request waits no more and a reply to it is
/// late. Nothing is left behind whichever way the request ends.
pub(crate) struct Waiting<'a> {
    requests: &'a Requests,
    id: String,
    rx: oneshot::Receiver<RcsEnvelope>,
    /// Whether a reply after this wait is late (false once refused).
    late_after: bool,
}

impl Waiting<'_> {
    /// The reply, if it comes by `deadline`.
    pub(crate) async fn reply(&mut self, deadline: tokio::time::Instant) -> Option<RcsEnvelope> {
        tokio::time::timeout_at(deadline, &mut self.rx)
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// The request was refused before it went anywhere: nothing answers it,
    /// so nothing that carries its id is late.
    pub(crate) fn refused(mut self) {
        self.late_after = false;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.requests.close(&self.id, self.late_after);
    }
}

/// The requests of this Core.
#[derive(Default)]
pub(crate) struct Requests {
    inner: Mutex<Inner>,
}

/// Why a request's id cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// A request with this id waits for its reply.
    Waiting,
    /// A request with this id timed out: a reply to it may still come.
    TimedOut,
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

/// The request `envelope` answers, if it names one (its `correlation_id`).
pub(crate) fn correlation_of(envelope: &RcsEnvelope) -> Option<&str> {
    envelope
        .message_metadata
        .as_ref()
        .map(|m| m.correlation_id.as_str())
        .filter(|c| !c.is_empty())
}

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for the reply to the request `id`, of type `reply_type`, from
    /// one of `responders` (module URNs); refused when a request with this
    /// id waits, or timed out and is still remembered: a reply to that one
    /// must not go to a new requester that took its id.
    pub(crate) fn open(
        &self,
        id: &str,
        reply_type: &str,
        responders: Vec<String>,
    ) -> Result<Waiting<'_>, Taken> {
        let mut inner = self.lock();
        if inner.pending.contains_key(id) {
            return Err(Taken::Waiting);
        }
        if inner.late.contains_key(id) {
            return Err(Taken::TimedOut);
        }
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            reply_type: reply_type.to_owned(),
            responders,
            reply,
        };
        inner.pending.insert(id.to_owned(), pending);
        Ok(Waiting {
            requests: self,
            id: id.to_owned(),
            rx,
            late_after: true,
        })
    }

    /// The request `id` waits no more: answered, refused, or (`timed_out`)
    /// its time ran out, after which a reply to it is late.
    fn close(&self, id: &str, timed_out: bool) {
        let mut inner = self.lock();
        let Some(p) = inner.pending.remove(id) else {
            return;
        };
        if timed_out && !inner.late.contains_key(id) {
            if inner.timed_out.len() == TIMED_OUT_KEPT
                && let Some(oldest) = inner.timed_out.pop_front()
            {
                inner.late.remove(&oldest);
            }
            inner.timed_out.push_back(id.to_owned());
            inner
                .late
                .insert(id.to_owned(), (p.reply_type, p.responders));
        }
    }

    /// Whether `envelope`, sent by `sender`, is a reply: of the event type
    /// its request named, carrying the request's id as `correlation_id`,
    /// from a module the request went to. A reply to a waiting request is
    /// handed to the requester.
    pub(crate) fn answer(&self, envelope: &RcsEnvelope, sender: &Urn) -> Reply {
        let Some(id) = correlation_of(envelope) else {
            return Reply::No;
        };
        let event_type = envelope
            .routing
            .as_ref()
            .map_or("", |r| r.event_type.as_str());
        let from = |responders: &[String]| responders.iter().any(|r| r == sender.as_str());
        let mut inner = self.lock();
        let is_reply = inner
            .pending
            .get(id)
            .is_some_and(|p| p.reply_type == event_type && from(&p.responders));
        if is_reply {
            if let Some(p) = inner.pending.remove(id) {
                // The requester may have gone; the reply then goes nowhere.
                let _ = p.reply.send(envelope.clone());
            }
            return Reply::Delivered;
        }
        // Late only from a module the request went to: from anyone else
        // the same ids make an ordinary message (PROTOCOL.md §13.6).
        if inner
            .late
            .get(id)
            .is_some_and(|(t, responders)| t == event_type && from(responders))
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
        let mut waiting = requests
            .open("r1", "DONE", vec![executor.to_string()])
            .unwrap();
        assert_eq!(
            requests.open("r1", "DONE", Vec::new()).err(),
            Some(Taken::Waiting),
            "one wait per id"
        );
        assert_eq!(requests.answer(&reply("", "DONE"), &executor), Reply::No);
        assert_eq!(requests.answer(&reply("r1", "OTHER"), &executor), Reply::No);
        assert_eq!(requests.answer(&reply("r1", "DONE"), &other), Reply::No);
        assert!(waiting.rx.try_recv().is_err());
        assert_eq!(
            requests.answer(&reply("r1", "DONE"), &executor),
            Reply::Delivered
        );
        assert!(waiting.rx.try_recv().is_ok());
        drop(waiting);
        // Answered: a second reply is an ordinary message.
        assert_eq!(requests.answer(&reply("r1", "DONE"), &executor), Reply::No);

        let waiting = requests
            .open("r2", "DONE", vec![executor.to_string()])
            .unwrap();
        drop(waiting);
        assert_eq!(
            requests.answer(&reply("r2", "DONE"), &executor),
            Reply::Late
        );
        assert_eq!(requests.answer(&reply("r2", "OTHER"), &executor), Reply::No);
        // Late only from a responder: from another module it is ordinary.
        assert_eq!(requests.answer(&reply("r2", "DONE"), &other), Reply::No);
        // Its id is not taken again: a late reply to it would go to the
        // new requester, who never asked the responders anything.
        assert_eq!(
            requests.open("r2", "DONE", vec![other.to_string()]).err(),
            Some(Taken::TimedOut)
        );
    }

    /// A requester that goes away (its call cancelled, the handler's future
    /// dropped mid-wait) leaves nothing waiting, and a reply after that is
    /// late; a refused request leaves nothing at all.
    #[tokio::test(start_paused = true)]
    async fn m9_a_wait_dropped_mid_way_leaves_nothing_behind_and_a_refused_one_nothing_late() {
        let requests = Requests::default();
        let executor: Urn = "urn:anima:module:executor".parse().unwrap();
        {
            let mut waiting = requests
                .open("gone", "DONE", vec![executor.to_string()])
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let wait = waiting.reply(deadline);
            // The requester's call is cancelled: the future goes unpolled.
            let _ = tokio::time::timeout(Duration::from_millis(5), wait).await;
        }
        assert!(requests.lock().pending.is_empty());
        assert_eq!(
            requests.answer(&reply("gone", "DONE"), &executor),
            Reply::Late
        );

        requests
            .open("refused", "DONE", vec![executor.to_string()])
            .unwrap()
            .refused();
        assert!(requests.lock().pending.is_empty());
        assert_eq!(
            requests.answer(&reply("refused", "DONE"), &executor),
            Reply::No
        );
        // Its id can be used again.
        assert!(requests.open("refused", "DONE", Vec::new()).is_ok());
    }

    /// At most `TIMED_OUT_KEPT` late ids are kept, the oldest forgotten
    /// first, and each is looked up directly.
    #[test]
    fn m9_late_replies_are_remembered_up_to_a_bound_oldest_forgotten_first() {
        let requests = Requests::default();
        let executor: Urn = "urn:anima:module:executor".parse().unwrap();
        for i in 0..=TIMED_OUT_KEPT {
            let responders = vec![executor.to_string()];
            drop(requests.open(&format!("r{i}"), "DONE", responders).unwrap());
        }
        let inner = requests.lock();
        assert_eq!(inner.late.len(), TIMED_OUT_KEPT);
        assert_eq!(inner.timed_out.len(), TIMED_OUT_KEPT);
        drop(inner);
        assert_eq!(requests.answer(&reply("r0", "DONE"), &executor), Reply::No);
        assert_eq!(
            requests.answer(&reply(&format!("r{TIMED_OUT_KEPT}"), "DONE"), &executor),
            Reply::Late
        );
    }
}
