//! io_uring backend: one ring per reactor, created on the reactor's own pinned thread, with the
//! reactor's arena registered once as fixed buffers.
//!
//! Kernel features used (and what happens without them):
//! - io_uring_setup, READ/WRITE/FSYNC: 5.1; READ_FIXED/WRITE_FIXED with registered buffers: 5.1.
//!   Buffer registration can fail with ENOMEM/EPERM under RLIMIT_MEMLOCK (before 5.12 always
//!   counted; after, for users without CAP_IPC_LOCK): we then use plain READ/WRITE on the same
//!   memory.
//! - IORING_SETUP_SINGLE_ISSUER: 6.0; IORING_SETUP_DEFER_TASKRUN: 6.1 (needs SINGLE_ISSUER).
//!   Completions are then posted only when we enter with GETEVENTS, which we always do. Older
//!   kernels reject the flags with EINVAL and we build a plain ring.
//! - IORING_FEAT_NODROP (5.5): not relied on; in-flight ops never exceed the CQ size.
//! - Sockets: SEND/RECV 5.6; SEND_ZC 6.0 (two completions: the result with F_MORE, then the
//!   notification F_NOTIF once the kernel let go of the buffer; reported as one, at the
//!   notification), its registered buffers (IORING_RECVSEND_FIXED_BUF) 6.0; a plain SEND from
//!   a registered buffer only on kernels that take that flag for SEND (asked once per process
//!   by [`send_takes_fixed`]: one byte over a socketpair; EINVAL before). Waiting with a
//!   timeout (`submit_within`) needs IORING_FEAT_EXT_ARG, 5.11 (older: the wait is a poll of
//!   the ring's fd).

use super::{Arena, Backend, BufIo, Completion, Op};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::collections::HashMap;
use std::io;
use std::sync::OnceLock;
use std::time::Duration;

pub struct UringBackend {
    // Field order matters: the ring (which holds the kernel's pins on the arena) drops first.
    ring: IoUring,
    arena: Arena,
    /// Buffers are registered (all at once, or the small ones at once and each big one at its
    /// first use: `Pinned`).
    fixed: bool,
    /// Per buffer, with a sparse table: whether it is registered yet (empty: all are).
    pinned: Vec<Pinned>,
    capacity: usize,
    in_flight: usize,
    queued: usize,
    /// Buffered writes done at push time (their completions wait here for the next reap).
    inline: std::collections::VecDeque<super::Completion>,
    /// Zero-copy sends whose result came and whose notification has not (user_data ->
    /// result); at most one per op in flight.
    zc_result: HashMap<u64, i32>,
    /// Plain sends take the registered buffer (see [`send_takes_fixed`]).
    send_fixed: bool,
}

/// IORING_OP_SEND of `len` bytes at `p`, which lie in registered buffer `idx`.
fn send_fixed_entry(fd: types::Fd, p: *const u8, len: u32, idx: u16) -> squeue::Entry {
    let e = opcode::SendZc::new(fd, p, len)
        .buf_index(Some(idx))
        .flags(libc::MSG_NOSIGNAL)
        .build();
    // SAFETY: squeue::Entry is a #[repr(C)] wrapper of the 64-byte io_uring_sqe, whose first
    // byte is the opcode. SEND and SEND_ZC read every other field the same way (fd, addr,
    // len, msg_flags, ioprio = IORING_RECVSEND_FIXED_BUF, buf_index), so the entry becomes a
    // plain send from the registered buffer.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(e) };
    raw[0] = opcode::Send::CODE;
    // SAFETY: the same 64 bytes back, with a valid opcode.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// Whether this kernel's IORING_OP_SEND takes a registered buffer: asked once per process
/// by sending one byte from one over a socketpair (EINVAL where it does not).
pub fn send_takes_fixed() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| ask_send_fixed().unwrap_or(false))
}

