//! The cluster rebalance job's records in etcd: its spec (`rebalance/<gen>/spec`, written by
//! `ferry cluster apply` together with the topology it moves to) and each node's progress
//! (`rebalance/<gen>/progress/<node>`, written by that node's agent), and the job's summary
//! for `ferry cluster status`.

use super::keys::Keys;
use super::store::{ClusterStore, Kv};
use crate::cluster::Topology;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A rebalance to `topology` (generation `generation`) from `previous`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub generation: u64,
    pub from_generation: u64,
    /// `size` (small objects first) or `partition`.
    pub order: String,
    pub previous: Topology,
    pub topology: Topology,
    pub created_ms: u64,
}

/// One node's account of a rebalance (it outlives the agent: a restart resumes from it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeProgress {
    /// scanning, migrating, paused, destination_full, peer_unreachable, handover_wait,
    /// completed, failed, lost.
    pub state: String,
    /// Partitions whose misplaced objects on this node are all at their owners (PartSet).
    pub done: String,
    /// Objects and bytes moved to their owners (over all of this node's runs of the job).
    pub moved: u64,
    pub moved_bytes: u64,
    /// What this node has to move: moved before its latest run plus what that run's scan found.
    pub total: u64,
    pub total_bytes: u64,
    /// Moves dropped because a client wrote or deleted the key meanwhile.
    pub superseded: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    pub rate_bytes_s: u64,
    pub eta_s: Option<f64>,
    /// Runs of the job on this node (a restart or a retry adds one).
    pub runs: u32,
    pub started_ms: u64,
    pub at_ms: u64,
    /// The pace (user I/O first): the byte rate it allows now (0: unlimited), the client
    /// p99 of its last window and its target (µs).
    #[serde(default)]
    pub limit_bytes_s: u64,
    #[serde(default)]
    pub user_p99_us: u64,
    #[serde(default)]
    pub user_target_us: u64,
    /// The pace's last window: its client requests, the disks' latency and target (µs), and
    /// its verdict (over: a cut, quiet, hold, undone).
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub disk_await_us: u64,
    #[serde(default)]
    pub disk_target_us: u64,
    #[serde(default)]
    pub verdict: String,
    /// The latest run's scan of this node's disks: objects seen and its time (0 while it runs).
    #[serde(default)]
    pub scanned: u64,
    #[serde(default)]
    pub scan_ms: u64,
    /// The receiving nodes this node's moves wait for (unreachable since when, and why).
    #[serde(default)]
    pub unreachable: Vec<crate::cluster::reach::Unreachable>,
    /// The nodes whose hand-over of their tombstones some of this node's moves wait for
    /// (`agent::handover`).
    #[serde(default)]
    pub handover: Vec<crate::cluster::reach::Waiting>,
    /// Why the node's part is `lost` (written by another node's agent: `agent::lost`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
}

impl NodeProgress {
    /// The pace's figures from its status document.
    pub fn pace(&mut self, p: &Value) {
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        self.limit_bytes_s = n("limit_bytes_s");
        self.user_p99_us = n("user_p99_us");
        self.user_target_us = n("user_target_us");
        self.requests = n("requests");
        self.disk_await_us = n("disk_await_us");
        self.disk_target_us = n("disk_target_us");
        self.verdict = p["verdict"].as_str().unwrap_or("").to_string();
    }
}

pub const COMPLETED: &str = "completed";
pub const FAILED: &str = "failed";
/// A node's moves wait for room on a full owner disk (they go on once there is).
pub const DESTINATION_FULL: &str = "destination_full";
/// A node's moves wait for a receiving node it cannot reach (they go on once it answers).
pub const PEER_UNREACHABLE: &str = "peer_unreachable";
/// Some of a node's moves wait for another node to hand its tombstones over (it is down, or
/// does not route by the newest generation yet); they go once it has.
pub const HANDOVER_WAIT: &str = "handover_wait";
/// A node removed from the topology that does not run: its part can never be done (its
/// disks, and the objects and tombstones on them, are lost); the job completes without it.
pub const LOST: &str = "lost";

