//! The objects an agent serves: the cluster's topology v2 from etcd (`ferry cluster apply`
//! stores it, with the generation it replaced, and the older generations whose rebalance is
//! not completed yet come from the rebalance records), with only this node's disks opened (their
//! identity checked); other nodes' disks are reached through the peer transport. A watcher
//! thread swaps in a new object layer when the generation changes (the registry and the key
//! locks carry over, so writers under both maps still exclude each other). Once requests
//! routed by the layer before are done, the node says so in etcd (`served/<node>`): the
//! moves of a generation start only when every live agent routes by it (`all_serve`), so a
//! request routed by an older map never meets an object that has already moved. The same
//! thread collects the registry's tombstones once the rebalance they guard is completed
//! everywhere (`rebalance_state::settled`). Before a new layer is published as served, the
//! tombstones this node keeps go to their keys' owners under it (`forward`, the delete's time
//! kept): the moves of the generation start only after that, so a copy of a deleted version
//! that one of them brings to the new owner is dropped there instead of bringing it back.
//! A client's delete that reaches this node later from an agent still routing by an older
//! layer is passed on to the key's owner by the peer server (`peer::server`, `pass_on`).

use super::keys::Keys;
use super::rebalance::ClusterFor;
use super::store::ClusterStore;
use super::topo::check_v2;
use crate::cluster::registry::Registry;
use crate::cluster::store::Cluster;
use crate::cluster::topology::Topology;
use crate::s3::remote::{Burial, ClusterCell, Remote};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the watcher reads the topology keys.
const POLL: Duration = Duration::from_millis(500);
/// How often the watcher looks whether tombstones can go.
const COLLECT_EVERY: u32 = 20;
/// How long a new layer waits for requests routed by the one before it (each is bounded by
/// the peer and S3 I/O timeouts) before it is published as served anyway.
const DRAIN: Duration = Duration::from_secs(30);
/// How long a new layer waits for its tombstones to reach their owners (a node that cannot
/// be reached) before it is published as served anyway; the rest are sent when it answers.
const FORWARD_WAIT: Duration = Duration::from_secs(30);
/// Tombstones read from the registry at a time while forwarding them (each owner gets its
/// share of a page in one Bury where the transport's bounds allow: `peer::msg::MAX_BURY`).
const FORWARD_PAGE: usize = 4096;

