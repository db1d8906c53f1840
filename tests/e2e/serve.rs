//! `anima serve` and the operator CLI, as an operator uses them: the real
//! `anima` binary, the real sample module binaries, real signals.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anima_tests::{Child, PATIENCE, bin_path};
use serde_json::Value;

/// A Core process started with `anima serve` in its own directory.
pub(crate) struct CoreProcess {
    pub(crate) child: Child,
    pub(crate) admin: String,
    pub(crate) dir: tempfile::TempDir,
    /// The NATS server its mediator keeps messages on, if any: stopped
    /// after the Core.
    pub(crate) nats: Option<super::nats::NatsServer>,
}

impl CoreProcess {
    /// Starts `anima serve` in a fresh directory; `config` (TOML) is written
    /// there as anima.toml when given, else the embedded default runs.
    pub(crate) async fn start(config: Option<&str>) -> Self {
        Self::start_with(config, |_| {}).await
    }

    /// Like [`CoreProcess::start`], calling `prepare` with the dev
    /// certificate directory first (to mint more certificates).
    pub(crate) async fn start_with(config: Option<&str>, prepare: impl FnOnce(&Path)) -> Self {
        Self::start_env(config, prepare, &[]).await
    }

    /// Like [`CoreProcess::start_with`], with extra environment variables for
    /// the Core (and so for the modules it launches).
    pub(crate) async fn start_env(
        config: Option<&str>,
        prepare: impl FnOnce(&Path),
        env: &[(String, String)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Dev certificates, as `anima certs init` makes them.
        anima_certs::init_dir(
            &dir.path().join("certs/dev"),
            &anima_certs::InitOptions::default(),
        )
        .unwrap();
        prepare(&dir.path().join("certs/dev"));
        let mut args = vec![
            "serve".to_owned(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
        ];
        if let Some(text) = config {
            std::fs::write(dir.path().join("anima.toml"), text).unwrap();
            args.push("--config".into());
            args.push(dir.path().join("anima.toml").to_string_lossy().into_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = Child::spawn_env_in(&bin_path("anima"), &args, env, dir.path());
        CoreProcess::ready(child, dir).await
    }

    /// The Core `child` started in `dir`, once it has said where its
    /// endpoint listens.
    pub(crate) async fn ready(mut child: Child, dir: tempfile::TempDir) -> Self {
        let admin = child.line("ANIMA-CORE READY").await;
        CoreProcess {
            child,
            admin,
            dir,
            nats: None,
        }
    }

    /// `kill -9`s the Core and starts it again in the same directory, with
    /// the same `anima.toml`; its endpoint's address is new.
    pub(crate) async fn kill9_and_restart(&mut self) {
        self.child.kill9().await;
        self.restart().await;
    }

    /// Starts the Core again (after a [`Child::kill9`] of `child`) in the
    /// same directory, with the same `anima.toml`.
    pub(crate) async fn restart(&mut self) {
        let config = self.dir.path().join("anima.toml");
        let config = config.to_string_lossy().into_owned();
        let args = [
            "serve",
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
            &config,
        ];
        let mut child = Child::spawn_env_in(&bin_path("anima"), &args, &[], self.dir.path());
        self.admin = child.line("ANIMA-CORE READY").await;
        self.child = child;
    }

    /// Runs an operator command against this Core; returns (exit code, stdout).
    pub(crate) async fn cli(&self, args: &[&str]) -> (i32, String) {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--admin", &self.admin]);
        let out = tokio::process::Command::new(bin_path("anima"))
            .args(&full)
            .current_dir(self.dir.path())
            .output();
        let out = tokio::time::timeout(PATIENCE, out).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            eprintln!("anima {args:?} failed: {stderr}");
        }
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// [`CoreProcess::cli`], which must exit 0; returns its stdout.
    pub(crate) async fn cli_ok(&self, args: &[&str]) -> String {
        let (code, out) = self.cli(args).await;
        assert_eq!(code, 0, "anima {}", args.join(" "));
        out
    }

    async fn json(&self, what: &str) -> Vec<Value> {
        let out = self.cli_ok(&[what, "--json"]).await;
        serde_json::from_str(&out).unwrap()
    }

    pub(crate) async fn module(&self, name: &str) -> Value {
        let urn = format!("urn:anima:module:{name}");
        self.json("modules")
            .await
            .into_iter()
            .find(|m| m["urn"] == urn.as_str())
            .unwrap_or_else(|| panic!("{urn} is not listed"))
    }

    /// Polls until `name`'s row satisfies `ok`.
    pub(crate) async fn wait_module(
        &self,
        name: &str,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE * 2;
        loop {
            let m = self.module(name).await;
            if ok(&m) {
                return m;
            }
            if tokio::time::Instant::now() >= deadline {
                // What the Core said about the module, for the failure.
                let log =
                    std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains(name)).collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                panic!("{name}: waited for {what}; last {m}\nthe Core's log about it:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `name` is leased; returns its row.
    pub(crate) async fn wait_leased(&self, name: &str) -> Value {
        self.wait_module(name, "leased", |m| m["state"] == "leased")
            .await
    }

    /// Waits until each of the three samples is leased; returns their rows.
    pub(crate) async fn wait_samples_leased(&self) -> Vec<Value> {
        let mut rows = Vec::new();
        for name in ["hasher", "kvstore", "tally"] {
            rows.push(self.wait_leased(name).await);
        }
        rows
    }

    /// Waits until `name` is leased, then until its lease has been renewed
    /// twice more.
    async fn wait_renewals(&self, name: &str) {
        self.wait_leased(name).await;
        let first = self.lease_of(name).await["renewals"].as_u64().unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let now = self.lease_of(name).await["renewals"].as_u64().unwrap();
            if now >= first + 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "renewals stuck at {now}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends the Core SIGTERM.
    pub(crate) async fn sigterm(&self) {
        self.signal("TERM").await;
    }

    /// Sends the Core signal `name` (`TERM`, `HUP`, …) with kill(1).
    pub(crate) async fn signal(&self, name: &str) {
        let pid = self.child.child.id().unwrap();
        let status = tokio::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    /// The module's active lease (waiting for one, e.g. across a re-lease).
    pub(crate) async fn lease_of(&self, name: &str) -> Value {
        let urn = format!("urn:anima:module:{name}");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let leases = self.json("leases").await;
            if let Some(l) = leases
                .into_iter()
                .find(|l| l["module"] == urn.as_str() && l["state"] == "active")
            {
                return l;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no active lease for {urn}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(crate) fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The path of sample `name`'s binary.
pub(crate) fn sample(name: &str) -> String {
    bin_path(&format!("anima-{name}"))
        .to_string_lossy()
        .into_owned()
}

/// `[core]` (with `core_lines` added) and `[admin]` for a Core in a
/// [`CoreProcess`] directory.
pub(crate) fn core_and_admin(core_lines: &str) -> String {
    format!(
        r#"
[core]
urn = "urn:anima:core:dev"
cert = "certs/dev/core-dev.pem"
key = "certs/dev/core-dev.key"
ca = "certs/dev/ca.pem"
audit_log = "audit.jsonl"
{core_lines}
[admin]
listen = "127.0.0.1:0"
operators = ["urn:anima:user:dev"]
"#
    )
}

/// `[core]` (with the P-256 endpoint certificate), `[admin]` and
/// `[leases]` for a Core in a [`CoreProcess`] directory.
fn core_sections(ttl: &str) -> String {
    let endpoint = r#"endpoint_cert = "certs/dev/core-dev.endpoint.pem"
endpoint_key = "certs/dev/core-dev.endpoint.key"
"#;
    format!(
        r#"{core}
[leases]
ttl = "{ttl}"
"#,
        core = core_and_admin(endpoint)
    )
}

/// `core` (the sections [`core_and_admin`] or [`core_sections`] make) and
/// one [`module_entry`].
fn one_module(core: &str, name: &str, settings: &str) -> String {
    format!("{core}{}", module_entry(name, settings))
}

/// One `[[module]]`: `name` with its dev certificate, set up by `settings`.
pub(crate) fn module_entry(name: &str, settings: &str) -> String {
    format!(
        r#"
[[module]]
urn = "urn:anima:module:{name}"
cert = "certs/dev/module-{name}.pem"
key = "certs/dev/module-{name}.key"
{settings}"#
    )
}

/// The three samples with short leases and the restart policy under test.
pub(crate) fn config(ttl: &str, hasher_restart: &str) -> String {
    format!(
        r#"{core}

[[module]]
urn = "urn:anima:module:hasher"
type = "ephemeral"
command = "{hasher}"
cert = "certs/dev/module-hasher.pem"
key = "certs/dev/module-hasher.key"
[module.restart]
policy = "{hasher_restart}"
backoff = "50ms"

[[module]]
urn = "urn:anima:module:kvstore"
type = "resident-private"
command = "{kvstore}"
cert = "certs/dev/module-kvstore.pem"
key = "certs/dev/module-kvstore.key"

[[module]]
urn = "urn:anima:module:tally"
type = "resident-shared"
command = "{tally}"
cert = "certs/dev/module-tally.pem"
key = "certs/dev/module-tally.key"
requires = ["urn:anima:module:kvstore"]

[[policy]]
user = "urn:anima:user:dev"
allow = ["urn:anima:module:hasher", "urn:anima:module:kvstore", "urn:anima:module:tally"]
"#,
        core = core_sections(ttl),
        hasher = sample("hasher"),
        kvstore = sample("kvstore"),
        tally = sample("tally"),
    )
}

#[tokio::test]
async fn serve_embedded_default_hosts_and_leases_the_three_samples() {
    let core = CoreProcess::start(None).await;
    for m in core.wait_samples_leased().await {
        assert!(m["pid"].as_u64().is_some(), "{m}");
    }
    let leases = core.json("leases").await;
    assert!(leases.iter().filter(|l| l["state"] == "active").count() >= 3);
    // A human table too.
    let table = core.cli_ok(&["modules"]).await;
    assert!(table.starts_with("MODULE"), "{table}");
    assert!(table.contains("urn:anima:module:kvstore") && table.contains("leased"));
}

#[tokio::test]
async fn serve_renewal_counts_rise() {
    let core = CoreProcess::start(Some(&config("600ms", "always"))).await;
    core.wait_renewals("tally").await;
    // The audit log has the renewals.
    let audit = std::fs::read_to_string(core.dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.lines().any(|l| l.contains("\"renewed\"")));
}

/// Waits until `module` is leased, then revokes its lease with `anima revoke`
/// (and `extra` arguments), which must succeed and name the lease; returns
/// the module's pid and the revoked lease's id.
async fn revoke_the_lease_of(core: &CoreProcess, module: &str, extra: &[&str]) -> (u64, String) {
    let before = core.wait_leased(module).await;
    let pid = before["pid"].as_u64().unwrap();
    let lease = core.lease_of(module).await["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut args = vec!["revoke", lease.as_str()];
    args.extend_from_slice(extra);
    let out = core.cli_ok(&args).await;
    assert!(out.contains(&lease));
    (pid, lease)
}

#[tokio::test]
async fn serve_revoking_the_type1_lease_ends_that_process_and_starts_a_new_one() {
    let core = CoreProcess::start(Some(&config("30s", "always"))).await;
    let (pid, lease) = revoke_the_lease_of(&core, "hasher", &["--reason", "test"]).await;
    // The old process exits by itself (termination window 2 s), and the
    // policy (always) starts a new one, which gets a new lease.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while pid_alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Type I process lingers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = core
        .wait_module("hasher", "a new leased process", |m| {
            m["state"] == "leased" && m["pid"].as_u64().is_some_and(|p| p != pid)
        })
        .await;
    assert_ne!(after["lease_id"].as_str(), Some(lease.as_str()));
    assert!(after["restarts"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn serve_revoking_the_type2_lease_leaves_it_in_standby_and_leases_it_again() {
    let core = CoreProcess::start(Some(&config("30s", "always"))).await;
    let (pid, lease) = revoke_the_lease_of(&core, "kvstore", &[]).await;
    let after = core
        .wait_module("kvstore", "leased again", |m| {
            m["state"] == "leased" && m["lease_id"].as_str().is_some_and(|l| l != lease)
        })
        .await;
    assert_eq!(
        after["pid"].as_u64(),
        Some(pid),
        "same process: standby, not restart"
    );
    let revoked: Vec<Value> = core
        .json("leases")
        .await
        .into_iter()
        .filter(|l| l["lease_id"] == lease.as_str())
        .collect();
    assert_eq!(revoked[0]["state"], "ended");
    assert_eq!(revoked[0]["reason"], "LEASE_REVOKED");
}

#[tokio::test]
async fn serve_kill_9_of_the_core_leaves_no_type1_process_behind() {
    let mut core = CoreProcess::start(Some(&config("30s", "always"))).await;
    let hasher = core.wait_leased("hasher").await;
    let kvstore = core.wait_leased("kvstore").await;
    let pids = [
        hasher["pid"].as_u64().unwrap(),
        kvstore["pid"].as_u64().unwrap(),
    ];
    core.child.kill9().await;
    // Type I: loses its lease, then its termination window (2 s) passes.
    assert_exit_within(&pids, Duration::from_secs(8)).await;
}

/// Waits (at most `limit`) until none of `pids` is alive.
pub(crate) async fn assert_exit_within(pids: &[u64], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while pids.iter().any(|p| pid_alive(*p)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "orphans remain: {:?}",
            pids.iter().filter(|p| pid_alive(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_a_crashing_module_is_restarted_within_its_policy_then_failed() {
    let crashing = format!(
        r#"command = "{false_bin}"
[module.restart]
policy = "on-failure"
max_restarts = 3
window = "60s"
backoff = "20ms"
backoff_max = "100ms"
"#,
        false_bin = which("false"),
    );
    let crash = one_module(&core_and_admin(""), "hasher", &crashing);
    let core = CoreProcess::start(Some(&crash)).await;
    let m = core
        .wait_module("hasher", "failed", |m| m["state"] == "failed")
        .await;
    assert_eq!(m["restarts"].as_u64(), Some(3), "{m}");
    assert!(
        m["detail"].as_str().unwrap().contains("restarted 3 times"),
        "{m}"
    );
}

/// How many of `pid`'s threads are tokio's workers.
fn tokio_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "tokio-rt-worker")
        .count()
}

#[tokio::test]
async fn serve_runs_as_many_workers_as_worker_threads_says() {
    for n in [1, 3] {
        let text = core_and_admin(&format!("worker_threads = {n}"));
        let core = CoreProcess::start(Some(&text)).await;
        let pid = core.child.child.id().expect("the Core runs");
        assert_eq!(tokio_workers(pid), n, "worker_threads = {n}");
    }
}

#[tokio::test]
async fn serve_sigterm_revokes_stops_modules_and_exits_0() {
    let mut core = CoreProcess::start(Some(&config("30s", "always"))).await;
    let leased = core.wait_samples_leased().await;
    let pids: Vec<u64> = leased.iter().map(|m| m["pid"].as_u64().unwrap()).collect();
    core.sigterm().await;
    let exit = tokio::time::timeout(PATIENCE * 2, core.child.child.wait())
        .await
        .expect("the Core exits")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    for p in pids {
        assert!(!pid_alive(p), "module {p} was not stopped");
    }
    let audit = std::fs::read_to_string(core.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.lines().filter(|l| l.contains("\"revoked\"")).count() >= 3,
        "{audit}"
    );
}

#[tokio::test]
async fn serve_cli_refuses_non_operators_with_a_clear_exit_code() {
    let core = CoreProcess::start(Some(&config("30s", "always"))).await;
    // A module's certificate is not an operator.
    let (code, _) = core
        .cli(&[
            "modules",
            "--cert",
            "certs/dev/module-hasher.pem",
            "--key",
            "certs/dev/module-hasher.key",
        ])
        .await;
    assert_eq!(code, 1);
    let (code, _) = core.cli(&["revoke", "AAAAAAAAAAAAAAAAAAAAAA"]).await;
    assert_eq!(code, 1, "unknown lease");
}

fn which(name: &str) -> String {
    for dir in ["/usr/bin", "/bin"] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!("{name} not found");
}

/// `core_cert = "endpoint"`: the Core dials a module with its P-256
/// endpoint certificate and signs that module's leases ES256, so a module
/// on a BoringSSL-based stack (here the Python `grpcio` module, which refuses
/// Ed25519 client certificates) is hosted, leased and renewed like any other.
#[tokio::test]
async fn serve_hosts_a_python_grpcio_module_with_its_p256_certificate() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/module");
    let script = repo.join("anima_pymodule.py");
    let contract = repo.join("module.toml");
    let python = format!(
        r#"type = "resident-shared"
command = "python3"
args = ["{script}", "{contract}"]
core_cert = "endpoint"
"#,
        script = script.display(),
        contract = contract.display(),
    );
    let config = one_module(&core_sections("600ms"), "pyprobe", &python);
    let mut core = CoreProcess::start_with(Some(&config), |certs| {
        anima_certs::issue_into_dir(certs, anima_protocol::UrnKind::Module, "pyprobe", 1, false)
            .unwrap();
    })
    .await;
    core.wait_renewals("pyprobe").await;
    // Killed with SIGKILL, the Core leaves no Python process behind: the
    // module asked for SIGTERM on its parent's death (`ANIMA_PARENT_PID`,
    // PROTOCOL.md §6.1), as the SDK's modules do.
    let pid = core.wait_leased("pyprobe").await["pid"].as_u64().unwrap();
    core.child.kill9().await;
    assert_exit_within(&[pid], PATIENCE).await;
}
