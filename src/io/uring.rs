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

use super::{Arena, Backend, BufIo, Completion, Op};
use io_uring::{IoUring, opcode, squeue, types};
use std::io;

pub struct UringBackend {
    // Field order matters: the ring (which holds the kernel's pins on the arena) drops first.
    ring: IoUring,
    arena: Arena,
    fixed: bool,
    capacity: usize,
    in_flight: usize,
    queued: usize,
    /// Buffered writes done at push time (their completions wait here for the next reap).
    inline: std::collections::VecDeque<super::Completion>,
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

    /// `capacity` bounds in-flight ops; the SQ gets that many entries and the CQ twice as many.
    pub fn new(arena: Arena, capacity: usize) -> io::Result<Self> {
        assert!(capacity > 0);
        let entries = (capacity as u32).next_power_of_two();
        let (ring, _fast) = build_ring(entries)?;
        let cq = ring.params().cq_entries() as usize;
        assert!(
            capacity <= cq,
            "in-flight ops must fit the completion queue"
        );
        let iov = arena.iovecs();
        let fixed = iov.len() <= u16::MAX as usize && {
            // SAFETY: the iovecs point into `arena`, which this struct owns and which is dropped
            // after the ring (field order), so the registered memory outlives its registration.
            unsafe { ring.submitter().register_buffers(&iov).is_ok() }
        };
        Ok(UringBackend {
            ring,
            arena,
            fixed,
            capacity,
            in_flight: 0,
            queued: 0,
            inline: std::collections::VecDeque::new(),
        })
    }

    pub fn uses_fixed_buffers(&self) -> bool {
        self.fixed
    }

    fn entry(&self, op: &Op, user_data: u64) -> squeue::Entry {
        let e = match op {
            Op::Read(d) => {
                let (fd, p) = self.target(d);
                if self.fixed {
                    opcode::ReadFixed::new(fd, p, d.len, d.buf as u16)
                        .offset(d.offset)
                        .build()
                } else {
                    opcode::Read::new(fd, p, d.len).offset(d.offset).build()
                }
            }
            Op::Write(d) => {
                let (fd, p) = self.target(d);
                if self.fixed {
                    opcode::WriteFixed::new(fd, p, d.len, d.buf as u16)
                        .offset(d.offset)
                        .build()
                } else {
                    opcode::Write::new(fd, p, d.len).offset(d.offset).build()
                }
            }
            Op::Fsync { fd } => opcode::Fsync::new(types::Fd(*fd)).build(),
        };
        e.user_data(user_data)
    }

    /// The fd and the arena address of a read or write (checked to lie inside its buffer).
    fn target(&self, d: &BufIo) -> (types::Fd, *mut u8) {
        assert!(d.buf_off as usize + d.len as usize <= self.arena.buf_size());
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
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
            });
            assert!(self.in_flight > 0, "completion without an op in flight");
            self.in_flight -= 1;
        }
    }
}
