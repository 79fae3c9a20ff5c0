//! A disk must prove it is the disk: two disks at one place are refused, disk ids need to be
//! unique only within their set, relative disk paths are refused, and a disk whose root is
//! missing or whose identity file is absent or another's is refused (never created).

mod common;
use common::*;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A topology file: `sets` are (set id, [(disk id, path)]), all active, weight 1.
fn topo_file(
    dir: &Path,
    name: &str,
    generation: u64,
    sets: &[(&str, Vec<(&str, PathBuf)>)],
) -> PathBuf {
    let sets: Vec<serde_json::Value> = sets
        .iter()
        .map(|(id, disks)| {
            let d: Vec<serde_json::Value> = disks
                .iter()
                .map(|(i, p)| serde_json::json!({"id": i, "path": p}))
                .collect();
            serde_json::json!({"id": id, "state": "active", "weight": 1.0, "disks": d})
        })
        .collect();
    let v = serde_json::json!({"generation": generation, "pools": [{"id": "p", "sets": sets}]});
    let f = dir.join(name);
    fs::write(&f, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    f
}

fn run(args: &[&OsStr]) -> Output {
    ferry_with(args, std::time::Duration::from_secs(120), None)
}

fn object(op: &str, key: &str, topo: &Path, state: &Path, file: &Path) -> Output {
    run(&[
        "object".as_ref(),
        op.as_ref(),
        key.as_ref(),
        "--topology".as_ref(),
        topo.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--file".as_ref(),
        file.as_os_str(),
    ])
}

fn disk_init(topo: &Path) -> Output {
    run(&[
        "disk".as_ref(),
        "init".as_ref(),
        "--topology".as_ref(),
        topo.as_os_str(),
    ])
}

/// Puts `n` objects `bkt/k<i>` through the CLI.
fn put_all(t: &Path, topo: &Path, state: &Path, n: usize) {
    for i in 0..n {
        let f = t.join("in");
        fs::write(&f, format!("object {i}")).unwrap();
        let out = object("put", &format!("bkt/k{i}"), topo, state, &f);
        assert!(out.status.success(), "put {i}: {}", stderr(&out));
    }
}

/// Every object `bkt/k<i>` reads back with its content.
fn assert_all_readable(t: &Path, topo: &Path, state: &Path, n: usize) {
    for i in 0..n {
        let f = t.join("out");
        let out = object("get", &format!("bkt/k{i}"), topo, state, &f);
        assert!(out.status.success(), "get {i}: {}", stderr(&out));
        assert_eq!(fs::read_to_string(&f).unwrap(), format!("object {i}"));
    }
}

fn disks(t: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let d = t.join(format!("disk{i}"));
            fs::create_dir_all(&d).unwrap();
            d
        })
        .collect()
}

fn rebalance(from: &Path, to: &Path, state: &Path) -> Output {
    run(&[
        "rebalance".as_ref(),
        "--from".as_ref(),
        from.as_os_str(),
        "--to".as_ref(),
        to.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--quiet".as_ref(),
    ])
}

fn plan(from: &Path, to: &Path) -> Output {
    run(&[
        "plan".as_ref(),
        "--from".as_ref(),
        from.as_os_str(),
        "--to".as_ref(),
        to.as_os_str(),
    ])
}

