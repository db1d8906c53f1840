//! The store's rules, with time passed in: priorities (M6), redelivery and
//! its backoff (M7), dead letters (M8), expiry (M4), lease-fenced release
//! (M11) and durability across reopening (M12).

use super::*;

const T0: u64 = 1_753_984_073_123;
const WAIT: u64 = 30_000;

fn subs(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn delivery(rank: u8) -> Delivery {
    Delivery {
        rank,
        dead_letter: false,
        at_most_once: false,
        max_retries: 0,
        retry_delay_ms: 100,
        expires_ms: None,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Store,
}

fn fixture(limit: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("messages.redb");
    let store = Store::open(&path, limit).expect("open");
    Fixture {
        _dir: dir,
        path,
        store,
    }
}

/// Stores one message `body` for `to` with `d`.
fn put(store: &Store, body: &str, d: Delivery, to: &[String]) -> Accepted {
    let m = Incoming {
        envelope: body.as_bytes(),
        message_id: body,
        exactly_once: false,
        delivery: d,
        subscriptions: to,
    };
    store.accept(&[m], T0).expect("accept")[0]
}

fn taken(store: &Store, sub: &str, now: u64) -> Option<(String, u32)> {
    match store.take(sub, now, WAIT).expect("take") {
        Take::Message(h) => Some((String::from_utf8(h.envelope).expect("utf-8"), h.attempt)),
        Take::Idle(_) => None,
    }
}

fn seq_of(a: Accepted) -> u64 {
    match a {
        Accepted::Stored(seq) => seq,
        other => panic!("not stored: {other:?}"),
    }
}

#[test]
fn m6_critical_first_then_fifo_within_a_priority() {
    let f = fixture(1 << 20);
    let to = subs(&["logger LOG_MESSAGE"]);
    for (body, rank) in [
        ("low", 3),
        ("normal-1", 2),
        ("critical", 0),
        ("high", 1),
        ("normal-2", 2),
    ] {
        put(&f.store, body, delivery(rank), &to);
    }
    let mut order = Vec::new();
    while let Some((body, _)) = taken(&f.store, &to[0], T0) {
        order.push(body);
    }
    assert_eq!(order, ["critical", "high", "normal-1", "normal-2", "low"]);
}

#[test]
fn m12_accepted_messages_survive_reopening_the_store() {
    let f = fixture(1 << 20);
    let to = subs(&["logger LOG_MESSAGE"]);
    let mut d = delivery(2);
    d.max_retries = 1;
    put(&f.store, "kept", d, &to);
    // Handed out but not acknowledged when the Core dies.
    d.rank = 1;
    put(&f.store, "in flight", d, &to);
    assert_eq!(taken(&f.store, &to[0], T0), Some(("in flight".into(), 1)));
    let Fixture { _dir, path, store } = f;
    drop(store);
    let store = Store::open(&path, 1 << 20).expect("reopen");
    assert_eq!(taken(&store, &to[0], T0), Some(("kept".into(), 1)));
    // The unacknowledged one is due again at its acknowledgement deadline.
    assert_eq!(taken(&store, &to[0], T0 + WAIT - 1), None);
    assert_eq!(
        taken(&store, &to[0], T0 + WAIT),
        Some(("in flight".into(), 2))
    );
}

#[test]
fn m7_at_least_once_is_redelivered_with_backoff_up_to_max_retries() {
    let f = fixture(1 << 20);
    let to = subs(&["worker EXECUTE_SCRIPT"]);
    let mut d = delivery(2);
    d.max_retries = 2;
    d.dead_letter = true;
    let seq = seq_of(put(&f.store, "job", d, &to));
    let sub = to[0].as_str();
    assert_eq!(taken(&f.store, sub, T0), Some(("job".into(), 1)));
    assert_eq!(
        f.store.nack(sub, seq, T0, "").expect("nack"),
        Retry::At(T0 + 100)
    );
    assert_eq!(
        f.store.take(sub, T0 + 99, WAIT).expect("take"),
        Take::Idle(Some(T0 + 100))
    );
    assert_eq!(taken(&f.store, sub, T0 + 100), Some(("job".into(), 2)));
    assert_eq!(
        f.store.nack(sub, seq, T0 + 100, "").expect("nack"),
        Retry::At(T0 + 300)
    );
    assert_eq!(taken(&f.store, sub, T0 + 300), Some(("job".into(), 3)));
    assert_eq!(
        f.store.nack(sub, seq, T0 + 300, "").expect("nack"),
        Retry::DeadLettered
    );
    assert_eq!(taken(&f.store, sub, T0 + 10_000), None);
    let dead = f.store.dead_letters(Some(sub)).expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].attempts, dead[0].reason.as_str()),
        (3, "MAX_RETRIES")
    );
    assert_eq!(
        f.store.nack(sub, seq, T0, "").expect("nack"),
        Retry::Unknown
    );
}

