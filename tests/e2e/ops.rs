//! The operator commands (`anima modules`, `leases`, `revoke`) find the Core
//! from its own `anima.toml` (`--config FILE`): a Core whose admin endpoint
//! listens on a port of its configuration's choosing is reached with no
//! `--admin`, with the operator certificate the file names; a flag still
//! overrides the file; an ended lease is shown as ended.

use std::path::Path;
use std::time::Duration;

use anima_tests::{Child, PATIENCE, bin_path};
use serde_json::Value;

/// A free loopback port (bound, then released for the Core to take).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The three samples, the admin endpoint on `port`, and the dev user as the
/// operator certificate.
fn config_on(port: u16) -> String {
    let text = crate::serve::config("30s", "on-failure");
    let listen = "listen = \"127.0.0.1:0\"";
    assert!(text.contains(listen), "the helper's config changed: {text}");
    text.replacen(
        listen,
        &format!(
            "listen = \"127.0.0.1:{port}\"\n\
             operator_cert = \"certs/dev/user-dev.pem\"\n\
             operator_key = \"certs/dev/user-dev.key\""
        ),
        1,
    )
}

/// Runs `anima ARGS` in `cwd`; returns (exit code, stdout, stderr).
async fn anima(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bin_path("anima"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output();
    let out = tokio::time::timeout(PATIENCE, out)
        .await
        .expect("anima in time")
        .expect("anima runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `anima ARGS` in `cwd`, which must exit 0; its stdout.
async fn anima_ok(cwd: &Path, args: &[&str]) -> String {
    let (code, out, err) = anima(cwd, args).await;
    assert_eq!(code, 0, "anima {args:?}: {err}");
    out
}

/// `anima WHAT --json ARGS` as JSON rows.
async fn rows(cwd: &Path, what: &str, args: &[&str]) -> Vec<Value> {
    let mut full = vec![what, "--json"];
    full.extend(args);
    serde_json::from_str(&anima_ok(cwd, &full).await).unwrap()
}

/// Polls `anima leases --json ARGS` until some row satisfies `ok`.
async fn wait_lease(cwd: &Path, args: &[&str], what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        let leases = rows(cwd, "leases", args).await;
        if let Some(lease) = leases.into_iter().find(&ok) {
            return lease;
        }
        assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Core run by `anima serve --config anima.toml` in its own directory,
/// its admin endpoint on a free port the file names.
struct Served {
    dir: tempfile::TempDir,
    port: u16,
    /// Its `anima.toml`.
    file: String,
    _core: Child,
}

/// Starts a [`Served`] Core.
async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let certs = dir.path().join("certs/dev");
    anima_certs::init_dir(&certs, &anima_certs::InitOptions::default()).unwrap();
    let file = dir.path().join("anima.toml");
    std::fs::write(&file, config_on(port)).unwrap();
    let file = file.to_string_lossy().into_owned();
    let args = ["serve", "--config", &file];
    let mut core = Child::spawn_in(&bin_path("anima"), &args, dir.path());
    let admin = core.line("ANIMA-CORE READY").await;
    assert_eq!(admin, format!("127.0.0.1:{port}"));
    Served {
        dir,
        port,
        file,
        _core: core,
    }
}

#[tokio::test]
async fn operator_commands_read_the_admin_address_and_credentials_from_the_config() {
    let core = serve().await;
    let (file, port, core_dir) = (core.file.as_str(), core.port, core.dir.path());
    // Elsewhere: no anima.toml, no certs/dev here; all from the file.
    let elsewhere = tempfile::tempdir().unwrap();
    let here = elsewhere.path();
    let cfg = ["--config", file];
    let lease = wait_lease(here, &cfg, "an active hasher lease", |l| {
        l["module"] == "urn:anima:module:hasher" && l["state"] == "active"
    })
    .await;
    let table = anima_ok(here, &["modules", "--config", file]).await;
    assert!(table.starts_with("MODULE"), "{table}");
    assert!(table.contains("urn:anima:module:hasher"), "{table}");
    let table = anima_ok(here, &["leases", "--config", file]).await;
    assert!(
        table.contains(lease["lease_id"].as_str().unwrap()),
        "{table}"
    );

    // In the Core's directory, its anima.toml is found as `anima serve` finds it.
    let table = anima_ok(core_dir, &["modules"]).await;
    assert!(table.contains("urn:anima:module:hasher"), "{table}");

    // A flag overrides the file: --admin to where nothing listens fails,
    // naming that address, not the file's.
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = anima(here, &["modules", "--config", file, "--admin", &dead]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&dead), "{err}");
    // … and --admin to the real endpoint wins over a file that names another.
    let wrong = here.join("wrong.toml");
    let text = std::fs::read_to_string(file).unwrap();
    let text = text.replace(&format!("127.0.0.1:{port}"), &dead);
    let text = text.replace(
        "\"certs/dev/",
        &format!("\"{}/certs/dev/", core_dir.display()),
    );
    std::fs::write(&wrong, text).unwrap();
    let wrong = wrong.to_str().unwrap();
    let real = format!("127.0.0.1:{port}");
    let table = anima_ok(here, &["modules", "--config", wrong, "--admin", &real]).await;
    assert!(table.contains("urn:anima:module:hasher"), "{table}");
}

#[tokio::test]
async fn an_ended_lease_shows_that_it_ended_not_a_future_expiry() {
    let core = serve().await;
    let cfg = ["--config", core.file.as_str()];
    let here = core.dir.path();
    let lease = wait_lease(here, &cfg, "an active kvstore lease", |l| {
        l["module"] == "urn:anima:module:kvstore" && l["state"] == "active"
    })
    .await;
    let id = lease["lease_id"].as_str().unwrap().to_owned();
    let mut revoke = vec!["revoke", id.as_str(), "--reason", "test"];
    revoke.extend(cfg);
    anima_ok(here, &revoke).await;
    wait_lease(here, &cfg, "the revoked lease ended", |l| {
        l["lease_id"] == id.as_str() && l["state"] != "active"
    })
    .await;
    let mut leases = vec!["leases"];
    leases.extend(cfg);
    let table = anima_ok(here, &leases).await;
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
    assert!(row.contains("ended"), "{row}");
    assert!(
        !row.contains(" in "),
        "an ended lease with a future expiry: {row}"
    );
}

#[tokio::test]
async fn a_configuration_that_does_not_parse_is_reported_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anima.toml");
    std::fs::write(&file, "[admin]\nlisten = 7700\n").unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = anima(dir.path(), &["modules", "--config", file]).await;
    assert_eq!(code, 1, "{out}{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains(file), "{err}");
    assert!(err.contains(&format!("{file}:2: admin.listen")), "{err}");
}
