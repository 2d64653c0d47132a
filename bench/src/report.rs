//! The report: figures (one value per run, summarised as median and
//! min–max, checked against the targets), functional failures,
//! notes, and the machine; printed for people and as one final JSON line.

use serde_json::{Value, json};

use crate::stats::{median, min_max};

/// Which way a target goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    AtMost,
    AtLeast,
}

/// A figure's target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub cmp: Cmp,
    pub value: f64,
}

pub fn at_most(value: f64) -> Option<Target> {
    Some(Target {
        cmp: Cmp::AtMost,
        value,
    })
}

pub fn at_least(value: f64) -> Option<Target> {
    Some(Target {
        cmp: Cmp::AtLeast,
        value,
    })
}

/// One measured quantity, one value per run.
#[derive(Debug, Clone)]
pub struct Figure {
    pub key: String,
    pub unit: &'static str,
    pub runs: Vec<f64>,
    pub target: Option<Target>,
}

impl Figure {
    pub fn median(&self) -> f64 {
        median(&self.runs)
    }

    /// Whether the median meets the target (`None` without a target).
    pub fn met(&self) -> Option<bool> {
        let t = self.target?;
        let m = self.median();
        Some(match t.cmp {
            Cmp::AtMost => m <= t.value,
            Cmp::AtLeast => m >= t.value,
        })
    }
}

/// The machine the figures were taken on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub mem_total_kib: u64,
    pub nofile_limit: u64,
}

impl Machine {
    pub fn detect(nofile_limit: u64) -> Machine {
        let cores = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Machine {
            cores,
            kernel,
            cpu_model,
            mem_total_kib,
            nofile_limit,
        }
    }
}

/// Everything one invocation measured.
pub struct Report {
    pub machine: Machine,
    pub figures: Vec<Figure>,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    pub params: serde_json::Map<String, Value>,
    pub runs: usize,
    pub tiny: bool,
}

impl Report {
    pub fn new(machine: Machine, runs: usize, tiny: bool) -> Report {
        Report {
            machine,
            figures: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
            params: serde_json::Map::new(),
            runs,
            tiny,
        }
    }

    /// Adds a value for `key` (creating the figure at its first run).
    pub fn add(&mut self, key: &str, unit: &'static str, value: f64, target: Option<Target>) {
        match self.figures.iter_mut().find(|f| f.key == key) {
            Some(f) => f.runs.push(value),
            None => self.figures.push(Figure {
                key: key.to_string(),
                unit,
                runs: vec![value],
                target,
            }),
        }
    }

    /// A functional failure (the exit status becomes 1).
    pub fn fail(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("FAILURE: {what}");
        self.failures.push(what);
    }

    pub fn note(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("note: {what}");
        self.notes.push(what);
    }

    pub fn param(&mut self, key: &str, value: Value) {
        self.params.insert(key.to_string(), value);
    }

    /// The figures as a table for people.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        out.push_str(&format!(
            "\nscan-bench: {} core(s), {}, kernel {}, {:.1} GiB, open-file limit {}{}\n",
            m.cores,
            m.cpu_model,
            m.kernel,
            m.mem_total_kib as f64 / 1024.0 / 1024.0,
            m.nofile_limit,
            if self.tiny {
                " (--tiny: timings not meaningful)"
            } else {
                ""
            }
        ));
        out.push_str(&format!(
            "{:<44} {:>12} {:>25} {:>14}  {}\n",
            "figure",
            "median",
            format!("min–max ({} runs)", self.runs),
            "target",
            ""
        ));
        for f in &self.figures {
            let (lo, hi) = min_max(&f.runs);
            let target = match f.target {
                Some(t) => format!(
                    "{} {}",
                    if t.cmp == Cmp::AtMost { "≤" } else { "≥" },
                    num(t.value)
                ),
                None => String::new(),
            };
            let met = match f.met() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            out.push_str(&format!(
                "{:<44} {:>12} {:>25} {:>14}  {}\n",
                format!("{} [{}]", f.key, f.unit),
                num(f.median()),
                format!("{} – {}", num(lo), num(hi)),
                target,
                met
            ));
        }
        if self.failures.is_empty() {
            out.push_str("functional checks: all passed\n");
        } else {
            out.push_str(&format!("functional failures: {}\n", self.failures.len()));
            for f in &self.failures {
                out.push_str(&format!("  - {f}\n"));
            }
        }
        out
    }

    /// Everything as one line of JSON.
    pub fn json_line(&self) -> String {
        let m = &self.machine;
        let mut figures = serde_json::Map::new();
        for f in &self.figures {
            let (lo, hi) = min_max(&f.runs);
            figures.insert(
                f.key.clone(),
                json!({
                    "unit": f.unit,
                    "median": finite(f.median()),
                    "min": finite(lo),
                    "max": finite(hi),
                    "runs": f.runs.iter().map(|v| finite(*v)).collect::<Vec<_>>(),
                    "target": f.target.map(|t| json!({
                        "op": if t.cmp == Cmp::AtMost { "<=" } else { ">=" },
                        "value": t.value,
                    })),
                    "met": f.met(),
                }),
            );
        }
        json!({
            "scan_bench": 1,
            "ok": self.failures.is_empty(),
            "tiny": self.tiny,
            "runs": self.runs,
            "machine": {
                "cores": m.cores,
                "kernel": m.kernel,
                "cpu_model": m.cpu_model,
                "mem_total_kib": m.mem_total_kib,
                "nofile_limit": m.nofile_limit,
            },
            "params": self.params,
            "figures": figures,
            "failures": self.failures,
            "notes": self.notes,
        })
        .to_string()
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

/// A number with sensible precision for the table.
fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".to_string()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            cores: 2,
            kernel: "k".into(),
            cpu_model: "c".into(),
            mem_total_kib: 1,
            nofile_limit: 20000,
        }
    }

    #[test]
    fn json_line_is_one_line_with_every_figure() {
        let mut r = Report::new(machine(), 3, false);
        r.add("idle.rss_per_conn", "B", 3000.0, at_most(2048.0));
        r.add("idle.rss_per_conn", "B", 1000.0, at_most(2048.0));
        r.add("idle.rss_per_conn", "B", 2000.0, at_most(2048.0));
        r.add("push.rate", "lines/s", f64::NAN, None);
        let line = r.json_line();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["figures"]["idle.rss_per_conn"]["median"], 2000.0);
        assert_eq!(v["figures"]["idle.rss_per_conn"]["min"], 1000.0);
        assert_eq!(v["figures"]["idle.rss_per_conn"]["met"], true);
        assert_eq!(v["figures"]["push.rate"]["median"], Value::Null);
        assert_eq!(v["ok"], true);
        assert_eq!(v["machine"]["cores"], 2);
    }

    #[test]
    fn targets() {
        let mut r = Report::new(machine(), 1, true);
        r.add("a", "x", 5.0, at_least(10.0));
        assert_eq!(r.figures[0].met(), Some(false));
        r.fail("broke");
        assert!(r.human().contains("MISSED"));
        assert!(!r.json_line().contains("\"ok\":true"));
    }
}
