//! The release feature graph check: no test-only fault hook reaches a
//! shipped crate.
//!
//! The SDK's and the protocol crate's deliberate ADR-0003 violations live
//! only in the test-only packages `anima-faulty-fixtures` and
//! `anima-protocol-faulty` (their sources compiled again with the
//! `anima_test_faults` cfg). This check reads `cargo tree -e features` for
//! every crate we ship (and the benchmark, which hosts modules) and fails if
//! either package, or any feature whose name mentions a fault, is in its
//! normal or build dependency graph.

use std::process::Command;

/// The crates whose release builds must be free of fault hooks.
const SHIPPED: [&str; 6] = [
    "anima-protocol",
    "anima-certs",
    "anima-module-sdk",
    "anima-core",
    "anima-sample-modules",
    "anima-bench",
];

/// Fails naming each shipped crate whose graph holds a fault hook.
pub(crate) fn check_feature_graph() -> Result<(), String> {
    let cargo = crate::cargo_program();
    let mut problems = Vec::new();
    for package in SHIPPED {
        eprintln!("xtask: cargo tree -p {package} -e features,normal,build");
        let out = Command::new(&cargo)
            .args([
                "tree",
                "--locked",
                "-p",
                package,
                "-e",
                "features,normal,build",
                "--prefix",
                "none",
            ])
            .output()
            .map_err(|e| format!("cannot run cargo tree: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`cargo tree -p {package}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        problems.extend(offending(&tree).map(|line| format!("{package}: {line}")));
    }
    crate::ensure(problems.is_empty(), || {
        format!(
            "a test-only fault hook reaches a shipped crate:\n  {}",
            problems.join("\n  ")
        )
    })
}

/// The lines of a `cargo tree -e features` listing that name a fault hook.
fn offending(tree: &str) -> impl Iterator<Item = &str> {
    tree.lines().filter(|line| {
        // "default" is every crate's feature, not a fault.
        let line = line.to_ascii_lowercase().replace("default", "");
        line.contains("anima-faulty-fixtures") || line.contains("fault")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_test_copy_and_fault_features_only() {
        let tree = "anima-core v0.1.0\nanima-module-sdk feature \"testing\"\n\
                    anima-module-sdk feature \"fault-injection\"\n\
                    anima-faulty-fixtures v0.1.0 (/w/tests/faulty)\ntokio feature \"default\"\n\
                    anima-protocol-faulty v0.1.0 (/w/tests/faulty-protocol)\n";
        let found: Vec<&str> = offending(tree).collect();
        assert_eq!(
            found,
            [
                "anima-module-sdk feature \"fault-injection\"",
                "anima-faulty-fixtures v0.1.0 (/w/tests/faulty)",
                "anima-protocol-faulty v0.1.0 (/w/tests/faulty-protocol)"
            ]
        );
    }
}
