//! Real agent processes against a real etcd, for the cluster tests: start, kill -9, SIGSTOP,
//! SIGCONT and SIGTERM by pid; observe the cluster straight from etcd.
#![allow(dead_code)]

pub mod invariants;

use crate::etcd_harness::Etcd;
use ferry::agent::etcd::EtcdStore;
use ferry::agent::plan::Assignment;
use ferry::agent::{ClusterStore, keys::Keys};
use ferry::cluster::Topology;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Cluster {
    pub etcd: Etcd,
    pub name: String,
    pub dir: tempfile::TempDir,
    pub agents: HashMap<String, Child>,
    pub store: EtcdStore,
    pub keys: Keys,
    pub config: PathBuf,
    /// When each node's runs were killed (ms since the Unix epoch), in order.
    pub deaths: HashMap<String, Vec<u64>>,
    /// Flags each node's agent gets besides the harness's own (its peer transport...).
    pub args: HashMap<String, Vec<String>>,
    /// A command a node's agent runs under (e.g. `ip netns exec NS`: it execs, so the pid
    /// is the agent's), and the etcd URLs it is given instead of the harness's.
    pub wrap: HashMap<String, Vec<String>>,
    pub etcd_urls: HashMap<String, String>,
}

pub const TTL: u64 = 2;

impl Cluster {
    /// None: etcd is not installed (the test skips, saying why).
    pub fn new(etcd_members: usize, config: &str) -> Option<Cluster> {
        Cluster::on(Etcd::start(etcd_members)?, config)
    }

    /// Agents over the etcd `etcd` (started by the caller, e.g. listening on more hosts).
    pub fn on(etcd: Etcd, config: &str) -> Option<Cluster> {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agent.json");
        std::fs::write(&cfg, config).unwrap();
        let store = EtcdStore::new(&etcd.urls(), Duration::from_millis(1000)).unwrap();
        Some(Cluster {
            etcd,
            name: "t".into(),
            dir,
            agents: HashMap::new(),
            store,
            keys: Keys::new("t").unwrap(),
            config: cfg,
            deaths: HashMap::new(),
            args: HashMap::new(),
            wrap: HashMap::new(),
            etcd_urls: HashMap::new(),
        })
    }

    pub fn state_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    pub fn out(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.out"))
    }

    pub fn command(&self, node: &str, state_dir: &std::path::Path) -> Command {
        let bin = env!("CARGO_BIN_EXE_ferry").to_string();
        let wrap = self.wrap.get(node).cloned().unwrap_or_default();
        let mut argv = wrap.into_iter().chain([bin]);
        let mut c = Command::new(argv.next().expect("the binary at least"));
        c.args(argv);
        let urls = self.etcd_urls.get(node).cloned();
        c.args([
            "agent",
            "--cluster",
            &self.name,
            "--node",
            node,
            "--etcd",
            &urls.unwrap_or_else(|| self.etcd.urls()),
        ])
        .args(["--listen", "127.0.0.1:0", "--json", "--state-dir"])
        .arg(state_dir)
        .arg("--config")
        .arg(&self.config)
        .args(self.args.get(node).into_iter().flatten());
        c
    }

