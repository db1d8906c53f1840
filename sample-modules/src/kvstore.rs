//! The kvstore: a Type II (resident private) module.
//!
//! Two things make a module resident. It is costly to start — here a
//! [`WarmCache`] (every prime below 2^25, about two million entries) stands in
//! for model weights or an index — and it keeps that state when its lease
//! ends: the SDK puts it in standby, refusing every call (`STANDBY`) until its
//! one Core leases it again, and the cache, the store and the process are
//! still there (ADR-0003 §6.2).
//!
//! Its `Put` shows the rule for side effects under a lease: **stage, then
//! commit**. The entries are validated and staged, the call does its work
//! (`delay_ms`), and only then are they applied in one step inside
//! [`LeaseContext::commit`], which runs only while the lease is valid and
//! atomically with respect to its ending. A lease that ends mid-call leaves
//! the store untouched, and the caller gets `LEASE_EXPIRED` or
//! `LEASE_REVOKED`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use anima_sample_modules::{DESCRIPTORS, kvstore, pb::kv_store_server::KvStoreServer};
//!
//! // CPU-bound: build it off the async workers, before announcing readiness.
//! let limit = kvstore::cache_limit_from_env()?;
//! let cache = tokio::task::spawn_blocking(move || kvstore::WarmCache::build(limit))
//!     .await
//!     .map_err(std::io::Error::other)??;
//! let code = anima_module_sdk::launch(kvstore::contract(), |m| {
//!     m.file_descriptor_set(DESCRIPTORS)
//!         .service(KvStoreServer::new(kvstore::KvStore::new(cache)))
//!         .interface(kvstore::interface())
//!         .probe()
//! })
//! .await;
//! # Ok(()) }
//! ```
//!
//! [`LeaseContext::commit`]: anima_module_sdk::LeaseContext::commit

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anima_module_sdk::{Contract, Interface};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::pb::{CacheInfoReply, CacheInfoRequest, GetReply, GetRequest, PutReply, PutRequest};
use crate::{check_text, lease_of, too_long};

/// The most entries one `Put` may write.
pub const MAX_ENTRIES: usize = 1000;
/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// The longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The longest simulated work a `Put` may ask for.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// The binary's warm cache: every prime below this (2^25).
pub const DEFAULT_CACHE_LIMIT: u32 = 1 << 25;
/// The environment variable overriding [`DEFAULT_CACHE_LIMIT`] (the binary
/// reads it; e.g. a smaller cache for debug builds in tests).
pub const CACHE_LIMIT_ENV: &str = "KVSTORE_CACHE_LIMIT";

/// The kvstore's capability contract (`kvstore/module.toml`).
pub fn contract() -> Contract {
    #[allow(clippy::expect_used)]
    // Invariant: the embedded module.toml is fixed at build time and a unit
    // test parses it.
    Contract::from_toml(include_str!("../kvstore/module.toml"))
        .expect("kvstore/module.toml is a valid contract")
}

/// The environment variable that runs the kvstore under another identity
/// (a URN such as `urn:anima:module:kvstore-b`): a second provider of
/// `anima.sample/kv` beside the first, with a certificate of its own.
pub const URN_ENV: &str = "KVSTORE_URN";

/// [`contract`], under the URN in [`URN_ENV`] when it is set; a value that
/// is not a module URN is an error naming the variable.
pub fn contract_from_env() -> io::Result<Contract> {
    let mut contract = contract();
    match std::env::var(URN_ENV) {
        Err(std::env::VarError::NotPresent) => {}
        Ok(text) if text.is_empty() => {}
        Ok(text) => {
            let urn: anima_protocol::Urn = text.parse().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{URN_ENV}: {e}"))
            })?;
            if urn.kind() != anima_protocol::UrnKind::Module {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{URN_ENV}: {urn} is not a module URN (urn:anima:module:NAME)"),
                ));
            }
            contract.urn = urn;
        }
        Err(e) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{URN_ENV}: {e}"),
            ));
        }
    }
    Ok(contract)
}

/// The definition of the interface the kvstore provides,
/// `anima.sample/kv` 1.0.0 (`interfaces/anima.sample/kv/1.0.0/interface.toml`),
/// for [`ModuleServer::interface`](anima_module_sdk::ModuleServer::interface).
pub fn interface() -> Interface {
    #[allow(clippy::expect_used)]
    // Invariant: the embedded interface.toml is fixed at build time and a
    // unit test parses it.
    Interface::from_toml(include_str!(
        "../../interfaces/anima.sample/kv/1.0.0/interface.toml"
    ))
    .expect("the kv interface.toml is a valid definition")
}

