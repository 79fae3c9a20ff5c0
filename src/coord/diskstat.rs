//! The disks' own completion latency, from the kernel's block statistics
//! (`/sys/dev/block/MAJ:MIN/stat`): the average time a completed request took over a window,
//! for the devices under a set of paths (the rebalance's pace yields to it).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Completed requests and the milliseconds they took (reads + writes + discards + flushes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub ios: u64,
    pub ms: u64,
}

/// Parses a block `stat` line (Documentation/block/stat.rst): fields 1/4 reads, 5/8 writes,
/// 12/15 discards, 16/17 flushes (the later ones only on newer kernels).
pub fn parse(line: &str) -> Option<Counts> {
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    if f.len() < 11 {
        return None;
    }
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(Counts {
        ios: at(0) + at(4) + at(11) + at(15),
        ms: at(3) + at(7) + at(14) + at(16),
    })
}

/// The devices holding `paths` (deduplicated; those without block statistics, such as tmpfs,
/// are left out).
pub fn devices(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| {
            let d = m.dev();
            PathBuf::from(format!(
                "/sys/dev/block/{}:{}/stat",
                libc::major(d),
                libc::minor(d)
            ))
        })
        .filter(|s| s.exists())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Counts summed over `stats` files (None when none can be read).
pub fn read(stats: &[PathBuf]) -> Option<Counts> {
    let mut sum = None::<Counts>;
    for p in stats {
        let Some(c) = std::fs::read_to_string(p).ok().and_then(|s| parse(&s)) else {
            continue;
        };
        let s = sum.get_or_insert_default();
        s.ios += c.ios;
        s.ms += c.ms;
    }
    sum
}

/// The average completion latency (µs) between two readings (None: nothing completed).
pub fn await_us(before: Counts, after: Counts) -> Option<u64> {
    let ios = after.ios.checked_sub(before.ios)?;
    let ms = after.ms.checked_sub(before.ms)?;
    (ios > 0).then(|| ms * 1000 / ios)
}

/// Reads the devices under some paths, a window at a time.
pub struct Disks {
    stats: Vec<PathBuf>,
    last: Option<Counts>,
}

impl Disks {
    pub fn new(paths: &[PathBuf]) -> Disks {
        let stats = devices(paths);
        let last = read(&stats);
        Disks { stats, last }
    }

    pub fn watched(&self) -> &[PathBuf] {
        &self.stats
    }

    /// The average completion latency since the last call.
    pub fn window(&mut self) -> Option<u64> {
        let now = read(&self.stats)?;
        let prev = self.last.replace(now)?;
        await_us(prev, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_of_old_and_new_kernels_parse() {
        let old = "  100 0 800 50   300 0 2400 250   0 40 300";
        assert_eq!(parse(old), Some(Counts { ios: 400, ms: 300 }));
        let new = "100 0 800 50 300 0 2400 250 2 40 300 10 0 80 5 20 15";
        assert_eq!(parse(new), Some(Counts { ios: 430, ms: 320 }));
        assert_eq!(parse("1 2 3"), None);
        assert_eq!(parse("a b c d e f g h i j k"), None);
    }

    #[test]
    fn the_average_is_over_the_window_only() {
        let a = Counts {
            ios: 1000,
            ms: 2000,
        };
        let b = Counts {
            ios: 1100,
            ms: 4000,
        };
        assert_eq!(await_us(a, b), Some(20_000), "2000 ms over 100 requests");
        assert_eq!(await_us(b, b), None, "nothing completed");
        assert_eq!(await_us(b, a), None, "counters reset: no reading");
    }

    #[test]
    fn the_root_filesystem_device_is_found_when_it_has_statistics() {
        // Only checks the lookup is consistent: containers may have no block device.
        let d = devices(&[PathBuf::from("/"), PathBuf::from("/")]);
        assert!(d.len() <= 1, "deduplicated: {d:?}");
        if let Some(s) = d.first() {
            assert!(read(&d).is_some(), "{} reads", s.display());
        }
    }
}
