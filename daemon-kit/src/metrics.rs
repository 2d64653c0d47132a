//! Prometheus counters, gauges and latency histograms on atomics, and the
//! text exposition format. Each daemon keeps its own struct of these and
//! renders it on `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds in seconds for request latencies (100 µs to 10 s).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Builds a text exposition, one metric family at a time.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
        self
    }

    /// A counter family with one label.
    pub fn counters<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> &mut Self {
        self.header(name, help, "counter");
        for (l, v) in values {
            let _ = writeln!(self.out, "{name}{{{label}=\"{l}\"}} {v}");
        }
        self
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: i64) -> &mut Self {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {value}");
        self
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        self.header(name, help, "histogram");
        self.histogram_series(name, "", h);
        self
    }

    /// A histogram family with one label.
    pub fn histograms<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, &'a Histogram)>,
    ) -> &mut Self {
        self.header(name, help, "histogram");
        for (l, h) in values {
            self.histogram_series(name, &format!("{label}=\"{l}\","), h);
        }
        self
    }

    fn histogram_series(&mut self, name: &str, labels: &str, h: &Histogram) {
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            let _ = writeln!(
                self.out,
                "{name}_bucket{{{labels}le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = h.count();
        let _ = writeln!(self.out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(
            self.out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {count}"
        );
    }

    /// `<prefix>_build_info{version="…"} 1` and the process's own metrics
    /// (resident memory, open files, CPU seconds, start time) from
    /// `/proc/self`, as Prometheus clients name them.
    pub fn build_and_process(&mut self, prefix: &str, version: &str) -> &mut Self {
        let name = format!("{prefix}_build_info");
        self.header(&name, "The running version (value always 1).", "gauge");
        let _ = writeln!(self.out, "{name}{{version=\"{version}\"}} 1");
        let p = process_stats();
        if let Some(rss) = p.resident_bytes {
            self.gauge_f(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss as f64,
            );
        }
        if let Some(fds) = p.open_fds {
            self.gauge_f("process_open_fds", "Open file descriptors.", fds as f64);
        }
        if let Some(cpu) = p.cpu_seconds {
            self.header(
                "process_cpu_seconds_total",
                "User and system CPU time in seconds.",
                "counter",
            );
            let _ = writeln!(self.out, "process_cpu_seconds_total {cpu}");
        }
        if let Some(start) = p.start_time_seconds {
            self.gauge_f(
                "process_start_time_seconds",
                "Start time since the Unix epoch in seconds.",
                start,
            );
        }
        self
    }

    fn gauge_f(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {value}");
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.out)
    }
}

/// What `/proc/self` says about this process (each `None` where it
/// cannot be read).
#[derive(Debug, Default)]
struct ProcessStats {
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
}

/// Clock ticks per second as `/proc` counts them (`sysconf(_SC_CLK_TCK)`,
/// 100 on every Linux this runs on).
const CLK_TCK: f64 = 100.0;
/// Page size of `statm` (4 KiB on x86-64 and most aarch64 kernels).
const PAGE_BYTES: u64 = 4096;

fn process_stats() -> ProcessStats {
    let mut p = ProcessStats::default();
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        p.resident_bytes = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|pages| pages * PAGE_BYTES);
    }
    p.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14, stime 15, starttime 22.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(u), Some(s)) = (field(14), field(15)) {
            p.cpu_seconds = Some((u + s) / CLK_TCK);
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(start), Some(boot)) = (field(22), boot) {
            p.start_time_seconds = Some(boot + start / CLK_TCK);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let c = Counter::default();
        c.add(3);
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_secs(20));
        let text = Exposition::new()
            .counter("x_total", "X.", c.get())
            .counters("y_total", "Y.", "code", [("ok", 1), ("bad", 2)])
            .histogram("lat_seconds", "L.", &h)
            .finish();
        assert!(text.contains("# TYPE x_total counter\nx_total 3\n"));
        assert!(text.contains("y_total{code=\"bad\"} 2\n"));
        assert!(text.contains("lat_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("lat_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("lat_seconds_count 2\n"));
        let text = Exposition::new()
            .histograms("api_seconds", "A.", "endpoint", [("user/info", &h)])
            .build_and_process("x", "1.2.3")
            .finish();
        assert!(
            text.contains("api_seconds_bucket{endpoint=\"user/info\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("api_seconds_count{endpoint=\"user/info\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("x_build_info{version=\"1.2.3\"} 1\n"));
        assert!(text.contains("process_resident_memory_bytes "));
        assert!(text.contains("process_open_fds "));
        assert!(text.contains("process_cpu_seconds_total "));
    }
}
