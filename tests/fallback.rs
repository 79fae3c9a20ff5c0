//! With io_uring disabled by the kernel (sysctl kernel.io_uring_disabled=2, as hardened hosts
//! do), `--io auto` says so in one line and copies with the blocking backend; `--io uring` is
//! refused before anything is written. Needs root (it flips the sysctl, then restores it); this
//! file holds one test so no other test runs while io_uring is off.

mod common;
use common::*;
use std::fs;

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

struct Restore(String);
impl Drop for Restore {
    fn drop(&mut self) {
        fs::write(SYSCTL, &self.0).expect("restore kernel.io_uring_disabled");
    }
}

#[test]
fn disabled_io_uring_falls_back_with_a_notice() {
    if !is_root() {
        eprintln!("SKIP: needs root to set {SYSCTL}");
        return;
    }
    let Ok(old) = fs::read_to_string(SYSCTL) else {
        eprintln!("SKIP: this kernel has no {SYSCTL}");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..30 {
        write_file(&src.join(format!("f{i}")), i * 10_000, i as u64);
    }
    if fs::write(SYSCTL, "2").is_err() {
        eprintln!("SKIP: {SYSCTL} is not writable here");
        return;
    }
    let _restore = Restore(old);

    let dst = t.path().join("dst");
    let out = ferry(&["copy".as_ref(), src.as_os_str(), dst.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("io_uring unavailable"))
            .count(),
        1,
        "exactly one notice: {err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sync"));
    assert_same_tree(&src, &dst);

    let dst2 = t.path().join("dst2");
    let out = ferry(&[
        "copy".as_ref(),
        "--io".as_ref(),
        "uring".as_ref(),
        src.as_os_str(),
        dst2.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!dst2.exists());
}
