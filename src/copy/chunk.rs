//! The per-chunk state machine of a file copy: read into buffer i -> [hash in file order] ->
//! write from buffer i -> buffer free. A short op continues where it stopped; failures go
//! through the one errno policy (`io::errno`).

use super::driver::{CopyOp, CopyReactor};
use super::task::FileJob;
use crate::error::{Error, ErrorKind};
use crate::io::errno::{self, Verdict};
use crate::io::{BufIo, Op, OpKind};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use xxhash_rust::xxh3::Xxh3;

/// Resubmissions of one op after EAGAIN/EINTR before the file fails.
const MAX_OP_RETRIES: u8 = 16;

/// Byte ranges of a file this reactor is copying: one segment, or with checksums on, every
/// data range of the file (a streamed hash needs the bytes in order, so the file stays here).
pub struct Seg {
    pub job: Arc<FileJob>,
    pub next: u64,
    pub end: u64,
    /// Ranges still to start, last first.
    pub more: Vec<(u64, u64)>,
    pub inflight: u32,
    /// Streamed checksum: the state, and how far it has hashed.
    pub hash: Option<Box<Xxh3>>,
    pub hashed: u64,
    /// Chunks in the order they were read from the file, so they are hashed in file order
    /// (bounded by the buffer count).
    pub order: VecDeque<u32>,
}

impl Seg {
    pub fn exhausted(&self) -> bool {
        self.next >= self.end && self.more.is_empty()
    }

    /// The next range to read, when this segment has one left.
    fn next_range(&mut self) -> bool {
        if self.next >= self.end
            && let Some((a, b)) = self.more.pop()
        {
            self.next = a;
            self.end = b;
        }
        self.next < self.end
    }
}

/// The largest chunk of a file read through the page cache (an O_DIRECT one uses the whole
/// buffer: its size is the device request's). A cached chunk is copied into the buffer by the
/// read, hashed, then copied out by the write: at this size the three passes find it in the
/// core's L2 cache instead of memory. Measured (mixed, warm, paired `farm-bench`): 512 KiB
/// chunks, 64 at once -> 256 KiB with at most 256 KiB of reads a turn: CPU -16 % on tmpfs.
pub(super) const CACHED_CHUNK: u64 = 256 << 10;

/// Bytes of reads one reactor turn starts (at least one chunk). Reads of cached data complete
/// inside the submit, so a turn's reads are then hashed and written in the same turn: more
/// than fits the cache went through memory three times (the default 64 x 512 KiB: 32 MiB).
/// A turn that stops here does not wait for a completion (`Driver::held`): with the data on
/// the disk, the next turns fill the queue as before.
pub(super) const TURN_READ: u64 = 256 << 10;

/// The chunk held by one buffer.
#[derive(Clone, Copy, Default)]
pub struct Slot {
    pub seg: u32,
    pub off: u64,
    pub len: u32,
    pub done: u32,
    pub writing: bool,
    pub retries: u8,
    /// When the current phase (read or write) was first submitted, ns since the reactor began.
    pub t0: u64,
    /// The job's resume count when the op was last submitted: an ENOSPC from before the last
    /// resume says nothing about the space freed since.
    pub resumes: u64,
    /// Read in full, waiting for the chunks before it to be hashed.
    pub ready: bool,
}

/// The op for the unfinished part of a chunk's phase: aligned parts of a big file go through
/// its O_DIRECT fds (reads ask for whole blocks, the buffer has room: buffers are block
/// multiples), the rest (an unaligned tail, an unaligned remainder after a short op) through
/// the ordinary ones. `buf` is the arena buffer the slot's chunk uses (`Arena::pick`).
fn chunk_op(job: &FileJob, buf: u32, s: &Slot) -> Op {
    use std::os::fd::AsRawFd;
    const A: u64 = crate::spec::DIRECT_ALIGN;
    let (off, len) = (s.off + s.done as u64, s.len - s.done);
    let mut d = BufIo {
        fd: if s.writing {
            job.dst_raw
        } else {
            job.src_raw()
        },
        buf,
        buf_off: s.done,
        len,
        offset: off,
        direct: false,
    };
    if let Some((src, dst)) = &job.direct
        && off.is_multiple_of(A)
    {
        if !s.writing {
            d.fd = src.as_raw_fd();
            d.len = (len as u64).next_multiple_of(A) as u32;
            d.direct = true;
        } else if (len as u64).is_multiple_of(A) {
            d.fd = dst.as_raw_fd();
            d.direct = true;
        }
    }
    if s.writing { Op::Write(d) } else { Op::Read(d) }
}

