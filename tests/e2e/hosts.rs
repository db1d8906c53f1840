//! Modules on other hosts (issue 14): a shared (Type III) module on one
//! host, leased by two Cores on two others, across a real network — network
//! namespaces, each joined by a veth pair to a bridge (the LAN). Needs root
//! (`ip netns`); where that is not permitted the tests say so and pass
//! without checking anything.
//!
//! The test process itself sits on the LAN too (a veth from the root
//! namespace), so it dials the Cores' endpoints as a user on another host
//! would.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anima_protocol::UrnKind;
use anima_protocol::pb::probe_client::ProbeClient;
use anima_protocol::pb::{ProbeReading, ReadRequest, TouchRequest};
use anima_sample_modules::pb::tally_client::TallyClient;
use anima_sample_modules::pb::{GetCounterRequest, IncrementRequest};
use anima_tests::{Child, bin_path};

use super::gateway::user;
use super::serve::CoreProcess;

/// The module's port on its host.
const MODULE_PORT: u16 = 7443;

/// The Cores' lease TTL (`[leases] ttl` in [`core_on`]), whole seconds.
const TTL: std::time::Duration = std::time::Duration::from_secs(3);

/// Time allowed past a deadline for logging and polling.
const MARGIN: std::time::Duration = std::time::Duration::from_millis(1500);

/// How long the call in flight at the cut holds before it would commit:
/// past the module's lease end (the TTL after its last renewal), and well
/// before the test reads what was committed, after the heal.
const HOLD_MS: u32 = 6_000;

/// How long the partition lasts: several dials, each past the restart
/// policy's limit of one failed start (see [`core_on`]).
const PARTITION: std::time::Duration = std::time::Duration::from_secs(8);

/// A LAN of hosts: one namespace per host and one for the bridge, removed
/// on drop.
struct Lan {
    /// Prefix of every name made here (namespaces and links).
    tag: String,
    /// Hosts by name, in order: host `i` has address `10.N.0.(i+1)`.
    hosts: Vec<String>,
    /// `N` in `10.N.0.0/24`.
    subnet: u8,
}

/// Runs `ip ARGS`; the error is its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lan {
    /// The hosts `names`, each on the LAN, with the test process at
    /// `10.N.0.254`; `Err` when namespaces cannot be made here (not root,
    /// no `ip`), saying why.
    fn create(names: &[&str]) -> Result<Self, String> {
        let pid = std::process::id();
        let lan = Lan {
            tag: format!("an{}", pid % 100_000),
            hosts: names.iter().map(|n| (*n).to_owned()).collect(),
            subnet: u8::try_from(100 + pid % 150).unwrap_or(100),
        };
        lan.build()?;
        Ok(lan)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    fn bridge_ns(&self) -> String {
        self.ns("lan")
    }

    /// The link on the bridge's side for host `i` (`r`: the test process).
    fn port(&self, i: &str) -> String {
        format!("{}b{i}", self.tag)
    }

    fn build(&self) -> Result<(), String> {
        let lan = self.bridge_ns();
        ip(&["netns", "add", &lan])?;
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan, "link", "set", "br0", "up"])?;
        for (i, host) in self.hosts.iter().enumerate() {
            let ns = self.ns(host);
            let inner = format!("{}h{i}", self.tag);
            let port = self.port(&i.to_string());
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &inner, "type", "veth", "peer", "name", &port])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &port, "netns", &lan])?;
            ip(&["-n", &lan, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", self.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // The test process: a veth from the root namespace.
        let (mine, port) = (format!("{}r", self.tag), self.port("r"));
        ip(&["link", "add", &mine, "type", "veth", "peer", "name", &port])?;
        ip(&["link", "set", &port, "netns", &lan])?;
        ip(&["-n", &lan, "link", "set", &port, "master", "br0", "up"])?;
        let addr = format!("10.{}.0.254/24", self.subnet);
        ip(&["addr", "add", &addr, "dev", &mine])?;
        ip(&["link", "set", &mine, "up"])?;
        Ok(())
    }

    /// Host `i`'s address.
    fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, u8::try_from(i + 1).unwrap())
    }

    fn index(&self, host: &str) -> usize {
        self.hosts.iter().position(|h| h == host).unwrap()
    }

    /// `host`'s address.
    fn addr_of(&self, host: &str) -> Ipv4Addr {
        self.addr(self.index(host))
    }

    /// Starts `program ARGS` on `host`, in `cwd` (its stderr in
    /// `cwd/stderr.log`), with `env` added.
    fn spawn(
        &self,
        host: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        cwd: &Path,
    ) -> Child {
        let ns = self.ns(host);
        let program = program.to_string_lossy();
        let mut full = vec!["netns", "exec", &ns, &program];
        full.extend(args);
        Child::spawn_env_in(Path::new("ip"), &full, env, cwd)
    }

    /// Takes `host` off the LAN (its link on the bridge down), or puts it back.
    fn link(&self, host: &str, up: bool) {
        let port = self.port(&self.index(host).to_string());
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.bridge_ns(), "link", "set", &port, state]).unwrap();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace deletes its links, and a veth with either end.
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &self.ns(host)]);
        }
        let _ = ip(&["netns", "del", &self.bridge_ns()]);
    }
}

