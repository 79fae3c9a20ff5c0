//! I/O backends behind one trait: io_uring (per-reactor ring, registered arena) and a blocking
//! pread/pwrite fallback. The reactor's per-file state machines are written once against
//! [`Backend`]; each backend only moves bytes between fds and its own buffer arena.

pub mod arena;
pub mod errno;
pub mod faulty;
#[cfg(test)]
mod sockops;
pub mod sync;
pub mod uring;

pub use arena::Arena;

use std::io;
use std::os::fd::RawFd;

/// O_DIRECT alignment ferry uses (offsets, lengths and buffers).
pub const DIRECT_ALIGN: u64 = 4096;

/// What an op does, for the errno policy and the fault injector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Read,
    Write,
    Fsync,
    /// A send on a connected socket (plain or zero-copy).
    Send,
    Recv,
}

/// A byte move between a slice of one arena buffer and a file range.
#[derive(Clone, Copy, Debug)]
pub struct BufIo {
    pub fd: RawFd,
    /// Arena buffer index (a slot's big or small buffer: `Arena::pick`).
    pub buf: u32,
    /// Start inside that buffer.
    pub buf_off: u32,
    pub len: u32,
    /// File offset.
    pub offset: u64,
    /// The fd is O_DIRECT: the op goes to the device, never done inline at push time.
    pub direct: bool,
}

/// A typed operation. Each kind carries only what it needs. The socket ops are `BufIo`s
/// whose `offset` and `direct` are unused (a connected stream socket has no offset).
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Read(BufIo),
    Write(BufIo),
    Fsync {
        fd: RawFd,
    },
    /// send(2) from the buffer slice (MSG_NOSIGNAL); on the ring, IORING_OP_SEND from the
    /// registered buffer where the kernel takes fixed buffers for it.
    Send(BufIo),
    /// Zero-copy send (IORING_OP_SEND_ZC, 6.0): the buffer stays pinned until the kernel's
    /// notification, which is when the completion is reported. The sync backend sends.
    SendZc(BufIo),
    /// recv(2) into the buffer slice; 0 bytes: the peer closed its side.
    Recv(BufIo),
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Read(_) => OpKind::Read,
            Op::Write(_) => OpKind::Write,
            Op::Fsync { .. } => OpKind::Fsync,
            Op::Send(_) | Op::SendZc(_) => OpKind::Send,
            Op::Recv(_) => OpKind::Recv,
        }
    }

    /// The buffer slice a read, write, send or recv moves.
    pub fn data_mut(&mut self) -> Option<&mut BufIo> {
        match self {
            Op::Read(d) | Op::Write(d) | Op::Send(d) | Op::SendZc(d) | Op::Recv(d) => Some(d),
            Op::Fsync { .. } => None,
        }
    }

    /// A socket op over `len` bytes at the start of buffer `buf`.
    pub fn sock(fd: RawFd, buf: u32, buf_off: u32, len: u32) -> BufIo {
        BufIo {
            fd,
            buf,
            buf_off,
            len,
            offset: 0,
            direct: false,
        }
    }
}

/// One finished operation: bytes moved, or a negative errno.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
}

/// Runs one op with a blocking syscall (pread, pwrite, fsync, send, recv) and returns its
/// completion: the sync backend's every op, and the io_uring backend's buffered writes.
pub(crate) fn run_blocking(arena: &Arena, op: &Op, user_data: u64) -> Completion {
    let res = match op {
        Op::Read(d) | Op::Write(d) | Op::Send(d) | Op::SendZc(d) | Op::Recv(d) => {
            assert!(d.buf_off as usize + d.len as usize <= arena.len_of(d.buf));
            let p = arena.ptr(d.buf, d.buf_off);
            let (len, off) = (d.len as usize, d.offset as i64);
            // SAFETY: p..p+len lies inside the arena (asserted) and no other op uses that
            // buffer meanwhile; the fd is open (the caller owns it until the completion).
            unsafe {
                match op {
                    Op::Read(_) => libc::pread(d.fd, p.cast(), len, off),
                    Op::Write(_) => libc::pwrite(d.fd, p.cast(), len, off),
                    Op::Recv(_) => libc::recv(d.fd, p.cast(), len, 0),
                    _ => libc::send(d.fd, p.cast(), len, libc::MSG_NOSIGNAL),
                }
            }
        }
        // SAFETY: plain syscall on an fd the caller owns.
        Op::Fsync { fd } => unsafe { libc::fsync(*fd) as isize },
    };
    let result = if res < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        res as i32
    };
    Completion { user_data, result }
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
    /// Queues an op; its completion carries `user_data`. Caller must have checked
    /// `in_flight() < capacity()`.
    fn push(&mut self, op: Op, user_data: u64) -> io::Result<()>;
    /// Hands queued ops to the kernel; when `wait`, blocks until at least one completes.
    fn submit(&mut self, wait: bool) -> io::Result<()>;
    /// Hands queued ops to the kernel and waits up to `timeout` for one to complete (a
    /// socket's peer may stay silent). Backends whose ops finish at push time just submit.
    fn submit_within(&mut self, timeout: std::time::Duration) -> io::Result<()> {
        let _ = timeout;
        self.submit(false)
    }
    /// Moves finished ops into `out`.
    fn reap(&mut self, out: &mut Vec<Completion>);
}

/// Wraps the backend each reactor builds (given the backend and the reactor's index): how a
/// caller (a test) passes in a backend of its own, such as the fault-injecting one.
#[derive(Clone)]
pub struct BackendFactory(std::sync::Arc<WrapFn>);

/// (the real backend, the reactor's index) -> the backend the reactor uses.
type WrapFn = dyn Fn(Box<dyn Backend>, usize) -> Box<dyn Backend> + Send + Sync;

impl BackendFactory {
    pub fn new(
        f: impl Fn(Box<dyn Backend>, usize) -> Box<dyn Backend> + Send + Sync + 'static,
    ) -> BackendFactory {
        BackendFactory(std::sync::Arc::new(f))
    }

    /// Reactor `me`'s backend, made from the real one.
    pub fn wrap(&self, real: Box<dyn Backend>, me: usize) -> Box<dyn Backend> {
        (self.0)(real, me)
    }
}

impl std::fmt::Debug for BackendFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendFactory")
    }
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
