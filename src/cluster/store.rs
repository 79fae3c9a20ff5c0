//! Objects on disks and the `Cluster` API: an object `bucket/key` lives at
//! `<disk>/<bucket>/<key>` on the disk placement picks. Reads look up the registry, then the
//! owner under the current topology, then the owner under the previous one (and under each
//! older generation whose rebalance is not completed yet, `older`), then the forwarding
//! entry, so an object in the middle of a move is always readable. Writes go to the current
//! owner and remove every other copy; deletes remove every copy. Writers (and the rebalance
//! mover's commit step) of one key are serialized by a striped lock.

use super::placement::{PartitionTable, Strategy, disk_in_set, partition_of};
use super::registry::{Registry, Tomb};
use super::topology::{Disk, DiskSet, Topology, disk_key};
use crate::error::Error;
use crate::meta;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// Lock stripes (keys hash onto them): enough that the batches of moves in flight (each
/// holding the stripes of its keys, `lock_many`) leave most of them to clients.
pub const LOCK_STRIPES: usize = 4096;

/// The lock stripe of `bucket/key`.
fn stripe(bucket: &str, key: &[u8]) -> usize {
    (xxhash_rust::xxh3::xxh3_64(&full_key(bucket, key)) % LOCK_STRIPES as u64) as usize
}
pub const MAX_KEY_LEN: usize = 1024;
/// Passes over the read chain before a key is declared missing (a move can slip between the
/// lookups of one pass, never of two: the copy is final before the source goes).
pub const READ_PASSES: usize = 3;

/// Checks a bucket and key are safe as path components under a disk.
pub fn validate(bucket: &str, key: &[u8]) -> Result<(), String> {
    if bucket.is_empty() || bucket.len() > 255 || bucket.contains('/') || bucket.starts_with('.') {
        return Err(format!(
            "bad bucket name '{bucket}' (1-255 bytes, no '/', no leading '.')"
        ));
    }
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!("object keys are 1-{MAX_KEY_LEN} bytes"));
    }
    for c in key.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." || c == b".." || looks_temp(c) || c.len() > 255 {
            return Err(format!(
                "bad object key '{}' (no empty, '.', '..', '*.ferry-tmp' or \
                 '.*.ferry-<16 hex>.tmp' parts, parts up to 255 bytes)",
                String::from_utf8_lossy(key)
            ));
        }
        if c.contains(&0) {
            return Err("object keys may not contain NUL".into());
        }
    }
    Ok(())
}

/// Names the store keeps for its temp files (this build's and older builds'): never objects.
pub fn looks_temp(name: &[u8]) -> bool {
    name.ends_with(b".ferry-tmp") || crate::temp::is_temp_name(name)
}

pub fn object_path(disk: &Path, bucket: &str, key: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    disk.join(bucket).join(std::ffi::OsStr::from_bytes(key))
}

/// The directory fsyncs of this process, one group per directory (`coord::group::Keyed`).
type DirSyncs = crate::coord::group::Keyed<PathBuf, Result<(), (&'static str, i32)>>;
static DIR_SYNCS: std::sync::OnceLock<DirSyncs> = std::sync::OnceLock::new();

/// fsync of the directory `dir`, shared with the callers syncing it at the same time: the
/// answer is that of an fsync begun after this call, so the names this caller created or
/// removed in `dir` before it are durable once it returns Ok. (Many moves and writes land in
/// one bucket directory at once: one fsync then covers them all.)
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    let syncs = DIR_SYNCS.get_or_init(Default::default);
    syncs
        .run(&dir.to_path_buf(), || {
            meta::fsync_dir(dir).map_err(|e| (e.op, e.raw_os_error().unwrap_or(libc::EINVAL)))
        })
        .map_err(|(op, errno)| Error::errno(op, dir, errno))
}

/// The registry key of an object.
pub fn full_key(bucket: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key);
    k
}

/// A topology with its partition table (rendezvous, placement v1).
pub struct Placed {
    pub topo: Topology,
    pub table: PartitionTable,
}

impl Placed {
    pub fn new(topo: Topology) -> Self {
        let table = PartitionTable::build(&topo, Strategy::Rendezvous, 0);
        Placed { topo, table }
    }

