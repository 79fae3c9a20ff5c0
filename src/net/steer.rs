//! The job side of a push, as for a local copy's job: its state (running ⇄ paused, then an
//! end), its events (`--json`: `start`, `state`, `destination_full`) and its control socket
//! (`<state-dir>/<job-id>/ctl.sock`: `ferry ctl JOB pause|resume|cancel|status`). A full
//! destination at the far end pauses it (`destination_full`): no new entry starts, the ones in
//! flight that fit are named there, those that did not are sent again after `resume`.

use crate::coord::state::{Event, InvalidTransition, JobState, Machine};
use crate::job::ctl::{self, Command, Steered};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

/// Where events go (a `--json` printer); none: not shown.
pub type Sink = Box<dyn Fn(&serde_json::Value) + Send + Sync>;

pub struct Steer {
    job_id: OnceLock<String>,
    machine: Mutex<Machine>,
    paused: AtomicBool,
    cancelled: AtomicBool,
    sink: Option<Sink>,
    /// Durable at the far end so far (status).
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    started: Instant,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Default for Steer {
    fn default() -> Steer {
        Steer::new(None)
    }
}

/// What `status` answers.
#[derive(serde::Serialize)]
struct Status {
    state: JobState,
    files: u64,
    bytes: u64,
    elapsed_secs: f64,
}

impl Steer {
    /// A job in Scanning (it opens its sessions and lists the far end next).
    pub fn new(sink: Option<Sink>) -> Steer {
        let s = Steer {
            job_id: OnceLock::new(),
            machine: Mutex::new(Machine::default()),
            paused: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            sink,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
            server: Mutex::new(None),
        };
        let _ = s.go(JobState::Scanning);
        s
    }

    fn emit(&self, v: serde_json::Value) {
        if let Some(f) = &self.sink {
            f(&v);
        }
    }

    fn go(&self, to: JobState) -> Result<(), InvalidTransition> {
        let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        let (from, to) = m.go(to)?;
        self.emit(serde_json::to_value(Event::State { from, to }).unwrap_or_default());
        Ok(())
    }

    pub fn state(&self) -> JobState {
        self.machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state()
    }

    /// The job has its id and state dir: `start` is said and its control socket opened.
    pub fn attach(self: &Arc<Self>, job_id: &str, dir: &Path) {
        if self.job_id.set(job_id.to_string()).is_err() {
            return;
        }
        self.emit(
            serde_json::json!({"event": "start", "job_id": job_id, "pid": std::process::id()}),
        );
        match ctl::serve(dir.join("ctl.sock"), self.clone()) {
            Ok(h) => *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(h),
            Err(e) => eprintln!("ferry: control socket: {e}"),
        }
    }

    /// Sending starts.
    pub fn running(&self) {
        let _ = self.go(JobState::Running);
    }

    /// No new entry may start (paused by the user or by a full destination).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// The far end is full (writing `path`): the job pauses itself, once, with
    /// `destination_full` and a line for the user naming the resume command.
    pub fn pause_for_room(&self, path: &str, why: &str) {
        if self.go(JobState::Paused).is_err() {
            return; // paused already (or over)
        }
        self.paused.store(true, Ordering::Release);
        self.emit(
            serde_json::to_value(Event::DestinationFull { path: path.into() }).unwrap_or_default(),
        );
        let id = self.job_id.get().map(String::as_str).unwrap_or("JOB");
        eprintln!(
            "ferry: destination full ({why}): job paused; free space there, then resume it with \
             `ferry ctl {id} resume`"
        );
    }

    /// The end: `to` is Completed, Failed or Cancelled. The control socket closes.
    pub fn end(&self, to: JobState) {
        if to == JobState::Completed && self.state() == JobState::Paused {
            let _ = self.go(JobState::Running);
        }
        let _ = self.go(to);
        let h = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    fn resume(&self) -> Result<(), InvalidTransition> {
        self.go(JobState::Running)?;
        self.paused.store(false, Ordering::Release);
        Ok(())
    }

    fn pause(&self) -> Result<(), InvalidTransition> {
        self.go(JobState::Paused)?;
        self.paused.store(true, Ordering::Release);
        Ok(())
    }

    fn cancel(&self) -> Result<(), InvalidTransition> {
        let from = self.state();
        if !from.can_go(JobState::Cancelled) {
            return Err(InvalidTransition {
                from,
                to: JobState::Cancelled,
            });
        }
        self.cancelled.store(true, Ordering::Release);
        self.paused.store(false, Ordering::Release);
        Ok(())
    }
}

impl Steered for Steer {
    fn is_over(&self) -> bool {
        self.state().is_terminal()
    }

    fn command(&self, c: Command) -> Result<String, String> {
        match c {
            Command::Status => {
                let s = Status {
                    state: self.state(),
                    files: self.files.load(Ordering::Relaxed),
                    bytes: self.bytes.load(Ordering::Relaxed),
                    elapsed_secs: self.started.elapsed().as_secs_f64(),
                };
                return serde_json::to_string(&s).map_err(|e| e.to_string());
            }
            Command::Pause => self.pause().map_err(|e| e.to_string())?,
            Command::Resume => self.resume().map_err(|e| e.to_string())?,
            Command::Cancel => self.cancel().map_err(|e| e.to_string())?,
            Command::Rate(..) => {
                return Err("rate limits are not available for network transfers yet".into());
            }
        }
        Ok("ok".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_destination_pauses_once_and_resume_runs_again() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let s = Steer::new(Some(Box::new(move |v| s2.lock().unwrap().push(v.clone()))));
        s.running();
        s.pause_for_room("a/f", "write 'a/f': ENOSPC");
        s.pause_for_room("a/g", "again");
        assert!(s.is_paused());
        assert_eq!(s.command(Command::Resume), Ok("ok".into()));
        assert!(!s.is_paused());
        assert!(s.command(Command::Resume).is_err(), "running already");
        assert!(s.command(Command::Rate(1, None)).is_err());
        assert_eq!(s.command(Command::Cancel), Ok("ok".into()));
        assert!(s.is_cancelled());
        s.end(JobState::Cancelled);
        let ev: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|v| {
                let e = v["event"].as_str().unwrap().to_string();
                match v.get("to") {
                    Some(t) => format!("{e}:{}", t.as_str().unwrap()),
                    None => e,
                }
            })
            .collect();
        assert_eq!(
            ev,
            [
                "state:scanning",
                "state:running",
                "state:paused",
                "destination_full",
                "state:running",
                "state:cancelled"
            ]
        );
    }
}
