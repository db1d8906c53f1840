//! `anima new module` (issue 14, a first hour without reading source): the
//! crate it scaffolds builds where it lies, passes its own tests and every
//! applicable conformance row, is hosted by `anima serve` with the
//! configuration the command prints and called through the Core by its
//! example client; `module-sdk/README.md` shows its files as they are; bad
//! names and non-empty directories are refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anima_protocol::UrnKind;
use anima_tests::bin_path;

use super::architecture::files_under;
use super::conformance::{SHARED_ROWS, ca_dir, conformance, rows};
use super::serve::CoreProcess;
use super::wait;

/// The repository's root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Where scaffolded crates are built: beside the workspace's own builds
/// (target/<profile>/deps/e2e-… → target/scaffold), reused across runs so
/// only the first compiles the dependencies.
fn scaffold_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .expect("the workspace's target dir")
        .join("scaffold")
}

/// `anima new module ARGS…`, run in `cwd`.
fn anima_new(cwd: &Path, args: &[&str]) -> Output {
    wait::output(
        Command::new(bin_path("anima"))
            .args(["new", "module"])
            .args(args)
            .current_dir(cwd),
        "anima new module",
    )
}

/// `anima new module demo --type shared` in a fresh directory: the
/// directory, the crate in it (`demo/`) and what the command printed.
fn scaffold_demo() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = anima_new(dir.path(), &["demo", "--type", "shared"]);
    wait::assert_succeeded(&out);
    let krate = dir.path().join("demo");
    (
        dir,
        krate,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The cargo running these tests (`$CARGO`), else the one that built them.
fn cargo_program() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into())
}

/// `cargo ARGS…` in the scaffolded crate, offline, into the shared target
/// directory; it must succeed without a warning.
fn cargo(krate: &Path, args: &[&str]) -> Output {
    let out = wait::succeeds(
        Command::new(cargo_program())
            .args(args)
            .arg("--offline")
            .current_dir(krate)
            .env("CARGO_TARGET_DIR", scaffold_target_dir())
            // No debug info: a quicker build and link of code only run.
            .env("CARGO_PROFILE_DEV_DEBUG", "false"),
        "cargo",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("warning:"),
        "cargo {} warned:\n{stderr}",
        args.join(" ")
    );
    out
}

/// The anima.toml the command printed: from `[core]` to the `[[policy]]`
/// entry's `allow` line.
fn printed_config(stdout: &str) -> String {
    let start = stdout.find("[core]").expect("anima.toml in the next steps");
    let rest = &stdout[start..];
    let end = rest.find("\nallow = ").expect("a [[policy]] entry");
    let line_end = rest[end + 1..].find('\n').expect("end of the allow line") + end + 2;
    rest[..line_end].to_owned()
}

