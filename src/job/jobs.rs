//! What `ferry jobs` and `ferry ctl` say about a job in the state dir: running (a process holds
//! its lock), interrupted (its process died mid-run, e.g. kill -9: the checkpoint still says
//! running; rerunning the same command resumes it), or over (completed, failed, cancelled).

use crate::coord::checkpoint::{Checkpoint, is_running};
use crate::coord::state::JobState;
use std::path::Path;

/// A job found in the state dir.
pub struct JobEntry {
    pub cp: Checkpoint,
    /// A process holds the job's lock now.
    pub running: bool,
    /// The counts are the running job's own (from its control socket), not the last
    /// checkpoint's (written every 5 s).
    pub live: bool,
}

/// Asks a running job for its counts (`ferry ctl ID status`); false if it does not answer.
fn live_counts(dir: &Path, cp: &mut Checkpoint) -> bool {
    let Ok(reply) = super::ctl::send(&dir.join("ctl.sock"), "status") else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&reply) else {
        return false;
    };
    match (
        v["files"].as_u64(),
        v["bytes"].as_u64(),
        v["failed"].as_u64(),
    ) {
        (Some(f), Some(b), Some(x)) => {
            (cp.files, cp.bytes, cp.failed) = (f, b, x);
            true
        }
        _ => false,
    }
}

impl JobEntry {
    /// The job `id` under `root`; None when it has no readable checkpoint.
    pub fn load(root: &Path, id: &str) -> Option<JobEntry> {
        let dir = root.join(id);
        let bytes = std::fs::read(dir.join("checkpoint.json")).ok()?;
        let mut cp = serde_json::from_slice::<Checkpoint>(&bytes).ok()?;
        let running = is_running(&dir);
        let live = running && live_counts(&dir, &mut cp);
        Some(JobEntry { cp, running, live })
    }

    /// Its process is gone but the job never reached an end state.
    pub fn interrupted(&self) -> bool {
        !self.running && !self.cp.state.is_terminal()
    }

    /// The state to show: the checkpoint's, or `interrupted`.
    pub fn state_name(&self) -> &'static str {
        if self.interrupted() {
            "interrupted"
        } else {
            self.cp.state.name()
        }
    }

    /// Why a command cannot reach the job's control socket (`err`: what connecting said).
    pub fn not_running(&self, sock: &Path, err: &std::io::Error) -> String {
        let (id, at) = (&self.cp.job_id, utc(self.cp.updated_unix));
        if self.running {
            return format!(
                "job {id} is running (pid {}) but its control socket '{}' does not answer: {err}",
                self.cp.pid,
                sock.display()
            );
        }
        match self.cp.state {
            s if s.is_terminal() => format!("job {id} {} at {at}, not running", s.name()),
            JobState::Paused => format!(
                "job {id} is not running: interrupted while paused (pid {} is gone; last \
                 checkpoint at {at}); run the same command again to resume",
                self.cp.pid
            ),
            _ => format!(
                "job {id} is not running: interrupted (pid {} is gone; last checkpoint at \
                 {at}); run the same command again to resume",
                self.cp.pid
            ),
        }
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (the proleptic Gregorian calendar).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (H. Hinnant's algorithm): eras of 400 years from 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_the_calendar() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_151_541), "2026-12-01 18:59:01 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn a_held_lock_is_running_and_a_released_one_is_not() {
        let t = tempfile::tempdir().unwrap();
        let sd = crate::coord::checkpoint::StateDir::open(t.path(), "j").unwrap();
        assert!(is_running(&t.path().join("j")));
        drop(sd);
        assert!(!is_running(&t.path().join("j")));
        assert!(!is_running(&t.path().join("none")));
    }
}
