//! Prometheus text metrics, served at `GET /metrics` on the Core's endpoint
//! (mTLS; operators only), encoded by `prometheus-client` (which escapes
//! label values).
//!
//! The gateway's counters and latency histogram live here, each family
//! behind its own lock; what the Core already keeps elsewhere (leases,
//! modules, refused connections, dropped audit records) is read at each
//! scrape.

use std::sync::Mutex;
use std::time::Duration;

use anima_protocol::ServerTls;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::admin::lease_state_name;
use crate::supervisor::CoreContext;

/// Latency buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The `Content-Type` of [`Metrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    event_type: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabels {
    module: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleStateLabels {
    module: String,
    state: String,
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The gateway's counters, and what the endpoint's listener refused.
pub(crate) struct Metrics {
    calls: Family<CallLabels, Counter>,
    latency: LatencyFamily,
    refusals: Family<ReasonLabels, Counter>,
    messages: Family<MessageLabels, Counter>,
    listener: Mutex<Option<ServerTls>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            refusals: Family::default(),
            messages: Family::default(),
            listener: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Reports the connections `tls` refuses (the Core's endpoint).
    pub(crate) fn watch_listener(&self, tls: &ServerTls) {
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls.clone());
    }

    /// One finished call.
    pub(crate) fn call(&self, method: &str, code: tonic::Code, latency: Duration) {
        let method = method.to_owned();
        self.calls
            .get_or_create(&CallLabels {
                method: method.clone(),
                code: code as i32,
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels { method })
            .observe(latency.as_secs_f64());
    }

    /// One refused call, by reason.
    pub(crate) fn refusal(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// One runtime message of `event_type` came to `outcome` (M13):
    /// `published`, `reply`, `late_reply`, `delivered`, `acked`, `nacked`,
    /// or an EPS code for a refused one. Only event types some permission
    /// names are counted by name (the rest as `other`), so a sender cannot
    /// grow the label set.
    pub(crate) fn message(&self, event_type: &str, outcome: &str) {
        self.messages
            .get_or_create(&MessageLabels {
                event_type: event_type.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The exposition text (Prometheus text format, [`CONTENT_TYPE`]).
    pub(crate) fn render(&self, ctx: &CoreContext) -> String {
        let mut registry = Registry::default();
        register_leases(&mut registry, ctx);
        register_modules(&mut registry, ctx);
        self.register_listener(&mut registry);
        let dropped = Counter::<u64>::default();
        dropped.inc_by(ctx.audit.dropped());
        registry.register(
            "anima_audit_records_dropped",
            "Audit records dropped because the audit log could not keep up",
            dropped,
        );
        registry.register(
            "anima_refusals",
            "Calls refused by the gateway, by reason",
            self.refusals.clone(),
        );
        registry.register(
            "anima_messages",
            "Runtime messages through the mediator, by event type and outcome",
            self.messages.clone(),
        );
        registry.register(
            "anima_calls",
            "Calls through the gateway by method and gRPC status code",
            self.calls.clone(),
        );
        registry.register(
            "anima_call_duration_seconds",
            "Gateway call latency",
            self.latency.clone(),
        );
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    fn register_listener(&self, registry: &mut Registry) {
        let refused = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(ServerTls::refusal_counts)
            .unwrap_or_default();
        let refusals = Family::<ReasonLabels, Counter>::default();
        let suppressed = Family::<ReasonLabels, Counter>::default();
        for r in &refused {
            let labels = ReasonLabels {
                reason: r.reason.to_string(),
            };
            refusals.get_or_create(&labels).inc_by(r.refused);
            suppressed.get_or_create(&labels).inc_by(r.logs_suppressed);
        }
        registry.register(
            "anima_connection_refusals",
            "Connections the Core's endpoint refused before any call, by reason",
            refusals,
        );
        registry.register(
            "anima_connection_refusal_logs_suppressed",
            "Refused connections left out of the log (rate limit), by reason",
            suppressed,
        );
    }
}

/// Per-module figures from `rows` of (module, state, count): a gauge of the
/// rows by module and state, and a counter of their counts by module.
fn by_module(
    rows: impl IntoIterator<Item = (String, String, u64)>,
) -> (
    Family<ModuleStateLabels, Gauge>,
    Family<ModuleLabels, Counter>,
) {
    let states = Family::<ModuleStateLabels, Gauge>::default();
    let counts = Family::<ModuleLabels, Counter>::default();
    for (module, state, count) in rows {
        counts
            .get_or_create(&ModuleLabels {
                module: module.clone(),
            })
            .inc_by(count);
        states
            .get_or_create(&ModuleStateLabels { module, state })
            .inc();
    }
    (states, counts)
}

fn register_leases(registry: &mut Registry, ctx: &CoreContext) {
    let (leases, renewals) = by_module(ctx.leases.list().into_iter().map(|r| {
        let state = lease_state_name(&r.state).to_owned();
        (r.module.to_string(), state, r.renewals)
    }));
    registry.register("anima_leases", "Leases by module and state", leases);
    registry.register(
        "anima_lease_renewals",
        "Renewals granted, by module",
        renewals,
    );
    // Calls forwarded under each module's open lease, not yet answered.
    let in_flight = Family::<ModuleLabels, Gauge>::default();
    let links: Vec<(String, usize)> = ctx
        .links
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(urn, link)| (urn.to_string(), link.calls_in_flight()))
        .collect();
    for (module, calls) in links {
        in_flight
            .get_or_create(&ModuleLabels { module })
            .set(i64::try_from(calls).unwrap_or(i64::MAX));
    }
    registry.register(
        "anima_calls_in_flight",
        "Calls forwarded under the module's current lease and not yet answered",
        in_flight,
    );
}

fn register_modules(registry: &mut Registry, ctx: &CoreContext) {
    // One row per module: its current state's gauge is 1.
    let (states, restarts) = by_module(ctx.registry.list().into_iter().map(|m| {
        (
            m.urn.to_string(),
            m.state.to_string(),
            u64::from(m.restarts),
        )
    }));
    registry.register("anima_module_restarts", "Module restarts", restarts);
    registry.register(
        "anima_module_state",
        "Module state (1 for the current one)",
        states,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway_text(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        registry.register("anima_refusals", "r", metrics.refusals.clone());
        registry.register("anima_calls", "c", metrics.calls.clone());
        registry.register("anima_call_duration_seconds", "d", metrics.latency.clone());
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn calls_are_counted_by_method_and_code_with_their_latency() {
        let metrics = Metrics::default();
        for _ in 0..3 {
            metrics.call("/x.v1.X/Do", tonic::Code::Ok, Duration::from_micros(300));
        }
        metrics.call(
            "/x.v1.X/Do",
            tonic::Code::DeadlineExceeded,
            Duration::from_secs(2),
        );
        metrics.refusal("POLICY_DENIED");
        let text = gateway_text(&metrics);
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has(r#"anima_calls_total{method="/x.v1.X/Do",code="0"} 3"#),
            "{text}"
        );
        assert!(
            has(r#"anima_calls_total{method="/x.v1.X/Do",code="4"} 1"#),
            "{text}"
        );
        assert!(
            has(r#"anima_refusals_total{reason="POLICY_DENIED"} 1"#),
            "{text}"
        );
        assert!(
            has(r#"anima_call_duration_seconds_count{method="/x.v1.X/Do"} 4"#),
            "{text}"
        );
        // 300 µs falls in the 0.0005 s bucket and above; 2 s only in 5 s.
        assert!(
            has(r#"anima_call_duration_seconds_bucket{le="0.0005",method="/x.v1.X/Do"} 3"#)
                || has(r#"anima_call_duration_seconds_bucket{method="/x.v1.X/Do",le="0.0005"} 3"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE anima_call_duration_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::default();
        metrics.call("/x\"} 1\nevil{a=\"", tonic::Code::Ok, Duration::ZERO);
        let text = gateway_text(&metrics);
        assert!(
            !text.lines().any(|l| l.starts_with("evil")),
            "a label value broke out of its line: {text}"
        );
        assert!(text.contains(r#"method="/x\"} 1\nevil{a=\""#), "{text}");
    }
}
