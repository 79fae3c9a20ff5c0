//! `ferry demo`: builds a sample tree, copies it with the default engine, checks the copy and
//! prints the speed. Everything happens in a temporary directory that is removed at the end.

use crate::spec::CopySpec;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Deterministic generator so every run builds the same tree.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// What the sample tree holds.
pub struct Shape {
    pub small_files: usize,
    pub dirs: usize,
    pub medium_files: usize,
    pub large_files: usize,
}

pub const DEFAULT_SHAPE: Shape = Shape {
    small_files: 4000,
    dirs: 40,
    medium_files: 16,
    large_files: 2,
};

/// Writes the sample tree under `root`; returns (files, bytes).
pub fn generate(root: &Path, shape: &Shape, seed: u64) -> std::io::Result<(u64, u64)> {
    let mut rng = XorShift(seed | 1);
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 8 << 20];
    let mut write = |p: PathBuf, len: usize, rng: &mut XorShift| -> std::io::Result<()> {
        let mut f = fs::File::create(p)?;
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n;
        }
        files += 1;
        bytes += len as u64;
        Ok(())
    };
    for d in 0..shape.dirs {
        fs::create_dir_all(root.join(format!("small/d{d:03}")))?;
    }
    for i in 0..shape.small_files {
        // 0 B to 64 KiB, skewed small like real trees.
        let len = (rng.next_u64() % 65536) as usize >> (rng.next_u64() % 4);
        let d = i % shape.dirs.max(1);
        write(root.join(format!("small/d{d:03}/f{i:05}")), len, &mut rng)?;
    }
    fs::create_dir_all(root.join("medium"))?;
    for i in 0..shape.medium_files {
        let len = (1 << 20) + (rng.next_u64() % (7 << 20)) as usize;
        write(root.join(format!("medium/m{i:03}.bin")), len, &mut rng)?;
    }
    fs::create_dir_all(root.join("large"))?;
    for i in 0..shape.large_files {
        write(root.join(format!("large/big{i}.bin")), 96 << 20, &mut rng)?;
    }
    std::os::unix::fs::symlink("medium/m000.bin", root.join("link-to-medium"))?;
    std::os::unix::fs::symlink("../large", root.join("small/link-to-large"))?;
    Ok((files, bytes))
}

/// Runs the demo; returns false when the copy was not identical.
pub fn run(spec_template: &CopySpec) -> Result<bool, String> {
    let base = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    let result = run_in(&base, spec_template);
    if let Err(e) = fs::remove_dir_all(&base) {
        eprintln!("ferry demo: could not remove {}: {e}", base.display());
    }
    result
}

fn run_in(base: &Path, spec_template: &CopySpec) -> Result<bool, String> {
    let src = base.join("src");
    let dst = base.join("dst");
    fs::create_dir_all(&src).map_err(|e| format!("create {}: {e}", src.display()))?;
    crate::outln!(
        "ferry demo: generating a sample tree in {} ...",
        src.display()
    );
    let (files, bytes) =
        generate(&src, &DEFAULT_SHAPE, 42).map_err(|e| format!("generate sample tree: {e}"))?;
    crate::outln!(
        "ferry demo: {} files, {:.1} MB; copying to {} ...",
        files,
        bytes as f64 / 1e6,
        dst.display()
    );
    let mut spec = spec_template.clone();
    spec.sources = vec![src.clone()];
    spec.dest = dst.clone();
    let report = crate::copy(spec).map_err(|e| e.to_string())?;
    for e in &report.errors {
        eprintln!("ferry: {e}");
    }
    crate::outln!("ferry demo: copied {}", report.summary());
    let diffs = crate::verify::compare_trees(&src, &dst);
    for d in diffs.iter().take(20) {
        eprintln!("ferry demo: MISMATCH {d}");
    }
    if diffs.is_empty() && report.ok() {
        crate::outln!(
            "ferry demo: verified: the copy is identical (content, modes, mtimes, links)"
        );
        Ok(true)
    } else {
        crate::outln!("ferry demo: {} differences found", diffs.len());
        Ok(false)
    }
}

