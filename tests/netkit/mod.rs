#![allow(dead_code)]
//! Helpers of the network tests: a CA, a real `ferry serve` (optionally inside a network
//! namespace), and a TCP fault proxy that delays and resets connections.

pub mod bridge;
pub mod netns;

use super::common::*;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A CA with a server certificate for `server` (a host name or an IP) and a client one.
pub fn pki(dir: &Path, server: &str) -> (PathBuf, PathBuf) {
    ferry::net::certs::init(dir).unwrap();
    ferry::net::certs::issue(dir, server, 0, 30).unwrap();
    ferry::net::certs::issue(dir, "client", 0, 30).unwrap();
    (dir.join(server), dir.join("client"))
}

/// A running `ferry serve`, killed (SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// The socket paths (FERRY_NET_IO) the network behaviour tests run on: poll(2), and
/// io_uring where this kernel has its socket ops.
pub fn net_paths() -> Vec<&'static str> {
    match ferry::io::uring::UringBackend::probe_sockets() {
        Ok(_) => vec!["poll", "uring"],
        Err(e) => {
            eprintln!("SKIP the io_uring socket path: {e}");
            vec!["poll"]
        }
    }
}

/// FERRY_NET_IO=`io` for a ferry process.
pub fn net_io(io: &str) -> [(&str, &str); 1] {
    [("FERRY_NET_IO", io)]
}

/// Fails unless the server really drove its sockets the way `io` asks (a ring that cannot
/// be made falls back to poll, and says so).
pub fn assert_on_path(s: &Server, io: &str) {
    let log = s.log();
    assert!(
        !log.contains("io_uring for sockets unavailable"),
        "{io}: the server fell back to poll: {log}"
    );
}

/// `ferry serve --listen ADDR:PORT` (port 0: any) exporting `exports`; `netns`: run inside
/// that network namespace.
pub fn serve(
    tls: &Path,
    exports: &[(&str, &Path)],
    addr: &str,
    port: u16,
    netns: Option<&str>,
) -> Server {
    serve_env(tls, exports, addr, port, netns, &[])
}

/// [`serve`] with `env` set for the server (e.g. [`net_io`]).
pub fn serve_env(
    tls: &Path,
    exports: &[(&str, &Path)],
    addr: &str,
    port: u16,
    netns: Option<&str>,
    env: &[(&str, &str)],
) -> Server {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, BIN]);
            c
        }
        None => Command::new(BIN),
    };
    cmd.envs(env.iter().copied());
    let listen = format!("{addr}:{port}");
    cmd.args(["serve", "--listen", &listen, "--tls-dir"])
        .arg(tls)
        .arg("--state-dir")
        .arg(tls.with_extension("serve-state"));
    for (n, d) in exports {
        let mut e = std::ffi::OsString::from(format!("{n}="));
        e.push(d.as_os_str());
        cmd.arg("--export").arg(e);
    }
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().expect("serve says where it listens").unwrap();
    let port: u16 = first
        .split(&format!("listening on {addr}:"))
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first:?}"));
    let log = Arc::new(Mutex::new(String::new()));
    let l2 = log.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let mut g = l2.lock().unwrap();
            g.push_str(&l);
            g.push('\n');
        }
    });
    Server { child, port, log }
}

pub fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

/// The arguments `copy ARGS... --tls-dir TLS --state-dir STATE`.
pub fn copy_args<'a>(args: &[&'a OsStr], tls: &'a Path, state: &'a Path) -> Vec<&'a OsStr> {
    let mut a: Vec<&OsStr> = vec![os("copy")];
    a.extend_from_slice(args);
    a.extend([
        os("--tls-dir"),
        tls.as_os_str(),
        os("--state-dir"),
        state.as_os_str(),
    ]);
    a
}

/// `ferry copy ARGS... --tls-dir TLS --state-dir STATE`, to be started by the caller.
pub fn copy_cmd(args: &[&OsStr], tls: &Path, state: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(copy_args(args, tls, state));
    c
}