fn ask_send_fixed() -> io::Result<bool> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    let pair = unsafe {
        use std::os::fd::FromRawFd;
        [
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        ]
    };
    let mut b = UringBackend::new(Arena::new(4096, 1), 2)?;
    if !b.fixed {
        return Ok(false);
    }
    let entry = send_fixed_entry(types::Fd(fds[0]), b.arena.ptr(0, 0), 1, 0);
    // SAFETY: one byte of the registered buffer, owned by `b`, which outlives the op (it is
    // reaped below); the socket stays open until `pair` drops, after the reap.
    unsafe { b.ring.submission().push(&entry.user_data(1)) }
        .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
    b.ring.submit_and_wait(1)?;
    let res = b
        .ring
        .completion()
        .next()
        .map_or(-libc::EIO, |c| c.result());
    drop(pair);
    Ok(res == 1)
}

/// Registration state of one buffer in a sparse table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pinned {
    No,
    Yes,
    /// Its registration failed: it is used with plain reads and writes.
    Failed,
}

/// Registers the arena's buffers: a sparse table (5.19) with the small buffers filled in at
/// once and each big one at its first use, so a job of small files never pins (and the kernel
/// never clears) the big buffers; else all at once. Returns whether buffers are fixed, and
/// the per-buffer state of a sparse table (empty when all were registered at once).
fn register(ring: &IoUring, arena: &Arena) -> (bool, Vec<Pinned>) {
    let n = arena.buffers();
    if n > u16::MAX as usize {
        return (false, Vec::new());
    }
    let sub = ring.submitter();
    if arena.buffers() > arena.count() && sub.register_buffers_sparse(n as u32).is_ok() {
        let small: Vec<libc::iovec> = (arena.count()..n).map(|i| arena.iovec(i as u32)).collect();
        let mut pinned = vec![Pinned::No; n];
        // SAFETY: the iovecs point into `arena`, which the backend owns and drops after the
        // ring (field order), so the registered memory outlives its registration.
        let ok = unsafe { sub.register_buffers_update(arena.count() as u32, &small, None) }.is_ok();
        let state = if ok { Pinned::Yes } else { Pinned::Failed };
        pinned[arena.count()..].fill(state);
        return (true, pinned);
    }
    // SAFETY: as above.
    let all = unsafe { sub.register_buffers(&arena.iovecs()) }.is_ok();
    (all, Vec::new())
}

