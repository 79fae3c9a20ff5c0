//! The cluster rebalance on this agent. `ferry cluster apply NEW.json` stores the next
//! topology generation and, with it, `rebalance/<gen>/spec`. Every agent moves the objects on
//! its own disks whose owner under the newest generation is another disk: to a disk of this
//! node with the local mover (`cluster::rebalance` on the copy engine), to another node's
//! through its `Migrate` sender. A source is deleted only while this run owns the node's moves
//! in etcd (the fence: a transaction comparing this run's member key and the topology
//! planned against). Progress goes to `rebalance/<gen>/progress/<node>` at most once per
//! progress interval (and on every state change); a restarted agent skips the partitions it
//! recorded done. A newer generation cancels the run and replans against it. Each round it
//! also marks lost the part of a node removed and not running (`agent::lost`), and hands the
//! hand-over holds what the view says (`agent::handover::Known`); a node that finds its own
//! part lost moves nothing of that generation.

use super::node::{Wake, Work, WorkCtx};
use super::rebalance_state::{COMPLETED, FAILED, LOST, NodeProgress, Spec, newest};
use super::store::{ClusterStore, Cmp, Op};
use super::view::View;
use crate::cluster::migrate::{Fence, Local, Migrate};
use crate::cluster::rebalance::{Counters, Options, Order};
use crate::cluster::store::Cluster;
use crate::coord::state::{Event, JobState};
use crate::partset::PartSet;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Runs of one generation before this node reports it failed; a failed run is retried after
/// 2, 4, 8, 16 s (a receiving node restarting, or still loading the generation).
pub const MAX_RUNS: u32 = 5;

fn backoff(attempts: u32) -> Option<Instant> {
    Some(Instant::now() + std::time::Duration::from_secs(1 << attempts.min(5)))
}

/// The object layer a run of `spec` moves on, for this node: Ok(None) while it is not ready
/// (the agent's own layer is still at another generation). By default the rebalance opens
/// its own (this node's disks, the registry in the state dir); an agent that serves objects
/// hands in the one it serves them from, so client writes and the moves share key locks.
pub type ClusterFor = Box<dyn Fn(&Spec) -> Result<Option<Arc<Cluster>>, String> + Send>;

pub struct Rebalancer {
    store: Arc<dyn ClusterStore>,
    /// The agent's state dir (topology files, the engine's state, the registry).
    dir: PathBuf,
    threads: usize,
    sender: Arc<dyn Migrate>,
    /// This agent's member key create revision, for the fence (0: not claimed).
    incarnation: Arc<AtomicI64>,
    run: Option<Run>,
    clusters: ClusterFor,
    /// The newest generation finished here (completed, or failed for good).
    finished: u64,
    /// Its last record, for status and metrics.
    last: Value,
    events: Vec<(&'static str, Value)>,
    /// The adaptive pace (None: the cluster's rate only, `--user-p99 off`).
    pace: Option<super::pace::Paced>,
    /// Notified when an engine run ends, so it is collected at once (None: at the next round).
    wake: Option<Arc<Wake>>,
    /// The cluster's fixed rates last seen: the pace's ceiling.
    ceiling: (u64, u64),
    /// The record of a run stopped by a lost lease (generation, record): counts it made
    /// after its last write to etcd, for the run that resumes it.
    kept: Option<(u64, NodeProgress)>,
    /// What the hand-over holds of a run know of the other nodes (from the view, each round).
    known: Arc<super::handover::Known>,
    /// The nodes removed and not running, whose parts are marked lost.
    gone: super::lost::Gone,
}

struct Active {
    handle: crate::JobHandle,
    counters: Arc<Counters>,
    rate: (u64, u64),
    /// Paused for a full owner disk: when room is probed for next.
    room: Option<Room>,
}

/// A run waiting for room: the job is resumed (its moves tried again) after 1, 2, 4, then
/// every 8 s, and counts as going on once it moved an object more.
struct Room {
    next: Instant,
    probes: u32,
    files: u64,
}

const ROOM_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

struct Run {
    spec: Spec,
    /// The topology key's mod revision this run plans against.
    topo_rev: i64,
    cluster: Option<Arc<Cluster>>,
    active: Option<Active>,
    done: Arc<Mutex<PartSet>>,
    rec: NodeProgress,
    /// (moved, bytes, superseded) before the engine run now active.
    base: (u64, u64, u64),
    started: Instant,
    /// From the last engine run's end to its collection, ms (the wait for the agent's round).
    collected_after_ms: u64,
    dirty: bool,
    last_write: Option<Instant>,
    /// Attempts of this agent process (the record's `runs` counts restarts too).
    attempts: u32,
    /// A retry waits until then.
    not_before: Option<Instant>,
    /// Receiving nodes seen unreachable at the last look (since when, ms): for the events.
    down: std::collections::BTreeMap<String, u64>,
    /// A receiving node was unreachable past the bound: the run failed for good with this.
    gave_up: Option<String>,
}

impl Rebalancer {
    pub fn new(
        store: Arc<dyn ClusterStore>,
        dir: PathBuf,
        threads: usize,
        sender: Arc<dyn Migrate>,
        node: &str,
    ) -> Rebalancer {
        let (d, n) = (dir.clone(), node.to_string());
        let clusters: ClusterFor =
            Box::new(move |spec| open_cluster(&d, spec, &n).map(|c| Some(Arc::new(c))));
        Rebalancer {
            store,
            clusters,
            dir,
            threads,
            sender,
            incarnation: Arc::new(AtomicI64::new(0)),
            run: None,
            finished: 0,
            last: Value::Null,
            events: Vec::new(),
            pace: None,
            wake: None,
            ceiling: (0, 0),
            kept: None,
            known: Arc::default(),
            gone: super::lost::Gone::new(std::time::Duration::from_secs(
                super::config::AgentConfig::default().lost_after_secs,
            )),
        }
    }

