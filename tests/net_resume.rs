//! Pull resume: a pull whose client is killed (SIGKILL) resumes on a rerun without
//! receiving again what it already named (the client lists what it has; the server's quick
//! check skips it), and a rerun of a completed pull receives nothing. A pull whose
//! connection is reset mid-transfer reconnects with backoff and goes on; `ferry ctl JOB
//! pause` stops a pull (what was written is named, nothing more arrives) until `resume`, and
//! `cancel` ends it so; a pull killed inside a big file names neither it nor its batch.

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::process::{Command, Stdio};

fn named_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| !ferry::temp::is_temp_name(e.file_name().as_encoded_bytes()))
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_killed_pull_resumes_and_a_completed_one_receives_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (exp, dst, state) = (
        t.path().join("exp"),
        t.path().join("dst"),
        t.path().join("st"),
    );
    let src = exp.join("tree");
    std::fs::create_dir_all(src.join("a")).unwrap();
    for i in 0..3000 {
        write_file(&src.join(format!("a/f{i:04}")), 100 + i % 300, i as u64);
    }
    write_file(&src.join("zz-big"), 96 << 20, 7);
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    let from = format!("ferry://localhost:{}/data/tree", s.port);
    let mut client = Command::new(BIN)
        .args(["copy", &from])
        .arg(&dst)
        .arg("--tls-dir")
        .arg(&ctls)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while named_in(&dst.join("a")) < 1100 {
        assert!(t0.elapsed().as_secs() < 60, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    client.kill().unwrap();
    client.wait().unwrap();
    let before = named_in(&dst.join("a"));
    assert!(before < 3000, "killed before the end");
    // Every final name holds the whole file.
    for e in std::fs::read_dir(dst.join("a")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if ferry::temp::is_temp_name(name.as_encoded_bytes()) {
            continue;
        }
        assert!(
            files_equal(&e.path(), &src.join("a").join(&name)),
            "{name:?} partial"
        );
    }
    let o = copy(&[os("--json"), os(&from), dst.as_os_str()], &ctls, &state);
    assert!(
        o.status.success(),
        "rerun: {}\nserver: {}",
        stderr(&o),
        s.log()
    );
    let r = report(&o);
    let files = r["files"].as_u64().unwrap();
    assert!(files <= 3001 - before as u64, "resent completed files: {r}");
    assert!(r["skipped"].as_u64().unwrap() >= before as u64, "{r}");
    assert_same_tree(&src, &dst);
    assert!(temps(&dst).is_empty(), "temps left: {:?}", temps(&dst));

    let o = copy(&[os("--json"), os(&from), dst.as_os_str()], &ctls, &state);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(
        (r["files"].as_u64(), r["bytes"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["skipped"].as_u64(), Some(3001), "{r}");
    // The server logs the session after its last reply: wait for the line.
    let t0 = std::time::Instant::now();
    while !s.log().contains("0 files, 0 bytes, 3001 skipped") {
        assert!(t0.elapsed().as_secs() < 10, "{}", s.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_pull_reset_mid_transfer_reconnects_and_nothing_is_lost() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (exp, dst, state) = (
        t.path().join("exp"),
        t.path().join("dst"),
        t.path().join("st"),
    );
    let src = exp.join("tree");
    mixed_tree(&src, 800, &[60 << 20, 2 << 20]);
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    // The first two sessions (one connection each: `--streams 1`; several streams are
    // reset in tests/net_streams) are reset in the middle (of the big file, most likely);
    // the ones that replace them pass.
    let p = Proxy::start(s.port, std::time::Duration::ZERO, |n| match n {
        0 => Some(6 << 20),
        1 => Some(24 << 20),
        _ => None,
    });
    let from = format!("ferry://localhost:{}/data/tree", p.port);
    let args = [os("--json"), os("--streams"), os("1"), os(&from), os(&dst)];
    let o = copy(&args, &ctls, &state);
    let err = stderr(&o);
    assert!(o.status.success(), "pull: {err}\nserver: {}", s.log());
    assert!(p.resets.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert!(err.contains("reconnecting"), "{err}");
    assert_same_tree(&src, &dst);
    assert!(temps(&dst).is_empty(), "temps left: {:?}", temps(&dst));
    let r = report(&o);
    assert_eq!(
        (r["files"].as_u64(), r["skipped"].as_u64()),
        (Some(805), Some(0)),
        "each file counted once, as received: {r}"
    );
}

/// Regular files under final names below `root`.
fn named_below(root: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .map_while(Result::ok)
        {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() && !ferry::temp::is_temp_name(e.file_name().as_encoded_bytes()) {
                n += 1;
            }
        }
    }
    n
}

/// A pull of 5000 files of 8 KiB through a slowing proxy, running, with some files named.
/// (Bind `_t` and `_p` where it is taken apart: they keep the files and the proxy.)
struct SlowPull {
    _t: tempfile::TempDir,
    s: Server,
    _p: Proxy,
    src: std::path::PathBuf,
    dst: std::path::PathBuf,
    state: std::path::PathBuf,
    ctls: std::path::PathBuf,
    from: String,
    child: Spawned,
    rx: std::sync::mpsc::Receiver<serde_json::Value>,
    id: String,
}

fn slow_pull() -> SlowPull {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (exp, dst, state) = (
        t.path().join("exp"),
        t.path().join("dst"),
        t.path().join("st"),
    );
    let src = exp.join("tree");
    // Named in batches of up to 1024 (BATCH_FILES): the first shows progress, a pause
    // names the next, and more than two are left.
    for i in 0..5000 {
        let d = src.join(format!("d{}", i % 5));
        std::fs::create_dir_all(&d).unwrap();
        write_file(&d.join(format!("f{i:04}")), 8 << 10, i as u64);
    }
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    // Slowed down, so the pull is still going when it is paused.
    let p = Proxy::start(s.port, std::time::Duration::from_millis(3), |_| None);
    let from = format!("ferry://localhost:{}/data/tree", p.port);
    let (child, rx) = copy_json(&[os("--json"), os(&from), dst.as_os_str()], &ctls, &state);
    let id = wait_event(&rx, "start")["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let t0 = std::time::Instant::now();
    while named_below(&dst) < 100 {
        assert!(t0.elapsed().as_secs() < 60, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    SlowPull {
        _t: t,
        s,
        _p: p,
        src,
        dst,
        state,
        ctls,
        from,
        child,
        rx,
        id,
    }
}

#[test]
fn a_cancelled_pull_stops_with_what_it_named_and_its_rerun_finishes() {
    let SlowPull {
        s,
        src,
        dst,
        state,
        ctls,
        from,
        child,
        rx,
        id,
        _t: _keep,
        _p: _proxy,
        ..
    } = slow_pull();
    assert_eq!(ctl(&state, &id, "cancel"), "ok");
    let o = finish(child, std::time::Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("cancelled"), "{}", stderr(&o));
    let named = nothing_partial(&src, &dst);
    assert!(named < 5000, "cancelled before the end");
    assert!(temps(&dst).is_empty(), "temps left: {:?}", temps(&dst));
    let states: Vec<String> = rx
        .iter()
        .filter(|v| v["event"] == "state")
        .map(|v| v["to"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("cancelled"),
        "{states:?}"
    );
    let o = copy(&[os("--json"), os(&from), dst.as_os_str()], &ctls, &state);
    assert!(
        o.status.success(),
        "rerun: {}\nserver: {}",
        stderr(&o),
        s.log()
    );
    let r = report(&o);
    assert_eq!(r["skipped"].as_u64(), Some(named as u64), "{r}");
    assert_eq!(r["files"].as_u64(), Some(5000 - named as u64), "{r}");
    assert_same_tree(&src, &dst);
}

#[test]
fn a_paused_pull_receives_nothing_until_resumed() {
    let SlowPull {
        s,
        src,
        dst,
        state,
        child,
        rx,
        id,
        _t: _keep,
        _p: _proxy,
        ..
    } = slow_pull();
    assert_eq!(ctl(&state, &id, "pause"), "ok");
    // In flight: the entry being received and the batch (named now); then nothing.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let held = named_below(&dst);
    assert!(held < 5000, "paused before the end");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(named_below(&dst), held, "files arrived while paused");
    assert!(
        temps(&dst).is_empty(),
        "temps while paused: {:?}",
        temps(&dst)
    );
    assert_eq!(nothing_partial(&src, &dst), held);
    let status: serde_json::Value = serde_json::from_str(&ctl(&state, &id, "status")).unwrap();
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(ctl(&state, &id, "resume"), "ok");
    let o = finish(child, std::time::Duration::from_secs(180));
    assert!(o.status.success(), "{}\nserver: {}", stderr(&o), s.log());
    assert_same_tree(&src, &dst);
    let rest: Vec<serde_json::Value> = rx.iter().collect();
    let r = rest
        .iter()
        .find(|v| v["event"] == "report")
        .expect("a report");
    assert_eq!(
        (r["files"].as_u64(), r["skipped"].as_u64()),
        (Some(5000), Some(0)),
        "{r}"
    );
    let states: Vec<&str> = rest
        .iter()
        .filter(|v| v["event"] == "state")
        .map(|v| v["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["running", "paused", "running", "completed"],
        "{states:?}"
    );
}

#[test]
fn a_pull_killed_inside_a_big_file_names_nothing_partial_and_its_rerun_cleans_up() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (exp, dst, state) = (
        t.path().join("exp"),
        t.path().join("dst"),
        t.path().join("st"),
    );
    let src = exp.join("tree");
    std::fs::create_dir_all(&src).unwrap();
    write_file(&src.join("a-small"), 1000, 1);
    write_file(&src.join("big"), 256 << 20, 2);
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    // Slowed down, so the kill lands inside the big file.
    let p = Proxy::start(s.port, std::time::Duration::from_millis(1), |_| None);
    let from = format!("ferry://localhost:{}/data/tree", p.port);
    // One stream, so the small file's batch waits behind the big file on the same connection
    // (the count of temps below); pulls of several streams killed mid-way: net_move, net_streams.
    let one = [os("--streams"), os("1"), os(&from), dst.as_os_str()];
    let mut client = Spawned::new(
        copy_cmd(&one, &ctls, &state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = std::time::Instant::now();
    while bytes_under(&dst) < 32 << 20 {
        assert!(t0.elapsed().as_secs() < 60, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(
        !dst.join("big").exists(),
        "a partial file has its final name"
    );
    // The big file's temp and the small one's (its batch was not named yet).
    assert_eq!(temps(&dst).len(), 2, "{:?}", temps(&dst));
    nothing_partial(&src, &dst);
    let o = copy(&[os("--json"), os(&from), dst.as_os_str()], &ctls, &state);
    assert!(
        o.status.success(),
        "rerun: {}\nserver: {}",
        stderr(&o),
        s.log()
    );
    assert_same_tree(&src, &dst);
    assert!(temps(&dst).is_empty(), "temps left: {:?}", temps(&dst));
}
