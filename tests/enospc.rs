//! A destination that fills up pauses the job with "destination full" (nothing failed, no
//! source touched, no partial file under a final name); after space is freed, resume
//! completes it. Needs root (mounts a small tmpfs).

mod common;
use common::*;
use ferry::coord::state::JobState;
use ferry::job::Event;
use ferry::{CopySpec, Job};
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn full_destination_pauses_then_resumes_after_space_is_freed() {
    if !is_root() {
        eprintln!("SKIP: mounting a small tmpfs needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..12 {
        write_file(&src.join(format!("f{i:02}")), 1 << 20, i);
    }
    let mnt = t.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("SKIP: cannot mount tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let dst = mnt.join("dst");
    let mut spec = CopySpec::new(vec![src.clone()], dst.clone());
    spec.buffer_size = 256 << 10;
    let h = Job::start(spec).unwrap();
    let events = h.events().unwrap();
    let start = Instant::now();
    let full = loop {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::DestinationFull { path }) => break path,
            Ok(_) => {}
            Err(_) => assert!(
                start.elapsed() < Duration::from_secs(30) && !h.is_finished(),
                "no destination-full pause: {:?}",
                h.status()
            ),
        }
    };
    assert!(full.contains("dst"), "{full}");
    assert_eq!(h.state(), JobState::Paused);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !h.is_finished(),
        "a full destination pauses; it does not end the job"
    );
    assert_eq!(h.status().failed, 0);
    // Nothing under a final name is partial, and every source is intact.
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
