//! The sidecar hop: what a proxy sidecar (PROTOCOL.md §11) adds to a call,
//! against the same call through a Core whose module has none.

use std::time::{Duration, Instant};

use anima_protocol::PeerPolicy;
use anima_tests::echo::echo_client::EchoClient;

use crate::Opts;
use crate::calls::{Caller, core_config_with, interleaved};
use crate::procs::{CORE, Proc, Res, Setup, USER, core_process, urn};
use crate::report::Figure;

/// The sidecar: the ratelimit sample, with a rate no benchmark reaches.
const SIDECAR: &str = "urn:anima:module:ratelimit";

/// `sidecar_hop_p50_us`: a user's call of the echo module through the
/// Core's gateway when the module has a proxy sidecar (the Core asks the
/// sidecar's `Inspect` under its lease before forwarding), against the same
/// call through a second Core whose echo module has none, interleaved.
pub async fn sidecar_hop(setup: &Setup, opts: &Opts) -> Res<Figure> {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let p = |p: &std::path::Path| q(&p.display().to_string());
    let (cert, key) = setup.files(SIDECAR)?;
    let more = format!(
        "\n[[module]]\nurn = {}\ntype = \"resident-private\"\ncommand = {}\ncert = {}\nkey = {}\n\
         lease_ttl = \"60s\"\n\n[module.env]\nRATELIMIT_PER_SECOND = \"100000000\"\n\
         RATELIMIT_BURST = \"100000000\"\nRUST_LOG = {}\n",
        q(SIDECAR),
        p(&setup.bin("anima-ratelimit")?),
        p(&cert),
        p(&key),
        q(&crate::procs::child_log()),
    );
    let lines = format!("sidecars = [{}]\n", q(SIDECAR));
    let with = core_config_with(setup, "sidecar-hop", Some((&lines, &more)))?;
    let without = core_config_with(setup, "sidecar-none", Some(("", "")))?;
    let mut cores = Vec::new();
    let measured = async {
        let mut hop = gateway(setup, &mut cores, &with).await?;
        let mut plain = gateway(setup, &mut cores, &without).await?;
        let n = if opts.quick { 500 } else { 10_000 };
        let warmup = if opts.quick { 100 } else { 1_000 };
        let (s, b) = interleaved(&mut hop, &mut plain, n, 500, warmup).await?;
        Res::Ok((s, b, n))
    }
    .await;
    for core in &mut cores {
        core.stop().await;
    }
    let (mut s, mut b, n) = measured?;
    let (v50, b50) = (s.pct(50.0), b.pct(50.0));
    Ok(Figure::new("sidecar_hop_p50_us")
        .vs(v50, b50, 1)
        .f("p99", s.pct(99.0), 1)
        .f("baseline_p99", b.pct(99.0), 1)
        .f("hop_us", v50 - b50, 1)
        .i("n", n as u64))
}

/// Starts a Core with `config` (kept in `cores`) and returns a user's
/// caller of its gateway once the echo module answers through it.
async fn gateway(setup: &Setup, cores: &mut Vec<Proc>, config: &std::path::Path) -> Res<Caller> {
    let core = core_process(setup, config).await?;
    let addr = core.addr.clone();
    cores.push(core);
    let conn = setup
        .client_as(USER)
        .dial_addr(addr, PeerPolicy::exactly(urn(CORE)?))
        .await?;
    let mut caller = Caller::Plain(EchoClient::new(conn.channel()));
    // The Core starts and leases its modules (the sidecar first) after
    // announcing readiness; until then the gateway refuses.
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(s) = caller.say().await {
        if Instant::now() > deadline {
            return Err(format!("the gateway never answered: {s}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(caller)
}
