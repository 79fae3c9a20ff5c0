//! Blocking backend: every op runs at push time with pread/pwrite/fsync, and its completion is
//! queued for the next reap. It is shipped because io_uring is disabled on many hosts
//! (io_uring_disabled sysctl, seccomp profiles in containers, old kernels).

use super::{Arena, Backend, Completion, Op};
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

    fn push(&mut self, op: Op, user_data: u64) -> io::Result<()> {
        assert!(
            self.done.len() < self.capacity,
            "sync backend over capacity"
        );
        self.done
            .push_back(super::run_blocking(&self.arena, &op, user_data));
        Ok(())
    }

    fn submit(&mut self, _wait: bool) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.done.drain(..));
    }
}
