//! Where a request goes when the cluster spans nodes: this node's disks are used directly,
//! other nodes' through `Remote` (the agent's peer transport). Without a `Remote` every disk
//! is local (`ferry s3 serve`, one node) and this is the single-node object layer.
//!
//! - Reads follow the read chain (registry, owner under the current generation, owner under
//!   the previous one and under each older generation whose rebalance is not completed yet,
//!   forwarding entry), each disk where it is: a local disk is opened, a
//!   remote one is asked once per node (the node runs its own chain over its own disks).
//!   A node that cannot be reached is skipped, but a copy found after an unreachable owner of
//!   an older, unsettled generation (between the current owner and the copy) is not served:
//!   that node may keep the key's tombstone (a delete under its generation that it has not
//!   handed over yet), so the answer is its error (503, naming it), never a copy of a deleted
//!   version. The current owner being unreachable does not stop a copy waiting at an older
//!   owner from being served: a client's delete there removed every copy it could reach (or
//!   failed), so a live key waiting to move stays readable while its new owner is down; what
//!   is left is a move landing at an intermediate owner after such a delete, with the current
//!   owner down (no test covers that race). If no reachable node has the object, the error is
//!   the unreachable node's (503), never NoSuchKey. A tombstone met on the way (the owner's, after a delete) makes every
//!   copy no newer than it stale: not served (a move waiting on another node drops it
//!   later).
//! - A node whose disks are lost (removed from the topology and not running: its part of
//!   the current generation's rebalance is marked lost, `agent::lost`) is asked nothing by
//!   any request: what it held is gone, so it neither answers nor shadows a copy.
//! - LIST asks every other node and fails (503, naming the node) if one cannot be reached:
//!   its keys and tombstones are not known, so no listing is given without them.
//! - Writes go to the owner disk under the current generation (proxied to its node, which
//!   answers once the object is durable); copies at the other nodes of the chain are then
//!   removed (best effort: reads prefer the owner anyway).
//! - Deletes go to every node of the chain, the current owner's last (it keeps a tombstone),
//!   and stop at the first node that cannot be reached (so a copy that stays is never
//!   shadowed by a missing one).

use super::list::Item;
use super::object::{self, Pull, Want};
use super::remote::{BucketOp, Fetched, Remote};
use crate::cluster::partition_of;
use crate::cluster::store::{Cluster, READ_PASSES};
use crate::error::{Error, Target};
use std::collections::BTreeMap;
use std::fs::{File, Metadata};

/// One step of a read chain.
enum Hop {
    Local(String),
    Node(String),
}

/// What a read found.
pub enum Got {
    Local(File, Metadata),
    /// `Fetched::Found` or `Fetched::BadRange`.
    Remote(Fetched),
}

/// Whether an error says a node could not be reached (worth trying the next one).
pub fn unreachable(e: &Error) -> bool {
    matches!(e.target, Target::Peer(_)) && matches!(e.kind, crate::error::ErrorKind::Os(_))
}

/// The read chain of `bucket/key` as hops: local disks in place, each other node once.
fn hops(c: &Cluster, bucket: &str, key: &str) -> Result<Vec<Hop>, Error> {
    let mut out = Vec::new();
    let mut nodes = std::collections::HashSet::new();
    for d in c.read_chain(bucket, key.as_bytes())? {
        if c.disk_path(&d).is_some() {
            out.push(Hop::Local(d));
        } else if let Some(n) = c.node_of(&d)
            && !c.is_lost(n)
            && nodes.insert(n.to_string())
        {
            out.push(Hop::Node(n.to_string()));
        }
    }
    Ok(out)
}

