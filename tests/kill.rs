//! kill -9 at random moments of a copy: no final name ever holds partial data, and running the
//! same command again completes the copy.

mod common;
use common::*;
use ferry::demo::XorShift;
use std::fs;
use std::path::Path;
use std::process::Command;
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
            if is_ferry_temp(&e.file_name()) {
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

/// 240 files of 0-2 MiB in 4 directories and two of 40 MiB under `src`.
fn copy_source(src: &Path) {
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
}

/// The backend of round `round`: io_uring (auto) and sync in turn.
fn io_of(round: usize) -> &'static str {
    if round.is_multiple_of(2) {
        "auto"
    } else {
        "sync"
    }
}

/// Round `round`'s copy (its io, fsync and commit strategy) killed -9 after 20-420 ms;
/// whether it had finished before the kill.
fn killed_copy(round: usize, state: &Path, src: &Path, dst: &Path, rng: &mut XorShift) -> bool {
    let io = io_of(round);
    let fsync = if round.is_multiple_of(3) {
        "file"
    } else {
        "batch"
    };
    // Each commit strategy is killed too: wide batches, named temp files.
    let (knob, value) = match round % 4 {
        1 => ("--commit-batch", "wide"),
        2 => ("--temp", "named"),
        3 => ("--commit-batch", "standard"),
        _ => ("--temp", "file"),
    };
    let mut cmd = Command::new(BIN);
    cmd.args([
        "copy",
        "--io",
        io,
        "--fsync",
        fsync,
        knob,
        value,
        "--buffer-size",
        "128K",
        "--state-dir",
    ])
    .arg(state)
    .arg(src)
    .arg(dst);
    let delay = 20 + rng.next_u64() % 400;
    let finished = killed_after(&mut cmd, Duration::from_millis(delay));
    let (complete, temps) = check_final_names_complete(src, dst);
    eprintln!("round {round}: killed after {delay} ms: {complete} complete, {temps} temp files");
    finished
}

/// The same command again (round `round`'s io) finishes the job and leaves no temp file.
fn rerun_completes_the_copy(round: usize, state: &Path, src: &Path, dst: &Path) {
    let io = io_of(round);
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
        dst.to_path_buf()
    };
    assert!(temp_files(&landed).is_empty());
    for i in 0..240usize {
        let rel = format!("d{}/f{i}", i % 4);
        assert!(files_equal(&src.join(&rel), &landed.join(&rel)), "{rel}");
    }
}

#[test]
fn kill_9_never_leaves_partial_data_under_a_final_name() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    copy_source(&src);
    let state = t.path().join("state");
    let mut rng = XorShift(0xfe77);
    let mut killed_mid_copy = 0;
    for round in 0..10 {
        let dst = t.path().join(format!("dst{round}"));
        if !killed_copy(round, &state, &src, &dst, &mut rng) {
            killed_mid_copy += 1;
        }
        rerun_completes_the_copy(round, &state, &src, &dst);
    }
    assert!(
        killed_mid_copy >= 5,
        "most kills must land mid-copy ({killed_mid_copy})"
    );
}

/// Every file is intact in the source or under its final name in the destination (or both),
/// never neither, never a bad copy under a final name.
fn check_move_invariant(src: &Path, dst: &Path, files: &[(String, Vec<u8>)]) -> (usize, usize) {
    let (mut moved, mut both) = (0, 0);
    for (rel, data) in files {
        let (s, d) = (src.join(rel), dst.join(rel));
        let (in_src, in_dst) = (s.exists(), d.exists());
        assert!(
            in_src || in_dst,
            "{rel} is in neither the source nor the destination"
        );
        if in_src {
            assert_eq!(&fs::read(&s).unwrap(), data, "source {rel} was damaged");
        }
        if in_dst {
            assert_eq!(
                &fs::read(&d).unwrap(),
                data,
                "{rel} has a bad copy under its final name"
            );
            moved += 1;
        }
        if in_src && in_dst {
            both += 1;
        }
    }
    (moved, both)
}

/// 300 files of 0-700 KiB in 5 directories and their subdirectories under `src`; (relative
/// path, bytes) of each.
fn move_source(src: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for d in 0..5 {
        fs::create_dir_all(src.join(format!("d{d}/sub"))).unwrap();
    }
    for i in 0..300usize {
        let rel = if i % 2 == 0 {
            format!("d{}/f{i}", i % 5)
        } else {
            format!("d{}/sub/f{i}", i % 5)
        };
        write_file(&src.join(&rel), ((i * 7919) % 700) << 10, i as u64);
        files.push(rel);
    }
    files
        .into_iter()
        .map(|r| {
            let d = fs::read(src.join(&r)).unwrap();
            (r, d)
        })
        .collect()
}

/// The move (throttled to `rate`) killed -9 after 50-350 ms, round after round, the move
/// invariant checked after each kill; the kills that landed mid-move (it stops at 20, or
/// once a run finished before its kill).
fn kill_move_rounds(
    (state, src, dst): (&Path, &Path, &Path),
    files: &[(String, Vec<u8>)],
    rate: &str,
) -> usize {
    let mut rng = XorShift(0x3017e);
    kills_mid_run(40, 20, |round| {
        let io = if round % 2 == 0 { "auto" } else { "sync" };
        let fsync = if round % 3 == 0 { "file" } else { "batch" };
        let mut cmd = Command::new(BIN);
        cmd.args([
            "move",
            "--no-rename",
            "--io",
            io,
            "--fsync",
            fsync,
            "--bwlimit",
            rate,
        ])
        .args(["--buffer-size", "128K", "--state-dir"])
        .arg(state)
        .arg(src)
        .arg(dst);
        let delay = 50 + rng.next_u64() % 300;
        let finished = killed_after(&mut cmd, Duration::from_millis(delay));
        let (moved, both) = check_move_invariant(src, dst, files);
        eprintln!("round {round}: kill after {delay} ms: {moved} moved, {both} in both places");
        finished
    })
}

#[test]
fn kill_9_during_a_move_never_loses_a_file() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let files = move_source(&src);
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    let state = t.path().join("state");
    let dst = t.path().join("dst");
    // Throttled (--bwlimit) so the move takes seconds and every kill lands mid-move.
    let rate = format!("{}", total / 5);
    let kills = kill_move_rounds((&state, &src, &dst), &files, &rate);
    assert!(kills >= 20, "only {kills} kills landed mid-move");
    // The same command finishes the move.
    let out = ferry(&[
        "move".as_ref(),
        "--no-rename".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (moved, both) = check_move_invariant(&src, &dst, &files);
    assert_eq!((moved, both), (files.len(), 0));
    assert!(!src.exists(), "emptied source directories are removed");
    assert!(temp_files(&dst).is_empty());
    let v = ferry::verify::verify_trees(&dst, &dst, 0);
    assert!(v.mismatches.is_empty());
}
