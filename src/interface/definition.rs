//! An interface's own definition file, `interface.toml` (Partenza §5.3,
//! conformance row P3): the published contract a provider implements and a
//! caller relies on — its methods, their schemas, the lifecycle expectations
//! and, per method, idempotency, a timeout and a retry policy (row P10).
//!
//! # Layout
//!
//! Definitions live one directory per interface and version,
//! `ROOT/<namespace>/<name>/<version>/` (in this repository `ROOT` is
//! `interfaces/`): `interface.toml` and the `.proto` files it lists. The
//! version directory is written in full (`1.0.0`, not `1.0`), and the
//! file's `interface` and `version` must name that directory. Other
//! languages compile the protos from there.
//!
//! # The format
//!
//! ```toml
//! # interfaces/anima.sample/kv/1.0.0/interface.toml
//! interface = "anima.sample/kv"   # namespace/name, as in module.toml's provides
//! version = "1.0.0"               # semantic version; "1.0" is read as 1.0.0
//! summary = "A string key-value store."   # one line, 1-200 characters
//! lifecycle = """
//! Behaviour and lifecycle expectations, free text: what survives the end of
//! a lease or a restart, what a call does when its lease ends mid-way, ...
//! """
//! protos = ["kvstore.proto"]      # at least one; paths relative to this file's
//!                                 # directory, no '..', not absolute, *.proto
//!
//! [[method]]                      # at least one
//! path = "/anima.sample.v1.KvStore/Put"   # /package.Service/Method, unique
//! idempotent = false              # required: may the Core repeat the call?
//!
//! [[method]]
//! path = "/anima.sample.v1.KvStore/Get"
//! idempotent = true
//! timeout = "5s"                  # optional: the longest a call may take
//!                                 # (the effective deadline is the earlier of
//!                                 # the caller's and this); "250ms", "5s", "1m", "1h"
//!
//! [method.retry]                  # optional, only where idempotent = true
//! attempts = 3                    # total attempts, the first included: 2-10
//! backoff = "20ms"                # wait before the first retry, doubled
//!                                 # before each next one: 1ms-10s
//! ```
//!
//! Every key is checked: an unknown key, a missing required key or a value
//! of the wrong type is refused, as is any value breaking a rule above. Errors
//! name the field as written here, methods by their index from 0
//! (`method[1].retry: …`), and, for a file, the file.
//!
//! ```
//! use std::time::Duration;
//! use anima_protocol::interface::definition::Interface;
//!
//! let kv = Interface::from_toml(r#"
//!     interface = "anima.sample/kv"
//!     version = "1.0"
//!     summary = "A string key-value store."
//!     lifecycle = "Data lives as long as the provider's process."
//!     protos = ["kvstore.proto"]
//!
//!     [[method]]
//!     path = "/anima.sample.v1.KvStore/Get"
//!     idempotent = true
//!     timeout = "5s"
//!     retry = { attempts = 3, backoff = "20ms" }
//! "#)?;
//! assert_eq!(kv.provided.to_string(), "anima.sample/kv 1.0.0");
//! let get = kv.method("/anima.sample.v1.KvStore/Get").unwrap();
//! assert_eq!(get.timeout, Some(Duration::from_secs(5)));
//! assert_eq!(get.retry.unwrap().attempts, 3);
//! # Ok::<(), anima_protocol::interface::definition::DefinitionError>(())
//! ```

use std::collections::HashSet;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{InterfaceName, InterfaceVersion, Provided, Required};
use crate::contract::parse_duration;
use crate::lease::check_method;

/// The definition's file name inside its directory.
pub const FILE_NAME: &str = "interface.toml";
/// The most methods one interface may declare (as many as a lease's scope
/// may name).
pub const MAX_METHODS: usize = 1024;
/// The longest `summary`, in characters.
pub const MAX_SUMMARY_CHARS: usize = 200;
/// The fewest `retry.attempts` (the first call and one retry).
pub const MIN_ATTEMPTS: u32 = 2;
/// The most `retry.attempts`.
pub const MAX_ATTEMPTS: u32 = 10;
/// The shortest `retry.backoff`.
pub const MIN_BACKOFF: Duration = Duration::from_millis(1);
/// The longest `retry.backoff`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why an interface definition is invalid or cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The text is not TOML of the definition's shape (an unknown or
    /// missing key, a wrong type).
    #[error("{0}")]
    Syntax(String),
    /// A field's value breaks a rule.
    #[error("{field}: {message}")]
    Field {
        /// The field, as `interface.toml` spells it (`summary`,
        /// `method[1].retry.attempts`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file or directory cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file's definition is invalid.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<DefinitionError>,
    },
    /// A proto file the definition lists is not in its directory.
    #[error(
        "{}: proto file {} does not exist; put it beside interface.toml or remove it from protos",
        definition.display(),
        proto.display()
    )]
    MissingProto {
        /// The definition file.
        definition: PathBuf,
        /// The missing proto file.
        proto: PathBuf,
    },
    /// A directory in a tree of definitions is not where a definition may
    /// be (not `namespace/name`, not a version written in full).
    #[error("{}: {message}", path.display())]
    Layout {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A definition is not in the directory of the interface and version it
    /// declares.
    #[error(
        "{}: declares {declared} but lies in the directory of {directory}; move the file or fix its interface and version",
        path.display()
    )]
    Misplaced {
        /// The definition file.
        path: PathBuf,
        /// What the file declares.
        declared: Provided,
        /// What its directory names (`namespace/name version`).
        directory: String,
    },
}

