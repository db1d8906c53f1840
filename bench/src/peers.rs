//! `peers`: the tool people pick today for process plugins over gRPC,
//! HashiCorp go-plugin with AutoMTLS, measured in the same run as Anima's
//! leased call and interleaved with it.
//!
//! The go-plugin anchor (`../shared/anchors/go-plugin`: a host and an echo
//! plugin written against Debian's go-plugin 1.0.1) is built by its own
//! `run.sh`, which `cargo xtask bench --peers` runs first (it installs the
//! Debian packages it needs). The binaries are looked for where that script
//! puts them: `$ANCHOR_BUILD/bin`, else
//! `${XDG_CACHE_HOME:-$HOME/.cache}/anima-anchors/go-plugin/bin`. Without
//! them the group prints one `goplugin skipped=…` line.
//!
//! Each round runs the anchor's host once (`-mode unary` or `-mode rps`: it
//! launches the plugin, warms up, then measures) and one block of leased
//! calls of the same size; the order flips every round. The figures are the
//! median over rounds of each block's percentile (the host reports only its
//! block's percentiles), the same statistic on both sides.

use std::path::PathBuf;
use std::time::Duration;

use crate::Opts;
use crate::calls::{Caller, throughput};
use crate::procs::{Res, output};
use crate::report::{Figure, Report};
use crate::stats::Samples;

/// The anchor's host and plugin binaries.
struct GoPlugin {
    host: PathBuf,
    plugin: PathBuf,
}

impl GoPlugin {
    /// Where the anchor's `run.sh` built them, if it did.
    fn find() -> Option<GoPlugin> {
        let build = std::env::var_os("ANCHOR_BUILD").map_or_else(
            || {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"))
                    })?;
                Some(cache.join("anima-anchors").join("go-plugin"))
            },
            |dir| Some(PathBuf::from(dir)),
        )?;
        let bin = build.join("bin");
        let found = GoPlugin {
            host: bin.join("echo-host"),
            plugin: bin.join("echo-plugin"),
        };
        (found.host.is_file() && found.plugin.is_file()).then_some(found)
    }

    /// One run of the host in `mode` (AutoMTLS on, 64-byte payloads): its
    /// stdout.
    async fn host(&self, mode: &str, args: &[&str]) -> Res<String> {
        let mut command = tokio::process::Command::new(&self.host);
        command
            .arg("-plugin")
            .arg(&self.plugin)
            .args(["-mtls=true", "-size", "64", "-mode", mode])
            .args(args);
        let what = format!("go-plugin's echo-host -mode {mode}");
        output(command, &what, Duration::from_secs(120)).await
    }
}

/// The value of `key=` on the line of an anchor's output `out` that starts
/// with `name`.
pub(crate) fn field(out: &str, name: &str, key: &str) -> Res<f64> {
    let line = out
        .lines()
        .find(|l| l.starts_with(name))
        .ok_or_else(|| format!("the anchor printed no {name} line"))?;
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("the anchor's {name} line has no number {key}=: {line}").into())
}

/// The median of `xs` (nearest rank).
pub(crate) fn median(xs: &[f64]) -> f64 {
    let mut s = Samples::with_capacity(xs.len());
    for x in xs {
        s.push_us(*x);
    }
    s.pct(50.0)
}

/// `unary_p50_us_vs_goplugin`, `unary_p99_us_vs_goplugin` and
/// `unary_rps_c16_vs_goplugin`: Anima's leased call (`leased`, over a Unix
/// socket as go-plugin's plugins are) against go-plugin's, or one
/// `goplugin skipped=…` line.
pub(crate) async fn goplugin(opts: &Opts, leased: &mut Caller, report: &mut Report) -> Res<()> {
    let Some(peer) = GoPlugin::find() else {
        report.add(
            Figure::new("goplugin")
                .s("skipped", "not-built")
                .s(
                    "detail",
                    "cargo xtask bench --peers builds the go-plugin anchor (../shared/anchors/go-plugin/run.sh)",
                ),
        );
        return Ok(());
    };
    let (rounds, calls) = if opts.quick { (2, 300) } else { (6, 3_000) };
    let calls_arg = calls.to_string();
    let mut ours = (Vec::new(), Vec::new());
    let mut theirs = (Vec::new(), Vec::new());
    leased.timed(500, None).await?;
    for round in 0..rounds {
        for peer_turn in [round % 2 == 0, round % 2 != 0] {
            if peer_turn {
                let out = peer.host("unary", &["-calls", &calls_arg]).await?;
                theirs.0.push(field(&out, "goplugin_unary_us ", "p50")?);
                theirs.1.push(field(&out, "goplugin_unary_us ", "p99")?);
            } else {
                let mut s = Samples::with_capacity(calls);
                leased.timed(calls, Some(&mut s)).await?;
                ours.0.push(s.pct(50.0));
                ours.1.push(s.pct(99.0));
            }
        }
    }
    for (name, (v, base)) in [
        ("unary_p50_us_vs_goplugin", (&ours.0, &theirs.0)),
        ("unary_p99_us_vs_goplugin", (&ours.1, &theirs.1)),
    ] {
        let (v, base) = (median(v), median(base));
        report.add(
            Figure::new(name)
                .vs(v, base, 1)
                .i("rounds", rounds)
                .i("calls_per_round", calls as u64)
                .s("transport", "unix")
                .s("baseline_is", "goplugin")
                .target("ratio<=1", v <= base),
        );
    }
    report.add(goplugin_rps(opts, &peer, leased).await?);
    Ok(())
}

/// `unary_rps_c16_vs_goplugin`: 16 concurrent callers, alternating
/// windows of the leased call and go-plugin's.
async fn goplugin_rps(opts: &Opts, peer: &GoPlugin, leased: &Caller) -> Res<Figure> {
    let (rounds, window) = if opts.quick {
        (1, Duration::from_millis(500))
    } else {
        (4, Duration::from_secs(1))
    };
    let window_arg = format!("{}ms", window.as_millis());
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    throughput(leased, 16, Duration::from_millis(200)).await?;
    for round in 0..rounds {
        for peer_turn in [round % 2 == 0, round % 2 != 0] {
            if peer_turn {
                let args = ["-concurrency", "16", "-duration", &window_arg];
                let out = peer.host("rps", &args).await?;
                // The line is `goplugin_unary_rps_concurrency16=RATE calls=…`.
                let name = "goplugin_unary_rps_concurrency16";
                theirs.push(field(&out, name, name)?);
            } else {
                let (calls, took) = throughput(leased, 16, window).await?;
                ours.push(calls as f64 / took.as_secs_f64().max(1e-9));
            }
        }
    }
    let (v, base) = (median(&ours), median(&theirs));
    Ok(Figure::new("unary_rps_c16_vs_goplugin")
        .vs(v, base, 0)
        .i("rounds", rounds)
        .s("transport", "unix")
        .s("baseline_is", "goplugin")
        .target("ratio>=1", v >= base))
}
