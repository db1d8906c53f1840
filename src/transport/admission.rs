//! Who gets a handshake slot, and how many connections one identity keeps.
//!
//! The accept loop never waits for a slot: every accepted socket gets one at
//! once, and when too many handshakes are pending (in all, or from one
//! address) the one that has waited longest *without a complete
//! ClientHello* is dropped to make room; only when every pending handshake
//! is past its ClientHello does the oldest of those go. A slow or silent
//! client therefore never keeps a new one out, and a client that sends its
//! ClientHello promptly (every real TLS stack does) is dropped last.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::socket::Origin;
use crate::identity::Urn;

/// The handshakes in progress on one listener.
pub(crate) struct PendingHandshakes {
    max_total: usize,
    max_per_address: usize,
    inner: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    next: u64,
    entries: HashMap<u64, Entry>,
    all: Queues,
    by_address: HashMap<Origin, Queues>,
}

struct Entry {
    address: Origin,
    progressing: bool,
    evict: oneshot::Sender<()>,
}

/// Pending handshakes oldest first: those still waiting for their
/// ClientHello, and those past it.
#[derive(Default)]
struct Queues {
    waiting: BTreeSet<u64>,
    progressing: BTreeSet<u64>,
}

impl Queues {
    fn len(&self) -> usize {
        self.waiting.len() + self.progressing.len()
    }

    /// The handshake to drop first: the oldest without a ClientHello, else
    /// the oldest with one.
    fn victim(&self) -> Option<u64> {
        self.waiting
            .first()
            .or_else(|| self.progressing.first())
            .copied()
    }

    fn remove(&mut self, id: u64) {
        self.waiting.remove(&id);
        self.progressing.remove(&id);
    }
}

impl Pending {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.all.remove(id);
        if let Some(queues) = self.by_address.get_mut(&entry.address) {
            queues.remove(id);
            if queues.len() == 0 {
                self.by_address.remove(&entry.address);
            }
        }
        Some(entry)
    }

    fn evict(&mut self, id: u64) {
        if let Some(entry) = self.remove(id) {
            let _ = entry.evict.send(());
        }
    }
}

