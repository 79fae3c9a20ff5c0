//! Assignment of the 65,536 placement partitions to live members, behind one trait.
//!
//! - `hash` (consistent hash with affinity): a partition keeps its previous owner while that
//!   member is alive and under its fair quota; the others go to the best member by rendezvous
//!   hash (xxh3 of partition and member name) that is still under quota. Balanced within ±1 and
//!   only the partitions balance requires move (3 → 4 members: 1/4 of them).
//! - `round-robin`: partition p to member p mod N (by name): every member within ±1, but a
//!   change of N moves nearly everything.
//! - `weighted`: weighted rendezvous (score = -weight / ln u): shares follow member weights,
//!   and a change moves only what the weights ask for.

use crate::cluster::PARTITIONS;
use xxhash_rust::xxh3::xxh3_64;

/// No owner (released during a hand-over).
pub const NONE: u16 = u16::MAX;

/// A live member as the strategies see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub name: String,
    pub weight: f64,
    /// Which run of the agent this is: its member key's create revision (strategies ignore it).
    pub incarnation: i64,
}

pub trait Strategy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Owner (index into `members`, sorted by name) of every partition. `prev`: the previous
    /// owners by name (None: unowned), which a sticky strategy keeps where it can.
    fn assign(&self, members: &[Member], prev: &dyn Fn(u16) -> Option<String>) -> Vec<u16>;
}

/// Each member's rendezvous seed (hashed once per assignment, not once per partition).
fn seeds(members: &[Member]) -> Vec<u64> {
    members.iter().map(|m| xxh3_64(m.name.as_bytes())).collect()
}

/// Rendezvous hash of partition `p` for the member with `seed`: a 64-bit finalizer (splitmix64)
/// over seed and partition; 65,536 × 200 of them take milliseconds, not the allocation and
/// hash of a key each.
fn rendezvous(p: u16, seed: u64) -> u64 {
    let mut z = seed ^ (p as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fair share of each member, summing to PARTITIONS (largest remainder).
pub fn quotas(members: &[Member]) -> Vec<usize> {
    let total: f64 = members.iter().map(|m| m.weight.max(0.0)).sum();
    if members.is_empty() {
        return vec![];
    }
    let share = |m: &Member| {
        if total > 0.0 {
            m.weight.max(0.0) / total * PARTITIONS as f64
        } else {
            PARTITIONS as f64 / members.len() as f64
        }
    };
    let mut q: Vec<usize> = members.iter().map(|m| share(m).floor() as usize).collect();
    let mut rest: Vec<(f64, usize)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (share(m) - q[i] as f64, i))
        .collect();
    rest.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let short = PARTITIONS - q.iter().sum::<usize>();
    for (_, i) in rest.into_iter().cycle().take(short) {
        q[i] += 1;
    }
    q
}

pub struct ConsistentHash;

impl Strategy for ConsistentHash {
    fn name(&self) -> &'static str {
        "hash"
    }

    fn assign(&self, members: &[Member], prev: &dyn Fn(u16) -> Option<String>) -> Vec<u16> {
        let equal: Vec<Member> = members
            .iter()
            .map(|m| Member {
                weight: 1.0,
                ..m.clone()
            })
            .collect();
        let quota = quotas(&equal);
        let mut load = vec![0usize; members.len()];
        let mut owners = vec![NONE; PARTITIONS];
        // Affinity first: keep the previous owner while it is alive and under quota.
        for (p, o) in owners.iter_mut().enumerate() {
            if let Some(name) = prev(p as u16)
                && let Ok(i) = members.binary_search_by(|m| m.name.as_str().cmp(&name))
                && load[i] < quota[i]
            {
                *o = i as u16;
                load[i] += 1;
            }
        }
        // The rest: best rendezvous score among members with room.
        let seed = seeds(members);
        for (p, o) in owners.iter_mut().enumerate() {
            if *o != NONE {
                continue;
            }
            let best = (0..members.len())
                .filter(|&i| load[i] < quota[i])
                .max_by_key(|&i| (rendezvous(p as u16, seed[i]), std::cmp::Reverse(i)))
                .expect("quotas sum to PARTITIONS");
            *o = best as u16;
            load[best] += 1;
        }
        owners
    }
}

pub struct RoundRobin;

impl Strategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn assign(&self, members: &[Member], _prev: &dyn Fn(u16) -> Option<String>) -> Vec<u16> {
        (0..PARTITIONS)
            .map(|p| (p % members.len()) as u16)
            .collect()
    }
}

