//! No test-only switch in a shipped binary (issue 12 §2): the sample
//! modules, hosted by a real Core that runs with every fault name of the
//! test-only SDK copy in its environment (the launcher passes it on), still
//! refuse a call that holds no lease.

use std::time::Duration;

use anima_protocol::lease::Reason;
use anima_protocol::{ClientTls, PeerPolicy, TlsIdentity, TrustRoot, Urn};
use anima_tests::{bin_path, reason};

use crate::serve::CoreProcess;

/// The sample modules the embedded default hosts, by name.
const SAMPLES: [&str; 3] = ["hasher", "kvstore", "tally"];

/// The fault names the test-only SDK copy knows, from its fixture.
fn fault_names() -> Vec<String> {
    let out = std::process::Command::new(bin_path("anima-faulty-module"))
        .arg("--faults")
        .output()
        .expect("run anima-faulty-module --faults");
    assert!(out.status.success(), "anima-faulty-module --faults failed");
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 4, "fault names: {names:?}");
    names
}

/// The first capability `name`'s contract declares.
fn first_capability(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sample-modules")
        .join(name)
        .join("module.toml");
    let contract =
        anima_module_sdk::Contract::from_toml(&std::fs::read_to_string(path).expect("contract"))
            .expect("valid contract");
    contract
        .methods
        .iter()
        .find(|m| !m.starts_with("/anima.v1.Probe/"))
        .expect("a capability")
        .to_string()
}

/// Calls `method` on the module at `addr` as the dev Core, on a new
/// connection that holds no lease.
async fn unleased_call(
    certs: &std::path::Path,
    addr: &str,
    urn: &str,
    method: &str,
) -> tonic::Status {
    let read = |f: &str| std::fs::read(certs.join(f)).expect("dev certificate file");
    let identity = TlsIdentity::from_pem(&read("core-dev.pem"), &read("core-dev.key")).unwrap();
    let trust = TrustRoot::from_pem(&read("ca.pem")).unwrap();
    let conn = ClientTls::new(identity, trust)
        .dial_addr(
            addr.parse::<anima_protocol::transport::Address>()
                .expect("module endpoint"),
            PeerPolicy::exactly(urn.parse::<Urn>().unwrap()),
        )
        .await
        .expect("dial the module");
    let mut grpc = tonic::client::Grpc::new(conn.channel());
    grpc.ready().await.expect("ready");
    let path: http::uri::PathAndQuery = method.parse().unwrap();
    grpc.unary(
        tonic::Request::new(()),
        path,
        tonic_prost::ProstCodec::<(), ()>::default(),
    )
    .await
    .expect_err("a call without a lease is refused")
}

#[tokio::test(flavor = "multi_thread")]
async fn z2_shipped_sample_modules_ignore_every_test_fault_name() {
    for fault in fault_names() {
        let env = [("ANIMA_TEST_FAULT".to_owned(), fault.clone())];
        let core = CoreProcess::start_env(None, |_| {}, &env).await;
        let certs = core.dir.path().join("certs/dev");
        for name in SAMPLES {
            let row = core
                .wait_module(name, "leased", |m| m["state"] == "leased")
                .await;
            let addr = row["endpoint"].as_str().expect("endpoint").to_owned();
            let urn = format!("urn:anima:module:{name}");
            let status = tokio::time::timeout(
                Duration::from_secs(10),
                unleased_call(&certs, &addr, &urn, &first_capability(name)),
            )
            .await
            .expect("answered in time");
            assert_eq!(
                reason(&status),
                Some(Reason::NoLease),
                "{name} with ANIMA_TEST_FAULT={fault}: {status:?}"
            );
        }
    }
}
