//! User I/O first on this agent: once a window, the rebalance's pace controller
//! (`coord::pace`) reads the S3 endpoint's client p99 and this node's disks' completion
//! latency, and the migration's throughput, and sets the rates the rebalance job runs at,
//! under the cluster's fixed rate (`ferry cluster rate`, the ceiling).

use crate::coord::diskstat::Disks;
use crate::coord::pace::{Pace, Sample, Settings, Verdict};
use crate::latency::Window;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a window is: short enough to react within a couple of seconds, long enough for
/// a p99 of a few hundred requests.
pub const WINDOW: Duration = Duration::from_secs(1);

pub struct Paced {
    pace: Pace,
    latency: Option<Arc<Window>>,
    disks: Option<Disks>,
    at: Instant,
    /// The job's (bytes, files) at the last window, and the job it was read from (a new
    /// engine run starts from 0).
    moved: Option<(u64, u64)>,
}

impl Paced {
    pub fn new(settings: Settings, latency: Option<Arc<Window>>) -> Paced {
        Paced {
            pace: Pace::new(settings),
            latency,
            disks: None,
            at: Instant::now(),
            moved: None,
        }
    }

    /// Watches the devices under this node's disks (once they are known).
    pub fn watch_disks(&mut self, paths: &[PathBuf]) {
        if self.disks.is_none() {
            self.disks = Some(Disks::new(paths));
        }
    }

    /// A new engine run (call before reading its first rates): its counters start again,
    /// and without a limit in force the pace begins at its conservative start.
    pub fn restart(&mut self, ceiling: (u64, u64)) {
        self.moved = None;
        self.pace.begin(ceiling);
    }

    /// The rates to run at now under `ceiling`; once a window, the controller steps first.
    /// `moved`: the active run's (bytes, files) so far (None: nothing migrating).
    pub fn rates(&mut self, moved: Option<(u64, u64)>, ceiling: (u64, u64)) -> (u64, u64) {
        let secs = self.at.elapsed().as_secs_f64();
        if secs < WINDOW.as_secs_f64() {
            return self.pace.rates(ceiling);
        }
        self.at = Instant::now();
        let q = self.latency.as_ref().map(|w| w.take()).unwrap_or_default();
        let per_s = |d: u64| (d as f64 / secs) as u64;
        let migration = match (self.moved, moved) {
            (Some(a), Some(b)) => Some((
                per_s(b.0.saturating_sub(a.0)),
                per_s(b.1.saturating_sub(a.1)),
            )),
            // the run's first window (it began within it): not idle, not yet a rate
            (None, Some(_)) => Some((0, 0)),
            _ => None,
        };
        self.moved = moved;
        let s = Sample {
            requests: q.count,
            user_p99_us: q.p99,
            disk_await_us: self.disks.as_mut().and_then(|d| d.window()),
            migration,
        };
        self.pace.step(s, ceiling)
    }

    /// For status and metrics: the limits now, the last window's measurements and targets.
    pub fn status(&self, ceiling: (u64, u64)) -> Value {
        let (b, o) = self.pace.rates(ceiling);
        let s = &self.pace.last;
        let verdict = match self.pace.verdict {
            Verdict::Idle => "idle",
            Verdict::Over => "over",
            Verdict::Quiet => "quiet",
            Verdict::Hold => "hold",
            Verdict::Undone => "undone",
        };
        json!({"limit_bytes_s": b, "limit_ops_s": o, "requests": s.requests,
            "user_p99_us": s.user_p99_us, "user_target_us": self.pace.user_target_us(),
            "disk_await_us": s.disk_await_us, "disk_target_us": self.pace.disk_target_us(),
            "migration_bytes_s": s.migration.map(|m| m.0), "verdict": verdict,
            "disks": self.disks.as_ref().map(|d| d.watched().len())})
    }
}
