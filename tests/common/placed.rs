//! Where objects are on the disks of a topology, and the placement invariant the rebalance
//! tests check: every object exactly once, at its owner, with its bytes, and nothing else.

use ferry::cluster::store::{Placed, object_path, walk_objects};
use ferry::cluster::{Topology, partition_of};
use std::collections::HashMap;

/// Objects of `bucket` on every disk of `t`: key -> disks (`set/disk`) holding it.
pub fn where_is(t: &Topology, bucket: &str) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for s in t.sets() {
        for d in &s.disks {
            let mut errors = Vec::new();
            walk_objects(&d.path, &mut errors, &mut |b, k, _| {
                if b == bucket {
                    m.entry(String::from_utf8(k.to_vec()).unwrap())
                        .or_default()
                        .push(format!("{}/{}", s.id, d.id));
                }
            });
        }
    }
    m
}

/// Every object of `want` exactly once in `bucket`, at its owner under `t`, with its bytes;
/// no other object of the bucket on any disk of `t`.
pub fn assert_placed(t: &Topology, bucket: &str, want: &HashMap<String, Vec<u8>>) {
    let placed = Placed::new(t.clone());
    let at = where_is(t, bucket);
    let extra: Vec<&String> = at
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "objects nobody put (or deleted) exist: {extra:?}"
    );
    for (k, data) in want {
        let p = partition_of(bucket.as_bytes(), k.as_bytes());
        assert_eq!(
            at.get(k),
            Some(&vec![placed.owner_key(p)]),
            "{k}: once, at its owner"
        );
        let path = object_path(&placed.owner(p).path, bucket, k.as_bytes());
        assert_eq!(&std::fs::read(path).unwrap(), data, "{k}: its bytes");
    }
}
