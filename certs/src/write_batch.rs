//! Writing a set of files all or nothing.
//!
//! Each file is written in full to a fresh scratch file in the target
//! directory, created with its final mode (`0600` for secrets, `0644`
//! otherwise; never `chmod`ed after), and synced. Only then are the files
//! published, one by one: without `force` by hard-linking, which fails rather
//! than replace a file that appeared since the check; with `force` after
//! moving the old file aside. Any failure removes every file and directory
//! this call created and puts moved-aside files back.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use crate::error::CertsError;

/// One file to write.
#[derive(Clone)]
pub(crate) struct NewFile {
    /// The file name inside the target directory.
    pub(crate) name: String,
    /// The complete contents.
    pub(crate) contents: Vec<u8>,
    /// Whether it is a private key (mode `0600`).
    pub(crate) secret: bool,
}

/// The first of `paths` that exists (a dangling symlink counts).
pub(crate) fn first_existing(paths: &[PathBuf]) -> Option<&PathBuf> {
    paths.iter().find(|p| fs::symlink_metadata(p).is_ok())
}

/// Writes `files` into `dir` (created `0700` when missing), all or nothing.
///
/// Without `force`, an existing target is an error naming it and nothing is
/// written. Returns the paths written, in order.
pub(crate) fn write_all(
    dir: &Path,
    files: &[NewFile],
    force: bool,
) -> Result<Vec<PathBuf>, CertsError> {
    run(Batch::default(), dir, files, force)
}

fn run(
    mut batch: Batch,
    dir: &Path,
    files: &[NewFile],
    force: bool,
) -> Result<Vec<PathBuf>, CertsError> {
    let targets: Vec<PathBuf> = files.iter().map(|f| dir.join(&f.name)).collect();
    if let Some(path) = first_existing(&targets).filter(|_| !force) {
        return Err(CertsError::Exists { path: path.clone() });
    }
    batch.created_dirs = create_dir(dir)?;
    match batch.write(dir, files, &targets, force) {
        Ok(()) => {
            batch.commit(dir);
            Ok(targets)
        }
        Err(e) => {
            batch.roll_back();
            Err(e)
        }
    }
}

/// What a write in progress has done, so it can be undone.
#[derive(Default)]
struct Batch {
    /// Directories this call created, deepest first.
    created_dirs: Vec<PathBuf>,
    /// Scratch files created.
    scratch: Vec<PathBuf>,
    /// Targets published.
    published: Vec<PathBuf>,
    /// Old files moved aside (`force`): (where they are now, where they were).
    moved_aside: Vec<(PathBuf, PathBuf)>,
    /// Fault injection: fail publishing the file at this index.
    #[cfg(test)]
    fail_publishing_at: Option<usize>,
}