    /// A node removed and not running has its part marked lost once it had no member key
    /// for `after` (`lost_after_secs`).
    pub fn with_lost_after(mut self, after: std::time::Duration) -> Self {
        self.gone = super::lost::Gone::new(after);
        self
    }

    /// Before a node's part is marked lost, `probe` must not reach it either.
    pub fn with_probe(mut self, probe: super::lost::Probe) -> Self {
        self.gone = std::mem::replace(&mut self.gone, super::lost::Gone::new(Default::default()))
            .with_probe(probe);
        self
    }

    /// Paces the migration by client and disk latency (user I/O first).
    pub fn with_pace(mut self, p: super::pace::Paced) -> Self {
        self.pace = Some(p);
        self
    }

    /// The agent's round begins as soon as an engine run ends, not at its next poll tick.
    pub fn with_wake(mut self, w: Arc<Wake>) -> Self {
        self.wake = Some(w);
        self
    }

    /// The rates to run at now: the pace's under the cluster's (stepped once a window).
    fn rates(&mut self, ctx: &WorkCtx) -> (u64, u64) {
        self.ceiling = (ctx.control.rate, ctx.control.ops);
        let moved = self.run.as_ref().and_then(|r| r.active.as_ref()).map(|a| {
            let st = a.handle.status();
            (st.bytes, st.files)
        });
        match &mut self.pace {
            Some(p) => p.rates(moved, self.ceiling),
            None => self.ceiling,
        }
    }

    /// Moves on the object layers `f` gives (see `ClusterFor`).
    pub fn with_clusters(mut self, f: ClusterFor) -> Self {
        self.clusters = f;
        self
    }

    fn event(&mut self, kind: &'static str, generation: u64, fields: Value) {
        self.events
            .push((kind, with_generation(fields, generation)));
    }

    /// A newer generation: the run is cancelled (moves in flight finish or are dropped).
    fn replace(&mut self, newer: u64) {
        if let Some(mut r) = self.run.take() {
            r.cancel();
            let g = r.spec.generation;
            self.event("rebalance_replaced", g, json!({"by": newer}));
        }
    }