impl DefinitionError {
    /// What is wrong, without the file name [`DefinitionError::InFile`]
    /// adds.
    pub fn without_path(&self) -> &DefinitionError {
        match self {
            DefinitionError::InFile { source, .. } => source.without_path(),
            other => other,
        }
    }
}

/// An interface's definition: the contract behind one interface version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The interface's name and version.
    pub provided: Provided,
    /// One line saying what it is.
    pub summary: String,
    /// Its behaviour and lifecycle expectations, as written.
    pub lifecycle: String,
    /// Its schema files, relative to the definition's directory.
    pub protos: Vec<PathBuf>,
    /// Its methods, in the file's order.
    pub methods: Vec<MethodPolicy>,
}

/// One method of an interface and how callers (and the Core) may call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodPolicy {
    /// The gRPC path, `/package.Service/Method`.
    pub path: String,
    /// Whether repeating a call leaves the same state as making it once;
    /// only idempotent methods are retried.
    pub idempotent: bool,
    /// The longest a call may take; the effective deadline is the earlier
    /// of the caller's and this.
    pub timeout: Option<Duration>,
    /// How a failed call is retried (idempotent methods only).
    pub retry: Option<RetryPolicy>,
}

/// How an idempotent method's failed call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included ([`MIN_ATTEMPTS`] to
    /// [`MAX_ATTEMPTS`]).
    pub attempts: u32,
    /// The wait before the first retry, doubled before each next one
    /// ([`MIN_BACKOFF`] to [`MAX_BACKOFF`]).
    pub backoff: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    interface: String,
    version: String,
    summary: String,
    lifecycle: String,
    protos: Vec<String>,
    #[serde(default)]
    method: Vec<RawMethod>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMethod {
    path: String,
    idempotent: bool,
    timeout: Option<String>,
    retry: Option<RawRetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: u32,
    backoff: String,
}

impl Interface {
    /// Parses an `interface.toml`.
    pub fn from_toml(text: &str) -> Result<Self, DefinitionError> {
        let raw: RawInterface = toml::from_str(text).map_err(|e| syntax(text, &e))?;
        let provided = Provided {
            interface: raw
                .interface
                .parse()
                .map_err(|e: super::InterfaceError| invalid("interface", e.to_string()))?,
            version: raw
                .version
                .parse()
                .map_err(|e: super::InterfaceError| invalid("version", e.to_string()))?,
        };
        summary_field(&raw.summary)?;
        if raw.lifecycle.trim().is_empty() {
            return Err(invalid(
                "lifecycle",
                "describe the interface's behaviour and lifecycle expectations".into(),
            ));
        }
        let protos = protos_field(raw.protos)?;
        if raw.method.is_empty() {
            return Err(invalid(
                "method",
                "an interface declares at least one [[method]]".into(),
            ));
        }
        if raw.method.len() > MAX_METHODS {
            return Err(invalid(
                "method",
                format!("at most {MAX_METHODS} methods per interface"),
            ));
        }
        let mut seen = HashSet::new();
        let methods = raw
            .method
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let policy = method_field(i, m)?;
                if !seen.insert(policy.path.clone()) {
                    return Err(invalid(
                        format!("method[{i}].path"),
                        format!(
                            "{} is declared twice; declare each method once",
                            policy.path
                        ),
                    ));
                }
                Ok(policy)
            })
            .collect::<Result<_, _>>()?;
        Ok(Interface {
            provided,
            summary: raw.summary,
            lifecycle: raw.lifecycle,
            protos,
            methods,
        })
    }

    /// Reads and parses an `interface.toml` file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| DefinitionError::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Reads `dir/interface.toml` and checks that every proto file it lists
    /// is in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, DefinitionError> {
        let file = dir.join(FILE_NAME);
        let interface = Self::from_file(&file)?;
        if let Some(missing) = interface
            .protos
            .iter()
            .map(|proto| dir.join(proto))
            .find(|proto| !proto.is_file())
        {
            return Err(DefinitionError::MissingProto {
                definition: file,
                proto: missing,
            });
        }
        Ok(interface)
    }

    /// The method with this gRPC path, if the interface has it.
    pub fn method(&self, path: &str) -> Option<&MethodPolicy> {
        self.methods.iter().find(|m| m.path == path)
    }

    /// The methods' gRPC paths, in the file's order.
    pub fn method_paths(&self) -> impl Iterator<Item = &str> {
        self.methods.iter().map(|m| m.path.as_str())
    }
}

