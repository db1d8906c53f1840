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

use anima_module_sdk::CoreClient;
use anima_module_sdk::messages::{
    PublishError, RequestError, Subscription, SubscriptionError, envelope, reply_to,
};
use anima_protocol::lease::Reason;
use anima_protocol::pb::mediator_client::MediatorClient;
use anima_protocol::pb::{
    DeadLetterPosition, DeadLettersRequest, Delivery, DeliveryMode, EpsError, Observability, Open,
    Priority, PublishReply, PublishRequest, Published, QualityOfService, RcsEnvelope, ReplyTo,
    SubscribeRequest, publish_reply, subscribe_item, subscribe_request,
};
use anima_protocol::{Connection, TlsIdentity, TrustRoot};
use anima_sample_modules::pb::logger_client::LoggerClient;
use anima_sample_modules::pb::{Logged, RecentRequest};
use anima_tests::{PATIENCE, reason};

use super::gateway::user;
use super::nats::{NatsServer, free_port, on_nats};
use super::serve::{CoreProcess, core_and_admin, module_entry, sample};

const KVSTORE: &str = "urn:anima:module:kvstore";
const LOGGER: &str = "urn:anima:module:logger";

/// A Core hosting kvstore (the publisher's identity) and the logger, with
/// `permissions` (TOML) and the dev user allowed to call the logger.
/// Whether this copy of the file runs on NATS JetStream: `main.rs` compiles
/// it twice, as `messages` (the embedded store) and `messages_on_nats`, so
/// the same tests hold on both backends (M14).
fn backend_is_nats() -> bool {
    module_path!().ends_with("_on_nats")
}

/// A Core with `config` (an `anima.toml`), its mediator on this copy's
/// backend: on NATS, a `nats-server` of its own started first.
pub(crate) async fn start_config(config: &str) -> CoreProcess {
    if !backend_is_nats() {
        return CoreProcess::start(Some(config)).await;
    }
    let port = free_port();
    let mut server = None;
    let mut core = CoreProcess::start_with(Some(&on_nats(config, port)), |certs| {
        server = Some(NatsServer::start(certs, port));
    })
    .await;
    core.nats = server;
    core
}

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
    // The logger's certificate is one of the dev identities.
    let core = start_config(&text).await;
    core.wait_leased("kvstore").await;
    core.wait_leased("logger").await;
    core
}

/// kvstore publishes LOG_MESSAGE; the logger receives it.
pub(crate) const LOGS: &str = r#"
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

pub(crate) fn log_message(text: &str) -> RcsEnvelope {
    envelope(
        "LOG_MESSAGE",
        "application/json",
        format!("{{\"text\":{text:?}}}").into_bytes(),
    )
}

/// What the logger kept, once `done` holds of it (within [`PATIENCE`]).
pub(crate) async fn logged_until(
    core: &CoreProcess,
    done: impl Fn(&[Logged]) -> bool,
) -> Vec<Logged> {
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

pub(crate) fn texts(kept: &[Logged]) -> Vec<String> {
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

/// kvstore receives JOB; the test subscribes as kvstore (its certificate),
/// and publishes as the dev operator.
const JOBS: &str = r#"
[[permission]]
module = "urn:anima:module:kvstore"
subscribe = ["JOB"]
"#;

/// A client of the Core's endpoint with `stem`'s certificate, as a module's
/// own code (or an operator's) would have it.
pub(crate) fn client_as(core: &CoreProcess, stem: &str) -> CoreClient {
    let dir = core.dir.path().join("certs/dev");
    CoreClient::new(
        core.admin.parse::<std::net::SocketAddr>().unwrap(),
        "urn:anima:core:dev".parse().unwrap(),
        TlsIdentity::from_pem_files(
            &dir.join(format!("{stem}.pem")),
            &dir.join(format!("{stem}.key")),
        )
        .unwrap(),
        TrustRoot::from_pem_file(&dir.join("ca.pem")).unwrap(),
    )
    .unwrap()
}

/// A JOB message `text` delivered `mode`, with `retries` and a 100 ms retry
/// delay.
fn job(text: &str, mode: DeliveryMode, retries: u32) -> RcsEnvelope {
    let mut e = envelope("JOB", "text/plain", text.as_bytes().to_vec());
    e.message_metadata.as_mut().unwrap().delivery_mode = mode as i32;
    e.quality_of_service = Some(QualityOfService {
        max_retries: Some(retries),
        retry_delay_ms: Some(100),
        ..QualityOfService::default()
    });
    e
}

/// A Core with `permissions` (and what else its config needs), the
/// operator's client, and kvstore's stream of JOB deliveries, `window` of
/// them outstanding at most.
async fn jobs_stream(permissions: &str, window: u32) -> (CoreProcess, CoreClient, Subscription) {
    let core = start(permissions).await;
    let operator = client_as(&core, "user-dev");
    let sub = client_as(&core, "module-kvstore")
        .subscribe(&["JOB"], window)
        .await
        .unwrap();
    (core, operator, sub)
}

/// The operator publishes JOB `text` (`at_least_once`, no retries); it is
/// the next delivery on `sub`, and is acknowledged.
async fn handled(operator: &CoreClient, sub: &mut Subscription, text: &str) {
    operator
        .publish(job(text, DeliveryMode::AtLeastOnce, 0))
        .await
        .unwrap();
    let got = next(sub).await;
    assert_eq!(text_of(&got), text);
    sub.ack(&got).await.unwrap();
}

/// The next delivery, within [`PATIENCE`].
async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a delivery in time")
        .expect("the stream goes on")
        .expect("a delivery")
}

fn text_of(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.envelope.as_ref().unwrap().payload.as_ref().unwrap().data)
        .into_owned()
}