impl Batch {
    fn write(
        &mut self,
        dir: &Path,
        files: &[NewFile],
        targets: &[PathBuf],
        force: bool,
    ) -> Result<(), CertsError> {
        let mut staged = Vec::with_capacity(files.len());
        for (file, target) in files.iter().zip(targets) {
            let scratch = scratch_path(dir, &file.name, "new");
            let write_error = |source| CertsError::Write {
                path: target.clone(),
                source,
            };
            let mut out = create_new(&scratch, file.secret).map_err(write_error)?;
            self.scratch.push(scratch.clone());
            out.write_all(&file.contents)
                .and_then(|()| out.sync_all())
                .map_err(write_error)?;
            staged.push(scratch);
        }
        for (index, (scratch, target)) in staged.iter().zip(targets).enumerate() {
            let write_error = |source| CertsError::Write {
                path: target.clone(),
                source,
            };
            if fs::symlink_metadata(target).is_ok() {
                if !force {
                    return Err(CertsError::Exists {
                        path: target.clone(),
                    });
                }
                let aside = scratch_path(dir, &file_name(target), "old");
                fs::rename(target, &aside).map_err(write_error)?;
                self.moved_aside.push((aside, target.clone()));
            }
            #[cfg(test)]
            if self.fail_publishing_at == Some(index) {
                return Err(write_error(io::Error::other("injected failure")));
            }
            #[cfg(not(test))]
            let _ = index;
            publish(scratch, target).map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => CertsError::Exists {
                    path: target.clone(),
                },
                _ => write_error(source),
            })?;
            self.published.push(target.clone());
        }
        Ok(())
    }

    fn commit(&self, dir: &Path) {
        for path in self
            .scratch
            .iter()
            .chain(self.moved_aside.iter().map(|(a, _)| a))
        {
            let _ = fs::remove_file(path);
        }
        sync_dir(dir);
    }

    /// Best effort: a failure here leaves a file behind but cannot be reported
    /// better than the error that caused the rollback.
    fn roll_back(&self) {
        for path in self.published.iter().chain(&self.scratch) {
            let _ = fs::remove_file(path);
        }
        for (aside, original) in &self.moved_aside {
            let _ = fs::rename(aside, original);
        }
        for dir in &self.created_dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Creates `dir` and missing parents (`0700`); returns those it created,
/// deepest first.
fn create_dir(dir: &Path) -> Result<Vec<PathBuf>, CertsError> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .take_while(|a| fs::symlink_metadata(a).is_err())
        .map(Path::to_path_buf)
        .collect();
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder
        .create(dir)
        .map_err(|source| CertsError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    Ok(missing)
}

/// Creates `path`, failing if it exists, with its final permissions.
fn create_new(path: &Path, secret: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(if secret { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = secret;
    options.open(path)
}

/// Makes `scratch` visible as `target` without replacing anything there.
fn publish(scratch: &Path, target: &Path) -> io::Result<()> {
    match fs::hard_link(scratch, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        // A file system without hard links: check, then rename.
        Err(_) if fs::symlink_metadata(target).is_ok() => {
            Err(io::Error::from(io::ErrorKind::AlreadyExists))
        }
        Err(_) => fs::rename(scratch, target),
    }
}

/// A scratch name beside the targets, unique per process and call.
fn scratch_path(dir: &Path, name: &str, purpose: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dir.join(format!(
        ".{name}.{}-{nanos}-{n}.{purpose}",
        std::process::id()
    ))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Makes the renames durable (best effort; not all platforms allow it).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, contents: &str, secret: bool) -> NewFile {
        NewFile {
            name: name.into(),
            contents: contents.as_bytes().to_vec(),
            secret,
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_files_and_nested_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let written = write_all(
            &dir,
            &[file("x.pem", "X", false), file("x.key", "K", true)],
            false,
        )
        .unwrap();
        assert_eq!(written, vec![dir.join("x.pem"), dir.join("x.key")]);
        assert_eq!(fs::read_to_string(dir.join("x.key")).unwrap(), "K");
        assert_eq!(listing(&dir), ["x.key", "x.pem"]);
    }

    #[cfg(unix)]
    #[test]
    fn modes_are_set_at_creation() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new");
        write_all(
            &dir,
            &[file("x.pem", "X", false), file("x.key", "K", true)],
            false,
        )
        .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("x.key")), 0o600);
        // The umask may only take bits away from 0644.
        assert_eq!(mode(&dir.join("x.pem")) & !0o644, 0);
        assert_eq!(mode(&dir) & !0o700, 0);
    }

    #[test]
    fn refuses_existing_before_writing_anything() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("b"), "old").unwrap();
        let err = write_all(
            tmp.path(),
            &[file("a", "A", false), file("b", "B", false)],
            false,
        )
        .unwrap_err();
        assert!(
            matches!(&err, CertsError::Exists { path } if path.ends_with("b")),
            "{err}"
        );
        assert_eq!(listing(tmp.path()), ["b"]);
        assert_eq!(fs::read_to_string(tmp.path().join("b")).unwrap(), "old");
    }

    #[test]
    fn force_replaces_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("b"), "old").unwrap();
        write_all(
            tmp.path(),
            &[file("a", "A", false), file("b", "B", false)],
            true,
        )
        .unwrap();
        assert_eq!(fs::read_to_string(tmp.path().join("b")).unwrap(), "B");
        assert_eq!(listing(tmp.path()), ["a", "b"]);
    }

    #[test]
    fn failure_midway_removes_what_it_created_and_restores_what_it_moved() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a"), "old a").unwrap();
        fs::write(tmp.path().join("b"), "old b").unwrap();
        let files = [
            file("a", "A", false),
            file("n", "N", false),
            file("b", "B", false),
        ];
        let batch = Batch {
            fail_publishing_at: Some(2),
            ..Batch::default()
        };
        let err = run(batch, tmp.path(), &files, true).unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert_eq!(listing(tmp.path()), ["a", "b"]);
        assert_eq!(fs::read_to_string(tmp.path().join("a")).unwrap(), "old a");
        assert_eq!(fs::read_to_string(tmp.path().join("b")).unwrap(), "old b");
    }

    #[test]
    fn failure_in_a_new_directory_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let batch = Batch {
            fail_publishing_at: Some(1),
            ..Batch::default()
        };
        let files = [file("a", "A", false), file("b", "B", true)];
        run(batch, &tmp.path().join("x/y"), &files, false).unwrap_err();
        assert!(listing(tmp.path()).is_empty());
    }

    #[test]
    fn failure_removes_the_directories_it_created() {
        let tmp = tempfile::tempdir().unwrap();
        // A file in the way of the directory: creating it fails.
        fs::write(tmp.path().join("blocker"), "").unwrap();
        let err = write_all(
            &tmp.path().join("blocker/sub"),
            &[file("a", "A", false)],
            false,
        )
        .unwrap_err();
        assert!(matches!(err, CertsError::CreateDir { .. }), "{err}");
        assert_eq!(listing(tmp.path()), ["blocker"]);
    }
}