/// The definitions under `root` (laid out `root/<namespace>/<name>/<version>/`)
/// of the interface `required` names, at the versions its range accepts,
/// highest first; empty when `root` has no directory for the interface.
///
/// Every version directory of the interface must be a version written in
/// full, and each definition read is checked as by [`load_all`].
pub fn find(root: &Path, required: &Required) -> Result<Vec<Interface>, DefinitionError> {
    let name_dir = root.join(required.interface.as_str());
    if !name_dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for (version, dir) in version_dirs(&name_dir)? {
        if required.range.matches(&version) {
            found.push(load_placed(&dir, &required.interface, &version)?);
        }
    }
    found.sort_by(|a, b| b.provided.version.cmp(&a.provided.version));
    Ok(found)
}

/// Every definition under `root` (laid out
/// `root/<namespace>/<name>/<version>/interface.toml`), sorted by name then
/// version. Files among the directories (a README) are skipped; a
/// directory that is not a valid namespace, name or full version is
/// refused, as is a definition whose `interface` and `version` do not name
/// its directory or whose proto files are missing.
pub fn load_all(root: &Path) -> Result<Vec<Interface>, DefinitionError> {
    let mut all = Vec::new();
    for (namespace, namespace_dir) in subdirs(root)? {
        for (name, name_dir) in subdirs(&namespace_dir)? {
            let interface: InterfaceName =
                format!("{namespace}/{name}")
                    .parse()
                    .map_err(|e: super::InterfaceError| DefinitionError::Layout {
                        path: name_dir.clone(),
                        message: format!("not an interface's directory ({e})"),
                    })?;
            for (version, dir) in version_dirs(&name_dir)? {
                all.push(load_placed(&dir, &interface, &version)?);
            }
        }
    }
    all.sort_by(|a, b| {
        (&a.provided.interface, &a.provided.version)
            .cmp(&(&b.provided.interface, &b.provided.version))
    });
    Ok(all)
}

/// Reads the definition in `dir`, the directory of `interface` at
/// `version`, and checks that it declares them.
fn load_placed(
    dir: &Path,
    interface: &InterfaceName,
    version: &InterfaceVersion,
) -> Result<Interface, DefinitionError> {
    let definition = Interface::from_dir(dir)?;
    if definition.provided.interface != *interface || definition.provided.version != *version {
        return Err(DefinitionError::Misplaced {
            path: dir.join(FILE_NAME),
            declared: definition.provided,
            directory: format!("{interface} {version}"),
        });
    }
    Ok(definition)
}

/// The version directories in an interface's directory, each a version
/// written in full (`1.0.0`, so that one version has one directory).
fn version_dirs(name_dir: &Path) -> Result<Vec<(InterfaceVersion, PathBuf)>, DefinitionError> {
    subdirs(name_dir)?
        .into_iter()
        .map(|(text, dir)| {
            let version: InterfaceVersion =
                text.parse()
                    .map_err(|e: super::InterfaceError| DefinitionError::Layout {
                        path: dir.clone(),
                        message: format!(
                            "not a version directory ({e}); name it after the version, e.g. 1.0.0"
                        ),
                    })?;
            if version.to_string() != text {
                return Err(DefinitionError::Layout {
                    path: dir,
                    message: format!("rename the version directory to {version}"),
                });
            }
            Ok((version, dir))
        })
        .collect()
}

/// The directories in `dir` with their names, sorted by name; other entries
/// are skipped.
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, DefinitionError> {
    let read = |source| DefinitionError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if !path.is_dir() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Err(DefinitionError::Layout {
                path,
                message: "rename the directory: its name is not UTF-8".into(),
            });
        };
        found.push((name.to_owned(), path.clone()));
    }
    found.sort();
    Ok(found)
}