    /// Begins (or resumes, from this node's record) the run of `spec`.
    fn begin(&mut self, ctx: &WorkCtx, view: &View, spec: Spec, topo_rev: i64) {
        let g = spec.generation;
        let mut rec: NodeProgress = view
            .get(&ctx.keys.rebalance_progress(g, ctx.node))
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
            .unwrap_or_default();
        if rec.state == LOST {
            // another node found this one removed and not running: its disks count as gone
            self.kept = None;
            self.finished = g;
            self.event("rebalance_lost", g, json!({"why": rec.why}));
            return;
        }
        if let Some((kg, k)) = self.kept.take()
            && kg == g
            && k.moved + k.superseded >= rec.moved + rec.superseded
        {
            rec = k;
        }
        if rec.state == COMPLETED || rec.state == FAILED {
            self.finished = g;
            return;
        }
        let done = PartSet::from_text(&rec.done).unwrap_or_default();
        self.event(
            "rebalance_started",
            g,
            json!({"from_generation": spec.from_generation, "order": spec.order,
                "partitions_done_before": done.len(), "runs_before": rec.runs}),
        );
        self.run = Some(Run {
            spec,
            topo_rev,
            cluster: None,
            active: None,
            done: Arc::new(Mutex::new(done)),
            base: (rec.moved, rec.moved_bytes, rec.superseded),
            rec,
            started: Instant::now(),
            collected_after_ms: 0,
            dirty: true,
            last_write: None,
            attempts: 0,
            not_before: None,
            down: Default::default(),
            gave_up: None,
        });
    }

    /// The fence: this agent's current run holds its member key, and the topology is still
    /// the one the run planned against (asked by a transaction begun after the call).
    fn fence(&self, ctx: &WorkCtx, topo_rev: i64) -> Fence {
        let (store, inc) = (self.store.clone(), self.incarnation.clone());
        let (member, topo) = (ctx.keys.member(ctx.node), ctx.keys.topology());
        // The senders in flight share a transaction begun after each asked (group check).
        let group = crate::coord::group::Group::default();
        Arc::new(move || {
            group.run(|| {
                let i = inc.load(Ordering::Acquire);
                if i == 0 {
                    return Ok(false);
                }
                let c = [
                    Cmp::CreateRev(member.clone(), i),
                    Cmp::ModRev(topo.clone(), topo_rev),
                ];
                store
                    .txn(&c, &[])
                    .map(|(ok, _)| ok)
                    .map_err(|e| e.to_string())
            })
        })
    }