#[test]
fn m7_an_unacknowledged_delivery_is_redelivered_after_the_ack_wait() {
    let f = fixture(1 << 20);
    let to = subs(&["worker EXECUTE_SCRIPT"]);
    let mut d = delivery(2);
    d.max_retries = 1;
    put(&f.store, "job", d, &to);
    assert_eq!(taken(&f.store, &to[0], T0), Some(("job".into(), 1)));
    assert_eq!(taken(&f.store, &to[0], T0 + WAIT - 1), None);
    assert_eq!(taken(&f.store, &to[0], T0 + WAIT), Some(("job".into(), 2)));
}

#[test]
fn m7_at_most_once_is_never_redelivered() {
    let f = fixture(1 << 20);
    let to = subs(&["worker EXECUTE_SCRIPT"]);
    let mut d = delivery(2);
    d.at_most_once = true;
    d.max_retries = 5;
    put(&f.store, "once", d, &to);
    assert_eq!(taken(&f.store, &to[0], T0), Some(("once".into(), 1)));
    assert_eq!(
        f.store.take(&to[0], T0 + 10 * WAIT, WAIT).expect("take"),
        Take::Idle(None)
    );
    assert_eq!(f.store.stats().expect("stats").used_bytes, 0);
}

#[test]
fn m7_exactly_once_is_deduplicated_by_message_id_within_the_window() {
    let f = fixture(1 << 20);
    let to = subs(&["worker EXECUTE_SCRIPT"]);
    let m = |at: u64| {
        let msg = Incoming {
            envelope: b"pay",
            message_id: "550e8400-e29b-41d4-a716-446655440000",
            exactly_once: true,
            delivery: delivery(2),
            subscriptions: &to,
        };
        f.store.accept(&[msg.clone(), msg], at).expect("accept")
    };
    let first = m(T0);
    let seq = seq_of(first[0]);
    assert_eq!(first[1], Accepted::Duplicate(seq), "within one batch");
    assert_eq!(m(T0 + DEDUP_WINDOW_MS - 1)[0], Accepted::Duplicate(seq));
    assert!(matches!(m(T0 + DEDUP_WINDOW_MS)[0], Accepted::Stored(s) if s != seq));
    assert_eq!(
        f.store
            .forget_seen(T0 + 3 * DEDUP_WINDOW_MS)
            .expect("forget"),
        1
    );
}

#[test]
fn m4_an_expired_message_is_never_delivered() {
    let f = fixture(1 << 20);
    let to = subs(&["logger LOG_MESSAGE"]);
    let mut d = delivery(2);
    d.expires_ms = Some(T0 as i64 + 50);
    put(&f.store, "dropped", d, &to);
    d.dead_letter = true;
    put(&f.store, "dead", d, &to);
    assert_eq!(taken(&f.store, &to[0], T0 + 50), None);
    assert_eq!(f.store.stats().expect("stats").dropped_expired, 1);
    let dead = f.store.dead_letters(None).expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].envelope.as_slice(), dead[0].reason.as_str()),
        (&b"dead"[..], "EXPIRED")
    );
    // Before its expiry it is delivered.
    d.expires_ms = Some(T0 as i64 + 50);
    put(&f.store, "fresh", d, &to);
    assert_eq!(taken(&f.store, &to[0], T0 + 49), Some(("fresh".into(), 1)));
}

