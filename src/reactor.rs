//! One reactor: a pinned thread with its own backend (ring) and buffer arena. It takes tasks,
//! keeps up to `queue_depth` chunks in flight across its active files, and drives each chunk
//! through a small state machine: read into buffer i -> write from buffer i -> buffer free.
//!
//! Loop: issue reads while buffers are free -> take tasks while there is room -> submit (waiting
//! for a completion only when nothing else can be done) -> reap all completions into a list ->
//! run their handlers (which only queue new ops).

use crate::copy::task::{Ctx, DirNode, FileJob, Finished, MAX_ATTEMPTS, Task, child_done};
use crate::copy::walk;
use crate::error::{Error, ErrorKind, is_transient, is_transient_file_error};
use crate::io::{Backend, Completion, Op, OpKind};
use crate::meta;
use crate::spec::FsyncMode;
use crate::stats::Stats;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3;

/// user_data with this bit set is an fsync; otherwise it is a buffer index.
const FSYNC_BIT: u64 = 1 << 63;
/// Resubmissions of one op after EAGAIN/EINTR before the file fails.
const MAX_OP_RETRIES: u8 = 16;
/// Longest wait before retrying a file after a transient error.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Data extents tracked per sparse file.
const MAX_RANGES: usize = 4096;
/// Tasks put back by the walk's back-pressure in one turn of the take loop before it yields.
const MAX_DEFERRALS: u32 = 16;

/// Byte ranges of a file this reactor is copying: one segment, or with checksums on, every
/// data range of the file (a streamed hash needs the bytes in order, so the file stays here).
struct Seg {
    job: Arc<FileJob>,
    next: u64,
    end: u64,
    /// Ranges still to start, last first.
    more: Vec<(u64, u64)>,
    inflight: u32,
    /// Streamed checksum: the state, and how far it has hashed.
    hash: Option<Box<Xxh3>>,
    hashed: u64,
    /// Chunks in the order they were read from the file, so they are hashed in file order
    /// (bounded by the buffer count).
    order: VecDeque<u32>,
}

impl Seg {
    fn exhausted(&self) -> bool {
        self.next >= self.end && self.more.is_empty()
    }
}

/// The chunk held by one buffer.
#[derive(Clone, Copy, Default)]
struct Slot {
    seg: u32,
    off: u64,
    len: u32,
    done: u32,
    writing: bool,
    retries: u8,
    /// When the current phase (read or write) was first submitted, ns since the reactor began.
    t0: u64,
    /// The job's resume count when the op was last submitted: an ENOSPC from before the last
    /// resume says nothing about the space freed since.
    resumes: u64,
    /// Read in full, waiting for the chunks before it to be hashed.
    ready: bool,
}

