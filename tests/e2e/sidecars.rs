//! Sidecars (issue 15, PROTOCOL.md §11): started and leased before their
//! module, stopped after it, restarted with it, and the module not started
//! when one cannot be (P11); a proxy sidecar sees every call to its module
//! first, its refusal reaches the caller, and the module is never reached
//! around it (P12). The sidecar is the ratelimit sample, in front of the
//! hasher (Type I) or the kvstore (Type II).

use std::time::Duration;

use anima_protocol::lease::Reason;
use anima_sample_modules::pb::hasher_client::HasherClient;
use anima_sample_modules::pb::kv_store_client::KvStoreClient;
use anima_sample_modules::pb::{DigestRequest, GetRequest};
use anima_tests::{PATIENCE, reason};
use tonic::Code;

use super::gateway::user;
use super::serve::{CoreProcess, core_and_admin, module_entry, sample};

const RATELIMIT: &str = "urn:anima:module:ratelimit";

/// The ratelimit sidecar with `env` lines, and `main` (`hasher` or
/// `kvstore`) behind it, which the dev user may call.
fn config(env: &str, main: &str) -> String {
    let ratelimit = format!(
        "type = \"resident-private\"\ncommand = \"{}\"\n[module.restart]\npolicy = \"never\"\n\
         [module.env]\n{env}\n",
        sample("ratelimit")
    );
    let main_type = if main == "hasher" {
        "ephemeral"
    } else {
        "resident-private"
    };
    let main_entry = format!(
        "type = \"{main_type}\"\ncommand = \"{}\"\nsidecars = [\"{RATELIMIT}\"]\n\
         [module.env]\nKVSTORE_CACHE_LIMIT = \"65536\"\n",
        sample(main)
    );
    core_and_admin("")
        + &module_entry(main, &main_entry)
        + &module_entry("ratelimit", &ratelimit)
        + &format!(
            "\n[[policy]]\nuser = \"urn:anima:user:dev\"\nallow = [\"urn:anima:module:{main}\"]\n"
        )
}

/// The Core's log so far.
fn log(core: &CoreProcess) -> String {
    std::fs::read_to_string(core.dir.path().join("stderr.log")).unwrap_or_default()
}

