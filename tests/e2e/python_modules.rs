//! The Python reference module (`tests/python/module`, written from
//! PROTOCOL.md alone) as a caller of another module's interface: it finds
//! the kvstore sample in the Core's registry (P4) and calls it through the
//! Core, never directly (P6), as far as a `[[permission]]` lets it (P7).
//!
//! The module runs under `PYMODULE_KV_SELFTEST=1`: after its first lease it
//! discovers `anima.sample/kv`, puts and gets one key through the Core, and
//! writes one `PYMODULE KV SELFTEST …` line to stderr, which the Core
//! forwards into its log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anima_certs::{IssueOptions, KeyType};
use anima_protocol::UrnKind;
use anima_sample_modules::pb::GetRequest;
use anima_sample_modules::pb::kv_store_client::KvStoreClient;
use anima_tests::PATIENCE;
use serde_json::Value;

use super::gateway::user;
use super::serve::{CoreProcess, core_and_admin, module_entry, sample};

/// The selftest's line, as the Core logs it.
const SELFTEST: &str = "PYMODULE KV SELFTEST ";
/// The Python module.
const PYKV: &str = "urn:anima:module:pykv";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_owned()
}

/// The Python module's contract: resident private, started by the Core,
/// requiring kv `>=1.0`; its methods are the probe's, which it serves.
const PYKV_CONTRACT: &str = r#"urn = "urn:anima:module:pykv"
version = "0.1.0"
type = "resident-private"
init = "core-started"
methods = ["/anima.v1.Probe/Touch", "/anima.v1.Probe/Read"]
max_lease = "30s"
requires = [{ interface = "anima.sample/kv", version = ">=1.0" }]
"#;

/// A `[[permission]]` for the Python module on kv.
const PYKV_MAY_CALL_KV: &str = r#"
[[permission]]
module = "urn:anima:module:pykv"
interface = "anima.sample/kv"
"#;

/// The kvstore sample, the Python module (its P-256 certificate, the P-256
/// endpoint certificate of the Core for it, the selftest on) and
/// `permissions`; the Core has the repository's interface definitions.
fn config(permissions: &str) -> String {
    let core = core_and_admin(&format!(
        "endpoint_cert = \"certs/dev/core-dev.endpoint.pem\"\n\
         endpoint_key = \"certs/dev/core-dev.endpoint.key\"\n\
         interfaces = \"{}\"\n",
        repo().join("interfaces").display()
    ));
    let kvstore = module_entry(
        "kvstore",
        &format!(
            r#"type = "resident-private"
command = "{}"

[module.env]
KVSTORE_CACHE_LIMIT = "65536"
"#,
            sample("kvstore")
        ),
    );
    let python = module_entry(
        "pykv",
        &format!(
            r#"type = "resident-private"
command = "python3"
args = ["{script}", "pykv.toml"]
contract = "pykv.toml"
core_cert = "endpoint"

[module.env]
PYMODULE_KV_SELFTEST = "1"
"#,
            script = repo()
                .join("tests/python/module/anima_pymodule.py")
                .display(),
        ),
    );
    format!("{core}{kvstore}{python}{permissions}")
}

/// Starts the Core with [`config`], the Python module's P-256 certificate
/// and its contract written first.
async fn start(permissions: &str) -> CoreProcess {
    CoreProcess::start_with(Some(&config(permissions)), |certs| {
        let p256 = IssueOptions {
            days: 1,
            key_type: KeyType::P256,
            force: false,
        };
        anima_certs::issue_into_dir_with(certs, UrnKind::Module, "pykv", &p256).unwrap();
        let dir = certs.parent().and_then(Path::parent).unwrap();
        std::fs::write(dir.join("pykv.toml"), PYKV_CONTRACT).unwrap();
    })
    .await
}

/// Waits for the selftest's line in the Core's log; returns what the module
/// wrote after [`SELFTEST`] (the Core's log adds the module's URN as a
/// field after the text, which is left out).
async fn selftest_outcome(core: &CoreProcess) -> String {
    let path = core.dir.path().join("stderr.log");
    let field = format!(" module={PYKV}");
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let found = log.lines().find_map(|l| {
            let (_, rest) = l.split_once(SELFTEST)?;
            let rest = rest.trim_end();
            Some(rest.strip_suffix(field.as_str()).unwrap_or(rest).to_owned())
        });
        if let Some(outcome) = found {
            return outcome;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no selftest line from the Python module; the Core's log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn p4_p6_the_python_module_discovers_kv_and_calls_it_through_the_core() {
    let core = start(PYKV_MAY_CALL_KV).await;
    let outcome = selftest_outcome(&core).await;
    assert!(outcome.starts_with("ok "), "{outcome}");
    assert!(outcome.contains(" providers=1 "), "{outcome}");
    assert!(
        outcome.contains(" provider=urn:anima:module:kvstore "),
        "{outcome}"
    );
    assert!(outcome.contains(" version=1 "), "{outcome}");
    assert!(outcome.ends_with(" value=from python"), "{outcome}");
    // The Core found the module's own contract (its `requires` included)
    // to match its copy, and leased it once.
    let row = core.wait_leased("pykv").await;
    assert_eq!(row["restarts"], 0, "{row}");
    // The write is in the provider's store: read back through the Core
    // with the Python module's certificate, by a Rust client this time.
    let as_pykv = user(&core, "module-pykv").await;
    let read = KvStoreClient::new(as_pykv.channel())
        .get(GetRequest { key: "py".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (read.found, read.value.as_str(), read.version),
        (true, "from python", 1)
    );
}

#[tokio::test]
async fn p7_without_a_permission_the_python_module_discovers_nothing_and_is_refused() {
    let core = start("").await;
    let outcome = selftest_outcome(&core).await;
    assert!(outcome.starts_with("failed: "), "{outcome}");
    assert!(
        outcome.contains("discover listed no provider of anima.sample/kv >=1.0"),
        "{outcome}"
    );
    assert!(outcome.contains("POLICY_DENIED"), "{outcome}");
    // The Core audited its refusal of the Python module's call.
    let refusal = audited_refusal(&core, PYKV).await;
    assert_eq!(refusal["actor"], "module", "{refusal}");
    assert_eq!(refusal["reason"], "POLICY_DENIED", "{refusal}");
    // A selftest that failed left the module running and leased.
    core.wait_leased("pykv").await;
}

/// The first `call_refused` audit record of `module`, waiting for the log's
/// writer.
async fn audited_refusal(core: &CoreProcess, module: &str) -> Value {
    let path = core.dir.path().join("audit.jsonl");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let audit = std::fs::read_to_string(&path).unwrap_or_default();
        let found = audit
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|r| r["event"] == "call_refused" && r["module"] == module);
        if let Some(record) = found {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call_refused record of {module}:\n{audit}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
