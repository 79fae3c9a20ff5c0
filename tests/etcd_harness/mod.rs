//! Real etcd for tests: members on free loopback ports with temp data dirs, stopped by pid.
//! `Etcd::start` returns None (and prints why) when the `etcd` binary is not installed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Member {
    pub name: String,
    pub client: String,
    /// The client port on other hosts too (`Etcd::start_on`), e.g. a veth's address.
    pub also: Vec<String>,
    peer: String,
    dir: PathBuf,
    child: Option<Child>,
}

pub struct Etcd {
    pub members: Vec<Member>,
    _tmp: tempfile::TempDir,
}

#[path = "../common/ports.rs"]
mod ports;
/// A port outside the ephemeral range (`ports`), for etcd members and the cluster harness's
/// agents (one counter for both: never the same port twice in a test binary).
pub fn free_port() -> u16 {
    ports::free_port_in(0)
}

pub fn installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Etcd {
    /// A cluster of `n` members, each answering on its client URL; None: etcd not installed.
    pub fn start(n: usize) -> Option<Etcd> {
        Etcd::start_on(n, &[])
    }

    /// Like `start`, each member also listening on its client port at `hosts` (IPs).
    pub fn start_on(n: usize, hosts: &[&str]) -> Option<Etcd> {
        if !installed() {
            eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
            return None;
        }
        // Data dirs in memory where there is /dev/shm: etcd fsyncs every write, and on a disk
        // busy with other work a slow fsync outlasts the short test TTLs.
        let base = Path::new("/dev/shm");
        let tmp = if base.is_dir() {
            tempfile::Builder::new()
                .prefix("ferry-etcd")
                .tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                also: vec![],
                peer: format!("http://127.0.0.1:{}", free_port()),
                dir: tmp.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        for m in &mut members {
            let port = m.client.rsplit(':').next().unwrap().to_string();
            m.also = hosts.iter().map(|h| format!("http://{h}:{port}")).collect();
        }
        let cluster: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect();
        let cluster = cluster.join(",");
        for m in &mut members {
            m.spawn(&cluster, true);
        }
        let e = Etcd { members, _tmp: tmp };
        // As long as `restart_all` gives a cold cluster to elect a leader: the first member
        // answers only once a quorum is up (20 s was exceeded once with 3 tests starting
        // 3-member clusters at the same time).
        for m in &e.members {
            m.wait_ready(Duration::from_secs(30));
        }
        Some(e)
    }

    /// The client URLs, comma-separated (the agents' --etcd).
    pub fn urls(&self) -> String {
        let v: Vec<&str> = self.members.iter().map(|m| m.client.as_str()).collect();
        v.join(",")
    }

    /// The client URLs at `host` (one of `start_on`'s), comma-separated.
    pub fn urls_at(&self, host: &str) -> String {
        let v: Vec<String> = self
            .members
            .iter()
            .map(|m| m.client.replace("127.0.0.1", host))
            .collect();
        v.join(",")
    }

    pub fn stop(&mut self, i: usize) {
        self.members[i].kill();
    }

    fn cluster_flag(&self) -> String {
        let v: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect();
        v.join(",")
    }

    /// Starts a stopped member again on the same data dir (the others must hold a quorum).
    pub fn restart(&mut self, i: usize) {
        let cluster = self.cluster_flag();
        self.members[i].spawn(&cluster, false);
        self.members[i].wait_ready(Duration::from_secs(20));
    }

    /// Starts every stopped member, then waits for all to serve: one member alone has no
    /// quorum, so waiting for each before starting the next would wait forever.
    pub fn restart_all(&mut self) {
        let cluster = self.cluster_flag();
        for m in self.members.iter_mut().filter(|m| m.child.is_none()) {
            m.spawn(&cluster, false);
        }
        for m in &self.members {
            m.wait_ready(Duration::from_secs(30));
        }
    }

    /// The index of the raft leader, once the members agree on one.
    pub fn wait_leader(&self, limit: Duration) -> usize {
        let start = Instant::now();
        while start.elapsed() < limit {
            let ids: Vec<Option<(String, String)>> =
                self.members.iter().map(Member::status).collect();
            let leaders: Vec<&String> = ids.iter().flatten().map(|(_, l)| l).collect();
            if let Some(l) = leaders.first()
                && leaders.iter().all(|x| x == l)
                && let Some(i) = ids
                    .iter()
                    .position(|s| s.as_ref().is_some_and(|(me, _)| me == *l))
            {
                return i;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd members agreed on no leader within {limit:?}");
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.members[i].child.as_ref().unwrap().id()
    }
}

impl Member {
    fn spawn(&mut self, cluster: &str, new: bool) {
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let listen = std::iter::once(&self.client).chain(&self.also);
        let listen: Vec<&str> = listen.map(String::as_str).collect();
        let child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &listen.join(","),
                "--advertise-client-urls",
                &self.client,
            ])
            .args([
                "--listen-peer-urls",
                &self.peer,
                "--initial-advertise-peer-urls",
                &self.peer,
            ])
            .args([
                "--initial-cluster",
                cluster,
                "--initial-cluster-token",
                "ferry-test",
            ])
            .args([
                "--initial-cluster-state",
                if new { "new" } else { "existing" },
            ])
            .args([
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--pre-vote",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// Waits until the member serves reads (a one-member cluster elects itself at once; a
    /// member of several needs a quorum, so only the first wait may take long).
    fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        let addr = self.client.trim_start_matches("http://").to_string();
        while start.elapsed() < limit {
            if let Ok((200, body)) = ferry::agent::http::post(
                &addr,
                "/v3/kv/range",
                br#"{"key":"AA=="}"#,
                Duration::from_millis(500),
            ) && String::from_utf8_lossy(&body).contains("header")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "etcd member {} did not become ready in {limit:?}",
            self.name
        );
    }

    /// (this member's id, the leader's id) from /v3/maintenance/status; None: not answering
    /// or stopped, or no leader known.
    fn status(&self) -> Option<(String, String)> {
        self.child.as_ref()?;
        let addr = self.client.trim_start_matches("http://");
        let (code, body) = ferry::agent::http::post(
            addr,
            "/v3/maintenance/status",
            b"{}",
            Duration::from_millis(500),
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let me = v["header"]["member_id"].as_str()?.to_string();
        let leader = v["leader"].as_str()?.to_string();
        (code == 200 && leader != "0").then_some((me, leader))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}
