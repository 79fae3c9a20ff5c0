//! Running the same command again: it lands in the first run's targets (recorded in the job's
//! checkpoint) and only brings them up to date, completed, interrupted, `--fresh` or a move.

mod common;
use common::*;
use std::fs;
use std::path::Path;

fn out_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn run(state: &Path, args: &[&Path], extra: &[&str]) -> std::process::Output {
    let mut v: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsStr::new).collect();
    v.extend(["--state-dir".as_ref(), state.as_os_str()]);
    v.extend(args.iter().map(|p| p.as_os_str()));
    ferry(&v)
}

fn small(root: &Path, n: usize) {
    fs::create_dir_all(root.join("sub")).unwrap();
    for i in 0..n {
        write_file(&root.join(format!("sub/f{i}")), 1000 + i, i as u64);
    }
}

#[test]
fn a_completed_copy_run_again_lands_in_its_first_targets() {
    let t = tempfile::tempdir().unwrap();
    let (state, src) = (t.path().join("st"), t.path().join("src"));
    small(&src, 5);
    // DST did not exist: it became the copy. Then it exists, and cp -r would nest.
    let dst = t.path().join("dst");
    for round in 0..3 {
        let out = run(&state, &[&src, &dst], &["copy"]);
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        assert!(
            !dst.join("src").exists(),
            "round {round}: nested into dst/src"
        );
        assert_same_tree(&src, &dst);
        if round > 0 {
            let text = out_text(&out);
            assert!(
                text.contains("already complete: 5 files up to date"),
                "round {round}: {text}"
            );
        }
    }
    // A changed source file is brought up to date, and only it.
    write_file(&src.join("sub/f2"), 4321, 99);
    let out = run(&state, &[&src, &dst], &["copy", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = out_text(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "report")
        .expect("a report line");
    assert_eq!(report["files"], 1, "{report}");
    assert_eq!(report["resumed_files"], 4, "{report}");
    assert_same_tree(&src, &dst);
    // DST existed: the copy went to dst2/src, and goes there again.
    let dst2 = t.path().join("dst2");
    fs::create_dir(&dst2).unwrap();
    for round in 0..2 {
        let out = run(&state, &[&src, &dst2], &["copy"]);
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        assert!(!dst2.join("src/src").exists(), "round {round}: nested");
        assert_same_tree(&src, &dst2.join("src"));
    }
}

#[test]
fn fresh_after_an_interrupted_copy_lands_in_the_first_runs_target() {
    // Per-file temps make bd2 at the start (cp -r rules would then say bd2/big); a hidden
    // tree makes only `.bd2.ferry-<token>.tree`, which --fresh removes.
    for temp in ["file", "tree"] {
        let t = tempfile::tempdir().unwrap();
        let (state, src) = (t.path().join("st"), t.path().join("big"));
        small(&src, 40);
        write_file(&src.join("large"), 6 << 20, 5);
        let dst = t.path().join("bd2");
        let mut child = std::process::Command::new(BIN)
            .args(["copy", "--bwlimit", "1M", "--temp", temp, "--state-dir"])
            .arg(&state)
            .arg(&src)
            .arg(&dst)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(Spawned::new)
            .unwrap();
        let made = || match temp {
            "file" => dst.exists(),
            _ => !ferry_names(t.path()).is_empty(),
        };
        let t0 = std::time::Instant::now();
        while !made() && t0.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "{temp}: finished too early"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(dst.is_dir(), temp == "file", "{temp}");
        let out = run(&state, &[&src, &dst], &["copy", "--fresh"]);
        assert!(out.status.success(), "{temp}: {}", stderr(&out));
        assert!(
            !dst.join("big").exists(),
            "{temp}: --fresh nested the copy into bd2/big"
        );
        assert_same_tree(&src, &dst);
        assert_eq!(
            ferry_names(t.path()).len(),
            0,
            "{temp}: the hidden tree is left"
        );
    }
}

#[test]
fn a_completed_move_run_again_exits_0() {
    let t = tempfile::tempdir().unwrap();
    let (state, src) = (t.path().join("st"), t.path().join("src"));
    small(&src, 5);
    let reference = t.path().join("ref");
    let out = ferry(&["copy".as_ref(), src.as_os_str(), reference.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for extra in [&["move"][..], &["move", "--no-rename"][..]] {
        let dst = t.path().join(format!("dst{}", extra.len()));
        if !src.exists() {
            let out = ferry(&["copy".as_ref(), reference.as_os_str(), src.as_os_str()]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        for round in 0..2 {
            let out = run(&state, &[&src, &dst], extra);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{extra:?} round {round}: {}",
                stderr(&out)
            );
            assert!(!src.exists(), "{extra:?}");
            assert_same_tree(&reference, &dst);
            if round == 1 {
                let text = out_text(&out);
                assert!(text.contains("already complete"), "{extra:?}: {text}");
            }
        }
    }
}
