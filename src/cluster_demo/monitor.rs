//! The demo's clock: client load for a baseline, then the fifth node's rebalance under the
//! same load, one line a second (and a CSV row: time, phase, client ops/s, client p99,
//! migration MB/s, the pace's limit), and the phases' totals for the report.

use super::Demo;
use super::check::Ideal;
use super::load::{Clients, Expected, Worker};
use crate::agent::etcd::EtcdStore;
use crate::agent::keys::Keys;
use hdrhistogram::Histogram;
use serde_json::Value;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const CSV_HEAD: &str = "t_s,phase,client_ops_s,client_p99_ms,migration_mb_s,pace_limit_mb_s";
pub const NODES_HEAD: &str = "t_s,node,state,limit_mb_s,requests,user_p99_us,user_target_us,disk_await_us,disk_target_us,verdict";

/// The nodes' pace rows of one second (`NODES_HEAD`).
fn node_rows(t: f64, r: &Value) -> String {
    let mut out = String::new();
    for n in r["nodes"].as_array().into_iter().flatten() {
        let u = |k: &str| n[k].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{t:.1},{},{},{:.1},{},{},{},{},{},{}\n",
            n["node"].as_str().unwrap_or("?"),
            n["state"].as_str().unwrap_or("?"),
            u("limit_bytes_s") as f64 / 1e6,
            u("requests"),
            u("user_p99_us"),
            u("user_target_us"),
            u("disk_await_us"),
            u("disk_target_us"),
            n["verdict"].as_str().unwrap_or("")
        ));
    }
    out
}

/// One phase's totals.
pub struct Phase {
    pub name: &'static str,
    pub secs: f64,
    pub ops: u64,
    pub latency: Histogram<u64>,
    pub moved_bytes: u64,
    /// The rebalance's record at the phase's end.
    pub rebalance: Value,
}

pub struct Phases {
    pub list: Vec<Phase>,
    pub reads: u64,
    pub writes: u64,
    pub failed_reads: u64,
    pub failed_writes: u64,
    pub errors: Vec<String>,
}

struct Clock {
    store: EtcdStore,
    keys: Keys,
    csv: Option<std::fs::File>,
    /// Beside the CSV: each node's pace verdict a second (`NODES_HEAD`).
    nodes: Option<std::fs::File>,
    t0: Instant,
    ops: u64,
    moved: u64,
}

/// The newest rebalance's record from etcd (Null before one).
fn rebalance(store: &EtcdStore, keys: &Keys) -> Value {
    crate::agent::cluster_cli::status_doc(store, keys)
        .map(|d| d["rebalance"].clone())
        .unwrap_or(Value::Null)
}

/// The pace's limits of the nodes still moving, summed (MB/s; "inf": one is unlimited).
fn limit(r: &Value) -> String {
    let mut sum = 0u64;
    for n in r["nodes"].as_array().into_iter().flatten() {
        if !matches!(n["state"].as_str(), Some("migrating" | "scanning")) {
            continue;
        }
        match n["limit_bytes_s"].as_u64() {
            Some(0) | None => return "inf".into(),
            Some(b) => sum += b,
        }
    }
    format!("{:.1}", sum as f64 / 1e6)
}

impl Clock {
    /// One second of `phase`: a line out, the window into `p`.
    fn tick(&mut self, c: &Clients, p: &mut Phase) {
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let h = c.tally.latency.take_histogram();
        let ops = c.tally.ops.load(Ordering::Relaxed);
        let r = rebalance(&self.store, &self.keys);
        let moved = r["bytes"].as_u64().unwrap_or(0);
        let secs = start.elapsed().as_secs_f64();
        let mig = moved.saturating_sub(self.moved) as f64 / 1e6 / secs;
        let ops_s = (ops - self.ops) as f64 / secs;
        let p99 = crate::latency::Quantiles::of(&h).p99 as f64 / 1000.0;
        let t = self.t0.elapsed().as_secs_f64();
        let row = format!(
            "{t:.1},{},{ops_s:.1},{p99:.2},{mig:.2},{}",
            p.name,
            limit(&r)
        );
        if let Some(f) = &mut self.csv {
            let _ = writeln!(f, "{row}");
        }
        if let Some(f) = &mut self.nodes {
            let _ = f.write_all(node_rows(t, &r).as_bytes());
        }
        if p.name != "baseline" || (t as u64).is_multiple_of(3) {
            println!(
                "  {t:5.1} s {:<9} client {ops_s:6.1} ops/s p99 {p99:6.2} ms | migration {mig:6.1} MB/s, {}/{} objects | pace limit {} MB/s",
                p.name,
                r["objects"],
                r["objects_total"],
                limit(&r)
            );
        }
        let _ = p.latency.add(&h);
        p.ops += ops - self.ops;
        p.secs += secs;
        p.moved_bytes += moved.saturating_sub(self.moved);
        p.rebalance = r;
        self.ops = ops;
        self.moved = moved;
    }
}

fn phase(name: &'static str) -> Phase {
    Phase {
        name,
        secs: 0.0,
        ops: 0,
        latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds"),
        moved_bytes: 0,
        rebalance: Value::Null,
    }
}

fn clients(d: &Demo, want: Expected) -> Result<Clients, String> {
    let n = d.opts.clients.max(1);
    let mut slices: Vec<Expected> = (0..n).map(|_| Expected::new()).collect();
    for (i, (k, v)) in want.into_iter().enumerate() {
        slices[i % n].insert(k, v);
    }
    let workers = slices
        .into_iter()
        .enumerate()
        .map(|(i, want)| Worker {
            addrs: d.s3[..super::NODES - 1].to_vec(),
            want,
            ops_s: d.opts.client_ops / n as f64,
            max: d.opts.max_size,
            seed: 1000 + i as u64,
        })
        .collect();
    Clients::start(workers)
}