/// The LAN, or `None` after saying why these tests check nothing here.
fn lan(names: &[&str]) -> Option<Lan> {
    match Lan::create(names) {
        Ok(lan) => Some(lan),
        Err(why) => {
            eprintln!(
                "SKIPPED: modules-on-other-hosts tests need network namespaces (root and `ip`): {why}"
            );
            None
        }
    }
}

/// A directory holding `certs/dev` (copied from `from`, one CA for all).
fn host_dir(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs/dev");
    std::fs::create_dir_all(&certs).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), certs.join(entry.file_name())).unwrap();
    }
    dir
}

/// Starts `anima serve` as `urn:anima:core:NAME` on `host`, dialling the
/// tally at `module`, its endpoint on `host`'s address.
async fn core_on(lan: &Lan, host: &str, name: &str, certs: &Path, module: &str) -> CoreProcess {
    let dir = host_dir(certs);
    let config = format!(
        r#"[core]
urn = "urn:anima:core:{name}"
cert = "certs/dev/core-{name}.pem"
key = "certs/dev/core-{name}.key"
ca = "certs/dev/ca.pem"
audit_log = "audit.jsonl"

[admin]
listen = "{addr}:0"
operators = ["urn:anima:user:dev"]

[leases]
ttl = "{ttl}s"

[[module]]
urn = "urn:anima:module:tally"
type = "resident-shared"
endpoint = "{module}"
# One failed start is the limit: a module that cannot be reached must not
# count as one that failed.
restart = {{ max_restarts = 1, window = "10m", backoff = "100ms" }}

[[policy]]
user = "urn:anima:user:dev"
allow = ["urn:anima:module:tally"]
"#,
        addr = lan.addr_of(host),
        ttl = TTL.as_secs(),
    );
    std::fs::write(dir.path().join("anima.toml"), config).unwrap();
    let child = lan.spawn(
        host,
        &bin_path("anima"),
        &["serve", "--config", "anima.toml"],
        &[],
        dir.path(),
    );
    CoreProcess::ready(child, dir).await
}

