//! `ferry rebalance --from OLD.json --to NEW.json`: moves every object whose disk is not an
//! owner under NEW to its owner, on the copy engine (reactors, throttle, pause/resume/cancel,
//! ctl, checkpoint, partition log). Per object: COPY (temp + group syncfs) -> VERIFY (xxh3, read
//! back) -> under the object's lock: the source must be unchanged, the copy gets its name
//! (never over a newer write) -> syncfs -> FORWARD (registry: new location, forwarding entry)
//! -> CLEANUP (the source is unlinked, its directory fsynced). A client's write or delete
//! of the key in between wins: the mover then drops its copy.
//!
//! The scanner walks every disk of both topologies (in parallel, one thread per disk), so
//! leftovers of an interrupted run or an older topology are found too. A final pass proves no
//! object is left on a non-owner disk before the job completes. Partitions whose objects are
//! all moved are logged (`partitions` in the job's state dir) and skipped on resume.

use super::migrate::{Local, Remote, Sent};
use super::placement::{PARTITIONS, partition_of};
use super::registry::{FORWARD_TTL_SECS, Registry};
use super::spill::{Candidate, MAX_QUEUED, Spill};
use super::store::{Cluster, object_path, walk_objects};
use super::topology::{SetState, Topology, disk_key};
use crate::copy::commit::CommitHook;
use crate::copy::task::{Ctx, Finished, MAX_ATTEMPTS, Task};
use crate::error::{Error, ErrorKind};
use crate::meta;
use crate::spec::{CopySpec, RebalanceSpec};
use crate::stats::Stats;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use super::spill::Order;

pub struct Options {
    pub from: PathBuf,
    pub to: PathBuf,
    /// The location registry (redb file).
    pub registry: PathBuf,
    pub order: Order,
    pub forward_ttl_secs: u64,
    /// Write the identity of NEW's disks that have none first (`--init-disks`).
    pub init_disks: bool,
    /// Run by one node's agent: only its disks; moves to other nodes through its sender.
    pub local: Option<Local>,
}

impl Options {
    pub fn new(from: PathBuf, to: PathBuf, registry: PathBuf) -> Self {
        Options {
            from,
            to,
            registry,
            order: Order::Size,
            forward_ttl_secs: FORWARD_TTL_SECS,
            init_disks: false,
            local: None,
        }
    }
}

/// What the scanner and the mover counted.
#[derive(Debug, Default, serde::Serialize)]
pub struct Counters {
    pub scanned: AtomicU64,
    pub scanned_bytes: AtomicU64,
    pub misplaced: AtomicU64,
    pub misplaced_bytes: AtomicU64,
    /// Objects skipped because their partition was finished by an earlier run.
    pub skipped_done: AtomicU64,
    /// Moves dropped because a client wrote or deleted the key meanwhile.
    pub superseded: AtomicU64,
    /// Objects on non-owner disks found by the final pass.
    pub left_over: AtomicU64,
    pub scan_done: AtomicBool,
    /// Disks of removed sets that are gone: what they held is lost.
    pub lost_disks: Mutex<Vec<String>>,
    /// Receiving nodes this run cannot reach now (its moves to them wait).
    #[serde(skip)]
    pub peers: super::reach::Peers,
    /// Nodes whose hand-over of their tombstones moves wait for (`migrate::Hold`).
    #[serde(skip)]
    pub held: super::reach::Held,
    #[serde(skip)]
    pub scan_secs: Mutex<f64>,
}

/// One object on its way.
struct Item {
    bucket: String,
    key: Vec<u8>,
    from: String,
    to: String,
    partition: u16,
}

struct Mover {
    cluster: Arc<Cluster>,
    counters: Arc<Counters>,
    /// Objects still to move, per partition.
    remaining: Vec<AtomicU32>,
    generation: u64,
    ttl: u64,
    local: Option<Local>,
}

/// A disk of either topology, once.
struct DiskRef {
    /// `set/disk`.
    id: String,
    path: PathBuf,
    /// Belongs to a removed set (or only to OLD): if it is gone, its objects are lost.
    gone_means_lost: bool,
}

/// Every disk of both topologies (only those `node` serves, when given).
fn disks_of(old: &Topology, new: &Topology, node: Option<&str>) -> Vec<DiskRef> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (t, is_new) in [(new, true), (old, false)] {
        for s in t.sets() {
            for d in &s.disks {
                if node.is_some_and(|n| d.node.as_deref() != Some(n)) {
                    continue;
                }
                let key = disk_key(s, d);
                if seen.insert(key.clone()) {
                    let in_new = new.sets().any(|x| {
                        x.state != SetState::Removed
                            && x.id == s.id
                            && x.disks.iter().any(|y| y.id == d.id)
                    });
                    out.push(DiskRef {
                        id: key,
                        path: d.path.clone(),
                        gone_means_lost: !in_new || (is_new && s.state == SetState::Removed),
                    });
                }
            }
        }
    }
    out
}

