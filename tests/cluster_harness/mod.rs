//! Agents of a cluster across nodes for tests: each with its own disks, its peer transport
//! (mutual TLS, certificates from `ferry certs`) and its S3 endpoint, over a real etcd; the
//! topologies they serve, objects put straight onto the disks, and waits on the rebalance
//! as `ferry cluster status` shows it. Needs `mod agent_harness; mod common; mod
//! etcd_harness;` beside it.
#![allow(dead_code)]

pub mod clients;

use crate::agent_harness::Cluster;
pub use crate::agent_harness::{Disks, ferry, ok, topo_v2 as topo};
use crate::common::s3client::S3;
use crate::etcd_harness::Etcd;
use ferry::cluster::store::{Placed, walk_objects};
use ferry::cluster::{Topology, partition_of};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const AK: &str = "FERRYTESTKEY0001";
pub const SK: &str = "s3cr3t/Test+Key-0123456789";
pub const BKT: &str = "bkt";

/// The agents of a test: the harness, each node's S3 client, the disks' root.
pub struct Nodes {
    pub c: Cluster,
    pub s3: HashMap<String, S3>,
    pub root: PathBuf,
}

pub use crate::etcd_harness::free_port;

fn certs(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("certs")
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Agents `names` on one etcd member, every one on loopback.
pub fn nodes(names: &[&str], cfg: &str) -> Option<Nodes> {
    Nodes::new(Etcd::start(1)?, names, cfg, &|_| "127.0.0.1".into())
}

impl Nodes {
    /// Agents `names` over `etcd`, each serving its peer transport and S3 at the IP
    /// `host(node)` (S3 on a port fixed now, so a restarted agent answers at the same address).
    pub fn new(
        etcd: Etcd,
        names: &[&str],
        cfg: &str,
        host: &dyn Fn(&str) -> String,
    ) -> Option<Nodes> {
        let mut c = Cluster::on(etcd, cfg)?;
        let ca = c.dir.path().join("ca");
        certs(&["init", ca.to_str().unwrap()]);
        let keys = c.dir.path().join("s3-keys");
        std::fs::write(&keys, format!("{AK} {SK}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut s3 = HashMap::new();
        for n in names {
            certs(&["issue", ca.to_str().unwrap(), n]);
            let ip = host(n);
            let addr = format!("{ip}:{}", free_port());
            let tls = ca.join(n).to_string_lossy().into_owned();
            let peer = format!("{ip}:0");
            let mut args: Vec<String> = ["--peer-listen", &peer, "--tls-dir", &tls]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(["--s3-listen".into(), addr.clone(), "--s3-keys".into()]);
            args.push(keys.to_string_lossy().into_owned());
            c.args.insert(n.to_string(), args);
            s3.insert(n.to_string(), S3::new(&addr, AK, SK));
        }
        let root = c.dir.path().join("disks");
        Some(Nodes { c, s3, root })
    }

    pub fn apply(&self, t: &Topology) {
        let f = self.root.join(format!("g{}.json", t.generation));
        std::fs::write(&f, serde_json::to_vec(t).unwrap()).unwrap();
        ok(ferry(&self.c, &["cluster", "apply", f.to_str().unwrap()]));
    }

    /// Starts the agents and waits until each one's S3 endpoint serves the topology.
    pub fn start(&mut self, names: &[&str]) {
        for n in names {
            self.c.start(n);
        }
        for n in names {
            self.wait_s3(n, Duration::from_secs(30));
        }
    }

    pub fn wait_s3(&self, n: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let r = self.s3[n].request("GET", "/", &[], b"");
            if r.as_ref().is_ok_and(|r| r.code == 200) && self.peer_published(n) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "{n}'s S3 endpoint did not serve within {limit:?}: {r:?}\n{}",
                self.c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `n`'s live member record is the running process's and names its peer address
    /// (the others can reach it). A record left by a killed agent lives on until its lease
    /// runs out, with the old process's port: that one does not count.
    pub fn peer_published(&self, n: &str) -> bool {
        use ferry::agent::ClusterStore;
        let Ok(Some(kv)) = self.c.store.get(&self.c.keys.member(n)) else {
            return false;
        };
        let v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        let running = self.c.pid(n).map(u64::from);
        v["peer"].is_string() && running.is_some_and(|p| v["pid"].as_u64() == Some(p))
    }

    pub fn status(&self) -> Value {
        let o = ok(ferry(&self.c, &["cluster", "status", "--json"]));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Waits until generation `g`'s rebalance is completed; its status.
    pub fn wait_completed(&self, g: u64, limit: Duration) -> Value {
        self.wait_rebalance(limit, &format!("generation {g} completed"), |r| {
            r["generation"] == g && r["state"] == "completed"
        })
    }

    pub fn wait_rebalance(&self, limit: Duration, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let r = self.status()["rebalance"].clone();
            if f(&r) {
                return r;
            }
            assert!(
                start.elapsed() < limit,
                "rebalance: {what} not within {limit:?}: {r}\n{}",
                self.c.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// How many fault cycles a cycling test runs: FERRY_FAULT_CYCLES, else `default` (the slow
/// tier sets 50).
pub fn fault_cycles(default: usize) -> usize {
    std::env::var("FERRY_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bytes of object `i`, version `v`: sizes 1 B to ~40 KB, and one in `big` (0: none) of
/// ~1.2 MB, several frames of the transport.
pub fn sized(i: usize, v: usize, big: usize) -> Vec<u8> {
    let n = if big > 0 && i % big == 7 {
        1_200_000 + i
    } else {
        (i * 997) % 40_000 + 1
    };
    let seed = format!("o{i}v{v};");
    seed.bytes().cycle().take(n).collect()
}

/// `n` objects put under `t` straight onto the disks (before the agents run); key -> bytes.
pub fn fill(t: &Topology, n: usize, big: usize) -> HashMap<String, Vec<u8>> {
    let c = ferry::cluster::store::Cluster::new(t.clone(), None, None);
    let mut want = HashMap::new();
    for i in 0..n {
        let key = format!("d{}/o{i}", i % 11);
        let data = sized(i, 0, big);
        c.put(BKT, key.as_bytes(), &data).unwrap();
        want.insert(key, data);
    }
    want
}

/// The node whose disk owns `key` under `t`.
pub fn owner_node(t: &Topology, key: &str) -> String {
    let p = Placed::new(t.clone());
    let d = p.owner(partition_of(BKT.as_bytes(), key.as_bytes()));
    d.node.clone().unwrap()
}

/// How many keys of `want` change owner disk from `old` to `new` (the ideal moves).
pub fn ideal_moves(old: &Topology, new: &Topology, want: &HashMap<String, Vec<u8>>) -> usize {
    let (old, new) = (Placed::new(old.clone()), Placed::new(new.clone()));
    let owner = |p: &Placed, k: &String| p.owner_key(partition_of(BKT.as_bytes(), k.as_bytes()));
    want.keys()
        .filter(|k| owner(&old, k) != owner(&new, k))
        .count()
}

pub fn objects_on(path: &Path) -> usize {
    let mut n = 0;
    walk_objects(path, &mut Vec::new(), &mut |_, _, _| n += 1);
    n
}