impl CopyReactor {
    /// Fills free buffers with reads, oldest active file first (so files finish early).
    pub(super) fn issue_reads(&mut self) -> Result<(), Error> {
        if self.ctx.steer.stop.aborted() || self.halted() {
            return Ok(());
        }
        // Only segments with data left to read (see `unread`), in slot order.
        let mut at = self.unread.next_from(0);
        while let Some(idx) = at {
            at = self.unread.next_from(idx + 1);
            // A segment whose file failed elsewhere before it issued anything: retire it now,
            // no completion will come for it.
            if matches!(&self.active[idx], Some(s) if s.inflight == 0 && s.job.is_failed()) {
                self.retire(idx)?;
                continue;
            }
            let go = self.read_segment(idx);
            if matches!(&self.active[idx], Some(s) if s.exhausted()) {
                self.unread.remove(idx);
            }
            if !go? {
                return Ok(()); // throttled: try again after the next completion or nap
            }
        }
        Ok(())
    }

    /// Starts reads of segment `idx` while buffers are free; false when throttled.
    fn read_segment(&mut self, idx: usize) -> Result<bool, Error> {
        while !self.free.is_empty() {
            let Some(seg) = self.active[idx].as_mut() else {
                break;
            };
            if !seg.next_range() || seg.job.is_failed() {
                break;
            }
            // Under a byte limit, chunks are no bigger than its burst.
            let size = if seg.job.direct.is_some() {
                self.buf_size
            } else {
                self.buf_size.min(CACHED_CHUNK)
            };
            let most = self.ctx.steer.bytes_limit.chunk(size);
            let len = (seg.end - seg.next).min(most) as u32;
            if self.turn_read > 0 && self.turn_read + len as u64 > TURN_READ {
                self.held = true;
                return Ok(false);
            }
            if !self.ctx.steer.bytes_limit.try_take(len as u64) {
                return Ok(false);
            }
            self.start_read(idx, len)?;
        }
        Ok(true)
    }

    /// Reads the next `len` bytes of segment `idx` into a free buffer.
    fn start_read(&mut self, idx: usize, len: u32) -> Result<(), Error> {
        let t0 = self.now_ns();
        let resumes = self.ctx.steer.resumes();
        let seg = self.active[idx].as_mut().expect("active segment");
        let off = seg.next;
        seg.next += len as u64;
        seg.inflight += 1;
        let buf = self.free.pop().expect("checked non-empty");
        self.turn_read += len as u64;
        if seg.hash.is_some() {
            seg.order.push_back(buf);
        }
        let slot = Slot {
            seg: idx as u32,
            off,
            len,
            t0,
            resumes,
            ..Slot::default()
        };
        self.slots[buf as usize] = slot;
        let op = chunk_op(&seg.job, self.ring.arena().pick(buf, len), &slot);
        self.ring.push(op, CopyOp::Chunk(buf))
    }