#[test]
fn m8_dead_letters_are_listed_replayed_and_purged() {
    let f = fixture(1 << 20);
    let to = subs(&["a EV", "b EV"]);
    let mut d = delivery(2);
    d.dead_letter = true;
    let seq = seq_of(put(&f.store, "m", d, &to));
    for sub in &to {
        assert!(taken(&f.store, sub, T0).is_some());
        assert_eq!(
            f.store.nack(sub, seq, T0, "bad input").expect("nack"),
            Retry::DeadLettered
        );
    }
    let dead = f.store.dead_letters(None).expect("list");
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter()
            .all(|d| d.reason == "MAX_RETRIES: bad input" && d.attempts == 1)
    );
    assert!(f.store.replay("a EV", seq).expect("replay"));
    assert!(!f.store.replay("a EV", seq).expect("replay twice"));
    assert_eq!(
        taken(&f.store, "a EV", T0),
        Some(("m".into(), 1)),
        "attempts start over"
    );
    assert!(f.store.ack("a EV", seq).expect("ack"));
    assert_eq!(f.store.purge(Some("b EV")).expect("purge"), 1);
    assert_eq!(f.store.dead_letters(None).expect("list"), []);
    assert_eq!(
        f.store.stats().expect("stats").used_bytes,
        0,
        "the message is gone with its last holder"
    );
}

#[test]
fn m12_a_message_stays_until_its_last_holder_lets_go() {
    let f = fixture(1 << 20);
    let to = subs(&["a EV", "b EV", "c EV"]);
    let seq = seq_of(put(&f.store, "shared", delivery(2), &to));
    let one = seq_of(put(&f.store, "single", delivery(2), &to[..1]));
    let used = |f: &Fixture| f.store.stats().expect("stats").used_bytes;
    let both = used(&f);
    for (i, sub) in to.iter().enumerate() {
        assert_eq!(
            taken(&f.store, sub, T0),
            Some(("shared".into(), 1)),
            "{sub}"
        );
        assert!(f.store.ack(sub, seq).expect("ack"), "{sub}");
        assert!(!f.store.ack(sub, seq).expect("ack twice"), "{sub}");
        let gone = i == to.len() - 1;
        assert_eq!(used(&f) < both, gone, "after {sub}'s ack");
    }
    // A store written before single holders lost their `refs` row.
    let tx = f.store.db.begin_write().expect("write");
    tx.open_table(REFS)
        .expect("refs")
        .insert(one, 1)
        .expect("insert");
    tx.commit().expect("commit");
    assert_eq!(taken(&f.store, "a EV", T0), Some(("single".into(), 1)));
    assert!(f.store.ack("a EV", one).expect("ack"));
    assert_eq!(used(&f), 0);
    let tx = f.store.db.begin_read().expect("read");
    assert!(
        tx.open_table(REFS)
            .expect("refs")
            .get(one)
            .expect("get")
            .is_none()
    );
}

#[test]
fn m11_a_release_redelivers_now_without_counting_an_attempt() {
    let f = fixture(1 << 20);
    let to = subs(&["worker EXECUTE_SCRIPT"]);
    let seq = seq_of(put(&f.store, "job", delivery(2), &to));
    assert_eq!(taken(&f.store, &to[0], T0), Some(("job".into(), 1)));
    assert!(f.store.release(&to[0], seq, T0 + 5).expect("release"));
    // max_retries 0, yet it is handed out again: the lease ended, the
    // subscriber did not fail.
    assert_eq!(taken(&f.store, &to[0], T0 + 5), Some(("job".into(), 1)));
    assert!(f.store.ack(&to[0], seq).expect("ack"));
    assert!(!f.store.release(&to[0], seq, T0).expect("release after ack"));
}