    /// Starts an engine run of the current generation on this node's disks.
    /// Ok(false): the object layer is not ready yet (tried again next round).
    fn start(&mut self, ctx: &WorkCtx) -> Result<bool, String> {
        let fence = {
            let r = self.run.as_ref().expect("a run");
            self.fence(ctx, r.topo_rev)
        };
        let (dir, threads, sender) = (self.dir.clone(), self.threads, self.sender.clone());
        // before the run's first rates: it begins at the pace's start
        let ceiling = (ctx.control.rate, ctx.control.ops);
        self.pace.iter_mut().for_each(|p| p.restart(ceiling));
        let rate = self.rates(ctx);
        let r = self.run.as_mut().expect("a run");
        let g = r.spec.generation;
        let (from, to) = write_plan(&dir.join("rebalance").join(format!("g{g}")), &r.spec)?;
        if r.cluster.is_none() {
            match (self.clusters)(&r.spec)? {
                Some(c) => r.cluster = Some(c),
                None => return Ok(false),
            }
        }
        let done = r.done.clone();
        let cluster = r.cluster.clone().expect("opened above");
        let hold = super::handover::hold(self.known.clone(), ctx.node, cluster.clone());
        let local = Local {
            node: ctx.node.to_string(),
            cluster,
            sender,
            fence,
            skip: r
                .done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .collect(),
            on_done: Arc::new(move |p| done.lock().unwrap_or_else(|e| e.into_inner()).insert(p)),
            hold: Some(hold),
        };
        let mut opts = Options::new(from, to, dir.join("registry.redb"));
        opts.order = Order::parse(&r.spec.order).unwrap_or(Order::Size);
        opts.local = Some(local);
        let mut spec = crate::CopySpec::new(Vec::new(), PathBuf::new());
        spec.threads = threads;
        spec.verify = crate::spec::VerifyMode::Full;
        (spec.bwlimit, spec.ops_limit) = rate;
        spec.state_dir = Some(dir.join("rebalance").join("state"));
        spec.fresh = true;
        spec.background = true; // clients first: the migration yields the CPU

        let mut counters = None;
        let handle = crate::Job::start_with(|| {
            let (p, _, c) = crate::cluster::rebalance::prepare(&opts, spec)?;
            counters = Some(c);
            Ok(p)
        })
        .map_err(|e| e.to_string())?;
        if let (Some(w), Some(rx)) = (&self.wake, handle.events()) {
            watch_end(rx, w.clone());
        }
        r.base = (r.rec.moved, r.rec.moved_bytes, r.rec.superseded);
        r.rec.runs += 1;
        r.rec.started_ms = super::state::now_ms();
        r.started = Instant::now();
        r.active = Some(Active {
            handle,
            counters: counters.expect("set by a successful prepare"),
            rate,
            room: None,
        });
        r.dirty = true;
        if let (Some(p), Some(c)) = (&mut self.pace, &r.cluster) {
            p.watch_disks(&c.disks().map(|(_, d)| d.to_path_buf()).collect::<Vec<_>>());
        }
        Ok(true)
    }
}

/// The generation's topologies, `from.json` and `to.json` in `gdir`, for the engine run.
fn write_plan(gdir: &std::path::Path, spec: &Spec) -> Result<(PathBuf, PathBuf), String> {
    let write = |name: &str, t: &crate::cluster::Topology| {
        let p = gdir.join(name);
        let text = serde_json::to_vec_pretty(t).expect("plain data");
        crate::coord::durable::replace(&p, &text, 0o644)
            .map(|_| p.clone())
            .map_err(|e| format!("write '{}': {e}", p.display()))
    };
    std::fs::create_dir_all(gdir).map_err(|e| format!("create '{}': {e}", gdir.display()))?;
    Ok((
        write("from.json", &spec.previous)?,
        write("to.json", &spec.topology)?,
    ))
}

/// Wakes the agent when the engine run whose events `rx` carries reaches its final state. The
/// thread ends then, or when the run's handle is dropped. Without it (no thread could be
/// started) the run is collected at the next poll, as it would be anyway.
fn watch_end(rx: std::sync::mpsc::Receiver<Event>, wake: Arc<Wake>) {
    let watch = move || {
        for ev in rx {
            if let Event::State { to, .. } = ev
                && to.is_terminal()
            {
                wake.notify();
                return;
            }
        }
    };
    let _ = std::thread::Builder::new()
        .name("ferry-rb-end".into())
        .spawn(watch);
}

fn with_generation(mut fields: Value, generation: u64) -> Value {
    fields["generation"] = json!(generation);
    fields
}

/// This node's object layer for a generation: only its disks, with its registry (None while
/// another part of this agent holds it: reads then fall back to placement).
fn open_cluster(dir: &std::path::Path, spec: &Spec, node: &str) -> Result<Cluster, String> {
    let reg = dir.join("registry.redb");
    let registry = match crate::cluster::registry::Registry::open(&reg) {
        Ok(r) => Some(r),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => None,
        Err(e) => return Err(e.to_string()),
    };
    Ok(Cluster::for_node(
        spec.topology.clone(),
        Some(spec.previous.clone()),
        registry,
        node,
    ))
}

impl Run {
    /// Cancels the engine run and counts what it did up to its end.
    fn cancel(&mut self) {
        if let Some(a) = &self.active {
            let _ = a.handle.cancel();
            // bounded: moves in flight end within the peer transport's I/O timeout
            while !a.handle.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        self.refresh();
        if let Some(a) = self.active.take() {
            let _ = a.handle.wait();
        }
    }

    /// Pause and resume follow the cluster's control, the rates the pace's.
    fn steer(&mut self, ctx: &WorkCtx, rate: (u64, u64)) -> Option<&'static str> {
        let a = self.active.as_mut()?;
        let st = a.handle.state();
        if rate != a.rate {
            a.handle.set_rate(rate.0, rate.1);
            a.rate = rate;
        }
        if ctx.control.paused && st == JobState::Running {
            let _ = a.handle.pause();
            return Some("rebalance_paused");
        }
        if !ctx.control.paused && st == JobState::Paused && a.handle.destination_full() {
            return a.probe_room();
        }
        if st == JobState::Running
            && a.room
                .as_ref()
                .is_some_and(|r| a.handle.status().files > r.files)
        {
            a.room = None;
            return Some("rebalance_resumed");
        }
        if !ctx.control.paused && st == JobState::Paused {
            let _ = a.handle.resume();
            return Some("rebalance_resumed");
        }
        None
    }