/// The cache limit from [`CACHE_LIMIT_ENV`], or [`DEFAULT_CACHE_LIMIT`]
/// when it is unset or empty; a value that is not a whole number below 2^32
/// is an error naming the variable.
pub fn cache_limit_from_env() -> io::Result<u32> {
    match std::env::var(CACHE_LIMIT_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_CACHE_LIMIT),
        Ok(v) if v.is_empty() => Ok(DEFAULT_CACHE_LIMIT),
        Ok(v) => v.trim().parse().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{CACHE_LIMIT_ENV}={v:?}: {e}"),
            )
        }),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{CACHE_LIMIT_ENV}: {e}"),
        )),
    }
}

/// Expensive start-up state a resident module keeps through standby: a
/// table of every prime below a limit, with a random id so callers can tell
/// whether they still talk to the same cache.
#[derive(Debug)]
pub struct WarmCache {
    id: String,
    primes: Vec<u32>,
    built_in: Duration,
}

impl WarmCache {
    /// Sieves every prime below `limit` and draws a random id. CPU-bound
    /// (a few hundred milliseconds for [`DEFAULT_CACHE_LIMIT`] in a release
    /// build): call it from `spawn_blocking` or before serving. Fails only
    /// when the system random generator does.
    pub fn build(limit: u32) -> io::Result<Self> {
        let started = Instant::now();
        let mut id = [0u8; 16];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| io::Error::other("the system random generator failed"))?;
        let primes = primes_below(limit);
        let cache = WarmCache {
            id: hex(&id),
            primes,
            built_in: started.elapsed(),
        };
        tracing::info!(
            cache_id = %cache.id,
            entries = cache.primes.len(),
            built_ms = cache.built_in.as_millis() as u64,
            "warm cache built"
        );
        Ok(cache)
    }

    /// The random id drawn when the cache was built (32 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The number of entries (primes) in the table.
    pub fn entries(&self) -> usize {
        self.primes.len()
    }

    /// How long building the cache took.
    pub fn built_in(&self) -> Duration {
        self.built_in
    }
}

/// The kvstore service: serve it with
/// [`KvStoreServer::new`](crate::pb::kv_store_server::KvStoreServer::new)
/// (or `from_arc`, to keep a handle for [`KvStore::staged_puts`]).
///
/// The store is process-wide: a Type II module serves one Core, so its data
/// belongs to that Core and survives standby along with the cache.
#[derive(Debug)]
pub struct KvStore {
    cache: WarmCache,
    store: Mutex<Store>,
    staged: watch::Sender<usize>,
}

/// The committed data. Locked only inside a commit or a read, never across
/// an `.await`.
#[derive(Debug, Default)]
struct Store {
    /// One more per committed `Put`.
    version: u64,
    /// Key → (value, the version that wrote it).
    entries: HashMap<String, (String, u64)>,
}

impl KvStore {
    /// An empty store beside `cache`.
    pub fn new(cache: WarmCache) -> Self {
        KvStore {
            cache,
            store: Mutex::new(Store::default()),
            staged: watch::Sender::new(0),
        }
    }

    /// The warm cache.
    pub fn cache(&self) -> &WarmCache {
        &self.cache
    }

