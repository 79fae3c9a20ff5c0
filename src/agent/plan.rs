//! What the leader writes, and when: the stored assignment, the stabilization windows (cold
//! start, planned scale, emergency; a restart where more than half the members went away is a
//! cold start), and hand-over in two steps so that no partition has two owners at once: first
//! the partitions that move away from a live owner are released (owner NONE, target in `next`),
//! and only once every live member has acknowledged that assignment are they given to their
//! new owners. Partitions of a member whose lease expired are given away at once.

use super::assign::{Member, NONE, Strategy};
use super::http::{b64_decode, b64_encode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The assignment as stored at `/ferry/v1/<cluster>/assignment`.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// The leader's term (the create revision of its leader key) that wrote it.
    pub epoch: i64,
    /// Counts every assignment written, across leaders.
    pub seq: u64,
    pub strategy: String,
    /// Sorted member names; owners index into this.
    pub members: Vec<String>,
    /// The run of each member (its member key's create revision) this was written for: a
    /// restarted agent holds nothing of an assignment made for its earlier run, which the
    /// leader may be taking away from it without a release.
    pub incarnations: Vec<i64>,
    pub owners: Vec<u16>,
    /// During a hand-over: the owners once the released partitions are handed on.
    pub next: Option<Vec<u16>>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    epoch: i64,
    seq: u64,
    strategy: String,
    members: Vec<String>,
    #[serde(default)]
    incarnations: Vec<i64>,
    owners: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

fn pack(v: &[u16]) -> String {
    let b: Vec<u8> = v.iter().flat_map(|o| o.to_le_bytes()).collect();
    b64_encode(&b)
}

fn unpack(s: &str) -> Result<Vec<u16>, String> {
    let b = b64_decode(s)?;
    if b.len() != 2 * crate::cluster::PARTITIONS {
        return Err(format!("assignment has {} bytes of owners", b.len()));
    }
    Ok(b.chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

impl Assignment {
    pub fn to_json(&self) -> Vec<u8> {
        let s = Stored {
            epoch: self.epoch,
            seq: self.seq,
            strategy: self.strategy.clone(),
            members: self.members.clone(),
            incarnations: self.incarnations.clone(),
            owners: pack(&self.owners),
            next: self.next.as_deref().map(pack),
        };
        serde_json::to_vec(&s).expect("serializable")
    }

    pub fn from_json(b: &[u8]) -> Result<Assignment, String> {
        let s: Stored = serde_json::from_slice(b).map_err(|e| format!("assignment: {e}"))?;
        Ok(Assignment {
            epoch: s.epoch,
            seq: s.seq,
            strategy: s.strategy,
            members: s.members,
            incarnations: s.incarnations,
            owners: unpack(&s.owners)?,
            next: s.next.as_deref().map(unpack).transpose()?,
        })
    }

    /// Name of partition p's owner (None: released).
    pub fn owner(&self, p: u16) -> Option<&str> {
        let o = self.owners[p as usize];
        (o != NONE).then(|| self.members[o as usize].as_str())
    }

    /// The run of `node` this assignment was written for.
    pub fn incarnation(&self, node: &str) -> Option<i64> {
        let i = self.members.iter().position(|m| m == node)?;
        self.incarnations.get(i).copied()
    }

    /// The partitions `node` owns.
    pub fn owned_by(&self, node: &str) -> Vec<u16> {
        let Ok(i) = self.members.binary_search_by(|m| m.as_str().cmp(node)) else {
            return vec![];
        };
        (0..self.owners.len())
            .filter(|&p| self.owners[p] == i as u16)
            .map(|p| p as u16)
            .collect()
    }
}

/// Stabilization windows (all configurable; tests use short ones).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Windows {
    pub cold_ms: u64,
    pub scale_ms: u64,
    pub emergency_ms: u64,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            cold_ms: 30_000,
            scale_ms: 10_000,
            emergency_ms: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// No assignment yet, or more than half the members went away and came back.
    Cold,
    /// Members joined.
    Scale,
    /// A member's lease expired.
    Emergency,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Cold => "cold start",
            Change::Scale => "planned scale",
            Change::Emergency => "emergency",
        }
    }
}

/// What the leader sees in one round.
pub struct View<'a> {
    /// Live members, sorted by name.
    pub live: &'a [Member],
    pub current: Option<&'a Assignment>,
    /// Member → the assignment seq it has applied (released what it no longer owns).
    pub acks: &'a HashMap<String, u64>,
}

/// What kind of change the live set is to the assignment (None: nothing to do).
pub fn classify(live: &[Member], current: Option<&Assignment>) -> Option<Change> {
    if live.is_empty() {
        return None;
    }
    let Some(a) = current else {
        return Some(Change::Cold);
    };
    let is_live = |n: &String| live.iter().any(|m| &m.name == n);
    let kept = a.members.iter().filter(|n| is_live(n)).count();
    if kept * 2 < a.members.len() {
        return Some(Change::Cold);
    }
    // a member restarted: the run its partitions were given to is gone
    let restarted = live
        .iter()
        .any(|m| a.members.contains(&m.name) && a.incarnation(&m.name) != Some(m.incarnation));
    if kept < a.members.len() || restarted {
        return Some(Change::Emergency);
    }
    (live.len() > kept).then_some(Change::Scale)
}

