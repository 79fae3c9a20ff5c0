//! Engine building blocks: the task queue across threads and xxh3 per buffer size.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry::queue::TaskQueues;
use std::hint::black_box;
use std::sync::Arc;

fn queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("push+pop 100k, 2 threads", |b| {
        b.iter(|| {
            let q = Arc::new(TaskQueues::new(2, 4096));
            let hs: Vec<_> = (0..2)
                .map(|me| {
                    let q = q.clone();
                    std::thread::spawn(move || {
                        for i in 0..50_000u64 {
                            q.push_local(me, i);
                            if let Some(v) = q.pop(me) {
                                black_box(v);
                                q.finish();
                            }
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            while q.pop(0).is_some() {
                q.finish();
            }
        })
    });
    g.finish();
}

fn xxh3(c: &mut Criterion) {
    let mut g = c.benchmark_group("xxh3");
    for size in [4usize << 10, 64 << 10, 512 << 10, 4 << 20] {
        let buf = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &buf, |b, buf| {
            b.iter(|| xxhash_rust::xxh3::xxh3_64(black_box(buf)))
        });
    }
    g.finish();
}

criterion_group!(benches, queue, xxh3);
criterion_main!(benches);