/// Every disk proves it is the disk before anything moves (`--init-disks` first writes the
/// identities NEW's disks lack). Disks only OLD names (or NEW only as removed) may be gone:
/// their objects are reported lost.
pub fn check_disks(
    (old, old_file): (&Topology, &Path),
    (new, new_file): (&Topology, &Path),
    init: bool,
) -> Result<(), Error> {
    use super::identity;
    use super::topology::{Disk, DiskSet};
    if init {
        for (d, wrote) in identity::init(new, new_file)? {
            if wrote {
                eprintln!("ferry: disk {d}: identity written");
            }
        }
    }
    identity::check(new, new_file, &|_, _| false)?;
    let live = |s: &DiskSet, d: &Disk| {
        new.sets().any(|x| {
            x.state != SetState::Removed && x.id == s.id && x.disks.iter().any(|y| y.id == d.id)
        })
    };
    identity::check(old, old_file, &|s, d| !live(s, d))
}

fn load(path: &Path) -> Result<Topology, Error> {
    Topology::load(path).map_err(|e| Error::usage(path, e.to_string()))
}

/// OLD and NEW, read and checked against each other.
fn load_pair(opts: &Options) -> Result<(Topology, Topology), Error> {
    let old = load(&opts.from)?;
    let new = load(&opts.to)?;
    if new.generation <= old.generation {
        return Err(Error::usage(
            &opts.to,
            format!(
                "generation {} must be larger than the current topology's ({})",
                new.generation, old.generation
            ),
        ));
    }
    super::topology::check_across((&old, &opts.from), (&new, &opts.to))
        .map_err(|m| Error::usage(&opts.to, m))?;
    Ok((old, new))
}

/// The disks proven and the object layer the move runs on: its own (with the registry) for
/// `ferry rebalance`; the agent's for a node's run (only its disks are checked).
fn cluster_for(opts: &Options, old: &Topology, new: &Topology) -> Result<Arc<Cluster>, Error> {
    let cluster = match &opts.local {
        None => {
            check_disks((old, &opts.from), (new, &opts.to), opts.init_disks)?;
            let registry = Registry::open(&opts.registry)?;
            Arc::new(Cluster::new(new.clone(), Some(old.clone()), Some(registry)))
        }
        Some(l) => {
            let (o, n) = (only_node(old, &l.node), only_node(new, &l.node));
            check_disks((&o, &opts.from), (&n, &opts.to), opts.init_disks)?;
            l.cluster.clone()
        }
    };
    if let Some(registry) = &cluster.registry {
        let json = |t: &Topology| serde_json::to_vec(t).expect("plain data serializes");
        registry.set_topologies(&json(new), &json(old))?;
        registry.expire_forwards(false)?;
    }
    Ok(cluster)
}

/// `t` with only the disks `node` serves (for checking them: placement needs all of `t`).
fn only_node(t: &Topology, node: &str) -> Topology {
    let mut t = t.clone();
    for s in t.pools.iter_mut().flat_map(|p| p.sets.iter_mut()) {
        s.disks.retain(|d| d.node.as_deref() == Some(node));
    }
    t
}

/// Builds a rebalance job; start it with `Job::start_with`. `spec` carries the engine settings
/// (threads, buffers, throttle, state dir, verify); its sources/dest are set here.
pub fn prepare(
    opts: &Options,
    mut spec: CopySpec,
) -> Result<(crate::copy::Prepared, Arc<Cluster>, Arc<Counters>), Error> {
    let (old, new) = load_pair(opts)?;
    let cluster = cluster_for(opts, &old, &new)?;
    let node = opts.local.as_ref().map(|l| l.node.as_str());
    let disks = disks_of(&old, &new, node);
    let generation = new.generation;
    spec.sources = vec![opts.from.clone()];
    spec.dest = opts.to.clone();
    spec.remove_source = true;
    spec.preserve.links = false; // objects are independent files
    spec.fsync = crate::spec::FsyncMode::Batch;
    spec.rebalance = Some(RebalanceSpec {
        from_generation: old.generation,
        to_generation: new.generation,
        order: opts.order.name().into(),
    });
    let counters = Arc::new(Counters::default());
    let mover = Arc::new(Mover {
        cluster: cluster.clone(),
        counters: counters.clone(),
        remaining: (0..PARTITIONS).map(|_| AtomicU32::new(0)).collect(),
        generation,
        ttl: opts.forward_ttl_secs,
        local: opts.local.clone(),
    });
    let disks: Vec<(String, PathBuf, bool)> = disks
        .into_iter()
        .map(|d| (d.id, d.path, d.gone_means_lost))
        .collect();
    let feeder = {
        let (m, order, disks) = (mover.clone(), opts.order, disks.clone());
        Box::new(move |ctx: &Arc<Ctx>| scan_and_feed(ctx, &m, &disks, order))
    };
    let finisher = {
        let (m, disks) = (mover.clone(), disks);
        Box::new(move |ctx: &Ctx| final_pass(ctx, &m, &disks))
    };
    let p = crate::copy::prepare_fed(spec, mover, feeder, finisher)?;
    Ok((p, cluster, counters))
}

/// Partitions finished by earlier runs of this job.
fn partitions_file(ctx: &Ctx) -> Option<PathBuf> {
    ctx.state.as_ref().map(|s| s.dir.join("partitions"))
}

