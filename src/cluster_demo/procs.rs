//! The demo's processes: one etcd and the agents, children that die with the demo (a
//! parent-death signal, and a guard that stops them when dropped: agents by SIGTERM, then
//! SIGKILL after a grace period), and the temp dir, removed last.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped agent gets to finish before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// `n` distinct free ports on loopback. Each is held until all are taken: two binds in a row
/// may be given the same port once the first is closed.
pub fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let bind = |_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"));
    let held = (0..n).map(bind).collect::<Result<Vec<_>, _>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("local address of a bound port: {e}"))
}

/// Attempts at starting etcd: a port found free can be taken by another process before etcd
/// binds it (etcd then exits at once), and the next attempt takes new ones.
const ETCD_ATTEMPTS: usize = 3;

pub fn etcd_installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Everything the demo started; dropping it stops the children and removes `dir`.
pub struct Procs {
    pub dir: PathBuf,
    etcd: Option<Child>,
    pub etcd_url: String,
    agents: Vec<(String, Child)>,
}

/// The child is sent SIGKILL if the demo dies first (even by SIGKILL).
fn with_parent(c: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

impl Procs {
    pub fn new(dir: PathBuf) -> Result<Procs, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("create '{}': {e}", dir.display()))?;
        Ok(Procs {
            dir,
            etcd: None,
            etcd_url: String::new(),
            agents: Vec::new(),
        })
    }

    /// One etcd member on loopback; its data in memory where there is /dev/shm (a loaded
    /// disk's fsyncs outlast leases).
    pub fn start_etcd(&mut self) -> Result<(), String> {
        let shm = Path::new("/dev/shm");
        let data = if shm.is_dir() {
            shm.join(format!("ferry-demo-etcd-{}", std::process::id()))
        } else {
            self.dir.join("etcd")
        };
        let mut why = String::new();
        for _ in 0..ETCD_ATTEMPTS {
            match self.try_etcd(&data)? {
                None => return Ok(()),
                Some(w) => why = w,
            }
        }
        Err(format!(
            "etcd did not start in {ETCD_ATTEMPTS} attempts: {why}"
        ))
    }

    /// One attempt: None once etcd answers; Some(why) if it exited first (a port taken).
    fn try_etcd(&mut self, data: &Path) -> Result<Option<String>, String> {
        let ports = free_ports(2)?;
        let url = format!("http://127.0.0.1:{}", ports[0]);
        let purl = format!("http://127.0.0.1:{}", ports[1]);
        let log = self.log("etcd")?;
        let child = with_parent(Command::new("etcd").args(["--name", "demo", "--data-dir"]))
            .arg(data)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &purl])
            .args(["--initial-advertise-peer-urls", &purl])
            .args(["--initial-cluster", &format!("demo={purl}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start etcd: {e}"))?;
        let child = self.etcd.insert(child);
        self.etcd_url = url;
        let start = Instant::now();
        let addr = format!("127.0.0.1:{}", ports[0]);
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = child.try_wait() {
                self.etcd = None;
                let _ = std::fs::remove_dir_all(data);
                return Ok(Some(format!("etcd exited ({st}): {}", self.tail("etcd"))));
            }
            let body = br#"{"key":"AA=="}"#;
            let ok =
                crate::agent::http::post(&addr, "/v3/kv/range", body, Duration::from_millis(500));
            if matches!(ok, Ok((200, _))) {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "etcd did not answer at {} within 20 s",
            self.etcd_url
        ))
    }

    pub fn log(&self, name: &str) -> Result<std::fs::File, String> {
        let p = self.dir.join(format!("{name}.log"));
        std::fs::File::create(&p).map_err(|e| format!("create '{}': {e}", p.display()))
    }

    /// Starts `ferry ARGS` as agent `node` (its output in NODE.log).
    pub fn start_agent(&mut self, node: &str, args: &[String]) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let log = self.log(node)?;
        let err = log.try_clone().map_err(|e| format!("{node}.log: {e}"))?;
        let child = with_parent(Command::new(exe).args(args))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start agent {node}: {e}"))?;
        self.agents.push((node.to_string(), child));
        Ok(())
    }

    /// The last lines of a child's log (for a failure's message).
    pub fn tail(&self, name: &str) -> String {
        let p = self.dir.join(format!("{name}.log"));
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// A child that exited already (its name and status).
    pub fn exited(&mut self) -> Option<String> {
        let (n, s) = self.agents.iter_mut().find_map(|(n, c)| {
            let s = c.try_wait().ok()??;
            Some((n.clone(), s))
        })?;
        // what it said last (why it stopped), since the demo's dir goes with it
        Some(format!(
            "agent {n} exited ({s}); {n}.log ends:
{}",
            self.tail(&n)
        ))
    }

    fn stop_all(&mut self) {
        for (_, c) in &self.agents {
            // SAFETY: our child, by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let start = Instant::now();
        // A heap profile (`--features dhat-heap`) is written at the agent's exit: it may
        // take a while.
        let grace = match std::env::var_os("FERRY_DHAT") {
            Some(_) => GRACE * 24,
            None => GRACE,
        };
        for (_, c) in &mut self.agents {
            while start.elapsed() < grace && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.agents.clear();
        if let Some(mut e) = self.etcd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        let _ = std::fs::remove_dir_all(format!("/dev/shm/ferry-demo-etcd-{}", std::process::id()));
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop_all();
        if std::env::var_os("FERRY_DEMO_KEEP").is_none()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            eprintln!("ferry demo: could not remove {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_distinct() {
        let mut p = super::free_ports(64).unwrap();
        assert!(p.iter().all(|&x| x != 0));
        p.sort_unstable();
        p.dedup();
        assert_eq!(p.len(), 64);
    }
}
