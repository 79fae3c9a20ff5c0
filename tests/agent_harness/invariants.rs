//! The cluster's invariants, checked from outside: every assignment etcd ever stored (its
//! history: the tests never compact), a live observer of the members and the assignment, and
//! the ownership each agent says it held (its `owned` events) against every other agent's.

use super::Cluster;
use ferry::agent::assign::NONE;
use ferry::agent::http::{b64_decode, b64_encode, post};
use ferry::agent::plan::Assignment;
use ferry::agent::{ClusterStore, etcd::EtcdStore, keys::Keys};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Wall-clock milliseconds (the agents' `at_ms` clock).
pub fn now_ms() -> u64 {
    ferry::agent::state::now_ms()
}

impl Cluster {
    /// The assignment key as of revision `rev`: (its mod revision, the assignment).
    fn assignment_at(&self, rev: i64) -> Option<(i64, Assignment)> {
        let key = b64_encode(self.keys.assignment().as_bytes());
        let body = format!(r#"{{"key":"{key}","revision":"{rev}"}}"#);
        for m in &self.etcd.members {
            let addr = m.client.trim_start_matches("http://");
            let Ok((200, reply)) = post(
                addr,
                "/v3/kv/range",
                body.as_bytes(),
                Duration::from_secs(3),
            ) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
            let kv = v["kvs"].as_array()?.first()?;
            let mod_rev: i64 = kv["mod_revision"].as_str()?.parse().ok()?;
            let value = b64_decode(kv["value"].as_str()?).ok()?;
            return Some((mod_rev, Assignment::from_json(&value).unwrap()));
        }
        panic!("no etcd member answered a range at revision {rev}");
    }

    /// Every assignment ever written, oldest first, with its mod revision.
    pub fn history(&self) -> Vec<(i64, Assignment)> {
        let mut out = vec![];
        let mut next = self.assignment();
        while let Some((rev, a)) = next {
            out.push((rev, a));
            next = self.assignment_at(rev - 1);
        }
        out.reverse();
        out
    }
}

/// Each stored assignment: seq counts up by one, epochs never go back, every partition has
/// exactly one owner among the members or (only during a hand-over) none, with its next owner.
pub fn check_history(h: &[(i64, Assignment)]) {
    for w in h.windows(2) {
        let (a, b) = (&w[0].1, &w[1].1);
        assert_eq!(b.seq, a.seq + 1, "assignment seq skipped at rev {}", w[1].0);
        assert!(
            b.epoch >= a.epoch,
            "epoch went back from {} to {} at rev {}",
            a.epoch,
            b.epoch,
            w[1].0
        );
    }
    for (rev, a) in h {
        let n = a.members.len() as u16;
        for (p, &o) in a.owners.iter().enumerate() {
            assert!(o < n || o == NONE, "rev {rev}: partition {p} owner {o}");
            if o == NONE {
                let next = a
                    .next
                    .as_ref()
                    .expect("an unowned partition outside a hand-over");
                assert!(next[p] < n, "rev {rev}: partition {p} released to nobody");
            }
        }
    }
}

/// One agent holding the partitions of assignment `rev` from `from` to `to` (ms).
#[derive(Debug)]
struct Held {
    node: String,
    rev: i64,
    /// How many partitions it said it held (0 for an assignment made for an earlier run).
    owned: u64,
    from: u64,
    to: u64,
}

/// What one node's event log (all its runs, appended) says it held; `deaths`: when each of its
/// runs was killed, in order; `end`: when observation stopped (for the runs still alive).
fn held_by(node: &str, events: &[serde_json::Value], deaths: &[u64], end: u64) -> Vec<Held> {
    let mut out = vec![];
    let mut cur: Option<(i64, u64, u64)> = None;
    let mut runs = 0usize;
    let mut epoch = 0;
    let close = |cur: &mut Option<(i64, u64, u64)>, to: u64, out: &mut Vec<Held>| {
        if let Some((rev, owned, from)) = cur.take() {
            out.push(Held {
                node: node.to_string(),
                rev,
                owned,
                from,
                to,
            });
        }
    };
    for e in events {
        let at = e["at_ms"].as_u64().unwrap_or(0);
        match e["event"].as_str() {
            Some("state") if e["from"] == "init" => {
                // a new run: the previous one ended when it was killed
                if runs > 0 {
                    close(
                        &mut cur,
                        deaths.get(runs - 1).copied().unwrap_or(at),
                        &mut out,
                    );
                }
                runs += 1;
                epoch = 0;
            }
            Some("state") if e["to"] == "claiming_id" || e["to"] == "shutdown" => {
                close(&mut cur, at, &mut out)
            }
            Some("owned") => {
                let ep = e["epoch"].as_i64().unwrap();
                assert!(ep >= epoch, "{node} applied epoch {ep} after {epoch}");
                epoch = ep;
                close(&mut cur, e["released_ms"].as_u64().unwrap(), &mut out);
                let rev = e["rev"].as_i64().unwrap();
                let owned = e["owned"].as_u64().unwrap();
                cur = Some((rev, owned, e["start_ms"].as_u64().unwrap()));
            }
            _ => {}
        }
    }
    // the last run: killed, or still running when observation stopped
    let last = deaths.get(runs.wrapping_sub(1)).copied().unwrap_or(end);
    close(&mut cur, last, &mut out);
    out
}

/// No partition was held by two agents at once, by their own account. Returns how many
/// holdings were compared.
pub fn check_no_two_owners(c: &Cluster, nodes: &[&str], h: &[(i64, Assignment)]) -> usize {
    let end = now_ms();
    let by_rev: HashMap<i64, &Assignment> = h.iter().map(|(r, a)| (*r, a)).collect();
    let mut held = vec![];
    for n in nodes {
        let deaths = c.deaths.get(*n).cloned().unwrap_or_default();
        held.extend(held_by(n, &c.events(n), &deaths, end));
    }
    let sets: Vec<Vec<bool>> = held
        .iter()
        .map(|x| {
            let a = by_rev
                .get(&x.rev)
                .unwrap_or_else(|| panic!("{} applied rev {} etcd never stored", x.node, x.rev));
            let mut s = vec![false; 65536];
            if x.owned > 0 {
                let mine = a.owned_by(&x.node);
                assert_eq!(mine.len() as u64, x.owned, "{x:?}");
                mine.into_iter().for_each(|p| s[p as usize] = true);
            }
            s
        })
        .collect();
    for i in 0..held.len() {
        for j in i + 1..held.len() {
            let (a, b) = (&held[i], &held[j]);
            if a.node == b.node || a.to <= b.from || b.to <= a.from {
                continue;
            }
            if let Some(p) = (0..65536).find(|&p| sets[i][p] && sets[j][p]) {
                panic!("partition {p} held by two agents at once: {a:?} and {b:?}");
            }
        }
    }
    held.len()
}

/// Watches etcd every 50 ms: how long partitions were without a live owner (released, or
/// owned by a member whose lease is gone), episode by episode.
pub struct Observer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Duration>>>,
}

impl Observer {
    pub fn start(c: &Cluster) -> Observer {
        let store = EtcdStore::new(&c.etcd.urls(), Duration::from_millis(1000)).unwrap();
        let keys = Keys::new(&c.name).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || watch(&store, &keys, &s2));
        Observer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; the length of every episode of partitions without a live owner.
    pub fn finish(mut self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn watch(store: &EtcdStore, keys: &Keys, stop: &AtomicBool) -> Vec<Duration> {
    let mut episodes = vec![];
    let mut since: Option<Instant> = None;
    let mut cur: Option<(i64, Assignment)> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        let Ok(snap) = store.range(&keys.root, true) else {
            continue; // etcd away: nothing can be seen (or changed)
        };
        let live: Vec<&str> = snap
            .kvs
            .iter()
            .filter_map(|k| k.key.strip_prefix(&keys.members()))
            .collect();
        let Some(akv) = snap.kvs.iter().find(|k| k.key == keys.assignment()) else {
            continue;
        };
        if cur.as_ref().map(|c| c.0) != Some(akv.mod_rev) {
            let Ok(Some(kv)) = store.get(&keys.assignment()) else {
                continue;
            };
            cur = Some((kv.mod_rev, Assignment::from_json(&kv.value).unwrap()));
        }
        let a = &cur.as_ref().unwrap().1;
        let served: Vec<bool> = a
            .members
            .iter()
            .map(|m| live.contains(&m.as_str()))
            .collect();
        let orphans = a.owners.iter().any(|&o| o == NONE || !served[o as usize]);
        match (orphans, since) {
            (true, None) => since = Some(Instant::now()),
            (false, Some(t)) => {
                episodes.push(t.elapsed());
                since = None;
            }
            _ => {}
        }
    }
    if let Some(t) = since {
        episodes.push(t.elapsed());
    }
    episodes
}
