//! A source that changes while it is copied is never silently truncated: it is retried, and
//! fails (with no final name) if it keeps changing.

mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[test]
fn a_file_that_keeps_growing_fails_after_retries_without_a_final_name() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("growing.log");
    write_file(&src, 16 << 20, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, src) = (stop.clone(), src.clone());
        std::thread::spawn(move || {
            let mut f = OpenOptions::new().append(true).open(&src).unwrap();
            while !stop.load(Ordering::Relaxed) {
                f.write_all(b"x").unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    for io in backends() {
        let dst = t.path().join(format!("copy-{io}.log"));
        let out = ferry(&[
            "copy".as_ref(),
            "--io".as_ref(),
            io.as_ref(),
            "--buffer-size".as_ref(),
            "4K".as_ref(),
            "--queue-depth".as_ref(),
            "2".as_ref(),
            "--threads".as_ref(),
            "1".as_ref(),
            // Each attempt takes ~300 ms, so the writer (every 200 us) changes the file during
            // every attempt even when a busy CI machine leaves it off the CPU for a while (an
            // unthrottled attempt once finished between two appends there).
            "--bwlimit".as_ref(),
            "50M".as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("source changed"), "{}", stderr(&out));
        assert!(!dst.exists(), "a changing file must not get a final name");
        assert!(temp_files(t.path()).is_empty());
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

#[test]
fn a_file_that_shrinks_is_copied_as_it_is_now() {
    // Shrink once, before ferry can finish: the retry copies the short version completely.
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("shrinking.bin");
    write_file(&src, 64 << 20, 2);
    let dst = t.path().join("copy.bin");
    let s2 = src.clone();
    let shrinker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        fs::OpenOptions::new()
            .write(true)
            .open(&s2)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
    });
    let out = ferry(&[
        "copy".as_ref(),
        "--io".as_ref(),
        "sync".as_ref(),
        "--buffer-size".as_ref(),
        "4K".as_ref(),
        "--queue-depth".as_ref(),
        "1".as_ref(),
        "--threads".as_ref(),
        "1".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    shrinker.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Whatever ferry saw, the final name holds exactly the source as it is now.
    assert!(files_equal(&src, &dst));
    assert_eq!(fs::metadata(&dst).unwrap().len(), 1 << 20);
}