pub struct Weighted;

impl Strategy for Weighted {
    fn name(&self) -> &'static str {
        "weighted"
    }

    fn assign(&self, members: &[Member], _prev: &dyn Fn(u16) -> Option<String>) -> Vec<u16> {
        use crate::cluster::placement::{score, unit};
        let seed = seeds(members);
        (0..PARTITIONS)
            .map(|p| {
                let mut best = (f64::NEG_INFINITY, 0usize);
                for (i, m) in members.iter().enumerate() {
                    let h = rendezvous(p as u16, seed[i]);
                    // score = w / -ln u <= w / (1 - u): most members lose without the ln
                    if m.weight / (1.0 - unit(h)) <= best.0 {
                        continue;
                    }
                    let s = score(h, m.weight);
                    if s > best.0 {
                        best = (s, i);
                    }
                }
                best.1 as u16
            })
            .collect()
    }
}

/// The strategy named `name` (the config's `strategy`).
pub fn by_name(name: &str) -> Result<Box<dyn Strategy>, String> {
    match name {
        "hash" => Ok(Box::new(ConsistentHash)),
        "round-robin" => Ok(Box::new(RoundRobin)),
        "weighted" => Ok(Box::new(Weighted)),
        other => Err(format!(
            "unknown assignment strategy '{other}' (use hash, round-robin, weighted)"
        )),
    }
}

/// Partitions per member.
pub fn counts(owners: &[u16], members: usize) -> Vec<u64> {
    let mut c = vec![0u64; members];
    for &o in owners {
        if (o as usize) < members {
            c[o as usize] += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        let mut v: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("node{i:03}"),
                weight: 1.0,
                incarnation: 1,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn names<'a>(m: &'a [Member], owners: &'a [u16]) -> impl Fn(u16) -> Option<String> + 'a {
        move |p| Some(m[owners[p as usize] as usize].name.clone())
    }

    fn moved(a: &[Member], oa: &[u16], b: &[Member], ob: &[u16]) -> f64 {
        let n = (0..PARTITIONS)
            .filter(|&p| a[oa[p] as usize].name != b[ob[p] as usize].name)
            .count();
        n as f64 / PARTITIONS as f64
    }

    #[test]
    fn hash_is_balanced_and_moves_only_what_balance_needs() {
        let s = ConsistentHash;
        for (from, to) in [(3, 4), (3, 5), (10, 11), (4, 3)] {
            let (a, b) = (members(from), members(to));
            let oa = s.assign(&a, &|_| None);
            let ob = s.assign(&b, &names(&a, &oa));
            let c = counts(&ob, to);
            let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(hi - lo <= 1, "{from}->{to}: {c:?}");
            let m = moved(&a, &oa, &b, &ob);
            // the least any balanced assignment must move
            let need = if to > from {
                (to - from) as f64 / to as f64
            } else {
                (from - to) as f64 / from as f64
            };
            assert!(m <= need + 0.0001, "{from}->{to}: moved {m}, needed {need}");
            if to == from + 1 {
                assert!(
                    m <= 1.0 / (from as f64 + 1.0) + 0.03,
                    "{from}->{to}: moved {m}"
                );
            }
            // affinity: of what could stay, everything stayed
            assert!((1.0 - m) / (1.0 - need) >= 0.80);
        }
        // deterministic
        let a = members(7);
        assert_eq!(s.assign(&a, &|_| None), s.assign(&a, &|_| None));
    }

    #[test]
    fn round_robin_within_one_and_weighted_follows_weights() {
        let m = members(7);
        let c = counts(&RoundRobin.assign(&m, &|_| None), 7);
        assert!(
            c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
            "{c:?}"
        );
        let mut w = members(3);
        w[0].weight = 2.0;
        let c = counts(&Weighted.assign(&w, &|_| None), 3);
        let share0 = c[0] as f64 / PARTITIONS as f64;
        assert!((share0 - 0.5).abs() < 0.02, "{c:?}");
        // weighted rendezvous: adding a member only takes partitions to it
        let oa = Weighted.assign(&members(3), &|_| None);
        let b = members(4);
        let ob = Weighted.assign(&b, &|_| None);
        let a = members(3);
        for p in 0..PARTITIONS {
            if a[oa[p] as usize].name != b[ob[p] as usize].name {
                assert_eq!(b[ob[p] as usize].name, "node003");
            }
        }
        assert_eq!(quotas(&members(3)).iter().sum::<usize>(), PARTITIONS);
        assert!(by_name("nope").is_err());
    }
}
