//! Problems found in a configuration, and where they are.

use std::collections::HashMap;
use std::fmt;

/// One thing wrong with a configuration.
///
/// Displays as `{location}: {message}`, e.g.
/// `anima.toml:14: module[1] (urn:anima:module:x).cert: no such file: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, the line when known, and the key path:
    /// `anima.toml:14: module[1] (urn:anima:module:x).cert`.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl std::error::Error for Problem {}

/// Collects problems while a configuration is read and checked.
///
/// Problems name a key path (`core.cert`, `module[1].restart.backoff`,
/// `admin.operators[0]`). The reader records the line of every key it meets
/// ([`Report::site`]); a problem takes the line of its key, or of the nearest
/// enclosing key that has one (a missing key points at its table's header).
/// Module paths are shown with the module's URN once it is known.
#[derive(Debug)]
pub(crate) struct Report {
    origin: String,
    lines: HashMap<String, usize>,
    labels: HashMap<usize, String>,
    found: Vec<Found>,
}

/// A problem not yet rendered: labels may still arrive.
#[derive(Debug)]
struct Found {
    line: Option<usize>,
    path: Option<String>,
    message: String,
}

impl Report {
    /// A report about `origin` (a file name, or a description).
    pub(crate) fn new(origin: impl Into<String>) -> Self {
        Report {
            origin: origin.into(),
            lines: HashMap::new(),
            labels: HashMap::new(),
            found: Vec::new(),
        }
    }

    /// Records that `path` is written on `line` (1-based).
    pub(crate) fn site(&mut self, path: &str, line: usize) {
        self.lines.entry(path.to_owned()).or_insert(line);
    }

    /// Whether the file wrote `path` itself.
    pub(crate) fn has_site(&self, path: &str) -> bool {
        self.lines.contains_key(path)
    }

    /// Shows `module[index]` as `module[index] (LABEL)`.
    pub(crate) fn label_module(&mut self, index: usize, label: impl fmt::Display) {
        self.labels.insert(index, label.to_string());
    }

    /// Reports a problem with the key at `path`.
    pub(crate) fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.found.push(Found {
            line: self.line_of(path),
            path: Some(path.to_owned()),
            message: message.into(),
        });
    }

    /// Reports a problem on a line that belongs to no key (a syntax error).
    pub(crate) fn problem_on_line(&mut self, line: usize, message: impl Into<String>) {
        self.found.push(Found {
            line: Some(line),
            path: None,
            message: message.into(),
        });
    }

    /// Reports a problem with the file as a whole: no line, no key.
    pub(crate) fn problem_in_file(&mut self, message: impl Into<String>) {
        self.found.push(Found {
            line: None,
            path: None,
            message: message.into(),
        });
    }

    /// Whether nothing was reported.
    pub(crate) fn is_clean(&self) -> bool {
        self.found.is_empty()
    }

    /// The problems, by line (those without one last), in the order found
    /// within a line.
    pub(crate) fn into_problems(mut self) -> Vec<Problem> {
        self.found.sort_by_key(|f| (f.line.is_none(), f.line));
        self.found
            .iter()
            .map(|f| {
                let mut location = self.origin.clone();
                if let Some(line) = f.line {
                    location.push_str(&format!(":{line}"));
                }
                if let Some(path) = &f.path {
                    location.push_str(": ");
                    location.push_str(&self.show(path));
                }
                Problem {
                    location,
                    // One problem, one line.
                    message: f.message.replace(['\n', '\r'], " "),
                }
            })
            .collect()
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(&line) = self.lines.get(path) {
                return Some(line);
            }
            path = parent(path)?;
        }
    }

    /// `module[3].cert` → `module[3] (urn:anima:module:x).cert`.
    fn show(&self, path: &str) -> String {
        let labelled = path.strip_prefix("module[").and_then(|rest| {
            let (index, rest) = rest.split_once(']')?;
            let label = self.labels.get(&index.parse().ok()?)?;
            Some(format!("module[{index}] ({label}){rest}"))
        });
        labelled.unwrap_or_else(|| path.to_owned())
    }
}

/// `a.b[2]` → `a.b` → `a` → none.
fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

/// The 1-based line of the byte `offset` of `text`.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `parent.key`, or `key` at the top level.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_takes_its_tables_line() {
        let mut r = Report::new("anima.toml");
        r.site("module", 7);
        r.site("module[1]", 12);
        r.site("module[1].restart", 20);
        r.problem("module[1].restart.window", "must not be zero");
        r.label_module(1, "urn:anima:module:x");
        r.problem("module[1].cert", "required");
        r.problem("leases.ttl", "too short");
        r.problem_on_line(3, "syntax");
        let shown: Vec<String> = r.into_problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            [
                "anima.toml:3: syntax",
                "anima.toml:12: module[1] (urn:anima:module:x).cert: required",
                "anima.toml:20: module[1] (urn:anima:module:x).restart.window: must not be zero",
                "anima.toml: leases.ttl: too short",
            ]
        );
    }
}
