//! ARCHITECTURE.md's invariants, each a check that fails when it is broken.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Each workspace package's workspace dependencies (normal and build; not
/// dev), by package name, from `cargo metadata`.
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .filter_map(|d| d["name"].as_str())
                .filter(|name| names.contains(*name))
                .map(str::to_owned)
                .collect();
            (p["name"].as_str().expect("name").to_owned(), deps)
        })
        .collect()
}

/// Every package `from` depends on, directly or not.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(name) = todo.pop() {
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn the_sdk_the_core_and_the_conformance_tool_stay_apart() {
    let graph = workspace_graph();
    for (from, to) in [
        ("anima-module-sdk", "anima-core"),
        ("anima-core", "anima-module-sdk"),
        ("anima-protocol", "anima-core"),
        ("anima-protocol", "anima-module-sdk"),
        ("anima-conformance", "anima-core"),
        ("anima-conformance", "anima-module-sdk"),
    ] {
        assert!(graph.contains_key(from), "no package {from}");
        assert!(graph.contains_key(to), "no package {to}");
        assert!(
            !reachable(&graph, from).contains(to),
            "{from} depends on {to} (ARCHITECTURE.md, invariants)"
        );
    }
}

/// The non-comment lines of every `.rs` file under `dir`, with their paths.
fn source_lines(dir: &Path) -> Vec<(PathBuf, usize, String)> {
    lines_under(dir, false)
}

/// [`source_lines`] without each file's trailing `#[cfg(test)] mod tests`:
/// the code that ships.
fn shipped_lines(dir: &Path) -> Vec<(PathBuf, usize, String)> {
    lines_under(dir, true)
}

/// Every file under `dir`, at any depth.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable source folder") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn lines_under(dir: &Path, shipped_only: bool) -> Vec<(PathBuf, usize, String)> {
    let mut out = Vec::new();
    let sources = files_under(dir)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "rs"));
    for path in sources {
        let text = std::fs::read_to_string(&path).expect("readable source");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let unit_tests = *line == "#[cfg(test)]"
                && lines.get(i + 1).is_some_and(|l| l.starts_with("mod tests"));
            if shipped_only && unit_tests {
                break;
            }
            let code = line.trim_start();
            if !code.starts_with("//") {
                out.push((path.clone(), i + 1, (*line).to_owned()));
            }
        }
    }
    out
}

/// Fails, listing the places `found` that break `rule`, unless there are none.
#[track_caller]
fn assert_none(found: Vec<String>, rule: &str) {
    assert!(found.is_empty(), "{rule}: {found:#?}");
}

#[test]
fn lease_logic_is_pure() {
    let lease = root().join("src/lease");
    // The appendix vectors and the unit tests are test-only files.
    let test_only = ["tests.rs", "vectors.rs"];
    let forbidden = [
        "tokio",
        "std::net",
        "std::fs",
        "std::thread",
        "SystemTime::now",
        "Instant::now",
        "TcpStream",
    ];
    let mut found = Vec::new();
    for (path, n, line) in source_lines(&lease) {
        if path
            .file_name()
            .is_some_and(|f| test_only.iter().any(|t| f == *t))
        {
            continue;
        }
        for word in forbidden {
            if line.contains(word) {
                found.push(format!("{}:{n}: {word}", path.display()));
            }
        }
    }
    assert_none(found, "src/lease/ must take time and I/O from its callers");
}

#[test]
fn only_the_transport_builds_tls_configurations() {
    let root = root();
    let shipped = [
        "src",
        "core/src",
        "module-sdk/src",
        "certs/src",
        "sample-modules",
        "conformance/src",
    ];
    let builders = [
        "ServerConfig::builder",
        "ClientConfig::builder",
        "ServerConfig {",
        "ClientConfig {",
    ];
    let mut found = Vec::new();
    for dir in shipped {
        let dir = root.join(dir);
        if !dir.exists() {
            continue;
        }
        for (path, n, line) in shipped_lines(&dir) {
            let relative = path.strip_prefix(&root).unwrap_or(&path);
            // The one place (its probing client included: transport/probe.rs).
            let allowed = relative.starts_with("src/transport");
            if !allowed && builders.iter().any(|b| line.contains(b)) {
                found.push(format!("{}:{n}", relative.display()));
            }
        }
    }
    assert_none(found, "TLS configurations are built only in src/transport/");
}

