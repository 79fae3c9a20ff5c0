//! Deletes across nodes while a rebalance moves objects (real etcd, real agents, S3):
//! - Two topology changes in a row while the moves wait (paused): a key whose only copy is
//!   still at its owner of two generations ago is deleted (or overwritten) through the S3
//!   endpoints. No agent serves the deleted key again, and when the moves go on, the copy
//!   that was waiting is dropped instead of being brought back at the new owner; the write
//!   wins over the copy. No LIST names a deleted key either.
//! - Within one change: keys deleted while their moves are under way (not moved yet, in
//!   flight, moved: a forwarding entry at the previous owner) are gone from every disk as
//!   soon as the DELETE is answered, and stay gone.
//! - Reads two generations back: while a key's only copy waits at its owner of two (then
//!   three) generations ago, every agent serves it (GET, HEAD), and a DELETE through any
//!   agent removes that copy at once. `cluster apply` takes a topology while at most four
//!   generations are pending, and refuses one more until the rebalance completes.
//! - A tombstone follows the key's owner: keys deleted under generation 2 (tombstones at b)
//!   of which a copy of the deleted version still lies on a (as one that was on its way
//!   when the DELETE came would), then generation 3 moves them to c: c gets the tombstones
//!   (the delete's time kept) before any move of 3 starts, so the copies are dropped, not
//!   brought back at c.
//! - A node removed by the next topology while it is an owner in between: killed, its part
//!   is marked lost once it had no member key for `lost_after_secs` (2 s here) and the
//!   rebalance completes (the moves no longer wait for its hand-over); still running, it
//!   hands its tombstones over first and the keys deleted through it stay deleted. The lost
//!   node started again with its disks as they were refuses to run: a key deleted meanwhile
//!   whose copy is still on its disk stays deleted, and the copy is left there.
//!
//! Skips (saying why) without etcd.

mod agent_harness;
mod cluster_harness;
mod common;
mod etcd_harness;

use agent_harness::{config, ferry, ok};
use cluster_harness::{BKT, Disks, Nodes, fill, nodes, sized, topo};
use common::placed::{assert_placed, where_is};
use ferry::cluster::Topology;
use ferry::cluster::store::object_path;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// The state node `n` reports for generation `g`'s rebalance (None: no record yet).
fn node_state(r: &Value, g: u64, n: &str) -> Option<String> {
    if r["generation"] != g {
        return None;
    }
    let v = r["nodes"].as_array()?.iter().find(|x| x["node"] == n)?;
    v["state"].as_str().map(str::to_string)
}

/// Waits until node `n`'s run of generation `g` is paused (its object layer routes by `g`,
/// as does every live agent's: the moves of `g` are about to start).
fn wait_paused(n: &Nodes, g: u64, node: &str) {
    let what = format!("{node}'s run of generation {g} paused");
    n.wait_rebalance(Duration::from_secs(60), &what, |r| {
        node_state(r, g, node).as_deref() == Some("paused")
    });
}

/// After the rebalance: every key of `gone` is nowhere, and every other key of `want` (the
/// deleted ones taken out of it) is once at its owner under `topo` with its content.
fn assert_settled(
    n: &Nodes,
    gone: &[String],
    want: &mut HashMap<String, Vec<u8>>,
    topo: &Topology,
) {
    assert_gone_everywhere(n, gone, "after the rebalance");
    for k in gone {
        want.remove(k);
    }
    assert_placed(topo, BKT, want);
}

/// Every agent answers 404 for each of `gone`, and lists none of them.
fn assert_gone_everywhere(n: &Nodes, gone: &[String], when: &str) {
    for (node, s3) in &n.s3 {
        let listed: std::collections::HashSet<String> =
            s3.list(BKT, "").unwrap().into_iter().collect();
        let back: Vec<&String> = gone.iter().filter(|k| listed.contains(*k)).collect();
        assert!(
            back.is_empty(),
            "{when}: LIST through {node} names deleted {back:?}"
        );
        for k in gone {
            let r = s3.get(BKT, k).unwrap();
            assert_eq!(
                r.code,
                404,
                "{when}: GET of deleted {k} through {node}: {}",
                r.text()
            );
        }
    }
}

/// Whether `key`'s copy is on the disk `disk` (set id + disk id, as the harness names it).
fn on_disk(root: &Path, disk: &str, key: &str) -> bool {
    object_path(&root.join(disk), BKT, key.as_bytes()).is_file()
}

/// Through the agents in turn: DELETE each of `keys` (204).
fn delete_all(n: &Nodes, keys: &[String]) {
    let mut via: Vec<&String> = n.s3.keys().collect();
    via.sort();
    for (i, k) in keys.iter().enumerate() {
        let node = via[i % via.len()];
        let r = n.s3[node].delete(BKT, k).unwrap();
        assert_eq!(r.code, 204, "DELETE {k} through {node}: {}", r.text());
    }
}

