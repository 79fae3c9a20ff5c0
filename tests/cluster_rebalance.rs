//! The cluster rebalance job with real agents and etcd: `ferry cluster apply` starts it, each
//! agent moves its own disks' misplaced objects, `ferry cluster status` shows per-node and
//! total progress, pause stops the moves within a second, resume continues, and an agent
//! killed -9 mid-rebalance resumes its partitions when restarted. Afterwards every object is
//! exactly once at its owner with its content. Skips (saying why) without etcd.

mod agent_harness;
mod common;
mod etcd_harness;

use agent_harness::{Cluster, Disks, config, ferry, ok, topo_v2};
use common::placed::assert_placed;
use ferry::cluster::store::{Placed, walk_objects};
use ferry::cluster::{Topology, partition_of};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A topology v2 of active sets `(set, [(disk, node)])` with disks under `root`.
fn topo(root: &Path, g: u64, sets: &[(&str, &[(&str, &str)])]) -> Topology {
    let sets: Vec<(&str, &str, Disks)> = sets.iter().map(|(s, d)| (*s, "active", *d)).collect();
    topo_states(root, g, &sets)
}

/// A topology v2 of sets `(set, state, [(disk, node)])` with disks under `root`.
fn topo_states(root: &Path, g: u64, sets: &[(&str, &str, Disks)]) -> Topology {
    topo_v2(root, g, sets)
}

fn save(t: &Topology, p: &Path) -> PathBuf {
    std::fs::write(p, serde_json::to_vec(t).unwrap()).unwrap();
    p.to_path_buf()
}

/// `n` objects put under `t`; key -> bytes.
fn fill(t: &Topology, n: usize) -> HashMap<String, Vec<u8>> {
    let c = ferry::cluster::store::Cluster::new(t.clone(), None, None);
    let mut want = HashMap::new();
    for i in 0..n {
        let key = format!("d{}/o{i}", i % 11);
        let data: Vec<u8> = (0..(i * 997) % 16_000 + 1)
            .map(|j| (i * 7 + j) as u8)
            .collect();
        c.put("bkt", key.as_bytes(), &data).unwrap();
        want.insert(key, data);
    }
    want
}

