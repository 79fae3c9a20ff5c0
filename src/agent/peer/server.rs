//! The serving side of the peer transport: `--peer-listen ADDR`. One thread per connection
//! (at most `Limits::connections`; more are closed at once), one request at a time per
//! connection, at most `Limits::inflight` requests served at once (more are answered Busy),
//! every read and write bounded by `Limits::timeout`, a connection idle for `Limits::idle`
//! closed. Requests work on this node's disks only (the object layer in the cell).
//! Migrations (another node's rebalance sending here) take at most `Limits::migrations` of
//! the in-flight slots, waiting for one up to `MIGRATION_WAIT`: the rest stay for clients'
//! requests, which a rebalance from many nodes at once would otherwise crowd out (Busy).

use super::migrate::{self, Migrated};
use super::msg::{Code, Entry, Landed, MAX_BURY, Msg, Range, Req};
use super::wire::Wire;
use crate::cluster::store::Cluster;
use crate::error::Error;
use crate::s3::remote::{Burial, ClusterCell, Remote};
use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use xxhash_rust::xxh3::Xxh3;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Open peer connections at once.
    pub connections: usize,
    /// Requests served at once (over all connections).
    pub inflight: usize,
    /// Longest wait for one read or write inside a request.
    pub timeout: Duration,
    /// A connection with no request for this long is closed.
    pub idle: Duration,
    /// Largest object a Put or Migrate may carry.
    pub max_object: u64,
    /// Migrations served at once (fewer than `inflight`: the others are for clients).
    pub migrations: usize,
}

/// Longest wait of a migration for a slot before it is answered Busy (its sender tries again).
const MIGRATION_WAIT: Duration = Duration::from_secs(10);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 256,
            inflight: 64,
            timeout: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            max_object: 5 << 30,
            migrations: 48,
        }
    }
}

