//! T1 on the local transport (PROTOCOL.md §6.1, *Local sockets*): offered a
//! Unix socket (`ANIMA_LISTEN_UNIX`), as a Core offers one to the Type I and
//! II modules it starts, a module either keeps to TCP or serves mutual TLS
//! 1.3 and leases on exactly that socket, readable and writable by its owner
//! only, and removes it when it exits.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use anima_protocol::transport::{Address, MAX_UNIX_PATH};

use super::{Run, Target};
use crate::report::Report;
use crate::session;
use crate::target::{Running, start_offering};

/// How long a module that was asked to shut down may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

impl Run<'_> {
    /// Starts the module once more, offering it a Unix socket, and checks
    /// what it does with it.
    pub(crate) async fn unix_socket_checks(&mut self, r: &mut Report) {
        let Target::Launch(command) = &self.plan.target else {
            return; // A module the tool dials was started by someone else.
        };
        let dir = self.plan.workdir.join("sockets");
        let socket = dir.join("module.sock");
        if let Err(e) = private_dir(&dir) {
            r.fail("T1", format!("cannot make {}: {e}", dir.display()));
            return;
        }
        if socket.as_os_str().len() > MAX_UNIX_PATH {
            r.pass(
                "T1",
                "no Unix socket offered: the work directory's path is too long for one",
            );
            return;
        }
        // Offered free, as a Core offers it (a reused work directory may
        // hold one from an earlier run).
        let _ = std::fs::remove_file(&socket);
        self.launches += 1;
        let log = self
            .plan
            .workdir
            .join(format!("module-{}.log", self.launches));
        let core = self.ids().core_a.identity.urn().clone();
        let started =
            start_offering(command, self.ids(), &self.module, Some(&core), log, &socket).await;
        let mut running = match started {
            Ok(running) => running,
            Err(e) => {
                r.fail(
                    "T1",
                    format!("offered a Unix socket, it did not start: {e}"),
                );
                return;
            }
        };
        match running.addr.clone() {
            Address::Tcp(addr) => r.pass(
                "T1",
                format!("offered a Unix socket, it listens on TCP ({addr}) as it may"),
            ),
            Address::Unix(path) => self.served_on_socket(r, &mut running, &path).await,
        }
        if running.alive() {
            running.kill().await;
        }
    }

    /// The module took the socket at `path`: owner-only, mutual TLS and a
    /// lease on it, and gone once the module has exited.
    async fn served_on_socket(&mut self, r: &mut Report, running: &mut Running, path: &Path) {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() && meta.permissions().mode() & 0o077 == 0 => {
                r.pass("T1", "the Unix socket offered is its owner's only");
            }
            Ok(meta) => r.fail(
                "T1",
                format!(
                    "the Unix socket offered is not a socket for its owner only (mode {:o})",
                    meta.permissions().mode() & 0o7777
                ),
            ),
            Err(e) => r.fail(
                "T1",
                format!("the ready line names {}: {e}", path.display()),
            ),
        }
        let addr = running.addr.clone();
        match self
            .open(&self.ids().core_a, addr.clone(), &self.declared, self.ttl())
            .await
        {
            Ok(s) => {
                r.pass(
                    "T1",
                    "mutual TLS 1.3 and a lease on the Unix socket offered",
                );
                drop(s);
            }
            Err(e) => r.fail("T1", format!("no lease on the Unix socket offered: {e}")),
        }
        // A Type I module may already be ending with its lease; any other
        // is asked to stop. Either way it must exit.
        let asked = match self.dial(&self.ids().operator, addr).await {
            Ok(conn) => session::shutdown(&conn, "conformance: local transport checked")
                .await
                .map_err(|s| s.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if running.wait_exit(EXIT_WITHIN).await.is_none() {
            let why = asked.err().map_or_else(
                || "after an operator's Shutdown".to_owned(),
                |e| format!("and its operator could not ask it to stop: {e}"),
            );
            r.fail("T1", format!("still running {EXIT_WITHIN:?} later, {why}"));
            return;
        }
        // The process has exited: it removed its socket before, or never.
        if path.exists() {
            r.fail(
                "T1",
                format!("exited, it left its Unix socket {} behind", path.display()),
            );
        } else {
            r.pass("T1", "removed its Unix socket when it exited");
        }
    }
}

/// Creates `dir` mode 0700 (as a Core's runtime directory is).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