/// Builds a ring with SINGLE_ISSUER|DEFER_TASKRUN when the kernel has them.
fn build_ring(entries: u32) -> io::Result<(IoUring, bool)> {
    match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
    {
        Ok(r) => Ok((r, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Ok((IoUring::builder().build(entries)?, false))
        }
        Err(e) => Err(e),
    }
}

impl UringBackend {
    /// Creates a tiny ring and checks the opcodes we use; returns whether the fast setup flags
    /// are available.
    pub fn probe() -> io::Result<bool> {
        let (ring, fast) = build_ring(4)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [
            opcode::Read::CODE,
            opcode::Write::CODE,
            opcode::Fsync::CODE,
            opcode::ReadFixed::CODE,
            opcode::WriteFixed::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {code} not supported by this kernel"),
                ));
            }
        }
        Ok(fast)
    }

    /// Checks the socket opcodes (SEND, RECV: 5.6) on a tiny ring; Ok(true) when SEND_ZC
    /// (6.0) is there too.
    pub fn probe_sockets() -> io::Result<bool> {
        let (ring, _) = build_ring(4)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [opcode::Send::CODE, opcode::Recv::CODE] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring socket opcode {code} not supported by this kernel"),
                ));
            }
        }
        Ok(probe.is_supported(opcode::SendZc::CODE))
    }

    /// `capacity` bounds in-flight ops; the SQ gets that many entries and the CQ twice as many.
    pub fn new(arena: Arena, capacity: usize) -> io::Result<Self> {
        Self::with_ring(arena, capacity, true)
    }

    /// [`UringBackend::new`] without SINGLE_ISSUER|DEFER_TASKRUN: for a ring that moves to
    /// another thread after it is made (a connection made on one thread and driven by its
    /// stream's); a single-issuer ring answers another task's submit with EEXIST.
    pub fn movable(arena: Arena, capacity: usize) -> io::Result<Self> {
        Self::with_ring(arena, capacity, false)
    }

    fn with_ring(arena: Arena, capacity: usize, fast: bool) -> io::Result<Self> {
        assert!(capacity > 0);
        let entries = (capacity as u32).next_power_of_two();
        let ring = if fast {
            build_ring(entries)?.0
        } else {
            IoUring::builder().build(entries)?
        };
        let cq = ring.params().cq_entries() as usize;
        assert!(
            capacity <= cq,
            "in-flight ops must fit the completion queue"
        );
        let (fixed, pinned) = register(&ring, &arena);
        Ok(UringBackend {
            ring,
            arena,
            fixed,
            pinned,
            capacity,
            in_flight: 0,
            queued: 0,
            inline: std::collections::VecDeque::new(),
            zc_result: HashMap::new(),
            send_fixed: false,
        })
    }

    /// Sends ([`Op::Send`]) go from the registered buffer when the kernel takes that (asks
    /// it once per process); otherwise they are plain sends of the same memory.
    pub fn for_sockets(mut self) -> Self {
        self.send_fixed = self.fixed && send_takes_fixed();
        self
    }

    pub fn sends_fixed(&self) -> bool {
        self.send_fixed
    }

    pub fn uses_fixed_buffers(&self) -> bool {
        self.fixed
    }

    /// Whether buffer `buf` can be used as a fixed buffer: registered now if it was not yet
    /// (its first use; no op is in flight on it then).
    fn fixed_buf(&mut self, buf: u32) -> bool {
        let Some(state) = self.pinned.get(buf as usize).copied() else {
            return self.fixed;
        };
        match state {
            Pinned::Yes => true,
            Pinned::Failed => false,
            Pinned::No => {
                let iov = [self.arena.iovec(buf)];
                // SAFETY: as in register(): the memory is the arena's, which outlives the ring.
                let ok = unsafe {
                    self.ring
                        .submitter()
                        .register_buffers_update(buf, &iov, None)
                }
                .is_ok();
                // Not registered (RLIMIT_MEMLOCK): plain reads and writes of the same memory.
                self.pinned[buf as usize] = if ok { Pinned::Yes } else { Pinned::Failed };
                ok
            }
        }
    }

    fn entry(&mut self, op: &Op, user_data: u64) -> squeue::Entry {
        let fixed = match op {
            Op::Read(d) | Op::Write(d) | Op::SendZc(d) => self.fixed && self.fixed_buf(d.buf),
            Op::Send(d) => self.send_fixed && self.fixed_buf(d.buf),
            Op::Fsync { .. } | Op::Recv(_) => false,
        };
        let e = match op {
            Op::Read(d) => {
                let (fd, p) = self.target(d);
                if fixed {
                    opcode::ReadFixed::new(fd, p, d.len, d.buf as u16)
                        .offset(d.offset)
                        .build()
                } else {
                    opcode::Read::new(fd, p, d.len).offset(d.offset).build()
                }
            }
            Op::Write(d) => {
                let (fd, p) = self.target(d);
                if fixed {
                    opcode::WriteFixed::new(fd, p, d.len, d.buf as u16)
                        .offset(d.offset)
                        .build()
                } else {
                    opcode::Write::new(fd, p, d.len).offset(d.offset).build()
                }
            }
            Op::Fsync { fd } => opcode::Fsync::new(types::Fd(*fd)).build(),
            Op::Send(d) => {
                let (fd, p) = self.target(d);
                if fixed {
                    send_fixed_entry(fd, p, d.len, d.buf as u16)
                } else {
                    opcode::Send::new(fd, p, d.len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                }
            }
            Op::SendZc(d) => {
                let (fd, p) = self.target(d);
                opcode::SendZc::new(fd, p, d.len)
                    .buf_index(fixed.then_some(d.buf as u16))
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            Op::Recv(d) => {
                let (fd, p) = self.target(d);
                opcode::Recv::new(fd, p, d.len).build()
            }
        };
        e.user_data(user_data)
    }

    /// The fd and the arena address of a read or write (checked to lie inside its buffer).
    fn target(&self, d: &BufIo) -> (types::Fd, *mut u8) {
        assert!(d.buf_off as usize + d.len as usize <= self.arena.len_of(d.buf));
        (types::Fd(d.fd), self.arena.ptr(d.buf, d.buf_off))
    }

    /// io_uring_enter with GETEVENTS, so deferred task work runs and completions get posted.
    fn enter(&mut self, min_complete: u32) -> io::Result<()> {
        loop {
            let to_submit = self.ring.submission().len() as u32;
            // SAFETY: plain enter with no extra argument; every queued SQE points into the arena
            // or at fds that stay open until their completion is reaped.
            let r = unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    to_submit,
                    min_complete,
                    1, /* IORING_ENTER_GETEVENTS */
                    None,
                )
            };
            match r {
                Ok(_) => {
                    self.queued = self.ring.submission().len();
                    return Ok(());
                }
                Err(e) => match super::errno::on_enter(e.raw_os_error().unwrap_or(0)) {
                    super::errno::Verdict::Retry => continue,
                    // The kernel wants completions reaped first (backpressure).
                    super::errno::Verdict::Park => return Ok(()),
                    super::errno::Verdict::Fail | super::errno::Verdict::Fatal => return Err(e),
                },
            }
        }
    }
}