/// The position of the first line of `log` with each of `parts`.
fn line_of(log: &str, parts: &[&str]) -> usize {
    log.lines()
        .position(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no line with {parts:?} in the Core's log:\n{log}"))
}

async fn digest(core: &CoreProcess, text: &str) -> Result<String, tonic::Status> {
    let conn = user(core, "user-dev").await;
    HasherClient::new(conn.channel())
        .digest(DigestRequest { text: text.into() })
        .await
        .map(|r| r.into_inner().sha256_hex)
}

#[tokio::test]
async fn p11_a_sidecar_is_leased_before_its_module_starts_and_stopped_after_it() {
    let core = CoreProcess::start(Some(&config("", "kvstore"))).await;
    core.wait_leased("kvstore").await;
    let during = log(&core);
    let sidecar_leased = line_of(&during, &["lease_issued", RATELIMIT]);
    let main_started = line_of(&during, &["module_started", "urn:anima:module:kvstore"]);
    assert!(
        sidecar_leased < main_started,
        "the module started (line {main_started}) before its sidecar was leased (line {sidecar_leased})"
    );
    let blocked = line_of(&during, &["module_blocked", "urn:anima:module:kvstore"]);
    assert!(
        blocked < sidecar_leased,
        "blocked while its sidecar was not leased"
    );
    assert!(
        during
            .lines()
            .nth(blocked)
            .unwrap()
            .contains("waiting for its sidecar"),
        "{during}"
    );
    // Shut down: the module's lease ends before its sidecar's.
    let mut core = core;
    core.sigterm().await;
    let status = tokio::time::timeout(PATIENCE * 2, core.child.child.wait())
        .await
        .expect("the Core exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let after = log(&core);
    let main_end = line_of(&after, &["lease_revoked", "urn:anima:module:kvstore"]);
    let sidecar_end = line_of(&after, &["lease_revoked", RATELIMIT]);
    assert!(
        main_end < sidecar_end,
        "the sidecar's lease ended (line {sidecar_end}) before its module's (line {main_end})"
    );
}

#[tokio::test]
async fn p11_a_module_whose_sidecar_cannot_start_is_not_started() {
    let core =
        CoreProcess::start(Some(&config("RATELIMIT_PER_SECOND = \"fast\"", "kvstore"))).await;
    core.wait_module("ratelimit", "failed", |m| m["state"] == "failed")
        .await;
    let main = core
        .wait_module("kvstore", "blocked on its failed sidecar", |m| {
            m["state"] == "blocked"
                && m["detail"].as_str().is_some_and(|d| {
                    d.contains(&format!("waiting for its sidecar {RATELIMIT} (failed"))
                })
        })
        .await;
    assert!(main["pid"].is_null(), "not started: {main}");
}

#[tokio::test]
async fn p11_a_sidecar_is_restarted_with_its_module() {
    let core = CoreProcess::start(Some(&config("", "kvstore"))).await;
    core.wait_leased("kvstore").await;
    let sidecar_pid = core.module("ratelimit").await["pid"].as_u64().unwrap();
    let main_pid = core.module("kvstore").await["pid"].as_u64().unwrap();
    core.cli_ok(&["restart", "kvstore"]).await;
    let main = core
        .wait_module("kvstore", "restarted and leased", |m| {
            m["state"] == "leased" && m["pid"].as_u64().is_some_and(|p| p != main_pid)
        })
        .await;
    let sidecar = core.module("ratelimit").await;
    assert_eq!(sidecar["state"], "leased", "{sidecar}");
    assert_ne!(
        sidecar["pid"].as_u64(),
        Some(sidecar_pid),
        "the sidecar was not restarted with its module: {sidecar}"
    );
    // The module came back after its sidecar did.
    let log = log(&core);
    let lines: Vec<&str> = log.lines().collect();
    let last = |parts: [&str; 2]| {
        lines
            .iter()
            .rposition(|l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no line with {parts:?}:\n{log}"))
    };
    let last_sidecar_lease = last(["lease_issued", RATELIMIT]);
    let last_main_start = last(["module_started", "urn:anima:module:kvstore"]);
    assert!(last_sidecar_lease < last_main_start, "{main}");
}

#[tokio::test]
async fn p12_a_proxy_sidecar_sees_each_call_first_and_its_refusal_reaches_the_caller() {
    let core = CoreProcess::start(Some(&config(
        "RATELIMIT_PER_SECOND = \"0.01\"\nRATELIMIT_BURST = \"3\"",
        "hasher",
    )))
    .await;
    core.wait_leased("hasher").await;
    for i in 0..3 {
        digest(&core, &format!("call {i}")).await.unwrap();
    }
    let refused = digest(&core, "one too many").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let info = tonic_types::StatusExt::get_error_details(&refused);
    let info = info.error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "RATE_LIMITED");
    assert_eq!(
        info.metadata.get("sidecar").map(String::as_str),
        Some(RATELIMIT)
    );
    assert!(
        refused
            .message()
            .contains("urn:anima:user:dev is over 0.01 calls a second"),
        "{refused:?}"
    );
    // The sidecar logged each call, with its verdict, and the hasher served
    // only the three it allowed.
    let log = log(&core);
    let seen: Vec<&str> = log.lines().filter(|l| l.contains("inbound call")).collect();
    assert_eq!(seen.len(), 4, "{log}");
    assert!(
        seen[..3].iter().all(|l| l.contains("verdict=allowed")),
        "{seen:?}"
    );
    assert!(seen[3].contains("verdict=RATE_LIMITED"), "{seen:?}");
    let metrics = super::gateway::metrics(&user(&core, "user-dev").await).await;
    assert!(
        metrics
            .lines()
            .any(|l| l
                == "anima_calls_total{method=\"/anima.sample.v1.Hasher/Digest\",code=\"0\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn p12_a_module_is_never_reached_around_its_proxy_sidecar() {
    let core = CoreProcess::start(Some(&config("", "kvstore"))).await;
    core.wait_leased("kvstore").await;
    let conn = user(&core, "user-dev").await;
    let get = || {
        let channel = conn.channel();
        async move {
            KvStoreClient::new(channel)
                .get(GetRequest { key: "k".into() })
                .await
        }
    };
    get().await.unwrap();
    core.cli_ok(&["stop", "ratelimit"]).await;
    core.wait_module("ratelimit", "stopped", |m| m["state"] == "stopped")
        .await;
    let refused = get().await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(reason(&refused), Some(Reason::SidecarUnavailable));
    assert!(
        refused.message().contains(
            "urn:anima:module:ratelimit, a sidecar of urn:anima:module:kvstore, holds no lease"
        ),
        "{refused:?}"
    );
    // With its sidecar back, the module is reached again.
    core.cli_ok(&["restart", "ratelimit"]).await;
    core.wait_leased("ratelimit").await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while get().await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("calls go through once the sidecar is leased again");
}
