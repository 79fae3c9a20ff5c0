#![allow(dead_code)]
//! Helpers for the integration tests: run the real binary with a time limit, build fixtures.

pub mod metafix;
pub mod placed;
pub mod s3client;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ferry");

pub fn is_root() -> bool {
    // SAFETY: trivial getter.
    unsafe { libc::geteuid() == 0 }
}

/// True when this host lets us create an io_uring; tests for that backend skip otherwise.
pub fn uring_available() -> bool {
    matches!(ferry::io::probe_uring(), ferry::io::Probe::Available { .. })
}

/// The backends every behaviour test runs against (uring only where the kernel allows it).
pub fn backends() -> Vec<&'static str> {
    let mut v = vec!["sync"];
    if uring_available() {
        v.push("uring");
    } else {
        eprintln!("SKIP io_uring variant: io_uring is not available on this host");
    }
    v
}

/// Runs ferry with args; a run longer than `limit` is killed and fails the test (a hang).
pub fn ferry_with(args: &[&std::ffi::OsStr], limit: Duration, uid: Option<u32>) -> Output {
    ferry_env(args, limit, uid, &[])
}

/// [`ferry_with`] with `env` set for the run (e.g. FERRY_NET_IO: the socket path).
pub fn ferry_env(
    args: &[&std::ffi::OsStr],
    limit: Duration,
    uid: Option<u32>,
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.envs(env.iter().copied());
    if let Some(u) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(u).gid(u);
    } else {
        cmd.env("XDG_STATE_HOME", state_home());
    }
    let mut child = cmd.spawn().expect("spawn ferry");
    // Drained while it runs: output past the pipe's 64 KiB would block the child forever.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|o| Box::new(o) as _));
    let err = drain(child.stderr.take().map(|e| Box::new(e) as _));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
            return Output {
                status,
                stdout,
                stderr,
            };
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ferry {:?} hung for {:?}; stderr: {}",
                args,
                limit,
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Where runs without --state-dir keep their jobs: one directory per test process under the
/// temp dir, not the user's ~/.local/state (which collected a directory per test run). Runs as
/// another user keep the default (this directory is root's).
pub fn state_home() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ferry-test-state-{}", std::process::id()));
        fs::create_dir_all(&d).expect("test state directory");
        d
    })
}

pub fn ferry<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let a: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_ref()).collect();
    ferry_with(&a, Duration::from_secs(120), None)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Deterministic bytes: every file's content depends on its seed, so a swapped or shifted
/// chunk shows up as a difference.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = ferry::demo::XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

pub fn write_file(p: &Path, len: usize, seed: u64) {
    let mut f = fs::File::create(p).unwrap();
    f.write_all(&pattern(len, seed)).unwrap();
}

/// Sizes around every boundary of a 64 KiB buffer and a 256 KiB segment.
pub const BOUNDARY_SIZES: &[usize] = &[
    0,
    1,
    4095,
    4096,
    4097,
    65535,
    65536,
    65537,
    131072,
    262143,
    262144,
    262145,
    3 * 262144 + 5,
    (1 << 20) + 3,
];

/// A tree with many shapes: boundary sizes, deep and wide dirs, symlinks (relative, absolute,
/// dangling, to a directory), odd modes, a read-only directory, a FIFO, odd names.
pub fn build_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    let sizes = root.join("sizes");
    fs::create_dir(&sizes).unwrap();
    for (i, &n) in BOUNDARY_SIZES.iter().enumerate() {
        write_file(&sizes.join(format!("s{n}")), n, i as u64);
    }
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("level{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    write_file(&deep.join("bottom.txt"), 1234, 7);
    let wide = root.join("wide");
    fs::create_dir(&wide).unwrap();
    for i in 0..2500 {
        write_file(&wide.join(format!("w{i:05}")), i % 700, 1000 + i as u64);
    }
    std::os::unix::fs::symlink("sizes/s4096", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("deep", root.join("dir-link")).unwrap();
    let odd = root.join("odd");
    fs::create_dir(&odd).unwrap();
    write_file(&odd.join("-leading-dash"), 10, 1);
    write_file(&odd.join("new\nline"), 11, 2);
    write_file(&odd.join("sp ace"), 12, 3);
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"bytes-\xff\xfe");
        write_file(&odd.join(name), 13, 4);
    }
    write_file(&odd.join("x".repeat(255)), 14, 5);
    let ro = odd.join("ro-file");
    write_file(&ro, 100, 6);
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o444)).unwrap();
    let exe = odd.join("exe");
    write_file(&exe, 100, 8);
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o751)).unwrap();
    let fifo = odd.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // A read-only directory with content: must be filled before it gets its mode.
    let rodir = root.join("rodir");
    fs::create_dir(&rodir).unwrap();
    write_file(&rodir.join("inside"), 5000, 9);
    fs::set_permissions(&rodir, fs::Permissions::from_mode(0o555)).unwrap();
    // Set an old, nanosecond mtime on a file and a directory.
    set_mtime(&sizes.join("s4097"), 1_000_000_000, 123_456_789);
    set_mtime(&sizes, 1_200_000_000, 987_654_321);
}

pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let t = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: valid C string and two timespecs.
    assert_eq!(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                t.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        0
    );
}

/// Independent comparer (does not use ferry's own code): content byte for byte, type, mode,
/// mtime (ns), link targets, and the same set of names in every directory.
pub fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ma = fs::symlink_metadata(a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    let mb = fs::symlink_metadata(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    assert_eq!(ma.file_type(), mb.file_type(), "type of {}", b.display());
    if ma.file_type().is_symlink() {
        assert_eq!(
            fs::read_link(a).unwrap(),
            fs::read_link(b).unwrap(),
            "{}",
            b.display()
        );
        return;
    }
    assert_eq!(ma.mode(), mb.mode(), "mode of {}", b.display());
    assert_eq!(
        (ma.mtime(), ma.mtime_nsec()),
        (mb.mtime(), mb.mtime_nsec()),
        "mtime of {}",
        b.display()
    );
    if ma.is_file() {
        assert_eq!(ma.len(), mb.len(), "size of {}", b.display());
        assert!(files_equal(a, b), "content of {}", b.display());
    } else if ma.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<PathBuf> = fs::read_dir(p)
                .unwrap()
                .map(|e| PathBuf::from(e.unwrap().file_name()))
                .collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "entries of {}", b.display());
        for n in na {
            assert_same_tree(&a.join(&n), &b.join(&n));
        }
    }
}

pub fn files_equal(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
    fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let k = f.read(&mut buf[n..]).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    }
}

/// A name of ferry's temp files (any job's token).
pub fn is_ferry_temp(name: &std::ffi::OsStr) -> bool {
    ferry::temp::is_temp_name(std::os::unix::ffi::OsStrExt::as_bytes(name))
}

/// The temp-name token of the job whose checkpoint (in the tests' state home) copies into
/// `dest`.
pub fn job_temp_token(dest: &Path) -> Option<String> {
    let dest = dest.canonicalize().ok()?;
    for e in fs::read_dir(state_home().join("ferry")).ok()?.flatten() {
        let Ok(text) = fs::read(e.path().join("checkpoint.json")) else {
            continue;
        };
        let cp: serde_json::Value = serde_json::from_slice(&text).ok()?;
        if cp["spec"]["dest"].as_str() == dest.to_str() {
            return cp["temp_token"].as_str().map(String::from);
        }
    }
    None
}

/// Names of temp files left anywhere under `root`.
pub fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else if is_ferry_temp(&e.file_name()) {
                out.push(p);
            }
        }
    }
    out
}

/// Entries of `dir` whose names carry ferry's mark (temp files, hidden trees).
pub fn ferry_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ferry-"))
        .collect()
}

/// The hidden trees (`--temp tree`) under `dir`.
pub fn hidden_trees(dir: &Path) -> Vec<PathBuf> {
    ferry_names(dir)
        .into_iter()
        .filter(|n| n.ends_with(".tree"))
        .map(|n| dir.join(n))
        .collect()
}

