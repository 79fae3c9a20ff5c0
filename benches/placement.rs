//! Placement: owner lookup (computed and from the partition table) and table build, for the
//! three strategies at 100 equal sets.

use criterion::{Criterion, criterion_group, criterion_main};
use ferry::cluster::placement::{Candidates, PartitionTable, Strategy, build};
use ferry::cluster::{Topology, partition_of};
use std::hint::black_box;

fn sets(n: usize) -> Topology {
    let sets: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"set{i:03}","state":"active","weight":1.0,"disks":[{{"id":"d{i}","path":"/x/{i}"}}]}}"#
            )
        })
        .collect();
    Topology::parse(
        format!(
            r#"{{"generation":1,"pools":[{{"id":"p","sets":[{}]}}]}}"#,
            sets.join(",")
        )
        .as_bytes(),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let t = sets(100);
    let cands = Candidates::of(&t);
    c.bench_function("partition_of (bucket/key xxh3)", |b| {
        b.iter(|| partition_of(black_box(b"photos"), black_box(b"2026/11/22/cat.jpg")))
    });
    for s in [Strategy::Rendezvous, Strategy::Ring, Strategy::Jump] {
        let pl = build(s, &cands, 150);
        let mut p = 0u16;
        c.bench_function(&format!("{s:?} owner computed, 100 sets"), |b| {
            b.iter(|| {
                p = p.wrapping_add(7919);
                pl.owner(black_box(p))
            })
        });
        let table = PartitionTable::build(&t, s, 150);
        c.bench_function(&format!("{s:?} owner from table"), |b| {
            b.iter(|| {
                p = p.wrapping_add(7919);
                table.owner(black_box(p))
            })
        });
        let mut g = c.benchmark_group("table build");
        g.sample_size(10);
        g.bench_function(format!("{s:?} 100 sets"), |b| {
            b.iter(|| PartitionTable::build(black_box(&t), s, 150))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