fn load_done_partitions(ctx: &Ctx) -> HashSet<u16> {
    let Some(p) = partitions_file(ctx) else {
        return HashSet::new();
    };
    if !ctx.resuming {
        let _ = std::fs::remove_file(&p); // a fresh plan: nothing is done
        return HashSet::new();
    }
    std::fs::read_to_string(&p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn open_spill(ctx: &Ctx, name: &str, order: Order) -> Option<Spill> {
    let dir = match &ctx.state {
        Some(sd) => sd.dir.join(name),
        None => std::env::temp_dir().join(format!("ferry-{name}-{}", std::process::id())),
    };
    match Spill::new(dir.clone(), order) {
        Ok(s) => Some(s),
        Err(e) => {
            ctx.stats.error(Error::os("create spill", &dir, e));
            None
        }
    }
}

fn scan_and_feed(ctx: &Arc<Ctx>, m: &Mover, disks: &[(String, PathBuf, bool)], order: Order) {
    let t0 = std::time::Instant::now();
    ctx.stats.walking.fetch_add(1, Ordering::AcqRel);
    let mut done = load_done_partitions(ctx);
    if let Some(l) = &m.local {
        done.extend(l.skip.iter().copied());
    }
    let spills = (
        open_spill(ctx, "spill", order),
        open_spill(ctx, "spill-remote", order),
    );
    let (Some(spill), Some(remote)) = spills else {
        ctx.stats.walking.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let spill_err = Mutex::new(None);
    scan(ctx, m, disks, Some(&done), &|c| {
        // Counted here, before any of the partition moves: a partition is done only once
        // all of its objects are, whichever spill class they are in.
        m.remaining[c.partition as usize].fetch_add(1, Ordering::AcqRel);
        let to = if m.is_remote(c.partition) {
            &remote
        } else {
            &spill
        };
        if let Err(e) = to.put(&c) {
            spill_err
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
        }
    });
    if let Some(e) = spill_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        ctx.stats.error(Error::os("write spill", &ctx.spec.dest, e));
    }
    *m.counters
        .scan_secs
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = t0.elapsed().as_secs_f64();
    std::thread::scope(|s| {
        s.spawn(|| feed_remote(ctx, m, &remote));
        feed_local(ctx, m, &spill);
    });
    m.counters.scan_done.store(true, Ordering::Release);
    ctx.stats.walking.fetch_sub(1, Ordering::AcqRel);
}

/// Same-node moves: into the engine's queues (at most MAX_QUEUED at once), spill order. A
/// move held for another node's hand-over (`migrate::Hold`) is queued after the others, once
/// it is no longer held (up to DEFERRED of them kept aside; past that the feed waits for it).
fn feed_local(ctx: &Ctx, m: &Mover, spill: &Spill) {
    let mut made: HashSet<PathBuf> = HashSet::new();
    let mut later = Vec::new();
    let fed = spill.drain(&mut |c| match &m.local {
        Some(l) if is_held(m, l, &c) => {
            if later.len() < DEFERRED {
                later.push(c);
                return true;
            }
            held_turn(ctx, m, l, &c) && push_local(ctx, m, &mut made, c)
        }
        _ => push_local(ctx, m, &mut made, c),
    });
    if let Err(e) = fed {
        ctx.stats.error(Error::os("read spill", &ctx.spec.dest, e));
    }
    for c in later {
        let go = m.local.as_ref().is_none_or(|l| held_turn(ctx, m, l, &c));
        if !(go && push_local(ctx, m, &mut made, c)) {
            return;
        }
    }
}

/// Waits while the move of `c` is held (`wait_hold`). False: the job was stopped.
fn held_turn(ctx: &Ctx, m: &Mover, local: &Local, c: &Candidate) -> bool {
    match m.remote_of(c) {
        Some(it) => wait_hold(ctx, m, local, &it, c.partition),
        None => true,
    }
}

/// Queues one same-node move (its directory made below the owner disk's root first). False:
/// the job was stopped.
fn push_local(ctx: &Ctx, m: &Mover, made: &mut HashSet<PathBuf>, c: Candidate) -> bool {
    // Back-pressure: the queues hold at most MAX_QUEUED moves.
    while ctx.queues.outstanding() > MAX_QUEUED && !ctx.steer.stop.abort.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if ctx.steer.stop.abort.load(Ordering::Acquire) {
        return false;
    }
    let dir = meta::parent_dir(&c.dst).to_path_buf();
    if !made.contains(&dir) {
        // Below the owner disk's root only: an unmounted disk gets nothing written.
        let mk = match m.root_of(&c.dst) {
            Some(root) => super::identity::make_dirs_below(root, &dir),
            None => Err(Error::errno("mkdir", &dir, libc::ENOENT)),
        };
        if let Err(e) = mk {
            ctx.stats.error(e);
            return true;
        }
        if made.len() >= 65_536 {
            made.clear(); // bounded; recreating an existing dir is cheap
        }
        made.insert(dir);
    }
    Stats::add(&ctx.stats.found_files, 1);
    ctx.queues
        .push_local(ctx.owner_of(c.dev), Task::new_file(c.src, c.dst, None, 1));
    true
}

/// Waits for the job's turn to send `size` bytes: not paused, within its rates. False: the
/// job is cancelled or aborted.
fn wait_turn(ctx: &Ctx, size: u64) -> bool {
    loop {
        if ctx.steer.stop.abort.load(Ordering::Acquire) {
            return false;
        }
        if !ctx.steer.paused.load(Ordering::Acquire) && ctx.steer.ops_limit.try_take(1) {
            if ctx.steer.bytes_limit.try_take(size.max(1)) {
                return true;
            }
            ctx.steer.ops_limit.refund(1);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Cross-node moves in flight at once per node: each is a round trip to the receiver and
/// its fsyncs, then the fence and the source's delete, so one at a time leaves the link and
/// the disks idle most of the time (measured in BENCHMARKS: 4 -> 5 agents, ~14 MB/s per
/// node with one). 16 rather than 8: a stream waits on the fence and the source's delete
/// after each answer, and 8 left the receiver idle between them (per node 1.2-1.6 s against
/// 2.0-2.2 s for the same moves, BENCHMARKS session 20). At most this many peer connections
/// per node (the client's pool keeps as many); a receiver serves at most
/// `peer::server::Limits::migrations` of them at once, from all its senders.
pub const REMOTE_STREAMS: usize = 16;

/// Moves to other nodes through the node's sender, `REMOTE_STREAMS` at once (taken in spill
/// order), beside the engine's same-node moves, under the job's pause and rates (a move's
/// turn is taken before it is handed to a sender).
fn feed_remote(ctx: &Ctx, m: &Mover, spill: &Spill) {
    let Some(local) = &m.local else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Candidate>(REMOTE_STREAMS * MANY);
    let rx = Handed {
        rx: Mutex::new(rx),
        bytes: AtomicU64::new(0),
    };
    let fed = std::thread::scope(|s| {
        for _ in 0..REMOTE_STREAMS {
            s.spawn(|| send_remote(ctx, m, local, &rx));
        }
        // A move held for another node's hand-over is handed to a sender after the others
        // (up to DEFERRED of them; past that it waits in its sender), so the keys whose
        // chain has no such node keep moving.
        let mut later = Vec::new();
        let fed = spill.drain(&mut |c| {
            if later.len() < DEFERRED && is_held(m, local, &c) {
                later.push(c);
                return true;
            }
            give(ctx, (&tx, &rx.bytes), c)
        });
        for c in later {
            if !give(ctx, (&tx, &rx.bytes), c) {
                break;
            }
        }
        drop(tx);
        fed
    });
    if let Err(e) = fed {
        ctx.stats.error(Error::os("read spill", &ctx.spec.dest, e));
    }
}

/// Hands `c` to a sender once its turn is taken and a sender has room; false once the job
/// is cancelled or aborted. Never a blocking send: the senders stop taking on an abort (one
/// waiting for an unreachable peer returns then), and a send into their full queue would
/// wait forever, and with it the job's end (the agent's cancel waits for it).
fn give(
    ctx: &Ctx,
    (tx, queued): (&std::sync::mpsc::SyncSender<Candidate>, &AtomicU64),
    c: Candidate,
) -> bool {
    use std::sync::mpsc::TrySendError;
    if !wait_turn(ctx, c.size) {
        return false;
    }
    let mut c = c;
    loop {
        let (size, before) = (c.size, queued.fetch_add(c.size, Ordering::AcqRel));
        let sent = match before > 0 && before + size > QUEUED_BYTES {
            true => Err(TrySendError::Full(c)),
            false => tx.try_send(c),
        };
        if sent.is_err() {
            queued.fetch_sub(size, Ordering::AcqRel);
        }
        match sent {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(back)) => {
                if ctx.steer.stop.abort.load(Ordering::Acquire) {
                    return false;
                }
                c = back;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }
}

/// One move to another node, tried until it got an answer. A full owner disk (the
/// receiver's ENOSPC) pauses the job, which sends the object again once it is resumed; an
/// unreachable peer is waited for and probed (`reach::Peers`). Either way nothing is named
/// there and the source stays. None: the job was cancelled or aborted meanwhile.
fn send_until(ctx: &Ctx, m: &Mover, local: &Local, c: &Candidate) -> Option<Result<Sent, Error>> {
    let Some(it) = m.remote_of(c) else {
        return Some(Err(Error::failed(
            "migrate",
            &c.src,
            "not on a disk of this node",
        )));
    };
    let peers = &m.counters.peers;
    let stop = || ctx.steer.stop.abort.load(Ordering::Acquire);
    if !wait_hold(ctx, m, local, &it, c.partition) {
        return None;
    }
    let mut probe = false;
    loop {
        let sent = super::migrate::send_one(local, &it, m.generation, m.ttl);
        let e = match sent {
            Err(e) if super::reach::unreachable(&e) => e,
            other => {
                peers.reached(&it.node);
                match &other {
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
                            && ctx.steer.pause_for_room(&c.dst, None) => {}
                    _ => return Some(other),
                }
                probe = false;
                if !wait_turn(ctx, c.size) {
                    return None;
                }
                continue;
            }
        };
        match peers.failed(&it.node, &e, probe, &stop) {
            super::reach::Next::Retry(p) => probe = p,
            super::reach::Next::GiveUp(e) => return Some(Err(e)),
            super::reach::Next::Stop => return None,
        }
        // the job's pause and rates hold for a try again too
        if !wait_turn(ctx, c.size) {
            return None;
        }
    }
}

/// Moves held for another node's hand-over that a run keeps aside at most (each a few
/// hundred bytes), to send after the others.
const DEFERRED: usize = 65_536;

/// Whether the move of `c` waits for another node's hand-over now.
fn is_held(m: &Mover, local: &Local, c: &Candidate) -> bool {
    let (Some(hold), Some(it)) = (&local.hold, m.remote_of(c)) else {
        return false;
    };
    hold(&it.from, c.partition).is_some()
}

/// How often a move held for another node's hand-over looks again.
const HOLD_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Waits while `local.hold` holds the move of `it` (its partition `p`): retried, not failed,
/// so the run goes on (and is not completed) until the node it waits for has handed its
/// tombstones over. False: the job was stopped meanwhile.
fn wait_hold(ctx: &Ctx, m: &Mover, local: &Local, it: &super::migrate::Remote, p: u16) -> bool {
    let Some(hold) = &local.hold else {
        return true;
    };
    let mut held: Option<String> = None;
    let go_on = loop {
        if ctx.steer.stop.abort.load(Ordering::Acquire) {
            break false;
        }
        let Some((node, why)) = hold(&it.from, p) else {
            break true;
        };
        if held.as_ref() != Some(&node) {
            if let Some(n) = held.take() {
                m.counters.held.release(&n);
            }
            if m.counters.held.hold(&node, &why) {
                eprintln!("ferry rebalance: moves wait for node {node}: {why}");
            }
            held = Some(node);
        }
        std::thread::sleep(HOLD_TICK);
    };
    if let Some(n) = held {
        m.counters.held.release(&n);
    }
    go_on
}

/// The moves handed to the senders and not yet taken by one: at most `REMOTE_STREAMS *
/// MANY` of them (a batch for each sender) and `QUEUED_BYTES` (past the first), so that a
/// pause leaves few moves whose turn was already taken.
struct Handed {
    rx: Mutex<std::sync::mpsc::Receiver<Candidate>>,
    bytes: AtomicU64,
}

const QUEUED_BYTES: u64 = 16 << 20;

impl Handed {
    fn took(&self, c: Candidate) -> Candidate {
        self.bytes.fetch_sub(c.size, Ordering::AcqRel);
        c
    }
}

/// One sender of `feed_remote`: moves what `rx` hands it until it is closed, the small
/// objects for one node `MANY` at a time in one request (`gather`), the others one by one.
fn send_remote(ctx: &Ctx, m: &Mover, local: &Local, rx: &Handed) {
    let mut log = Vec::new();
    let mut carry = None;
    loop {
        let first = match carry.take() {
            Some(c) => c,
            None => match rx.rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                Ok(c) => rx.took(c),
                Err(_) => break,
            },
        };
        let (batch, its) = gather(m, local, rx, first, &mut carry);
        Stats::add(&ctx.stats.found_files, batch.len() as u64);
        let results = match batch.len() {
            1 => vec![send_until(ctx, m, local, &batch[0])],
            _ => send_batch(ctx, m, local, &batch, &its),
        };
        let mut cancelled = false;
        for (c, sent) in batch.iter().zip(results) {
            let Some(sent) = sent else {
                cancelled = true; // cancelled or aborted while paused or a peer waited for
                continue;
            };
            account(ctx, m, c, sent, &mut log);
        }
        if log.len() >= 256 {
            log_partitions(ctx, m, std::mem::take(&mut log));
        }
        if cancelled {
            break;
        }
    }
    log_partitions(ctx, m, log);
}

/// Objects in one batch of moves at most (each holds its key's lock stripe until its source
/// is gone: `REMOTE_STREAMS` batches leave most of the `LOCK_STRIPES` to clients).
pub const MANY: usize = 16;
/// Objects this small go in batches; a batch carries at most `MANY_BYTES` of them. Batches
/// of up to 1 MiB objects, 4 MiB each, moved the demo's skewed-small objects 1.5x as fast as
/// one request per object (BENCHMARKS, session 23); larger batches gave no more.
const SMALL: u64 = 1 << 20;
const MANY_BYTES: u64 = 4 << 20;

/// `first` and, when it is small, the small moves to the same node `rx` has ready now (up to
/// `MANY`, `MANY_BYTES`), with where each goes; the first that does not fit is left in
/// `carry` for the next batch. A move that waits for another node's hand-over goes alone
/// (its wait is `send_until`'s), and so does one that is not small.
fn gather(
    m: &Mover,
    local: &Local,
    handed: &Handed,
    first: Candidate,
    carry: &mut Option<Candidate>,
) -> (Vec<Candidate>, Vec<super::migrate::Remote>) {
    let remote = |c: &Candidate| {
        let small = c.size <= SMALL && !is_held(m, local, c);
        small.then(|| m.remote_of(c)).flatten()
    };
    let Some(it) = remote(&first) else {
        return (vec![first], Vec::new());
    };
    let (mut bytes, mut batch, mut its) = (first.size, vec![first], vec![it]);
    let rx = handed.rx.lock().unwrap_or_else(|p| p.into_inner());
    while batch.len() < MANY {
        let Ok(c) = rx.try_recv().map(|c| handed.took(c)) else {
            break;
        };
        match remote(&c) {
            Some(it) if bytes + c.size <= MANY_BYTES && it.node == its[0].node => {
                bytes += c.size;
                batch.push(c);
                its.push(it);
            }
            _ => {
                *carry = Some(c);
                break;
            }
        }
    }
    (batch, its)
}

/// A batch's moves in one request (`migrate::send_many`). A move that failed for a reason
/// `send_until` handles (an unreachable peer, a full disk there), or all of them when the
/// request failed as a whole, is tried again alone through it. None: cancelled meanwhile.
fn send_batch(
    ctx: &Ctx,
    m: &Mover,
    local: &Local,
    batch: &[Candidate],
    its: &[super::migrate::Remote],
) -> Vec<Option<Result<Sent, Error>>> {
    assert_eq!(batch.len(), its.len(), "where each move of the batch goes");
    if ctx.steer.stop.abort.load(Ordering::Acquire) {
        return batch.iter().map(|_| None).collect(); // cancelled: none of it is sent
    }
    let sent = super::migrate::send_many(local, its, m.generation, m.ttl)
        .inspect(|_| m.counters.peers.reached(&its[0].node));
    let Ok(results) = sent else {
        return batch.iter().map(|c| send_until(ctx, m, local, c)).collect();
    };
    let again = |e: &Error| {
        super::reach::unreachable(e)
            || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    };
    batch
        .iter()
        .zip(results)
        .map(|(c, r)| match r {
            Err(e) if again(&e) => send_until(ctx, m, local, c),
            other => Some(other),
        })
        .collect()
}

/// Counts one move's end and notes its partition's progress.
fn account(ctx: &Ctx, m: &Mover, c: &Candidate, sent: Result<Sent, Error>, log: &mut Vec<u16>) {
    let moved = match sent {
        Ok(Sent::Moved(n)) => {
            Stats::add(&ctx.stats.files, 1);
            Stats::add(&ctx.stats.bytes, n);
            true
        }
        Ok(Sent::Superseded) => {
            m.counters.superseded.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(e) => {
            ctx.note_failed(&c.src, false);
            ctx.stats.error(e);
            false
        }
    };
    m.finish_partition(c.partition, moved, log);
}

/// Walks every present disk in parallel and hands each misplaced object to `sink` (objects in
/// `skip` partitions are counted, not handed over).
fn scan(
    ctx: &Ctx,
    m: &Mover,
    disks: &[(String, PathBuf, bool)],
    skip: Option<&HashSet<u16>>,
    sink: &(dyn Fn(Candidate) + Sync),
) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = disks.len().clamp(1, 16);
    let new = &m.cluster.current;
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, path, lost_if_gone)) = disks.get(i) else {
                        return;
                    };
                    let dev = match meta::lstat(path) {
                        Ok(st) => st.st_dev,
                        Err(e) => {
                            if *lost_if_gone {
                                let mut g = m.counters.lost_disks.lock().unwrap_or_else(|p| p.into_inner());
                                if !g.contains(id) {
                                    eprintln!(
                                        "ferry: disk {id} ({}) of a removed set is gone: its objects are lost",
                                        path.display()
                                    );
                                    g.push(id.clone());
                                }
                            } else {
                                ctx.stats.error(e);
                            }
                            continue;
                        }
                    };
                    let mut errors = Vec::new();
                    walk_objects(path, &mut errors, &mut |bucket, key, size| {
                        m.counters.scanned.fetch_add(1, Ordering::Relaxed);
                        m.counters.scanned_bytes.fetch_add(size, Ordering::Relaxed);
                        let p = partition_of(bucket.as_bytes(), key);
                        if new.is_owner(p, id) {
                            return;
                        }
                        if skip.is_some_and(|s| s.contains(&p)) {
                            m.counters.skipped_done.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        m.counters.misplaced.fetch_add(1, Ordering::Relaxed);
                        m.counters.misplaced_bytes.fetch_add(size, Ordering::Relaxed);
                        let owner = new.owner(p);
                        sink(Candidate {
                            size,
                            partition: p,
                            src: object_path(path, bucket, key),
                            dst: object_path(&owner.path, bucket, key),
                            dev,
                            to: new.owner_key(p),
                        });
                    });
                    for e in errors {
                        ctx.stats.error(Error::failed("scan", path, e));
                    }
                }
            });
        }
    });
}

