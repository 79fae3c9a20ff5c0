//! A set of placement partitions (a 65,536-bit map) and the partition of a path: what a
//! cluster copy uses to give each agent the files it owns.

use serde::{Deserialize, Serialize};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const WORDS: usize = crate::cluster::PARTITIONS / 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSet {
    bits: Vec<u64>,
}

impl Default for PartSet {
    fn default() -> Self {
        PartSet {
            bits: vec![0; WORDS],
        }
    }
}

/// The partition of a file by its path below the copy's source root: the top 16 bits of
/// xxh3_64 of the path's bytes (seed 0).
pub fn path_partition(rel: &Path) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(rel.as_os_str().as_bytes()) >> 48) as u16
}

impl PartSet {
    pub fn all() -> PartSet {
        PartSet {
            bits: vec![u64::MAX; WORDS],
        }
    }

    pub fn of(ps: impl IntoIterator<Item = u16>) -> PartSet {
        let mut s = PartSet::default();
        ps.into_iter().for_each(|p| s.insert(p));
        s
    }

    pub fn insert(&mut self, p: u16) {
        self.bits[p as usize / 64] |= 1 << (p % 64);
    }

    pub fn contains(&self, p: u16) -> bool {
        self.bits
            .get(p as usize / 64)
            .is_some_and(|w| w >> (p % 64) & 1 == 1)
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn union(&mut self, o: &PartSet) {
        self.bits.iter_mut().zip(&o.bits).for_each(|(a, b)| *a |= b);
    }

    pub fn minus(&self, o: &PartSet) -> PartSet {
        PartSet {
            bits: self.bits.iter().zip(&o.bits).map(|(a, b)| a & !b).collect(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..crate::cluster::PARTITIONS as u32)
            .map(|p| p as u16)
            .filter(|&p| self.contains(p))
    }

    /// Compact text form (base64 of the little-endian words) for etcd values.
    pub fn to_text(&self) -> String {
        let b: Vec<u8> = self.bits.iter().flat_map(|w| w.to_le_bytes()).collect();
        crate::agent::http::b64_encode(&b)
    }

    pub fn from_text(s: &str) -> Result<PartSet, String> {
        let b = crate::agent::http::b64_decode(s)?;
        if b.len() != WORDS * 8 {
            return Err(format!("partition set of {} bytes", b.len()));
        }
        let bits = b
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(PartSet { bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_round_trip_and_paths_spread() {
        let s = PartSet::of([0, 1, 63, 64, 65535]);
        assert_eq!(s.len(), 5);
        assert!(s.contains(65535) && !s.contains(2));
        assert_eq!(PartSet::from_text(&s.to_text()).unwrap(), s);
        assert_eq!(PartSet::all().minus(&s).len(), 65531);
        // pinned: the partition of a path must never change between builds
        assert_eq!(
            path_partition(Path::new("a/b.txt")),
            path_partition(Path::new("a/b.txt"))
        );
        let distinct: std::collections::HashSet<u16> = (0..1000)
            .map(|i| path_partition(Path::new(&format!("d/f{i}"))))
            .collect();
        assert!(distinct.len() > 980);
    }
}