fn status(c: &Cluster) -> Value {
    let o = ok(ferry(c, &["cluster", "status", "--json"]));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Waits until `f` holds for the rebalance section of `cluster status`.
fn wait_rebalance(c: &Cluster, limit: Duration, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let r = status(c)["rebalance"].clone();
        if f(&r) {
            return r;
        }
        assert!(
            start.elapsed() < limit,
            "rebalance: {what} not within {limit:?}: {r}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Objects on the disks that only gain objects (a1, b1): the moves done so far.
fn arrived(t: &Topology) -> usize {
    let mut n = 0;
    for s in t.sets() {
        for d in s.disks.iter().filter(|d| d.id == "d1") {
            let mut errors = Vec::new();
            walk_objects(&d.path, &mut errors, &mut |_, _, _| n += 1);
        }
    }
    n
}

fn node(r: &Value, n: &str) -> Value {
    r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["node"] == n)
        .cloned()
        .unwrap_or(Value::Null)
}

/// `ferry cluster apply` of `t` (saved under `root` as `NAME.json`).
fn apply(c: &Cluster, t: &Topology, root: &Path, name: &str) -> std::process::Output {
    let f = save(t, &root.join(format!("{name}.json")));
    ok(ferry(c, &["cluster", "apply", f.to_str().unwrap()]))
}

/// Pause: within a second nothing more arrives, and status says paused. The objects
/// arrived by then.
fn pause_stops_the_moves(c: &Cluster, g2: &Topology, ideal: usize) -> usize {
    ok(ferry(c, &["cluster", "pause"]));
    std::thread::sleep(Duration::from_secs(1));
    let before = arrived(g2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(arrived(g2), before, "moves went on while paused");
    assert!(before < ideal, "everything moved before the pause");
    let r = wait_rebalance(c, Duration::from_secs(5), "paused state", |r| {
        r["state"] == "paused"
    });
    assert_eq!(r["generation"], 2);
    before
}

/// Resume: more objects arrive within 5 s than the `before` of the pause.
fn resume_continues(c: &Cluster, g2: &Topology, before: usize) {
    ok(ferry(c, &["cluster", "resume"]));
    let start = Instant::now();
    while arrived(g2) == before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "resume did not continue"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Both nodes completed the rebalance `r`, b with every object counted, a with partitions
/// done, nothing failed.
fn assert_both_completed(r: &Value) {
    let (a, b) = (node(r, "a"), node(r, "b"));
    assert_eq!(a["state"], "completed", "{r}");
    assert_eq!(b["state"], "completed", "{r}");
    assert_eq!(
        b["objects"].as_u64().unwrap() + b["superseded"].as_u64().unwrap(),
        b["objects_total"].as_u64().unwrap(),
        "{r}"
    );
    assert!(a["partitions_done"].as_u64() > Some(0), "{r}");
    assert_eq!(r["failed"], 0, "{r}");
}

/// a's restarted run resumed its partitions and completed; b paused, resumed and completed.
fn assert_resumed_events(c: &Cluster) {
    let ev = c.events("a");
    let started: Vec<&Value> = ev
        .iter()
        .filter(|e| e["event"] == "rebalance_started")
        .collect();
    assert!(started.len() >= 2, "{started:?}");
    assert!(
        started.last().unwrap()["partitions_done_before"].as_u64() > Some(0),
        "the restarted run did not resume its partitions: {started:?}"
    );
    assert!(ev.iter().any(|e| e["event"] == "rebalance_completed"));
    let evb = c.events("b");
    for k in [
        "rebalance_paused",
        "rebalance_resumed",
        "rebalance_completed",
    ] {
        assert!(evb.iter().any(|e| e["event"] == k), "no {k} event from b");
    }
}

/// b's admin API has the rebalance in its metrics (`b`: its status), and the text status
/// names the completed generation change.
fn assert_metrics_and_text_status(c: &Cluster, b: &Value) {
    let token = std::fs::read_to_string(c.state_dir("b").join("admin.token")).unwrap();
    let (code, body) =
        agent_harness::admin_get(&c.member_addr("b"), "/metrics", Some(token.trim()));
    assert_eq!(code, 200);
    let line = format!("ferry_agent_rebalance_moved_objects {}", b["objects"]);
    assert!(body.contains(&line), "no '{line}' in\n{body}");
    assert!(
        body.contains("ferry_agent_rebalance_generation 2"),
        "{body}"
    );
    let text = ok(ferry(c, &["cluster", "status"]));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("rebalance 1 -> 2 (completed)"), "{text}");
}

#[test]
fn rebalance_job_moves_same_node_objects_pauses_resumes_and_survives_kill9() {
    let Some(mut c) = Cluster::new(1, &config(300, 300)) else {
        return;
    };
    let root = c.dir.path().join("disks");
    let g1 = topo(&root, 1, &[("s0", &[("d0", "a")]), ("s1", &[("d0", "b")])]);
    let g2 = topo(
        &root,
        2,
        &[
            ("s0", &[("d0", "a"), ("d1", "a")]),
            ("s1", &[("d0", "b"), ("d1", "b")]),
        ],
    );
    let want = fill(&g1, 3000);
    let placed = Placed::new(g2.clone());
    let ideal = want
        .keys()
        .filter(|k| placed.owner(partition_of(b"bkt", k.as_bytes())).id == "d1")
        .count();
    apply(&c, &g1, &root, "g1");
    for n in ["a", "b"] {
        c.start(n);
    }
    c.wait_settled(&["a", "b"], Duration::from_secs(10));
    // slow enough to pause and kill mid-way: ~12 MB to move, 1 MB/s per agent
    ok(ferry(&c, &["cluster", "rate", "1M"]));
    let applied = apply(&c, &g2, &root, "g2");
    assert!(String::from_utf8_lossy(&applied.stdout).contains("rebalance to it started"));
    wait_rebalance(&c, Duration::from_secs(20), "moves under way", |r| {
        r["objects"].as_u64() > Some(100)
    });
    let before = pause_stops_the_moves(&c, &g2, ideal);
    resume_continues(&c, &g2, before);
    // kill -9 a mid-move; restarted, it resumes from its record in etcd
    std::thread::sleep(Duration::from_millis(700));
    c.kill9("a");
    let a_left = ideal - arrived(&g2).min(ideal);
    assert!(a_left > 0, "the kill came too late");
    std::thread::sleep(Duration::from_millis(500));
    c.start("a");
    let r = wait_rebalance(&c, Duration::from_secs(60), "completion", |r| {
        r["state"] == "completed"
    });
    assert_placed(&g2, "bkt", &want);
    assert_both_completed(&r);
    assert_resumed_events(&c);
    assert_metrics_and_text_status(&c, &node(&r, "b"));
}

/// One node's sets (a drained set's objects may go to any active set: all are on node a
/// here, so every move is a same-node one).
#[test]
fn a_newer_topology_replans_and_a_drained_set_ends_empty() {
    let Some(mut c) = Cluster::new(1, &config(300, 300)) else {
        return;
    };
    let root = c.dir.path().join("disks");
    let a0: &[(&str, &str)] = &[("d0", "a")];
    let a01: &[(&str, &str)] = &[("d0", "a"), ("d1", "a")];
    let g1 = topo(&root, 1, &[("s0", a0), ("s1", a0), ("s2", a0)]);
    let g2 = topo_states(
        &root,
        2,
        &[
            ("s0", "active", a01),
            ("s1", "active", a0),
            ("s2", "draining", a0),
        ],
    );
    let g3 = topo_states(
        &root,
        3,
        &[
            ("s0", "active", a01),
            ("s1", "active", a01),
            ("s2", "draining", a0),
        ],
    );
    let want = fill(&g1, 1500);
    let apply = |c: &Cluster, t: &Topology, name: &str| {
        let f = save(t, &root.join(name));
        ok(ferry(c, &["cluster", "apply", f.to_str().unwrap()]));
    };
    apply(&c, &g1, "g1.json");
    c.start("a");
    c.wait_settled(&["a"], Duration::from_secs(10));
    ok(ferry(&c, &["cluster", "rate", "500K"]));
    apply(&c, &g2, "g2.json");
    wait_rebalance(&c, Duration::from_secs(20), "g2 moves under way", |r| {
        r["generation"] == 2 && r["objects"].as_u64() > Some(20)
    });
    apply(&c, &g3, "g3.json");
    ok(ferry(&c, &["cluster", "rate", "0"]));
    let r = wait_rebalance(&c, Duration::from_secs(60), "g3 completion", |r| {
        r["generation"] == 3 && r["state"] == "completed"
    });
    assert_eq!(r["from_generation"], 2, "{r}");
    assert_placed(&g3, "bkt", &want);
    let s2 = g3.set("s2").unwrap();
    let mut left = 0;
    walk_objects(&s2.disks[0].path, &mut Vec::new(), &mut |_, _, _| left += 1);
    assert_eq!(left, 0, "the drained set still holds objects");
    let ev = c.events("a");
    assert!(
        ev.iter()
            .any(|e| e["event"] == "rebalance_replaced" && e["generation"] == 2 && e["by"] == 3),
        "{ev:?}"
    );
}
