//! Faults during a cross-node rebalance (issue 20), with real etcd and real agent processes,
//! each followed by the invariant check: every object exactly once at its owner with its
//! bytes, nothing lost, deleted keys stay deleted.
//! - The leader SIGSTOPped past its lease TTL, then SIGCONT: another agent leads, the old
//!   leader is fenced (it steps down; no assignment of its epoch after the new leader's), the
//!   rebalance completes, no object moved twice.
//! - One of three etcd members killed -9 (the raft leader) mid-rebalance: it completes.
//! - A full owner disk (a small loop-device ext4, root only): the rebalance pauses
//!   (destination_full), nothing is lost or partial; once space is freed it completes.
//! - A receiving node's link down for 20 s (agents in network namespaces on a bridge, root
//!   only): the moves to it wait (peer_unreachable, naming it and since when), reads of live
//!   keys on the other nodes and writes and deletes there go on; link up, it completes.
//! - All seven kinds in turn, cycle after cycle (FERRY_FAULT_CYCLES, default one of each; 50 in
//!   the slow tier; seeded order, FERRY_TEST_SEED repeats it), each mid-rebalance with
//!   clients reading, overwriting and deleting through every agent, each followed by the
//!   invariant check: kill -9 of a sender, of a receiver, the leader SIGSTOPped past its
//!   TTL, the etcd raft leader killed, the receiving disk full then freed, the link of a
//!   sender (first) or of a receiver down 20 s, the leader (first) or a sender cut off
//!   from etcd alone for 8 s (a blackhole route to etcd's address in its namespace).
//!
//! Skips (saying why) without etcd, and without root where it needs it.

mod agent_harness;
mod cluster_harness;
mod common;
mod etcd_harness;
mod netkit;

use cluster_harness::clients::{
    Model, Tally, Window, assert_no_failures, check_everywhere, clients, stop_clients,
};
use cluster_harness::*;
use common::placed::assert_placed;
use etcd_harness::Etcd;
use ferry::cluster::Topology;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One fault test at a time: each times leases and moves that load would distort.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

const CFG: &str = r#"{"ttl_secs": 2, "windows": {"cold_ms": 300, "scale_ms": 300, "emergency_ms": 0}, "poll_ms": 100, "request_timeout_ms": 700, "progress_interval_ms": 300, "copy_threads": 1}"#;

/// g1: a and b hold everything; g2: c joins with a set of its own (a and b send to it).
fn two_then_three(n: &Nodes) -> (ferry::cluster::Topology, ferry::cluster::Topology) {
    let (a0, b0, c0): (Disks, Disks, Disks) = (&[("d0", "a")], &[("d0", "b")], &[("d0", "c")]);
    let g1 = topo(&n.root, 1, &[("s0", "active", a0), ("s1", "active", b0)]);
    let g2 = topo(
        &n.root,
        2,
        &[
            ("s0", "active", a0),
            ("s1", "active", b0),
            ("s2", "active", c0),
        ],
    );
    (g1, g2)
}

/// Waits until generation `g` moved a few objects (or completed).
fn wait_moving(n: &Nodes, g: u64) {
    n.wait_rebalance(Duration::from_secs(30), "moves under way", |r| {
        r["generation"] == g && (r["objects"].as_u64() > Some(5) || r["state"] == "completed")
    });
}

/// Each misplaced object moved (or superseded) once: the counts are the ideal.
fn moved_once(r: &serde_json::Value, ideal: usize) {
    let moved = r["objects"].as_u64().unwrap() + r["superseded"].as_u64().unwrap();
    assert_eq!(
        moved as usize, ideal,
        "each misplaced object moved once: {r}"
    );
}