    /// The primary owner disk of a partition.
    pub fn owner(&self, p: u16) -> &Disk {
        self.owner_in(p).1
    }

    fn owner_in(&self, p: u16) -> (&DiskSet, &Disk) {
        let set = self
            .topo
            .set(self.table.owner_id(p))
            .expect("table sets come from the topology");
        (set, &set.disks[disk_in_set(p, set)])
    }

    /// The primary owner's cluster-wide name (`set/disk`, see `disk_key`).
    pub fn owner_key(&self, p: u16) -> String {
        let (s, d) = self.owner_in(p);
        disk_key(s, d)
    }

    /// Whether the disk `key` (`set/disk`) holds one of the partition's replicas.
    pub fn is_owner(&self, p: u16, key: &str) -> bool {
        self.table.owners(p).iter().any(|&i| {
            let set = self
                .topo
                .set(&self.table.candidates.ids[i as usize])
                .expect("table sets come from the topology");
            key.strip_prefix(set.id.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|d| set.disks[disk_in_set(p, set)].id == d)
        })
    }
}

/// Every regular file `<disk>/<bucket>/<key>`: f(bucket, key, size). Temp files are not
/// objects. Listing errors are collected, not fatal.
pub fn walk_objects(disk: &Path, errors: &mut Vec<String>, f: &mut dyn FnMut(&str, &[u8], u64)) {
    use std::os::unix::ffi::OsStrExt;
    walk_bucket_files(disk, errors, &mut |bucket, key, e| {
        if !looks_temp(e.file_name().as_bytes()) {
            f(bucket, key, e.metadata().map(|m| m.len()).unwrap_or(0));
        }
    });
}

/// Every regular file below a bucket of `disk` (objects and the store's temps; not ferry's
/// own `.`-named directories, where S3 uploads in progress keep their parts): f(bucket, key,
/// entry). Listing errors are collected, not fatal.
pub fn walk_bucket_files(
    disk: &Path,
    errors: &mut Vec<String>,
    f: &mut dyn FnMut(&str, &[u8], &std::fs::DirEntry),
) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(buckets) = std::fs::read_dir(disk) else {
        errors.push(format!("{}: cannot list", disk.display()));
        return;
    };
    for b in buckets.flatten() {
        if !b.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let bucket = b.file_name().to_string_lossy().into_owned();
        if bucket.starts_with('.') {
            continue; // no bucket is named so: ferry's own (S3 uploads in progress)
        }
        let mut stack = vec![(b.path(), Vec::<u8>::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) => {
                    errors.push(format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            for e in rd.flatten() {
                let mut key = prefix.clone();
                if !key.is_empty() {
                    key.push(b'/');
                }
                key.extend_from_slice(e.file_name().as_bytes());
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push((e.path(), key)),
                    Ok(t) if t.is_file() => f(&bucket, &key, &e),
                    _ => {}
                }
            }
        }
    }
}

/// Where an object is and should be.
#[derive(Debug, serde::Serialize)]
pub struct Location {
    pub partition: u16,
    pub owner: String,
    pub previous_owner: Option<String>,
    pub registry: Option<(String, u64)>,
    pub forward: Option<(String, String)>,
    /// Disks that hold a copy now.
    pub found_on: Vec<String>,
}

/// How many generations a read chain spans at most: the current one, the previous one and
/// the older ones whose rebalance is not completed on every node (`Cluster::older`). `ferry
/// cluster apply` refuses a topology that would make more of them pending.
pub const MAX_GENERATIONS: usize = 4;

pub struct Cluster {
    pub current: Placed,
    pub previous: Option<Placed>,
    /// Generations before `previous`, newest first, whose objects may still wait at their
    /// owners (the rebalances after them are not completed everywhere); at most
    /// `MAX_GENERATIONS - 2`.
    pub older: Vec<Placed>,
    pub registry: Option<Arc<Registry>>,
    locks: Arc<Vec<Mutex<()>>>,
    /// Every disk of every topology here this process serves, by `set/disk`.
    disks: HashMap<String, PathBuf>,
    /// The node (topology v2) serving each disk of every topology here, by `set/disk`.
    nodes: HashMap<String, String>,
    /// Set: only this node's disks are served here (the others through their agents).
    node: Option<String>,
    /// Nodes whose disks are lost (removed from the topology and not running: their part of
    /// the current generation's rebalance is marked lost): no request goes to them.
    lost: std::sync::RwLock<std::collections::HashSet<String>>,
}

