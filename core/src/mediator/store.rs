//! The mediator's embedded message store: one `redb` file, every change a
//! transaction committed with fsync before it returns, so what [`Store::accept`]
//! reported stored survives a `kill -9` of the Core (M12).
//!
//! Each message is stored once (`messages`) and queued for each
//! subscription it is routed to (`queue`, keyed by subscription, priority
//! rank and sequence number, so a subscription's backlog reads critical
//! first and first-in first-out within a priority, M6). A queued entry
//! counts the times it was handed out and when it is next due: handing it
//! out makes it due again at the acknowledgement deadline, so a delivery
//! neither acknowledged nor refused in time is redelivered (M7), also after
//! a restart. A message leaves the store when no queue and no dead-letter
//! entry holds it any more.
//!
//! Time is passed in (Unix milliseconds): the store reads no clock.

use std::path::Path;
use std::sync::Mutex;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use super::record::{Delivery, Record};
use journal::Journal;

mod journal;
use anima_protocol::rcs::MAX_DELAY_MS;

/// seq → [`Record`] bytes.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// seq → how many queue and dead-letter entries hold it.
const REFS: TableDefinition<u64, u32> = TableDefinition::new("refs");
/// (subscription, rank, seq) → (times handed out, due at).
const QUEUE: TableDefinition<(&str, u8, u64), (u32, u64)> = TableDefinition::new("queue");
/// (subscription, seq) → (times handed out, dead since, why).
const DEAD: TableDefinition<(&str, u64), (u32, u64, &str)> = TableDefinition::new("dead");
/// message_id → accepted at (`exactly_once` messages, for [`DEDUP_WINDOW_MS`]).
const SEEN: TableDefinition<&str, (u64, u64)> = TableDefinition::new("seen");
/// Counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_SEQ: &str = "next_seq";
const USED: &str = "used_bytes";
const DROPPED_EXPIRED: &str = "dropped_expired";
const DROPPED_RETRIES: &str = "dropped_retries";

/// How long an `exactly_once` message's id is remembered: a second message
/// with the same id within it is acknowledged and not stored (M7).
pub const DEDUP_WINDOW_MS: u64 = 10 * 60 * 1000;
/// The first redelivery's delay when the message names none.
pub const DEFAULT_RETRY_DELAY_MS: u64 = 1000;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed (disk, corruption, I/O).
    #[error("message store: {0}")]
    Db(#[from] redb::Error),
    /// A stored value is not what this version wrote.
    #[error("message store: message {0} is unreadable")]
    Corrupt(u64),
    /// The NATS server failed or refused (`backend = "nats"`).
    #[error("NATS JetStream: {what}: {source}")]
    Nats {
        /// What the mediator was doing.
        what: &'static str,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The NATS server takes messages too small for the mediator's.
    #[error(
        "NATS JetStream: the server's max_payload is {server} bytes; the mediator needs at least {needed} (set max_payload in the server's configuration)"
    )]
    NatsPayload {
        /// The server's `max_payload`.
        server: i64,
        /// The least the mediator needs.
        needed: i64,
    },
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// One message to store.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    /// The envelope's protobuf bytes.
    pub envelope: &'a [u8],
    /// Its `message_id`.
    pub message_id: &'a str,
    /// De-duplicated by `message_id` (`exactly_once`).
    pub exactly_once: bool,
    /// How to deliver it.
    pub delivery: Delivery,
    /// The subscriptions it is routed to.
    pub subscriptions: &'a [String],
}

/// What became of one message of [`Store::accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored and queued, durably, as this sequence number.
    Stored(u64),
    /// An `exactly_once` message whose id was accepted before, within
    /// [`DEDUP_WINDOW_MS`], as this sequence number: not stored again.
    Duplicate(u64),
    /// No subscription takes it: nothing stored.
    Unrouted,
    /// Storing it would pass the store's size limit: nothing stored.
    Full {
        /// Bytes in use.
        used: u64,
        /// The limit.
        limit: u64,
    },
}

/// A message handed out to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    /// Its sequence number (what [`Store::ack`] and [`Store::nack`] name).
    pub seq: u64,
    /// 1 for the first delivery, 2 for the first redelivery …
    pub attempt: u32,
    /// The envelope's protobuf bytes.
    pub envelope: Vec<u8>,
    /// Handed out for good (`at_most_once`): there is nothing to
    /// acknowledge.
    pub once: bool,
}

/// Messages handed out, each with the index of its subscription.
pub type HandedOut = Vec<(usize, Handed)>;

/// What [`Store::take_many`] handed out, and, when fewer than asked, when
/// the next is due, if known.
pub type Taken = (HandedOut, Option<u64>);

/// What [`Store::commit_group`] did: each message's fate, and what each
/// waiting subscriber was handed.
pub type AcceptedAndHanded = (Vec<Accepted>, Vec<HandedOut>);

