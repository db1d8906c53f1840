//! Issue 14's acceptance for certificate rotation: under continuous calls
//! through the gateway to all three samples (≥ 200 calls/s), the Core's,
//! each module's and the user's certificates are renewed, then the CA is
//! rolled over (both CAs trusted, every leaf re-issued from the new one,
//! the old one removed). No call fails, every lease is re-established under
//! the new certificates (the audit log says so), and no process restarts.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anima_protocol::{ClientTls, Connection, PeerPolicy, TlsIdentity, TrustRoot, UrnKind};
use anima_sample_modules::pb::hasher_client::HasherClient;
use anima_sample_modules::pb::kv_store_client::KvStoreClient;
use anima_sample_modules::pb::tally_client::TallyClient;
use anima_sample_modules::pb::{DigestRequest, IncrementRequest, PutRequest};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::gateway::started;
use super::serve::CoreProcess;

const SAMPLES: [&str; 3] = ["hasher", "kvstore", "tally"];

/// Calls per second each sample gets (three samples).
const RATE_PER_SAMPLE: u64 = 100;

/// How long each kvstore call works (`delay_ms`).
const KVSTORE_WORK_MS: u64 = 50;

/// Continuous gateway calls to the three samples, one task each, from the
/// user connection of the moment.
struct Load {
    conn: watch::Sender<Connection>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(conn: Connection) -> Self {
        let (tx, _) = watch::channel(conn);
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let tasks = SAMPLES
            .iter()
            .map(|&sample| {
                let (rx, ok, failures, stop) =
                    (tx.subscribe(), ok.clone(), failures.clone(), stop.clone());
                tokio::spawn(async move {
                    // A call every tick, each in a task of its own: the rate
                    // holds however long calls take, and calls overlap.
                    let mut tick =
                        tokio::time::interval(Duration::from_millis(1000 / RATE_PER_SAMPLE));
                    let mut calls = tokio::task::JoinSet::new();
                    let mut n = 0u64;
                    while !stop.is_cancelled() {
                        tick.tick().await;
                        n += 1;
                        let conn = rx.borrow().clone();
                        let (ok, failures) = (ok.clone(), failures.clone());
                        calls.spawn(async move {
                            let call = tokio::time::timeout(
                                Duration::from_secs(10),
                                call(sample, &conn, n),
                            );
                            match call.await {
                                Ok(Ok(())) => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(Err(status)) => failures.lock().unwrap().push(format!(
                                    "{sample}: {:?} {}",
                                    status.code(),
                                    status.message()
                                )),
                                Err(_) => failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("{sample}: no answer within 10 s")),
                            }
                        });
                        while calls.try_join_next().is_some() {}
                    }
                    while calls.join_next().await.is_some() {}
                })
            })
            .collect();
        Load {
            conn: tx,
            ok,
            failures,
            stop,
            tasks,
            started: Instant::now(),
        }
    }

    /// New calls go over `conn` from now on; calls on the previous one
    /// finish there.
    fn switch(&self, conn: Connection) {
        self.conn.send_replace(conn);
    }

    /// Calls answered so far, and the failures.
    fn so_far(&self) -> (u64, Vec<String>) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }

    /// Stops; returns (calls answered, failures, calls per second).
    async fn stop(self) -> (u64, Vec<String>, f64) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let (ok, failures) = (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        );
        (ok, failures, ok as f64 / elapsed)
    }
}

async fn call(sample: &str, conn: &Connection, n: u64) -> Result<(), tonic::Status> {
    match sample {
        "hasher" => {
            HasherClient::new(conn.channel())
                .digest(DigestRequest {
                    text: format!("call {n}"),
                })
                .await?;
        }
        "kvstore" => {
            KvStoreClient::new(conn.channel())
                .put(PutRequest {
                    entries: [(format!("k{}", n % 16), format!("v{n}"))].into(),
                    // Work that takes a while: several calls are in flight
                    // whenever a lease is replaced.
                    delay_ms: KVSTORE_WORK_MS,
                })
                .await?;
        }
        _ => {
            TallyClient::new(conn.channel())
                .increment(IncrementRequest {
                    counter: "calls".into(),
                    by: 1,
                })
                .await?;
        }
    }
    Ok(())
}

fn certs(core: &CoreProcess) -> std::path::PathBuf {
    core.dir.path().join("certs/dev")
}

/// The fingerprint of the certificate in `certs/dev/<stem>.pem`, as hex.
fn fingerprint(dir: &Path, stem: &str) -> String {
    anima_protocol::transport::leaf_fingerprint(&dir.join(format!("{stem}.pem")))
        .unwrap()
        .to_string()
}

/// A user connection to the Core as `certs/dev/user-dev`, trusting the CA
/// file as it is now.
async fn user(core: &CoreProcess) -> Connection {
    super::gateway::user(core, "user-dev").await
}

/// Re-issues the Core's certificates (its own and its endpoint's P-256
/// pair) from the CA in the directory, as an operator would.
fn renew_core(dir: &Path) {
    anima_certs::issue_into_dir(dir, UrnKind::Core, "dev", 30, true).unwrap();
    anima_certs::issue_endpoint_into_dir(dir, "dev", 30, true).unwrap();
}

fn renew_module(dir: &Path, name: &str) {
    anima_certs::issue_into_dir(dir, UrnKind::Module, name, 30, true).unwrap();
}

fn renew_user(dir: &Path) {
    anima_certs::issue_into_dir(dir, UrnKind::User, "dev", 30, true).unwrap();
}