/// Proves nothing is left on a non-owner disk; on success the forwarding entries go.
fn final_pass(ctx: &Ctx, m: &Mover, disks: &[(String, PathBuf, bool)]) {
    if ctx.stats.failed.load(Ordering::Acquire) > 0 {
        return; // the failures are the report; what they left behind is expected
    }
    // Counters of the proof walk are not the job's scan counters.
    let probe = Mover {
        cluster: m.cluster.clone(),
        counters: Arc::new(Counters::default()),
        remaining: Vec::new(),
        generation: m.generation,
        ttl: m.ttl,
        local: None,
    };
    let first: Mutex<Option<Candidate>> = Mutex::new(None);
    let left = AtomicU64::new(0);
    scan(ctx, &probe, disks, None, &|c| {
        left.fetch_add(1, Ordering::Relaxed);
        first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(c);
    });
    let left = left.into_inner();
    m.counters.left_over.store(left, Ordering::Release);
    if let Some(c) = first.into_inner().unwrap_or_else(|p| p.into_inner()) {
        ctx.stats.error(Error::failed(
            "final pass",
            &c.src,
            format!(
                "{left} objects are still on non-owner disks (this one belongs on {})",
                c.to
            ),
        ));
        return;
    }
    if let Some(r) = &m.cluster.registry {
        // Everything is at its owner: forwarding is no longer needed.
        if let Err(e) = r.expire_forwards(true).and_then(|_| r.flush()) {
            ctx.stats.error(e);
        }
    }
}

