//! Runtime messages through the Core's mediator (issue 16, PROTOCOL.md
//! §13): validation before routing (M1–M3), routing by event type to the
//! permitted subscribers only (M5), priority in a backlog (M6), expiry
//! (M4), and the specification's examples published by an operator.
//!
//! The subscriber is the logger sample, a real process the Core starts,
//! which receives every event type its permissions grant and shows what it
//! got with `Recent` (called through the gateway as the dev user). The
//! publisher is the kvstore sample's identity: the test presents its
//! certificate, as its own code would; the Core checks the sender's
//! certificate and lease, not which process holds the key.

use std::time::Duration;

use anima_module_sdk::messages::envelope;
use anima_protocol::pb::mediator_client::MediatorClient;
use anima_protocol::pb::{
    EpsError, Open, Priority, PublishReply, PublishRequest, Published, RcsEnvelope,
    SubscribeRequest, publish_reply, subscribe_item, subscribe_request,
};
use anima_protocol::{Connection, UrnKind};
use anima_sample_modules::pb::logger_client::LoggerClient;
use anima_sample_modules::pb::{Logged, RecentRequest};
use anima_tests::PATIENCE;

use super::gateway::user;
use super::serve::{CoreProcess, core_and_admin, module_entry, sample};

const KVSTORE: &str = "urn:anima:module:kvstore";
const LOGGER: &str = "urn:anima:module:logger";

/// A Core hosting kvstore (the publisher's identity) and the logger, with
/// `permissions` (TOML) and the dev user allowed to call the logger.
async fn start(permissions: &str) -> CoreProcess {
    let text = core_and_admin("")
        + &module_entry(
            "kvstore",
            &format!(
                "type = \"resident-private\"\ncommand = \"{}\"\n",
                sample("kvstore")
            ),
        )
        + &module_entry(
            "logger",
            &format!(
                "type = \"resident-private\"\ncommand = \"{}\"\n",
                sample("logger")
            ),
        )
        + "\n[[policy]]\nuser = \"urn:anima:user:dev\"\nallow = [\"urn:anima:module:logger\"]\n"
        + permissions;
    let core = CoreProcess::start_with(Some(&text), |certs| {
        anima_certs::issue_into_dir(certs, UrnKind::Module, "logger", 30, false).unwrap();
    })
    .await;
    core.wait_leased("kvstore").await;
    core.wait_leased("logger").await;
    core
}

/// kvstore publishes LOG_MESSAGE; the logger receives it.
const LOGS: &str = r#"
[[permission]]
module = "urn:anima:module:kvstore"
publish = ["LOG_MESSAGE"]

[[permission]]
module = "urn:anima:module:logger"
subscribe = ["LOG_MESSAGE"]
"#;

async fn publish(conn: &Connection, e: RcsEnvelope) -> Result<Published, EpsError> {
    let reply: PublishReply = MediatorClient::new(conn.channel())
        .publish(PublishRequest { envelope: Some(e) })
        .await
        .expect("the publish call itself succeeds")
        .into_inner();
    match reply.outcome.expect("an outcome") {
        publish_reply::Outcome::Published(p) => Ok(p),
        publish_reply::Outcome::Error(e) => Err(e),
    }
}

fn log_message(text: &str) -> RcsEnvelope {
    envelope(
        "LOG_MESSAGE",
        "application/json",
        format!("{{\"text\":{text:?}}}").into_bytes(),
    )
}

