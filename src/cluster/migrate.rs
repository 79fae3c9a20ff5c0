//! Moves to another node's disk, for a rebalance run by one node's agent (topology v2: every
//! disk names the node that serves it; an agent reads and writes only its own disks).
//!
//! `Migrate` is the sender: the internal transport between agents implements it (the
//! receiver writes the copy durably on the owner disk, checks its xxh3, records location and
//! forwarding, then answers). `send_one` is the move of one object: under the key's lock
//! (a client's write or delete of the key on this node waits for it) the object is hashed and
//! sent; once the receiver answered, and only while this node still owns its moves (`Fence`:
//! an etcd transaction), the source is deleted and the deletion made durable (a syncfs of
//! its disk shared with the other moves off it: `disksync`).

use super::store::Cluster;
use crate::error::{Error, Target};
use crate::meta;
use std::collections::HashSet;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the receiving node did with a migrated copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Durable on the owner disk (temp, syncfs, rename, syncfs) with the sender's
    /// xxh3; its location and a forwarding entry are recorded there.
    Stored,
    /// A newer client write of the key is on the owner already: the copy was dropped, and the
    /// source is stale.
    Superseded,
}

/// One object a node sends: `bucket/key` from its disk `from` (`set/disk`), `size` bytes with
/// the source's `mtime` (the receiver keeps a newer write of the key) and xxh3_64 `hash`.
pub struct Object<'a> {
    pub from: &'a str,
    pub bucket: &'a str,
    pub key: &'a [u8],
    pub size: u64,
    pub mtime: std::time::SystemTime,
    pub hash: u64,
}

/// Sends one object to the disk `disk` (`set/disk`) served by `node`; `body` yields exactly
/// `obj.size` bytes. Ok only once the receiver's answer is durable.
pub trait Migrate: Send + Sync {
    fn migrate(
        &self,
        node: &str,
        disk: &str,
        obj: &Object,
        body: &mut dyn Read,
    ) -> Result<Outcome, Error>;
}

/// No transport to other nodes (yet): every cross-node move fails, saying so, and its source
/// stays where it is.
pub struct NoTransport;

impl Migrate for NoTransport {
    fn migrate(
        &self,
        node: &str,
        disk: &str,
        _: &Object,
        _: &mut dyn Read,
    ) -> Result<Outcome, Error> {
        Err(Error::at(
            "migrate",
            Target::Peer(node.to_string()),
            crate::error::ErrorKind::Failed(format!(
                "no transport to node {node} (disk {disk}): the object stays at its source"
            )),
        ))
    }
}

/// Whether this node still owns its moves (etcd: its member key is this run's, the topology is
/// the one planned against). Ok(false): it does not, and no source may go.
pub type Fence = Arc<dyn Fn() -> Result<bool, String> + Send + Sync>;

/// Whether the move of an object in partition `p` from disk `from` (`set/disk`) must wait:
/// Some((node, why)) names the node it waits for (one that owned the key under a generation
/// between the copy's and the newest one, and may still keep its tombstone); None: it may go.
pub type Hold = Arc<dyn Fn(&str, u16) -> Option<(String, String)> + Send + Sync>;

/// A rebalance run by one node's agent (`rebalance::Options::local`).
#[derive(Clone)]
pub struct Local {
    /// This node: only its disks are checked, scanned and written.
    pub node: String,
    /// The object layer on this node's disks (its key locks are the ones client writes take).
    pub cluster: Arc<Cluster>,
    /// Moves whose owner disk is another node's.
    pub sender: Arc<dyn Migrate>,
    pub fence: Fence,
    /// Partitions finished earlier (recorded in etcd): not moved again.
    pub skip: HashSet<u16>,
    /// Called with each partition whose misplaced objects on this node are all moved.
    pub on_done: Arc<dyn Fn(u16) + Send + Sync>,
    /// Which cross-node moves wait for another node's hand-over (None: none do).
    pub hold: Option<Hold>,
}

