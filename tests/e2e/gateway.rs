//! Calling capabilities through the Core's gateway: a Python `grpcio` client,
//! policy, load with metrics, deadlines, and trace ids (O1).

use std::time::Duration;

use anima_protocol::lease::Reason;
use anima_protocol::{ClientTls, Connection, PeerPolicy, TlsIdentity, TrustRoot, UrnKind};
use anima_sample_modules::pb::hasher_client::HasherClient;
use anima_sample_modules::pb::kv_store_client::KvStoreClient;
use anima_sample_modules::pb::{DigestRequest, GetRequest};
use anima_tests::{PATIENCE, reason};

use super::serve::{CoreProcess, config};
use super::wait::{self, in_time};

/// A Core hosting the three samples, each leased.
pub(crate) async fn started() -> CoreProcess {
    let core = CoreProcess::start(Some(&config("30s", "always"))).await;
    core.wait_samples_leased().await;
    core
}

/// Connects to the Core's endpoint as the identity in `certs/dev/<stem>`.
pub(crate) async fn user(core: &CoreProcess, stem: &str) -> Connection {
    let dir = core.dir.path().join("certs/dev");
    let identity = TlsIdentity::from_pem_files(
        &dir.join(format!("{stem}.pem")),
        &dir.join(format!("{stem}.key")),
    )
    .unwrap();
    let trust = TrustRoot::from_pem_file(&dir.join("ca.pem")).unwrap();
    ClientTls::new(identity, trust)
        .dial(&core.admin, PeerPolicy::kind(UrnKind::Core))
        .await
        .unwrap()
}

/// Runs the Python `grpcio` client's `mode` against `core`'s endpoint as the
/// identity in `certs/dev/<stem>` (`None`: with no certificate); the client
/// checks what it gets and must exit 0. Returns what it printed.
pub(crate) fn python(core: &CoreProcess, mode: &str, stem: Option<&str>) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/gateway_client.py");
    let dir = core.dir.path().join("certs/dev");
    let mut client = std::process::Command::new("python3");
    client
        .arg(&script)
        .args([mode, &core.admin])
        .arg(dir.join("ca.pem"));
    if let Some(stem) = stem {
        client.arg(dir.join(format!("{stem}.pem")));
        client.arg(dir.join(format!("{stem}.key")));
    }
    let out = wait::output(&mut client, "python3");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("No module named 'grpc'"),
        "Python grpcio is missing: `pip install grpcio` (.ci/run installs it)"
    );
    wait::assert_succeeded(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn o1_python_grpcio_client_calls_every_sample_through_the_core() {
    let core = started().await;
    let stdout = python(&core, "ok", Some("user-dev"));
    for line in ["hasher ok", "kvstore ok", "tally ok"] {
        assert!(stdout.contains(line), "{stdout}");
    }
    // A user the policy does not name.
    let dir = core.dir.path().join("certs/dev");
    anima_certs::issue_into_dir(&dir, UrnKind::User, "intruder", 30, false).unwrap();
    python(&core, "denied", Some("user-intruder"));
    // No certificate: the TLS handshake fails.
    python(&core, "nocert", None);
    let audit = std::fs::read_to_string(core.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("call_refused") && l.contains("POLICY_DENIED")),
        "the refusal is audited"
    );
}

