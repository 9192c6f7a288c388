//! Latency percentiles (hdrhistogram) and small timing helpers.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies in nanoseconds, 1 µs to 10 min, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1_000, 600_000_000_000, 3)
                .expect("constant bounds are valid"),
        }
    }

    pub fn record(&mut self, d: Duration) {
        self.hist
            .saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn record_ms(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.hist.saturating_record((ms * 1e6) as u64);
        }
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.hist.add(&other.hist);
    }

    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The `q` quantile (0.5 = median) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e6
    }
}