/// The baseline, then the rebalance to the second topology, under client load; returns
/// what the clients last wrote and the phases.
pub fn observe(d: &mut Demo, want: Expected) -> Result<(Expected, Phases), String> {
    let store = EtcdStore::new(&d.procs.etcd_url, Duration::from_secs(2))?;
    let open = |p: &std::path::Path, head: &str| -> Result<std::fs::File, String> {
        let mut f =
            std::fs::File::create(p).map_err(|e| format!("create '{}': {e}", p.display()))?;
        writeln!(f, "{head}").map_err(|e| format!("write '{}': {e}", p.display()))?;
        Ok(f)
    };
    let csv = d
        .opts
        .csv
        .as_deref()
        .map(|p| open(p, CSV_HEAD))
        .transpose()?;
    let nodes = match &d.opts.csv {
        Some(p) => Some(open(&p.with_extension("nodes.csv"), NODES_HEAD)?),
        None => None,
    };
    let keys = Keys::new(super::CLUSTER)?;
    let mut clock = Clock {
        store,
        keys,
        csv,
        nodes,
        t0: Instant::now(),
        ops: 0,
        moved: 0,
    };
    let c = clients(d, want)?;
    println!(
        "client load: {} threads, {:.0} ops/s (90 % GET, 10 % PUT), over n1-n4",
        d.opts.clients, d.opts.client_ops
    );
    let mut base = phase("baseline");
    for _ in 0..d.opts.baseline_s {
        d.alive()?;
        clock.tick(&c, &mut base);
    }
    println!("adding node n5 (topology generation 2) and rebalancing under the same load");
    d.ferry(&["cluster", "apply", &d.topos[1].1.to_string_lossy()])?;
    let mut during = phase("rebalance");
    let start = Instant::now();
    loop {
        d.alive()?;
        clock.tick(&c, &mut during);
        let r = &during.rebalance;
        if r["generation"] == 2 && r["state"] == "completed" {
            break;
        }
        if r["state"] == "failed" {
            return Err(format!("the rebalance failed: {r}"));
        }
        if start.elapsed() > d.opts.timeout {
            return Err(format!(
                "the rebalance did not complete within {:?}: {r}",
                d.opts.timeout
            ));
        }
    }
    let t = c.tally.clone();
    let want = c.stop();
    let errors = t.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Ok((
        want,
        Phases {
            list: vec![base, during],
            reads: n(&t.reads),
            writes: n(&t.writes),
            failed_reads: n(&t.failed_reads),
            failed_writes: n(&t.failed_writes),
            errors,
        },
    ))
}

fn p99_ms(h: &Histogram<u64>) -> f64 {
    crate::latency::Quantiles::of(h).p99 as f64 / 1000.0
}

/// Prints the demo's result; returns the failed client operations.
pub fn report(ph: &Phases, ideal: &Ideal) -> u64 {
    let r = &ph.list[1].rebalance;
    let num = |k: &str| r[k].as_u64().unwrap_or(0);
    let during = &ph.list[1];
    println!(
        "moved {} objects, {:.1} MB (the ideal: {} objects, {:.1} MB whose owner changed; {} moves superseded by client writes)",
        num("objects"),
        num("bytes") as f64 / 1e6,
        ideal.objects,
        ideal.bytes as f64 / 1e6,
        num("superseded")
    );
    println!(
        "migration: {:.1} MB/s over {:.1} s",
        during.moved_bytes as f64 / 1e6 / during.secs.max(0.001),
        during.secs
    );
    nodes(r);
    for p in &ph.list {
        println!(
            "client {:<9}: {:.1} ops/s, p99 {:.2} ms ({} ops)",
            p.name,
            p.ops as f64 / p.secs.max(0.001),
            p99_ms(&p.latency),
            p.ops
        );
    }
    println!(
        "reads failed {} (of {}), writes failed {} (of {})",
        ph.failed_reads, ph.reads, ph.failed_writes, ph.writes
    );
    for e in &ph.errors {
        println!("  {e}");
    }
    ph.failed_reads + ph.failed_writes
}

/// Per node: its scan (objects/s) and its moves (from its run's start to its record's last
/// write); then the job's: from the first node's start to the last mover's end.
fn nodes(r: &Value) {
    let (mut first, mut last, mut objects, mut bytes) = (u64::MAX, 0u64, 0u64, 0u64);
    for n in r["nodes"].as_array().into_iter().flatten() {
        let num = |k: &str| n[k].as_u64().unwrap_or(0);
        let scan_s = num("scan_ms") as f64 / 1000.0;
        let secs = num("at_ms").saturating_sub(num("started_ms")) as f64 / 1000.0;
        println!(
            "node {}: scanned {} objects in {scan_s:.3} s ({:.0} objects/s); moved {} objects, {:.1} MB in {secs:.2} s ({:.1} MB/s)",
            n["node"].as_str().unwrap_or("?"),
            num("scanned"),
            num("scanned") as f64 / scan_s.max(0.001),
            num("objects"),
            num("bytes") as f64 / 1e6,
            num("bytes") as f64 / 1e6 / secs.max(0.001)
        );
        if num("started_ms") > 0 {
            first = first.min(num("started_ms"));
        }
        if num("objects") > 0 {
            last = last.max(num("at_ms"));
            objects += num("objects");
            bytes += num("bytes");
        }
    }
    let secs = last.saturating_sub(first) as f64 / 1000.0;
    if secs > 0.0 {
        println!(
            "rebalance: {objects} objects, {:.1} MB in {secs:.2} s from the first start to the last move: {:.1} MB/s, {:.0} objects/s",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs,
            objects as f64 / secs
        );
    }
}
