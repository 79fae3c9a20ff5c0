//! ferry over the network on loopback: push, pull and verify through a real `ferry serve`,
//! and the refusals (paths outside an export, unknown export, another protocol version,
//! random bytes), after each of which the server still serves.

mod common;
mod netkit;
use common::*;
use netkit::{Server, assert_on_path, os};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// A CA with a server certificate for "localhost" and a client certificate.
fn pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    netkit::pki(dir, "localhost")
}

fn serve(tls: &Path, exports: &[(&str, &Path)]) -> Server {
    serve_on(tls, exports, 0)
}

/// The server's state (its temp-name token) stays beside its TLS files: the same on a restart.
fn serve_on(tls: &Path, exports: &[(&str, &Path)], port: u16) -> Server {
    netkit::serve(tls, exports, "127.0.0.1", port, None)
}

fn url(s: &Server, rest: &str) -> String {
    format!("ferry://localhost:{}/{rest}", s.port)
}

fn run(args: &[&OsStr]) -> std::process::Output {
    run_on(args, None)
}

/// [`run`] with FERRY_NET_IO=`io` (None: as this process has it); a client that fell back
/// from the path it was given fails the test.
fn run_on(args: &[&OsStr], io: Option<&str>) -> std::process::Output {
    let env = io.map(netkit::net_io);
    let env = env.as_ref().map_or(&[][..], |e| &e[..]);
    let o = ferry_env(args, std::time::Duration::from_secs(120), None, env);
    assert!(
        !stderr(&o).contains("io_uring for sockets unavailable"),
        "{io:?}: {}",
        stderr(&o)
    );
    o
}

/// `ferry serve` (as [`serve`]) on socket path `io`.
fn serve_io(tls: &Path, exports: &[(&str, &Path)], io: &str) -> Server {
    netkit::serve_env(tls, exports, "127.0.0.1", 0, None, &netkit::net_io(io))
}

/// The fixture (its FIFO included: FIFOs travel as nodes).
fn tree(root: &Path) {
    build_tree(root);
}

fn push(client: &Path, src: &Path, to: &str, state: &Path) -> std::process::Output {
    push_on(client, src, to, state, None)
}

/// [`push`] on socket path `io` (None: as this process has it).
fn push_on(
    client: &Path,
    src: &Path,
    to: &str,
    state: &Path,
    io: Option<&str>,
) -> std::process::Output {
    let args = [
        os("copy"),
        src.as_os_str(),
        os(to),
        os("--tls-dir"),
        client.as_os_str(),
        os("--state-dir"),
        state.as_os_str(),
    ];
    run_on(&args, io)
}

/// A ferry temp name (any token), as the receiver writes them.
fn is_temp(name: &str) -> bool {
    ferry::temp::is_temp_name(name.as_bytes())
}

#[test]
fn push_pull_and_verify_keep_the_tree() {
    for io in netkit::net_paths() {
        push_pull_and_verify_on(io);
    }
}

/// `ferry verify SRC URL` on socket path `io`: the far end hashes its side.
fn remote_verify(src: &Path, url: &str, tls: &Path, io: &str) -> std::process::Output {
    let args = [
        os("verify"),
        src.as_os_str(),
        os(url),
        os("--tls-dir"),
        tls.as_os_str(),
    ];
    run_on(&args, Some(io))
}

