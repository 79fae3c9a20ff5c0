//! How a copy job is steered while it runs: its link to the job's state machine and event
//! stream, pause and resume, the two throttles, and the stop flags. The front end's
//! `job::Control` works these; reactors read them every turn.

use crate::coord::state::{Event, JobState, Machine};
use crate::coord::stop::Stop;
use crate::coord::throttle::{TokenBucket, buckets, burst_for};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The job's state machine and event stream, when it runs under a `Job` (set once at start).
pub type JobLink = (Arc<Mutex<Machine>>, std::sync::mpsc::Sender<Event>);

pub struct Steering {
    pub link: OnceLock<JobLink>,
    /// Set by pause: reactors submit nothing new; cleared by resume.
    pub paused: AtomicBool,
    /// The pause is a full destination's: no new file starts, but files already started go
    /// on, so what fits is committed (and what does not is dropped) before the job rests.
    pub full: AtomicBool,
    /// Reactors with nothing left in flight after a full destination under --fail-fast; the
    /// last one ends the job.
    pub drained: AtomicUsize,
    /// How many times the job was resumed (tells stale ENOSPC results from fresh ones).
    pub resumes: AtomicU64,
    pub bytes_limit: TokenBucket,
    pub ops_limit: TokenBucket,
    /// Shared with the job's `Stats`, whose errors raise it under --fail-fast.
    pub stop: Arc<Stop>,
}

impl Steering {
    /// Limits in bytes/s and ops/s (0 = unlimited).
    pub fn new(bwlimit: u64, ops_limit: u64, fail_fast: bool) -> Self {
        let (bytes_limit, ops_limit) = buckets(bwlimit, ops_limit);
        Steering {
            link: OnceLock::new(),
            paused: AtomicBool::new(false),
            full: AtomicBool::new(false),
            drained: AtomicUsize::new(0),
            resumes: AtomicU64::new(0),
            bytes_limit,
            ops_limit,
            stop: Arc::new(Stop::new(fail_fast)),
        }
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    pub fn resume(&self) {
        self.resumes.fetch_add(1, Ordering::AcqRel);
        self.paused.store(false, Ordering::Release);
        self.full.store(false, Ordering::Release);
    }

    /// Stops the job; a paused one too (its reactors must see the abort to drain).
    pub fn cancel(&self) {
        self.stop.cancel();
        self.paused.store(false, Ordering::Release);
    }

    pub fn set_rate(&self, bytes_per_sec: u64, ops_per_sec: u64) {
        self.bytes_limit
            .set(bytes_per_sec, burst_for(bytes_per_sec));
        self.ops_limit.set(ops_per_sec, burst_for(ops_per_sec));
    }

    pub fn rates(&self) -> (u64, u64) {
        (self.bytes_limit.rate(), self.ops_limit.rate())
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// No new file may start: paused, or --fail-fast met a full destination.
    pub fn no_new_files(&self) -> bool {
        self.is_paused() || self.stop.full_stopped()
    }

    /// No new I/O at all: a user's pause (a full destination lets started files go on).
    pub fn halted(&self) -> bool {
        self.is_paused() && !self.full.load(Ordering::Acquire)
    }

    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Acquire)
    }

    /// ENOSPC writing `path`: under a `Job` (someone can resume it) the job pauses itself
    /// (state, events, one line for the user naming `job_id`'s resume command) and true;
    /// false without one.
    pub fn pause_for_room(&self, path: &Path, job_id: Option<&str>) -> bool {
        let Some((m, tx)) = self.link.get() else {
            return false;
        };
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        let went = g.go(JobState::Paused);
        if went.is_ok() {
            // Set before `paused`, so no reactor sees a bare pause that stops the started files.
            self.full.store(true, Ordering::Release);
        }
        self.paused.store(true, Ordering::Release);
        if let Ok((from, to)) = went {
            let _ = tx.send(Event::State { from, to });
            let _ = tx.send(Event::DestinationFull {
                path: crate::error::shown(path),
            });
            eprintln!(
                "ferry: destination full (writing '{}'): job paused; free space, then resume it{}",
                crate::error::shown(path),
                job_id
                    .map(|id| format!(" with `ferry ctl {id} resume`"))
                    .unwrap_or_default()
            );
        }
        true
    }
}
