//! Which moves of a rebalance wait for another node's hand-over. A copy waiting at its owner
//! of generations ago (the moves of the generations in between did not reach it yet) skipped
//! the owners of those generations; one of them may keep the key's tombstone (a delete under
//! its generation), which it hands to the owners under the newest generation `G` before it
//! publishes `served/<node>` >= `G` (`objects::Watch::publish`). So a copy is moved into
//! `G`'s owner only once every such node has published that: before, the copy could be of a
//! deleted version that nobody at the destination knows of yet. While one of them is down
//! the moves of those keys wait (the others go on); the rebalance is not completed until
//! they went.

use super::keys::Keys;
use super::store::ClusterStore;
use crate::cluster::migrate::Hold;
use crate::cluster::store::Cluster;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a node's `served` value read from etcd below `G` is trusted before it is read
/// again (once it is `G` or more it stays so).
const FRESH: Duration = Duration::from_secs(1);

/// What is known of one node's `served`: the value (None: never published) and when read.
type Seen = (Option<u64>, Instant);

/// The hold of the moves into generation `cluster.current` on node `node` (see the module
/// comment), reading `served/<node>` from `store` at most once per `FRESH` per node.
pub fn hold(store: Arc<dyn ClusterStore>, keys: &Keys, node: &str, cluster: Arc<Cluster>) -> Hold {
    let me = node.to_string();
    let root = keys.root.clone();
    let seen: Mutex<HashMap<String, Seen>> = Mutex::default();
    Arc::new(move |from: &str, p: u16| {
        let g = cluster.current.topo.generation;
        let to = cluster.node_of(&cluster.current.owner_key(p));
        let keys = Keys { root: root.clone() };
        for (owned_in, n) in cluster.owners_since(p, from) {
            if n == me || Some(n.as_str()) == to {
                continue; // its tombstones are here, or where the copy goes
            }
            let mut cache = seen.lock().unwrap_or_else(|e| e.into_inner());
            let why = match served(&*store, &keys, &n, g, &mut cache) {
                Ok(true) => continue,
                Ok(false) => format!(
                    "node {n} (an owner under generation {owned_in}) has not handed its \
                     tombstones over to generation {g} yet (served/{n} < {g}: down?)"
                ),
                Err(e) => format!("node {n}'s served generation unknown ({e})"),
            };
            return Some((n, why));
        }
        None
    })
}

/// Whether node `n` routes by generation `g` or newer, as it published (never published: it
/// served no layer, so it keeps no tombstone).
fn served(
    store: &dyn ClusterStore,
    keys: &Keys,
    n: &str,
    g: u64,
    cache: &mut HashMap<String, Seen>,
) -> Result<bool, String> {
    let ok = |v: Option<u64>| v.is_none_or(|s| s >= g);
    if let Some((v, at)) = cache.get(n)
        && (ok(*v) || at.elapsed() < FRESH)
    {
        return Ok(ok(*v));
    }
    let v = super::objects::served_by(store, keys, n)?;
    if cache.len() >= 4096 {
        cache.clear(); // bounded: one entry per node
    }
    cache.insert(n.to_string(), (v, Instant::now()));
    Ok(ok(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::store::MemStore;
    use crate::cluster::topology::one_disk_sets as topo;

    #[test]
    fn a_move_past_an_owner_not_yet_on_the_newest_generation_waits_for_it() {
        let d = tempfile::tempdir().unwrap();
        let t = |g: u64, sets: &[&str]| {
            let mut t = topo(d.path(), g, sets);
            for s in t.pools.iter_mut().flat_map(|p| p.sets.iter_mut()) {
                for disk in s.disks.iter_mut() {
                    disk.node = Some(s.id.clone()); // node a serves set a, ...
                }
            }
            t
        };
        let (g1, g2, g3) = (t(1, &["a"]), t(2, &["b"]), t(3, &["c"]));
        let c = Cluster::new(g3, Some(g2), None).with_older(vec![g1]);
        let c = Arc::new(c);
        let store = Arc::new(MemStore::default());
        let keys = Keys::new("t").unwrap();
        let h = hold(store.clone(), &keys, "a", c.clone());
        store.put(&keys.served("b"), b"2", 0).unwrap();
        store.put(&keys.served("c"), b"3", 0).unwrap();
        let from_a = c.older[0].owner_key(7);
        let (n, why) = h(&from_a, 7).expect("held for b");
        assert_eq!(n, "b");
        assert!(
            why.contains("generation 2") && why.contains("served/b < 3"),
            "{why}"
        );
        // a copy at b's own disk (the previous owner) skips nobody
        assert!(h(&c.previous.as_ref().unwrap().owner_key(7), 7).is_none());
        // b hands over and publishes 3: the move goes (read again after FRESH)
        store.put(&keys.served("b"), b"3", 0).unwrap();
        std::thread::sleep(FRESH + Duration::from_millis(50));
        assert!(h(&from_a, 7).is_none());
        // a node that never served a layer keeps no tombstone
        store.put(&keys.served("b"), b"1", 0).unwrap();
        let h2 = hold(store.clone(), &Keys::new("u").unwrap(), "a", c);
        assert!(h2(&from_a, 7).is_none());
    }
}
