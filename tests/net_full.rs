//! A full remote disk pauses a push like a full local one: the far end answers the entries
//! that did not fit with Full (nothing of them named, their temps removed), the client's job
//! pauses itself (`destination_full` and `state` events, `ferry ctl JOB status` says paused)
//! and, once there is room, `ferry ctl JOB resume` sends them again and the push completes with
//! the tree identical and no temps. The export is a small ext4 on a loop device (root),
//! mostly taken by a file outside the export that the test removes to make room.
//! A full local disk pauses a pull the same way: the client stops receiving (what fit is
//! named), says `destination_full`, waits for `ferry ctl JOB resume`, then pulls the rest.

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

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

/// `ferry copy --json --streams 2 SRC TO` running, and its JSON lines as they come.
fn push_json(
    src: &Path,
    to: &str,
    tls: &Path,
    state: &Path,
) -> (Spawned, mpsc::Receiver<serde_json::Value>) {
    let args = [os("--json"), os("--streams"), os("2"), os(src), os(to)];
    copy_json(&args, tls, state)
}

/// The small disk mounted at `mnt`, or why not (the test is skipped).
fn small_disk(t: &Path, mnt: &Path) -> Option<Mounted> {
    std::fs::create_dir(mnt).unwrap();
    match loop_ext4(&t.join("disk.img"), mnt, DISK) {
        Ok(m) => Some(m),
        Err(why) => {
            eprintln!("SKIP: {why}");
            None
        }
    }
}

/// The events left in `rx` once the process is gone (its printer thread ends at EOF): the
/// last `state` is completed, and it ran again after the pause.
fn assert_resumed_and_completed(rx: &mpsc::Receiver<serde_json::Value>) -> Vec<serde_json::Value> {
    let rest: Vec<serde_json::Value> = rx.iter().collect();
    let states: Vec<&str> = rest
        .iter()
        .filter(|v| v["event"] == "state")
        .map(|v| v["to"].as_str().unwrap())
        .collect();
    assert_eq!(states.last(), Some(&"completed"), "{states:?}");
    assert!(states.contains(&"running"), "resumed: {states:?}");
    rest
}

/// The job's id (its `start` event), then its `destination_full` (naming a path); two
/// seconds later it is still running and `ferry ctl JOB status` says paused.
fn assert_paused_for_room(
    child: &mut Spawned,
    rx: &mpsc::Receiver<serde_json::Value>,
    state: &Path,
) -> String {
    let id = wait_event(rx, "start")["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let full = wait_event(rx, "destination_full");
    assert!(
        full["path"].as_str().is_some_and(|p| !p.is_empty()),
        "{full}"
    );
    // Paused, not failed: the process waits.
    std::thread::sleep(Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "ended on a full disk");
    let status: serde_json::Value = serde_json::from_str(&ctl(state, &id, "status")).unwrap();
    assert_eq!(status["state"], "paused", "{status}");
    id
}

#[test]
fn a_full_local_disk_pauses_the_pull_and_resume_completes_it() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("mnt");
    let Some(_m) = small_disk(t.path(), &mnt) else {
        return;
    };
    let (exp, state) = (t.path().join("exp"), t.path().join("state"));
    let src = exp.join("src");
    bigger_than_the_disk(&src);
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    write_file(&mnt.join("filler"), FILLER, 1);
    let server = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    let from = format!("ferry://localhost:{}/data/src", server.port);
    let dst = mnt.join("pulled");
    let (mut child, rx) = copy_json(&[os("--json"), os(&from), os(&dst)], &ctls, &state);
    let id = assert_paused_for_room(&mut child, &rx, &state);
    let named = nothing_partial(&src, &dst);
    assert!(named > 0, "the files that fit are named");
    std::fs::remove_file(mnt.join("filler")).unwrap();
    assert_eq!(ctl(&state, &id, "resume"), "ok");
    let o = finish(child, Duration::from_secs(180));
    let err = stderr(&o);
    assert!(err.contains("destination full"), "{err}");
    assert!(o.status.success(), "{err}\nserver: {}", server.log());
    assert_same_tree(&src, &dst);
    assert_eq!(temps(&mnt), Vec::<std::path::PathBuf>::new());
    let rest = assert_resumed_and_completed(&rx);
    let r = rest
        .iter()
        .find(|v| v["event"] == "report")
        .expect("a report");
    assert_eq!(r["failed"].as_u64(), Some(0), "{r}");
    assert_eq!(r["files"].as_u64(), Some(607), "every file once: {r}");
}

#[test]
fn a_full_remote_disk_pauses_the_push_and_resume_completes_it() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("mnt");
    let Some(_m) = small_disk(t.path(), &mnt) else {
        return;
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
    let id = assert_paused_for_room(&mut child, &rx, &state);
    // Nothing partial has a final name.
    let named = nothing_partial(&src, &exp.join("src"));
    assert!(named > 0, "the files that fit are named");
    std::fs::remove_file(mnt.join("filler")).unwrap();
    assert_eq!(ctl(&state, &id, "resume"), "ok");
    let o = finish(child, Duration::from_secs(180));
    assert!(stderr(&o).contains("destination full"), "{}", stderr(&o));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(&src, &exp.join("src"));
    assert_eq!(temps(&exp), Vec::<std::path::PathBuf>::new());
    assert_resumed_and_completed(&rx);
}