/// Every `.rs` line of the workspace's crates (not `target/`, not the fuzz
/// workspace's build output), with paths relative to the root.
fn workspace_lines() -> Vec<(PathBuf, usize, String)> {
    let root = root();
    let dirs = [
        "src",
        "core",
        "module-sdk",
        "certs",
        "sample-modules",
        "conformance",
        "tests",
        "bench",
        "xtask",
        "fuzz/src",
    ];
    dirs.iter()
        .map(|d| root.join(d))
        .filter(|d| d.exists())
        .flat_map(|d| source_lines(&d))
        .map(|(path, n, line)| {
            let relative = path.strip_prefix(&root).unwrap_or(&path).to_owned();
            (relative, n, line)
        })
        .collect()
}

/// The places outside `home` (and this file, which names the needles)
/// whose code line contains one of `needles`.
fn outside(home: &str, needles: &[&str]) -> Vec<String> {
    workspace_lines()
        .into_iter()
        .filter(|(path, _, line)| {
            !path.starts_with(home)
                && !path.ends_with("e2e/architecture.rs")
                && needles.iter().any(|n| line.contains(n))
        })
        .map(|(path, n, line)| format!("{}:{n}: {}", path.display(), line.trim()))
        .collect()
}

#[test]
fn one_driver_runs_the_core_side_of_the_lease_handshake() {
    // The Core, the conformance tool, the test harness and the SDK's fake
    // Core open control streams and send offers only through
    // anima_protocol::control.
    let found = outside("src/control.rs", &["LeaseControlClient"]);
    assert_none(
        found,
        "the Core side of the handshake is driven only by src/control.rs",
    );
}

#[test]
fn one_verifier_checks_server_certificates() {
    let found = outside("src/transport/tls.rs", &["impl ServerCertVerifier for"]);
    assert_none(
        found,
        "server certificates are verified only in src/transport/tls.rs",
    );
}

/// Whether `doc` names `name` as a file or folder: `name.rs`, `name/` or
/// `` `name` ``, not as the tail of a longer word (`link.rs` is not named by
/// `blink.rs`).
fn names(doc: &str, name: &str) -> bool {
    [
        format!("{name}.rs"),
        format!("{name}/"),
        format!("`{name}`"),
    ]
    .iter()
    .any(|needle| {
        doc.match_indices(needle.as_str()).any(|(at, _)| {
            needle.starts_with('`')
                || !doc[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

#[test]
fn the_code_map_names_every_source_file() {
    // ARCHITECTURE.md's code map is where a reader looks a file up: a file it
    // does not name is one the map no longer describes.
    let root = root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let crates = [
        "src",
        "core/src",
        "module-sdk/src",
        "certs/src",
        "conformance/src",
        "sample-modules/src",
        "bench/src",
        "xtask/src",
    ];
    let mut unnamed = Vec::new();
    for dir in crates {
        for path in files_under(&root.join(dir)) {
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let stem = path.file_stem().and_then(|s| s.to_str()).expect("a name");
            let name = match stem {
                "lib" | "main" => continue,
                // A folder's module is named by the folder.
                "mod" => path
                    .parent()
                    .and_then(Path::file_name)
                    .and_then(|s| s.to_str())
                    .expect("a folder"),
                _ => stem,
            };
            if !names(&map, name) {
                let relative = path.strip_prefix(&root).unwrap_or(&path);
                unnamed.push(relative.display().to_string());
            }
        }
    }
    unnamed.sort();
    assert_none(
        unnamed,
        "ARCHITECTURE.md's code map names every source file",
    );
}

#[test]
fn a_name_is_not_the_tail_of_a_longer_one() {
    assert!(names("`link.rs` opens leases", "link"));
    assert!(names("the `lease/` folder", "lease"));
    assert!(names("`LeaseTable` (`table`)", "table"));
    assert!(!names("`blink.rs` and a link", "link"));
    assert!(!names("`sub_lease/`", "lease"));
}
