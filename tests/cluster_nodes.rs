//! The cluster across nodes, end to end: real etcd, real agent processes, each with its own
//! disks, its peer transport (mutual TLS) and its S3 endpoint, and a SigV4 client.
//! - Any agent answers for any key: objects put through one agent land at their owners on
//!   the other nodes; GET/HEAD/LIST/DELETE of every key through every agent; a deleted key
//!   never returns; an unreachable owner is a 503.
//! - `ferry cluster apply` from 2 to 3 nodes moves objects across the transport; a drained
//!   node ends empty; every object exactly once at its owner with its bytes.
//! - Clients overwrite, delete and read random keys during a cross-node rebalance: no read
//!   of a live key fails or is stale, no deleted key returns, the last write wins.
//! - kill -9 of the sending and of the receiving agent mid-rebalance, then a restart, cycle
//!   after cycle (FERRY_FAULT_CYCLES, default 12; 50 in the slow tier), each followed by the
//!   placement check.
//!
//! Skips (saying why) without etcd.

mod agent_harness;
mod cluster_harness;
mod common;
mod etcd_harness;

use agent_harness::{config, ferry, ok};
use cluster_harness::clients::{
    Model, Window, assert_no_failures, check_everywhere, client_seed, clients, stop_clients,
};
use cluster_harness::{
    BKT, Disks, Nodes, fault_cycles, fill, ideal_moves, nodes, objects_on, owner_node, sized, topo,
};
use common::placed::assert_placed;
use ferry::cluster::store::Placed;
use ferry::cluster::{Topology, partition_of};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn body(i: usize, v: usize) -> Vec<u8> {
    sized(i, v, 41)
}

