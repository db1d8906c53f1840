//! When to read certificates again: on SIGHUP, or when one of their files
//! changes (checked every [`CERT_POLL`]). The Core and modules built with
//! the SDK both take a renewed certificate (or a CA file holding an old and
//! a new CA, during a rollover) up this way, without a restart.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// How often certificate files are checked for a change.
pub const CERT_POLL: Duration = Duration::from_secs(2);

/// What a file looked like: its modification time and length (`None`:
/// missing or unreadable).
type Stamp = Option<(SystemTime, u64)>;

/// Why certificates should be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadCause {
    /// The process received SIGHUP.
    Hangup,
    /// One of the watched files changed (or appeared, or went away).
    FileChanged,
}

impl ReloadCause {
    /// Says it in a log line: `SIGHUP`, `a certificate file changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadCause::Hangup => "SIGHUP",
            ReloadCause::FileChanged => "a certificate file changed",
        }
    }
}

impl std::fmt::Display for ReloadCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Watches certificate files (and SIGHUP) for a reason to reload.
///
/// ```no_run
/// # async fn demo() {
/// use anima_protocol::transport::CertWatch;
/// let mut watch = CertWatch::new(vec!["module.pem".into(), "module.key".into(), "ca.pem".into()]);
/// loop {
///     let cause = watch.next().await;
///     // read the files again; on error keep the previous ones
///     println!("reloading: {cause}");
/// }
/// # }
/// ```
pub struct CertWatch {
    files: Vec<PathBuf>,
    seen: Vec<Stamp>,
    tick: tokio::time::Interval,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl CertWatch {
    /// Watches `files` from their state now. Must be called within a Tokio
    /// runtime. Where no SIGHUP handler can be installed, only file changes
    /// count (logged once).
    pub fn new(files: Vec<PathBuf>) -> Self {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + CERT_POLL, CERT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: certificates reload only when their files change");
                None
            }
        };
        let seen = stamps(&files);
        CertWatch {
            files,
            seen,
            tick,
            #[cfg(unix)]
            hangup,
        }
    }

    /// The watched files.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Waits for the next reason to reload. The files are stamped when it
    /// returns: a file still being written changes again, and is reported
    /// again then.
    pub async fn next(&mut self) -> ReloadCause {
        let cause = loop {
            #[cfg(unix)]
            let hangup = async {
                match self.hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                Some(()) = hangup => break ReloadCause::Hangup,
                _ = self.tick.tick() => {
                    if stamps(&self.files) != self.seen {
                        break ReloadCause::FileChanged;
                    }
                }
            }
        };
        self.seen = stamps(&self.files);
        cause
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of this test's own, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("anima-certwatch-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    #[tokio::test]
    async fn a_changed_file_is_reported_within_a_poll_and_only_once() {
        let dir = scratch("changed");
        let file = dir.join("cert.pem");
        std::fs::write(&file, "one").unwrap();
        let mut watch = CertWatch::new(vec![file.clone()]);
        std::fs::write(&file, "two, longer").unwrap();
        let cause = tokio::time::timeout(CERT_POLL * 2, watch.next())
            .await
            .expect("reported within a poll");
        assert_eq!(cause, ReloadCause::FileChanged);
        assert!(
            tokio::time::timeout(CERT_POLL + CERT_POLL / 2, watch.next())
                .await
                .is_err(),
            "an unchanged file is not reported again"
        );
    }

    #[tokio::test]
    async fn a_file_that_goes_away_counts_as_a_change() {
        let dir = scratch("gone");
        let file = dir.join("ca.pem");
        std::fs::write(&file, "ca").unwrap();
        let mut watch = CertWatch::new(vec![file.clone()]);
        std::fs::remove_file(&file).unwrap();
        let cause = tokio::time::timeout(CERT_POLL * 2, watch.next())
            .await
            .expect("reported within a poll");
        assert_eq!(cause, ReloadCause::FileChanged);
    }
}