/// The scaffold end to end: build, its own tests, conformance, then hosted
/// by `anima serve` with the printed configuration and called through the
/// Core by its example client.
///
/// `serial_`: nextest runs it beside nothing else (.config/nextest.toml).
/// Its first run compiles the SDK's whole dependency tree, which takes the
/// machine's cores for a few minutes: alone, it finishes within nextest's
/// limit, and it slows no test that bounds a time.
#[tokio::test(flavor = "multi_thread")]
async fn serial_o1_a_scaffolded_shared_module_builds_tests_passes_conformance_and_is_served() {
    let (_dir, krate, stdout) = scaffold_demo();
    for step in [
        "cargo build",
        "cargo test",
        "anima conformance --contract module.toml --certs certs/dev -- target/debug/demo",
        "urn = \"urn:anima:module:demo\"",
    ] {
        assert!(
            stdout.contains(step),
            "next steps without {step:?}:\n{stdout}"
        );
    }
    // The workspace's versions of every dependency.
    std::fs::copy(repo().join("Cargo.lock"), krate.join("Cargo.lock")).expect("copy Cargo.lock");
    let build_dir = krate.clone();
    tokio::task::spawn_blocking(move || {
        // Formatted as `cargo fmt` formats it.
        wait::succeeds(
            Command::new(cargo_program())
                .args(["fmt", "--check"])
                .current_dir(&build_dir),
            "cargo fmt",
        );
        cargo(&build_dir, &["build"]);
        // Its own test (TestBed), and the example client compiled.
        let out = cargo(&build_dir, &["test"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("test a_lease_counts_and_its_end_stops_the_calls ... ok"),
            "{stdout}"
        );
    })
    .await
    .expect("cargo build and test");

    let binary = scaffold_target_dir().join("debug/demo");
    let contract = krate.join("module.toml");
    let (program, contract_path) = (binary.clone(), contract.clone());
    let run = tokio::task::spawn_blocking(move || {
        let certs = ca_dir();
        conformance(
            &contract_path,
            certs.path(),
            &[],
            &[program.to_str().expect("utf-8 path")],
        )
    })
    .await
    .expect("conformance run");
    // The rows a Type III module must pass (as the tally sample does).
    run.assert_passes(&rows(SHARED_ROWS));

    // Hosted with the printed anima.toml (its paths made absolute, as the
    // binary was built elsewhere), on the dev certificates plus the one
    // `anima certs issue` makes for it.
    let config = printed_config(&stdout)
        .replace(
            "command = \"target/debug/demo\"",
            &format!("command = {:?}", binary.display().to_string()),
        )
        .replace(
            "contract = \"module.toml\"",
            &format!("contract = {:?}", contract.display().to_string()),
        );
    assert!(config.contains(&binary.display().to_string()), "{config}");
    let core = CoreProcess::start_with(Some(&config), |certs| {
        anima_certs::issue_into_dir(certs, UrnKind::Module, "demo", 30, false).unwrap();
    })
    .await;
    let module = core.wait_leased("demo").await;
    assert_eq!(module["type"], "resident-shared", "{module}");
    let client = scaffold_target_dir().join("debug/examples/client");
    let certs = core.dir.path().join("certs/dev");
    for expected in ["hits = 1", "hits = 2"] {
        let (client, admin, certs) = (client.clone(), core.admin.clone(), certs.clone());
        let out = tokio::task::spawn_blocking(move || {
            wait::succeeds(
                Command::new(client).arg(admin).arg(certs),
                "the example client",
            )
        })
        .await
        .expect("client run");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(printed.trim(), expected);
    }
}

/// The ```rust, ```proto and ```toml blocks of module-sdk/README.md, each
/// with its language.
fn readme_blocks() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(repo().join("module-sdk/README.md")).expect("module-sdk/README.md");
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in readme.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => open = Some((lang.trim().to_owned(), String::new())),
            (Some(_), Some("")) => blocks.extend(open.take()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(
        open.is_none(),
        "module-sdk/README.md: a code block is not closed"
    );
    blocks
}

/// Every file of a scaffolded crate, with the Anima source tree's path
/// written as the README writes it (`/path/to/anima`).
fn crate_files(krate: &Path, tree: &str) -> Vec<(PathBuf, String)> {
    files_under(krate)
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a text file");
            (path, text.replace(tree, "/path/to/anima"))
        })
        .collect()
}

/// The README's code is the scaffold's: each Rust, proto and TOML block is
/// verbatim in a file `anima new module demo --type shared` writes (TOML
/// also in the configuration it prints), so the README's Rust is compiled
/// and tested by the end-to-end test above. The README states the
/// workspace's minimum Rust version, which the scaffold's manifest carries.
#[test]
fn module_sdk_readme_shows_the_scaffold_as_it_is() {
    let (_dir, krate, stdout) = scaffold_demo();
    let tree = std::fs::canonicalize(repo()).expect("repo");
    let files = crate_files(&krate, &tree.display().to_string());
    let blocks = readme_blocks();
    for lang in ["rust", "proto", "toml"] {
        assert!(
            blocks.iter().any(|(l, _)| l == lang),
            "module-sdk/README.md has no ```{lang} block"
        );
    }
    for (lang, block) in &blocks {
        if !["rust", "proto", "toml"].contains(&lang.as_str()) {
            continue;
        }
        let found = files.iter().any(|(_, text)| text.contains(block.as_str()))
            || (lang == "toml" && stdout.contains(block.as_str()));
        assert!(
            found,
            "this ```{lang} block of module-sdk/README.md is in no file of the scaffold \
             (`anima new module demo --type shared`) nor in what it prints:\n{block}"
        );
    }
    let readme = std::fs::read_to_string(repo().join("module-sdk/README.md")).unwrap();
    let rust_version = workspace_rust_version();
    assert!(
        readme.contains(&format!("Rust {rust_version}")),
        "module-sdk/README.md does not state the minimum Rust version, {rust_version}"
    );
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!("rust-version = \"{rust_version}\"")),
        "{manifest}"
    );
}

/// `rust-version` of the workspace's `[workspace.package]`.
fn workspace_rust_version() -> String {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("the workspace's rust-version")
        .trim_matches('"')
        .to_owned()
}