#[test]
fn m12_a_full_store_refuses_with_its_figures_and_frees_space_on_ack() {
    let f = fixture(100);
    let to = subs(&["s EV"]);
    let body = "x".repeat(60);
    let seq = seq_of(put(&f.store, &body, delivery(2), &to));
    let used = f.store.stats().expect("stats").used_bytes;
    assert_eq!(used, 60 + 31);
    assert_eq!(
        put(&f.store, &body, delivery(2), &to),
        Accepted::Full { used, limit: 100 }
    );
    assert!(taken(&f.store, "s EV", T0).is_some());
    assert!(f.store.ack("s EV", seq).expect("ack"));
    assert!(matches!(
        put(&f.store, &body, delivery(2), &to),
        Accepted::Stored(_)
    ));
}

#[test]
fn m5_a_message_for_no_subscription_is_not_stored() {
    let f = fixture(1 << 20);
    assert_eq!(
        put(&f.store, "nobody", delivery(2), &[]),
        Accepted::Unrouted
    );
    assert_eq!(f.store.stats().expect("stats").used_bytes, 0);
}

#[test]
fn m7_backoff_doubles_from_the_retry_delay_up_to_an_hour() {
    assert_eq!(backoff(100, 1), 100);
    assert_eq!(backoff(100, 2), 200);
    assert_eq!(backoff(100, 4), 800);
    assert_eq!(backoff(0, 1), DEFAULT_RETRY_DELAY_MS);
    assert_eq!(backoff(1000, 40), MAX_DELAY_MS);
}

#[test]
fn m6_one_subscriber_of_several_event_types_gets_its_whole_backlog_by_priority_then_age() {
    let f = fixture(1 << 20);
    let (logs, alerts) = (subs(&["LOG_MESSAGE m"]), subs(&["ALERT m"]));
    for (body, rank, to) in [
        ("log-normal", 2, &logs),
        ("alert-low", 3, &alerts),
        ("alert-normal", 2, &alerts),
        ("log-high", 1, &logs),
        ("alert-high", 1, &alerts),
    ] {
        put(&f.store, body, delivery(rank), to);
    }
    let both = ["LOG_MESSAGE m", "ALERT m"];
    let mut order = Vec::new();
    while let (index, Take::Message(h)) = f.store.take_any(&both, T0, WAIT).expect("take") {
        let body = String::from_utf8(h.envelope).expect("utf-8");
        // The index names the subscription the message came from.
        assert_eq!(body.starts_with("log"), index == 0, "{body}");
        order.push(body);
    }
    assert_eq!(
        order,
        [
            "log-high",
            "alert-high",
            "log-normal",
            "alert-normal",
            "alert-low"
        ]
    );
    // Handed out, each is due again at the acknowledgement deadline.
    assert_eq!(
        f.store.take_any(&both, T0, WAIT).expect("take"),
        (0, Take::Idle(Some(T0 + WAIT)))
    );
}

#[test]
fn m7_m12_held_deliveries_lapse_after_reopening_and_do_not_hide_the_backlog() {
    let f = fixture(1 << 20);
    let to = subs(&["worker EXECUTE_SCRIPT"]);
    let mut d = delivery(2);
    d.max_retries = 1;
    for body in ["a", "b", "c"] {
        put(&f.store, body, d, &to);
    }
    // Two held: the third is still handed out, and the idle answer names
    // the first held deadline.
    assert_eq!(taken(&f.store, &to[0], T0), Some(("a".into(), 1)));
    assert_eq!(taken(&f.store, &to[0], T0 + 1), Some(("b".into(), 1)));
    assert_eq!(taken(&f.store, &to[0], T0 + 2), Some(("c".into(), 1)));
    assert_eq!(
        f.store.take(&to[0], T0 + 3, WAIT).expect("take"),
        Take::Idle(Some(T0 + WAIT))
    );
    assert!(f.store.ack(&to[0], 2).expect("ack"));
    let Fixture { _dir, path, store } = f;
    drop(store);
    let store = Store::open(&path, 1 << 20).expect("reopen");
    assert_eq!(taken(&store, &to[0], T0 + WAIT - 1), None);
    assert_eq!(taken(&store, &to[0], T0 + WAIT), Some(("a".into(), 2)));
    assert_eq!(taken(&store, &to[0], T0 + WAIT + 2), Some(("c".into(), 2)));
    assert_eq!(taken(&store, &to[0], T0 + WAIT + 3), None);
}

