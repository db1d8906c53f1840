//! The Core's runtime directory: where the Type I and II modules it starts
//! on this host listen, on Unix domain sockets (PROTOCOL.md §6.1).
//!
//! One directory per running Core, `<pid>` under systemd's
//! `$RUNTIME_DIRECTORY` for the service (`/run/anima`), else `anima/<pid>`
//! under `$XDG_RUNTIME_DIR`, else `anima-<uid>/<pid>` under the system's
//! temporary directory; mode 0700, so only this user reaches the sockets; TLS 1.3 with mutual
//! certificates and leases still runs over each. A module removes its socket
//! when it exits; the Core removes a socket its module left behind (killed)
//! before starting it again, and the whole directory when it stops. A Core
//! that was itself killed leaves its directory behind: the next Core to
//! start removes the directories of Cores no longer running.

use std::io;
use std::path::{Path, PathBuf};

use anima_protocol::Urn;
use anima_protocol::transport::MAX_UNIX_PATH;

/// This Core's runtime directory, removed when dropped.
#[derive(Debug)]
pub(crate) struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Creates this process's directory under the user's runtime base,
    /// first removing those of Cores no longer running.
    pub(crate) fn create() -> io::Result<Self> {
        Self::create_in(&base()?, std::process::id())
    }

    /// Creates `<base>/<pid>` (and `base`) mode 0700; `base` must be a
    /// directory of this user's that no one else may enter.
    fn create_in(base: &Path, pid: u32) -> io::Result<Self> {
        private_dir(base)?;
        remove_stale(base, pid);
        let path = base.join(pid.to_string());
        if path.exists() {
            // A Core that had this pid before and was killed.
            std::fs::remove_dir_all(&path)?;
        }
        private_dir(&path)?;
        Ok(RuntimeDir { path })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where `module` listens: `<dir>/<name>.sock`, with any socket a
    /// killed instance left there removed; `None` when that path would be
    /// too long for a Unix socket (the module then listens on TCP).
    pub(crate) fn socket_for(&self, module: &Urn) -> Option<PathBuf> {
        let path = self.path.join(format!("{}.sock", module.name()));
        if path.as_os_str().len() > MAX_UNIX_PATH {
            return None;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(socket = %path.display(), "removed a socket left behind"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "cannot remove an old socket");
                return None;
            }
        }
        Some(path)
    }

    /// Removes `module`'s socket, if its process left it behind.
    pub(crate) fn remove_socket(&self, socket: &Path) {
        if socket.parent() == Some(self.path.as_path()) {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// systemd's `$RUNTIME_DIRECTORY` (the first, if it lists several), else
/// `$XDG_RUNTIME_DIR/anima`, else `<temp>/anima-<uid>`.
fn base() -> io::Result<PathBuf> {
    base_from(|name| std::env::var_os(name))
}

/// [`base`], with the environment read through `var`.
fn base_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> io::Result<PathBuf> {
    let dir = |name: &str| {
        let value = var(name)?;
        let first = value.to_str()?.split(':').next()?.to_owned();
        Some(PathBuf::from(first)).filter(|d| d.is_absolute() && d.is_dir())
    };
    if let Some(service) = dir("RUNTIME_DIRECTORY") {
        return Ok(service);
    }
    if let Some(user) = dir("XDG_RUNTIME_DIR") {
        return Ok(user.join("anima"));
    }
    Ok(std::env::temp_dir().join(format!("anima-{}", own_uid()?)))
}

/// This process's user id: the owner of its `/proc/self`.
#[cfg(unix)]
fn own_uid() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self")?.uid())
}

#[cfg(not(unix))]
fn own_uid() -> io::Result<u32> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no Unix sockets",
    ))
}

/// Creates `dir` mode 0700 if missing; an existing one must be a real
/// directory (not a link) owned by this user that no one else may enter.
#[cfg(unix)]
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {why}", dir.display()),
        ))
    };
    if !meta.is_dir() {
        return refuse("not a directory");
    }
    if meta.uid() != own_uid()? {
        return refuse("owned by another user");
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return refuse("others may enter it (want mode 0700)");
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_dir(_: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no Unix sockets",
    ))
}

/// Removes the directories under `base` of Cores that are no longer
/// running (named by a pid with no process), except `own`.
fn remove_stale(base: &Path, own: u32) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    if !Path::new("/proc/self").exists() {
        return; // Cannot tell who is running.
    }
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != own && !Path::new("/proc").join(pid.to_string()).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "removed the runtime directory of a Core no longer running")
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove a stale runtime directory")
                }
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_core_gets_a_private_directory_and_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("anima");
        let dir = RuntimeDir::create_in(&base, std::process::id()).unwrap();
        assert_eq!(mode(&base), 0o700);
        assert_eq!(mode(dir.path()), 0o700);
        let echo: Urn = "urn:anima:module:echo".parse().unwrap();
        let socket = dir.socket_for(&echo).unwrap();
        assert_eq!(socket, dir.path().join("echo.sock"));
        // A socket a killed module left behind is removed before reuse.
        std::fs::write(&socket, b"").unwrap();
        assert_eq!(dir.socket_for(&echo).unwrap(), socket);
        assert!(!socket.exists());
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn directories_of_cores_no_longer_running_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("anima");
        private_dir(&base).unwrap();
        // No process has pid u32::MAX - 1 (Linux caps pids far below).
        let dead = base.join((u32::MAX - 1).to_string());
        let alive = base.join("1"); // init
        let other = base.join("not-a-pid");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(dead.join("gone.sock"), b"").unwrap();
        let dir = RuntimeDir::create_in(&base, std::process::id()).unwrap();
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
        drop(dir);
    }

    #[test]
    fn a_base_others_may_enter_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("anima");
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = RuntimeDir::create_in(&base, 7).unwrap_err();
        assert!(e.to_string().contains("mode 0700"), "{e}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        let e = RuntimeDir::create_in(&link, 7).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn the_service_runtime_directory_comes_first_then_the_user_one_then_tmp() {
        let tmp = tempfile::tempdir().unwrap();
        let (service, user) = (tmp.path().join("run-anima"), tmp.path().join("user"));
        std::fs::create_dir(&service).unwrap();
        std::fs::create_dir(&user).unwrap();
        let env = |vars: Vec<(&'static str, std::ffi::OsString)>| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            }
        };
        let listed = format!("{}:/elsewhere", service.display());
        let both = env(vec![
            ("RUNTIME_DIRECTORY", listed.into()),
            ("XDG_RUNTIME_DIR", user.clone().into()),
        ]);
        assert_eq!(base_from(both).unwrap(), service);
        let only_user = env(vec![("XDG_RUNTIME_DIR", user.clone().into())]);
        assert_eq!(base_from(only_user).unwrap(), user.join("anima"));
        // Missing or relative directories are passed over.
        let neither = env(vec![
            ("RUNTIME_DIRECTORY", "relative".into()),
            ("XDG_RUNTIME_DIR", tmp.path().join("missing").into()),
        ]);
        let fallback = base_from(neither).unwrap();
        assert!(
            fallback.starts_with(std::env::temp_dir()),
            "{}",
            fallback.display()
        );
        let name = fallback.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("anima-{}", own_uid().unwrap()));
    }

    #[test]
    fn a_path_too_long_for_a_socket_falls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("a".repeat(60));
        let dir = RuntimeDir::create_in(&base, 1234).unwrap();
        let long: Urn = format!("urn:anima:module:{}", "m".repeat(60))
            .parse()
            .unwrap();
        assert_eq!(dir.socket_for(&long), None);
    }
}