#[test]
fn the_leader_stopped_past_its_ttl_is_fenced_and_the_rebalance_completes() {
    let _g = serial();
    let Some(mut n) = nodes(&["a", "b", "c"], CFG) else {
        return;
    };
    let (g1, g2) = two_then_three(&n);
    let want = fill(&g1, 900, 0);
    n.apply(&g1);
    // a first: it wins the election
    n.start(&["a"]);
    n.start(&["b", "c"]);
    let (leader, epoch) = n.c.leader().expect("a leader");
    assert_eq!(leader, "a");
    n.c.wait_settled(&["a", "b", "c"], Duration::from_secs(20));
    ok(ferry(&n.c, &["cluster", "rate", "1M"]));
    n.apply(&g2);
    wait_moving(&n, 2);
    n.c.signal("a", libc::SIGSTOP);
    let stopped = Instant::now();
    // another agent leads, with a newer epoch, and assigns without a
    let (next, new_epoch) = loop {
        if let Some((l, e)) = n.c.leader()
            && l != "a"
        {
            break (l, e);
        }
        assert!(stopped.elapsed() < Duration::from_secs(10), "no new leader");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(new_epoch > epoch, "{new_epoch} after {epoch}");
    n.c.wait_settled(&["b", "c"], Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed()));
    let woke = agent_harness::invariants::now_ms();
    n.c.signal("a", libc::SIGCONT);
    eprintln!(
        "a stopped {:?}; {next} leads (epoch {new_epoch})",
        stopped.elapsed()
    );
    let r = n.wait_completed(2, Duration::from_secs(90));
    // the old leader stood down and wrote nothing with its epoch after it woke
    let ev = n.c.events("a");
    assert!(
        ev.iter()
            .any(|e| e["event"] == "stepped_down" && e["epoch"] == epoch),
        "a did not step down: {ev:?}"
    );
    let late = ev.iter().find(|e| {
        e["event"] == "assigned" && e["epoch"] == epoch && e["at_ms"].as_u64() >= Some(woke)
    });
    assert!(late.is_none(), "the fenced leader assigned: {late:?}");
    let h = n.c.history();
    agent_harness::invariants::check_history(&h);
    let first_new = h.iter().position(|(_, a)| a.epoch == new_epoch).unwrap();
    assert!(
        h[first_new..].iter().all(|(_, a)| a.epoch >= new_epoch),
        "an assignment of an older epoch after {new_epoch}"
    );
    n.c.wait_settled(&["a", "b", "c"], Duration::from_secs(20));
    moved_once(&r, ideal_moves(&g1, &g2, &want));
    assert_placed(&g2, BKT, &want);
}

#[test]
fn an_etcd_member_killed_mid_rebalance_and_the_rebalance_completes() {
    let _g = serial();
    let Some(etcd) = Etcd::start(3) else {
        return;
    };
    let Some(mut n) = Nodes::new(etcd, &["a", "b", "c"], CFG, &|_| "127.0.0.1".into()) else {
        return;
    };
    let (g1, g2) = two_then_three(&n);
    let want = fill(&g1, 900, 0);
    n.apply(&g1);
    n.start(&["a", "b", "c"]);
    n.c.wait_settled(&["a", "b", "c"], Duration::from_secs(20));
    ok(ferry(&n.c, &["cluster", "rate", "1M"]));
    n.apply(&g2);
    wait_moving(&n, 2);
    let l = n.c.etcd.wait_leader(Duration::from_secs(10));
    n.c.etcd.stop(l); // SIGKILL
    eprintln!("killed etcd member {l} (the raft leader) mid-rebalance");
    let r = n.wait_completed(2, Duration::from_secs(90));
    moved_once(&r, ideal_moves(&g1, &g2, &want));
    assert_placed(&g2, BKT, &want);
    for node in ["a", "b", "c"] {
        let claims =
            n.c.events(node)
                .iter()
                .filter(|e| e["event"] == "state" && e["to"] == "claiming_id")
                .count();
        assert_eq!(claims, 1, "{node} lost its lease with a quorum left");
    }
}

/// Free bytes for unprivileged use on the filesystem of `p`.
fn free_bytes(p: &std::path::Path) -> u64 {
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string and out-pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail * s.f_frsize
}

/// A file filling the filesystem of `mnt` up to `room` bytes left free; its path.
fn ballast(mnt: &std::path::Path, room: u64) -> std::path::PathBuf {
    let ballast = mnt.join(".ballast");
    let fill = free_bytes(mnt).saturating_sub(room);
    let f = std::fs::File::create(&ballast).unwrap();
    // SAFETY: a valid fd; allocates the blocks for real.
    assert_eq!(
        unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, fill as i64) },
        0,
        "fallocate {fill} bytes in {}: {}",
        ballast.display(),
        std::io::Error::last_os_error()
    );
    f.sync_all().unwrap();
    ballast
}

/// Every object of `want` exactly once on the disks of `t` (its owner's or its source's),
/// with its bytes: nothing lost, nothing doubled.
fn once_somewhere(t: &ferry::cluster::Topology, want: &std::collections::HashMap<String, Vec<u8>>) {
    let at = common::placed::where_is(t, BKT);
    for (k, data) in want {
        let disks = at.get(k).cloned().unwrap_or_default();
        assert_eq!(disks.len(), 1, "{k} on {disks:?}");
        let (set, disk) = disks[0].split_once('/').unwrap();
        let d = t.sets().find(|s| s.id == set).unwrap();
        let d = d.disks.iter().find(|d| d.id == disk).unwrap();
        let path = ferry::cluster::store::object_path(&d.path, BKT, k.as_bytes());
        assert!(&std::fs::read(path).unwrap() == data, "{k}: other bytes");
    }
}