#[test]
fn m6_a_batch_of_hand_outs_keeps_priority_then_age_across_subscriptions() {
    let f = fixture(1 << 20);
    let a = subs(&["LOG urn:anima:module:x"]);
    let b = subs(&["ALERT urn:anima:module:x"]);
    for body in ["a1", "a2", "a3"] {
        put(&f.store, body, delivery(2), &a);
    }
    for body in ["b1", "b2"] {
        put(&f.store, body, delivery(0), &b);
    }
    let both = [a[0].as_str(), b[0].as_str()];
    let bodies = |taken: Vec<(usize, Handed)>| -> Vec<(usize, String)> {
        taken
            .into_iter()
            .map(|(i, h)| (i, String::from_utf8(h.envelope).expect("utf-8")))
            .collect()
    };
    let (taken, idle) = f.store.take_many(&both, T0, WAIT, 3).expect("take");
    assert_eq!(
        bodies(taken),
        [(1, "b1".into()), (1, "b2".into()), (0, "a1".into())]
    );
    assert_eq!(idle, None, "as many as asked: more may be due");
    let (taken, idle) = f.store.take_many(&both, T0, WAIT, 10).expect("take");
    assert_eq!(bodies(taken), [(0, "a2".into()), (0, "a3".into())]);
    assert_eq!(idle, Some(T0 + WAIT), "the first held delivery's deadline");
}

#[test]
fn m8_a_listing_names_dead_letters_by_module_and_delivery() {
    let f = fixture(1 << 20);
    let x = "EV urn:anima:module:x";
    let y = "EV urn:anima:module:y";
    let to = subs(&[x, y]);
    let mut d = delivery(2);
    d.dead_letter = true;
    let first = seq_of(put(&f.store, "one", d, &to));
    let second = seq_of(put(&f.store, "two", d, &to[..1]));
    for (sub, seq) in [(x, first), (y, first), (x, second)] {
        assert!(taken(&f.store, sub, T0).is_some());
        f.store.nack(sub, seq, T0, "").expect("nack");
    }
    let listed = |module: &str, delivery: u64| -> Vec<(String, u64)> {
        let filter = DeadFilter {
            module: module.to_owned(),
            delivery,
        };
        f.store
            .dead_letters_where(&|sub, seq| filter.keeps(sub, seq))
            .expect("list")
            .into_iter()
            .map(|d| (d.subscription, d.seq))
            .collect()
    };
    assert_eq!(listed("", 0).len(), 3);
    assert_eq!(
        listed("urn:anima:module:x", 0),
        [(x.to_owned(), first), (x.to_owned(), second)]
    );
    assert_eq!(listed("", second), [(x.to_owned(), second)]);
    assert_eq!(listed("urn:anima:module:y", second), []);
}

