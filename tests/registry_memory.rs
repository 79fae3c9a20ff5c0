//! The registry's memory is bounded by its page cache, not by the keys it holds: an agent
//! that read every location of a registry several times the cache's size holds no more
//! than about `REGISTRY_CACHE` more (one test in its own process, so RssAnon is its own).

use ferry::cluster::registry::{REGISTRY_CACHE, Registry};

fn rss_anon_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("RssAnon")
}

fn key(i: usize) -> Vec<u8> {
    format!("demo/d{:02}/obj{i:07}", i % 37).into_bytes()
}

#[test]
fn reading_a_registry_many_times_its_cache_holds_about_the_cache() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("r.redb");
    let n = 300_000;
    {
        let r = Registry::open(&path).unwrap();
        let mut batch = Vec::with_capacity(8192);
        for i in 0..n {
            batch.push((key(i), "s1/n1a".to_string()));
            if batch.len() == 8192 {
                r.set_locations(&batch, 1).unwrap();
                batch.clear();
            }
        }
        r.set_locations(&batch, 1).unwrap();
        r.flush().unwrap();
    }
    let file = std::fs::metadata(&path).unwrap().len();
    assert!(
        file > 3 * REGISTRY_CACHE as u64,
        "the registry ({file} bytes) is several times the cache"
    );
    // reopened: what a restarted agent holds, then every location read twice
    let r = Registry::open(&path).unwrap();
    let before = rss_anon_kb();
    for round in 0..2 {
        for i in (0..n).map(|i| (i * 7919 + round) % n) {
            let (disk, generation) = r.location(&key(i)).unwrap().expect("recorded");
            assert_eq!((disk.as_str(), generation), ("s1/n1a", 1));
        }
    }
    let grown = rss_anon_kb().saturating_sub(before) * 1024;
    let bound = REGISTRY_CACHE as u64 + (4 << 20);
    assert!(
        grown <= bound,
        "RssAnon grew {grown} bytes reading {n} locations (file {file}): over {bound}"
    );
}
