//! `--temp tree`: a new tree is built under a hidden name and renamed to its target once all
//! of it is durable. Nothing ever shows under the target before that; a killed run resumes
//! into the hidden tree, and a file there that the journal does not vouch for is copied again.

mod common;
use common::*;
use ferry::demo::XorShift;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn copy_args<'a>(state: &'a Path, src: &'a Path, dst: &'a Path, temp: &'a str) -> Vec<&'a OsStr> {
    vec![
        "copy".as_ref(),
        "--temp".as_ref(),
        temp.as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ]
}

#[test]
fn a_new_tree_gets_its_name_only_when_complete_and_keeps_its_metadata() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_tree(&src);
    let state = t.path().join("state");
    for io in backends() {
        let dst = t.path().join(format!("out-{io}"));
        let mut args = copy_args(&state, &src, &dst, "tree");
        args.extend([OsStr::new("--io"), OsStr::new(io)]);
        let out = ferry_with(&args, Duration::from_secs(120), None);
        assert!(out.status.success(), "{io}: {}", stderr(&out));
        assert_same_tree(&src, &dst);
        assert!(
            ferry_names(t.path()).is_empty(),
            "{io}: a hidden tree is left"
        );
        assert!(temp_files(&dst).is_empty(), "{io}: temp files are left");
    }
}

#[test]
fn tree_mode_refuses_jobs_it_cannot_build_hidden_and_auto_falls_back() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    write_file(&src.join("d/f"), 5000, 1);
    let state = t.path().join("state");
    let dst = t.path().join("dst");
    fs::create_dir_all(dst.join("src")).unwrap(); // the target exists already
    let out = ferry(&copy_args(&state, &src, &dst, "tree"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--temp tree"), "{}", stderr(&out));
    assert!(!dst.join("src/d").exists(), "a refused job wrote nothing");
    let out = ferry(&copy_args(&state, &src, &dst, "auto"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(files_equal(&src.join("d/f"), &dst.join("src/d/f")));
    let file = src.join("d/f");
    let out = ferry(&copy_args(&state, &file, &t.path().join("one"), "tree"));
    assert_eq!(out.status.code(), Some(2), "a file root: {}", stderr(&out));
    let moved = t.path().join("moved");
    let mut args = copy_args(&state, &src, &moved, "tree");
    args[0] = "move".as_ref();
    let out = ferry(&args);
    assert_eq!(out.status.code(), Some(2), "a move: {}", stderr(&out));
    assert!(src.join("d/f").exists() && !moved.exists());
}

/// 1200 files of 0-64 KiB in 12 directories and four of 3 MiB.
fn tree_source(src: &Path) {
    for i in 0..1200usize {
        let d = src.join(format!("d{}", i % 12));
        fs::create_dir_all(&d).unwrap();
        write_file(&d.join(format!("f{i}")), (i * 7919) % (64 << 10), i as u64);
    }
    for i in 0..4 {
        write_file(&src.join(format!("big{i}")), 3 << 20, 500 + i as u64);
    }
}

#[test]
fn kill_9_shows_nothing_under_the_target_and_the_rerun_resumes_into_the_hidden_tree() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree_source(&src);
    let state = t.path().join("state");
    let dst = t.path().join("dst");
    let mut rng = XorShift(0x7ee);
    let kills = kills_mid_run(12, 4, |round| {
        let mut cmd = Command::new(BIN);
        let io = if round % 2 == 0 { "auto" } else { "sync" };
        cmd.args(copy_args(&state, &src, &dst, "tree"))
            .args(["--io", io, "--bwlimit", "40M"]);
        let delay = 50 + rng.next_u64() % 250;
        let finished = killed_after(&mut cmd, Duration::from_millis(delay));
        if !finished {
            assert!(
                !dst.exists(),
                "round {round}: the target appeared before the end"
            );
            assert!(
                hidden_trees(t.path()).len() <= 1,
                "one hidden tree per target"
            );
        }
        finished
    });
    assert!(kills >= 2, "kills must land mid-copy ({kills})");
    let out = ferry(&copy_args(&state, &src, &dst, "tree"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming"), "{}", stderr(&out));
    assert_same_tree(&src, &dst);
    assert!(ferry_names(t.path()).is_empty(), "the hidden tree is gone");
}

#[test]
fn a_file_in_a_hidden_tree_the_journal_does_not_vouch_for_is_copied_again() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree_source(&src);
    let state = t.path().join("state");
    let dst = t.path().join("dst");
    // Slowed so the kill lands mid-copy: the job's hidden tree and journal are left.
    let mut cmd = Command::new(BIN);
    cmd.args(copy_args(&state, &src, &dst, "tree"))
        .args(["--bwlimit", "8M"]);
    assert!(
        !killed_after(&mut cmd, Duration::from_millis(400)),
        "killed mid-copy"
    );
    let hidden = hidden_trees(t.path());
    assert_eq!(hidden.len(), 1, "{:?}", ferry_names(t.path()));
    // A source file added since, and a copy of it in the hidden tree with its size and mtime
    // but other bytes: what a crash mid-write can leave. Only the journal may vouch for it.
    write_file(&src.join("d0/late"), 20000, 77);
    fs::create_dir_all(hidden[0].join("d0")).unwrap();
    fs::write(hidden[0].join("d0/late"), vec![0u8; 20000]).unwrap();
    let st = fs::metadata(src.join("d0/late")).unwrap();
    let (sec, nsec) = (
        std::os::unix::fs::MetadataExt::mtime(&st),
        std::os::unix::fs::MetadataExt::mtime_nsec(&st),
    );
    set_mtime(&hidden[0].join("d0/late"), sec, nsec);
    let out = ferry(&copy_args(&state, &src, &dst, "tree"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(files_equal(&src.join("d0/late"), &dst.join("d0/late")));
    assert_same_tree(&src, &dst);
    assert!(ferry_names(t.path()).is_empty());
}