/// What a Core that died between fsyncs leaves: the database as of its last
/// durable commit, and a journal holding what was accepted since (some of
/// it already in the database when a durable commit came before the
/// journal was emptied). Opening puts back exactly what is missing, in
/// order, whatever the size limit, and empties the journal.
#[test]
fn m12_a_journal_left_by_a_dead_core_is_put_back_once_when_the_store_opens() {
    let f = fixture(1 << 20);
    let to = subs(&["logger LOG_MESSAGE", "audit LOG_MESSAGE"]);
    let first = seq_of(put(&f.store, "durable", delivery(2), &to));
    let Fixture { _dir, path, store } = f;
    drop(store);
    // The journal: the durable message again, then two the database lacks.
    let mut frames = Vec::new();
    for (seq, body, rank) in [
        (first, "durable", 2),
        (first + 1, "a", 2),
        (first + 2, "b", 0),
    ] {
        let record = Record {
            delivery: delivery(rank),
            accepted_ms: T0,
            envelope: body.as_bytes().to_vec(),
        }
        .encode();
        let framed = journal::Framed {
            seq,
            exactly_once: seq == first + 2,
            message_id: body,
            subscriptions: &to,
            record: &record,
        };
        journal::frame(&mut frames, &framed).expect("frame");
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".journal");
    std::fs::write(&name, &frames).expect("journal");
    // A limit the restored messages pass: they were accepted, so they stay.
    let store = Store::open_journaled(&path, 1).expect("reopen");
    assert_eq!(store.journal_bytes(), Some(0), "the journal is emptied");
    for sub in &to {
        let mut got = Vec::new();
        while let Some((body, _)) = taken(&store, sub, T0) {
            got.push(body);
        }
        assert_eq!(got, ["b", "durable", "a"], "{sub}: M6 order, each once");
    }
    // The exactly_once message's id is remembered: sent again, a duplicate.
    let again = Incoming {
        envelope: b"b",
        message_id: "b",
        exactly_once: true,
        delivery: delivery(0),
        subscriptions: &to,
    };
    assert_eq!(
        store.accept(&[again], T0 + 1).expect("accept"),
        [Accepted::Duplicate(first + 2)]
    );
    // New messages continue the sequence.
    drop(store);
    let store = Store::open(&path, 1 << 20).expect("reopen");
    assert_eq!(
        put(&store, "c", delivery(2), &to),
        Accepted::Stored(first + 3)
    );
    assert!(
        !std::path::Path::new(&name).exists(),
        "no journal without sync_interval"
    );
}

/// Journaled publishes are in the journal until a checkpoint, a durable
/// accept, or a reopening makes them durable; none is lost or doubled.
#[test]
fn m12_journaled_publishes_are_emptied_from_the_journal_by_a_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("messages.redb");
    let store = Store::open_journaled(&path, 1 << 20).expect("open");
    let to = subs(&["logger LOG_MESSAGE"]);
    let incoming = |body: &'static str| Incoming {
        envelope: body.as_bytes(),
        message_id: body,
        exactly_once: false,
        delivery: delivery(2),
        subscriptions: &to,
    };
    let a = store.accept_journaled(&[incoming("a")], T0).expect("a");
    assert!(store.journal_bytes().is_some_and(|n| n > 0));
    store.checkpoint().expect("checkpoint");
    assert_eq!(store.journal_bytes(), Some(0));
    let b = store.accept_journaled(&[incoming("b")], T0).expect("b");
    assert!(store.journal_bytes().is_some_and(|n| n > 0));
    drop(store);
    let store = Store::open_journaled(&path, 1 << 20).expect("reopen");
    assert_eq!(a.len() + b.len(), 2);
    let mut got = Vec::new();
    while let Some((body, _)) = taken(&store, &to[0], T0) {
        got.push(body);
    }
    assert_eq!(got, ["a", "b"]);
    let c = store.accept(&[incoming("c")], T0).expect("c");
    assert_eq!(c, [Accepted::Stored(3)]);
    assert_eq!(store.journal_bytes(), Some(0));
}

