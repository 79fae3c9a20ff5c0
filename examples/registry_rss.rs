//! The registry's memory under a rebalance's sender load: N objects' locations, then one
//! non-durable `forward_many` per moved object (what `migrate::send_one` does), printing the
//! process's RSS as it goes. `cargo run --release --example registry_rss -- DIR N MOVES
//! [durable|-] [CACHE_MIB] [READS]`: with `durable`, each move is flushed at once (the
//! receiver's `peer::migrate::store`); CACHE_MIB sets redb's page cache (default
//! `REGISTRY_CACHE`); READS random `location` lookups are timed after the moves (what a
//! client's GET asks of the registry).

fn rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (dir, n, moves): (&str, usize, usize) =
        (&a[1], a[2].parse().unwrap(), a[3].parse().unwrap());
    let durable = a.get(4).is_some_and(|m| m == "durable");
    let cache = a
        .get(5)
        .map_or(ferry::cluster::registry::REGISTRY_CACHE, |m| {
            m.parse::<usize>().unwrap() << 20
        });
    let reads: usize = a.get(6).map_or(0, |m| m.parse().unwrap());
    let path = std::path::Path::new(dir).join("r.redb");
    let r = ferry::cluster::registry::Registry::open_with_cache(&path, cache).unwrap();
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push((
            format!("demo/d{:02}/obj{i:06}", i % 37).into_bytes(),
            "s1/n1a".to_string(),
        ));
        if batch.len() == 8192 {
            r.set_locations(&batch, 1).unwrap();
            batch.clear();
        }
    }
    r.set_locations(&batch, 1).unwrap();
    r.flush().unwrap();
    println!("{n} locations: RssAnon {} kB", rss_kb());
    for m in 0..moves {
        let i = m * 5;
        let k = format!("demo/d{:02}/obj{i:06}", i % 37).into_bytes();
        r.forward_many(&[(k, "s1/n1a".into(), "s5/n5a".into())], 2, 3600)
            .unwrap();
        if durable {
            r.flush().unwrap();
        }
        if (m + 1) % 10_000 == 0 {
            println!("{} moves: RssAnon {} kB", m + 1, rss_kb());
        }
    }
    let t = std::time::Instant::now();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut found = 0;
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % n.max(1) as u64) as usize;
        let k = format!("demo/d{:02}/obj{i:06}", i % 37).into_bytes();
        found += r.location(&k).unwrap().is_some() as usize;
    }
    if reads > 0 {
        let s = t.elapsed().as_secs_f64();
        println!(
            "{reads} random reads ({found} found): {:.1} us each, {:.0}/s; RssAnon {} kB",
            s * 1e6 / reads as f64,
            reads as f64 / s,
            rss_kb()
        );
    }
}