/// What [`Store::take`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// The next message due.
    Message(Handed),
    /// None due now; the next is due at this instant, if any is queued.
    Idle(Option<u64>),
}

/// What became of a refused (or unacknowledged) delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Queued again, due at this instant.
    At(u64),
    /// Its retries are spent: moved to the dead-letter queue.
    DeadLettered,
    /// Its retries are spent and it has no dead-letter queue: dropped.
    Dropped,
    /// No such delivery outstanding.
    Unknown,
}

/// A message in the dead-letter queue (M8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The subscription it was queued for.
    pub subscription: String,
    /// Its sequence number.
    pub seq: u64,
    /// How many times it was handed out.
    pub attempts: u32,
    /// When it was dead-lettered (Unix ms).
    pub since_ms: u64,
    /// Why: `EXPIRED`, or `MAX_RETRIES` (followed by `: ` and the
    /// subscriber's last refusal reason when it gave one).
    pub reason: String,
    /// The envelope's protobuf bytes.
    pub envelope: Vec<u8>,
}

/// Which dead letters an operator's request names: of one module (empty:
/// all), one delivery (0: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    /// The module's URN, or empty.
    pub module: String,
    /// The delivery number, or 0.
    pub delivery: u64,
}

impl DeadFilter {
    /// Whether the dead letter `seq` of `subscription` is named.
    pub fn keeps(&self, subscription: &str, seq: u64) -> bool {
        (self.module.is_empty() || super::route::module_of(subscription) == self.module)
            && (self.delivery == 0 || self.delivery == seq)
    }
}

/// Counters of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Bytes of stored messages.
    pub used_bytes: u64,
    /// Expired messages dropped (no dead-letter queue).
    pub dropped_expired: u64,
    /// Messages dropped after their retries (no dead-letter queue).
    pub dropped_retries: u64,
}

/// A subscriber waiting for messages (nothing was due when it last
/// looked), to be handed what a publish queues for it
/// ([`Store::commit_group`]).
#[derive(Debug, Clone, Copy)]
pub struct Waiting<'a> {
    /// Its subscriptions ([`Handed`] names them by index).
    pub subscriptions: &'a [String],
    /// The most messages it takes.
    pub room: usize,
    /// How long a hand-out waits for its answer before it is due again.
    pub ack_wait_ms: u64,
}

/// What a batch of publishes offers the waiting subscribers.
struct Hand<'b> {
    /// Subscription → (waiting subscriber, the subscription's index there).
    by_subscription: std::collections::HashMap<&'b str, (usize, usize)>,
    /// Per waiting subscriber, what it is offered.
    offered: Vec<Vec<Offer<'b>>>,
}

/// A message offered a waiting subscriber.
#[derive(Clone, Copy)]
struct Offer<'b> {
    rank: u8,
    seq: u64,
    /// Its subscription's index among the subscriber's.
    index: usize,
    envelope: &'b [u8],
}

impl<'b> Hand<'b> {
    fn new(waiting: &'b [Waiting<'_>]) -> Self {
        let mut by_subscription = std::collections::HashMap::new();
        for (w, waiter) in waiting.iter().enumerate() {
            for (index, subscription) in waiter.subscriptions.iter().enumerate() {
                by_subscription
                    .entry(subscription.as_str())
                    .or_insert((w, index));
            }
        }
        Hand {
            by_subscription,
            offered: vec![Vec::new(); waiting.len()],
        }
    }

    fn offer(&mut self, subscription: &str, rank: u8, seq: u64, envelope: &'b [u8]) {
        if let Some(&(w, index)) = self.by_subscription.get(subscription) {
            self.offered[w].push(Offer {
                rank,
                seq,
                index,
                envelope,
            });
        }
    }

    /// Hands each waiting subscriber its offers, best first, up to its
    /// room: handed out in `queue` as [`Store::take_many`] does.
    fn out(
        self,
        queue: &mut QueueTable<'_>,
        waiting: &[Waiting<'_>],
        now_ms: u64,
    ) -> Result<Vec<HandedOut>, StoreError> {
        let mut handed = Vec::with_capacity(waiting.len());
        for (mut offered, waiter) in self.offered.into_iter().zip(waiting) {
            offered.sort_unstable_by_key(|o| (o.rank, o.seq));
            offered.truncate(waiter.room);
            let due = now_ms.saturating_add(waiter.ack_wait_ms);
            let mut out = Vec::with_capacity(offered.len());
            for Offer {
                rank,
                seq,
                index,
                envelope,
            } in offered
            {
                let subscription = waiter.subscriptions[index].as_str();
                queue.insert((subscription, rank, seq), (1, due))?;
                out.push((
                    index,
                    Handed {
                        seq,
                        attempt: 1,
                        envelope: envelope.to_vec(),
                        once: false,
                    },
                ));
            }
            handed.push(out);
        }
        Ok(handed)
    }
}