/// A waiting subscriber is handed, in the transaction that stores them,
/// what a batch queues for it: best first up to its room, nothing expired
/// (M4) or `at_most_once`; the rest stays queued, and what was handed is
/// held like any hand-out (M6, M7).
#[test]
fn m6_m7_a_waiting_subscriber_is_handed_what_a_publish_queues_for_it_best_first() {
    let f = fixture(1 << 20);
    let mine = subs(&["logger LOG_MESSAGE", "logger ALERT"]);
    let other = subs(&["audit LOG_MESSAGE"]);
    let mut expired = delivery(0);
    expired.expires_ms = Some(i64::try_from(T0).unwrap_or(i64::MAX) - 1);
    let mut once = delivery(0);
    once.at_most_once = true;
    let mut normal = delivery(2);
    normal.max_retries = 1;
    let bodies = ["normal", "critical", "expired", "once", "low", "other"];
    let routes = [
        (normal, vec![mine[0].clone(), other[0].clone()]),
        (delivery(0), vec![mine[1].clone()]),
        (expired, vec![mine[0].clone()]),
        (once, vec![mine[0].clone()]),
        (delivery(3), vec![mine[0].clone()]),
        (delivery(1), vec![other[0].clone()]),
    ];
    let batch: Vec<Incoming<'_>> = bodies
        .iter()
        .zip(&routes)
        .map(|(body, (d, to))| Incoming {
            envelope: body.as_bytes(),
            message_id: body,
            exactly_once: false,
            delivery: *d,
            subscriptions: to,
        })
        .collect();
    let waiting = [Waiting {
        subscriptions: &mine,
        room: 2,
        ack_wait_ms: WAIT,
    }];
    let (accepted, handed) = f
        .store
        .commit_group(&batch, T0, false, &waiting, &[])
        .expect("accept");
    assert!(accepted.iter().all(|a| matches!(a, Accepted::Stored(_))));
    let got: Vec<(usize, String, u32)> = handed[0]
        .iter()
        .map(|(i, h)| {
            (
                *i,
                String::from_utf8(h.envelope.clone()).expect("utf-8"),
                h.attempt,
            )
        })
        .collect();
    assert_eq!(got, [(1, "critical".into(), 1), (0, "normal".into(), 1)]);
    // Held: not handed out again before the acknowledgement deadline.
    let rest = f
        .store
        .take_many(&[&mine[0], &mine[1]], T0, WAIT, 10)
        .expect("take");
    let rest: Vec<String> = rest
        .0
        .into_iter()
        .map(|(_, h)| String::from_utf8(h.envelope).expect("utf-8"))
        .collect();
    assert_eq!(rest, ["once", "low"], "the expired one is dropped, M4");
    assert_eq!(
        taken(&f.store, &mine[0], T0 + WAIT),
        Some(("normal".into(), 2))
    );
    // The other subscription still has both of its messages.
    let theirs = f.store.take_many(&[&other[0]], T0, WAIT, 10).expect("take");
    assert_eq!(theirs.0.len(), 2);
    // An acknowledged hand-out is gone.
    let critical = handed[0][0].1.seq;
    assert!(f.store.ack(&mine[1], critical).expect("ack"));
    assert_eq!(taken(&f.store, &mine[1], T0 + 2 * WAIT), None);
}

/// A commit group carries the subscribers' answers with the publishes, in
/// one transaction; a group of answers alone too (M7).
#[test]
fn m7_answers_are_applied_with_the_publishes_of_their_group() {
    let f = fixture(1 << 20);
    let to = subs(&["logger LOG_MESSAGE"]);
    let mut d = delivery(2);
    d.max_retries = 1;
    let first = seq_of(put(&f.store, "first", d, &to));
    let second = seq_of(put(&f.store, "second", d, &to));
    let handed = f.store.take_many(&[&to[0]], T0, WAIT, 2).expect("take");
    assert_eq!(handed.0.len(), 2);
    let third = Incoming {
        envelope: b"third",
        message_id: "third",
        exactly_once: false,
        delivery: d,
        subscriptions: &to,
    };
    let answers = [(to[0].clone(), first, None)];
    let (accepted, _) = f
        .store
        .commit_group(&[third], T0, false, &[], &answers)
        .expect("group");
    assert!(matches!(accepted[..], [Accepted::Stored(_)]));
    let refused = [(to[0].clone(), second, Some("busy".to_owned()))];
    let (none, _) = f
        .store
        .commit_group(&[], T0, false, &[], &refused)
        .expect("answers alone");
    assert!(none.is_empty());
    // Acknowledged: gone. Refused: due again after its retry delay.
    assert_eq!(taken(&f.store, &to[0], T0), Some(("third".into(), 1)));
    assert_eq!(taken(&f.store, &to[0], T0 + 99), None);
    assert_eq!(
        taken(&f.store, &to[0], T0 + 100),
        Some(("second".into(), 2))
    );
    let mut later = Vec::new();
    while let Some((body, _)) = taken(&f.store, &to[0], T0 + 2 * WAIT) {
        later.push(body);
    }
    assert!(
        !later.contains(&"first".to_owned()),
        "acknowledged: {later:?}"
    );
    assert_eq!(later, ["third"], "second's retries are spent");
}
