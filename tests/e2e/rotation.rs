//! Certificate rotation without a restart (issue 14): the Core takes up a
//! renewed certificate on SIGHUP or when its files change, for new
//! connections, while the connections and leases already open go on.

use std::time::Duration;

use anima_protocol::{TlsIdentity, UrnKind};
use anima_sample_modules::pb::hasher_client::HasherClient;
use anima_sample_modules::pb::tally_client::TallyClient;
use anima_sample_modules::pb::{DigestRequest, IncrementRequest};
use anima_tests::{Child, bin_path};

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
pub(crate) fn accepted_record(core: &CoreProcess, id: &str) -> Option<serde_json::Value> {
    let audit = std::fs::read_to_string(core.dir.path().join("audit.jsonl")).unwrap_or_default();
    audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["event"] == "accepted" && r["lease_id"] == id)
}

/// Waits until `name`'s active lease is bound to the Core certificate
/// `core_fp` (and, when given, the module certificate `module_fp`), as
/// its `accepted` audit record says; returns its id.
pub(crate) async fn leased_under(
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
        tokio::time::sleep(Duration::from_millis(100)).await;
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

/// A module the Core dials (its certificate file is on another host, as far
/// as the Core knows) and whose certificate expires within ten minutes:
/// the Core warns, keeps dialling it, and moves the lease to the renewed
/// certificate as soon as the module presents it, before the old one
/// expires, with no call refused.
#[tokio::test]
async fn rotation_a_dialled_module_is_re_leased_under_its_renewed_certificate_before_the_old_expires()
 {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs/dev");
    anima_certs::init_dir(&certs, &anima_certs::InitOptions::default()).unwrap();
    // The module's certificate expires in five minutes.
    let now = std::time::SystemTime::now();
    let short = anima_certs::CertAuthority::load(&certs)
        .unwrap()
        .issue(
            &anima_certs::LeafSpec::new("urn:anima:module:tally".parse().unwrap()).valid_between(
                now - Duration::from_secs(60),
                now + Duration::from_secs(300),
            ),
        )
        .unwrap();
    std::fs::write(certs.join("module-tally.pem"), short.cert_pem()).unwrap();
    std::fs::write(certs.join("module-tally.key"), short.key_pem()).unwrap();
    let short_fp = short.fingerprint().to_string();

    // The module, started by "infrastructure", reading its files in place.
    let module_dir = tempfile::tempdir().unwrap();
    let file = |name: &str| certs.join(name).to_string_lossy().into_owned();
    let env = [
        ("ANIMA_CERT".to_owned(), file("module-tally.pem")),
        ("ANIMA_KEY".to_owned(), file("module-tally.key")),
        ("ANIMA_CA".to_owned(), file("ca.pem")),
        ("ANIMA_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
    ];
    let mut module = Child::spawn_env_in(&bin_path("anima-tally"), &[], &env, module_dir.path());
    let ready = module.line(anima_protocol::launch::READY_PREFIX).await;
    let addr = ready.split_whitespace().last().unwrap().to_owned();

    let config = format!(
        r#"{core}
[[module]]
urn = "urn:anima:module:tally"
type = "resident-shared"
endpoint = "{addr}"

[[policy]]
user = "urn:anima:user:dev"
allow = ["urn:anima:module:tally"]
"#,
        core = super::serve::core_and_admin("")
    );
    std::fs::write(dir.path().join("anima.toml"), config).unwrap();
    let child = Child::spawn_env_in(
        &bin_path("anima"),
        &[
            "serve",
            "--config",
            "anima.toml",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
        dir.path(),
    );
    let core = CoreProcess::ready(child, dir).await;
    core.wait_leased("tally").await;
    let core_fp = core_cert_fingerprint(&core).to_string();
    let first = leased_under(&core, "tally", &core_fp, Some(&short_fp)).await;

    // The Core says the certificate runs out and nothing renewed is there.
    let log = core.dir.path().join("stderr.log");
    anima_tests::eventually(
        "a warning that the lease's certificate expires soon",
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("expires soon and no renewed one is presented yet")
        },
    )
    .await;

    // Renewed on the module's host: the module reads it, the Core finds it.
    let conn = user(&core, "user-dev").await;
    let switched = tokio_util::sync::CancellationToken::new();
    let calls = tokio::spawn({
        let switched = switched.clone();
        async move {
            let mut tally = TallyClient::new(conn.channel());
            let mut n = 0u32;
            // Calls until a while after the switch.
            while !switched.is_cancelled() || !n.is_multiple_of(50) {
                tally
                    .increment(IncrementRequest {
                        counter: "c".into(),
                        by: 1,
                    })
                    .await?;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<u32, tonic::Status>(n)
        }
    });
    anima_certs::issue_into_dir(&certs, UrnKind::Module, "tally", 30, true).unwrap();
    let renewed = anima_protocol::transport::leaf_fingerprint(&certs.join("module-tally.pem"))
        .unwrap()
        .to_string();
    let second = leased_under(&core, "tally", &core_fp, Some(&renewed)).await;
    assert_ne!(first, second);
    switched.cancel();
    let n = calls.await.unwrap().expect("no call refused");
    eprintln!("{n} calls across the switch");
}