/// b's new disk is a small ext4 nearly full: a's moves into it meet ENOSPC there, the
/// rebalance pauses (destination_full) with nothing lost, doubled or partial; space freed,
/// it goes on by itself and completes.
#[test]
fn a_full_owner_disk_pauses_the_rebalance_until_space_is_freed() {
    let _g = serial();
    let Some(mut n) = nodes(&["a", "b"], CFG) else {
        return;
    };
    let mnt = n.root.join("s1d0");
    std::fs::create_dir_all(&mnt).unwrap();
    let img = n.c.dir.path().join("b.img");
    let _m = match common::loop_ext4(&img, &mnt, 24 << 20) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let a0: Disks = &[("d0", "a")];
    let g1 = topo(&n.root, 1, &[("s0", "active", a0)]);
    let g2 = topo(
        &n.root,
        2,
        &[("s0", "active", a0), ("s1", "active", &[("d0", "b")])],
    );
    let want = fill(&g1, 600, 0);
    let ideal = ideal_moves(&g1, &g2, &want);
    // room for a third of what b is to get
    let to_b: u64 = want
        .iter()
        .filter(|(k, _)| owner_node(&g2, k) == "b")
        .map(|(_, v)| v.len() as u64)
        .sum();
    let ballast = ballast(&mnt, to_b / 3);
    n.apply(&g1);
    n.start(&["a", "b"]);
    n.apply(&g2);
    let r = n.wait_rebalance(Duration::from_secs(30), "destination_full", |r| {
        r["generation"] == 2 && r["state"] == "destination_full"
    });
    eprintln!("paused for room: {} of {ideal} objects moved", r["objects"]);
    assert!(r["objects"].as_u64() > Some(0), "nothing fitted: {r}");
    assert_eq!(r["failed"], 0, "{r}");
    std::thread::sleep(Duration::from_secs(2));
    let r = n.status()["rebalance"].clone();
    assert_eq!(r["state"], "destination_full", "it stays paused: {r}");
    once_somewhere(&g2, &want);
    assert!(
        common::temp_files(&mnt).is_empty(),
        "{:?}",
        common::temp_files(&mnt)
    );
    std::fs::remove_file(&ballast).unwrap();
    let r = n.wait_completed(2, Duration::from_secs(60));
    moved_once(&r, ideal);
    assert_placed(&g2, BKT, &want);
    assert!(
        n.c.events("a")
            .iter()
            .any(|e| e["event"] == "rebalance_destination_full")
    );
}

/// Reads `keys` through `nodes` (in turn), 8 at a time: each must answer 200 with `want`'s
/// bytes (or 404 where `want` has none). The slowest read.
fn read_all(
    n: &Nodes,
    nodes: &[&str],
    keys: &[String],
    want: &HashMap<String, Vec<u8>>,
) -> Duration {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slowest = Mutex::new(Duration::ZERO);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(k) = keys.get(i) else { return };
                    let via = nodes[i % nodes.len()];
                    let t = Instant::now();
                    let r = n.s3[via].get(BKT, k);
                    let took = t.elapsed();
                    let mut g = slowest.lock().unwrap();
                    *g = (*g).max(took);
                    drop(g);
                    let r = r.unwrap_or_else(|e| panic!("read {k} via {via} after {took:?}: {e}"));
                    match want.get(k) {
                        Some(data) => assert!(
                            r.code == 200 && &r.body == data,
                            "read {k} via {via}: {} {}",
                            r.code,
                            r.text()
                        ),
                        None => assert_eq!(r.code, 404, "deleted {k} came back via {via}"),
                    }
                }
            });
        }
    });
    slowest.into_inner().unwrap()
}

/// The keys of `want` that are on a disk of a node other than `off` now (not moved to it),
/// and of those the ones whose owner under `t` is not `off` (their writes do not go there).
fn live_elsewhere(
    t: &Topology,
    want: &HashMap<String, Vec<u8>>,
    off: &str,
) -> (Vec<String>, Vec<String>) {
    let at = common::placed::where_is(t, BKT);
    let node_of = |d: &str| {
        let (set, disk) = d.split_once('/').unwrap();
        let s = t.sets().find(|s| s.id == set).unwrap();
        s.disks
            .iter()
            .find(|x| x.id == disk)
            .unwrap()
            .node
            .clone()
            .unwrap()
    };
    let mut live: Vec<String> = want
        .keys()
        .filter(|k| {
            at.get(*k)
                .is_some_and(|v| v.iter().all(|d| node_of(d) != off))
        })
        .cloned()
        .collect();
    live.sort();
    let stay = live
        .iter()
        .filter(|k| owner_node(t, k) != off)
        .cloned()
        .collect();
    (live, stay)
}

/// Agents a, b, c in network namespaces on a bridge (`members` etcd members beside the test).
fn bridged(br: &netkit::bridge::Bridge, members: usize) -> Option<Nodes> {
    // etcd on the bridge's second address: a namespace can be cut off from it alone.
    let etcd = Etcd::start_on(members, &[&br.aux])?;
    let names = ["a", "b", "c"];
    let addr = |n: &str| {
        br.ns[names.iter().position(|x| *x == n).unwrap()]
            .addr
            .clone()
    };
    let mut n = Nodes::new(etcd, &names, CFG, &addr)?;
    for (i, name) in names.iter().enumerate() {
        let urls = n.c.etcd.urls_at(&br.aux);
        n.c.wrap.insert(name.to_string(), br.wrap(i));
        n.c.etcd_urls.insert(name.to_string(), urls);
    }
    Some(n)
}