/// Through the agents in turn: PUT version 1 of each of `keys` (200); key -> bytes.
fn overwrite_all(n: &Nodes, keys: &[String], index: &HashMap<String, usize>) -> Vec<Vec<u8>> {
    let mut via: Vec<&String> = n.s3.keys().collect();
    via.sort();
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let node = via[(i + 1) % via.len()];
            let data = sized(index[k], 1, 0);
            let r = n.s3[node].put(BKT, k, &data).unwrap();
            assert_eq!(r.code, 200, "PUT {k} through {node}: {}", r.text());
            data
        })
        .collect()
}

/// `count` objects put through the S3 endpoints (so the owner's registry knows where they
/// are), keys `s3/o<i>`; key -> bytes.
fn put_through_s3(n: &Nodes, count: usize) -> HashMap<String, Vec<u8>> {
    let mut via: Vec<&String> = n.s3.keys().collect();
    via.sort();
    let mut want = HashMap::new();
    for i in 0..count {
        let (k, data) = (format!("s3/o{i}"), sized(10_000 + i, 0, 0));
        let node = via[i % via.len()];
        let r = n.s3[node].put(BKT, &k, &data).unwrap();
        assert_eq!(r.code, 200, "PUT {k} through {node}: {}", r.text());
        want.insert(k, data);
    }
    want
}

/// The three generations: everything on a, then on b (a drains), then on c (b drains too).
fn a_then_b_then_c(root: &Path) -> (Topology, Topology, Topology) {
    let (a0, b0, c0): (Disks, Disks, Disks) = (&[("d0", "a")], &[("d0", "b")], &[("d0", "c")]);
    let g1 = topo(root, 1, &[("s0", "active", a0)]);
    let g2 = topo(root, 2, &[("s0", "draining", a0), ("s1", "active", b0)]);
    let g3 = topo(
        root,
        3,
        &[
            ("s0", "draining", a0),
            ("s1", "draining", b0),
            ("s2", "active", c0),
        ],
    );
    (g1, g2, g3)
}

/// Agents a, b, c started under generation 1 of `a_then_b_then_c` (all three returned),
/// a holding `fill`'s `count` objects (`big` of them large).
type Abc = (Topology, Topology, Topology);
fn started(cfg: &str, count: usize, big: usize) -> Option<(Nodes, Abc, HashMap<String, Vec<u8>>)> {
    let mut n = nodes(&["a", "b", "c"], cfg)?;
    let gens = a_then_b_then_c(&n.root);
    let want = fill(&gens.0, count, big);
    n.apply(&gens.0);
    n.start(&["a", "b", "c"]);
    Some((n, gens, want))
}

/// With the moves paused, each of `gens` applied and waited for until a's run of it is
/// paused: the keys of `want` still on a's disk, sorted.
fn paused_through(n: &Nodes, gens: &[&Topology], want: &HashMap<String, Vec<u8>>) -> Vec<String> {
    ok(ferry(&n.c, &["cluster", "pause"]));
    for t in gens {
        n.apply(t);
        wait_paused(n, t.generation, "a");
    }
    let mut waiting: Vec<String> = want
        .keys()
        .filter(|k| on_disk(&n.root, "s0d0", k))
        .cloned()
        .collect();
    waiting.sort();
    waiting
}

/// a owns every key under generation 1, b under 2, c under 3. The moves are paused while 2
/// and then 3 are applied, so the keys still wait on a, which is neither the owner nor the
/// previous owner now. Some of them are deleted, some overwritten, through every agent;
/// then the moves go on. No deleted key is served again, nor brought back at c by the
/// move that was waiting; the overwrites win; every other object ends once at c.
#[test]
fn a_key_deleted_while_its_move_waits_through_two_changes_never_comes_back() {
    let Some((mut n, (_, g2, g3), mut want)) = started(&config(300, 300), 240, 0) else {
        return;
    };
    want.extend(put_through_s3(&n, 120));
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, k) in want.keys().enumerate() {
        index.insert(k.clone(), i);
    }
    let waiting = paused_through(&n, &[&g2, &g3], &want);
    assert!(
        waiting.len() > 300,
        "only {} of {} keys still wait on a",
        waiting.len(),
        want.len()
    );
    // every fifth key deleted, every seventh (not deleted) overwritten
    let gone: Vec<String> = waiting.iter().step_by(5).cloned().collect();
    let rewrite: Vec<String> = waiting
        .iter()
        .skip(3)
        .step_by(7)
        .filter(|k| !gone.contains(k))
        .cloned()
        .collect();
    delete_all(&n, &gone);
    for (k, data) in rewrite.iter().zip(overwrite_all(&n, &rewrite, &index)) {
        want.insert(k.clone(), data);
    }
    assert_gone_everywhere(&n, &gone, "paused, after the deletes");
    // c, the owner, keeps a tombstone of each delete, durably (a restart keeps them)
    assert_eq!(tombstones_of(&mut n, "c"), gone.len() as u64);
    n.start(&["c"]);
    ok(ferry(&n.c, &["cluster", "resume"]));
    let r = n.wait_completed(3, Duration::from_secs(120));
    eprintln!(
        "two changes: {} deleted, {} overwritten while waiting; then {} objects moved, {} superseded",
        gone.len(),
        rewrite.len(),
        r["objects"],
        r["superseded"]
    );
    assert_settled(&n, &gone, &mut want, &g3);
    assert_lists(&n, &want);
    // the rebalance is completed everywhere: c lets its tombstones go
    std::thread::sleep(COLLECTED_WITHIN);
    assert_eq!(tombstones_of(&mut n, "c"), 0, "tombstones left");
}