/// [`push_pull_and_verify_keep_the_tree`] with both ends on socket path `io`.
fn push_pull_and_verify_on(io: &str) {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"));
    let (src, exp) = (t.path().join("src"), t.path().join("exp"));
    tree(&src);
    std::fs::create_dir(&exp).unwrap();
    let s = serve_io(&stls, &[("data", &exp)], io);
    let state = t.path().join("state");

    let o = push_on(&ctls, &src, &url(&s, "data/"), &state, Some(io));
    assert!(o.status.success(), "{io} push: {}", stderr(&o));
    assert_same_tree(&src, &exp.join("src"));
    let v = ferry(&[os("verify"), src.as_os_str(), exp.join("src").as_os_str()]);
    assert!(v.status.success(), "local verify: {}", stderr(&v));
    if is_root() {
        let (a, b) = (
            std::fs::symlink_metadata(src.join("sizes/s1")).unwrap(),
            std::fs::symlink_metadata(exp.join("src/sizes/s1")).unwrap(),
        );
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()));
    }
    // Nothing but the tree: no temp names left behind.
    let leftovers = walk_names(&exp).into_iter().filter(|n| is_temp(n)).count();
    assert_eq!(leftovers, 0);

    // The far end hashes its side.
    let r = remote_verify(&src, &url(&s, "data/src"), &ctls, io);
    assert!(r.status.success(), "{io} remote verify: {}", stderr(&r));
    std::fs::write(exp.join("src/sizes/s1"), b"X").unwrap();
    let r = remote_verify(&src, &url(&s, "data/src"), &ctls, io);
    assert_eq!(r.status.code(), Some(1), "{io}: a changed byte is found");
    assert!(String::from_utf8_lossy(&r.stdout).contains("sizes/s1"));
    std::fs::write(
        exp.join("src/sizes/s1"),
        std::fs::read(src.join("sizes/s1")).unwrap(),
    )
    .unwrap();

    // Pull it back into a new directory.
    let back = t.path().join("back");
    let o = run_on(
        &[
            os("copy"),
            os(&url(&s, "data/src")),
            back.as_os_str(),
            os("--tls-dir"),
            ctls.as_os_str(),
            os("--state-dir"),
            state.as_os_str(),
        ],
        Some(io),
    );
    assert!(o.status.success(), "{io} pull: {}", stderr(&o));
    let v = ferry(&[os("verify"), src.as_os_str(), back.as_os_str()]);
    assert!(v.status.success(), "{}", stderr(&v));
    // (s1 was rewritten at the far end above: same bytes, new mtime.)
    assert_same_tree(&exp.join("src"), &back);
    assert_on_path(&s, io);
}

fn walk_names(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn single_file_and_contents_follow_cp_rules() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"));
    let (src, exp) = (t.path().join("src"), t.path().join("exp"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    write_file(&src.join("d/f"), 3 << 20, 1);
    write_file(&src.join("one"), 10, 2);
    std::fs::create_dir(&exp).unwrap();
    let s = serve(&stls, &[("data", &exp)]);
    let state = t.path().join("state");
    // A file onto a new name: that name becomes the copy.
    let o = push(&ctls, &src.join("one"), &url(&s, "data/renamed"), &state);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(exp.join("renamed")).unwrap(), pattern(10, 2));
    // SRC/. lands its contents in the target directory.
    let o = push(&ctls, &src.join("d/."), &url(&s, "data/into"), &state);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(exp.join("into/f")).unwrap(),
        pattern(3 << 20, 1)
    );
}

/// Destinations the client itself refuses or the server names: a symlink in the path (not
/// followed: nothing in `outside`), `..`, an unknown export (both ends on socket path `io`).
fn assert_bad_destinations_are_refused(tls: &Path, src: &Path, s: &Server, state: &Path, io: &str) {
    let outside = src.parent().unwrap().join("outside");
    let o = push_on(tls, src, &url(s, "data/escape/x"), state, Some(io));
    assert_eq!(o.status.code(), Some(2), "{io}: {}", stderr(&o));
    assert!(stderr(&o).contains("symlink"), "{io}: {}", stderr(&o));
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "{io}: nothing written outside"
    );
    // `..` is refused before anything is sent.
    let o = push_on(tls, src, &url(s, "data/../outside"), state, Some(io));
    assert_eq!(o.status.code(), Some(2), "{io}: {}", stderr(&o));
    // An unknown export is named, with the ones that exist.
    let o = push_on(tls, src, &url(s, "nope/x"), state, Some(io));
    assert_eq!(o.status.code(), Some(2), "{io}: {}", stderr(&o));
    assert!(
        stderr(&o).contains("unknown export 'nope' (exports: data)"),
        "{io}: {}",
        stderr(&o)
    );
}