    /// The number of `Put` calls that have staged their entries and not yet
    /// finished (committed, failed or been dropped), updated as it changes —
    /// for metrics, and for tests that end a lease mid-call.
    pub fn staged_puts(&self) -> watch::Receiver<usize> {
        self.staged.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // Every critical section is a read, or a commit whose steps cannot
        // fail (map inserts, an increment): a panic in another holder cannot
        // have left a half-applied write behind.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies staged entries as one new version.
    fn apply(&self, staged: HashMap<String, String>) -> u64 {
        let mut store = self.lock();
        store.version += 1;
        let version = store.version;
        store.entries.extend(
            staged
                .into_iter()
                .map(|(key, value)| (key, (value, version))),
        );
        version
    }
}

#[tonic::async_trait]
impl crate::pb::kv_store_server::KvStore for KvStore {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutReply>, Status> {
        let lease = lease_of(&request)?.clone();
        let PutRequest { entries, delay_ms } = request.into_inner();
        // Stage: validate everything before any effect.
        if entries.len() > MAX_ENTRIES {
            return Err(Status::invalid_argument(format!(
                "{} entries; at most {MAX_ENTRIES} per Put",
                entries.len()
            )));
        }
        for (key, value) in &entries {
            check_key(key)?;
            if value.len() > MAX_VALUE_BYTES {
                return Err(Status::invalid_argument(format!(
                    "the value of a {}-byte key is {} bytes; the limit is {MAX_VALUE_BYTES}",
                    key.len(),
                    value.len()
                )));
            }
        }
        let delay = Duration::from_millis(delay_ms);
        if delay > MAX_DELAY {
            return Err(Status::invalid_argument(format!(
                "delay_ms is {delay_ms}; the limit is {}",
                MAX_DELAY.as_millis()
            )));
        }
        // Work. The SDK drops this future the moment the lease ends, so the
        // guard (not code after the await) must undo the bookkeeping.
        let _staged = StagedGuard::enter(&self.staged);
        tracing::debug!(lease_id = %lease.lease_id(), entries = entries.len(), delay_ms, "put staged");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // Commit: all entries become visible at once, only if the lease is
        // still valid; otherwise the staged map is dropped unapplied.
        let count = entries.len();
        let version = lease.commit(|| self.apply(entries))?;
        tracing::info!(lease_id = %lease.lease_id(), entries = count, version, "put committed");
        Ok(Response::new(PutReply { version }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        lease_of(&request)?;
        let key = &request.get_ref().key;
        if key.len() > MAX_KEY_BYTES {
            return Err(too_long("a key", key.len(), MAX_KEY_BYTES));
        }
        let reply = match self.lock().entries.get(key) {
            Some((value, version)) => GetReply {
                found: true,
                value: value.clone(),
                version: *version,
            },
            None => GetReply::default(),
        };
        Ok(Response::new(reply))
    }

    async fn cache_info(
        &self,
        request: Request<CacheInfoRequest>,
    ) -> Result<Response<CacheInfoReply>, Status> {
        lease_of(&request)?;
        Ok(Response::new(CacheInfoReply {
            cache_id: self.cache.id.clone(),
            entries: self.cache.entries() as u64,
            built_ms: self.cache.built_in.as_millis() as u64,
            pid: std::process::id(),
        }))
    }
}

/// Counts a staged `Put` while it lives, however it ends.
struct StagedGuard<'a>(&'a watch::Sender<usize>);

impl<'a> StagedGuard<'a> {
    fn enter(staged: &'a watch::Sender<usize>) -> Self {
        staged.send_modify(|n| *n += 1);
        StagedGuard(staged)
    }
}

impl Drop for StagedGuard<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A key: not empty, at most [`MAX_KEY_BYTES`].
pub(crate) fn check_key(key: &str) -> Result<(), Status> {
    check_text("a key", key, MAX_KEY_BYTES)
}

/// Every prime below `limit` (a sieve of Eratosthenes over odd numbers).
fn primes_below(limit: u32) -> Vec<u32> {
    if limit <= 2 {
        return Vec::new();
    }
    let limit = limit as usize;
    // Slot i stands for the odd number 2i + 1, for every odd number below
    // `limit`.
    let slots = limit / 2;
    let mut composite = vec![false; slots];
    composite[0] = true; // 1
    let mut i = 1;
    while (2 * i + 1) * (2 * i + 1) < limit {
        if !composite[i] {
            let p = 2 * i + 1;
            // p² is odd: its slot is p² / 2; odd multiples are 2p apart.
            for slot in composite.iter_mut().skip(p * p / 2).step_by(p) {
                *slot = true;
            }
        }
        i += 1;
    }
    let mut primes = Vec::with_capacity(slots / 8);
    primes.push(2);
    primes.extend(
        composite
            .iter()
            .enumerate()
            .filter(|(_, c)| !**c)
            .map(|(i, _)| (2 * i + 1) as u32),
    );
    primes
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sieve() {
        assert_eq!(primes_below(0), Vec::<u32>::new());
        assert_eq!(primes_below(2), Vec::<u32>::new());
        assert_eq!(primes_below(3), vec![2]);
        assert_eq!(primes_below(30), vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert_eq!(primes_below(31).len(), 10);
        assert_eq!(primes_below(32).len(), 11);
        assert_eq!(primes_below(1 << 20).len(), 82_025);
    }

    #[test]
    fn caches_get_distinct_ids() {
        let a = WarmCache::build(1000).unwrap();
        let b = WarmCache::build(1000).unwrap();
        assert_eq!(a.entries(), 168);
        assert_eq!(a.id().len(), 32);
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn apply_is_one_version() {
        let store = KvStore::new(WarmCache::build(100).unwrap());
        let staged = HashMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]);
        assert_eq!(store.apply(staged), 1);
        assert_eq!(
            store.apply(HashMap::from([("a".to_owned(), "3".to_owned())])),
            2
        );
        let s = store.lock();
        assert_eq!(s.entries["a"], ("3".to_owned(), 2));
        assert_eq!(s.entries["b"], ("2".to_owned(), 1));
    }
}
