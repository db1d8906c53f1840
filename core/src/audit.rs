//! The append-only audit log: one JSON line per lease event.
//!
//! ```text
//! {"ts_ms":1763780000123,"event":"renewed","lease_id":"…","module":"urn:anima:module:echo",
//!  "core":"urn:anima:core:dev","actor":"module","reason":null,"detail":null,"ttl_ms":500,
//!  "core_cert":null,"module_cert":null}
//! ```
//!
//! The file is opened for appending only and created 0600. Records are
//! written by one writer thread, off the runtime's worker threads: a caller
//! only queues its record, never waits for the disk. When the queue is full
//! (the disk stalls, or a flood of refused calls outruns it), the record is
//! dropped, counted (`anima_audit_records_dropped_total` in `/metrics`) and
//! logged, and the Core goes on; the in-memory lease table stays
//! authoritative. A write that fails is logged and never stops the Core.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anima_protocol::lease::Reason;
use serde::{Serialize, Serializer};

/// How many records may wait for the writer; past it, new records are
/// dropped (and counted) rather than making their caller wait.
pub const AUDIT_QUEUE_CAPACITY: usize = 8_192;

/// What an audit record records: its `event` (PROTOCOL.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// The Core offered a lease and the module granted it (the Core's side).
    Issued,
    /// The Core accepted the module's grant.
    Accepted,
    /// A renewal was granted.
    Renewed,
    /// A scope change was granted.
    Rescoped,
    /// A handshake or renewal was refused.
    Refused,
    /// The lease was revoked.
    Revoked,
    /// The lease ran out.
    Expired,
    /// The lease's connection went away.
    ConnectionLost,
    /// The gateway refused a user's call by policy.
    CallRefused,
}

impl AuditEvent {
    /// Every event, in PROTOCOL.md §7's order.
    pub const ALL: [AuditEvent; 9] = [
        AuditEvent::Issued,
        AuditEvent::Accepted,
        AuditEvent::Renewed,
        AuditEvent::Rescoped,
        AuditEvent::Refused,
        AuditEvent::Revoked,
        AuditEvent::Expired,
        AuditEvent::ConnectionLost,
        AuditEvent::CallRefused,
    ];

    /// The name in the log.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Issued => "issued",
            AuditEvent::Accepted => "accepted",
            AuditEvent::Renewed => "renewed",
            AuditEvent::Rescoped => "rescoped",
            AuditEvent::Refused => "refused",
            AuditEvent::Revoked => "revoked",
            AuditEvent::Expired => "expired",
            AuditEvent::ConnectionLost => "connection_lost",
            AuditEvent::CallRefused => "call_refused",
        }
    }
}

/// Who caused an audited event: its `actor` (PROTOCOL.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Actor {
    /// The Core.
    Core,
    /// The module.
    Module,
    /// An operator (`anima` admin commands).
    Operator,
    /// Time: the lease ran out.
    Clock,
    /// The network: the connection went away.
    Connection,
    /// A user calling through the gateway.
    User,
}

impl Actor {
    /// Every actor, in PROTOCOL.md §7's order.
    pub const ALL: [Actor; 6] = [
        Actor::Core,
        Actor::Module,
        Actor::Operator,
        Actor::Clock,
        Actor::Connection,
        Actor::User,
    ];

    /// The name in the log.
    pub const fn as_str(self) -> &'static str {
        match self {
            Actor::Core => "core",
            Actor::Module => "module",
            Actor::Operator => "operator",
            Actor::Clock => "clock",
            Actor::Connection => "connection",
            Actor::User => "user",
        }
    }
}

