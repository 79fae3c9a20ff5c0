//! The file-copy driver of one reactor: it takes tasks, keeps up to `queue_depth` chunks in
//! flight across its active files and drives each through its state machine (open.rs: open
//! and create; chunk.rs: read -> [hash] -> write; finish.rs: metadata, commit or fsync).

use super::chunk::{Seg, Slot};
use super::slotset::SlotSet;
use super::task::{Ctx, FileJob, Finished, Task};
use super::walk;
use crate::error::Error;
use crate::io::Backend;
use crate::reactor::{self, Driver, Idle, Ring};
use crate::spec::FsyncMode;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

/// Tasks put back by the walk's back-pressure in one turn of the take loop before it yields.
const MAX_DEFERRALS: u32 = 16;

/// The copy driver's state for one op in flight.
pub enum CopyOp {
    /// A read or write of the chunk in this arena buffer.
    Chunk(u32),
    /// The per-file fsync of a finished file (`--fsync=file`), submitted at `t0` ns.
    Fsync { job: Arc<FileJob>, t0: u64 },
}

/// Control flags read once at the start of a turn.
#[derive(Clone, Copy, Default)]
pub(super) struct Turn {
    pub aborting: bool,
    /// No new file starts.
    pub paused: bool,
    /// No new I/O at all (a user's pause, not a full destination's: then the files already
    /// started go on).
    pub halted: bool,
}

pub struct CopyReactor {
    pub(super) me: usize,
    pub(super) ctx: Arc<Ctx>,
    pub(super) ring: Ring<CopyOp>,
    pub(super) commit_tx: Option<SyncSender<Vec<Finished>>>,
    /// Finished files not yet handed to the committer: sent once per loop turn, as one message
    /// (one wake-up of the committer per batch of completions, not per file).
    pub(super) outbox: Vec<Finished>,
    pub(super) buf_size: u64,
    pub(super) free: Vec<u32>,
    pub(super) slots: Vec<Slot>,
    pub(super) active: Vec<Option<Seg>>,
    pub(super) active_count: usize,
    /// Slots of `active` holding a segment.
    pub(super) taken: SlotSet,
    /// Slots whose segment has data left to read (not exhausted): what `issue_reads` visits.
    /// A segment only leaves it by its last read or its retirement, and an exhausted segment
    /// always has a chunk in flight, so no other slot can need a read or a retirement there.
    pub(super) unread: SlotSet,
    /// Streaming hashers of retired segments, reused (see `chunk::hasher`). Boxed: they move
    /// to and from `Seg::hash` as they are, without copying their ~600-byte state.
    #[allow(clippy::vec_box)]
    pub(super) hashers: Vec<Box<xxhash_rust::xxh3::Xxh3>>,
    /// Per-file fsyncs in flight, at most one per buffer.
    pub(super) fsyncs: usize,
    pub(super) fsync_wait: VecDeque<Arc<FileJob>>,
    pub(super) known_devs: Vec<u64>,
    /// getdents64 batches, reused for every directory this reactor lists.
    pub(super) dirbuf: Vec<u8>,
    /// Chunks whose next op waits for resume (bounded by the buffer count).
    pub(super) parked: Vec<u32>,
    /// Counted in `ctx.steer.drained` (see `drain_full`).
    pub(super) drained: bool,
    /// Files to try again later (transient errors), with when.
    pub(super) delayed: Vec<(Instant, Task)>,
    pub(super) epoch: Instant,
    pub(super) turn: Turn,
    /// Bytes of reads started in this turn (see `chunk::TURN_READ`).
    pub(super) turn_read: u64,
    /// This turn stopped starting reads at `TURN_READ` with buffers free.
    pub(super) held: bool,
    merged: Instant,
    /// This reactor's latencies, merged into the job's at exit.
    pub(super) lat: crate::latency::Latencies,
}

