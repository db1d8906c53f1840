//! The mediator under load (issue 16; PROTOCOL.md §13), through a real Core
//! with its embedded store: every message is on disk (fsync, group commit)
//! before its publisher is answered.
//!
//! - `messages_publish_to_deliver_us`: one 1 KiB `at_least_once` message at
//!   a time, from the start of `Publish` to its delivery on the
//!   subscriber's stream; p50 and p99.
//! - `messages_per_s`: 16 publishers at once, 1 KiB `at_least_once`, one
//!   subscriber acknowledging each delivery (window 1,024): messages
//!   delivered a second, from the first publish to the last delivery.
//! - `messages_streamed_per_s` (and `messages_journaled_streamed_per_s`,
//!   `messages_on_nats_streamed_per_s`): the same throughput run, the 16
//!   publishers sharing one `PublishStream` (the SDK's `Publisher`) instead
//!   of a `Publish` call per message; and
//!   `messages_journaled_streamed_publish_to_deliver_us` with its ratio to
//!   JetStream, the round trip with the publish on such a stream.
//! - `messages_request_reply_p50_us`: `Request` and its reply (the
//!   responder a subscriber that replies to each request) against a direct
//!   leased call of the echo module, in alternating blocks.
//! - `messages_vs_jetstream_p50_us` and `messages_per_s_vs_jetstream`: the
//!   same round trip and throughput through a plain NATS JetStream server on
//!   this machine (`jetstream.rs`), as baselines in the same run; a
//!   `messages_jetstream skipped=no-nats-server` line when `nats-server` is
//!   not installed.
//! - `messages_journaled_publish_to_deliver_us`, `messages_journaled_per_s`
//!   and their `…_vs_jetstream` ratios: the same through a Core whose store
//!   journals publishes and fsyncs every 100 ms (`[mediator] sync_interval`),
//!   the promise JetStream's file store makes (a killed process loses
//!   nothing; a power loss, the last interval).
//! - `messages_on_nats_p50_us` and `messages_on_nats_per_s`: the round trip
//!   and throughput through a Core whose mediator keeps its messages on that
//!   server (`[mediator] backend = "nats"`), against the same JetStream
//!   baselines.

use std::time::{Duration, Instant};

use anima_core::audit::Actor;
use anima_module_sdk::CoreClient;
use anima_module_sdk::messages::{Subscription, envelope, reply_to};
use anima_protocol::pb::{Delivery, DeliveryMode, RcsEnvelope, ReplyTo};
use anima_protocol::transport::Address;
use anima_tests::echo::echo_client::EchoClient;

use crate::Opts;
use crate::calls::{Caller, core_config_with, lease_echo};
use crate::procs::{CORE, MODULE, OPERATOR, Res, Setup, core_process, module_process, urn};
use crate::report::{Figure, Report};
use crate::stats::Samples;

/// The payload of every message: 1 KiB.
const PAYLOAD: usize = 1024;
/// The event type published and received.
const EVENT: &str = "BENCH";
/// The event type of the requests, and of their replies.
const REQUEST: &str = "BENCH_REQUEST";
const REPLY: &str = "BENCH_REPLY";
/// How long any one message may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(15);
/// The publishers of the throughput run.
const PUBLISHERS: usize = 16;

/// Runs the group, adding its figures to `report`.
pub async fn run(setup: &Setup, opts: &Opts, report: &mut Report) -> Res<()> {
    let config = core_config_with(setup, "messages", Some(("", &grants())))?;
    let mut core = core_process(setup, &config).await?;
    let result = measure(setup, opts, core.addr.clone(), report).await;
    core.stop().await;
    let (mut round_trip, rate) = result?;
    let mut journaled = journaled(setup, opts, &config, report).await?;
    if !crate::jetstream::installed() {
        report.add(
            Figure::new("messages_jetstream")
                .s("skipped", "no-nats-server")
                .s(
                    "detail",
                    "apt-get install nats-server for the JetStream baseline",
                ),
        );
        return Ok(());
    }
    let (n, total) = counts(opts);
    let server = crate::jetstream::start(setup)?;
    let mut js = crate::jetstream::measure(&server, setup, n, total, PUBLISHERS, PAYLOAD).await?;
    let (p50, js50) = (round_trip.pct(50.0), js.round_trip.pct(50.0));
    report.add(
        Figure::new("messages_vs_jetstream_p50_us")
            .vs(p50, js50, 1)
            .f("baseline_p99", js.round_trip.pct(99.0), 1)
            .target("ratio<=2", p50 <= 2.0 * js50),
    );
    report.add(
        Figure::new("messages_per_s_vs_jetstream")
            .vs(rate, js.per_s, 0)
            .i("publishers", PUBLISHERS as u64),
    );
    let journaled50 = journaled.round_trip.pct(50.0);
    report.add(
        Figure::new("messages_journaled_vs_jetstream_p50_us")
            .vs(journaled50, js50, 1)
            .target("ratio<=2", journaled50 <= 2.0 * js50),
    );
    let streamed50 = journaled.streamed_round_trip.pct(50.0);
    report.add(
        Figure::new("messages_journaled_streamed_vs_jetstream_p50_us")
            .vs(streamed50, js50, 1)
            .target("ratio<=2", streamed50 <= 2.0 * js50),
    );
    report.add(
        Figure::new("messages_journaled_per_s_vs_jetstream")
            .vs(journaled.rate, js.per_s, 0)
            .s("baseline_is", "jetstream"),
    );
    report.add(
        Figure::new("messages_journaled_streamed_per_s_vs_jetstream")
            .vs(journaled.streamed, js.per_s, 0)
            .s("baseline_is", "jetstream")
            .target(">=20000", journaled.streamed >= 20_000.0),
    );
    on_nats(
        setup,
        opts,
        &config,
        &server.url(),
        (js50, js.per_s),
        report,
    )
    .await
}

