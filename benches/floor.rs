//! The per-file floor: what the kernel alone charges for each protocol a small-file copier can
//! follow, measured on one thread with the plain syscalls and nothing else (no queues, no
//! hashing unless named, no journal). It tells how far ferry's engine is from the cost of its
//! own protocol, and how far that protocol is from a copier that keeps no temp name and no
//! metadata.
//!
//! Variants: ferry's protocol with directory fds, by full paths, and with O_TMPFILE + linkat
//! instead of a temp name + rename, and at the final name inside a hidden tree (`--temp tree`):
//! the alternatives a change to the engine would pick from.
//!
//! `cargo bench --bench floor [-- DIR [FILES [PER_DIR]]]`: DIR defaults to /dev/shm (tmpfs, so
//! no device time is counted), FILES to 20,000 (4 KiB each), PER_DIR to 1,000 files per
//! directory (PER_DIR = FILES: one flat directory). Prints microseconds per
//! file (median of 5 repetitions) and the wall time that implies for 100,000 files on 2 cores.
//! On a disk, give it a freshly made filesystem: on an ext4 without a journal, inodes freed by
//! the previous repetition are skipped (and rescanned) by every create for a long time.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files per directory unless given (`-- DIR FILES PER_DIR`; PER_DIR = FILES is `flat`).
const PER_DIR: usize = 1000;
const SIZE: usize = 4096;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(r: i64, what: &str) -> i64 {
    assert!(
        r >= 0,
        "{what}: {}",
        std::io::Error::last_os_error() // a floor with failed calls would be meaningless
    );
    r
}

