//! The sample binaries as real processes, started the way a Core starts
//! them (the launch environment, the ready line on stdout), leased by the
//! SDK's fake Core over real mTLS with certificates minted here.

// Tests: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod harness;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anima_certs::{CertAuthority, LeafSpec};
use anima_module_sdk::testing::{FakeCore, FakeLease};
use anima_module_sdk::{Contract, SdkError};
use anima_protocol::Urn;
use anima_protocol::pb::probe_client::ProbeClient;
use anima_protocol::pb::{ProbeReading, ReadRequest, TouchRequest};
use anima_sample_modules::pb::hasher_client::HasherClient;
use anima_sample_modules::pb::tally_client::TallyClient;
use anima_sample_modules::pb::{DigestRequest, GetCounterRequest, IncrementRequest};
use anima_sample_modules::{hasher, kvstore, tally};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use harness::{cache_info, refused_wrong_core};

const CORE: &str = "urn:anima:core:launcher";
const OTHER_CORE: &str = "urn:anima:core:other";
const TTL: Duration = Duration::from_secs(10);

/// Waits for `f`, failing the test after a bound generous enough for real
/// processes.
async fn within<F: Future>(f: F) -> F::Output {
    harness::within_for(Duration::from_secs(20), f).await
}

/// A CA and its PEM files, as a deployment would hand them out.
struct Pki {
    ca: CertAuthority,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let ca = CertAuthority::generate("samples test CA", Duration::from_secs(86_400)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        Pki { ca, dir }
    }

    /// Writes `urn`'s certificate and key; returns their paths.
    fn files(&self, urn: &Urn) -> (PathBuf, PathBuf) {
        let leaf = self.ca.issue(&LeafSpec::new(urn.clone())).unwrap();
        let name = urn.as_str().replace(':', "_");
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, leaf.cert_pem()).unwrap();
        std::fs::write(&key, leaf.key_pem()).unwrap();
        (cert, key)
    }

    /// Where a hasher started by [`Process::sample`] keeps its scratch files.
    fn hasher_scratch(&self) -> PathBuf {
        self.dir.path().join("hasher-scratch")
    }

    fn core(&self, urn: &str) -> FakeCore {
        let leaf = self.ca.issue(&LeafSpec::new(urn.parse().unwrap())).unwrap();
        FakeCore::new(leaf.identity().unwrap(), self.ca.trust_root().unwrap()).unwrap()
    }
}