/// Through every agent: GET of each of `keys` is 200 with its bytes, HEAD 200 with its size.
fn assert_served_everywhere(
    n: &Nodes,
    keys: &[String],
    want: &HashMap<String, Vec<u8>>,
    when: &str,
) {
    for (node, s3) in &n.s3 {
        for k in keys {
            let r = s3.get(BKT, k).unwrap();
            assert_eq!(r.code, 200, "{when}: GET {k} through {node}: {}", r.text());
            assert!(
                r.body == want[k],
                "{when}: GET {k} through {node}: other bytes"
            );
            let h = s3.head(BKT, k).unwrap();
            assert_eq!(h.code, 200, "{when}: HEAD {k} through {node}");
            let len = want[k].len().to_string();
            assert_eq!(
                h.header("content-length"),
                Some(len.as_str()),
                "{when}: HEAD {k} through {node}"
            );
        }
    }
}

/// `cluster apply` of `t` (its output, success or not).
fn try_apply(n: &Nodes, t: &Topology) -> std::process::Output {
    let f = n.root.join(format!("g{}.json", t.generation));
    std::fs::write(&f, serde_json::to_vec(t).unwrap()).unwrap();
    ferry(&n.c, &["cluster", "apply", f.to_str().unwrap()])
}

/// Generations 4 (a set on b joins c's) and 5 (c's set drains too), after `a_then_b_then_c`.
fn then_b_again(root: &Path) -> (Topology, Topology) {
    let (a0, b0, c0, b1): (Disks, Disks, Disks, Disks) = (
        &[("d0", "a")],
        &[("d0", "b")],
        &[("d0", "c")],
        &[("d1", "b")],
    );
    let sets = |c_state| {
        [
            ("s0", "draining", a0),
            ("s1", "draining", b0),
            ("s2", c_state, c0),
            ("s3", "active", b1),
        ]
    };
    (
        topo(root, 4, &sets("active")),
        topo(root, 5, &sets("draining")),
    )
}

/// a owns every key under generation 1, b under 2, c under 3, c or b under 4: the moves are
/// paused while 2, 3 and 4 are applied, so the keys still wait on a, neither the owner nor
/// the previous owner. Every agent serves each of them (GET with its bytes, HEAD with its
/// size); a fifth topology is refused while those four are pending; a DELETE through b or c
/// removes a's copy before it is answered. When the moves go on, every other key ends once
/// at its owner under 4, and the fifth topology is taken.
#[test]
fn a_key_waiting_at_its_owner_of_generations_ago_is_served_by_every_agent() {
    let Some((n, (_, g2, g3), mut want)) = started(&config(300, 300), 240, 0) else {
        return;
    };
    let (g4, g5) = then_b_again(&n.root);
    want.extend(put_through_s3(&n, 60));
    let waiting = paused_through(&n, &[&g2, &g3], &want);
    assert_eq!(waiting.len(), want.len(), "every key still waits on a");
    assert_served_everywhere(&n, &waiting, &want, "two generations back");
    n.apply(&g4);
    wait_paused(&n, 4, "a");
    let o = try_apply(&n, &g5);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not completed"),
        "a fifth pending generation was taken: {}{err}",
        String::from_utf8_lossy(&o.stdout)
    );
    let sample: Vec<String> = waiting.iter().step_by(3).cloned().collect();
    assert_served_everywhere(&n, &sample, &want, "three generations back");
    let gone: Vec<String> = waiting.iter().skip(1).step_by(5).cloned().collect();
    for (i, k) in gone.iter().enumerate() {
        let via = ["b", "c"][i % 2];
        let r = n.s3[via].delete(BKT, k).unwrap();
        assert_eq!(r.code, 204, "DELETE {k} through {via}: {}", r.text());
        assert!(
            !on_disk(&n.root, "s0d0", k),
            "{k} still on a after its DELETE through {via}"
        );
    }
    assert_gone_everywhere(&n, &gone, "paused, after the deletes");
    ok(ferry(&n.c, &["cluster", "resume"]));
    n.wait_completed(4, Duration::from_secs(120));
    assert_settled(&n, &gone, &mut want, &g4);
    ok(try_apply(&n, &g5));
}

