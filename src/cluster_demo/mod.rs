//! `ferry demo --cluster`: etcd and 4 agents on loopback (small disks in a temp dir), a few
//! thousand objects loaded through their S3 endpoints, then a fifth node joins and the
//! cluster rebalances while clients read and write. It prints what moved against the ideal,
//! the migration's MB/s, the clients' ops/s and p99 before and during, the failed reads, and
//! checks every object is once at its owner with its bytes. Everything it starts is stopped
//! and its temp dir removed, on Ctrl-C too.

pub mod check;
pub mod load;
pub mod monitor;
pub mod procs;
pub mod seed;

use crate::cluster::Topology;
use load::{ACCESS, BUCKET, Expected, SECRET};
use procs::Procs;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const CLUSTER: &str = "demo";
pub const NODES: usize = 5;
pub const INSTALL: &str = "etcd is not installed: the cluster demo needs it on PATH \
(Debian/Ubuntu: apt-get install etcd-server; or a release from https://github.com/etcd-io/etcd/releases)";

#[derive(Clone, Debug)]
pub struct Options {
    pub objects: usize,
    pub max_size: u64,
    pub clients: usize,
    /// Client operations per second, all threads together.
    pub client_ops: f64,
    /// Seconds of client load before the fifth node joins (the baseline).
    pub baseline_s: u64,
    pub csv: Option<PathBuf>,
    /// The agents' --user-p99 (None: their default; "off": no pace).
    pub user_p99: Option<String>,
    /// `ferry cluster rate` before the rebalance (None: unlimited).
    pub rate: Option<String>,
    pub timeout: Duration,
    /// Write the objects straight onto the disks before the agents start (`seed`), not
    /// through the S3 endpoints.
    pub seed: bool,
}

pub enum Outcome {
    /// Ran; true when no read failed and every object is once at its owner.
    Ran(bool),
    NoEtcd,
}

/// What one run set up.
pub struct Demo {
    pub procs: Procs,
    pub opts: Options,
    pub stop: Arc<AtomicBool>,
    pub topos: [(Topology, PathBuf); 2],
    /// S3 endpoints (host:port), n1..n5.
    pub s3: Vec<String>,
    /// What `seed` wrote (taken by `play`).
    pub seeded: Option<Expected>,
}

pub fn run(o: &Options) -> Result<Outcome, String> {
    if !procs::etcd_installed() {
        return Ok(Outcome::NoEtcd);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signal: {e}"))?;
    }
    let dir = std::env::temp_dir().join(format!("ferry-cluster-demo-{}", std::process::id()));
    let mut d = Demo::setup(Procs::new(dir)?, o.clone(), stop)?;
    let r = d.play();
    if r.as_ref().is_err_and(|m| m != "interrupted") {
        for n in 1..=NODES {
            eprintln!(
                "--- n{n}.log (tail) ---\n{}",
                d.procs.tail(&format!("n{n}"))
            );
        }
    }
    r.map(Outcome::Ran)
}

fn write(p: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    crate::coord::durable::replace(p, data, mode)
        .map_err(|e| format!("write '{}': {e}", p.display()))
}

/// A topology v2 of the first `nodes` nodes, one set of two disks each, under `root`.
fn topology(root: &Path, generation: u64, nodes: usize) -> Result<Topology, String> {
    let sets: Vec<Value> = (1..=nodes)
        .map(|n| {
            let disks: Vec<Value> = ["a", "b"]
                .iter()
                .map(|d| json!({"id": format!("n{n}{d}"), "path": root.join(format!("n{n}{d}")), "node": format!("n{n}")}))
                .collect();
            json!({"id": format!("s{n}"), "state": "active", "weight": 1.0, "disks": disks})
        })
        .collect();
    let v = json!({"generation": generation, "pools": [{"id": "demo", "sets": sets}]});
    let t = Topology::parse(&serde_json::to_vec(&v).expect("json"))
        .map_err(|(f, m)| format!("demo topology: {f}: {m}"))?;
    for s in t.sets() {
        for disk in &s.disks {
            std::fs::create_dir_all(&disk.path)
                .map_err(|e| format!("create '{}': {e}", disk.path.display()))?;
        }
    }
    crate::cluster::identity::init(&t, Path::new("demo topology")).map_err(|e| e.to_string())?;
    Ok(t)
}

impl Demo {
    /// etcd, certificates, keys, the two topologies (the first applied), 4 agents serving.
    fn setup(mut procs: Procs, opts: Options, stop: Arc<AtomicBool>) -> Result<Demo, String> {
        procs.start_etcd()?;
        let dir = procs.dir.clone();
        let ca = dir.join("ca");
        crate::net::certs::init(&ca).map_err(|e| e.to_string())?;
        for n in 1..=NODES {
            crate::net::certs::issue(&ca, &format!("n{n}"), 0, 2).map_err(|e| e.to_string())?;
        }
        write(
            &dir.join("s3.keys"),
            format!("{ACCESS} {SECRET}\n").as_bytes(),
            0o600,
        )?;
        // Progress twice a second, so the demo's per-second migration rate is smooth.
        let cfg = br#"{"progress_interval_ms": 500}"#;
        write(&dir.join("agent.json"), cfg, 0o644)?;
        let mut topos = Vec::new();
        for (g, nodes) in [(1, NODES - 1), (2, NODES)] {
            let t = topology(&dir.join("disks"), g, nodes)?;
            let f = dir.join(format!("gen{g}.json"));
            write(&f, &serde_json::to_vec_pretty(&t).expect("json"), 0o644)?;
            topos.push((t, f));
        }
        let topos: [(Topology, PathBuf); 2] = topos.try_into().map_err(|_| "two topologies")?;
        let s3 = procs::free_ports(NODES)?
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut d = Demo {
            procs,
            opts,
            stop,
            topos,
            s3,
            seeded: None,
        };
        if d.opts.seed {
            d.seeded = Some(d.seed()?);
        }
        d.ferry(&["cluster", "apply", &d.topos[0].1.to_string_lossy()])?;
        for n in 1..NODES {
            d.start_agent(n)?;
        }
        for n in 1..NODES {
            d.wait_s3(n)?;
        }
        Ok(d)
    }

