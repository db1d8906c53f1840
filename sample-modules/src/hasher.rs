//! The hasher: a Type I (ephemeral) module.
//!
//! It analyses text (SHA-256, characters, words) and keeps nothing between
//! calls but a count of answers. What makes it a Type I module is its
//! lifecycle, which the SDK runs: it waits for its launching Core's first
//! lease (`startup_grace`), serves while leased, and once the lease ends gives
//! the same Core `expired_grace` to lease it again, then runs the cleanup hook
//! within `termination_window` and exits by itself (ADR-0003 §6.1).
//!
//! The resource it cleans up is real: a scratch directory holding a
//! `hasher.pid` file, created by [`Hasher::new`] and removed by the
//! [`Cleanup`] the binary registers with `on_cleanup`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use anima_sample_modules::{DESCRIPTORS, hasher, pb::hasher_server::HasherServer};
//!
//! let hasher = hasher::Hasher::new(hasher::scratch_dir_from_env())?;
//! let cleanup = hasher.cleanup();
//! let code = anima_module_sdk::launch(hasher::contract(), |m| {
//!     m.file_descriptor_set(DESCRIPTORS)
//!         .service(HasherServer::new(hasher))
//!         .probe()
//!         .on_cleanup(move || cleanup.run())
//! })
//! .await;
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anima_module_sdk::Contract;
use ring::digest::{SHA256, digest};
use tonic::{Request, Response, Status};

use crate::pb::{DigestReply, DigestRequest, StatsReply, StatsRequest};
use crate::{lease_of, too_long};

/// The environment variable naming the scratch directory (the binary reads
/// it; unset, it uses [`default_scratch_dir`]).
pub const SCRATCH_DIR_ENV: &str = "HASHER_SCRATCH_DIR";
/// The file the hasher writes in its scratch directory: its process id.
pub const PID_FILE: &str = "hasher.pid";
/// The longest text `Digest` accepts, in bytes.
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// The hasher's capability contract (`hasher/module.toml`).
pub fn contract() -> Contract {
    #[allow(clippy::expect_used)]
    // Invariant: the embedded module.toml is fixed at build time and a unit
    // test parses it.
    Contract::from_toml(include_str!("../hasher/module.toml"))
        .expect("hasher/module.toml is a valid contract")
}

/// A fresh scratch directory path for this process:
/// `$TMPDIR/anima-hasher-<pid>-<8 random hex digits>`: unique even where a
/// killed hasher (its cleanup never ran) left the directory of a process
/// that had the same pid.
pub fn default_scratch_dir() -> PathBuf {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    // Without randomness the nanoseconds of the clock stand in.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes = nanos.to_be_bytes();
    }
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::env::temp_dir().join(format!("anima-hasher-{}-{suffix}", std::process::id()))
}

/// The scratch directory path from [`SCRATCH_DIR_ENV`], or
/// [`default_scratch_dir`] when it is unset or empty.
pub fn scratch_dir_from_env() -> PathBuf {
    std::env::var_os(SCRATCH_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(default_scratch_dir, PathBuf::from)
}

/// The hasher service: serve it with
/// [`HasherServer::new`](crate::pb::hasher_server::HasherServer::new).
#[derive(Debug)]
pub struct Hasher {
    scratch: PathBuf,
    served: AtomicU64,
}

impl Hasher {
    /// Creates the scratch directory `scratch` (and any missing parents) with
    /// a [`PID_FILE`] in it. The directory itself must not exist yet: the
    /// hasher refuses to adopt an existing directory, so its cleanup never
    /// deletes anything it did not create.
    pub fn new(scratch: impl Into<PathBuf>) -> io::Result<Self> {
        let scratch = scratch.into();
        let context = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("scratch directory {}: {e}", scratch.display()),
            )
        };
        if let Some(parent) = scratch.parent() {
            std::fs::create_dir_all(parent).map_err(context)?;
        }
        std::fs::create_dir(&scratch).map_err(context)?;
        if let Err(e) = std::fs::write(scratch.join(PID_FILE), format!("{}\n", std::process::id()))
        {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(context(e));
        }
        tracing::info!(dir = %scratch.display(), "scratch directory created");
        Ok(Hasher {
            scratch,
            served: AtomicU64::new(0),
        })
    }

    /// The scratch directory.
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch
    }

    /// The cleanup that removes the scratch directory: register
    /// [`Cleanup::run`] with `on_cleanup`.
    pub fn cleanup(&self) -> Cleanup {
        Cleanup {
            dir: self.scratch.clone(),
        }
    }
}

#[tonic::async_trait]
impl crate::pb::hasher_server::Hasher for Hasher {
    async fn digest(
        &self,
        request: Request<DigestRequest>,
    ) -> Result<Response<DigestReply>, Status> {
        let lease = lease_of(&request)?;
        let text = &request.get_ref().text;
        if text.len() > MAX_TEXT_BYTES {
            return Err(too_long("text", text.len(), MAX_TEXT_BYTES));
        }
        let reply = analyse(text);
        // The count is this call's only side effect: made only if the lease
        // is still valid once the answer is ready.
        lease.commit(|| self.served.fetch_add(1, Ordering::Relaxed))?;
        tracing::debug!(lease_id = %lease.lease_id(), bytes = text.len(), "digest");
        Ok(Response::new(reply))
    }

    async fn stats(&self, request: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        lease_of(&request)?;
        Ok(Response::new(StatsReply {
            requests_served: self.served.load(Ordering::Relaxed),
        }))
    }
}

/// Removes the hasher's scratch directory; see [`Hasher::cleanup`].
#[derive(Debug, Clone)]
pub struct Cleanup {
    dir: PathBuf,
}

impl Cleanup {
    /// Removes the scratch directory and logs `cleanup complete`. Running
    /// it again is harmless (an already removed directory is left alone),
    /// so `main` also runs it after the module stops for another reason
    /// (a signal, a failed start) than its lease ending.
    pub async fn run(self) {
        match tokio::fs::remove_dir_all(&self.dir).await {
            Ok(()) => tracing::info!(dir = %self.dir.display(), "cleanup complete"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cleanup failed");
            }
        }
    }
}

/// The digest, characters and words of `text`.
fn analyse(text: &str) -> DigestReply {
    let hash = digest(&SHA256, text.as_bytes());
    let mut sha256_hex = String::with_capacity(64);
    for byte in hash.as_ref() {
        let _ = write!(sha256_hex, "{byte:02x}");
    }
    DigestReply {
        sha256_hex,
        chars: text.chars().count() as u64,
        words: text.split_whitespace().count() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyses_text() {
        let r = analyse("abc");
        assert_eq!(
            r.sha256_hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!((r.chars, r.words), (3, 1));
        let r = analyse("  héllo\twörld \n");
        assert_eq!((r.chars, r.words), (15, 2));
        let r = analyse("");
        assert_eq!(
            r.sha256_hex,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!((r.chars, r.words), (0, 0));
    }

    #[tokio::test]
    async fn scratch_directory_is_created_and_cleaned_up() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("nested").join("scratch");
        let hasher = Hasher::new(&dir).unwrap();
        let pid = std::fs::read_to_string(dir.join(PID_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // An existing directory is never adopted (cleanup would delete it).
        assert_eq!(
            Hasher::new(&dir).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        hasher.cleanup().run().await;
        assert!(!dir.exists());
        hasher.cleanup().run().await; // idempotent
    }
}