/// The fd and length for the next op on a chunk: aligned parts of a big file go through its
/// O_DIRECT fds (reads ask for whole blocks, the buffer has room: buffers are block multiples),
/// the rest (an unaligned tail, an unaligned remainder after a short op) through the ordinary ones.
fn op_fd(job: &FileJob, writing: bool, off: u64, len: u32) -> (std::os::fd::RawFd, u32, bool) {
    use std::os::fd::AsRawFd;
    const A: u64 = crate::spec::DIRECT_ALIGN;
    if let Some((src, dst)) = &job.direct
        && off.is_multiple_of(A)
    {
        if !writing {
            return (
                src.as_raw_fd(),
                (len as u64).next_multiple_of(A) as u32,
                true,
            );
        }
        if (len as u64).is_multiple_of(A) {
            return (dst.as_raw_fd(), len, true);
        }
    }
    if writing {
        (job.dst_raw, len, false)
    } else {
        (job.src_raw(), len, false)
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

pub struct Reactor {
    me: usize,
    ctx: Arc<Ctx>,
    io: Box<dyn Backend>,
    commit_tx: Option<SyncSender<Vec<Finished>>>,
    /// Finished files not yet handed to the committer: sent once per loop turn, as one message
    /// (one wake-up of the committer per batch of completions, not per file).
    outbox: Vec<Finished>,
    buf_size: u64,
    free: Vec<u32>,
    slots: Vec<Slot>,
    active: Vec<Option<Seg>>,
    active_count: usize,
    fsyncs: Vec<Option<Arc<FileJob>>>,
    free_fsyncs: Vec<u32>,
    fsync_wait: VecDeque<Arc<FileJob>>,
    cq: Vec<Completion>,
    known_devs: Vec<u64>,
    /// getdents64 batches, reused for every directory this reactor lists.
    dirbuf: Vec<u8>,
    /// Chunks whose next op waits for resume (bounded by the buffer count).
    parked: Vec<u32>,
    /// Counted in `ctx.drained` (see `drain_full`).
    drained: bool,
    /// Files to try again later (transient errors), with when.
    delayed: Vec<(Instant, Task)>,
    epoch: Instant,
    fsync_t0: Vec<u64>,
    /// This reactor's latencies, merged into the job's at exit.
    lat: crate::latency::Latencies,
}

impl Reactor {
    pub fn new(
        me: usize,
        ctx: Arc<Ctx>,
        mut io: Box<dyn Backend>,
        commit_tx: Option<SyncSender<Vec<Finished>>>,
    ) -> Self {
        let depth = io.arena().count();
        let buf_size = io.arena().buf_size() as u64;
        // Buffers ops plus one fsync per buffer never exceed the backend's capacity (= CQ).
        assert!(2 * depth <= io.capacity());
        Reactor {
            me,
            ctx,
            io,
            commit_tx,
            outbox: Vec::new(),
            buf_size,
            free: (0..depth as u32).rev().collect(),
            slots: vec![Slot::default(); depth],
            active: (0..depth).map(|_| None).collect(),
            active_count: 0,
            fsyncs: (0..depth).map(|_| None).collect(),
            free_fsyncs: (0..depth as u32).rev().collect(),
            fsync_wait: VecDeque::new(),
            cq: Vec::with_capacity(2 * depth),
            known_devs: Vec::new(),
            dirbuf: vec![0u8; crate::dirents::DIRENT_BUF],
            parked: Vec::with_capacity(depth),
            drained: false,
            delayed: Vec::new(),
            epoch: Instant::now(),
            fsync_t0: vec![0; depth],
            lat: crate::latency::Latencies::default(),
        }
    }

    /// Runs until the job has no outstanding work (or is aborted). A returned error is fatal
    /// for the job (the ring itself failed).
    pub fn run(&mut self) -> Result<(), Error> {
        let r = self.run_loop();
        self.flush_outbox();
        self.ctx.stats.merge_latencies(&self.lat);
        r
    }

    fn run_loop(&mut self) -> Result<(), Error> {
        let mut idle = 0u32;
        let mut merged = Instant::now();
        loop {
            // Before anything that may wait: the committer must see every finished file.
            self.flush_outbox();
            if merged.elapsed() >= Duration::from_secs(1) {
                // Live quantiles for --metrics and status: hand over what was recorded.
                self.ctx.stats.merge_latencies(&self.lat);
                self.lat.reset();
                merged = Instant::now();
            }
            let aborting = self.ctx.stats.abort.load(Ordering::Acquire);
            // No new file starts; `halted`: no new I/O at all (a user's pause, not a full
            // destination's: then the files already started go on).
            let paused = self.no_new_files() && !aborting;
            let halted = paused && self.halted();
            if aborting {
                for buf in std::mem::take(&mut self.parked) {
                    self.release(buf)?;
                }
                self.drain_aborted()?;
            }
            if !halted && !self.parked.is_empty() {
                for buf in std::mem::take(&mut self.parked) {
                    let job = self.slot_job(buf);
                    self.resubmit(buf, &job)?;
                }
            }
            self.requeue_delayed(aborting);
            self.start_fsyncs()?;
            if !halted {
                self.issue()?;
            }
            let mut took = false;
            let mut deferred = 0;
            // The pause flag is read again for every task: a pause (or a full destination met
            // by the previous task) must stop this loop at once, not after the queue drains.
            while !aborting
                && !self.no_new_files()
                && self.can_take()
                && self.ctx.ops_limit.try_take(1)
            {
                let Some(task) = self.ctx.queues.pop(self.me) else {
                    self.ctx.ops_limit.refund(1);
                    break;
                };
                if !self.take(task)? {
                    // A directory was put back to wait behind the queued files. Waiting work is
                    // popped last, so the next pop finds other work if there is any; only a
                    // run of deferrals means nothing else is left, and then taking it again
                    // at once would spin: what is in flight (or the idle back-off) comes first.
                    self.ctx.ops_limit.refund(1);
                    deferred += 1;
                    if deferred >= MAX_DEFERRALS {
                        break;
                    }
                    continue;
                }
                took = true;
                self.issue()?;
            }
            if self.io.in_flight() > 0 {
                idle = 0;
                // Block only when there was nothing to take: completions are then our only way on.
                self.io.submit(!took).map_err(|e| self.fatal(e))?;
                self.cq.clear();
                self.io.reap(&mut self.cq);
                let done = std::mem::take(&mut self.cq);
                for c in &done {
                    self.complete(*c)?;
                }
                self.cq = done;
                continue;
            }
            if took
                || (!halted && self.active_count > 0 && self.parked.is_empty())
                || !self.fsync_wait.is_empty()
            {
                if !took && self.has_issuable() {
                    // Throttled: nothing in flight and no tokens yet.
                    std::thread::sleep(Duration::from_micros(500));
                }
                continue;
            }
            if paused {
                // Everything in flight is done; wait for resume (checked every millisecond,
                // well within the 100 ms a pause may take).
                self.drain_full();
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if aborting || self.ctx.queues.outstanding() == 0 {
                return Ok(());
            }
            // Others still hold work that may produce tasks for us: back off, bounded.
            idle = (idle + 1).min(6);
            std::thread::sleep(Duration::from_micros(25 << idle));
        }
    }

    /// Files whose retry is due go back to the queue (all are dropped on abort).
    fn requeue_delayed(&mut self, aborting: bool) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now || aborting {
                let (_, t) = self.delayed.swap_remove(i);
                if aborting {
                    // Dropped with the job; its unit no longer matters.
                    drop(t);
                } else {
                    self.ctx.queues.requeue(self.me, t);
                }
            } else {
                i += 1;
            }
        }
    }

    /// No new file may start: paused, or --fail-fast met a full destination.
    fn no_new_files(&self) -> bool {
        self.ctx.paused.load(Ordering::Acquire) || self.ctx.stats.full_stop.load(Ordering::Acquire)
    }

    /// No new I/O at all: a user's pause (a full destination lets started files go on).
    fn halted(&self) -> bool {
        self.ctx.paused.load(Ordering::Acquire) && !self.ctx.full.load(Ordering::Acquire)
    }

    /// --fail-fast met a full destination and this reactor's started files are all finished
    /// (committed, or failed): counted once; the last reactor to get here stops the job.
    fn drain_full(&mut self) {
        let ctx = &self.ctx;
        if !ctx.stats.full_stop.load(Ordering::Acquire) || self.drained {
            return;
        }
        self.drained = true;
        if ctx.drained.fetch_add(1, Ordering::AcqRel) + 1 == ctx.queues.reactors() {
            ctx.stats.abort.store(true, Ordering::Release);
        }
    }

    /// On abort, segments with nothing in flight are failed at once (their temp files removed).
    fn drain_aborted(&mut self) -> Result<(), Error> {
        for idx in 0..self.active.len() {
            if matches!(&self.active[idx], Some(s) if s.inflight == 0) {
                self.retire(idx)?;
            }
        }
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn fatal(&self, e: std::io::Error) -> Error {
        self.ctx.stats.abort.store(true, Ordering::Release);
        Error::os(
            "io_uring_enter",
            &PathBuf::from(format!("<reactor {}>", self.me)),
            e,
        )
    }

    /// A slot for an unnamed temp file (O_TMPFILE + linkat at commit), when this file can
    /// have one: group commit (the per-file fsync path renames), no commit hook (rebalance
    /// renames under its own rules), no --verify=full (it re-reads temp files by name), not
    /// an O_DIRECT file (it reopens its temp file by name), and the budget allows.
    fn anon_slot(&self, size: u64) -> Option<crate::copy::task::AnonSlot> {
        if !self.anon_eligible() || (self.ctx.spec.direct && size >= crate::spec::DIRECT_MIN) {
            return None;
        }
        crate::copy::task::AnonSlot::take(&self.ctx.anon_fds, self.ctx.anon_cap)
    }

    /// Whether this job's files get unnamed temp files (size aside; see `anon_slot`).
    fn anon_eligible(&self) -> bool {
        let spec = &self.ctx.spec;
        spec.fsync == FsyncMode::Batch
            && self.ctx.hook.is_none()
            && spec.verify != crate::spec::VerifyMode::Full
            && self.ctx.anon_cap > 0
            && !self.ctx.anon_off.load(Ordering::Acquire)
    }

    /// A free unnamed-temp slot (another reactor may still take it first: then that file
    /// falls back to a named temp file).
    fn anon_room(&self) -> bool {
        self.ctx.anon_fds.load(Ordering::Acquire) < self.ctx.anon_cap
    }

    fn can_take(&self) -> bool {
        self.active_count < self.active.len() && !self.free.is_empty() && !self.has_issuable()
    }

    fn has_issuable(&self) -> bool {
        self.active
            .iter()
            .flatten()
            .any(|s| !s.exhausted() && !s.job.is_failed())
    }

    fn push(&mut self, op: Op) -> Result<(), Error> {
        assert!(self.io.in_flight() < self.io.capacity());
        self.io.push(op).map_err(|e| self.fatal(e))
    }

    /// Fills free buffers with reads, oldest active file first (so files finish early).
    fn issue(&mut self) -> Result<(), Error> {
        if self.ctx.stats.abort.load(Ordering::Acquire) || self.halted() {
            return Ok(());
        }
        for idx in 0..self.active.len() {
            // A segment whose file failed elsewhere before it issued anything: retire it now,
            // no completion will come for it.
            if matches!(&self.active[idx], Some(s) if s.inflight == 0 && s.job.is_failed()) {
                self.retire(idx)?;
                continue;
            }
            loop {
                if self.free.is_empty() {
                    return Ok(());
                }
                let Some(seg) = self.active[idx].as_mut() else {
                    break;
                };
                if seg.next >= seg.end
                    && let Some((a, b)) = seg.more.pop()
                {
                    seg.next = a;
                    seg.end = b;
                }
                if seg.next >= seg.end || seg.job.is_failed() {
                    break;
                }
                // Under a byte limit, chunks are no bigger than its burst.
                let most = self.ctx.bytes_limit.chunk(self.buf_size);
                let len = (seg.end - seg.next).min(most) as u32;
                if !self.ctx.bytes_limit.try_take(len as u64) {
                    return Ok(()); // throttled: try again after the next completion or nap
                }
                let off = seg.next;
                seg.next += len as u64;
                seg.inflight += 1;
                let (fd, ask, direct) = op_fd(&seg.job, false, off, len);
                let buf = self.free.pop().expect("checked non-empty");
                if seg.hash.is_some() {
                    seg.order.push_back(buf);
                }
                self.slots[buf as usize] = Slot {
                    seg: idx as u32,
                    off,
                    len,
                    done: 0,
                    writing: false,
                    retries: 0,
                    t0: self.now_ns(),
                    resumes: self.ctx.resumes.load(Ordering::Acquire),
                    ready: false,
                };
                self.push(Op {
                    kind: OpKind::Read,
                    fd,
                    buf,
                    buf_off: 0,
                    len: ask,
                    offset: off,
                    user_data: buf as u64,
                    direct,
                })?;
            }
        }
        Ok(())
    }

    /// Starts a task; false when it was only put back to wait (walk back-pressure).
    fn take(&mut self, task: Task) -> Result<bool, Error> {
        match task {
            Task::Dir { src, dst, parent } => {
                return Ok(walk::start_dir(
                    &self.ctx,
                    self.me,
                    src,
                    dst,
                    parent,
                    &mut self.dirbuf,
                ));
            }
            Task::DirMore { stream, src, node } => {
                return Ok(walk::list_more(
                    &self.ctx,
                    self.me,
                    stream,
                    src,
                    node,
                    true,
                    &mut self.dirbuf,
                ));
            }
            Task::File {
                src,
                dst,
                parent,
                attempt,
            } => {
                if self.anon_eligible() && !self.anon_room() {
                    // Every unnamed-temp slot waits for the committer: this file waits too
                    // (behind other work) rather than take the three-directory-operation path.
                    self.ctx.queues.requeue_last(Task::File {
                        src,
                        dst,
                        parent,
                        attempt,
                    });
                    return Ok(false);
                }
                self.open_file(src, dst, parent, attempt)?
            }
            Task::Segment { job, start, end } => self.activate(job, vec![(start, end)], false),
        }
        Ok(true)
    }

    /// Starts copying `ranges` (in file order) of a file; `hash`: stream its checksum.
    fn activate(&mut self, job: Arc<FileJob>, mut ranges: Vec<(u64, u64)>, hash: bool) {
        assert!(!ranges.is_empty() && ranges.iter().all(|(a, b)| a < b));
        ranges.reverse();
        let (start, end) = ranges.pop().expect("non-empty");
        let idx = self
            .active
            .iter()
            .position(|s| s.is_none())
            .expect("can_take checked for a free active slot");
        self.active[idx] = Some(Seg {
            job,
            next: start,
            end,
            more: ranges,
            inflight: 0,
            hash: hash.then(|| Box::new(Xxh3::new())),
            hashed: 0,
            order: VecDeque::new(),
        });
        self.active_count += 1;
    }

    /// Opens the source, creates the temp file, and splits the data into segments: the first
    /// is copied here, the others are offered to every reactor.
    fn open_file(
        &mut self,
        src: PathBuf,
        dst: PathBuf,
        parent: Option<Arc<DirNode>>,
        attempt: u32,
    ) -> Result<(), Error> {
        use crate::copy::task::{LinkClaim, LinkWaiter};
        use std::os::fd::AsRawFd;
        let fail = |me: &mut Self, e: Error, parent: &Option<Arc<DirNode>>| {
            let errno = e.raw_os_error().unwrap_or(0);
            if is_transient_file_error(errno) && attempt < MAX_ATTEMPTS {
                // Retried after 100 ms, doubling, capped at 5 s; the task's unit carries over.
                let wait = Duration::from_millis(100 << (attempt - 1)).min(MAX_BACKOFF);
                Stats::add(&me.ctx.stats.retries, 1);
                me.delayed.push((
                    Instant::now() + wait,
                    Task::File {
                        src: src.clone(),
                        dst: dst.clone(),
                        parent: parent.clone(),
                        attempt: attempt + 1,
                    },
                ));
                return Ok(());
            }
            if (errno == libc::ENOSPC || errno == libc::EDQUOT) && me.ctx.destination_full(&e.path)
            {
                // No room for the temp file or its blocks: paused; this file is tried again on
                // resume (same attempt: nothing about the file was wrong).
                me.ctx.queues.requeue(
                    me.me,
                    Task::File {
                        src: src.clone(),
                        dst: dst.clone(),
                        parent: parent.clone(),
                        attempt,
                    },
                );
                return Ok(());
            }
            me.ctx.note_failed(&src, false);
            if errno == libc::ENOENT && e.op == "open" {
                // The source vanished between the listing and the open: skipped, not failed.
                Stats::add(&me.ctx.stats.skipped, 1);
                eprintln!("ferry: skipping '{}': it vanished", e.path.display());
            } else {
                me.ctx.stats.error(e);
            }
            child_done(parent, &me.ctx);
            me.ctx.queues.finish();
            Ok(())
        };
        let open_t0 = Instant::now();
        // Relative to the parent's directory fds when it has them (no path walk per call).
        let at = parent.as_ref().and_then(|p| p.child_fds(Some(&src), &dst));
        let opened_src = meta::open_source_in(at.map(|a| a.0), &src);
        let src_fd = match opened_src {
            Ok(fd) => fd,
            Err(e) => return fail(self, e, &parent),
        };
        let st = match meta::fstat(src_fd.as_raw_fd(), &src) {
            // It changed type after the listing saw it; not a regular file any more.
            Ok(st) if meta::file_type(&st) != libc::S_IFREG => {
                return fail(self, Error::errno("open", &src, libc::EINVAL), &parent);
            }
            Ok(st) => st,
            Err(e) => return fail(self, e, &parent),
        };
        if let Some(only) = &self.ctx.only
            && !only.contains(&src)
        {
            // --retry-failed: this file did not fail last time.
            self.ctx.ops_limit.refund(1);
            Stats::add(&self.ctx.stats.skipped, 1);
            child_done(&parent, &self.ctx);
            self.ctx.queues.finish();
            return Ok(());
        }
        let journaled = self.ctx.done.get(&src).is_some_and(|d| {
            d.size == st.st_size as u64 && d.mtime == (st.st_mtime, st.st_mtime_nsec)
        });
        // A final name only ever holds a complete, durable copy (temp + sync + rename), and
        // the copy carries the source's ns mtime: when resuming, a destination with the
        // source's size and mtime is this job's finished copy even if the crash came before
        // its journal record (rsync's quick check, made safe by the rename protocol).
        let quick = self.ctx.resuming && self.ctx.spec.preserve.timestamps;
        // A move whose source is still here did not finish it (the crash came before the
        // unlink): it is copied again, which is always safe, instead of trusting the old copy.
        if (journaled || quick)
            && !self.ctx.spec.remove_source
            && meta::lstat(&dst).is_ok_and(|t| {
                meta::file_type(&t) == libc::S_IFREG
                    && t.st_size == st.st_size
                    && (journaled
                        || (t.st_mtime, t.st_mtime_nsec) == (st.st_mtime, st.st_mtime_nsec))
            })
        {
            // Copied by an earlier run and unchanged since: skip it, and the temp name a
            // killed run of this job may have left beside it (nothing else would replace it).
            if !parent.as_ref().is_some_and(|p| p.made) {
                let tmp = crate::temp::temp_name(&dst, &self.ctx.temp_token);
                if let Err(e) = meta::remove_stale_temp(at.map(|a| a.1), &tmp) {
                    self.ctx.stats.error(e);
                }
            }
            if self.ctx.manifest.is_some() {
                // The manifest lists every file of the job, skipped ones too: with the hash the
                // journal kept, or (a copy finished just before a crash) by reading the copy.
                let known = self.ctx.done.get(&src).and_then(|d| d.hash);
                let hash = match known {
                    Some(h) => Ok(h),
                    None => crate::verify::reread(&dst).map(|(_, h)| h),
                };
                match hash {
                    Ok(h) => self
                        .ctx
                        .committed(&dst, &done_record(&st, st.st_size as u64, Some(h))),
                    Err(e) => self.ctx.stats.error(e),
                }
            }
            if self.ctx.spec.preserve.links && st.st_nlink > 1 {
                self.ctx
                    .link_known((st.st_dev, st.st_ino), &dst, st.st_nlink);
            }
            // A skip touches nothing: it does not count against --ops-limit.
            self.ctx.ops_limit.refund(1);
            Stats::add(&self.ctx.stats.resumed_files, 1);
            Stats::add(&self.ctx.stats.resumed_bytes, st.st_size as u64);
            child_done(&parent, &self.ctx);
            self.ctx.queues.finish();
            return Ok(());
        }
        if self.ctx.spec.dry_run {
            // Opened and sized like a real copy, so unreadable files are reported the same way.
            Stats::add(&self.ctx.stats.files, 1);
            Stats::add(&self.ctx.stats.bytes, st.st_size as u64);
            child_done(&parent, &self.ctx);
            self.ctx.queues.finish();
            return Ok(());
        }
        // A file with several names: copy it once, link the other names to the copy.
        // (A move unlinks names as it goes: a name whose siblings were already moved has
        // st_nlink 1 now, but the job still knows the inode.)
        let key = (st.st_dev, st.st_ino);
        let link_key = (self.ctx.spec.preserve.links
            && (st.st_nlink > 1 || (self.ctx.spec.remove_source && self.ctx.knows_link(key))))
        .then_some(key);
        if let Some(key) = link_key {
            let w = LinkWaiter {
                src: src.clone(),
                dst: dst.clone(),
                parent: parent.clone(),
            };
            match self.ctx.claim_link(key, st.st_nlink, w) {
                LinkClaim::First => {}
                // Made (or queued to be made) by the copy of the first name.
                LinkClaim::Handled => return Ok(()),
            }
        }
        // Created with its final permission bits when the umask leaves them intact (then no
        // chmod is needed); else 0600 until the metadata step.
        let keep = self.ctx.spec.preserve;
        let mode = st.st_mode & 0o7777;
        let create_mode = if keep.mode && mode & 0o7000 == 0 && mode & self.ctx.umask == 0 {
            mode
        } else {
            0o600
        };
        let known = parent.as_ref().map(|p| meta::Known {
            uid: self.ctx.euid,
            gid: p.new_gid,
            mode: create_mode & !self.ctx.umask,
        });
        let mut anon = self.anon_slot(st.st_size as u64);
        let opened =
            (|| {
                let ranges = meta::data_ranges(src_fd.as_raw_fd(), &st, &src, MAX_RANGES)?;
                let tmp = crate::temp::temp_name(&dst, &self.ctx.temp_token);
                let dir = at.map(|a| a.1);
                if anon.is_some() && !parent.as_ref().is_some_and(|p| p.made) {
                    // Nothing will create (and so replace) the old temp name.
                    meta::remove_stale_temp(dir, &tmp)?;
                }
                let dst_fd = match anon.is_some() {
                    true => match meta::create_anon_in(dir, &dst, create_mode) {
                        Ok(fd) => fd,
                        Err(e) if meta::anon_unsupported(&e) => {
                            // Said once per job; named temp files work everywhere.
                            if !self.ctx.anon_off.swap(true, Ordering::AcqRel) {
                                eprintln!("ferry: {e}; using named temp files");
                            }
                            anon = None;
                            meta::create_temp_in(dir, &tmp, create_mode)?
                        }
                        Err(e) => return Err(e),
                    },
                    false => meta::create_temp_in(dir, &tmp, create_mode)?,
                };
                let raw = dst_fd.as_raw_fd();
                let dense = ranges.len() == 1 && ranges[0] == (0, st.st_size as u64);
                // Files that fit one buffer are written by one write: reserving first only costs a
                // syscall. The destination's filesystem is its directory's, known without a stat.
                let big = st.st_size as u64 > self.buf_size;
                let prepared = meta::preallocate(raw, st.st_size as u64, !dense, big, &tmp)
                    .and_then(|_| match &parent {
                        Some(p) => Ok(p.dst_dev),
                        None => meta::fstat(raw, &tmp).map(|s| s.st_dev),
                    });
                match prepared {
                    Ok(dev) => Ok((dst_fd, tmp, ranges, dev)),
                    Err(e) => {
                        drop(dst_fd);
                        if anon.is_none() {
                            let _ = meta::unlink(&tmp); // best effort; `e` is what gets reported
                        }
                        Err(e)
                    }
                }
            })();
        crate::latency::record(&mut self.lat.open, open_t0.elapsed().as_micros() as u64);
        let (dst_fd, tmp, mut ranges, dev) = match opened {
            Ok(v) => v,
            Err(e) => {
                if let Some(key) = link_key {
                    self.ctx.link_failed(key);
                }
                return fail(self, e, &parent);
            }
        };
        if !self.known_devs.contains(&dev) {
            let dir = dst.parent().unwrap_or(std::path::Path::new("."));
            if let Err(e) = self.ctx.note_dst_fs(dev, dir) {
                self.ctx.stats.error(e);
            }
            self.known_devs.push(dev);
        }
        let hash = self.ctx.spec.verify.hashes();
        // Cut ranges into segments so one big file spreads over every reactor's queue (not
        // when hashing: the hash needs the bytes in order, on one reactor).
        let seg_size = if hash {
            u64::MAX
        } else {
            self.ctx.spec.segment_size
        };
        let mut segs = Vec::new();
        for (mut a, b) in ranges.drain(..) {
            while a < b {
                let e = a.saturating_add(seg_size).min(b);
                segs.push((a, e));
                a = e;
            }
        }
        let mut job = FileJob::new(
            src,
            dst,
            tmp,
            src_fd,
            dst_fd,
            st,
            parent,
            attempt,
            dev,
            link_key,
            // Hashed: all ranges are one segment, on this reactor.
            if hash { 1 } else { segs.len() },
        );
        job.known = known;
        job.unnamed = anon.is_some();
        job.anon_slot = std::sync::Mutex::new(anon);
        if self.ctx.spec.direct && st.st_size as u64 >= crate::spec::DIRECT_MIN {
            match meta::open_direct(&job.src, &job.tmp) {
                Ok(d) => job.direct = d,
                Err(e) => {
                    // The ordinary fds work: copy buffered, but say why.
                    eprintln!("ferry: {e}; copying it without O_DIRECT");
                }
            }
        }
        if segs.is_empty() {
            // Empty, or all hole: nothing to read, unless the size is a pseudo file's 0.
            let mut h = hash.then(Xxh3::new);
            if job.st.st_size == 0 {
                match meta::copy_unsized(job.src_raw(), job.dst_raw, &job.src, &job.tmp, h.as_mut())
                {
                    Ok(n) => job.unsized_len = n,
                    Err(e) => job.fail(e),
                }
            } else if let Some(h) = h.as_mut() {
                crate::verify::hash_zeros(h, job.st.st_size as u64);
            }
            if let Some(h) = h {
                job.set_digest(h.digest());
            }
            return self.finalize(Arc::new(job));
        }
        let job = Arc::new(job);
        if hash {
            self.activate(job, segs, true);
            return Ok(());
        }
        let (a, b) = segs[0];
        for &(s, e) in &segs[1..] {
            self.ctx.queues.share(Task::Segment {
                job: job.clone(),
                start: s,
                end: e,
            });
        }
        self.activate(job, vec![(a, b)], false);
        Ok(())
    }

    fn complete(&mut self, c: Completion) -> Result<(), Error> {
        if c.user_data & FSYNC_BIT != 0 {
            return self.fsync_done((c.user_data & !FSYNC_BIT) as u32, c.result);
        }
        let buf = c.user_data as u32;
        let slot = self.slots[buf as usize];
        let seg_idx = slot.seg as usize;
        let job = self.active[seg_idx]
            .as_ref()
            .expect("completion for an active segment")
            .job
            .clone();
        let op = if slot.writing { "write" } else { "read" };
        if c.result < 0 {
            let errno = -c.result;
            if (errno == libc::ENOSPC || errno == libc::EDQUOT)
                && slot.resumes != self.ctx.resumes.load(Ordering::Acquire)
                && slot.retries < MAX_OP_RETRIES
            {
                // Submitted before the last resume: try again now that space was freed.
                self.slots[buf as usize].retries += 1;
                return self.resubmit(buf, &job);
            }
            if (errno == libc::ENOSPC || errno == libc::EDQUOT)
                && self.ctx.destination_full(&job.tmp)
            {
                // Destination full: this file cannot finish now. Its temp is dropped (its
                // space given back) and it is copied again on resume; the files that fit go on.
                job.deferred.store(true, Ordering::Release);
                return self.release(buf);
            }
            if is_transient(errno) && slot.retries < MAX_OP_RETRIES {
                self.slots[buf as usize].retries += 1;
                return self.resubmit(buf, &job);
            }
            let path = if slot.writing { &job.tmp } else { &job.src };
            job.fail(Error::errno(op, path, errno));
            return self.release(buf);
        }
        let mut n = c.result as u32;
        if !slot.writing && job.direct.is_some() {
            // A direct read asks for whole blocks: bytes past the size seen at open (the file
            // grew) are not copied; the end-of-copy check sees the growth and redoes the file.
            n = n.min(slot.len - slot.done);
        }
        assert!(
            n <= slot.len - slot.done,
            "kernel moved more bytes than asked"
        );
        if n == 0 {
            if slot.writing {
                job.fail(Error {
                    op,
                    path: job.tmp.clone(),
                    kind: ErrorKind::ZeroWrite,
                });
            } else {
                // EOF before the size we saw at open: the source shrank.
                job.changed.store(true, Ordering::Release);
            }
            return self.release(buf);
        }
        let now = self.now_ns();
        let s = &mut self.slots[buf as usize];
        s.done += n;
        if s.done < s.len {
            // Short read or write: continue where it stopped, same buffer.
            return self.resubmit(buf, &job);
        }
        let h = if s.writing {
            &mut self.lat.write
        } else {
            &mut self.lat.read
        };
        crate::latency::record(h, now.saturating_sub(s.t0) / 1000);
        s.t0 = now;
        if slot.writing || job.is_failed() || self.ctx.stats.abort.load(Ordering::Acquire) {
            return self.release(buf);
        }
        if self.active[seg_idx]
            .as_ref()
            .is_some_and(|g| g.hash.is_some())
        {
            // Hashed in file order: this chunk may have to wait for earlier ones.
            self.slots[buf as usize].ready = true;
            return self.hash_ready(seg_idx);
        }
        self.start_write(buf, &job)
    }

    /// The chunk is in the buffer: write it from the very same buffer.
    fn start_write(&mut self, buf: u32, job: &FileJob) -> Result<(), Error> {
        let s = &mut self.slots[buf as usize];
        s.writing = true;
        s.done = 0;
        s.retries = 0;
        self.resubmit(buf, job)
    }

    /// Hashes the chunks at the head of the segment's read order that are fully read (holes
    /// before them count as zeros), and starts their writes.
    fn hash_ready(&mut self, seg_idx: usize) -> Result<(), Error> {
        loop {
            let Some(seg) = self.active[seg_idx].as_mut() else {
                return Ok(()); // retired by a release below
            };
            let Some(&buf) = seg.order.front() else {
                return Ok(());
            };
            let slot = self.slots[buf as usize];
            if !slot.ready {
                return Ok(());
            }
            seg.order.pop_front();
            self.slots[buf as usize].ready = false;
            let job = seg.job.clone();
            if job.is_failed() || self.ctx.stats.abort.load(Ordering::Acquire) {
                self.release(buf)?;
                continue;
            }
            let h = seg.hash.as_mut().expect("hashing segment");
            assert!(slot.off >= seg.hashed, "chunks hashed out of order");
            crate::verify::hash_zeros(h, slot.off - seg.hashed);
            h.update(self.io.arena().slice(buf, slot.len as usize));
            seg.hashed = slot.off + slot.len as u64;
            self.start_write(buf, &job)?;
        }
    }

    fn slot_job(&self, buf: u32) -> Arc<FileJob> {
        let seg = self.slots[buf as usize].seg as usize;
        self.active[seg]
            .as_ref()
            .expect("a parked chunk's segment is active")
            .job
            .clone()
    }

    /// (Re)submits the unfinished part of a slot's current phase.
    fn resubmit(&mut self, buf: u32, job: &FileJob) -> Result<(), Error> {
        if self.halted() {
            // Paused: nothing new is submitted; the chunk waits in its buffer for resume.
            self.parked.push(buf);
            return Ok(());
        }
        self.slots[buf as usize].resumes = self.ctx.resumes.load(Ordering::Acquire);
        let s = self.slots[buf as usize];
        let kind = if s.writing {
            OpKind::Write
        } else {
            OpKind::Read
        };
        let off = s.off + s.done as u64;
        let (fd, len, direct) = op_fd(job, s.writing, off, s.len - s.done);
        self.push(Op {
            kind,
            fd,
            buf,
            buf_off: s.done,
            len,
            offset: off,
            user_data: buf as u64,
            direct,
        })
    }

    /// The buffer's chunk is over (written or abandoned); maybe its segment is too.
    fn release(&mut self, buf: u32) -> Result<(), Error> {
        let seg_idx = self.slots[buf as usize].seg as usize;
        self.free.push(buf);
        self.slots[buf as usize].ready = false;
        let seg = self.active[seg_idx].as_mut().expect("active segment");
        assert!(seg.inflight > 0);
        seg.inflight -= 1;
        if let Some(i) = seg.order.iter().position(|&b| b == buf) {
            // Abandoned before its turn to be hashed (its file failed): chunks that waited
            // behind it are released by their own completions or by hash_ready.
            seg.order.remove(i);
            if let Some(&front) = seg.order.front()
                && self.slots[front as usize].ready
            {
                self.hash_ready(seg_idx)?;
            }
        }
        self.maybe_retire(seg_idx)
    }

    fn maybe_retire(&mut self, seg_idx: usize) -> Result<(), Error> {
        let Some(seg) = self.active[seg_idx].as_ref() else {
            return Ok(());
        };
        let over =
            seg.exhausted() || seg.job.is_failed() || self.ctx.stats.abort.load(Ordering::Acquire);
        if seg.inflight > 0 || !over {
            return Ok(());
        }
        self.retire(seg_idx)
    }

    /// Removes a segment with nothing in flight; the last segment of a file finalizes it.
    fn retire(&mut self, idx: usize) -> Result<(), Error> {
        let seg = self.active[idx].take().expect("active segment");
        assert_eq!(seg.inflight, 0, "retiring a segment with I/O in flight");
        assert!(
            seg.order.is_empty(),
            "retiring a segment with chunks to hash"
        );
        self.active_count -= 1;
        if let Some(mut h) = seg.hash
            && !seg.job.is_failed()
        {
            // Trailing hole, then the digest of the whole file.
            let size = seg.job.st.st_size as u64;
            assert!(seg.hashed <= size);
            crate::verify::hash_zeros(&mut h, size - seg.hashed);
            seg.job.set_digest(h.digest());
        }
        if self.ctx.stats.abort.load(Ordering::Acquire) {
            seg.job
                .fail(Error::errno("copy", &seg.job.src, libc::ECANCELED));
        }
        if seg.job.segment_done() {
            self.finalize(seg.job)?;
        }
        Ok(())
    }

    /// All data of the file is written (or it failed). Check the source did not change, set
    /// mode and times, then make it durable and give it its name.
    fn finalize(&mut self, job: Arc<FileJob>) -> Result<(), Error> {
        if !job.is_failed() {
            match meta::fstat(job.src_raw(), &job.src) {
                Ok(now)
                    if now.st_size == job.st.st_size
                        && now.st_mtime == job.st.st_mtime
                        && now.st_mtime_nsec == job.st.st_mtime_nsec => {}
                Ok(_) => job.changed.store(true, Ordering::Release),
                Err(e) => job.fail(e),
            }
        }
        if !job.is_failed()
            && let Err(e) = meta::apply_meta(
                meta::At::Fd(job.src_raw()),
                meta::At::Fd(job.dst_raw),
                &job.st,
                &job.tmp,
                &self.ctx.spec.preserve,
                self.ctx.umask,
                job.known,
            )
        {
            job.fail(e);
        }
        if job.is_failed() {
            self.abandon(job);
            return Ok(());
        }
        assert!(
            !self.ctx.spec.verify.hashes() || job.digest().is_some(),
            "a hashed copy finished without its digest"
        );
        match self.ctx.spec.fsync {
            FsyncMode::File => {
                self.fsync_wait.push_back(job);
                self.start_fsyncs()
            }
            FsyncMode::Batch => {
                let Some(fd) = job.take_dst_fd() else {
                    unreachable!("dst fd closed before finalize")
                };
                // An unnamed file's fd is its only handle: it goes to the committer.
                let slot = job
                    .anon_slot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                let anon = match slot {
                    Some(slot) => Some((fd, slot)),
                    None => {
                        if let Err(e) = meta::close(fd, &job.tmp) {
                            job.fail(e);
                            self.abandon(job);
                            return Ok(());
                        }
                        None
                    }
                };
                let f = Finished {
                    opened: job.opened,
                    src: job.src.clone(),
                    done: done_record(&job.st, job.copied_len(), job.digest()),
                    tmp: job.tmp.clone(),
                    dst: job.dst.clone(),
                    dev: job.dst_dev,
                    bytes: job.copied_len(),
                    parent: job.parent.clone(),
                    link_key: job.link_key,
                    attempt: job.attempt,
                    anon,
                };
                self.outbox.push(f);
                Ok(())
            }
        }
    }

    /// Hands the finished files to the committer.
    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let files = std::mem::take(&mut self.outbox);
        let tx = self.commit_tx.as_ref().expect("batch mode has a committer");
        if let Err(std::sync::mpsc::SendError(files)) = tx.send(files) {
            // The committer is gone (it panicked): nothing more can become durable.
            self.ctx.stats.abort.store(true, Ordering::Release);
            for f in files {
                if f.anon.is_none() {
                    let _ = meta::unlink(&f.tmp); // best effort; the error below is the report
                }
                self.ctx
                    .stats
                    .error(Error::errno("commit", &f.dst, libc::EPIPE));
                if let Some(key) = f.link_key {
                    self.ctx.link_failed(key);
                }
                child_done(&f.parent, &self.ctx);
                self.ctx.queues.finish();
            }
        }
    }

    fn start_fsyncs(&mut self) -> Result<(), Error> {
        while !self.fsync_wait.is_empty()
            && !self.free_fsyncs.is_empty()
            && self.io.in_flight() < self.io.capacity()
        {
            let job = self.fsync_wait.pop_front().expect("non-empty");
            let slot = self.free_fsyncs.pop().expect("non-empty");
            self.fsync_t0[slot as usize] = self.now_ns();
            let fd = job.dst_raw;
            self.fsyncs[slot as usize] = Some(job);
            self.push(Op {
                kind: OpKind::Fsync,
                fd,
                buf: 0,
                buf_off: 0,
                len: 0,
                offset: 0,
                user_data: FSYNC_BIT | slot as u64,
                direct: false,
            })?;
        }
        Ok(())
    }

    fn fsync_done(&mut self, slot: u32, res: i32) -> Result<(), Error> {
        let job = self.fsyncs[slot as usize]
            .take()
            .expect("fsync completion for a pending slot");
        let waited = self.now_ns().saturating_sub(self.fsync_t0[slot as usize]);
        crate::latency::record(&mut self.lat.fsync, waited / 1000);
        self.free_fsyncs.push(slot);
        // An fsync error is never retried: after a failed fsync the kernel may have dropped the
        // dirty pages, so a second fsync could "succeed" over lost data.
        let res = if res < 0 {
            Err(Error::errno("fsync", &job.tmp, -res))
        } else {
            let fd = job.take_dst_fd().expect("dst fd open until fsync");
            let size = job.copied_len();
            meta::close(fd, &job.tmp)
                .and_then(|_| match self.ctx.spec.verify {
                    // Blocks this reactor for one re-read: --fsync=file is the slow, careful mode.
                    crate::spec::VerifyMode::Full => {
                        crate::copy::commit::verify_durable(&job.tmp, size, job.digest())
                    }
                    _ => Ok(()),
                })
                .and_then(|_| meta::rename(&job.tmp, &job.dst))
                .and_then(|_| {
                    // The name must be durable before a journal record or a deleted source
                    // depends on it.
                    if self.ctx.state.is_some() || self.ctx.spec.remove_source {
                        meta::fsync_dir(meta::parent_dir(&job.dst))
                    } else {
                        Ok(())
                    }
                })
        };
        match res {
            Ok(()) => {
                Stats::add(&self.ctx.stats.files, 1);
                Stats::add(&self.ctx.stats.bytes, job.copied_len());
                let done = done_record(&job.st, job.copied_len(), job.digest());
                self.ctx.journal(&[(job.src.clone(), done)]);
                self.ctx.committed(&job.dst, &done);
                let us = job.opened.elapsed().as_micros() as u64;
                crate::latency::record(&mut self.lat.file, us);
                if let Some(key) = job.link_key {
                    self.ctx.link_done(key, &job.dst, job.digest());
                }
                let parents = if self.ctx.spec.remove_source {
                    crate::copy::remove::remove_files(
                        &self.ctx,
                        vec![crate::copy::remove::Moved {
                            src: job.src.clone(),
                            dst: job.dst.clone(),
                            done,
                            parent: job.parent.clone(),
                            attempt: job.attempt,
                        }],
                    )
                } else {
                    vec![job.parent.clone()]
                };
                for p in parents {
                    child_done(&p, &self.ctx);
                    self.ctx.queues.finish();
                }
            }
            Err(e) => {
                job.fail(e);
                self.abandon(job);
            }
        }
        Ok(())
    }

    /// Removes the temp file; a source that changed is tried again, anything else is reported.
    fn abandon(&mut self, job: Arc<FileJob>) {
        if let Some(fd) = job.take_dst_fd() {
            // The file is being discarded, so a close error changes nothing.
            let _ = meta::close(fd, &job.tmp);
        }
        // An unnamed file vanishes with its fd (and its budget slot with the job).
        if !job.unnamed
            && let Err(e) = meta::unlink(&job.tmp)
        {
            self.ctx.stats.error(e);
        }
        if let Some(key) = job.link_key {
            self.ctx.link_failed(key);
        }
        if self.ctx.stats.cancelled.load(Ordering::Acquire) {
            // Interrupted by a cancel: not a failure; the temp file is gone, the source stays.
            child_done(&job.parent, &self.ctx);
            self.ctx.queues.finish();
            return;
        }
        let err = job.take_error();
        if err.is_none() && job.deferred.load(Ordering::Acquire) {
            // No room for it: tried again on resume, same attempt (nothing was wrong with it).
            self.ctx.queues.requeue(
                self.me,
                Task::File {
                    src: job.src.clone(),
                    dst: job.dst.clone(),
                    parent: job.parent.clone(),
                    attempt: job.attempt,
                },
            );
            return;
        }
        let changed = job.changed.load(Ordering::Acquire);
        if err.is_none() && changed && job.attempt < MAX_ATTEMPTS {
            Stats::add(&self.ctx.stats.retries, 1);
            // The task's outstanding unit carries over to the retry.
            self.ctx.queues.requeue(
                self.me,
                Task::File {
                    src: job.src.clone(),
                    dst: job.dst.clone(),
                    parent: job.parent.clone(),
                    attempt: job.attempt + 1,
                },
            );
            return;
        }
        self.ctx.note_failed(&job.src, false);
        let err = err.unwrap_or_else(|| Error {
            op: "copy",
            path: job.src.clone(),
            kind: ErrorKind::SourceChanged {
                attempts: job.attempt,
            },
        });
        self.ctx.stats.error(err);
        child_done(&job.parent, &self.ctx);
        self.ctx.queues.finish();
    }
}