/// Waits until each sample's active lease is bound to the certificates in
/// the directory now (the Core's and its own), as its `accepted` audit
/// record says, with no call failed meanwhile; returns the lease ids.
async fn all_leased_under_current(core: &CoreProcess, load: &Load) -> Vec<String> {
    let dir = certs(core);
    let core_fp = fingerprint(&dir, "core-dev");
    let mut ids = Vec::new();
    for name in SAMPLES {
        let module_fp = fingerprint(&dir, &format!("module-{name}"));
        ids.push(super::rotation::leased_under(core, name, &core_fp, Some(&module_fp)).await);
        let (_, failures) = load.so_far();
        assert!(failures.is_empty(), "calls failed: {failures:?}");
    }
    ids
}

/// How much the Core has logged so far (a mark for [`reloaded_since`]).
fn log_mark(core: &CoreProcess) -> usize {
    std::fs::read_to_string(core.dir.path().join("stderr.log"))
        .unwrap_or_default()
        .len()
}

/// Waits until the Core and each of the three modules have reloaded their
/// certificates since `mark`, as the Core's log (which carries the
/// modules' lines) says.
async fn reloaded_since(core: &CoreProcess, mark: usize) {
    let log = core.dir.path().join("stderr.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let since = text.get(mark..).unwrap_or_default();
        let reloaded = |who: Option<&str>| {
            since
                .lines()
                .filter(|l| l.contains("certificates reloaded"))
                .any(|l| match who {
                    Some(m) => l.contains(&format!("urn:anima:module:{m}")),
                    None => !l.contains("urn:anima:module:"),
                })
        };
        if reloaded(None) && SAMPLES.iter().all(|m| reloaded(Some(m))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited for the Core and each module to reload; the log since:\n{since}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pids of the three samples.
async fn module_pids(core: &CoreProcess) -> Vec<u64> {
    let mut pids = Vec::new();
    for name in SAMPLES {
        let m = core.module(name).await;
        assert_eq!(m["restarts"], 0, "{name}: {m}");
        pids.push(m["pid"].as_u64().unwrap());
    }
    pids
}

#[tokio::test]
async fn serial_rotation_every_certificate_and_the_ca_under_load_with_no_failed_call() {
    let core = started().await;
    let dir = certs(&core);
    let pids = module_pids(&core).await;
    let core_pid = core.child.child.id();
    let load = Load::start(user(&core).await);
    let mut leases = vec![all_leased_under_current(&core, &load).await];
    let old_user =
        TlsIdentity::from_pem_files(&dir.join("user-dev.pem"), &dir.join("user-dev.key")).unwrap();

    // The Core's certificates.
    renew_core(&dir);
    leases.push(all_leased_under_current(&core, &load).await);

    // Each module's.
    for name in SAMPLES {
        renew_module(&dir, name);
    }
    leases.push(all_leased_under_current(&core, &load).await);

    // The user's: a new connection, new calls on it.
    renew_user(&dir);
    let renewed_user = user(&core).await;
    assert_eq!(
        renewed_user.peer().local_fingerprint().to_string(),
        fingerprint(&dir, "user-dev")
    );
    load.switch(renewed_user);

    // The CA: both trusted, every leaf re-issued from the new one, the old
    // one removed.
    let mark = log_mark(&core);
    anima_certs::begin_rollover(&dir, &anima_certs::RolloverOptions::default()).unwrap();
    reloaded_since(&core, mark).await;
    renew_core(&dir);
    for name in SAMPLES {
        renew_module(&dir, name);
    }
    // Every leaf in the directory, those of the samples not hosted here
    // too: `--finish` refuses while one is signed by the old CA.
    for name in ["notes", "ratelimit", "logger", "scripts", "orchestrator"] {
        renew_module(&dir, name);
    }
    renew_user(&dir);
    load.switch(user(&core).await);
    leases.push(all_leased_under_current(&core, &load).await);
    let mark = log_mark(&core);
    anima_certs::finish_rollover(&dir, false).unwrap();
    reloaded_since(&core, mark).await;

    // The old CA is trusted no more: a certificate from it is refused (in
    // TLS 1.3 the client learns it at its first call).
    let old = ClientTls::new(
        old_user,
        TrustRoot::from_pem_file(&dir.join("ca.pem")).unwrap(),
    )
    .dial(&core.admin, PeerPolicy::kind(UrnKind::Core))
    .await;
    if let Ok(old) = old {
        let answer = call("hasher", &old, 0).await;
        assert!(
            answer.is_err(),
            "a user certificate from the removed CA got in"
        );
    }

    // Calls go on under the new CA alone.
    let (before, _) = load.so_far();
    anima_tests::eventually("more calls after the rollover", || {
        load.so_far().0 >= before + 3 * RATE_PER_SAMPLE
    })
    .await;
    let (ok, failures, rate) = load.stop().await;
    eprintln!(
        "rotation under load: {ok} calls, {rate:.0}/s, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "calls failed: {failures:?}");
    assert!(rate >= 200.0, "only {rate:.0} calls/s");

    // No process restarted.
    assert_eq!(core.child.child.id(), core_pid);
    assert_eq!(module_pids(&core).await, pids);

    // Every replaced lease was revoked as such, after its successor was
    // open; each generation is a new lease.
    let audit = std::fs::read_to_string(core.dir.path().join("audit.jsonl")).unwrap();
    for (generation, pair) in leases.windows(2).enumerate() {
        for (old, new) in pair[0].iter().zip(&pair[1]) {
            assert_ne!(old, new, "generation {generation}");
            assert!(
                audit.lines().any(|l| l.contains(old.as_str())
                    && l.contains("\"revoked\"")
                    && l.contains("under renewed certificates")),
                "{old} revoked as replaced"
            );
        }
    }
}