/// A dependency line's name, its version and whether it turns the default
/// features off: `name = "1"` or `name = { version = "1", … }`.
fn dependency(line: &str) -> Option<(&str, &str, bool)> {
    let (name, spec) = line.split_once(" = ")?;
    let version = match spec.strip_prefix('"') {
        Some(rest) => rest.split('"').next()?,
        None => spec.split("version = \"").nth(1)?.split('"').next()?,
    };
    Some((name, version, spec.contains("default-features = false")))
}

/// The dependency lines of `manifest`'s `sections`.
fn dependencies<'a>(manifest: &'a str, sections: &[&str]) -> Vec<(&'a str, &'a str, bool)> {
    let mut in_section = false;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        if line.starts_with('[') {
            in_section = sections.contains(&line.trim());
        } else if in_section && let Some(dep) = dependency(line) {
            deps.push(dep);
        }
    }
    deps
}

/// The scaffold depends on the SDK and the protocol crate by path and on
/// everything else at the versions of the workspace's
/// `[workspace.dependencies]`, so it builds with the workspace's lock file.
#[test]
fn the_scaffold_depends_on_the_workspace_versions() {
    let (_dir, krate, _) = scaffold_demo();
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    let workspace = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let pinned = dependencies(&workspace, &["[workspace.dependencies]"]);
    let used = dependencies(
        &manifest,
        &[
            "[dependencies]",
            "[dev-dependencies]",
            "[build-dependencies]",
        ],
    );
    assert!(used.len() >= 7, "{manifest}");
    for (name, version, no_defaults) in used {
        let (_, want, want_no_defaults) = pinned
            .iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not in [workspace.dependencies]"));
        assert_eq!((version, no_defaults), (*want, *want_no_defaults), "{name}");
    }
    let sdk = std::fs::canonicalize(repo().join("module-sdk")).unwrap();
    assert!(
        manifest.contains(&format!(
            "anima-module-sdk = {{ path = {:?} }}",
            sdk.display().to_string()
        )),
        "{manifest}"
    );
    assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
}

/// What `anima new module` refuses, each with one line saying what to do:
/// a name that cannot name a module crate, a directory that is not empty
/// (left as it was), and a --sdk-path that is not the SDK.
#[test]
fn anima_new_refuses_bad_names_and_non_empty_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = |args: &[&str], needle: &str| {
        let out = anima_new(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    };
    for name in [
        "Demo",
        "1demo",
        "-demo",
        "my_module",
        "my.module",
        "dé",
        "fn",
        "test",
        &"a".repeat(64),
    ] {
        refused(
            &["--type", "shared", "--dir", "new", "--", name],
            "choose one like \"my-counter\"",
        );
        assert!(
            !dir.path().join("new").exists(),
            "{name}: something was written"
        );
    }

    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("notes.txt"), "mine").unwrap();
    refused(
        &["demo", "--type", "private", "--dir", "taken"],
        "taken exists and is not empty: give --dir a new or empty directory",
    );
    let left: Vec<_> = std::fs::read_dir(&taken).unwrap().collect();
    assert_eq!(left.len(), 1, "the directory was changed");
    assert_eq!(
        std::fs::read_to_string(taken.join("notes.txt")).unwrap(),
        "mine"
    );
    // The default directory is ./NAME.
    std::fs::create_dir(dir.path().join("demo")).unwrap();
    std::fs::write(dir.path().join("demo/Cargo.toml"), "").unwrap();
    refused(
        &["demo", "--type", "ephemeral"],
        "demo exists and is not empty",
    );

    refused(
        &["other", "--type", "shared", "--sdk-path", "taken"],
        "is not the module-sdk directory of an Anima source tree",
    );
    refused(
        &["other", "--type", "shared", "--sdk-path", "missing"],
        "--sdk-path missing",
    );
    assert!(!dir.path().join("other").exists());

    // An empty directory is fine, for every type.
    for kind in ["ephemeral", "private", "shared"] {
        let target = format!("empty-{kind}");
        std::fs::create_dir(dir.path().join(&target)).unwrap();
        let out = anima_new(dir.path(), &["demo", "--type", kind, "--dir", &target]);
        wait::assert_succeeded(&out);
        let contract =
            std::fs::read_to_string(dir.path().join(&target).join("module.toml")).unwrap();
        let expected = match kind {
            "ephemeral" => "type = \"ephemeral\"",
            "private" => "type = \"resident-private\"",
            _ => "type = \"resident-shared\"",
        };
        assert!(contract.contains(expected), "{contract}");
    }
}
