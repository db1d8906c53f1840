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

    // No lease was interrupted.
    for (name, lease) in SAMPLES.iter().zip(&leases) {
        assert_eq!(&core.lease_of(name).await["lease_id"], lease, "{name}");
    }

    // A new lease is dialled and signed with the renewed certificate: the
    // hasher's, after its lease is revoked (its process ends, another
    // starts and is leased).
    let lease = leases[0].as_str().unwrap();
    core.cli_ok(&["revoke", lease]).await;
    core.wait_module("hasher", "leased again", |m| {
        m["state"] == "leased" && m["lease_id"].as_str().is_some_and(|l| l != lease)
    })
    .await;
    digest(&last).await;
}