#[tokio::test]
async fn m7_at_least_once_is_redelivered_with_backoff_up_to_its_retries_and_at_most_once_never() {
    let (_core, operator, mut sub) = jobs_stream(JOBS, 8).await;
    operator
        .publish(job("retried", DeliveryMode::AtLeastOnce, 2))
        .await
        .unwrap();
    let first = next(&mut sub).await;
    assert_eq!((text_of(&first), first.attempt), ("retried".into(), 1));
    // Refused: again after 100 ms, then after 200 ms (doubled), then no more.
    let mut refused_at = tokio::time::Instant::now();
    for (attempt, delay) in [(2, 100), (3, 200)] {
        sub.nack(&first, "not now").await.unwrap();
        let again = next(&mut sub).await;
        let waited = refused_at.elapsed();
        refused_at = tokio::time::Instant::now();
        assert_eq!((again.delivery, again.attempt), (first.delivery, attempt));
        assert!(
            waited >= Duration::from_millis(delay),
            "attempt {attempt} came after {waited:?}, before its {delay} ms backoff"
        );
    }
    sub.nack(&first, "still not").await.unwrap();
    // An at_most_once message is handed out once: refused, it is gone.
    operator
        .publish(job("once", DeliveryMode::AtMostOnce, 5))
        .await
        .unwrap();
    let once = next(&mut sub).await;
    assert_eq!((text_of(&once), once.attempt), ("once".into(), 1));
    sub.nack(&once, "refused").await.unwrap();
    // A last message shows what is still queued: neither comes again.
    handled(&operator, &mut sub, "last").await;
    let quiet = tokio::time::timeout(Duration::from_millis(600), sub.next()).await;
    assert!(quiet.is_err(), "something came again: {quiet:?}");
}

/// A delivery its subscriber neither acknowledges nor refuses is delivered
/// again, as its next attempt, once the Core's `ack_wait` has passed — at
/// that instant, not at an idle subscriber's next poll (on NATS, a second
/// apart: a look after 1 s and after 2 s would miss the bound below) — even
/// to a stream whose window it filled: a lapsed delivery is no longer
/// outstanding.
#[tokio::test]
async fn m7_a_delivery_left_unanswered_is_delivered_again_when_ack_wait_has_passed() {
    const ACK_WAIT: Duration = Duration::from_millis(1200);
    let config = format!(
        "{JOBS}\n[mediator]\nack_wait = \"{}ms\"\n",
        ACK_WAIT.as_millis()
    );
    let (_core, operator, mut sub) = jobs_stream(&config, 1).await;
    operator
        .publish(job("unanswered", DeliveryMode::AtLeastOnce, 1))
        .await
        .unwrap();
    let first = next(&mut sub).await;
    let handed = tokio::time::Instant::now();
    assert_eq!(first.attempt, 1);
    let again = next(&mut sub).await;
    let waited = handed.elapsed();
    eprintln!("delivered again after {waited:?} (ack_wait {ACK_WAIT:?})");
    assert_eq!((again.delivery, again.attempt), (first.delivery, 2));
    assert_eq!(text_of(&again), "unanswered");
    // The hand-out was before `handed`: a few ms of leeway below.
    assert!(
        waited + Duration::from_millis(50) >= ACK_WAIT,
        "delivered again after {waited:?}, before ack_wait ({ACK_WAIT:?})"
    );
    assert!(
        waited <= ACK_WAIT + Duration::from_millis(450),
        "delivered again {waited:?} after the first, ack_wait {ACK_WAIT:?}"
    );
    sub.ack(&again).await.unwrap();
}

/// An `at_most_once` delivery needs no answer, so it is not outstanding: a
/// subscriber that never answers one is still sent the next, whatever its
/// window; an answer to one is taken and ignored (no error item).
#[tokio::test]
async fn m7_at_most_once_deliveries_need_no_answer_and_do_not_fill_the_window() {
    let (_core, operator, mut sub) = jobs_stream(JOBS, 2).await;
    for i in 0..5 {
        operator
            .publish(job(&format!("once {i}"), DeliveryMode::AtMostOnce, 0))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut sub).await);
    }
    let texts: Vec<String> = got.iter().map(text_of).collect();
    assert_eq!(
        texts,
        (0..5).map(|i| format!("once {i}")).collect::<Vec<_>>()
    );
    // Answered late, as a subscriber may: nothing comes back for it, and
    // the stream goes on.
    sub.ack(&got[0]).await.unwrap();
    handled(&operator, &mut sub, "after").await;
}

#[tokio::test]
async fn m7_an_exactly_once_message_published_twice_is_delivered_once() {
    let core = start(JOBS).await;
    let operator = client_as(&core, "user-dev");
    let mut sub = client_as(&core, "module-kvstore")
        .subscribe(&[], 8)
        .await
        .unwrap();
    let twice = job("twice", DeliveryMode::ExactlyOnce, 0);
    let first = operator.publish(twice.clone()).await.unwrap();
    let second = operator.publish(twice).await.unwrap();
    assert_eq!((first.duplicate, first.subscriptions), (false, 1));
    assert_eq!((second.duplicate, second.subscriptions), (true, 0));
    let got = next(&mut sub).await;
    assert_eq!(text_of(&got), "twice");
    sub.ack(&got).await.unwrap();
    operator
        .publish(job("after", DeliveryMode::ExactlyOnce, 0))
        .await
        .unwrap();
    assert_eq!(text_of(&next(&mut sub).await), "after");
}

/// A subscription the Core refuses is tried again after waits that double
/// with each refusal in a row (the SDK's `run_subscriber`: 200 ms, 400 ms,
/// 800 ms …), not every 200 ms. The logger, with no `[[permission]]` to
/// receive anything, logs each refusal; by the Core's log's own timestamps,
/// its first four span at least the first three waits.
#[tokio::test]
async fn m11_a_refused_subscription_is_tried_again_after_doubling_waits() {
    let core = start("").await;
    let log = core.dir.path().join("stderr.log");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let refusals = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // Each line starts with the instant the Core logged it (RFC 3339).
        let at: Vec<i64> = text
            .lines()
            .filter(|l| l.contains("subscription to") && l.contains("no [[permission]] lets"))
            .filter_map(|l| l.split_whitespace().next())
            .map(|t| anima_protocol::rcs::parse_utc_ms(t).unwrap())
            .collect();
        if at.len() >= 4 {
            break at;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} refusals logged within {PATIENCE:?}",
            at.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let span = refusals[3] - refusals[0];
    // 200 + 400 + 800 ms, less what relaying the lines may shift them.
    assert!(
        span >= 1_300,
        "four refusals within {span} ms ({refusals:?}): the waits did not double"
    );
}