pub struct Planner {
    pub windows: Windows,
    pub strategy: Box<dyn Strategy>,
    /// The change being waited out: its kind, the live set it saw, since when.
    pending: Option<(Change, Vec<String>, Instant)>,
}

impl Planner {
    pub fn new(windows: Windows, strategy: Box<dyn Strategy>) -> Planner {
        Planner {
            windows,
            strategy,
            pending: None,
        }
    }

    /// The change being waited out and the time left in its window.
    pub fn waiting(&self, now: Instant) -> Option<(Change, Duration)> {
        self.pending
            .as_ref()
            .map(|(c, _, since)| (*c, self.window(*c).saturating_sub(now - *since)))
    }

    fn window(&self, c: Change) -> Duration {
        Duration::from_millis(match c {
            Change::Cold => self.windows.cold_ms,
            Change::Scale => self.windows.scale_ms,
            Change::Emergency => self.windows.emergency_ms,
        })
    }

    /// The assignment to write now, with why; None: nothing yet.
    pub fn step(&mut self, now: Instant, v: &View, epoch: i64) -> Option<(Assignment, String)> {
        if let Some(a) = v.current
            && let Some(next) = &a.next
        {
            return self.finish_handover(v, a, next, epoch);
        }
        let Some(change) = classify(v.live, v.current) else {
            self.pending = None;
            return None;
        };
        let names: Vec<String> = v.live.iter().map(|m| m.name.clone()).collect();
        match &self.pending {
            Some((c, n, _)) if *c == change && *n == names => {}
            _ => self.pending = Some((change, names.clone(), now)),
        }
        let since = self.pending.as_ref().map(|p| p.2).unwrap_or(now);
        if now - since < self.window(change) {
            return None;
        }
        self.pending = None;
        let a = self.propose(v, epoch);
        let why = format!(
            "{} ({} members){}",
            change.name(),
            names.len(),
            if a.next.is_some() {
                ", releasing first"
            } else {
                ""
            }
        );
        Some((a, why))
    }

    /// The new owners; partitions moving away from a live owner are released first.
    fn propose(&self, v: &View, epoch: i64) -> Assignment {
        let members: Vec<String> = v.live.iter().map(|m| m.name.clone()).collect();
        let prev = |p: u16| v.current.and_then(|a| a.owner(p).map(str::to_string));
        let target = self.strategy.assign(v.live, &prev);
        let is_live = |n: &str| members.iter().any(|m| m == n);
        let mut owners = target.clone();
        let mut releasing = false;
        for (p, o) in owners.iter_mut().enumerate() {
            if let Some(old) = prev(p as u16)
                && old != members[target[p] as usize]
                && is_live(&old)
            {
                *o = NONE;
                releasing = true;
            }
        }
        Assignment {
            epoch,
            seq: v.current.map(|a| a.seq + 1).unwrap_or(1),
            strategy: self.strategy.name().to_string(),
            members,
            incarnations: v.live.iter().map(|m| m.incarnation).collect(),
            owners,
            next: releasing.then_some(target),
        }
    }