/// A started module process (killed when dropped).
struct Process {
    child: Child,
    addr: anima_protocol::transport::Address,
    contract: Contract,
    stdout: tokio::task::JoinHandle<Vec<String>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Process {
    /// Starts `bin` under the launch protocol, bound to `CORE`, with `env`
    /// added; returns once it printed its ready line.
    async fn start(pki: &Pki, bin: &str, contract: Contract, env: &[(&str, &Path)]) -> Self {
        let (cert, key) = pki.files(&contract.urn);
        let mut command = Command::new(bin);
        command
            .env("ANIMA_CERT", cert)
            .env("ANIMA_KEY", key)
            .env("ANIMA_CA", pki.dir.path().join("ca.pem"))
            .env("ANIMA_CORE_URN", CORE)
            .env("ANIMA_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = within(stdout.next_line())
            .await
            .unwrap()
            .expect("a ready line");
        let (urn, addr) = anima_protocol::launch::parse_ready_line(&line).expect(&line);
        assert_eq!(urn, contract.urn);
        // Anything printed after the ready line, collected until exit.
        let stdout = tokio::spawn(async move {
            let mut rest = Vec::new();
            while let Ok(Some(line)) = stdout.next_line().await {
                rest.push(line);
            }
            rest
        });
        Process {
            child,
            addr,
            contract,
            stdout,
            stderr,
        }
    }

    /// Starts the sample binary `name` with the environment it needs.
    async fn sample(pki: &Pki, name: &str) -> Self {
        let scratch = pki.hasher_scratch();
        let (bin, contract, env): (&str, Contract, &[(&str, &Path)]) = match name {
            "hasher" => (
                env!("CARGO_BIN_EXE_anima-hasher"),
                hasher::contract(),
                &[(hasher::SCRATCH_DIR_ENV, &scratch)],
            ),
            "kvstore" => (
                env!("CARGO_BIN_EXE_anima-kvstore"),
                kvstore::contract(),
                &[(kvstore::CACHE_LIMIT_ENV, Path::new("65536"))],
            ),
            "tally" => (env!("CARGO_BIN_EXE_anima-tally"), tally::contract(), &[]),
            _ => panic!("no sample {name}"),
        };
        Self::start(pki, bin, contract, env).await
    }

    async fn lease(&self, core: &FakeCore) -> Result<FakeLease, SdkError> {
        core.lease_at(
            self.addr.clone(),
            &self.contract.urn,
            self.contract.methods.clone(),
            TTL,
        )
        .await
    }
}

#[tokio::test]
async fn e4_e5_hasher_process_cleans_up_and_exits_by_itself() {
    let pki = Pki::new();
    let scratch = pki.hasher_scratch();
    let mut module = Process::sample(&pki, "hasher").await;
    let pid = std::fs::read_to_string(scratch.join(hasher::PID_FILE)).unwrap();
    assert_eq!(pid.trim(), module.child.id().unwrap().to_string());

    let lease = module.lease(&pki.core(CORE)).await.unwrap();
    let reply = HasherClient::new(lease.channel())
        .digest(DigestRequest { text: "abc".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.sha256_hex.starts_with("ba7816bf"));

    lease.expire().await.unwrap();
    let status = within(module.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(!scratch.exists());
    let stdout = within(module.stdout).await.unwrap();
    assert!(
        stdout.is_empty(),
        "stdout carries the ready line only: {stdout:?}"
    );
    let stderr = within(module.stderr).await.unwrap();
    assert!(stderr.contains("cleanup complete"), "{stderr}");
}

#[tokio::test]
async fn r2_r3_kvstore_process_keeps_its_cache_for_its_core_only() {
    let pki = Pki::new();
    let module = Process::sample(&pki, "kvstore").await;
    let core = pki.core(CORE);

    // The launching Core only, from the start.
    let refused = module.lease(&pki.core(OTHER_CORE)).await;
    assert!(refused_wrong_core(&refused), "{:?}", refused.err());

    let first = module.lease(&core).await.unwrap();
    let before = cache_info(&first).await;
    assert_eq!(before.pid, module.child.id().unwrap());
    assert_eq!(before.entries, 6542);
    first.expire().await.unwrap();

    // Standby, then a new lease from the same Core: same process, same cache.
    let second = module.lease(&core).await.unwrap();
    assert_eq!(cache_info(&second).await, before);
}

#[tokio::test]
async fn s3_s4_tally_process_serves_two_cores_apart() {
    let pki = Pki::new();
    let module = Process::sample(&pki, "tally").await;
    let a = module.lease(&pki.core(CORE)).await.unwrap();
    let b = module.lease(&pki.core(OTHER_CORE)).await.unwrap();
    let mut client_a = TallyClient::new(a.channel());
    let mut client_b = TallyClient::new(b.channel());
    let request = |by| IncrementRequest {
        counter: "hits".into(),
        by,
    };
    assert_eq!(
        client_a
            .increment(request(5))
            .await
            .unwrap()
            .into_inner()
            .value,
        5
    );
    assert_eq!(
        client_b
            .increment(request(1))
            .await
            .unwrap()
            .into_inner()
            .value,
        1
    );
    a.revoke().await.unwrap();
    let get = GetCounterRequest {
        counter: "hits".into(),
    };
    assert_eq!(client_b.get(get).await.unwrap().into_inner().value, 1);
}

#[tokio::test]
async fn i2_every_sample_process_serves_the_conformance_probe() {
    let pki = Pki::new();
    for name in ["hasher", "kvstore", "tally"] {
        let module = Process::sample(&pki, name).await;
        let urn = &module.contract.urn;
        let lease = module.lease(&pki.core(CORE)).await.unwrap();
        let mut probe = ProbeClient::new(lease.channel());
        let touched = probe
            .touch(TouchRequest { hold_ms: 1 })
            .await
            .unwrap()
            .into_inner();
        let one = ProbeReading {
            touches: 1,
            executions: 1,
            committed: 1,
        };
        assert_eq!(touched, one, "{urn}");
        let read = probe.read(ReadRequest {}).await.unwrap().into_inner();
        assert_eq!(read, one, "{urn}");
    }
}
