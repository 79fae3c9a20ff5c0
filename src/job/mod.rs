//! The library's job API: start a copy, then pause, resume, cancel, re-rate and watch it from
//! any thread while it runs; `wait` returns the report. No global state: jobs are independent.

pub mod ctl;
pub mod jobs;
pub mod metrics;

pub use crate::coord::state::Event;
use crate::coord::state::{InvalidTransition, JobState, Machine};
use crate::copy::{self, task::Ctx};
use crate::error::{Error, ErrorKind, Target};
use crate::spec::CopySpec;
use crate::stats::Report;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// A snapshot of a running job. Counts only durable work, so it never goes backwards.
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    pub state: JobState,
    pub files: u64,
    pub bytes: u64,
    pub failed: u64,
    pub elapsed_secs: f64,
    /// Files the walk found so far (final once `walk_done`).
    pub found_files: u64,
    pub walk_done: bool,
    /// Seconds left at the current file rate, once the walk is over.
    pub eta_secs: Option<f64>,
}

pub struct Job;

/// What can steer a running job; shared by the handle and the control socket.
pub struct Control {
    ctx: Arc<Ctx>,
    machine: Arc<Mutex<Machine>>,
    events_tx: Sender<Event>,
    started: Instant,
}

pub struct JobHandle {
    control: Arc<Control>,
    events_rx: Mutex<Option<Receiver<Event>>>,
    thread: Option<JoinHandle<Report>>,
    server: Option<JoinHandle<()>>,
}

fn transition(
    m: &Mutex<Machine>,
    tx: &Sender<Event>,
    to: JobState,
) -> Result<(), InvalidTransition> {
    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
    let (from, to) = g.go(to)?;
    // Nobody listening is fine: events are offered, not required.
    let _ = tx.send(Event::State { from, to });
    Ok(())
}

impl Job {
    /// Checks the job (bad input: `Err`, nothing written) and starts it on a coordinator
    /// thread, which starts the reactors. Its control socket is started by the front end
    /// (`job::ctl::serve_job`).
    pub fn start(spec: CopySpec) -> Result<JobHandle, Error> {
        Self::start_with(|| copy::prepare(spec))
    }

    /// Starts a job prepared by `prepare` (a copy, a move, a rebalance).
    pub fn start_with(
        prepare: impl FnOnce() -> Result<copy::Prepared, Error>,
    ) -> Result<JobHandle, Error> {
        let machine = Arc::new(Mutex::new(Machine::default()));
        let (events_tx, events_rx) = channel();
        transition(&machine, &events_tx, JobState::Scanning).expect("idle -> scanning");
        let prepared = match prepare() {
            Ok(p) => p,
            Err(e) => {
                let _ = transition(&machine, &events_tx, JobState::Failed);
                return Err(e);
            }
        };
        let ctx = prepared.ctx.clone();
        let _ = ctx.steer.link.set((machine.clone(), events_tx.clone()));
        transition(&machine, &events_tx, JobState::Running).expect("scanning -> running");
        let control = Arc::new(Control {
            ctx: ctx.clone(),
            machine: machine.clone(),
            events_tx: events_tx.clone(),
            started: Instant::now(),
        });
        let (m, tx) = (machine.clone(), events_tx.clone());
        let background = ctx.spec.background;
        let thread = std::thread::Builder::new()
            .name("ferry-coord".into())
            .spawn(move || {
                if background {
                    // Before execute starts the reactors: they inherit it.
                    crate::coord::background::lower_this_thread();
                }
                let report = copy::execute(prepared);
                let end = if report.cancelled {
                    JobState::Cancelled
                } else if report.ok() {
                    JobState::Completed
                } else {
                    JobState::Failed
                };
                let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                // A job paused at the very moment its last file finished is resumed first,
                // so the recorded history stays legal.
                if g.state() == JobState::Paused && end == JobState::Completed {
                    let _ = g.go(JobState::Running);
                }
                if let Ok((from, to)) = g.go(end) {
                    let _ = tx.send(Event::State { from, to });
                }
                report
            })
            .map_err(|e| Error::at("spawn", Target::Thread("ferry-coord"), ErrorKind::Os(e)))?;
        Ok(JobHandle {
            control,
            events_rx: Mutex::new(Some(events_rx)),
            thread: Some(thread),
            server: None,
        })
    }
}

impl Control {
    pub fn state(&self) -> JobState {
        self.machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state()
    }

    /// True once the job has ended (the coordinator recorded a final state).
    pub fn is_over(&self) -> bool {
        self.state().is_terminal()
    }