    /// The record from the live counters.
    fn refresh(&mut self) {
        let Some(a) = &self.active else {
            return;
        };
        let st = a.handle.status();
        let c = &a.counters;
        let r = &mut self.rec;
        r.moved = self.base.0 + st.files;
        r.moved_bytes = self.base.1 + st.bytes;
        r.superseded = self.base.2 + c.superseded.load(Ordering::Relaxed);
        r.total = self.base.0 + self.base.2 + c.misplaced.load(Ordering::Relaxed);
        r.total_bytes = self.base.1 + c.misplaced_bytes.load(Ordering::Relaxed);
        r.scanned = c.scanned.load(Ordering::Relaxed);
        let scan_s = *c.scan_secs.lock().unwrap_or_else(|p| p.into_inner());
        r.scan_ms = (scan_s * 1000.0) as u64;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        r.rate_bytes_s = (st.bytes as f64 / secs) as u64;
        let left = r.total_bytes.saturating_sub(r.moved_bytes);
        r.eta_s = (r.rate_bytes_s > 0).then(|| left as f64 / r.rate_bytes_s as f64);
        r.unreachable = c.peers.list();
        r.handover = c.held.list();
        let state = match st.state {
            _ if a.room.is_some() => super::rebalance_state::DESTINATION_FULL,
            JobState::Paused => "paused",
            _ if !r.unreachable.is_empty() => super::rebalance_state::PEER_UNREACHABLE,
            _ if !r.handover.is_empty() => super::rebalance_state::HANDOVER_WAIT,
            _ if !c.scan_done.load(Ordering::Acquire) => "scanning",
            _ => "migrating",
        };
        if r.state != state {
            r.state = state.into();
            self.last_write = None; // a state change is written at once
        }
        r.done = self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .to_text();
        self.dirty = true;
    }

    /// A finished engine run: Some(true) completed, Some(false) failed (retried up to
    /// MAX_RUNS), None still running.
    fn reap(&mut self) -> Option<bool> {
        let h = &self.active.as_ref()?.handle;
        // over: the coordinator recorded the end and is returning (woken by `watch_end`)
        if !h.is_finished() && !h.is_over() {
            return None;
        }
        self.refresh();
        let a = self.active.take().expect("checked");
        let report = a.handle.wait();
        let lag = self.started.elapsed().as_secs_f64() - report.elapsed_secs;
        self.collected_after_ms = (lag.max(0.0) * 1000.0) as u64;
        self.gave_up = a.counters.peers.gave_up();
        self.rec.unreachable.clear();
        self.rec.handover.clear();
        let ok = report.ok() && !report.cancelled;
        if !ok {
            self.rec.failed += report.errors.len().max(1) as u64;
            let room = 10usize.saturating_sub(self.rec.errors.len());
            self.rec
                .errors
                .extend(report.errors.iter().take(room).cloned());
        }
        Some(ok)
    }

