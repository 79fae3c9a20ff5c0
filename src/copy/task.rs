//! Units of work and the shared state of one copy job.

use super::links::{Claim, Links};
use super::steer::Steering;
use crate::coord::checkpoint::{Done, StateDir};
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

pub use super::fds::{AnonSlot, DirFds, Fds, MAX_ANON_FDS, MAX_DIR_CONTINUATIONS};

/// Attempts per file: the first plus 3 retries (a source that changed while it was copied, or
/// a transient error).
pub const MAX_ATTEMPTS: u32 = 4;
/// Tasks a reactor's own queue holds before new ones overflow to the shared queue.
pub const LOCAL_QUEUE: usize = 8192;

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
        let child = |f: &Path, d: &Path| {
            is_child_bytes(f, d) || f.parent().is_some_and(|q| q.as_os_str() == d.as_os_str())
        };
        let fds = self.fds.get()?.as_ref()?;
        (child(dst, &self.dst) && src.is_none_or(|s| child(s, &self.src)))
            .then(|| (fds.src.as_raw_fd(), fds.dst.as_raw_fd()))
    }

    pub fn add_child(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }
}

/// `f` is `d`, a '/', then one plain name: a child of the directory `d` names, whatever
/// `Path::parent` would make of `d` (the per-file check, by bytes; the walk builds exactly
/// this shape).
fn is_child_bytes(f: &Path, d: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (f, d) = (f.as_os_str().as_bytes(), d.as_os_str().as_bytes());
    let Some(name) = f.strip_prefix(d).and_then(|r| r.strip_prefix(b"/")) else {
        return false;
    };
    !d.is_empty() && !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/')
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
        let applied = match ctx.tables.overlaps.meta_for(&node.place, &node.dst) {
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
    /// How the copy gets its final name (chosen once, when the file is created).
    pub naming: Naming,
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
            naming: Naming::Temp,
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
    pub naming: Naming,
    /// An unnamed temp file: its fd (linked as `dst` at commit) and its budget slot.
    pub anon: Option<(OwnedFd, AnonSlot)>,
}

/// How a copy comes to carry its final name, decided when its file is created; commit,
/// abandon and the per-file fsync path match on it instead of re-deriving it from paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// O_TMPFILE: `tmp` names nothing; the fd (with its budget slot) is linked at `dst` once
    /// durable, or simply closed to discard the copy.
    Unnamed,
    /// Written at the temp name `tmp` beside `dst`, renamed to `dst` once durable.
    Temp,
    /// Written at `dst` itself inside a hidden tree (`tmp == dst`): nothing to name per file,
    /// the tree is renamed whole at the end; a discarded copy is unlinked through the tree.
    InPlace,
}

impl Naming {
    /// Whether the copy has a path that must be unlinked to discard it.
    pub fn has_path(self) -> bool {
        self != Naming::Unnamed
    }
}

/// Another name of a multi-link file, waiting for the first name's copy.
pub struct LinkWaiter {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub parent: Option<Arc<DirNode>>,
}

pub enum LinkClaim {
    /// Copy this name; the others will link to it.
    First,
    /// Linked now, or queued to be linked: the caller's task is taken over.
    Handled,
}

/// Everything the reactors and committer share for one job, by concern.
pub struct Ctx {
    /// What to copy and how (the command's options), and which entries.
    pub spec: CopySpec,
    pub filter: crate::filter::Filter,
    /// Pause and resume, the throttles, the stop flags, the link to the job's state machine.
    pub steer: Steering,
    /// Tasks waiting for a reactor.
    pub queues: TaskQueues<Task>,
    /// What the job counted (durable work only) and the errors it met.
    pub stats: Stats,
    /// Fds held open, each kind within its budget, and the filesystems' syncfs fds.
    pub fds: Fds,
    /// What the job knows across its files: earlier runs' work, hard links, owners, overlaps.
    pub tables: Tables,
    /// The job's journal and checkpoint (None: not resumable).
    pub state: Option<StateDir>,
    /// This run continues an unfinished earlier one.
    pub resuming: bool,
    /// ...whose journal it loaded (not a rerun of a completed job).
    pub resumed_journal: bool,
    /// The roots built under hidden names (`--temp tree`).
    pub tree: super::tree::Tree,
    /// What the checkpoint keeps of this job besides its counts.
    pub record: Record,
    /// What the job writes besides the copies.
    pub out: Outputs,
    /// The umask, for modes that are not preserved.
    pub umask: u32,
    /// Our effective uid (owner of the files we create), read once.
    pub euid: u32,
}

