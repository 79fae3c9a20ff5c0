//! One agent: claims its node id under a lease, campaigns, follows (or, as leader, writes) the
//! assignment, and hands its partitions to the work it runs. One control thread, no async
//! runtime: every round reads the cluster, renews the lease when due, and acts.

use super::config::AgentConfig;
use super::keys::Keys;
use super::plan::Planner;
use super::state::{AgentState, Machine, Transition, now_ms};
use super::store::{ClusterStore, Cmp, Op, StoreError};
use super::view::{Control, MemberInfo, View};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What an agent runs on its partitions (cluster jobs). `owned[p]`: partition p is this
/// agent's under the assignment whose mod revision is `fence`.
pub trait Work: Send {
    /// Ownership changed; returns once nothing is being done for partitions no longer owned.
    fn set_owned(&mut self, ctx: &WorkCtx, owned: &[bool]);
    /// Called every round (progress, control, new jobs).
    fn poll(&mut self, ctx: &WorkCtx, view: &View);
    /// Shutdown or a lost lease: stop everything (in-flight files finished or removed).
    fn stop(&mut self);
    /// Status fields for the admin API.
    fn status(&self) -> Value {
        Value::Null
    }
    /// Events since the last call (kind, fields): the agent prints and keeps them.
    fn take_events(&mut self) -> Vec<(&'static str, Value)> {
        Vec::new()
    }
}

/// Several kinds of work side by side (cluster copies and the rebalance).
pub struct Works(pub Vec<Box<dyn Work>>);

impl Work for Works {
    fn set_owned(&mut self, ctx: &WorkCtx, owned: &[bool]) {
        self.0.iter_mut().for_each(|w| w.set_owned(ctx, owned));
    }
    fn poll(&mut self, ctx: &WorkCtx, view: &View) {
        self.0.iter_mut().for_each(|w| w.poll(ctx, view));
    }
    fn stop(&mut self) {
        self.0.iter_mut().for_each(|w| w.stop());
    }
    fn status(&self) -> Value {
        let mut doc = serde_json::Map::new();
        for w in &self.0 {
            if let Value::Object(m) = w.status() {
                doc.extend(m);
            }
        }
        Value::Object(doc)
    }
    fn take_events(&mut self) -> Vec<(&'static str, Value)> {
        self.0.iter_mut().flat_map(|w| w.take_events()).collect()
    }
}

/// Work that does nothing (an agent with no cluster job).
pub struct Idle;

impl Work for Idle {
    fn set_owned(&mut self, _: &WorkCtx, _: &[bool]) {}
    fn poll(&mut self, _: &WorkCtx, _: &View) {}
    fn stop(&mut self) {}
}

/// What work may use: the store, fenced by ownership.
pub struct WorkCtx<'a> {
    pub store: &'a dyn ClusterStore,
    pub keys: &'a Keys,
    pub node: &'a str,
    pub lease: i64,
    /// This run's member key create revision (0: not claimed).
    pub incarnation: i64,
    /// Mod revision of the assignment this agent follows (0: none).
    pub fence: i64,
    pub control: Control,
    pub progress_interval: Duration,
}

impl WorkCtx<'_> {
    /// Runs `ops` only while this agent's ownership still holds in etcd: the assignment key
    /// is unchanged since the agent read it. Ok(false): it does not (nothing was done).
    pub fn fenced(&self, ops: &[Op]) -> Result<bool, StoreError> {
        if self.fence == 0 {
            return Ok(false);
        }
        let c = [Cmp::ModRev(self.keys.assignment(), self.fence)];
        self.store.txn(&c, ops).map(|(ok, _)| ok)
    }
}

/// Cuts the agent's wait between rounds short: work whose engine run ended wants its next
/// round now, not at the next poll tick.
#[derive(Default)]
pub struct Wake {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        *self.woken.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits `d`, or less when notified (also by a notice given while no one waited);
    /// true when notified.
    pub fn wait(&self, d: Duration) -> bool {
        let g = self.woken.lock().unwrap_or_else(|p| p.into_inner());
        let (mut g, _) = self
            .cv
            .wait_timeout_while(g, d, |w| !*w)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *g)
    }
}

/// The agent's status, shared with the admin API.
#[derive(Default)]
pub struct Shared {
    pub doc: Value,
    pub events: std::collections::VecDeque<Value>,
}

