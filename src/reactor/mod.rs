//! The generic thread-per-core loop. A reactor owns one backend (ring) and a bounded slab of
//! in-flight ops; a [`Driver`] (the file copy today, sockets next) is a set of small op state
//! machines: it pushes ops with its own state for each, and gets that state back with the op's
//! result, pushing the follow-ups. The loop knows nothing of files.
//!
//! One turn: flush -> timers -> issue -> take -> submit (waiting for a completion only when
//! nothing new was taken) -> reap every completion into a list -> dispatch them to the driver
//! (whose handlers only queue new ops).

pub mod slab;

use crate::error::Error;
use crate::io::{Arena, Backend, Completion, Op};
use slab::Slab;
use std::time::Duration;

/// The backend and the state of every op in flight on it, keyed by user_data.
pub struct Ring<T> {
    me: usize,
    io: Box<dyn Backend>,
    slab: Slab<T>,
    cq: Vec<Completion>,
}

impl<T> Ring<T> {
    /// Reactor `me` over `io`; at most `io.capacity()` ops in flight (never more than the CQ).
    pub fn new(me: usize, io: Box<dyn Backend>) -> Self {
        let cap = io.capacity();
        Ring {
            me,
            io,
            slab: Slab::with_capacity(cap),
            cq: Vec::with_capacity(cap),
        }
    }

    pub fn me(&self) -> usize {
        self.me
    }

    pub fn name(&self) -> &'static str {
        self.io.name()
    }

    pub fn in_flight(&self) -> usize {
        self.io.in_flight()
    }

    pub fn capacity(&self) -> usize {
        self.io.capacity()
    }

    /// Whether one more op may be pushed.
    pub fn has_room(&self) -> bool {
        self.io.in_flight() < self.io.capacity() && !self.slab.is_full()
    }

    pub fn arena(&mut self) -> &mut Arena {
        self.io.arena()
    }

    /// Queues `op`; `state` comes back to the driver with its result. The caller keeps its own
    /// count within the capacity: an op over it is a bug.
    pub fn push(&mut self, op: Op, state: T) -> Result<(), Error> {
        assert!(self.has_room(), "ops in flight over the ring's capacity");
        let key = self.slab.insert(state).expect("checked room");
        self.io.push(op, key as u64).map_err(|e| self.fatal(e))
    }

    /// Hands queued ops to the kernel (when `wait`, until one completes), then moves every
    /// finished op's state and result into `out`.
    fn submit_and_reap(&mut self, wait: bool, out: &mut Vec<(T, i32)>) -> Result<(), Error> {
        self.io.submit(wait).map_err(|e| self.fatal(e))?;
        self.cq.clear();
        self.io.reap(&mut self.cq);
        for c in &self.cq {
            out.push((self.slab.remove(c.user_data), c.result));
        }
        Ok(())
    }

    fn fatal(&self, e: std::io::Error) -> Error {
        Error::at(
            "io_uring_enter",
            crate::error::Target::Reactor(self.me),
            crate::error::ErrorKind::Os(e),
        )
    }
}

/// What the loop does when nothing is in flight.
pub enum Idle {
    /// Turn again at once.
    Again,
    /// Sleep this long, then turn again.
    Nap(Duration),
    /// Others may still make work for us: back off (25 us doubling to 1.6 ms), then turn.
    Backoff,
    /// The driver is done.
    Exit,
}

/// A protocol run by a reactor. Every method may push ops on the ring; none may block on
/// another thread.
pub trait Driver {
    /// The driver's state for one op in flight.
    type Op;
    fn ring(&mut self) -> &mut Ring<Self::Op>;
    /// Start of a turn: hand results on (before anything may wait), read control flags.
    fn flush(&mut self) -> Result<(), Error>;
    /// Work whose time has come: delayed retries, parked ops, queued follow-ups.
    fn timers(&mut self) -> Result<(), Error>;
    /// Ops for work already taken, while there is room.
    fn issue(&mut self) -> Result<(), Error>;
    /// New work while there is room; whether any was taken.
    fn take(&mut self) -> Result<bool, Error>;
    /// One op finished with `result` (bytes, or a negative errno).
    fn complete(&mut self, op: Self::Op, result: i32) -> Result<(), Error>;
    /// This turn left work it could have started for the next one: the loop goes on
    /// without waiting for a completion.
    fn held(&self) -> bool;
    /// Nothing is in flight: what now (`took`: this turn took new work).
    fn idle(&mut self, took: bool) -> Idle;
}

/// Runs `d` until it exits. An error is fatal for the reactor (its ring failed).
pub fn run<D: Driver>(d: &mut D) -> Result<(), Error> {
    let mut done = Vec::with_capacity(d.ring().capacity());
    let mut backoff = 0u32;
    loop {
        d.flush()?;
        d.timers()?;
        d.issue()?;
        let took = d.take()?;
        if d.ring().in_flight() > 0 {
            backoff = 0;
            // Block only when nothing was taken or held back: completions are then our only
            // way on.
            let wait = !took && !d.held();
            d.ring().submit_and_reap(wait, &mut done)?;
            for (op, res) in done.drain(..) {
                d.complete(op, res)?;
            }
            continue;
        }
        match d.idle(took) {
            Idle::Again => {}
            Idle::Nap(t) => std::thread::sleep(t),
            Idle::Backoff => {
                backoff = (backoff + 1).min(6);
                std::thread::sleep(Duration::from_micros(25 << backoff));
            }
            Idle::Exit => return Ok(()),
        }
    }
}
