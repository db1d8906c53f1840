//! Figures: one `NAME key=value …` line each on stdout, and the same as JSON.

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value, json};

/// One reported figure: a name and its fields, in order.
#[derive(Debug, Clone)]
pub struct Figure {
    name: String,
    fields: Vec<(String, Value, String)>,
}

impl Figure {
    /// A figure with no fields yet.
    pub fn new(name: &str) -> Self {
        Figure {
            name: name.to_owned(),
            fields: Vec::new(),
        }
    }

    /// A float field, printed with `decimals` digits.
    pub fn f(mut self, key: &str, value: f64, decimals: usize) -> Self {
        let shown = format!("{value:.decimals$}");
        // The JSON carries the printed precision too, so both agree.
        let json = shown
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number);
        self.fields.push((key.to_owned(), json, shown));
        self
    }

    /// An integer field.
    pub fn i(mut self, key: &str, value: u64) -> Self {
        self.fields
            .push((key.to_owned(), json!(value), value.to_string()));
        self
    }

    /// A text field (quoted on the line when it holds spaces).
    pub fn s(mut self, key: &str, value: &str) -> Self {
        let shown = if value.contains(char::is_whitespace) || value.is_empty() {
            format!("{value:?}")
        } else {
            value.to_owned()
        };
        self.fields.push((key.to_owned(), json!(value), shown));
        self
    }

    /// `value`, `baseline` and `ratio = value / baseline`.
    pub fn vs(self, value: f64, baseline: f64, decimals: usize) -> Self {
        let ratio = if baseline > 0.0 {
            value / baseline
        } else {
            0.0
        };
        self.f("value", value, decimals)
            .f("baseline", baseline, decimals)
            .f("ratio", ratio, 3)
    }

    /// A design target and whether this run met it.
    pub fn target(self, target: &str, met: bool) -> Self {
        self.s("target", target)
            .s("met", if met { "yes" } else { "no" })
    }

    /// The `NAME key=value …` line.
    pub fn line(&self) -> String {
        let mut line = self.name.clone();
        for (k, _, shown) in &self.fields {
            line.push(' ');
            line.push_str(k);
            line.push('=');
            line.push_str(shown);
        }
        line
    }

    fn json(&self) -> Value {
        let mut map = Map::new();
        map.insert("name".into(), json!(self.name));
        for (k, v, _) in &self.fields {
            map.insert(k.clone(), v.clone());
        }
        Value::Object(map)
    }
}

/// Every figure of one run, printed as they come.
#[derive(Debug, Default)]
pub struct Report {
    figures: Vec<Figure>,
}

impl Report {
    /// Prints `figure`'s line at once and keeps it for the JSON.
    pub fn add(&mut self, figure: Figure) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", figure.line());
        let _ = out.flush();
        self.figures.push(figure);
    }

    /// Writes the whole run as JSON to `path` (creating its directory).
    pub fn write_json(&self, path: &Path, run: Value) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut doc = run;
        if let Value::Object(map) = &mut doc {
            map.insert(
                "figures".into(),
                Value::Array(self.figures.iter().map(Figure::json).collect()),
            );
        }
        let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }
}

/// The 1-minute load average (other work on the machine), from `/proc`.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// What the run ran on: CPUs, CPU model, memory, kernel.
pub fn machine() -> Figure {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    Figure::new("machine")
        .i("cpus", cpus as u64)
        .s("cpu_model", &model)
        .i("mem_mib", mem_kib / 1024)
        .s("kernel", kernel.trim())
        .f("load_1m", loadavg(), 2)
}