impl CopyReactor {
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
        CopyReactor {
            me,
            ctx,
            ring: Ring::new(me, io),
            commit_tx,
            outbox: Vec::new(),
            buf_size,
            free: (0..depth as u32).rev().collect(),
            slots: vec![Slot::default(); depth],
            active: (0..depth).map(|_| None).collect(),
            active_count: 0,
            taken: SlotSet::new(depth),
            unread: SlotSet::new(depth),
            hashers: Vec::new(),
            fsyncs: 0,
            fsync_wait: VecDeque::new(),
            known_devs: Vec::new(),
            dirbuf: vec![0u8; crate::dirents::DIRENT_BUF],
            parked: Vec::with_capacity(depth),
            drained: false,
            delayed: Vec::new(),
            epoch: Instant::now(),
            turn: Turn::default(),
            turn_read: 0,
            held: false,
            merged: Instant::now(),
            lat: crate::latency::Latencies::default(),
        }
    }

    /// The backend's name ("io_uring", "sync").
    pub fn backend(&self) -> &'static str {
        self.ring.name()
    }

    /// Runs until the job has no outstanding work (or is aborted). A returned error is fatal
    /// for the job (the ring itself failed).
    pub fn run(&mut self) -> Result<(), Error> {
        let r = reactor::run(self);
        if r.is_err() {
            self.ctx.steer.stop.abort();
        }
        self.flush_outbox();
        self.ctx.stats.merge_latencies(&self.lat);
        r
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

    /// No new file may start (see `Steering::no_new_files`).
    pub(super) fn no_new_files(&self) -> bool {
        self.ctx.steer.no_new_files()
    }

    /// No new I/O at all (see `Steering::halted`).
    pub(super) fn halted(&self) -> bool {
        self.ctx.steer.halted()
    }

    /// --fail-fast met a full destination and this reactor's started files are all finished
    /// (committed, or failed): counted once; the last reactor to get here stops the job.
    fn drain_full(&mut self) {
        let steer = &self.ctx.steer;
        if !steer.stop.full_stopped() || self.drained {
            return;
        }
        self.drained = true;
        if steer.drained.fetch_add(1, Ordering::AcqRel) + 1 == self.ctx.queues.reactors() {
            steer.stop.abort();
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

    pub(super) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A slot for an unnamed temp file (O_TMPFILE + linkat at commit), when this file can
    /// have one: group commit (the per-file fsync path renames), no commit hook (rebalance
    /// renames under its own rules), no --verify=full (it re-reads temp files by name), not
    /// an O_DIRECT file (it reopens its temp file by name), and the budget allows.
    pub(super) fn anon_slot(&self, size: u64) -> Option<super::task::AnonSlot> {
        if !self.anon_eligible() || (self.ctx.spec.direct && size >= crate::spec::DIRECT_MIN) {
            return None;
        }
        self.ctx.fds.anon_slot()
    }

    /// Whether this job's files get unnamed temp files (size aside; see `anon_slot`).
    fn anon_eligible(&self) -> bool {
        let spec = &self.ctx.spec;
        spec.fsync == FsyncMode::Batch
            && self.ctx.out.hook.is_none()
            && spec.verify != crate::spec::VerifyMode::Full
            && self.ctx.fds.anon_cap > 0
            && !self.ctx.fds.anon_off.load(Ordering::Acquire)
            && spec.temp != crate::spec::TempMode::Named
            && self.ctx.tree.staged.is_empty()
    }

    /// A free unnamed-temp slot (another reactor may still take it first: then that file
    /// falls back to a named temp file).
    fn anon_room(&self) -> bool {
        self.ctx.fds.anon_room()
    }

    fn can_take(&self) -> bool {
        self.active_count < self.active.len() && !self.free.is_empty() && !self.has_issuable()
    }

    fn has_issuable(&self) -> bool {
        self.unread
            .iter()
            .filter_map(|i| self.active[i].as_ref())
            .any(|s| !s.exhausted() && !s.job.is_failed())
    }

    /// Starts a task; false when it was only put back to wait (walk back-pressure).
    fn take_task(&mut self, task: Task) -> Result<bool, Error> {
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
                    self.ctx
                        .queues
                        .requeue_last(Task::file(&src, &dst, &parent, attempt));
                    return Ok(false);
                }
                self.open_file(src, dst, parent, attempt)?
            }
            Task::Segment { job, start, end } => self.activate(job, vec![(start, end)], false),
        }
        Ok(true)
    }
}