/// What a client that skips the URL check sends: a path with `..` (refused by the server),
/// another protocol version; then random bytes (no TLS at all) and a TLS-less HTTP request.
/// This process's own connections take socket path `io` too (no other test of this file
/// opens connections in this process).
fn send_what_the_server_must_refuse(tls: &Path, port: u16, io: &str) {
    ferry::net::conn::set_io(io == "uring");
    let cfg = ferry::net::tls::client_config(tls).unwrap();
    let mut c = ferry::net::session::connect("localhost", port, cfg.clone()).unwrap();
    assert_eq!(c.uses_ring(), io == "uring", "{io}: the client's path");
    c.send(&ferry::net::msg::Msg::Open {
        op: ferry::net::msg::Op::Push,
        export: b"data".to_vec(),
        path: b"../outside".to_vec(),
        stale: Vec::new(),
        streams: 1,
    })
    .unwrap();
    c.flush().unwrap();
    match c.recv().unwrap() {
        ferry::net::msg::Msg::Error { msg } => {
            assert!(msg.contains("path refused"), "{io}: {msg}")
        }
        other => panic!("{io}: accepted: {other:?}"),
    }
    let e = ferry::net::session::connect_as("localhost", port, cfg, 99)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("version mismatch"), "{io}: {e}");
    for junk in [
        pattern(5000, 9),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ] {
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        raw.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let _ = raw.write_all(&junk);
        let mut buf = Vec::new();
        let _ = raw.read_to_end(&mut buf); // the server closes the connection
    }
}

#[test]
fn refusals_write_nothing_and_the_server_keeps_serving() {
    for io in netkit::net_paths() {
        refusals_on(io);
    }
}

/// [`refusals_write_nothing_and_the_server_keeps_serving`] with both ends on path `io`.
fn refusals_on(io: &str) {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"));
    let (src, exp, outside) = (
        t.path().join("src"),
        t.path().join("exp"),
        t.path().join("outside"),
    );
    std::fs::create_dir_all(&src).unwrap();
    write_file(&src.join("f"), 1000, 1);
    std::fs::create_dir(&exp).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, exp.join("escape")).unwrap();
    let s = serve_io(&stls, &[("data", &exp)], io);
    let state = t.path().join("state");
    assert_bad_destinations_are_refused(&ctls, &src, &s, &state, io);
    send_what_the_server_must_refuse(&ctls, s.port, io);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{io}");
    assert_eq!(
        std::fs::read_dir(&exp).unwrap().count(),
        1,
        "{io}: only the symlink"
    );
    // Still serving.
    let o = push_on(&ctls, &src, &url(&s, "data/"), &state, Some(io));
    assert!(
        o.status.success(),
        "{io}: {}\nserver: {}",
        stderr(&o),
        s.log()
    );
    assert_eq!(std::fs::read(exp.join("src/f")).unwrap(), pattern(1000, 1));
    wait_for_log(&s, "version mismatch", io);
    assert_on_path(&s, io);
}

