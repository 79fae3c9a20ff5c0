//! Repeated and overlapping sources: refused like cp ("specified more than once", nothing
//! written), or the last source wins.

mod common;
use common::*;
use std::fs;
use std::path::Path;

#[test]
fn a_source_given_twice_is_refused_and_nothing_is_written() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path().join("w");
    fs::create_dir(&w).unwrap();
    write_file(&w.join("a.txt"), 5000, 1);
    let w2 = t.path().join("w2");
    fs::create_dir(&w2).unwrap();
    fs::hard_link(w.join("a.txt"), w2.join("a.txt")).unwrap();
    let od = t.path().join("od");
    fs::create_dir(&od).unwrap();
    let (a, a2) = (w.join("a.txt"), w2.join("a.txt"));
    for srcs in [[&w, &w], [&a, &a], [&a, &a2]] {
        let out = ferry(&[
            "copy".as_ref(),
            srcs[0].as_os_str(),
            srcs[1].as_os_str(),
            od.as_os_str(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{srcs:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("specified more than once"),
            "{}",
            stderr(&out)
        );
        assert_eq!(
            fs::read_dir(&od).unwrap().count(),
            0,
            "{srcs:?}: nothing may be written"
        );
    }
}

#[test]
fn the_last_of_two_sources_with_one_target_wins() {
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    fs::create_dir(&x).unwrap();
    fs::create_dir(&y).unwrap();
    write_file(&x.join("a.txt"), 3000, 1);
    write_file(&y.join("a.txt"), 4000, 2);
    let od = t.path().join("od");
    fs::create_dir(&od).unwrap();
    for _ in 0..5 {
        let out = ferry(&[
            "copy".as_ref(),
            "--fresh".as_ref(),
            x.join("a.txt").as_os_str(),
            y.join("a.txt").as_os_str(),
            od.as_os_str(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            fs::read(od.join("a.txt")).unwrap(),
            fs::read(y.join("a.txt")).unwrap()
        );
        assert!(temp_files(&od).is_empty());
        fs::remove_file(od.join("a.txt")).unwrap();
    }
}

fn run_ok(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let out = ferry(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

/// A and B with the same names at every level (files, a subdirectory, a directory in one and
/// a file in the other), each with names of its own.
fn two_overlapping_trees(a: &Path, b: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for (root, seed) in [(a, 1u64), (b, 2)] {
        fs::create_dir_all(root.join("s/t")).unwrap();
        for i in 0..150 {
            let n = i as usize;
            write_file(
                &root.join(format!("f{i}")),
                100 + n + seed as usize * 7,
                seed * 1000 + i,
            );
            write_file(&root.join(format!("s/g{i}")), 50 + n, seed * 5000 + i);
        }
        write_file(&root.join("s/t/deep"), 4000, seed);
        write_file(&root.join(format!("only{seed}")), 10, seed);
        fs::set_permissions(
            root.join("s"),
            fs::Permissions::from_mode(0o700 + seed as u32 * 0o10),
        )
        .unwrap();
        set_mtime(&root.join("s"), 1_600_000_000 + seed as i64, 0);
    }
    // A directory in A, a file in B; a file in A, a directory in B.
    fs::create_dir(a.join("x")).unwrap();
    write_file(&a.join("x/inside"), 10, 9);
    write_file(&b.join("x"), 33, 9);
    write_file(&a.join("y"), 44, 9);
    fs::create_dir(b.join("y")).unwrap();
    write_file(&b.join("y/inside"), 55, 9);
}

/// What `cp -a A/. B/. D` leaves: B's version of every entry both have, each one's own entries.
fn assert_last_wins(a: &Path, b: &Path, d: &Path) {
    use std::os::unix::fs::MetadataExt;
    for i in 0..150 {
        for rel in [format!("f{i}"), format!("s/g{i}")] {
            assert_eq!(
                fs::read(d.join(&rel)).unwrap(),
                fs::read(b.join(&rel)).unwrap(),
                "{rel}"
            );
        }
    }
    assert!(files_equal(&b.join("s/t/deep"), &d.join("s/t/deep")));
    assert!(d.join("only1").exists() && d.join("only2").exists());
    assert!(
        fs::symlink_metadata(d.join("x")).unwrap().is_file(),
        "B's x is a file"
    );
    assert!(files_equal(&b.join("x"), &d.join("x")));
    assert!(
        fs::symlink_metadata(d.join("y")).unwrap().is_dir(),
        "B's y is a directory"
    );
    assert!(files_equal(&b.join("y/inside"), &d.join("y/inside")));
    let (bs, ds) = (
        fs::metadata(b.join("s")).unwrap(),
        fs::metadata(d.join("s")).unwrap(),
    );
    assert_eq!(
        ds.mode() & 0o7777,
        bs.mode() & 0o7777,
        "B's mode on the merged s"
    );
    assert_eq!(ds.mtime(), bs.mtime(), "B's mtime on the merged s");
    let _ = a;
    assert!(temp_files(d).is_empty());
}

#[test]
fn merging_directories_the_last_source_wins_every_entry() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    two_overlapping_trees(&a, &b);
    let (a_c, b_c) = (a.join("."), b.join("."));
    for backend in backends() {
        for fsync in ["batch", "file"] {
            for round in 0..3 {
                let d = t.path().join(format!("D-{backend}-{fsync}-{round}"));
                fs::create_dir(&d).unwrap();
                let out = run_ok(&[
                    "copy".as_ref(),
                    "--io".as_ref(),
                    backend.as_ref(),
                    "--fsync".as_ref(),
                    fsync.as_ref(),
                    a_c.as_os_str(),
                    b_c.as_os_str(),
                    d.as_os_str(),
                ]);
                assert_last_wins(&a, &b, &d);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                // Each target once: 150 + 150 + deep + only1 + only2 + x + y/inside.
                assert!(text.starts_with("305 files"), "{text}");
            }
        }
    }
    // The other order: A wins.
    let d = t.path().join("D-rev");
    fs::create_dir(&d).unwrap();
    run_ok(&[
        "copy".as_ref(),
        b_c.as_os_str(),
        a_c.as_os_str(),
        d.as_os_str(),
    ]);
    for i in 0..150 {
        assert_eq!(
            fs::read(d.join(format!("f{i}"))).unwrap(),
            fs::read(a.join(format!("f{i}"))).unwrap()
        );
    }
    assert!(
        fs::metadata(d.join("x")).unwrap().is_dir() && fs::metadata(d.join("y")).unwrap().is_file()
    );
    // A dry run counts each target once.
    let d = t.path().join("D-dry");
    fs::create_dir(&d).unwrap();
    let out = run_ok(&[
        "copy".as_ref(),
        "--dry-run".as_ref(),
        a_c.as_os_str(),
        b_c.as_os_str(),
        d.as_os_str(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("305 files"), "{text}");
}

#[test]
fn a_source_landing_inside_another_sources_target_is_decided_by_order() {
    let t = tempfile::tempdir().unwrap();
    let (b, x) = (t.path().join("B"), t.path().join("x"));
    fs::create_dir_all(b.join("sub")).unwrap();
    fs::create_dir_all(x.join("sub")).unwrap();
    for i in 0..100 {
        write_file(&b.join(format!("sub/f{i}")), 200 + i, i as u64);
        write_file(&x.join(format!("sub/f{i}")), 300 + i, 500 + i as u64);
    }
    write_file(&b.join("f.txt"), 77, 1);
    write_file(&x.join("f.txt"), 88, 2);
    let (bc, xs, xf) = (b.join("."), x.join("sub"), x.join("f.txt"));
    let cases: [(&[&Path], &Path); 4] = [
        (&[&xs, &bc], &b),
        (&[&bc, &xs], &x),
        (&[&xf, &bc], &b),
        (&[&bc, &xf], &x),
    ];
    for (n, (srcs, winner)) in cases.iter().enumerate() {
        for round in 0..3 {
            let d = t.path().join(format!("D{n}-{round}"));
            fs::create_dir(&d).unwrap();
            let mut args: Vec<&std::ffi::OsStr> = vec!["copy".as_ref()];
            args.extend(srcs.iter().map(|p| p.as_os_str()));
            args.push(d.as_os_str());
            run_ok(&args);
            if srcs.contains(&xs.as_path()) {
                for i in 0..100 {
                    let rel = format!("sub/f{i}");
                    assert_eq!(
                        fs::read(d.join(&rel)).unwrap(),
                        fs::read(winner.join(&rel)).unwrap(),
                        "case {n}: {rel}"
                    );
                }
            } else {
                assert!(
                    files_equal(&d.join("f.txt"), &winner.join("f.txt")),
                    "case {n}"
                );
            }
            assert!(temp_files(&d).is_empty());
        }
    }
}

#[test]
fn one_tree_by_several_spellings_is_refused_and_a_subtree_lands_beside_it() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path().join("w");
    fs::create_dir_all(w.join("sub")).unwrap();
    write_file(&w.join("a.txt"), 5000, 1);
    write_file(&w.join("sub/b"), 6000, 2);
    let od = t.path().join("od");
    fs::create_dir(&od).unwrap();
    let dot_w = t.path().join(".").join("w");
    let mut slash = w.clone().into_os_string();
    slash.push("/");
    for (one, two) in [
        (w.as_os_str(), dot_w.as_os_str()),
        (w.as_os_str(), slash.as_os_str()),
    ] {
        let out = ferry(&["copy".as_ref(), one, two, od.as_os_str()]);
        assert_eq!(out.status.code(), Some(2), "{two:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("specified more than once"),
            "{}",
            stderr(&out)
        );
        assert_eq!(fs::read_dir(&od).unwrap().count(), 0);
    }
    // cp -r w w/sub od: od/w and od/sub, each once.
    for round in 0..3 {
        let out = run_ok(&[
            "copy".as_ref(),
            "--fresh".as_ref(),
            w.as_os_str(),
            w.join("sub").as_os_str(),
            od.as_os_str(),
        ]);
        assert_same_tree(&w, &od.join("w"));
        assert_same_tree(&w.join("sub"), &od.join("sub"));
        assert!(temp_files(&od).is_empty(), "round {round}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("3 files") || round > 0, "{text}");
    }
}

#[test]
fn a_move_keeps_an_earlier_sources_entry_that_a_later_one_replaces() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("A"), t.path().join("B"));
    for (root, seed) in [(&a, 1u64), (&b, 2)] {
        fs::create_dir(root).unwrap();
        for i in 0..50 {
            write_file(&root.join(format!("f{i}")), 100 + i, seed * 100 + i as u64);
        }
        write_file(&root.join(format!("own{seed}")), 10, seed);
    }
    let bcopy: Vec<Vec<u8>> = (0..50)
        .map(|i| fs::read(b.join(format!("f{i}"))).unwrap())
        .collect();
    let acopy: Vec<Vec<u8>> = (0..50)
        .map(|i| fs::read(a.join(format!("f{i}"))).unwrap())
        .collect();
    let d = t.path().join("D");
    fs::create_dir(&d).unwrap();
    let out = ferry(&[
        "move".as_ref(),
        a.join(".").as_os_str(),
        b.join(".").as_os_str(),
        d.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a later source lands at the same target"),
        "{}",
        stderr(&out)
    );
    for i in 0..50 {
        assert_eq!(
            fs::read(d.join(format!("f{i}"))).unwrap(),
            bcopy[i],
            "B's f{i} won"
        );
        assert_eq!(
            fs::read(a.join(format!("f{i}"))).unwrap(),
            acopy[i],
            "A's f{i} is kept"
        );
        assert!(!b.join(format!("f{i}")).exists());
    }
    assert!(d.join("own1").exists() && d.join("own2").exists() && !a.join("own1").exists());
    assert!(temp_files(&d).is_empty());
}
