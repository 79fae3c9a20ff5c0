//! A full remote disk pauses a push like a full local one: the far end answers the entries
//! that did not fit with Full (nothing of them named, their temps removed), the client's job
//! pauses itself (`destination_full` and `state` events, `ferry ctl JOB status` says paused)
//! and, once there is room, `ferry ctl JOB resume` sends them again and the push completes with
//! the tree identical and no temps. The export is a small ext4 on a loop device (root),
//! mostly taken by a file outside the export that the test removes to make room.

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DISK: u64 = 128 << 20;
/// Leaves ~44 MiB free: less than the tree.
const FILLER: usize = 80 << 20;

/// ~73 MiB: small files in directories, 4 MiB files and a 40 MiB one (split over streams).
fn bigger_than_the_disk(src: &Path) {
    for i in 0..600 {
        let d = src.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&d).unwrap();
        write_file(&d.join(format!("s{i:04}")), 16 << 10, i);
    }
    for i in 0..6 {
        write_file(&src.join(format!("m{i:02}")), 4 << 20, 5000 + i);
    }
    write_file(&src.join("huge"), 40 << 20, 9999);
}

fn ctl(state: &Path, id: &str, cmd: &str) -> String {
    let o = Command::new(BIN)
        .args(["ctl", id, cmd, "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(o.status.success(), "ferry ctl {cmd}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The next JSON event line named `event` (bounded wait).
fn wait_event(rx: &mpsc::Receiver<serde_json::Value>, event: &str) -> serde_json::Value {
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

/// `ferry copy --json --streams 2 SRC TO` running, and its JSON lines as they come.
fn push_json(
    src: &Path,
    to: &str,
    tls: &Path,
    state: &Path,
) -> (Spawned, mpsc::Receiver<serde_json::Value>) {
    let args = [os("--json"), os("--streams"), os("2"), os(src), os(to)];
    let mut child = Spawned::new(
        copy_cmd(&args, tls, state)
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

#[test]
fn a_full_remote_disk_pauses_the_push_and_resume_completes_it() {
    let t = tempfile::tempdir().unwrap();
    let (img, mnt) = (t.path().join("disk.img"), t.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let _m = match loop_ext4(&img, &mnt, DISK) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    bigger_than_the_disk(&src);
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    write_file(&mnt.join("filler"), FILLER, 1);
    let exp = mnt.join("exp");
    std::fs::create_dir(&exp).unwrap();
    let server = serve(&stls, &[("disk", &exp)], "127.0.0.1", 0, None);
    let to = format!("ferry://localhost:{}/disk/", server.port);
    let (mut child, rx) = push_json(&src, &to, &ctls, &state);
    let id = wait_event(&rx, "start")["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let full = wait_event(&rx, "destination_full");
    assert!(
        full["path"].as_str().is_some_and(|p| !p.is_empty()),
        "{full}"
    );
    // Paused, not failed: the process waits, nothing partial has a final name.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the push ended on a full disk"
    );
    let status: serde_json::Value = serde_json::from_str(&ctl(&state, &id, "status")).unwrap();
    assert_eq!(status["state"], "paused", "{status}");
    let named = nothing_partial(&src, &exp.join("src"));
    assert!(named > 0, "the files that fit are named");
    std::fs::remove_file(mnt.join("filler")).unwrap();
    assert_eq!(ctl(&state, &id, "resume"), "ok");
    let o = finish(child, Duration::from_secs(180));
    assert!(stderr(&o).contains("destination full"), "{}", stderr(&o));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(&src, &exp.join("src"));
    assert_eq!(temps(&exp), Vec::<std::path::PathBuf>::new());
    let mut states = Vec::new();
    while let Ok(v) = rx.try_recv() {
        if v["event"] == "state" {
            states.push(v["to"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        states.last().map(String::as_str),
        Some("completed"),
        "{states:?}"
    );
    assert!(
        states.contains(&"running".to_string()),
        "resumed: {states:?}"
    );
}