#[tokio::test]
async fn m11_a_delivery_held_when_the_lease_ends_is_delivered_again_after_and_not_counted() {
    let core = start(JOBS).await;
    let operator = client_as(&core, "user-dev");
    let kvstore = client_as(&core, "module-kvstore");
    let mut sub = kvstore.subscribe(&["JOB"], 8).await.unwrap();
    // No retries: only the lease's end can bring it again.
    operator
        .publish(job("held", DeliveryMode::AtLeastOnce, 0))
        .await
        .unwrap();
    let held = next(&mut sub).await;
    assert_eq!(held.attempt, 1);
    core.cli_ok(&["stop", KVSTORE]).await;
    // The stream ends, saying why; an answer now reaches nobody.
    let ended = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("the stream ends");
    match ended {
        Some(Err(SubscriptionError::Call(status))) => {
            assert_eq!(reason(&status), Some(Reason::NoLease), "{status:?}");
        }
        other => panic!("the stream went on after the lease ended: {other:?}"),
    }
    // Without a lease, no subscription opens.
    let refused = kvstore.subscribe(&["JOB"], 8).await;
    let refused = match refused {
        Err(status) => status,
        Ok(mut s) => match s.next().await {
            Some(Err(SubscriptionError::Call(status))) => status,
            other => panic!("a module without a lease subscribed: {other:?}"),
        },
    };
    assert_eq!(reason(&refused), Some(Reason::NoLease), "{refused:?}");
    core.cli_ok(&["restart", KVSTORE]).await;
    core.wait_leased("kvstore").await;
    let mut sub = kvstore.subscribe(&["JOB"], 8).await.unwrap();
    let again = next(&mut sub).await;
    assert_eq!((again.delivery, again.attempt), (held.delivery, 1));
    assert_eq!(text_of(&again), "held");
    sub.ack(&again).await.unwrap();
}

/// Many publishes in flight on one `PublishStream` (the SDK's `Publisher`):
/// each answered as `Publish` answers it — refusals among them — in the
/// order sent, every accepted one delivered; an operator's stream too; and
/// the stream ends `NO_LEASE` when the publisher's lease ends (M12, M11).
#[tokio::test]
async fn m12_m11_a_publish_stream_answers_each_message_and_ends_with_the_lease() {
    let grants = format!("{JOBS}\n[[permission]]\nmodule = \"{KVSTORE}\"\npublish = [\"JOB\"]\n");
    let core = start(&grants).await;
    let kvstore = client_as(&core, "module-kvstore");
    let mut sub = kvstore.subscribe(&["JOB"], 1024).await.unwrap();
    let publisher = kvstore.publisher().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let publisher = publisher.clone();
        tasks.spawn(async move {
            let mut accepted = Vec::new();
            for i in 0..25 {
                let mut e = job(&format!("s{t}-{i}"), DeliveryMode::AtLeastOnce, 3);
                let id = message_id(&e);
                let refuse = i % 10 == 9;
                if refuse {
                    e.payload.as_mut().unwrap().checksum = "0".repeat(64);
                }
                match publisher.publish(e).await {
                    Ok(p) => {
                        assert!(!refuse, "a bad checksum was accepted");
                        assert_eq!(p.message_id, id, "the answer is this message's");
                        accepted.push(id);
                    }
                    Err(PublishError::Refused(eps)) => {
                        assert!(refuse, "refused: {eps:?}");
                        assert_eq!(eps.message_id, id, "the refusal is this message's");
                    }
                    Err(e) => panic!("the stream failed: {e}"),
                }
            }
            accepted
        });
    }
    let mut accepted = std::collections::HashSet::new();
    while let Some(done) = tasks.join_next().await {
        accepted.extend(done.unwrap());
    }
    assert_eq!(accepted.len(), 16 * 23);
    let mut missing = accepted.clone();
    while !missing.is_empty() {
        let d = next(&mut sub).await;
        let id = message_id(d.envelope.as_ref().unwrap());
        assert!(
            missing.remove(&id),
            "{id} delivered but not accepted, or twice"
        );
        sub.ack(&d).await.unwrap();
    }
    // An operator publishes on a stream of its own.
    let operator = client_as(&core, "user-dev").publisher().await.unwrap();
    let p = operator
        .publish(job("operator", DeliveryMode::AtLeastOnce, 0))
        .await
        .unwrap();
    assert_eq!(p.subscriptions, 1);
    // The publisher's lease ends: so does its stream, saying why.
    core.cli_ok(&["stop", KVSTORE]).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let status = loop {
        match publisher
            .publish(job("late", DeliveryMode::AtLeastOnce, 0))
            .await
        {
            Err(PublishError::Call(status)) => break status,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the stream went on after the lease ended: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(reason(&status), Some(Reason::NoLease), "{status:?}");
}

/// A `PublishStream` request over the mediator's message size is refused
/// by the gRPC layer: the requests before it are answered, then the stream
/// ends with that error (`OUT_OF_RANGE`), not with `OK` as if the publisher
/// had closed it, so nothing sent after it looks stored (M12).
#[tokio::test]
async fn m12_a_publish_stream_ends_with_an_error_at_an_oversized_request() {
    let grants = format!("{JOBS}\n[[permission]]\nmodule = \"{KVSTORE}\"\npublish = [\"JOB\"]\n");
    let core = start(&grants).await;
    let conn = user(&core, "module-kvstore").await;
    let oversized = {
        let mut e = job("oversized", DeliveryMode::AtLeastOnce, 0);
        // Over the mediator's 1,115,136-byte request limit.
        e.payload.as_mut().unwrap().data = vec![b'x'; 1_200_000];
        e
    };
    let requests = [
        job("before", DeliveryMode::AtLeastOnce, 0),
        oversized,
        job("after", DeliveryMode::AtLeastOnce, 0),
    ]
    .map(|envelope| PublishRequest {
        envelope: Some(envelope),
    });
    let mut replies = MediatorClient::new(conn.channel())
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, replies.message())
        .await
        .expect("an answer in time")
        .expect("the first request is answered")
        .expect("the stream goes on");
    assert!(
        matches!(first.outcome, Some(publish_reply::Outcome::Published(_))),
        "{first:?}"
    );
    let end = tokio::time::timeout(PATIENCE, replies.message())
        .await
        .expect("the end in time");
    let status = end.expect_err("the stream ends with the oversized request's error");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
}

