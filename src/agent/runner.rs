//! Runs cluster copy jobs on this agent's partitions: each batch of owned, not yet done
//! partitions is one local engine run (`ferry::job`, with all its guarantees) over the files
//! whose path partition is in the batch. Finished partitions are recorded in the agent's
//! progress key (at most one write per progress interval), fenced by the assignment; a batch
//! holding partitions this agent no longer owns is cancelled before the release is
//! acknowledged, so the next owner starts only after this one stopped.

use super::node::{Work, WorkCtx};
use super::store::Op;
use super::view::{Control, View};
use crate::partset::PartSet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Partitions per engine run: small enough that a takeover redoes little.
pub const BATCH: usize = 8192;

/// A cluster copy, as `ferry copy --cluster` stores it at `jobs/<id>/spec`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: String,
    pub src: PathBuf,
    pub dst: PathBuf,
    pub verify: crate::spec::VerifyMode,
    pub created_ms: u64,
}

/// One agent's record at `jobs/<id>/progress/<node>` (not lease-bound: it outlives the agent).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    pub done: String,
    pub files: u64,
    pub bytes: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    /// Partitions in the batch running now.
    pub running: u64,
    pub at_ms: u64,
}

struct Active {
    handle: crate::JobHandle,
    parts: PartSet,
    /// The (bytes, ops) per second limits the job has now.
    rate: (u64, u64),
}

struct Run {
    spec: JobSpec,
    done: PartSet,
    rec: Progress,
    active: Option<Active>,
    dirty: bool,
    last_write: Option<Instant>,
    attempts: u32,
}

pub struct Runner {
    threads: usize,
    owned: PartSet,
    runs: BTreeMap<String, Run>,
}

impl Runner {
    pub fn new(threads: usize) -> Runner {
        Runner {
            threads,
            owned: PartSet::default(),
            runs: BTreeMap::new(),
        }
    }

    /// Adds the jobs that appeared, drops the ones that ended.
    fn sync_jobs(&mut self, ctx: &WorkCtx, view: &View) {
        let prefix = ctx.keys.jobs();
        let mut live = Vec::new();
        for kv in view.under(&prefix) {
            let Some(id) = kv.key[prefix.len()..].strip_suffix("/spec") else {
                continue;
            };
            if view.get(&kv.key.replace("/spec", "/end")).is_some() {
                continue;
            }
            live.push(id.to_string());
            if self.runs.contains_key(id) {
                continue;
            }
            let Ok(spec) = serde_json::from_slice::<JobSpec>(&kv.value) else {
                continue;
            };
            let rec: Progress = view
                .get(&ctx.keys.progress(id, ctx.node))
                .and_then(|p| serde_json::from_slice(&p.value).ok())
                .unwrap_or_default();
            let done = PartSet::from_text(&rec.done).unwrap_or_default();
            let run = Run {
                spec,
                done,
                rec,
                active: None,
                dirty: false,
                last_write: None,
                attempts: 0,
            };
            self.runs.insert(id.to_string(), run);
        }
        let ended: Vec<String> = self
            .runs
            .keys()
            .filter(|k| !live.contains(k))
            .cloned()
            .collect();
        for id in ended {
            if let Some(mut r) = self.runs.remove(&id) {
                r.cancel();
            }
        }
    }
}

/// Every partition some agent has recorded as done for job `id`.
fn done_by_anyone(ctx: &WorkCtx, view: &View, id: &str) -> PartSet {
    let mut all = PartSet::default();
    for kv in view.under(&ctx.keys.progress_prefix(id)) {
        if let Ok(p) = serde_json::from_slice::<Progress>(&kv.value)
            && let Ok(s) = PartSet::from_text(&p.done)
        {
            all.union(&s);
        }
    }
    all
}

impl Run {
    fn cancel(&mut self) {
        if let Some(a) = self.active.take() {
            let _ = a.handle.cancel();
            let _ = a.handle.wait();
        }
    }