/// c joins (g2) and a and b send it its objects; c's link goes down for 20 s mid-rebalance.
/// The moves to c wait and probe (the job says c is unreachable and since when, and fails
/// nothing); reads of the keys still on a and b keep working through both, and so do writes
/// and deletes of keys c does not own. Link up: the rebalance completes, each object moved
/// once, every object once at its owner with its last write, no deleted key back.
#[test]
fn a_receiving_nodes_link_down_for_20_s_waits_and_the_rebalance_completes() {
    let _g = serial();
    let br = match netkit::bridge::Bridge::new("l", 3) {
        Ok(b) => b,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let Some(mut n) = bridged(&br, 1) else {
        return;
    };
    let (g1, g2) = two_then_three(&n);
    let mut want = fill(&g1, 900, 0);
    let ideal = ideal_moves(&g1, &g2, &want);
    n.apply(&g1);
    n.start(&["a"]);
    n.start(&["b", "c"]);
    n.c.wait_settled(&["a", "b", "c"], Duration::from_secs(20));
    ok(ferry(&n.c, &["cluster", "rate", "300k"]));
    n.apply(&g2);
    wait_moving(&n, 2);
    br.link(2, false);
    let down = Instant::now();
    let down_ms = agent_harness::invariants::now_ms();
    let r = n.wait_rebalance(Duration::from_secs(19), "c unreachable", |r| {
        r["state"] == "peer_unreachable" && r["unreachable"][0]["peer"] == "c"
    });
    eprintln!(
        "after {:?}: {} of {ideal} moved; {}",
        down.elapsed(),
        r["objects"],
        r["unreachable"]
    );
    assert!(
        r["unreachable"][0]["since_ms"].as_u64() >= Some(down_ms),
        "{r}"
    );
    assert_eq!(r["failed"], 0, "{r}");
    let (live, stay) = live_elsewhere(&g2, &want, "c");
    assert!(
        live.len() > stay.len(),
        "keys c owns wait on a and b: {} {}",
        live.len(),
        stay.len()
    );
    // writes and deletes of keys c does not own, through a and b
    for (i, k) in stay.iter().take(30).enumerate() {
        let via = ["a", "b"][i % 2];
        if i % 3 == 0 {
            assert_eq!(n.s3[via].delete(BKT, k).unwrap().code, 204, "delete {k}");
            want.remove(k);
        } else {
            let data = sized(i, 1, 0);
            assert_eq!(n.s3[via].put(BKT, k, &data).unwrap().code, 200, "put {k}");
            want.insert(k.clone(), data);
        }
    }
    let mut slowest = Duration::ZERO;
    while down.elapsed() < Duration::from_secs(20) {
        slowest = slowest.max(read_all(&n, &["a", "b"], &live, &want));
    }
    let r = n.status()["rebalance"].clone();
    assert_eq!(
        (&r["state"], &r["failed"]),
        (&"peer_unreachable".into(), &0.into()),
        "{r}"
    );
    br.link(2, true);
    eprintln!(
        "link down {:?}; {} reads of live keys, slowest {slowest:?}",
        down.elapsed(),
        live.len()
    );
    ok(ferry(&n.c, &["cluster", "rate", "0"]));
    let r = n.wait_completed(2, Duration::from_secs(60));
    assert_eq!(r["failed"], 0, "{r}");
    moved_once(&r, ideal);
    assert_placed(&g2, BKT, &want);
    let ev = n.c.events("a");
    assert!(
        ev.iter()
            .any(|e| e["event"] == "rebalance_peer_unreachable" && e["peer"] == "c"),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e["event"] == "rebalance_peer_reachable" && e["peer"] == "c"),
        "{ev:?}"
    );
}

/// The faults the cycling test injects in turn, one per cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillSender,
    KillReceiver,
    StopLeader,
    EtcdMemberLost,
    FullDisk,
    LinkDown,
    EtcdCut,
}

const FAULTS: [Fault; 7] = [
    Fault::KillSender,
    Fault::KillReceiver,
    Fault::StopLeader,
    Fault::EtcdMemberLost,
    Fault::FullDisk,
    Fault::LinkDown,
    Fault::EtcdCut,
];

/// The cycling test's cluster: agents a, b, c over three etcd members, in network namespaces
/// on a bridge where this machine has them (else on loopback, and no link-down cycles), each
/// node's disk a small loop-device ext4 where it can be (else a directory, and no full-disk
/// cycles). Fields drop in order: the agents, then the disks, then the namespaces.
struct Rig {
    n: Nodes,
    _disks: Vec<common::Mounted>,
    br: Option<netkit::bridge::Bridge>,
    /// The fault kinds this machine cannot inject, and why.
    skip: Vec<(Fault, String)>,
    /// Link-down and etcd-cut cycles so far.
    links: usize,
    cuts: usize,
}

