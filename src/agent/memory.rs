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

    /// How many of `pages` (page addresses) are resident now; one unmapped counts as not.
    /// Allocates nothing: an allocation could reuse the very chunks being looked at.
    fn resident(pages: &[usize]) -> usize {
        let mut n = 0;
        for &p in pages {
            let mut v = 0u8;
            // SAFETY: mincore only reads the page tables of one page and writes one byte.
            let r = unsafe { libc::mincore(p as *mut libc::c_void, page(), &mut v) };
            n += usize::from(r == 0 && v & 1 != 0);
        }
        n
    }

    fn page() -> usize {
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
    }

    /// The pages `[p, p + len)` touches.
    fn pages_of(p: usize, len: usize) -> impl Iterator<Item = usize> {
        (p / page() * page()..=(p + len - 1) / page() * page()).step_by(page())
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn free_chunks_below_a_live_one_are_handed_back() {
        // 64 MiB in 4 KiB blocks (below the mmap threshold: inside a heap), touched, then
        // all freed but the last, which holds the heap's top: free() gives none of it back.
        // Their pages are looked at with mincore, not the process's RssAnon: tests in other
        // threads allocate and free meanwhile.
        let (n, size) = (16 * 1024, 4096);
        let mut blocks: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8 | 1; size]).collect();
        let last = blocks.pop().expect("n > 0");
        // the pages the freed blocks touch, less the live one's (listed before the frees)
        let mine: Vec<usize> = pages_of(last.as_ptr() as usize, size).collect();
        let mut pages: Vec<usize> = blocks
            .iter()
            .flat_map(|b| pages_of(b.as_ptr() as usize, size))
            .filter(|p| !mine.contains(p))
            .collect();
        pages.sort_unstable();
        pages.dedup();
        drop(blocks);
        let before = resident(&pages);
        assert!(release(), "there were free pages to hand back");
        let after = resident(&pages);
        assert_eq!(
            last[size - 1],
            (n - 1) as u8 | 1,
            "the live block is intact"
        );
        drop(last);
        // other threads' chunks may share a page with the blocks and stay resident
        assert!(
            before >= n / 2,
            "{before} of {} pages resident before the trim",
            pages.len()
        );
        assert!(
            after * 4 <= before,
            "{before} -> {after} resident pages of the freed blocks after malloc_trim"
        );
    }
}
