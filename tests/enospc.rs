//! A destination that fills up pauses the job with "destination full" (nothing failed, no
//! source touched, no partial file under a final name, the files that fit committed and
//! nothing else holding space); after space is freed, resume completes it. Needs root (mounts
//! a small tmpfs or a loop device).

mod common;
use common::*;
use ferry::coord::state::JobState;
use ferry::job::Event;
use ferry::{CopySpec, Job};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits (bounded) for the job to pause on a full destination; returns the path it named.
fn wait_for_full(h: &ferry::JobHandle, events: &std::sync::mpsc::Receiver<Event>) -> String {
    let start = Instant::now();
    loop {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::DestinationFull { path }) => return path,
            Ok(_) => {}
            Err(_) => assert!(
                start.elapsed() < Duration::from_secs(30) && !h.is_finished(),
                "no destination-full pause: {:?}",
                h.status()
            ),
        }
    }
}

/// 12 MiB of sources under `t`/src and a 4 MiB tmpfs at `t`/small to copy them to; None (the
/// caller skips, having said why) without root or tmpfs.
fn too_small_destination(t: &std::path::Path) -> Option<(PathBuf, PathBuf, Mounted)> {
    if !is_root() {
        eprintln!("SKIP: mounting a small tmpfs needs root");
        return None;
    }
    let src = t.join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..12 {
        write_file(&src.join(format!("f{i:02}")), 1 << 20, i);
    }
    let mnt = t.join("small");
    fs::create_dir(&mnt).unwrap();
    let Some(guard) = mount_tmpfs(&mnt, "4m") else {
        eprintln!("SKIP: cannot mount tmpfs here");
        return None;
    };
    Some((src, mnt, guard))
}

/// Nothing under a final name in `dst` is partial, and every source of
/// [`too_small_destination`] is intact.
fn nothing_partial_and_sources_intact(src: &std::path::Path, dst: &std::path::Path) {
    for i in 0..12 {
        let d = dst.join(format!("f{i:02}"));
        if d.exists() {
            assert!(files_equal(&src.join(format!("f{i:02}")), &d));
        }
        assert_eq!(
            fs::metadata(src.join(format!("f{i:02}"))).unwrap().len(),
            1 << 20
        );
    }
}

fn statvfs(mnt: &Path) -> libc::statvfs {
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string and out-pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s
}

/// Bytes allocated on the filesystem of `mnt` (what `df` shows as used).
fn used_bytes(mnt: &Path) -> u64 {
    let s = statvfs(mnt);
    (s.f_blocks - s.f_bfree) * s.f_frsize
}

/// Bytes free for an unprivileged writer on the filesystem of `mnt`.
fn free_bytes(mnt: &Path) -> u64 {
    let s = statvfs(mnt);
    s.f_bavail * s.f_frsize
}

/// Files under their final names in `dst` (not recursive) and the bytes they occupy.
fn named(dst: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = fs::read_dir(dst) else {
        return (0, 0);
    };
    rd.flatten()
        .map(|e| e.metadata().unwrap())
        .filter(|m| m.is_file())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.blocks() * 512))
}

/// Waits (bounded) until the space used on `mnt` beyond `base` is the space of the files
/// named in `dst`: nothing complete is held in an unnamed temp. Returns how many are named.
fn space_is_named_files(mnt: &std::path::Path, dst: &std::path::Path, base: u64) -> u64 {
    let start = Instant::now();
    loop {
        let (n, bytes) = named(dst);
        let used = used_bytes(mnt).saturating_sub(base);
        // Directories and the filesystem's own bookkeeping: well under one 1 MiB file.
        if n > 0 && used <= bytes + (256 << 10) {
            return n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{used} bytes used on the destination but {n} named files hold only {bytes}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A full destination commits (durable, named) every file that fit before it pauses, so what
/// `df` shows used is what the user sees in the directory (not space held by unnamed temps).
#[test]
fn full_destination_commits_what_fits_before_pausing() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, mnt, _guard)) = too_small_destination(t.path()) else {
        return;
    };
    let dst = mnt.join("dst");
    let base = used_bytes(&mnt);
    let mut spec = CopySpec::new(vec![src.clone()], dst.clone());
    spec.buffer_size = 256 << 10;
    let h = Job::start(spec).unwrap();
    let events = h.events().unwrap();
    wait_for_full(&h, &events);
    let n = space_is_named_files(&mnt, &dst, base);
    nothing_partial_and_sources_intact(&src, &dst);
    let start = Instant::now();
    while h.status().files < n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            h.status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.status().files, n, "durable files are the named ones");
    assert_eq!(h.state(), JobState::Paused);
    assert_eq!(h.status().failed, 0);
    h.cancel().unwrap();
    let r = within(Duration::from_secs(60), move || h.wait());
    assert_eq!(r.files, n);
}