impl PendingHandshakes {
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(PendingHandshakes {
            max_total: max_total.max(1),
            max_per_address: max_per_address.max(1),
            inner: Mutex::new(Pending::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a handshake from `address` (an IP address, or a local
    /// user), dropping older handshakes when the limits are reached. The slot's [`PendingSlot::evicted`] completes
    /// if this handshake is dropped in turn.
    pub(crate) fn admit(self: &Arc<Self>, address: Origin) -> PendingSlot {
        let (evict, evicted) = oneshot::channel();
        let mut pending = self.lock();
        while let Some(victim) = pending
            .by_address
            .get(&address)
            .filter(|q| q.len() >= self.max_per_address)
            .and_then(Queues::victim)
        {
            pending.evict(victim);
        }
        while pending.all.len() >= self.max_total {
            match pending.all.victim() {
                Some(victim) => pending.evict(victim),
                None => break,
            }
        }
        let id = pending.next;
        pending.next += 1;
        pending.entries.insert(
            id,
            Entry {
                address,
                progressing: false,
                evict,
            },
        );
        pending.all.waiting.insert(id);
        pending
            .by_address
            .entry(address)
            .or_default()
            .waiting
            .insert(id);
        PendingSlot {
            owner: self.clone(),
            id,
            evicted,
        }
    }

    /// How many handshakes are pending.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// One pending handshake's place; dropping it frees the place.
pub(crate) struct PendingSlot {
    owner: Arc<PendingHandshakes>,
    id: u64,
    /// Completes when the handshake is dropped to make room.
    pub(crate) evicted: oneshot::Receiver<()>,
}

impl PendingSlot {
    /// The client's ClientHello arrived: drop this handshake only after
    /// every one still waiting for its ClientHello.
    pub(crate) fn progressing(&self) {
        let mut pending = self.owner.lock();
        let Some(address) = pending.entries.get_mut(&self.id).map(|e| {
            e.progressing = true;
            e.address
        }) else {
            return;
        };
        let id = self.id;
        pending.all.waiting.remove(&id);
        pending.all.progressing.insert(id);
        if let Some(queues) = pending.by_address.get_mut(&address) {
            queues.waiting.remove(&id);
            queues.progressing.insert(id);
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.owner.lock().remove(self.id);
    }
}

/// At most `max` places held at once per identity: here, the connections
/// one identity keeps open on a listener; in the Core's gateway, the calls
/// one user has in flight. Each place is an [`IdentitySlot`], given back when
/// it is dropped.
#[derive(Debug)]
pub struct IdentityLimit {
    max: usize,
    counts: Mutex<HashMap<Urn, usize>>,
}

impl IdentityLimit {
    /// At most `max` places per identity (at least 1).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(IdentityLimit {
            max: max.max(1),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// The most places one identity may hold.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many identities hold at least one place.
    pub fn holders(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Urn, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more place for `urn`, or `None` when it holds the maximum.
    pub fn hold(self: &Arc<Self>, urn: &Urn) -> Option<IdentitySlot> {
        let mut counts = self.lock();
        let count = counts.entry(urn.clone()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IdentitySlot {
            owner: self.clone(),
            urn: urn.clone(),
        })
    }
}

/// One place held by an identity; dropping it gives the place back (and
/// forgets the identity once it holds none).
#[derive(Debug)]
pub struct IdentitySlot {
    owner: Arc<IdentityLimit>,
    urn: Urn,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut counts = self.owner.lock();
        if let Some(count) = counts.get_mut(&self.urn) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.urn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Origin {
        Origin::Ip(std::net::IpAddr::from([10, 0, 0, last]))
    }

    fn evicted(slot: &mut PendingSlot) -> bool {
        slot.evicted.try_recv().is_ok()
    }

    /// A table with those limits, and a handshake admitted from each of
    /// `addresses` (the last byte of `10.0.0.x`), in order.
    fn table_with<const N: usize>(
        max_total: usize,
        max_per_address: usize,
        addresses: [u8; N],
    ) -> (Arc<PendingHandshakes>, [PendingSlot; N]) {
        let table = PendingHandshakes::new(max_total, max_per_address);
        let slots = addresses.map(|last| table.admit(ip(last)));
        (table, slots)
    }

    #[test]
    fn a_full_table_drops_the_oldest_waiting_handshake_never_the_new_one() {
        let (table, [mut a, mut b, mut c]) = table_with(3, 10, [1, 2, 3]);
        // `a` got its ClientHello: it is kept over `b`, which did not.
        a.progressing();
        let mut d = table.admit(ip(4));
        assert!(!evicted(&mut a));
        assert!(evicted(&mut b));
        assert!(!evicted(&mut c) && !evicted(&mut d));
        assert_eq!(table.len(), 3);
        // With every one past its ClientHello, the oldest goes.
        c.progressing();
        d.progressing();
        let mut e = table.admit(ip(5));
        assert!(evicted(&mut a));
        assert!(!evicted(&mut e));
        drop((c, d, e));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn one_address_crowds_out_only_its_own_handshakes() {
        let (table, [mut other, mut first, mut second, mut third]) =
            table_with(100, 2, [9, 1, 1, 1]);
        assert!(evicted(&mut first));
        assert!(!evicted(&mut second) && !evicted(&mut third));
        assert!(!evicted(&mut other));
        assert_eq!(table.len(), 3);
        // A dropped slot frees its place.
        drop(second);
        let mut fourth = table.admit(ip(1));
        assert!(!evicted(&mut third) && !evicted(&mut fourth));
    }

    #[test]
    fn an_identity_holds_at_most_its_share_of_connections() {
        let conns = IdentityLimit::new(2);
        let alice: Urn = "urn:anima:user:alice".parse().unwrap();
        let bob: Urn = "urn:anima:user:bob".parse().unwrap();
        let one = conns.hold(&alice).unwrap();
        let _two = conns.hold(&alice).unwrap();
        assert!(conns.hold(&alice).is_none());
        assert!(conns.hold(&bob).is_some(), "per identity, not in all");
        drop(one);
        assert!(conns.hold(&alice).is_some());
    }
}
