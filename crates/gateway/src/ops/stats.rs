//! Counters the reply path feeds for the status page: the RTU reply-latency histogram and
//! RTU requests by function code and result.
//!
//! Owns only atomics in fixed arrays: recording is a handful of relaxed `fetch_add`s, never
//! allocates, never locks, never panics. Readers take a plain copy ([`HistogramSnapshot`]).
//! Touches nothing else.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use airbridge_modbus::model::Answer;

/// Upper bounds of the latency buckets, in microseconds (`le`, inclusive). Chosen around
/// what a request's last byte → reply written takes: tens of µs with `turnaround: 0`,
/// t3.5 (1750 µs at 38400 baud) plus scheduling with the default turnaround, and the
/// milliseconds a starved runtime would show.
pub const BUCKETS_US: [u64; 13] = [
    50, 100, 250, 500, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 20_000, 50_000, 100_000,
];

/// A lock-free histogram with fixed buckets (plus +Inf).
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Non-cumulative counts; the last one is above every bound.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    /// Sum of every observation (Prometheus `_sum`), nanoseconds.
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// A copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`, ascending, without +Inf.
    pub buckets: Vec<(f64, u64)>,
    /// All observations (the +Inf bucket).
    pub count: u64,
    /// Sum of every observation, seconds.
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    /// Count one observation. Allocation-free, lock-free.
    #[inline]
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_US
            .iter()
            .position(|&b| ns <= b * 1_000)
            .unwrap_or(BUCKETS_US.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Cumulative counts, as Prometheus wants them. Concurrent recording may make `count`
    /// and `sum` differ by the observations in flight; each bucket is exact.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKETS_US.len());
        for (bound, b) in BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += b.load(Relaxed);
            buckets.push((*bound as f64 / 1e6, cumulative));
        }
        let inf = self.buckets.last().map_or(0, |b| b.load(Relaxed));
        HistogramSnapshot {
            buckets,
            count: cumulative + inf,
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// Results of an RTU request, as labelled in `/metrics`.
pub const RESULTS: [&str; 7] = [
    "ok",
    "illegal_function",
    "illegal_data_address",
    "illegal_data_value",
    "server_device_failure",
    "silent_stale",
    "silent_warmup",
];

/// Index into [`RESULTS`] of an outcome.
pub fn result_index(outcome: Answer) -> usize {
    match outcome {
        Answer::Data { .. } => 0,
        Answer::Exception { code: c @ 1..=4 } => usize::from(c),
        Answer::Exception { .. } => 4,
        Answer::SilentStale => 5,
        Answer::SilentWarmup => 6,
    }
}

/// RTU requests for our unit by function code and result.
#[derive(Debug)]
pub struct FunctionCounters {
    /// Count per function code and result ([`RESULTS`]), boxed: 256 × 7 counters.
    by_fc: Box<[[AtomicU64; RESULTS.len()]; 256]>,
}

impl Default for FunctionCounters {
    fn default() -> Self {
        FunctionCounters {
            by_fc: Box::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| AtomicU64::new(0))
            })),
        }
    }
}

impl FunctionCounters {
    #[inline]
    pub fn count(&self, function: u8, outcome: Answer) {
        if let Some(c) = self.by_fc[usize::from(function)].get(result_index(outcome)) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Counts of one function code, indexed like [`RESULTS`].
    pub fn of(&self, function: u8) -> [u64; RESULTS.len()] {
        let row = &self.by_fc[usize::from(function)];
        std::array::from_fn(|i| row[i].load(Relaxed))
    }

    /// Function codes with at least one request, ascending.
    pub fn seen(&self) -> Vec<u8> {
        (0..=255u8)
            .filter(|&fc| self.of(fc).iter().any(|&n| n > 0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_and_cumulative() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(50)); // le 50 µs
        h.record(Duration::from_nanos(50_001)); // le 100 µs
        h.record(Duration::from_millis(2)); // le 2 ms
        h.record(Duration::from_secs(3)); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.00005, 1));
        assert_eq!(s.buckets[1], (0.0001, 2));
        assert_eq!(s.buckets[5].1, 2, "le 1.5 ms");
        assert_eq!(s.buckets[6], (0.002, 3));
        assert_eq!(s.buckets.last().map(|b| b.1), Some(3));
        assert!((s.sum_seconds - 3.002_100_001).abs() < 1e-9);
    }

    #[test]
    fn function_counters_by_result() {
        let c = FunctionCounters::default();
        c.count(3, Answer::Data { len: 9 });
        c.count(3, Answer::Data { len: 9 });
        c.count(3, Answer::Exception { code: 2 });
        c.count(0x2B, Answer::Exception { code: 1 });
        c.count(4, Answer::SilentStale);
        assert_eq!(c.of(3), [2, 0, 1, 0, 0, 0, 0]);
        assert_eq!(c.of(4), [0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(c.seen(), vec![3, 4, 0x2B]);
    }
}