fn is_enoent(e: &Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

impl Mover {
    /// The root of the disk holding `p` (the longest disk path it is under).
    fn root_of(&self, p: &Path) -> Option<&Path> {
        self.cluster
            .disks()
            .map(|(_, d)| d)
            .filter(|d| p.starts_with(d))
            .max_by_key(|d| d.as_os_str().len())
    }

    /// The object a move is about, read back from its paths (`<disk>/<bucket>/<key>`), so
    /// nothing per object is kept in memory between scan and commit.
    fn item_of(&self, src: &Path, dst: &Path) -> Option<Item> {
        let (from, bucket, key) = self.object_at(src)?;
        let (to, _) = self.disk_of(dst)?;
        let partition = partition_of(bucket.as_bytes(), &key);
        Some(Item {
            bucket,
            key,
            from,
            to,
            partition,
        })
    }

    /// The disk (`set/disk`) holding `p` and `p` below its root.
    fn disk_of(&self, p: &Path) -> Option<(String, PathBuf)> {
        self.cluster
            .disks()
            .filter_map(|(id, d)| {
                p.strip_prefix(d)
                    .ok()
                    .map(|r| (id.to_string(), d.as_os_str().len(), r.to_path_buf()))
            })
            .max_by_key(|(_, n, _)| *n)
            .map(|(id, _, r)| (id, r))
    }

    /// (disk, bucket, key) of the object file at `p`.
    fn object_at(&self, p: &Path) -> Option<(String, String, Vec<u8>)> {
        use std::os::unix::ffi::OsStrExt;
        let (disk, rel) = self.disk_of(p)?;
        let mut parts = rel.components();
        let bucket = parts.next()?.as_os_str().to_str()?.to_string();
        let key = parts.as_path().as_os_str().as_bytes().to_vec();
        (!key.is_empty()).then_some((disk, bucket, key))
    }

    /// An object's move is over (moved, superseded or failed): its task unit ends.
    fn finish(&self, ctx: &Ctx, item: Option<Item>, moved: bool, log: &mut Vec<u16>) {
        if let Some(it) = item {
            self.finish_partition(it.partition, moved, log);
        }
        ctx.queues.finish();
    }

    /// One of the partition's objects is at its owner (`moved`), or failed: a partition with
    /// a failure is never done (the next run moves what is left of it).
    fn finish_partition(&self, p: u16, moved: bool, log: &mut Vec<u16>) {
        if moved && self.remaining[p as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
            log.push(p);
        }
    }

    /// Whether partition `p`'s owner disk is another node's (a node's run only).
    fn is_remote(&self, p: u16) -> bool {
        self.local
            .as_ref()
            .is_some_and(|l| self.cluster.current.owner(p).node.as_deref() != Some(l.node.as_str()))
    }

    /// A cross-node move of the object at `c.src`.
    fn remote_of(&self, c: &Candidate) -> Option<Remote> {
        let (from, bucket, key) = self.object_at(&c.src)?;
        let owner = self.cluster.current.owner(c.partition);
        Some(Remote {
            bucket,
            key,
            src: c.src.clone(),
            from,
            node: owner.node.clone()?,
            disk: self.cluster.current.owner_key(c.partition),
        })
    }

    /// Gives the copy its name (phase 1, under the key's lock). Ok(true): the destination now
    /// holds the object; Ok(false): superseded (the copy was dropped).
    fn place(&self, f: &Finished) -> Result<bool, Error> {
        match meta::lstat(&f.src) {
            // A client deleted it, or wrote it anew at its owner (which removed this copy).
            Err(e) if is_enoent(&e) => return Ok(false),
            Err(e) => return Err(e),
            Ok(st) if !f.done.unchanged(&st) => {
                return Err(Error {
                    op: "rebalance",
                    target: crate::error::Target::Path(f.src.clone()),
                    kind: ErrorKind::SourceChanged {
                        attempts: f.attempt,
                    },
                });
            }
            Ok(_) => {}
        }
        match meta::rename_noreplace(&f.tmp, &f.dst) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // The owner has it already: left by an interrupted run (same bytes), or written
                // there meanwhile. The newer mtime wins; a tie keeps what is there.
                let there = meta::lstat(&f.dst)?;
                if (there.st_mtime, there.st_mtime_nsec) >= f.done.mtime {
                    meta::unlink(&f.tmp)?;
                    Ok(true)
                } else {
                    meta::rename(&f.tmp, &f.dst).map(|_| true)
                }
            }
            Err(e) => Err(e),
        }
    }
}