#[test]
fn full_destination_pauses_then_resumes_after_space_is_freed() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, mnt, _guard)) = too_small_destination(t.path()) else {
        return;
    };
    let dst = mnt.join("dst");
    let mut spec = CopySpec::new(vec![src.clone()], dst.clone());
    spec.buffer_size = 256 << 10;
    let h = Job::start(spec).unwrap();
    let events = h.events().unwrap();
    let full = wait_for_full(&h, &events);
    assert!(full.contains("dst"), "{full}");
    assert_eq!(h.state(), JobState::Paused);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !h.is_finished(),
        "a full destination pauses; it does not end the job"
    );
    assert_eq!(h.status().failed, 0);
    nothing_partial_and_sources_intact(&src, &dst);
    // Free space, resume.
    let ok = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "remount");

    h.resume().unwrap();
    let start = Instant::now();
    while !h.is_finished() {
        if let Ok(Event::DestinationFull { path }) = events.recv_timeout(Duration::from_millis(50))
        {
            let df = Command::new("df").arg("-k").arg(&mnt).output().unwrap();
            panic!(
                "paused again after space was freed ({path}): {}",
                String::from_utf8_lossy(&df.stdout)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "hang after resume"
        );
    }
    let r = within(Duration::from_secs(60), move || h.wait());
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(r.files, 12);
    assert_same_tree(&src, &dst);
    assert!(temp_files(&dst).is_empty());
}

/// With --fail-fast nobody is expected to free space and resume: a full destination stops the
/// job like any other error (exit 1, resumable by running it again), with no partial file under
/// a final name and every source intact, instead of pausing until `ferry ctl JOB resume`.
#[test]
fn fail_fast_stops_at_a_full_destination_instead_of_pausing() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, mnt, _guard)) = too_small_destination(t.path()) else {
        return;
    };
    let dst = mnt.join("dst");
    let mut spec = CopySpec::new(vec![src.clone()], dst.clone());
    spec.buffer_size = 256 << 10;
    spec.fail_fast = true;
    let h = Job::start(spec).unwrap();
    let events = h.events().unwrap();
    let r = within(Duration::from_secs(60), move || h.wait());
    assert!(!r.ok(), "a full destination is an error here");
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("No space left on device")),
        "{:?}",
        r.errors
    );
    assert!(
        !events
            .try_iter()
            .any(|e| matches!(e, Event::DestinationFull { .. })),
        "no pause"
    );
    nothing_partial_and_sources_intact(&src, &dst);
}

/// --fail-fast keeps the files that fit: committed under their names, durable (journaled: the
/// rerun resumes them), and the space used is theirs.
#[test]
fn fail_fast_at_a_full_destination_keeps_the_files_that_fit() {
    let t = tempfile::tempdir().unwrap();
    let Some((src, mnt, _guard)) = too_small_destination(t.path()) else {
        return;
    };
    let dst = mnt.join("dst");
    let base = used_bytes(&mnt);
    let state = t.path().join("state");
    let mut spec = CopySpec::new(vec![src.clone()], dst.clone());
    spec.buffer_size = 256 << 10;
    spec.fail_fast = true;
    spec.state_dir = Some(state.clone());
    let h = Job::start(spec.clone()).unwrap();
    let r = within(Duration::from_secs(60), move || h.wait());
    assert!(!r.ok());
    assert!(r.files >= 1, "the files that fit are kept: {:?}", r.errors);
    assert_eq!(named(&dst).0, r.files, "{:?}", r.errors);
    assert_eq!(space_is_named_files(&mnt, &dst, base), r.files);
    nothing_partial_and_sources_intact(&src, &dst);
    assert!(temp_files(&dst).is_empty());
    let ok = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "remount");
    let again = within(Duration::from_secs(60), move || {
        Job::start(spec).unwrap().wait()
    });
    assert!(again.ok(), "{:?}", again.errors);
    assert_eq!(again.resumed_files, r.files, "the kept files were durable");
    assert_same_tree(&src, &dst);
}