    /// Stops new submissions (within milliseconds); in-flight I/O completes.
    pub fn pause(&self) -> Result<(), InvalidTransition> {
        transition(&self.machine, &self.events_tx, JobState::Paused)?;
        self.ctx.steer.pause();
        Ok(())
    }

    pub fn resume(&self) -> Result<(), InvalidTransition> {
        transition(&self.machine, &self.events_tx, JobState::Running)?;
        self.ctx.steer.resume();
        Ok(())
    }

    /// Stops the job: temp files are removed, finished files are kept, the checkpoint says
    /// "cancelled" (running the same command again resumes).
    pub fn cancel(&self) -> Result<(), InvalidTransition> {
        let st = self.state();
        if !st.can_go(JobState::Cancelled) {
            return Err(InvalidTransition {
                from: st,
                to: JobState::Cancelled,
            });
        }
        self.ctx.steer.cancel();
        Ok(())
    }

    /// New limits (0 = unlimited), effective for the next chunk and the next file.
    pub fn set_rate(&self, bytes_per_sec: u64, ops_per_sec: u64) {
        self.ctx.steer.set_rate(bytes_per_sec, ops_per_sec);
        let _ = self.events_tx.send(Event::Rate {
            bytes_per_sec,
            ops_per_sec,
        });
    }

    /// Latency quantiles so far (reactors hand theirs over every second).
    pub fn latencies(&self) -> crate::latency::LatencyReport {
        self.ctx.stats.latency_summary()
    }

    /// The job's errors from the `from`th on (each printable once, when it happens).
    pub fn errors_since(&self, from: usize) -> Vec<String> {
        self.ctx.stats.errors_since(from)
    }

    pub fn rates(&self) -> (u64, u64) {
        self.ctx.steer.rates()
    }

    /// Whether the job paused itself for a full destination (ENOSPC) and waits for room.
    pub fn destination_full(&self) -> bool {
        self.ctx.steer.full.load(Ordering::Acquire)
    }

    pub fn status(&self) -> Progress {
        let s = &self.ctx.stats;
        let copied = s.files.load(Ordering::Relaxed);
        let resumed = s.resumed_files.load(Ordering::Relaxed);
        let failed = s.failed.load(Ordering::Relaxed);
        let skipped = s.skipped.load(Ordering::Relaxed);
        let found = s.found_files.load(Ordering::Relaxed);
        let walk_done = s.walking.load(Ordering::Acquire) == 0;
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = found.saturating_sub(copied + resumed + failed + skipped);
        let eta_secs = (walk_done && copied > 0 && elapsed > 0.0)
            .then(|| left as f64 / (copied as f64 / elapsed));
        Progress {
            state: self.state(),
            files: copied + resumed,
            bytes: s.bytes.load(Ordering::Relaxed) + s.resumed_bytes.load(Ordering::Relaxed),
            failed,
            elapsed_secs: elapsed,
            found_files: found,
            walk_done,
            eta_secs,
        }
    }
}

impl std::ops::Deref for JobHandle {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.control
    }
}

impl JobHandle {
    /// A server the front end started on this job's control handle (the ctl socket): joined
    /// by `wait`, after the job's end (it sees the final state and exits within its poll).
    pub fn attach_server(&mut self, server: JoinHandle<()>) {
        assert!(self.server.is_none(), "one server per job");
        self.server = Some(server);
    }

    /// Where this job's control socket goes: `<state-dir>/<job-id>/ctl.sock` (None without a
    /// state dir).
    pub fn ctl_socket(&self) -> Option<std::path::PathBuf> {
        let ctx = &self.control.ctx;
        match (&ctx.state, &ctx.record.job_id) {
            (Some(sd), Some(_)) => Some(sd.dir.join("ctl.sock")),
            _ => None,
        }
    }

    /// A shareable handle for servers (metrics, control) that outlive a borrow.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    pub fn job_id(&self) -> Option<&str> {
        self.control.ctx.record.job_id.as_deref()
    }

    /// The event stream (state changes, rate changes); can be taken once.
    pub fn events(&self) -> Option<Receiver<Event>> {
        self.events_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the end and returns the report.
    pub fn wait(mut self) -> Report {
        let t = self.thread.take().expect("wait is called once");
        let report = match t.join() {
            Ok(r) => r,
            Err(_) => {
                // The coordinator panicked: a bug. Report it as a failed job, not a hang.
                let c = &self.control;
                let mut r = c.ctx.stats.report(c.started.elapsed(), "unknown", 0);
                r.failed += 1;
                r.errors
                    .push("internal error: the coordinator thread panicked".into());
                r
            }
        };
        if let Some(s) = self.server.take() {
            // The server sees the final state and exits within its poll interval.
            let _ = s.join();
        }
        report
    }
}