/// `ferry copy ARGS... --tls-dir TLS --state-dir STATE` (killed after 180 s: a hang).
pub fn copy(args: &[&OsStr], tls: &Path, state: &Path) -> std::process::Output {
    ferry_with(&copy_args(args, tls, state), Duration::from_secs(180), None)
}

/// The JSON report of a `--json` run.
pub fn report(o: &std::process::Output) -> serde_json::Value {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "report")
        .unwrap_or_else(|| panic!("no JSON report; stderr: {}", stderr(o)))
}

/// Temp names (of any ferry run) anywhere under `root`.
pub fn temps(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.map_while(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
            if ferry::temp::is_temp_name(e.file_name().as_encoded_bytes()) {
                out.push(e.path());
            }
        }
    }
    out
}

/// Small files in nested directories, symlinks, a read-only directory, and big files
/// (`big` bytes each: split across streams when at least 32 MiB).
pub fn mixed_tree(root: &Path, small: usize, big: &[usize]) {
    for i in 0..small {
        let d = root.join(format!("d{}/e{}", i % 7, i % 3));
        std::fs::create_dir_all(&d).unwrap();
        write_file(&d.join(format!("f{i:05}")), (i * 37) % 20_000, i as u64);
    }
    for (i, &n) in big.iter().enumerate() {
        write_file(&root.join(format!("big{i}")), n, 1000 + i as u64);
    }
    std::os::unix::fs::symlink("d0/e0", root.join("link")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    let ro = root.join("rodir");
    std::fs::create_dir_all(&ro).unwrap();
    write_file(&ro.join("inside"), 5000, 77);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
}

/// What the proxy does to one connection: reset it once this many bytes went through it
/// (both ways together); None: pass everything.
pub type ResetAfter = Option<u64>;

/// A TCP proxy to `127.0.0.1:upstream` that injects faults: each new connection asks `plan`
/// (with its number, from 0) when to reset it; `delay` is slept before every forwarded
/// piece; `reset_all` cuts every live connection at once.
pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    pub resets: Arc<AtomicUsize>,
    /// Bytes forwarded (both ways, every connection).
    pub bytes: Arc<AtomicU64>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.reset_all();
    }
}

/// Closes a connection with a reset (SO_LINGER 0), waking the pumps blocked on it.
fn cut(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

impl Proxy {
    pub fn start(
        upstream: u16,
        delay: Duration,
        plan: impl Fn(usize) -> ResetAfter + Send + 'static,
    ) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        let resets = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (st, lv, rs, by) = (stop.clone(), live.clone(), resets.clone(), bytes.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !st.load(Ordering::Relaxed) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    cut(&down);
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let limit = plan(n);
                n += 1;
                lv.lock().unwrap().push(down.try_clone().unwrap());
                lv.lock().unwrap().push(up.try_clone().unwrap());
                let passed = Arc::new(AtomicU64::new(0));
                for (a, b) in [(&down, &up), (&up, &down)] {
                    let (a, b) = (a.try_clone().unwrap(), b.try_clone().unwrap());
                    let (p, rs, by) = (passed.clone(), rs.clone(), by.clone());
                    std::thread::spawn(move || pump(a, b, [p, by], limit, delay, rs));
                }
            }
        });
        Proxy {
            port,
            stop,
            live,
            resets,
            bytes,
        }
    }

    /// Resets every connection open now.
    pub fn reset_all(&self) {
        for s in self.live.lock().unwrap().drain(..) {
            cut(&s);
        }
    }
}

