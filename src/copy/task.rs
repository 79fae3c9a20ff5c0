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

/// Attempts per file: the first plus 3 retries (a source that changed while it was copied, or
/// a transient error).
pub const MAX_ATTEMPTS: u32 = 4;
/// Tasks a reactor's own queue holds before new ones overflow to the shared queue.
pub const LOCAL_QUEUE: usize = 8192;
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
        stream: crate::dirents::DirStream,
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

impl Task {
    /// A file to copy (again): the one way a file task is built for a requeue or a retry.
    pub fn file(src: &Path, dst: &Path, parent: &Option<Arc<DirNode>>, attempt: u32) -> Task {
        Task::new_file(
            src.to_path_buf(),
            dst.to_path_buf(),
            parent.clone(),
            attempt,
        )
    }

    /// The same from owned parts: the one constructor of a file task (first try or requeue).
    pub fn new_file(
        src: PathBuf,
        dst: PathBuf,
        parent: Option<Arc<DirNode>>,
        attempt: u32,
    ) -> Task {
        Task::File {
            src,
            dst,
            parent,
            attempt,
        }
    }
}

/// The journal record of a source as it was copied: `size` bytes (the stat size, but what was
/// read for a pseudo file whose stat says 0), and the hash of its copy, if streamed.
pub fn done_record(
    st: &libc::stat,
    size: u64,
    hash: Option<u64>,
) -> crate::coord::checkpoint::Done {
    crate::coord::checkpoint::Done {
        size,
        mtime: (st.st_mtime, st.st_mtime_nsec),
        hash,
    }
}

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

/// A destination directory whose mode and times are applied once all its children are done
/// (bottom-up, so writing the children does not disturb its mtime, and a 0555 source directory
/// is filled before it becomes read-only).
pub struct DirNode {
    pub src: PathBuf,
    pub dst: PathBuf,
    /// Path below the source root (empty for the root): what filters match.
    pub rel: PathBuf,
    /// Filesystem of the destination directory (its files' syncfs target).
    pub dst_dev: u64,
    /// The group a file created in the destination directory gets (its gid if the directory
    /// is setgid, else ours).
    pub new_gid: u32,
    pub st: libc::stat,
    /// 1 for the unfinished listing + children not yet finished.
    pub pending: AtomicUsize,
    pub parent: Option<Arc<DirNode>>,
    /// Fds for *at() calls of the children, opened when the listing meets the first file
    /// (None past the budget; never set in a dry run).
    pub fds: std::sync::OnceLock<Option<DirFds>>,
    /// The destination directory was made by this job: no earlier run left temp files in it.
    pub made: bool,
    /// Its root, and the other roots whose trees meet it (overlapping targets).
    pub place: super::overlap::Place,
}

// SAFETY: libc::stat is plain old data.
unsafe impl Send for DirNode {}
unsafe impl Sync for DirNode {}

impl DirNode {
    /// The directory fds for *at() calls on a child: (source dir, destination dir), when this
    /// node has them and `dst` (and `src`, when given) are its direct children.
    pub fn child_fds(&self, src: Option<&Path>, dst: &Path) -> Option<(RawFd, RawFd)> {
        let child = |f: &Path, d: &Path| f.parent().is_some_and(|q| q.as_os_str() == d.as_os_str());
        let fds = self.fds.get()?.as_ref()?;
        (child(dst, &self.dst) && src.is_none_or(|s| child(s, &self.src)))
            .then(|| (fds.src.as_raw_fd(), fds.dst.as_raw_fd()))
    }

    pub fn add_child(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }
}

