//! Certificate rotation without a restart (issue 14): the Core takes up a
//! renewed certificate on SIGHUP or when its files change, for new
//! connections, while the connections and leases already open go on.

use anima_protocol::{TlsIdentity, UrnKind};
use anima_sample_modules::pb::DigestRequest;
use anima_sample_modules::pb::hasher_client::HasherClient;

use super::gateway::{started, user};
use super::serve::CoreProcess;

const SAMPLES: [&str; 3] = ["hasher", "kvstore", "tally"];

/// The fingerprint of the Core's certificate file now.
fn core_cert_fingerprint(core: &CoreProcess) -> anima_protocol::Fingerprint {
    let dir = core.dir.path().join("certs/dev");
    TlsIdentity::from_pem_files(&dir.join("core-dev.pem"), &dir.join("core-dev.key"))
        .unwrap()
        .fingerprint()
}

/// Renews the Core's certificate (same URN, new key), as `anima certs
/// issue --force` does.
fn renew_core_cert(core: &CoreProcess) {
    let dir = core.dir.path().join("certs/dev");
    anima_certs::issue_into_dir(&dir, UrnKind::Core, "dev", 30, true).unwrap();
}

/// Waits until the Core has logged a reload with `both` in its line (e.g.
/// the new certificate's fingerprint, or `SIGHUP`), and no failed one.
async fn reloaded(core: &CoreProcess, both: &str) {
    let log = core.dir.path().join("stderr.log");
    let seen = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("certificates reloaded") && l.contains(both))
    };
    anima_tests::eventually(&format!("a certificate reload with {both}"), seen).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("certificates not reloaded"), "{text}");
}

/// The `accepted` audit record of lease `id`, if written yet.
fn accepted_record(core: &CoreProcess, id: &str) -> Option<serde_json::Value> {
    let audit = std::fs::read_to_string(core.dir.path().join("audit.jsonl")).unwrap_or_default();
    audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["event"] == "accepted" && r["lease_id"] == id)
}

/// Waits until `name`'s active lease is bound to the Core certificate
/// `core_fp` (and, when given, the module certificate `module_fp`), as
/// its `accepted` audit record says; returns its id.
async fn leased_under(
    core: &CoreProcess,
    name: &str,
    core_fp: &str,
    module_fp: Option<&str>,
) -> String {
    let deadline = tokio::time::Instant::now() + anima_tests::PATIENCE * 3;
    loop {
        let lease = core.lease_of(name).await;
        let id = lease["lease_id"].as_str().unwrap().to_owned();
        let record = accepted_record(core, &id);
        if let Some(r) = &record
            && r["core_cert"] == core_fp
            && module_fp.is_none_or(|m| r["module_cert"] == m)
        {
            return id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: lease {id} is not under core {core_fp} / module {module_fp:?}: {record:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn digest(conn: &anima_protocol::Connection) {
    HasherClient::new(conn.channel())
        .digest(DigestRequest { text: "x".into() })
        .await
        .unwrap();
}

#[tokio::test]
async fn rotation_the_core_serves_a_renewed_certificate_to_new_connections_while_open_ones_go_on() {
    let core = started().await;
    let before = user(&core, "user-dev").await;
    let first = before.peer().fingerprint();
    assert_eq!(first, core_cert_fingerprint(&core));
    let mut leases = Vec::new();
    for name in SAMPLES {
        leases.push(core.lease_of(name).await["lease_id"].clone());
    }

    // SIGHUP reads the files again (here unchanged).
    core.signal("HUP").await;
    reloaded(&core, "SIGHUP").await;
    digest(&before).await;

    // Renewed: the Core sees the files change.
    renew_core_cert(&core);
    let second = core_cert_fingerprint(&core);
    assert_ne!(second, first);
    reloaded(&core, &second.to_string()).await;
    let after = user(&core, "user-dev").await;
    assert_eq!(after.peer().fingerprint(), second);
    digest(&after).await;
    // The connection made before the renewal goes on.
    digest(&before).await;

    // Renewed again, and SIGHUP at once (whichever comes first reloads).
    renew_core_cert(&core);
    core.signal("HUP").await;
    let third = core_cert_fingerprint(&core);
    reloaded(&core, &third.to_string()).await;
    let last = user(&core, "user-dev").await;
    assert_eq!(last.peer().fingerprint(), third);
    digest(&last).await;
    digest(&before).await;
    digest(&after).await;

    // Every lease was re-established under the renewed certificate (a new
    // lease, the old one revoked once its calls ended), with no restart.
    let core_fp = third.to_string();
    for (name, lease) in SAMPLES.iter().zip(&leases) {
        let now = leased_under(&core, name, &core_fp, None).await;
        assert_ne!(now, lease.as_str().unwrap(), "{name}: re-established");
    }
    let audit = std::fs::read_to_string(core.dir.path().join("audit.jsonl")).unwrap();
    for lease in &leases {
        let lease = lease.as_str().unwrap();
        assert!(
            audit.lines().any(|l| l.contains(lease)
                && l.contains("\"revoked\"")
                && l.contains("under renewed certificates")),
            "{lease} revoked as replaced:\n{audit}"
        );
    }
    digest(&last).await;
}
