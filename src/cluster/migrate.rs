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

    /// Several objects to `node` at once, each `(disk, object, body)` as for `migrate`: what
    /// became of each, in order, or one error for all (then any of them may or may not be
    /// stored there; the sources stay). By default one `migrate` after the other.
    fn migrate_many(
        &self,
        node: &str,
        items: &mut [(&str, &Object, &mut dyn Read)],
    ) -> Result<Vec<Result<Outcome, Error>>, Error> {
        Ok(items
            .iter_mut()
            .map(|(disk, obj, body)| self.migrate(node, disk, obj, *body))
            .collect())
    }
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
    let Some(mut p) = opened(local, it)? else {
        return Ok(Sent::Superseded);
    };
    let obj = p.object(it);
    let mut body = (&mut p.file).take(obj.size);
    let outcome = local.sender.migrate(&it.node, &it.disk, &obj, &mut body)?;
    if !unchanged(it, &p.before)? {
        return Ok(Sent::Superseded);
    }
    fenced(local, &it.src)?;
    if outcome == Outcome::Stored
        && let Some(r) = &local.cluster.registry
    {
        let fk = super::store::full_key(&it.bucket, &it.key);
        r.forward_many(&[(fk, it.from.clone(), it.disk.clone())], generation, ttl)?;
    }
    meta::unlink(&it.src)?;
    p.sync.sync()?; // begun after the unlink, shared with the moves off this disk
    Ok(sent(outcome, p.before.len()))
}

