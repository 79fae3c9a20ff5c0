//! Push sessions never outlive their client: a server session whose client was killed
//! stops at once instead of working through the input it had read ahead, and each session
//! writes its temps under its own token, so an immediate rerun never collides with it (it
//! once did: a few hundred "rename: ENOENT" failures, and names and directory times changing
//! after the rerun had finished).

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(180);

/// Every entry below `root` with its inode, mtime and ctime (a rename, a new inode or new
/// directory times show).
fn snapshot(root: &Path) -> Vec<(PathBuf, u64, i64, i64, i64, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue; // not there yet
        };
        for e in rd.map_while(Result::ok) {
            let Ok(m) = e.metadata() else { continue }; // a temp renamed meanwhile
            if m.is_dir() {
                stack.push(e.path());
            }
            let t = (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
            out.push((e.path(), m.ino(), t.0, t.1, t.2, t.3));
        }
    }
    out.sort();
    out
}

/// Regular files under a final name below `root` (cheap: no contents compared).
fn named(root: &Path) -> usize {
    snapshot(root)
        .iter()
        .filter(|e| {
            let name = e.0.file_name().unwrap_or_default().as_encoded_bytes();
            e.0.is_file() && !ferry::temp::is_temp_name(name)
        })
        .count()
}

fn push(src: &Path, to: &str, tls: &Path, state: &Path) -> Command {
    let mut c = copy_cmd(&[os("--streams"), os("1"), os(src), os(to)], tls, state);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

#[test]
fn a_killed_clients_session_stops_before_its_rerun_starts() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (src, exp, state) = (
        t.path().join("src"),
        t.path().join("exp"),
        t.path().join("state"),
    );
    // Many small files: the sender runs far ahead of the receiver, whose read-ahead fills.
    for d in 0..20 {
        std::fs::create_dir_all(src.join(format!("d{d:02}"))).unwrap();
        for i in 0..1000 {
            let p = src.join(format!("d{d:02}/f{i:04}"));
            write_file(&p, 100 + (i * 37) % 300, (d * 1000 + i) as u64);
        }
    }
    std::fs::create_dir(&exp).unwrap();
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    let to = format!("ferry://localhost:{}/data/", s.port);
    let mut c = Spawned::new(push(&src, &to, &ctls, &state).spawn().unwrap());
    let t0 = Instant::now();
    while named(&exp.join("src")) < 2000 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    c.kill().unwrap(); // SIGKILL, mid-push
    let _ = c.wait();
    nothing_partial(&src, &exp.join("src"));
    // At once: the killed client's session may still hold megabytes of its input.
    let o = finish(
        Spawned::new(push(&src, &to, &ctls, &state).spawn().unwrap()),
        LIMIT,
    );
    assert!(o.status.success(), "{}\nserver: {}", stderr(&o), s.log());
    assert!(!stderr(&o).contains("rename"), "{}", stderr(&o));
    assert_same_tree(&src, &exp.join("src"));
    // Nothing changes at the far end once the rerun is done: no session works on.
    let before = snapshot(&exp);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        before == snapshot(&exp),
        "names or times changed after the rerun"
    );
    assert!(temps(&exp).is_empty(), "{:?}", temps(&exp));
    assert!(s.log().contains("stopped after"), "{}", s.log());
}
