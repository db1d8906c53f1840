//! `anima serve` under a service manager: the real `anima` binary talks the
//! systemd notify protocol to a real Unix datagram socket bound here, as
//! systemd binds its own (`NOTIFY_SOCKET`, `WATCHDOG_USEC`); and what
//! `anima serve` prints about a configuration it cannot run.

use std::os::linux::net::SocketAddrExt;
use std::path::Path;
use std::time::Duration;

use anima_tests::{PATIENCE, bin_path};

use crate::serve::{CoreProcess, config, core_and_admin, module_entry};

/// The service manager's end: a datagram socket the Core is told about.
struct Manager {
    socket: tokio::net::UnixDatagram,
    /// What `NOTIFY_SOCKET` says: a path, or `@name` (abstract).
    address: String,
    _dir: tempfile::TempDir,
}

impl Manager {
    /// A socket at a path in a fresh directory, as systemd's
    /// `/run/systemd/notify`.
    fn at_path() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
        Manager {
            socket,
            address: path.to_string_lossy().into_owned(),
            _dir: dir,
        }
    }

    /// A socket in the abstract namespace (`NOTIFY_SOCKET=@name`).
    fn abstract_named() -> Self {
        let name = format!("anima-e2e-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        socket.set_nonblocking(true).unwrap();
        Manager {
            socket: tokio::net::UnixDatagram::from_std(socket).unwrap(),
            address: format!("@{name}"),
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The environment systemd gives a `Type=notify` service, with a
    /// watchdog of `watchdog`.
    fn env(&self, watchdog: Duration) -> Vec<(String, String)> {
        vec![
            ("NOTIFY_SOCKET".into(), self.address.clone()),
            ("WATCHDOG_USEC".into(), watchdog.as_micros().to_string()),
        ]
    }

    /// The next datagram, which must come within `PATIENCE * 3`.
    async fn next(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let len = tokio::time::timeout(PATIENCE * 3, self.socket.recv(&mut buf))
            .await
            .expect("a datagram from the Core in time")
            .unwrap();
        String::from_utf8(buf[..len].to_vec()).unwrap()
    }

    /// Reads datagrams up to the first with the line `line`; returns it and
    /// those before it.
    async fn until(&self, line: &str) -> (String, Vec<String>) {
        let mut before = Vec::new();
        loop {
            let datagram = self.next().await;
            if datagram.lines().any(|l| l == line) {
                return (datagram, before);
            }
            before.push(datagram);
        }
    }
}

/// The `STATUS=` value of a datagram.
fn status(datagram: &str) -> Option<&str> {
    datagram.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// The environment a process was started with.
fn environ(pid: u64) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn has_var(environ: &[String], name: &str) -> bool {
    environ.iter().any(|v| v.starts_with(&format!("{name}=")))
}

#[tokio::test]
async fn systemd_ready_after_every_lease_then_watchdog_and_stopping() {
    let manager = Manager::at_path();
    let env = manager.env(Duration::from_millis(600));
    let mut core = CoreProcess::start_env(Some(&config("30s", "always")), |_| {}, &env).await;

    let (ready, before) = manager.until("READY=1").await;
    // At READY every module holds its lease; nothing before it said READY.
    for name in ["hasher", "kvstore", "tally"] {
        let m = core.module(name).await;
        assert_eq!(m["state"], "leased", "{name} at READY: {m}");
    }
    assert_eq!(status(&ready), Some("3 modules leased"), "{ready}");
    for d in &before {
        assert!(
            status(d).is_none_or(|s| s.starts_with("starting: ")),
            "before READY: {d}"
        );
    }

    // The Core has the manager's variables; the modules it started do not.
    let core_env = environ(u64::from(core.child.child.id().unwrap()));
    assert!(has_var(&core_env, "NOTIFY_SOCKET"));
    for name in ["hasher", "kvstore", "tally"] {
        let pid = core.module(name).await["pid"].as_u64().unwrap();
        let env = environ(pid);
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            assert!(!has_var(&env, var), "{name} (pid {pid}) has {var}");
        }
    }

    // The watchdog is pinged again and again (every 300 ms).
    for _ in 0..3 {
        manager.until("WATCHDOG=1").await;
    }

    core.sigterm().await;
    let (stopping, _) = manager.until("STOPPING=1").await;
    assert!(
        status(&stopping).is_some_and(|s| s.contains("shutting down")),
        "{stopping}"
    );
    let exit = tokio::time::timeout(PATIENCE * 2, core.child.child.wait())
        .await
        .expect("the Core exits")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn systemd_ready_names_the_modules_that_cannot_lease() {
    // hasher can never start (`false`, not restarted); tally requires it,
    // so waits for ever; kvstore leases. READY must not wait for ever, and
    // says which modules are not leased.
    let kvstore = format!(
        "type = \"resident-private\"\ncommand = \"{}\"\n",
        bin_path("anima-kvstore").display()
    );
    let hasher = "type = \"ephemeral\"\ncommand = \"false\"\nrestart = { policy = \"never\" }\n";
    let tally = format!(
        "type = \"resident-shared\"\ncommand = \"{}\"\nrequires = [\"urn:anima:module:hasher\"]\n",
        bin_path("anima-tally").display()
    );
    let modules = module_entry("kvstore", &kvstore)
        + &module_entry("hasher", hasher)
        + &module_entry("tally", &tally);
    // An abstract socket, as some service managers use.
    let manager = Manager::abstract_named();
    let env = manager.env(Duration::from_secs(20));
    let core = CoreProcess::start_env(Some(&(core_and_admin("") + &modules)), |_| {}, &env).await;

    let (ready, _) = manager.until("READY=1").await;
    assert_eq!(
        status(&ready),
        Some(
            "1 of 3 modules leased; not leased: urn:anima:module:hasher (failed), \
             urn:anima:module:tally (starting)"
        ),
        "{ready}"
    );
    assert_eq!(core.module("kvstore").await["state"], "leased");
    assert_eq!(core.module("hasher").await["state"], "failed");
}

/// Runs `anima serve --config FILE` on a file holding `text`; returns its
/// exit code and stderr.
async fn serve_config(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, text).unwrap();
    let out = tokio::process::Command::new(bin_path("anima"))
        .args(["serve", "--config"])
        .arg(Path::new(&file))
        .current_dir(dir.path())
        .output();
    let out = tokio::time::timeout(PATIENCE, out).await.unwrap().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn serve_says_one_problem_in_one_line_and_counts_several() {
    let (code, stderr) = serve_config("garbage = \n").await;
    assert_eq!(code, Some(1));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains("bad.toml:1:"), "{stderr}");
    assert!(!stderr.contains("problems"), "{stderr}");

    let (code, stderr) = serve_config("[core]\nurn = \"urn:anima:core:dev\"\n").await;
    assert_eq!(code, Some(1));
    let lines: Vec<&str> = stderr.lines().collect();
    let (last, each) = lines.split_last().unwrap();
    assert!(each.len() >= 2, "{stderr}");
    assert!(each.iter().all(|l| l.contains("bad.toml:")), "{stderr}");
    let counted = format!("error: {} problems in ", each.len());
    assert!(
        last.starts_with(&counted) && last.ends_with("bad.toml"),
        "{stderr}"
    );
}

/// The shipped unit file's `[Service]` settings, `key=value` as written.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut settings = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            settings.push((key.to_owned(), value.to_owned()));
        }
    }
    settings
}

#[test]
fn systemd_the_shipped_unit_is_a_hardened_notify_service() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/anima.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let settings = unit_settings(&unit);
    let get = |key: &str| {
        settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        (
            "ExecStart",
            "/usr/bin/anima serve --config /etc/anima/anima.toml",
        ),
        ("Restart", "on-failure"),
        ("KillMode", "mixed"),
        ("User", "anima"),
        ("StateDirectory", "anima"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(get(key), Some(want), "{key} in {}", path.display());
    }
    assert!(get("WatchdogSec").is_some(), "WatchdogSec");
    // Where systemd's own checker is installed, it accepts the unit (with
    // ExecStart pointing at the binary built here).
    let built = unit.replace("/usr/bin/anima", &bin_path("anima").to_string_lossy());
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("anima.service");
    std::fs::write(&copy, built).unwrap();
    match std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    {
        Ok(out) => crate::wait::assert_succeeded(&out),
        Err(e) => eprintln!("systemd-analyze not run ({e}); the keys were checked"),
    }
}
