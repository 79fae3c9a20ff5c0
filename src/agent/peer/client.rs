//! The calling side of the peer transport: `PeerClient`, one per agent, shared by its
//! threads (the S3 endpoint, the rebalance). It finds a node's peer address through a
//! resolver (the member records in etcd), keeps a few idle connections per node, and turns
//! every answer into a result.
//!
//! Contract of every call:
//! - It blocks; it returns within the connect timeout (2 s) when the node is down, and within
//!   the I/O timeout (30 s) per read or write when it stalls. Nothing waits without bound.
//! - `Err` with `target: Target::Peer(node)` and kind `Os`: the node could not be reached or
//!   broke off (connection refused or reset, a timeout, a refused handshake, Busy: the
//!   io::ErrorKind says which; `WouldBlock` = the node is busy). Worth a retry later; the
//!   operation may or may not have happened there, except for a Put/Migrate, which either
//!   answered durable or left nothing named.
//! - `Err` with a usage kind: the request was wrong for that node (a disk it does not serve,
//!   a bad key). Any other `Err`: the node tried and failed (its message; errno if any).

use super::migrate::Migrated;
use super::msg::{BURY_BYTES, Code, Entry, MAX_BURY, Msg, Range, Req, burial_len};
use super::wire::Wire;
use crate::error::{Error, ErrorKind, Target};
use crate::s3::list::Item;
use crate::s3::remote::{BucketOp, Burial, Chunks, Fetched, Listed, Remote, Source, Stat};
use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use xxhash_rust::xxh3::Xxh3;

/// Finds the peer address (`HOST:PORT`) of a node, or says why there is none.
pub type Resolver = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Idle connections kept per node.
const POOL_PER_NODE: usize = 16;
/// Idle connections older than this are not reused (the server closes after 60 s idle).
const POOL_AGE: Duration = Duration::from_secs(20);
/// A node's address is asked for again after this long, or at once when it cannot be
/// dialled there (a restarted agent listens on another port).
const ADDR_AGE: Duration = Duration::from_secs(2);

type Pool = Mutex<HashMap<String, Vec<(Wire, Instant)>>>;