/// What the logger kept, once `done` holds of it (within [`PATIENCE`]).
async fn logged_until(core: &CoreProcess, done: impl Fn(&[Logged]) -> bool) -> Vec<Logged> {
    let conn = user(core, "user-dev").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let kept = LoggerClient::new(conn.channel())
            .recent(RecentRequest::default())
            .await
            .unwrap()
            .into_inner()
            .messages;
        if done(&kept) {
            return kept;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the logger did not get there; it has {kept:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn texts(kept: &[Logged]) -> Vec<String> {
    kept.iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect()
}

#[tokio::test]
async fn m5_m3_a_message_reaches_the_permitted_subscriber_from_its_certified_sender() {
    let core = start(LOGS).await;
    let kvstore = user(&core, "module-kvstore").await;
    let sent = log_message("hello");
    let id = sent.message_metadata.as_ref().unwrap().message_id.clone();
    let published = publish(&kvstore, sent).await.unwrap();
    assert_eq!(published.message_id, id);
    assert_eq!(published.subscriptions, 1);
    // M3: the Core names the sender from its certificate.
    assert_eq!(published.source_module, KVSTORE);
    let kept = logged_until(&core, |k| !k.is_empty()).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].message_id, id);
    assert_eq!(kept[0].source_module, KVSTORE);
    assert_eq!(kept[0].event_type, "LOG_MESSAGE");
    assert_eq!(kept[0].attempt, 1);
    assert_eq!(texts(&kept), ["{\"text\":\"hello\"}"]);

    // M5: default deny, for publishing and for receiving.
    let refused = publish(&kvstore, envelope("ALERT", "text/plain", b"x".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code.as_str(), refused.field.as_str()),
        ("NOT_PERMITTED", "routing.event_type")
    );
    assert!(!refused.recoverable);
    let logger = user(&core, "module-logger").await;
    let refused = publish(&logger, log_message("from the logger"))
        .await
        .unwrap_err();
    assert_eq!(refused.code, "NOT_PERMITTED");
    let (requests, rx) = tokio::sync::mpsc::channel(1);
    requests
        .send(SubscribeRequest {
            item: Some(subscribe_request::Item::Open(Open::default())),
        })
        .await
        .unwrap();
    let mut items = MediatorClient::new(kvstore.channel())
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match items.message().await.unwrap().and_then(|i| i.item) {
        Some(subscribe_item::Item::Error(e)) => {
            assert_eq!(
                (e.code.as_str(), e.field.as_str()),
                ("NOT_PERMITTED", "open.event_types")
            );
        }
        other => panic!("kvstore may receive nothing, yet got {other:?}"),
    }
    // Nothing refused reached the logger: a last message comes after the
    // first only.
    publish(&kvstore, log_message("last")).await.unwrap();
    let kept = logged_until(&core, |k| k.len() >= 2).await;
    assert_eq!(
        texts(&kept),
        ["{\"text\":\"hello\"}", "{\"text\":\"last\"}"]
    );
}

#[tokio::test]
async fn m1_m2_m3_an_invalid_message_is_answered_with_eps_naming_the_field_and_never_delivered() {
    let core = start(LOGS).await;
    let kvstore = user(&core, "module-kvstore").await;
    type Edit = fn(&mut RcsEnvelope);
    let cases: [(Edit, &str, &str); 6] = [
        (
            |e| e.message_metadata.as_mut().unwrap().message_id = "not-a-uuid".into(),
            "INVALID_FIELD",
            "message_metadata.message_id",
        ),
        (
            |e| e.message_metadata.as_mut().unwrap().created_at.clear(),
            "MISSING_FIELD",
            "message_metadata.created_at",
        ),
        (
            |e| e.message_metadata.as_mut().unwrap().priority = 9,
            "INVALID_FIELD",
            "message_metadata.priority",
        ),
        (
            |e| e.payload.as_mut().unwrap().size_bytes += 1,
            "SIZE_MISMATCH",
            "payload.size_bytes",
        ),
        (
            |e| {
                // Still JSON: a letter of the text changed.
                let data = &mut e.payload.as_mut().unwrap().data;
                let n = data.len();
                data[n - 3] ^= 1;
            },
            "CHECKSUM_MISMATCH",
            "payload.checksum",
        ),
        (
            |e| e.routing.as_mut().unwrap().source_module = LOGGER.into(),
            "IDENTITY_MISMATCH",
            "routing.source_module",
        ),
    ];
    for (edit, code, field) in cases {
        let mut e = log_message("refused");
        edit(&mut e);
        let id = e.message_metadata.as_ref().unwrap().message_id.clone();
        let eps = publish(&kvstore, e).await.unwrap_err();
        assert_eq!(
            (eps.code.as_str(), eps.field.as_str()),
            (code, field),
            "{eps:?}"
        );
        // M10: the EPS error names the causing message and its reporter.
        assert_eq!(eps.message_id, id);
        assert_eq!(eps.reporter, "urn:anima:core:dev");
        assert!(anima_protocol::rcs::is_uuid_v4(&eps.error_id));
        assert!(!eps.detail.is_empty());
    }
    publish(&kvstore, log_message("valid")).await.unwrap();
    let kept = logged_until(&core, |k| !k.is_empty()).await;
    assert_eq!(texts(&kept), ["{\"text\":\"valid\"}"]);
}

#[tokio::test]
async fn m6_a_backlog_is_delivered_critical_first_and_in_order_within_a_priority() {
    let core = start(LOGS).await;
    // The logger stopped: what is published queues for it.
    let (code, _) = core.cli(&["stop", LOGGER]).await;
    assert_eq!(code, 0);
    core.wait_module("logger", "stopped", |m| m["state"] == "stopped")
        .await;
    let kvstore = user(&core, "module-kvstore").await;
    let sent = [
        ("low-1", Priority::Low),
        ("normal-1", Priority::Normal),
        ("high-1", Priority::High),
        ("critical-1", Priority::Critical),
        ("low-2", Priority::Low),
        ("normal-2", Priority::Unspecified),
        ("critical-2", Priority::Critical),
        ("high-2", Priority::High),
    ];
    for (text, priority) in sent {
        let mut e = log_message(text);
        e.message_metadata.as_mut().unwrap().priority = priority as i32;
        assert_eq!(publish(&kvstore, e).await.unwrap().subscriptions, 1);
    }
    let (code, _) = core.cli(&["restart", LOGGER]).await;
    assert_eq!(code, 0);
    core.wait_leased("logger").await;
    let kept = logged_until(&core, |k| k.len() >= sent.len()).await;
    let order: Vec<String> = texts(&kept)
        .iter()
        .map(|t| {
            t.trim_start_matches("{\"text\":\"")
                .trim_end_matches("\"}")
                .to_owned()
        })
        .collect();
    assert_eq!(
        order,
        [
            "critical-1",
            "critical-2",
            "high-1",
            "high-2",
            "normal-1",
            "normal-2",
            "low-1",
            "low-2"
        ]
    );
}

#[tokio::test]
async fn m4_the_specifications_examples_published_by_an_operator_reach_the_logger_unless_expired() {
    let core = start(
        r#"
[[permission]]
module = "urn:anima:module:logger"
subscribe = ["LOG_MESSAGE", "SYSTEM_HEARTBEAT", "DATA_PROCESSED"]
"#,
    )
    .await;
    let examples = super::scaffold::repo().join("docs/rcs-examples");
    // complete.json expired on 2025-07-31: accepted, never delivered.
    for name in ["complete", "minimal", "logging"] {
        let file = examples.join(format!("{name}.json"));
        let (code, out) = core
            .cli(&["publish", "--json", file.to_str().unwrap()])
            .await;
        assert_eq!(code, 0, "{name}: {out}");
        let reply: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(reply["subscriptions"], 1, "{name}: {out}");
        assert_eq!(reply["source_module"], "urn:anima:user:dev");
    }
    let kept = logged_until(&core, |k| k.len() >= 2).await;
    let types: Vec<&str> = kept.iter().map(|m| m.event_type.as_str()).collect();
    assert_eq!(types, ["SYSTEM_HEARTBEAT", "LOG_MESSAGE"]);
    assert_eq!(kept[0].data, b"{\"status\":\"healthy\"}");
    assert_eq!(kept[1].priority, "high");
    assert_eq!(
        kept[1].correlation_id,
        "770e8400-e29b-41d4-a716-446655440abc"
    );
    assert!(kept.iter().all(|m| m.source_module == "urn:anima:user:dev"));
    // A message no module may receive is refused, and says so.
    let heartbeat = examples.join("minimal.json");
    let text = std::fs::read_to_string(&heartbeat)
        .unwrap()
        .replace("SYSTEM_HEARTBEAT", "NOBODY_LISTENS");
    let other = core.dir.path().join("other.json");
    std::fs::write(&other, text).unwrap();
    let (code, _) = core.cli(&["publish", other.to_str().unwrap()]).await;
    assert_eq!(code, 1);
}
