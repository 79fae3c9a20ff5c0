//! The demo's clients: threads that load the objects through the S3 endpoints, then read
//! (90 %) and overwrite (10 %) them at a paced rate, checking every read's bytes. Each
//! thread owns a slice of the keys, so what it last wrote is what a read must return.

use crate::demo::XorShift;
use crate::latency::Window;
use crate::s3::client::Client;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

pub const BUCKET: &str = "demo";
pub const ACCESS: &str = "demo-access";
pub const SECRET: &str = "demo-secret-key-0123";

/// key -> (xxh3, size) of what was last written.
pub type Expected = HashMap<String, (u64, u64)>;

/// What the clients did (a window at a time, and in total).
#[derive(Default)]
pub struct Tally {
    pub latency: Window,
    pub ops: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub failed_reads: AtomicU64,
    pub failed_writes: AtomicU64,
    /// The first few failures, for the report.
    pub errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, m: String) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < 5 {
            e.push(m);
        }
    }
}

/// An object's size: 1 KiB to 1 MiB, skewed small (mean about 200 KiB).
pub fn size_of(rng: &mut XorShift, max: u64) -> usize {
    let v = 1024 + rng.next_u64() % max.max(1025);
    (v >> (rng.next_u64() % 3)) as usize
}

fn body(rng: &mut XorShift, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rng.fill(&mut b);
    b
}

pub fn key(i: usize) -> String {
    format!("d{:02}/obj{i:06}", i % 37)
}

/// Puts objects `keys` through `addr`; their expected content.
pub fn fill(addr: &str, keys: &[usize], max: u64, seed: u64) -> Result<Expected, String> {
    let mut c = Client::new(addr, ACCESS, SECRET);
    let mut rng = XorShift(seed | 1);
    let mut want = Expected::new();
    for &i in keys {
        let k = key(i);
        let len = size_of(&mut rng, max);
        let b = body(&mut rng, len);
        let r = c
            .request("PUT", format!("/{BUCKET}/{k}").as_bytes(), &b)
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            let why = String::from_utf8_lossy(&r.body);
            return Err(format!("PUT {k} via {addr}: {} {why}", r.status));
        }
        want.insert(k, (xxh3_64(&b), b.len() as u64));
    }
    Ok(want)
}

/// One client thread's run: paced at `ops_s`, round-robin over `addrs`, until `stop`.
pub struct Worker {
    pub addrs: Vec<String>,
    pub want: Expected,
    pub ops_s: f64,
    pub max: u64,
    pub seed: u64,
}

impl Worker {
    pub fn run(mut self, tally: &Tally, stop: &AtomicBool) -> Expected {
        let mut clients: Vec<Client> = self
            .addrs
            .iter()
            .map(|a| Client::new(a, ACCESS, SECRET))
            .collect();
        let keys: Vec<String> = self.want.keys().cloned().collect();
        let mut rng = XorShift(self.seed | 1);
        let gap = Duration::from_secs_f64(1.0 / self.ops_s.max(0.1));
        let mut next = Instant::now();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) && !keys.is_empty() {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            // Behind by more than a second: do not burst to catch up.
            next = (next + gap).max(Instant::now() - Duration::from_secs(1));
            let k = &keys[(rng.next_u64() % keys.len() as u64) as usize];
            let c = &mut clients[n % self.addrs.len()];
            n += 1;
            let t = Instant::now();
            if rng.next_u64().is_multiple_of(10) {
                self.write(c, k, &mut rng, tally);
            } else {
                self.read(c, k, tally);
            }
            tally.latency.record(t.elapsed());
            tally.ops.fetch_add(1, Ordering::Relaxed);
        }
        self.want
    }

    fn read(&self, c: &mut Client, k: &str, tally: &Tally) {
        let Some(&(hash, len)) = self.want.get(k) else {
            return; // its last write failed: either content may be there
        };
        tally.reads.fetch_add(1, Ordering::Relaxed);
        let why = match c.request("GET", format!("/{BUCKET}/{k}").as_bytes(), b"") {
            Ok(r) if r.status == 200 && xxh3_64(&r.body) == hash => return,
            Ok(r) if r.status == 200 => format!("stale: {} bytes, want {len}", r.body.len()),
            Ok(r) => format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
            Err(e) => e.to_string(),
        };
        tally.failed_reads.fetch_add(1, Ordering::Relaxed);
        tally.fail(format!("GET {k}: {why}"));
    }

    fn write(&mut self, c: &mut Client, k: &str, rng: &mut XorShift, tally: &Tally) {
        tally.writes.fetch_add(1, Ordering::Relaxed);
        let len = size_of(rng, self.max);
        let b = body(rng, len);
        let why = match c.request("PUT", format!("/{BUCKET}/{k}").as_bytes(), &b) {
            Ok(r) if r.status == 200 => {
                self.want
                    .insert(k.to_string(), (xxh3_64(&b), b.len() as u64));
                return;
            }
            Ok(r) => format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
            Err(e) => e.to_string(),
        };
        // Unknown whether it landed: a later read may see either, so the key leaves the check.
        tally.failed_writes.fetch_add(1, Ordering::Relaxed);
        tally.fail(format!("PUT {k}: {why}"));
        self.want.remove(k);
    }
}

/// Client threads running until `stop`; joined, they give back what they last wrote.
pub struct Clients {
    pub tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Expected>>,
}

impl Clients {
    pub fn start(workers: Vec<Worker>) -> Result<Clients, String> {
        let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
        let mut threads = Vec::new();
        for w in workers {
            let (t, s) = (tally.clone(), stop.clone());
            let h = std::thread::Builder::new()
                .name("demo-client".into())
                .spawn(move || w.run(&t, &s))
                .map_err(|e| format!("client thread: {e}"))?;
            threads.push(h);
        }
        Ok(Clients {
            tally,
            stop,
            threads,
        })
    }

    pub fn stop(mut self) -> Expected {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Expected::new();
        for h in self.threads.drain(..) {
            all.extend(h.join().unwrap_or_default());
        }
        all
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}
