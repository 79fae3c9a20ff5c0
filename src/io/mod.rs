//! I/O backends behind one trait: io_uring (per-reactor ring, registered arena) and a blocking
//! pread/pwrite fallback. The reactor's per-file state machines are written once against
//! [`Backend`]; each backend only moves bytes between fds and its own buffer arena.

pub mod arena;
pub mod faulty;
pub mod sync;
pub mod uring;

pub use arena::Arena;

use std::io;
use std::os::fd::RawFd;

/// A data operation. Reads and writes address a slice of one arena buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
    Fsync,
}

#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub kind: OpKind,
    pub fd: RawFd,
    /// Arena buffer index (ignored for fsync).
    pub buf: u32,
    /// Start inside that buffer.
    pub buf_off: u32,
    pub len: u32,
    /// File offset.
    pub offset: u64,
    pub user_data: u64,
    /// The fd is O_DIRECT: the op goes to the device, never done inline at push time.
    pub direct: bool,
}

/// One finished operation: bytes moved, or a negative errno.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
}

/// Runs one op with a blocking syscall (pread, pwrite, fsync) and returns its completion: the
/// sync backend's every op, and the io_uring backend's buffered writes.
pub(crate) fn run_blocking(arena: &Arena, op: &Op) -> Completion {
    let res = match op.kind {
        OpKind::Read | OpKind::Write => {
            assert!(op.buf_off as usize + op.len as usize <= arena.buf_size());
            let p = arena.ptr(op.buf, op.buf_off);
            let (len, off) = (op.len as usize, op.offset as i64);
            // SAFETY: p..p+len lies inside the arena (asserted) and no other op uses that
            // buffer meanwhile; the fd is open (the caller owns it until the completion).
            unsafe {
                if op.kind == OpKind::Read {
                    libc::pread(op.fd, p.cast(), len, off)
                } else {
                    libc::pwrite(op.fd, p.cast(), len, off)
                }
            }
        }
        // SAFETY: plain syscall on an fd the caller owns.
        OpKind::Fsync => unsafe { libc::fsync(op.fd) as isize },
    };
    let result = if res < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        res as i32
    };
    Completion {
        user_data: op.user_data,
        result,
    }
}

/// What a reactor needs from an I/O engine.
///
/// Invariant: `in_flight() <= capacity()`, and `capacity()` never exceeds the completion queue,
/// so completions can never be dropped or overflow.
pub trait Backend {
    fn name(&self) -> &'static str;
    fn capacity(&self) -> usize;
    fn in_flight(&self) -> usize;
    fn arena(&mut self) -> &mut Arena;
    /// Queues an op. Caller must have checked `in_flight() < capacity()`.
    fn push(&mut self, op: Op) -> io::Result<()>;
    /// Hands queued ops to the kernel; when `wait`, blocks until at least one completes.
    fn submit(&mut self, wait: bool) -> io::Result<()>;
    /// Moves finished ops into `out`.
    fn reap(&mut self, out: &mut Vec<Completion>);
}

/// Result of probing io_uring once at start.
#[derive(Debug)]
pub enum Probe {
    Available { single_issuer: bool },
    Unavailable(io::Error),
}

/// Asks the kernel once whether rings can be created here (io_uring_disabled sysctl, seccomp
/// and kernels before 5.1 all answer with an error at io_uring_setup).
pub fn probe_uring() -> Probe {
    match uring::UringBackend::probe() {
        Ok(single_issuer) => Probe::Available { single_issuer },
        Err(e) => Probe::Unavailable(e),
    }
}