pub struct Objects {
    /// The object layer now (None until a topology is stored and this node's disks pass).
    pub cell: Arc<ClusterCell>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Objects {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Watch {
    store: Arc<dyn ClusterStore>,
    keys: Keys,
    node: String,
    registry: Arc<Registry>,
    cell: Arc<ClusterCell>,
    /// The other nodes (tombstones are forwarded through it; None: no peer transport).
    remote: Option<Arc<dyn Remote>>,
    /// Since when the layer served now waits for its tombstones to reach their owners, and
    /// which owners they have still to reach (None: every one).
    unforwarded: Option<(std::time::Instant, Option<HashSet<String>>)>,
    /// The generations of the layer served now (current, previous, older ones).
    built: Option<Vec<u64>>,
    /// Those whose layer could not be built, said once.
    said: Option<Vec<u64>>,
    /// A generation served here but not yet published in etcd.
    unpublished: Option<u64>,
    /// Rounds since tombstones were last looked at.
    rounds: u32,
    /// When this agent began serving objects: temps on its disks older than that are a
    /// killed run's (`sweep`).
    started: std::time::SystemTime,
}

fn parse(what: &str, v: &[u8]) -> Result<Topology, String> {
    let t = Topology::parse(v).map_err(|(f, m)| format!("{what} in etcd: {f}: {m}"))?;
    check_v2(&t).map_err(|m| format!("{what} in etcd: {m}"))?;
    Ok(t)
}

/// The topologies a layer is built of: current, previous, older ones not settled yet.
type Topologies = (Topology, Option<Topology>, Vec<Topology>);

impl Watch {
    fn read(&self) -> Result<Option<Topologies>, String> {
        let get = |k: String| self.store.get(&k).map_err(|e| e.to_string());
        let Some(cur) = get(self.keys.topology())? else {
            return Ok(None);
        };
        let cur = parse("topology", &cur.value)?;
        let prev = match get(self.keys.previous_topology())? {
            Some(kv) => Some(parse("previous topology", &kv.value)?),
            None => None,
        };
        let older = match &prev {
            Some(p) => {
                let limit = crate::cluster::store::MAX_GENERATIONS - 1;
                let mut v = super::rebalance_state::unsettled(
                    &*self.store,
                    &self.keys,
                    cur.generation,
                    limit,
                )?;
                v.retain(|t| t.generation < p.generation);
                v
            }
            None => Vec::new(),
        };
        Ok(Some((cur, prev, older)))
    }

    /// The nodes whose part of generation `g`'s rebalance is marked lost (`agent::lost`):
    /// their disks are gone, the object layer asks them nothing.
    fn lost(&self, g: u64) -> Result<HashSet<String>, String> {
        let prefix = self.keys.rebalance_progress_prefix(g);
        let kvs = self
            .store
            .range(&prefix, false)
            .map_err(|e| e.to_string())?;
        let lost = |kv: &super::store::Kv| {
            serde_json::from_slice::<super::rebalance_state::NodeProgress>(&kv.value)
                .is_ok_and(|p| p.state == super::rebalance_state::LOST)
        };
        Ok(kvs
            .kvs
            .iter()
            .filter(|kv| lost(kv))
            .map(|kv| kv.key[prefix.len()..].to_string())
            .collect())
    }

    /// One look at etcd: a new generation becomes the object layer once this node's disks
    /// pass their identity check (else it says why, once per generation, and tries again
    /// next round: a disk mounted late). The nodes lost under it are set on it each time.
    fn round(&mut self) {
        let read = match self.read() {
            Ok(Some(t)) => self.lost(t.0.generation).map(|lost| (t, lost)),
            Ok(None) => return,
            Err(m) => Err(m),
        };
        let ((cur, prev, older), lost) = match read {
            Ok(x) => x,
            Err(m) => return eprintln!("ferry agent {}: {m}", self.node),
        };
        let mut gens = vec![cur.generation, prev.as_ref().map_or(0, |p| p.generation)];
        gens.extend(older.iter().map(|t| t.generation));
        if self.built.as_ref() == Some(&gens) {
            if let Some(c) = self.cell.get() {
                c.set_lost(lost);
            }
            return;
        }
        let file = Path::new("etcd topology");
        let built = match self.cell.get() {
            Some(old) => old.retopo(cur, file, prev),
            None => Cluster::open_node(cur, file, prev, Some(self.registry.clone()), &self.node),
        };
        match built.map(|c| c.with_older(older)) {
            Ok(c) => {
                c.set_lost(lost);
                let old = self.cell.get();
                if old.is_none() {
                    let disks = c.disks().map(|(i, p)| (i.to_string(), p.to_path_buf()));
                    super::sweep::orphans(&self.node, disks.collect(), self.started);
                }
                self.cell.set(c);
                drain(old);
                self.unforwarded = Some((std::time::Instant::now(), None));
                self.unpublished = Some(gens[0]);
                self.built = Some(gens);
            }
            Err(e) if self.said.as_ref() != Some(&gens) => {
                eprintln!(
                    "ferry agent {}: topology generation {}: {e}",
                    self.node, gens[0]
                );
                self.said = Some(gens);
            }
            Err(_) => {}
        }
    }

    /// Says in etcd which generation this node routes by (again next round if etcd is away).
    fn publish(&mut self) {
        if let Some((since, only)) = self.unforwarded.take() {
            let failed = self.forward(only.as_ref());
            if !failed.is_empty() {
                self.unforwarded = Some((since, Some(failed)));
                if since.elapsed() < FORWARD_WAIT {
                    return; // the moves of this generation wait for the tombstones
                }
            }
        }
        let Some(g) = self.unpublished else { return };
        let key = self.keys.served(&self.node);
        match self.store.put(&key, g.to_string().as_bytes(), 0) {
            Ok(_) => self.unpublished = None,
            Err(e) => eprintln!("ferry agent {}: put {key}: {e}", self.node),
        }
    }
}

impl Watch {
    /// Sends every tombstone this node keeps to the node that owns its key under the layer
    /// served now (the delete's time and generation kept; the owner drops its copies no
    /// newer and keeps the tombstone), only to the nodes `only` if set. Returns the nodes not
    /// reached, to try again with all of theirs (the registry unreadable: all of them).
    fn forward(&self, only: Option<&HashSet<String>>) -> HashSet<String> {
        let (Some(c), Some(r)) = (self.cell.get(), &self.remote) else {
            return HashSet::new();
        };
        let mut failed = HashSet::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = match self
                .registry
                .tombstones_after(after.as_deref(), FORWARD_PAGE)
            {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("ferry agent {}: forward tombstones: {e}", self.node);
                    return only
                        .cloned()
                        .unwrap_or_else(|| c.other_nodes().into_iter().collect());
                }
            };
            let mut to: std::collections::HashMap<&str, Vec<Burial>> = Default::default();
            for (fk, t) in &page {
                let Some((bucket, key)) =
                    std::str::from_utf8(fk).ok().and_then(|k| k.split_once('/'))
                else {
                    continue; // not a key the S3 endpoint can name
                };
                let p = crate::cluster::partition_of(bucket.as_bytes(), key.as_bytes());
                let Some(n) = c.node_of(&c.current.owner_key(p)) else {
                    continue;
                };
                if n == self.node || failed.contains(n) || only.is_some_and(|o| !o.contains(n)) {
                    continue;
                }
                to.entry(n).or_default().push(Burial {
                    bucket: bucket.into(),
                    key: key.into(),
                    at: t.at,
                    generation: t.generation,
                });
            }
            for (n, v) in to {
                if let Err(e) = r.bury(n, &v) {
                    let (node, count) = (&self.node, v.len());
                    eprintln!("ferry agent {node}: forward {count} tombstones to {n}: {e}");
                    failed.insert(n.to_string());
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == FORWARD_PAGE => after = Some(k.clone()),
                _ => return failed,
            }
        }
    }

    /// Every `COLLECT_EVERY` rounds: drops the tombstones of the generations whose
    /// rebalance is completed on every node (etcd away: next time).
    fn collect(&mut self) {
        self.rounds += 1;
        if self.rounds < COLLECT_EVERY {
            return;
        }
        self.rounds = 0;
        let Some(current) = self.built.as_ref().map(|g| g[0]) else {
            return;
        };
        if !self.registry.tombstone_count().is_ok_and(|n| n > 0) {
            return;
        }
        let kvs = match self.store.range(&self.keys.rebalances(), false) {
            Ok(s) => s.kvs,
            Err(e) => return eprintln!("ferry agent {}: tombstones: {e}", self.node),
        };
        let Some(upto) = super::rebalance_state::settled(&self.keys, &kvs, current) else {
            return;
        };
        if let Err(e) = self.registry.collect_tombstones(upto) {
            eprintln!("ferry agent {}: collect tombstones: {e}", self.node);
        }
    }
}

impl Objects {
    /// The object layer a rebalance of a generation moves on: this one (client writes and
    /// moves share its key locks and registry), once it serves that generation and every
    /// live agent routes by it (etcd away: not yet).
    pub fn moves_on(&self, store: Arc<dyn ClusterStore>, keys: Keys) -> ClusterFor {
        let cell = self.cell.clone();
        Box::new(move |spec| {
            let g = spec.generation;
            let c = cell.get().filter(|c| c.current.topo.generation == g);
            let all = c.is_some() && all_serve(&*store, &keys, g).unwrap_or(false);
            Ok(c.filter(|_| all))
        })
    }
}

/// Waits until nobody but the caller holds `old`: the requests routed by it are done.
fn drain(old: Option<Arc<Cluster>>) {
    let Some(old) = old else { return };
    let start = std::time::Instant::now();
    while Arc::strong_count(&old) > 1 && start.elapsed() < DRAIN {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether every live member's object layer routes by generation `g` or a newer one (a
/// member that serves no objects publishes nothing and does not count): only then may the
/// moves of `g` start anywhere.
pub fn all_serve(store: &dyn ClusterStore, keys: &Keys, g: u64) -> Result<bool, String> {
    let prefix = keys.members();
    let members = store.range(&prefix, true).map_err(|e| e.to_string())?;
    for kv in &members.kvs {
        let node = &kv.key[prefix.len()..];
        if served_by(store, keys, node)?.is_some_and(|s| s < g) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The generation node `node` last published it routes by (`served/<node>`; None: it never
/// published one; a value that does not parse counts as 0, i.e. not yet serving).
pub fn served_by(store: &dyn ClusterStore, keys: &Keys, node: &str) -> Result<Option<u64>, String> {
    let kv = store.get(&keys.served(node)).map_err(|e| e.to_string())?;
    Ok(kv.map(|kv| served_value(&kv.value)))
}

/// The generation a `served/<node>` value says (one that does not parse: 0).
pub fn served_value(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Opens the registry, loads the topology once, and keeps it current on a thread.
pub fn watch(
    store: Arc<dyn ClusterStore>,
    keys: &Keys,
    node: &str,
    registry: &Path,
    remote: Option<Arc<dyn Remote>>,
) -> Result<Objects, String> {
    let reg = Registry::open(registry).map_err(|e| e.to_string())?;
    let cell = Arc::new(ClusterCell::default());
    let mut w = Watch {
        store,
        keys: Keys {
            root: keys.root.clone(),
        },
        node: node.to_string(),
        registry: Arc::new(reg),
        cell: cell.clone(),
        remote,
        unforwarded: None,
        built: None,
        said: None,
        unpublished: None,
        rounds: 0,
        started: std::time::SystemTime::now(),
    };
    w.round();
    w.publish();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ferry-topology".into())
        .spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(POLL);
                w.round();
                w.publish();
                w.collect();
            }
        })
        .map_err(|e| format!("topology thread: {e}"))?;
    Ok(Objects {
        cell,
        stop,
        thread: Some(thread),
    })
}
