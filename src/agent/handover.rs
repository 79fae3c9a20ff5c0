//! Which moves of a rebalance wait for another node's hand-over. A copy waiting at its owner
//! of generations ago (the moves of the generations in between did not reach it yet) skipped
//! the owners of those generations; one of them may keep the key's tombstone (a delete under
//! its generation), which it hands to the owners under the newest generation `G` before it
//! publishes `served/<node>` >= `G` (`objects::Watch::publish`). So a copy is moved into
//! `G`'s owner only once every such node has published that: before, the copy could be of a
//! deleted version that nobody at the destination knows of yet. While one of them is down
//! the moves of those keys wait (the others go on); the rebalance is not completed until
//! they went.
//!
//! A node that can never hand over does not hold them: one whose part of `G`'s rebalance is
//! marked lost (`agent::lost`: the newest topology gives it no disk of an active or draining
//! set, and it has had no member key in etcd for `lost_after_secs`: no agent of it runs). Its
//! tombstones are lost with its disks. What can come back: a key deleted through that node
//! while it owned the key under a generation in between, of which an older copy still
//! waited at an owner of generations before: once the node is marked lost, that copy moves
//! to `G`'s owner and is served again, as the version before the delete. That is what the
//! loss of the node's disks means anyway: every change it recorded while it owned a key
//! (the objects written to it, the deletes it kept) is gone, and what is left is the older
//! state on the other nodes' disks, which the rebalance now places. Nothing else changes:
//! deletes it handed over before (it published `served` >= `G`), or that another owner also
//! keeps (the delete reached every node of the chain), still win, and keys it never owned
//! are not concerned. A removed node whose agent still runs has its member key, so it is
//! never marked lost: it takes the newest topology, hands its tombstones over and publishes
//! `served` like any other, and the moves wait for that. One that returns after it was
//! marked lost does the same (the deletes it kept win again where a copy came back: the
//! owner drops the copies no newer than each tombstone), but moves nothing of `G` itself.
//!
//! The holds read nothing from etcd: the rebalancer hands them the agent's view once a round
//! (`Known::see`), which reads every key once per change.

use super::keys::Keys;
use super::rebalance_state::LOST;
use super::view::View;
use crate::cluster::migrate::Hold;
use crate::cluster::store::Cluster;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the holds of a run know of the other nodes, from the agent's view of etcd.
#[derive(Default)]
pub struct Known(Mutex<Seen>);

#[derive(Default)]
struct Seen {
    /// Taken from a view at least once (before that every held move waits).
    ready: bool,
    /// The rebalance generation `lost` is of.
    generation: u64,
    /// `served/<node>` of each node that published one.
    served: HashMap<String, u64>,
    /// The nodes whose part of `generation`'s rebalance is marked lost.
    lost: HashSet<String>,
}

impl Known {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the nodes' `served` values and the lost parts of rebalance `generation` from
    /// `view` (one entry per node: bounded by the cluster's nodes).
    pub fn see(&self, keys: &Keys, view: &View, generation: u64) {
        let name = |key: &str, prefix: &str| key[prefix.len()..].to_string();
        let sp = keys.served("");
        let served = view
            .under(&sp)
            .map(|kv| (name(&kv.key, &sp), super::objects::served_value(&kv.value)))
            .collect();
        let pp = keys.rebalance_progress_prefix(generation);
        let lost = view
            .under(&pp)
            .filter(|kv| {
                serde_json::from_slice::<super::rebalance_state::NodeProgress>(&kv.value)
                    .is_ok_and(|p| p.state == LOST)
            })
            .map(|kv| name(&kv.key, &pp))
            .collect();
        *self.lock() = Seen {
            ready: true,
            generation,
            served,
            lost,
        };
    }
}

impl Seen {
    /// Why a move into generation `g` waits for node `n` (an owner under `owned_in`), if it
    /// does: None once `n` published `served` >= `g`, never published one (it served no
    /// layer, so it keeps no tombstone), or its part of `g` is lost.
    fn waits_for(&self, n: &str, owned_in: u64, g: u64) -> Option<String> {
        if !self.ready {
            return Some(format!("node {n}'s served generation not read yet"));
        }
        if self.generation == g && self.lost.contains(n) {
            return None;
        }
        match self.served.get(n) {
            Some(&s) if s < g => Some(format!(
                "node {n} (an owner under generation {owned_in}) has not handed its \
                 tombstones over to generation {g} yet (served/{n} = {s} < {g}: down?)"
            )),
            _ => None,
        }
    }
}

