//! The objects an agent serves: the cluster's topology v2 from etcd (`ferry cluster apply`
//! stores it, with the generation it replaced), with only this node's disks opened (their
//! identity checked); other nodes' disks are reached through the peer transport. A watcher
//! thread swaps in a new object layer when the generation changes (the registry and the key
//! locks carry over, so writers under both maps still exclude each other).

use super::keys::Keys;
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
    /// (current, previous) generations last tried.
    seen: Option<(u64, u64)>,
}

fn parse(what: &str, v: &[u8]) -> Result<Topology, String> {
    let t = Topology::parse(v).map_err(|(f, m)| format!("{what} in etcd: {f}: {m}"))?;
    check_v2(&t).map_err(|m| format!("{what} in etcd: {m}"))?;
    Ok(t)
}

impl Watch {
    fn read(&self) -> Result<Option<(Topology, Option<Topology>)>, String> {
        let get = |k: String| self.store.get(&k).map_err(|e| e.to_string());
        let Some(cur) = get(self.keys.topology())? else {
            return Ok(None);
        };
        let prev = match get(self.keys.previous_topology())? {
            Some(kv) => Some(parse("previous topology", &kv.value)?),
            None => None,
        };
        Ok(Some((parse("topology", &cur.value)?, prev)))
    }

    /// One look at etcd: a new generation becomes the object layer once this node's disks
    /// pass their identity check (else it says why, once per generation).
    fn round(&mut self) {
        let (cur, prev) = match self.read() {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(m) => return eprintln!("ferry agent {}: {m}", self.node),
        };
        let gens = (cur.generation, prev.as_ref().map_or(0, |p| p.generation));
        if self.seen == Some(gens) {
            return;
        }
        self.seen = Some(gens);
        let file = Path::new("etcd topology");
        let built = match self.cell.get() {
            Some(old) => old.retopo(cur, file, prev),
            None => Cluster::open_node(cur, file, prev, Some(self.registry.clone()), &self.node),
        };
        match built {
            Ok(c) => self.cell.set(c),
            Err(e) => eprintln!(
                "ferry agent {}: topology generation {}: {e}",
                self.node, gens.0
            ),
        }
    }
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
        seen: None,
    };
    w.round();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ferry-topology".into())
        .spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(POLL);
                w.round();
            }
        })
        .map_err(|e| format!("topology thread: {e}"))?;
    Ok(Objects {
        cell,
        stop,
        thread: Some(thread),
    })
}