/// a owns every key under 1, b under 2, c under 3 (moves paused). Keys waiting on a are
/// deleted under 2 (b keeps their tombstones); then a copy of each deleted version is put
/// back on a with its old mtime (a copy that was on its way there when the DELETE removed
/// a's: it reached a after). No agent serves them. Under 3 c, the new owner, holds their
/// tombstones before the moves go on (durably: a restart keeps them), and after the
/// rebalance they are still gone everywhere: the copies from a were dropped at c.
#[test]
fn a_tombstone_reaches_the_next_owner_before_a_stale_copy_does() {
    let Some((mut n, (_, g2, g3), mut want)) = started(&config(300, 300), 200, 0) else {
        return;
    };
    ok(ferry(&n.c, &["cluster", "pause"]));
    n.apply(&g2);
    wait_paused(&n, 2, "a");
    let mut keys: Vec<String> = want.keys().cloned().collect();
    keys.sort();
    let gone: Vec<String> = keys.iter().step_by(4).cloned().collect();
    stale_on_a(&n, &gone, &want, || delete_all(&n, &gone));
    assert_gone_everywhere(&n, &gone, "a stale copy on a, the tombstone at b");
    n.apply(&g3);
    wait_paused(&n, 3, "a");
    assert_gone_everywhere(&n, &gone, "under 3, paused");
    assert_eq!(
        tombstones_of(&mut n, "c"),
        gone.len() as u64,
        "tombstones at c, the new owner"
    );
    n.start(&["c"]);
    ok(ferry(&n.c, &["cluster", "resume"]));
    let r = n.wait_completed(3, Duration::from_secs(120));
    eprintln!(
        "tombstones forwarded: {} deleted, {} moved, {} superseded",
        gone.len(),
        r["objects"],
        r["superseded"]
    );
    assert_eq!(
        r["superseded"],
        gone.len(),
        "the stale copies are dropped at c: {r}"
    );
    assert_settled(&n, &gone, &mut want, &g3);
}

/// Every agent lists exactly the keys of `want`.
fn assert_lists(n: &Nodes, want: &HashMap<String, Vec<u8>>) {
    let mut keys: Vec<&String> = want.keys().collect();
    keys.sort();
    for (node, s3) in &n.s3 {
        let mut listed = s3.list(BKT, "").unwrap();
        listed.sort();
        assert!(
            listed.iter().eq(keys.iter().copied()),
            "LIST through {node}: {} keys, {} live",
            listed.len(),
            keys.len()
        );
    }
}

/// How long an agent takes at most to collect the tombstones of a completed rebalance (it
/// looks every 10 s).
const COLLECTED_WITHIN: Duration = Duration::from_secs(12);

/// Stops `node`'s agent (SIGTERM) and counts the tombstones in its registry.
fn tombstones_of(n: &mut Nodes, node: &str) -> u64 {
    let st = n.c.term(node, Duration::from_secs(20));
    assert!(st.is_some(), "{node} did not stop on SIGTERM");
    let reg = n.c.state_dir(node).join("registry.redb");
    let r = ferry::cluster::registry::Registry::open(&reg).unwrap();
    r.tombstone_count().unwrap()
}

