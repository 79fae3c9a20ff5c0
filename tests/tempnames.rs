//! A user's file named like a ferry temp file is a user's file: copied as itself, never taken
//! for a temp, never deleted. ferry's own temps carry the job's random token (kept in its
//! checkpoint), and only those are cleaned up.

mod common;
use common::*;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn run(args: &[&OsStr]) {
    let out = ferry_with(args, Duration::from_secs(120), None);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
}

/// `lv/big` (2 MiB of noise) beside a user's `lv/.big.ferry-tmp` (1 MiB of zeros).
fn lookalike_tree(root: &Path) -> (Vec<u8>, Vec<u8>) {
    let lv = root.join("lv");
    fs::create_dir_all(&lv).unwrap();
    let (big, zeros) = (pattern(2 << 20, 7), vec![0u8; 1 << 20]);
    fs::write(lv.join("big"), &big).unwrap();
    fs::write(lv.join(".big.ferry-tmp"), &zeros).unwrap();
    (big, zeros)
}

#[test]
fn a_source_file_named_like_a_temp_is_copied_as_itself() {
    let t = tempfile::tempdir().unwrap();
    let (big, zeros) = lookalike_tree(t.path());
    let modes: [&[&str]; 4] = [
        &[],
        &["--fsync=file"],
        &["--verify=full"],
        &["--fsync=file", "--verify=full"],
    ];
    // The old collision raced (about half the runs lost `big`): several rounds per mode.
    for (m, flags) in modes.iter().enumerate() {
        for round in 0..4 {
            for io in backends() {
                let dst = t.path().join(format!("out-{m}-{round}-{io}"));
                fs::create_dir(&dst).unwrap();
                let mut args: Vec<&OsStr> = vec!["copy".as_ref(), "--io".as_ref(), io.as_ref()];
                args.extend(flags.iter().map(OsStr::new));
                let src = t.path().join("lv");
                args.extend([src.as_os_str(), dst.as_os_str()]);
                run(&args);
                let got = dst.join("lv");
                assert_eq!(names(&got), [".big.ferry-tmp", "big"], "{flags:?}");
                assert!(fs::read(got.join("big")).unwrap() == big, "{flags:?}: big");
                assert!(fs::read(got.join(".big.ferry-tmp")).unwrap() == zeros);
            }
        }
    }
}

#[test]
fn a_move_keeps_both_a_file_and_its_lookalike() {
    let t = tempfile::tempdir().unwrap();
    // Across filesystems where /dev/shm is there (as in the report), else within one.
    let far = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    for fsync in ["--fsync=batch", "--fsync=file"] {
        for round in 0..4 {
            let base = t.path().join(format!("{fsync}-{round}"));
            let (big, zeros) = lookalike_tree(&base);
            // An existing target directory: the move goes file by file (no one-rename path).
            let dst = far.path().join(format!("{fsync}-{round}"));
            fs::create_dir_all(dst.join("lv")).unwrap();
            let src = base.join("lv");
            run(&[
                "move".as_ref(),
                fsync.as_ref(),
                src.as_os_str(),
                dst.as_os_str(),
            ]);
            assert!(!src.exists());
            let got = dst.join("lv");
            assert_eq!(names(&got), [".big.ferry-tmp", "big"], "{fsync}");
            assert!(fs::read(got.join("big")).unwrap() == big, "{fsync}: big");
            assert!(fs::read(got.join(".big.ferry-tmp")).unwrap() == zeros);
        }
    }
}

#[test]
fn a_user_file_named_like_a_temp_in_the_destination_survives() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    write_file(&src, 300_000, 3);
    let modes: [&[&str]; 3] = [&[], &["--fsync=file"], &["--verify=full"]];
    for (m, flags) in modes.iter().enumerate() {
        for io in backends() {
            let dst = t.path().join(format!("dst-{m}-{io}"));
            fs::create_dir(&dst).unwrap();
            fs::write(dst.join(".data.ferry-tmp"), b"mine").unwrap();
            let mut args: Vec<&OsStr> = vec!["copy".as_ref(), "--io".as_ref(), io.as_ref()];
            args.extend(flags.iter().map(OsStr::new));
            args.extend([src.as_os_str(), dst.as_os_str()]);
            run(&args);
            assert!(files_equal(&src, &dst.join("data")), "{flags:?}");
            assert_eq!(fs::read(dst.join(".data.ferry-tmp")).unwrap(), b"mine");
            assert_eq!(names(&dst), [".data.ferry-tmp", "data"], "{flags:?}");
        }
    }
}

/// The token ferry's temps carry for this job, from its checkpoint.
fn job_token(state: &Path) -> String {
    for e in fs::read_dir(state).unwrap().flatten() {
        if let Ok(text) = fs::read(e.path().join("checkpoint.json")) {
            let cp: serde_json::Value = serde_json::from_slice(&text).unwrap();
            return cp["temp_token"].as_str().expect("temp_token").to_string();
        }
    }
    panic!("no checkpoint under {}", state.display());
}

#[test]
fn kill_9_on_a_big_file_then_resume_cleans_only_ferrys_own_temps() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    write_file(&src.join("big"), 80 << 20, 11);
    let dst = t.path().join("dst");
    let state = t.path().join("state");
    // The user's files in the destination: one named like the old temps, one like the new
    // ones but with another token (nothing proves it is ferry's).
    let tdir = dst.join("src");
    fs::create_dir_all(&tdir).unwrap();
    fs::write(tdir.join(".big.ferry-tmp"), b"user one").unwrap();
    fs::write(tdir.join(".big.ferry-0123456789abcdef.tmp"), b"user two").unwrap();
    let args = |limit: &str| {
        let mut a = vec!["copy", "--bwlimit", limit, "--fsync=file"];
        a.extend(["--state-dir", state.to_str().unwrap()]);
        a.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let mut child = Command::new(BIN)
        .args(args("40M"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Spawned::new)
        .unwrap();
    // Wait for the big file's temp to appear, then kill -9 in the middle of it.
    let start = Instant::now();
    let ours = loop {
        let extra: Vec<String> = names(&tdir)
            .into_iter()
            .filter(|n| n != ".big.ferry-tmp" && n != ".big.ferry-0123456789abcdef.tmp")
            .collect();
        if !extra.is_empty() {
            break extra;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no temp appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let tok = job_token(&state);
    assert_eq!(
        ours[0],
        format!(".big.ferry-{tok}.tmp"),
        "the temp carries the token"
    );
    assert!(
        !tdir.join("big").exists(),
        "killed before the big file was done"
    );
    assert_eq!(fs::read(tdir.join(".big.ferry-tmp")).unwrap(), b"user one");
    // The same command again resumes and clears the killed run's temp, nothing else.
    let out = ferry(&args("0"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(files_equal(&src.join("big"), &tdir.join("big")));
    assert_eq!(
        names(&tdir),
        [".big.ferry-0123456789abcdef.tmp", ".big.ferry-tmp", "big"]
    );
    assert_eq!(fs::read(tdir.join(".big.ferry-tmp")).unwrap(), b"user one");
    let two = fs::read(tdir.join(".big.ferry-0123456789abcdef.tmp")).unwrap();
    assert_eq!(two, b"user two");
}
