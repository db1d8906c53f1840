//! The `ratelimit` sample: a proxy sidecar (PROTOCOL.md §11) that sees each
//! call on its way to its main module, logs it, and refuses a caller that
//! goes over its rate.
//!
//! Each caller has a token bucket: [`RATE_ENV`] tokens a second (default
//! [`DEFAULT_RATE`]), at most [`BURST_ENV`] held (default: one second's
//! worth). A call takes one token; with none left it is refused
//! `RESOURCE_EXHAUSTED` with the reason `RATE_LIMITED`. At most
//! [`MAX_CALLERS`] callers are tracked; past that the fullest buckets (the
//! callers idle longest) are forgotten first, so a flood of new identities
//! cannot grow its memory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use anima_module_sdk::{Contract, Interface};
use anima_protocol::pb::{InboundCall, Verdict};
use tonic::{Code, Request, Response, Status};

use crate::{check_text, lease_of};

/// The variable setting the calls a second each caller may make.
pub const RATE_ENV: &str = "RATELIMIT_PER_SECOND";
/// The variable setting how many calls a caller may make at once.
pub const BURST_ENV: &str = "RATELIMIT_BURST";
/// Calls a second per caller when [`RATE_ENV`] is unset.
pub const DEFAULT_RATE: f64 = 100.0;
/// The most callers tracked at once.
pub const MAX_CALLERS: usize = 10_000;
/// The longest URN or method path it reads, in bytes.
const MAX_NAME_BYTES: usize = 1024;
/// The reason a refused caller gets.
pub const RATE_LIMITED: &str = "RATE_LIMITED";

/// The sample's capability contract (`ratelimit/module.toml`).
pub fn contract() -> Contract {
    #[allow(clippy::expect_used)]
    // Invariant: the embedded module.toml is fixed at build time and a unit
    // test parses it.
    Contract::from_toml(include_str!("../ratelimit/module.toml"))
        .expect("ratelimit/module.toml is a valid contract")
}

/// The proxy interface it provides, `anima/sidecar` 1.0.0
/// (`interfaces/anima/sidecar/1.0.0/interface.toml`).
pub fn interface() -> Interface {
    #[allow(clippy::expect_used)]
    // Invariant: the embedded interface.toml is fixed at build time and a
    // unit test parses it.
    Interface::from_toml(include_str!(
        "../../interfaces/anima/sidecar/1.0.0/interface.toml"
    ))
    .expect("the sidecar interface.toml is a valid definition")
}

/// A limit in the environment that is not a positive number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLimit {
    /// The variable ([`RATE_ENV`] or [`BURST_ENV`]).
    pub variable: &'static str,
    /// What it held.
    pub value: String,
}

impl std::fmt::Display for BadLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:?} is not a positive number",
            self.variable, self.value
        )
    }
}

impl std::error::Error for BadLimit {}

/// The rate and burst from the environment; a value that is not a positive
/// number is an error naming its variable.
pub fn limits_from_env() -> Result<(f64, f64), BadLimit> {
    let read = |variable: &'static str| -> Result<Option<f64>, BadLimit> {
        match std::env::var(variable) {
            Err(_) => Ok(None),
            Ok(text) if text.is_empty() => Ok(None),
            Ok(text) => match text.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
                _ => Err(BadLimit {
                    variable,
                    value: text,
                }),
            },
        }
    };
    let rate = read(RATE_ENV)?.unwrap_or(DEFAULT_RATE);
    let burst = read(BURST_ENV)?.unwrap_or(rate);
    Ok((rate, burst))
}

/// One caller's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The sidecar's service.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimit {
    /// `rate` calls a second per caller, `burst` at once.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimit {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one of `caller`'s tokens at `now`; false when none is left.
    pub fn take(&self, caller: &str, now: Instant) -> bool {
        let mut buckets = self.lock();
        if !buckets.contains_key(caller) && buckets.len() >= MAX_CALLERS {
            self.forget_idlest(&mut buckets, now);
        }
        let bucket = buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let earned = now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + earned).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets the tenth of the callers whose buckets are fullest at `now`
    /// (a full bucket is what a new caller starts with: nothing is lost).
    fn forget_idlest(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        let level =
            |b: &Bucket| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        let mut levels: Vec<(f64, String)> =
            buckets.iter().map(|(k, b)| (level(b), k.clone())).collect();
        levels.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, caller) in levels.into_iter().take(MAX_CALLERS / 10) {
            buckets.remove(&caller);
        }
    }
}

#[tonic::async_trait]
impl anima_protocol::pb::sidecar_server::Sidecar for RateLimit {
    async fn inspect(&self, request: Request<InboundCall>) -> Result<Response<Verdict>, Status> {
        lease_of(&request)?;
        let call = request.into_inner();
        check_text("caller", &call.caller, MAX_NAME_BYTES)?;
        check_text("module", &call.module, MAX_NAME_BYTES)?;
        check_text("method", &call.method, MAX_NAME_BYTES)?;
        let allow = self.take(&call.caller, Instant::now());
        tracing::info!(
            caller = %call.caller,
            module = %call.module,
            method = %call.method,
            trace_id = %call.trace_id.chars().take(32).collect::<String>(),
            verdict = %if allow { "allowed" } else { RATE_LIMITED },
            "inbound call"
        );
        let verdict = if allow {
            Verdict {
                allow: true,
                ..Verdict::default()
            }
        } else {
            Verdict {
                allow: false,
                reason: RATE_LIMITED.into(),
                message: format!(
                    "{} is over {} calls a second to {}",
                    call.caller, self.rate, call.module
                ),
                code: Code::ResourceExhausted as u32,
            }
        };
        Ok(Response::new(verdict))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_contract_and_interface_parse_and_agree() {
        let contract = contract();
        assert_eq!(contract.urn.as_str(), "urn:anima:module:ratelimit");
        let interface = interface();
        assert_eq!(contract.provides, std::slice::from_ref(&interface.provided));
        for method in interface.method_paths() {
            assert!(contract.methods.iter().any(|m| m == method), "{method}");
        }
    }

    #[test]
    fn a_caller_gets_its_burst_then_its_rate() {
        let limit = RateLimit::new(10.0, 3.0);
        let t = Instant::now();
        assert!((0..3).all(|_| limit.take("a", t)), "the burst");
        assert!(!limit.take("a", t), "then none");
        assert!(limit.take("b", t), "another caller has its own bucket");
        assert!(
            !limit.take("a", t + Duration::from_millis(50)),
            "half a token"
        );
        assert!(
            limit.take("a", t + Duration::from_millis(100)),
            "one token a tenth of a second"
        );
        assert!(!limit.take("a", t + Duration::from_millis(100)));
        // Idle, the bucket fills to the burst and no further.
        let later = t + Duration::from_secs(60);
        assert!((0..3).all(|_| limit.take("a", later)));
        assert!(!limit.take("a", later));
    }

    #[test]
    fn a_flood_of_callers_is_bounded() {
        let limit = RateLimit::new(1.0, 1.0);
        let t = Instant::now();
        for i in 0..MAX_CALLERS + 500 {
            limit.take(&format!("urn:anima:user:u{i}"), t);
        }
        assert!(limit.lock().len() <= MAX_CALLERS);
    }
}