#[test]
fn three_agents_answer_for_every_key_and_an_unreachable_owner_is_503() {
    let Some(mut n) = nodes(&["a", "b", "c"], &config(300, 300)) else {
        return;
    };
    let a01: Disks = &[("d0", "a"), ("d1", "a")];
    let g1 = topo(
        &n.root,
        1,
        &[
            ("s0", "active", a01),
            ("s1", "active", &[("d0", "b")]),
            ("s2", "active", &[("d0", "c")]),
        ],
    );
    n.apply(&g1);
    n.start(&["a", "b", "c"]);
    let a = n.s3["a"].clone();
    assert_eq!(a.create_bucket(BKT).unwrap().code, 200);
    let mut live = HashMap::new();
    let mut by_owner: HashMap<String, usize> = HashMap::new();
    for i in 0..160 {
        let k = format!("p{}/k{i}", i % 7);
        let data = body(i, 1);
        let r = a.put(BKT, &k, &data).unwrap();
        assert_eq!(r.code, 200, "PUT {k} through a: {}", r.text());
        *by_owner.entry(owner_node(&g1, &k)).or_default() += 1;
        live.insert(k, data);
    }
    assert!(
        by_owner.get("b") > Some(&20) && by_owner.get("c") > Some(&20),
        "{by_owner:?}"
    );
    // durable at the owners before the 200: on their disks now, once each
    assert_placed(&g1, BKT, &live);
    check_everywhere(&n, &live, &[]);
    // deletes through every agent, overwrites through b of keys other nodes own
    let keys: Vec<String> = live.keys().cloned().collect();
    let mut gone = vec![];
    let names = ["a", "b", "c"];
    for (i, k) in keys.iter().enumerate() {
        let via = &n.s3[names[i % 3]];
        if i % 3 == 0 {
            let r = via.delete(BKT, k).unwrap();
            assert_eq!(r.code, 204, "DELETE {k}: {}", r.text());
            live.remove(k);
            gone.push(k.clone());
        } else if i % 5 == 1 {
            let data = body(i, 2);
            assert_eq!(n.s3["b"].put(BKT, k, &data).unwrap().code, 200);
            live.insert(k.clone(), data);
        }
    }
    assert_placed(&g1, BKT, &live);
    check_everywhere(&n, &live, &gone);
    // c down: its keys are 503 through a (retry later), not 500 and not NoSuchKey
    n.c.kill9("c");
    let of_c = live.keys().find(|k| owner_node(&g1, k) == "c").unwrap();
    let of_a = live.keys().find(|k| owner_node(&g1, k) == "a").unwrap();
    let r = a.get(BKT, of_c).unwrap();
    assert_eq!(r.code, 503, "GET {of_c} with its node down: {}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("ServiceUnavailable"));
    let r = a.put(BKT, of_c, b"new").unwrap();
    assert_eq!(r.code, 503, "PUT {of_c} with its node down: {}", r.text());
    assert_eq!(a.head(BKT, of_c).unwrap().code, 503);
    assert_eq!(
        a.get(BKT, of_a).unwrap().code,
        200,
        "a's own keys still serve"
    );
    // c back: everything as it was (the failed PUT wrote nothing)
    n.c.start("c");
    n.wait_s3("c", Duration::from_secs(30));
    check_everywhere(&n, &live, &gone);
}

/// 2 -> 3 nodes: a gains a disk (same-node moves), c joins with a set (moves from a and b
/// through the peer transport); then b's set drains (b ends empty).
#[test]
fn two_to_three_nodes_move_across_the_transport_and_a_drained_node_ends_empty() {
    let Some(mut n) = nodes(&["a", "b", "c"], &config(300, 300)) else {
        return;
    };
    let a01: Disks = &[("d0", "a"), ("d1", "a")];
    let (b0, c0): (Disks, Disks) = (&[("d0", "b")], &[("d0", "c")]);
    let g1 = topo(
        &n.root,
        1,
        &[("s0", "active", &[("d0", "a")]), ("s1", "active", b0)],
    );
    let g2 = topo(
        &n.root,
        2,
        &[
            ("s0", "active", a01),
            ("s1", "active", b0),
            ("s2", "active", c0),
        ],
    );
    let g3 = topo(
        &n.root,
        3,
        &[
            ("s0", "active", a01),
            ("s1", "draining", b0),
            ("s2", "active", c0),
        ],
    );
    let want = fill(&g1, 2000, 167);
    n.apply(&g1);
    n.start(&["a", "b", "c"]);
    let t0 = Instant::now();
    n.apply(&g2);
    let r = n.wait_completed(2, Duration::from_secs(90));
    eprintln!(
        "2 -> 3 nodes: {} objects, {} bytes in {:?}",
        r["objects"],
        r["bytes"],
        t0.elapsed()
    );
    assert_placed(&g2, BKT, &want);
    let ideal = ideal_moves(&g1, &g2, &want);
    let new = Placed::new(g2.clone());
    let owner = |p: &Placed, k: &String| p.owner_key(partition_of(BKT.as_bytes(), k.as_bytes()));
    let across = want.keys().filter(|k| owner(&new, k) == "s2/d0").count();
    assert!(across > 100, "only {across} objects went to node c");
    let moved = r["objects"].as_u64().unwrap() + r["superseded"].as_u64().unwrap();
    assert_eq!(
        moved as usize, ideal,
        "each misplaced object moved once: {r}"
    );
    n.apply(&g3);
    n.wait_completed(3, Duration::from_secs(90));
    assert_placed(&g3, BKT, &want);
    assert_eq!(
        objects_on(&n.root.join("s1d0")),
        0,
        "the drained node b holds objects"
    );
    // and every agent serves them from their new places
    let sample: HashMap<String, Vec<u8>> = want
        .iter()
        .filter(|(k, _)| k.ends_with('7'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (node, s3) in &n.s3 {
        for (k, data) in &sample {
            let r = s3.get(BKT, k).unwrap();
            assert!(
                r.code == 200 && r.body == *data,
                "GET {k} through {node}: {}",
                r.code
            );
        }
    }
}

#[test]
fn clients_overwrite_delete_and_read_during_a_cross_node_rebalance() {
    use std::sync::atomic::AtomicBool;
    let Some(mut n) = nodes(&["a", "b", "c"], &config(300, 300)) else {
        return;
    };
    let b0: Disks = &[("d0", "b")];
    let g1 = topo(
        &n.root,
        1,
        &[("s0", "active", &[("d0", "a")]), ("s1", "active", b0)],
    );
    let g2 = topo(
        &n.root,
        2,
        &[
            ("s0", "active", &[("d0", "a"), ("d1", "a")]),
            ("s1", "active", b0),
            ("s2", "active", &[("d0", "c")]),
        ],
    );
    let want = fill(&g1, 1500, 0);
    n.apply(&g1);
    n.start(&["a", "b", "c"]);
    // slow enough for the clients to meet many objects mid-move
    ok(ferry(&n.c, &["cluster", "rate", "2M"]));
    let model = std::sync::Arc::new(Model::new(&want));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (seed, window) = (client_seed(), std::sync::Arc::new(Window::default()));
    let threads = clients(&n, &model, 4, (seed, &window), &stop);
    std::thread::sleep(Duration::from_millis(500));
    n.apply(&g2);
    let done = std::panic::catch_unwind(|| n.wait_completed(2, Duration::from_secs(120)));
    std::thread::sleep(Duration::from_millis(500));
    let all = stop_clients(&stop, threads);
    let r = done.unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!(
        "during the rebalance ({} objects moved): {} reads, {} writes, {} deletes, {} failed",
        r["objects"],
        all.reads,
        all.writes,
        all.deletes,
        all.failures.len()
    );
    assert_no_failures(&all, &format!("FERRY_SEED={seed}"));
    assert!(
        all.reads > 300 && all.writes > 10 && all.deletes > 5,
        "too few requests"
    );
    let (live, gone) = model.split();
    assert_placed(&g2, BKT, &live);
    check_everywhere(&n, &live, &gone);
}

/// Cycle after cycle, a rebalance across nodes (c's set active: a and b send to c; c's set
/// draining: c sends to a and b) with an agent killed -9 mid-way and restarted: the sender
/// and the receiver in turn. After each, every object is exactly once at its owner with its
/// bytes, and the agents serve it.
#[test]
fn kill9_of_the_sender_or_the_receiver_mid_rebalance_cycle_after_cycle() {
    let Some(mut n) = nodes(&["a", "b", "c"], &config(300, 300)) else {
        return;
    };
    let (a0, b0, c0): (Disks, Disks, Disks) = (&[("d0", "a")], &[("d0", "b")], &[("d0", "c")]);
    let root = n.root.clone();
    let topo_for = |g: u64, c_state: &str| {
        topo(
            &root,
            g,
            &[
                ("s0", "active", a0),
                ("s1", "active", b0),
                ("s2", c_state, c0),
            ],
        )
    };
    let g1 = topo_for(1, "draining");
    let want = fill(&g1, 600, 0);
    n.apply(&g1);
    n.start(&["a", "b", "c"]);
    ok(ferry(&n.c, &["cluster", "rate", "2M"]));
    let t0 = Instant::now();
    for i in 0..fault_cycles(12) {
        let g = i as u64 + 2;
        let to_c = i % 2 == 0;
        let t = topo_for(g, if to_c { "active" } else { "draining" });
        // the sender and the receiver in turn: a sends to c, c sends to a, c receives, a receives
        let victim = match i % 4 {
            0 | 3 => "a",
            _ => "c",
        };
        let cycle = Instant::now();
        n.apply(&t);
        n.wait_rebalance(Duration::from_secs(30), "moves under way", |r| {
            r["generation"] == g && (r["objects"].as_u64() > Some(3) || r["state"] == "completed")
        });
        n.c.kill9(victim);
        std::thread::sleep(Duration::from_millis(300));
        n.c.start(victim);
        n.wait_s3(victim, Duration::from_secs(30));
        let r = n.wait_completed(g, Duration::from_secs(90));
        assert_placed(&t, BKT, &want);
        eprintln!(
            "cycle {i}: generation {g}, {} killed, {} objects moved, {:?}",
            victim,
            r["objects"],
            cycle.elapsed()
        );
        for (j, (k, data)) in want.iter().enumerate().filter(|(j, _)| j % 50 == i % 50) {
            let via = ["a", "b", "c"][j % 3];
            let r = n.s3[via].get(BKT, k).unwrap();
            assert!(
                r.code == 200 && r.body == *data,
                "GET {k} through {via}: {}",
                r.code
            );
        }
    }
    eprintln!("{} fault cycles in {:?}", fault_cycles(12), t0.elapsed());
}

/// The topology of kill9 cycle `i` (generation i + 2; generation 1 is cycle 1's): c's set
/// active in even cycles (a and b send to c), draining in odd ones (c sends to a and b); and
/// the victim, the sender and the receiver in turn: a sends to c, c sends to a, c receives,
/// a receives.
fn kill9_cycle(root: &Path, i: usize, g: u64) -> (Topology, &'static str) {
    let (a0, b0, c0): (Disks, Disks, Disks) = (&[("d0", "a")], &[("d0", "b")], &[("d0", "c")]);
    let c_state = if i.is_multiple_of(2) {
        "active"
    } else {
        "draining"
    };
    let sets = [
        ("s0", "active", a0),
        ("s1", "active", b0),
        ("s2", c_state, c0),
    ];
    let victim = if matches!(i % 4, 0 | 3) { "a" } else { "c" };
    (topo(root, g, &sets), victim)
}

/// Kills `victim` -9 once generation `g`'s moves are under way, keeps it down `down`, starts
/// it again and waits for the rebalance to complete; `w` says when it is away.
fn kill9_mid_rebalance(n: &mut Nodes, g: u64, victim: &str, down: Duration, w: &Window) -> Value {
    n.wait_rebalance(Duration::from_secs(30), "moves under way", |r| {
        r["generation"] == g && (r["objects"].as_u64() > Some(3) || r["state"] == "completed")
    });
    w.set_down(true);
    n.c.kill9(victim);
    std::thread::sleep(down);
    n.c.start(victim);
    n.wait_s3(victim, Duration::from_secs(30));
    w.set_down(false);
    n.wait_completed(g, Duration::from_secs(90))
}

/// Clients overwrite, delete and read random keys through every agent while cycle after
/// cycle (FERRY_FAULT_CYCLES, default 12) a rebalance across nodes loses its sender or its
/// receiver to kill -9 and gets it back: no read is stale, no deleted key returns (also
/// through the agent just restarted, whose disk kept the copies it had), a read fails only
/// while an agent is down, every write and delete succeeds (sent again while an agent is
/// away, as S3 clients do), and at the end every live key is once at its owner with its
/// last bytes and every deleted key is gone everywhere.
#[test]
fn kill9_cycles_with_clients_reading_and_writing_through_them() {
    use std::sync::atomic::AtomicBool;
    let Some(mut n) = nodes(&["a", "b", "c"], &config(300, 300)) else {
        return;
    };
    let (g1, _) = kill9_cycle(&n.root, 1, 1);
    let want = fill(&g1, 400, 0);
    n.apply(&g1);
    n.start(&["a", "b", "c"]);
    ok(ferry(&n.c, &["cluster", "rate", "2M"]));
    let model = std::sync::Arc::new(Model::new(&want));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (seed, window) = (client_seed(), std::sync::Arc::new(Window::faulty()));
    let threads = clients(&n, &model, 4, (seed, &window), &stop);
    let mut last = g1.clone();
    let cycles = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for i in 0..fault_cycles(12) {
            let (t, victim) = kill9_cycle(&n.root, i, i as u64 + 2);
            let cycle = Instant::now();
            n.apply(&t);
            let r = kill9_mid_rebalance(
                &mut n,
                t.generation,
                victim,
                Duration::from_millis(800),
                &window,
            );
            eprintln!(
                "cycle {i}: generation {}, {victim} killed, {} objects moved, {:?}",
                t.generation,
                r["objects"],
                cycle.elapsed()
            );
            last = t;
        }
    }));
    std::thread::sleep(Duration::from_millis(500));
    let all = stop_clients(&stop, threads);
    eprintln!(
        "through {} kill -9 cycles (FERRY_SEED={seed}): {} reads, {} writes, {} deletes, \
         {} reads while an agent was down, {} requests sent again, {} failed",
        fault_cycles(12),
        all.reads,
        all.writes,
        all.deletes,
        all.unavailable,
        all.retries,
        all.failures.len()
    );
    assert_no_failures(&all, &format!("FERRY_SEED={seed}"));
    cycles.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(all.writes > 50 && all.deletes > 20, "too few requests");
    let (live, gone) = model.split();
    assert_placed(&last, BKT, &live);
    check_everywhere(&n, &live, &gone);
}

