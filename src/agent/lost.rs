//! A node removed from the topology that does not run: its part of the newest rebalance can
//! never be done (its disks are gone, with the objects and the tombstones on them), so the
//! job would never complete and the moves that wait for its hand-over (`agent::handover`)
//! would wait forever. Every agent looks once a round: a node the job names (either
//! topology) to which the newest topology gives no disk of an active or draining set, with
//! no member key in etcd continuously for `lost_after_secs` as this agent sees it (looks
//! further apart than `MAX_GAP`, or a new run of this agent, start it anew; 300 s by
//! default, on top of the lease TTL that passed without a keepalive before the key went: a
//! restart, a reboot or a stall is over by then), that does not answer over the peer
//! transport either (asked at the address its member record named last, as this agent saw
//! it: a node cut off from etcd alone still serves its disks), and whose part is not over, gets its
//! record marked `lost` with the reason (at once if the node is still quarantined from an
//! earlier mark: it cannot have come back since). The mark is a transaction that finds the
//! node's member key absent, its record as read, the job's spec and the topology unchanged
//! and this agent's own member key its run's: an agent of the node that claims its key again
//! first is never overridden. The same transaction writes the node's `lost/<node>` key: the
//! mark sticks to the node, not to the generation. Its disks may hold keys deleted or
//! overwritten meanwhile (their tombstones went when the generation settled), so an agent of
//! that node, once it has claimed its member key (no mark can succeed after that), reads the
//! key from etcd and refuses to run while it is there (`quarantined`): it serves none of its
//! disks and moves nothing; nothing on them is deleted. An operator clears it
//! (`ferry cluster clear-lost NODE`) once the disks are wiped or taken away.

use super::keys::Keys;
use super::node::WorkCtx;
use super::rebalance_state::{LOST, NodeProgress, Spec, is_final, nodes};
use super::store::{ClusterStore, Cmp, Op, StoreError};
use super::view::{MemberInfo, View};
use crate::cluster::Topology;
use crate::cluster::topology::SetState;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What `lost/<node>` holds: the mark that quarantines the node's disks.
#[derive(serde::Serialize, serde::Deserialize, Default, Debug)]
pub struct Mark {
    /// The generation whose part of the node was marked lost.
    pub generation: u64,
    /// The agent that marked it, and why.
    pub by: String,
    pub why: String,
    pub at_ms: u64,
}

/// The refusal of node `node`'s agent if its `lost/<node>` key is in `store` (read from etcd,
/// not from a view: call it after the member key is claimed, when no mark can succeed any
/// more); Ok(None): the node is not quarantined.
pub fn quarantined(
    store: &dyn ClusterStore,
    keys: &Keys,
    node: &str,
) -> Result<Option<String>, StoreError> {
    let key = keys.lost(node);
    let Some(kv) = store.get(&key)? else {
        return Ok(None);
    };
    let m: Mark = serde_json::from_slice(&kv.value).unwrap_or_default();
    Ok(Some(format!(
        "node {node} was marked lost at generation {} by node {} ({}); its disks are \
         quarantined: this agent serves none of them and moves nothing (nothing on them was \
         deleted, but they may hold keys deleted or overwritten since, whose tombstones are \
         gone). Wipe the disks or take them out of the topology's sets, or copy off what you \
         need, then clear the mark with `ferry cluster clear-lost {node}` (it deletes etcd key \
         {key}) and start the agent again",
        m.generation, m.by, m.why
    )))
}

/// Whether node `node` answers as itself over the peer transport at `addr` (a new
/// connection, not looked up in etcd); Err: why not.
pub type Probe = Box<dyn Fn(&str, &str) -> Result<(), String> + Send + Sync>;

/// A node that answered a probe is not asked again for this long.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Looks further apart than this (this agent could not read etcd meanwhile, or stalled)
/// start every absence anew: what it did not see does not count (a lease TTL by default).
const MAX_GAP: Duration = Duration::from_secs(10);
/// At most this many nodes' peer addresses are remembered.
const MAX_ADDRS: usize = 4096;

/// The nodes this agent sees removed and not running, since when.
pub struct Gone {
    since: HashMap<String, Instant>,
    /// How long one must be seen so before its part is marked lost.
    after: Duration,
    /// Asks a node over the peer transport before its part is marked (None: no transport).
    probe: Option<Probe>,
    /// The peer address each node's member record named last, as this agent saw it.
    addrs: HashMap<String, String>,
    /// When a node last answered a probe.
    answered: HashMap<String, Instant>,
    /// The last look: when, and this agent's incarnation then.
    looked: Option<(Instant, i64)>,
}

