//! `--streams N`: many small files spread over several TLS connections, big files split
//! across them in ranges (named by a Seal once every range is durable), a stream reset in
//! the middle retried on a new connection, and a rerun of a completed push that sends
//! nothing (the remote quick check). Pulls and pulled moves over several streams: the
//! server splits big files across them.

mod common;
mod netkit;
use common::*;
use netkit::*;
use std::path::Path;
use std::time::Duration;

fn bytes_per_session(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(": push into "))
        .filter_map(|l| {
            let t = l.split(" files, ").nth(1)?;
            t.split(' ').next()?.parse().ok()
        })
        .collect()
}

/// The bytes of each push session the server logged, once it logged `n` (it logs a session
/// after its last reply, so a little after the client is done).
fn sessions(s: &Server, n: usize) -> Vec<u64> {
    let t0 = std::time::Instant::now();
    loop {
        let per = bytes_per_session(&s.log());
        if per.len() >= n {
            assert_eq!(per.len(), n, "{}", s.log());
            return per;
        }
        assert!(t0.elapsed().as_secs() < 10, "{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ferry copy --json --streams 3 SRC TO`.
fn push3(src: &Path, to: &str, tls: &Path, state: &Path) -> std::process::Output {
    let args = [os("--json"), os("--streams"), os("3"), os(src), os(to)];
    copy(&args, tls, state)
}

/// The far end hashes its side of `src` (served at `port`): identical.
fn assert_remote_verify_agrees(src: &Path, port: u16, tls: &Path) {
    let v = ferry(&[
        os("verify"),
        src.as_os_str(),
        os(&format!("ferry://localhost:{port}/data/src")),
        os("--tls-dir"),
        tls.as_os_str(),
    ]);
    assert!(v.status.success(), "remote verify: {}", stderr(&v));
}

/// A rerun of the completed push (`files` of them): the remote quick check skips
/// everything and sessions 4-6 of the server carry no data.
fn assert_a_rerun_sends_nothing(o: &std::process::Output, s: &Server, files: u64) {
    assert!(o.status.success(), "rerun: {}", stderr(o));
    let r = report(o);
    assert_eq!(
        (r["files"].as_u64(), r["bytes"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["skipped"].as_u64(), Some(files), "{r}");
    let per = sessions(s, 6);
    assert_eq!(
        per[3..].iter().sum::<u64>(),
        0,
        "the rerun sent data: {per:?}"
    );
}

#[test]
fn big_and_small_files_over_three_streams_arrive_identical() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (src, exp, state) = (
        t.path().join("src"),
        t.path().join("exp"),
        t.path().join("st"),
    );
    mixed_tree(&src, 1500, &[70 << 20, 33 << 20, 5 << 20]);
    std::fs::create_dir(&exp).unwrap();
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    let to = format!("ferry://localhost:{}/data/", s.port);
    let o = push3(&src, &to, &ctls, &state);
    assert!(
        o.status.success(),
        "push: {}\nserver: {}",
        stderr(&o),
        s.log()
    );
    assert_same_tree(&src, &exp.join("src"));
    assert!(temps(&exp).is_empty(), "temps left: {:?}", temps(&exp));
    let r = report(&o);
    // 1500 small + 3 big + rodir/inside + 2 symlinks.
    assert_eq!(r["files"].as_u64(), Some(1506), "{r}");
    // Three sessions, and the 70 MiB file's ranges went over more than one of them.
    let per = sessions(&s, 3);
    assert!(
        per.iter().filter(|&&b| b >= 16 << 20).count() >= 2,
        "{per:?}"
    );
    assert_remote_verify_agrees(&src, s.port, &ctls);
    assert_a_rerun_sends_nothing(&push3(&src, &to, &ctls, &state), &s, 1506);
    // A changed file is sent again, and only it.
    write_file(&src.join("d1/e1/f00001"), 999, 5);
    let o = copy(&[os("--json"), src.as_os_str(), os(&to)], &ctls, &state);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report(&o)["files"].as_u64(), Some(1), "{}", report(&o));
    assert_same_tree(&src, &exp.join("src"));
}

#[test]
fn a_stream_reset_mid_transfer_is_retried_and_nothing_is_lost() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (src, exp, state) = (
        t.path().join("src"),
        t.path().join("exp"),
        t.path().join("st"),
    );
    mixed_tree(&src, 800, &[60 << 20, 2 << 20]);
    std::fs::create_dir(&exp).unwrap();
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    // Connections: 0 stream 0, 1 the quick check's listing, 2 and 3 streams 1 and 2. Two
    // of the streams are reset in the middle (of a big file's range, most likely); the
    // connections that replace them pass.
    let p = Proxy::start(s.port, Duration::ZERO, |n| match n {
        2 => Some(6 << 20),
        3 => Some(2 << 20),
        _ => None,
    });
    let to = format!("ferry://localhost:{}/data/", p.port);
    let o = copy(
        &[
            os("--json"),
            os("--streams"),
            os("3"),
            src.as_os_str(),
            os(&to),
        ],
        &ctls,
        &state,
    );
    let err = stderr(&o);
    assert!(o.status.success(), "push: {err}\nserver: {}", s.log());
    assert!(p.resets.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert!(err.contains("reconnecting"), "{err}");
    assert_same_tree(&src, &exp.join("src"));
    assert!(temps(&exp).is_empty(), "temps left: {:?}", temps(&exp));
    assert_eq!(report(&o)["files"].as_u64(), Some(805));
}

#[test]
fn a_move_of_a_file_sent_in_ranges_removes_its_source_once_verified() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (src, exp) = (t.path().join("src"), t.path().join("exp"));
    std::fs::create_dir_all(&src).unwrap();
    write_file(&src.join("big"), 40 << 20, 3);
    write_file(&src.join("small"), 100, 4);
    std::fs::create_dir(&exp).unwrap();
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    let to = format!("ferry://localhost:{}/data/moved", s.port);
    let o = ferry(&[
        os("move"),
        os("--streams"),
        os("2"),
        src.as_os_str(),
        os(&to),
        os("--tls-dir"),
        ctls.as_os_str(),
        os("--state-dir"),
        t.path().join("st").as_os_str(),
    ]);
    assert!(o.status.success(), "{}\nserver: {}", stderr(&o), s.log());
    assert!(!src.exists(), "the sources are gone");
    assert_eq!(
        std::fs::read(exp.join("moved/big")).unwrap(),
        pattern(40 << 20, 3)
    );
    assert_eq!(
        std::fs::read(exp.join("moved/small")).unwrap(),
        pattern(100, 4)
    );
}

/// The ranges each stream of the server's `n`-th pull of several streams acknowledged.
fn pull_parts(s: &Server, n: usize) -> Vec<u64> {
    let t0 = std::time::Instant::now();
    loop {
        let log = s.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ranges acknowledged per stream: "))
            .collect();
        if let Some(l) = lines.get(n) {
            let list = l.rsplit("per stream: [").next().unwrap();
            let list = list.split(']').next().unwrap();
            return list.split(", ").map(|x| x.parse().unwrap()).collect();
        }
        assert!(t0.elapsed().as_secs() < 10, "{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_pull_over_three_streams_splits_big_files_across_them_and_a_rerun_gets_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (exp, back, state) = (
        t.path().join("exp"),
        t.path().join("back"),
        t.path().join("st"),
    );
    mixed_tree(&exp.join("src"), 1500, &[70 << 20, 33 << 20, 5 << 20]);
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    let from = format!("ferry://localhost:{}/data/src", s.port);
    let pull3 = || {
        let args = [os("--json"), os("--streams"), os("3"), os(&from), os(&back)];
        copy(&args, &ctls, &state)
    };
    let o = pull3();
    assert!(
        o.status.success(),
        "pull: {}\nserver: {}",
        stderr(&o),
        s.log()
    );
    assert_same_tree(&exp.join("src"), &back);
    assert!(temps(&back).is_empty(), "temps left: {:?}", temps(&back));
    let r = report(&o);
    assert_eq!(r["files"].as_u64(), Some(1506), "{r}");
    // The server sent ranges of the big files on more than one of the three connections.
    let parts = pull_parts(&s, 0);
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(parts.iter().filter(|&&p| p > 0).count() >= 2, "{parts:?}");
    // A rerun: the quick check (listed on stream 0) skips everything.
    let o = pull3();
    assert!(o.status.success(), "rerun: {}", stderr(&o));
    let r = report(&o);
    assert_eq!(
        (r["files"].as_u64(), r["bytes"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(pull_parts(&s, 1).iter().sum::<u64>(), 0);
    assert_same_tree(&exp.join("src"), &back);
}

#[test]
fn a_pulled_move_over_three_streams_removes_every_source_once_durable_here() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (exp, keep, back) = (
        t.path().join("exp"),
        t.path().join("keep"),
        t.path().join("back"),
    );
    mixed_tree(&keep, 600, &[40 << 20, 5 << 20]);
    std::fs::create_dir_all(&exp).unwrap();
    let st = std::process::Command::new("cp")
        .args(["-a", "--"])
        .arg(&keep)
        .arg(exp.join("src"))
        .status();
    assert!(st.unwrap().success());
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    let from = format!("ferry://localhost:{}/data/src", s.port);
    let o = ferry(&[
        os("move"),
        os("--json"),
        os("--streams"),
        os("3"),
        os(&from),
        back.as_os_str(),
        os("--tls-dir"),
        ctls.as_os_str(),
        os("--state-dir"),
        t.path().join("st").as_os_str(),
    ]);
    assert!(o.status.success(), "{}\nserver: {}", stderr(&o), s.log());
    assert_same_tree(&keep, &back);
    assert!(temps(&back).is_empty(), "temps left: {:?}", temps(&back));
    assert!(
        !exp.join("src").exists(),
        "every source and directory is gone"
    );
    // 600 small + 2 big + rodir/inside + 2 symlinks, and 30 directories (src, d0-d6, their
    // e0-e2, rodir).
    assert_eq!(report(&o)["removed"].as_u64(), Some(635), "{}", report(&o));
    let parts = pull_parts(&s, 0);
    assert!(parts.iter().filter(|&&p| p > 0).count() >= 2, "{parts:?}");
    assert!(s.log().contains("sources removed, 0 kept"), "{}", s.log());
}

#[test]
fn a_pull_whose_stream_is_reset_runs_all_its_streams_again_and_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let (exp, back, state) = (
        t.path().join("exp"),
        t.path().join("back"),
        t.path().join("st"),
    );
    mixed_tree(&exp.join("src"), 800, &[60 << 20, 2 << 20]);
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    // Connections 0-2: the first session (stream 0, then the two that join); the third is
    // reset in the middle, which ends that session. Those of the next session pass.
    let p = Proxy::start(s.port, Duration::ZERO, |n| match n {
        2 => Some(6 << 20),
        _ => None,
    });
    let from = format!("ferry://localhost:{}/data/src", p.port);
    let args = [os("--json"), os("--streams"), os("3"), os(&from), os(&back)];
    let o = copy(&args, &ctls, &state);
    let err = stderr(&o);
    assert!(o.status.success(), "pull: {err}\nserver: {}", s.log());
    assert!(p.resets.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(err.contains("reconnecting"), "{err}");
    assert_same_tree(&exp.join("src"), &back);
    assert!(temps(&back).is_empty(), "temps left: {:?}", temps(&back));
    // Each file counted once: those named before the reset are skipped by the next session.
    assert_eq!(report(&o)["files"].as_u64(), Some(805), "{}", report(&o));
}

#[test]
fn joins_by_an_unknown_token_and_push_sessions_of_several_streams_are_refused() {
    use ferry::net::msg::{Msg, Op};
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), "localhost");
    let exp = t.path().join("exp");
    std::fs::create_dir_all(exp.join("m")).unwrap();
    let s = serve(&stls, &[("data", &exp)], "127.0.0.1", 0, None);
    let cfg = ferry::net::tls::client_config(&ctls).unwrap();
    let refused = |first: Msg, why: &str| {
        let mut c = ferry::net::session::connect("localhost", s.port, cfg.clone()).unwrap();
        c.send(&first).unwrap();
        c.flush().unwrap();
        match c.recv().unwrap() {
            Msg::Error { msg } => assert!(msg.contains(why), "{msg}"),
            other => panic!("accepted: {other:?}"),
        }
    };
    let token = ferry::temp::Token::random();
    refused(Msg::Join { token }, "no session waits for streams");
    let open = |op, streams| Msg::Open {
        op,
        export: b"data".to_vec(),
        path: b"m".to_vec(),
        stale: Vec::new(),
        streams,
    };
    refused(open(Op::Push, 2), "only a pull or move has several");
    // A pull of two streams gets a token; one join is taken, a second one is refused.
    let mut c = ferry::net::session::connect("localhost", s.port, cfg.clone()).unwrap();
    c.send(&open(Op::Pull, 2)).unwrap();
    c.flush().unwrap();
    let Msg::Ready {
        token: Some(token), ..
    } = c.recv().unwrap()
    else {
        panic!("no token")
    };
    let mut j = ferry::net::session::connect("localhost", s.port, cfg.clone()).unwrap();
    j.send(&Msg::Join {
        token: token.clone(),
    })
    .unwrap();
    j.flush().unwrap();
    assert!(matches!(j.recv().unwrap(), Msg::Ready { .. }));
    refused(Msg::Join { token }, "join: ");
    // The server still serves others.
    let o = copy(
        &[
            os(&format!("ferry://localhost:{}/data/m", s.port)),
            os(&t.path().join("b")),
        ],
        &ctls,
        &t.path().join("st"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // More streams than a pull may have (MAX_STREAMS, as --streams allows): refused before
    // anything is written.
    let (from, c) = (
        format!("ferry://localhost:{}/data/m", s.port),
        t.path().join("c"),
    );
    let many = [os("--streams"), os("65"), os(&from), os(&c)];
    let o = copy(&many, &ctls, &t.path().join("st"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("1..=64"), "{}", stderr(&o));
    assert!(!t.path().join("c").exists());
}