/// Forwards `from` to `to`; `counts`: this connection's bytes, and every connection's.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    counts: [Arc<AtomicU64>; 2],
    limit: ResetAfter,
    delay: Duration,
    resets: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        counts[1].fetch_add(n as u64, Ordering::Relaxed);
        let before = counts[0].fetch_add(n as u64, Ordering::Relaxed);
        if let Some(lim) = limit
            && before + n as u64 > lim
        {
            // Forward up to the limit (a frame cut in the middle), then reset both ends.
            let keep = lim.saturating_sub(before) as usize;
            let _ = to.write_all(&buf[..keep.min(n)]);
            resets.fetch_add(1, Ordering::Relaxed);
            cut(&from);
            cut(&to);
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A small deterministic generator for the random fault points (seed printed by tests).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn seed() -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let s = std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(s | 1);
    eprintln!("fault seed {s} (FERRY_TEST_SEED={s} repeats it)");
    s
}

/// What the metadata fixture lacks and the network keeps too: a FIFO, a sparse file (64 MiB
/// with 8 KiB of data, ending in a hole), a name that is not UTF-8 and a symlink.
pub fn extras(root: &Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileExt;
    let fifo = root.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    set_mtime(&fifo, 1_400_000_000, 42);
    let f = std::fs::File::create(root.join("sparse")).unwrap();
    f.set_len(SPARSE_LEN).unwrap();
    f.write_all_at(&pattern(4096, 11), 1 << 20).unwrap();
    f.write_all_at(&pattern(4096, 12), 40 << 20).unwrap();
    write_file(&root.join(OsStr::from_bytes(b"bytes-\xff\xfe")), 13, 4);
    std::os::unix::fs::symlink("a/one", root.join("to-one")).unwrap();
}

pub const SPARSE_LEN: u64 = 64 << 20;

/// Bytes a file takes on disk.
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().blocks() * 512
}

/// Every regular file under a final name below `dst` has the bytes of its source in `src`
/// (nothing partial is named); how many there are.
pub fn nothing_partial(src: &Path, dst: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(dst.join(&rel)) else {
            continue;
        };
        for e in rd.map_while(Result::ok) {
            let r = rel.join(e.file_name());
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(r);
            } else if t.is_file() && !ferry::temp::is_temp_name(e.file_name().as_encoded_bytes()) {
                assert!(
                    files_equal(&src.join(&r), &dst.join(&r)),
                    "{r:?} is partial (or wrong) under its final name"
                );
                n += 1;
            }
        }
    }
    n
}

/// Bytes in regular files below `root` (temps included): how far a transfer got.
pub fn bytes_under(root: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.map_while(Result::ok) {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => n += m.len(),
                _ => {}
            }
        }
    }
    n
}

/// Waits for a spawned ferry (killed after `limit`: a hang, which fails the test).
pub fn finish(mut c: Spawned, limit: Duration) -> std::process::Output {
    let t0 = std::time::Instant::now();
    while c.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = c.kill();
            let o = c.wait_with_output().unwrap();
            panic!("ferry hung for {limit:?}; stderr: {}", stderr(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.wait_with_output().unwrap()
}

/// `ferry ctl JOB CMD --state-dir STATE` (must succeed): its answer.
pub fn ctl(state: &Path, id: &str, cmd: &str) -> String {
    let o = Command::new(BIN)
        .args(["ctl", id, cmd, "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(o.status.success(), "ferry ctl {cmd}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The next JSON event line named `event` (bounded wait).
pub fn wait_event(rx: &mpsc::Receiver<serde_json::Value>, event: &str) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let left = Duration::from_secs(120).saturating_sub(t0.elapsed());
        match rx.recv_timeout(left) {
            Ok(v) if v["event"] == event => return v,
            Ok(_) => {}
            Err(e) => panic!("no '{event}' event: {e}"),
        }
    }
}

/// `ferry copy ARGS...` running, and its JSON lines as they come.
pub fn copy_json(
    args: &[&std::ffi::OsStr],
    tls: &Path,
    state: &Path,
) -> (Spawned, mpsc::Receiver<serde_json::Value>) {
    let mut child = Spawned::new(
        copy_cmd(args, tls, state)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                let _ = tx.send(v);
            }
        }
    });
    (child, rx)
}