/// Whether topology `t` gives node `n` a disk of a set that is active or draining.
fn serves(t: &Topology, n: &str) -> bool {
    t.sets()
        .filter(|s| s.state != SetState::Removed)
        .flat_map(|s| s.disks.iter())
        .any(|d| d.node.as_deref() == Some(n))
}

/// The record of node `n` in `view` for the rebalance of `g` (its mod revision: 0 if none).
fn record(ctx: &WorkCtx, view: &View, g: u64, n: &str) -> (NodeProgress, i64) {
    match view.get(&ctx.keys.rebalance_progress(g, n)) {
        Some(kv) => (
            serde_json::from_slice(&kv.value).unwrap_or_default(),
            kv.mod_rev,
        ),
        None => (NodeProgress::default(), 0),
    }
}

impl Gone {
    pub fn new(after: Duration) -> Gone {
        Gone {
            since: HashMap::new(),
            after,
            probe: None,
            addrs: HashMap::new(),
            answered: HashMap::new(),
            looked: None,
        }
    }

    /// A node is marked only if `probe` cannot reach it either (one alive but cut off from
    /// etcd alone still serves its disks to the others).
    pub fn with_probe(mut self, probe: Probe) -> Gone {
        self.probe = Some(probe);
        self
    }

    /// Remembers the peer address of every member in `view` (once a round): the probe's
    /// address of a node whose member key is gone.
    pub fn see(&mut self, ctx: &WorkCtx, view: &View) {
        for kv in view.under(&ctx.keys.members()) {
            let Ok(m) = serde_json::from_slice::<MemberInfo>(&kv.value) else {
                continue;
            };
            let known = self.addrs.contains_key(&m.node);
            if let Some(p) = m.peer
                && (known || self.addrs.len() < MAX_ADDRS)
            {
                self.addrs.insert(m.node, p);
            }
        }
    }

    /// Why node `n` counts as unreachable over the peer transport, as node `me` asks; None:
    /// it answered as itself (alive, cut off from etcd only), so it is not marked.
    fn unreachable(&mut self, me: &str, n: &str) -> Option<String> {
        let Some(probe) = &self.probe else {
            return Some(format!("node {me} has no peer transport to ask it"));
        };
        let Some(addr) = self.addrs.get(n) else {
            return Some(format!("node {me} saw no peer address of it to ask"));
        };
        if self
            .answered
            .get(n)
            .is_some_and(|t| t.elapsed() < PROBE_EVERY)
        {
            return None;
        }
        match probe(n, addr) {
            Ok(()) => {
                self.answered.insert(n.to_string(), Instant::now());
                None
            }
            Err(e) => Some(format!("its peer transport at {addr} does not answer: {e}")),
        }
    }

    /// The nodes of `spec`'s job that are removed and not running now, by `view`.
    fn candidates(ctx: &WorkCtx, view: &View, spec: &Spec) -> Vec<String> {
        nodes(spec)
            .into_iter()
            .filter(|n| n != ctx.node && !serves(&spec.topology, n))
            .filter(|n| view.get(&ctx.keys.member(n)).is_none())
            .filter(|n| !is_final(&record(ctx, view, spec.generation, n).0.state))
            .collect()
    }

    /// Marks lost the part of `spec`'s job (its spec key at mod revision `spec_rev`) of each
    /// node seen removed and not running for `after`; (node, why) of each marked now.
    pub fn mark(
        &mut self,
        ctx: &WorkCtx,
        view: &View,
        spec: &Spec,
        spec_rev: i64,
    ) -> Vec<(String, String)> {
        let blind = self.looked.is_none_or(|(t, inc)| {
            t.elapsed() > MAX_GAP || inc != ctx.incarnation // a gap, or a new run of ours
        });
        if blind {
            self.since.clear();
        }
        let now = Self::candidates(ctx, view, spec);
        self.since.retain(|n, _| now.contains(n));
        self.answered.retain(|n, _| now.contains(n));
        let mut out = Vec::new();
        for n in now {
            let since = *self.since.entry(n.clone()).or_insert_with(Instant::now);
            // marked lost before and still quarantined (it cannot have run since): at once
            let before = view.get(&ctx.keys.lost(&n)).is_some();
            if since.elapsed() < self.after && !before {
                continue;
            }
            let Some(reach) = self.unreachable(ctx.node, &n) else {
                continue; // it answers: alive, its disks served; asked again later
            };
            match self.write(ctx, view, spec, spec_rev, (&n, &reach)) {
                Ok(Some(why)) => out.push((n, why)),
                Ok(None) => {} // it came back, or another agent marked it first
                Err(m) => eprintln!("ferry agent {}: {m}", ctx.node),
            }
        }
        // after the probes: their own time (up to a few seconds each) is not a gap
        self.looked = Some((Instant::now(), ctx.incarnation));
        out
    }