impl CommitHook for Mover {
    fn commit(&self, ctx: &Ctx, items: Vec<Finished>) {
        let mut log = Vec::new();
        let placed = self.place_all(ctx, items, &mut log);
        // The names must be durable before any source goes.
        let mut devs: Vec<u64> = placed.iter().map(|(f, _)| f.dev).collect();
        devs.sort_unstable();
        devs.dedup();
        let forwarded = ctx
            .sync_dst(Some(&devs))
            .and_then(|()| self.forward(&placed));
        if let Err(e) = forwarded.and_then(|()| self.still_owned(&placed)) {
            // Copies are durable at their owners; the sources stay (a later run drops them).
            ctx.stats.error(e);
            for (_, item) in placed {
                self.finish(ctx, item, false, &mut log);
            }
            return;
        }
        let src_devs = self.clean_up(ctx, placed, &mut log);
        // The deletions become durable with one syncfs per source filesystem (not one fsync
        // per directory: a batch touches hundreds of them).
        for (dev, dir) in src_devs {
            if let Err(e) = ctx.sync_src(dev, &dir) {
                ctx.stats.error(e);
            }
        }
        if let Some(r) = &self.cluster.registry
            && let Err(e) = r.flush()
        {
            ctx.stats.error(e);
        }
        log_partitions(ctx, self, log);
    }
}

