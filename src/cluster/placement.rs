//! Placement version 1: where every object belongs. Must never change between builds; the
//! golden vectors in tests/placement.rs (computed by an independent implementation) pin it.
//!
//! - key = bucket ++ "/" ++ object key; partition = xxh3_64(key, seed 0) >> 48 (65,536).
//! - owner sets: weighted rendezvous over active sets, x = xxh3_64(p as u16 LE ++ set id),
//!   u = ((x >> 11) + 0.5) / 2^53, score = -weight / ln(u), highest first, ties to the smaller
//!   set id (byte order); R replicas = the R best.
//! - disk in a set: the same with weight 1 and x = xxh3_64(p LE ++ set id ++ "/" ++ disk id).
//!
//! Two other strategies sit behind the same trait for comparison only: a consistent-hash ring
//! and jump consistent hash (their exact hashing is not frozen).

use super::topology::{DiskSet, Topology};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

pub const PARTITION_BITS: u32 = 16;
pub const PARTITIONS: usize = 1 << PARTITION_BITS;
/// Default virtual nodes per unit of weight for the ring.
pub const DEFAULT_VNODES: u32 = 150;
/// Upper bound on ring points, whatever the weights (memory and build time).
pub const MAX_RING_POINTS: usize = 1 << 22;

/// The partition of an object.
pub fn partition_of(bucket: &[u8], key: &[u8]) -> u16 {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket);
    k.push(b'/');
    k.extend_from_slice(key);
    (xxh3_64(&k) >> 48) as u16
}

/// u in (0, 1) from a 64-bit hash: the top 53 bits, centred so ln(u) is finite and negative.
pub(crate) fn unit(x: u64) -> f64 {
    ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Rendezvous score; higher wins.
pub fn score(x: u64, weight: f64) -> f64 {
    -weight / unit(x).ln()
}

/// Better-first order: higher score, then the smaller id.
fn better(a: (f64, &[u8]), b: (f64, &[u8])) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// The disk (index into `set.disks`) that holds partition `p` inside `set`.
pub fn disk_in_set(p: u16, set: &DiskSet) -> usize {
    assert!(!set.disks.is_empty(), "set {} has no disks", set.id);
    let mut buf = Vec::with_capacity(2 + set.id.len() + 1 + 64);
    let mut best: Option<(f64, usize)> = None;
    for (i, d) in set.disks.iter().enumerate() {
        buf.clear();
        buf.extend_from_slice(&p.to_le_bytes());
        buf.extend_from_slice(set.id.as_bytes());
        buf.push(b'/');
        buf.extend_from_slice(d.id.as_bytes());
        let s = score(xxh3_64(&buf), 1.0);
        let wins = match best {
            None => true,
            Some((bs, bi)) => better((s, d.id.as_bytes()), (bs, set.disks[bi].id.as_bytes())),
        };
        if wins {
            best = Some((s, i));
        }
    }
    best.expect("non-empty").1
}

/// A way to map partitions to owner sets. Set numbers index `Candidates::ids`.
pub trait Placement: Send + Sync {
    fn name(&self) -> &'static str;
    /// The `n` best sets for `p`, best first, all distinct (`n` ≤ number of sets).
    fn owners(&self, p: u16, n: usize) -> Vec<u32>;
    fn owner(&self, p: u16) -> u32 {
        self.owners(p, 1)[0]
    }
    /// `owners(p, out.len())` into `out`; strategies override it to avoid allocating.
    fn fill(&self, p: u16, out: &mut [u32]) {
        out.copy_from_slice(&self.owners(p, out.len()));
    }
}

/// The active sets of a topology, in topology order.
#[derive(Clone, Debug)]
pub struct Candidates {
    pub ids: Vec<String>,
    pub weights: Vec<f64>,
}

impl Candidates {
    pub fn of(t: &Topology) -> Self {
        let (ids, weights) = t.active_sets().map(|s| (s.id.clone(), s.weight)).unzip();
        Candidates { ids, weights }
    }
}

pub struct Rendezvous {
    c: Candidates,
    /// Per set: 2 bytes for the partition, then the set id (the hash input, prebuilt).
    keys: Vec<Vec<u8>>,
}

impl Rendezvous {
    pub fn new(c: Candidates) -> Self {
        assert!(!c.ids.is_empty());
        let keys = c
            .ids
            .iter()
            .map(|id| {
                let mut k = vec![0u8, 0u8];
                k.extend_from_slice(id.as_bytes());
                k
            })
            .collect();
        Rendezvous { c, keys }
    }

    /// Keeps the best `out.len()` sets in `out` (best first) without allocating: one pass,
    /// insertion into a tiny sorted array (replica counts are small).
    fn best_into(&self, p: u16, out: &mut [u32], scores: &mut [f64]) {
        let n = out.len();
        assert!(n >= 1 && n <= self.c.ids.len() && scores.len() >= n);
        let mut have = 0usize;
        let mut key = [0u8; 2 + super::topology::MAX_ID_LEN];
        for (i, k) in self.keys.iter().enumerate() {
            key[..k.len()].copy_from_slice(k);
            key[..2].copy_from_slice(&p.to_le_bytes());
            let x = xxh3_64(&key[..k.len()]);
            let w = self.c.weights[i];
            // ln(u) <= u - 1, so score <= w / (1 - u): a set whose bound is clearly below the
            // current n-th best cannot enter, and its ln (the costly part) is skipped. The
            // margin keeps float rounding from ever pruning a true tie.
            if have == n && w / (1.0 - unit(x)) * (1.0 + 1e-9) < scores[n - 1] {
                continue;
            }
            let s = score(x, w);
            let id = self.c.ids[i].as_bytes();
            // Position among the current best.
            let mut at = have;
            while at > 0
                && better(
                    (s, id),
                    (scores[at - 1], self.c.ids[out[at - 1] as usize].as_bytes()),
                )
            {
                at -= 1;
            }
            if at >= n {
                continue;
            }
            let last = have.min(n - 1);
            for j in (at..last).rev() {
                out[j + 1] = out[j];
                scores[j + 1] = scores[j];
            }
            out[at] = i as u32;
            scores[at] = s;
            have = (have + 1).min(n);
        }
    }
}

impl Placement for Rendezvous {
    fn name(&self) -> &'static str {
        "rendezvous"
    }

    fn owners(&self, p: u16, n: usize) -> Vec<u32> {
        let mut out = vec![0u32; n];
        self.fill(p, &mut out);
        out
    }

    fn fill(&self, p: u16, out: &mut [u32]) {
        let mut scores = [0f64; 64];
        if out.len() <= scores.len() {
            return self.best_into(p, out, &mut scores);
        }
        out.copy_from_slice(&self.owners_sorted(p, out.len()));
    }
}