    /// A chunk's read or write completed with `result`.
    pub(super) fn chunk_done(&mut self, buf: u32, result: i32) -> Result<(), Error> {
        let slot = self.slots[buf as usize];
        let seg_idx = slot.seg as usize;
        let job = self.active[seg_idx]
            .as_ref()
            .expect("completion for an active segment")
            .job
            .clone();
        if result < 0 {
            return self.chunk_failed(buf, &slot, &job, -result);
        }
        let mut n = result as u32;
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
                    op: "write",
                    target: crate::error::Target::Path(job.tmp.clone()),
                    kind: ErrorKind::ZeroWrite,
                });
            } else {
                // EOF before the size we saw at open: the source shrank.
                job.changed.store(true, Ordering::Release);
            }
            return self.release(buf);
        }
        self.chunk_moved(buf, n, job)
    }

    /// `n` more bytes of the chunk's phase moved: continue it, or start the next phase.
    fn chunk_moved(&mut self, buf: u32, n: u32, job: Arc<FileJob>) -> Result<(), Error> {
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
        let (writing, seg_idx) = (s.writing, s.seg as usize);
        if writing || job.is_failed() || self.ctx.steer.stop.aborted() {
            // Dropped first: the last segment's release finalizes the file, which then
            // finds its job unshared and moves its paths instead of copying them.
            drop(job);
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

    /// A chunk's op failed with `errno`: retried, parked for room, or the file fails.
    fn chunk_failed(
        &mut self,
        buf: u32,
        slot: &Slot,
        job: &Arc<FileJob>,
        errno: i32,
    ) -> Result<(), Error> {
        let kind = if slot.writing {
            OpKind::Write
        } else {
            OpKind::Read
        };
        let retry = slot.retries < MAX_OP_RETRIES;
        match errno::on_completion(kind, errno) {
            Verdict::Park if retry && slot.resumes != self.ctx.steer.resumes() => {
                // Submitted before the last resume: try again now that space was freed.
                self.slots[buf as usize].retries += 1;
                return self.resubmit(buf, job);
            }
            Verdict::Park if self.ctx.destination_full(&job.tmp) => {
                // Destination full: this file cannot finish now. Its temp is dropped (its
                // space given back) and it is copied again on resume; the files that fit go on.
                job.deferred.store(true, Ordering::Release);
                return self.release(buf);
            }
            Verdict::Retry if retry => {
                self.slots[buf as usize].retries += 1;
                return self.resubmit(buf, job);
            }
            _ => {}
        }
        let (op, path) = if slot.writing {
            ("write", &job.tmp)
        } else {
            ("read", &job.src)
        };
        job.fail(Error::errno(op, path, errno));
        self.release(buf)
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
            if job.is_failed() || self.ctx.steer.stop.aborted() {
                self.release(buf)?;
                continue;
            }
            let h = seg.hash.as_mut().expect("hashing segment");
            assert!(slot.off >= seg.hashed, "chunks hashed out of order");
            crate::verify::hash_zeros(h, slot.off - seg.hashed);
            let arena = self.ring.arena();
            h.update(arena.slice(arena.pick(buf, slot.len), slot.len as usize));
            seg.hashed = slot.off + slot.len as u64;
            self.start_write(buf, &job)?;
        }
    }

    pub(super) fn slot_job(&self, buf: u32) -> Arc<FileJob> {
        let seg = self.slots[buf as usize].seg as usize;
        self.active[seg]
            .as_ref()
            .expect("a parked chunk's segment is active")
            .job
            .clone()
    }

    /// (Re)submits the unfinished part of a slot's current phase.
    pub(super) fn resubmit(&mut self, buf: u32, job: &FileJob) -> Result<(), Error> {
        if self.halted() {
            // Paused: nothing new is submitted; the chunk waits in its buffer for resume.
            self.parked.push(buf);
            return Ok(());
        }
        self.slots[buf as usize].resumes = self.ctx.steer.resumes();
        let slot = &self.slots[buf as usize];
        let op = chunk_op(job, self.ring.arena().pick(buf, slot.len), slot);
        self.ring.push(op, CopyOp::Chunk(buf))
    }

    /// The buffer's chunk is over (written or abandoned); maybe its segment is too.
    pub(super) fn release(&mut self, buf: u32) -> Result<(), Error> {
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
        let over = seg.exhausted() || seg.job.is_failed() || self.ctx.steer.stop.aborted();
        if seg.inflight > 0 || !over {
            return Ok(());
        }
        self.retire(seg_idx)
    }

    /// Starts copying `ranges` (in file order) of a file; `hash`: stream its checksum.
    pub(super) fn activate(&mut self, job: Arc<FileJob>, mut ranges: Vec<(u64, u64)>, hash: bool) {
        assert!(!ranges.is_empty() && ranges.iter().all(|(a, b)| a < b));
        ranges.reverse();
        let (start, end) = ranges.pop().expect("non-empty");
        let idx = self
            .taken
            .first_absent(self.active.len())
            .expect("can_take checked for a free active slot");
        assert!(self.active[idx].is_none(), "slot set out of step");
        self.taken.insert(idx);
        self.unread.insert(idx);
        self.active[idx] = Some(Seg {
            job,
            next: start,
            end,
            more: ranges,
            inflight: 0,
            hash: hash.then(|| self.hasher()),
            hashed: 0,
            order: VecDeque::new(),
        });
        self.active_count += 1;
    }

    /// A streaming hasher, reset: a kept one when there is one (its state is ~600 bytes,
    /// allocated and filled per file otherwise).
    fn hasher(&mut self) -> Box<Xxh3> {
        match self.hashers.pop() {
            Some(mut h) => {
                h.reset();
                h
            }
            None => Box::new(Xxh3::new()),
        }
    }

    /// Keeps a finished hasher for the next file (at most one per active slot).
    fn keep_hasher(&mut self, h: Box<Xxh3>) {
        if self.hashers.len() < self.active.len() {
            self.hashers.push(h);
        }
    }

    /// Removes a segment with nothing in flight; the last segment of a file finalizes it.
    pub(super) fn retire(&mut self, idx: usize) -> Result<(), Error> {
        let seg = self.active[idx].take().expect("active segment");
        self.taken.remove(idx);
        self.unread.remove(idx);
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
            self.keep_hasher(h);
        }
        if self.ctx.steer.stop.aborted() {
            seg.job
                .fail(Error::errno("copy", &seg.job.src, libc::ECANCELED));
        }
        if seg.job.segment_done() {
            self.finalize(seg.job)?;
        }
        Ok(())
    }
}
