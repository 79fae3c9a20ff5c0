//! kill -9 at random moments of a copy: no final name ever holds partial data, and running the
//! same command again completes the copy.

mod common;
use common::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn check_final_names_complete(src: &Path, dst: &Path) -> (usize, usize) {
    let (mut complete, mut temps) = (0, 0);
    let mut stack = vec![dst.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
                continue;
            }
            if e.file_name().to_string_lossy().ends_with(".ferry-tmp") {
                temps += 1;
                continue;
            }
            let rel = p.strip_prefix(dst).unwrap();
            assert!(
                files_equal(&src.join(rel), &p),
                "{} carries a final name but is not a complete copy",
                p.display()
            );
            complete += 1;
        }
    }
    (complete, temps)
}

#[test]
fn kill_9_never_leaves_partial_data_under_a_final_name() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..4 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
    }
    for i in 0..240usize {
        write_file(
            &src.join(format!("d{}/f{i}", i % 4)),
            ((i * 7919) % 2048) << 10,
            i as u64,
        );
    }
    for i in 0..2 {
        write_file(&src.join(format!("big{i}")), 40 << 20, 900 + i as u64);
    }
    let state = t.path().join("state");
    let mut rng = ferry::demo::XorShift(0xfe77);
    let mut killed_mid_copy = 0;
    for round in 0..10 {
        let io = if round % 2 == 0 { "auto" } else { "sync" };
        let fsync = if round % 3 == 0 { "file" } else { "batch" };
        let dst = t.path().join(format!("dst{round}"));
        let mut child = Command::new(BIN)
            .args([
                "copy",
                "--io",
                io,
                "--fsync",
                fsync,
                "--buffer-size",
                "128K",
                "--state-dir",
            ])
            .arg(&state)
            .arg(&src)
            .arg(&dst)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = 20 + rng.next_u64() % 400;
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        if !finished {
            killed_mid_copy += 1;
        }
        let (complete, temps) = check_final_names_complete(&src, &dst);
        eprintln!(
            "round {round}: killed after {delay} ms: {complete} complete, {temps} temp files"
        );
        // The same command again finishes the job and leaves no temp file.
        let out = ferry(&[
            "copy".as_ref(),
            "--io".as_ref(),
            io.as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            src.as_os_str(),
            dst.as_os_str(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        // dst existed after the kill when the root dir was created: the copy then lands inside.
        let landed = if dst.join("src").exists() {
            dst.join("src")
        } else {
            dst.clone()
        };
        assert!(temp_files(&landed).is_empty());
        for i in 0..240usize {
            let rel = format!("d{}/f{i}", i % 4);
            assert!(files_equal(&src.join(&rel), &landed.join(&rel)), "{rel}");
        }
    }
    assert!(
        killed_mid_copy >= 5,
        "most kills must land mid-copy ({killed_mid_copy})"
    );
}