impl Rendezvous {
    /// Full sort: the reference form of the rule (used for large replica counts and tests).
    pub fn owners_sorted(&self, p: u16, n: usize) -> Vec<u32> {
        assert!(n >= 1 && n <= self.c.ids.len());
        let mut buf = Vec::with_capacity(2 + 64);
        let mut scored: Vec<(f64, u32)> = self
            .c
            .ids
            .iter()
            .zip(&self.c.weights)
            .enumerate()
            .map(|(i, (id, &w))| {
                buf.clear();
                buf.extend_from_slice(&p.to_le_bytes());
                buf.extend_from_slice(id.as_bytes());
                (score(xxh3_64(&buf), w), i as u32)
            })
            .collect();
        let ids = &self.c.ids;
        let order = |a: &(f64, u32), b: &(f64, u32)| {
            b.0.total_cmp(&a.0).then_with(|| {
                ids[a.1 as usize]
                    .as_bytes()
                    .cmp(ids[b.1 as usize].as_bytes())
            })
        };
        scored.sort_by(order);
        scored.truncate(n);
        scored.into_iter().map(|s| s.1).collect()
    }
}

/// Consistent-hash ring with `vnodes × weight` points per set; lookup by binary search.
pub struct Ring {
    points: Vec<(u64, u32)>,
    sets: usize,
}

impl Ring {
    pub fn new(c: &Candidates, vnodes: u32) -> Self {
        let mut points = Vec::new();
        for (i, (id, &w)) in c.ids.iter().zip(&c.weights).enumerate() {
            let count = ((vnodes as f64 * w).round() as usize).max(1);
            assert!(points.len() + count <= MAX_RING_POINTS, "ring too large");
            let mut buf = Vec::with_capacity(id.len() + 5);
            for v in 0..count as u32 {
                buf.clear();
                buf.extend_from_slice(id.as_bytes());
                buf.push(b'#');
                buf.extend_from_slice(&v.to_le_bytes());
                points.push((xxh3_64(&buf), i as u32));
            }
        }
        points.sort_unstable();
        Ring {
            points,
            sets: c.ids.len(),
        }
    }
}