/// Each node's one disk (`s0d0` on a, `s1d0` on b, `s2d0` on c); c's set `c_state`.
fn abc(root: &std::path::Path, g: u64, c_state: &str) -> Topology {
    let (a0, b0, c0): (Disks, Disks, Disks) = (&[("d0", "a")], &[("d0", "b")], &[("d0", "c")]);
    topo(
        root,
        g,
        &[
            ("s0", "active", a0),
            ("s1", "active", b0),
            ("s2", c_state, c0),
        ],
    )
}

const NODE_DISKS: [(&str, &str); 3] = [("a", "s0d0"), ("b", "s1d0"), ("c", "s2d0")];

impl Rig {
    /// None: etcd is not installed.
    fn new() -> Option<Rig> {
        let mut skip = vec![];
        let names = ["a", "b", "c"];
        let (n, br) = match netkit::bridge::Bridge::new("f", 3) {
            Ok(br) => (bridged(&br, 3)?, Some(br)),
            Err(why) => {
                skip.push((Fault::EtcdCut, why.clone()));
                skip.push((Fault::LinkDown, why));
                let etcd = Etcd::start(3)?;
                (
                    Nodes::new(etcd, &names, CFG, &|_| "127.0.0.1".into())?,
                    None,
                )
            }
        };
        let mut n = n;
        // a client gives up on an agent whose link is down (and goes to the next) at once
        for s3 in n.s3.values_mut() {
            s3.connect_timeout = Duration::from_secs(2);
        }
        let mut disks = vec![];
        for (node, d) in NODE_DISKS {
            let mnt = n.root.join(d);
            std::fs::create_dir_all(&mnt).unwrap();
            let img = n.c.dir.path().join(format!("{node}.img"));
            match common::loop_ext4(&img, &mnt, 32 << 20) {
                Ok(m) => disks.push(m),
                Err(why) => {
                    skip.push((Fault::FullDisk, why.to_string()));
                    break;
                }
            }
        }
        for (f, why) in &skip {
            eprintln!("skipped: the {f:?} cycles ({why})");
        }
        Some(Rig {
            n,
            _disks: disks,
            br,
            skip,
            links: 0,
            cuts: 0,
        })
    }

    fn disk(&self, node: &str) -> std::path::PathBuf {
        let d = NODE_DISKS.iter().find(|(n, _)| *n == node).unwrap().1;
        self.n.root.join(d)
    }
}

/// The bytes `node`'s disk is to receive under `t`: objects on the other disks that it owns.
fn incoming(t: &Topology, node: &str) -> u64 {
    let mut bytes = 0;
    for (k, at) in common::placed::where_is(t, BKT) {
        if owner_node(t, &k) != node {
            continue;
        }
        for d in at {
            let (set, disk) = d.split_once('/').unwrap();
            let s = t.sets().find(|s| s.id == set).unwrap();
            let d = s.disks.iter().find(|x| x.id == disk).unwrap();
            if d.node.as_deref() != Some(node) {
                let p = ferry::cluster::store::object_path(&d.path, BKT, k.as_bytes());
                bytes += std::fs::metadata(p).map_or(0, |m| m.len());
            }
        }
    }
    bytes
}

/// One cycle's roles: generation `g` (c's set active: a and b send to c; draining: c sends
/// to a and b); the sender and the receiver that faults hit, picked by `rng` among them.
struct Roles {
    t: Topology,
    sender: &'static str,
    receiver: &'static str,
}

fn roles(root: &std::path::Path, g: u64, rng: &mut netkit::Rng) -> Roles {
    let other = ["a", "b"][rng.below(2) as usize];
    if g.is_multiple_of(2) {
        Roles {
            t: abc(root, g, "active"),
            sender: other,
            receiver: "c",
        }
    } else {
        Roles {
            t: abc(root, g, "draining"),
            sender: "c",
            receiver: other,
        }
    }
}

/// Waits until generation `g` moved a few objects (or completed).
fn under_way(n: &Nodes, g: u64) {
    n.wait_rebalance(Duration::from_secs(30), "moves under way", |r| {
        r["generation"] == g && (r["objects"].as_u64() > Some(3) || r["state"] == "completed")
    });
}

/// kill -9 of `victim` mid-rebalance, 800 ms down, started again.
fn kill9_fault(n: &mut Nodes, g: u64, victim: &str, w: &Window) -> String {
    under_way(n, g);
    w.set_down(true);
    n.c.kill9(victim);
    std::thread::sleep(Duration::from_millis(800));
    n.c.start(victim);
    n.wait_s3(victim, Duration::from_secs(30));
    w.set_down(false);
    format!("{victim} killed -9")
}

