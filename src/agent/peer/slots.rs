//! A counting limit that waits: at most `n` holders at once; a taker waits for a slot up to
//! a deadline (the peer server's migrations, `server::Limits::migrations`).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Slots {
    max: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// A slot, given back when dropped.
pub struct Slot<'a>(&'a Slots);

impl Slots {
    pub fn new(max: usize) -> Slots {
        assert!(max > 0, "a limit of no slots would refuse everything");
        Slots {
            max,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// A slot, once one is free within `wait` (None: none was).
    pub fn take(&self, wait: Duration) -> Option<Slot<'_>> {
        let deadline = Instant::now() + wait;
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= self.max {
            let left = deadline.checked_duration_since(Instant::now())?;
            used = self
                .freed
                .wait_timeout(used, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += 1;
        Some(Slot(self))
    }

    /// Slots held now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut used = self.0.used.lock().unwrap_or_else(|p| p.into_inner());
        assert!(*used > 0, "a slot given back twice");
        *used -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn never_more_than_max_holders_and_a_full_limit_times_out() {
        let s = Arc::new(Slots::new(3));
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let (s, now, peak) = (s.clone(), now.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _g = s.take(Duration::from_secs(10)).expect("a slot within 10 s");
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "the limit was reached, never passed"
        );
        assert_eq!(s.used(), 0);
        let held: Vec<_> = (0..3).map(|_| s.take(Duration::ZERO).unwrap()).collect();
        let t = Instant::now();
        assert!(
            s.take(Duration::from_millis(50)).is_none(),
            "a full limit gives none"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "it waited for one"
        );
        drop(held);
        assert!(
            s.take(Duration::ZERO).is_some(),
            "slots given back are taken again"
        );
    }
}