/// A JOB `text` for the dead-letter queue that expired before it was
/// published: the Core dead-letters it when it comes to it (M4).
fn expired_job(text: &str) -> RcsEnvelope {
    let mut late = job(text, DeliveryMode::AtLeastOnce, 0);
    late.quality_of_service.as_mut().unwrap().dead_letter_queue = Some(true);
    late.message_metadata.as_mut().unwrap().expires_at = "2025-01-01T00:00:00Z".into();
    late
}

/// The operator publishes JOB "fine"; it is the next delivery on `sub` (so
/// no expired message published before it was delivered), and is
/// acknowledged.
async fn fine_comes_next(operator: &CoreClient, sub: &mut Subscription) {
    operator
        .publish(job("fine", DeliveryMode::AtLeastOnce, 0))
        .await
        .unwrap();
    let fine = next(sub).await;
    assert_eq!(
        text_of(&fine),
        "fine",
        "an expired message is never delivered"
    );
    sub.ack(&fine).await.unwrap();
}

/// The dead letters as `anima dlq list --json` prints them.
async fn dead_letters(core: &CoreProcess) -> Vec<serde_json::Value> {
    let out = core.cli_ok(&["dlq", "list", "--json"]).await;
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn m8_m4_spent_and_expired_messages_go_to_the_dead_letter_queue_which_operators_replay_and_purge()
 {
    let (core, operator, mut sub) = jobs_stream(JOBS, 8).await;
    let mut broken = job("broken", DeliveryMode::AtLeastOnce, 0);
    broken
        .quality_of_service
        .as_mut()
        .unwrap()
        .dead_letter_queue = Some(true);
    let id = broken.message_metadata.as_ref().unwrap().message_id.clone();
    operator.publish(broken).await.unwrap();
    let got = next(&mut sub).await;
    sub.nack(&got, "cannot parse").await.unwrap();
    // Expired before it could be delivered (M4): dead-lettered, not handed out.
    operator.publish(expired_job("late")).await.unwrap();
    fine_comes_next(&operator, &mut sub).await;

    let dead = dead_letters(&core).await;
    let reasons: Vec<(&str, u64)> = dead
        .iter()
        .map(|d| {
            (
                d["reason"].as_str().unwrap(),
                d["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(reasons, [("MAX_RETRIES: cannot parse", 1), ("EXPIRED", 0)]);
    assert_eq!(dead[0]["message_id"], id.as_str());
    assert_eq!(dead[0]["module"], KVSTORE);
    assert_eq!(dead[0]["event_type"], "JOB");
    let delivery = dead[0]["delivery"].as_u64().unwrap().to_string();
    let shown: serde_json::Value =
        serde_json::from_str(&core.cli_ok(&["dlq", "show", &delivery]).await).unwrap();
    assert_eq!(shown["payload"]["data"], "broken");
    assert_eq!(shown["message_metadata"]["message_id"], id.as_str());

    // Replayed, it comes again as new; acknowledged, it is gone.
    assert_eq!(
        core.cli_ok(&["dlq", "replay", &delivery]).await.trim(),
        "replayed 1"
    );
    let again = next(&mut sub).await;
    assert_eq!((again.delivery, again.attempt), (got.delivery, 1));
    sub.ack(&again).await.unwrap();
    assert_eq!(dead_letters(&core).await.len(), 1);
    assert_eq!(
        core.cli_ok(&["dlq", "purge", "--all"]).await.trim(),
        "purged 1"
    );
    assert!(dead_letters(&core).await.is_empty());
    let (code, _) = core.cli(&["dlq", "replay", &delivery]).await;
    assert_eq!(code, 1, "no such dead letter any more");
}

/// More dead letters than one reply can carry (three of 600 KB against the
/// mediator's 1,115,136-byte reply) are listed page by page: `anima dlq
/// list` shows them all, in order, and `ListDeadLetters` says when more
/// follow.
#[tokio::test]
async fn m8_a_dead_letter_queue_larger_than_one_reply_is_listed_page_by_page() {
    let (core, operator, mut sub) = jobs_stream(JOBS, 8).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let late = expired_job(&format!("{i}{}", "x".repeat(600_000)));
        ids.push(late.message_metadata.as_ref().unwrap().message_id.clone());
        operator.publish(late).await.unwrap();
    }
    fine_comes_next(&operator, &mut sub).await;

    let listed: Vec<String> = dead_letters(&core)
        .await
        .iter()
        .map(|d| d["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids, "all three, by delivery");

    let mut mediator = MediatorClient::new(user(&core, "user-dev").await.channel());
    let first = mediator
        .list_dead_letters(DeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.dead_letters.len(),
        1,
        "one 600 KB dead letter a page here"
    );
    assert!(first.more);
    let last = first.dead_letters.last().unwrap();
    let rest = mediator
        .list_dead_letters(DeadLettersRequest {
            after: Some(DeadLetterPosition {
                event_type: last.event_type.clone(),
                module: last.module.clone(),
                delivery: last.delivery,
            }),
            ..DeadLettersRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.dead_letters[0].delivery, last.delivery + 1);
}

/// A JOB request whose reply is JOB_DONE within `timeout_ms`.
pub(crate) fn job_request(text: &str, timeout_ms: u64) -> RcsEnvelope {
    let mut e = job(text, DeliveryMode::AtLeastOnce, 0);
    e.routing.as_mut().unwrap().reply_to = Some(ReplyTo {
        event_type: "JOB_DONE".into(),
        timeout_ms: Some(timeout_ms),
        ..ReplyTo::default()
    });
    e.message_metadata.as_mut().unwrap().correlation_id = anima_protocol::rcs::new_uuid_v4();
    e.observability = Some(Observability {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        ..Observability::default()
    });
    e
}

#[tokio::test]
async fn m9_a_request_gets_the_reply_its_subscriber_sends_with_its_id_as_correlation() {
    let core = start(JOBS).await;
    let operator = client_as(&core, "user-dev");
    let kvstore = client_as(&core, "module-kvstore");
    let mut sub = kvstore.subscribe(&["JOB"], 8).await.unwrap();
    let request = job_request("compute", 5_000);
    let id = request
        .message_metadata
        .as_ref()
        .unwrap()
        .message_id
        .clone();
    let asked = tokio::spawn(async move { operator.request(request).await });
    let got = next(&mut sub).await;
    let received = got.envelope.clone().unwrap();
    assert_eq!(received.message_metadata.as_ref().unwrap().message_id, id);
    // A message of another type, or to no request, is no reply: refused
    // like any message kvstore may not publish.
    let stray = envelope("JOB_DONE", "text/plain", b"stray".to_vec());
    let refused = kvstore.publish(stray).await.unwrap_err();
    assert!(
        matches!(&refused, PublishError::Refused(e) if e.code == "NOT_PERMITTED"),
        "{refused:?}"
    );
    let reply = reply_to(&received, "text/plain", b"42".to_vec()).unwrap();
    let answered = kvstore.publish(reply).await.unwrap();
    assert!(answered.reply, "{answered:?}");
    assert_eq!(answered.subscriptions, 0);
    sub.ack(&got).await.unwrap();
    let reply = asked.await.unwrap().unwrap();
    let meta = reply.message_metadata.as_ref().unwrap();
    assert_eq!(meta.correlation_id, id);
    assert_eq!(reply.routing.as_ref().unwrap().source_module, KVSTORE);
    assert_eq!(reply.payload.as_ref().unwrap().data, b"42");
    // M13: the trace goes on in the reply.
    assert_eq!(
        reply.observability.as_ref().unwrap().trace_id,
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    // A request with no reply type is refused.
    let mut no_reply = job("no reply", DeliveryMode::AtLeastOnce, 0);
    no_reply.routing.as_mut().unwrap().reply_to = Some(ReplyTo::default());
    let refused = client_as(&core, "user-dev")
        .request(no_reply)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, RequestError::Refused(e) if e.code == "NO_REPLY_TO"),
        "{refused:?}"
    );
}

/// The W3C `traceparent` of the trace used below.
pub(crate) const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The next delivery's trace id, span id and `traceparent`, acknowledged.
async fn next_trace(sub: &mut Subscription) -> (String, String, String) {
    let got = next(sub).await;
    sub.ack(&got).await.unwrap();
    let o = got
        .envelope
        .as_ref()
        .unwrap()
        .observability
        .clone()
        .expect("every delivered message carries its trace");
    (o.trace_id, o.span_id, got.traceparent)
}

#[tokio::test]
async fn m13_every_message_carries_a_trace_its_deliveries_a_traceparent_and_replies_go_on_in_it() {
    let core = start(JOBS).await;
    let operator = user(&core, "user-dev").await;
    let kvstore = client_as(&core, "module-kvstore");
    let mut sub = kvstore.subscribe(&["JOB"], 8).await.unwrap();

    // The publisher's `traceparent` starts the trace of a message naming none.
    let mut call = tonic::Request::new(PublishRequest {
        envelope: Some(job("traced", DeliveryMode::AtLeastOnce, 0)),
    });
    call.metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let published = MediatorClient::new(operator.channel())
        .publish(call)
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(
            published.outcome,
            Some(publish_reply::Outcome::Published(_))
        ),
        "{published:?}"
    );
    assert_eq!(
        next_trace(&mut sub).await,
        (
            "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            "00f067aa0ba902b7".to_owned(),
            TRACEPARENT.to_owned()
        )
    );

    // Neither: the Core starts a trace.
    publish(&operator, job("untraced", DeliveryMode::AtLeastOnce, 0))
        .await
        .unwrap();
    let (trace_id, span_id, traceparent) = next_trace(&mut sub).await;
    assert_eq!((trace_id.len(), span_id.len()), (32, 16));
    assert_eq!(traceparent, format!("00-{trace_id}-{span_id}-01"));

    // Ids of the seed's own form are passed on as they are, without a
    // `traceparent`; the header does not replace them.
    let mut seed_form = job("seed form", DeliveryMode::AtLeastOnce, 0);
    seed_form.observability = Some(Observability {
        trace_id: "auth-trace-456".into(),
        span_id: "span-7".into(),
        ..Observability::default()
    });
    let mut call = tonic::Request::new(PublishRequest {
        envelope: Some(seed_form),
    });
    call.metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    MediatorClient::new(operator.channel())
        .publish(call)
        .await
        .unwrap();
    assert_eq!(
        next_trace(&mut sub).await,
        ("auth-trace-456".into(), "span-7".into(), String::new())
    );

    // Request and reply: one trace, the reply in a span of its own.
    let request = job_request("compute", 5_000);
    let asked = tokio::spawn({
        let operator = client_as(&core, "user-dev");
        async move { operator.request(request).await }
    });
    let got = next(&mut sub).await;
    assert_eq!(got.traceparent, TRACEPARENT);
    let reply = reply_to(got.envelope.as_ref().unwrap(), "text/plain", b"42".to_vec()).unwrap();
    kvstore.publish(reply).await.unwrap();
    sub.ack(&got).await.unwrap();
    let reply = asked.await.unwrap().unwrap();
    let o = reply.observability.unwrap();
    assert_eq!(o.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(o.span_id.len(), 16);
    assert_ne!(o.span_id, "00f067aa0ba902b7", "the reply's own span");
}

fn message_id(e: &RcsEnvelope) -> String {
    e.message_metadata.as_ref().unwrap().message_id.clone()
}

#[tokio::test]
async fn m13_anima_subscribe_shows_what_the_core_accepts_and_takes_nothing_from_subscribers() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let core = start(LOGS).await;
    let mut watcher = tokio::process::Command::new(anima_tests::bin_path("anima"))
        .args([
            "subscribe",
            "LOG_MESSAGE",
            "--json",
            "--count",
            "2",
            "--admin",
            &core.admin,
        ])
        .current_dir(core.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(watcher.stderr.take().unwrap()).lines();
    let watching = tokio::time::timeout(PATIENCE, stderr.next_line())
        .await
        .expect("the watch opens in time")
        .unwrap()
        .unwrap_or_default();
    assert!(watching.starts_with("watching LOG_MESSAGE"), "{watching}");

    let kvstore = user(&core, "module-kvstore").await;
    let mut ids = Vec::new();
    for text in ["first", "second"] {
        let sent = log_message(text);
        ids.push(message_id(&sent));
        publish(&kvstore, sent).await.unwrap();
    }
    let out = tokio::time::timeout(PATIENCE, watcher.wait_with_output())
        .await
        .expect("anima subscribe exits after --count messages")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown: Vec<RcsEnvelope> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| anima_protocol::rcs::from_json(l.as_bytes()).expect("the RCS JSON form"))
        .collect();
    let shown_ids: Vec<String> = shown.iter().map(message_id).collect();
    assert_eq!(shown_ids, ids);
    assert_eq!(shown[0].routing.as_ref().unwrap().source_module, KVSTORE);
    assert_eq!(
        shown[0].observability.as_ref().unwrap().trace_id.len(),
        32,
        "as accepted: with the trace the Core gave it"
    );
    // The logger still gets both: the watch took nothing from it.
    let kept = logged_until(&core, |k| k.len() >= 2).await;
    assert_eq!(
        texts(&kept),
        ["{\"text\":\"first\"}", "{\"text\":\"second\"}"]
    );
    // Modules may not watch.
    let refused = MediatorClient::new(kvstore.channel())
        .watch(anima_protocol::pb::WatchMessagesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

/// M13: the event types of replies are the requesters' choice, so they are
/// counted by name only when a permission names them; otherwise a module
/// could add a metric label with every request (PROTOCOL.md §13.7).
#[tokio::test]
async fn m13_reply_types_no_permission_names_do_not_grow_the_metric_labels() {
    let core = start(JOBS).await;
    let operator = client_as(&core, "user-dev");
    let kvstore = client_as(&core, "module-kvstore");
    let mut sub = kvstore.subscribe(&["JOB"], 8).await.unwrap();
    for i in 0..20 {
        let mut request = job_request(&format!("job {i}"), 5_000);
        let reply_type = format!("DONE_{i}");
        request
            .routing
            .as_mut()
            .unwrap()
            .reply_to
            .as_mut()
            .unwrap()
            .event_type = reply_type.clone();
        let asked = tokio::spawn({
            let operator = operator.clone();
            async move { operator.request(request).await }
        });
        let got = next(&mut sub).await;
        let reply = reply_to(got.envelope.as_ref().unwrap(), "text/plain", b"ok".to_vec()).unwrap();
        assert_eq!(reply.routing.as_ref().unwrap().event_type, reply_type);
        kvstore.publish(reply).await.unwrap();
        sub.ack(&got).await.unwrap();
        asked
            .await
            .unwrap()
            .expect("the reply reached the requester");
    }
    let metrics = core_metrics(&core).await;
    assert!(
        !metrics.contains("DONE_"),
        "a requester's reply types became labels:\n{metrics}"
    );
    assert!(
        metrics.contains("anima_messages_total{event_type=\"other\",outcome=\"reply\"} 20"),
        "{metrics}"
    );
}

/// `Open` naming one event type many times subscribes to it once: each
/// message is delivered once, and the list costs the Core no more than the
/// type named once.
#[tokio::test]
async fn m5_an_open_naming_a_type_many_times_subscribes_to_it_once() {
    let core = start(JOBS).await;
    let operator = client_as(&core, "user-dev");
    let kvstore = client_as(&core, "module-kvstore");
    let many = vec!["JOB"; 10_000];
    let mut sub = kvstore.subscribe(&many, 8).await.unwrap();
    for text in ["one", "two", "three", "end"] {
        operator
            .publish(job(text, DeliveryMode::AtLeastOnce, 0))
            .await
            .unwrap();
    }
    let mut texts = Vec::new();
    while texts.last().map(String::as_str) != Some("end") && texts.len() < 8 {
        let d = next(&mut sub).await;
        texts.push(text_of(&d));
        sub.ack(&d).await.unwrap();
    }
    assert_eq!(
        texts,
        ["one", "two", "three", "end"],
        "each message once, in order"
    );
}

#[tokio::test]
async fn m9_a_reply_after_the_timeout_is_discarded_and_counted() {
    let core = start(JOBS).await;
    let operator = client_as(&core, "user-dev");
    let kvstore = client_as(&core, "module-kvstore");
    let mut sub = kvstore.subscribe(&["JOB"], 8).await.unwrap();
    let asked = tokio::spawn(async move { operator.request(job_request("slow", 300)).await });
    let got = next(&mut sub).await;
    let refused = asked.await.unwrap().unwrap_err();
    let RequestError::Refused(timeout) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(
        (timeout.code.as_str(), timeout.recoverable),
        ("TIMEOUT", true)
    );
    let reply = reply_to(
        got.envelope.as_ref().unwrap(),
        "text/plain",
        b"late".to_vec(),
    )
    .unwrap();
    let late = kvstore.publish(reply).await.unwrap_err();
    assert!(
        matches!(&late, PublishError::Refused(e) if e.code == "LATE_REPLY"),
        "{late:?}"
    );
    let metrics = core_metrics(&core).await;
    // JOB_DONE, the requester's reply type, is named by no permission here:
    // counted as `other` (PROTOCOL.md §13.7).
    assert!(
        metrics.contains("anima_messages_total{event_type=\"other\",outcome=\"LATE_REPLY\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("anima_messages_total{event_type=\"JOB\",outcome=\"TIMEOUT\"} 1"),
        "{metrics}"
    );
    // prometheus-client ends each help text with a full stop of its own.
    let helps: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("# HELP"))
        .collect();
    assert!(helps.len() >= 5, "{metrics}");
    assert!(
        helps.iter().all(|l| l.ends_with('.') && !l.ends_with("..")),
        "{helps:#?}"
    );
}

/// The Core's `/metrics` as its operator reads them.
async fn core_metrics(core: &CoreProcess) -> String {
    super::gateway::metrics(&user(core, "user-dev").await).await
}

/// The timeout is kept within 10 ms (M9): alone on the machine, as every
/// `serial_` test. The Core counts `timeout_ms` from its receipt of the
/// request; the requester sees it plus one round trip over loopback, which
/// is measured just before each request (a publish the Core refuses at once,
/// the same connection, the same size) and taken off. Both are printed.
#[tokio::test]
async fn serial_m9_no_reply_is_answered_timeout_within_10ms_of_timeout_ms() {
    let core = start(JOBS).await;
    let operator = client_as(&core, "user-dev");
    let _sub = client_as(&core, "module-kvstore")
        .subscribe(&["JOB"], 64)
        .await
        .unwrap();
    // A first request warms the connection.
    let _ = operator.request(job_request("warm", 50)).await;
    let timeout = Duration::from_millis(100);
    let (mut seen, mut late_by) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let mut refused_at_once = job_request("round trip", 100);
        refused_at_once
            .message_metadata
            .as_mut()
            .unwrap()
            .message_id = "not-a-uuid".into();
        let started = std::time::Instant::now();
        let refused = operator.publish(refused_at_once).await.unwrap_err();
        let round_trip = started.elapsed();
        assert!(matches!(&refused, PublishError::Refused(e) if e.code == "INVALID_FIELD"));
        let started = std::time::Instant::now();
        let refused = operator
            .request(job_request("unanswered", 100))
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(&refused, RequestError::Refused(e) if e.code == "TIMEOUT"),
            "{refused:?}"
        );
        assert!(elapsed >= timeout, "{elapsed:?}");
        seen.push(elapsed - timeout);
        late_by.push((elapsed - timeout).saturating_sub(round_trip));
    }
    seen.sort();
    late_by.sort();
    eprintln!("TIMEOUT after timeout_ms, at the requester: {seen:?}");
    eprintln!("the same, less the round trip before: {late_by:?}");
    assert!(
        late_by.iter().all(|d| *d <= Duration::from_millis(10)),
        "{late_by:?}"
    );
}

/// How many messages the durability test publishes.
const DURABLE: usize = 10_000;
/// Publishes in flight at once.
const IN_FLIGHT: usize = 32;

/// Publishes `messages` through `core` until each is acknowledged, `kill
/// -9`-ing and restarting the Core after each of `kills` (counts of
/// acknowledged messages); returns the ids acknowledged. A publish that
/// fails (the Core gone) is sent again, as a publisher would.
async fn publish_through_kills(
    core: &mut CoreProcess,
    messages: Vec<RcsEnvelope>,
    kills: &[usize],
) -> Vec<String> {
    let mut acked = Vec::with_capacity(messages.len());
    let mut pending: std::collections::VecDeque<RcsEnvelope> = messages.into();
    let mut kills = kills.iter().copied().peekable();
    while !pending.is_empty() {
        let operator = client_as(core, "user-dev");
        let mut flight = tokio::task::JoinSet::new();
        let mut down = false;
        while !down && (!pending.is_empty() || !flight.is_empty()) {
            while flight.len() < IN_FLIGHT
                && let Some(e) = pending.pop_front()
            {
                let operator = operator.clone();
                flight.spawn(async move { (operator.publish(e.clone()).await, e) });
            }
            let Some(done) = flight.join_next().await else {
                break;
            };
            match done.unwrap() {
                (Ok(p), _) => acked.push(p.message_id),
                // The Core went away: sent again after the restart.
                (Err(_), e) => {
                    pending.push_back(e);
                    down = true;
                }
            }
            if kills.peek().is_some_and(|k| acked.len() >= *k) {
                kills.next();
                core.kill9_and_restart().await;
                down = true;
            }
        }
        while let Some(done) = flight.join_next().await {
            match done.unwrap() {
                (Ok(p), _) => acked.push(p.message_id),
                (Err(_), e) => pending.push_back(e),
            }
        }
        if down {
            core.wait_leased("kvstore").await;
        }
    }
    acked
}

/// Every acknowledged `at_least_once` message is delivered at least once,
/// every `exactly_once` one exactly once, through three `kill -9`s of the
/// Core while publishing (M12). The subscriber counts.
#[tokio::test]
async fn m12_nothing_acknowledged_is_lost_through_three_kill_9s_of_the_core() {
    through_three_kills("").await;
}

/// [`m12_nothing_acknowledged_is_lost_through_three_kill_9s_of_the_core`]
/// with `mediator` (lines of `[mediator]`) in the Core's configuration.
pub(crate) async fn through_three_kills(mediator: &str) {
    let mut core = start(&format!("{JOBS}\n[mediator]\n{mediator}\n")).await;
    let messages: Vec<RcsEnvelope> = (0..DURABLE)
        .map(|i| {
            let mode = if i % 2 == 0 {
                DeliveryMode::AtLeastOnce
            } else {
                DeliveryMode::ExactlyOnce
            };
            job(&format!("m{i}"), mode, 3)
        })
        .collect();
    let exactly: std::collections::HashSet<String> = messages
        .iter()
        .filter(|e| {
            e.message_metadata.as_ref().unwrap().delivery_mode == DeliveryMode::ExactlyOnce as i32
        })
        .map(|e| e.message_metadata.as_ref().unwrap().message_id.clone())
        .collect();
    let started = std::time::Instant::now();
    let acked = publish_through_kills(&mut core, messages, &[2_000, 5_000, 8_000]).await;
    let published_in = started.elapsed();
    let acked: std::collections::HashSet<String> = acked.into_iter().collect();
    assert_eq!(
        acked.len(),
        DURABLE,
        "every message is acknowledged in the end"
    );

    let mut sub = client_as(&core, "module-kvstore")
        .subscribe(&["JOB"], 256)
        .await
        .unwrap();
    let mut seen: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut missing = acked.clone();
    while !missing.is_empty() {
        let d = next(&mut sub).await;
        let id = message_id(d.envelope.as_ref().unwrap());
        missing.remove(&id);
        *seen.entry(id).or_default() += 1;
        sub.ack(&d).await.unwrap();
    }
    let drained_in = started.elapsed() - published_in;
    // What is still queued (redeliveries of unacknowledged hand-outs) comes
    // within a short wait; none of it is an exactly_once message seen before.
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        let id = message_id(d.envelope.as_ref().unwrap());
        *seen.entry(id).or_default() += 1;
        sub.ack(&d).await.unwrap();
    }
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(id, n)| **n > 1 && exactly.contains(*id))
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "exactly_once messages delivered more than once: {twice:?}"
    );
    eprintln!(
        "m12: {DURABLE} published through 3 kill -9s in {published_in:?}, delivered in \
         {drained_in:?}; {} deliveries",
        seen.values().sum::<u32>()
    );
}

/// A store at its limit refuses publishes `STORE_FULL` (recoverable, nothing
/// stored), delivers everything it accepted, and takes messages again once
/// they are acknowledged (M12: bounded disk use, never silent loss).
#[tokio::test]
async fn m12_a_full_store_refuses_store_full_and_takes_messages_again_once_acknowledged() {
    let core = start(&format!("{JOBS}\n[mediator]\nmax_store_bytes = 1048576\n")).await;
    let operator = client_as(&core, "user-dev");
    let body = "x".repeat(4096);
    let mut accepted = 0;
    let refusal = loop {
        let e = job(&format!("{accepted} {body}"), DeliveryMode::AtLeastOnce, 0);
        match operator.publish(e).await {
            Ok(_) => accepted += 1,
            Err(PublishError::Refused(e)) => break e,
            Err(e) => panic!("publish failed: {e}"),
        }
        assert!(accepted < 1_000, "4 MiB accepted by a 1 MiB store");
    };
    assert_eq!(refusal.code, "STORE_FULL", "{refusal:?}");
    assert!(refusal.recoverable, "{refusal:?}");
    assert!(
        accepted >= 128,
        "only {accepted} messages of 4 KiB fit in 1 MiB"
    );

    let mut sub = client_as(&core, "module-kvstore")
        .subscribe(&["JOB"], 64)
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < accepted {
        let d = next(&mut sub).await;
        let text = text_of(&d);
        let n: usize = text.split(' ').next().unwrap().parse().unwrap();
        seen.insert(n);
        sub.ack(&d).await.unwrap();
    }
    assert_eq!(seen, (0..accepted).collect(), "every accepted message");
    // Acknowledgements free the space (they are applied as they arrive).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match operator
            .publish(job("after", DeliveryMode::AtLeastOnce, 0))
            .await
        {
            Ok(_) => break,
            Err(PublishError::Refused(e))
                if e.code == "STORE_FULL" && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no room after every delivery was acknowledged: {e}"),
        }
    }
    assert_eq!(text_of(&next(&mut sub).await), "after");
}

#[tokio::test]
async fn m10_every_eps_error_goes_to_the_sender_and_to_the_error_handler() {
    let core = start(&format!(
        "{LOGS}\n[mediator]\nerror_handler = \"{LOGGER}\"\n"
    ))
    .await;
    // An operator watching EPS_ERROR sees it as it is queued (§13.10).
    let operator = user(&core, "user-dev").await;
    let mut watched = MediatorClient::new(operator.channel())
        .watch(anima_protocol::pb::WatchMessagesRequest {
            event_types: vec!["EPS_ERROR".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let kvstore = user(&core, "module-kvstore").await;
    let mut bad = log_message("refused");
    bad.message_metadata.as_mut().unwrap().correlation_id = anima_protocol::rcs::new_uuid_v4();
    bad.payload.as_mut().unwrap().size_bytes += 1;
    let cause = bad.message_metadata.clone().unwrap();
    let eps = publish(&kvstore, bad).await.unwrap_err();
    assert_eq!(eps.code, "SIZE_MISMATCH");
    let shown = tokio::time::timeout(PATIENCE, watched.message())
        .await
        .expect("the watcher is shown the error handler's message")
        .unwrap()
        .unwrap()
        .envelope
        .unwrap();
    assert_eq!(shown.routing.unwrap().event_type, "EPS_ERROR");
    assert_eq!(
        shown.message_metadata.unwrap().correlation_id,
        cause.correlation_id
    );
    let kept = logged_until(&core, |k| k.iter().any(|m| m.event_type == "EPS_ERROR")).await;
    let handled = kept.iter().find(|m| m.event_type == "EPS_ERROR").unwrap();
    assert_eq!(handled.source_module, "urn:anima:core:dev");
    assert_eq!(handled.correlation_id, cause.correlation_id);
    let json: serde_json::Value = serde_json::from_slice(&handled.data).unwrap();
    assert_eq!(
        json["error_id"],
        eps.error_id.as_str(),
        "the same error, to both"
    );
    assert_eq!(json["code"], "SIZE_MISMATCH");
    assert_eq!(json["category"], "integrity");
    assert_eq!(json["severity"], "error");
    assert_eq!(json["message_id"], cause.message_id.as_str());
    assert_eq!(json["field"], "payload.size_bytes");
    assert_eq!(json["recoverable"], true);
    assert_eq!(json["reporter"], "urn:anima:core:dev");
}