/// Makes a tree removable again (the read-only directories).
pub fn chmod_tree_writable(root: &Path) {
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+rwX")
        .arg(root)
        .status();
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit` (a hang).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}: hang"))
}

/// The final `{"event":"report",...}` line of `ferry copy --json` (JSON lines on stdout).
pub fn report_line(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}"))
    });
    let all: Vec<_> = lines.by_ref().collect();
    let last = all.last().cloned().expect("no output");
    assert_eq!(last["event"], "report", "the last line is the report");
    assert_eq!(all[0]["event"], "start", "the first line is the start");
    last
}

/// As root, tests run ferry as nobody (root reads everything, so "unreadable" needs another
/// user): `top` becomes traversable and each of `dirs` is given to nobody. No-op otherwise.
pub fn give_to_nobody(top: &Path, dirs: &[&Path]) {
    if !is_root() {
        return;
    }
    fs::set_permissions(top, fs::Permissions::from_mode(0o755)).unwrap();
    for d in dirs {
        let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    }
}

/// Starts `cmd` (its output discarded), SIGKILLs it after `delay` and reaps it; whether it
/// had already exited by then.
pub fn killed_after(cmd: &mut Command, delay: std::time::Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Spawned::new)
        .unwrap();
    std::thread::sleep(delay);
    let finished = child.try_wait().unwrap().is_some();
    child.kill().ok(); // SIGKILL
    child.wait().unwrap();
    finished
}

/// Runs `round(0)`, `round(1)`, ... (each kills a run and says whether it had finished
/// first) up to `rounds` times, until `want` kills landed mid-run or a run finished; the
/// kills that landed.
pub fn kills_mid_run(rounds: usize, want: usize, mut round: impl FnMut(usize) -> bool) -> usize {
    let mut kills = 0;
    for r in 0..rounds {
        if round(r) {
            break;
        }
        kills += 1;
        if kills >= want {
            break;
        }
    }
    kills
}

/// A spawned `ferry` that is killed (SIGKILL) and reaped when dropped, so a failing test never
/// leaves a copy running on after it (one once ran on for 50 minutes).
pub struct Spawned(Option<std::process::Child>);

impl Spawned {
    pub fn new(c: std::process::Child) -> Spawned {
        Spawned(Some(c))
    }

    /// As `Child::wait_with_output`: the guard's work is done once the child has exited.
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        self.0.take().expect("not waited yet").wait_with_output()
    }
}

impl std::ops::Deref for Spawned {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("not waited yet")
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("not waited yet")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits (bounded: 10 s) for a job in `state` to open its control socket; returns its id.
pub fn wait_for_socket(state: &Path) -> String {
    let start = Instant::now();
    loop {
        let found = fs::read_dir(state).ok().and_then(|mut rd| {
            rd.find_map(|e| {
                let e = e.ok()?;
                e.path()
                    .join("ctl.sock")
                    .exists()
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
        });
        if let Some(id) = found {
            return id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no control socket appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A mount that is unmounted when dropped (also when the test fails).
pub struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// mount ARGS... TARGET; None (the caller skips) when this machine cannot.
pub fn mount(args: &[&std::ffi::OsStr], target: &Path) -> Option<Mounted> {
    let ok = Command::new("mount")
        .args(args)
        .arg(target)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mounted(target.to_path_buf()))
}

/// A tmpfs of `size` (as mount's size=, e.g. "4m") at `target`.
pub fn mount_tmpfs(target: &Path, size: &str) -> Option<Mounted> {
    let opt = format!("size={size}");
    let args = [
        "-t".as_ref(),
        "tmpfs".as_ref(),
        "-o".as_ref(),
        opt.as_ref(),
        "tmpfs".as_ref(),
    ];
    mount(&args, target)
}

/// A fresh ext4 of `bytes` in the image `img`, mounted at `mnt` through a loop device (the
/// loop device goes with the unmount). Err: why this machine cannot (the caller skips).
pub fn loop_ext4(img: &Path, mnt: &Path, bytes: u64) -> Result<Mounted, &'static str> {
    if !is_root() {
        return Err("loop-device filesystems need root");
    }
    fs::File::create(img).unwrap().set_len(bytes).unwrap();
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(img)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        return Err("mkfs.ext4 is not installed (apt-get install e2fsprogs)");
    }
    mount(&["-o".as_ref(), "loop".as_ref(), img.as_os_str()], mnt)
        .ok_or("cannot mount a loop device here")
}