pub struct PeerClient {
    me: String,
    tls: Arc<rustls::ClientConfig>,
    resolve: Resolver,
    /// Addresses resolved recently: node -> (HOST:PORT, when).
    addrs: Mutex<HashMap<String, (String, Instant)>>,
    pool: Arc<Pool>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

pub(super) fn bucket_op_of(op: u8) -> Option<BucketOp> {
    Some(match op {
        1 => BucketOp::Create,
        2 => BucketOp::Exists,
        3 => BucketOp::Empty,
        4 => BucketOp::Delete,
        _ => return None,
    })
}

fn bucket_op_code(op: BucketOp) -> u8 {
    match op {
        BucketOp::Create => 1,
        BucketOp::Exists => 2,
        BucketOp::Empty => 3,
        BucketOp::Delete => 4,
    }
}

/// A node that could not be reached, or broke off.
fn down(op: &'static str, node: &str, e: io::Error) -> Error {
    Error::at(op, Target::Peer(node.to_string()), ErrorKind::Os(e))
}

/// The error a node answered.
fn remote_err(op: &'static str, node: &str, code: Code, errno: i32, msg: String) -> Error {
    let msg = format!("node {node}: {msg}");
    match code {
        Code::Busy => down(op, node, io::Error::new(io::ErrorKind::WouldBlock, msg)),
        Code::Refused => down(
            op,
            node,
            io::Error::new(io::ErrorKind::PermissionDenied, msg),
        ),
        Code::Usage if errno == 0 => Error::usage(Path::new(node), msg),
        _ if errno != 0 => Error::os(op, Path::new(&msg), io::Error::from_raw_os_error(errno)),
        _ => Error::at(op, Target::Peer(node.to_string()), ErrorKind::Failed(msg)),
    }
}

fn stat(mtime: SystemTime, etag: String, size: u64) -> Stat {
    Stat {
        size,
        modified: mtime,
        etag,
    }
}

impl PeerClient {
    /// A client presenting the identity in `tls_dir` (`ferry certs issue DIR NODE`) as node
    /// `me`.
    pub fn new(tls_dir: &Path, me: &str, resolve: Resolver) -> io::Result<PeerClient> {
        Ok(PeerClient {
            me: me.to_string(),
            tls: crate::net::tls::client_config(tls_dir)?,
            resolve,
            addrs: Mutex::default(),
            pool: Arc::default(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
        })
    }

    /// A pooled connection to `node` (true) or a new one (false).
    fn conn(&self, op: &'static str, node: &str, pooled_ok: bool) -> Result<(Wire, bool), Error> {
        if pooled_ok {
            let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = p.get_mut(node) {
                while let Some((w, at)) = v.pop() {
                    if at.elapsed() < POOL_AGE {
                        return Ok((w, true));
                    }
                }
            }
        }
        Ok((self.dial(op, node)?, false))
    }

    /// `node`'s address: the one resolved within `ADDR_AGE` if `cached_ok` (true: it was).
    fn address(
        &self,
        op: &'static str,
        node: &str,
        cached_ok: bool,
    ) -> Result<(String, bool), Error> {
        lookup(&self.addrs, &self.resolve, node, cached_ok)
            .map_err(|m| down(op, node, io::Error::new(io::ErrorKind::NotFound, m)))
    }

    /// A new connection to `node`; where a cached address does not answer, the node is
    /// looked up again (once) before it counts as down.
    fn dial(&self, op: &'static str, node: &str) -> Result<Wire, Error> {
        let connect = |addr: &str| {
            let tls = self.tls.clone();
            Wire::connect(
                addr,
                node,
                &self.me,
                tls,
                self.connect_timeout,
                self.timeout,
            )
        };
        let (addr, cached) = self.address(op, node, true)?;
        match connect(&addr) {
            Ok(w) => Ok(w),
            Err(e) if cached => match self.address(op, node, false)? {
                (fresh, _) if fresh != addr => connect(&fresh).map_err(|e| down(op, node, e)),
                _ => Err(down(op, node, e)),
            },
            Err(e) => Err(down(op, node, e)),
        }
    }

    /// Whether `node` answers as itself at `addr` (a new connection: TLS, Hello and Welcome;
    /// the address not looked up in etcd): `agent::lost` asks a node whose member key went.
    pub fn probe(&self, node: &str, addr: &str) -> Result<(), Error> {
        let t = self.connect_timeout;
        Wire::connect(addr, node, &self.me, self.tls.clone(), t, t)
            .map(drop)
            .map_err(|e| down("probe", node, e))
    }

    fn give_back(pool: &Pool, node: &str, w: Wire) {
        let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
        let v = p.entry(node.to_string()).or_default();
        if v.len() < POOL_PER_NODE {
            v.push((w, Instant::now()));
        }
    }

    /// Sends a request without a body and reads the first reply (once more on a new
    /// connection if a pooled one turned out dead).
    fn request(&self, op: &'static str, node: &str, req: Req) -> Result<(Wire, Msg), Error> {
        let m = Msg::Req(req);
        for attempt in 0..2 {
            let (mut w, pooled) = self.conn(op, node, attempt == 0)?;
            match w.send(&m).and_then(|_| w.recv()) {
                Ok(r) => return Ok((w, r)),
                Err(_) if pooled => continue,
                Err(e) => return Err(down(op, node, e)),
            }
        }
        unreachable!("the second attempt uses a new connection")
    }

    /// A reply that ends the exchange: the connection goes back to the pool.
    fn finish(&self, node: &str, w: Wire) {
        Self::give_back(&self.pool, node, w);
    }

    fn fail<T>(&self, op: &'static str, node: &str, w: Wire, m: Msg) -> Result<T, Error> {
        match m {
            Msg::Error { code, errno, msg } => {
                drop(w); // the node may close after an error (a body half read): not reused
                Err(remote_err(op, node, code, errno, msg))
            }
            other => Err(down(op, node, w.unexpected(&other))),
        }
    }

    /// Reads `bucket/key` where `node`'s own read chain finds it: Missing, BadRange, or
    /// Found with the requested `range` of it and (with `body`) its bytes, whose count and
    /// xxh3 are checked at the end (a mismatch is the last chunk's error).
    pub fn get(
        &self,
        node: &str,
        bucket: &str,
        key: &str,
        range: Option<Range>,
        body: bool,
    ) -> Result<Fetched, Error> {
        let req = Req::Get {
            bucket: bucket.into(),
            key: key.into(),
            range,
            body,
        };
        let (w, m) = self.request("peer get", node, req)?;
        match m {
            Msg::Missing => {
                self.finish(node, w);
                Ok(Fetched::Missing)
            }
            Msg::Deleted { at } => {
                self.finish(node, w);
                Ok(Fetched::Deleted { at })
            }
            Msg::BadRange { size } => {
                self.finish(node, w);
                Ok(Fetched::BadRange { size })
            }
            Msg::Found {
                size,
                mtime,
                etag,
                start,
                end,
            } => {
                let stat = stat(mtime, etag, size);
                if !body {
                    self.finish(node, w);
                    return Ok(Fetched::Found {
                        stat,
                        range: start..end,
                        body: None,
                    });
                }
                let chunks = self.chunks(node, w, end - start);
                Ok(Fetched::Found {
                    stat,
                    range: start..end,
                    body: Some(chunks),
                })
            }
            other => self.fail("peer get", node, w, other),
        }
    }

    /// The Data frames of a Get, checked against its End; the connection goes back to the
    /// pool after the End (dropped if the reader stops early).
    fn chunks(&self, node: &str, w: Wire, want: u64) -> Chunks {
        let (pool, node) = (self.pool.clone(), node.to_string());
        let mut st = Some(w);
        let (mut h, mut n) = (Xxh3::new(), 0u64);
        Box::new(move || {
            let Some(w) = st.as_mut() else {
                return Ok(None);
            };
            let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
            match w.recv() {
                Ok(Msg::Data(b)) => {
                    n += b.len() as u64;
                    h.update(&b);
                    if n > want {
                        st = None;
                        return Err(bad(format!("node {node} sent more than {want} bytes")));
                    }
                    Ok(Some(Bytes::from(b)))
                }
                Ok(Msg::End { len, hash }) => {
                    let w = st.take().expect("checked above");
                    if len != n || n != want || hash != h.digest() {
                        return Err(bad(format!(
                            "node {node}: {n} of {want} bytes received, xxh3 {:016x}, End says {len} bytes, {hash:016x}",
                            h.digest()
                        )));
                    }
                    Self::give_back(&pool, &node, w);
                    Ok(None)
                }
                Ok(other) => {
                    let e = w.unexpected(&other);
                    st = None;
                    Err(e)
                }
                Err(e) => {
                    st = None;
                    Err(e)
                }
            }
        })
    }

    /// Sends a body from `src` as Data frames and its End; `Err(Ok(e))`: the source failed
    /// (the connection is dropped, so the far side names nothing); `Err(Err(e))`: the
    /// connection did.
    /// `hash`: the sender's own xxh3 of the source, sent instead of the streamed one (so the
    /// receiver checks the bytes against the source end to end).
    fn send_body(
        w: &mut Wire,
        src: &mut Source,
        hash: Option<u64>,
    ) -> Result<(), Result<io::Error, io::Error>> {
        let (mut h, mut n) = (Xxh3::new(), 0u64);
        loop {
            match src() {
                Ok(Some(b)) => {
                    h.update(&b);
                    n += b.len() as u64;
                    w.queue_data(&b).map_err(Err)?;
                }
                Ok(None) => break,
                Err(e) => return Err(Ok(e)),
            }
        }
        w.send(&Msg::End {
            len: n,
            hash: hash.unwrap_or(h.digest()),
        })
        .map_err(Err)
    }

    /// A request with a body: the reply once the body is sent.
    fn with_body(
        &self,
        op: &'static str,
        node: &str,
        req: Req,
        (src, hash): (&mut Source, Option<u64>),
        what: &str,
    ) -> Result<(Wire, Msg), Error> {
        let (mut w, _) = self.conn(op, node, true)?;
        w.queue(&Msg::Req(req)).map_err(|e| down(op, node, e))?;
        let mut w = self.body((op, node), w, (src, hash), what)?;
        let m = w.recv().map_err(|e| down(op, node, e))?;
        Ok((w, m))
    }

    /// `send_body` of one body of a request to `node`: the connection to go on with, or the
    /// error (`src`'s own, or why the node stopped reading, as it said before it closed).
    fn body(
        &self,
        (op, node): (&'static str, &str),
        mut w: Wire,
        (src, hash): (&mut Source, Option<u64>),
        what: &str,
    ) -> Result<Wire, Error> {
        match Self::send_body(&mut w, src, hash) {
            Ok(()) => Ok(w),
            Err(Ok(e)) => Err(Error::os(op, Path::new(what), e)),
            Err(Err(e)) => match w.recv() {
                Ok(m @ Msg::Error { .. }) => self.fail(op, node, w, m),
                _ => Err(down(op, node, e)),
            },
        }
    }

    /// Writes `bucket/key` on `disk` (`set/disk`) of `node` from `src` (`size` bytes when
    /// known). Ok only once the object is durable there: temp, fsync, size and xxh3
    /// checked, rename, directory fsync, registry. A failing `src` (its io::Error kept
    /// inside the returned Error, op "peer put") leaves nothing named.
    pub fn put(
        &self,
        node: &str,
        disk: &str,
        (bucket, key): (&str, &str),
        size: Option<u64>,
        src: &mut Source,
    ) -> Result<Stat, Error> {
        let req = Req::Put {
            disk: disk.into(),
            bucket: bucket.into(),
            key: key.into(),
            size,
        };
        let (w, m) = self.with_body("peer put", node, req, (src, None), key)?;
        match m {
            Msg::Done { mtime, etag, .. } => {
                self.finish(node, w);
                Ok(stat(mtime, etag, size.unwrap_or(0)))
            }
            other => self.fail("peer put", node, w, other),
        }
    }

    /// For the rebalance across nodes: stores `bucket/key` (`size` bytes from `src`, the
    /// source's `mtime`) on the disk `disk` (`set/disk`) of `node` as a migrated copy of
    /// the one on disk `from`. The receiver writes a temp, fsyncs it, checks size and xxh3,
    /// then under its key lock: if `disk` holds the key with an mtime >= `mtime` (a client
    /// wrote it since, or this object arrived already) it drops the copy and answers
    /// `Superseded`; else it renames the copy over the name, fsyncs the directory, records
    /// the location and a forwarding entry (`from` → `disk`) durably in its registry and
    /// answers `Stored`. Either answer means the source may go (under the sender's own key
    /// lock, which it holds for the whole call: a delete waits for it, so a deleted object
    /// never comes back). An error leaves nothing named there.
    /// (`hash`: the sender's xxh3 of the whole source, checked by the receiver; None: the
    /// xxh3 of what was streamed.)
    pub fn migrate(
        &self,
        node: &str,
        (disk, from): (&str, &str),
        (bucket, key): (&str, &str),
        (size, mtime, hash): (u64, SystemTime, Option<u64>),
        src: &mut Source,
    ) -> Result<Migrated, Error> {
        let req = Req::Migrate(super::msg::Migrate {
            disk: disk.into(),
            from: from.into(),
            bucket: bucket.into(),
            key: key.into(),
            size,
            mtime,
        });
        let (w, m) = self.with_body("peer migrate", node, req, (src, hash), key)?;
        match m {
            Msg::Done { .. } => {
                self.finish(node, w);
                Ok(Migrated::Stored)
            }
            Msg::Superseded => {
                self.finish(node, w);
                Ok(Migrated::Superseded)
            }
            other => self.fail("peer migrate", node, w, other),
        }
    }

    /// A request answered by `Done`: its flag (the connection goes back to the pool), or
    /// the node's error.
    fn flag_request(&self, op: &'static str, node: &str, req: Req) -> Result<bool, Error> {
        let (w, m) = self.request(op, node, req)?;
        match m {
            Msg::Done { flag, .. } => {
                self.finish(node, w);
                Ok(flag)
            }
            other => self.fail(op, node, w, other),
        }
    }

    /// Removes every copy of `bucket/key` on `node`'s disks (under its key lock); true if
    /// there was one. With `tombstone` (a client's delete, at the owner's node) `node` also
    /// keeps the key's tombstone (a copy still on its way there is dropped).
    pub fn delete(
        &self,
        node: &str,
        bucket: &str,
        key: &str,
        tombstone: bool,
    ) -> Result<bool, Error> {
        let req = Req::Delete {
            bucket: bucket.into(),
            key: key.into(),
            tombstone,
        };
        self.flag_request("peer delete", node, req)
    }

    /// Gives `node` (the keys' owner now) the tombstones `tombs` this node keeps, in
    /// requests of at most `MAX_BURY` tombstones and `BURY_BYTES` encoded bytes (`batches`):
    /// there the copies no newer than each go and it keeps the tombstone (the later of two).
    /// Per tombstone, in order, whether it was kept (false: a newer copy there won). An
    /// error stops at its batch (those before are buried; sending them again is harmless).
    pub fn bury(&self, node: &str, tombs: &[Burial]) -> Result<Vec<bool>, Error> {
        const OP: &str = "peer bury";
        let mut kept = Vec::with_capacity(tombs.len());
        for r in batches(tombs) {
            let part = &tombs[r];
            let (w, m) = self.request(OP, node, Req::Bury(part.to_vec()))?;
            match m {
                Msg::Kept(v) if v.len() == part.len() => {
                    self.finish(node, w);
                    kept.extend(v);
                }
                Msg::Kept(v) => {
                    let m = format!("{} flags for {} tombstones", v.len(), part.len());
                    let e = io::Error::new(io::ErrorKind::InvalidData, m);
                    return Err(down(OP, node, e));
                }
                other => return self.fail(OP, node, w, other),
            }
        }
        Ok(kept)
    }

    /// Entries answers up to Done.
    fn entries(&self, op: &'static str, node: &str, req: Req) -> Result<Vec<Entry>, Error> {
        let (mut w, mut m) = self.request(op, node, req)?;
        let mut all = Vec::new();
        loop {
            match m {
                Msg::Entries(v) => all.extend(v),
                Msg::Done { .. } => {
                    self.finish(node, w);
                    return Ok(all);
                }
                other => return self.fail(op, node, w, other),
            }
            m = w.recv().map_err(|e| down(op, node, e))?;
        }
    }

    pub fn list(
        &self,
        node: &str,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Listed, Error> {
        let req = Req::List {
            bucket: bucket.into(),
            prefix: prefix.into(),
            after: after.map(str::to_string),
        };
        let mut out = Listed::default();
        for e in self.entries("peer list", node, req)? {
            if e.deleted {
                out.deleted.push((e.name, e.mtime));
                continue;
            }
            let it = Item {
                size: e.size,
                modified: e.mtime,
                etag: e.etag,
            };
            out.items.push((e.name, it));
        }
        Ok(out)
    }

    pub fn bucket(&self, node: &str, op: BucketOp, bucket: &str) -> Result<bool, Error> {
        let req = Req::Bucket {
            op: bucket_op_code(op),
            bucket: bucket.into(),
        };
        self.flag_request("peer bucket", node, req)
    }

    pub fn buckets(&self, node: &str) -> Result<Vec<(String, SystemTime)>, Error> {
        let v = self.entries("peer buckets", node, Req::Buckets)?;
        Ok(v.into_iter().map(|e| (e.name, e.mtime)).collect())
    }
}

/// The rebalance's sender (`cluster::migrate`): `PeerClient::migrate` with the body read
/// from `body` and the sender's xxh3 checked at the receiver.
impl crate::cluster::migrate::Migrate for PeerClient {
    fn migrate(
        &self,
        node: &str,
        disk: &str,
        obj: &crate::cluster::migrate::Object,
        body: &mut dyn io::Read,
    ) -> Result<crate::cluster::migrate::Outcome, Error> {
        use crate::cluster::migrate::Outcome;
        let key = utf8_key(obj)?;
        let mut src = reader_source(body, obj.size);
        let what = (obj.size, obj.mtime, Some(obj.hash));
        let m = PeerClient::migrate(
            self,
            node,
            (disk, obj.from),
            (obj.bucket, key),
            what,
            &mut src,
        )?;
        Ok(match m {
            Migrated::Stored => Outcome::Stored,
            Migrated::Superseded => Outcome::Superseded,
        })
    }

    fn migrate_many(
        &self,
        node: &str,
        items: &mut [(&str, &crate::cluster::migrate::Object, &mut dyn io::Read)],
    ) -> Result<Vec<Result<crate::cluster::migrate::Outcome, Error>>, Error> {
        let op = "peer migrate";
        assert!(
            (1..=super::msg::MAX_MANY).contains(&items.len()),
            "a MigrateMany of 1..=MAX_MANY"
        );
        let heads = items
            .iter()
            .map(|(disk, obj, _)| {
                Ok(super::msg::Migrate {
                    disk: disk.to_string(),
                    from: obj.from.into(),
                    bucket: obj.bucket.into(),
                    key: utf8_key(obj)?.into(),
                    size: obj.size,
                    mtime: obj.mtime,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let (mut w, _) = self.conn(op, node, true)?;
        w.queue(&Msg::Req(Req::MigrateMany(heads)))
            .map_err(|e| down(op, node, e))?;
        for (_, obj, body) in items.iter_mut() {
            let mut src = reader_source(*body, obj.size);
            w = self.body((op, node), w, (&mut src, Some(obj.hash)), utf8_key(obj)?)?;
        }
        match w.recv().map_err(|e| down(op, node, e))? {
            Msg::Landed(v) if v.len() == items.len() => {
                self.finish(node, w);
                Ok(v.into_iter().map(|l| landed(op, node, l)).collect())
            }
            other => self.fail(op, node, w, other),
        }
    }
}

/// One copy's outcome of a MigrateMany.
fn landed(
    op: &'static str,
    node: &str,
    l: super::msg::Landed,
) -> Result<crate::cluster::migrate::Outcome, Error> {
    use super::msg::Landed;
    use crate::cluster::migrate::Outcome;
    match l {
        Landed::Stored => Ok(Outcome::Stored),
        Landed::Superseded => Ok(Outcome::Superseded),
        Landed::Failed { code, errno, msg } => Err(remote_err(op, node, code, errno, msg)),
    }
}

fn utf8_key<'a>(obj: &crate::cluster::migrate::Object<'a>) -> Result<&'a str, Error> {
    std::str::from_utf8(obj.key)
        .map_err(|_| Error::usage(Path::new("object"), "object keys sent to a node are UTF-8"))
}

/// A body read from `body` (`size` bytes expected) in buffers of at most what is left (no
/// 256 KiB allocated and zeroed per small object).
fn reader_source(
    body: &mut dyn io::Read,
    size: u64,
) -> impl FnMut() -> io::Result<Option<Bytes>> + '_ {
    let mut left = size;
    move || {
        let mut buf = vec![0u8; left.clamp(1, 256 << 10) as usize];
        let n = loop {
            match body.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        buf.truncate(n);
        left = left.saturating_sub(n as u64);
        Ok((n > 0).then(|| Bytes::from(buf)))
    }
}

fn range_of(r: &s3s::dto::Range) -> Range {
    match *r {
        s3s::dto::Range::Int { first, last } => Range::Int { first, last },
        s3s::dto::Range::Suffix { length } => Range::Suffix { length },
    }
}

impl Remote for PeerClient {
    fn get(
        &self,
        node: &str,
        bucket: &str,
        key: &str,
        range: Option<&s3s::dto::Range>,
        body: bool,
    ) -> Result<Fetched, Error> {
        PeerClient::get(self, node, bucket, key, range.map(range_of), body)
    }

    fn put(
        &self,
        node: &str,
        disk: &str,
        bucket: &str,
        key: &str,
        size: Option<u64>,
        src: &mut Source,
    ) -> Result<Stat, Error> {
        PeerClient::put(self, node, disk, (bucket, key), size, src)
    }

    fn delete(&self, node: &str, bucket: &str, key: &str, tomb: bool) -> Result<bool, Error> {
        PeerClient::delete(self, node, bucket, key, tomb)
    }

    fn bury(&self, node: &str, tombs: &[Burial]) -> Result<Vec<bool>, Error> {
        PeerClient::bury(self, node, tombs)
    }

    fn list(
        &self,
        node: &str,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Listed, Error> {
        PeerClient::list(self, node, bucket, prefix, after)
    }

    fn bucket(&self, node: &str, op: BucketOp, bucket: &str) -> Result<bool, Error> {
        PeerClient::bucket(self, node, op, bucket)
    }

    fn buckets(&self, node: &str) -> Result<Vec<(String, SystemTime)>, Error> {
        PeerClient::buckets(self, node)
    }
}

/// `tombs` cut into runs of at most `MAX_BURY` tombstones and `BURY_BYTES` encoded bytes
/// (each run holds one at least: a single tombstone always fits, see `msg`).
fn batches(tombs: &[Burial]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, b) in tombs.iter().enumerate() {
        let n = burial_len(b);
        if i > start && (i - start == MAX_BURY || bytes + n > BURY_BYTES) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < tombs.len() {
        out.push(start..tombs.len());
    }
    out
}

/// `node`'s address from `addrs` (resolved within `ADDR_AGE`, if `cached_ok`) or from
/// `resolve`.
fn lookup(
    addrs: &Mutex<HashMap<String, (String, Instant)>>,
    resolve: &Resolver,
    node: &str,
    cached_ok: bool,
) -> Result<(String, bool), String> {
    let addrs = || addrs.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((addr, at)) = addrs().get(node)
        && cached_ok
        && at.elapsed() < ADDR_AGE
    {
        return Ok((addr.clone(), true));
    }
    let addr = resolve(node)?;
    addrs().insert(node.to_string(), (addr.clone(), Instant::now()));
    Ok((addr, false))
}

/// The resolver of an agent: a node's `peer` address from its member record in etcd
/// (`/ferry/v1/<cluster>/members/<node>`; `PeerClient` keeps it for a while). While etcd
/// cannot be reached (this agent cut off from it) the address last read is given: the node
/// may well still serve, and the handshake checks its name, so a stale address fails safely.
/// A member record that is gone gives the address last read too: the node's lease lapses
/// while it is cut off from etcd alone, and it still serves its disks (the only copy of an
/// object it is moving); a node that is really gone refuses the connection or fails the
/// handshake, which counts as unreachable, as before. A node never seen has no address.
pub fn etcd_resolver(
    store: Arc<dyn crate::agent::ClusterStore>,
    keys: crate::agent::keys::Keys,
) -> Resolver {
    let known: Mutex<HashMap<String, String>> = Mutex::default();
    Box::new(move |node: &str| {
        let known = || known.lock().unwrap_or_else(|e| e.into_inner());
        let kv = match store.get(&keys.member(node)) {
            Ok(kv) => kv,
            Err(e) if e.unavailable => return known().get(node).cloned().ok_or(e.to_string()),
            Err(e) => return Err(e.to_string()),
        };
        let Some(kv) = kv else {
            return known()
                .get(node)
                .cloned()
                .ok_or_else(|| format!("node {node} is not a live member of the cluster"));
        };
        let m: crate::agent::view::MemberInfo = serde_json::from_slice(&kv.value)
            .map_err(|e| format!("member record of {node}: {e}"))?;
        let peer = m
            .peer
            .ok_or_else(|| format!("node {node} serves no peer transport (--peer-listen)"))?;
        // bounded: one entry per node that ever had a member record
        known().insert(node.to_string(), peer.clone());
        Ok(peer)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn burial(bucket: usize, key: usize, i: usize) -> Burial {
        Burial {
            bucket: "b".repeat(bucket),
            key: format!("{i:06}{}", "k".repeat(key)),
            at: UNIX_EPOCH,
            generation: 1,
        }
    }

    /// Every tombstone once, in order, in runs within both bounds.
    fn assert_bounded(v: &[Burial]) -> Vec<std::ops::Range<usize>> {
        let runs = batches(v);
        let mut next = 0;
        for r in &runs {
            assert_eq!(r.start, next, "{runs:?}");
            assert!(!r.is_empty() && r.len() <= MAX_BURY, "{r:?}");
            let bytes: usize = v[r.clone()].iter().map(burial_len).sum();
            assert!(bytes <= BURY_BYTES, "{r:?}: {bytes} bytes");
            next = r.end;
        }
        assert_eq!(next, v.len());
        runs
    }

    #[test]
    fn while_etcd_is_unreachable_the_last_address_read_is_given() {
        use crate::agent::store::{ClusterStore, MemStore};
        use std::sync::atomic::Ordering::Relaxed;
        let store = Arc::new(MemStore::default());
        let keys = crate::agent::keys::Keys::new("t").unwrap();
        let record = |peer: &str| {
            let m = serde_json::json!({"node": "n1", "addr": "a", "weight": 1.0, "pid": 1,
                "instance": "i", "started_ms": 0, "peer": peer});
            store
                .put(&keys.member("n1"), m.to_string().as_bytes(), 0)
                .unwrap();
        };
        let resolve = etcd_resolver(store.clone(), crate::agent::keys::Keys::new("t").unwrap());
        record("10.0.0.1:7000");
        assert_eq!(resolve("n1"), Ok("10.0.0.1:7000".to_string()));
        store.down.store(true, Relaxed);
        assert_eq!(resolve("n1"), Ok("10.0.0.1:7000".to_string()));
        let e = resolve("n2").unwrap_err();
        assert!(e.contains("store is down"), "{e}");
        store.down.store(false, Relaxed);
        record("10.0.0.1:7001");
        assert_eq!(resolve("n1"), Ok("10.0.0.1:7001".to_string()));
        // a record that is gone (a lapsed lease) leaves the last address, also while etcd
        // is then unreachable; a node never seen has none
        let gone = crate::agent::store::Op::Delete(keys.member("n1"));
        store.txn(&[], &[gone]).unwrap();
        assert_eq!(resolve("n1"), Ok("10.0.0.1:7001".to_string()));
        assert!(resolve("n3").unwrap_err().contains("not a live member"));
        store.down.store(true, Relaxed);
        assert_eq!(resolve("n1"), Ok("10.0.0.1:7001".to_string()));
    }

    #[test]
    fn tombstones_go_in_runs_bounded_by_count_and_bytes() {
        assert!(batches(&[]).is_empty());
        let small: Vec<Burial> = (0..10_000).map(|i| burial(1, 0, i)).collect();
        assert_eq!(
            assert_bounded(&small),
            vec![0..4096, 4096..8192, 8192..10_000]
        );
        let long: Vec<Burial> = (0..2000).map(|i| burial(63, 1018, i)).collect();
        let runs = assert_bounded(&long);
        assert!(runs.len() > 2000 / MAX_BURY + 1, "{runs:?}");
        let per = BURY_BYTES / burial_len(&long[0]);
        assert_eq!(runs[0], 0..per, "a run is as full as the bytes allow");
    }
}