    /// The record, fenced by this run's member key, at most once per interval.
    fn record(&mut self, ctx: &WorkCtx, store: &dyn ClusterStore) {
        if !self.dirty
            || self
                .last_write
                .is_some_and(|t| t.elapsed() < ctx.progress_interval)
        {
            return;
        }
        self.rec.at_ms = super::state::now_ms();
        let put = Op::Put {
            key: ctx.keys.rebalance_progress(self.spec.generation, ctx.node),
            value: serde_json::to_vec(&self.rec).expect("serializable"),
            lease: 0,
        };
        let c = [Cmp::CreateRev(ctx.keys.member(ctx.node), ctx.incarnation)];
        if ctx.incarnation != 0 && matches!(store.txn(&c, &[put]), Ok((true, _))) {
            self.dirty = false;
            self.last_write = Some(Instant::now());
        }
    }
}

impl Run {
    /// Events for the receiving nodes that became unreachable, or reachable again, since the
    /// last look (the record's list is the live one).
    fn reach_events(&mut self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let now = &self.rec.unreachable;
        self.down.retain(|peer, since| {
            let still = now.iter().any(|u| &u.peer == peer);
            if !still {
                let down_ms = super::state::now_ms().saturating_sub(*since);
                let f = json!({"peer": peer, "since_ms": since, "down_ms": down_ms});
                out.push(("rebalance_peer_reachable", f));
            }
            still
        });
        for u in now {
            if self.down.contains_key(&u.peer) {
                continue;
            }
            let f = json!({"peer": u.peer, "since_ms": u.since_ms, "error": u.error});
            out.push(("rebalance_peer_unreachable", f));
            self.down.insert(u.peer.clone(), u.since_ms);
        }
        out
    }
}

impl Active {
    /// A job paused for room: says so once, then resumes it now and then to try again.
    fn probe_room(&mut self) -> Option<&'static str> {
        let now = Instant::now();
        match &mut self.room {
            None => {
                let files = self.handle.status().files;
                let next = now + ROOM_PROBE;
                self.room = Some(Room {
                    next,
                    probes: 0,
                    files,
                });
                Some("rebalance_destination_full")
            }
            Some(r) if now >= r.next => {
                r.probes += 1;
                r.next = now + ROOM_PROBE * (1 << r.probes.min(3));
                let _ = self.handle.resume();
                None
            }
            Some(_) => None,
        }
    }
}

impl Rebalancer {
    /// Collects a finished engine run: completed, retried, or failed for good.
    fn settle(&mut self, ctx: &WorkCtx) {
        let Some(r) = self.run.as_mut() else {
            return;
        };
        let Some(ok) = r.reap() else {
            return;
        };
        let g = r.spec.generation;
        r.attempts += 1;
        r.last_write = None;
        let fields = json!({"moved": r.rec.moved, "bytes": r.rec.moved_bytes,
            "superseded": r.rec.superseded, "failed": r.rec.failed, "errors": r.rec.errors,
            "collected_after_ms": r.collected_after_ms});
        if ok {
            r.rec.state = COMPLETED.into();
            r.rec.eta_s = None;
            r.record(ctx, &*self.store);
            self.finished = g;
            self.event("rebalance_completed", g, fields);
        } else if r.attempts >= MAX_RUNS || r.gave_up.is_some() {
            r.rec.state = FAILED.into();
            r.record(ctx, &*self.store);
            self.finished = g;
            self.event("rebalance_failed", g, fields);
        } else {
            r.record(ctx, &*self.store);
            r.not_before = backoff(r.attempts);
            self.event("rebalance_retry", g, fields);
        }
        if self.finished == g
            && let Some(r) = self.run.take()
        {
            self.last = json!({"generation": g, "record": r.rec, "running": false});
        }
    }
}

impl Work for Rebalancer {
    fn set_owned(&mut self, _: &WorkCtx, _: &[bool]) {
        // A node's disks are its own: its moves do not follow the partition assignment.
    }

