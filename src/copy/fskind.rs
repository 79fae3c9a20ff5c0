//! What a destination filesystem is (statfs's f_type; for ext4, whether it has a journal), and
//! the group-commit batches it gets. Measured on this machine kind (issue 21, BENCHMARKS.md):
//! - ext4 without a journal: wide batches (16,384 files, 2 s) made no fewer syncfs calls than
//!   standard ones for 100,000 small files (30-45 against 33-42, 3 runs each): a batch closes
//!   when no file arrived for 10 ms, and files stop arriving once the batch holds the
//!   unnamed-temp budget, so the count is set by the flush's own duration. Auto keeps standard
//!   batches there until a change that measurably wins; `--commit-batch wide` forces them.
//! - Temp files stay unnamed (O_TMPFILE + linkat) everywhere: on XFS named temps (create +
//!   rename) were 25 % slower (8.2-8.4 s against 6.3-6.8 s for `small`), and per-file fsync 40x
//!   slower (347 s: one log force and one device flush per file).
//! - A new tree skips per-file temps altogether (`--temp tree`, copy/tree.rs): built under a
//!   hidden name and renamed once, it saves each file's linkat (or rename) and, on XFS, the
//!   O_TMPFILE's trip through the unlinked-inode list.
//!
//! The report lists each destination's kind and batches (`commit`).

use crate::spec::BatchMode;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A destination filesystem, as far as committing to it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Ext4 {
        journal: bool,
    },
    Xfs,
    Tmpfs,
    /// Anything else, by f_type.
    Other(i64),
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsKind::Ext4 { journal: true } => write!(f, "ext4"),
            FsKind::Ext4 { journal: false } => write!(f, "ext4 without a journal"),
            FsKind::Xfs => write!(f, "xfs"),
            FsKind::Tmpfs => write!(f, "tmpfs"),
            FsKind::Other(t) => write!(f, "f_type {t:#x}"),
        }
    }
}

/// The filesystem `fd` (any fd on it) is on; `dev` is its st_dev (for the ext4 journal check).
/// Unknown (statfs failed) reads as Other(0): the standard plan.
pub fn detect(fd: &OwnedFd, dev: u64) -> FsKind {
    // SAFETY: zeroed statfs is a valid out-buffer; fd is open.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut s) } != 0 {
        return FsKind::Other(0);
    }
    match s.f_type as i64 {
        EXT4_SUPER_MAGIC => FsKind::Ext4 {
            journal: ext4_has_journal(dev),
        },
        XFS_SUPER_MAGIC => FsKind::Xfs,
        TMPFS_MAGIC => FsKind::Tmpfs,
        t => FsKind::Other(t),
    }
}

/// Whether the ext4 on device `dev` has a journal: /sys/fs/ext4/<dev name>/journal_task names
/// the journal thread, or "<none>". Anything unreadable counts as a journal (standard plan).
fn ext4_has_journal(dev: u64) -> bool {
    let sys = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    let Some(name) = std::fs::canonicalize(sys)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_owned()))
    else {
        return true;
    };
    let task = std::path::Path::new("/sys/fs/ext4")
        .join(name)
        .join("journal_task");
    match std::fs::read_to_string(task) {
        Ok(s) => s.trim() != "<none>",
        Err(_) => true,
    }
}

/// When the committer closes a batch and starts its flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPlan {
    /// A batch closes at this many files...
    pub files: usize,
    /// ...or when its oldest file waited this long.
    pub age: Duration,
    /// A flush that ends starts the next at once (overlapping the naming of its batch) when
    /// at least this many files gathered meanwhile.
    pub overlap: usize,
}

/// Journaled filesystems, tmpfs, anything unknown.
pub const STANDARD: BatchPlan = BatchPlan {
    files: 4096,
    age: Duration::from_millis(500),
    overlap: 256,
};

/// Fewer, larger flushes (`--commit-batch wide`). 16,384 files is the unnamed-temp budget
/// (MAX_ANON_FDS): a batch never waits for slots it holds itself.
pub const WIDE: BatchPlan = BatchPlan {
    files: 16384,
    age: Duration::from_secs(2),
    overlap: 4096,
};

const _: () = assert!(WIDE.files <= super::fds::MAX_ANON_FDS);

/// The plan for a filesystem under `--commit-batch MODE`.
pub fn plan_for(kind: FsKind, mode: BatchMode) -> BatchPlan {
    match mode {
        BatchMode::Standard => STANDARD,
        BatchMode::Wide => WIDE,
        // Every kind measured so far does best (or no worse) with standard batches.
        BatchMode::Auto => match kind {
            FsKind::Ext4 { .. } | FsKind::Xfs | FsKind::Tmpfs | FsKind::Other(_) => STANDARD,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_keeps_standard_batches_and_overrides_win() {
        let nj = FsKind::Ext4 { journal: false };
        for k in [
            nj,
            FsKind::Ext4 { journal: true },
            FsKind::Xfs,
            FsKind::Tmpfs,
            FsKind::Other(0),
        ] {
            assert_eq!(plan_for(k, BatchMode::Auto), STANDARD, "{k}");
            assert_eq!(plan_for(k, BatchMode::Wide), WIDE, "{k}");
        }
        assert_eq!(plan_for(nj, BatchMode::Standard), STANDARD);
    }

    #[test]
    fn tmpfs_is_told_from_its_f_type() {
        let d = std::path::Path::new("/dev/shm");
        if !d.is_dir() {
            eprintln!("skipped: no /dev/shm");
            return;
        }
        let fd = OwnedFd::from(std::fs::File::open(d).unwrap());
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(d).unwrap().dev();
        assert_eq!(detect(&fd, dev), FsKind::Tmpfs);
    }
}