/// The leader SIGSTOPped until another agent leads and 5 s (2.5 TTLs) have passed, then
/// SIGCONT: it steps down and assigns nothing with its old epoch after it woke.
fn stop_leader_fault(n: &mut Nodes, g: u64, w: &Window) -> String {
    under_way(n, g);
    let (leader, epoch) = n.c.leader().expect("a leader");
    w.set_down(true);
    n.c.signal(&leader, libc::SIGSTOP);
    let stopped = Instant::now();
    let (next, new_epoch) = loop {
        if let Some((l, e)) = n.c.leader()
            && l != leader
        {
            break (l, e);
        }
        assert!(stopped.elapsed() < Duration::from_secs(15), "no new leader");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(new_epoch > epoch, "{new_epoch} after {epoch}");
    std::thread::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed()));
    let woke = agent_harness::invariants::now_ms();
    n.c.signal(&leader, libc::SIGCONT);
    let stopped = stopped.elapsed();
    let start = Instant::now();
    while !n
        .c
        .events(&leader)
        .iter()
        .any(|e| e["event"] == "stepped_down" && e["epoch"] == epoch)
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{leader} did not step down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    n.wait_s3(&leader, Duration::from_secs(30));
    w.set_down(false);
    let late = n.c.events(&leader).into_iter().find(|e| {
        e["event"] == "assigned" && e["epoch"] == epoch && e["at_ms"].as_u64() >= Some(woke)
    });
    assert!(late.is_none(), "the fenced leader assigned: {late:?}");
    format!("leader {leader} (epoch {epoch}) stopped {stopped:?}, {next} led (epoch {new_epoch})")
}

/// How many times each agent began claiming its identity (a lost lease starts it again).
fn claims(n: &Nodes) -> Vec<usize> {
    ["a", "b", "c"]
        .iter()
        .map(|node| {
            n.c.events(node)
                .iter()
                .filter(|e| e["event"] == "state" && e["to"] == "claiming_id")
                .count()
        })
        .collect()
}

/// The raft leader among the etcd members killed -9 mid-rebalance (it is started again once
/// the rebalance completed); the member and the agents' claims before it.
fn etcd_fault(n: &mut Nodes, g: u64) -> (String, usize, Vec<usize>) {
    under_way(n, g);
    let before = claims(n);
    let l = n.c.etcd.wait_leader(Duration::from_secs(10));
    n.c.etcd.stop(l);
    (
        format!("etcd member {l} (the raft leader) killed -9"),
        l,
        before,
    )
}

/// `receiver`'s disk filled (before the move) to a third of what it is to receive: the
/// rebalance pauses (destination_full, nothing failed) and writes to that disk may be refused
/// for room; 1 s later the space is freed and the rebalance goes on.
fn full_disk_fault(
    rig: &Rig,
    g: u64,
    receiver: &str,
    w: &Window,
    ballast: &std::path::Path,
) -> String {
    let r = rig
        .n
        .wait_rebalance(Duration::from_secs(30), "destination_full", |r| {
            r["generation"] == g && r["state"] == "destination_full"
        });
    assert_eq!(r["failed"], 0, "{r}");
    std::thread::sleep(Duration::from_secs(1));
    std::fs::remove_file(ballast).unwrap();
    w.set_full(false);
    format!(
        "{receiver}'s disk full after {} objects moved",
        r["objects"]
    )
}

/// A node's link down for 20 s mid-rebalance: the sender's in the first link-down cycle
/// and every other one after, the receiver's in the others. While the receiver is away the
/// job says so (peer_unreachable, naming it); nothing fails. Link up: the node serves again
/// (a sender whose lease was lost while its moves waited for the peer rejoins).
fn link_fault(rig: &mut Rig, g: u64, roles: &Roles, w: &Window) -> String {
    let receives = rig.links % 2 == 1;
    rig.links += 1;
    let victim = if receives {
        roles.receiver
    } else {
        roles.sender
    };
    let i = ["a", "b", "c"].iter().position(|n| *n == victim).unwrap();
    under_way(&rig.n, g);
    let br = rig.br.as_ref().expect("link faults run on a bridge");
    w.set_down(true);
    br.link(i, false);
    let down = Instant::now();
    if receives {
        let what = format!("{victim} unreachable");
        rig.n.wait_rebalance(Duration::from_secs(19), &what, |r| {
            r["state"] == "peer_unreachable"
                && r["unreachable"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|x| x["peer"] == victim))
        });
    }
    std::thread::sleep(Duration::from_secs(20).saturating_sub(down.elapsed()));
    let r = rig.n.status()["rebalance"].clone();
    assert_eq!(r["failed"], 0, "{r}");
    br.link(i, true);
    rig.n.wait_s3(victim, Duration::from_secs(60));
    w.set_down(false);
    let role = if receives { "receiver" } else { "sender" };
    format!(
        "{victim}'s link ({role}) down {:?} ({} objects moved then)",
        down.elapsed(),
        r["objects"]
    )
}

