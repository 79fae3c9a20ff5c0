//! Repeated and overlapping sources: refused like cp ("specified more than once", nothing
//! written), or the last source wins.

mod common;
use common::*;
use std::fs;

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