/// One child of `parent` is finished; applies metadata up the tree as directories complete.
pub fn child_done(parent: &Option<Arc<DirNode>>, ctx: &Ctx) {
    let mut cur = parent.clone();
    while let Some(node) = cur {
        let prev = node.pending.fetch_sub(1, Ordering::AcqRel);
        assert!(prev > 0, "directory finished twice");
        if prev != 1 {
            return;
        }
        if ctx.spec.dry_run {
            cur = node.parent.clone();
            continue;
        }
        use super::overlap::MetaFrom;
        let applied = match ctx.overlaps.meta_for(&node.place, &node.dst) {
            MetaFrom::Own => Some((node.src.clone(), node.st)),
            MetaFrom::Later => None,
            MetaFrom::Winner(src, st) => Some((src, st)),
        };
        let applied = applied.map_or(Ok(()), |(src, st)| {
            meta::apply_path_meta(&src, &node.dst, &st, &ctx.spec.preserve, ctx.umask)
        });
        match applied {
            Ok(()) if ctx.spec.remove_source => {
                super::remove::remove_dir(ctx, &node.src, &node.dst)
            }
            Ok(()) => {}
            Err(e) => ctx.stats.error(e),
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
    pub opened: std::time::Instant,
    /// (dev, inode) when the source has several names: the others link to this copy.
    pub link_key: Option<(u64, u64)>,
    pub segments_left: AtomicUsize,
    /// The source returned EOF before its size: it shrank.
    pub changed: AtomicBool,
    /// The destination is full: its temp is dropped and the file copied again on resume.
    pub deferred: AtomicBool,
    /// Set with the first error, so the hot path checks an atomic, not the mutex.
    failed_flag: AtomicBool,
    failed: Mutex<Option<Error>>,
    /// xxh3 of the whole file as it was read (set once all its data went through a buffer).
    digest: std::sync::OnceLock<u64>,
    /// Owner and mode the temp file was created with (lets the metadata step skip calls).
    pub known: Option<meta::Known>,
    /// O_DIRECT fds (source, temp) of a big file: aligned chunks bypass the page cache; the
    /// unaligned tail goes through the ordinary fds.
    pub direct: Option<(OwnedFd, OwnedFd)>,
    /// The temp file is unnamed (O_TMPFILE): `tmp` names nothing; its budget slot travels with
    /// the fd to the committer.
    pub unnamed: bool,
    pub anon_slot: Mutex<Option<AnonSlot>>,
    /// Bytes read to the end of a file whose stat size is 0 (a pseudo file); 0 otherwise.
    pub unsized_len: u64,
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
        link_key: Option<(u64, u64)>,
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
            opened: std::time::Instant::now(),
            link_key,
            segments_left: AtomicUsize::new(segments),
            changed: AtomicBool::new(false),
            deferred: AtomicBool::new(false),
            failed_flag: AtomicBool::new(false),
            failed: Mutex::new(None),
            digest: std::sync::OnceLock::new(),
            known: None,
            direct: None,
            unnamed: false,
            anon_slot: Mutex::new(None),
            unsized_len: 0,
        }
    }

    /// This file's task again (a retry with `attempt`, or a requeue).
    pub fn task(&self, attempt: u32) -> Task {
        Task::file(&self.src, &self.dst, &self.parent, attempt)
    }

    /// Bytes of the copy: the source's size, or what a pseudo file read to its end.
    pub fn copied_len(&self) -> u64 {
        self.st.st_size as u64 + self.unsized_len
    }

    pub fn set_digest(&self, d: u64) {
        assert!(self.digest.set(d).is_ok(), "file hashed twice");
    }

    pub fn digest(&self) -> Option<u64> {
        self.digest.get().copied()
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

    /// Failed, the source shrank, or no room: stop issuing reads for it.
    pub fn is_failed(&self) -> bool {
        self.changed.load(Ordering::Acquire)
            || self.failed_flag.load(Ordering::Acquire)
            || self.deferred.load(Ordering::Acquire)
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
    /// When the source was opened (per-file latency).
    pub opened: std::time::Instant,
    pub src: PathBuf,
    /// The source as it was read (journaled once the copy is durable).
    pub done: crate::coord::checkpoint::Done,
    pub tmp: PathBuf,
    pub dst: PathBuf,
    pub dev: u64,
    pub bytes: u64,
    pub parent: Option<Arc<DirNode>>,
    pub link_key: Option<(u64, u64)>,
    pub attempt: u32,
    /// An unnamed temp file: its fd (linked as `dst` at commit) and its budget slot.
    pub anon: Option<(OwnedFd, AnonSlot)>,
}

/// Another name of a multi-link file, waiting for the first name's copy.
pub struct LinkWaiter {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub parent: Option<Arc<DirNode>>,
}

enum LinkState {
    /// The first name is being copied; these names wait for it.
    Copying {
        waiters: Vec<LinkWaiter>,
        nlink: u64,
    },
    /// Copied to this path; `left` more names may still come (then the entry is dropped).
    Done {
        path: PathBuf,
        left: u64,
        hash: Option<u64>,
    },
}

pub enum LinkClaim {
    /// Copy this name; the others will link to it.
    First,
    /// Linked now, or queued to be linked: the caller's task is taken over.
    Handled,
}

/// Everything the reactors and committer share for one job.
/// The job's state machine and event stream, when it runs under a `Job` (set once at start).
pub type JobLink = (
    Arc<Mutex<crate::coord::state::Machine>>,
    std::sync::mpsc::Sender<crate::job::Event>,
);

pub struct Ctx {
    pub spec: CopySpec,
    pub job_link: std::sync::OnceLock<JobLink>,
    /// The job's journal and checkpoint (None: not resumable).
    pub state: Option<crate::coord::checkpoint::StateDir>,
    /// Files an earlier run finished durably, by source path (resume skips them if unchanged).
    pub done: HashMap<PathBuf, crate::coord::checkpoint::Done>,
    pub job_id: Option<String>,
    /// This run continues an unfinished earlier one.
    pub resuming: bool,
    /// `--retry-failed`: only these sources (files, and everything under failed directories).
    pub only: Option<crate::coord::checkpoint::FailedSet>,
    /// Sources that failed in this run (kept for `--retry-failed`), bounded.
    failed_srcs: Mutex<Vec<(PathBuf, bool)>>,
    /// Where each root source lands (kept in the checkpoint for resume).
    pub targets: Vec<PathBuf>,
    /// Set by pause: reactors submit nothing new; cleared by resume.
    pub paused: AtomicBool,
    /// The pause is a full destination's: no new file starts, but files already started go
    /// on, so what fits is committed (and what does not is dropped) before the job rests.
    pub full: AtomicBool,
    /// Reactors with nothing left in flight after a full destination under --fail-fast; the
    /// last one ends the job.
    pub drained: AtomicUsize,
    /// How many times the job was resumed (tells stale ENOSPC results from fresh ones).
    pub resumes: std::sync::atomic::AtomicU64,
    pub bytes_limit: crate::coord::throttle::TokenBucket,
    pub ops_limit: crate::coord::throttle::TokenBucket,
    pub filter: crate::filter::Filter,
    pub queues: TaskQueues<Task>,
    pub stats: Stats,
    pub dir_continuations: AtomicUsize,
    /// Directory fd pairs open (DirFds), at most `dir_fd_cap`.
    pub dir_fds: Arc<AtomicUsize>,
    pub dir_fd_cap: usize,
    /// Unnamed temp files open (AnonSlot), at most `anon_cap`.
    pub anon_fds: Arc<AtomicUsize>,
    pub anon_cap: usize,
    /// Set when creating an unnamed temp file failed as unsupported: named ones from then on.
    pub anon_off: AtomicBool,
    /// The umask, for modes that are not preserved.
    pub umask: u32,
    /// Our effective uid (owner of the files we create), read once.
    pub euid: u32,
    /// Files with several links, by source (dev, inode): the first copy, or who waits for it.
    links: Mutex<HashMap<(u64, u64), LinkState>>,
    /// Source device -> reactor that owns it.
    owners: Mutex<(HashMap<u64, usize>, usize)>,
    /// Destination filesystems: one fd each, opened early, for syncfs.
    dst_fs: Mutex<HashMap<u64, (OwnedFd, PathBuf)>>,
    /// A destination filesystem got wide batches (fskind::plan_for).
    wide_batches: AtomicBool,
    /// Source filesystems of a move: one fd each, for syncfs after deleting sources.
    src_fs: Mutex<HashMap<u64, (OwnedFd, PathBuf)>>,
    /// `--manifest`: records of committed files.
    pub manifest: Option<Mutex<crate::manifest::Writer>>,
    /// Replaces rename-and-journal for jobs with their own commit rules (rebalance).
    pub hook: Option<Arc<dyn super::commit::CommitHook>>,
    /// Carried by every named temp file of this job (kept in its checkpoint): only names with
    /// it are ever taken for this job's temps.
    pub temp_token: crate::temp::Token,
    /// Roots whose targets overlap: the last source wins per entry.
    pub overlaps: super::overlap::Overlaps,
}

impl Ctx {
    pub fn new(spec: CopySpec, filter: crate::filter::Filter, reactors: usize) -> Self {
        let stats = Stats::default();
        stats
            .fail_fast
            .store(spec.fail_fast, std::sync::atomic::Ordering::Relaxed);
        let (bytes_limit, ops_limit) =
            crate::coord::throttle::buckets(spec.bwlimit, spec.ops_limit);
        // SAFETY: plain getter.
        let euid = unsafe { libc::geteuid() };
        Ctx {
            job_link: std::sync::OnceLock::new(),
            state: None,
            done: HashMap::new(),
            job_id: None,
            resuming: false,
            only: None,
            failed_srcs: Mutex::new(Vec::new()),
            targets: Vec::new(),
            paused: AtomicBool::new(false),
            full: AtomicBool::new(false),
            drained: AtomicUsize::new(0),
            resumes: std::sync::atomic::AtomicU64::new(0),
            bytes_limit,
            ops_limit,
            spec,
            filter,
            queues: TaskQueues::new(reactors, LOCAL_QUEUE),
            stats,
            dir_continuations: AtomicUsize::new(0),
            dir_fds: Arc::new(AtomicUsize::new(0)),
            dir_fd_cap: dir_fd_cap(),
            anon_fds: Arc::new(AtomicUsize::new(0)),
            anon_cap: anon_cap(euid),
            anon_off: AtomicBool::new(false),
            umask: meta::read_umask(),
            euid,
            links: Mutex::new(HashMap::new()),
            owners: Mutex::new((HashMap::new(), 0)),
            dst_fs: Mutex::new(HashMap::new()),
            wide_batches: AtomicBool::new(false),
            manifest: None,
            src_fs: Mutex::new(HashMap::new()),
            hook: None,
            temp_token: crate::temp::Token::random(),
            overlaps: Default::default(),
        }
    }

    /// A file got its final name: record it in the manifest.
    pub fn committed(&self, dst: &Path, done: &crate::coord::checkpoint::Done) {
        if let (Some(m), Some(h)) = (&self.manifest, done.hash) {
            let ns = done.mtime.0 as i128 * 1_000_000_000 + done.mtime.1 as i128;
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(dst, done.size, ns, h);
        }
    }

    /// The first name of a multi-link file copies it; later names link to the copy (at once,
    /// or when the copy is final).
    pub fn claim_link(&self, key: (u64, u64), nlink: u64, w: LinkWaiter) -> LinkClaim {
        let mut g = self.links.lock().unwrap_or_else(|p| p.into_inner());
        match g.get_mut(&key) {
            None => {
                g.insert(
                    key,
                    LinkState::Copying {
                        waiters: Vec::new(),
                        nlink,
                    },
                );
                LinkClaim::First
            }
            Some(LinkState::Copying { waiters, .. }) => {
                waiters.push(w);
                LinkClaim::Handled
            }
            Some(LinkState::Done { path, left, hash }) => {
                let (path, hash) = (path.clone(), *hash);
                *left = left.saturating_sub(1);
                if *left == 0 {
                    g.remove(&key);
                }
                drop(g);
                self.make_link(&path, w, hash);
                LinkClaim::Handled
            }
        }
    }

    fn make_link(&self, existing: &Path, w: LinkWaiter, hash: Option<u64>) {
        let linked = meta::hardlink(existing, &w.dst, &self.temp_token).and_then(|()| {
            Stats::add(&self.stats.hardlinks, 1);
            if let Some(h) = hash
                && self.manifest.is_some()
            {
                let st = meta::lstat(&w.dst)?;
                self.committed(&w.dst, &done_record(&st, st.st_size as u64, Some(h)));
            }
            if self.spec.remove_source {
                super::remove::remove_entry(self, &w.src, &w.dst)?;
            }
            Ok(())
        });
        if let Err(e) = linked {
            self.stats.error(e);
        }
        child_done(&w.parent, self);
        self.queues.finish();
    }

    /// A dry run: whether this is the first name of a multi-link inode seen (the others
    /// would be linked to its copy).
    pub fn first_name(&self, st: &libc::stat) -> bool {
        let mut g = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let key = (st.st_dev, st.st_ino);
        if g.contains_key(&key) {
            return false;
        }
        let state = LinkState::Copying {
            waiters: Vec::new(),
            nlink: st.st_nlink,
        };
        g.insert(key, state);
        true
    }

    /// Whether the job has seen another name of this inode (and may see more).
    pub fn knows_link(&self, key: (u64, u64)) -> bool {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key)
    }

    /// Resume: a multi-link file already copied by an earlier run; its other names link to it.
    pub fn link_known(&self, key: (u64, u64), path: &Path, nlink: u64) {
        let mut g = self.links.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(key).or_insert_with(|| LinkState::Done {
            path: path.to_path_buf(),
            left: nlink.saturating_sub(1),
            hash: None,
        });
    }

    /// ENOSPC on the destination: under a `Job` (someone can resume it) the job pauses, and
    /// nothing is failed; returns false without one (the caller fails the item). Files already
    /// started go on; the one that met ENOSPC is dropped and waits for resume.
    pub fn destination_full(&self, path: &Path) -> bool {
        use crate::coord::state::JobState;
        // --fail-fast: nobody is there to free space and resume; the file fails and the job
        // stops like on any other error (run it again to resume).
        if self.spec.fail_fast {
            return false;
        }
        let Some((m, tx)) = self.job_link.get() else {
            return false;
        };
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        let went = g.go(JobState::Paused);
        if went.is_ok() {
            // Set before `paused`, so no reactor sees a bare pause that stops the started files.
            self.full.store(true, Ordering::Release);
        }
        self.paused.store(true, Ordering::Release);
        if let Ok((from, to)) = went {
            let _ = tx.send(crate::job::Event::State { from, to });
            let _ = tx.send(crate::job::Event::DestinationFull {
                path: crate::error::shown(path),
            });
            eprintln!(
                "ferry: destination full (writing '{}'): job paused; free space, then resume it{}",
                crate::error::shown(path),
                self.job_id
                    .as_ref()
                    .map(|id| format!(" with `ferry ctl {id} resume`"))
                    .unwrap_or_default()
            );
        }
        true
    }

    /// Remembers a failed source (a file, or a directory whose subtree is then retried).
    pub fn note_failed(&self, src: &Path, is_dir: bool) {
        if self.state.is_none() {
            return;
        }
        let mut g = self.failed_srcs.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() < crate::coord::checkpoint::MAX_FAILED_RECORDS {
            g.push((src.to_path_buf(), is_dir));
        }
    }

    /// Saves this run's failures for `--retry-failed`.
    pub fn save_failed(&self) {
        if let Some(sd) = &self.state {
            let g = self.failed_srcs.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = sd.write_failed(&g) {
                self.stats.error(Error::os("save failures", &sd.dir, e));
            }
        }
    }

    /// Writes the checkpoint (no-op without a state dir). A failure is reported, not fatal:
    /// the journal alone is enough to resume.
    pub fn checkpoint(&self, state: crate::coord::state::JobState) {
        let (Some(sd), Some(id)) = (&self.state, &self.job_id) else {
            return;
        };
        use crate::coord::checkpoint::absolute;
        // Paths as the command gave them would mean something else from another directory.
        let mut spec = self.spec.clone();
        spec.sources = spec.sources.iter().map(|p| absolute(p)).collect();
        spec.dest = absolute(&spec.dest);
        let cp = crate::coord::checkpoint::Checkpoint {
            version: 1,
            job_id: id.clone(),
            state,
            spec,
            targets: self.targets.iter().map(|p| absolute(p)).collect(),
            files: self.stats.files.load(Ordering::Relaxed)
                + self.stats.resumed_files.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed)
                + self.stats.resumed_bytes.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            updated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            pid: std::process::id(),
            temp_token: Some(self.temp_token.as_str().to_string()),
        };
        if let Err(e) = sd.write_checkpoint(&cp) {
            self.stats.error(Error::os("checkpoint", &sd.dir, e));
        }
    }

    /// Records files whose copies (and names) are durable, so a rerun can skip them.
    pub fn journal(&self, recs: &[(PathBuf, crate::coord::checkpoint::Done)]) {
        if let Some(s) = &self.state
            && let Err(e) = s.append(recs)
        {
            // Not fatal for the data (it is durable); the rerun will just redo these files.
            self.stats.error(Error::os("journal", &s.dir, e));
        }
    }

    /// The first name's copy has its final name: link the names that waited.
    pub fn link_done(&self, key: (u64, u64), path: &Path, hash: Option<u64>) {
        let waiters = {
            let mut g = self.links.lock().unwrap_or_else(|p| p.into_inner());
            match g.remove(&key) {
                Some(LinkState::Copying { waiters, nlink }) => {
                    // Names not seen yet (beyond the first and the waiters) may still come.
                    let left = nlink.saturating_sub(1 + waiters.len() as u64);
                    if left > 0 {
                        g.insert(
                            key,
                            LinkState::Done {
                                path: path.to_path_buf(),
                                left,
                                hash,
                            },
                        );
                    }
                    waiters
                }
                _ => Vec::new(),
            }
        };
        for w in waiters {
            self.make_link(path, w, hash);
        }
    }

    /// The first name failed: forget it; the waiting names are copied on their own (the first
    /// of them becomes the new first).
    pub fn link_failed(&self, key: (u64, u64)) {
        let waiters = match self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
        {
            Some(LinkState::Copying { waiters, .. }) => waiters,
            _ => Vec::new(),
        };
        for w in waiters {
            // Their outstanding units carry over to these tasks.
            self.queues.share(Task::new_file(w.src, w.dst, w.parent, 1));
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

    /// Remembers a destination filesystem (by a directory on it) for syncfs, and chooses its
    /// batches.
    pub fn note_dst_fs(&self, dev: u64, dir: &Path) -> Result<(), Error> {
        let mut g = self.dst_fs.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Vacant(v) = g.entry(dev) {
            let fd = meta::open_dir(dir)?;
            let kind = super::fskind::detect(&fd, dev);
            let plan = super::fskind::plan_for(kind, self.spec.commit_batch);
            if plan == super::fskind::WIDE {
                self.wide_batches.store(true, Ordering::Release);
            }
            let what = if plan == super::fskind::WIDE {
                "wide"
            } else {
                "standard"
            };
            let line = format!("{}: {kind}, {what} batches", crate::error::shown(dir));
            self.stats
                .commit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line);
            v.insert((fd, dir.to_path_buf()));
        }
        Ok(())
    }

    /// The group commit's batches: wide when any destination filesystem asked for them (one
    /// committer serves them all).
    pub fn batch_plan(&self) -> super::fskind::BatchPlan {
        if self.wide_batches.load(Ordering::Acquire) {
            super::fskind::WIDE
        } else {
            super::fskind::STANDARD
        }
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
mod dir_fd_tests {
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