/// A node cut off from etcd alone for 4 TTLs mid-rebalance (its peers and the clients
/// still reach it): the leader in the first such cycle and every other one after, the
/// sender in the others. Its lease expires; if it led, another agent leads with a newer
/// epoch; it serves clients throughout from what it knows. Joined again, it claims its id
/// anew and the rebalance goes on: nothing failed, and the cycle's check holds.
fn etcd_cut_fault(rig: &mut Rig, g: u64, roles: &Roles) -> String {
    let leads = rig.cuts.is_multiple_of(2);
    rig.cuts += 1;
    under_way(&rig.n, g);
    let (leader, epoch) = rig.n.c.leader().expect("a leader");
    let victim = if leads {
        leader.clone()
    } else {
        roles.sender.to_string()
    };
    let i = ["a", "b", "c"].iter().position(|n| *n == victim).unwrap();
    let before = claims(&rig.n)[i];
    let br = rig.br.as_ref().expect("etcd cuts run on a bridge");
    br.cut_from_aux(i, true);
    let cut = Instant::now();
    let mut next = None;
    while cut.elapsed() < Duration::from_secs(8) {
        if let Some((l, e)) = rig.n.c.leader()
            && l != victim
        {
            next = Some((l, e));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = rig.n.status()["rebalance"].clone();
    br.cut_from_aux(i, false);
    assert_eq!(r["failed"], 0, "{r}");
    if leads {
        let (l, e) = next
            .as_ref()
            .expect("another agent leads while the leader is cut off");
        assert!(*e > epoch, "{l} leads with epoch {e} after {epoch}");
    }
    let start = Instant::now();
    while claims(&rig.n)[i] == before {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{victim} did not claim its id again once etcd was back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rig.n.wait_s3(&victim, Duration::from_secs(30));
    let role = if leads { "the leader" } else { "the sender" };
    format!(
        "{victim} ({role}, epoch {epoch}) cut off from etcd {:?} ({} objects moved then)",
        cut.elapsed(),
        r["objects"]
    )
}

/// Objects of the cycling test, and the migration rate that keeps each rebalance running
/// for a few seconds (faults meet moves in flight).
const CYCLE_OBJECTS: usize = 300;
const CYCLE_RATE: &str = "400k";

/// The fault of one cycle, injected once generation `roles.t` is applied; what it did, and
/// the etcd member to start again once the rebalance completed (with the claims before).
fn inject(
    rig: &mut Rig,
    kind: Fault,
    roles: &Roles,
    w: &Window,
    ballast: Option<&std::path::Path>,
) -> (String, Option<(usize, Vec<usize>)>) {
    let g = roles.t.generation;
    let what = match kind {
        Fault::KillSender => kill9_fault(&mut rig.n, g, roles.sender, w),
        Fault::KillReceiver => kill9_fault(&mut rig.n, g, roles.receiver, w),
        Fault::StopLeader => stop_leader_fault(&mut rig.n, g, w),
        Fault::EtcdMemberLost => {
            let (what, member, before) = etcd_fault(&mut rig.n, g);
            return (what, Some((member, before)));
        }
        Fault::FullDisk => full_disk_fault(rig, g, roles.receiver, w, ballast.unwrap()),
        Fault::LinkDown => link_fault(rig, g, roles, w),
        Fault::EtcdCut => etcd_cut_fault(rig, g, roles),
    };
    (what, None)
}

/// One fault cycle: clients read, overwrite and delete through every agent while generation
/// `roles.t` rebalances and `kind` strikes; then the rebalance is completed with nothing
/// failed, no client request failed (reads only while an agent was away, writes refused only
/// for room while a disk was full), every live key is once at its owner with its last bytes
/// (served so by every agent), no deleted key is anywhere, and the assignment history
/// holds. The rebalance's status and the clients' tally.
fn fault_cycle(
    rig: &mut Rig,
    kind: Fault,
    roles: &Roles,
    model: &Arc<Model>,
    seed: u64,
) -> (Value, Tally, String) {
    let ballast = (kind == Fault::FullDisk).then(|| {
        let room = incoming(&roles.t, roles.receiver) / 3;
        ballast(&rig.disk(roles.receiver), room)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let w = Arc::new(Window::faulty());
    if ballast.is_some() {
        w.set_full(true);
    }
    let threads = clients(&rig.n, model, 4, (seed, &w), &stop);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rig.n.apply(&roles.t);
        let (what, etcd) = inject(rig, kind, roles, &w, ballast.as_deref());
        let r = rig
            .n
            .wait_completed(roles.t.generation, Duration::from_secs(120));
        (what, etcd, r)
    }));
    std::thread::sleep(Duration::from_millis(300));
    let all = stop_clients(&stop, threads);
    let (what, etcd, r) = run.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_no_failures(&all, &format!("{kind:?} cycle, client seed {seed}"));
    assert_eq!(r["failed"], 0, "{r}");
    if let Some((member, before)) = etcd {
        assert_eq!(
            claims(&rig.n),
            before,
            "an agent lost its lease with a quorum left"
        );
        rig.n.c.etcd.restart(member);
    }
    let (live, gone) = model.split();
    assert_placed(&roles.t, BKT, &live);
    check_everywhere(&rig.n, &live, &gone);
    agent_harness::invariants::check_history(&rig.n.c.history());
    (r, all, what)
}

/// No temporary file is left on any disk once a cycle is over (its clients stopped, its
/// rebalance completed). A kill -9 mid-write leaves its writer's temp (a client's PUT, a
/// move's receiving end); the restarted agent sweeps it (`agent::sweep`, in the background
/// once it serves again), so a kill cycle gets a few seconds for that.
fn no_temps_left(rig: &Rig, kind: Fault) {
    let temps = || -> Vec<std::path::PathBuf> {
        NODE_DISKS
            .iter()
            .flat_map(|(node, _)| common::temp_files(&rig.disk(node)))
            .collect()
    };
    let killed = matches!(kind, Fault::KillSender | Fault::KillReceiver);
    let deadline = Instant::now() + Duration::from_secs(if killed { 15 } else { 0 });
    let mut left = temps();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        left = temps();
    }
    assert!(left.is_empty(), "{kind:?} left temporary files: {left:?}");
}

/// The fault kinds in an order of `rng`'s.
fn shuffled(rng: &mut netkit::Rng) -> Vec<Fault> {
    let mut v = FAULTS.to_vec();
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

/// Cycle after cycle (FERRY_FAULT_CYCLES, default one of each kind; 50 in the slow tier), a
/// rebalance across nodes (c's set active: a and b send to c; draining: c sends to a and b)
/// with clients reading, overwriting and deleting through every agent, and one fault in
/// the middle of it, the seven kinds in turn (each round of seven in a seeded order: the seed
/// is printed, FERRY_TEST_SEED repeats it): kill -9 of a sending agent, of a receiving
/// agent, the leader SIGSTOPped past its TTL, the raft leader of the etcd members killed, the
/// receiving disk full until space is freed, a sender's or a receiver's link down for 20 s,
/// the leader or a sender cut off from etcd alone for 8 s. Each cycle ends with
/// the invariant check of `fault_cycle`. A kind this machine cannot inject (no netns, no
/// loop devices) is skipped, saying so.
#[test]
fn every_fault_kind_in_turn_mid_rebalance_with_clients_cycle_after_cycle() {
    let _g = serial();
    let Some(mut rig) = Rig::new() else {
        return;
    };
    let seed = netkit::seed();
    let mut rng = netkit::Rng(seed);
    let g1 = abc(&rig.n.root, 1, "draining");
    let want = fill(&g1, CYCLE_OBJECTS, 0);
    rig.n.apply(&g1);
    rig.n.start(&["a", "b", "c"]);
    rig.n
        .c
        .wait_settled(&["a", "b", "c"], Duration::from_secs(20));
    ok(ferry(&rig.n.c, &["cluster", "rate", CYCLE_RATE]));
    let model = Arc::new(Model::new(&want));
    let (cycles, t0) = (fault_cycles(FAULTS.len()), Instant::now());
    let (mut order, mut g, mut ran) = (vec![], 1, 0);
    // To chase one kind: FERRY_FAULT_ONLY=EtcdCut,LinkDown runs only those of the cycles.
    let only = std::env::var("FERRY_FAULT_ONLY").ok();
    for i in 0..cycles {
        if i % FAULTS.len() == 0 {
            order = shuffled(&mut rng);
        }
        let kind = order[i % FAULTS.len()];
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|k| k == format!("{kind:?}")))
        {
            continue;
        }
        if let Some((_, why)) = rig.skip.iter().find(|(f, _)| *f == kind) {
            eprintln!("cycle {i}: {kind:?} skipped ({why})");
            continue;
        }
        g += 1;
        let roles = roles(&rig.n.root, g, &mut rng);
        let cycle = Instant::now();
        eprintln!(
            "cycle {i}: {kind:?}, generation {g}: {} -> {}",
            roles.sender, roles.receiver
        );
        let (r, t, what) = fault_cycle(&mut rig, kind, &roles, &model, seed ^ (i as u64 + 1));
        ran += 1;
        no_temps_left(&rig, kind);
        eprintln!(
            "cycle {i}: {what}; {} objects moved, {} \
             superseded; clients {} reads, {} writes, {} deletes, {} unavailable, {} retries, \
             {} refused for room; {:?}",
            r["objects"],
            r["superseded"],
            t.reads,
            t.writes,
            t.deletes,
            t.unavailable,
            t.retries,
            t.refused,
            cycle.elapsed()
        );
    }
    eprintln!(
        "{ran} of {cycles} fault cycles in {:?} (FERRY_TEST_SEED={seed})",
        t0.elapsed()
    );
    assert!(
        only.is_some() || ran * 2 >= cycles,
        "most kinds skipped here"
    );
}
