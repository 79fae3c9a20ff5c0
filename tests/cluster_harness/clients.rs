//! The clients of the cross-node tests: threads that overwrite, delete and read random keys
//! through every agent's S3 endpoint, each answer checked against a shared model of what
//! every key holds (its last write, or deleted), and the check of every key through every
//! agent once they stop.

use super::{BKT, Nodes, sized};
use crate::common::s3client::{Resp, S3};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Every live key through every agent: GET gives its bytes, HEAD its size; every deleted key
/// is NoSuchKey everywhere; each agent's LIST is exactly the live keys.
pub fn check_everywhere(n: &Nodes, live: &HashMap<String, Vec<u8>>, gone: &[String]) {
    let mut want: Vec<String> = live.keys().cloned().collect();
    want.sort();
    for (node, s3) in &n.s3 {
        for (k, data) in live {
            let r = s3.get(BKT, k).unwrap();
            assert_eq!(r.code, 200, "GET {k} through {node}: {}", r.text());
            assert!(r.body == *data, "GET {k} through {node}: other bytes");
            let h = s3.head(BKT, k).unwrap();
            assert_eq!(h.code, 200, "HEAD {k} through {node}");
            assert_eq!(h.header("content-length"), Some(&*data.len().to_string()));
        }
        for k in gone {
            let r = s3.get(BKT, k).unwrap();
            assert_eq!(r.code, 404, "GET deleted {k} through {node}: {}", r.text());
            assert_eq!(r.error_code().as_deref(), Some("NoSuchKey"), "{k}");
            assert_eq!(s3.head(BKT, k).unwrap().code, 404, "HEAD deleted {k}");
        }
        let mut listed = s3.list(BKT, "").unwrap();
        listed.sort();
        assert_eq!(listed, want, "LIST through {node}");
    }
}

/// What the clients know of one key: its bytes now (None: deleted) and its version.
#[derive(Default)]
pub struct KeyState {
    data: Option<Vec<u8>>,
    version: usize,
}

/// The clients' shared model: one lock per key, held for the whole request (so requests of
/// one key are in order and the expected answer is exact).
pub struct Model {
    keys: Vec<String>,
    index: HashMap<String, usize>,
    state: Vec<std::sync::Mutex<KeyState>>,
}

#[derive(Default)]
pub struct Tally {
    pub reads: u64,
    pub writes: u64,
    pub deletes: u64,
    /// Reads answered 503 (or not answered) while an agent was down, and writes or deletes
    /// sent again after such an answer.
    pub unavailable: u64,
    pub retries: u64,
    /// Writes refused for room (a full owner disk): the key keeps its bytes.
    pub refused: u64,
    pub failures: Vec<String>,
}

impl Tally {
    fn add(&mut self, x: Tally) {
        self.reads += x.reads;
        self.writes += x.writes;
        self.deletes += x.deletes;
        self.unavailable += x.unavailable;
        self.retries += x.retries;
        self.refused += x.refused;
        self.failures.extend(x.failures);
    }
}

/// How long a client sends a write or delete again while an agent is away.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

/// What the clients may meet. Without `faults` every agent is up and any answer but the
/// right one fails. With `faults` an agent may be down (`down`, `flips` counts the changes):
/// a write or delete answered 503 (or not at all) is sent again, through the next agent,
/// until it succeeds (up to RETRY_FOR, as an S3 client retries), and a read may be 503 only
/// while an agent is down (its disks are its own: their objects are out of reach). A stale
/// read or a deleted key that returns always fails. While an owner disk is full (`full`) a
/// write may be refused for room (500, ENOSPC): the key keeps the bytes it had.
#[derive(Default)]
pub struct Window {
    faults: bool,
    down: std::sync::atomic::AtomicBool,
    full: std::sync::atomic::AtomicBool,
    flips: std::sync::atomic::AtomicU64,
}

/// A window's state when a request began: an agent down, a disk full, its changes so far.
#[derive(Clone, Copy)]
pub struct Mark {
    down: bool,
    full: bool,
    flips: u64,
}