/// Adds `by` to counter `visits` through `core`'s gateway; returns the
/// counter as that Core's lease sees it.
async fn count(core: &CoreProcess, by: i64) -> i64 {
    let conn = user(core, "user-dev").await;
    let mut tally = TallyClient::new(conn.channel());
    tally
        .increment(IncrementRequest {
            counter: "visits".into(),
            by,
        })
        .await
        .unwrap();
    tally
        .get(GetCounterRequest {
            counter: "visits".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .value
}

/// The module's probe counters (PROTOCOL.md §8) read through `core`'s
/// lease: touches entered and committed since the process started.
async fn probe_reading(core: &CoreProcess) -> ProbeReading {
    let conn = user(core, "user-dev").await;
    ProbeClient::new(conn.channel())
        .read(ReadRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The tally on host `m`, leased by Cores on hosts `a` and `c`: calls go
/// through either Core across the LAN, and each Core's lease sees only its
/// own counters (S3, S4). Host `m` off the LAN, with a call in flight: both
/// Cores lose their lease and report the module unreachable while they keep
/// dialling it, the module reaches zero-lease (standby) when the leases run
/// out, and the call in flight commits nothing; back on the LAN, both Cores
/// lease it again by themselves.
#[tokio::test]
async fn serial_hosts_a_shared_module_serves_two_cores_on_other_hosts_and_survives_a_partition() {
    let Some(lan) = lan(&["a", "m", "c"]) else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    anima_certs::init_dir(certs.path(), &anima_certs::InitOptions::default()).unwrap();
    for core in ["a", "c"] {
        anima_certs::issue_into_dir(certs.path(), UrnKind::Core, core, 1, false).unwrap();
    }
    // The module, started by "infrastructure" on host m.
    let module_dir = host_dir(certs.path());
    let module_addr = format!("{}:{MODULE_PORT}", lan.addr_of("m"));
    let dev = module_dir.path().join("certs/dev");
    let file = |name: &str| dev.join(name).to_string_lossy().into_owned();
    let env = [
        ("ANIMA_CERT".to_owned(), file("module-tally.pem")),
        ("ANIMA_KEY".to_owned(), file("module-tally.key")),
        ("ANIMA_CA".to_owned(), file("ca.pem")),
        ("ANIMA_LISTEN".to_owned(), module_addr.clone()),
    ];
    let mut module = lan.spawn("m", &bin_path("anima-tally"), &[], &env, module_dir.path());
    module.line(anima_protocol::launch::READY_PREFIX).await;

    let core_a = core_on(&lan, "a", "a", certs.path(), &module_addr).await;
    let core_c = core_on(&lan, "c", "c", certs.path(), &module_addr).await;
    for core in [&core_a, &core_c] {
        core.wait_leased("tally").await;
    }
    // Each Core's lease has its own counters.
    assert_eq!(count(&core_a, 2).await, 2);
    assert_eq!(count(&core_c, 5).await, 5);
    assert_eq!(count(&core_a, 1).await, 3);

    // Partition: the module's host leaves the LAN. Each Core's lease ends
    // (its renewals go unanswered), then the Core reports the module
    // unreachable and keeps dialling it, however long the partition lasts
    // (longer than the restart policy's window: not a failure of the
    // module's); the module's own leases run out and it goes to standby.
    // A call in flight at the cut (through Core a) holds for longer than
    // the module's lease can last without renewals: it must not commit.
    let before = probe_reading(&core_c).await;
    let conn = user(&core_a, "user-dev").await;
    let held = tokio::spawn(async move {
        ProbeClient::new(conn.channel())
            .touch(TouchRequest { hold_ms: HOLD_MS })
            .await
    });
    let entered = tokio::time::Instant::now() + anima_tests::PATIENCE;
    while probe_reading(&core_c).await.executions == before.executions {
        assert!(
            tokio::time::Instant::now() < entered,
            "the held call never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    lan.link("m", false);
    let cut = tokio::time::Instant::now();
    // Both sides are at zero-lease within the lease TTL of the cut: the
    // renewals go unanswered, and each side's lease runs out on its own
    // clock (the Cores' first).
    let log = module_dir.path().join("stderr.log");
    anima_tests::eventually("the module at zero-lease", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("zero-lease")
    })
    .await;
    let module_done = cut.elapsed();
    for core in [&core_a, &core_c] {
        core.wait_module("tally", "its lease ended", |m| m["state"] != "leased")
            .await;
    }
    let cores_done = cut.elapsed();
    eprintln!(
        "after the cut: module at zero-lease in {module_done:?}, both Cores' leases ended by {cores_done:?}"
    );
    assert!(
        module_done <= TTL + MARGIN,
        "module at zero-lease after {module_done:?}"
    );
    assert!(
        cores_done <= TTL + MARGIN,
        "Cores' leases ended after {cores_done:?}"
    );
    // Then each Core reports the module unreachable and keeps dialling it.
    for core in [&core_a, &core_c] {
        let row = core
            .wait_module("tally", "unreachable", |m| m["state"] == "unreachable")
            .await;
        let detail = row["detail"].as_str().unwrap();
        assert!(detail.contains(&module_addr), "{row}");
    }
    // Still unreachable, not failed, after as many dials as its restart
    // policy allows failed starts, and more.
    let partitioned = tokio::time::Instant::now();
    while partitioned.elapsed() < PARTITION {
        for core in [&core_a, &core_c] {
            let row = core.module("tally").await;
            assert_eq!(row["state"], "unreachable", "{row}");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }

    // The held call was refused when Core a's lease ended.
    let refused = held
        .await
        .unwrap()
        .expect_err("a call across the cut cannot succeed");
    eprintln!(
        "the call in flight at the cut: {:?} {}",
        refused.code(),
        refused.message()
    );
    assert!(cut.elapsed() > std::time::Duration::from_millis(u64::from(HOLD_MS)));

    // Healed: both Cores lease it again, with no operator action.
    lan.link("m", true);
    for core in [&core_a, &core_c] {
        core.wait_leased("tally").await;
    }
    // Past its hold, the call in flight at the cut committed nothing: the
    // module halted it at its lease's end (nothing commits after it).
    let after = probe_reading(&core_a).await;
    assert_eq!(after.executions, before.executions + 1, "{after:?}");
    assert_eq!(
        after.committed, before.committed,
        "committed after the lease ended: {after:?}"
    );
    assert_eq!(count(&core_a, 1).await, 1, "a new lease starts empty (S9)");
    assert_eq!(count(&core_c, 1).await, 1);
}
