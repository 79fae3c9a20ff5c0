//! Units of work and the shared state of one copy job.

use crate::error::Error;
use crate::meta;
use crate::queue::TaskQueues;
use crate::spec::CopySpec;
use crate::stats::Stats;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Retries of a file whose source changed while it was copied.
pub const MAX_ATTEMPTS: u32 = 3;
/// Directory entries listed per step; the rest waits as a continuation so other work interleaves.
pub const DIR_BATCH: usize = 1024;
/// Directories whose listing may be suspended (each holds an open fd) at once.
pub const MAX_DIR_CONTINUATIONS: usize = 64;

pub enum Task {
    /// A directory to create and list.
    Dir {
        src: PathBuf,
        dst: PathBuf,
        parent: Option<Arc<DirNode>>,
    },
    /// The rest of a long directory listing.
    DirMore {
        iter: std::fs::ReadDir,
        src: PathBuf,
        node: Arc<DirNode>,
    },
    File {
        src: PathBuf,
        dst: PathBuf,
        parent: Option<Arc<DirNode>>,
        attempt: u32,
    },
    /// A byte range of a big file that any reactor may copy.
    Segment {
        job: Arc<FileJob>,
        start: u64,
        end: u64,
    },
}

/// A destination directory whose mode and times are applied once all its children are done
/// (bottom-up, so writing the children does not disturb its mtime, and a 0555 source directory
/// is filled before it becomes read-only).
pub struct DirNode {
    pub dst: PathBuf,
    /// Filesystem of the destination directory (its files' syncfs target).
    pub dst_dev: u64,
    pub st: libc::stat,
    /// 1 for the unfinished listing + children not yet finished.
    pub pending: AtomicUsize,
    pub parent: Option<Arc<DirNode>>,
}

// SAFETY: libc::stat is plain old data.
unsafe impl Send for DirNode {}
unsafe impl Sync for DirNode {}

impl DirNode {
    pub fn add_child(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }
}

/// One child of `parent` is finished; applies metadata up the tree as directories complete.
pub fn child_done(parent: &Option<Arc<DirNode>>, stats: &Stats) {
    let mut cur = parent.clone();
    while let Some(node) = cur {
        let prev = node.pending.fetch_sub(1, Ordering::AcqRel);
        assert!(prev > 0, "directory finished twice");
        if prev != 1 {
            return;
        }
        if let Err(e) = meta::apply_path_meta(&node.dst, &node.st) {
            stats.error(e);
        }
        cur = node.parent.clone();
    }
}

/// A file being copied: its fds, what its source looked like when opened, and how many of its
/// segments are still running (on any reactor).
pub struct FileJob {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub tmp: PathBuf,
    pub src_fd: OwnedFd,
    pub dst_raw: RawFd,
    dst_fd: Mutex<Option<OwnedFd>>,
    pub st: libc::stat,
    pub parent: Option<Arc<DirNode>>,
    pub attempt: u32,
    /// Destination filesystem (for the batch's syncfs).
    pub dst_dev: u64,
    pub segments_left: AtomicUsize,
    /// The source returned EOF before its size: it shrank.
    pub changed: AtomicBool,
    /// Set with the first error, so the hot path checks an atomic, not the mutex.
    failed_flag: AtomicBool,
    failed: Mutex<Option<Error>>,
}

// SAFETY: libc::stat is plain old data; the rest is Sync.
unsafe impl Send for FileJob {}
unsafe impl Sync for FileJob {}

impl FileJob {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        src: PathBuf,
        dst: PathBuf,
        tmp: PathBuf,
        src_fd: OwnedFd,
        dst_fd: OwnedFd,
        st: libc::stat,
        parent: Option<Arc<DirNode>>,
        attempt: u32,
        dst_dev: u64,
        segments: usize,
    ) -> Self {
        FileJob {
            src,
            dst,
            tmp,
            dst_raw: dst_fd.as_raw_fd(),
            src_fd,
            dst_fd: Mutex::new(Some(dst_fd)),
            st,
            parent,
            attempt,
            dst_dev,
            segments_left: AtomicUsize::new(segments),
            changed: AtomicBool::new(false),
            failed_flag: AtomicBool::new(false),
            failed: Mutex::new(None),
        }
    }

    pub fn src_raw(&self) -> RawFd {
        self.src_fd.as_raw_fd()
    }

    /// Keeps the first failure; later segments see `is_failed` and stop issuing reads.
    pub fn fail(&self, e: Error) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.failed_flag.store(true, Ordering::Release);
    }

    /// Failed, or the source shrank: stop issuing reads for it.
    pub fn is_failed(&self) -> bool {
        self.changed.load(Ordering::Acquire) || self.failed_flag.load(Ordering::Acquire)
    }

    pub fn take_error(&self) -> Option<Error> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The destination fd, taken once by whoever closes it.
    pub fn take_dst_fd(&self) -> Option<OwnedFd> {
        self.dst_fd.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// A segment finished; true for the caller that finished the last one.
    pub fn segment_done(&self) -> bool {
        let prev = self.segments_left.fetch_sub(1, Ordering::AcqRel);
        assert!(prev > 0, "segment finished twice");
        prev == 1
    }
}

/// A finished temp file handed to the committer (batch mode).
pub struct Finished {
    pub tmp: PathBuf,
    pub dst: PathBuf,
    pub dev: u64,
    pub bytes: u64,
    pub parent: Option<Arc<DirNode>>,
}

/// Everything the reactors and committer share for one job.
pub struct Ctx {
    pub spec: CopySpec,
    pub queues: TaskQueues<Task>,
    pub stats: Stats,
    pub dir_continuations: AtomicUsize,
    /// Set on a fatal reactor error (or a reactor panic): everyone drains and stops.
    pub abort: AtomicBool,
    /// Source device -> reactor that owns it.
    owners: Mutex<(HashMap<u64, usize>, usize)>,
    /// Destination filesystems: one fd each, opened early, for syncfs.
    dst_fs: Mutex<HashMap<u64, (OwnedFd, PathBuf)>>,
}

impl Ctx {
    pub fn new(spec: CopySpec, reactors: usize) -> Self {
        Ctx {
            spec,
            queues: TaskQueues::new(reactors, 4 * DIR_BATCH),
            stats: Stats::default(),
            dir_continuations: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            owners: Mutex::new((HashMap::new(), 0)),
            dst_fs: Mutex::new(HashMap::new()),
        }
    }

    /// Round-robin assignment of source devices to reactors, fixed for the job.
    pub fn owner_of(&self, dev: u64) -> usize {
        let mut g = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.queues.reactors();
        let (map, next) = &mut *g;
        *map.entry(dev).or_insert_with(|| {
            let o = *next % n;
            *next += 1;
            o
        })
    }

    /// Remembers a destination filesystem (by a directory on it) for syncfs.
    pub fn note_dst_fs(&self, dev: u64, dir: &Path) -> Result<(), Error> {
        let mut g = self.dst_fs.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Vacant(v) = g.entry(dev) {
            v.insert((meta::open_dir(dir)?, dir.to_path_buf()));
        }
        Ok(())
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
