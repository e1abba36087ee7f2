//! Latency histograms ([`LatencyHist`], nanoseconds) and their summary in microseconds
//! ([`Percentiles`]). Pure: no I/O, no clock.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram in nanoseconds (1 ns .. 1 h, 3 significant digits).
#[derive(Debug, Clone)]
pub struct LatencyHist(Histogram<u64>);

impl Default for LatencyHist {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHist {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts.
        LatencyHist(
            Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds"),
        )
    }

    /// Record one latency (saturating at the upper bound).
    #[inline]
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(ns);
    }

    /// Add another histogram's samples.
    pub fn add(&mut self, other: &LatencyHist) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Percentiles in microseconds.
    pub fn summary(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Percentiles {
            n: self.0.len(),
            min_us: us(self.0.min()),
            p50_us: us(self.0.value_at_quantile(0.50)),
            p90_us: us(self.0.value_at_quantile(0.90)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p99_9_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
            mean_us: (self.0.mean() / 100.0).round() / 10.0,
        }
    }
}

/// Latency distribution in microseconds (0.1 µs resolution; values are hdrhistogram
/// bucket values, i.e. exact to 3 significant digits). All zero when `n` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub n: u64,
    /// Smallest sample.
    pub min_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p99_9_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Percentiles {
    /// `p50/p90/p99/p99.9/max` in µs, or `-` without samples.
    pub fn compact(&self) -> String {
        if self.n == 0 {
            return "-".to_string();
        }
        format!(
            "{}/{}/{}/{}/{}",
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p99_9_us),
            fmt_us(self.max_us)
        )
    }
}

/// Microseconds for a table: one decimal below 100 µs, whole numbers above.
pub fn fmt_us(us: f64) -> String {
    if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}