pub struct Agent {
    pub store: Arc<dyn ClusterStore>,
    pub keys: Keys,
    pub node: String,
    pub addr: String,
    pub cfg: AgentConfig,
    pub instance: String,
    /// The peer transport's address, published in the member record.
    pub peer: Option<String>,
    pub json: bool,
    pub shared: Arc<Mutex<Shared>>,
    pub work: Box<dyn Work>,
    /// Ends the wait before the next round early (`Wake::notify`).
    pub wake: Arc<Wake>,
    pub(super) machine: Machine,
    pub(super) lease: i64,
    /// This run: the create revision of our member key (a new one per claim).
    pub(super) incarnation: i64,
    pub(super) lease_renewed: Instant,
    /// Our leader term (the leader key's create revision) while we lead.
    pub(super) epoch: Option<i64>,
    pub(super) planner: Planner,
    pub(super) view: View,
    /// Highest epoch seen in an assignment (older ones are ignored).
    pub(super) max_epoch: i64,
    /// Mod revision of the assignment applied, and its seq.
    pub(super) applied: (i64, u64),
    pub(super) owned: Vec<bool>,
    pub(super) store_down: Option<Instant>,
    /// What `status/<node>` says now (written when it changes).
    pub(super) status_written: Option<(AgentState, usize, bool)>,
    /// Hands the allocator's free memory back now and then (`memory::TRIM_EVERY`).
    pub(super) trim: super::memory::Trimmer,
}

impl Agent {
    pub fn new(
        store: Arc<dyn ClusterStore>,
        keys: Keys,
        node: &str,
        addr: &str,
        cfg: AgentConfig,
        instance: String,
    ) -> Result<Agent, String> {
        let planner = Planner::new(cfg.windows, super::assign::by_name(&cfg.strategy)?);
        Ok(Agent {
            store,
            keys,
            node: node.to_string(),
            addr: addr.to_string(),
            cfg,
            instance,
            peer: None,
            json: false,
            shared: Arc::default(),
            work: Box::new(Idle),
            wake: Arc::default(),
            machine: Machine::default(),
            lease: 0,
            incarnation: 0,
            lease_renewed: Instant::now(),
            epoch: None,
            planner,
            view: View::default(),
            max_epoch: 0,
            applied: (0, 0),
            owned: vec![false; crate::cluster::PARTITIONS],
            store_down: None,
            status_written: None,
            trim: super::memory::Trimmer::new(super::memory::TRIM_EVERY),
        })
    }

    pub fn state(&self) -> AgentState {
        self.machine.state
    }

    pub fn is_leader(&self) -> bool {
        self.epoch.is_some()
    }

    pub fn owned_count(&self) -> usize {
        self.owned.iter().filter(|o| **o).count()
    }

    /// An event: a JSON line on stdout with --json, else a line on stderr; kept for status.
    pub fn event(&self, kind: &str, mut fields: Value) {
        fields["event"] = json!(kind);
        fields["node"] = json!(self.node);
        fields["at_ms"] = json!(now_ms());
        if self.json {
            crate::outln!("{fields}");
        } else {
            eprintln!("ferry agent {}: {kind} {}", self.node, fields);
        }
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.events.push_back(fields);
        if s.events.len() > 100 {
            s.events.pop_front();
        }
    }

    /// Goes to `to` along legal edges, one event per transition.
    pub fn go(&mut self, to: AgentState, reason: &str) {
        for s in self.machine.state.path_to(to) {
            match self.machine.go(s, reason) {
                Ok(Transition { from, to, .. }) => self.event(
                    "state",
                    json!({"from": from.name(), "to": to.name(), "reason": reason}),
                ),
                Err(m) => self.event("bug", json!({"message": m})),
            }
        }
    }

    pub fn member_info(&self) -> MemberInfo {
        MemberInfo {
            node: self.node.clone(),
            addr: self.addr.clone(),
            weight: self.cfg.weight,
            pid: std::process::id(),
            instance: self.instance.clone(),
            started_ms: now_ms(),
            peer: self.peer.clone(),
        }
    }