fn open_dir(at: i32, name: &CStr) -> i32 {
    // SAFETY: valid C string; the fd is closed by the caller.
    check(
        unsafe {
            libc::openat(
                at,
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        } as i64,
        "open dir",
    ) as i32
}

/// statx of an entry of `dir` (what a walk that reports bytes pays); its size.
fn statx_size(dir: i32, name: &CStr) -> u64 {
    // SAFETY: zeroed statx is a valid out-buffer; valid C string and fd.
    unsafe {
        let mut sx: libc::statx = std::mem::zeroed();
        check(
            libc::statx(
                dir,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                libc::STATX_BASIC_STATS,
                &mut sx,
            ) as i64,
            "statx",
        );
        sx.stx_size
    }
}

/// The regular files of one directory, by d_type (no stat), as getdents returns them.
fn list(dirfd: i32, out: &mut Vec<CString>) {
    out.clear();
    // SAFETY: fdopendir takes a dup we own; readdir's entries are valid until the next call.
    unsafe {
        let d = libc::fdopendir(libc::dup(dirfd));
        assert!(!d.is_null());
        loop {
            let e = libc::readdir64(d);
            if e.is_null() {
                break;
            }
            if (*e).d_type == libc::DT_REG {
                out.push(CStr::from_ptr((*e).d_name.as_ptr()).to_owned());
            }
        }
        libc::closedir(d);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Step {
    List,
    ListStat,
    Bare,
    Safe,
    SafeHash,
    SafePaths,
    Tmpfile,
    InPlace,
}

const STEPS: [(Step, &str); 8] = [
    (Step::List, "list (getdents, d_type)"),
    (Step::ListStat, "list + statx each file"),
    (
        Step::Bare,
        "bare copy: statx, open, create, copy_file_range, close x2",
    ),
    (
        Step::Safe,
        "safe copy: open, fstat, read, create temp, write, listxattr, futimens, fstat, close x2, rename",
    ),
    (Step::SafeHash, "safe copy + xxh3 of the data"),
    (
        Step::SafePaths,
        "safe copy by full paths (no directory fds)",
    ),
    (
        Step::Tmpfile,
        "safe copy with O_TMPFILE + linkat(AT_EMPTY_PATH) instead of temp name + rename",
    ),
    (
        Step::InPlace,
        "safe copy at the final name inside a hidden tree (--temp tree): no temp, no rename",
    ),
];

/// ferry's per-file protocol for one small file, with plain syscalls; false when the variant
/// is not supported here (linkat AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH).
fn safe_copy(step: Step, dirs: (i32, i32, &Path, &Path), name: &CStr, buf: &mut [u8]) -> bool {
    let (sd, dd, sdir, ddir) = dirs;
    let full = |dir: &Path, n: &[u8]| {
        let mut p = dir.as_os_str().as_bytes().to_vec();
        p.push(b'/');
        p.extend_from_slice(n);
        CString::new(p).unwrap()
    };
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(name.to_bytes());
    tmp.extend_from_slice(b".ferry-tmp");
    let paths = step == Step::SafePaths;
    // SAFETY (whole block): plain syscalls on fds this function owns, valid C strings and
    // buffers of the stated sizes.
    unsafe {
        let s = if paths {
            libc::open(
                full(sdir, name.to_bytes()).as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        } else {
            libc::openat(
                sd,
                name.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        let s = check(s as i64, "open") as i32;
        let mut st: libc::stat = std::mem::zeroed();
        check(libc::fstat(s, &mut st) as i64, "fstat");
        let got = check(
            libc::read(s, buf.as_mut_ptr().cast(), buf.len()) as i64,
            "read",
        ) as usize;
        if step == Step::SafeHash {
            std::hint::black_box(xxhash_rust::xxh3::xxh3_64(&buf[..got]));
        }
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
        let mode = st.st_mode & 0o7777;
        let tmpc = CString::new(tmp).unwrap();
        let d = match step {
            Step::SafePaths => libc::open(full(ddir, tmpc.to_bytes()).as_ptr(), flags, mode),
            Step::Tmpfile => libc::openat(
                dd,
                c".".as_ptr(),
                libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
                mode,
            ),
            Step::InPlace => libc::openat(dd, name.as_ptr(), flags, mode),
            _ => libc::openat(dd, tmpc.as_ptr(), flags, mode),
        };
        let d = check(d as i64, "create") as i32;
        check(libc::pwrite(d, buf.as_ptr().cast(), got, 0) as i64, "write");
        check(
            libc::flistxattr(s, std::ptr::null_mut(), 0) as i64,
            "listxattr",
        );
        let ts = ferry::meta::times(&st);
        check(libc::futimens(d, ts.as_ptr()) as i64, "futimens");
        check(libc::fstat(s, &mut st) as i64, "fstat");
        let linked = step != Step::Tmpfile
            || libc::linkat(d, c"".as_ptr(), dd, name.as_ptr(), libc::AT_EMPTY_PATH) == 0;
        libc::close(s);
        libc::close(d);
        if !linked {
            return false;
        }
        match step {
            Step::Tmpfile | Step::InPlace => {}
            Step::SafePaths => {
                check(
                    libc::renameat2(
                        libc::AT_FDCWD,
                        full(ddir, tmpc.to_bytes()).as_ptr(),
                        libc::AT_FDCWD,
                        full(ddir, name.to_bytes()).as_ptr(),
                        libc::RENAME_NOREPLACE,
                    ) as i64,
                    "rename",
                );
            }
            _ => {
                check(
                    libc::renameat2(dd, tmpc.as_ptr(), dd, name.as_ptr(), libc::RENAME_NOREPLACE)
                        as i64,
                    "rename",
                );
            }
        }
    }
    true
}

/// One pass over `dirs` (each a source dir with its destination); returns files handled.
fn pass(step: Step, dirs: &[(PathBuf, PathBuf)]) -> Option<usize> {
    let mut names = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    for (src, dst) in dirs {
        let sd = open_dir(libc::AT_FDCWD, &c(src));
        list(sd, &mut names);
        let dd = if matches!(step, Step::List | Step::ListStat) {
            -1
        } else {
            // SAFETY: valid C string.
            check(
                unsafe { libc::mkdir(c(dst).as_ptr(), 0o755) } as i64,
                "mkdir",
            );
            open_dir(libc::AT_FDCWD, &c(dst))
        };
        for name in &names {
            n += 1;
            // SAFETY (whole block): plain syscalls on fds this loop owns, valid C strings and
            // buffers of the stated sizes.
            unsafe {
                match step {
                    Step::List => {}
                    Step::ListStat => {
                        std::hint::black_box(statx_size(sd, name));
                    }
                    Step::Bare => {
                        let size = statx_size(sd, name);
                        let s = check(
                            libc::openat(sd, name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
                                as i64,
                            "open",
                        ) as i32;
                        let d = check(
                            libc::openat(
                                dd,
                                name.as_ptr(),
                                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                                0o644,
                            ) as i64,
                            "create",
                        ) as i32;
                        check(
                            libc::copy_file_range(
                                s,
                                std::ptr::null_mut(),
                                d,
                                std::ptr::null_mut(),
                                size as usize,
                                0,
                            ) as i64,
                            "copy_file_range",
                        );
                        libc::close(s);
                        libc::close(d);
                    }
                    Step::Safe
                    | Step::SafeHash
                    | Step::SafePaths
                    | Step::Tmpfile
                    | Step::InPlace => {
                        let dirs = (sd, dd, src.as_path(), dst.as_path());
                        if !safe_copy(step, dirs, name, &mut buf) {
                            libc::close(sd);
                            libc::close(dd);
                            return None;
                        }
                    }
                }
            }
        }
        // SAFETY: fds opened above.
        unsafe {
            libc::close(sd);
            if dd >= 0 {
                libc::close(dd);
            }
        }
    }
    Some(n)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let base = PathBuf::from(args.first().map_or("/dev/shm", |s| s.as_str()));
    let files: usize = args.get(1).map_or(20_000, |s| s.parse().expect("FILES"));
    let per_dir: usize = args
        .get(2)
        .map_or(PER_DIR, |s| s.parse().expect("PER_DIR"))
        .max(1);
    if !base.is_dir() {
        println!("floor: skipped: {} is not a directory", base.display());
        return;
    }
    let root = base.join(format!("ferry-floor-{}", std::process::id()));
    let (src, dst) = (root.join("src"), root.join("dst"));
    let data = vec![0x5au8; SIZE];
    let mut dirs = Vec::new();
    for d in 0..files.div_ceil(per_dir) {
        let (s, t) = (src.join(format!("d{d:04}")), dst.join(format!("d{d:04}")));
        std::fs::create_dir_all(&s).unwrap();
        for f in 0..per_dir.min(files - d * per_dir) {
            std::fs::write(s.join(format!("f{f:05}")), &data).unwrap();
        }
        dirs.push((s, t));
    }
    println!(
        "{files} files of {SIZE} B under {}, one thread, median of 5:",
        base.display()
    );
    for (step, what) in STEPS {
        let mut us = Vec::new();
        for _ in 0..5 {
            let _ = std::fs::remove_dir_all(&dst);
            std::fs::create_dir_all(&dst).unwrap();
            // The removal's journal and discards must not be charged to the next pass.
            // SAFETY: sync(2) has no arguments and cannot fail.
            unsafe { libc::sync() };
            let t0 = Instant::now();
            let Some(n) = pass(step, &dirs) else {
                break;
            };
            us.push(t0.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        if us.len() < 5 {
            println!("  (not supported here)  {what}");
            continue;
        }
        us.sort_by(f64::total_cmp);
        let m = us[2];
        println!(
            "  {m:6.2} us/file ({:.2}-{:.2})  = {:.3} s per 100,000 files on 2 cores  {what}",
            us[0],
            us[4],
            m * 1e5 / 2.0 / 1e6
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
