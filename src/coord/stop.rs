//! A job's stop flags: whether it stops and why (a cancel, a fatal error, a panic, an error
//! under --fail-fast). Raised from any thread; reactors read them every turn.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct Stop {
    /// Stop: a fatal reactor error, a reactor panic, a cancel, or any error under
    /// --fail-fast. Reactors drain what is in flight and exit.
    pub abort: AtomicBool,
    /// The abort is a user's cancel: the files it interrupts are not failures.
    pub cancelled: AtomicBool,
    /// --fail-fast met a full destination: no new file starts; the files already started
    /// finish (or fail) and are committed, then the job stops (see `CopyReactor::drain_full`).
    pub full_stop: AtomicBool,
    /// --fail-fast: the first error stops the job.
    fail_fast: bool,
}

impl Stop {
    pub fn new(fail_fast: bool) -> Self {
        Stop {
            fail_fast,
            ..Stop::default()
        }
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }

    pub fn abort(&self) {
        self.abort.store(true, Ordering::Release);
    }

    /// A user's cancel: the job stops, and what it interrupts is not a failure.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.abort();
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// --fail-fast met a full destination: no new file starts.
    pub fn full_stopped(&self) -> bool {
        self.full_stop.load(Ordering::Acquire)
    }

    /// An error with this errno was met: under --fail-fast the job stops (a full destination
    /// lets the files already started finish first).
    pub fn on_error(&self, errno: Option<i32>) {
        if !self.fail_fast {
            return;
        }
        if matches!(errno, Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            self.full_stop.store(true, Ordering::Release);
        } else {
            self.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stop_only_a_fail_fast_job() {
        let s = Stop::new(false);
        s.on_error(Some(libc::EIO));
        assert!(!s.aborted() && !s.full_stopped());
        let s = Stop::new(true);
        s.on_error(Some(libc::ENOSPC));
        assert!(
            s.full_stopped() && !s.aborted(),
            "room: started files finish"
        );
        s.on_error(None);
        assert!(s.aborted() && !s.cancelled());
        let s = Stop::new(false);
        s.cancel();
        assert!(s.aborted() && s.cancelled());
    }
}
