//! Blocking backend: every op runs at push time with pread/pwrite/fsync, and its completion is
//! queued for the next reap. It is shipped because io_uring is disabled on many hosts
//! (io_uring_disabled sysctl, seccomp profiles in containers, old kernels).

use super::{Arena, Backend, Completion, Op, OpKind};
use std::collections::VecDeque;
use std::io;

pub struct SyncBackend {
    arena: Arena,
    capacity: usize,
    done: VecDeque<Completion>,
}

impl SyncBackend {
    pub fn new(arena: Arena, capacity: usize) -> Self {
        SyncBackend {
            arena,
            capacity,
            done: VecDeque::with_capacity(capacity),
        }
    }
}

impl Backend for SyncBackend {
    fn name(&self) -> &'static str {
        "sync"
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn arena(&mut self) -> &mut Arena {
        &mut self.arena
    }

    fn push(&mut self, op: Op) -> io::Result<()> {
        assert!(
            self.done.len() < self.capacity,
            "sync backend over capacity"
        );
        let res = match op.kind {
            OpKind::Read => {
                let p = self.arena.ptr(op.buf, op.buf_off);
                assert!(op.buf_off as usize + op.len as usize <= self.arena.buf_size());
                // SAFETY: p..p+len lies inside the arena (asserted) and no other op uses it.
                unsafe { libc::pread(op.fd, p.cast(), op.len as usize, op.offset as i64) }
            }
            OpKind::Write => {
                let p = self.arena.ptr(op.buf, op.buf_off);
                assert!(op.buf_off as usize + op.len as usize <= self.arena.buf_size());
                // SAFETY: as above.
                unsafe { libc::pwrite(op.fd, p.cast(), op.len as usize, op.offset as i64) }
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
        self.done.push_back(Completion {
            user_data: op.user_data,
            result,
        });
        Ok(())
    }

    fn submit(&mut self, _wait: bool) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.done.drain(..));
    }
}