impl Backend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn arena(&mut self) -> &mut Arena {
        &mut self.arena
    }

    fn push(&mut self, op: Op, user_data: u64) -> io::Result<()> {
        assert!(self.in_flight < self.capacity, "ring over capacity");
        // Buffered writes are done with pwrite at push time: a buffered write is a copy into the
        // page cache, and a ring write to a filesystem without non-blocking buffered writes
        // (ext4, tmpfs) goes to an io-wq worker thread and back, where workers of both reactors
        // contend for the same inodes and journal. Measured (mixed, warm, alternating): fresh
        // ext4 1.98-2.71 -> 1.75-2.12 s, tmpfs 1.09/1.56 -> 0.76-0.95 s; cold within noise.
        // A write that waits (dirty-page throttling) holds up this reactor, as in the sync
        // backend. O_DIRECT writes go to the device: those use the ring.
        if let Op::Write(d) = &op
            && !d.direct
        {
            self.inline
                .push_back(super::run_blocking(&self.arena, &op, user_data));
            self.in_flight += 1;
            return Ok(());
        }
        let entry = self.entry(&op, user_data);
        if self.ring.submission().is_full() {
            self.enter(0)?;
        }
        // SAFETY: the entry's buffer lies in the arena (asserted in entry()) and is not touched
        // by the reactor until this op's completion is reaped; the fd stays open until then.
        unsafe {
            self.ring
                .submission()
                .push(&entry)
                .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
        }
        self.in_flight += 1;
        self.queued += 1;
        Ok(())
    }

    fn submit(&mut self, wait: bool) -> io::Result<()> {
        // Completions of inline writes are ready: never block in the kernel for more.
        let min = if wait && self.in_flight > self.inline.len() {
            1
        } else {
            0
        };
        // Nothing queued, nothing to wait for, nothing in the kernel (only inline completions):
        // no enter needed.
        if self.queued == 0 && min == 0 && self.in_flight == self.inline.len() {
            return Ok(());
        }
        self.enter(min)
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        assert!(self.in_flight >= self.inline.len());
        self.in_flight -= self.inline.len();
        out.extend(self.inline.drain(..));
        for cqe in self.ring.completion() {
            let (user_data, flags) = (cqe.user_data(), cqe.flags());
            let result = if cqueue::notif(flags) {
                // A zero-copy send's buffer is free again: now it is done, with its result.
                self.zc_result.remove(&user_data).unwrap_or(-libc::EIO)
            } else if cqueue::more(flags) {
                // A zero-copy send's result; its notification follows.
                let prev = self.zc_result.insert(user_data, cqe.result());
                assert!(prev.is_none(), "two results for one zero-copy send");
                continue;
            } else {
                cqe.result()
            };
            out.push(Completion { user_data, result });
            assert!(self.in_flight > 0, "completion without an op in flight");
            self.in_flight -= 1;
        }
    }

    fn submit_within(&mut self, timeout: Duration) -> io::Result<()> {
        if self.in_flight == self.inline.len() || !self.inline.is_empty() {
            return self.submit(false);
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        loop {
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => break,
                Err(e) => match e.raw_os_error().unwrap_or(0) {
                    // Timed out: nothing completed; the caller looks at its clock.
                    libc::ETIME => break,
                    libc::EINTR => continue,
                    errno => match super::errno::on_enter(errno) {
                        super::errno::Verdict::Retry => continue,
                        super::errno::Verdict::Park => break,
                        _ => return Err(e),
                    },
                },
            }
        }
        self.queued = self.ring.submission().len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::BufIo;
    use std::os::fd::AsRawFd;

    /// Resident KiB of the mapping that holds `addr` (/proc/self/smaps).
    fn rss_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split(' ').next().unwrap_or("");
            if let Some((a, b)) = range.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
            } else if inside && let Some(kb) = line.strip_prefix("Rss:") {
                return kb
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse()
                    .expect("Rss");
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    fn run(b: &mut UringBackend, op: Op) -> i32 {
        b.push(op, 7).expect("push");
        b.submit(true).expect("submit");
        let mut out = Vec::new();
        while out.is_empty() {
            b.reap(&mut out);
        }
        out[0].result
    }

    /// Small chunks go through the small buffers, and the big buffers are pinned (so the
    /// kernel clears their pages) only when a big chunk first needs one; data is intact both
    /// ways. Registering every buffer at start faulted the whole arena in.
    #[test]
    fn big_buffers_are_pinned_only_at_their_first_use() {
        if UringBackend::probe().is_err() {
            eprintln!("skipped: io_uring is not available here");
            return;
        }
        let big = 512 << 10;
        let mut b = UringBackend::new(Arena::new(big, 8), 4).expect("ring");
        let base = b.arena.ptr(0, 0) as usize;
        assert_eq!(
            rss_kib(base),
            0,
            "no big buffer touched by setting up the ring"
        );
        let dir = std::env::temp_dir().join(format!("ferry-uring-pin-{}", std::process::id()));
        let data: Vec<u8> = (0..big).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&dir, &data).expect("write the source");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dir)
            .expect("open");
        let (fd, small) = (f.as_raw_fd(), b.arena.pick(2, 4096));
        let io = |buf, len, offset| BufIo {
            fd,
            buf,
            buf_off: 0,
            len,
            offset,
            direct: false,
        };
        assert_eq!(run(&mut b, Op::Read(io(small, 4096, 4096))), 4096);
        assert_eq!(b.arena.slice(small, 4096), &data[4096..8192]);
        assert_eq!(
            rss_kib(base),
            0,
            "a small chunk leaves the big buffers alone"
        );
        assert!(b.fixed && b.pinned[small as usize] == Pinned::Yes);
        assert_eq!(run(&mut b, Op::Read(io(2, big as u32, 0))), big as i32);
        assert_eq!(b.arena.slice(2, big), &data[..]);
        assert!(rss_kib(base) > 0, "the big buffer is in use now");
        assert_eq!(b.pinned[2], Pinned::Yes);
        assert_eq!(b.pinned[3], Pinned::No, "the others are not pinned yet");
        let _ = std::fs::remove_file(&dir);
    }
}
