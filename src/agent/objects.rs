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
//! everywhere (`rebalance_state::settled`).

use super::keys::Keys;
use super::rebalance::ClusterFor;
use super::store::ClusterStore;
use super::topo::check_v2;
use crate::cluster::registry::Registry;
use crate::cluster::store::Cluster;
use crate::cluster::topology::Topology;
use crate::s3::remote::ClusterCell;
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
    /// The generations of the layer served now (current, previous, older ones).
    built: Option<Vec<u64>>,
    /// Those whose layer could not be built, said once.
    said: Option<Vec<u64>>,
    /// A generation served here but not yet published in etcd.
    unpublished: Option<u64>,
    /// Rounds since tombstones were last looked at.
    rounds: u32,
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

    /// One look at etcd: a new generation becomes the object layer once this node's disks
    /// pass their identity check (else it says why, once per generation, and tries again
    /// next round: a disk mounted late).
    fn round(&mut self) {
        let (cur, prev, older) = match self.read() {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(m) => return eprintln!("ferry agent {}: {m}", self.node),
        };
        let mut gens = vec![cur.generation, prev.as_ref().map_or(0, |p| p.generation)];
        gens.extend(older.iter().map(|t| t.generation));
        if self.built.as_ref() == Some(&gens) {
            return;
        }
        let file = Path::new("etcd topology");
        let built = match self.cell.get() {
            Some(old) => old.retopo(cur, file, prev),
            None => Cluster::open_node(cur, file, prev, Some(self.registry.clone()), &self.node),
        };
        match built.map(|c| c.with_older(older)) {
            Ok(c) => {
                let old = self.cell.get();
                self.cell.set(c);
                drain(old);
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
        let Some(g) = self.unpublished else { return };
        let key = self.keys.served(&self.node);
        match self.store.put(&key, g.to_string().as_bytes(), 0) {
            Ok(_) => self.unpublished = None,
            Err(e) => eprintln!("ferry agent {}: put {key}: {e}", self.node),
        }
    }
}

impl Watch {
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
        let Some(s) = store.get(&keys.served(node)).map_err(|e| e.to_string())? else {
            continue;
        };
        let served = std::str::from_utf8(&s.value)
            .ok()
            .and_then(|v| v.parse().ok());
        if served.unwrap_or(0) < g {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Opens the registry, loads the topology once, and keeps it current on a thread.
pub fn watch(
    store: Arc<dyn ClusterStore>,
    keys: &Keys,
    node: &str,
    registry: &Path,
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
        built: None,
        said: None,
        unpublished: None,
        rounds: 0,
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
