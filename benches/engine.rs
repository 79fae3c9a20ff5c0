//! Engine building blocks: the task queue across threads, the token bucket, xxh3 per buffer
//! size, and the reactors' small-file loop on tmpfs (/dev/shm; skipped where it is missing).

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

fn token_bucket(c: &mut Criterion) {
    use ferry::coord::throttle::TokenBucket;
    let mut g = c.benchmark_group("token bucket");
    g.throughput(Throughput::Elements(1));
    let limited = TokenBucket::new(u64::MAX / 4, u64::MAX / 4);
    g.bench_function("try_take, limited", |b| {
        b.iter(|| black_box(limited.try_take(black_box(4096))))
    });
    let free = TokenBucket::unlimited();
    g.bench_function("try_take, unlimited", |b| {
        b.iter(|| black_box(free.try_take(black_box(4096))))
    });
    g.finish();
}

/// The whole engine on 2,000 x 4 KiB files, tmpfs to tmpfs: open, read, hash, write, group
/// commit, rename, metadata, per file.
fn small_files(c: &mut Criterion) {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("small-file bench skipped: no /dev/shm");
        return;
    }
    let root = shm.join(format!("ferry-bench-{}", std::process::id()));
    let src = root.join("src");
    for d in 0..20 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for i in 0..100 {
            std::fs::write(src.join(format!("d{d}/f{i}")), [i as u8; 4096]).unwrap();
        }
    }
    let mut g = c.benchmark_group("reactor");
    g.sample_size(20);
    g.throughput(Throughput::Elements(2000));
    let mut n = 0u64;
    g.bench_function("copy 2,000 x 4 KiB, tmpfs", |b| {
        b.iter(|| {
            n += 1;
            let dst = root.join(format!("dst{n}"));
            let r = ferry::copy(ferry::CopySpec::new(vec![src.clone()], dst.clone())).unwrap();
            assert_eq!(r.files, 2000);
            std::fs::remove_dir_all(&dst).unwrap();
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group!(benches, queue, token_bucket, xxh3, small_files);
criterion_main!(benches);