    fn poll(&mut self, ctx: &WorkCtx, view: &View) {
        self.incarnation.store(ctx.incarnation, Ordering::Release);
        if ctx.incarnation == 0 {
            return;
        }
        self.gone.see(ctx, view);
        let newest = newest(ctx.keys, view.under(&ctx.keys.rebalances()));
        if let Some((spec, rev)) = &newest {
            let g = spec.generation;
            for (node, why) in self.gone.mark(ctx, view, spec, *rev) {
                self.event("rebalance_node_lost", g, json!({"lost": node, "why": why}));
            }
            self.known.see(ctx.keys, view, g);
        }
        let newer = newest.as_ref().map_or(0, |(s, _)| s.generation);
        if self.run.as_ref().is_some_and(|r| newer > r.spec.generation) {
            self.replace(newer);
        }
        if self.run.is_none()
            && let Some((spec, _)) = newest
            && spec.generation > self.finished
        {
            let topo_rev = view.get(&ctx.keys.topology()).map_or(0, |kv| kv.mod_rev);
            self.begin(ctx, view, spec, topo_rev);
        }
        self.settle(ctx);
        let rate = self.rates(ctx);
        let Some(r) = self.run.as_mut() else {
            return;
        };
        if r.active.is_none() && r.not_before.is_none_or(|t| Instant::now() >= t) {
            let g = r.spec.generation;
            if let Err(m) = self.start(ctx) {
                let r = self.run.as_mut().expect("a run");
                r.attempts += 1;
                r.rec.errors.truncate(9);
                r.rec.errors.push(m.clone());
                r.not_before = backoff(r.attempts);
                let give_up = r.attempts >= MAX_RUNS;
                self.event("rebalance_error", g, json!({"message": m}));
                let r = self.run.as_mut().expect("a run");
                if give_up {
                    r.rec.state = FAILED.into();
                    r.record(ctx, &*self.store);
                    self.finished = g;
                    self.run = None;
                    return;
                }
            }
        }
        let pace = self.pace.as_ref().map(|p| p.status(self.ceiling));
        let r = self.run.as_mut().expect("a run");
        let g = r.spec.generation;
        let steered = r.steer(ctx, rate);
        r.refresh();
        for (kind, f) in r.reach_events() {
            self.events.push((kind, with_generation(f, g)));
        }
        if let Some(p) = pace {
            r.rec.pace(&p);
        }
        r.record(ctx, &*self.store);
        if let Some(kind) = steered {
            self.event(kind, g, json!({}));
        }
    }

    fn stop(&mut self) {
        if let Some(mut r) = self.run.take() {
            r.cancel();
            self.kept = Some((r.spec.generation, r.rec));
        }
        self.finished = 0;
    }

    fn status(&self) -> Value {
        let r = self.run.as_ref().map_or(self.last.clone(), |r| {
            json!({"generation": r.spec.generation, "record": r.rec,
                "running": r.active.is_some()})
        });
        let pace = self.pace.as_ref().map(|p| p.status(self.ceiling));
        json!({"rebalance": r, "pace": pace})
    }

    fn take_events(&mut self) -> Vec<(&'static str, Value)> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::keys::Keys;
    use crate::agent::store::MemStore;

    #[test]
    fn the_fence_holds_only_for_this_run_and_the_planned_topology() {
        let store = Arc::new(MemStore::default());
        let keys = Keys::new("t").unwrap();
        let lease = store.grant(30).unwrap();
        let inc = store.put(&keys.member("a"), b"{}", lease).unwrap();
        let topo_rev = store.put(&keys.topology(), b"{}", 0).unwrap();
        let rb = Rebalancer::new(
            store.clone(),
            PathBuf::new(),
            1,
            Arc::new(crate::cluster::migrate::NoTransport),
            "a",
        );
        let ctx = WorkCtx {
            store: &*store,
            keys: &keys,
            node: "a",
            lease,
            incarnation: inc,
            fence: 0,
            control: Default::default(),
            progress_interval: std::time::Duration::from_secs(1),
        };
        let fence = rb.fence(&ctx, topo_rev);
        assert_eq!(fence(), Ok(false), "not claimed yet (poll not run)");
        rb.incarnation.store(inc, Ordering::Release);
        assert_eq!(fence(), Ok(true));
        // a newer topology: the run planned against the old one may delete nothing
        store.put(&keys.topology(), b"{\"g\":3}", 0).unwrap();
        assert_eq!(fence(), Ok(false));
        let fence = rb.fence(&ctx, store.get(&keys.topology()).unwrap().unwrap().mod_rev);
        assert_eq!(fence(), Ok(true));
        // the lease expired and another run of `a` claimed the key: ours is fenced off
        store.revoke(lease).unwrap();
        assert_eq!(fence(), Ok(false));
        let l2 = store.grant(30).unwrap();
        store.put(&keys.member("a"), b"{}", l2).unwrap();
        assert_eq!(fence(), Ok(false));
    }
}
