//! Rebalance throughput against `ferry copy` of the same bytes on the same disks, and scan
//! speed. Not a test: prints numbers. `cargo bench --bench rebalance` (FERRY_BENCH_DIR picks the
//! filesystem, default the temp dir; FERRY_BENCH_OBJECTS the object count, default 20,000).

use ferry::cluster::rebalance::{self, Options};
use ferry::cluster::store::{Placed, object_path};
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

fn topo(generation: u64, disks: &[PathBuf]) -> serde_json::Value {
    let sets: Vec<_> = disks
        .iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({"id": format!("s{i}"), "state": "active", "weight": 1.0,
                "disks": [{"id": format!("d{i}"), "path": p}]})
        })
        .collect();
    serde_json::json!({"generation": generation, "pools": [{"id": "p", "sets": sets}]})
}

fn drop_caches() {
    // SAFETY: plain syscall.
    unsafe { libc::sync() };
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// One `rebalance g1.json -> g2.json` under `root`, to the end.
fn rebalance_once(root: &std::path::Path) -> (ferry::Report, std::sync::Arc<rebalance::Counters>) {
    let mut opts = Options::new(
        root.join("g1.json"),
        root.join("g2.json"),
        root.join("state/registry.redb"),
    );
    opts.init_disks = true; // the bench's disks are plain new directories
    let mut spec = ferry::CopySpec::new(vec![], PathBuf::new());
    spec.state_dir = Some(root.join("state"));
    let mut counters = None;
    let h = ferry::Job::start_with(|| {
        let (p, _, c) = rebalance::prepare(&opts, spec)?;
        counters = Some(c);
        Ok(p)
    })
    .unwrap();
    (h.wait(), counters.unwrap())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench probing for criterion-style benches
    }
    let root = std::env::var_os("FERRY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("ferry-rebalance-bench-{}", std::process::id()));
    let n: usize = std::env::var("FERRY_BENCH_OBJECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let runs = 3;
    let (mut reb, mut cop, mut scans) = (Vec::new(), Vec::new(), Vec::new());
    let mut moved_bytes = 0;
    for run in 0..runs {
        let _ = fs::remove_dir_all(&root);
        let disks: Vec<PathBuf> = (0..5).map(|i| root.join(format!("disk{i}"))).collect();
        for d in &disks {
            fs::create_dir_all(d).unwrap();
        }
        let (f1, f2) = (root.join("g1.json"), root.join("g2.json"));
        fs::write(&f1, topo(1, &disks[..4]).to_string()).unwrap();
        fs::write(&f2, topo(2, &disks).to_string()).unwrap();
        let g1 = Placed::new(ferry::cluster::Topology::load(&f1).unwrap());
        let g2 = Placed::new(ferry::cluster::Topology::load(&f2).unwrap());
        // Objects of 4 KiB .. 1 MiB (log-uniform); the ones that will move are also laid out
        // as a plain tree on the same disks, for `ferry copy` of exactly the same bytes.
        let mut rng = ferry::demo::XorShift(run as u64 + 1);
        let mut buf = vec![0u8; 1 << 20];
        let same = root.join("disk0/copy-src");
        for i in 0..n {
            let key = format!("k{:02}/o{i}", i % 64);
            let size = (4096f64 * 256f64.powf((rng.next_u64() % 1000) as f64 / 1000.0)) as usize;
            rng.fill(&mut buf[..size]);
            let p = ferry::cluster::partition_of(b"b", key.as_bytes());
            let path = object_path(&g1.owner(p).path, "b", key.as_bytes());
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &buf[..size]).unwrap();
            if g2.owner(p).id != g1.owner(p).id {
                let c = same.join(&key);
                fs::create_dir_all(c.parent().unwrap()).unwrap();
                fs::write(&c, &buf[..size]).unwrap();
            }
        }
        drop_caches();
        // ferry copy of the same bytes (disk0 -> disk4, like most moves: onto the new disk).
        let t0 = Instant::now();
        let mut spec = ferry::CopySpec::new(vec![same.clone()], root.join("disk4/copy-dst"));
        spec.verify = ferry::spec::VerifyMode::Full;
        let r = ferry::copy(spec).unwrap();
        assert!(r.ok());
        cop.push(t0.elapsed().as_secs_f64());
        fs::remove_dir_all(&same).unwrap();
        fs::remove_dir_all(root.join("disk4/copy-dst")).unwrap();
        drop_caches();
        let t0 = Instant::now();
        let (r, _) = rebalance_once(&root);
        assert!(r.ok(), "{:?}", r.errors);
        reb.push(t0.elapsed().as_secs_f64());
        moved_bytes = r.bytes;
        // Warm scan: a second rebalance finds nothing to move; its scan is pure walking.
        let (_, c) = rebalance_once(&root);
        let secs = *c.scan_secs.lock().unwrap();
        scans.push(c.scanned.load(std::sync::atomic::Ordering::Relaxed) as f64 / secs.max(1e-9));
        eprintln!(
            "run {run}: copy {:.2}s, rebalance {:.2}s, warm scan {:.0} objects/s",
            cop[run], reb[run], scans[run]
        );
    }
    let _ = fs::remove_dir_all(&root);
    let (c, r) = (median(cop), median(reb));
    println!(
        "{n} objects; {:.1} MB moved; cold, medians of {runs}: ferry copy (verify=full) {c:.2}s \
         {:.1} MB/s, rebalance {r:.2}s {:.1} MB/s = {:.0}% of copy; warm scan {:.0} objects/s",
        moved_bytes as f64 / 1e6,
        moved_bytes as f64 / 1e6 / c,
        moved_bytes as f64 / 1e6 / r,
        100.0 * c / r,
        median(scans)
    );
}