fn stripes() -> Arc<Vec<Mutex<()>>> {
    Arc::new((0..LOCK_STRIPES).map(|_| Mutex::new(())).collect())
}

/// `t` with only the disks `node` serves (for their identity check).
fn only_node(t: &Topology, node: &str) -> Topology {
    let mut mine = t.clone();
    for p in &mut mine.pools {
        for s in &mut p.sets {
            s.disks.retain(|d| d.node.as_deref() == Some(node));
        }
    }
    mine
}

impl Cluster {
    pub fn new(current: Topology, previous: Option<Topology>, registry: Option<Registry>) -> Self {
        Self::build(current, previous, registry.map(Arc::new), None, stripes())
    }

    fn build(
        current: Topology,
        previous: Option<Topology>,
        registry: Option<Arc<Registry>>,
        node: Option<String>,
        locks: Arc<Vec<Mutex<()>>>,
    ) -> Self {
        let (mut disks, mut nodes) = (HashMap::new(), HashMap::new());
        for t in previous.iter().chain(std::iter::once(&current)) {
            for s in t.sets() {
                for d in &s.disks {
                    let k = disk_key(s, d);
                    if let Some(n) = &d.node {
                        nodes.insert(k.clone(), n.clone());
                    }
                    if node.is_none() || d.node == node {
                        disks.insert(k, d.path.clone());
                    }
                }
            }
        }
        Cluster {
            current: Placed::new(current),
            previous: previous.map(Placed::new),
            older: Vec::new(),
            registry,
            locks,
            disks,
            nodes,
            node,
            lost: Default::default(),
        }
    }

    /// `new` for one node's agent (topology v2): only the disks `node` serves are ever
    /// touched; the other nodes' disk paths may exist here and be something else.
    pub fn for_node(
        current: Topology,
        previous: Option<Topology>,
        registry: Option<Registry>,
        node: &str,
    ) -> Self {
        let n = Some(node.to_string());
        Self::build(current, previous, registry.map(Arc::new), n, stripes())
    }

    /// `new` for commands on the disks: every disk of `current` must prove it is the disk
    /// (those of removed sets may be gone); see `identity`.
    pub fn open(
        current: Topology,
        file: &Path,
        previous: Option<Topology>,
        registry: Option<Registry>,
    ) -> Result<Self, Error> {
        super::identity::check(&current, file, &|_, _| false)?;
        Ok(Self::new(current, previous, registry))
    }

    /// The cluster as the agent of `node` serves it (topology v2): placement over every
    /// disk, but only the disks whose `node` is `node` are opened here (and must prove their
    /// identity); the others are on other nodes, reached through their agents.
    pub fn open_node(
        current: Topology,
        file: &Path,
        previous: Option<Topology>,
        registry: Option<Arc<Registry>>,
        node: &str,
    ) -> Result<Self, Error> {
        super::identity::check(&only_node(&current, node), file, &|_, _| false)?;
        let n = Some(node.to_string());
        Ok(Self::build(current, previous, registry, n, stripes()))
    }

    /// This cluster under new topologies, sharing the registry, the node and the key locks
    /// (writers under the old map and under the new one still exclude each other).
    pub fn retopo(
        &self,
        current: Topology,
        file: &Path,
        previous: Option<Topology>,
    ) -> Result<Self, Error> {
        let mine = match &self.node {
            Some(n) => only_node(&current, n),
            None => current.clone(),
        };
        super::identity::check(&mine, file, &|_, _| false)?;
        let (r, n) = (self.registry.clone(), self.node.clone());
        Ok(Self::build(current, previous, r, n, self.locks.clone()))
    }