/// Whether a node's part of a rebalance is over for good (nothing more comes of it).
pub fn is_final(state: &str) -> bool {
    [COMPLETED, FAILED, LOST].contains(&state)
}

/// The generation in a key `.../rebalance/<gen>/...`.
fn generation_of(keys: &Keys, key: &str) -> Option<u64> {
    key.strip_prefix(&keys.rebalances())?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// The newest rebalance spec among `kvs` (and its key's mod revision).
pub fn newest<'a>(keys: &Keys, kvs: impl Iterator<Item = &'a Kv>) -> Option<(Spec, i64)> {
    kvs.filter(|kv| kv.key.ends_with("/spec"))
        .filter_map(|kv| {
            let g = generation_of(keys, &kv.key)?;
            let s: Spec = serde_json::from_slice(&kv.value).ok()?;
            (s.generation == g).then_some((s, kv.mod_rev))
        })
        .max_by_key(|(s, _)| s.generation)
}

/// Every node that serves a disk of either topology of the job (each must finish its part).
pub fn nodes(spec: &Spec) -> Vec<String> {
    let mut v: Vec<String> = [&spec.previous, &spec.topology]
        .into_iter()
        .flat_map(|t| t.sets())
        .flat_map(|s| s.disks.iter())
        .filter_map(|d| d.node.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The job's state from its nodes' records: completed once every node's part is (or is
/// lost: `LOST`), failed if one failed for good, else running (paused with the cluster's
/// control).
pub fn job_state(spec: &Spec, progress: &[(String, NodeProgress)], paused: bool) -> &'static str {
    let state = |n: &str| {
        progress
            .iter()
            .find(|(m, _)| m == n)
            .map(|(_, p)| p.state.as_str())
    };
    let ns = nodes(spec);
    if ns.iter().any(|n| state(n) == Some(FAILED)) {
        FAILED
    } else if ns
        .iter()
        .all(|n| matches!(state(n), Some(COMPLETED | LOST)))
    {
        COMPLETED
    } else if ns.iter().any(|n| state(n) == Some(DESTINATION_FULL)) {
        DESTINATION_FULL
    } else if paused {
        "paused"
    } else if ns.iter().any(|n| state(n) == Some(PEER_UNREACHABLE)) {
        PEER_UNREACHABLE
    } else if ns.iter().any(|n| state(n) == Some(HANDOVER_WAIT)) {
        HANDOVER_WAIT
    } else {
        "migrating"
    }
}

/// The newest generation whose rebalance is completed on every node (`current`, the
/// generation served, if no rebalance was ever started): no object is left off its owner
/// under it, so the tombstones of deletes made under it or before have done their work.
/// None while the newest rebalance runs (or failed).
pub fn settled(keys: &Keys, kvs: &[Kv], current: u64) -> Option<u64> {
    let Some((spec, _)) = newest(keys, kvs.iter()) else {
        return Some(current);
    };
    let progress = progress_of(keys, kvs, spec.generation);
    (job_state(&spec, &progress, false) == COMPLETED).then_some(spec.generation)
}

/// Each node's record of generation `g`'s rebalance among `kvs`.
fn progress_of(keys: &Keys, kvs: &[Kv], g: u64) -> Vec<(String, NodeProgress)> {
    let prefix = keys.rebalance_progress_prefix(g);
    kvs.iter()
        .filter(|kv| kv.key.starts_with(&prefix))
        .filter_map(|kv| {
            let p = serde_json::from_slice(&kv.value).ok()?;
            Some((kv.key[prefix.len()..].to_string(), p))
        })
        .collect()
}

/// The topologies before generation `current` whose objects may still wait at their owners,
/// newest first, at most `limit` of them: walking back from `current`, the topology each
/// rebalance moves from, as long as that rebalance is not completed on every node (once it
/// is, no object is left off its owners under its generation). A rebalance replaced by a
/// newer one before it completed never does, so its topology stays until the newer one
/// completes. The first one is the previous topology (`previous_topology`).
pub fn unsettled(
    store: &dyn ClusterStore,
    keys: &Keys,
    current: u64,
    limit: usize,
) -> Result<Vec<Topology>, String> {
    let mut out = Vec::new();
    let mut g = current;
    while out.len() < limit {
        let key = keys.rebalance(g);
        let Some(kv) = store.get(&key).map_err(|e| e.to_string())? else {
            break; // the first generation: no rebalance led to it
        };
        let spec: Spec = serde_json::from_slice(&kv.value).map_err(|e| format!("{key}: {e}"))?;
        let prefix = keys.rebalance_progress_prefix(g);
        let kvs = store.range(&prefix, false).map_err(|e| e.to_string())?.kvs;
        if spec.from_generation >= g
            || job_state(&spec, &progress_of(keys, &kvs, g), false) == COMPLETED
        {
            break;
        }
        g = spec.from_generation;
        out.push(spec.previous);
    }
    Ok(out)
}

/// `ferry cluster status`'s view of the newest rebalance: per node and in total (objects,
/// bytes, rate, ETA).
pub fn summary(keys: &Keys, kvs: &[Kv], paused: bool) -> Value {
    let Some((spec, _)) = newest(keys, kvs.iter()) else {
        return Value::Null;
    };
    let progress = progress_of(keys, kvs, spec.generation);
    let state = job_state(&spec, &progress, paused);
    let mut t = NodeProgress::default();
    let mut per_node = Vec::new();
    let (mut unreachable, mut lost) = (Vec::new(), Vec::new());
    for n in nodes(&spec) {
        let p = progress
            .iter()
            .find(|(m, _)| *m == n)
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        t.moved += p.moved;
        t.moved_bytes += p.moved_bytes;
        t.total += p.total;
        t.total_bytes += p.total_bytes;
        t.superseded += p.superseded;
        t.failed += p.failed;
        if p.state != COMPLETED {
            t.rate_bytes_s += p.rate_bytes_s;
        }
        let parts = crate::partset::PartSet::from_text(&p.done).map_or(0, |s| s.len());
        for u in p.unreachable.iter().filter(|_| p.state == PEER_UNREACHABLE) {
            unreachable.push(json!({"from": n, "peer": u.peer, "since_ms": u.since_ms,
                "probes": u.probes, "error": u.error}));
        }
        if p.state == LOST {
            lost.push(json!({"node": n, "why": p.why}));
        }
        per_node.push(json!({"node": n, "state": if p.state.is_empty() { "waiting" } else { p.state.as_str() },
            "objects": p.moved, "objects_total": p.total, "bytes": p.moved_bytes,
            "bytes_total": p.total_bytes, "superseded": p.superseded, "failed": p.failed,
            "partitions_done": parts, "rate_bytes_s": p.rate_bytes_s, "eta_s": p.eta_s,
            "errors": p.errors, "limit_bytes_s": p.limit_bytes_s, "user_p99_us": p.user_p99_us,
            "user_target_us": p.user_target_us, "requests": p.requests,
            "disk_await_us": p.disk_await_us, "disk_target_us": p.disk_target_us,
            "verdict": p.verdict, "scanned": p.scanned, "scan_ms": p.scan_ms,
            "unreachable": p.unreachable, "handover": p.handover, "started_ms": p.started_ms,
            "why": p.why, "at_ms": p.at_ms}));
    }
    let left = t.total_bytes.saturating_sub(t.moved_bytes);
    let eta =
        (state != COMPLETED && t.rate_bytes_s > 0).then(|| left as f64 / t.rate_bytes_s as f64);
    json!({"generation": spec.generation, "from_generation": spec.from_generation,
        "order": spec.order, "state": state, "created_ms": spec.created_ms,
        "objects": t.moved, "objects_total": t.total, "bytes": t.moved_bytes,
        "bytes_total": t.total_bytes, "superseded": t.superseded, "failed": t.failed,
        "rate_bytes_s": t.rate_bytes_s, "eta_s": eta, "unreachable": unreachable,
        "lost": lost, "nodes": per_node})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(g: u64, nodes: &[&str]) -> Topology {
        let disks: Vec<Value> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"id": format!("d{i}"), "path": format!("/nonexistent/{g}/{i}"), "node": n}))
            .collect();
        let v = json!({"generation": g, "pools": [{"id": "p", "sets": [{"id": "s", "state": "active", "weight": 1.0, "disks": disks}]}]});
        Topology::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    fn kv(key: String, v: &impl Serialize) -> Kv {
        Kv {
            key,
            value: serde_json::to_vec(v).unwrap(),
            create_rev: 1,
            mod_rev: 1,
            lease: 0,
        }
    }

    #[test]
    fn tombstones_may_go_once_the_newest_rebalance_is_completed_on_every_node() {
        let keys = Keys::new("t").unwrap();
        let spec = Spec {
            generation: 10,
            from_generation: 9,
            order: "size".into(),
            previous: topo(9, &["a"]),
            topology: topo(10, &["a", "b"]),
            created_ms: 0,
        };
        let state = |s: &str| NodeProgress {
            state: s.into(),
            ..Default::default()
        };
        let kvs = |b: Option<&str>| {
            let mut v = vec![kv(keys.rebalance(10), &spec)];
            v.push(kv(keys.rebalance_progress(10, "a"), &state(COMPLETED)));
            v.extend(b.map(|b| kv(keys.rebalance_progress(10, "b"), &state(b))));
            v
        };
        assert_eq!(settled(&keys, &kvs(Some(COMPLETED)), 10), Some(10));
        for b in [Some("migrating"), Some(FAILED), None] {
            assert_eq!(settled(&keys, &kvs(b), 10), None, "b: {b:?}");
        }
        assert_eq!(settled(&keys, &[], 4), Some(4), "no rebalance ever");
    }

    /// Walking back from the current generation: each rebalance not completed everywhere
    /// keeps the topology it moves from, until one that is (or the first generation).
    #[test]
    fn generations_stay_pending_until_a_newer_rebalance_completes_everywhere() {
        use crate::agent::store::{ClusterStore, MemStore};
        let keys = Keys::new("t").unwrap();
        let store = MemStore::default();
        let spec = |g: u64| Spec {
            generation: g,
            from_generation: g - 1,
            order: "size".into(),
            previous: topo(g - 1, &["a"]),
            topology: topo(g, &["a"]),
            created_ms: 0,
        };
        let state = |s: &str| NodeProgress {
            state: s.into(),
            ..Default::default()
        };
        let put = |k: String, v: Value| store.put(&k, &serde_json::to_vec(&v).unwrap(), 0);
        let gens = |cur: u64, limit: usize| -> Vec<u64> {
            let v = unsettled(&store, &keys, cur, limit).unwrap();
            v.iter().map(|t| t.generation).collect()
        };
        assert_eq!(gens(1, 4), Vec::<u64>::new(), "no rebalance led to 1");
        for g in 2..=4 {
            put(keys.rebalance(g), json!(spec(g))).unwrap();
            put(keys.rebalance_progress(g, "a"), json!(state("paused"))).unwrap();
        }
        assert_eq!(gens(4, 9), vec![3, 2, 1]);
        assert_eq!(gens(4, 2), vec![3, 2], "at most the limit");
        put(keys.rebalance_progress(3, "a"), json!(state(COMPLETED))).unwrap();
        assert_eq!(
            gens(4, 9),
            vec![3],
            "3's rebalance completed: nothing waits under 2"
        );
        put(keys.rebalance_progress(4, "a"), json!(state(COMPLETED))).unwrap();
        assert_eq!(gens(4, 9), Vec::<u64>::new());
    }

    #[test]
    fn the_newest_generation_is_summed_over_every_node_of_both_topologies() {
        let keys = Keys::new("t").unwrap();
        let spec = |g: u64| Spec {
            generation: g,
            from_generation: g - 1,
            order: "size".into(),
            previous: topo(g - 1, &["a", "b"]),
            topology: topo(g, &["a", "b", "c"]),
            created_ms: 0,
        };
        let rec = |state: &str, moved: u64, total: u64| NodeProgress {
            state: state.into(),
            moved,
            moved_bytes: moved * 10,
            total,
            total_bytes: total * 10,
            rate_bytes_s: 100,
            ..Default::default()
        };
        let kvs_of = |recs: &[(&str, NodeProgress)]| {
            let mut kvs = vec![
                kv(keys.rebalance(9), &spec(9)),
                kv(keys.rebalance(10), &spec(10)),
                kv(keys.rebalance_progress(9, "c"), &rec(FAILED, 0, 1)),
            ];
            for (n, r) in recs {
                kvs.push(kv(keys.rebalance_progress(10, n), r));
            }
            kvs.sort_by(|a, b| a.key.cmp(&b.key));
            kvs
        };
        let kvs = kvs_of(&[("a", rec(COMPLETED, 5, 5)), ("b", rec("migrating", 2, 8))]);
        let s = summary(&keys, &kvs, false);
        assert_eq!(s["generation"], 10, "{s}");
        assert_eq!(s["state"], "migrating", "c has not reported for 10: {s}");
        assert_eq!(
            (s["objects"].clone(), s["objects_total"].clone()),
            (json!(7), json!(13))
        );
        assert_eq!(s["rate_bytes_s"], 100, "a completed node adds no rate");
        assert_eq!(s["eta_s"], 0.6);
        assert_eq!(node_state(&s, "c"), "waiting");
        let all = |c: NodeProgress| {
            kvs_of(&[
                ("a", rec(COMPLETED, 5, 5)),
                ("b", rec(COMPLETED, 8, 8)),
                ("c", c),
            ])
        };
        assert_eq!(
            summary(&keys, &all(rec(COMPLETED, 0, 0)), true)["state"],
            COMPLETED
        );
        assert_eq!(
            summary(&keys, &all(rec(FAILED, 0, 0)), true)["state"],
            FAILED
        );
        assert_eq!(
            summary(&keys, &all(rec("migrating", 0, 0)), true)["state"],
            "paused"
        );
        let mut waits = rec(PEER_UNREACHABLE, 0, 3);
        waits.unreachable = vec![crate::cluster::reach::Unreachable {
            peer: "a".into(),
            since_ms: 1234,
            probes: 2,
            error: "peer migrate peer a: connect a: timed out".into(),
        }];
        let s = summary(&keys, &all(waits), false);
        assert_eq!(s["state"], PEER_UNREACHABLE, "{s}");
        assert_eq!(node_state(&s, "c"), PEER_UNREACHABLE);
        let u = &s["unreachable"][0];
        assert_eq!(
            (&u["from"], &u["peer"], &u["since_ms"]),
            (&json!("c"), &json!("a"), &json!(1234))
        );
        assert_eq!(s["unreachable"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_lost_part_is_listed_and_does_not_keep_the_job_from_completing() {
        let keys = Keys::new("t").unwrap();
        let spec = Spec {
            generation: 3,
            from_generation: 2,
            order: "size".into(),
            previous: topo(2, &["a", "b"]),
            topology: topo(3, &["a"]),
            created_ms: 0,
        };
        let rec = |state: &str, why: &str| NodeProgress {
            state: state.into(),
            why: why.into(),
            ..Default::default()
        };
        let kvs = |b: NodeProgress| {
            vec![
                kv(keys.rebalance(3), &spec),
                kv(keys.rebalance_progress(3, "a"), &rec(COMPLETED, "")),
                kv(keys.rebalance_progress(3, "b"), &b),
            ]
        };
        let s = summary(
            &keys,
            &kvs(rec(LOST, "node b removed and not running")),
            false,
        );
        assert_eq!(s["state"], COMPLETED, "{s}");
        assert_eq!(node_state(&s, "b"), LOST);
        assert_eq!(
            s["lost"],
            json!([{"node": "b", "why": "node b removed and not running"}])
        );
        assert_eq!(settled(&keys, &kvs(rec(LOST, "gone")), 3), Some(3));
        let s = summary(&keys, &kvs(rec(HANDOVER_WAIT, "")), false);
        assert_eq!(s["state"], HANDOVER_WAIT, "{s}");
        assert_eq!(s["lost"], json!([]));
        assert!(is_final(LOST) && is_final(FAILED) && !is_final(HANDOVER_WAIT));
    }

    fn node_state(s: &Value, n: &str) -> String {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["node"] == n)
            .map(|x| x["state"].as_str().unwrap().to_string())
            .unwrap()
    }
}