/// The store.
pub struct Store {
    db: Database,
    limit: u64,
    journal: Option<Mutex<Journal>>,
}

/// The store's tables and counters, each opened once in a write
/// transaction (opening a table is a lookup of its own).
struct Tables<'t> {
    meta: redb::Table<'t, &'static str, u64>,
    seen: redb::Table<'t, &'static str, (u64, u64)>,
    messages: MessageTable<'t>,
    refs: redb::Table<'t, u64, u32>,
    queue: QueueTable<'t>,
    dead: redb::Table<'t, (&'static str, u64), (u32, u64, &'static str)>,
    /// The next sequence number.
    next: u64,
    /// Bytes of messages stored.
    used: u64,
    /// The counters as read, to write back only what changed.
    read: (u64, u64),
}

impl<'t> Tables<'t> {
    fn open(tx: &'t WriteTransaction) -> Result<Self, StoreError> {
        let meta = tx.open_table(META)?;
        let next = counter(&meta, NEXT_SEQ)?.max(1);
        let used = counter(&meta, USED)?;
        Ok(Tables {
            meta,
            seen: tx.open_table(SEEN)?,
            messages: tx.open_table(MESSAGES)?,
            refs: tx.open_table(REFS)?,
            queue: tx.open_table(QUEUE)?,
            dead: tx.open_table(DEAD)?,
            next,
            used,
            read: (next, used),
        })
    }

    /// Stores `m` (its record of priority `rank`, accepted at
    /// `accepted_ms`) and queues it for each of its subscriptions.
    fn put(
        &mut self,
        m: &journal::Framed<'_>,
        rank: u8,
        accepted_ms: u64,
    ) -> Result<(), StoreError> {
        self.messages.insert(m.seq, m.record)?;
        // A message with one holder (the usual case) has no `refs` row.
        let n = u32::try_from(m.subscriptions.len()).unwrap_or(u32::MAX);
        if n > 1 {
            self.refs.insert(m.seq, n)?;
        }
        for sub in m.subscriptions {
            self.queue.insert((sub.as_str(), rank, m.seq), (0, 0))?;
        }
        if m.exactly_once {
            self.seen.insert(m.message_id, (accepted_ms, m.seq))?;
        }
        self.used += m.record.len() as u64;
        self.next = m.seq + 1;
        Ok(())
    }

    /// Writes the counters back (those that changed).
    fn close(mut self) -> Result<(), StoreError> {
        if self.next != self.read.0 {
            self.meta.insert(NEXT_SEQ, self.next)?;
        }
        if self.used != self.read.1 {
            self.meta.insert(USED, self.used)?;
        }
        Ok(())
    }

    /// `subscription`'s queue entry for `seq`: (rank, attempts, due).
    fn find(&self, subscription: &str, seq: u64) -> Result<Option<(u8, u32, u64)>, StoreError> {
        for rank in 0..=3u8 {
            if let Some(v) = self.queue.get((subscription, rank, seq))? {
                let (attempts, due) = v.value();
                return Ok(Some((rank, attempts, due)));
            }
        }
        Ok(None)
    }

    fn record(&self, seq: u64) -> Result<Record, StoreError> {
        let bytes = self.messages.get(seq)?.ok_or(StoreError::Corrupt(seq))?;
        Record::decode(bytes.value()).ok_or(StoreError::Corrupt(seq))
    }