    /// This cluster with the generations before `previous` whose objects may still wait at
    /// their owners (newest first; those past `MAX_GENERATIONS` in all are left out): their
    /// owners join every read chain (so reads, and deletes, reach them) and their disks and
    /// nodes are known here.
    pub fn with_older(mut self, older: Vec<Topology>) -> Self {
        let keep = MAX_GENERATIONS.saturating_sub(2);
        for t in older.into_iter().take(keep) {
            for s in t.sets() {
                for d in &s.disks {
                    let k = disk_key(s, d);
                    if let Some(n) = &d.node {
                        self.nodes.entry(k.clone()).or_insert_with(|| n.clone());
                    }
                    if self.node.is_none() || d.node == self.node {
                        self.disks.entry(k).or_insert_with(|| d.path.clone());
                    }
                }
            }
            self.older.push(Placed::new(t));
        }
        self
    }

    /// The node this process serves (None: every disk is local).
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The nodes that owned partition `p` under the generations here between the newest one
    /// whose owner is disk `from` (none: every one before the current) and the current one,
    /// with the generation, newest first: the nodes a copy on `from` skipped, which may keep
    /// a tombstone of its key.
    pub fn owners_since(&self, p: u16, from: &str) -> Vec<(u64, String)> {
        let mut v = Vec::new();
        for pl in self.previous.iter().chain(&self.older) {
            let d = pl.owner_key(p);
            if d == from {
                break;
            }
            if let Some(n) = self.node_of(&d) {
                v.push((pl.topo.generation, n.to_string()));
            }
        }
        v
    }

    /// The node that serves disk `set/disk` (topology v2).
    pub fn node_of(&self, disk: &str) -> Option<&str> {
        self.nodes.get(disk).map(String::as_str)
    }

