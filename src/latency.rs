//! Latency histograms (hdrhistogram, microseconds) per operation kind and per file. Each
//! reactor and the committer record into their own and merge once at the end: no sharing on
//! the hot path.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies above this (an hour) are clamped; 3 significant digits.
const MAX_US: u64 = 3_600_000_000;

pub struct Latencies {
    /// Opening the source and creating the temp file (synchronous syscalls).
    pub open: Histogram<u64>,
    pub read: Histogram<u64>,
    pub write: Histogram<u64>,
    pub fsync: Histogram<u64>,
    /// From opening the source to the durable final name.
    pub file: Histogram<u64>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds are valid")
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            open: hist(),
            read: hist(),
            write: hist(),
            fsync: hist(),
            file: hist(),
        }
    }
}

pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_US));
}

impl Latencies {
    pub fn reset(&mut self) {
        self.open.reset();
        self.read.reset();
        self.write.reset();
        self.fsync.reset();
        self.file.reset();
    }

    pub fn merge(&mut self, o: &Latencies) {
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.open.add(&o.open);
        let _ = self.read.add(&o.read);
        let _ = self.write.add(&o.write);
        let _ = self.fsync.add(&o.fsync);
        let _ = self.file.add(&o.file);
    }

    pub fn summary(&self) -> LatencyReport {
        LatencyReport {
            open: Quantiles::of(&self.open),
            read: Quantiles::of(&self.read),
            write: Quantiles::of(&self.write),
            fsync: Quantiles::of(&self.fsync),
            file: Quantiles::of(&self.file),
        }
    }
}

/// Microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Quantiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyReport {
    pub open: Quantiles,
    pub read: Quantiles,
    pub write: Quantiles,
    pub fsync: Quantiles,
    pub file: Quantiles,
}

/// Latencies of requests served by many threads, taken a window at a time (the S3
/// endpoint's client requests, for the rebalance's pace). A mutex: one record per request.
pub struct Window(std::sync::Mutex<Histogram<u64>>);

impl Default for Window {
    fn default() -> Self {
        Window(std::sync::Mutex::new(hist()))
    }
}

impl Window {
    pub fn record(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(MAX_US);
        record(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()), us);
    }

    /// The window since the last take (and a new one begins).
    pub fn take(&self) -> Quantiles {
        Quantiles::of(&self.take_histogram())
    }

    /// The same, as the histogram (to merge windows into a longer one).
    pub fn take_histogram(&self) -> Histogram<u64> {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *h, hist())
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_window_gives_its_p99_and_starts_over() {
        let w = Window::default();
        for _ in 0..99 {
            w.record(Duration::from_millis(1));
        }
        w.record(Duration::from_millis(80));
        w.record(Duration::from_millis(90));
        let q = w.take();
        assert_eq!(q.count, 101);
        assert!((79_000..=81_000).contains(&q.p99), "p99 {}", q.p99);
        assert_eq!(w.take().count, 0, "the next window is empty");
    }
}
