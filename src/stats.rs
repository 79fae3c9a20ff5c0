//! Counters shared by reactors and the committer, and the final report.

use crate::coord::stop::Stop;
use crate::error::Error;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// At most this many errors are kept with their text; the rest are only counted.
pub const MAX_KEPT_ERRORS: usize = 10_000;

#[derive(Default)]
pub struct Stats {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub dirs: AtomicU64,
    pub symlinks: AtomicU64,
    pub specials: AtomicU64,
    pub hardlinks: AtomicU64,
    /// Regular files the walk has found so far (for an ETA).
    pub found_files: AtomicU64,
    /// Directories still being listed; 0 means the walk is over and `found_files` is final.
    pub walking: std::sync::atomic::AtomicUsize,
    /// Files (and their bytes) an earlier run of this job already copied: skipped.
    pub resumed_files: AtomicU64,
    pub resumed_bytes: AtomicU64,
    pub skipped: AtomicU64,
    /// `ferry move` roots moved by one rename (same filesystem).
    pub renamed: AtomicU64,
    /// This run repeats a job that had completed: it only brings the targets up to date.
    pub was_complete: AtomicBool,
    /// `ferry move` sources an earlier run of the job had moved already.
    pub moved_before: AtomicU64,
    pub retries: AtomicU64,
    pub failed: AtomicU64,
    errors: Mutex<Vec<Error>>,
    /// The job's stop flags (the same as its steering's): an error under --fail-fast raises
    /// them. Held, not owned: the counters say what happened, the flags steer the job.
    stop: Arc<Stop>,
    latencies: Mutex<Option<crate::latency::Latencies>>,
    /// How each destination filesystem is committed to (copy::fskind), one line each.
    pub commit: Mutex<Vec<String>>,
}

impl Stats {
    /// Counters of a job whose errors raise `stop` (under --fail-fast).
    pub fn new(stop: Arc<Stop>) -> Self {
        Stats {
            stop,
            ..Stats::default()
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Quantiles so far (what the threads have handed over).
    pub fn latency_summary(&self) -> crate::latency::LatencyReport {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|l| l.summary())
            .unwrap_or_default()
    }

    /// Adds a thread's latencies (every second and at its exit).
    pub fn merge_latencies(&self, l: &crate::latency::Latencies) {
        let mut g = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert_with(Default::default).merge(l);
    }

    pub fn error(&self, e: Error) {
        self.failed.fetch_add(1, Relaxed);
        self.stop.on_error(e.raw_os_error());
        let mut v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < MAX_KEPT_ERRORS {
            v.push(e);
        }
    }

    /// The kept errors from index `from` on, as text (to print them as they happen).
    pub fn errors_since(&self, from: usize) -> Vec<String> {
        let v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        v.get(from..)
            .map(|s| s.iter().map(|e| e.to_string()).collect())
            .unwrap_or_default()
    }

    pub fn report(&self, elapsed: Duration, backend: &str, threads: usize) -> Report {
        let errors = std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()));
        Report {
            files: self.files.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            dirs: self.dirs.load(Relaxed),
            symlinks: self.symlinks.load(Relaxed),
            specials: self.specials.load(Relaxed),
            hardlinks: self.hardlinks.load(Relaxed),
            resumed_files: self.resumed_files.load(Relaxed),
            resumed_bytes: self.resumed_bytes.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            renamed: self.renamed.load(Relaxed),
            was_complete: self.was_complete.load(Relaxed),
            moved_before: self.moved_before.load(Relaxed),
            retries: self.retries.load(Relaxed),
            failed: self.failed.load(Relaxed),
            elapsed_secs: elapsed.as_secs_f64(),
            cancelled: self.stop.cancelled.load(Relaxed),
            latency_us: self
                .latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|l| l.summary())
                .unwrap_or_default(),
            backend: backend.to_string(),
            threads,
            commit: self
                .commit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            errors: errors.iter().map(|e| e.to_string()).collect(),
            error_values: errors,
            targets: Vec::new(),
        }
    }
}

/// What a finished copy did. Everything counted in `files`/`bytes` is durable.
#[derive(Debug, Serialize)]
pub struct Report {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    pub hardlinks: u64,
    pub resumed_files: u64,
    pub resumed_bytes: u64,
    pub skipped: u64,
    pub renamed: u64,
    /// The job had completed before this run (which only brought its targets up to date).
    pub was_complete: bool,
    /// `ferry move` sources an earlier run had moved already.
    pub moved_before: u64,
    pub retries: u64,
    pub failed: u64,
    pub elapsed_secs: f64,
    /// The job was cancelled before it finished (what it finished is kept).
    pub cancelled: bool,
    /// p50/p90/p99/p99.9/max per operation kind and per file, in microseconds.
    pub latency_us: crate::latency::LatencyReport,
    pub backend: String,
    pub threads: usize,
    /// Per destination filesystem: what it is and the group-commit batches it got, e.g.
    /// "/mnt/x: ext4 without a journal, wide batches".
    pub commit: Vec<String>,
    pub errors: Vec<String>,
    #[serde(skip)]
    pub error_values: Vec<Error>,
    /// A dry run: where each source would land (paths shown as in messages).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Landing>,
}

/// Where a source lands.
#[derive(Debug, Serialize)]
pub struct Landing {
    pub source: String,
    pub target: String,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    pub fn summary(&self) -> String {
        let secs = self.elapsed_secs.max(1e-9);
        format!(
            "{} files, {} hard links, {} dirs, {} symlinks, {:.1} MB in {:.2}s ({:.0} files/s, {:.1} MB/s, {} x {}){}",
            self.files,
            self.hardlinks,
            self.dirs,
            self.symlinks,
            self.bytes as f64 / 1e6,
            self.elapsed_secs,
            self.files as f64 / secs,
            self.bytes as f64 / 1e6 / secs,
            self.threads,
            self.backend,
            if self.renamed > 0 {
                format!(", {} moved by rename", self.renamed)
            } else {
                String::new()
            }
        ) + &if self.failed > 0 {
            format!(", {} FAILED", self.failed)
        } else {
            String::new()
        }
    }
}