impl Window {
    pub fn faulty() -> Window {
        Window {
            faults: true,
            ..Window::default()
        }
    }

    pub fn set_down(&self, d: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        self.down.store(d, SeqCst);
        self.flips.fetch_add(1, SeqCst);
    }

    /// An owner disk full (writes to it may be refused) or not.
    pub fn set_full(&self, f: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        self.full.store(f, SeqCst);
        self.flips.fetch_add(1, SeqCst);
    }

    fn mark(&self) -> Mark {
        use std::sync::atomic::Ordering::SeqCst;
        Mark {
            down: self.down.load(SeqCst),
            full: self.full.load(SeqCst),
            flips: self.flips.load(SeqCst),
        }
    }

    /// Whether an agent may have been down during a request begun at `m`.
    fn was_down(&self, m: Mark) -> bool {
        let now = self.mark();
        self.faults && (m.down || now.down || now.flips != m.flips)
    }

    /// Whether an owner disk may have been full during a request begun at `m`.
    fn was_full(&self, m: Mark) -> bool {
        let now = self.mark();
        self.faults && (m.full || now.full || now.flips != m.flips)
    }
}

/// An answer that says "not now": 503, or no answer (the agent asked is down).
fn unavailable(r: &std::io::Result<Resp>) -> bool {
    r.as_ref().map_or(true, |r| r.code == 503)
}

/// What one request is for: the operation's name and the code of its success.
type Req<'a> = (&'a str, u16, &'a dyn Fn(&S3) -> std::io::Result<Resp>);

/// A refusal for room: 500 naming ENOSPC.
fn no_room(r: &Resp) -> bool {
    r.code == 500 && r.text().contains("No space left")
}

