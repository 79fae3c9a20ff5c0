//! What the endpoint needs to reach objects on other nodes (`Remote`, implemented by the
//! agent's peer transport), and the cell holding the object layer it serves (swapped when the
//! cluster's topology changes). The endpoint never dials a node itself: it asks `Remote`.

use super::list::Item;
use crate::cluster::store::Cluster;
use crate::error::Error;
use bytes::Bytes;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// An object's size, modification time and ETag, as its node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub modified: SystemTime,
    pub etag: String,
}

/// The bytes of a remote object, chunk by chunk (`Ok(None)` at the end; an error if the
/// stream broke or its xxh3 did not match).
pub type Chunks = Box<dyn FnMut() -> std::io::Result<Option<Bytes>> + Send>;

/// A body to send, chunk by chunk (`Ok(None)` at the end).
pub type Source<'a> = dyn FnMut() -> std::io::Result<Option<Bytes>> + 'a;

/// What a node answered for a read.
pub enum Fetched {
    Missing,
    /// The node keeps the key's tombstone: deleted then (a copy elsewhere not newer is stale).
    Deleted {
        at: SystemTime,
    },
    /// The range asked for is not satisfiable for an object of `size` bytes.
    BadRange {
        size: u64,
    },
    /// The object; `range` is the part of it `body` carries (empty body for a head).
    Found {
        stat: Stat,
        range: std::ops::Range<u64>,
        body: Option<Chunks>,
    },
}

/// A tombstone handed to another node: `bucket/key` deleted `at` under `generation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Burial {
    pub bucket: String,
    pub key: String,
    pub at: SystemTime,
    pub generation: u64,
}

/// What a node lists: its keys, and the tombstones it keeps (key, time of the delete).
#[derive(Debug, Default)]
pub struct Listed {
    pub items: Vec<(String, Item)>,
    pub deleted: Vec<(String, SystemTime)>,
}

/// Bucket operations on one node's disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketOp {
    /// Make it on every disk of the node; true if it was not there.
    Create,
    /// true if any disk of the node has it.
    Exists,
    /// true if the node holds no object of it.
    Empty,
    /// Remove it (it must be empty); true if it went.
    Delete,
}

/// Objects on other nodes, by node name. Every call blocks (the endpoint calls it from its
/// blocking threads). A node that cannot be reached is an `Error` whose target is
/// `Target::Peer(node)` and kind `Os` (the endpoint answers 503).
pub trait Remote: Send + Sync {
    /// Reads `bucket/key` where `node` finds it (its own read chain over its own disks), the
    /// `range` of it (None: all), or only its stat with `body: false`.
    fn get(
        &self,
        node: &str,
        bucket: &str,
        key: &str,
        range: Option<&s3s::dto::Range>,
        body: bool,
    ) -> Result<Fetched, Error>;
    /// Writes `bucket/key` on `disk` of `node` from `src` (`size` bytes if known); returns
    /// only once the object is durable there (temp, fsync, xxh3 check, rename, dir fsync).
    fn put(
        &self,
        node: &str,
        disk: &str,
        bucket: &str,
        key: &str,
        size: Option<u64>,
        src: &mut Source,
    ) -> Result<Stat, Error>;
    /// Removes every copy `node` holds; true if there was one. With `tombstone` (a client's
    /// delete, at the owner's node) the node keeps the key's tombstone too.
    fn delete(&self, node: &str, bucket: &str, key: &str, tombstone: bool) -> Result<bool, Error>;
    /// Hands `node` (the keys' owner now) tombstones this node keeps, in order, in as few
    /// requests as the transport's bounds allow. For each: the copies there no newer go and
    /// `node` keeps the tombstone (the later of two); false if a newer copy there won (the
    /// key was written since). One flag per tombstone.
    fn bury(&self, node: &str, tombs: &[Burial]) -> Result<Vec<bool>, Error>;
    /// Every key of `bucket` under `prefix` on `node`'s disks, after `after`, and the
    /// tombstones `node` keeps there.
    fn list(
        &self,
        node: &str,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Listed, Error>;
    fn bucket(&self, node: &str, op: BucketOp, bucket: &str) -> Result<bool, Error>;
    /// (name, creation time) of the buckets on `node`'s disks.
    fn buckets(&self, node: &str) -> Result<Vec<(String, SystemTime)>, Error>;
}

/// The object layer the endpoint serves now (None: no topology yet).
#[derive(Default)]
pub struct ClusterCell {
    cur: RwLock<Option<Arc<Cluster>>>,
}

impl ClusterCell {
    pub fn new(c: Option<Cluster>) -> Self {
        ClusterCell {
            cur: RwLock::new(c.map(Arc::new)),
        }
    }

    pub fn get(&self) -> Option<Arc<Cluster>> {
        self.cur.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, c: Cluster) {
        *self.cur.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(c));
    }
}