    /// Each `(subscription, seq, refusal)`: an acknowledgement, or a
    /// refusal.
    fn answer(
        &mut self,
        answers: &[(String, u64, Option<String>)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        for (subscription, seq, refusal) in answers {
            match refusal {
                None => drop(self.ack(subscription, *seq)?),
                Some(reason) => drop(self.nack(subscription, *seq, now_ms, reason)?),
            }
        }
        Ok(())
    }

    fn ack(&mut self, subscription: &str, seq: u64) -> Result<bool, StoreError> {
        match self.find(subscription, seq)? {
            Some((rank, _, _)) => {
                self.queue.remove((subscription, rank, seq))?;
                self.release_ref(seq)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn nack(
        &mut self,
        subscription: &str,
        seq: u64,
        now_ms: u64,
        reason: &str,
    ) -> Result<Retry, StoreError> {
        let Some((rank, attempts, _)) = self.find(subscription, seq)? else {
            return Ok(Retry::Unknown);
        };
        let d = self.record(seq)?.delivery;
        if attempts > d.max_retries {
            self.queue.remove((subscription, rank, seq))?;
            let why = spent(reason);
            let dead = self.end(subscription, (seq, attempts), &why, d.dead_letter, now_ms)?;
            return Ok(if dead {
                Retry::DeadLettered
            } else {
                Retry::Dropped
            });
        }
        let due = now_ms.saturating_add(backoff(d.retry_delay_ms, attempts));
        self.queue
            .insert((subscription, rank, seq), (attempts, due))?;
        Ok(Retry::At(due))
    }

    /// A queued message (`seq`, handed out `attempts` times) that will not
    /// be delivered to `subscription`: into its dead-letter queue when the
    /// message has one (`dead_letter`; true returned), else dropped and
    /// counted.
    fn end(
        &mut self,
        subscription: &str,
        (seq, attempts): (u64, u32),
        why: &str,
        dead_letter: bool,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if dead_letter {
            self.dead
                .insert((subscription, seq), (attempts, now_ms, why))?;
            return Ok(true);
        }
        let key = if why == "EXPIRED" {
            DROPPED_EXPIRED
        } else {
            DROPPED_RETRIES
        };
        let n = counter(&self.meta, key)?;
        self.meta.insert(key, n + 1)?;
        self.release_ref(seq)?;
        Ok(false)
    }

    /// One holder of `seq` let go: the message is deleted with its last
    /// (no `refs` row: it had one).
    fn release_ref(&mut self, seq: u64) -> Result<(), StoreError> {
        let n = self.refs.get(seq)?.map(|g| g.value());
        match n {
            Some(n) if n > 1 => {
                self.refs.insert(seq, n - 1)?;
                return Ok(());
            }
            Some(_) => drop(self.refs.remove(seq)?),
            None => {}
        }
        let size = self
            .messages
            .remove(seq)?
            .map_or(0, |g| g.value().len() as u64);
        self.used = self.used.saturating_sub(size);
        Ok(())
    }
}

fn lock(journal: &Mutex<Journal>) -> std::sync::MutexGuard<'_, Journal> {
    journal
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// After a durable commit: the journal's frames are all in the database.
fn emptied(journal: Option<std::sync::MutexGuard<'_, Journal>>) -> Result<(), StoreError> {
    match journal {
        Some(mut j) if j.len() > 0 => j.truncate(0).map_err(journal_error),
        _ => Ok(()),
    }
}

fn journal_error(e: std::io::Error) -> StoreError {
    StoreError::Db(redb::StorageError::Io(e).into())
}

impl Store {
    /// Opens (or creates) the store at `path`, holding at most `limit`
    /// bytes of messages, each publish fsynced ([`Store::accept`]). A
    /// journal left beside it (by [`Store::open_journaled`]) is read back
    /// into it and removed.
    pub fn open(path: &Path, limit: u64) -> Result<Store, StoreError> {
        let mut store = Store::open_journaled(path, limit)?;
        if let Some(journal) = store.journal.take() {
            let path = lock(&journal).path().to_owned();
            drop(journal);
            std::fs::remove_file(path).map_err(journal_error)?;
        }
        Ok(store)
    }

    /// Opens (or creates) the store at `path` with its journal (`path` and
    /// `.journal`, 0600) for [`Store::accept_journaled`]; messages the
    /// journal holds and the database does not (the process died before
    /// they were fsynced) are put back first.
    pub fn open_journaled(path: &Path, limit: u64) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(MESSAGES)?;
        tx.open_table(REFS)?;
        tx.open_table(QUEUE)?;
        tx.open_table(DEAD)?;
        tx.open_table(SEEN)?;
        tx.open_table(META)?;
        tx.commit()?;
        let mut name = path.as_os_str().to_owned();
        name.push(".journal");
        let (mut journal, entries) = Journal::open(Path::new(&name)).map_err(journal_error)?;
        if !entries.is_empty() {
            let n = Store::restore(&db, entries)?;
            tracing::info!(
                restored = n,
                "mediator: messages accepted before the last stop put back from {}",
                journal.path().display()
            );
        }
        journal.truncate(0).map_err(journal_error)?;
        Ok(Store {
            db,
            limit,
            journal: Some(Mutex::new(journal)),
        })
    }

    /// Stores `batch` in one transaction and returns once it is on disk
    /// (fsync); the journal, if any, is emptied: the database holds all.
    pub fn accept(&self, batch: &[Incoming<'_>], now_ms: u64) -> Result<Vec<Accepted>, StoreError> {
        Ok(self.commit_group(batch, now_ms, false, &[], &[])?.0)
    }

    /// Stores `batch` in one transaction, its messages written to the
    /// journal (one `write`, no fsync) before the transaction commits, so
    /// they survive the death of the process but not, until the next
    /// [`Store::accept`] or [`Store::checkpoint`], a power loss. Without a
    /// journal (opened by [`Store::open`]) it is [`Store::accept`].
    pub fn accept_journaled(
        &self,
        batch: &[Incoming<'_>],
        now_ms: u64,
    ) -> Result<Vec<Accepted>, StoreError> {
        Ok(self.commit_group(batch, now_ms, true, &[], &[])?.0)
    }

    /// One commit group: [`Store::accept_journaled`] (`journaled`) or
    /// [`Store::accept`] of `batch`, the subscribers' `answers` (as
    /// [`Store::answer_many`]) applied first in the same transaction, and
    /// each of `waiting` (subscribers with nothing due when they last
    /// looked) handed what `batch` queues for it: at most its `room`,
    /// highest priority first, as [`Store::take_many`] would have
    /// (`at_most_once` messages are left to `take_many`). A group of
    /// answers only is committed without fsync, as [`Store::answer_many`]
    /// commits.
    pub fn commit_group(
        &self,
        batch: &[Incoming<'_>],
        now_ms: u64,
        journaled: bool,
        waiting: &[Waiting<'_>],
        answers: &[(String, u64, Option<String>)],
    ) -> Result<AcceptedAndHanded, StoreError> {
        if batch.is_empty() {
            self.answer_many(answers, now_ms)?;
            return Ok((Vec::new(), vec![Vec::new(); waiting.len()]));
        }
        let (Some(journal), true) = (&self.journal, journaled) else {
            let journal = self.journal.as_ref().map(lock);
            let tx = self.db.begin_write()?;
            let out = self.accept_in(&tx, answers, batch, now_ms, None, waiting)?;
            tx.commit()?;
            emptied(journal)?;
            return Ok(out);
        };
        // The journal is locked before the transaction begins, here and
        // wherever it is emptied, so no frame is appended between a
        // durable commit and the emptying that follows it.
        let mut journal = lock(journal);
        let tx = self.write(Durability::None)?;
        let mut frames = Vec::with_capacity(batch.iter().map(|m| m.envelope.len() + 128).sum());
        let out = self.accept_in(&tx, answers, batch, now_ms, Some(&mut frames), waiting)?;
        let mark = journal.len();
        journal.append(&frames).map_err(journal_error)?;
        if let Err(e) = tx.commit() {
            // Not stored: its frames must not be read back as if it were.
            journal.truncate(mark).map_err(journal_error)?;
            return Err(e.into());
        }
        Ok(out)
    }

    /// Makes every commit so far durable (fsync) and empties the journal.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let journal = self.journal.as_ref().map(lock);
        self.db.begin_write()?.commit()?;
        emptied(journal)
    }

    /// Bytes in the journal; `None` without one.
    pub fn journal_bytes(&self) -> Option<u64> {
        self.journal.as_ref().map(|j| lock(j).len())
    }

    /// `answers`, then `batch`, into `tx`; with `frames`, each message
    /// stored is framed there for the journal; what `waiting` is handed.
    fn accept_in(
        &self,
        tx: &WriteTransaction,
        answers: &[(String, u64, Option<String>)],
        batch: &[Incoming<'_>],
        now_ms: u64,
        mut frames: Option<&mut Vec<u8>>,
        waiting: &[Waiting<'_>],
    ) -> Result<AcceptedAndHanded, StoreError> {
        let mut hand = Hand::new(waiting);
        let mut out = Vec::with_capacity(batch.len());
        let mut tables = Tables::open(tx)?;
        tables.answer(answers, now_ms)?;
        for m in batch {
            if m.exactly_once
                && let Some(prior) = tables.seen.get(m.message_id)?.map(|g| g.value())
                && now_ms.saturating_sub(prior.0) < DEDUP_WINDOW_MS
            {
                out.push(Accepted::Duplicate(prior.1));
                continue;
            }
            if m.subscriptions.is_empty() {
                out.push(Accepted::Unrouted);
                continue;
            }
            let bytes = Record {
                delivery: m.delivery,
                accepted_ms: now_ms,
                envelope: m.envelope.to_vec(),
            }
            .encode();
            if tables.used + bytes.len() as u64 > self.limit {
                out.push(Accepted::Full {
                    used: tables.used,
                    limit: self.limit,
                });
                continue;
            }
            let framed = journal::Framed {
                seq: tables.next,
                exactly_once: m.exactly_once,
                message_id: m.message_id,
                subscriptions: m.subscriptions,
                record: &bytes,
            };
            if let Some(frames) = frames.as_deref_mut() {
                journal::frame(frames, &framed).map_err(journal_error)?;
            }
            tables.put(&framed, m.delivery.rank, now_ms)?;
            for sub in m.subscriptions {
                // What is not to be delivered now (expired, M4; handed out
                // once only) is left to `take_many`, which deals with it.
                if !m.delivery.at_most_once && m.delivery.over(0, now_ms).is_none() {
                    hand.offer(sub, m.delivery.rank, framed.seq, m.envelope);
                }
            }
            out.push(Accepted::Stored(framed.seq));
        }
        let handed = hand.out(&mut tables.queue, waiting, now_ms)?;
        tables.close()?;
        Ok((out, handed))
    }

    /// Puts the journal's messages the database does not hold (sequence
    /// numbers from its next on) back, durably, whatever the size limit
    /// (they were accepted); how many.
    fn restore(db: &Database, entries: Vec<journal::Entry>) -> Result<usize, StoreError> {
        let tx = db.begin_write()?;
        let mut restored = 0;
        let mut tables = Tables::open(&tx)?;
        for e in &entries {
            if e.seq < tables.next {
                continue;
            }
            let Some(record) = Record::decode(&e.record) else {
                return Err(StoreError::Corrupt(e.seq));
            };
            tables.put(&e.framed(), record.delivery.rank, record.accepted_ms)?;
            restored += 1;
        }
        tables.close()?;
        tx.commit()?;
        Ok(restored)
    }

    /// Hands out the next message due for `subscription`: the highest
    /// priority first, the oldest first within a priority. Expired messages
    /// (M4) and messages whose retries are spent are moved to the
    /// dead-letter queue, or dropped and counted, on the way. The message
    /// handed out is due again at `now_ms + ack_wait_ms` unless acknowledged
    /// (an `at_most_once` one never again).
    pub fn take(
        &self,
        subscription: &str,
        now_ms: u64,
        ack_wait_ms: u64,
    ) -> Result<Take, StoreError> {
        self.take_any(&[subscription], now_ms, ack_wait_ms)
            .map(|(_, take)| take)
    }

    /// [`Store::take`] over several subscriptions at once (one subscriber's
    /// event types): the next message due of any of them, by priority, then
    /// age. Also returns the index in `subscriptions` of the one it came
    /// from.
    pub fn take_any(
        &self,
        subscriptions: &[&str],
        now_ms: u64,
        ack_wait_ms: u64,
    ) -> Result<(usize, Take), StoreError> {
        let (mut taken, idle) = self.take_many(subscriptions, now_ms, ack_wait_ms, 1)?;
        Ok(match taken.pop() {
            Some((index, handed)) => (index, Take::Message(handed)),
            None => (0, Take::Idle(idle)),
        })
    }

    /// [`Store::take_any`] up to `max` times, in one transaction and one
    /// pass over each subscription's queue: the messages handed out, by
    /// priority then age, with their subscriptions' indexes; when fewer
    /// than `max`, also when the next one is due, if any is queued.
    pub fn take_many(
        &self,
        subscriptions: &[&str],
        now_ms: u64,
        ack_wait_ms: u64,
        max: usize,
    ) -> Result<Taken, StoreError> {
        let tx = self.write(Durability::None)?;
        let mut taken = Vec::new();
        let next_due = {
            let mut t = Tables::open(&tx)?;
            let mut scan = Scan::new(max);
            for (index, subscription) in subscriptions.iter().enumerate() {
                scan.subscription(&t.queue, &t.messages, (index, subscription), now_ms)?;
            }
            for e in &scan.ended {
                let subscription = subscriptions[e.index];
                let (rank, seq) = e.key;
                t.queue.remove((subscription, rank, seq))?;
                let held = (seq, e.attempts);
                t.end(subscription, held, e.why, e.dead_letter, now_ms)?;
            }
            let (found, next_due) = scan.best();
            let due = now_ms.saturating_add(ack_wait_ms);
            for b in found {
                let subscription = subscriptions[b.index];
                if b.record.delivery.at_most_once {
                    t.queue.remove((subscription, b.rank, b.seq))?;
                    t.release_ref(b.seq)?;
                } else {
                    t.queue
                        .insert((subscription, b.rank, b.seq), (b.attempt, due))?;
                }
                let handed = Handed {
                    seq: b.seq,
                    attempt: b.attempt,
                    envelope: b.record.envelope,
                    once: b.record.delivery.at_most_once,
                };
                taken.push((b.index, handed));
            }
            t.close()?;
            next_due
        };
        tx.commit()?;
        let idle = if taken.len() < max { next_due } else { None };
        Ok((taken, idle))
    }

    /// A write transaction: committed to disk before `commit` returns
    /// ([`Durability::Immediate`]), or with the next durable commit
    /// ([`Durability::None`]: for what a crash may lose at the price of a
    /// redelivery — hand-outs, acknowledgements, refusals).
    fn write(&self, durability: Durability) -> Result<WriteTransaction, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(durability)?;
        Ok(tx)
    }

    /// `f` on the tables in a transaction committed without fsync (what a
    /// crash may lose costs a redelivery).
    fn in_tables<T>(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.write(Durability::None)?;
        let out = Self::with_tables(&tx, f)?;
        tx.commit()?;
        Ok(out)
    }

    /// `f` on the tables in a transaction committed durably.
    fn durably<T>(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_write()?;
        let out = Self::with_tables(&tx, f)?;
        tx.commit()?;
        Ok(out)
    }

    fn with_tables<T>(
        tx: &WriteTransaction,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tables = Tables::open(tx)?;
        let out = f(&mut tables)?;
        tables.close()?;
        Ok(out)
    }

    /// The subscriber handled `seq`: it leaves `subscription`'s queue.
    /// False when no such delivery was outstanding.
    pub fn ack(&self, subscription: &str, seq: u64) -> Result<bool, StoreError> {
        self.in_tables(|t| t.ack(subscription, seq))
    }

    /// The subscriber refused `seq` (or its acknowledgement did not come):
    /// redelivered after the message's retry delay, doubled for each retry
    /// before (at most [`MAX_DELAY_MS`]), while it has retries left; then
    /// dead-lettered or dropped (M7, M8).
    /// `reason` (the subscriber's, at most [`MAX_REASON`] bytes kept) is
    /// the dead letter's reason when it is dead-lettered.
    pub fn nack(
        &self,
        subscription: &str,
        seq: u64,
        now_ms: u64,
        reason: &str,
    ) -> Result<Retry, StoreError> {
        self.in_tables(|t| t.nack(subscription, seq, now_ms, reason))
    }

    /// Several answers in one transaction: each `(subscription, seq,
    /// refusal)` an [`Store::ack`] (no refusal) or a [`Store::nack`].
    pub fn answer_many(
        &self,
        answers: &[(String, u64, Option<String>)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.in_tables(|t| t.answer(answers, now_ms))
    }

    /// The subscriber's lease ended while it held `seq` (M11): due again
    /// now, and the delivery does not count as an attempt.
    pub fn release(&self, subscription: &str, seq: u64, now_ms: u64) -> Result<bool, StoreError> {
        self.in_tables(|t| {
            let Some((rank, attempts, _)) = t.find(subscription, seq)? else {
                return Ok(false);
            };
            let entry = (attempts.saturating_sub(1), now_ms);
            t.queue.insert((subscription, rank, seq), entry)?;
            Ok(true)
        })
    }

    /// The dead-letter queue, of one subscription or all (M8).
    pub fn dead_letters(&self, subscription: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead_letters_where(&|sub, _| subscription.is_none_or(|s| s == sub))
    }

    /// The dead letters `keep` (given each one's subscription and sequence
    /// number) takes; only those are read in full.
    pub fn dead_letters_where(
        &self,
        keep: &dyn Fn(&str, u64) -> bool,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let tx = self.db.begin_read()?;
        let dead = tx.open_table(DEAD)?;
        let messages = tx.open_table(MESSAGES)?;
        let mut out = Vec::new();
        for entry in dead.iter()? {
            let (key, value) = entry?;
            let (sub, seq) = key.value();
            if !keep(sub, seq) {
                continue;
            }
            let (attempts, since_ms, reason) = value.value();
            let bytes = messages.get(seq)?.ok_or(StoreError::Corrupt(seq))?;
            let record = Record::decode(bytes.value()).ok_or(StoreError::Corrupt(seq))?;
            out.push(DeadLetter {
                subscription: sub.to_owned(),
                seq,
                attempts,
                since_ms,
                reason: reason.to_owned(),
                envelope: record.envelope,
            });
        }
        Ok(out)
    }

    /// Queues a dead letter again for its subscription, as new (its
    /// attempts start over); false when there is no such dead letter.
    pub fn replay(&self, subscription: &str, seq: u64) -> Result<bool, StoreError> {
        self.durably(|t| {
            let removed = t.dead.remove((subscription, seq))?.is_some();
            if removed {
                let rank = t.record(seq)?.delivery.rank;
                t.queue.insert((subscription, rank, seq), (0, 0))?;
            }
            Ok(removed)
        })
    }

    /// Deletes dead letters: of one subscription, or all; their number.
    pub fn purge(&self, subscription: Option<&str>) -> Result<usize, StoreError> {
        let keys: Vec<(String, u64)> = self
            .dead_letters(subscription)?
            .into_iter()
            .map(|d| (d.subscription, d.seq))
            .collect();
        self.purge_keys(&keys)
    }

    /// Deletes the dead letters `keys` names (subscription, seq); the
    /// number there were.
    pub fn purge_keys(&self, keys: &[(String, u64)]) -> Result<usize, StoreError> {
        self.durably(|t| {
            let mut n = 0;
            for (sub, seq) in keys {
                if t.dead.remove((sub.as_str(), *seq))?.is_some() {
                    t.release_ref(*seq)?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Forgets `exactly_once` ids older than [`DEDUP_WINDOW_MS`]; their
    /// number.
    pub fn forget_seen(&self, now_ms: u64) -> Result<usize, StoreError> {
        let tx = self.db.begin_write()?;
        let mut n = 0;
        tx.open_table(SEEN)?.retain(|_, (at, _)| {
            let keep = now_ms.saturating_sub(at) < DEDUP_WINDOW_MS;
            n += usize::from(!keep);
            keep
        })?;
        tx.commit()?;
        Ok(n)
    }

    /// The store's counters.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let get =
            |k: &str| -> Result<u64, StoreError> { Ok(meta.get(k)?.map_or(0, |g| g.value())) };
        Ok(Stats {
            used_bytes: get(USED)?,
            dropped_expired: get(DROPPED_EXPIRED)?,
            dropped_retries: get(DROPPED_RETRIES)?,
        })
    }
}

/// A message due found by a [`Scan`].
struct Best {
    /// Its subscription's index.
    index: usize,
    rank: u8,
    seq: u64,
    /// The attempt handing it out makes.
    attempt: u32,
    record: Record,
}

/// What [`Store::take_many`] found looking through the queues.
struct Scan {
    /// The most messages to hand out.
    max: usize,
    /// Messages due, at most `max` of each subscription.
    found: Vec<Best>,
    /// When the next message not due yet is, if any.
    next_due: Option<u64>,
    ended: Vec<Ended>,
}

type QueueTable<'t> = redb::Table<'t, (&'static str, u8, u64), (u32, u64)>;
type MessageTable<'t> = redb::Table<'t, u64, &'static [u8]>;

impl Scan {
    fn new(max: usize) -> Self {
        Scan {
            max,
            found: Vec::new(),
            next_due: None,
            ended: Vec::new(),
        }
    }

    /// Looks through one subscription's queue, in priority then age order,
    /// up to its `max`-th message due.
    fn subscription(
        &mut self,
        queue: &QueueTable<'_>,
        messages: &MessageTable<'_>,
        (index, subscription): (usize, &str),
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let head = (subscription, 0u8, 0u64);
        let mut found = 0;
        for entry in queue.range(head..=(subscription, u8::MAX, u64::MAX))? {
            if found == self.max {
                break;
            }
            let (key, value) = entry?;
            let (_, rank, seq) = key.value();
            let (attempts, due) = value.value();
            if due > now_ms {
                self.next_due = Some(self.next_due.map_or(due, |d| d.min(due)));
                continue;
            }
            let bytes = messages.get(seq)?.ok_or(StoreError::Corrupt(seq))?;
            let record = Record::decode(bytes.value()).ok_or(StoreError::Corrupt(seq))?;
            let d = record.delivery;
            let Some(why) = d.over(attempts, now_ms) else {
                found += 1;
                self.found.push(Best {
                    index,
                    rank,
                    seq,
                    attempt: attempts + 1,
                    record,
                });
                continue;
            };
            self.ended.push(Ended {
                index,
                key: (rank, seq),
                attempts,
                why,
                dead_letter: d.dead_letter,
            });
        }
        Ok(())
    }

    /// The `max` first messages due of every subscription together, by
    /// priority then age; and when the next not due yet is, if any.
    fn best(mut self) -> (Vec<Best>, Option<u64>) {
        self.found.sort_by_key(|b| (b.rank, b.seq));
        self.found.truncate(self.max);
        (self.found, self.next_due)
    }
}

/// A queued message found undeliverable on the way to the next one.
struct Ended {
    /// Its subscription's index.
    index: usize,
    /// (rank, seq).
    key: (u8, u64),
    attempts: u32,
    why: &'static str,
    dead_letter: bool,
}

/// The most bytes of a subscriber's refusal reason a dead letter keeps.
pub const MAX_REASON: usize = 1024;

/// A dead letter's reason after its retries: `MAX_RETRIES`, with the
/// subscriber's last refusal reason when it gave one.
pub(crate) fn spent(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    if end == 0 {
        "MAX_RETRIES".to_owned()
    } else {
        format!("MAX_RETRIES: {}", &reason[..end])
    }
}

/// The delay before redelivery after `attempts` deliveries: `delay_ms`
/// (or the default), doubled for each delivery after the first, at most
/// [`MAX_DELAY_MS`].
pub fn backoff(delay_ms: u64, attempts: u32) -> u64 {
    let base = if delay_ms == 0 {
        DEFAULT_RETRY_DELAY_MS
    } else {
        delay_ms
    };
    let doublings = attempts.saturating_sub(1).min(32);
    base.saturating_mul(1u64 << doublings).min(MAX_DELAY_MS)
}

fn counter(meta: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, StoreError> {
    Ok(meta.get(key)?.map_or(0, |g| g.value()))
}

#[cfg(test)]
mod tests;