    /// Runs `ferry ARGS --cluster demo --etcd URL` and waits for it.
    pub fn ferry(&self, args: &[&str]) -> Result<String, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let out = std::process::Command::new(exe)
            .args(args)
            .args(["--cluster", CLUSTER, "--etcd", &self.procs.etcd_url])
            .output()
            .map_err(|e| format!("ferry {}: {e}", args.join(" ")))?;
        if !out.status.success() {
            return Err(format!(
                "ferry {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start_agent(&mut self, n: usize) -> Result<(), String> {
        let dir = &self.procs.dir;
        let node = format!("n{n}");
        let mut args: Vec<String> = ["agent", "--cluster", CLUSTER, "--node", &node, "--etcd"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.procs.etcd_url.clone());
        args.extend(
            [
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--peer-listen",
                "127.0.0.1:0",
            ]
            .map(String::from),
        );
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        args.extend(["--state-dir".into(), path(dir.join("state").join(&node))]);
        args.extend(["--tls-dir".into(), path(dir.join("ca").join(&node))]);
        args.extend(["--s3-listen".into(), self.s3[n - 1].clone()]);
        args.extend(["--s3-keys".into(), path(dir.join("s3.keys"))]);
        args.extend(["--config".into(), path(dir.join("agent.json"))]);
        if let Some(p) = &self.opts.user_p99 {
            args.extend(["--user-p99".into(), p.clone()]);
        }
        self.procs.start_agent(&node, &args)
    }

    /// Fails when Ctrl-C was pressed or an agent died.
    pub fn alive(&mut self) -> Result<(), String> {
        if self.stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        match self.procs.exited() {
            Some(m) => Err(m),
            None => Ok(()),
        }
    }

    /// Waits until node `n`'s S3 endpoint serves the cluster's objects (ListBuckets: 200).
    fn wait_s3(&mut self, n: usize) -> Result<(), String> {
        let start = Instant::now();
        let mut c = crate::s3::client::Client::new(&self.s3[n - 1], ACCESS, SECRET);
        loop {
            self.alive()?;
            if matches!(c.request("GET", b"/", b""), Ok(r) if r.status == 200) {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "agent n{n}'s S3 endpoint did not serve within 60 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The whole show after setup; true when nothing failed.
    fn play(&mut self) -> Result<bool, String> {
        let want = match self.seeded.take() {
            Some(w) => w,
            None => self.fill()?,
        };
        self.start_agent(NODES)?;
        self.wait_s3(NODES)?;
        if let Some(r) = &self.opts.rate {
            self.ferry(&["cluster", "rate", r])?;
        }
        let (want, phases) = monitor::observe(self, want)?;
        let ideal = check::ideal(&self.topos[0].0, &self.topos[1].0, &want);
        let failed = monitor::report(&phases, &ideal);
        let bad = check::verify(&self.topos[1].0, &want);
        match &bad {
            Ok(()) => println!(
                "verified {} objects: each once at its owner, with its bytes",
                want.len()
            ),
            Err(m) => println!("verify FAILED: {m}"),
        }
        Ok(failed == 0 && bad.is_ok())
    }

    /// `seed::seed` of the objects onto n1-n4's disks under generation 1.
    fn seed(&self) -> Result<Expected, String> {
        let start = Instant::now();
        let state = self.procs.dir.join("state");
        let want = seed::seed(
            &self.topos[0].0,
            &state,
            self.opts.objects,
            self.opts.max_size,
        )?;
        let bytes: u64 = want.values().map(|v| v.1).sum();
        println!(
            "seeded {} objects, {:.1} MB onto the disks of n1-n4 (generation 1) in {:.1} s",
            want.len(),
            bytes as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
        Ok(want)
    }

    /// Creates the bucket and puts the objects, spread over the first four endpoints.
    fn fill(&mut self) -> Result<Expected, String> {
        let mut c = crate::s3::client::Client::new(&self.s3[0], ACCESS, SECRET);
        let r = c
            .request("PUT", format!("/{BUCKET}").as_bytes(), b"")
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!(
                "create bucket: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        let start = Instant::now();
        let threads = self.opts.clients.clamp(1, 8);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let addr = self.s3[t % (NODES - 1)].clone();
                let keys: Vec<usize> = (t..self.opts.objects).step_by(threads).collect();
                let max = self.opts.max_size;
                std::thread::spawn(move || load::fill(&addr, &keys, max, 7 + t as u64))
            })
            .collect();
        let mut want = Expected::new();
        for h in handles {
            want.extend(h.join().map_err(|_| "a loading thread panicked")??);
        }
        let bytes: u64 = want.values().map(|v| v.1).sum();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "loaded {} objects, {:.1} MB through the S3 endpoints of n1-n4 in {secs:.1} s ({:.1} MB/s)",
            want.len(),
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs
        );
        self.alive()?;
        Ok(want)
    }
}
