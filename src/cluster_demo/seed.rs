//! `ferry demo --cluster --seed`: the objects written straight onto the disks of n1-n4 before
//! their agents start, instead of through the S3 endpoints (which load ~800 small objects/s
//! here: a million would take 20 minutes). Each object is what a PUT under generation 1 leaves:
//! the file `<owner disk>/<bucket>/<key>` (mode 0600, placement v1 picks the disk), the
//! bucket's directory on every disk of the four nodes, and the key's location (disk,
//! generation 1) in the registry of the node serving that disk. Written without an fsync per
//! file, then one syncfs and one registry flush: durable before any agent serves them.
//!
//! The seeding thread runs at nice 19 (the machine is shared; the agents started afterwards
//! keep their own priority).

use super::load::{BUCKET, Expected, key, size_of};
use crate::cluster::Topology;
use crate::cluster::placement::partition_of;
use crate::cluster::registry::Registry;
use crate::cluster::store::{Placed, full_key, object_path};
use crate::demo::XorShift;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

/// Registry entries written per transaction.
const BATCH: usize = 8192;

/// Object `i`'s bytes: its own generator, so any object can be made again from its number.
pub fn body_of(i: usize, max: u64) -> Vec<u8> {
    let mut rng = XorShift((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed | 1);
    let mut b = vec![0u8; size_of(&mut rng, max)];
    rng.fill(&mut b);
    b
}

/// Writes objects 0..n (sizes up to `max`) at their owners under `topo` (generation 1),
/// the registries under `state/<node>/registry.redb`; their expected content.
pub fn seed(topo: &Topology, state: &Path, n: usize, max: u64) -> Result<Expected, String> {
    let (topo, state) = (topo.clone(), state.to_path_buf());
    std::thread::Builder::new()
        .name("demo-seed".into())
        .spawn(move || {
            lower();
            Seeder::new(&topo, &state)?.run(n, max)
        })
        .map_err(|e| format!("seed thread: {e}"))?
        .join()
        .map_err(|_| "the seeding thread panicked".to_string())?
}

/// This thread at nice 19 (a failure only leaves it at its priority: said, not fatal).
fn lower() {
    // SAFETY: plain syscalls on this thread's own id.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if r != 0 {
        eprintln!(
            "ferry demo: setpriority(nice 19) for seeding: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A node's registry and the entries (full key, disk id) not written to it yet.
type Pending = (Registry, Vec<(Vec<u8>, String)>);

struct Seeder {
    placed: Placed,
    /// node -> its registry and what waits for it
    regs: HashMap<String, Pending>,
    generation: u64,
}

impl Seeder {
    fn new(topo: &Topology, state: &Path) -> Result<Seeder, String> {
        let mut regs = HashMap::new();
        for s in topo.sets() {
            for d in &s.disks {
                let node = d.node.clone().ok_or(format!("disk {} has no node", d.id))?;
                let dir = d.path.join(BUCKET);
                crate::cluster::identity::make_dirs_below(&d.path, &dir)
                    .map_err(|e| e.to_string())?;
                if let std::collections::hash_map::Entry::Vacant(v) = regs.entry(node) {
                    let r = Registry::open(&state.join(v.key()).join("registry.redb"))
                        .map_err(|e| e.to_string())?;
                    v.insert((r, Vec::new()));
                }
            }
        }
        let generation = topo.generation;
        Ok(Seeder {
            placed: Placed::new(topo.clone()),
            regs,
            generation,
        })
    }

    fn run(mut self, n: usize, max: u64) -> Result<Expected, String> {
        let mut want = Expected::with_capacity(n);
        for i in 0..n {
            let k = key(i);
            let b = body_of(i, max);
            self.put(&k, &b)?;
            want.insert(k, (xxh3_64(&b), b.len() as u64));
        }
        self.finish()?;
        Ok(want)
    }

    fn put(&mut self, k: &str, b: &[u8]) -> Result<(), String> {
        let p = partition_of(BUCKET.as_bytes(), k.as_bytes());
        let disk = self.placed.owner(p);
        let (root, node) = (disk.path.clone(), disk.node.clone().unwrap_or_default());
        let path = object_path(&root, BUCKET, k.as_bytes());
        write_new(&root, &path, b)?;
        let owner = self.placed.owner_key(p);
        let (reg, pending) = self
            .regs
            .get_mut(&node)
            .ok_or(format!("no registry for node {node}"))?;
        pending.push((full_key(BUCKET, k.as_bytes()), owner));
        if pending.len() >= BATCH {
            reg.set_locations(pending, self.generation)
                .map_err(|e| e.to_string())?;
            pending.clear();
        }
        Ok(())
    }

    /// The last registry entries, then everything durable: one syncfs of the disks'
    /// filesystem(s), one registry flush each.
    fn finish(&mut self) -> Result<(), String> {
        let mut roots: Vec<PathBuf> = Vec::new();
        for s in self.placed.topo.sets() {
            roots.extend(s.disks.iter().map(|d| d.path.clone()));
        }
        for root in &roots {
            syncfs(root)?;
        }
        for (reg, pending) in self.regs.values_mut() {
            reg.set_locations(pending, self.generation)
                .map_err(|e| e.to_string())?;
            pending.clear();
            reg.flush().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A new object file (its directories made below the disk root): it must not exist yet.
fn write_new(root: &Path, path: &Path, b: &[u8]) -> Result<(), String> {
    let dir = crate::meta::parent_dir(path);
    if !dir.is_dir() {
        crate::cluster::identity::make_dirs_below(root, dir).map_err(|e| e.to_string())?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("seed: create '{}': {e}", path.display()))?;
    f.write_all(b)
        .map_err(|e| format!("seed: write '{}': {e}", path.display()))
}

fn syncfs(root: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f =
        std::fs::File::open(root).map_err(|e| format!("seed: open '{}': {e}", root.display()))?;
    // SAFETY: syncfs on an open descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("seed: syncfs '{}': {e}", root.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::store::Cluster;

    #[test]
    fn a_seeded_object_is_read_and_located_like_a_put_one() {
        let d = tempfile::tempdir().unwrap();
        let t = super::super::topology(&d.path().join("disks"), 1, 2).unwrap();
        let want = seed(&t, &d.path().join("state"), 200, 4096).unwrap();
        assert_eq!(want.len(), 200);
        for node in ["n1", "n2"] {
            let reg =
                Registry::open(&d.path().join("state").join(node).join("registry.redb")).unwrap();
            let c = Cluster::for_node(t.clone(), None, Some(reg), node);
            let mut here = 0;
            for i in 0..200 {
                let k = key(i);
                let Some(loc) = c
                    .registry
                    .as_ref()
                    .unwrap()
                    .location(&full_key(BUCKET, k.as_bytes()))
                    .unwrap()
                else {
                    continue;
                };
                here += 1;
                assert_eq!(loc.1, 1, "{k}: generation 1");
                let got = c.get(BUCKET, k.as_bytes()).unwrap().expect("served");
                assert_eq!(got, body_of(i, 4096), "{k}");
                assert_eq!(want[&k], (xxh3_64(&got), got.len() as u64));
                let p = partition_of(BUCKET.as_bytes(), k.as_bytes());
                assert_eq!(loc.0, c.current.owner_key(p), "{k}: at its owner");
            }
            assert!(here > 20, "{node} holds part of them ({here})");
        }
        // Seeding again would overwrite: it refuses (objects are written once).
        assert!(seed(&t, &d.path().join("state2"), 1, 4096).is_err());
    }
}
