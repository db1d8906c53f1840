//! `peers`, renewals: etcd 3.4 keeping 1,000 leases alive over mTLS — what
//! people run today to hold many leases — against Anima's renewal capacity,
//! in the same run and interleaved.
//!
//! The etcd anchor (`../shared/anchors/etcd/run.sh`: Debian's etcd-server
//! 3.4 and a Rust client on the `etcd-client` crate) starts a fresh
//! single-node etcd with client-certificate auth for each run and prints
//! `etcd_keepalive_per_s conc=16 … rate=R`: 1,000 leases kept alive over 16
//! KeepAlive streams, each request awaiting its reply, as Go's clientv3
//! does. `cargo xtask bench --peers` installs its packages and builds it;
//! without `etcd` on the `PATH` or the anchor's client the group prints one
//! `etcd skipped=…` line. The anchor folder is `$ANIMA_ANCHORS`, else
//! `../shared/anchors` beside the workspace.
//!
//! Each round runs the anchor once (mTLS only, its other phases cut short)
//! and Anima's `renewals_per_s` step once (1,000 leases on one module
//! process, more renewals asked for than both processes serve); the order
//! flips every round. The figure is the median of each side's rates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Opts;
use crate::leases::renewal_capacity;
use crate::peers::{field, median};
use crate::procs::{Res, Setup, installed, output};
use crate::report::{Figure, Report};

/// The anchor's script and the client it builds.
struct EtcdAnchor {
    script: PathBuf,
}

impl EtcdAnchor {
    /// The anchor, when its script is there, `etcd` is installed and its
    /// client was built (where its `run.sh` builds it).
    fn find() -> Result<EtcdAnchor, &'static str> {
        let anchors = std::env::var_os("ANIMA_ANCHORS").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/anchors"),
            PathBuf::from,
        );
        let script = anchors.join("etcd").join("run.sh");
        if !script.is_file() {
            return Err("no-anchor");
        }
        if !installed("etcd") {
            return Err("no-etcd");
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .ok_or("no-cache-dir")?;
        let client = cache.join("anima-anchors/etcd/target/release/etcd-lease-bench");
        if !client.is_file() {
            return Err("not-built");
        }
        Ok(EtcdAnchor { script })
    }

    /// One run of the anchor (mTLS, no probes, short latency phases):
    /// etcd's keepalives per second for 1,000 leases.
    async fn keepalives_per_s(&self, opts: &Opts) -> Res<f64> {
        let mut command = tokio::process::Command::new("bash");
        command.arg(&self.script).envs([
            ("MODES", "mtls"),
            ("PROBES", "0"),
            ("SECS", if opts.quick { "1" } else { "5" }),
            ("KA_LEASES", "1000"),
            ("RW_TRIALS", "10"),
            ("EXP_TRIALS", "1"),
            ("QUIET_WAIT_S", "5"),
            ("PHASE_QUIET_WAIT_S", "5"),
            ("ATTEMPTS", "1"),
        ]);
        let out = output(command, "the etcd anchor", Duration::from_secs(600)).await?;
        field(&out, "etcd_keepalive_per_s ", "rate")
    }
}

/// `renewals_per_s_vs_etcd`: Anima's renewal capacity against etcd's
/// keepalive rate, or one `etcd skipped=…` line.
pub(crate) async fn versus_etcd(setup: &Setup, opts: &Opts, report: &mut Report) -> Res<()> {
    let anchor = match EtcdAnchor::find() {
        Ok(anchor) => anchor,
        Err(why) => {
            report.add(Figure::new("etcd").s("skipped", why).s(
                "detail",
                "cargo xtask bench --peers installs etcd and builds the anchor (../shared/anchors/etcd/run.sh)",
            ));
            return Ok(());
        }
    };
    let rounds = if opts.quick { 1 } else { 2 };
    let (mut ours, mut theirs, mut lost) = (Vec::new(), Vec::new(), 0);
    for round in 0..rounds {
        for etcd_turn in [round % 2 == 0, round % 2 != 0] {
            if etcd_turn {
                theirs.push(anchor.keepalives_per_s(opts).await?);
            } else {
                let rate = renewal_capacity(setup, opts).await?;
                ours.push(rate.per_s);
                lost = lost.max(rate.lost);
            }
        }
    }
    let (v, base) = (median(&ours), median(&theirs));
    report.add(
        Figure::new("renewals_per_s_vs_etcd")
            .vs(v, base, 0)
            .i("lost", lost)
            .i("rounds", rounds)
            .i("leases", 1_000)
            .s("baseline_is", "etcd_keepalive_mtls")
            .target("ratio>=1", v >= base && lost == 0),
    );
    Ok(())
}