/// Waits (up to 10 s) for the server to log `what`: it logs each refused connection.
fn wait_for_log(s: &Server, what: &str, io: &str) {
    let t0 = std::time::Instant::now();
    while !s.log().contains(what) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "{io}: the server never said {what:?}: {}",
            s.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_bad_certificate_writes_nothing() {
    for io in netkit::net_paths() {
        bad_certificates_on(io);
    }
}

/// A client of another CA, and a client trusting the server but presenting a certificate of
/// another CA: both ends name the reason (the alert reaches the peer on either path) and
/// nothing is written.
fn bad_certificates_on(io: &str) {
    let t = tempfile::tempdir().unwrap();
    let (stls, _) = pki(&t.path().join("pki"));
    let (_, other) = pki(&t.path().join("other"));
    let (src, exp) = (t.path().join("src"), t.path().join("exp"));
    std::fs::create_dir_all(&src).unwrap();
    write_file(&src.join("f"), 10, 1);
    std::fs::create_dir(&exp).unwrap();
    let s = serve_io(&stls, &[("data", &exp)], io);
    let o = push_on(
        &other,
        &src,
        &url(&s, "data/"),
        &t.path().join("state"),
        Some(io),
    );
    assert_eq!(o.status.code(), Some(1), "{io}: {}", stderr(&o));
    assert!(stderr(&o).contains("UnknownIssuer"), "{io}: {}", stderr(&o));
    wait_for_log(&s, "received fatal alert: UnknownCA", io);
    // Trusts the server's CA, presents a certificate of another.
    let mixed = t.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::copy(t.path().join("pki/ca.pem"), mixed.join("ca.pem")).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(other.join(f), mixed.join(f)).unwrap();
    }
    let o = push_on(
        &mixed,
        &src,
        &url(&s, "data/"),
        &t.path().join("state"),
        Some(io),
    );
    assert_eq!(o.status.code(), Some(1), "{io}: {}", stderr(&o));
    assert!(
        stderr(&o).contains("received fatal alert: UnknownCA"),
        "{io}: {}",
        stderr(&o)
    );
    wait_for_log(&s, "UnknownIssuer", io);
    assert_eq!(std::fs::read_dir(&exp).unwrap().count(), 0, "{io}");
    assert_on_path(&s, io);
}

/// Small files first (committed in batches of 1024), then a big one that keeps the transfer
/// going while the test kills one side.
fn resume_tree(src: &Path) {
    std::fs::create_dir_all(src.join("a")).unwrap();
    for i in 0..3000 {
        write_file(&src.join(format!("a/f{i:04}")), 100 + i % 300, i as u64);
    }
    write_file(&src.join("zz-big"), 96 << 20, 7);
}

/// Every file under a final name in `exp/src` is whole (same bytes as the source).
fn nothing_partial(src: &Path, dst: &Path) -> usize {
    let mut n = 0;
    for sub in ["a", ""] {
        let Ok(rd) = std::fs::read_dir(dst.join(sub)) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if is_temp(&name) || !e.file_type().unwrap().is_file() {
                continue;
            }
            let rel = Path::new(sub).join(&name);
            assert_eq!(
                std::fs::read(dst.join(&rel)).unwrap(),
                std::fs::read(src.join(&rel)).unwrap(),
                "{rel:?} is partial under its final name"
            );
            n += 1;
        }
    }
    n
}