/// A node down while its keys are written at their new owner keeps its old copies (and its
/// registry still names them): once it is back, a read through it gets the new bytes, a
/// delete through any agent removes the key everywhere, and the rebalance drops the old
/// copies (their owner has newer writes) instead of moving them over the new ones.
#[test]
fn a_restarted_node_serves_the_writes_made_at_the_new_owner_while_it_was_down() {
    let Some(mut n) = nodes(&["a", "b", "c"], &config(300, 300)) else {
        return;
    };
    let (a0, b0, c0): (Disks, Disks, Disks) = (&[("d0", "a")], &[("d0", "b")], &[("d0", "c")]);
    let g1 = topo(&n.root, 1, &[("s0", "active", a0), ("s1", "active", b0)]);
    let sets = [
        ("s0", "active", a0),
        ("s1", "active", b0),
        ("s2", "active", c0),
    ];
    let g2 = topo(&n.root, 2, &sets);
    n.apply(&g1);
    n.start(&["a", "b", "c"]);
    assert_eq!(n.s3["b"].create_bucket(BKT).unwrap().code, 200);
    // keys a owns now and c will: put through S3, so a's registry names a's disk
    let keys: Vec<String> = (0..400)
        .map(|i| format!("m/{i}"))
        .filter(|k| owner_node(&g1, k) == "a" && owner_node(&g2, k) == "c")
        .take(12)
        .collect();
    assert_eq!(keys.len(), 12);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(n.s3["a"].put(BKT, k, &body(i, 1)).unwrap().code, 200);
    }
    n.c.kill9("a");
    n.apply(&g2);
    // written at their new owner c while a is down: a keeps its old copies
    let mut live = HashMap::new();
    let mut gone = vec![];
    for (i, k) in keys.iter().enumerate() {
        let data = body(i, 2);
        let start = Instant::now();
        while n.s3["b"].put(BKT, k, &data).unwrap().code != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "PUT {k} through b"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        live.insert(k.clone(), data);
    }
    n.c.start("a");
    n.wait_s3("a", Duration::from_secs(30));
    for (k, data) in &live {
        let r = n.s3["a"].get(BKT, k).unwrap();
        assert!(
            r.code == 200 && r.body == *data,
            "GET {k} through a: {} (stale?)",
            r.code
        );
    }
    for k in keys.iter().step_by(2) {
        assert_eq!(n.s3["a"].delete(BKT, k).unwrap().code, 204, "DELETE {k}");
        live.remove(k);
        gone.push(k.clone());
    }
    n.wait_completed(2, Duration::from_secs(60));
    assert_placed(&g2, BKT, &live);
    check_everywhere(&n, &live, &gone);
}

