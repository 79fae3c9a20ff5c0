//! Placement v1 pinned by golden vectors from an independent implementation
//! (scripts/placement_golden.py, Python + the xxhash package), plus the movement and balance
//! properties the rebalance engine relies on, and `ferry plan` end to end.

mod common;
use ferry::cluster::placement::{Candidates, PARTITIONS, PartitionTable, Strategy, disk_in_set};
use ferry::cluster::{Topology, partition_of};

/// (bucket, key, partition, owner sets best first, primary disk): produced by
/// `scripts/placement_golden.py tests/data/golden-topology.json`. Never edit to make a test pass.
const GOLDEN: &[(&str, &str, u16, [&str; 2], &str)] = &[
    ("photos", "cat.jpg", 34548, ["set-b", "set-a"], "b1"),
    ("b", "", 39430, ["set-b", "set-a"], "b1"),
    ("bucket", "a/b/c.txt", 37435, ["set-c", "set-a"], "c0"),
    ("logs", "2026/11/22/x.log", 40592, ["set-b", "set-c"], "b0"),
    ("media", "vidéo/été.mp4", 57797, ["set-c", "set-a"], "c0"),
    ("data", "0", 31094, ["set-a", "set-b"], "a0"),
    ("data", "1", 44562, ["set-a", "set-b"], "a1"),
    ("data", "2", 22664, ["set-a", "set-c"], "a1"),
    (
        "archive",
        "deep/er/than/you/think.tar",
        23227,
        ["set-b", "set-a"],
        "b0",
    ),
    ("z", "-leading-dash", 62236, ["set-c", "set-b"], "c0"),
    ("obj", "with space", 47281, ["set-b", "set-c"], "b2"),
];

fn golden_topology() -> Topology {
    Topology::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/golden-topology.json"
    )))
    .unwrap()
}

#[test]
fn golden_vectors_match_the_independent_implementation() {
    let t = golden_topology();
    let table = PartitionTable::build(&t, Strategy::Rendezvous, 150);
    for &(bucket, key, part, owners, disk) in GOLDEN {
        let p = partition_of(bucket.as_bytes(), key.as_bytes());
        assert_eq!(p, part, "partition of {bucket}/{key}");
        let got: Vec<&str> = table
            .owners(p)
            .iter()
            .map(|&i| table.candidates.ids[i as usize].as_str())
            .collect();
        assert_eq!(got, owners, "owners of {bucket}/{key}");
        let set = t.set(owners[0]).unwrap();
        assert_eq!(
            set.disks[disk_in_set(p, set)].id,
            disk,
            "disk of {bucket}/{key}"
        );
    }
    // The 200-byte key too.
    let long = "y".repeat(200);
    let p = partition_of(b"x", long.as_bytes());
    assert_eq!(p, 64803);
    assert_eq!(table.owner_id(p), "set-b");
}

fn equal_sets(n: usize, generation: u64) -> Topology {
    let disk = |i: usize, k: usize| (format!("s{i}d{k}"), format!("/x/{i}/{k}").into());
    let sets = (0..n)
        .map(|i| (format!("set{i:03}"), vec![disk(i, 0), disk(i, 1)]))
        .collect();
    ferry::cluster::topology::uniform(generation, sets).unwrap()
}

#[test]
fn adding_one_set_moves_about_one_share_and_only_to_the_new_set() {
    for n in [1usize, 4, 9, 16] {
        let (a, b) = (equal_sets(n, 1), equal_sets(n + 1, 2));
        let (ta, tb) = (
            PartitionTable::build(&a, Strategy::Rendezvous, 150),
            PartitionTable::build(&b, Strategy::Rendezvous, 150),
        );
        let new_id = format!("set{n:03}");
        let mut moved = 0usize;
        for p in 0..=u16::MAX {
            if ta.owner_id(p) != tb.owner_id(p) {
                moved += 1;
                assert_eq!(
                    tb.owner_id(p),
                    new_id,
                    "partition {p} moved between old sets"
                );
            }
        }
        let ideal = PARTITIONS as f64 / (n + 1) as f64;
        assert!(
            (moved as f64 - ideal).abs() <= 0.10 * ideal,
            "{n}->{}: moved {moved}, ideal {ideal:.0}",
            n + 1
        );
    }
}

#[test]
fn removing_a_set_moves_only_its_partitions() {
    let a = equal_sets(8, 1);
    let mut b = a.clone();
    b.generation = 2;
    b.pools[0].sets[3].state = ferry::cluster::SetState::Draining;
    let (ta, tb) = (
        PartitionTable::build(&a, Strategy::Rendezvous, 150),
        PartitionTable::build(&b, Strategy::Rendezvous, 150),
    );
    for p in 0..=u16::MAX {
        if ta.owner_id(p) != "set003" {
            assert_eq!(
                ta.owner_id(p),
                tb.owner_id(p),
                "partition {p} moved needlessly"
            );
        } else {
            assert_ne!(tb.owner_id(p), "set003");
        }
    }
}

#[test]
fn sixty_four_equal_sets_are_balanced() {
    let t = equal_sets(64, 1);
    let table = PartitionTable::build(&t, Strategy::Rendezvous, 150);
    let h = table.hottest_vs_fair();
    assert!(h <= 1.15, "hottest set is {h:.3}x its fair share");
}