fn wait_for_files(dir: &Path, n: usize) {
    let t0 = std::time::Instant::now();
    let named = || {
        std::fs::read_dir(dir)
            .map(|r| {
                r.filter(|e| {
                    !e.as_ref()
                        .is_ok_and(|e| is_temp(&e.file_name().to_string_lossy()))
                })
                .count()
            })
            .unwrap_or(0)
    };
    while named() < n {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[path = "common/ports.rs"]
mod ports;
fn free_port() -> u16 {
    ports::free_port_in(2)
}

#[test]
fn server_killed_mid_push_the_client_waits_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"));
    let (src, exp) = (t.path().join("src"), t.path().join("exp"));
    resume_tree(&src);
    std::fs::create_dir(&exp).unwrap();
    let port = free_port();
    let s = serve_on(&stls, &[("data", &exp)], port);
    let to = format!("ferry://localhost:{port}/data/");
    let client = Command::new(BIN)
        .args(["copy", "--json"])
        .arg(&src)
        .arg(&to)
        .arg("--tls-dir")
        .arg(&ctls)
        .arg("--state-dir")
        .arg(t.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_files(&exp.join("src/a"), 1100);
    drop(s); // kill -9 of the server
    let named = nothing_partial(&src, &exp.join("src"));
    assert!(named < 3001, "killed before the end ({named} named)");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _s = serve_on(&stls, &[("data", &exp)], port);
    let out = client.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("reconnecting"), "{err}");
    assert_same_tree(&src, &exp.join("src"));
}

#[test]
fn client_killed_mid_push_rerun_skips_what_is_durable() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"));
    let (src, exp) = (t.path().join("src"), t.path().join("exp"));
    resume_tree(&src);
    std::fs::create_dir(&exp).unwrap();
    let s = serve(&stls, &[("data", &exp)]);
    let to = url(&s, "data/");
    let state = t.path().join("state");
    let mut client = Command::new(BIN)
        .arg("copy")
        .arg(&src)
        .arg(&to)
        .arg("--tls-dir")
        .arg(&ctls)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_files(&exp.join("src/a"), 2100);
    client.kill().unwrap(); // SIGKILL
    client.wait().unwrap();
    nothing_partial(&src, &exp.join("src"));
    let o = run(&[
        os("copy"),
        os("--json"),
        src.as_os_str(),
        os(&to),
        os("--tls-dir"),
        ctls.as_os_str(),
        os("--state-dir"),
        state.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = netkit::report(&o);
    assert!(report["skipped"].as_u64().unwrap() >= 1024, "{report}");
    // Skipping thousands of files then streaming a big one must not overrun the receiver's
    // read-ahead (it once cut the connection as a "flood" and the client had to reconnect).
    assert!(!stderr(&o).contains("reconnecting"), "{}", stderr(&o));
    assert_same_tree(&src, &exp.join("src"));
}

#[test]
fn move_removes_sources_only_once_verified_remotely() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"));
    let (src, exp, keep) = (
        t.path().join("src"),
        t.path().join("exp"),
        t.path().join("keep"),
    );
    tree(&src);
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&keep)
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::create_dir(&exp).unwrap();
    let s = serve(&stls, &[("data", &exp)]);
    let o = run(&[
        os("move"),
        src.as_os_str(),
        os(&url(&s, "data/moved")),
        os("--tls-dir"),
        ctls.as_os_str(),
        os("--state-dir"),
        t.path().join("state").as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!src.exists(), "the source tree is gone");
    // rodir (0555) and the source's other modes arrive as they were.
    assert_same_tree(&keep, &exp.join("moved"));
}

#[test]
fn user_files_named_like_temps_are_neither_taken_nor_replaced() {
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"));
    let (src, exp) = (t.path().join("lv"), t.path().join("exp"));
    std::fs::create_dir_all(&src).unwrap();
    let big: Vec<u8> = (0..2u32 << 20).map(|i| (i * 7 + i / 4099) as u8).collect();
    std::fs::write(src.join("big"), &big).unwrap();
    std::fs::write(src.join(".big.ferry-tmp"), vec![0u8; 1 << 20]).unwrap();
    // A user's file in the export shaped like the old temp name of what arrives beside it.
    std::fs::create_dir_all(exp.join("lv")).unwrap();
    std::fs::write(exp.join("lv/.data.ferry-tmp"), b"mine").unwrap();
    std::fs::write(src.join("data"), b"data").unwrap();
    let s = serve(&stls, &[("data", &exp)]);
    let o = push(&ctls, &src, &url(&s, "data/"), &t.path().join("state"));
    assert!(o.status.success(), "push: {}", stderr(&o));
    assert_eq!(std::fs::read(exp.join("lv/big")).unwrap(), big);
    assert_eq!(
        std::fs::read(exp.join("lv/.big.ferry-tmp")).unwrap(),
        vec![0u8; 1 << 20]
    );
    assert_eq!(
        std::fs::read(exp.join("lv/.data.ferry-tmp")).unwrap(),
        b"mine"
    );
    assert_eq!(std::fs::read(exp.join("lv/data")).unwrap(), b"data");
    let left: Vec<_> = walk_names(&exp)
        .into_iter()
        .filter(|n| is_temp(n))
        .collect();
    assert!(left.is_empty(), "temps left: {left:?}");
}