impl Driver for CopyReactor {
    type Op = CopyOp;

    fn ring(&mut self) -> &mut Ring<CopyOp> {
        &mut self.ring
    }

    fn flush(&mut self) -> Result<(), Error> {
        // Before anything that may wait: the committer must see every finished file.
        self.flush_outbox();
        if self.merged.elapsed() >= Duration::from_secs(1) {
            // Live quantiles for --metrics and status: hand over what was recorded.
            self.ctx.stats.merge_latencies(&self.lat);
            self.lat.reset();
            self.merged = Instant::now();
        }
        let aborting = self.ctx.steer.stop.aborted();
        let paused = self.no_new_files() && !aborting;
        (self.turn_read, self.held) = (0, false);
        self.turn = Turn {
            aborting,
            paused,
            halted: paused && self.halted(),
        };
        Ok(())
    }

    fn timers(&mut self) -> Result<(), Error> {
        let Turn {
            aborting, halted, ..
        } = self.turn;
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
        self.start_fsyncs()
    }

    fn issue(&mut self) -> Result<(), Error> {
        if self.turn.halted {
            return Ok(());
        }
        self.issue_reads()
    }

    fn take(&mut self) -> Result<bool, Error> {
        let mut took = false;
        let mut deferred = 0;
        // The pause flag is read again for every task: a pause (or a full destination met
        // by the previous task) must stop this loop at once, not after the queue drains.
        while !self.turn.aborting
            && !self.no_new_files()
            && self.can_take()
            && self.ctx.steer.ops_limit.try_take(1)
        {
            let Some(task) = self.ctx.queues.pop(self.me) else {
                self.ctx.steer.ops_limit.refund(1);
                break;
            };
            if !self.take_task(task)? {
                // A directory was put back to wait behind the queued files. Waiting work is
                // popped last, so the next pop finds other work if there is any; only a
                // run of deferrals means nothing else is left, and then taking it again
                // at once would spin: what is in flight (or the idle back-off) comes first.
                self.ctx.steer.ops_limit.refund(1);
                deferred += 1;
                if deferred >= MAX_DEFERRALS {
                    break;
                }
                continue;
            }
            took = true;
            self.issue_reads()?;
        }
        Ok(took)
    }

    fn complete(&mut self, op: CopyOp, result: i32) -> Result<(), Error> {
        match op {
            CopyOp::Chunk(buf) => self.chunk_done(buf, result),
            CopyOp::Fsync { job, t0 } => {
                self.fsync_done(job, t0, result);
                Ok(())
            }
        }
    }

    fn held(&self) -> bool {
        self.held
    }

    fn idle(&mut self, took: bool) -> Idle {
        let Turn {
            aborting,
            paused,
            halted,
        } = self.turn;
        if took
            || (!halted && self.active_count > 0 && self.parked.is_empty())
            || !self.fsync_wait.is_empty()
        {
            if !took && self.has_issuable() {
                // Throttled: nothing in flight and no tokens yet.
                return Idle::Nap(Duration::from_micros(500));
            }
            return Idle::Again;
        }
        if paused {
            // Everything in flight is done; wait for resume (checked every millisecond,
            // well within the 100 ms a pause may take).
            self.drain_full();
            return Idle::Nap(Duration::from_millis(1));
        }
        if aborting || self.ctx.queues.outstanding() == 0 {
            return Idle::Exit;
        }
        // Others still hold work that may produce tasks for us: back off, bounded.
        Idle::Backoff
    }
}