/// `send_one` of several objects to one node in one request (`Migrate::migrate_many`):
/// under all their keys' locks each is opened and hashed, all are sent; then for those the
/// receiver stored (or had newer) each source is checked unchanged, one fence covers them,
/// their forwarding entries go in one registry commit, the sources are unlinked and each
/// source disk synced once. One result per item, in order; Err: the request failed as a
/// whole and every source stays.
pub fn send_many(
    local: &Local,
    items: &[Remote],
    generation: u64,
    ttl: u64,
) -> Result<Vec<Result<Sent, Error>>, Error> {
    let node = &items[0].node;
    assert!(
        items.iter().all(|it| &it.node == node),
        "a batch goes to one node"
    );
    let keys = items
        .iter()
        .map(|it| (it.bucket.as_str(), it.key.as_slice()));
    let _g = local.cluster.lock_many(keys);
    let mut out: Vec<Option<Result<Sent, Error>>> = items.iter().map(|_| None).collect();
    let mut open = Vec::new();
    for (i, it) in items.iter().enumerate() {
        match opened(local, it) {
            Ok(Some(p)) => open.push((i, p)),
            Ok(None) => out[i] = Some(Ok(Sent::Superseded)),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    if !open.is_empty() {
        let answers = send_opened(local, node, items, &mut open)?;
        if answers.len() != open.len() {
            let m = format!("{} answers for {} objects sent", answers.len(), open.len());
            return Err(Error::failed("migrate", &items[0].src, m));
        }
        let answered = open.iter().zip(answers).map(|((i, p), a)| (*i, p, a));
        finish_many(local, items, answered, (generation, ttl), &mut out);
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("every item has its result"))
        .collect())
}

/// The request of `send_many`: the opened objects' bodies in order, and their answers.
fn send_opened(
    local: &Local,
    node: &str,
    items: &[Remote],
    open: &mut [(usize, Opened)],
) -> Result<Vec<Result<Outcome, Error>>, Error> {
    let objs: Vec<Object> = open.iter().map(|(i, p)| p.object(&items[*i])).collect();
    let disks: Vec<&str> = open.iter().map(|(i, _)| items[*i].disk.as_str()).collect();
    let mut bodies: Vec<_> = open
        .iter_mut()
        .map(|(_, p)| (&mut p.file).take(p.before.len()))
        .collect();
    let mut list: Vec<(&str, &Object, &mut dyn Read)> = bodies
        .iter_mut()
        .zip(&objs)
        .zip(disks)
        .map(|((b, o), d)| (d, o, b as &mut dyn Read))
        .collect();
    local.sender.migrate_many(node, &mut list)
}

/// After the answers of `send_many`: each source unchanged, one fence, the forwarding
/// entries, the unlinks, one sync per source disk; each item's result into `out`.
fn finish_many<'a>(
    local: &Local,
    items: &[Remote],
    answered: impl Iterator<Item = (usize, &'a Opened, Result<Outcome, Error>)>,
    (generation, ttl): (u64, u64),
    out: &mut [Option<Result<Sent, Error>>],
) {
    let mut going: Vec<(usize, &Opened, Outcome)> = Vec::new();
    for (i, p, a) in answered {
        match a.and_then(|o| unchanged(&items[i], &p.before).map(|same| (same, o))) {
            Ok((true, o)) => going.push((i, p, o)),
            Ok((false, _)) => out[i] = Some(Ok(Sent::Superseded)),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    let Some((first, _, _)) = going.first() else {
        return;
    };
    let forwards: Vec<_> = going
        .iter()
        .filter(|(_, _, o)| *o == Outcome::Stored)
        .map(|(i, _, _)| {
            let it = &items[*i];
            let fk = super::store::full_key(&it.bucket, &it.key);
            (fk, it.from.clone(), it.disk.clone())
        })
        .collect();
    let ready = fenced(local, &items[*first].src).and_then(|_| match &local.cluster.registry {
        Some(r) => r.forward_many(&forwards, generation, ttl),
        None => Ok(()),
    });
    if let Err(e) = ready {
        for (i, _, _) in going {
            out[i] = Some(Err(e.again_at("migrate", &items[i].src)));
        }
        return;
    }
    let mut unlinked: Vec<(usize, &Opened, Outcome)> = Vec::new();
    for (i, p, o) in going {
        match meta::unlink(&items[i].src) {
            Ok(()) => unlinked.push((i, p, o)),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    // each disk synced after every unlink of the batch, shared with the moves off it
    let mut synced = super::disksync::Synced::default();
    for (i, p, o) in unlinked {
        out[i] = Some(synced.sync(&p.sync).map(|_| sent(o, p.before.len())));
    }
}

/// A source opened for its move: the file, its identity then, its xxh3, its disk's sync.
struct Opened {
    file: std::fs::File,
    before: std::fs::Metadata,
    hash: u64,
    sync: Arc<super::disksync::DiskSync>,
}

impl Opened {
    fn object<'a>(&self, it: &'a Remote) -> Object<'a> {
        Object {
            from: &it.from,
            bucket: &it.bucket,
            key: &it.key,
            size: self.before.len(),
            mtime: self.before.modified().unwrap_or(std::time::UNIX_EPOCH),
            hash: self.hash,
        }
    }
}

/// Opens and hashes the source of `it` (under its key's lock). None: it is gone (a client's
/// delete or overwrite got there first).
fn opened(local: &Local, it: &Remote) -> Result<Option<Opened>, Error> {
    let Some(root) = local.cluster.disk_path(&it.from) else {
        return Err(Error::failed(
            "migrate",
            &it.src,
            "not on a disk of this node",
        ));
    };
    let sync = super::disksync::disk(root)?; // before the unlink it covers
    let mut file = match std::fs::File::open(&it.src) {
        Ok(f) => f,
        Err(e) if is_enoent(&e) => return Ok(None),
        Err(e) => return Err(Error::os("open", &it.src, e)),
    };
    let before = file.metadata().map_err(|e| Error::os("stat", &it.src, e))?;
    before
        .modified()
        .map_err(|e| Error::os("stat", &it.src, e))?;
    let hash = hash_file(&mut file, &it.src, before.len())?;
    Ok(Some(Opened {
        file,
        before,
        hash,
        sync,
    }))
}

/// Whether the source of `it` is still what was sent. Under our lock only a writer from
/// outside ferry can change the file; then the copy sent is not what is here, and the
/// source must stay (an error). False: it is gone.
fn unchanged(it: &Remote, before: &std::fs::Metadata) -> Result<bool, Error> {
    match std::fs::symlink_metadata(&it.src) {
        Ok(now) if stamp(&now) == stamp(before) => Ok(true),
        Ok(_) => Err(Error::failed(
            "migrate",
            &it.src,
            "changed while it was sent (written outside ferry?): kept here",
        )),
        Err(e) if is_enoent(&e) => Ok(false),
        Err(e) => Err(Error::os("stat", &it.src, e)),
    }
}

/// The fence: Ok only while this node still owns its moves in etcd.
fn fenced(local: &Local, src: &Path) -> Result<(), Error> {
    match (local.fence)() {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::failed(
            "migrate",
            src,
            "this node no longer owns its moves in etcd (fence): the source is kept",
        )),
        Err(m) => Err(Error::failed("migrate fence", src, m)),
    }
}

fn sent(outcome: Outcome, size: u64) -> Sent {
    match outcome {
        Outcome::Stored => Sent::Moved(size),
        Outcome::Superseded => Sent::Superseded,
    }
}
