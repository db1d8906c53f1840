//! The local transport (PROTOCOL.md §6.1, *Local sockets*): the modules a
//! Core starts for itself listen on Unix sockets in its 0700 runtime
//! directory, still under mutual TLS 1.3 and leases; the sockets and the
//! directory go when their processes do, after a `kill -9` too. The real
//! `anima` binary and sample modules, each Core with its own
//! `XDG_RUNTIME_DIR`.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anima_sample_modules::pb::kv_store_client::KvStoreClient;
use anima_sample_modules::pb::{GetRequest, PutRequest};
use anima_tests::PATIENCE;
use serde_json::Value;

use super::serve::{CoreProcess, assert_exit_within, config, pid_alive};

/// A Core running the three samples, with `runtime` as its
/// `XDG_RUNTIME_DIR`.
async fn core_in(runtime: &Path, hasher_restart: &str) -> CoreProcess {
    let env = [(
        "XDG_RUNTIME_DIR".to_owned(),
        runtime.to_string_lossy().into_owned(),
    )];
    CoreProcess::start_env(Some(&config("30s", hasher_restart)), |_| {}, &env).await
}

/// The Core's runtime directory under `runtime`.
fn runtime_dir(runtime: &Path, core: &CoreProcess) -> PathBuf {
    runtime
        .join("anima")
        .join(core.child.child.id().unwrap().to_string())
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// The socket path in a module's `endpoint` (`unix:PATH`).
fn socket_of(row: &Value) -> PathBuf {
    let endpoint = row["endpoint"].as_str().unwrap();
    PathBuf::from(
        endpoint
            .strip_prefix("unix:")
            .unwrap_or_else(|| panic!("not a Unix socket: {endpoint}")),
    )
}

/// Waits (at most [`PATIENCE`]) until `path` is gone.
async fn wait_gone(path: &Path) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} is still there",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn local_socket_modules_of_one_core_listen_on_owner_only_unix_sockets() {
    let runtime = tempfile::tempdir().unwrap();
    let core = core_in(runtime.path(), "always").await;
    let rows = core.wait_samples_leased().await;
    let dir = runtime_dir(runtime.path(), &core);
    assert_eq!(mode(&runtime.path().join("anima")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    // Type I and core-started Type II: a socket each, leased over it.
    for (row, name) in rows.iter().zip(["hasher", "kvstore"]) {
        let socket = socket_of(row);
        assert_eq!(socket, dir.join(format!("{name}.sock")), "{row}");
        let meta = std::fs::symlink_metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket(), "{}", socket.display());
        assert_eq!(mode(&socket), 0o600);
    }
    // Type III serves other Cores too: TCP.
    let tally = rows[2]["endpoint"].as_str().unwrap();
    assert!(tally.parse::<std::net::SocketAddr>().is_ok(), "{tally}");
    // Calls through the Core reach the module over its socket.
    let conn = super::gateway::user(&core, "user-dev").await;
    let mut kvstore = KvStoreClient::new(conn.channel());
    let put = PutRequest {
        entries: [("k".to_owned(), "over a unix socket".to_owned())].into(),
        delay_ms: 0,
    };
    kvstore.put(put).await.unwrap();
    let got = kvstore.get(GetRequest { key: "k".into() }).await.unwrap();
    assert_eq!(got.into_inner().value, "over a unix socket");
}

#[tokio::test]
async fn local_socket_goes_with_its_module_even_after_a_kill_9() {
    let runtime = tempfile::tempdir().unwrap();
    let core = core_in(runtime.path(), "never").await;
    let hasher = core.wait_leased("hasher").await;
    let kvstore = core.wait_leased("kvstore").await;
    // Killed, the module cannot remove its socket: its Core does.
    let socket = socket_of(&hasher);
    let pid = hasher["pid"].as_u64().unwrap();
    assert!(socket.exists());
    let killed = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    wait_gone(&socket).await;
    // Stopped by its operator, the module removes its own.
    let socket = socket_of(&kvstore);
    core.cli_ok(&["stop", "urn:anima:module:kvstore"]).await;
    core.wait_module("kvstore", "stopped", |m| m["state"] == "stopped")
        .await;
    wait_gone(&socket).await;
}

#[tokio::test]
async fn local_socket_directory_of_a_killed_core_is_removed_by_the_next() {
    let runtime = tempfile::tempdir().unwrap();
    let mut first = core_in(runtime.path(), "always").await;
    let rows = first.wait_samples_leased().await;
    let left = runtime_dir(runtime.path(), &first);
    let pids: Vec<u64> = rows.iter().map(|m| m["pid"].as_u64().unwrap()).collect();
    first.child.kill9().await;
    // Its modules follow it (ANIMA_PARENT_PID); its directory stays.
    assert_exit_within(&pids, Duration::from_secs(8)).await;
    assert!(left.is_dir(), "{}", left.display());
    let second = core_in(runtime.path(), "always").await;
    second.wait_samples_leased().await;
    assert!(!left.exists(), "{} was left behind", left.display());
    let own = runtime_dir(runtime.path(), &second);
    assert!(own.is_dir());
    // Stopped, a Core removes its own.
    second.sigterm().await;
    let mut second = second;
    let exit = tokio::time::timeout(PATIENCE * 2, second.child.child.wait())
        .await
        .expect("the Core exits")
        .unwrap();
    assert!(exit.success());
    assert!(!own.exists(), "{} was left behind", own.display());
    assert!(pids.iter().all(|p| !pid_alive(*p)));
}