/// A running peer server; dropping it stops accepting (connections in flight finish).
pub struct PeerServer {
    pub addr: SocketAddr,
    ctx: Arc<Ctx>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerServer {
    /// Requests received since the start (each counted once, served or refused).
    pub fn requests(&self) -> u64 {
        self.ctx.requests.load(Ordering::Relaxed)
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Ctx {
    me: String,
    cell: Arc<ClusterCell>,
    /// The other nodes, for tombstones passed on (`pass_on`; None: no transport).
    onward: Option<Arc<dyn Remote>>,
    limits: Limits,
    conns: AtomicUsize,
    inflight: AtomicUsize,
    migrating: super::slots::Slots,
    requests: AtomicU64,
}

/// Serves `listener` as node `me` with the TLS identity `tls` (the cluster CA's); `onward`
/// reaches the other nodes (a client's delete of a key this node no longer owns goes on to
/// its owner: `pass_on`).
pub fn start(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    (me, cell): (&str, Arc<ClusterCell>),
    onward: Option<Arc<dyn Remote>>,
    limits: Limits,
) -> io::Result<PeerServer> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(Ctx {
        me: me.to_string(),
        cell,
        onward,
        conns: AtomicUsize::new(0),
        inflight: AtomicUsize::new(0),
        migrating: super::slots::Slots::new(limits.migrations),
        limits,
        requests: AtomicU64::new(0),
    });
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ferry-peer".into())
        .spawn({
            let ctx = ctx.clone();
            move || accept_loop(&listener, &tls, &ctx, &s)
        })?;
    Ok(PeerServer {
        addr,
        ctx,
        stop,
        thread: Some(thread),
    })
}

fn accept_loop(
    l: &TcpListener,
    tls: &Arc<rustls::ServerConfig>,
    ctx: &Arc<Ctx>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let sock = match l.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                eprintln!("ferry peer {}: accept: {e}", ctx.me);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if ctx.conns.fetch_add(1, Ordering::AcqRel) >= ctx.limits.connections {
            ctx.conns.fetch_sub(1, Ordering::AcqRel);
            drop(sock); // over the limit: closed at once, the peer retries later
            continue;
        }
        let (ctx2, tls) = (ctx.clone(), tls.clone());
        let spawned = std::thread::Builder::new()
            .name("ferry-peer-conn".into())
            .spawn(move || {
                let _ = sock.set_nonblocking(false);
                if let Err(e) = serve_conn(sock, tls, &ctx2) {
                    eprintln!("ferry peer {}: {e}", ctx2.me);
                }
                ctx2.conns.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            ctx.conns.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve_conn(
    sock: std::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
    ctx: &Ctx,
) -> io::Result<()> {
    let t = ctx.limits.timeout;
    let mut w = Wire::accept(sock.try_clone()?, tls, &ctx.me, t)?;
    loop {
        sock.set_read_timeout(Some(ctx.limits.idle))?;
        let m = match w.recv() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(()), // idle
            Err(e) => return Err(e),
        };
        sock.set_read_timeout(Some(t))?;
        let Msg::Req(req) = m else {
            return Err(w.unexpected(&m));
        };
        ctx.requests.fetch_add(1, Ordering::Relaxed);
        // taken before an in-flight slot: a migration waiting for its turn holds none
        let slot = match &req {
            Req::Migrate(_) | Req::MigrateMany(_) => match ctx.migrating.take(MIGRATION_WAIT) {
                Some(s) => Some(s),
                None => {
                    let busy = format!("node {}: too many migrations in flight", ctx.me);
                    w.send(&failure(Code::Busy, 0, busy))?;
                    return Ok(());
                }
            },
            _ => None,
        };
        if ctx.inflight.fetch_add(1, Ordering::AcqRel) >= ctx.limits.inflight {
            ctx.inflight.fetch_sub(1, Ordering::AcqRel);
            let busy = format!("node {}: too many requests in flight", ctx.me);
            w.send(&failure(Code::Busy, 0, busy))?;
            return Ok(()); // a body may follow the request: the connection cannot go on
        }
        let r = serve_req(&mut w, ctx, req);
        ctx.inflight.fetch_sub(1, Ordering::AcqRel);
        drop(slot);
        match r {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn failure(code: Code, errno: i32, msg: String) -> Msg {
    Msg::Error { code, errno, msg }
}

/// The answer for an error of the object layer.
fn answer(e: &Error) -> Msg {
    let (code, errno, msg) = classed(e);
    failure(code, errno, msg)
}

/// How an error of the object layer goes on the wire: its class, errno (0: none), text.
fn classed(e: &Error) -> (Code, i32, String) {
    let code = if e.is_usage() {
        Code::Usage
    } else {
        Code::Failed
    };
    (code, e.raw_os_error().unwrap_or(0), e.to_string())
}

/// How long a write naming a disk this node does not serve (yet) waits for this node's
/// layer to catch up with the writer's topology (the watcher reads etcd every 500 ms).
const CATCH_UP: Duration = Duration::from_secs(2);

/// The layer to write `disk` on: `c`, or a newer one that serves it, appearing within
/// `CATCH_UP` (the sender saw the new topology first); else `c`, which refuses the disk.
fn serving(ctx: &Ctx, c: Arc<Cluster>, disk: &str) -> Arc<Cluster> {
    let start = std::time::Instant::now();
    let mut c = c;
    while c.disk_path(disk).is_none() && start.elapsed() < CATCH_UP {
        std::thread::sleep(Duration::from_millis(20));
        c = ctx.cell.get().unwrap_or(c);
    }
    c
}

/// One request. Ok(false): the connection must close (a body was left half read).
fn serve_req(w: &mut Wire, ctx: &Ctx, req: Req) -> io::Result<bool> {
    let Some(mut c) = ctx.cell.get() else {
        let m = format!("node {}: no topology yet (ferry cluster apply)", ctx.me);
        w.send(&failure(Code::Busy, 0, m))?;
        return Ok(!matches!(
            req,
            Req::Put { .. } | Req::Migrate(_) | Req::MigrateMany(_)
        ));
    };
    match &req {
        Req::Put { disk, .. } | Req::Migrate(super::msg::Migrate { disk, .. }) => {
            c = serving(ctx, c, disk)
        }
        Req::MigrateMany(v) => {
            // one wait for the whole batch (a wait per disk could outlast the sender's)
            if let Some(m) = v.iter().find(|m| c.disk_path(&m.disk).is_none()) {
                c = serving(ctx, c, &m.disk);
            }
        }
        _ => {}
    }
    match req {
        Req::Get {
            bucket,
            key,
            range,
            body,
        } => get(w, &c, (&bucket, &key), range, body).map(|_| true),
        Req::Put {
            disk,
            bucket,
            key,
            size,
        } => {
            let limit = ctx.limits.max_object;
            let r = c.put_on(&disk, &bucket, key.as_bytes(), &mut |f| {
                recv_body(w, f, size, limit)
            });
            body_done(w, &c, r.map(|_| Some(disk)), (&bucket, &key))
        }
        Req::Migrate(m) => {
            // The receiver's share of a migration (write, fsync, registry) yields to clients.
            let _low = crate::coord::background::Lowered::enter();
            let limit = ctx.limits.max_object.min(m.size);
            let r = migrate::store(&c, &m, &mut |f| recv_body(w, f, Some(m.size), limit));
            let r = r.map(|x| (x == Migrated::Stored).then(|| m.disk.clone()));
            body_done(w, &c, r, (&m.bucket, &m.key))
        }
        Req::MigrateMany(v) => migrate_many(w, ctx, &c, &v),
        Req::Delete {
            bucket,
            key,
            tombstone,
        } => delete(w, ctx, &c, (&bucket, &key), tombstone),
        Req::Bury(v) => bury(w, &c, &v).map(|_| true),
        Req::List {
            bucket,
            prefix,
            after,
        } => list(w, &c, &bucket, &prefix, after.as_deref()).map(|_| true),
        Req::Bucket { op, bucket } => bucket_op(w, &c, op, &bucket).map(|_| true),
        Req::Buckets => {
            let all = crate::s3::bucket::list(&c);
            let v = all.into_iter().map(|(name, t)| Entry {
                name,
                size: 0,
                mtime: t,
                etag: String::new(),
                deleted: false,
            });
            send_entries(w, v).map(|_| true)
        }
    }
}

/// Delete: every copy here; with `tombstone` (a client's delete, sent to the key's owner)
/// the tombstone kept here and passed on (`pass_on`).
fn delete(
    w: &mut Wire,
    ctx: &Ctx,
    c: &Cluster,
    (bucket, key): (&str, &str),
    tombstone: bool,
) -> io::Result<bool> {
    if !tombstone {
        return flag_answer(w, c.rm(bucket, key.as_bytes()));
    }
    let removed = c.delete(bucket, key.as_bytes());
    if removed.is_ok()
        && let Err(m) = pass_on(ctx, c, (bucket, key))
    {
        return w.send(&m).map(|_| true);
    }
    flag_answer(w, removed)
}

/// A client's delete sent here as to the key's owner, by an agent that may still route by
/// an older layer (this node owned the key there): when the owner under the layer this node
/// routes by is another node, the tombstone kept here goes on to it (Bury, the delete's time
/// and generation kept) before the delete is answered, so a copy written there under the
/// newer layer before the delete goes, and so does one a move brings later. (The tombstones
/// kept here before this layer went to their owners when it was published; this one came
/// after.) Err: the answer to send instead of Done (the owner could not be reached: Busy,
/// for the client to retry; the tombstone stays here).
fn pass_on(ctx: &Ctx, c: &Cluster, (bucket, key): (&str, &str)) -> Result<(), Msg> {
    let disk = c.current.owner_key(crate::cluster::partition_of(
        bucket.as_bytes(),
        key.as_bytes(),
    ));
    let (Some(node), None, Some(r)) = (c.node_of(&disk), c.disk_path(&disk), &ctx.onward) else {
        return Ok(()); // the owner is here (or no other node can be reached from here)
    };
    let at = match c.deleted_at(bucket, key.as_bytes()) {
        Ok(Some(at)) => at,
        Ok(None) => return Ok(()), // no tombstone kept (the registry is full): nothing to give
        Err(e) => return Err(answer(&e)),
    };
    let generation = c.current.topo.generation;
    let b = Burial {
        bucket: bucket.into(),
        key: key.into(),
        at,
        generation,
    };
    match r.bury(node, &[b]) {
        Ok(_) => Ok(()),
        Err(e) => Err(failure(
            Code::Busy,
            0,
            format!(
                "node {}: the tombstone of {bucket}/{key} to node {node}, its owner under generation {generation}: {e}",
                ctx.me
            ),
        )),
    }
}

/// Bury: each tombstone in turn (its key's copies here no newer go, the later tombstone
/// kept; durable together before the answer), answered by Kept; more than `MAX_BURY` are
/// refused (Usage) and none is buried.
fn bury(w: &mut Wire, c: &Cluster, v: &[Burial]) -> io::Result<()> {
    if v.len() > MAX_BURY {
        let m = format!("a Bury of {} tombstones: at most {MAX_BURY}", v.len());
        return w.send(&failure(Code::Usage, 0, m));
    }
    let tombs: Vec<_> = v
        .iter()
        .map(|b| {
            let at = b.at;
            let tomb = crate::cluster::registry::Tomb {
                at,
                generation: b.generation,
            };
            (b.bucket.as_str(), b.key.as_bytes(), tomb)
        })
        .collect();
    match c.bury_many(&tombs) {
        Ok(kept) => w.send(&Msg::Kept(kept)),
        Err(e) => w.send(&answer(&e)), // the sender keeps them all and sends them again
    }
}

/// Done with the flag, or the error.
fn flag_answer(w: &mut Wire, r: Result<bool, crate::error::Error>) -> io::Result<bool> {
    let m = match r {
        Ok(flag) => done(flag, SystemTime::UNIX_EPOCH, String::new()),
        Err(e) => answer(&e),
    };
    w.send(&m).map(|_| true)
}

fn done(flag: bool, mtime: SystemTime, etag: String) -> Msg {
    Msg::Done { flag, mtime, etag }
}

/// The answer to a Put or Migrate: Done with the stored object's stat, Superseded (None),
/// or the error, after which the connection closes (the body may be half read).
fn body_done(
    w: &mut Wire,
    c: &Cluster,
    r: Result<Option<String>, Error>,
    (bucket, key): (&str, &str),
) -> io::Result<bool> {
    match r {
        Ok(Some(disk)) => {
            let st = c.open_on(&disk, bucket, key.as_bytes()).ok().flatten();
            let md = st.and_then(|(f, _)| f.metadata().ok());
            let (mtime, etag) = md
                .map(|m| {
                    (
                        m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        crate::s3::object::etag(&m),
                    )
                })
                .unwrap_or((SystemTime::UNIX_EPOCH, String::new()));
            w.send(&done(true, mtime, etag)).map(|_| true)
        }
        Ok(None) => w.send(&Msg::Superseded).map(|_| true),
        Err(e) => {
            let _ = w.send(&answer(&e));
            Ok(false)
        }
    }
}

/// A MigrateMany: its bodies read in turn into their temps, stored together, answered.
fn migrate_many(
    w: &mut Wire,
    ctx: &Ctx,
    c: &Cluster,
    v: &[super::msg::Migrate],
) -> io::Result<bool> {
    // The receiver's share of a migration (write, fsync, registry) yields to clients.
    let _low = crate::coord::background::Lowered::enter();
    let max = ctx.limits.max_object;
    let r = migrate::store_many(c, v, &mut |i, f| {
        recv_body(w, f, Some(v[i].size), max.min(v[i].size))
    });
    many_done(w, r)
}

/// The answer to a MigrateMany: what became of each copy, or the error that named none of
/// them, after which the connection closes (the bodies may be half read).
fn many_done(w: &mut Wire, r: Result<Vec<Result<Migrated, Error>>, Error>) -> io::Result<bool> {
    let v = match r {
        Ok(v) => v,
        Err(e) => {
            let _ = w.send(&answer(&e));
            return Ok(false);
        }
    };
    let landed = v.into_iter().map(|x| match x {
        Ok(Migrated::Stored) => Landed::Stored,
        Ok(Migrated::Superseded) => Landed::Superseded,
        Err(e) => {
            let (code, errno, msg) = classed(&e);
            Landed::Failed { code, errno, msg }
        }
    });
    w.send(&Msg::Landed(landed.collect())).map(|_| true)
}

/// Reads Data frames into `f` until End: more than `limit` (or than `size`) bytes, a count
/// or an xxh3 that differs from the End's fails.
fn recv_body(w: &mut Wire, f: &mut File, size: Option<u64>, limit: u64) -> io::Result<()> {
    let (mut h, mut n) = (Xxh3::new(), 0u64);
    loop {
        match w.recv()? {
            Msg::Data(b) => {
                n += b.len() as u64;
                if n > limit || size.is_some_and(|s| n > s) {
                    let m = format!("body over {} bytes", size.unwrap_or(limit).min(limit));
                    return Err(io::Error::new(io::ErrorKind::InvalidData, m));
                }
                h.update(&b);
                f.write_all(&b)?;
            }
            Msg::End { len, hash } => {
                if len != n || size.is_some_and(|s| s != n) {
                    let m = format!("body of {n} bytes, announced {size:?}, End says {len}");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, m));
                }
                if hash != h.digest() {
                    let m = format!(
                        "body xxh3 {:016x} differs from the sender's {hash:016x}",
                        h.digest()
                    );
                    return Err(io::Error::new(io::ErrorKind::InvalidData, m));
                }
                return Ok(());
            }
            other => return Err(w.unexpected(&other)),
        }
    }
}

fn s3_range(r: Range) -> s3s::dto::Range {
    match r {
        Range::Int { first, last } => s3s::dto::Range::Int { first, last },
        Range::Suffix { length } => s3s::dto::Range::Suffix { length },
    }
}

/// Get: the object where this node's read chain finds it, the range of it, then its bytes
/// and their xxh3; Deleted when this node keeps a tombstone of the key no older than the copy
/// (or there is none).
fn get(
    w: &mut Wire,
    c: &Cluster,
    (bucket, key): (&str, &str),
    range: Option<Range>,
    body: bool,
) -> io::Result<()> {
    let dead = match c.deleted_at(bucket, key.as_bytes()) {
        Ok(d) => d,
        Err(e) => return w.send(&answer(&e)),
    };
    let found = match crate::s3::object::open(c, bucket, key) {
        Ok(x) => x,
        Err(e) => return w.send(&answer(&e)),
    };
    let (f, md) = match (found, dead) {
        (Some((_, md)), Some(at)) if md.modified().is_ok_and(|m| m <= at) => {
            return w.send(&Msg::Deleted { at });
        }
        (Some(x), _) => x,
        (None, Some(at)) => return w.send(&Msg::Deleted { at }),
        (None, None) => return w.send(&Msg::Missing),
    };
    let size = md.len();
    let r = match range.map(s3_range) {
        None => 0..size,
        Some(r) => match r.check(size) {
            Ok(x) => x,
            Err(_) => return w.send(&Msg::BadRange { size }),
        },
    };
    w.queue(&Msg::Found {
        size,
        mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        etag: crate::s3::object::etag(&md),
        start: r.start,
        end: r.end,
    })?;
    if !body {
        return w.flush();
    }
    send_range(w, &f, r)
}

fn send_range(w: &mut Wire, f: &File, r: std::ops::Range<u64>) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    // At most what is asked for: a 4 KiB object does not take (and zero) a 1 MiB buffer.
    let want = (r.end - r.start).clamp(1, crate::net::frame::MAX_CHUNK as u64);
    let mut buf = vec![0u8; want as usize];
    let (mut h, mut at) = (Xxh3::new(), r.start);
    while at < r.end {
        let want = buf.len().min((r.end - at) as usize);
        let n = match f.read_at(&mut buf[..want], at) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e), // the reader sees the stream end without End
        };
        h.update(&buf[..n]);
        w.queue_data(&buf[..n])?;
        at += n as u64;
    }
    w.send(&Msg::End {
        len: r.end - r.start,
        hash: h.digest(),
    })
}

/// List: the keys on this node's disks under the prefix, then its tombstones there.
fn list(
    w: &mut Wire,
    c: &Cluster,
    bucket: &str,
    prefix: &str,
    after: Option<&str>,
) -> io::Result<()> {
    let deleted = match c.deleted_under(bucket, prefix) {
        Ok(d) => d,
        Err(e) => return w.send(&answer(&e)),
    };
    let all = crate::s3::list::gather(c, bucket, prefix);
    let items = all.into_iter().map(|(name, it)| Entry {
        name,
        size: it.size,
        mtime: it.modified,
        etag: it.etag,
        deleted: false,
    });
    let tombs = deleted.into_iter().map(|(name, at)| Entry {
        name,
        size: 0,
        mtime: at,
        etag: String::new(),
        deleted: true,
    });
    let after = |e: &Entry| after.is_none_or(|a| e.name.as_str() > a);
    send_entries(w, items.chain(tombs).filter(after))
}

/// Entries in frames of about `ENTRIES_BATCH` bytes, then Done.
fn send_entries(w: &mut Wire, v: impl Iterator<Item = Entry>) -> io::Result<()> {
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for e in v {
        bytes += e.name.len() + e.etag.len() + 32;
        batch.push(e);
        if bytes >= super::msg::ENTRIES_BATCH {
            w.queue(&Msg::Entries(std::mem::take(&mut batch)))?;
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        w.queue(&Msg::Entries(batch))?;
    }
    w.send(&done(true, SystemTime::UNIX_EPOCH, String::new()))
}

fn bucket_op(w: &mut Wire, c: &Cluster, op: u8, bucket: &str) -> io::Result<()> {
    use crate::s3::bucket;
    use crate::s3::remote::BucketOp;
    let flag = |b: bool| done(b, SystemTime::UNIX_EPOCH, String::new());
    let m = match super::client::bucket_op_of(op) {
        Some(BucketOp::Create) => match bucket::create(c, bucket) {
            Ok(made) => flag(made),
            Err(e) => answer(&e),
        },
        Some(BucketOp::Exists) => flag(bucket::exists(c, bucket)),
        Some(BucketOp::Empty) => flag(bucket::is_empty(c, bucket)),
        Some(BucketOp::Delete) => match bucket::delete(c, bucket) {
            Ok(Ok(())) => flag(true),
            Ok(Err(bucket::DeleteRefused::NoSuchBucket)) => flag(false),
            Ok(Err(bucket::DeleteRefused::NotEmpty)) => failure(
                Code::Usage,
                libc::ENOTEMPTY,
                format!("bucket {bucket} is not empty"),
            ),
            Err(e) => answer(&e),
        },
        None => failure(Code::Usage, 0, format!("unknown bucket operation {op}")),
    };
    w.send(&m)
}