/// The Core again, its messages on the JetStream server at `url`
/// (`backend = "nats"`), against that server's `baseline` (round trip p50,
/// messages a second).
async fn on_nats(
    setup: &Setup,
    opts: &Opts,
    config: &std::path::Path,
    url: &str,
    (js50, js_rate): (f64, f64),
    report: &mut Report,
) -> Res<()> {
    // Its `[mediator] store` goes: on NATS the server keeps the messages.
    let text: String = std::fs::read_to_string(config)?
        .lines()
        .filter(|l| !l.starts_with("store = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = text.replacen(
        "[mediator]\n",
        &format!("[mediator]\nbackend = \"nats\"\nnats_url = \"{url}\"\n"),
        1,
    );
    let mut shared = another_core(setup, opts, "messages-nats", &text).await?;
    report.add(
        Figure::new("messages_on_nats_p50_us")
            .vs(shared.round_trip.pct(50.0), js50, 1)
            .f("p99", shared.round_trip.pct(99.0), 1)
            .s("baseline_is", "jetstream"),
    );
    report.add(
        Figure::new("messages_on_nats_per_s")
            .vs(shared.rate, js_rate, 0)
            .s("baseline_is", "jetstream"),
    );
    report.add(
        Figure::new("messages_on_nats_streamed_per_s")
            .vs(shared.streamed, js_rate, 0)
            .s("baseline_is", "jetstream"),
    );
    Ok(())
}

/// The Core again, publishes journaled rather than fsynced (the promise
/// JetStream's file store makes: nothing lost to a kill of the process):
/// its figures, and its round trips and throughput for the baselines.
async fn journaled(
    setup: &Setup,
    opts: &Opts,
    config: &std::path::Path,
    report: &mut Report,
) -> Res<Rates> {
    let text = std::fs::read_to_string(config)?
        .replace("-messages.redb", "-journaled.redb")
        .replacen("[mediator]\n", "[mediator]\nsync_interval = \"100ms\"\n", 1);
    let mut journaled = another_core(setup, opts, "messages-journaled", &text).await?;
    report.add(
        Figure::new("messages_journaled_publish_to_deliver_us")
            .f("p50", journaled.round_trip.pct(50.0), 1)
            .f("p99", journaled.round_trip.pct(99.0), 1)
            .s("sync_interval", "100ms"),
    );
    report.add(
        Figure::new("messages_journaled_streamed_publish_to_deliver_us")
            .f("p50", journaled.streamed_round_trip.pct(50.0), 1)
            .f("p99", journaled.streamed_round_trip.pct(99.0), 1),
    );
    report.add(
        Figure::new("messages_journaled_per_s")
            .f("value", journaled.rate, 0)
            .target(">=20000", journaled.rate >= 20_000.0),
    );
    report.add(
        Figure::new("messages_journaled_streamed_per_s")
            .f("value", journaled.streamed, 0)
            .target(">=20000", journaled.streamed >= 20_000.0),
    );
    Ok(journaled)
}

/// Round trips, and messages of the throughput run.
fn counts(opts: &Opts) -> (usize, usize) {
    if opts.quick {
        (200, 2_000)
    } else {
        (2_000, 20_000)
    }
}

/// What the benchmark module may publish and receive.
fn grants() -> String {
    format!(
        "\n[[permission]]\nmodule = \"{MODULE}\"\npublish = [\"{EVENT}\"]\n\
         subscribe = [\"{EVENT}\", \"{REQUEST}\"]\n"
    )
}

/// The Core's figures; its round trips and throughput for the baselines.
async fn measure(
    setup: &Setup,
    opts: &Opts,
    addr: Address,
    report: &mut Report,
) -> Res<(Samples, f64)> {
    let module = client(setup, addr.clone(), MODULE)?;
    let operator = client(setup, addr, OPERATOR)?;
    // The Core leases the module after announcing readiness.
    let mut sub = subscribe_when_leased(&module, &[EVENT], 1024).await?;
    let (n, total) = counts(opts);
    let mut samples = round_trips(&module, &mut sub, n, Via::Calls).await?;
    report.add(
        Figure::new("messages_publish_to_deliver_us")
            .f("p50", samples.pct(50.0), 1)
            .f("p99", samples.pct(99.0), 1)
            .i("n", n as u64)
            .i("payload_bytes", PAYLOAD as u64),
    );
    let rate = throughput(&module, sub, total, Via::Calls).await?;
    report.add(
        Figure::new("messages_per_s")
            .f("value", rate, 0)
            .i("n", total as u64)
            .i("publishers", PUBLISHERS as u64)
            .target(">=20000", rate >= 20_000.0),
    );
    let sub = subscribe_when_leased(&module, &[EVENT], 1024).await?;
    let streamed = throughput(&module, sub, total, Via::Stream).await?;
    report.add(
        Figure::new("messages_streamed_per_s")
            .f("value", streamed, 0)
            .i("publishers", PUBLISHERS as u64)
            .target(">=20000", streamed >= 20_000.0),
    );
    report.add(request_reply(setup, opts, &module, &operator).await?);
    Ok((samples, rate))
}

/// A Core with the configuration `text` (written as `name.toml`): its
/// round trips and throughput.
async fn another_core(setup: &Setup, opts: &Opts, name: &str, text: &str) -> Res<Rates> {
    let config = setup.dir.path().join(format!("{name}.toml"));
    std::fs::write(&config, text)?;
    let mut core = core_process(setup, &config).await?;
    let result = figures(setup, opts, core.addr.clone()).await;
    core.stop().await;
    result
}

/// The same round trips and throughput through another Core (journaled,
/// or on NATS).
async fn figures(setup: &Setup, opts: &Opts, addr: Address) -> Res<Rates> {
    let module = client(setup, addr, MODULE)?;
    let mut sub = subscribe_when_leased(&module, &[EVENT], 1024).await?;
    let (n, total) = counts(opts);
    let round_trip = round_trips(&module, &mut sub, n, Via::Calls).await?;
    let streamed_round_trip = round_trips(&module, &mut sub, n, Via::Stream).await?;
    let rate = throughput(&module, sub, total, Via::Calls).await?;
    let sub = subscribe_when_leased(&module, &[EVENT], 1024).await?;
    let streamed = throughput(&module, sub, total, Via::Stream).await?;
    Ok(Rates {
        round_trip,
        streamed_round_trip,
        rate,
        streamed,
    })
}

/// Round trips and messages a second, with a `Publish` call each and on
/// one `PublishStream`.
struct Rates {
    round_trip: Samples,
    streamed_round_trip: Samples,
    rate: f64,
    streamed: f64,
}

fn client(setup: &Setup, addr: Address, who: &str) -> Res<CoreClient> {
    Ok(CoreClient::new(
        addr,
        urn(CORE)?,
        setup.ca.identity(who),
        setup.trust.clone(),
    )?)
}

/// `n` messages one at a time: `Publish` start to delivery.
async fn round_trips(
    module: &CoreClient,
    sub: &mut Subscription,
    n: usize,
    via: Via,
) -> Res<Samples> {
    let publisher = match via {
        Via::Calls => None,
        Via::Stream => Some(module.publisher().await?),
    };
    let mut samples = Samples::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        match &publisher {
            Some(publisher) => drop(publisher.publish(message(EVENT, i)).await?),
            None => publish(module, i).await?,
        }
        let delivery = next(sub).await?;
        samples.push(t.elapsed());
        sub.ack(&delivery).await?;
    }
    Ok(samples)
}

