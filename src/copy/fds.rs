//! The fds a copy job holds open, each kind within its budget: directory pairs for *at()
//! calls, suspended directory listings, unnamed temp files waiting for their commit; and one
//! fd per source or destination filesystem for syncfs.

use crate::error::Error;
use crate::meta;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Directories whose listing may be suspended (each holds an open fd) at once.
pub const MAX_DIR_CONTINUATIONS: usize = 64;

/// Directory pairs whose fds are kept open at once (2 fds each; never more than a quarter of
/// RLIMIT_NOFILE, see `dir_fd_cap`). Past this, files are opened by
/// their full paths (slower: every component is looked up again, 11.5 us/file more on ext4 in
/// `cargo bench --bench floor`, but correct).
pub const MAX_DIR_FD_PAIRS: usize = 2048;

/// The open source directory and destination directory (O_PATH) of a DirNode: its files are
/// opened, created and renamed relative to them, so no path is walked again per file.
pub struct DirFds {
    pub src: OwnedFd,
    pub dst: OwnedFd,
    budget: Arc<AtomicUsize>,
}

impl DirFds {
    /// Takes one pair from the job's budget and opens it with `open`; None when the budget is
    /// spent or `open` fails (the slot is given back), and the caller uses full paths.
    pub fn open_within(
        budget: &Arc<AtomicUsize>,
        cap: usize,
        open: impl FnOnce() -> Option<(OwnedFd, OwnedFd)>,
    ) -> Option<DirFds> {
        if budget.fetch_add(1, Ordering::AcqRel) >= cap {
            budget.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let Some((src, dst)) = open() else {
            budget.fetch_sub(1, Ordering::AcqRel);
            return None;
        };
        Some(DirFds {
            src,
            dst,
            budget: budget.clone(),
        })
    }
}

/// MAX_DIR_FD_PAIRS, or fewer where RLIMIT_NOFILE is low: the pairs may take a quarter of it
/// (files in flight, listings and the journal need the rest).
fn dir_fd_cap() -> usize {
    MAX_DIR_FD_PAIRS.min(nofile() / 8)
}

impl Drop for DirFds {
    fn drop(&mut self) {
        // The fds close with their OwnedFds: a read-only directory fd and an O_PATH fd hold no
        // data, so a close error cannot lose anything (nothing to report).
        self.budget.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Unnamed temp files (O_TMPFILE) held open at once, from creation until their batch is
/// durable and they are linked (one fd each; never more than half of RLIMIT_NOFILE, see
/// `anon_cap`: directory pairs take up to a quarter, files in flight the rest). When all are
/// held, a reactor puts new files back until the committer gives slots back (falling back to
/// named temp files instead left 75 % of `flat` on the slow path). Four batches of 4,096.
pub const MAX_ANON_FDS: usize = 16384;

/// One slot of the unnamed-temp budget, given back when dropped (with the file's fd).
pub struct AnonSlot(Arc<AtomicUsize>);

impl AnonSlot {
    pub fn take(budget: &Arc<AtomicUsize>, cap: usize) -> Option<AnonSlot> {
        if budget.fetch_add(1, Ordering::AcqRel) >= cap {
            budget.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(AnonSlot(budget.clone()))
    }
}

impl Drop for AnonSlot {
    fn drop(&mut self) {
        let prev = self.0.fetch_sub(1, Ordering::AcqRel);
        assert!(prev > 0, "unnamed-temp budget given back twice");
    }
}

/// MAX_ANON_FDS, or fewer where RLIMIT_NOFILE is low (half of it); 0 when an unnamed file
/// could not be linked: linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH (root has it), the
/// fallback needs /proc.
fn anon_cap(euid: u32) -> usize {
    if euid != 0 && !Path::new("/proc/self/fd").exists() {
        return 0;
    }
    MAX_ANON_FDS.min(nofile() / 2)
}

fn nofile() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    r.rlim_cur.min(usize::MAX as u64) as usize
}

pub struct Fds {
    /// Directory fd pairs open (DirFds), at most `dir_cap`.
    pub dir_pairs: Arc<AtomicUsize>,
    pub dir_cap: usize,
    /// Directory listings suspended between batches (each holds its fd), at most
    /// MAX_DIR_CONTINUATIONS.
    pub listings: AtomicUsize,
    /// Unnamed temp files open (AnonSlot), at most `anon_cap`.
    pub anon: Arc<AtomicUsize>,
    pub anon_cap: usize,
    /// Set when creating an unnamed temp file failed as unsupported: named ones from then on.
    pub anon_off: AtomicBool,
    /// Destination filesystems: one fd each, opened early, for syncfs.
    dst_fs: Mutex<HashMap<u64, (OwnedFd, PathBuf)>>,
    /// A destination filesystem got wide batches (fskind::plan_for).
    wide_batches: AtomicBool,
    /// Source filesystems of a move: one fd each, for syncfs after deleting sources.
    src_fs: Mutex<HashMap<u64, (OwnedFd, PathBuf)>>,
}

impl Fds {
    /// Budgets for a job run by `euid` under this process's RLIMIT_NOFILE.
    pub fn new(euid: u32) -> Self {
        Fds {
            dir_pairs: Arc::new(AtomicUsize::new(0)),
            dir_cap: dir_fd_cap(),
            listings: AtomicUsize::new(0),
            anon: Arc::new(AtomicUsize::new(0)),
            anon_cap: anon_cap(euid),
            anon_off: AtomicBool::new(false),
            dst_fs: Mutex::new(HashMap::new()),
            wide_batches: AtomicBool::new(false),
            src_fs: Mutex::new(HashMap::new()),
        }
    }

    /// A directory pair within the budget (see `DirFds::open_within`).
    pub fn dir_pair(&self, open: impl FnOnce() -> Option<(OwnedFd, OwnedFd)>) -> Option<DirFds> {
        DirFds::open_within(&self.dir_pairs, self.dir_cap, open)
    }

    /// A slot for one more suspended listing; false when all are taken.
    pub fn suspend_listing(&self) -> bool {
        let suspended = self.listings.fetch_add(1, Ordering::AcqRel);
        if suspended < MAX_DIR_CONTINUATIONS {
            return true;
        }
        self.listings.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// A suspended listing was taken up again.
    pub fn resume_listing(&self) {
        self.listings.fetch_sub(1, Ordering::AcqRel);
    }

    /// A slot for an unnamed temp file, when the budget has one.
    pub fn anon_slot(&self) -> Option<AnonSlot> {
        AnonSlot::take(&self.anon, self.anon_cap)
    }

    /// Whether a slot is free (another reactor may still take it first).
    pub fn anon_room(&self) -> bool {
        self.anon.load(Ordering::Acquire) < self.anon_cap
    }

    /// Remembers a destination filesystem (by a directory on it) for syncfs; the first time,
    /// `plan` says from its fd whether it gets wide batches and the line the report lists it
    /// with, which is returned.
    pub fn note_dst_fs(
        &self,
        dev: u64,
        dir: &Path,
        plan: impl FnOnce(&OwnedFd) -> (bool, String),
    ) -> Result<Option<String>, Error> {
        let mut g = self.dst_fs.lock().unwrap_or_else(|p| p.into_inner());
        let std::collections::hash_map::Entry::Vacant(v) = g.entry(dev) else {
            return Ok(None);
        };
        let fd = meta::open_dir(dir)?;
        let (wide, line) = plan(&fd);
        if wide {
            self.wide_batches.store(true, Ordering::Release);
        }
        v.insert((fd, dir.to_path_buf()));
        Ok(Some(line))
    }

    /// Whether any destination filesystem asked for wide batches (one committer serves them
    /// all).
    pub fn wide_batches(&self) -> bool {
        self.wide_batches.load(Ordering::Acquire)
    }

    /// syncfs on a source filesystem (`dir` is any directory on it, kept open for next time).
    pub fn sync_src(&self, dev: u64, dir: &Path) -> Result<(), Error> {
        let mut g = self.src_fs.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Vacant(v) = g.entry(dev) {
            v.insert((meta::open_dir(dir)?, dir.to_path_buf()));
        }
        let (fd, path) = g.get(&dev).expect("inserted above");
        meta::syncfs(fd, path)
    }

    /// syncfs on the given destination filesystems (all when `devs` is None).
    pub fn sync_dst(&self, devs: Option<&[u64]>) -> Result<(), Error> {
        let g = self.dst_fs.lock().unwrap_or_else(|p| p.into_inner());
        for (dev, (fd, path)) in g.iter() {
            if devs.is_none_or(|d| d.contains(dev)) {
                meta::syncfs(fd, path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_fd_budget_is_bounded_and_returned_on_drop() {
        let budget = Arc::new(AtomicUsize::new(0));
        let pair = || {
            let open = || OwnedFd::from(std::fs::File::open("/").unwrap());
            Some((open(), open()))
        };
        let mut held: Vec<DirFds> = (0..MAX_DIR_FD_PAIRS)
            .map(|_| DirFds::open_within(&budget, MAX_DIR_FD_PAIRS, pair).expect("in budget"))
            .collect();
        assert!(
            DirFds::open_within(&budget, MAX_DIR_FD_PAIRS, pair).is_none(),
            "budget spent"
        );
        assert_eq!(budget.load(Ordering::Acquire), MAX_DIR_FD_PAIRS);
        held.pop();
        assert!(
            DirFds::open_within(&budget, MAX_DIR_FD_PAIRS, || None).is_none(),
            "failed open"
        );
        let again = DirFds::open_within(&budget, MAX_DIR_FD_PAIRS, pair)
            .expect("a dropped pair frees its slot");
        drop(again);
        held.clear();
        assert_eq!(budget.load(Ordering::Acquire), 0, "every slot given back");
    }
}
