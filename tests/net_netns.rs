//! ferry between two network namespaces joined by a veth pair (issue 18: "netns+veth copies
//! of the metadata fixture"): `ferry serve` in one, the client in the other. Push and pull of
//! the metadata fixture with 0 differences; the link taken down for 20 s in the middle of a
//! push, then up: the push goes on and completes, nothing partial is ever named; a link
//! shaped with `tc tbf` (as the benchmark uses) carries a push at its rate. Needs root and
//! ip(8) (iproute2); skipped with the reason otherwise. The namespaces are deleted on drop.

mod common;
mod netkit;
use common::metafix::*;
use common::*;
use netkit::netns::{ADDR_A, Pair};
use netkit::*;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(240);

fn setup(tag: &str) -> Option<Pair> {
    match Pair::new(tag) {
        Ok(p) => Some(p),
        Err(why) => {
            eprintln!("SKIP network namespace test: {why}");
            None
        }
    }
}

/// `ferry copy ARGS... --tls-dir TLS --state-dir STATE` started in the client's namespace.
fn client(p: &Pair, args: &[&std::ffi::OsStr], tls: &Path, state: &Path) -> Spawned {
    Spawned::new(
        p.ferry(&p.b, &copy_args(args, tls, state))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn push_and_pull_across_namespaces_keep_the_metadata_fixture() {
    let Some(p) = setup("m") else { return };
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), ADDR_A);
    let (src, exp, back) = (
        t.path().join("src"),
        t.path().join("exp"),
        t.path().join("back"),
    );
    build(&src);
    extras(&src);
    std::fs::create_dir(&exp).unwrap();
    let s = serve(&stls, &[("data", &exp)], ADDR_A, 0, Some(&p.a));
    let url = format!("ferry://{ADDR_A}:{}/data/", s.port);
    let state = t.path().join("state");
    let args = [os("--streams"), os("2"), src.as_os_str(), os(&url)];
    let o = finish(client(&p, &args, &ctls, &state), LIMIT);
    assert!(
        o.status.success(),
        "push: {}\nserver: {}",
        stderr(&o),
        s.log()
    );
    assert_metadata_equal(&src, &exp.join("src"));
    assert!(temps(&exp).is_empty(), "{:?}", temps(&exp));

    let pulled = format!("{url}src");
    let o = finish(
        client(&p, &[os(&pulled), back.as_os_str()], &ctls, &state),
        LIMIT,
    );
    assert!(
        o.status.success(),
        "pull: {}\nserver: {}",
        stderr(&o),
        s.log()
    );
    assert_metadata_equal(&src, &back);
    assert!(temps(&back).is_empty(), "{:?}", temps(&back));
}

#[test]
fn a_link_down_for_20_s_mid_push_then_up_and_the_push_completes() {
    let Some(p) = setup("d") else { return };
    // Slow enough that the push is surely in the middle when the link goes down.
    if let Err(why) = p.shape("200mbit", 200_000_000) {
        eprintln!("NOTE: the link is not shaped ({why}); the push is only faster");
    }
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), ADDR_A);
    let (src, exp) = (t.path().join("src"), t.path().join("exp"));
    mixed_tree(&src, 600, &[40 << 20, 40 << 20, 6 << 20]);
    std::fs::create_dir(&exp).unwrap();
    let s = serve(&stls, &[("data", &exp)], ADDR_A, 0, Some(&p.a));
    let url = format!("ferry://{ADDR_A}:{}/data/", s.port);
    let args = [os("--streams"), os("2"), src.as_os_str(), os(&url)];
    let c = client(&p, &args, &ctls, &t.path().join("state"));
    let t0 = Instant::now();
    while bytes_under(&exp) < 20 << 20 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.link(false);
    let at_down = nothing_partial(&src, &exp.join("src"));
    std::thread::sleep(Duration::from_secs(20));
    nothing_partial(&src, &exp.join("src"));
    let during = bytes_under(&exp);
    p.link(true);
    let o = finish(c, LIMIT);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}\nserver: {}", s.log());
    assert!(
        at_down < 604,
        "the link went down before the end ({at_down} named)"
    );
    eprintln!(
        "{at_down} files named when the link went down, {during} bytes here after 20 s down; client said: {err}"
    );
    assert_same_tree(&src, &exp.join("src"));
    assert!(temps(&exp).is_empty(), "{:?}", temps(&exp));
}

#[test]
fn a_tbf_shaped_link_carries_a_push_at_its_rate() {
    let Some(p) = setup("t") else { return };
    let bits = 100_000_000u64;
    if let Err(why) = p.shape("100mbit", bits) {
        eprintln!("SKIP tbf test: cannot shape the link: {why}");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (stls, ctls) = pki(&t.path().join("pki"), ADDR_A);
    let (src, exp) = (t.path().join("src"), t.path().join("exp"));
    std::fs::create_dir_all(&src).unwrap();
    let total = 3 * (8 << 20);
    for i in 0..3 {
        write_file(&src.join(format!("f{i}")), 8 << 20, i);
    }
    std::fs::create_dir(&exp).unwrap();
    let s = serve(&stls, &[("data", &exp)], ADDR_A, 0, Some(&p.a));
    let url = format!("ferry://{ADDR_A}:{}/data/", s.port);
    let t0 = Instant::now();
    let o = finish(
        client(
            &p,
            &[src.as_os_str(), os(&url)],
            &ctls,
            &t.path().join("state"),
        ),
        LIMIT,
    );
    let took = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}\nserver: {}", stderr(&o), s.log());
    assert_same_tree(&src, &exp.join("src"));
    // The bucket holds the push to the link's rate: not faster than it allows.
    let floor = (total * 8) as f64 / bits as f64;
    assert!(
        took >= 0.8 * floor,
        "{total} bytes in {took:.2} s over a 100 Mbit/s link"
    );
    eprintln!("{total} bytes in {took:.2} s over tc tbf 100 Mbit/s (floor {floor:.2} s)");
}