/// One object on its way to another node.
pub struct Remote {
    pub bucket: String,
    pub key: Vec<u8>,
    pub src: PathBuf,
    /// The source disk (`set/disk`).
    pub from: String,
    pub node: String,
    pub disk: String,
}

/// How one cross-node move ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Stored at the owner; the source was deleted (its size).
    Moved(u64),
    /// The key was deleted or rewritten on this node before we got to it, or the owner had a
    /// newer write (the stale source was deleted).
    Superseded,
}

fn is_enoent(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

/// xxh3_64 of the whole file (`size` bytes long, as far as known), read from its start;
/// the file is rewound afterwards.
fn hash_file(f: &mut std::fs::File, path: &Path, size: u64) -> Result<u64, Error> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    // A small object does not take (and zero) 256 KiB; one that grew meanwhile reads on.
    let mut buf = vec![0u8; size.saturating_add(1).clamp(1, 256 << 10) as usize];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::os("read", path, e)),
        }
    }
    f.rewind().map_err(|e| Error::os("seek", path, e))?;
    Ok(h.digest())
}

/// The identity a source had when it was read: size, mtime (ns) and inode.
fn stamp(m: &std::fs::Metadata) -> (u64, i64, i64, u64) {
    (m.len(), m.mtime(), m.mtime_nsec(), m.ino())
}

/// Moves one object to another node (see the module comment). `generation`/`ttl`: of the
/// forwarding entry this node's registry records for readers that still come here.
pub fn send_one(local: &Local, it: &Remote, generation: u64, ttl: u64) -> Result<Sent, Error> {
    let _g = local.cluster.lock(&it.bucket, &it.key);
    let Some(root) = local.cluster.disk_path(&it.from) else {
        return Err(Error::failed(
            "migrate",
            &it.src,
            "not on a disk of this node",
        ));
    };
    let disk_sync = super::disksync::disk(root)?; // before the unlink it covers
    let mut f = match std::fs::File::open(&it.src) {
        Ok(f) => f,
        Err(e) if is_enoent(&e) => return Ok(Sent::Superseded),
        Err(e) => return Err(Error::os("open", &it.src, e)),
    };
    let before = f.metadata().map_err(|e| Error::os("stat", &it.src, e))?;
    let size = before.len();
    let hash = hash_file(&mut f, &it.src, size)?;
    let obj = Object {
        from: &it.from,
        bucket: &it.bucket,
        key: &it.key,
        size,
        mtime: before
            .modified()
            .map_err(|e| Error::os("stat", &it.src, e))?,
        hash,
    };
    let mut body = (&mut f).take(size);
    let outcome = local.sender.migrate(&it.node, &it.disk, &obj, &mut body)?;
    // Under our lock only a writer from outside ferry can change the file; then the copy
    // sent is not what is here, and the source must stay.
    match std::fs::symlink_metadata(&it.src) {
        Ok(now) if stamp(&now) == stamp(&before) => {}
        Ok(_) => {
            return Err(Error::failed(
                "migrate",
                &it.src,
                "changed while it was sent (written outside ferry?): kept here",
            ));
        }
        Err(e) if is_enoent(&e) => return Ok(Sent::Superseded),
        Err(e) => return Err(Error::os("stat", &it.src, e)),
    }
    match (local.fence)() {
        Ok(true) => {}
        Ok(false) => {
            return Err(Error::failed(
                "migrate",
                &it.src,
                "this node no longer owns its moves in etcd (fence): the source is kept",
            ));
        }
        Err(m) => return Err(Error::failed("migrate fence", &it.src, m)),
    }
    if outcome == Outcome::Stored
        && let Some(r) = &local.cluster.registry
    {
        let fk = super::store::full_key(&it.bucket, &it.key);
        r.forward_many(&[(fk, it.from.clone(), it.disk.clone())], generation, ttl)?;
    }
    meta::unlink(&it.src)?;
    disk_sync.sync()?; // begun after the unlink, shared with the moves off this disk
    Ok(match outcome {
        Outcome::Stored => Sent::Moved(size),
        Outcome::Superseded => Sent::Superseded,
    })
}