/// A field whose value breaks a rule.
fn invalid(field: impl Into<String>, message: String) -> DefinitionError {
    DefinitionError::Field {
        field: field.into(),
        message,
    }
}

/// A TOML or shape error on one line: its line number (unless it concerns
/// the whole document, as a missing top-level key does) and serde's
/// message (which names the key).
fn syntax(text: &str, error: &toml::de::Error) -> DefinitionError {
    let message = error.message().trim();
    DefinitionError::Syntax(match error.span() {
        // A key missing from the top-level table: toml reports an empty
        // span at the start, and line 1 would say nothing.
        Some(span) if span.is_empty() && span.start == 0 => message.to_owned(),
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message.to_owned(),
    })
}

/// The `summary` field: one line, 1 to [`MAX_SUMMARY_CHARS`] characters.
fn summary_field(summary: &str) -> Result<(), DefinitionError> {
    if summary.trim().is_empty() {
        return Err(invalid(
            "summary",
            "say in one line what the interface is".into(),
        ));
    }
    if summary.contains(['\n', '\r']) {
        return Err(invalid(
            "summary",
            "must be one line; put details in lifecycle".into(),
        ));
    }
    let chars = summary.chars().count();
    if chars > MAX_SUMMARY_CHARS {
        return Err(invalid(
            "summary",
            format!("{chars} characters; at most {MAX_SUMMARY_CHARS}, put details in lifecycle"),
        ));
    }
    Ok(())
}

/// The `protos` field: at least one, each a distinct `.proto` path inside
/// the definition's directory.
fn protos_field(protos: Vec<String>) -> Result<Vec<PathBuf>, DefinitionError> {
    if protos.is_empty() {
        return Err(invalid(
            "protos",
            "list at least one .proto file holding the interface's schema".into(),
        ));
    }
    let mut seen = HashSet::new();
    protos
        .into_iter()
        .enumerate()
        .map(|(i, proto)| {
            let field = format!("protos[{i}]");
            let path = PathBuf::from(&proto);
            if proto.is_empty()
                || !path
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
                || proto.contains('\\')
            {
                return Err(invalid(
                    field,
                    format!(
                        "{proto:?} must be a path relative to interface.toml's directory, without '..', '.' or a leading '/'"
                    ),
                ));
            }
            if path.extension().is_none_or(|e| e != "proto") {
                return Err(invalid(
                    field,
                    format!("{proto:?} is not a .proto file"),
                ));
            }
            if !seen.insert(path.clone()) {
                return Err(invalid(
                    field,
                    format!("{proto:?} is listed twice; list each file once"),
                ));
            }
            Ok(path)
        })
        .collect()
}

/// One `[[method]]`: its path, idempotency, timeout and retry policy.
fn method_field(i: usize, raw: RawMethod) -> Result<MethodPolicy, DefinitionError> {
    check_method(&raw.path).map_err(|_| {
        invalid(
            format!("method[{i}].path"),
            format!(
                "{:.80?} is not a gRPC method path /package.Service/Method",
                raw.path
            ),
        )
    })?;
    let timeout = match raw.timeout {
        None => None,
        Some(text) => {
            let field = format!("method[{i}].timeout");
            let timeout = parse_duration(&text).map_err(|e| invalid(&*field, e.to_string()))?;
            if timeout.is_zero() {
                return Err(invalid(
                    field,
                    "must be longer than 0; leave it out for no interface timeout".into(),
                ));
            }
            Some(timeout)
        }
    };
    let retry = match raw.retry {
        None => None,
        Some(_) if !raw.idempotent => {
            return Err(invalid(
                format!("method[{i}].retry"),
                format!(
                    "only idempotent methods may be retried, and {} declares idempotent = false",
                    raw.path
                ),
            ));
        }
        Some(retry) => Some(retry_field(i, retry)?),
    };
    Ok(MethodPolicy {
        path: raw.path,
        idempotent: raw.idempotent,
        timeout,
        retry,
    })
}