#[tokio::test]
async fn o1_ten_thousand_calls_with_zero_errors_and_matching_metrics() {
    let core = started().await;
    let conn = user(&core, "user-dev").await;
    let client = HasherClient::new(conn.channel());
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut errors = 0u32;
                for i in 0..625 {
                    let text = format!("{t}-{i}");
                    match client.digest(DigestRequest { text }).await {
                        Ok(r) if r.get_ref().sha256_hex.len() == 64 => {}
                        _ => errors += 1,
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap();
    }
    assert_eq!(errors, 0, "10,000 calls, zero errors");
    let text = metrics(&conn).await;
    assert!(
        text.lines().any(|l| l
            == "anima_calls_total{method=\"/anima.sample.v1.Hasher/Digest\",code=\"0\"} 10000"),
        "{text}"
    );
    assert!(text.contains(
        "anima_call_duration_seconds_count{method=\"/anima.sample.v1.Hasher/Digest\"} 10000"
    ));
    assert!(
        text.contains("anima_leases{module=\"urn:anima:module:hasher\",state=\"active\"} 1"),
        "{text}"
    );
}

/// `GET /metrics` over the same mutual-TLS connection.
pub(crate) async fn metrics(conn: &Connection) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = http::Request::get("/metrics")
        .body(tonic::body::Body::empty())
        .unwrap();
    let response = conn.channel().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn o1_a_50ms_deadline_ends_the_module_work() {
    let core = started().await;
    // A caller we did not write sets the deadline (grpc-timeout on the wire).
    python(&core, "deadline", Some("user-dev"));
    // The module's handler was cancelled: the write never lands, even after
    // its 1 s delay would have passed.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let conn = user(&core, "user-dev").await;
    let got = KvStoreClient::new(conn.channel())
        .get(GetRequest { key: "late".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!got.found, "the cancelled Put did not commit");
    // The Core counted the Put as ended early: DEADLINE_EXCEEDED when its own
    // timer (started on arrival) fired first, CANCELLED when the caller's
    // reset (its deadline started before sending) arrived first. Never OK.
    let text = metrics(&conn).await;
    let put = |code: &str| {
        text.contains(&format!(
            "anima_calls_total{{method=\"/anima.sample.v1.KvStore/Put\",code=\"{code}\"}} 1"
        ))
    };
    assert!(put("4") || put("1"), "{text}");
    assert!(!put("0"), "{text}");
}

#[tokio::test]
async fn o1_the_callers_trace_id_is_logged_by_the_core_and_the_module() {
    let core = started().await;
    let conn = user(&core, "user-dev").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(DigestRequest {
        text: "traced".into(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    HasherClient::new(conn.channel())
        .digest(request)
        .await
        .unwrap();
    let log = core.dir.path().join("stderr.log");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let core_line = text.lines().any(|l| {
            l.contains("anima::gateway") && l.contains(trace_id) && l.contains("lease_id")
        });
        // Module lines come through the Core's log tagged with the module.
        let module_line = text.lines().any(|l| {
            l.contains("anima::call")
                && l.contains(trace_id)
                && l.contains("urn:anima:module:hasher")
        });
        if core_line && module_line {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trace id not in both logs:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn o1_undeclared_methods_and_unavailable_modules_get_distinct_refusals() {
    let core = started().await;
    let conn = user(&core, "user-dev").await;
    // Not declared by any module: refused without touching one.
    let mut grpc = tonic::client::Grpc::new(conn.channel());
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(DigestRequest { text: "x".into() }),
            http::uri::PathAndQuery::from_static("/anima.sample.v1.Hasher/Nope"),
            tonic_prost::ProstCodec::<DigestRequest, DigestRequest>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reason(&status), Some(Reason::UnknownMethod));
    // A stopped module: a clear UNAVAILABLE, not a hang.
    core.cli_ok(&["stop", "kvstore"]).await;
    core.wait_module("kvstore", "stopped", |m| m["state"] == "stopped")
        .await;
    let mut kvstore = KvStoreClient::new(conn.channel());
    let get = kvstore.get(GetRequest { key: "k".into() });
    let status = in_time(get, "no hang").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&status), Some(Reason::ModuleUnavailable));
}

/// Each message a caller sends through the gateway is capped at 4 MiB, read
/// from its length prefix: a larger one is refused by the Core itself
/// (RESOURCE_EXHAUSTED, naming the gateway) before its body reaches the
/// module, and the connection keeps serving.
#[tokio::test]
async fn o1_the_gateway_refuses_a_message_over_its_size_limit() {
    let core = started().await;
    let conn = user(&core, "user-dev").await;
    let mut client = HasherClient::new(conn.channel());
    let huge = "x".repeat(5 * 1024 * 1024);
    let err = in_time(
        client.digest(DigestRequest { text: huge }),
        "answered in time",
    )
    .await
    .expect_err("a 5 MiB message is refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("gateway's limit"), "{err:?}");
    // A message under the limit still goes through on the same connection.
    let ok = client
        .digest(DigestRequest {
            text: "small".into(),
        })
        .await
        .expect("a small message is served");
    assert_eq!(ok.get_ref().sha256_hex.len(), 64);
}