/// Finds `bucket/key` (the `range` of it from a remote node; only its stat without `body`).
pub fn get(
    c: &Cluster,
    r: Option<&dyn Remote>,
    (bucket, key): (&str, &str),
    range: Option<&s3s::dto::Range>,
    body: bool,
) -> Result<Option<Got>, Error> {
    crate::cluster::store::validate(bucket, key.as_bytes())
        .map_err(|m| Error::usage(std::path::Path::new("object"), m))?;
    // The current owner's error when it cannot be reached, and the first unreachable node
    // after it (copies past that one are not served).
    let mut owner_down: Option<Error> = None;
    // The newest tombstone met: a copy no newer than it is of a deleted version (it waits
    // on a node whose move will drop it), never served.
    let mut dead = c.deleted_at(bucket, key.as_bytes())?;
    let stale = |t: std::time::SystemTime, dead: Option<std::time::SystemTime>| dead >= Some(t);
    let mut shadow: Option<Error> = None;
    let past = |shadow: &mut Option<Error>, found: Got, at: &str| match shadow.take() {
        Some(e) => Err(shadowed(e, bucket, key, at)),
        None => Ok(Some(found)),
    };
    for _ in 0..READ_PASSES {
        for (i, h) in hops(c, bucket, key)?.into_iter().enumerate() {
            match h {
                Hop::Local(d) => {
                    if let Some((f, p)) = c.open_on(&d, bucket, key.as_bytes())? {
                        let md = f.metadata().map_err(|e| Error::os("stat", &p, e))?;
                        if !stale(md.modified().map_err(|e| Error::os("stat", &p, e))?, dead) {
                            return past(&mut shadow, Got::Local(f, md), &format!("disk {d}"));
                        }
                    }
                }
                Hop::Node(n) => {
                    let Some(r) = r else { continue };
                    match r.get(&n, bucket, key, range, body) {
                        Ok(Fetched::Missing) => {}
                        Ok(Fetched::Deleted { at }) => dead = dead.max(Some(at)),
                        Ok(Fetched::Found { stat, .. }) if stale(stat.modified, dead) => {}
                        Ok(f) => return past(&mut shadow, Got::Remote(f), &format!("node {n}")),
                        Err(e) if unreachable(&e) => {
                            let slot = if i == 0 { &mut owner_down } else { &mut shadow };
                            slot.get_or_insert(e);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if owner_down.is_some() || shadow.is_some() {
            break; // another pass would wait for the same node again
        }
    }
    match owner_down.or(shadow) {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// The error of a read that found a copy of `bucket/key` at `at` past the unreachable node
/// of `down`: still the node's (503, the client retries), saying why the copy is not served.
fn shadowed(down: Error, bucket: &str, key: &str, at: &str) -> Error {
    let crate::error::ErrorKind::Os(io) = &down.kind else {
        return down;
    };
    let Target::Peer(node) = &down.target else {
        return down;
    };
    let why = format!(
        "a copy of {bucket}/{key} is at {at}, but node {node}, newer in its read chain, could \
         not be reached and may keep its tombstone: not served until it answers ({io})"
    );
    let kind = crate::error::ErrorKind::Os(std::io::Error::new(io.kind(), why));
    Error::at("get", Target::Peer(node.clone()), kind)
}

/// The nodes (None: this one) of `bucket/key`'s chain other than its current owner's.
fn others(c: &Cluster, bucket: &str, key: &str) -> Result<Vec<Option<String>>, Error> {
    let p = partition_of(bucket.as_bytes(), key.as_bytes());
    let owner = where_is(c, &c.current.owner_key(p));
    let mut v = Vec::new();
    for d in c.read_chain(bucket, key.as_bytes())? {
        let n = where_is(c, &d);
        let lost = n.as_deref().is_some_and(|n| c.is_lost(n));
        if n != owner && !lost && !v.contains(&n) {
            v.push(n);
        }
    }
    Ok(v)
}

/// The node serving disk `d` (None: this process).
fn where_is(c: &Cluster, d: &str) -> Option<String> {
    if c.disk_path(d).is_some() {
        None
    } else {
        c.node_of(d).map(str::to_string)
    }
}

fn no_transport(node: &str) -> Error {
    let e = std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "this endpoint has no peer transport (ferry agent --peer-listen)",
    );
    Error::at(
        "route",
        Target::Peer(node.to_string()),
        crate::error::ErrorKind::Os(e),
    )
}

/// Writes an object from a body at its owner; its ETag.
pub fn put(
    c: &Cluster,
    r: Option<&dyn Remote>,
    (bucket, key): (&str, &str),
    pull: &mut Pull,
    mut want: Want,
) -> Result<String, Error> {
    crate::cluster::store::validate(bucket, key.as_bytes())
        .map_err(|m| Error::usage(std::path::Path::new("object"), m))?;
    let disk = c
        .current
        .owner_key(partition_of(bucket.as_bytes(), key.as_bytes()));
    let tag = match where_is(c, &disk) {
        None => object::put(c, bucket, key, pull, want)?,
        Some(n) => {
            let r = r.ok_or_else(|| no_transport(&n))?;
            let expected = want.expected;
            let mut src = object::intake(pull, &mut want);
            r.put(&n, &disk, bucket, key, expected, &mut src)?.etag
        }
    };
    clean_elsewhere(c, r, bucket, key);
    Ok(tag)
}

/// Removes the copies other nodes of the chain may still hold (a previous owner's).
fn clean_elsewhere(c: &Cluster, r: Option<&dyn Remote>, bucket: &str, key: &str) {
    let Ok(v) = others(c, bucket, key) else {
        return;
    };
    for n in v {
        let res = match (&n, r) {
            (None, _) => c.rm(bucket, key.as_bytes()).map(|_| ()),
            (Some(n), Some(r)) => r.delete(n, bucket, key, false).map(|_| ()),
            (Some(_), None) => Ok(()),
        };
        if let Err(e) = res {
            eprintln!("ferry s3: after a put of {bucket}/{key}: {e}");
        }
    }
}

/// Deletes every copy: the other nodes of the chain first, the current owner's last, which
/// keeps the key's tombstone (a copy still on its way to it, or waiting on a node outside
/// the chain, is dropped when it arrives).
pub fn delete(c: &Cluster, r: Option<&dyn Remote>, bucket: &str, key: &str) -> Result<bool, Error> {
    crate::cluster::store::validate(bucket, key.as_bytes())
        .map_err(|m| Error::usage(std::path::Path::new("object"), m))?;
    let p = partition_of(bucket.as_bytes(), key.as_bytes());
    let others = others(c, bucket, key)?;
    let owner = where_is(c, &c.current.owner_key(p));
    let mut any = false;
    for (n, owner) in others
        .into_iter()
        .map(|n| (n, false))
        .chain([(owner, true)])
    {
        any |= match (n, owner) {
            (None, false) => c.rm(bucket, key.as_bytes())?,
            (None, true) => c.delete(bucket, key.as_bytes())?,
            (Some(n), t) => r
                .ok_or_else(|| no_transport(&n))?
                .delete(&n, bucket, key, t)?,
        };
    }
    Ok(any)
}

/// Every key of `bucket` under `prefix` on every node (a key on two, mid-move: the newer),
/// but for the copies no newer than a tombstone of their key (deleted: they wait on a node
/// whose move will drop them).
pub fn list(
    c: &Cluster,
    r: Option<&dyn Remote>,
    bucket: &str,
    prefix: &str,
    after: Option<&str>,
) -> Result<BTreeMap<String, Item>, Error> {
    let mut all = super::list::gather(c, bucket, prefix);
    let Some(r) = r else {
        return Ok(all);
    };
    let mut dead: BTreeMap<String, std::time::SystemTime> = BTreeMap::new();
    let mut bury = |k: String, at| {
        let t = dead.entry(k).or_insert(at);
        *t = (*t).max(at);
    };
    c.deleted_under(bucket, prefix)?
        .into_iter()
        .for_each(|(k, at)| bury(k, at));
    for n in c.other_nodes() {
        let listed = r.list(&n, bucket, prefix, after)?;
        listed.deleted.into_iter().for_each(|(k, at)| bury(k, at));
        for (k, it) in listed.items {
            match all.get(&k) {
                Some(old) if old.modified >= it.modified => {}
                _ => {
                    all.insert(k, it);
                }
            }
        }
    }
    all.retain(|k, it| dead.get(k).is_none_or(|at| it.modified > *at));
    Ok(all)
}

/// Whether any node has the bucket (an unreachable node only matters if none says yes).
pub fn bucket_exists(c: &Cluster, r: Option<&dyn Remote>, bucket: &str) -> Result<bool, Error> {
    if super::bucket::exists(c, bucket) {
        return Ok(true);
    }
    let Some(r) = r else { return Ok(false) };
    let mut down = None;
    for n in c.other_nodes() {
        match r.bucket(&n, BucketOp::Exists, bucket) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) if unreachable(&e) => down = Some(e),
            Err(e) => return Err(e),
        }
    }
    down.map_or(Ok(false), Err)
}

/// Makes the bucket on every node that can be reached (a node down now gets its directory
/// with its first object); false if it existed.
pub fn bucket_create(c: &Cluster, r: Option<&dyn Remote>, bucket: &str) -> Result<bool, Error> {
    let existed = bucket_exists(c, r, bucket).unwrap_or(false);
    super::bucket::create(c, bucket)?;
    if let Some(r) = r {
        for n in c.other_nodes() {
            match r.bucket(&n, BucketOp::Create, bucket) {
                Ok(_) => {}
                Err(e) if unreachable(&e) => eprintln!("ferry s3: create bucket {bucket}: {e}"),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(!existed)
}

/// The buckets of every node that can be reached.
pub fn buckets(c: &Cluster, r: Option<&dyn Remote>) -> Vec<(String, std::time::SystemTime)> {
    let mut all: BTreeMap<String, std::time::SystemTime> =
        super::bucket::list(c).into_iter().collect();
    if let Some(r) = r {
        for n in c.other_nodes() {
            for (b, t) in r.buckets(&n).unwrap_or_default() {
                let e = all.entry(b).or_insert(t);
                *e = (*e).min(t);
            }
        }
    }
    all.into_iter().collect()
}

/// Deletes an empty bucket everywhere: every node must be reachable and hold no object of
/// it. Ok(Err(..)) says why not.
pub fn bucket_delete(
    c: &Cluster,
    r: Option<&dyn Remote>,
    bucket: &str,
) -> Result<Result<(), super::bucket::DeleteRefused>, Error> {
    use super::bucket::DeleteRefused;
    if !bucket_exists(c, r, bucket)? {
        return Ok(Err(DeleteRefused::NoSuchBucket));
    }
    let nodes = if r.is_some() { c.other_nodes() } else { vec![] };
    if let Some(r) = r {
        for n in &nodes {
            if !r.bucket(n, BucketOp::Empty, bucket)? {
                return Ok(Err(DeleteRefused::NotEmpty));
            }
        }
    }
    if let Err(DeleteRefused::NotEmpty) = super::bucket::delete(c, bucket)? {
        return Ok(Err(DeleteRefused::NotEmpty));
    }
    if let Some(r) = r {
        for n in &nodes {
            if let Err(e) = r.bucket(n, BucketOp::Delete, bucket) {
                if e.raw_os_error() == Some(libc::ENOTEMPTY) {
                    return Ok(Err(DeleteRefused::NotEmpty));
                }
                return Err(e);
            }
        }
    }
    Ok(Ok(()))
}