#[test]
fn a_second_disk_at_an_existing_disks_place_is_refused_and_nothing_is_lost() {
    let t = tempfile::tempdir().unwrap();
    let d = disks(t.path(), 3);
    let state = t.path().join("state");
    let s0 = || {
        (
            "s0",
            vec![
                ("d0", d[0].clone()),
                ("d1", d[1].clone()),
                ("d2", d[2].clone()),
            ],
        )
    };
    let old = topo_file(t.path(), "old.json", 1, &[s0()]);
    assert!(disk_init(&old).status.success());
    put_all(t.path(), &old, &state, 30);
    // A copy-pasted entry: the new set's disk is s0/d2's directory, by its path or a symlink.
    let link = t.path().join("link-to-disk2");
    std::os::unix::fs::symlink(&d[2], &link).unwrap();
    for (name, path) in [("same.json", d[2].clone()), ("alias.json", link.clone())] {
        let new = topo_file(t.path(), name, 2, &[s0(), ("s1", vec![("d3", path)])]);
        for out in [rebalance(&old, &new, &state), plan(&old, &new)] {
            assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
            let e = stderr(&out);
            assert!(e.contains("pools[0].sets[1].disks[0].path"), "{name}: {e}");
            assert!(e.contains("pools[0].sets[0].disks[2].path"), "{name}: {e}");
        }
        // The object commands refuse such a topology too.
        let out = object("get", "bkt/k0", &new, &state, &t.path().join("out"));
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("pools[0].sets[0].disks[2].path"));
    }
    assert_all_readable(t.path(), &old, &state, 30);
    let on_disk: usize = d
        .iter()
        .map(|p| {
            let mut n = 0;
            ferry::cluster::store::walk_objects(p, &mut Vec::new(), &mut |_, _, _| n += 1);
            n
        })
        .sum();
    assert_eq!(on_disk, 30, "every object is still on a disk, once");
}

#[test]
fn a_disk_inside_another_disk_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = disks(t.path(), 1);
    let inner = d[0].join("bkt");
    fs::create_dir_all(&inner).unwrap();
    let old = topo_file(
        t.path(),
        "old.json",
        1,
        &[("s0", vec![("d0", d[0].clone())])],
    );
    let new = topo_file(
        t.path(),
        "new.json",
        2,
        &[
            ("s0", vec![("d0", d[0].clone())]),
            ("s1", vec![("d9", inner)]),
        ],
    );
    let out = plan(&old, &new);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("inside"), "{}", stderr(&out));
}

#[test]
fn disk_ids_repeat_across_sets_and_objects_land_on_their_owners() {
    let t = tempfile::tempdir().unwrap();
    let d = disks(t.path(), 4);
    let state = t.path().join("state");
    let set = |id, a: usize| (id, vec![("d0", d[a].clone()), ("d1", d[a + 1].clone())]);
    let old = topo_file(t.path(), "old.json", 1, &[set("s0", 0)]);
    let new = topo_file(t.path(), "new.json", 2, &[set("s0", 0), set("s1", 2)]);
    let out = plan(&old, &new);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(disk_init(&old).status.success());
    put_all(t.path(), &old, &state, 40);
    // s1's disks are new: `--init-disks` gives them their identity first.
    let out = rebalance(&old, &new, &state);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("s1/d0"), "{}", stderr(&out));
    let mut args: Vec<&OsStr> = vec!["rebalance".as_ref(), "--init-disks".as_ref()];
    args.extend([
        "--from".as_ref(),
        old.as_os_str(),
        "--to".as_ref(),
        new.as_os_str(),
    ]);
    args.extend([
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--quiet".as_ref(),
    ]);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    for x in &d {
        let id = ferry::cluster::identity::read(x)
            .unwrap()
            .expect("identity");
        assert_eq!(id.disk, if x == &d[0] || x == &d[2] { "d0" } else { "d1" });
    }
    assert_all_readable(t.path(), &new, &state, 40);
    // Each object is on the disk placement picks under the new topology, and only there.
    let topo = ferry::cluster::Topology::load(&new).unwrap();
    let placed = ferry::cluster::store::Placed::new(topo);
    let mut moved = 0;
    for i in 0..40 {
        let k = format!("k{i}");
        let p = ferry::cluster::partition_of(b"bkt", k.as_bytes());
        let owner = ferry::cluster::store::object_path(&placed.owner(p).path, "bkt", k.as_bytes());
        assert!(owner.is_file(), "{k} is at its owner");
        let copies = d
            .iter()
            .filter(|x| ferry::cluster::store::object_path(x, "bkt", k.as_bytes()).exists())
            .count();
        assert_eq!(copies, 1, "{k}");
        moved += placed.owner_key(p).starts_with("s1/") as usize;
    }
    assert!(moved > 5 && moved < 35, "about half moved to s1: {moved}");
    // Within one set a disk id is still unique.
    let dup = topo_file(
        t.path(),
        "dup.json",
        3,
        &[("s0", vec![("d0", d[0].clone()), ("d0", d[1].clone())])],
    );
    let out = plan(&new, &dup);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("pools[0].sets[0].disks[1].id"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn relative_disk_paths_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let old = topo_file(
        t.path(),
        "old.json",
        1,
        &[("s0", vec![("d0", t.path().join("a"))])],
    );
    let new = topo_file(
        t.path(),
        "new.json",
        2,
        &[("s0", vec![("d0", PathBuf::from("disks/d0"))])],
    );
    let out = plan(&old, &new);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("pools[0].sets[0].disks[0].path") && e.contains("absolute"),
        "{e}"
    );
}

