//! Gives the allocator's free memory back to the system now and then. glibc keeps what the
//! agent's threads freed inside its heaps (one per thread that allocated, up to 8 per core):
//! free chunks between live ones are never returned by `free`, only the top of a heap past
//! its trim threshold is. A rebalance frees as much as it allocates (a peer connection and
//! its thread per stream, buffers per object, the registry's write buffer), so over a long
//! job those heaps hold resident pages no live data uses, more the more objects move.
//! `malloc_trim(0)` hands every such page of every heap back (madvise); the agent calls it
//! at most once per `TRIM_EVERY`, from its control loop.

use std::time::{Duration, Instant};

/// Least time between two trims (a trim walks every heap's free chunks under its lock).
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// When the next trim is due.
#[derive(Debug)]
pub struct Trimmer {
    every: Duration,
    last: Option<Instant>,
}

impl Trimmer {
    /// At most one trim per `every` (`TRIM_EVERY` at least: a shorter one is raised to it).
    pub fn new(every: Duration) -> Trimmer {
        Trimmer {
            every: every.max(TRIM_EVERY),
            last: None,
        }
    }

    /// True (and the next one `every` later) when a trim is due at `now`; the first call
    /// waits one interval, so a short-lived agent never trims.
    pub fn due(&mut self, now: Instant) -> bool {
        match self.last {
            None => {
                self.last = Some(now);
                false
            }
            Some(t) if now.duration_since(t) >= self.every => {
                self.last = Some(now);
                true
            }
            Some(_) => false,
        }
    }

    /// Trims if due; whether memory was handed back.
    pub fn tick(&mut self, now: Instant) -> bool {
        self.due(now) && release()
    }
}

/// Hands the allocator's free pages back to the system; whether any went (false where the
/// allocator is not glibc's).
pub fn release() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own state, under its locks.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_is_due_once_per_interval_and_never_at_the_first_look() {
        let t0 = Instant::now();
        let mut t = Trimmer::new(Duration::from_secs(10));
        assert!(!t.due(t0), "the first look only starts the clock");
        assert!(!t.due(t0 + Duration::from_secs(9)));
        assert!(t.due(t0 + Duration::from_secs(10)));
        assert!(!t.due(t0 + Duration::from_secs(11)), "once per interval");
        assert!(!t.due(t0 + Duration::from_secs(19)));
        assert!(t.due(t0 + Duration::from_secs(20)));
    }

    #[test]
    fn the_interval_is_never_shorter_than_trim_every() {
        let t0 = Instant::now();
        let mut t = Trimmer::new(Duration::from_millis(1));
        assert!(!t.due(t0));
        assert!(!t.due(t0 + TRIM_EVERY - Duration::from_millis(1)));
        assert!(t.due(t0 + TRIM_EVERY));
    }

    fn rss_anon_kb() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").expect("proc status");
        s.lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("RssAnon")
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn free_chunks_below_a_live_one_are_handed_back() {
        // 64 MiB in 4 KiB blocks (below the mmap threshold: inside a heap), touched, then
        // all freed but the last, which holds the heap's top: free() gives none of it back.
        let (n, size) = (16 * 1024, 4096);
        let mut blocks: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8 | 1; size]).collect();
        let last = blocks.pop().expect("n > 0");
        drop(blocks);
        let before = rss_anon_kb();
        assert!(release(), "there were free pages to hand back");
        let after = rss_anon_kb();
        assert_eq!(
            last[size - 1],
            (n - 1) as u8 | 1,
            "the live block is intact"
        );
        drop(last);
        // tests run beside this one in other threads: ask for half of the 64 MiB
        assert!(
            before.saturating_sub(after) >= 32 * 1024,
            "RssAnon {before} kB -> {after} kB after malloc_trim"
        );
    }
}
