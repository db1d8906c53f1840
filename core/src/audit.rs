//! The append-only audit log: one JSON line per lease event.
//!
//! ```text
//! {"ts_ms":1763780000123,"event":"renewed","lease_id":"…","module":"urn:anima:module:echo",
//!  "core":"urn:anima:core:dev","actor":"module","reason":null,"detail":null,"ttl_ms":500}
//! ```
//!
//! The file is opened for appending only and created 0600. A write that
//! fails is logged and never stops the Core; the in-memory lease table stays
//! authoritative.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One lease event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// Wall-clock time, Unix milliseconds.
    pub ts_ms: u64,
    /// `issued`, `accepted`, `renewed`, `rescoped`, `refused`, `revoked`,
    /// `expired` or `connection_lost`.
    pub event: &'static str,
    /// The lease id (absent for a refused handshake before any id was agreed).
    pub lease_id: Option<String>,
    /// The module.
    pub module: String,
    /// The Core.
    pub core: String,
    /// Who caused it: `core`, `module`, `operator`, `clock` or `connection`.
    pub actor: &'static str,
    /// The wire reason, when there is one.
    pub reason: Option<String>,
    /// Human-readable detail.
    pub detail: Option<String>,
    /// The TTL granted, for issue/accept/renew.
    pub ttl_ms: Option<u64>,
}

impl AuditRecord {
    /// A record stamped now.
    pub fn now(event: &'static str, module: &str, core: &str, actor: &'static str) -> Self {
        AuditRecord {
            ts_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            event,
            lease_id: None,
            module: module.to_owned(),
            core: core.to_owned(),
            actor,
            reason: None,
            detail: None,
            ttl_ms: None,
        }
    }
}

/// Where audit records go. Cloning shares the destination.
#[derive(Clone)]
pub struct AuditLog {
    sink: Arc<Mutex<Sink>>,
}

enum Sink {
    File { file: File, path: PathBuf },
    Memory(Vec<AuditRecord>),
    Discard,
}

impl AuditLog {
    /// Appends to `path`, creating it (mode 0600) if needed.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path)?;
        Ok(AuditLog {
            sink: Arc::new(Mutex::new(Sink::File {
                file,
                path: path.to_owned(),
            })),
        })
    }

    /// Keeps records in memory (tests, embedding).
    pub fn memory() -> Self {
        AuditLog {
            sink: Arc::new(Mutex::new(Sink::Memory(Vec::new()))),
        }
    }

    /// Drops records.
    pub fn discard() -> Self {
        AuditLog {
            sink: Arc::new(Mutex::new(Sink::Discard)),
        }
    }

    /// Writes one record.
    pub fn record(&self, record: AuditRecord) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *sink {
            Sink::File { file, path } => {
                let line = match serde_json::to_string(&record) {
                    Ok(mut l) => {
                        l.push('\n');
                        l
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode audit record");
                        return;
                    }
                };
                if let Err(e) = file.write_all(line.as_bytes()) {
                    tracing::error!(path = %path.display(), error = %e, "audit log write failed");
                }
            }
            Sink::Memory(records) => records.push(record),
            Sink::Discard => {}
        }
    }

    /// The records kept by a [`AuditLog::memory`] log.
    pub fn records(&self) -> Vec<AuditRecord> {
        match &*self.sink.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::Memory(records) => records.clone(),
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
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
                "revoked",
                "urn:anima:module:m",
                "urn:anima:core:c",
                "operator",
            );
            r.lease_id = Some(format!("id{i}"));
            r.reason = Some("LEASE_REVOKED".into());
            log.record(r);
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
