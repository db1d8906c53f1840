//! One message space for several Cores (M14, PROTOCOL.md §13.11): two
//! Cores with `[mediator] backend = "nats"` on the same `nats-server`, a
//! publisher on one and the subscriber on the other, and either Core
//! `kill -9`ed with messages it accepted: nothing accepted is lost.

use std::path::Path;

use anima_module_sdk::messages::reply_to;

use super::messages::{LOGS, client_as, job_request, log_message, logged_until, texts};
use super::nats::{NatsServer, free_port, on_nats};
use super::serve::{CoreProcess, core_and_admin, module_entry, sample};

fn resident(name: &str) -> String {
    module_entry(
        name,
        &format!(
            "type = \"resident-private\"\ncommand = \"{}\"\n",
            sample(name)
        ),
    )
}

/// Copies the dev certificates of one Core to another's directory: the
/// two share a CA (the NATS server trusts it) and the identities.
fn copy_certs(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Publishes `texts` as kvstore through `core`, each acknowledged.
async fn publish_all(core: &CoreProcess, texts: impl IntoIterator<Item = String>) {
    let kvstore = client_as(core, "module-kvstore");
    for text in texts {
        kvstore.publish(log_message(&text)).await.unwrap();
    }
}

#[tokio::test]
async fn m14_modules_on_two_cores_share_event_types_and_a_killed_core_loses_nothing_accepted() {
    let port = free_port();
    // The grants name both modules on both Cores: the message space is
    // shared, each Core hosts one of them.
    let mediator = "\n[[permission]]\nmodule = \"urn:anima:module:kvstore\"\nsubscribe = [\"JOB\"]\n\
                    \n[mediator]\nack_wait = \"2s\"\n";
    let a_text = on_nats(
        &(core_and_admin("") + &resident("kvstore") + LOGS + mediator),
        port,
    );
    let mut server = None;
    let mut a = CoreProcess::start_with(Some(&a_text), |certs| {
        server = Some(NatsServer::start(certs, port));
    })
    .await;
    a.nats = server;
    a.wait_leased("kvstore").await;
    let b_text = on_nats(
        &(core_and_admin("")
            + &resident("logger")
            + "\n[[policy]]\nuser = \"urn:anima:user:dev\"\nallow = [\"urn:anima:module:logger\"]\n"
            + LOGS
            + mediator),
        port,
    );
    let a_certs = a.dir.path().join("certs/dev");
    let mut b = CoreProcess::start_with(Some(&b_text), |certs| copy_certs(&a_certs, certs)).await;
    b.wait_leased("logger").await;

    // Published on A, received on B.
    publish_all(&a, (0..3).map(|i| format!("a{i}"))).await;
    let kept = logged_until(&b, |k| k.len() >= 3).await;
    assert_eq!(texts(&kept).len(), 3, "{kept:#?}");
    assert!(
        kept.iter()
            .all(|k| k.source_module == "urn:anima:module:kvstore")
    );

    // A request to B, answered by a subscriber on A: the reply goes
    // through A to the requester waiting on B.
    let mut jobs = client_as(&a, "module-kvstore")
        .subscribe(&["JOB"], 8)
        .await
        .unwrap();
    let asking = tokio::spawn({
        let operator = client_as(&b, "user-dev");
        async move { operator.request(job_request("question", 10_000)).await }
    });
    let request = tokio::time::timeout(anima_tests::PATIENCE, jobs.next())
        .await
        .expect("the request within PATIENCE")
        .unwrap()
        .unwrap();
    let envelope = request.envelope.clone().unwrap();
    let answer = reply_to(&envelope, "text/plain", b"42".to_vec()).unwrap();
    let published = client_as(&a, "module-kvstore")
        .publish(answer)
        .await
        .unwrap();
    assert!(published.reply, "{published:?}");
    jobs.ack(&request).await.unwrap();
    let reply = asking.await.unwrap().unwrap();
    assert_eq!(reply.payload.unwrap().data, b"42");
    assert_eq!(
        reply.message_metadata.unwrap().correlation_id,
        envelope.message_metadata.unwrap().message_id
    );

    // B (and with it the logger) is killed; what A accepts meanwhile is
    // delivered once B is back.
    b.child.kill9().await;
    let while_down: Vec<String> = (0..50).map(|i| format!("down{i}")).collect();
    publish_all(&a, while_down.clone()).await;
    b.restart().await;
    b.wait_leased("logger").await;
    let kept = logged_until(&b, |k| k.len() >= 50).await;
    let mut got: Vec<String> = texts(&kept)
        .into_iter()
        .map(|t| {
            serde_json::from_str::<serde_json::Value>(&t).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    got.sort();
    let mut want = while_down;
    want.sort();
    assert_eq!(got, want, "everything A accepted while B was down");

    // A is killed right after accepting: B still delivers all of it.
    let last: Vec<String> = (0..50).map(|i| format!("last{i}")).collect();
    publish_all(&a, last.clone()).await;
    a.child.kill9().await;
    let kept = logged_until(&b, |k| {
        texts(k).iter().filter(|t| t.contains("last")).count() >= 50
    })
    .await;
    let got: std::collections::BTreeSet<String> = texts(&kept)
        .into_iter()
        .filter(|t| t.contains("last"))
        .collect();
    assert_eq!(got.len(), 50, "everything A accepted before its kill -9");
}