/// A `[method.retry]` table: attempts and backoff within their bounds.
fn retry_field(i: usize, raw: RawRetry) -> Result<RetryPolicy, DefinitionError> {
    if !(MIN_ATTEMPTS..=MAX_ATTEMPTS).contains(&raw.attempts) {
        return Err(invalid(
            format!("method[{i}].retry.attempts"),
            format!(
                "{} is not between {MIN_ATTEMPTS} and {MAX_ATTEMPTS} (total attempts, the first included)",
                raw.attempts
            ),
        ));
    }
    let field = format!("method[{i}].retry.backoff");
    let backoff = parse_duration(&raw.backoff).map_err(|e| invalid(&*field, e.to_string()))?;
    if !(MIN_BACKOFF..=MAX_BACKOFF).contains(&backoff) {
        return Err(invalid(
            field,
            format!(
                "{:?} is not between {MIN_BACKOFF:?} and {MAX_BACKOFF:?}",
                raw.backoff
            ),
        ));
    }
    Ok(RetryPolicy {
        attempts: raw.attempts,
        backoff,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const FULL: &str = r#"
interface = "anima.sample/kv"
version = "1.0"
summary = "A string key-value store."
lifecycle = """
Values live as long as the provider's process.
"""
protos = ["kvstore.proto", "schema/common.proto"]

[[method]]
path = "/anima.sample.v1.KvStore/Put"
idempotent = false
timeout = "250ms"

[[method]]
path = "/anima.sample.v1.KvStore/Get"
idempotent = true
timeout = "5s"

[method.retry]
attempts = 3
backoff = "20ms"

[[method]]
path = "/anima.sample.v1.KvStore/CacheInfo"
idempotent = true
"#;

    /// A minimal valid definition with `extra` appended to its one method.
    fn with_method(extra: &str) -> String {
        format!(
            "interface = \"a/b\"\nversion = \"1.0.0\"\nsummary = \"s\"\nlifecycle = \"l\"\n\
             protos = [\"x.proto\"]\n[[method]]\npath = \"/p.S/M\"\n{extra}\n"
        )
    }

    /// The error message for `text`, which must be refused.
    fn refused(text: &str) -> String {
        match Interface::from_toml(text) {
            Ok(i) => panic!("accepted {i:?} from:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// Checks that `text` is refused with a message starting with `prefix`
    /// (the field) and containing `detail`.
    #[track_caller]
    fn assert_refused(text: &str, prefix: &str, detail: &str) {
        let message = refused(text);
        assert!(
            message.starts_with(prefix) && message.contains(detail),
            "expected {prefix:?} … {detail:?}, got {message:?}"
        );
        assert!(!message.contains('\n'), "one line: {message:?}");
    }

    /// A fresh, empty directory under the system's temporary directory,
    /// removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "anima-interface-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Writes `root/<dir>/interface.toml` declaring `interface` at
    /// `version`, with its proto file; returns the directory.
    fn write_definition(root: &Path, dir: &str, interface: &str, version: &str) -> PathBuf {
        let dir = root.join(dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(FILE_NAME),
            format!(
                "interface = \"{interface}\"\nversion = \"{version}\"\nsummary = \"s\"\n\
                 lifecycle = \"l\"\nprotos = [\"x.proto\"]\n\
                 [[method]]\npath = \"/p.S/M\"\nidempotent = true\n"
            ),
        )
        .unwrap();
        fs::write(dir.join("x.proto"), "syntax = \"proto3\";\n").unwrap();
        dir
    }

    /// Checks that `load_all` refuses a tree whose one definition (of
    /// net/basic 1.0.0) lies in `dir`, not laid out as `<interface>/<version>`,
    /// naming that directory; returns the message.
    fn layout_refused(dir: &str) -> String {
        let tmp = TempDir::new("layout");
        let dir = write_definition(&tmp.0, dir, "net/basic", "1.0.0");
        let e = load_all(&tmp.0).unwrap_err();
        assert!(
            matches!(&e, DefinitionError::Layout { path, .. } if *path == dir),
            "{e:?}"
        );
        e.to_string()
    }

    fn versions(found: &[Interface]) -> Vec<String> {
        found.iter().map(|i| i.provided.to_string()).collect()
    }

    #[test]
    fn p3_an_interface_file_names_its_methods_schemas_lifecycle_and_policies() {
        let i = Interface::from_toml(FULL).unwrap();
        assert_eq!(
            i.provided,
            Provided::new("anima.sample/kv", "1.0.0").unwrap()
        );
        assert_eq!(i.provided.version.to_string(), "1.0.0", "1.0 is normalised");
        assert_eq!(i.summary, "A string key-value store.");
        assert_eq!(
            i.lifecycle,
            "Values live as long as the provider's process.\n"
        );
        assert_eq!(
            i.protos,
            [
                PathBuf::from("kvstore.proto"),
                PathBuf::from("schema/common.proto")
            ]
        );
        assert_eq!(
            i.methods,
            [
                MethodPolicy {
                    path: "/anima.sample.v1.KvStore/Put".into(),
                    idempotent: false,
                    timeout: Some(Duration::from_millis(250)),
                    retry: None,
                },
                MethodPolicy {
                    path: "/anima.sample.v1.KvStore/Get".into(),
                    idempotent: true,
                    timeout: Some(Duration::from_secs(5)),
                    retry: Some(RetryPolicy {
                        attempts: 3,
                        backoff: Duration::from_millis(20),
                    }),
                },
                MethodPolicy {
                    path: "/anima.sample.v1.KvStore/CacheInfo".into(),
                    idempotent: true,
                    timeout: None,
                    retry: None,
                },
            ]
        );
        assert_eq!(
            i.method_paths().collect::<Vec<_>>(),
            [
                "/anima.sample.v1.KvStore/Put",
                "/anima.sample.v1.KvStore/Get",
                "/anima.sample.v1.KvStore/CacheInfo"
            ]
        );
        assert!(i.method("/anima.sample.v1.KvStore/Get").unwrap().idempotent);
        assert_eq!(i.method("/anima.sample.v1.KvStore/Delete"), None);
    }

    #[test]
    fn p3_each_field_is_required_and_checked_and_errors_name_it() {
        let drop_line = |prefix: &str| {
            FULL.lines()
                .filter(|l| !l.starts_with(prefix))
                .collect::<Vec<_>>()
                .join("\n")
        };
        for key in ["interface", "version", "summary", "protos"] {
            assert_refused(
                &drop_line(&format!("{key} =")),
                &format!("missing field `{key}`"),
                "",
            );
        }
        assert_refused(
            &FULL.replace("lifecycle = \"\"\"", "lifecycle_ = \"\"\""),
            "line ",
            "`lifecycle_`",
        );
        assert_refused(&drop_line("idempotent"), "line ", "`idempotent`");
        let no_methods = FULL.split("[[method]]").next().unwrap();
        assert_refused(no_methods, "method: ", "at least one");

        let field = |from: &str, to: &str| {
            let text = FULL.replace(from, to);
            assert_ne!(text, FULL, "{from:?} is in FULL");
            text
        };
        let summary = "A string key-value store.";
        let lifecycle = "Values live as long as the provider's process.";
        let protos = "protos = [\"kvstore.proto\", \"schema/common.proto\"]";
        let idempotent = "idempotent = false";
        let too_long = "x".repeat(201);
        // (what FULL has, what it is replaced with, the message's field, its detail)
        for (from, to, prefix, detail) in [
            (
                "\"anima.sample/kv\"",
                "\"Anima/kv\"",
                "interface: ",
                "\"Anima/kv\"",
            ),
            (
                "version = \"1.0\"",
                "version = \"1.0.0+build\"",
                "version: ",
                "build metadata",
            ),
            (
                "version = \"1.0\"",
                "version = \"one\"",
                "version: ",
                "\"one\"",
            ),
            (summary, " ", "summary: ", "one line"),
            (summary, "two\\nlines", "summary: ", "must be one line"),
            (
                summary,
                &too_long,
                "summary: ",
                "201 characters; at most 200",
            ),
            (lifecycle, " ", "lifecycle: ", "describe"),
            (protos, "protos = []", "protos: ", "at least one"),
            (
                idempotent,
                "idempotent = false\ncolour = \"red\"",
                "line ",
                "unknown field `colour`",
            ),
            (idempotent, "idempotent = \"no\"", "line ", "invalid type"),
        ] {
            assert_refused(&field(from, to), prefix, detail);
        }
        assert!(Interface::from_toml(&field(summary, &"x".repeat(200))).is_ok());
        for (bad, index, detail) in [
            ("\"../kvstore.proto\"", 0, "without '..'"),
            ("\"schema/../../x.proto\"", 0, "without '..'"),
            ("\"/etc/kvstore.proto\"", 0, "without '..'"),
            ("\"./kvstore.proto\"", 0, "without '..'"),
            ("\"\"", 0, "without '..'"),
            ("\"kvstore.txt\"", 0, "not a .proto file"),
            ("\"a.proto\", \"a.proto\"", 1, "listed twice"),
        ] {
            assert_refused(
                &field(protos, &format!("protos = [{bad}]")),
                &format!("protos[{index}]: "),
                detail,
            );
        }
        assert_refused(
            &format!("colour = \"red\"\n{FULL}"),
            "line 1: ",
            "unknown field `colour`",
        );
    }

    #[test]
    fn p3_methods_are_unique_grpc_paths() {
        assert_refused(
            &with_method("idempotent = true\n[[method]]\npath = \"/p.S/M\"\nidempotent = true"),
            "method[1].path: ",
            "/p.S/M is declared twice",
        );
        for bad in ["p.S/M", "/p.S", "/p.S/M/N", "/p-q.S/M", ""] {
            assert_refused(
                &with_method("idempotent = true").replace("\"/p.S/M\"", &format!("{bad:?}")),
                "method[0].path: ",
                "is not a gRPC method path",
            );
        }
    }

    #[test]
    fn p10_only_idempotent_methods_may_be_retried() {
        let message = refused(&with_method(
            "idempotent = false\nretry = { attempts = 3, backoff = \"20ms\" }",
        ));
        assert_eq!(
            message,
            "method[0].retry: only idempotent methods may be retried, and /p.S/M declares idempotent = false"
        );
        let i = Interface::from_toml(&with_method(
            "idempotent = true\nretry = { attempts = 3, backoff = \"20ms\" }",
        ))
        .unwrap();
        assert_eq!(
            i.methods[0].retry,
            Some(RetryPolicy {
                attempts: 3,
                backoff: Duration::from_millis(20)
            })
        );
    }

    #[test]
    fn p10_retry_attempts_and_backoff_are_bounded() {
        let retry = |attempts: &str, backoff: &str| {
            with_method(&format!(
                "idempotent = true\n[method.retry]\nattempts = {attempts}\nbackoff = \"{backoff}\""
            ))
        };
        for attempts in ["0", "1", "11"] {
            assert_refused(
                &retry(attempts, "20ms"),
                "method[0].retry.attempts: ",
                &format!("{attempts} is not between 2 and 10"),
            );
        }
        assert_refused(&retry("-1", "20ms"), "line ", "");
        for backoff in ["0ms", "11s", "10001ms"] {
            assert_refused(
                &retry("3", backoff),
                "method[0].retry.backoff: ",
                "is not between 1ms and 10s",
            );
        }
        assert_refused(&retry("3", "20"), "method[0].retry.backoff: ", "no unit");
        assert_refused(
            &retry("3", "20ms").replace("backoff", "delay"),
            "line ",
            "`delay`",
        );
        for (attempts, backoff, expected) in [
            ("2", "1ms", Duration::from_millis(1)),
            ("10", "10s", Duration::from_secs(10)),
        ] {
            let i = Interface::from_toml(&retry(attempts, backoff)).unwrap();
            assert_eq!(
                i.methods[0].retry,
                Some(RetryPolicy {
                    attempts: attempts.parse().unwrap(),
                    backoff: expected
                })
            );
        }
    }

    #[test]
    fn p10_timeouts_are_durations_longer_than_zero() {
        let timeout = |t: &str| with_method(&format!("idempotent = false\ntimeout = \"{t}\""));
        for (text, expected) in [
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
        ] {
            let i = Interface::from_toml(&timeout(text)).unwrap();
            assert_eq!(i.methods[0].timeout, Some(expected), "{text}");
        }
        assert_refused(&timeout("0s"), "method[0].timeout: ", "longer than 0");
        assert_refused(&timeout("5"), "method[0].timeout: ", "no unit");
        assert_refused(&timeout("5 days"), "method[0].timeout: ", "unknown unit");
    }

    #[test]
    fn p3_a_definition_directory_holds_its_protos() {
        let tmp = TempDir::new("dir");
        let dir = write_definition(&tmp.0, "a/b/1.0.0", "a/b", "1.0.0");
        let i = Interface::from_dir(&dir).unwrap();
        assert_eq!(i.protos, [PathBuf::from("x.proto")]);

        fs::remove_file(dir.join("x.proto")).unwrap();
        let e = Interface::from_dir(&dir).unwrap_err();
        let DefinitionError::MissingProto { definition, proto } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(definition, &dir.join(FILE_NAME));
        assert_eq!(proto, &dir.join("x.proto"));
        assert!(e.to_string().contains("x.proto does not exist"), "{e}");

        fs::write(dir.join(FILE_NAME), FULL.replace("summary", "sumary")).unwrap();
        let e = Interface::from_file(&dir.join(FILE_NAME)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}: line ", dir.join(FILE_NAME).display())),
            "{e}"
        );
        assert!(e.to_string().contains("`sumary`"), "{e}");
        assert!(matches!(e.without_path(), DefinitionError::Syntax(_)));

        let e = Interface::from_dir(&tmp.0.join("nowhere")).unwrap_err();
        assert!(
            matches!(&e, DefinitionError::Read { path, .. } if path.ends_with("nowhere/interface.toml"))
        );
    }

    #[test]
    fn p3_load_all_reads_every_interface_and_version_sorted() {
        let tmp = TempDir::new("all");
        write_definition(&tmp.0, "net/basic/2.0.0", "net/basic", "2.0.0");
        write_definition(&tmp.0, "net/basic/1.10.0", "net/basic", "1.10");
        write_definition(&tmp.0, "anima.sample/kv/1.2.0", "anima.sample/kv", "1.2.0");
        write_definition(&tmp.0, "anima.sample/kv/1.0.0", "anima.sample/kv", "1.0.0");
        write_definition(&tmp.0, "net/basic/1.9.0", "net/basic", "1.9.0");
        fs::write(
            tmp.0.join("README.md"),
            "files among the directories are skipped",
        )
        .unwrap();
        assert_eq!(
            versions(&load_all(&tmp.0).unwrap()),
            [
                "anima.sample/kv 1.0.0",
                "anima.sample/kv 1.2.0",
                "net/basic 1.9.0",
                "net/basic 1.10.0",
                "net/basic 2.0.0"
            ]
        );
    }

    #[test]
    fn p3_load_all_refuses_a_definition_outside_its_own_directory() {
        let tmp = TempDir::new("misplaced");
        let dir = write_definition(&tmp.0, "net/basic/1.0.0", "net/basic", "1.1.0");
        let e = load_all(&tmp.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: declares net/basic 1.1.0 but lies in the directory of net/basic 1.0.0; move the file or fix its interface and version",
                dir.join(FILE_NAME).display()
            )
        );
        write_definition(&tmp.0, "net/basic/1.0.0", "net/other", "1.0.0");
        let e = load_all(&tmp.0).unwrap_err();
        assert!(e.to_string().contains("declares net/other 1.0.0"), "{e}");

        let message = layout_refused("net/basic/latest");
        assert!(message.contains("not a version directory"), "{message}");

        let message = layout_refused("net/basic/1.0");
        assert!(
            message.ends_with("rename the version directory to 1.0.0"),
            "{message}"
        );

        let tmp = TempDir::new("name");
        write_definition(&tmp.0, "Net/basic/1.0.0", "net/basic", "1.0.0");
        let e = load_all(&tmp.0).unwrap_err();
        assert!(
            e.to_string().contains("not an interface's directory"),
            "{e}"
        );
    }

    #[test]
    fn p3_find_picks_the_versions_a_range_accepts_highest_first() {
        let tmp = TempDir::new("find");
        for v in ["1.0.0", "1.2.0", "2.0.0", "2.1.0", "3.0.0-rc.1"] {
            write_definition(&tmp.0, &format!("net/basic/{v}"), "net/basic", v);
        }
        write_definition(&tmp.0, "net/other/1.5.0", "net/other", "1.5.0");
        let accepted = |range: &str| {
            versions(&find(&tmp.0, &Required::new("net/basic", range).unwrap()).unwrap())
        };
        assert_eq!(
            accepted(">=1.0"),
            [
                "net/basic 2.1.0",
                "net/basic 2.0.0",
                "net/basic 1.2.0",
                "net/basic 1.0.0"
            ]
        );
        assert_eq!(accepted("^2"), ["net/basic 2.1.0", "net/basic 2.0.0"]);
        assert_eq!(accepted("^1.1"), ["net/basic 1.2.0"]);
        assert!(accepted("^4").is_empty());
        let absent = Required::new("net/absent", ">=1.0").unwrap();
        assert!(find(&tmp.0, &absent).unwrap().is_empty());

        write_definition(&tmp.0, "net/basic/v3", "net/basic", "3.0.0");
        let e = find(&tmp.0, &Required::new("net/basic", "^2").unwrap()).unwrap_err();
        assert!(
            matches!(&e, DefinitionError::Layout { path, .. } if path.ends_with("net/basic/v3")),
            "{e:?}"
        );
    }

    #[test]
    fn the_repositorys_interfaces_all_load() {
        let all = load_all(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/interfaces"
        )))
        .unwrap();
        let kv = all
            .iter()
            .find(|i| i.provided == Provided::new("anima.sample/kv", "1.0.0").unwrap())
            .expect("interfaces/anima.sample/kv/1.0.0");
        let contract = crate::contract::Contract::from_file(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/sample-modules/kvstore/module.toml"
        )))
        .unwrap();
        let served: BTreeSet<&str> = contract
            .methods
            .iter()
            .filter(|m| m.starts_with("/anima.sample.v1.KvStore/"))
            .collect();
        assert_eq!(kv.method_paths().collect::<BTreeSet<_>>(), served);
        assert!(
            !kv.method("/anima.sample.v1.KvStore/Put")
                .unwrap()
                .idempotent
        );
        let get = kv.method("/anima.sample.v1.KvStore/Get").unwrap();
        assert!(get.idempotent && get.retry.is_some());
    }
}