/// Keys (on a, the owner under generation 1) deleted through every agent while generation
/// 2 moves them to b at 1 MB/s: before their move, while it is under way, after it. Each one
/// is on no disk once its DELETE is answered, no agent serves it, and after the rebalance
/// it is still nowhere; every other key is once at b.
#[test]
fn a_delete_during_a_cross_node_move_removes_every_copy_at_once() {
    let Some((n, (_, g2, _), mut want)) = started(&config(300, 300), 120, 9) else {
        return;
    };
    want.extend(put_through_s3(&n, 60));
    ok(ferry(&n.c, &["cluster", "rate", "1M"]));
    n.apply(&g2);
    let mut keys: Vec<String> = want.keys().cloned().collect();
    keys.sort();
    let mut gone = Vec::new();
    let mut moved_before = 0;
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 4 == 1) {
        moved_before += on_disk(&n.root, "s1d0", k) as usize;
        delete_all(&n, std::slice::from_ref(k));
        let at = where_is(&g2, BKT);
        assert!(
            !at.contains_key(k),
            "{k} is still on {:?} after its DELETE was answered",
            at[k]
        );
        gone.push(k.clone());
        if i % 12 == 1 {
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    assert_gone_everywhere(&n, &gone, "during the rebalance");
    ok(ferry(&n.c, &["cluster", "rate", "0"]));
    let r = n.wait_completed(2, Duration::from_secs(120));
    eprintln!(
        "one change: {} deleted mid-rebalance ({moved_before} of them already moved), {} moved, {} superseded",
        gone.len(),
        r["objects"],
        r["superseded"]
    );
    assert_settled(&n, &gone, &mut want, &g2);
}

/// The generation node `node`'s object layer routes by, as it published it (0: none yet).
fn served(n: &Nodes, node: &str) -> u64 {
    use ferry::agent::ClusterStore;
    let kv = n.c.store.get(&n.c.keys.served(node)).unwrap();
    kv.and_then(|kv| String::from_utf8(kv.value).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Waits until each of `nodes` routes by generation `g` (or a newer one).
fn wait_served(n: &Nodes, nodes: &[&str], g: u64) {
    let start = std::time::Instant::now();
    while nodes.iter().any(|x| served(n, x) < g) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{nodes:?} do not all route by generation {g}\n{}",
            n.c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `delete`, which must remove each of `keys` from a's disk, then puts a copy of each
/// deleted version back there with its old mtime (a copy that was on its way there when the
/// DELETE came, arriving after it).
fn stale_on_a(n: &Nodes, keys: &[String], want: &HashMap<String, Vec<u8>>, delete: impl FnOnce()) {
    let a = n.root.join("s0d0");
    let path = |k: &String| object_path(&a, BKT, k.as_bytes());
    let mtimes: Vec<std::time::SystemTime> = keys
        .iter()
        .map(|k| std::fs::metadata(path(k)).unwrap().modified().unwrap())
        .collect();
    delete();
    for (k, t) in keys.iter().zip(&mtimes) {
        assert!(!path(k).exists(), "{k} still on a after its DELETE");
        std::fs::write(path(k), &want[k]).unwrap();
        let f = std::fs::File::options().write(true).open(path(k)).unwrap();
        f.set_modified(*t).unwrap();
    }
}

/// a owns every key under generation 1, b under 2. Generation 2 also names a disk on c (of a
/// draining set: it owns nothing) whose identity file is away, so c cannot route by 2 and
/// deletes through c still go by 1 (their tombstones to a, which already routes by 2), while
/// b serves the keys under 2 (the moves wait for c). Keys written through b under 2 and keys
/// still waiting on a (a copy of the deleted version put back there after, as one on its
/// way would be) are deleted through c: no agent serves or lists them. Once c's disk is
/// back, c routes by 2 and the moves go: the copies from a are dropped at b (superseded),
/// the deleted keys are on no disk, and every other key is once at b.
#[test]
fn a_delete_through_an_agent_still_on_the_old_layer_reaches_the_new_owner() {
    let Some(mut n) = nodes(&["a", "b", "c"], &config(300, 300)) else {
        return;
    };
    let (a0, b0, c0): (Disks, Disks, Disks) = (&[("d0", "a")], &[("d0", "b")], &[("d0", "c")]);
    let g1 = topo(&n.root, 1, &[("s0", "active", a0)]);
    let g2 = topo(
        &n.root,
        2,
        &[
            ("s0", "draining", a0),
            ("s1", "active", b0),
            ("s2", "draining", c0),
        ],
    );
    let mut want = fill(&g1, 200, 0);
    n.apply(&g1);
    n.start(&["a", "b", "c"]);
    let id = n
        .root
        .join("s2d0")
        .join(ferry::cluster::identity::IDENTITY_FILE);
    let away = id.with_extension("away");
    std::fs::rename(&id, &away).unwrap();
    n.apply(&g2);
    wait_served(&n, &["a", "b"], 2);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(served(&n, "c"), 1, "c routes by 2 without its disk");
    let mut keys: Vec<String> = want.keys().cloned().collect();
    keys.sort();
    let waiting: Vec<String> = keys.iter().step_by(4).cloned().collect();
    let rewritten: Vec<String> = keys.iter().skip(1).step_by(4).cloned().collect();
    for k in &rewritten {
        let r = n.s3["b"].put(BKT, k, b"written under 2").unwrap();
        assert_eq!(r.code, 200, "PUT {k} through b: {}", r.text());
        assert!(
            on_disk(&n.root, "s1d0", k),
            "{k} not at b, its owner under 2"
        );
    }
    let gone: Vec<String> = waiting.iter().chain(&rewritten).cloned().collect();
    stale_on_a(&n, &waiting, &want, || {
        for k in &gone {
            let r = n.s3["c"].delete(BKT, k).unwrap();
            assert_eq!(r.code, 204, "DELETE {k} through c: {}", r.text());
        }
    });
    assert_gone_everywhere(&n, &gone, "deleted through c, which routes by 1");
    std::fs::rename(&away, &id).unwrap();
    let r = n.wait_completed(2, Duration::from_secs(120));
    eprintln!(
        "old-layer deletes: {} deleted through c, {} moved, {} superseded",
        gone.len(),
        r["objects"],
        r["superseded"]
    );
    assert_eq!(served(&n, "c"), 2);
    assert_eq!(
        r["superseded"],
        waiting.len(),
        "the stale copies from a are dropped at b: {r}"
    );
    assert_settled(&n, &gone, &mut want, &g2);
}

/// The cluster of the tombstone hand-over tests: a owns every key under 1, b under 2, c
/// under 3; the moves paused from 2 on. Keys waiting on a are deleted under 2 (b keeps their
/// tombstones) and a copy of each deleted version is put back on a; then b is killed (-9)
/// and 3 applied: a and c route by it, b still says 2.
fn b_down_during_the_switch_to_3() -> Option<BDown> {
    let mut n = nodes(&["a", "b", "c"], &config(300, 300))?;
    let (g1, g2, g3) = a_then_b_then_c(&n.root);
    let want = fill(&g1, 200, 0);
    n.apply(&g1);
    n.start(&["a", "b", "c"]);
    ok(ferry(&n.c, &["cluster", "pause"]));
    n.apply(&g2);
    wait_paused(&n, 2, "a");
    let mut keys: Vec<String> = want.keys().cloned().collect();
    keys.sort();
    let gone: Vec<String> = keys.iter().step_by(4).cloned().collect();
    stale_on_a(&n, &gone, &want, || delete_all(&n, &gone));
    n.c.kill9("b");
    n.apply(&g3);
    wait_served(&n, &["a", "c"], 3);
    assert_eq!(served(&n, "b"), 2, "b is down");
    Some(BDown { n, g3, want, gone })
}

/// What `b_down_during_the_switch_to_3` leaves: the cluster, generation 3, key -> bytes,
/// the deleted keys.
struct BDown {
    n: Nodes,
    g3: Topology,
    want: HashMap<String, Vec<u8>>,
    gone: Vec<String>,
}

/// `b_down_during_the_switch_to_3`; when b's agent is started again, c holds every tombstone
/// by the time b says it routes by 3 (b handed them over first), and when the moves go on
/// the copies from a are dropped at c.
#[test]
fn a_node_down_during_the_switch_hands_its_tombstones_over_when_it_returns() {
    let Some(BDown {
        mut n,
        g3,
        mut want,
        gone,
    }) = b_down_during_the_switch_to_3()
    else {
        return;
    };
    n.c.start("b");
    wait_served(&n, &["b"], 3);
    assert_eq!(
        tombstones_of(&mut n, "c"),
        gone.len() as u64,
        "tombstones at c once b, back, routes by 3"
    );
    n.start(&["c"]);
    n.wait_s3("b", Duration::from_secs(30));
    assert_gone_everywhere(&n, &gone, "b back, under 3, paused");
    ok(ferry(&n.c, &["cluster", "resume"]));
    let r = n.wait_completed(3, Duration::from_secs(120));
    assert_eq!(
        r["superseded"],
        gone.len(),
        "the stale copies are dropped at c: {r}"
    );
    assert_settled(&n, &gone, &mut want, &g3);
}

/// GET of each of `gone` through `node`: 503 naming b (it may keep the tombstone) or 404,
/// never the old bytes.
fn assert_not_served_while_b_is_down(n: &Nodes, node: &str, gone: &[String], when: &str) {
    for k in gone {
        let r = n.s3[node].get(BKT, k).unwrap();
        assert!(
            r.code == 503 || r.code == 404,
            "{when}: GET of deleted {k} through {node}: {}",
            r.text()
        );
        if r.code == 503 {
            assert!(r.text().contains("node b"), "{when}: {}", r.text());
        }
    }
}

/// `b_down_during_the_switch_to_3`, and the moves go on while b is down. b owned every key
/// under 2 and may keep the tombstone of any: no copy still on a is served (a GET through a
/// or c answers 503 naming b, or 404) nor moved to c; a's run says it waits for b and is
/// not completed. Once b's agent is started again (it hands its tombstones to c first), the
/// moves finish: the copies of the deleted versions are dropped at c, the deleted keys are
/// nowhere, every other key is once at c with its content.
#[test]
fn while_the_tombstones_holder_is_down_no_deleted_key_is_served_or_moved() {
    let Some(BDown {
        mut n,
        g3,
        mut want,
        gone,
    }) = b_down_during_the_switch_to_3()
    else {
        return;
    };
    for node in ["a", "c"] {
        assert_not_served_while_b_is_down(&n, node, &gone, "b down, paused");
        // LIST cannot vouch for b's keys and tombstones: 503 naming b, no partial listing
        let listed = n.s3[node].list(BKT, "");
        assert!(
            listed
                .as_ref()
                .is_err_and(|e| e.contains("503") && e.contains("node b")),
            "LIST through {node} with b down: {listed:?}"
        );
    }
    ok(ferry(&n.c, &["cluster", "resume"]));
    let r = n.wait_rebalance(Duration::from_secs(60), "a's moves wait for b", |r| {
        node_state(r, 3, "a").as_deref() == Some("handover_wait")
    });
    let a = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["node"] == "a");
    assert_eq!(a.unwrap()["handover"][0]["node"], "b", "{r}");
    std::thread::sleep(Duration::from_secs(3));
    let moved: Vec<&String> = gone
        .iter()
        .filter(|k| on_disk(&n.root, "s2d0", k))
        .collect();
    assert!(
        moved.is_empty(),
        "deleted keys moved to c while b is down: {moved:?}"
    );
    for node in ["a", "c"] {
        assert_not_served_while_b_is_down(&n, node, &gone, "b down, moves on");
    }
    assert_ne!(n.status()["rebalance"]["state"], "completed");
    n.c.start("b");
    wait_served(&n, &["b"], 3);
    n.wait_s3("b", Duration::from_secs(30));
    let r = n.wait_completed(3, Duration::from_secs(120));
    assert_eq!(
        r["superseded"],
        gone.len(),
        "the stale copies are dropped at c: {r}"
    );
    assert_settled(&n, &gone, &mut want, &g3);
}

/// Generation 3 of `a_then_b_then_c` with b's set removed instead of draining: c owns every
/// key, b none (its disks count as gone unless its agent runs).
fn b_removed_in_3(root: &Path) -> Topology {
    let (a0, b0, c0): (Disks, Disks, Disks) = (&[("d0", "a")], &[("d0", "b")], &[("d0", "c")]);
    topo(
        root,
        3,
        &[
            ("s0", "draining", a0),
            ("s1", "removed", b0),
            ("s2", "active", c0),
        ],
    )
}

/// The events of kind `kind` every agent of `nodes` printed.
fn events_of(n: &Nodes, nodes: &[&str], kind: &str) -> Vec<Value> {
    let all = nodes.iter().flat_map(|x| n.c.events(x));
    all.filter(|e| e["event"] == kind).collect()
}

/// a owns every key under 1, b under 2 (the moves paused: every key still waits on a, so b
/// is an owner in between for each of them); then b is killed (-9) and generation 3 removes
/// its set. a's moves to c would wait for b's hand-over for ever: once b, removed, has had
/// no member key for `lost_after_secs`, its part is marked lost (one event says so, the
/// status says why), the moves go and the rebalance completes: every object once at c with its
/// content, served through a and c; no request asks b any more (a missing key is 404, LIST
/// and DELETE work).
#[test]
fn a_removed_node_that_is_gone_is_marked_lost_and_the_rebalance_completes() {
    let Some((mut n, (_, g2, _), want)) = started(&config(300, 300), 200, 0) else {
        return;
    };
    let g3 = b_removed_in_3(&n.root);
    let waiting = paused_through(&n, &[&g2], &want);
    assert_eq!(waiting.len(), want.len(), "every key still waits on a");
    n.c.kill9("b");
    n.apply(&g3);
    wait_served(&n, &["a", "c"], 3);
    ok(ferry(&n.c, &["cluster", "resume"]));
    let r = n.wait_completed(3, Duration::from_secs(120));
    eprintln!("b gone: {} moved, lost: {}", r["objects"], r["lost"]);
    assert_eq!(r["objects"], want.len(), "{r}");
    assert_eq!(node_state(&r, 3, "b").as_deref(), Some("lost"), "{r}");
    let lost = r["lost"].as_array().unwrap();
    assert_eq!(lost.len(), 1, "{r}");
    let why = lost[0]["why"].as_str().unwrap();
    assert!(
        lost[0]["node"] == "b"
            && why.contains("node b removed and not running")
            && why.contains("and unreachable (its peer transport at ")
            && why.contains("tombstones are lost with its disks"),
        "{r}"
    );
    let said = events_of(&n, &["a", "c"], "rebalance_node_lost");
    assert_eq!(said.len(), 1, "said once: {said:?}");
    assert_eq!(
        (&said[0]["lost"], &said[0]["generation"]),
        (&"b".into(), &3.into())
    );
    assert_placed(&g3, BKT, &want);
    // b's disks are gone: no request asks it any more (no 503 naming it), once each agent
    // has seen b marked lost (each reads it from etcd on its own round)
    let start = std::time::Instant::now();
    for node in ["a", "c"] {
        while n.s3[node].get(BKT, "no/such").unwrap().code == 503 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{node} still asks b"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut keys: Vec<&String> = want.keys().collect();
    keys.sort();
    for node in ["a", "c"] {
        let r = n.s3[node].get(BKT, "no/such").unwrap();
        assert_eq!(
            r.code,
            404,
            "GET of a missing key through {node}: {}",
            r.text()
        );
        let mut listed = n.s3[node].list(BKT, "").unwrap();
        listed.sort();
        assert!(
            listed.iter().eq(keys.iter().copied()),
            "LIST through {node}"
        );
    }
    let k = waiting[0].clone();
    // b's disk still holds a copy of k (as one that waited there when b went would)
    let on_b = object_path(&n.root.join("s1d0"), BKT, k.as_bytes());
    std::fs::create_dir_all(on_b.parent().unwrap()).unwrap();
    std::fs::write(&on_b, &want[&k]).unwrap();
    let r = n.s3["a"].delete(BKT, &k).unwrap();
    assert_eq!(r.code, 204, "DELETE {k} through a: {}", r.text());
    assert_eq!(
        n.s3["c"].get(BKT, &k).unwrap().code,
        404,
        "{k} after its DELETE"
    );
    for node in ["a", "c"] {
        for k in waiting.iter().skip(1).step_by(7) {
            let got = n.s3[node].get(BKT, k).unwrap();
            assert_eq!(got.code, 200, "GET {k} through {node}: {}", got.text());
            assert!(got.body == want[k], "GET {k} through {node}: other bytes");
        }
    }
    b_returns_quarantined(&mut n, &k, &on_b);
}

/// b, marked lost, is started again with its disks as they were (a copy of `k`, deleted
/// meanwhile, at `on_b`): its agent refuses to run (exits non-zero, saying b was marked lost
/// at generation 3 and how to clear that), serves nothing and deletes nothing; `k` stays
/// deleted through a and c. `cluster clear-lost b` clears the mark once (a second says so).
fn b_returns_quarantined(n: &mut Nodes, k: &str, on_b: &Path) {
    n.c.start("b");
    let mut child = n.c.agents.remove("b").unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("b, marked lost, still runs after 30 s\n{}", n.c.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "b, marked lost, exited with {status}");
    let err = std::fs::read_to_string(n.c.dir.path().join("b.err")).unwrap();
    assert!(
        err.contains("node b was marked lost at generation 3 by node ")
            && err.contains("its disks are quarantined")
            && err.contains("ferry cluster clear-lost b"),
        "{err}"
    );
    assert!(on_b.is_file(), "b's copy of {k} is left on its disk");
    let b = n.s3["b"].request("GET", "/", &[], b"");
    assert!(b.is_err(), "b's S3 endpoint answers: {b:?}");
    for node in ["a", "c"] {
        let r = n.s3[node].get(BKT, k).unwrap();
        assert_eq!(r.code, 404, "{k} through {node}, b back: {}", r.text());
        let listed = n.s3[node].list(BKT, "").unwrap();
        assert!(!listed.iter().any(|x| x == k), "LIST through {node}");
    }
    let o = ok(ferry(&n.c, &["cluster", "clear-lost", "b"]));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("the mark of generation 3"), "{said}");
    let again = ferry(&n.c, &["cluster", "clear-lost", "b"]);
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && e.contains("node b is not marked lost"),
        "{e}"
    );
}

/// As above, but b's agent keeps running: removed under 3, it takes 3, hands its tombstones
/// (keys deleted under 2, a copy of each deleted version put back on a as one on its way
/// would be) over to c and says it routes by 3 before a's moves go. Nothing is marked lost;
/// the copies from a are dropped at c; the deleted keys are nowhere, every other key is once
/// at c.
#[test]
fn a_removed_node_still_running_hands_its_tombstones_over_first() {
    let Some((n, (_, g2, _), mut want)) = started(&config(300, 300), 200, 0) else {
        return;
    };
    let g3 = b_removed_in_3(&n.root);
    ok(ferry(&n.c, &["cluster", "pause"]));
    n.apply(&g2);
    wait_paused(&n, 2, "a");
    let mut keys: Vec<String> = want.keys().cloned().collect();
    keys.sort();
    let gone: Vec<String> = keys.iter().step_by(4).cloned().collect();
    stale_on_a(&n, &gone, &want, || delete_all(&n, &gone));
    n.apply(&g3);
    wait_paused(&n, 3, "a");
    assert_eq!(served(&n, "b"), 3, "b, removed, routes by 3");
    assert_gone_everywhere(&n, &gone, "under 3, paused");
    ok(ferry(&n.c, &["cluster", "resume"]));
    let r = n.wait_completed(3, Duration::from_secs(120));
    assert_eq!(r["lost"], serde_json::json!([]), "{r}");
    assert_eq!(node_state(&r, 3, "b").as_deref(), Some("completed"), "{r}");
    assert_eq!(
        r["superseded"],
        gone.len(),
        "the stale copies are dropped at c: {r}"
    );
    assert!(events_of(&n, &["a", "b", "c"], "rebalance_node_lost").is_empty());
    assert_settled(&n, &gone, &mut want, &g3);
}
