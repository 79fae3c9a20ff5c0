//! Lock-free token buckets for bytes/s and file operations/s, shared by all reactors and
//! changeable while the job runs.
//!
//! A taker may go into debt (take more than is there while the balance is positive), so a
//! chunk larger than the burst still passes and the long-run rate is exact: the debt is
//! repaid by the following refills.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

pub struct TokenBucket {
    /// Units per second; 0 = unlimited.
    rate: AtomicU64,
    burst: AtomicU64,
    tokens: AtomicI64,
    /// Nanoseconds since `epoch` up to which refills have been credited.
    credited: AtomicU64,
    epoch: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, burst: u64) -> Self {
        TokenBucket {
            rate: AtomicU64::new(rate),
            burst: AtomicU64::new(burst.max(1)),
            tokens: AtomicI64::new(burst.max(1).min(i64::MAX as u64) as i64),
            credited: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(0, 1)
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// New limit, effective for the next take. The balance is capped at the new burst.
    pub fn set(&self, rate: u64, burst: u64) {
        self.refill();
        self.rate.store(rate, Ordering::Release);
        self.burst.store(burst.max(1), Ordering::Release);
        let cap = burst.max(1).min(i64::MAX as u64) as i64;
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.min(cap)));
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Credits whole tokens for the time since the last credit. Only the time those tokens
    /// "bought" is marked credited, so slow rates (a few ops/s) accumulate correctly.
    fn refill(&self) {
        let rate = self.rate.load(Ordering::Acquire);
        let now = self.now_ns();
        let last = self.credited.load(Ordering::Acquire);
        if rate == 0 {
            let _ = self
                .credited
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed);
            return;
        }
        if now <= last {
            return;
        }
        let add = (now - last) as u128 * rate as u128 / 1_000_000_000;
        if add == 0 {
            return;
        }
        let bought = (add * 1_000_000_000 / rate as u128) as u64;
        if self
            .credited
            .compare_exchange(last, last + bought, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread credited this interval
        }
        self.credit(add.min(u64::MAX as u128) as u64);
    }

    /// Adds `n` tokens, never above the burst.
    fn credit(&self, n: u64) {
        let cap = self.burst.load(Ordering::Acquire).min(i64::MAX as u64) as i64;
        let n = n.min(i64::MAX as u64) as i64;
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(n).min(cap))
            });
    }

    /// Returns units taken for work that did not happen.
    pub fn refund(&self, n: u64) {
        if self.rate.load(Ordering::Acquire) != 0 {
            self.credit(n);
        }
    }

    /// The largest chunk to take at once, at most `buf`: under a limit, no more than the
    /// burst (in whole GRAINs, at least one), so a tiny rate is not overrun by one big chunk.
    pub fn chunk(&self, buf: u64) -> u64 {
        if self.rate.load(Ordering::Acquire) == 0 {
            return buf;
        }
        let burst = self.burst.load(Ordering::Acquire);
        (burst / GRAIN * GRAIN)
            .clamp(GRAIN, buf.max(GRAIN))
            .min(buf)
    }

    /// Takes `n` units if the balance is positive (possibly going into debt). False: wait.
    pub fn try_take(&self, n: u64) -> bool {
        if self.rate.load(Ordering::Acquire) == 0 {
            return true;
        }
        self.refill();
        let n = n.min(i64::MAX as u64) as i64;
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t > 0).then(|| t.saturating_sub(n))
            })
            .is_ok()
    }
}

/// Burst: a tenth of a second of the rate (at least one unit). Not a chunk: a burst of one
/// 512 KiB buffer let `--bwlimit 1` copy 300 KB in 0.2 s.
pub fn burst_for(rate: u64) -> u64 {
    (rate / 10).max(1)
}

/// The smallest chunk a limited byte rate cuts reads to (the O_DIRECT alignment).
pub const GRAIN: u64 = 4096;

/// The job's two buckets: bytes/s and file operations/s (0 = unlimited).
pub fn buckets(bwlimit: u64, ops_limit: u64) -> (TokenBucket, TokenBucket) {
    (
        TokenBucket::new(bwlimit, burst_for(bwlimit)),
        TokenBucket::new(ops_limit, burst_for(ops_limit)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Takes as fast as allowed for `secs` from `threads` threads; returns units per second.
    fn achieved(b: &Arc<TokenBucket>, threads: usize, chunk: u64, secs: f64) -> f64 {
        let start = Instant::now();
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut got = 0u64;
                    while start.elapsed().as_secs_f64() < secs {
                        if b.try_take(chunk) {
                            got += chunk;
                        } else {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                    got
                })
            })
            .collect();
        let total: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        total as f64 / secs
    }

    #[test]
    fn bytes_rate_holds_within_five_percent() {
        let rate = 64u64 << 20;
        let b = Arc::new(TokenBucket::new(rate, 1 << 20));
        let got = achieved(&b, 2, 512 << 10, 2.0);
        let err = (got - rate as f64).abs() / rate as f64;
        assert!(err < 0.05, "achieved {got:.0} B/s for a {rate} B/s limit");
    }

    #[test]
    fn slow_op_rates_accumulate_fractions() {
        let b = Arc::new(TokenBucket::new(50, 1));
        let got = achieved(&b, 1, 1, 2.0);
        assert!((got - 50.0).abs() <= 5.0, "achieved {got} ops/s for 50");
    }

    #[test]
    fn a_tiny_rate_has_a_tiny_burst() {
        let (b, _) = buckets(1000, 0);
        let b = Arc::new(b);
        let chunk = b.chunk(512 << 10);
        assert_eq!(chunk, GRAIN, "chunks shrink to the rate");
        let got = achieved(&b, 1, chunk, 0.5) * 0.5;
        assert!(got <= 8192.0, "{got} bytes in 0.5 s at 1000 B/s");
        let (fast, _) = buckets(200 << 20, 0);
        assert_eq!(
            fast.chunk(512 << 10),
            512 << 10,
            "fast rates keep whole buffers"
        );
        let (none, _) = buckets(0, 0);
        assert_eq!(none.chunk(512 << 10), 512 << 10);
        assert_eq!(b.chunk(100), 100, "never more than the buffer");
    }

    #[test]
    fn rate_changes_apply_at_once() {
        let b = Arc::new(TokenBucket::new(1 << 20, 64 << 10));
        let _ = achieved(&b, 1, 4096, 0.3);
        b.set(8 << 20, 64 << 10);
        let got = achieved(&b, 1, 4096, 1.0);
        let err = (got - (8u64 << 20) as f64).abs() / (8u64 << 20) as f64;
        assert!(err < 0.05, "after the change: {got:.0} B/s");
        b.set(0, 1);
        assert!((0..10_000).all(|_| b.try_take(1 << 20)), "0 = unlimited");
    }
}