    /// Says which nodes' disks are lost (see `lost`): requests skip them from now on.
    pub fn set_lost(&self, nodes: std::collections::HashSet<String>) {
        *self.lost.write().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// Whether node `n`'s disks are lost (nothing is asked of it).
    pub fn is_lost(&self, n: &str) -> bool {
        let lost = self.lost.read().unwrap_or_else(|p| p.into_inner());
        !lost.is_empty() && lost.contains(n)
    }

    /// Every node either topology names, but this one and the lost ones, sorted.
    pub fn other_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .values()
            .filter(|n| Some(n.as_str()) != self.node() && !self.is_lost(n))
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Serializes writers of one key (and the mover's commit of it).
    pub fn lock(&self, bucket: &str, key: &[u8]) -> MutexGuard<'_, ()> {
        self.locks[stripe(bucket, key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// `lock` of several keys at once (a batch of moves): each stripe once, in ascending
    /// order, so two batches (or a batch and a single key's holder) never wait on each other
    /// in a circle.
    pub fn lock_many<'a>(
        &self,
        keys: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<MutexGuard<'_, ()>> {
        let mut s: Vec<usize> = keys.map(|(b, k)| stripe(b, k)).collect();
        s.sort_unstable();
        s.dedup();
        s.into_iter()
            .map(|i| self.locks[i].lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    /// `lock_many` that gives up (None, holding nothing) when the keys are not all taken
    /// within `wait`: a receiver of a batch must not wait on a sender of this node that
    /// holds one of its stripes while it waits for the batch's sender's node (a cycle).
    pub fn try_lock_many<'a>(
        &self,
        keys: impl Iterator<Item = (&'a str, &'a [u8])>,
        wait: std::time::Duration,
    ) -> Option<Vec<MutexGuard<'_, ()>>> {
        let deadline = std::time::Instant::now() + wait;
        let mut s: Vec<usize> = keys.map(|(b, k)| stripe(b, k)).collect();
        s.sort_unstable();
        s.dedup();
        let mut held = Vec::with_capacity(s.len());
        for i in s {
            loop {
                match self.locks[i].try_lock() {
                    Ok(g) => break held.push(g),
                    Err(std::sync::TryLockError::Poisoned(p)) => break held.push(p.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => {}
                }
                if std::time::Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Some(held)
    }

    /// (`set/disk`, path) of every disk of both topologies.
    pub fn disks(&self) -> impl Iterator<Item = (&str, &Path)> + '_ {
        self.disks.iter().map(|(i, p)| (i.as_str(), p.as_path()))
    }

    /// The disk named `set/disk`, or by a bare disk id (registries of older builds, when
    /// disk ids were unique cluster-wide) if exactly one disk has it.
    pub fn disk_path(&self, id: &str) -> Option<&Path> {
        if let Some(p) = self.disks.get(id) {
            return Some(p);
        }
        if id.contains('/') {
            return None;
        }
        let mut bare = self
            .disks
            .iter()
            .filter(|(k, _)| k.rsplit_once('/').is_some_and(|(_, d)| d == id));
        match (bare.next(), bare.next()) {
            (Some((_, p)), None) => Some(p),
            _ => None,
        }
    }

    fn usage(bucket: &str, key: &[u8]) -> Result<(), Error> {
        validate(bucket, key).map_err(|m| Error::usage(Path::new("object"), m))
    }

    /// Writes an object durably at its owner under the current topology (temp, fsync, rename,
    /// fsync dir) and removes every other copy. Wins over a move in flight: the mover sees its
    /// source gone and drops its copy.
    pub fn put(&self, bucket: &str, key: &[u8], data: &[u8]) -> Result<(), Error> {
        self.put_with(bucket, key, &mut |f| f.write_all(data))
    }

    /// `put` for data that arrives in pieces (the S3 endpoint): `fill` writes the object into
    /// the temp file; its error aborts the put (the temp removed) and comes back inside the
    /// returned `Error` (op "write"). The temp is filled outside the key's lock, so a slow
    /// client holds no writer of other keys; rename and cleanup run under it.
    pub fn put_with(
        &self,
        bucket: &str,
        key: &[u8],
        fill: &mut dyn FnMut(&mut std::fs::File) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        Self::usage(bucket, key)?;
        let p = partition_of(bucket.as_bytes(), key);
        self.put_on(&self.current.owner_key(p), bucket, key, fill)
    }

    /// `put_with` on the disk `disk` (`set/disk`), which this process must serve: the owner
    /// under the current generation as the writer saw it (an agent proxying a client's write
    /// names the disk). Other copies on this process's disks are removed.
    pub fn put_on(
        &self,
        disk: &str,
        bucket: &str,
        key: &[u8],
        fill: &mut dyn FnMut(&mut std::fs::File) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        Self::usage(bucket, key)?;
        let Some(root) = self.disks.get(disk).cloned() else {
            let by = self.node_of(disk).map(|n| format!(" (node {n} serves it)"));
            let m = format!("disk {disk} is not served here{}", by.unwrap_or_default());
            return Err(Error::usage(Path::new(disk), m));
        };
        let owner_key = disk.to_string();
        let dst = object_path(&root, bucket, key);
        let dir = meta::parent_dir(&dst).to_path_buf();
        super::identity::make_dirs_below(&root, &dir)?;
        // A temp of its own per writer: two puts of one key never share one.
        let tmp = crate::temp::temp_name(&dst, &crate::temp::Token::random());
        let fd = meta::create_temp(&tmp)?;
        let mut f = std::fs::File::from(fd);
        let written = fill(&mut f)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::os("write", &tmp, e));
        drop(f);
        let _g = self.lock(bucket, key);
        if let Err(e) = written.and_then(|_| meta::rename(&tmp, &dst)) {
            let _ = meta::unlink(&tmp); // best effort; `e` is what the caller sees
            return Err(e);
        }
        sync_dir(&dir)?;
        self.remove_copies(bucket, key, Some(&owner_key))?;
        if let Some(r) = &self.registry {
            let fk = full_key(bucket, key);
            // The key lives again: its tombstone goes, durably (a crash must not bring back
            // a tombstone that shadows this write).
            let durable = r.tombstone(&fk)?.is_some();
            r.set_location(&fk, &owner_key, self.current.topo.generation, durable)?;
        }
        Ok(())
    }

    /// Removes the object from every disk but `keep`; true if any copy went.
    fn remove_copies(&self, bucket: &str, key: &[u8], keep: Option<&str>) -> Result<bool, Error> {
        let mut any = false;
        for (id, path) in &self.disks {
            if Some(id.as_str()) == keep {
                continue;
            }
            let p = object_path(path, bucket, key);
            match meta::unlink(&p) {
                Ok(()) => any = true,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
                Err(e) => return Err(e),
            }
            // Also where there was nothing to unlink: a mover may have just unlinked an old
            // copy there without syncing yet; after this the absence is durable either way.
            match sync_dir(meta::parent_dir(&p)) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(any)
    }

    /// Deletes every copy on this process's disks (and its registry entries). Returns
    /// whether the object existed.
    pub fn rm(&self, bucket: &str, key: &[u8]) -> Result<bool, Error> {
        self.remove(bucket, key, false)
    }

    /// A client's delete of the key, at its owner: `rm`, and on a node's agent a tombstone
    /// (see `registry`) in the same durable commit, so a copy still on its way from another
    /// node, or waiting there, is dropped when it arrives instead of bringing the key back.
    pub fn delete(&self, bucket: &str, key: &[u8]) -> Result<bool, Error> {
        self.remove(bucket, key, self.node.is_some())
    }

    fn remove(&self, bucket: &str, key: &[u8], tombstone: bool) -> Result<bool, Error> {
        Self::usage(bucket, key)?;
        let _g = self.lock(bucket, key);
        let any = self.remove_copies(bucket, key, None)?;
        if let Some(r) = &self.registry {
            let tomb = tombstone.then(|| Tomb {
                at: SystemTime::now(),
                generation: self.current.topo.generation,
            });
            r.remove(&full_key(bucket, key), tomb)?;
        }
        Ok(any)
    }

    /// A tombstone handed over by the node that kept it (the key's owner when it was
    /// deleted): the copies here no newer than it go, and this node keeps it (the later of
    /// two), so a copy of the deleted version that a move brings here later is dropped.
    /// A copy here newer than it (a write since) wins: nothing changes. Whether it was kept.
    pub fn bury(&self, bucket: &str, key: &[u8], tomb: Tomb) -> Result<bool, Error> {
        self.bury_as(bucket, key, tomb, true)
    }

    /// `bury` of each of `tombs` (bucket, key, tombstone) in turn, whose registry changes
    /// become durable together in one commit at the end (a crash before it loses them all:
    /// the node that handed them over still keeps them and hands them over again). Whether
    /// each was kept, in order.
    pub fn bury_many(&self, tombs: &[(&str, &[u8], Tomb)]) -> Result<Vec<bool>, Error> {
        let mut kept = Vec::with_capacity(tombs.len());
        for (bucket, key, tomb) in tombs {
            kept.push(self.bury_as(bucket, key, *tomb, false)?);
        }
        if let Some(r) = &self.registry
            && kept.iter().any(|k| *k)
        {
            r.flush()?;
        }
        Ok(kept)
    }

    fn bury_as(&self, bucket: &str, key: &[u8], tomb: Tomb, durable: bool) -> Result<bool, Error> {
        Self::usage(bucket, key)?;
        let Some(r) = &self.registry else {
            return Ok(false);
        };
        let _g = self.lock(bucket, key);
        for path in self.disks.values() {
            let p = object_path(path, bucket, key);
            let newer = match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() => {
                    m.modified().map_err(|e| Error::os("stat", &p, e))? > tomb.at
                }
                Ok(_) => false,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => false,
                Err(e) => return Err(Error::os("stat", &p, e)),
            };
            if newer {
                return Ok(false);
            }
        }
        self.remove_copies(bucket, key, None)?;
        let fk = full_key(bucket, key);
        let keep = match r.tombstone(&fk)? {
            Some(t) if t.at >= tomb.at => t,
            _ => tomb,
        };
        r.remove_as(&fk, Some(keep), durable)?;
        Ok(true)
    }

    /// The keys of `bucket` under `prefix` this node keeps tombstones of, with their times.
    pub fn deleted_under(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<(String, SystemTime)>, Error> {
        let Some(r) = &self.registry else {
            return Ok(Vec::new());
        };
        let under = r.tombstones_under(&full_key(bucket, prefix.as_bytes()))?;
        let skip = bucket.len() + 1;
        Ok(under
            .into_iter()
            .filter_map(|(k, t)| Some((String::from_utf8(k[skip..].to_vec()).ok()?, t.at)))
            .collect())
    }

    /// When `bucket/key` was deleted here, if this node keeps its tombstone.
    pub fn deleted_at(&self, bucket: &str, key: &[u8]) -> Result<Option<SystemTime>, Error> {
        match &self.registry {
            Some(r) => Ok(r.tombstone(&full_key(bucket, key))?.map(|t| t.at)),
            None => Ok(None),
        }
    }

    /// The disks to try, in order: the registry's location if it was recorded under the
    /// current generation, the current owner, the previous owner, the owners under the
    /// `older` generations (newest first), the forward target, and
    /// last the registry's location recorded under an older generation. A location from an
    /// older generation may hold a stale copy: a write under the current generation lands at
    /// the owner, and an old copy on a node that was down then could not be removed (that
    /// node's read must still see the write; the rebalance drops the old copy later). It
    /// stays in the chain, so an object whose only copy is there is still found.
    pub fn read_chain(&self, bucket: &str, key: &[u8]) -> Result<Vec<String>, Error> {
        let p = partition_of(bucket.as_bytes(), key);
        let mut chain = Vec::with_capacity(4);
        let fk = full_key(bucket, key);
        let located = match &self.registry {
            Some(r) => r.location(&fk)?,
            None => None,
        };
        let generation = self.current.topo.generation;
        let (now, older) = match located {
            Some((d, g)) if g >= generation => (Some(d), None),
            Some((d, _)) => (None, Some(d)),
            None => (None, None),
        };
        chain.extend(now);
        chain.push(self.current.owner_key(p));
        if let Some(prev) = &self.previous {
            chain.push(prev.owner_key(p));
        }
        chain.extend(self.older.iter().map(|o| o.owner_key(p)));
        if let Some(r) = &self.registry
            && let Some(f) = r.forwarding(&fk)?
        {
            chain.push(f.to);
        }
        chain.extend(older);
        let mut seen = std::collections::HashSet::new();
        chain.retain(|d| seen.insert(d.clone()));
        Ok(chain)
    }

    /// Reads an object; None if no copy exists.
    pub fn get(&self, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let Some((mut f, path)) = self.open_object(bucket, key)? else {
            return Ok(None);
        };
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v).map_err(|e| Error::os("read", &path, e))?;
        Ok(Some(v))
    }

    /// Opens an object where the read chain finds it (an open file stays readable when a
    /// mover or a writer replaces the name afterwards); None if no copy exists.
    pub fn open_object(
        &self,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<(std::fs::File, PathBuf)>, Error> {
        Self::usage(bucket, key)?;
        for _ in 0..READ_PASSES {
            for d in self.read_chain(bucket, key)? {
                if let Some(found) = self.open_on(&d, bucket, key)? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// Opens the object on disk `disk` if this process serves that disk and a copy is there.
    pub fn open_on(
        &self,
        disk: &str,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<(std::fs::File, PathBuf)>, Error> {
        let Some(path) = self.disk_path(disk) else {
            return Ok(None);
        };
        let p = object_path(path, bucket, key);
        match std::fs::File::open(&p) {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => Ok(Some((f, p))),
            Ok(_) => Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
            Err(e) => Err(Error::os("open", &p, e)),
        }
    }

    pub fn locate(&self, bucket: &str, key: &[u8]) -> Result<Location, Error> {
        Self::usage(bucket, key)?;
        let p = partition_of(bucket.as_bytes(), key);
        let fk = full_key(bucket, key);
        let mut found_on: Vec<String> = self
            .disks
            .iter()
            .filter(|(_, path)| object_path(path, bucket, key).is_file())
            .map(|(id, _)| id.clone())
            .collect();
        found_on.sort();
        Ok(Location {
            partition: p,
            owner: self.current.owner_key(p),
            previous_owner: self.previous.as_ref().map(|x| x.owner_key(p)),
            registry: match &self.registry {
                Some(r) => r.location(&fk)?,
                None => None,
            },
            forward: match &self.registry {
                Some(r) => r.forwarding(&fk)?.map(|f| (f.from, f.to)),
                None => None,
            },
            found_on,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cluster::topology::one_disk_sets as topo;

    /// Concurrent callers of `sync_dir` on two directories all get Ok; a directory that is
    /// not there is named in the error with the failing op and its errno.
    #[test]
    fn shared_dir_syncs_answer_every_caller_and_say_what_failed() {
        let d = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = (0..2).map(|i| d.path().join(format!("b{i}"))).collect();
        for p in &dirs {
            std::fs::create_dir(p).unwrap();
        }
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dir = dirs[i % 2].clone();
                std::thread::spawn(move || {
                    for j in 0..20 {
                        std::fs::write(dir.join(format!("o{i}-{j}")), b"x").unwrap();
                        sync_dir(&dir).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let gone = d.path().join("gone");
        let e = sync_dir(&gone).unwrap_err();
        assert_eq!(
            (e.op, e.raw_os_error()),
            ("open", Some(libc::ENOENT)),
            "{e}"
        );
        assert_eq!(e.path(), gone.as_path());
    }

    /// A forwarded tombstone removes the copies no newer than it and is kept (the later of
    /// two); a copy newer than it (written since) wins.
    #[test]
    fn a_buried_key_loses_its_older_copies_and_keeps_the_later_tombstone() {
        use std::time::Duration;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("s0")).unwrap();
        let t = topo(d.path(), 1, &["s0"]);
        super::super::identity::init(&t, Path::new("t.json")).unwrap();
        let reg = Arc::new(Registry::open(&d.path().join("reg.redb")).unwrap());
        let c = Cluster::build(t, None, Some(reg.clone()), None, stripes());
        c.put("b", b"k", b"v1").unwrap();
        let (f, _) = c.open_object("b", b"k").unwrap().unwrap();
        let m = f.metadata().unwrap().modified().unwrap();
        let tomb = |at| Tomb { at, generation: 1 };
        let sec = Duration::from_secs(1);
        assert!(
            !c.bury("b", b"k", tomb(m - sec)).unwrap(),
            "the copy is newer"
        );
        assert_eq!(c.get("b", b"k").unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(reg.tombstone(&full_key("b", b"k")).unwrap(), None);
        assert!(c.bury("b", b"k", tomb(m + sec)).unwrap());
        assert_eq!(c.get("b", b"k").unwrap(), None);
        assert!(c.bury("b", b"k", tomb(m)).unwrap());
        let kept = reg.tombstone(&full_key("b", b"k")).unwrap();
        assert_eq!(kept, Some(tomb(m + sec)), "the later delete is kept");
    }

    /// A copy left where the registry says an older generation put it (its node was down
    /// when the key was written at its new owner) is read only when the owner has none.
    #[test]
    fn a_location_of_an_older_generation_is_tried_after_the_current_owner() {
        let d = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        for s in &all {
            std::fs::create_dir(d.path().join(s)).unwrap();
        }
        let (old, new) = (topo(d.path(), 1, &all[..1]), topo(d.path(), 2, &all));
        super::super::identity::init(&new, Path::new("t.json")).unwrap();
        let reg = Arc::new(Registry::open(&d.path().join("reg.redb")).unwrap());
        let before = Cluster::build(old.clone(), None, Some(reg.clone()), None, stripes());
        let mid = Cluster::build(new, Some(old), Some(reg.clone()), None, stripes());
        let key = (0..100)
            .map(|i| format!("k{i}"))
            .find(|k| mid.current.owner_key(partition_of(b"b", k.as_bytes())) != "s0/d0")
            .unwrap();
        let k = key.as_bytes();
        before.put("b", k, b"old").unwrap();
        assert_eq!(reg.location(&full_key("b", k)).unwrap().unwrap().1, 1);
        // mid-move: only the old copy exists, and it is found
        assert_eq!(mid.get("b", k).unwrap().as_deref(), Some(&b"old"[..]));
        // the key written at its new owner (by its node) while the old copy stayed
        let owner = mid.current.owner_key(partition_of(b"b", k));
        let p = object_path(mid.disk_path(&owner).unwrap(), "b", k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"new").unwrap();
        let chain = mid.read_chain("b", k).unwrap();
        assert_eq!(chain, vec![owner.clone(), "s0/d0".to_string()]);
        assert_eq!(mid.get("b", k).unwrap().as_deref(), Some(&b"new"[..]));
        // a location recorded under the current generation is tried first
        reg.set_location(&full_key("b", k), "s0/d0", 2, true)
            .unwrap();
        assert_eq!(mid.read_chain("b", k).unwrap()[0], "s0/d0");
    }
}