    pub fn start(&mut self, node: &str) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out(node))
            .unwrap();
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{node}.err")))
            .unwrap();
        let child = self
            .command(node, &self.state_dir(node))
            .stdout(out)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.agents.insert(node.to_string(), child);
    }

    /// The pid of the agent process running as `node` (`ip netns exec` execs in place).
    pub fn pid(&self, node: &str) -> Option<u32> {
        self.agents.get(node).map(|c| c.id())
    }

    pub fn signal(&self, node: &str, sig: i32) {
        let pid = self.pid(node).expect("an agent started as this node") as i32;
        // SAFETY: a child of ours, by pid.
        unsafe { libc::kill(pid, sig) };
    }

    pub fn kill9(&mut self, node: &str) {
        let mut c = self.agents.remove(node).unwrap();
        let _ = c.kill();
        let _ = c.wait();
        let at = ferry::agent::state::now_ms();
        self.deaths.entry(node.to_string()).or_default().push(at);
    }

    /// SIGTERM; the exit status.
    pub fn term(&mut self, node: &str, limit: Duration) -> Option<std::process::ExitStatus> {
        self.signal(node, libc::SIGTERM);
        let mut c = self.agents.remove(node).unwrap();
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = c.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    pub fn assignment(&self) -> Option<(i64, Assignment)> {
        let kv = self.store.get(&self.keys.assignment()).ok()??;
        Some((kv.mod_rev, Assignment::from_json(&kv.value).unwrap()))
    }

    pub fn live(&self) -> Vec<String> {
        let snap = self.store.range(&self.keys.members(), true).unwrap();
        snap.kvs
            .iter()
            .map(|k| k.key[self.keys.members().len()..].to_string())
            .collect()
    }

    /// The admin API address an agent registered.
    pub fn member_addr(&self, node: &str) -> String {
        let kv = self
            .store
            .get(&self.keys.member(node))
            .unwrap()
            .expect("member key");
        let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        v["addr"].as_str().unwrap().to_string()
    }

    /// (leader node, epoch).
    pub fn leader(&self) -> Option<(String, i64)> {
        let kv = self.store.get(&self.keys.leader()).ok()??;
        let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        Some((v["node"].as_str().unwrap().to_string(), kv.create_rev))
    }

    /// An assignment over exactly `members`, settled (no hand-over), every partition owned.
    pub fn settled_on(&self, members: &[&str]) -> Option<Assignment> {
        let (_, a) = self.assignment()?;
        let mut want: Vec<String> = members.iter().map(|s| s.to_string()).collect();
        want.sort();
        // written for the members' current runs (not a restarted one's earlier run)
        let runs = self.store.range(&self.keys.members(), true).ok()?;
        let current = want.iter().all(|m| {
            runs.kvs
                .iter()
                .any(|kv| kv.key == self.keys.member(m) && a.incarnation(m) == Some(kv.create_rev))
        });
        (a.members == want
            && current
            && a.next.is_none()
            && a.owners.iter().all(|&o| (o as usize) < want.len()))
        .then_some(a)
    }

    pub fn wait_settled(&self, members: &[&str], limit: Duration) -> Assignment {
        let start = Instant::now();
        loop {
            if let Some(a) = self.settled_on(members) {
                return a;
            }
            assert!(
                start.elapsed() < limit,
                "no settled assignment over {members:?} within {limit:?}: {:?}; live {:?}\n{}",
                self.assignment()
                    .map(|(_, a)| (a.members, a.seq, a.next.is_some())),
                self.live(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The JSON events one agent printed.
    pub fn events(&self, node: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.out(node))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "err" || x == "out") {
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(8).collect();
                s += &format!("{}: {:?}\n", p.display(), tail);
            }
        }
        s
    }
}

/// GET on an agent's admin API: (status code, body).
pub fn admin_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let code = r.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, r.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in self.agents.iter_mut() {
            // SAFETY: our child, by pid (a stopped one must be continued to die cleanly).
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Agent settings for tests: short TTL, windows and rounds.
pub fn config(cold_ms: u64, scale_ms: u64) -> String {
    config_ttl(TTL, cold_ms, scale_ms)
}

pub fn config_ttl(ttl: u64, cold_ms: u64, scale_ms: u64) -> String {
    format!(
        r#"{{"ttl_secs": {ttl}, "windows": {{"cold_ms": {cold_ms}, "scale_ms": {scale_ms}, "emergency_ms": 0}}, "poll_ms": 100, "request_timeout_ms": 700, "progress_interval_ms": 500, "copy_threads": 1, "lost_after_secs": 2}}"#
    )
}

impl Cluster {
    /// Waits until each agent has applied assignment `seq` and says it is stable.
    pub fn wait_stable(&self, nodes: &[&str], seq: u64, limit: Duration) {
        let start = Instant::now();
        for n in nodes {
            loop {
                let ev = self.events(n);
                let applied = ev
                    .iter()
                    .rev()
                    .find(|e| e["event"] == "owned")
                    .and_then(|e| e["seq"].as_u64());
                let state = ev
                    .iter()
                    .rev()
                    .find(|e| e["event"] == "state")
                    .and_then(|e| e["to"].as_str().map(String::from));
                if applied >= Some(seq) && state.as_deref() == Some("stable") {
                    break;
                }
                assert!(
                    start.elapsed() < limit,
                    "{n} not stable on seq {seq}: applied {applied:?}, state {state:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// `ferry ARGS --cluster NAME --etcd URLS` against the harness's cluster.
pub fn ferry(c: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .args(["--cluster", &c.name, "--etcd", &c.etcd.urls()])
        .output()
        .unwrap()
}

/// `o`, which must have succeeded (else its output is the panic).
pub fn ok(o: std::process::Output) -> std::process::Output {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Disks of a set: (disk id, node).
pub type Disks<'a> = &'a [(&'a str, &'a str)];

/// A topology v2 of sets `(set, state, [(disk, node)])`, each disk at `root/<set><disk>`:
/// the directories made and the disks' identities written.
pub fn topo_v2(root: &Path, g: u64, sets: &[(&str, &str, Disks)]) -> Topology {
    use serde_json::{Value, json};
    let sets: Vec<Value> = sets
        .iter()
        .map(|(s, state, disks)| {
            let disks: Vec<Value> = disks
                .iter()
                .map(|(d, n)| json!({"id": d, "path": root.join(format!("{s}{d}")), "node": n}))
                .collect();
            json!({"id": s, "state": state, "weight": 1.0, "disks": disks})
        })
        .collect();
    let v = json!({"generation": g, "pools": [{"id": "p", "sets": sets}]});
    let t = Topology::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
    for s in t.sets() {
        for d in &s.disks {
            std::fs::create_dir_all(&d.path).unwrap();
        }
    }
    ferry::cluster::identity::init(&t, Path::new("test topology")).unwrap();
    t
}