/// Objects in the cluster demo, and their largest size.
const CLUSTER_OBJECTS: usize = 3000;
const CLUSTER_MAX_OBJECT: usize = 512 << 10;

/// The cluster demo: 4 disks (directories) filled by topology generation 1, a fifth disk joins
/// (generation 2), `rebalance` moves what changed owner while a reader keeps reading random
/// objects, then every object is checked at its owner.
pub fn run_cluster(spec_template: &CopySpec) -> Result<bool, String> {
    let base = std::env::temp_dir().join(format!("ferry-cluster-demo-{}", std::process::id()));
    let result = cluster_in(&base, spec_template);
    if let Err(e) = fs::remove_dir_all(&base) {
        eprintln!("ferry demo: could not remove {}: {e}", base.display());
    }
    result
}

fn topology_json(generation: u64, disks: &[std::path::PathBuf]) -> serde_json::Value {
    let sets: Vec<serde_json::Value> = disks
        .iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({"id": format!("set{}", i + 1), "state": "active", "weight": 1.0,
                "disks": [{"id": format!("disk{}", i + 1), "path": p}]})
        })
        .collect();
    serde_json::json!({"generation": generation, "pools": [{"id": "demo", "sets": sets}]})
}

fn err(what: &str, e: &dyn std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The demo's objects: (key, xxh3 of its bytes).
type Objects = Vec<(String, u64)>;

fn cluster_in(base: &Path, spec_template: &CopySpec) -> Result<bool, String> {
    use crate::cluster::rebalance;
    use crate::cluster::store::Placed;
    let disks: Vec<_> = (1..=5).map(|i| base.join(format!("disk{i}"))).collect();
    for d in &disks {
        fs::create_dir_all(d).map_err(|e| err("create disk", &e))?;
    }
    let (f1, f2) = (base.join("gen1.json"), base.join("gen2.json"));
    fs::write(&f1, topology_json(1, &disks[..4]).to_string())
        .map_err(|e| err("write topology", &e))?;
    fs::write(&f2, topology_json(2, &disks).to_string()).map_err(|e| err("write topology", &e))?;
    let load = |f: &Path| crate::cluster::Topology::load(f).map_err(|e| err("topology", &e));
    let (g1, g2) = (Placed::new(load(&f1)?), Placed::new(load(&f2)?));
    let objects = fill(&g1)?;
    let state = base.join("state");
    let mut opts = rebalance::Options::new(f1, f2, state.join("registry.redb"));
    opts.init_disks = true; // new disks: each gets its identity file first
    let mut spec = spec_template.clone();
    spec.state_dir = Some(state);
    let mut handles = None;
    let t0 = std::time::Instant::now();
    let h = crate::Job::start_with(|| {
        let (p, cluster, counters) = rebalance::prepare(&opts, spec)?;
        handles = Some((cluster, counters));
        Ok(p)
    })
    .and_then(crate::job::ctl::serve_job)
    .map_err(|e| err("rebalance", &e))?;
    let (cluster, counters) = handles.expect("set by prepare");
    let (reads, bad_reads) = read_while_moving(&h, &cluster, &counters, &objects);
    let report = h.wait();
    let secs = t0.elapsed().as_secs_f64();
    for e in &report.errors {
        eprintln!("ferry: {e}");
    }
    let bad = misplaced(&objects, &g2, &disks);
    let ideal = 0.2; // a fifth equal disk should receive a fifth of the data
    let moved = report.files as f64 / objects.len() as f64;
    crate::outln!(
        "ferry demo: rebalanced {} objects, {:.1} MB in {:.2}s ({:.1} MB/s); moved {:.1}% of the objects (ideal {:.1}%, ratio {:.2})",
        report.files,
        report.bytes as f64 / 1e6,
        secs,
        report.bytes as f64 / 1e6 / secs.max(1e-9),
        moved * 100.0,
        ideal * 100.0,
        moved / ideal
    );
    crate::outln!("ferry demo: {reads} reads during the move, {bad_reads} failed");
    let ok = report.ok() && bad == 0 && bad_reads == 0;
    if ok {
        crate::outln!("ferry demo: verified: every object is once, at its owner, intact");
    }
    Ok(ok)
}

/// Fill: mixed sizes (1 KiB .. 512 KiB, log-uniform), placed by generation 1.
fn fill(g1: &crate::cluster::store::Placed) -> Result<Objects, String> {
    use crate::cluster::store::object_path;
    let mut rng = XorShift(7);
    let mut objects = Vec::with_capacity(CLUSTER_OBJECTS);
    let mut total = 0u64;
    let mut buf = vec![0u8; CLUSTER_MAX_OBJECT];
    for i in 0..CLUSTER_OBJECTS {
        let key = format!("photos/{:02}/img{i:05}.jpg", i % 32);
        let size = (1024f64 * 512f64.powf((rng.next_u64() % 1000) as f64 / 1000.0)) as usize;
        rng.fill(&mut buf[..size]);
        let p = crate::cluster::partition_of(b"demo", key.as_bytes());
        let path = object_path(&g1.owner(p).path, "demo", key.as_bytes());
        fs::create_dir_all(crate::meta::parent_dir(&path)).map_err(|e| err("mkdir", &e))?;
        fs::write(&path, &buf[..size]).map_err(|e| err("write object", &e))?;
        objects.push((key, xxhash_rust::xxh3::xxh3_64(&buf[..size])));
        total += size as u64;
    }
    // The fill's dirty pages go to disk now, not inside the rebalance's first syncfs.
    // SAFETY: plain syscall.
    unsafe { libc::sync() };
    crate::outln!(
        "ferry demo: cluster of 4 disks holds {} objects, {:.1} MB (generation 1); adding a fifth disk (generation 2)",
        objects.len(),
        total as f64 / 1e6
    );
    Ok(objects)
}

/// A reader reads random objects for as long as the move runs (progress every 0.5 s); the
/// reads served and how many of them were wrong.
fn read_while_moving(
    h: &crate::JobHandle,
    cluster: &crate::cluster::store::Cluster,
    counters: &crate::cluster::rebalance::Counters,
    objects: &Objects,
) -> (u64, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = AtomicBool::new(false);
    let (reads, bad_reads) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut rng = XorShift(99);
            while !stop.load(Ordering::Acquire) {
                let (k, h) = &objects[(rng.next_u64() % objects.len() as u64) as usize];
                match cluster.get("demo", k.as_bytes()) {
                    Ok(Some(d)) if xxhash_rust::xxh3::xxh3_64(&d) == *h => {}
                    _ => {
                        bad_reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        });
        while !h.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let p = h.status();
            crate::outln!(
                "ferry demo:   {}: {}/{} objects moved, {:.1} MB, {} reads served meanwhile",
                if p.state.name() == "running" {
                    "migrating"
                } else {
                    p.state.name()
                },
                p.files,
                counters.misplaced.load(Ordering::Relaxed),
                p.bytes as f64 / 1e6,
                reads.load(Ordering::Relaxed)
            );
        }
        stop.store(true, Ordering::Release);
    });
    (reads.into_inner(), bad_reads.into_inner())
}

/// Every object exactly once, at its owner under generation 2, with its bytes: how many are
/// not (the first ten are named).
fn misplaced(
    objects: &Objects,
    g2: &crate::cluster::store::Placed,
    disks: &[std::path::PathBuf],
) -> usize {
    use crate::cluster::store::object_path;
    let mut bad = 0;
    for (k, hash) in objects {
        let p = crate::cluster::partition_of(b"demo", k.as_bytes());
        let owner = g2.owner(p);
        let copies = disks
            .iter()
            .filter(|d| object_path(d, "demo", k.as_bytes()).exists())
            .count();
        let ok = fs::read(object_path(&owner.path, "demo", k.as_bytes()))
            .is_ok_and(|d| xxhash_rust::xxh3::xxh3_64(&d) == *hash);
        if copies != 1 || !ok {
            bad += 1;
            if bad <= 10 {
                eprintln!("ferry demo: MISPLACED or damaged: demo/{k} ({copies} copies)");
            }
        }
    }
    bad
}