    /// Phase two of a hand-over, once every live member of the assignment has applied it.
    fn finish_handover(
        &mut self,
        v: &View,
        a: &Assignment,
        next: &[u16],
        epoch: i64,
    ) -> Option<(Assignment, String)> {
        let waiting: Vec<&String> = a
            .members
            .iter()
            .filter(|n| v.live.iter().any(|m| &&m.name == n))
            .filter(|n| v.acks.get(*n).copied().unwrap_or(0) < a.seq)
            .collect();
        if !waiting.is_empty() {
            return None;
        }
        let b = Assignment {
            epoch,
            seq: a.seq + 1,
            strategy: a.strategy.clone(),
            members: a.members.clone(),
            incarnations: a.incarnations.clone(),
            owners: next.to_vec(),
            next: None,
        };
        Some((
            b,
            "hand-over: released partitions go to their new owners".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::assign::ConsistentHash;

    fn live(names: &[&str]) -> Vec<Member> {
        let mut v: Vec<Member> = names
            .iter()
            .map(|n| Member {
                name: n.to_string(),
                weight: 1.0,
                incarnation: 1,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn planner() -> Planner {
        let w = Windows {
            cold_ms: 3000,
            scale_ms: 1000,
            emergency_ms: 0,
        };
        Planner::new(w, Box::new(ConsistentHash))
    }

    /// The cold start of a, b, c at `t0` (epoch 1), once its window has passed.
    fn cold_three(pl: &mut Planner, t0: Instant) -> Assignment {
        let l3 = live(&["a", "b", "c"]);
        let acks = HashMap::new();
        let v = View {
            live: &l3,
            current: None,
            acks: &acks,
        };
        assert!(pl.step(t0, &v, 1).is_none());
        pl.step(t0 + Duration::from_secs(3), &v, 1).unwrap().0
    }

    /// Every partition has one owner or is released, and never goes straight from one live
    /// owner to another.
    fn check_step(before: &Assignment, after: &Assignment, live: &[Member]) {
        for p in 0..crate::cluster::PARTITIONS as u16 {
            let (o, n) = (before.owner(p), after.owner(p));
            if let (Some(o), Some(n)) = (o, n)
                && o != n
            {
                assert!(
                    !live.iter().any(|m| m.name == o),
                    "partition {p} went from live {o} to {n} without a release"
                );
            }
        }
    }

    #[test]
    fn cold_start_waits_its_window_then_owns_everything_once() {
        let mut pl = planner();
        let t0 = Instant::now();
        let l = live(&["a", "b", "c"]);
        let acks = HashMap::new();
        let v = View {
            live: &l,
            current: None,
            acks: &acks,
        };
        assert!(pl.step(t0, &v, 7).is_none());
        assert!(pl.step(t0 + Duration::from_millis(2900), &v, 7).is_none());
        let (a, why) = pl.step(t0 + Duration::from_millis(3000), &v, 7).unwrap();
        assert!(why.contains("cold"), "{why}");
        assert!(a.next.is_none() && a.epoch == 7 && a.seq == 1);
        assert!(a.owners.iter().all(|&o| o != NONE && (o as usize) < 3));
        assert_eq!(Assignment::from_json(&a.to_json()).unwrap(), a);
    }

    #[test]
    fn scale_waits_and_hands_over_by_release_then_acquire() {
        let mut pl = planner();
        let t0 = Instant::now();
        let mut acks = HashMap::new();
        let a1 = cold_three(&mut pl, t0);
        let l5 = live(&["a", "b", "c", "d", "e"]);
        let t1 = t0 + Duration::from_secs(10);
        let v = View {
            live: &l5,
            current: Some(&a1),
            acks: &acks,
        };
        assert!(pl.step(t1, &v, 1).is_none(), "planned window");
        let (a2, why) = pl.step(t1 + Duration::from_secs(1), &v, 1).unwrap();
        assert!(why.contains("planned scale") && a2.next.is_some(), "{why}");
        check_step(&a1, &a2, &l5);
        let v = View {
            live: &l5,
            current: Some(&a2),
            acks: &acks,
        };
        assert!(
            pl.step(t1 + Duration::from_secs(2), &v, 1).is_none(),
            "no acks yet"
        );
        for n in ["a", "b", "c", "d", "e"] {
            acks.insert(n.to_string(), a2.seq);
        }
        let v = View {
            live: &l5,
            current: Some(&a2),
            acks: &acks,
        };
        let (a3, _) = pl.step(t1 + Duration::from_secs(2), &v, 1).unwrap();
        check_step(&a2, &a3, &l5);
        assert!(a3.next.is_none() && a3.owners.iter().all(|&o| o != NONE));
        let kept = (0..65536u32)
            .filter(|&p| a1.owner(p as u16) == a3.owner(p as u16))
            .count();
        assert!(kept as f64 / 65536.0 >= 0.59, "kept {kept}");
    }

    #[test]
    fn a_lost_member_is_an_emergency_and_more_than_half_lost_is_a_cold_start() {
        let mut pl = planner();
        let t0 = Instant::now();
        let l3 = live(&["a", "b", "c"]);
        let acks = HashMap::new();
        let a1 = cold_three(&mut pl, t0);
        let l2 = live(&["a", "b"]);
        let v = View {
            live: &l2,
            current: Some(&a1),
            acks: &acks,
        };
        let (a2, why) = pl.step(t0 + Duration::from_secs(4), &v, 2).unwrap();
        assert!(why.contains("emergency"), "{why}");
        assert!(a2.next.is_none(), "a dead owner needs no release");
        check_step(&a1, &a2, &l2);
        assert!(a2.owned_by("c").is_empty() && a2.owners.iter().all(|&o| o != NONE));
        assert_eq!(classify(&live(&["a"]), Some(&a1)), Some(Change::Cold));
        assert_eq!(classify(&l3, Some(&a1)), None);
    }

    #[test]
    fn a_restarted_member_is_an_emergency_and_gets_its_share_back_for_its_new_run() {
        let mut pl = planner();
        let t0 = Instant::now();
        let l3 = live(&["a", "b", "c"]);
        let acks = HashMap::new();
        let a1 = cold_three(&mut pl, t0);
        assert_eq!(a1.incarnation("c"), Some(1));
        let mut again = l3.clone();
        again[2].incarnation = 9;
        assert_eq!(classify(&again, Some(&a1)), Some(Change::Emergency));
        let v = View {
            live: &again,
            current: Some(&a1),
            acks: &acks,
        };
        let (a2, why) = pl.step(t0 + Duration::from_secs(4), &v, 1).unwrap();
        assert!(why.contains("emergency"), "{why}");
        assert_eq!(a2.incarnation("c"), Some(9));
        assert_eq!(
            a2.owners, a1.owners,
            "affinity: the same share, for the new run"
        );
        assert_eq!(classify(&again, Some(&a2)), None);
    }
}