impl Mover {
    /// Each copy to its final name under its key's lock; the placed ones (with their
    /// record), the rest superseded, requeued (written in place meanwhile) or failed.
    fn place_all(
        &self,
        ctx: &Ctx,
        items: Vec<Finished>,
        log: &mut Vec<u16>,
    ) -> Vec<(Finished, Option<Item>)> {
        let mut placed = Vec::with_capacity(items.len());
        for f in items {
            let item = self.item_of(&f.src, &f.dst);
            let res = match &item {
                Some(it) => {
                    let _g = self.cluster.lock(&it.bucket, &it.key);
                    self.place(&f)
                }
                None => Err(Error::errno("rebalance", &f.src, libc::EINVAL)),
            };
            match res {
                Ok(true) => placed.push((f, item)),
                Ok(false) => {
                    let _ = meta::unlink(&f.tmp); // dropped copy; nothing depends on it
                    self.counters.superseded.fetch_add(1, Ordering::Relaxed);
                    self.finish(ctx, item, true, log);
                }
                Err(e)
                    if matches!(e.kind, ErrorKind::SourceChanged { .. })
                        && f.attempt < MAX_ATTEMPTS =>
                {
                    // Written in place since it was read: move it again (the unit carries over).
                    let _ = meta::unlink(&f.tmp);
                    Stats::add(&ctx.stats.retries, 1);
                    ctx.queues
                        .share(Task::new_file(f.src, f.dst, None, f.attempt + 1));
                }
                Err(e) => {
                    let _ = meta::unlink(&f.tmp);
                    ctx.note_failed(&f.src, false);
                    ctx.stats.error(e);
                    self.finish(ctx, item, false, log);
                }
            }
        }
        placed
    }