    /// The mark of node `n`'s part (see the module comment); Ok(None): a compare failed.
    fn write(
        &self,
        ctx: &WorkCtx,
        view: &View,
        spec: &Spec,
        spec_rev: i64,
        (n, reach): (&str, &str),
    ) -> Result<Option<String>, String> {
        let (g, k) = (spec.generation, ctx.keys);
        let (mut rec, rev) = record(ctx, view, g, n);
        let why = format!(
            "node {n} removed and not running (no member key for {:?}, as node {} saw), and \
             unreachable ({reach}): its objects and tombstones are lost with its disks",
            self.after, ctx.node
        );
        rec.state = LOST.into();
        rec.why = why.clone();
        (rec.rate_bytes_s, rec.eta_s) = (0, None);
        rec.unreachable.clear();
        rec.handover.clear();
        rec.at_ms = super::state::now_ms();
        let topo_rev = view.get(&k.topology()).map_or(0, |kv| kv.mod_rev);
        let c = [
            Cmp::CreateRev(k.member(ctx.node), ctx.incarnation),
            Cmp::ModRev(k.rebalance(g), spec_rev),
            Cmp::ModRev(k.topology(), topo_rev),
            Cmp::CreateRev(k.member(n), 0),
            Cmp::ModRev(k.rebalance_progress(g, n), rev),
        ];
        let put = Op::Put {
            key: k.rebalance_progress(g, n),
            value: serde_json::to_vec(&rec).expect("serializable"),
            lease: 0,
        };
        let mark = Mark {
            generation: g,
            by: ctx.node.to_string(),
            why: why.clone(),
            at_ms: rec.at_ms,
        };
        let quarantine = Op::Put {
            key: k.lost(n),
            value: serde_json::to_vec(&mark).expect("serializable"),
            lease: 0,
        };
        match ctx.store.txn(&c, &[put, quarantine]) {
            Ok((ok, _)) => Ok(ok.then_some(why)),
            Err(e) => Err(format!(
                "mark node {n}'s part of rebalance {g} lost: {e} (tried again next round)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::rebalance_state::COMPLETED;
    use crate::agent::store::MemStore;
    use serde_json::json;

    /// Generation `g` with sets a and b, b's set in state `b`.
    fn topo(g: u64, b: &str) -> Topology {
        let set = |id: &str, state: &str| {
            json!({"id": id, "state": state, "weight": 1.0,
                "disks": [{"id": "d0", "path": format!("/nonexistent/{id}"), "node": id}]})
        };
        let v = json!({"generation": g, "pools": [{"id": "p", "sets": [set("a", "active"), set("b", b)]}]});
        Topology::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    struct World {
        store: MemStore,
        keys: Keys,
        inc: i64,
        spec: Spec,
        spec_rev: i64,
    }

    fn world(b: &str) -> World {
        let (store, keys) = (MemStore::default(), Keys::new("t").unwrap());
        let lease = store.grant(30).unwrap();
        let inc = store.put(&keys.member("a"), b"{}", lease).unwrap();
        let spec = Spec {
            generation: 3,
            from_generation: 2,
            order: "size".into(),
            previous: topo(2, "active"),
            topology: topo(3, b),
            created_ms: 0,
        };
        let spec_rev = store
            .put(&keys.rebalance(3), &serde_json::to_vec(&spec).unwrap(), 0)
            .unwrap();
        store.put(&keys.topology(), b"{}", 0).unwrap();
        World {
            store,
            keys,
            inc,
            spec,
            spec_rev,
        }
    }

    impl World {
        /// One look by node a (a fresh view); the nodes it marked.
        fn ctx(&self) -> WorkCtx<'_> {
            WorkCtx {
                store: &self.store,
                keys: &self.keys,
                node: "a",
                lease: 0,
                incarnation: self.inc,
                fence: 0,
                control: Default::default(),
                progress_interval: Duration::from_secs(1),
            }
        }

        fn mark(&self, gone: &mut Gone) -> Vec<String> {
            let ctx = self.ctx();
            let mut v = View::default();
            v.refresh(&self.store, &self.keys.root).unwrap();
            gone.see(&ctx, &v);
            let m = gone.mark(&ctx, &v, &self.spec, self.spec_rev);
            m.into_iter().map(|(n, _)| n).collect()
        }

        fn state_of(&self, n: &str) -> Option<NodeProgress> {
            let kv = self
                .store
                .get(&self.keys.rebalance_progress(3, n))
                .unwrap()?;
            Some(serde_json::from_slice(&kv.value).unwrap())
        }
    }

    const AFTER: Duration = Duration::from_millis(200);

    #[test]
    fn a_removed_node_without_a_member_key_for_lost_after_is_marked_lost_once() {
        let w = world("removed");
        let mut gone = Gone::new(AFTER);
        let rec = NodeProgress {
            state: "migrating".into(),
            moved: 5,
            ..Default::default()
        };
        let value = serde_json::to_vec(&rec).unwrap();
        w.store
            .put(&w.keys.rebalance_progress(3, "b"), &value, 0)
            .unwrap();
        assert!(w.mark(&mut gone).is_empty(), "not gone for a TTL yet");
        std::thread::sleep(AFTER + Duration::from_millis(50));
        assert_eq!(w.mark(&mut gone), ["b"]);
        let b = w.state_of("b").unwrap();
        assert_eq!((b.state.as_str(), b.moved), (LOST, 5), "its counts kept");
        assert!(
            b.why.contains(
                "node b removed and not running (no member key for 200ms, as node a saw)"
            ),
            "{}",
            b.why
        );
        assert!(w.mark(&mut gone).is_empty(), "marked once");
        // the same transaction quarantined b: its agent will refuse to run
        let q = quarantined(&w.store, &w.keys, "b").unwrap().unwrap();
        assert!(
            q.starts_with("node b was marked lost at generation 3 by node a (node b removed")
                && q.contains("ferry cluster clear-lost b"),
            "{q}"
        );
        assert!(quarantined(&w.store, &w.keys, "a").unwrap().is_none());
        // the next generation: b, still quarantined (it cannot have run since), is lost at once
        let w4 = next_generation(&w);
        let lost = w.store.get(&w.keys.lost("b")).unwrap().unwrap().value;
        w4.store.put(&w4.keys.lost("b"), &lost, 0).unwrap();
        assert_eq!(w4.mark(&mut Gone::new(Duration::from_secs(600))), ["b"]);
        let k = w4.keys.rebalance_progress(4, "b");
        let b4: NodeProgress =
            serde_json::from_slice(&w4.store.get(&k).unwrap().unwrap().value).unwrap();
        assert_eq!(b4.state, LOST);
        // once the mark was cleared (b may have run since), lost under 3 is not enough
        let w4 = next_generation(&w);
        assert!(w4.mark(&mut Gone::new(Duration::from_secs(600))).is_empty());
        assert!(w4.store.get(&k).unwrap().is_none());
    }

    /// Generation 4 after `w`'s 3 (b removed in both), with `w`'s record of b under 3.
    fn next_generation(w: &World) -> World {
        let mut w4 = world("removed");
        w4.spec.generation = 4;
        w4.spec.from_generation = 3;
        let lost3 = w.store.get(&w.keys.rebalance_progress(3, "b")).unwrap();
        let v = lost3.unwrap().value;
        w4.store
            .put(&w4.keys.rebalance_progress(3, "b"), &v, 0)
            .unwrap();
        let v = serde_json::to_vec(&w4.spec).unwrap();
        w4.spec_rev = w4.store.put(&w4.keys.rebalance(4), &v, 0).unwrap();
        w4
    }

    #[test]
    fn a_node_that_answers_over_the_peer_transport_is_not_marked() {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        use std::sync::{Arc, Mutex};
        let w = world("removed");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(AtomicBool::new(true));
        let (to, up) = (asked.clone(), answers.clone());
        let probe: Probe = Box::new(move |n, addr| {
            to.lock().unwrap().push(format!("{n}@{addr}"));
            match up.load(Relaxed) {
                true => Ok(()),
                false => Err("connect: refused".into()),
            }
        });
        let mut gone = Gone::new(Duration::ZERO).with_probe(probe);
        // b runs: its member record names its peer address
        let lease = w.store.grant(30).unwrap();
        let info = MemberInfo {
            node: "b".into(),
            addr: "x".into(),
            weight: 1.0,
            pid: 1,
            instance: "i".into(),
            started_ms: 0,
            peer: Some("10.0.0.2:7000".into()),
        };
        let v = serde_json::to_vec(&info).unwrap();
        w.store.put(&w.keys.member("b"), &v, lease).unwrap();
        assert!(w.mark(&mut gone).is_empty());
        // cut off from etcd alone: its key went, it still answers
        w.store.revoke(lease).unwrap();
        assert!(w.mark(&mut gone).is_empty());
        assert!(w.mark(&mut gone).is_empty());
        assert_eq!(*asked.lock().unwrap(), ["b@10.0.0.2:7000"], "once a while");
        assert!(w.state_of("b").is_none());
        // down for real: marked, the probe's answer in the why
        answers.store(false, Relaxed);
        gone.answered.clear(); // as after PROBE_EVERY
        assert_eq!(w.mark(&mut gone), ["b"]);
        let why = w.state_of("b").unwrap().why;
        assert!(
            why.contains(
                "as node a saw), and unreachable (its peer transport at 10.0.0.2:7000 does \
                 not answer: connect: refused)"
            ),
            "{why}"
        );
        // never seen with an address: nothing to ask, it counts as unreachable
        let w = world("removed");
        let mut gone = Gone::new(Duration::ZERO).with_probe(Box::new(|_, _| Ok(())));
        assert_eq!(w.mark(&mut gone), ["b"]);
        let why = w.state_of("b").unwrap().why;
        assert!(
            why.contains("(node a saw no peer address of it to ask)"),
            "{why}"
        );
    }

    #[test]
    fn an_absence_this_agent_did_not_watch_throughout_starts_anew() {
        let mut w = world("removed");
        let mut gone = Gone::new(AFTER);
        assert!(w.mark(&mut gone).is_empty(), "b seen gone");
        // this agent was blind longer than MAX_GAP: the absence counts from its next look
        gone.looked = gone.looked.map(|(t, i)| (t - MAX_GAP - AFTER, i));
        gone.since.values_mut().for_each(|t| *t -= MAX_GAP + AFTER);
        assert!(w.mark(&mut gone).is_empty(), "after a gap");
        // a new run of this agent (a new incarnation): anew as well
        gone.since.values_mut().for_each(|t| *t -= AFTER);
        w.store.txn(&[], &[Op::Delete(w.keys.member("a"))]).unwrap();
        w.inc = w.store.put(&w.keys.member("a"), b"{}", 0).unwrap();
        assert!(w.mark(&mut gone).is_empty(), "after a new run");
        assert!(w.state_of("b").is_none());
        // watched throughout for AFTER: marked
        gone.since.values_mut().for_each(|t| *t -= AFTER);
        assert_eq!(w.mark(&mut gone), ["b"]);
    }

    #[test]
    fn no_mark_once_the_node_has_claimed_its_key_after_the_view_was_taken() {
        let w = world("removed");
        let ctx = w.ctx();
        let mut v = View::default();
        v.refresh(&w.store, &w.keys.root).unwrap();
        w.store.put(&w.keys.member("b"), b"{}", 0).unwrap();
        let gone = Gone::new(Duration::ZERO);
        let w_b = ("b", "a test");
        assert_eq!(gone.write(&ctx, &v, &w.spec, w.spec_rev, w_b), Ok(None));
        assert!(w.state_of("b").is_none());
        assert!(quarantined(&w.store, &w.keys, "b").unwrap().is_none());
    }

    #[test]
    fn a_running_removed_node_a_draining_one_or_a_finished_part_is_never_marked() {
        // running: its member key is there
        let w = world("removed");
        let mut gone = Gone::new(Duration::ZERO);
        let lease = w.store.grant(30).unwrap();
        w.store.put(&w.keys.member("b"), b"{}", lease).unwrap();
        assert!(w.mark(&mut gone).is_empty());
        // it stops: seen gone, then it claims its key again before a TTL passed
        let mut gone = Gone::new(AFTER);
        w.store.revoke(lease).unwrap();
        assert!(w.mark(&mut gone).is_empty());
        w.store.put(&w.keys.member("b"), b"{}", 0).unwrap();
        assert!(w.mark(&mut gone).is_empty());
        std::thread::sleep(AFTER + Duration::from_millis(50));
        let del = Op::Delete(w.keys.member("b"));
        w.store.txn(&[], &[del]).unwrap();
        assert!(w.mark(&mut gone).is_empty(), "its absence counts anew");
        assert!(w.state_of("b").is_none());
        // draining and down: its disks are its own, the job waits for it
        let w = world("draining");
        let mut gone = Gone::new(Duration::ZERO);
        assert!(w.mark(&mut gone).is_empty());
        // removed and down, but its part was completed before
        let w = world("removed");
        let done = NodeProgress {
            state: COMPLETED.into(),
            ..Default::default()
        };
        let value = serde_json::to_vec(&done).unwrap();
        w.store
            .put(&w.keys.rebalance_progress(3, "b"), &value, 0)
            .unwrap();
        assert!(w.mark(&mut Gone::new(Duration::ZERO)).is_empty());
        assert_eq!(w.state_of("b").unwrap().state, COMPLETED);
    }
}