/// An agent that cannot serve the new generation (its new disk has no identity yet) still
/// routes by the old one: no object moves anywhere until every agent routes by the new map
/// (a delete through the lagging agent would miss the copy already moved), and the moves
/// start once its disk is initialised.
#[test]
fn moves_wait_until_every_agent_routes_by_the_new_generation() {
    let Some(mut n) = nodes(&["a", "b", "c"], &config(300, 300)) else {
        return;
    };
    let a0: Disks = &[("d0", "a")];
    let g1 = topo(
        &n.root,
        1,
        &[("s0", "active", a0), ("s1", "active", &[("d0", "b")])],
    );
    let g2 = topo(
        &n.root,
        2,
        &[
            ("s0", "active", a0),
            ("s1", "active", &[("d0", "b"), ("d1", "b")]),
            ("s2", "active", &[("d0", "c")]),
        ],
    );
    let mut want = fill(&g1, 600, 0);
    let identity = n
        .root
        .join("s1d1")
        .join(ferry::cluster::identity::IDENTITY_FILE);
    std::fs::remove_file(&identity).unwrap(); // b's new disk: not mounted yet
    n.apply(&g1);
    n.start(&["a", "b", "c"]);
    n.apply(&g2);
    // a's moves to c would begin now (b still routes by generation 1): give them 6 s
    let start = Instant::now();
    while objects_on(&n.root.join("s2d0")) == 0 && start.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (old, new) = (Placed::new(g1.clone()), Placed::new(g2.clone()));
    let owner = |p: &Placed, k: &String| p.owner_key(partition_of(BKT.as_bytes(), k.as_bytes()));
    let doomed: Vec<String> = want
        .keys()
        .filter(|k| owner(&old, k) == "s0/d0" && owner(&new, k) == "s2/d0")
        .cloned()
        .collect();
    assert!(doomed.len() >= 10, "{doomed:?}");
    for k in &doomed {
        let r = n.s3["b"].delete(BKT, k).unwrap();
        assert_eq!(r.code, 204, "DELETE {k} through b: {}", r.text());
        want.remove(k);
    }
    for k in &doomed {
        for (node, s3) in &n.s3 {
            let r = s3.get(BKT, k).unwrap();
            assert_eq!(
                r.code,
                404,
                "deleted {k} came back through {node}: {}",
                r.text()
            );
        }
    }
    assert_eq!(
        objects_on(&n.root.join("s2d0")),
        0,
        "moves began before b served g2"
    );
    // b's disk arrives: it serves generation 2, the moves run, deleted keys stay deleted
    ferry::cluster::identity::init(&g2, Path::new("test topology")).unwrap();
    n.wait_completed(2, Duration::from_secs(60));
    assert_placed(&g2, BKT, &want);
}