/// The hold of the moves into generation `cluster.current` on node `node` (see the module
/// comment), from what `known` says.
pub fn hold(known: Arc<Known>, node: &str, cluster: Arc<Cluster>) -> Hold {
    let me = node.to_string();
    Arc::new(move |from: &str, p: u16| {
        let g = cluster.current.topo.generation;
        let to = cluster.node_of(&cluster.current.owner_key(p));
        let seen = known.lock();
        for (owned_in, n) in cluster.owners_since(p, from) {
            if n == me || Some(n.as_str()) == to {
                continue; // its tombstones are here, or where the copy goes
            }
            if let Some(why) = seen.waits_for(&n, owned_in, g) {
                return Some((n, why));
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::rebalance_state::NodeProgress;
    use crate::agent::store::{ClusterStore, MemStore};
    use crate::cluster::topology::one_disk_sets as topo;

    /// Generations 1, 2, 3 owning everything on a, b, c (node a serves set a, ...).
    fn a_b_c(d: &std::path::Path) -> Arc<Cluster> {
        let t = |g: u64, sets: &[&str]| {
            let mut t = topo(d, g, sets);
            for s in t.pools.iter_mut().flat_map(|p| p.sets.iter_mut()) {
                for disk in s.disks.iter_mut() {
                    disk.node = Some(s.id.clone());
                }
            }
            t
        };
        let (g1, g2, g3) = (t(1, &["a"]), t(2, &["b"]), t(3, &["c"]));
        Arc::new(Cluster::new(g3, Some(g2), None).with_older(vec![g1]))
    }

    #[test]
    fn a_move_past_an_owner_not_yet_on_the_newest_generation_waits_for_it() {
        let d = tempfile::tempdir().unwrap();
        let c = a_b_c(d.path());
        let store = MemStore::default();
        let keys = Keys::new("t").unwrap();
        let known = Arc::new(Known::default());
        let h = hold(known.clone(), "a", c.clone());
        let from_a = c.older[0].owner_key(7);
        let (n, why) = h(&from_a, 7).expect("nothing seen yet: held");
        assert!(why.contains("not read yet"), "{n}: {why}");
        let see = |known: &Known| {
            let mut v = View::default();
            v.refresh(&store, &keys.root).unwrap();
            known.see(&keys, &v, 3);
        };
        store.put(&keys.served("b"), b"2", 0).unwrap();
        store.put(&keys.served("c"), b"3", 0).unwrap();
        see(&known);
        let (n, why) = h(&from_a, 7).expect("held for b");
        assert_eq!(n, "b");
        assert!(
            why.contains("generation 2") && why.contains("served/b = 2 < 3"),
            "{why}"
        );
        // a copy at b's own disk (the previous owner) skips nobody
        assert!(h(&c.previous.as_ref().unwrap().owner_key(7), 7).is_none());
        // b hands over and publishes 3: the move goes (once the view shows it)
        store.put(&keys.served("b"), b"3", 0).unwrap();
        assert!(h(&from_a, 7).is_some(), "not seen yet");
        see(&known);
        assert!(h(&from_a, 7).is_none());
        // a node that never served a layer keeps no tombstone
        let del = crate::agent::store::Op::Delete(keys.served("b"));
        store.txn(&[], &[del]).unwrap();
        see(&known);
        assert!(h(&from_a, 7).is_none());
    }

    #[test]
    fn a_node_whose_part_is_lost_holds_no_move_of_that_generation() {
        let d = tempfile::tempdir().unwrap();
        let c = a_b_c(d.path());
        let store = MemStore::default();
        let keys = Keys::new("t").unwrap();
        let known = Arc::new(Known::default());
        let h = hold(known.clone(), "a", c.clone());
        let from_a = c.older[0].owner_key(7);
        store.put(&keys.served("b"), b"2", 0).unwrap();
        let lost = NodeProgress {
            state: LOST.into(),
            why: "node b removed and not running".into(),
            ..Default::default()
        };
        let rec = serde_json::to_vec(&lost).unwrap();
        store
            .put(&keys.rebalance_progress(2, "b"), &rec, 0)
            .unwrap();
        let mut v = View::default();
        v.refresh(&store, &keys.root).unwrap();
        known.see(&keys, &v, 3);
        assert_eq!(
            h(&from_a, 7).map(|x| x.0),
            Some("b".into()),
            "lost under 2 only"
        );
        store
            .put(&keys.rebalance_progress(3, "b"), &rec, 0)
            .unwrap();
        v.refresh(&store, &keys.root).unwrap();
        known.see(&keys, &v, 3);
        assert!(h(&from_a, 7).is_none(), "b's part of 3 is lost");
        // b still running (its part not lost, whatever it did before): held again
        let running = serde_json::to_vec(&NodeProgress::default()).unwrap();
        store
            .put(&keys.rebalance_progress(3, "b"), &running, 0)
            .unwrap();
        v.refresh(&store, &keys.root).unwrap();
        known.see(&keys, &v, 3);
        assert!(h(&from_a, 7).is_some());
    }
}
