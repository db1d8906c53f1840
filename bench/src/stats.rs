//! Percentiles from sorted samples, and process CPU time and RSS from `/proc`.

use std::time::{Duration, Instant};

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    us: Vec<f64>,
    sorted: bool,
}

impl Samples {
    /// Room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Samples {
            us: Vec::with_capacity(n),
            sorted: false,
        }
    }

    /// Adds one duration.
    pub fn push(&mut self, d: Duration) {
        self.push_us(d.as_secs_f64() * 1e6);
    }

    /// Adds one value in microseconds (may be negative for signed offsets).
    pub fn push_us(&mut self, us: f64) {
        self.us.push(us);
        self.sorted = false;
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.us.len()
    }

    /// The `p`-th percentile (nearest rank), in microseconds; 0 when empty.
    pub fn pct(&mut self, p: f64) -> f64 {
        if self.us.is_empty() {
            return 0.0;
        }
        if !self.sorted {
            self.us.sort_by(f64::total_cmp);
            self.sorted = true;
        }
        let n = self.us.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.us[rank.clamp(1, n) - 1]
    }

    /// The largest sample.
    pub fn max(&mut self) -> f64 {
        self.pct(100.0)
    }
}

/// The text of `/proc/PID/NAME` (`pid` 0: this process), if readable.
fn proc_file(pid: u32, name: &str) -> Option<String> {
    let path = if pid == 0 {
        format!("/proc/self/{name}")
    } else {
        format!("/proc/{pid}/{name}")
    };
    std::fs::read_to_string(path).ok()
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces): field 3 onwards, so `utime` (field 14) is at index 11.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = proc_file(pid, "stat")?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// A process's CPU time (user + system) so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// A process's resident set size in KiB (`VmRSS`), `pid` 0 for this one.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = proc_file(pid, "status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU use of one process over an interval, as a percentage of one core.
pub struct CpuMeter {
    pid: u32,
    cpu: Option<Duration>,
    at: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid` (0: this process).
    pub fn start(pid: u32) -> Self {
        CpuMeter {
            pid,
            cpu: cpu_time(pid),
            at: Instant::now(),
        }
    }

    /// CPU time used since [`CpuMeter::start`], and that as % of one core.
    pub fn read(&self) -> (Duration, f64) {
        let used = match (self.cpu, cpu_time(self.pid)) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        };
        let wall = self.at.elapsed().as_secs_f64();
        let pct = if wall > 0.0 {
            used.as_secs_f64() / wall * 100.0
        } else {
            0.0
        };
        (used, pct)
    }
}

/// Busy and steal clock ticks of the whole machine, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    Some((busy, *v.get(7)?))
}

/// This process's clock ticks, with those of the children it has reaped.
fn own_ticks() -> Option<u64> {
    let f = stat_fields(0)?;
    (11..=14).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

/// How much of the machine other work used while the benchmark ran: busy
/// CPU time not spent by this process or its reaped children, and steal.
pub struct MachineMeter {
    busy: Option<(u64, u64)>,
    own: Option<u64>,
    at: Instant,
}

impl MachineMeter {
    /// Starts measuring.
    pub fn start() -> Self {
        MachineMeter {
            busy: machine_ticks(),
            own: own_ticks(),
            at: Instant::now(),
        }
    }

    /// `(other, steal)` as % of all CPUs over the interval (approximate:
    /// children killed but not yet reaped count as other work).
    pub fn read(&self) -> (f64, f64) {
        let (Some((b0, s0)), Some(o0), Some((b1, s1)), Some(o1)) =
            (self.busy, self.own, machine_ticks(), own_ticks())
        else {
            return (0.0, 0.0);
        };
        let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let wall = self.at.elapsed().as_secs_f64().max(1e-3);
        let pct = |ticks: u64| ticks as f64 / hz / (wall * cpus) * 100.0;
        let busy = b1.saturating_sub(b0);
        let own = o1.saturating_sub(o0);
        (pct(busy.saturating_sub(own)), pct(s1.saturating_sub(s0)))
    }
}
