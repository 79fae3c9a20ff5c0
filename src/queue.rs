//! Task queues: a bounded lock-free local queue per reactor (its disks' work) plus one shared
//! lock-free queue for overflow and for work any reactor may take (segments of big files).
//! An idle reactor takes from its own queue, then the shared one, then steals from the others,
//! and only then takes work that was put back to wait (the walk's back-pressure).

use crossbeam_queue::{ArrayQueue, SegQueue};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct TaskQueues<T> {
    locals: Vec<ArrayQueue<T>>,
    shared: SegQueue<T>,
    /// Parts of work already begun (segments of open files): taken before anything new, so
    /// open files finish first (bounded fds, sequential writes) instead of all files at once.
    begun: SegQueue<T>,
    /// Popped tasks put back to wait behind all other work (listings deferred by the walk's
    /// back-pressure). Taken last: were they in `shared`, an idle reactor would take and put back
    /// a waiting listing again and again instead of stealing the files another reactor holds
    /// (`small` warm: one reactor slept while the other copied, most of the run).
    waiting: SegQueue<T>,
    /// Tasks pushed and not yet finished (a task may finish long after it was popped). The job
    /// is over when this reaches zero.
    outstanding: AtomicUsize,
}

impl<T> TaskQueues<T> {
    pub fn new(reactors: usize, local_capacity: usize) -> Self {
        assert!(reactors > 0 && local_capacity > 0);
        TaskQueues {
            locals: (0..reactors)
                .map(|_| ArrayQueue::new(local_capacity))
                .collect(),
            shared: SegQueue::new(),
            begun: SegQueue::new(),
            waiting: SegQueue::new(),
            outstanding: AtomicUsize::new(0),
        }
    }

    pub fn reactors(&self) -> usize {
        self.locals.len()
    }

    /// Queues a new unit of work for `owner` (or the shared queue when it is full).
    pub fn push_local(&self, owner: usize, task: T) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        if let Err(task) = self.locals[owner % self.locals.len()].push(task) {
            self.shared.push(task);
        }
    }

    /// Queues a new unit of work that any reactor should pick up.
    pub fn push_shared(&self, task: T) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        self.shared.push(task);
    }

    /// Puts back a task that was popped but not finished (a continuation); the outstanding
    /// count does not change.
    pub fn requeue(&self, me: usize, task: T) {
        if let Err(task) = self.locals[me].push(task) {
            self.shared.push(task);
        }
    }

    /// Puts back a popped task behind everything already queued for all reactors (the outstanding
    /// count does not change): work that should wait until the queued work has gone first.
    pub fn requeue_last(&self, task: T) {
        self.waiting.push(task);
    }

    /// Offers part of an already-counted task (a big file's segment) to every reactor.
    pub fn share(&self, task: T) {
        self.begun.push(task);
    }

    /// Begun work first, then the own queue, then shared, then the others' queues, then the
    /// waiting work.
    pub fn pop(&self, me: usize) -> Option<T> {
        if let Some(t) = self.begun.pop() {
            return Some(t);
        }
        if let Some(t) = self.locals[me].pop() {
            return Some(t);
        }
        if let Some(t) = self.shared.pop() {
            return Some(t);
        }
        let n = self.locals.len();
        (1..n)
            .find_map(|k| self.locals[(me + k) % n].pop())
            .or_else(|| self.waiting.pop())
    }

    /// Counts work that is still coming (a feeder that is scanning): the job cannot end until
    /// the matching `finish`.
    pub fn hold(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    /// A popped task is completely done.
    pub fn finish(&self) {
        let prev = self.outstanding.fetch_sub(1, Ordering::AcqRel);
        assert!(prev > 0, "finished more tasks than were pushed");
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn overflow_goes_shared_and_others_steal() {
        let q = TaskQueues::new(2, 2);
        for i in 0..5 {
            q.push_local(0, i);
        }
        assert_eq!(q.outstanding(), 5);
        // reactor 1 has nothing local: it gets shared overflow first, then steals.
        let mut got: Vec<i32> = std::iter::from_fn(|| q.pop(1)).collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        for _ in 0..5 {
            q.finish();
        }
        assert_eq!(q.outstanding(), 0);
    }

    #[test]
    fn waiting_work_comes_after_stealing() {
        let q = TaskQueues::new(2, 8);
        q.push_local(0, 1);
        q.push_local(0, 2);
        q.push_shared(3);
        let w = q.pop(1).expect("shared");
        q.requeue_last(w);
        // Reactor 1: the other's files before the task that waits, and that one last of all.
        assert_eq!(q.pop(1), Some(1));
        assert_eq!(q.pop(1), Some(2));
        assert_eq!(q.pop(1), Some(3));
        assert_eq!(q.pop(1), None);
    }

    #[test]
    fn concurrent_push_pop_loses_nothing() {
        let q = Arc::new(TaskQueues::new(4, 64));
        let hs: Vec<_> = (0..4)
            .map(|me| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        q.push_local(me, i);
                    }
                    let mut sum = 0u64;
                    while let Some(v) = q.pop(me) {
                        sum += v;
                        q.finish();
                    }
                    sum
                })
            })
            .collect();
        let total: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        let mut rest = 0;
        while let Some(v) = q.pop(0) {
            rest += v;
            q.finish();
        }
        assert_eq!(total + rest, 4 * (0..10_000u64).sum::<u64>());
        assert_eq!(q.outstanding(), 0);
    }
}
