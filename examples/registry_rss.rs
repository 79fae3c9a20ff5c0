//! The registry's memory under a rebalance's sender load: N objects' locations, then one
//! non-durable `forward_many` per moved object (what `migrate::send_one` does), printing the
//! process's RSS as it goes. `cargo run --release --example registry_rss -- DIR N MOVES
//! [durable]`: with `durable`, each move is flushed at once (the receiver's
//! `peer::migrate::store`).

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
    let r = ferry::cluster::registry::Registry::open(&std::path::Path::new(dir).join("r.redb"))
        .unwrap();
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
}