    /// Collects a finished batch: its partitions are done when every file in them is.
    fn reap(&mut self) {
        if !self.active.as_ref().is_some_and(|a| a.handle.is_finished()) {
            return;
        }
        let a = self.active.take().expect("checked");
        let report = a.handle.wait();
        self.rec.files += report.files;
        self.rec.bytes += report.bytes;
        self.attempts += 1;
        if report.ok() || self.attempts >= 3 {
            if !report.ok() {
                self.rec.failed += report.errors.len() as u64;
                for e in report
                    .errors
                    .iter()
                    .take(10usize.saturating_sub(self.rec.errors.len()))
                {
                    self.rec.errors.push(e.clone());
                }
            }
            self.done.union(&a.parts);
            self.attempts = 0;
        }
        self.rec.running = 0;
        self.dirty = true;
    }

    fn start(&mut self, parts: PartSet, threads: usize, ctl: &Control) -> Result<(), String> {
        let mut src = self.spec.src.clone().into_os_string();
        src.push("/.");
        let mut s = crate::CopySpec::new(vec![PathBuf::from(src)], self.spec.dst.clone());
        s.threads = threads;
        s.verify = self.spec.verify;
        s.partitions = Some(parts.clone());
        s.bwlimit = ctl.rate;
        s.ops_limit = ctl.ops;
        let handle = crate::Job::start(s).map_err(|e| e.to_string())?;
        self.rec.running = parts.len() as u64;
        let rate = (ctl.rate, ctl.ops);
        self.active = Some(Active {
            handle,
            parts,
            rate,
        });
        Ok(())
    }

    fn steer(&mut self, ctx: &WorkCtx) {
        if let Some(a) = &mut self.active {
            let st = a.handle.state();
            if ctx.control.paused && st == crate::coord::state::JobState::Running {
                let _ = a.handle.pause();
            } else if !ctx.control.paused && st == crate::coord::state::JobState::Paused {
                let _ = a.handle.resume();
            }
            let rate = (ctx.control.rate, ctx.control.ops);
            if rate != a.rate {
                a.handle.set_rate(rate.0, rate.1);
                a.rate = rate;
            }
        }
    }

    /// The progress record, fenced by ownership, at most once per interval.
    fn record(&mut self, ctx: &WorkCtx, id: &str) {
        if !self.dirty
            || self
                .last_write
                .is_some_and(|t| t.elapsed() < ctx.progress_interval)
        {
            return;
        }
        self.rec.done = self.done.to_text();
        self.rec.at_ms = super::state::now_ms();
        let put = Op::Put {
            key: ctx.keys.progress(id, ctx.node),
            value: serde_json::to_vec(&self.rec).expect("serializable"),
            lease: 0,
        };
        if let Ok(true) = ctx.fenced(&[put]) {
            self.dirty = false;
            self.last_write = Some(Instant::now());
        }
    }
}

impl Work for Runner {
    fn set_owned(&mut self, _ctx: &WorkCtx, owned: &[bool]) {
        self.owned = PartSet::of((0..owned.len()).filter(|&p| owned[p]).map(|p| p as u16));
        for r in self.runs.values_mut() {
            if r.active
                .as_ref()
                .is_some_and(|a| !a.parts.minus(&self.owned).is_empty())
            {
                r.cancel();
                r.rec.running = 0;
            }
        }
    }

    fn poll(&mut self, ctx: &WorkCtx, view: &View) {
        self.sync_jobs(ctx, view);
        for (id, r) in self.runs.iter_mut() {
            r.reap();
            r.steer(ctx);
            if r.active.is_none() && !ctx.control.paused {
                let mut skip = done_by_anyone(ctx, view, id);
                skip.union(&r.done);
                let pending: Vec<u16> = self.owned.minus(&skip).iter().take(BATCH).collect();
                if !pending.is_empty()
                    && let Err(m) = r.start(PartSet::of(pending), self.threads, &ctx.control)
                {
                    r.rec.errors.truncate(9);
                    r.rec.errors.push(m);
                }
            }
            r.record(ctx, id);
        }
    }

    fn stop(&mut self) {
        self.runs.values_mut().for_each(Run::cancel);
        self.owned = PartSet::default();
    }

    fn status(&self) -> Value {
        let jobs: Vec<Value> = self
            .runs
            .iter()
            .map(|(id, r)| {
                json!({"id": id, "done_here": r.done.len(), "running": r.rec.running,
                "files": r.rec.files, "bytes": r.rec.bytes, "failed": r.rec.failed})
            })
            .collect();
        json!({"jobs": jobs})
    }
}
