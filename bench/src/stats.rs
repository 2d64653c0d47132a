//! Percentiles of one run's latencies (exact, by sorting) and the median,
//! minimum and maximum of a figure across runs.

use serde::Serialize;

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Percentiles of `samples_ns` (nanoseconds), nearest-rank.
pub fn latency(mut samples_ns: Vec<u64>) -> Latency {
    if samples_ns.is_empty() {
        return Latency::default();
    }
    samples_ns.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let at = |q: f64| us(samples_ns[rank(samples_ns.len(), q)]);
    Latency {
        count: samples_ns.len(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: us(samples_ns[samples_ns.len() - 1]),
    }
}

/// One run's timestamps summed up: latency from send to arrival and from
/// send to answer, and `delivered` over the span from the first send to the
/// last arrival (per second; NaN for an empty span).
pub struct Stamped {
    pub arrival: Latency,
    pub answer: Latency,
    pub per_s: f64,
}

/// Sums up `(sent, arrived, answered)` timestamps in nanoseconds, 0 for
/// never (an item never sent is skipped).
pub fn stamped(stamps: impl Iterator<Item = (u64, u64, u64)>, delivered: usize) -> Stamped {
    let (mut arrival, mut answer) = (Vec::new(), Vec::new());
    let (mut first_sent, mut last_arrival) = (u64::MAX, 0u64);
    for (s, a, r) in stamps.filter(|&(s, _, _)| s > 0) {
        first_sent = first_sent.min(s);
        if a > 0 {
            arrival.push(a.saturating_sub(s));
            last_arrival = last_arrival.max(a);
        }
        if r > 0 {
            answer.push(r.saturating_sub(s));
        }
    }
    let secs = last_arrival.saturating_sub(first_sent) as f64 / 1e9;
    Stamped {
        arrival: latency(arrival),
        answer: latency(answer),
        per_s: if secs > 0.0 {
            delivered as f64 / secs
        } else {
            f64::NAN
        },
    }
}

/// Nearest-rank index of quantile `q` in `n` sorted samples.
fn rank(n: usize, q: f64) -> usize {
    let r = (q * n as f64).ceil() as usize;
    r.clamp(1, n) - 1
}

/// Median (mean of the middle two for an even count), or NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Smallest and largest finite value, or NaN when there is none.
pub fn min_max(values: &[f64]) -> (f64, f64) {
    let finite = values.iter().copied().filter(|x| x.is_finite());
    let min = finite.clone().fold(f64::INFINITY, f64::min);
    let max = finite.fold(f64::NEG_INFINITY, f64::max);
    if min.is_finite() {
        (min, max)
    } else {
        (f64::NAN, f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let l = latency((1..=1000).map(|i| i * 1000).collect());
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50, 500.0);
        assert_eq!(l.p90, 900.0);
        assert_eq!(l.p99, 990.0);
        assert_eq!(l.p999, 999.0);
        assert_eq!(l.max, 1000.0);
        let one = latency(vec![7000]);
        assert_eq!((one.p50, one.p999, one.max), (7.0, 7.0, 7.0));
        assert_eq!(latency(vec![]).count, 0);
    }

    #[test]
    fn median_and_range() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(min_max(&[3.0, 1.0, f64::NAN, 2.0]), (1.0, 3.0));
    }
}