/// Subscribes as soon as the Core has leased the module.
async fn subscribe_when_leased(
    core: &CoreClient,
    types: &[&str],
    window: u32,
) -> Res<Subscription> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match core.subscribe(types, window).await {
            Ok(sub) => return Ok(sub),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("no subscription: {e}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Message `i` of `event`: 1 KiB of text, its number first.
fn message(event: &str, i: usize) -> RcsEnvelope {
    let mut data = format!("{i:010} ").into_bytes();
    data.resize(PAYLOAD, b'.');
    let mut e = envelope(event, "text/plain", data);
    if let Some(m) = e.message_metadata.as_mut() {
        m.delivery_mode = DeliveryMode::AtLeastOnce as i32;
    }
    e
}

async fn publish(core: &CoreClient, i: usize) -> Res<()> {
    core.publish(message(EVENT, i)).await?;
    Ok(())
}

async fn next(sub: &mut Subscription) -> Res<Delivery> {
    match tokio::time::timeout(PATIENCE, sub.next()).await {
        Ok(Some(Ok(delivery))) => Ok(delivery),
        Ok(Some(Err(e))) => Err(format!("the subscription failed: {e}").into()),
        Ok(None) => Err("the subscription ended".into()),
        Err(_) => Err("no delivery in time".into()),
    }
}

/// How the throughput run's publishers publish.
#[derive(Clone, Copy)]
enum Via {
    /// Each message a `Publish` call.
    Calls,
    /// All on one `PublishStream` (the SDK's `Publisher`).
    Stream,
}

/// `total` messages from [`PUBLISHERS`] publishers at once, each delivered
/// and acknowledged: messages a second, from the first publish to the last
/// delivery.
async fn throughput(core: &CoreClient, mut sub: Subscription, total: usize, via: Via) -> Res<f64> {
    let publisher = match via {
        Via::Calls => None,
        Via::Stream => Some(core.publisher().await?),
    };
    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        for _ in 0..total {
            let delivery = next(&mut sub).await?;
            sub.ack(&delivery).await?;
        }
        Res::Ok(started.elapsed())
    });
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let core = core.clone();
        let publisher = publisher.clone();
        publishers.push(tokio::spawn(async move {
            for i in (p..total).step_by(PUBLISHERS) {
                match &publisher {
                    Some(publisher) => drop(publisher.publish(message(EVENT, i)).await?),
                    None => publish(&core, i).await?,
                }
            }
            Res::Ok(())
        }));
    }
    for publisher in publishers {
        publisher.await??;
    }
    let elapsed = receiving.await??;
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// `messages_request_reply_p50_us`: a request and its reply through the
/// Core against a direct leased call, in alternating blocks.
async fn request_reply(
    setup: &Setup,
    opts: &Opts,
    module: &CoreClient,
    operator: &CoreClient,
) -> Res<Figure> {
    let responder = {
        let mut requests = subscribe_when_leased(module, &[REQUEST], 64).await?;
        let module = module.clone();
        tokio::spawn(async move {
            while let Ok(delivery) = next(&mut requests).await {
                let Some(request) = delivery.envelope.as_ref() else {
                    continue;
                };
                if let Some(reply) = reply_to(request, "text/plain", b"done".to_vec()) {
                    let _ = module.publish(reply).await;
                }
                let _ = requests.ack(&delivery).await;
            }
        })
    };
    let mut echo = module_process(setup, MODULE, "type = \"resident-shared\"", false).await?;
    let link = lease_echo(setup, &echo).await?;
    let mut direct = Caller::Leased(EchoClient::new(link.channel()));
    let rounds = if opts.quick { 2 } else { 6 };
    let block = if opts.quick { 50 } else { 250 };
    let (mut asked, mut called) = (
        Samples::with_capacity(rounds * block),
        Samples::with_capacity(rounds * block),
    );
    for round in 0..rounds {
        for side in [round % 2, 1 - round % 2] {
            for i in 0..block {
                let t = Instant::now();
                if side == 0 {
                    let mut request = message(REQUEST, i);
                    if let Some(r) = request.routing.as_mut() {
                        r.reply_to = Some(ReplyTo {
                            event_type: REPLY.into(),
                            timeout_ms: Some(5_000),
                            ..ReplyTo::default()
                        });
                    }
                    operator.request(request).await?;
                    asked.push(t.elapsed());
                } else {
                    direct.say().await?;
                    called.push(t.elapsed());
                }
            }
        }
    }
    link.revoke("benchmark done", Actor::Core);
    echo.stop().await;
    responder.abort();
    let (v50, b50) = (asked.pct(50.0), called.pct(50.0));
    Ok(Figure::new("messages_request_reply_p50_us")
        .vs(v50, b50, 1)
        .f("p99", asked.pct(99.0), 1)
        .f("baseline_p99", called.pct(99.0), 1)
        .i("n", (rounds * block) as u64))
}