/// 16 sources of 1 MiB under `src`; (name, bytes) of each.
fn sixteen_sources(src: &Path) -> Vec<(String, Vec<u8>)> {
    fs::create_dir(src).unwrap();
    let mut want = Vec::new();
    for i in 0..16 {
        let p = src.join(format!("f{i:02}"));
        write_file(&p, 1 << 20, 100 + i);
        want.push((format!("f{i:02}"), fs::read(&p).unwrap()));
    }
    want
}

/// Every file is intact in `src` or under its name in `dst` (or both), never neither.
fn assert_no_source_lost(src: &Path, dst: &Path, want: &[(String, Vec<u8>)]) {
    for (rel, data) in want {
        let (s, d) = (src.join(rel), dst.join(rel));
        assert!(s.exists() || d.exists(), "{rel} is lost");
        if s.exists() {
            assert_eq!(&fs::read(&s).unwrap(), data);
        }
        if d.exists() {
            assert_eq!(&fs::read(&d).unwrap(), data, "bad copy of {rel}");
        }
    }
}

/// What fit is moved (named, durable, its source gone); nothing else holds space (of what
/// `mnt` used before, `used_before`).
fn assert_what_fit_is_moved(mnt: &Path, src: &Path, dst: &Path, used_before: u64) {
    let moved = space_is_named_files(mnt, dst, used_before);
    let start = Instant::now();
    while src.read_dir().unwrap().count() as u64 + moved != 16 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sources of moved files stay"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loop-device ext4 that fills up in the middle of a `ferry move`: the job pauses with
/// "destination full", no source is lost, and it completes once space is freed.
#[test]
fn move_onto_a_full_loop_device_pauses_and_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    let mnt = t.path().join("disk");
    fs::create_dir(&mnt).unwrap();
    let _guard = match loop_ext4(&img, &mnt, 32 << 20) {
        Ok(g) => g,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    // Leave ~8 MiB free for 16 MiB of sources.
    let filler = mnt.join("filler");
    write_file(&filler, (free_bytes(&mnt) - (8 << 20)) as usize, 77);
    let src = t.path().join("src");
    let want = sixteen_sources(&src);
    let dst = mnt.join("dst");
    let used_before = used_bytes(&mnt);
    let mut spec = CopySpec::new(vec![src.clone()], dst.clone());
    spec.buffer_size = 256 << 10;
    spec.remove_source = true;
    spec.verify = ferry::spec::VerifyMode::Full;
    let h = Job::start(spec).unwrap();
    let events = h.events().unwrap();
    wait_for_full(&h, &events);
    assert_eq!(h.state(), JobState::Paused);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!h.is_finished());
    assert_eq!(h.status().failed, 0);
    assert_no_source_lost(&src, &dst, &want);
    assert!(
        src.read_dir().unwrap().count() > 0,
        "some sources must still wait for room"
    );
    assert_what_fit_is_moved(&mnt, &src, &dst, used_before);
    fs::remove_file(&filler).unwrap();
    h.resume().unwrap();
    let r = within(Duration::from_secs(60), move || h.wait());
    assert!(r.ok(), "{:?}", r.errors);
    assert_no_source_lost(&src, &dst, &want);
    assert!(
        !src.exists(),
        "every source moved and its directory removed"
    );
    assert!(temp_files(&dst).is_empty());
}
