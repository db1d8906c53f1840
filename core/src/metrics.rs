//! Prometheus text metrics, served at `GET /metrics` on the Core's endpoint
//! (mTLS; operators only).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use anima_protocol::ServerTls;
use anima_protocol::lease::LeaseState;

use crate::supervisor::CoreContext;

/// Latency buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    calls: BTreeMap<(String, String), u64>,
    latency: BTreeMap<String, Histogram>,
    refusals: BTreeMap<String, u64>,
}

/// The gateway's counters, and what the endpoint's listener refused.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    listener: Mutex<Option<ServerTls>>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports the connections `tls` refuses (the Core's endpoint).
    pub fn watch_listener(&self, tls: &ServerTls) {
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls.clone());
    }

    /// One finished call.
    pub fn call(&self, method: &str, code: &str, latency: Duration) {
        let mut inner = self.lock();
        *inner
            .calls
            .entry((method.to_owned(), code.to_owned()))
            .or_default() += 1;
        let h = inner.latency.entry(method.to_owned()).or_default();
        let secs = latency.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// One refused call, by reason.
    pub fn refusal(&self, reason: &str) {
        *self.lock().refusals.entry(reason.to_owned()).or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self, ctx: &CoreContext) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP anima_leases Leases by module and state.");
        let _ = writeln!(out, "# TYPE anima_leases gauge");
        let mut leases: BTreeMap<(String, &str), u64> = BTreeMap::new();
        let mut renewals: BTreeMap<String, u64> = BTreeMap::new();
        for r in ctx.leases.list() {
            let state = match r.state {
                LeaseState::Active => "active",
                LeaseState::Expired => "expired",
                LeaseState::Ended(_) => "ended",
            };
            *leases.entry((r.module.to_string(), state)).or_default() += 1;
            *renewals.entry(r.module.to_string()).or_default() += r.renewals;
        }
        for ((module, state), n) in &leases {
            let _ = writeln!(
                out,
                "anima_leases{{module=\"{module}\",state=\"{state}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP anima_lease_renewals_total Renewals granted, by module."
        );
        let _ = writeln!(out, "# TYPE anima_lease_renewals_total counter");
        for (module, n) in &renewals {
            let _ = writeln!(out, "anima_lease_renewals_total{{module=\"{module}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP anima_module_restarts_total Module restarts.");
        let _ = writeln!(out, "# TYPE anima_module_restarts_total counter");
        for m in ctx.registry.list() {
            let _ = writeln!(
                out,
                "anima_module_restarts_total{{module=\"{}\"}} {}",
                m.urn, m.restarts
            );
        }
        let _ = writeln!(
            out,
            "# HELP anima_module_state Module state (1 for the current one)."
        );
        let _ = writeln!(out, "# TYPE anima_module_state gauge");
        for m in ctx.registry.list() {
            let _ = writeln!(
                out,
                "anima_module_state{{module=\"{}\",state=\"{}\"}} 1",
                m.urn, m.state
            );
        }
        let refused = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(ServerTls::refusal_counts)
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP anima_connection_refusals_total Connections the Core's endpoint refused before any call, by reason."
        );
        let _ = writeln!(out, "# TYPE anima_connection_refusals_total counter");
        for r in &refused {
            let _ = writeln!(
                out,
                "anima_connection_refusals_total{{reason=\"{}\"}} {}",
                r.reason, r.refused
            );
        }
        let _ = writeln!(
            out,
            "# HELP anima_connection_refusal_logs_suppressed_total Refused connections left out of the log (rate limit), by reason."
        );
        let _ = writeln!(
            out,
            "# TYPE anima_connection_refusal_logs_suppressed_total counter"
        );
        for r in &refused {
            let _ = writeln!(
                out,
                "anima_connection_refusal_logs_suppressed_total{{reason=\"{}\"}} {}",
                r.reason, r.logs_suppressed
            );
        }
        let _ = writeln!(
            out,
            "# HELP anima_audit_records_dropped_total Audit records dropped because the audit log could not keep up."
        );
        let _ = writeln!(out, "# TYPE anima_audit_records_dropped_total counter");
        let _ = writeln!(
            out,
            "anima_audit_records_dropped_total {}",
            ctx.audit.dropped()
        );
        let inner = self.lock();
        let _ = writeln!(
            out,
            "# HELP anima_refusals_total Calls refused by the gateway, by reason."
        );
        let _ = writeln!(out, "# TYPE anima_refusals_total counter");
        for (reason, n) in &inner.refusals {
            let _ = writeln!(out, "anima_refusals_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP anima_calls_total Calls through the gateway by method and gRPC status code."
        );
        let _ = writeln!(out, "# TYPE anima_calls_total counter");
        for ((method, code), n) in &inner.calls {
            let _ = writeln!(
                out,
                "anima_calls_total{{method=\"{method}\",code=\"{code}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP anima_call_duration_seconds Gateway call latency."
        );
        let _ = writeln!(out, "# TYPE anima_call_duration_seconds histogram");
        for (method, h) in &inner.latency {
            for (le, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "anima_call_duration_seconds_bucket{{method=\"{method}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "anima_call_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "anima_call_duration_seconds_sum{{method=\"{method}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "anima_call_duration_seconds_count{{method=\"{method}\"}} {}",
                h.count
            );
        }
        out
    }
}