/// Per-job tables, read and written by every reactor.
#[derive(Default)]
pub struct Tables {
    /// Files an earlier run finished durably, by source path (resume skips them if unchanged).
    pub done: HashMap<PathBuf, Done>,
    /// `--retry-failed`: only these sources (files, and everything under failed directories).
    pub only: Option<crate::coord::checkpoint::FailedSet>,
    /// Files with several links: the first copy, or who waits for it.
    pub links: Links<LinkWaiter>,
    /// Source device -> reactor that owns it.
    owners: Mutex<(HashMap<u64, usize>, usize)>,
    /// Roots whose targets overlap: the last source wins per entry.
    pub overlaps: super::overlap::Overlaps,
}

impl Tables {
    /// Round-robin assignment of source devices to `reactors`, fixed for the job.
    pub fn owner_of(&self, dev: u64, reactors: usize) -> usize {
        let mut g = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        let (map, next) = &mut *g;
        *map.entry(dev).or_insert_with(|| {
            let o = *next % reactors;
            *next += 1;
            o
        })
    }
}

/// What the checkpoint keeps of a job besides its counts.
pub struct Record {
    pub job_id: Option<String>,
    /// Where each root source lands (kept for resume).
    pub targets: Vec<PathBuf>,
    /// Sources that failed in this run (kept for `--retry-failed`), bounded.
    failed: Mutex<Vec<(PathBuf, bool)>>,
    /// Carried by every named temp file of this job: only names with it are ever taken for
    /// this job's temps.
    pub temp_token: crate::temp::Token,
}

/// Gives a batch of durable, verified temp files their final places, for jobs whose commit is
/// more than a rename (rebalance: under the object's lock, aware of concurrent writers). It
/// owns the items: it counts them, reports their errors, and finishes (or requeues) each
/// item's task unit. (Here, beside the Ctx it is given; `commit::CommitHook` names it too.)
pub trait CommitHook: Send + Sync {
    fn commit(&self, ctx: &Ctx, items: Vec<Finished>);
}

/// What a job writes besides the copies.
#[derive(Default)]
pub struct Outputs {
    /// `--manifest`: records of committed files.
    pub manifest: Option<Mutex<crate::manifest::Writer>>,
    /// Replaces rename-and-journal for jobs with their own commit rules (rebalance).
    pub hook: Option<Arc<dyn CommitHook>>,
}

impl Outputs {
    /// A file got its final name: record it in the manifest.
    pub fn committed(&self, dst: &Path, done: &Done) {
        if let (Some(m), Some(h)) = (&self.manifest, done.hash) {
            let ns = done.mtime.0 as i128 * 1_000_000_000 + done.mtime.1 as i128;
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(dst, done.size, ns, h);
        }
    }
}

impl Ctx {
    pub fn new(spec: CopySpec, filter: crate::filter::Filter, reactors: usize) -> Self {
        let steer = Steering::new(spec.bwlimit, spec.ops_limit, spec.fail_fast);
        // SAFETY: plain getter.
        let euid = unsafe { libc::geteuid() };
        Ctx {
            stats: Stats::new(steer.stop.clone()),
            steer,
            state: None,
            resuming: false,
            resumed_journal: false,
            tree: super::tree::Tree::default(),
            record: Record {
                job_id: None,
                targets: Vec::new(),
                failed: Mutex::new(Vec::new()),
                temp_token: crate::temp::Token::random(),
            },
            spec,
            filter,
            queues: TaskQueues::new(reactors, LOCAL_QUEUE),
            fds: Fds::new(euid),
            tables: Tables::default(),
            out: Outputs::default(),
            umask: meta::read_umask(),
            euid,
        }
    }

    /// The first name of a multi-link file copies it; later names link to the copy (at once,
    /// or when the copy is final).
    pub fn claim_link(&self, key: (u64, u64), nlink: u64, w: LinkWaiter) -> LinkClaim {
        match self.tables.links.claim(key, nlink, w) {
            Claim::First => LinkClaim::First,
            Claim::Waiting => LinkClaim::Handled,
            Claim::LinkTo { path, hash, waiter } => {
                self.make_link(&path, waiter, hash);
                LinkClaim::Handled
            }
        }
    }