    /// Runs until `stop` is set (SIGTERM) or the id cannot be claimed.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), String> {
        self.go(AgentState::ClaimingId, "starting");
        self.claim(stop)?;
        let poll = Duration::from_millis(self.cfg.poll_ms);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            if let Err(m) = self.round(stop) {
                self.shutdown(&m);
                return Err(m);
            }
            self.publish();
            self.trim.tick(Instant::now());
            let spent = t.elapsed();
            if spent < poll {
                self.wake.wait(poll - spent);
            }
        }
        self.shutdown("SIGTERM");
        Ok(())
    }

    /// One round; Err only when the agent must exit (its id was taken by another agent).
    fn round(&mut self, stop: &AtomicBool) -> Result<(), String> {
        if let Err(e) = self.view.refresh(&*self.store, &self.keys.root) {
            self.store_lost(&e);
            return Ok(());
        }
        self.store_back();
        if self.is_leader() {
            self.lead();
        }
        self.renew(stop)?;
        if self.state() == AgentState::ClaimingId {
            return Ok(());
        }
        self.campaign();
        self.follow();
        let mut w = std::mem::replace(&mut self.work, Box::new(Idle));
        w.poll(&self.ctx(), &self.view);
        let events = w.take_events();
        self.work = w;
        for (kind, fields) in events {
            self.event(kind, fields);
        }
        self.write_status();
        Ok(())
    }

    /// `status/<node>` (lease-bound) for `ferry cluster status`, when it changed.
    fn write_status(&mut self) {
        let now = (self.state(), self.owned_count(), self.is_leader());
        if self.status_written == Some(now) {
            return;
        }
        let v = json!({"state": now.0.name(), "owned": now.1, "leader": now.2, "at_ms": now_ms()});
        if self
            .store
            .put(
                &self.keys.status(&self.node),
                v.to_string().as_bytes(),
                self.lease,
            )
            .is_ok()
        {
            self.status_written = Some(now);
        }
    }

    pub(super) fn ctx(&self) -> WorkCtx<'_> {
        WorkCtx {
            store: &*self.store,
            keys: &self.keys,
            node: &self.node,
            lease: self.lease,
            incarnation: self.incarnation,
            fence: self.applied.0,
            control: self.view.control(&self.keys),
            progress_interval: Duration::from_millis(self.cfg.progress_interval_ms),
        }
    }

    fn store_lost(&mut self, e: &StoreError) {
        if self.store_down.is_none() {
            self.store_down = Some(Instant::now());
            self.event(
                "etcd_unreachable",
                json!({"error": e.to_string(), "keeping": {"state": self.state().name(),
                    "owned": self.owned_count(), "leader": self.is_leader()}}),
            );
        }
    }

    fn store_back(&mut self) {
        if let Some(since) = self.store_down.take() {
            let s = since.elapsed().as_secs_f64();
            self.event("etcd_reachable", json!({"after_s": s}));
        }
    }

    /// Stops work, gives up leadership and the lease (its keys go with it), says so.
    fn shutdown(&mut self, why: &str) {
        self.work.stop();
        if self.lease != 0 {
            let _ = self.store.revoke(self.lease);
        }
        self.epoch = None;
        self.go(AgentState::Shutdown, why);
        self.publish();
    }

    /// Our assignment view in one number per partition count, for status.
    pub fn publish(&self) {
        let doc = json!({
            "node": self.node, "addr": self.addr, "state": self.state().name(),
            "leader": self.is_leader(), "epoch": self.epoch, "lease": self.lease,
            "owned": self.owned_count(), "assignment_seq": self.applied.1,
            "assignment_epoch": self.max_epoch,
            "etcd_ok": self.store_down.is_none(),
            "transitions": self.machine.entered.iter().sum::<u64>(),
            "work": self.work.status(),
        });
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).doc = doc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_ends_the_wait_early_once() {
        let w = Arc::new(Wake::default());
        let t = Instant::now();
        assert!(
            !w.wait(Duration::from_millis(60)),
            "no notice: the whole wait"
        );
        assert!(t.elapsed() >= Duration::from_millis(60));
        // a notice given before the wait counts for it, once
        w.notify();
        let t = Instant::now();
        assert!(w.wait(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(!w.wait(Duration::from_millis(20)));
        // from another thread while waiting
        let w2 = w.clone();
        let n = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w2.notify();
        });
        let t = Instant::now();
        assert!(w.wait(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        n.join().unwrap();
    }
}
