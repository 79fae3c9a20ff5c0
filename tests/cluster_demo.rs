//! `ferry demo --cluster`: the whole demo on a small load (skipped without etcd), its
//! Ctrl-C (everything it started stopped, its temp dirs gone), and the message and exit
//! code 2 without etcd.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn etcd_installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn demo(baseline_s: u32) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    let args = "demo --cluster --objects 400 --max-size 256K --clients 2 --client-ops 80";
    c.args(args.split(' '))
        .arg("--baseline")
        .arg(baseline_s.to_string());
    c
}

/// Processes whose command line names `needle` (the demo's agents and etcd carry its pid in
/// their state and data dirs).
fn running_with(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            v.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    v
}

fn leftovers(pid: u32) -> Vec<String> {
    let mut v = running_with(&format!("ferry-cluster-demo-{pid}"));
    v.extend(running_with(&format!("ferry-demo-etcd-{pid}")));
    let dir = std::env::temp_dir().join(format!("ferry-cluster-demo-{pid}"));
    if dir.exists() {
        v.push(format!("{} still exists", dir.display()));
    }
    v
}

#[test]
fn the_cluster_demo_rebalances_under_load_with_no_failed_read() {
    if !etcd_installed() {
        eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
        return;
    }
    let csv = tempfile::NamedTempFile::new().unwrap();
    let child = demo(3)
        .arg("--csv")
        .arg(csv.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("reads failed 0 (of ") && l.contains("writes failed 0")),
        "{text}"
    );
    assert!(
        text.contains("verified 400 objects: each once at its owner"),
        "{text}"
    );
    assert!(text.contains("client rebalance:"), "{text}");
    let moved = text
        .lines()
        .find(|l| l.starts_with("moved "))
        .expect("a moved line");
    assert!(moved.contains("(the ideal: "), "{moved}");
    let rows = std::fs::read_to_string(csv.path()).unwrap();
    assert!(rows.starts_with("t_s,phase,client_ops_s,client_p99_ms,migration_mb_s,"));
    assert!(rows.lines().any(|l| l.contains(",baseline,")), "{rows}");
    assert!(rows.lines().any(|l| l.contains(",rebalance,")), "{rows}");
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "everything stopped and removed"
    );
}

/// `--seed`: the objects written onto the disks before the agents start are served (the
/// clients' GETs check their bytes), moved, and verified at their owners like loaded ones.
#[test]
fn seeded_objects_are_served_moved_and_verified_like_loaded_ones() {
    if !etcd_installed() {
        eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
        return;
    }
    let out = demo(2).arg("--seed").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
    assert!(
        text.lines().any(|l| l.starts_with("seeded 400 objects")),
        "{text}"
    );
    assert!(
        !text.contains("loaded "),
        "nothing loaded through S3: {text}"
    );
    let reads = text
        .lines()
        .find_map(|l| l.strip_prefix("reads failed 0 (of "))
        .unwrap_or_else(|| panic!("no failed read: {text}"));
    let n: u64 = reads.split(')').next().unwrap().parse().unwrap();
    assert!(n > 20, "the clients read seeded objects: {text}");
    let moved = text
        .lines()
        .find(|l| l.starts_with("moved "))
        .expect("a moved line");
    let (got, ideal) = moved.split_once("(the ideal: ").unwrap();
    let count = |s: &str| {
        s.split_whitespace()
            .find_map(|w| w.parse::<u64>().ok())
            .unwrap()
    };
    assert!(count(got) > 0 && count(got) <= count(ideal), "{moved}");
    assert!(
        text.contains("verified 400 objects: each once at its owner"),
        "{text}"
    );
}

#[test]
fn ctrl_c_stops_everything_the_demo_started() {
    if !etcd_installed() {
        eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
        return;
    }
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = demo(600)
        .stdout(Stdio::piped())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait for the client load: etcd and four agents are up by then.
    let seen = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("client load:"));
    assert!(
        seen,
        "the demo did not get to its client load: {}",
        std::fs::read_to_string(err.path()).unwrap_or_default()
    );
    assert!(!leftovers(pid).is_empty(), "the demo's processes run");
    // SAFETY: our child, by pid.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the demo did not stop within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "interrupted");
    assert_eq!(leftovers(pid), Vec::<String>::new(), "nothing left behind");
}

#[test]
fn without_etcd_it_says_how_to_install_it_and_exits_2() {
    let empty = tempfile::tempdir().unwrap();
    let out = demo(3).env("PATH", empty.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("etcd is not installed"), "{err}");
    assert!(err.contains("apt-get install etcd-server"), "{err}");
}
