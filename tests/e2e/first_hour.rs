//! What a new user meets in a first hour with `anima serve` (issue 14): a
//! Type I module under the default restart policy stays available after its
//! lease ends, `type` comes from the contract, and two modules declaring the
//! same method are refused at start, naming both.

use std::path::{Path, PathBuf};

use anima_tests::{PATIENCE, bin_path};

use crate::gateway::python;
use crate::serve::{CoreProcess, config, core_and_admin, sample};

/// A sample's contract, as shipped in `sample-modules/NAME/module.toml`.
fn sample_contract(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../sample-modules/{name}/module.toml"))
}

/// A `[[module]]` the Core starts: sample `name` with its dev certificate
/// and its shipped contract, no `type` and no `restart`.
fn started_sample(name: &str, contract: &Path) -> String {
    format!(
        r#"
[[module]]
urn = "urn:anima:module:{name}"
command = "{program}"
cert = "certs/dev/module-{name}.pem"
key = "certs/dev/module-{name}.key"
contract = "{contract}"
"#,
        program = sample(name),
        contract = contract.display()
    )
}

/// The hasher (Type I) and the tally (Type III), neither saying its type
/// nor its restart policy: each takes its type from its contract, and the
/// hasher, whose process ends with its lease, is started and leased again.
#[tokio::test]
async fn a_type1_module_under_the_default_policy_is_leased_again_after_its_lease_ends() {
    let modules = format!(
        "{}{}",
        started_sample("hasher", &sample_contract("hasher")),
        started_sample("tally", &sample_contract("tally"))
    );
    let core = CoreProcess::start(Some(&(core_and_admin("") + &modules))).await;
    core.wait_leased("tally").await;
    let before = core.wait_leased("hasher").await;
    let pid = before["pid"].as_u64().unwrap();
    let lease = core.lease_of("hasher").await["lease_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = core.cli_ok(&["revoke", &lease]).await;
    assert!(out.contains(&lease), "{out}");
    // Its process exits after its termination window; the default policy
    // of a Type I module starts a new one, which the Core leases.
    let after = core
        .wait_module("hasher", "a new, leased process", |m| {
            m["state"] == "leased" && m["pid"].as_u64().is_some_and(|p| p != pid)
        })
        .await;
    assert!(after["restarts"].as_u64().unwrap() >= 1, "{after}");
    assert_ne!(core.lease_of("hasher").await["lease_id"], lease.as_str());
    // The Type III module was not restarted: it is resident.
    let tally = core.module("tally").await;
    assert_eq!(tally["restarts"].as_u64(), Some(0), "{tally}");
}

/// `anima serve` runs `config check`'s checks before starting anything: a
/// second module declaring the hasher's methods is refused, naming both
/// modules and the methods, at the line of its contract.
#[tokio::test]
async fn serve_refuses_two_modules_declaring_the_same_methods() {
    let dir = tempfile::tempdir().unwrap();
    anima_certs::init_dir(
        &dir.path().join("certs/dev"),
        &anima_certs::InitOptions::default(),
    )
    .unwrap();
    // The kvstore's contract, with the hasher's methods.
    let hasher = std::fs::read_to_string(sample_contract("hasher")).unwrap();
    let copied = hasher.replace("urn:anima:module:hasher", "urn:anima:module:kvstore");
    let copy = dir.path().join("kvstore.toml");
    std::fs::write(&copy, copied).unwrap();
    let text = core_and_admin("")
        + &started_sample("hasher", &sample_contract("hasher"))
        + &started_sample("kvstore", &copy);
    let file = dir.path().join("anima.toml");
    std::fs::write(&file, &text).unwrap();
    let run = tokio::process::Command::new(bin_path("anima"))
        .args(["serve", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("anima serve should refuse the file at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = text
        .lines()
        .position(|l| l.contains("kvstore.toml"))
        .unwrap()
        + 1;
    let expected = format!(
        "{}:{line}: module[1] (urn:anima:module:kvstore).contract: declares \
         /anima.sample.v1.Hasher/Digest, /anima.sample.v1.Hasher/Stats, which module[0] \
         (urn:anima:module:hasher) declares too",
        file.display()
    );
    assert!(stderr.contains(&expected), "{expected}\nnot in:\n{stderr}");
    // The conformance probe, which both declare, is not a problem.
    assert!(!stderr.contains("Probe"), "{stderr}");
    assert!(
        !dir.path().join("audit.jsonl").exists(),
        "something started"
    );
}

/// The three samples under a config of one's own that does not name
/// `[core] endpoint_cert` (nor `endpoint_key`).
fn config_without_endpoint_cert() -> String {
    config("30s", "always")
        .lines()
        .filter(|l| !l.starts_with("endpoint_"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `anima certs init` made `core-dev.endpoint.pem`/`.key` beside the Core's
/// certificate: a config that does not name them still presents that P-256
/// certificate to a Python grpcio client (BoringSSL offers no Ed25519).
#[tokio::test]
async fn a_grpcio_client_is_served_by_a_config_that_does_not_name_the_endpoint_cert() {
    let text = config_without_endpoint_cert();
    assert!(!text.contains("endpoint_cert"), "{text}");
    let core = CoreProcess::start(Some(&text)).await;
    core.wait_samples_leased().await;
    let stdout = python(&core, "ok", Some("user-dev"));
    for line in ["hasher ok", "kvstore ok", "tally ok"] {
        assert!(stdout.contains(line), "{stdout}");
    }
}

/// With no P-256 certificate at all, a grpcio client cannot be served; the
/// Core's log says why and names the fix.
#[tokio::test]
async fn a_grpcio_client_that_cannot_be_served_is_explained_in_the_core_log() {
    let core = CoreProcess::start_with(Some(&config_without_endpoint_cert()), |certs| {
        for file in ["core-dev.endpoint.pem", "core-dev.endpoint.key"] {
            std::fs::remove_file(certs.join(file)).unwrap();
        }
    })
    .await;
    core.wait_samples_leased().await;
    python(&core, "unserved", Some("user-dev"));
    let log = core.dir.path().join("stderr.log");
    let refusal = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("grpcio"))
            .map(str::to_owned)
    };
    anima_tests::eventually("the refusal in the Core's log", || refusal().is_some()).await;
    let said = refusal().unwrap();
    for fix in ["[core] endpoint_cert", "anima certs init"] {
        assert!(said.contains(fix), "{said}");
    }
}

/// A contract in `anima.toml` that is not the one built into the module (a
/// method more, another maximum lease): the Core compares the two before
/// its offer, says exactly what differs once, and marks the module failed
/// instead of restarting it in a loop.
#[tokio::test]
async fn a_contract_unlike_the_modules_own_fails_the_module_once_saying_what_differs() {
    let contracts = tempfile::tempdir().unwrap();
    let own = std::fs::read_to_string(sample_contract("tally")).unwrap();
    let edited = own
        .replace(
            "\"/anima.sample.v1.Tally/Get\",",
            "\"/anima.sample.v1.Tally/Get\",\n    \"/anima.sample.v1.Tally/Reset\",",
        )
        .replace("max_lease = \"30s\"", "max_lease = \"60s\"");
    assert_ne!(own, edited);
    let stale = contracts.path().join("tally.toml");
    std::fs::write(&stale, edited).unwrap();
    let text = core_and_admin("") + &started_sample("tally", &stale);
    let core = CoreProcess::start(Some(&text)).await;
    let failed = core
        .wait_module("tally", "failed", |m| m["state"] == "failed")
        .await;
    let detail = failed["detail"].as_str().unwrap();
    for said in [
        stale.display().to_string().as_str(),
        "does not match the module's own contract",
        "/anima.sample.v1.Tally/Reset",
        "max_lease 60s here, 30s in the module",
    ] {
        assert!(detail.contains(said), "{said:?} not in {detail:?}");
    }
    assert_eq!(failed["restarts"].as_u64(), Some(0), "{failed}");
    // Said once in the Core's log (as an error; its event is an info
    // line), and never leased.
    let log = std::fs::read_to_string(core.dir.path().join("stderr.log")).unwrap();
    let said = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("does not match the module's own contract"))
        .count();
    assert_eq!(said, 1, "{log}");
    let audit = std::fs::read_to_string(core.dir.path().join("audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains("\"accepted\""), "{audit}");
}