impl Placement for Ring {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn owners(&self, p: u16, n: usize) -> Vec<u32> {
        assert!(n >= 1 && n <= self.sets);
        let pos = xxh3_64(&p.to_le_bytes());
        let start = self.points.partition_point(|&(h, _)| h < pos);
        let mut out = Vec::with_capacity(n);
        for k in 0..self.points.len() {
            let s = self.points[(start + k) % self.points.len()].1;
            if !out.contains(&s) {
                out.push(s);
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }
}

/// Jump consistent hash over the sets in topology order (ignores weights; adding a set at the
/// end moves the minimum, removing one in the middle does not).
pub struct Jump {
    sets: usize,
}

impl Jump {
    pub fn new(c: &Candidates) -> Self {
        assert!(!c.ids.is_empty());
        Jump { sets: c.ids.len() }
    }

    /// Lamping & Veach's jump hash: the bucket of `key` among `n`.
    pub fn bucket(mut key: u64, n: usize) -> u32 {
        let (mut b, mut j): (i64, i64) = (-1, 0);
        while j < n as i64 {
            b = j;
            key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
            j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
        }
        b as u32
    }
}

impl Placement for Jump {
    fn name(&self) -> &'static str {
        "jump"
    }

    fn owners(&self, p: u16, n: usize) -> Vec<u32> {
        assert!(n >= 1 && n <= self.sets);
        let mut out = Vec::with_capacity(n);
        // Replicas: re-hash with growing seeds; bounded, then fill in order.
        for seed in 0..(64 * n as u64) {
            let b = Self::bucket(xxh3_64_with_seed(&p.to_le_bytes(), seed), self.sets);
            if !out.contains(&b) {
                out.push(b);
                if out.len() == n {
                    return out;
                }
            }
        }
        for b in 0..self.sets as u32 {
            if out.len() == n {
                break;
            }
            if !out.contains(&b) {
                out.push(b);
            }
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Rendezvous,
    Ring,
    Jump,
}

pub fn build(strategy: Strategy, c: &Candidates, vnodes: u32) -> Box<dyn Placement> {
    match strategy {
        Strategy::Rendezvous => Box::new(Rendezvous::new(c.clone())),
        Strategy::Ring => Box::new(Ring::new(c, vnodes)),
        Strategy::Jump => Box::new(Jump::new(c)),
    }
}

/// Owners of every partition, computed once per topology: lookups are an array index.
pub struct PartitionTable {
    pub candidates: Candidates,
    pub replicas: usize,
    /// `replicas` set numbers per partition, best first.
    owners: Vec<u32>,
}

impl PartitionTable {
    /// Builds on all CPUs (65,536 × sets scores).
    pub fn build(t: &Topology, strategy: Strategy, vnodes: u32) -> Self {
        let c = Candidates::of(t);
        let r = t.replicas as usize;
        let placement = build(strategy, &c, vnodes);
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 16);
        let mut owners = vec![0u32; PARTITIONS * r];
        let per = PARTITIONS.div_ceil(threads);
        std::thread::scope(|s| {
            for (k, chunk) in owners.chunks_mut(per * r).enumerate() {
                let pl = &placement;
                s.spawn(move || {
                    for (i, slot) in chunk.chunks_mut(r).enumerate() {
                        let p = (k * per + i) as u16;
                        pl.fill(p, slot);
                    }
                });
            }
        });
        PartitionTable {
            candidates: c,
            replicas: r,
            owners,
        }
    }

    pub fn owners(&self, p: u16) -> &[u32] {
        let i = p as usize * self.replicas;
        &self.owners[i..i + self.replicas]
    }

    pub fn owner(&self, p: u16) -> u32 {
        self.owners[p as usize * self.replicas]
    }

    pub fn owner_id(&self, p: u16) -> &str {
        &self.candidates.ids[self.owner(p) as usize]
    }

    /// Primary partitions per set (indexed like `candidates`).
    pub fn counts(&self) -> Vec<u64> {
        let mut v = vec![0u64; self.candidates.ids.len()];
        for p in 0..PARTITIONS {
            v[self.owner(p as u16) as usize] += 1;
        }
        v
    }

    /// Hottest set against its fair share: max over sets of partitions / (share × 65,536).
    pub fn hottest_vs_fair(&self) -> f64 {
        let total: f64 = self.candidates.weights.iter().sum();
        self.counts()
            .iter()
            .zip(&self.candidates.weights)
            .map(|(&n, &w)| n as f64 / (w / total * PARTITIONS as f64))
            .fold(0.0, f64::max)
    }
}