/// Sends a write or delete through `via[at]`, and again through the next agent after an
/// answer `unavailable` while the window has faults (for up to RETRY_FOR). Ok(false): refused
/// for room while an owner disk was full (nothing written).
fn retried(
    via: &[(&String, &S3)],
    at: usize,
    w: &Window,
    t: &mut Tally,
    req: Req,
) -> Result<bool, String> {
    let (op, want, send) = req;
    let start = Instant::now();
    for n in at.. {
        let (node, s3) = via[n % via.len()];
        let mark = w.mark();
        let r = send(s3);
        match &r {
            Ok(r) if r.code == want => return Ok(true),
            Ok(r) if no_room(r) && w.was_full(mark) => {
                t.refused += 1;
                return Ok(false);
            }
            _ if w.faults && unavailable(&r) && start.elapsed() < RETRY_FOR => {
                t.retries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(r) => return Err(format!("{op} through {node}: {}", r.text())),
            Err(e) => return Err(format!("{op} through {node}: {e}")),
        }
    }
    unreachable!()
}

impl Model {
    pub fn new(want: &HashMap<String, Vec<u8>>) -> Model {
        let mut keys: Vec<String> = want.keys().cloned().collect();
        keys.sort();
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let state = keys
            .iter()
            .map(|k| {
                std::sync::Mutex::new(KeyState {
                    data: Some(want[k].clone()),
                    version: 0,
                })
            })
            .collect();
        Model { keys, index, state }
    }

    /// The live keys and their bytes; the deleted keys.
    pub fn split(&self) -> (HashMap<String, Vec<u8>>, Vec<String>) {
        let (mut live, mut gone) = (HashMap::new(), vec![]);
        for (k, st) in self.keys.iter().zip(&self.state) {
            match &st.lock().unwrap().data {
                Some(d) => {
                    live.insert(k.clone(), d.clone());
                }
                None => gone.push(k.clone()),
            }
        }
        (live, gone)
    }

    /// One random request on a random key through a random agent: 5 % overwrite, 2.5 %
    /// delete, the rest read, each answer checked against the model (see `Window`).
    fn step(&self, rng: &mut u64, via: &[(&String, &S3)], w: &Window, t: &mut Tally) {
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let i = (next() % self.keys.len() as u64) as usize;
        let at = (next() % via.len() as u64) as usize;
        let roll = next() % 1000;
        let k = &self.keys[i];
        let mut st = self.state[i].lock().unwrap();
        let r = if roll < 50 {
            t.writes += 1;
            let data = sized(self.index[k], st.version + 1, 0);
            let put = |s3: &S3| s3.put(BKT, k, &data);
            retried(via, at, w, t, ("PUT", 200, &put)).map(|done| {
                if done {
                    st.version += 1;
                    st.data = Some(data.clone());
                }
            })
        } else if roll < 75 {
            t.deletes += 1;
            let del = |s3: &S3| s3.delete(BKT, k);
            match retried(via, at, w, t, ("DELETE", 204, &del)) {
                Ok(true) => {
                    st.data = None;
                    Ok(())
                }
                Ok(false) => Ok(()), // refused for room: the key keeps its bytes
                Err(e) => Err(e),
            }
        } else {
            t.reads += 1;
            read(via[at], k, &st, w, t)
        };
        if let Err(m) = r {
            t.failures.push(format!("{k}: {m}"));
        }
    }
}

/// A GET of `k` through `(node, s3)` checked against what the clients know of it.
fn read(
    (node, s3): (&String, &S3),
    k: &str,
    st: &KeyState,
    w: &Window,
    t: &mut Tally,
) -> Result<(), String> {
    let mark = w.mark();
    let r = s3.get(BKT, k);
    let v = st.version;
    match (&r, &st.data) {
        (Ok(r), Some(d)) if r.code == 200 && r.body == *d => Ok(()),
        (Ok(r), Some(_)) if r.code == 200 => Err(format!(
            "GET through {node}: stale or wrong bytes (version {v})"
        )),
        (Ok(r), None) if r.code == 404 => Ok(()),
        (Ok(r), None) if r.code == 200 => Err(format!(
            "GET through {node}: a deleted key came back (version {v})"
        )),
        _ if unavailable(&r) && w.was_down(mark) => {
            t.unavailable += 1;
            Ok(())
        }
        (Ok(r), _) => Err(format!("GET through {node}: {}", r.text())),
        (Err(e), _) => Err(format!("GET through {node}: {e}")),
    }
}

/// The clients' seed: FERRY_SEED, else a fixed one (a failure names it).
pub fn client_seed() -> u64 {
    std::env::var("FERRY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
}

/// Client threads running `Model::step` every 1-4 ms until `stop`; thread `t` starts from
/// `seed ^ (t + 1) * 0x1000_0001`.
pub fn clients(
    n: &Nodes,
    model: &std::sync::Arc<Model>,
    threads: usize,
    (seed, window): (u64, &std::sync::Arc<Window>),
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<Tally>> {
    (0..threads)
        .map(|t| {
            let (model, stop, w) = (model.clone(), stop.clone(), window.clone());
            let mut s3: Vec<(String, S3)> =
                n.s3.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            s3.sort_by(|a, b| a.0.cmp(&b.0));
            std::thread::spawn(move || {
                let via: Vec<(&String, &S3)> = s3.iter().map(|(k, v)| (k, v)).collect();
                let mut rng = seed ^ ((t as u64 + 1) * 0x1000_0001);
                let mut tally = Tally::default();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    model.step(&mut rng, &via, &w, &mut tally);
                    std::thread::sleep(Duration::from_millis(1 + rng % 4));
                }
                tally
            })
        })
        .collect()
}

/// Stops the clients; their tallies summed.
pub fn stop_clients(
    stop: &std::sync::atomic::AtomicBool,
    threads: Vec<std::thread::JoinHandle<Tally>>,
) -> Tally {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Tally::default();
    for t in threads {
        all.add(t.join().unwrap());
    }
    all
}

/// No client request failed (the first dozen shown, with `again`: how to run them again).
pub fn assert_no_failures(all: &Tally, again: &str) {
    assert!(
        all.failures.is_empty(),
        "{} failed requests ({again}), the first: {:#?}",
        all.failures.len(),
        &all.failures[..all.failures.len().min(12)]
    );
}