fn expect_refused(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(out));
    assert!(stderr(out).contains(what), "{what}: {}", stderr(out));
}

#[test]
fn a_missing_unmounted_or_swapped_disk_is_refused_and_never_created() {
    let t = tempfile::tempdir().unwrap();
    let d = disks(t.path(), 2);
    let state = t.path().join("state");
    let s0 = || ("s0", vec![("d0", d[0].clone()), ("d1", d[1].clone())]);
    let topo = topo_file(t.path(), "t.json", 1, &[s0()]);
    fs::write(t.path().join("in"), b"x").unwrap();
    let out = object("put", "bkt/k0", &topo, &state, &t.path().join("in"));
    expect_refused(&out, "no identity file");
    assert!(
        !d[0].join("bkt").exists(),
        "nothing is written to a disk without identity"
    );
    let out = disk_init(&topo);
    assert!(out.status.success(), "{}", stderr(&out));
    put_all(t.path(), &topo, &state, 20);
    let grown = topo_file(
        t.path(),
        "grown.json",
        2,
        &[s0(), ("s1", vec![("d0", t.path().join("disk9"))])],
    );
    let every = |what: &str| {
        let (f, o) = (t.path().join("in"), t.path().join("out"));
        expect_refused(&object("put", "bkt/new", &topo, &state, &f), what);
        for op in ["get", "rm", "locate"] {
            expect_refused(&object(op, "bkt/k1", &topo, &state, &o), what);
        }
        let mut scan: Vec<&OsStr> = vec!["plan".as_ref(), "--scan".as_ref()];
        scan.extend([
            "--from".as_ref(),
            topo.as_os_str(),
            "--to".as_ref(),
            grown.as_os_str(),
        ]);
        expect_refused(&run(&scan), what);
        expect_refused(&rebalance(&topo, &grown, &state), what);
    };
    // The drive is not mounted: its root is missing, and nothing creates it.
    let away = t.path().join("away");
    fs::rename(&d[1], &away).unwrap();
    every("missing");
    assert!(!d[1].exists(), "a disk root is never created");
    // The mount point is there, empty: no identity.
    fs::create_dir(&d[1]).unwrap();
    every("no identity file");
    assert_eq!(
        fs::read_dir(&d[1]).unwrap().count(),
        0,
        "nothing written there"
    );
    fs::remove_dir(&d[1]).unwrap();
    // The two drives swapped places.
    fs::rename(&d[0], &d[1]).unwrap();
    fs::rename(&away, &d[0]).unwrap();
    every("swapped");
    fs::rename(&d[0], &away).unwrap();
    fs::rename(&d[1], &d[0]).unwrap();
    fs::rename(&away, &d[1]).unwrap();
    assert_all_readable(t.path(), &topo, &state, 20);
}

#[test]
fn disk_init_refuses_a_missing_root_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = disks(t.path(), 1);
    let gone = t.path().join("not-mounted");
    let topo = topo_file(
        t.path(),
        "t.json",
        1,
        &[("s0", vec![("d0", d[0].clone()), ("d1", gone.clone())])],
    );
    let out = disk_init(&topo);
    expect_refused(&out, "s0/d1");
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
    assert!(!gone.exists());
    assert!(
        ferry::cluster::identity::read(&d[0]).unwrap().is_none(),
        "nothing written"
    );
    fs::create_dir(&gone).unwrap();
    let out = disk_init(&topo);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("disk s0/d1: initialized"));
    // Another cluster's topology naming the same directories is refused.
    let other = fs::read_to_string(&topo)
        .unwrap()
        .replacen("{", "{\"cluster\": \"other\", ", 1);
    fs::write(&topo, other).unwrap();
    expect_refused(&disk_init(&topo), "cluster 'other'");
}