#[test]
fn weights_are_respected() {
    let t = golden_topology();
    let table = PartitionTable::build(&t, Strategy::Rendezvous, 150);
    let c = table.counts();
    let total: f64 = table.candidates.weights.iter().sum();
    for (i, &n) in c.iter().enumerate() {
        let fair = table.candidates.weights[i] / total * PARTITIONS as f64;
        assert!(
            (n as f64 - fair).abs() < 0.05 * fair,
            "set {i}: {n} vs {fair:.0}"
        );
    }
}

#[test]
fn other_strategies_place_every_partition_on_distinct_active_sets() {
    let t = equal_sets(10, 1);
    let c = Candidates::of(&t);
    for s in [Strategy::Ring, Strategy::Jump, Strategy::Rendezvous] {
        let pl = ferry::cluster::placement::build(s, &c, 150);
        for p in (0..=u16::MAX).step_by(97) {
            let o = pl.owners(p, 3);
            assert_eq!(o.len(), 3);
            assert!(
                o[0] != o[1] && o[1] != o[2] && o[0] != o[2],
                "{s:?} {p}: {o:?}"
            );
            assert!(o.iter().all(|&i| (i as usize) < 10));
            assert_eq!(pl.owner(p), o[0]);
        }
    }
}

#[test]
fn plan_cli_reports_moves_and_rejects_bad_topologies() {
    let t = tempfile::tempdir().unwrap();
    let write = |name: &str, topo: &Topology| {
        let p = t.path().join(name);
        std::fs::write(&p, serde_json::to_vec(topo).unwrap()).unwrap();
        p
    };
    let old = write("old.json", &equal_sets(4, 1));
    let new = write("new.json", &equal_sets(5, 2));
    let out = common::ferry(&[
        "plan".as_ref(),
        "--from".as_ref(),
        old.as_os_str(),
        "--to".as_ref(),
        new.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let moved = v["moved_partitions"].as_u64().unwrap() as f64;
    assert!((moved - 65536.0 / 5.0).abs() < 0.1 * 65536.0 / 5.0);
    assert!((v["ideal_fraction"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    let rows = v["sets"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[4]["partitions_before"], 0);
    assert_eq!(rows[4]["gains"].as_u64().unwrap() as f64, moved);

    // Same generation: refused.
    let out = common::ferry(&[
        "plan".as_ref(),
        "--from".as_ref(),
        new.as_os_str(),
        "--to".as_ref(),
        new.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(common::stderr(&out).contains("generation"));
    // A bad field is named.
    let bad = t.path().join("bad.json");
    std::fs::write(
        &bad,
        br#"{"generation":9,"pools":[{"id":"p","sets":[{"id":"s","state":"active","weight":-2,"disks":[{"id":"d","path":"/x"}]}]}]}"#,
    )
    .unwrap();
    let out = common::ferry(&[
        "plan".as_ref(),
        "--from".as_ref(),
        old.as_os_str(),
        "--to".as_ref(),
        bad.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("pools[0].sets[0].weight"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn plan_scan_counts_misplaced_objects_on_disk() {
    let t = tempfile::tempdir().unwrap();
    let mk = |sets: &[(&str, &[&str])], generation: u64| {
        let sets: Vec<String> = sets
            .iter()
            .map(|(id, disks)| {
                let d: Vec<String> = disks
                    .iter()
                    .map(|d| format!(r#"{{"id":"{d}","path":"{}"}}"#, t.path().join(d).display()))
                    .collect();
                format!(
                    r#"{{"id":"{id}","state":"active","weight":1,"disks":[{}]}}"#,
                    d.join(",")
                )
            })
            .collect();
        Topology::parse(
            format!(
                r#"{{"generation":{generation},"pools":[{{"id":"p","sets":[{}]}}]}}"#,
                sets.join(",")
            )
            .as_bytes(),
        )
        .unwrap()
    };
    let old = mk(&[("s0", &["d0"])], 1);
    let new = mk(&[("s0", &["d0"]), ("s1", &["d1"])], 2);
    // 200 objects on d0 (the only disk before).
    for i in 0..200 {
        let p = t.path().join("d0/bkt").join(format!("dir{}", i % 7));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join(format!("o{i}")), vec![0u8; 100]).unwrap();
    }
    let table = PartitionTable::build(&new, Strategy::Rendezvous, 150);
    let rep = ferry::cluster::plan::scan(&old, &new, &table);
    let expect = (0..200)
        .filter(|i| {
            let key = format!("dir{}/o{i}", i % 7);
            table.owner_id(partition_of(b"bkt", key.as_bytes())) == "s1"
        })
        .count() as u64;
    assert_eq!(rep.objects, 200);
    assert_eq!(rep.misplaced_objects, expect);
    assert_eq!(rep.misplaced_bytes, expect * 100);
    assert!(
        expect > 60 && expect < 140,
        "about half should move: {expect}"
    );
    assert_eq!(rep.missing_disks, vec!["s1/d1".to_string()]);
}

#[test]
fn fast_selection_agrees_with_the_full_sort() {
    let mut t = equal_sets(12, 1);
    for (i, s) in t.pools[0].sets.iter_mut().enumerate() {
        s.weight = 0.5 + (i % 4) as f64;
    }
    let r = ferry::cluster::placement::Rendezvous::new(Candidates::of(&t));
    use ferry::cluster::Placement;
    for p in 0..=u16::MAX {
        let mut out = [0u32; 3];
        r.fill(p, &mut out);
        assert_eq!(out.to_vec(), r.owners_sorted(p, 3), "partition {p}");
        assert_eq!(r.owner(p), out[0]);
    }
}
