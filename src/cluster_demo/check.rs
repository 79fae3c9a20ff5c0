//! What the demo's rebalance should move (the ideal: the objects whose owner changed) and the
//! proof it did: every disk walked, every object found exactly once, at its owner under the
//! new topology, with the bytes its client last wrote, and nothing else there.

use super::load::{BUCKET, Expected};
use crate::cluster::Topology;
use crate::cluster::placement::partition_of;
use crate::cluster::store::{Placed, object_path, walk_objects};
use std::collections::HashMap;

pub struct Ideal {
    pub objects: u64,
    pub bytes: u64,
}

/// The objects (and bytes) of `want` whose owner differs between `from` and `to`.
pub fn ideal(from: &Topology, to: &Topology, want: &Expected) -> Ideal {
    let (a, b) = (Placed::new(from.clone()), Placed::new(to.clone()));
    let mut i = Ideal {
        objects: 0,
        bytes: 0,
    };
    for (k, (_, size)) in want {
        let p = partition_of(BUCKET.as_bytes(), k.as_bytes());
        if a.owner_key(p) != b.owner_key(p) {
            i.objects += 1;
            i.bytes += size;
        }
    }
    i
}

/// Ok when every object of `want` is once at its owner under `t` with its bytes, and no disk
/// holds an object nobody wrote; else the first few problems.
pub fn verify(t: &Topology, want: &Expected) -> Result<(), String> {
    let placed = Placed::new(t.clone());
    let mut at: HashMap<String, Vec<String>> = HashMap::new();
    let mut errors = Vec::new();
    for s in t.sets() {
        for d in &s.disks {
            walk_objects(&d.path, &mut errors, &mut |b, k, _| {
                if b == BUCKET {
                    let k = String::from_utf8_lossy(k).into_owned();
                    at.entry(k).or_default().push(format!("{}/{}", s.id, d.id));
                }
            });
        }
    }
    for (k, &(hash, _)) in want {
        let p = partition_of(BUCKET.as_bytes(), k.as_bytes());
        let owner = placed.owner_key(p);
        match at.remove(k) {
            Some(v) if v == [owner.clone()] => {
                let path = object_path(&placed.owner(p).path, BUCKET, k.as_bytes());
                match std::fs::read(&path) {
                    Ok(b) if xxhash_rust::xxh3::xxh3_64(&b) == hash => {}
                    Ok(_) => errors.push(format!("{k}: other bytes at {owner}")),
                    Err(e) => errors.push(format!("{k}: read '{}': {e}", path.display())),
                }
            }
            Some(v) => errors.push(format!("{k}: on {v:?}, its owner is {owner}")),
            None => errors.push(format!("{k}: on no disk (owner {owner})")),
        }
    }
    // Keys whose last write failed were left out of `want`; anything else is extra.
    let extra = at.len();
    if errors.is_empty() && extra == 0 {
        return Ok(());
    }
    let mut m = format!("{} problems", errors.len());
    if extra > 0 {
        m += &format!(", {extra} objects nobody wrote");
    }
    errors.truncate(5);
    Err(format!("{m}: {}", errors.join("; ")))
}