impl PartialEq<&str> for AuditEvent {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<&str> for Actor {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn reason_name<S: Serializer>(reason: &Option<Reason>, s: S) -> Result<S::Ok, S::Error> {
    match reason {
        Some(reason) => s.serialize_str(reason.as_str()),
        None => s.serialize_none(),
    }
}

/// One lease event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// Wall-clock time, Unix milliseconds.
    pub ts_ms: u64,
    /// What happened.
    pub event: AuditEvent,
    /// The lease id (absent for a refused handshake before any id was agreed).
    pub lease_id: Option<String>,
    /// The module.
    pub module: String,
    /// The Core.
    pub core: String,
    /// Who caused it.
    pub actor: Actor,
    /// The wire reason, when there is one.
    #[serde(serialize_with = "reason_name")]
    pub reason: Option<Reason>,
    /// Human-readable detail.
    pub detail: Option<String>,
    /// The TTL granted, for issue/accept/renew.
    pub ttl_ms: Option<u64>,
    /// For `accepted`: the SHA-256 fingerprint (hex) of the Core's
    /// certificate the lease is bound to.
    pub core_cert: Option<String>,
    /// For `accepted`: the SHA-256 fingerprint (hex) of the module's
    /// certificate the lease is bound to.
    pub module_cert: Option<String>,
}

impl AuditRecord {
    /// A record stamped now.
    pub(crate) fn now(event: AuditEvent, module: &str, core: &str, actor: Actor) -> Self {
        AuditRecord {
            ts_ms: unix_ms(SystemTime::now()),
            event,
            lease_id: None,
            module: module.to_owned(),
            core: core.to_owned(),
            actor,
            reason: None,
            detail: None,
            ttl_ms: None,
            core_cert: None,
            module_cert: None,
        }
    }
}

/// `t` in Unix milliseconds, as records and events are stamped (0 before
/// the epoch).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where audit records go. Cloning shares the destination.
#[derive(Clone)]
pub struct AuditLog {
    sink: Arc<Sink>,
}

enum Sink {
    File {
        queue: SyncSender<Message>,
        dropped: AtomicU64,
        path: PathBuf,
    },
    Memory(Mutex<Vec<AuditRecord>>),
    Discard,
}

enum Message {
    Record(Box<AuditRecord>),
    /// Answered once every record queued before it is written and flushed.
    Flush(std::sync::mpsc::Sender<()>),
}

impl AuditLog {
    /// Appends to `path`, creating it (mode 0600) if needed, through a
    /// writer thread of its own.
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path)?;
        let (queue, rx) = std::sync::mpsc::sync_channel(AUDIT_QUEUE_CAPACITY);
        let writer_path = path.to_owned();
        std::thread::Builder::new()
            .name("anima-audit".into())
            .spawn(move || write_records(file, &writer_path, &rx))?;
        Ok(AuditLog {
            sink: Arc::new(Sink::File {
                queue,
                dropped: AtomicU64::new(0),
                path: path.to_owned(),
            }),
        })
    }

    /// Keeps records in memory (tests, embedding).
    pub fn memory() -> Self {
        AuditLog {
            sink: Arc::new(Sink::Memory(Mutex::new(Vec::new()))),
        }
    }

    /// Drops records.
    pub fn discard() -> Self {
        AuditLog {
            sink: Arc::new(Sink::Discard),
        }
    }

    /// Queues one record; never waits for the disk.
    pub(crate) fn record(&self, record: AuditRecord) {
        match &*self.sink {
            Sink::File {
                queue,
                dropped,
                path,
            } => {
                if let Err(e) = queue.try_send(Message::Record(Box::new(record))) {
                    let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    // 1, 2, 4, 8, …: a stalled disk does not flood the log.
                    if n.is_power_of_two() {
                        let why = match e {
                            TrySendError::Full(_) => "the writer is behind",
                            TrySendError::Disconnected(_) => "the writer stopped",
                        };
                        tracing::error!(path = %path.display(), dropped = n, "audit record dropped: {why}");
                    }
                }
            }
            Sink::Memory(records) => records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(record),
            Sink::Discard => {}
        }
    }

    /// Records dropped so far because the writer could not keep up.
    pub(crate) fn dropped(&self) -> u64 {
        match &*self.sink {
            Sink::File { dropped, .. } => dropped.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Waits (blocking, at most `limit`) until every record queued so far is
    /// written and flushed; false if that did not happen in time. Call it
    /// from a blocking context (e.g. `spawn_blocking`), as on shutdown.
    pub(crate) fn flush(&self, limit: Duration) -> bool {
        let Sink::File { queue, .. } = &*self.sink else {
            return true;
        };
        let deadline = Instant::now() + limit;
        let (done, flushed) = std::sync::mpsc::channel();
        let mut message = Message::Flush(done);
        loop {
            match queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        flushed
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// The records kept by a [`AuditLog::memory`] log.
    pub fn records(&self) -> Vec<AuditRecord> {
        match &*self.sink {
            Sink::Memory(records) => records.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

/// The writer thread: writes records as they come, flushing whenever the
/// queue is momentarily empty; ends when every [`AuditLog`] is gone.
fn write_records(file: File, path: &Path, queue: &Receiver<Message>) {
    let mut out = BufWriter::new(file);
    let mut failing_since: Option<Instant> = None;
    let mut check = |result: std::io::Result<()>| match result {
        Ok(()) => failing_since = None,
        // One line per failing spell, and again every minute of it.
        Err(e) => {
            if failing_since.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                failing_since = Some(Instant::now());
                tracing::error!(path = %path.display(), error = %e, "audit log write failed");
            }
        }
    };
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => match serde_json::to_string(&record) {
                    Ok(mut line) => {
                        line.push('\n');
                        check(out.write_all(line.as_bytes()));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode audit record"),
                },
                Message::Flush(done) => {
                    check(out.flush());
                    let _ = done.send(());
                }
            }
            next = queue.try_recv().ok();
        }
        // Nothing more waiting: put what was written on disk.
        check(out.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_json_lines_and_creates_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        for i in 0..2 {
            let log = AuditLog::open(&path).unwrap();
            let mut r = AuditRecord::now(
                AuditEvent::Revoked,
                "urn:anima:module:m",
                "urn:anima:core:c",
                Actor::Operator,
            );
            r.lease_id = Some(format!("id{i}"));
            r.reason = Some(Reason::LeaseRevoked);
            log.record(r);
            assert!(log.flush(Duration::from_secs(10)), "written in time");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "reopening appends");
        assert_eq!(lines[1]["lease_id"], "id1");
        assert_eq!(lines[0]["actor"], "operator");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