    /// FORWARD for the whole batch in one registry transaction. It may name a copy a client
    /// replaces or deletes before the cleanup: the registry is a hint, a stale entry costs a
    /// reader one miss (reads fall back to placement), never an object.
    fn forward(&self, placed: &[(Finished, Option<Item>)]) -> Result<(), Error> {
        let Some(r) = &self.cluster.registry else {
            return Ok(());
        };
        let moves: Vec<(Vec<u8>, String, String)> = placed
            .iter()
            .filter_map(|(_, it)| it.as_ref())
            .map(|it| {
                (
                    super::store::full_key(&it.bucket, &it.key),
                    it.from.clone(),
                    it.to.clone(),
                )
            })
            .collect();
        r.forward_many(&moves, self.generation, self.ttl)
    }

    /// A node's run deletes sources only while the node still owns its moves in etcd.
    fn still_owned(&self, placed: &[(Finished, Option<Item>)]) -> Result<(), Error> {
        let (Some(l), Some((f, _))) = (&self.local, placed.first()) else {
            return Ok(());
        };
        match (l.fence)() {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::failed(
                "rebalance",
                &f.src,
                "this node no longer owns its moves in etcd (fence): sources kept",
            )),
            Err(m) => Err(Error::failed("rebalance fence", &f.src, m)),
        }
    }

    /// CLEANUP, each under its key's lock: the source goes only if it is still what was read
    /// (a client's write or delete since then is its call, not ours). The source directories
    /// to make durable, one per filesystem.
    fn clean_up(
        &self,
        ctx: &Ctx,
        placed: Vec<(Finished, Option<Item>)>,
        log: &mut Vec<u16>,
    ) -> Vec<(u64, PathBuf)> {
        let mut src_devs: Vec<(u64, PathBuf)> = Vec::new();
        for (f, item) in placed {
            let it = item.as_ref().expect("placed items have their record");
            let res = {
                let _g = self.cluster.lock(&it.bucket, &it.key);
                match meta::lstat(&f.src) {
                    Ok(st) if f.done.unchanged(&st) => {
                        meta::unlink(&f.src).map(|_| Some(st.st_dev))
                    }
                    Ok(_) => Ok(None),
                    Err(e) if is_enoent(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            };
            match res {
                Ok(Some(dev)) => {
                    Stats::add(&ctx.stats.files, 1);
                    Stats::add(&ctx.stats.bytes, f.bytes);
                    if !src_devs.iter().any(|(d, _)| *d == dev) {
                        src_devs.push((dev, meta::parent_dir(&f.src).to_path_buf()));
                    }
                    self.finish(ctx, item, true, log);
                }
                Ok(None) => {
                    self.counters.superseded.fetch_add(1, Ordering::Relaxed);
                    self.finish(ctx, item, true, log);
                }
                Err(e) => {
                    ctx.stats.error(e);
                    self.finish(ctx, item, false, log);
                }
            }
        }
        src_devs
    }
}

/// The partitions finished by this batch, appended to the partition log. No per-object
/// journal: a resume rescans the disks (moved objects are no longer misplaced), so memory on
/// resume stays flat too; the partition log is enough.
fn log_partitions(ctx: &Ctx, m: &Mover, log: Vec<u16>) {
    if let Some(l) = &m.local {
        log.iter().for_each(|&p| (l.on_done)(p));
    }
    let Some(p) = partitions_file(ctx).filter(|_| !log.is_empty()) else {
        return;
    };
    let mut text = String::new();
    for x in log {
        text.push_str(&format!("{x}\n"));
    }
    let w = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_data()));
    if let Err(e) = w {
        // Not fatal: a resume then rescans those partitions too.
        ctx.stats.error(Error::os("checkpoint partitions", &p, e));
    }
}