    fn make_link(&self, existing: &Path, w: LinkWaiter, hash: Option<u64>) {
        let linked = meta::hardlink(existing, &w.dst, &self.record.temp_token).and_then(|()| {
            Stats::add(&self.stats.hardlinks, 1);
            if let Some(h) = hash
                && self.out.manifest.is_some()
            {
                let st = meta::lstat(&w.dst)?;
                self.out
                    .committed(&w.dst, &done_record(&st, st.st_size as u64, Some(h)));
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

    /// ENOSPC on the destination: under a `Job` (someone can resume it) the job pauses, and
    /// nothing is failed; returns false without one (the caller fails the item). Files already
    /// started go on; the one that met ENOSPC is dropped and waits for resume.
    pub fn destination_full(&self, path: &Path) -> bool {
        // --fail-fast: nobody is there to free space and resume; the file fails and the job
        // stops like on any other error (run it again to resume).
        if self.spec.fail_fast {
            return false;
        }
        self.steer
            .pause_for_room(path, self.record.job_id.as_deref())
    }

    /// Remembers a failed source (a file, or a directory whose subtree is then retried).
    pub fn note_failed(&self, src: &Path, is_dir: bool) {
        if self.state.is_none() {
            return;
        }
        let mut g = self.record.failed.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() < crate::coord::checkpoint::MAX_FAILED_RECORDS {
            g.push((src.to_path_buf(), is_dir));
        }
    }

    /// Saves this run's failures for `--retry-failed`.
    pub fn save_failed(&self) {
        if let Some(sd) = &self.state {
            let g = self.record.failed.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = sd.write_failed(&g) {
                self.stats.error(Error::os("save failures", &sd.dir, e));
            }
        }
    }

    /// Writes the checkpoint (no-op without a state dir). A failure is reported, not fatal:
    /// the journal alone is enough to resume.
    pub fn checkpoint(&self, state: crate::coord::state::JobState) {
        let (Some(sd), Some(id)) = (&self.state, &self.record.job_id) else {
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
            targets: self.record.targets.iter().map(|p| absolute(p)).collect(),
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
            temp_token: Some(self.record.temp_token.as_str().to_string()),
        };
        if let Err(e) = sd.write_checkpoint(&cp) {
            self.stats.error(Error::os("checkpoint", &sd.dir, e));
        }
    }

    /// Records files whose copies (and names) are durable, so a rerun can skip them.
    pub fn journal(&self, recs: &[(PathBuf, Done)]) {
        if let Some(s) = &self.state
            && let Err(e) = s.append(recs)
        {
            // Not fatal for the data (it is durable); the rerun will just redo these files.
            self.stats.error(Error::os("journal", &s.dir, e));
        }
    }

    /// The first name's copy has its final name: link the names that waited.
    pub fn link_done(&self, key: (u64, u64), path: &Path, hash: Option<u64>) {
        for w in self.tables.links.done(key, path, hash) {
            self.make_link(path, w, hash);
        }
    }

    /// The first name failed: forget it; the waiting names are copied on their own (the first
    /// of them becomes the new first).
    pub fn link_failed(&self, key: (u64, u64)) {
        for w in self.tables.links.failed(key) {
            // Their outstanding units carry over to these tasks.
            self.queues.share(Task::new_file(w.src, w.dst, w.parent, 1));
        }
    }

    /// The reactor that owns a source device.
    pub fn owner_of(&self, dev: u64) -> usize {
        self.tables.owner_of(dev, self.queues.reactors())
    }

    /// Remembers a destination filesystem (by a directory on it) for syncfs, chooses its
    /// batches and lists it in the report.
    pub fn note_dst_fs(&self, dev: u64, dir: &Path) -> Result<(), Error> {
        let batch = self.spec.commit_batch;
        let plan = |fd: &OwnedFd| {
            let kind = super::fskind::detect(fd, dev);
            let wide = super::fskind::plan_for(kind, batch) == super::fskind::WIDE;
            let what = if wide { "wide" } else { "standard" };
            let line = format!("{}: {kind}, {what} batches", crate::error::shown(dir));
            (wide, line)
        };
        if let Some(line) = self.fds.note_dst_fs(dev, dir, plan)? {
            let mut g = self.stats.commit.lock().unwrap_or_else(|p| p.into_inner());
            g.push(line);
        }
        Ok(())
    }

    /// The group commit's batches: wide when any destination filesystem asked for them.
    pub fn batch_plan(&self) -> super::fskind::BatchPlan {
        if self.fds.wide_batches() {
            super::fskind::WIDE
        } else {
            super::fskind::STANDARD
        }
    }

    /// syncfs on the given destination filesystems (see `Fds::sync_dst`; rebalance calls
    /// it here).
    pub fn sync_dst(&self, devs: Option<&[u64]>) -> Result<(), Error> {
        self.fds.sync_dst(devs)
    }

    /// syncfs on a source filesystem (see `Fds::sync_src`; rebalance calls it here).
    pub fn sync_src(&self, dev: u64, dir: &Path) -> Result<(), Error> {
        self.fds.sync_src(dev, dir)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_child_by_bytes_is_one_plain_name_below_the_directory() {
        use std::path::Path;
        let yes = [
            ("d/f", "d"),
            ("/a/b/c", "/a/b"),
            ("x/./f", "x/."),
            ("d/.f", "d"),
        ];
        let no = [
            ("d/e/f", "d"),
            ("d", "d"),
            ("d/", "d"),
            ("dd/f", "d"),
            ("d/..", "d"),
        ];
        for (f, d) in yes {
            assert!(
                super::is_child_bytes(Path::new(f), Path::new(d)),
                "{f} in {d}"
            );
        }
        for (f, d) in no {
            assert!(
                !super::is_child_bytes(Path::new(f), Path::new(d)),
                "{f} in {d}"
            );
        }
        assert!(!super::is_child_bytes(Path::new("/f"), Path::new("")));
    }
}
